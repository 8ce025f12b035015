/* The route table: the immutable snapshot of the config that answers "where does this request
 * go". It owns its config_t; workers and the main thread each hold a reference, and a reload
 * swaps in a new table while requests already routed keep what they were given (they copy the
 * policy and point only at long-lived clusters and stats).
 *
 * Egress: Host -> one of the node's backends -> its provider: a virtual node (its cluster), or
 * a router -> the router's listener by port -> routes by priority (first match wins) -> a
 * weighted target. Ingress: the local app's cluster. httpRoute and http2Route match alike (path,
 * method, headers, query, port; http2Route also scheme); a grpcRoute matches gRPC's :path
 * "/SERVICE/METHOD" by serviceName and methodName, and its metadata as headers. */
#ifndef REMORA_ROUTE_H
#define REMORA_ROUTE_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "config/config.h"
#include "discovery/cluster.h"
#include "base/stats.h"
#include "tls/tls.h"

#define ROUTE_DEFAULT_TIMEOUT_MS 15000
#define ROUTE_DEFAULT_IDLE_MS    300000

/* Counters of one weighted target of one route; they outlive reloads (keyed by name). */
#define TARGET_STATS(X)                                                                            \
    X(picks, 0)                                                                                    \
    X(rq_1xx, 0)                                                                                   \
    X(rq_2xx, 0)                                                                                   \
    X(rq_3xx, 0)                                                                                   \
    X(rq_4xx, 0)                                                                                   \
    X(rq_5xx, 0)                                                                                   \
    X(grpc_errors, 0) /* gRPC statuses the route's grpcRetryEvents name: a rollout's errors */     \
    X(retries, 0)

#define STAT_FIELD(name, gauge) stat_t name;
typedef struct target_stats {
    TARGET_STATS(STAT_FIELD)
} target_stats_t;
#undef STAT_FIELD

typedef struct target_stats_entry {
    struct target_stats_entry *next;
    struct target_stats_entry *hnext; /* in its bucket of registry_t.buckets */
    char *router, *route, *target;
    target_stats_t stats;
} target_stats_entry_t;

/* What outlives a reload: clusters (and so their pools and stats) and per-target counters.
 * Only the main thread adds to it; workers read pointers and bump atomics. A zeroed registry
 * is an empty one. */
typedef struct registry {
    cluster_t *clusters;
    target_stats_entry_t *targets;
    target_stats_entry_t **buckets; /* the targets by name: builds stay linear in routes */
    unsigned nbuckets, ntargets;
    tls_cache_t tls; /* TLS contexts, reused by reloads that leave their settings and files */
    stat_t reloads_ok, reloads_failed;
} registry_t;

void registry_free(registry_t *r);

typedef struct retry_policy {
    unsigned max_retries;
    uint64_t per_try_ms; /* 0 = none */
    unsigned events;     /* RETRY_* bits */
    /* GRPC_RETRY_* bits: a grpc-status in a Trailers-Only response (in the response head; a
     * status in trailers comes after the body has gone to the client and is never retried). */
    unsigned grpc_events;
} retry_policy_t;

/* The request as routing sees it. `header` returns the first value of a header (or NULL). */
typedef struct route_request {
    int method;
    const char *host;
    size_t host_len; /* without any :port */
    uint16_t port;   /* from Host or the original destination; 0 when unknown */
    const char *path;
    size_t path_len; /* normalized, without the query */
    const char *query;
    size_t query_len; /* after '?', without it */
    const char *(*header)(void *ctx, const char *name, size_t *len);
    void *ctx;
    /* The request's scheme for http2Route's match.scheme: HTTP/2's :scheme ("http" or
     * "https"); NULL is "http" (an HTTP/1.1 request to the sidecar). */
    const char *scheme;
} route_request_t;

typedef struct route_result {
    cluster_t *cluster;  /* NULL: nowhere to send (see status) */
    int status;          /* when cluster is NULL: 404 no backend, 503 no target */
    uint64_t timeout_ms; /* per request; 0 = none */
    uint64_t idle_ms;
    retry_policy_t retry;
    target_stats_t *target; /* per-target counters, NULL for ingress / node providers */
    const char *service;    /* virtual service name (egress) */
    const char *reason;     /* for a local reply */
    int passthrough;        /* ALLOW_ALL: send to the request's original destination */
    /* The node listener's connectionPool (ingress): at most max_requests requests in flight
     * to the app (HTTP/1.1: one per connection), max_pending more waiting; 0 = unlimited. */
    uint32_t max_requests, max_pending;
    /* Egress: originate TLS with this context (the client policy, or App Mesh's unchecked
     * TLS toward a node whose listener has it); NULL: plaintext. Held by the snapshot. */
    tls_ctx_t *tls;
    /* The rollout driving the matched route's weights (for the trace), or NULL; its canary's
     * weight in this snapshot. Held by the snapshot. */
    const char *rollout;
    unsigned rollout_weight;
    /* The target speaks HTTP/2: the listener of the node it reaches (ingress: this node's
     * listener) has protocol http2 or grpc. Plaintext is h2c with prior knowledge; over TLS,
     * ALPN offers h2 alone. */
    unsigned upstream_h2 : 1;
    /* The request matched a grpcRoute (ingress: a grpc listener). */
    unsigned grpc : 1;
} route_result_t;

