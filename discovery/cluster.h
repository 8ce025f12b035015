/* A cluster: a named set of endpoints that requests are balanced over, with its stats.
 *
 * Names follow App Mesh's Envoy (cds_egress_MESH_NODE_PROTO_PORT, cds_ingress_...), so dashboards
 * keep working. The endpoint array is fixed at creation; the discovery issue replaces it with
 * refreshed snapshots. Clusters are shared read-only by every worker; only the round-robin cursor
 * and the stats change, atomically. */
#ifndef REMORA_CLUSTER_H
#define REMORA_CLUSTER_H

#include <netinet/in.h>
#include <stdatomic.h>
#include <sys/socket.h>

#include "proxy/stats.h"

typedef struct endpoint {
    struct sockaddr_storage addr;
    socklen_t addrlen;
    char name[64]; /* "ip:port" for logs and /clusters */
} endpoint_t;

typedef struct cluster {
    struct cluster *next; /* the registry's list */
    char *name;
    endpoint_t *endpoints;
    unsigned nendpoints;
    _Atomic unsigned cursor;
    /* The node listener's connectionPool (ingress): at most max_requests requests in flight
     * to the app (HTTP/1.1: one per connection), max_pending more waiting; 0 = unlimited. */
    uint32_t max_requests, max_pending;
    _Atomic unsigned active_requests, pending_requests;
    cluster_stats_t stats;
} cluster_t;

/* Takes ownership of `endpoints` (malloc'd, may be NULL when n is 0). */
cluster_t *cluster_new(const char *name, endpoint_t *endpoints, unsigned n);
void cluster_free(cluster_t *c);
/* The next endpoint in round-robin order, or NULL when the cluster has none. */
const endpoint_t *cluster_pick(cluster_t *c);
/* The next endpoint that is not `avoid` (a retry goes elsewhere), or `avoid` if it is the only
 * one. */
const endpoint_t *cluster_pick_other(cluster_t *c, const endpoint_t *avoid);
/* Take a request slot under max_requests; 1 on success. release gives it back. */
int cluster_slot_take(cluster_t *c);
void cluster_slot_release(cluster_t *c);
/* Fill an endpoint from a sockaddr; returns 0 or UV_EINVAL for an unsupported family. */
int endpoint_set(endpoint_t *ep, const struct sockaddr *sa);
uint16_t endpoint_port(const endpoint_t *ep);
/* Whether the address is loopback or unspecified (one of this host's own). */
int endpoint_is_local(const endpoint_t *ep);

#endif
