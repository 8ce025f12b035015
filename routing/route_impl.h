/* Inside routing/: the route table's parts, shared by route.c (HTTP routes, building),
 * route_tcp.c (ports, TCP routes, ingress listeners) and route_tls.c (TLS contexts). */
#ifndef REMORA_ROUTE_IMPL_H
#define REMORA_ROUTE_IMPL_H

#include <regex.h>

#include "routing/route.h"

#define MAX_TARGETS 10

/* One per route the node reaches, about a hundred bytes: a sidecar whose backends lead to 50
 * routers of 50 routes holds 2,500. What varies in size (targets, schedules) lives in slabs of
 * the table, one allocation each. */
typedef struct route {
    const cfg_route_t *cfg;
    unsigned index;   /* position in the document (cfg->index), for diagnostics and stable order */
    unsigned pos;     /* position in its router's match order: backend_t.route_tls is by it */
    regex_t *path_re; /* match.path.regex, else NULL */
    regex_t *header_re;      /* one per header matcher when any is a regex, else NULL */
    unsigned header_has_re;  /* bit per header matcher */
    cluster_t **clusters;    /* per target (cfg->ntargets), in the table's cluster slab */
    unsigned h2_targets;     /* bit per target: its listener speaks HTTP/2 (route_speaks_h2) */
    target_stats_t **stats;  /* per target, in the table's stats slab */
    const uint8_t *schedule; /* schedule_len picks, in the table's schedule slab */
    unsigned schedule_len;
    _Atomic unsigned cursor;
    retry_policy_t retry;
    uint64_t timeout_ms, idle_ms;
    const char *rollout;     /* the rollout driving this route's weights, or NULL */
    unsigned rollout_weight; /* its canary's weight in this table */
} route_t;

typedef struct router {
    const cfg_router_t *cfg;
    route_t **routes; /* in match order */
    unsigned nroutes;
} router_t;

typedef struct backend {
    const cfg_service_t *svc;
    cluster_t *cluster;             /* virtual node provider */
    unsigned h2 : 1, grpc : 1;      /* its listener's protocol: http2 or grpc, grpc */
    router_t *router;               /* virtual router provider */
    const cfg_client_tls_t *policy; /* its client policy (own or the defaults), or NULL */
    tls_ctx_t *tls;                 /* toward the provider node */
    tls_ctx_t **route_tls; /* toward target t of route r: [r->pos * MAX_TARGETS + t]; NULL: none */
} backend_t;

/* An egress port served by TCP: a backend's router listener (its tcpRoute) or node listener. */
typedef struct tcp_port {
    uint16_t port;
    const backend_t *b;
    route_t *route;     /* the router's tcpRoute, or NULL */
    cluster_t *cluster; /* a node provider's */
    tls_ctx_t *tls;     /* toward that node */
} tcp_port_t;

struct route_table {
    _Atomic unsigned refs;
    config_t *cfg;
    const cfg_node_t *node;
    cluster_t *passthrough;    /* ALLOW_ALL's original-destination cluster */
    route_listener_t *ingress; /* one per node listener (a placeholder when it has none) */
    unsigned ningress;
    tcp_port_t *tcp_ports; /* egress: the ports of TCP backends */
    unsigned ntcp_ports;
    uint16_t *http_ports; /* egress: the ports of HTTP backends */
    unsigned nhttp_ports;
    tls_ctx_t **tls_held; /* every context in the table, one reference each */
    unsigned ntls_held;
    backend_t *backends;
    unsigned nbackends;
    router_t *routers;
    unsigned nrouters;
    route_t *routes;
    unsigned nroutes;
    route_t **by_router; /* every router's routes in match order, one router after another */
    cluster_t **cluster_slab;
    target_stats_t **stats_slab;
    uint8_t *schedule_slab;
    /* App Mesh's default retry policy, for routes without a retryPolicy and for virtual node
     * providers; max_retries and events 0 when turned off. */
    retry_policy_t default_retry;
    /* A virtual gateway's table (route_gateway.c): its routes in match order. */
    struct gw_route *gw_routes;
    unsigned ngw_routes;
};

uint64_t route_or_default(uint64_t v, uint64_t dflt);
/* The spec member of each enum route_kind ("httpRoute", ...), for diagnostics. */
extern const char *const route_kind_names[];
/* Whether a listener's protocol is http2 or grpc: what it serves is spoken to in HTTP/2. */
int route_listener_h2(const cfg_listener_t *l);
int route_listener_grpc(const cfg_listener_t *l);
/* Whether cluster `c` (a node's listener) speaks HTTP/2: the listener is chosen as TLS
 * chooses it (route_node_listener on the cluster's port: the target's port, else the node's
 * first listener). */
int route_speaks_h2(const config_t *cfg, const cluster_t *c);
/* Regexes of a match (path, headers or gRPC metadata) compiled; `where` is its JSON path
 * ("routes[3].spec.httpRoute") for diagnostics. */
int route_compile_match(route_t *r, const char *source, const char *where, diag_t *d);
/* Whether `r`'s match takes the request arriving on `port`. */
int route_match(const route_t *r, const route_request_t *req, uint16_t port);
/* Matching route order: priority, then longer match, then document order. */
int route_order(const void *a, const void *b);
/* Route to a backend (its provider): fills *out. */
void route_to_backend(const route_table_t *rt, const backend_t *b, const route_request_t *req,
                      route_result_t *out);
/* The backend for a virtual service name (case-insensitive, n bytes), or NULL. */
const backend_t *route_backend(const route_table_t *rt, const char *name, size_t n);
void route_result_init(route_result_t *out);
void route_no_target(route_result_t *out, int status, const char *reason);
void route_free_route(route_t *r);

/* route_gateway.c */
void route_build_gateway(route_table_t *rt, diag_t *d);
void route_free_gateway(route_table_t *rt);
/* The cluster named `name`, made on first use (route.c). */
cluster_t *route_registry_cluster(registry_t *reg, const char *name, const char *node,
                                  uint16_t port, int local);
/* The cluster of a node's listener on `port` (0: its first), named as App Mesh's Envoy does. */
cluster_t *route_egress_cluster(route_table_t *rt, registry_t *reg, const char *node_name,
                                uint16_t port);
const cfg_listener_t *route_node_listener(const cfg_node_t *n, uint16_t port);
void route_pick(route_t *r, const backend_t *b, route_result_t *out);
/* Hold a context for the table's life (NULL passes through). */
tls_ctx_t *route_hold_tls(route_table_t *rt, tls_ctx_t *t);

/* route_tls.c */
tls_ctx_t *route_client_tls(route_table_t *rt, registry_t *reg, const cfg_client_tls_t *policy,
                            const cluster_t *c, diag_t *d);
void route_build_tls(route_table_t *rt, registry_t *reg, diag_t *d);

/* route_tcp.c */
void route_build_ingress(route_table_t *rt, registry_t *reg, diag_t *d);
void route_build_ports(route_table_t *rt, registry_t *reg, diag_t *d);
void route_free_ports(route_table_t *rt);

#endif
