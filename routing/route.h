/* The route table: an immutable snapshot built from the config that answers "where does this
 * request go": the cluster, and the timeouts that apply on the way.
 *
 * Ingress requests go to the local app's cluster. Egress requests are matched by Host against
 * the node's backends (virtual service names, with or without a port). A router provider sends
 * to its highest-priority route's heaviest target; weighted picks, matches and retries arrive
 * with the routing issue behind this same interface. */
#ifndef REMORA_ROUTE_H
#define REMORA_ROUTE_H

#include <stddef.h>
#include <stdint.h>

#include "config/config.h"
#include "discovery/cluster.h"

#define ROUTE_DEFAULT_TIMEOUT_MS 15000
#define ROUTE_DEFAULT_IDLE_MS    300000

typedef struct route_result {
    cluster_t *cluster;
    uint64_t timeout_ms; /* per request; 0 = none */
    uint64_t idle_ms;
    const char *service; /* virtual service name (egress) */
} route_result_t;

typedef struct route_table route_table_t;

/* Build the table for `node` (its listeners, backends and their providers' endpoints).
 * Returns NULL with diagnostics on a reference that does not resolve. */
route_table_t *route_table_build(const config_t *cfg, const cfg_node_t *node, diag_t *d);
void route_table_free(route_table_t *rt);

int route_ingress(const route_table_t *rt, route_result_t *out);
/* 0 with *out filled, or ERR_NO_ROUTE when the Host is not a backend of this node. */
int route_egress(const route_table_t *rt, const char *host, size_t len, route_result_t *out);
enum egress_filter route_egress_filter(const route_table_t *rt);

/* Every cluster of the table, for the admin API. */
unsigned route_clusters(const route_table_t *rt, cluster_t *const **out);

#endif