typedef struct route_table route_table_t;

/* Build the table for `node_name`; takes ownership of `cfg` (freed with the table, or at once
 * on failure). Returns NULL with diagnostics (e.g. a TLS file that does not load).
 * The config is first cut to what the node reaches (config_prune: route_table_config() holds
 * only those resources), and its proxy.default_retry_policy is settled to 0 or 1: the
 * environment's REMORA_DEFAULT_RETRY_POLICY (0 or 1) wins over the document, and the policy
 * is on when neither says. */
route_table_t *route_table_build(config_t *cfg, const char *node_name, registry_t *reg, diag_t *d);
/* `node_name` ROUTE_GATEWAY_PREFIX "NAME": the table of virtual gateway NAME (its listeners as
 * ingress, its gateway routes; config_gateway_node). */
#define ROUTE_GATEWAY_PREFIX "virtualGateway/"
route_table_t *route_table_ref(route_table_t *rt);
void route_table_unref(route_table_t *rt);

const config_t *route_table_config(const route_table_t *rt);
const cfg_node_t *route_table_node(const route_table_t *rt);

/* A node listener as ingress serves it. */
typedef struct route_listener {
    route_result_t r; /* to the local app: its cluster, timeouts, connectionPool limits */
    uint16_t port;
    int tcp; /* bytes are relayed as they are: no HTTP */
    enum tls_mode tls_mode;
    tls_ctx_t *tls; /* when tls_mode is not DISABLED */
} route_listener_t;

/* The listener a connection to ingress is for: the one on `port` (its original destination),
 * else the node's first. */
const route_listener_t *route_ingress(const route_table_t *rt, uint16_t port);

/* What the original destination port of a connection to egress is (App Mesh routes TCP by
 * port alone, so two TCP backends cannot share one). */
enum route_port {
    PORT_NONE, /* no backend listens there */
    PORT_HTTP, /* an HTTP backend's: the Host decides */
    PORT_TCP,  /* a TCP backend's: *out is filled with its pick */
};
enum route_port route_egress_port(route_table_t *rt, uint16_t port, route_result_t *out);
/* ALLOW_ALL: 1 with *out set to send a connection where the app sent it; 0 under DROP_ALL. */
int route_egress_passthrough(const route_table_t *rt, route_result_t *out);
/* App Mesh's default for TCP: connect failures are retried twice, on other endpoints. */
#define ROUTE_TCP_CONNECT_RETRIES 2
/* The snapshot goes into force: each cluster it sends to over TLS health-checks over TLS with
 * the same context (a cluster reached under several policies takes the first). Main thread. */
void route_table_set_health_tls(const route_table_t *rt);
/* Every file the snapshot's TLS contexts were loaded from (a rotation is watched on them). */
void route_table_tls_files(const route_table_t *rt, void (*fn)(void *arg, const char *path),
                           void *arg);
/* Fills *out: a cluster to send to, or (cluster NULL) a status and reason to answer with. */
void route_egress(route_table_t *rt, const route_request_t *req, route_result_t *out);

/* A gateway route's rewrite of the request. The caller gives `target` room for `cap` bytes
 * (the request's path and query plus ROUTE_REWRITE_SLACK); route_gateway writes the new
 * path?query there. */
#define ROUTE_REWRITE_SLACK 260
typedef struct route_rewrite {
    char *target;
    size_t cap;
    size_t target_len, path_len; /* of the rewritten target, and of its path */
    const char *host;            /* the new Host (the target virtual service), or NULL: kept */
    const char *route;           /* the gateway route's name */
} route_rewrite_t;

/* A request to the virtual gateway on its listener `port`: the first gateway route in match
 * order that takes it (priority, then longer prefix, then document order) is applied: *rw
 * says how the request changes, and *out is where it goes, routed as egress routes a request
 * to the target virtual service, with the rewritten path and Host. Returns 0 when no gateway
 * route matches (out says 404). `req.path` must be normalized (no query). */
int route_gateway(route_table_t *rt, uint16_t port, const route_request_t *req, route_rewrite_t *rw,
                  route_result_t *out);

/* The weighted schedule (smooth weighted round-robin): for weights w, an order of
 * sum(w) picks in which target i appears exactly w[i] times, spread evenly. Returns the length
 * (0 when every weight is 0); `out` holds at least sum(w) entries. */
unsigned route_schedule(const unsigned *weights, unsigned n, uint8_t *out);

#endif
