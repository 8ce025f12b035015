/* A cluster: a named set of endpoints that requests are balanced over, with its stats.
 *
 * Names follow App Mesh's Envoy (cds_egress_MESH_NODE_PROTO_PORT, cds_ingress_...), so
 * dashboards keep working. The endpoint set is an immutable snapshot: discovery builds a new
 * one and swaps the pointer (cluster_publish); workers read it only within one callback and an
 * old set is freed once every worker has passed a quiescent point (proxy/qsbr.h).
 *
 * What must survive a swap (health, ejection, requests in flight) lives in endpoint_state_t,
 * one per address, shared by every set that lists the address and by the requests using it. */
#ifndef REMORA_CLUSTER_H
#define REMORA_CLUSTER_H

#include <netinet/in.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/socket.h>

#include "base/stats.h"
#include "tls/tls.h"

typedef struct endpoint_state {
    _Atomic unsigned refs;
    _Atomic int unhealthy;               /* the active health check's verdict; new endpoints: 0 */
    _Atomic unsigned consecutive_errors; /* 5xx or connect failures in a row (outlier detection) */
    _Atomic uint64_t ejected_until_ms;   /* 0, or when an ejection ends (uv_now scale, ms) */
    _Atomic unsigned times_ejected;
    _Atomic unsigned active_requests;
    _Atomic uint64_t requests, errors;
    unsigned hc_successes, hc_failures; /* health checker's counts (main thread only) */
} endpoint_state_t;

typedef struct endpoint {
    struct sockaddr_storage addr;
    socklen_t addrlen;
    char name[64];             /* "ip:port" for logs and /clusters */
    uint16_t priority, weight; /* RFC 2782 (SRV); 0 and 1 otherwise */
    endpoint_state_t *state;   /* set by cluster_publish; a copy must take a reference */
} endpoint_t;

typedef struct endpoint_set {
    unsigned n;
    endpoint_t eps[];
} endpoint_set_t;

/* Outlier detection (the target node listener's outlierDetection); max_errors 0 = off. */
typedef struct outlier_policy {
    uint64_t max_errors;
    uint64_t base_ejection_ms;
    unsigned max_ejection_percent;
} outlier_policy_t;

typedef struct cluster {
    struct cluster *next; /* the registry's list */
    char *name;
    char *node; /* the virtual node it sends to (NULL: the local app or passthrough) */
    uint16_t port;
    endpoint_set_t *_Atomic set;
    _Atomic unsigned cursor;
    _Atomic int answered; /* discovery has answered (or failed) at least once */
    outlier_policy_t outlier;
    /* Requests in flight and waiting, across workers, for the connectionPool limits that
     * each request carries from its route table snapshot. Counted with or without a limit, so
     * that a reload that sets one finds the true count. */
    _Atomic unsigned active_requests, pending_requests;
    cluster_stats_t stats;
    stat_t rq_code[500]; /* final responses by status, 100..599 (Envoy's per-code stats) */
    _Atomic uint64_t rq_code_used[8]; /* a bit per code that has had a response */
    ssl_stats_t ssl;                  /* connections made over TLS */
    tls_ctx_t *health_tls;  /* main thread: the TLS its requests use, so health checks do too */
    stat_t dns_answers[16]; /* by enum dns_result (discovery/dns.h) */
    void *discovery;        /* discovery's per-cluster state (main thread only) */
    /* Where the endpoints come from, for /clusters (main thread only): "static", "dns",
     * "dns_srv" or "cloudmap_api", and the name or NAMESPACE/SERVICE asked for. */
    const char *discovery_source;
    char discovery_name[320];
    stat_t cloudmap_calls[2][5]; /* Cloud Map API calls by enum cm_op and enum cm_result */
    _Atomic long long cloudmap_revision;
} cluster_t;

/* A final response with `status` (100..599): Envoy's per-code counter, made at the first. */
static inline void cluster_count_code(cluster_t *c, int status)
{
    if (status < 100 || status > 599)
        return;
    unsigned i = (unsigned)(status - 100);
    if (atomic_fetch_add_explicit(&c->rq_code[i], 1, memory_order_relaxed) == 0)
        atomic_fetch_or_explicit(&c->rq_code_used[i / 64], 1ull << (i % 64), memory_order_relaxed);
}

static inline int cluster_code_used(cluster_t *c, int status)
{
    unsigned i = (unsigned)(status - 100);
    return (atomic_load_explicit(&c->rq_code_used[i / 64], memory_order_relaxed) >> (i % 64)) & 1;
}

/* A cluster with an empty set. */
cluster_t *cluster_new(const char *name, const char *node, uint16_t port);
void cluster_free(cluster_t *c);

/* Swap in a new set built from `eps` (copied; their states are looked up by address in the
 * old set so health and ejections carry over). Main thread only. Returns the old set, for
 * the caller to retire once readers are quiescent (endpoint_set_free). */
endpoint_set_t *cluster_publish(cluster_t *c, const endpoint_t *eps, unsigned n);
void endpoint_set_free(endpoint_set_t *s);

/* The endpoint the next request should go to: the lowest SRV priority that has an endpoint
 * neither unhealthy nor ejected, weighted within it; when none is available, any endpoint
 * (panic, counted). Copies it into *out with a reference on its state; 0, or -1 when the
 * cluster has no endpoint at all. `avoid` (may be NULL) is skipped if anything else exists. */
int cluster_pick(cluster_t *c, const endpoint_t *avoid, uint64_t now_ms, endpoint_t *out);
/* Reports how a request to `ep` ended (status 0: connect failure or reset), feeding outlier
 * detection; then releases the pick's reference. */
void cluster_done(cluster_t *c, endpoint_t *ep, int status, uint64_t now_ms);
void endpoint_state_unref(endpoint_state_t *st);
/* Release a picked endpoint's reference without a verdict (the request never went out). */
void endpoint_release(endpoint_t *ep);

unsigned cluster_size(cluster_t *c);
unsigned cluster_healthy(cluster_t *c, uint64_t now_ms);

/* Take a request slot if fewer than `max` are taken (0: no limit); 1 on success. Every
 * successful take is matched by one release. */
int cluster_slot_take(cluster_t *c, uint32_t max);
void cluster_slot_release(cluster_t *c);

/* Fill an endpoint from a sockaddr (priority 0, weight 1, no state); 0 or UV_EINVAL. */
int endpoint_set(endpoint_t *ep, const struct sockaddr *sa);
uint16_t endpoint_port(const endpoint_t *ep);
/* Whether the address is loopback or unspecified (one of this host's own). */
int endpoint_is_local(const endpoint_t *ep);
int endpoint_same_addr(const endpoint_t *a, const endpoint_t *b);

#endif
