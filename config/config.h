/* The mesh configuration as plain C structs: App Mesh resources as `aws appmesh describe-*`
 * returns them (ranges and defaults: shared/reference/appmesh.md), plus remora's own `proxy`
 * object. Nothing outside config/ sees cJSON.
 *
 * config_parse() validates everything App Mesh validates, and the references between
 * resources, and reports every problem at once as "SOURCE: json.path: message". It holds the
 * whole document; config_prune() then keeps only what one node reaches (a fleet's document
 * holds the whole mesh, a sidecar needs a few percent of it), which is what a route table owns.
 * A config_t owns every string in it and is immutable once it is in a route table. */
#ifndef REMORA_CONFIG_H
#define REMORA_CONFIG_H

#include <stdint.h>

#include "config/diag.h"

enum egress_filter { EGRESS_DROP_ALL, EGRESS_ALLOW_ALL };
enum discovery_kind { DISCOVERY_NONE, DISCOVERY_DNS, DISCOVERY_CLOUD_MAP };
enum provider_kind { PROVIDER_NONE, PROVIDER_NODE, PROVIDER_ROUTER };
enum ip_preference { IP_DEFAULT, IP_V4_PREFERRED, IP_V6_PREFERRED, IP_V4_ONLY, IP_V6_ONLY };
enum dns_response { DNS_LOADBALANCER, DNS_ENDPOINTS };
enum path_match { PATH_PREFIX, PATH_EXACT, PATH_REGEX }; /* PATH_PREFIX with path NULL: any */
enum header_match { HM_PRESENT, HM_EXACT, HM_PREFIX, HM_SUFFIX, HM_REGEX, HM_RANGE };
/* A portMapping's protocol, in the API's order. */
enum port_protocol { PROTO_HTTP, PROTO_TCP, PROTO_HTTP2, PROTO_GRPC };
/* A route's kind: the spec member it was given as. */
enum route_kind { ROUTE_HTTP, ROUTE_HTTP2, ROUTE_GRPC, ROUTE_TCP };

#define DURATION_UNSET UINT64_MAX

/* App Mesh's HTTP retry events, as a bit set. */
#define RETRY_SERVER_ERROR     (1u << 0) /* 500, 501, 502, 503, 504, 505, 506, 507, 508, 510, 511 */
#define RETRY_GATEWAY_ERROR    (1u << 1) /* 502, 503, 504 */
#define RETRY_CLIENT_ERROR     (1u << 2) /* 409 */
#define RETRY_STREAM_ERROR     (1u << 3) /* reset or closed before the response head */
#define RETRY_CONNECTION_ERROR (1u << 4) /* tcpRetryEvents: connect failure */
#define RETRY_HTTP_503         (1u << 5) /* 503 alone: App Mesh's default policy, not an event */

/* App Mesh's default retry policy (shared/reference/appmesh.md, "Default retry policy"): what a
 * route without a retryPolicy, and a virtual node provider, get unless it is turned off. Envoy
 * has no per-try timeout there, so none: the route's per-request timeout bounds every attempt.
 * A grpcRoute (and a virtual node provider whose listener is grpc) also retries UNAVAILABLE. */
#define DEFAULT_RETRY_MAX         2
#define DEFAULT_RETRY_EVENTS      (RETRY_HTTP_503 | RETRY_STREAM_ERROR | RETRY_CONNECTION_ERROR)
#define DEFAULT_GRPC_RETRY_EVENTS GRPC_RETRY_UNAVAILABLE

/* grpcRetryEvents, as a bit set. */
#define GRPC_RETRY_CANCELLED          (1u << 0)
#define GRPC_RETRY_DEADLINE_EXCEEDED  (1u << 1)
#define GRPC_RETRY_INTERNAL           (1u << 2)
#define GRPC_RETRY_RESOURCE_EXHAUSTED (1u << 3)
#define GRPC_RETRY_UNAVAILABLE        (1u << 4)

typedef struct cfg_health_check {
    int present;
    char *protocol; /* http, tcp, http2, grpc */
    char *path;
    uint16_t port;
    uint32_t interval_ms, timeout_ms;
    unsigned healthy_threshold, unhealthy_threshold;
} cfg_health_check_t;

typedef struct cfg_outlier {
    int present;
    uint64_t max_server_errors;
    uint64_t interval_ms, base_ejection_ms;
    unsigned max_ejection_percent;
} cfg_outlier_t;

/* TLS (App Mesh's listener `tls` and `clientPolicy.tls`; shared/reference/tls-h2-grpc.md §1.11).
 * Only file sources exist here: `acm` and `sds` are refused by config_parse with what to do
 * instead. `path` is the JSON path of the `tls` object, for diagnostics about its files. */
enum tls_mode { TLS_DISABLED, TLS_STRICT, TLS_PERMISSIVE };

typedef struct cfg_tls_validation {
    char *trust_file; /* trust.file.certificateChain (PEM CA bundle) */
    char **sans;      /* subjectAlternativeNames.match.exact; none: not checked (listener) or the
                       * target's discovery name (client) */
    unsigned nsans;
} cfg_tls_validation_t;

typedef struct cfg_listener_tls {
    enum tls_mode mode; /* TLS_DISABLED when the listener has no `tls` */
    char *path;
    char *cert_chain, *private_key; /* certificate.file */
    int has_validation;             /* mTLS: client certificates required and checked */
    cfg_tls_validation_t validation;
} cfg_listener_tls_t;

typedef struct cfg_client_tls {
    int present;
    char *path;
    int enforce;     /* default 1 */
    uint16_t *ports; /* none: every port */
    unsigned nports;
    char *cert_chain, *private_key; /* certificate.file: a client certificate (mTLS); NULL: none */
    cfg_tls_validation_t validation;
} cfg_client_tls_t;

typedef struct cfg_listener {
    uint16_t port;
    char *protocol;          /* http, http2, grpc, tcp */
    uint64_t per_request_ms; /* DURATION_UNSET when not given */
    uint64_t idle_ms;
    uint32_t max_connections; /* connectionPool; 0 = unlimited */
    uint32_t max_pending;     /* 0 = unlimited */
    cfg_health_check_t health;
    cfg_outlier_t outlier;
    cfg_listener_tls_t tls;
} cfg_listener_t;

/* logging.accessLog.file (App Mesh FileAccessLog). No path: no access log. The format is
 * compiled, and the file opened, by proxy/access_log.c when the snapshot is built. */
enum access_log_format { ACCESS_LOG_DEFAULT, ACCESS_LOG_TEXT, ACCESS_LOG_JSON };

typedef struct cfg_json_field {
    char *key, *value; /* value: a format string, like `text` */
} cfg_json_field_t;

typedef struct cfg_access_log {
    char *path;  /* the file: 1..255 characters; NULL when the node has no access log */
    char *where; /* JSON path of the `file` object, for diagnostics about its format */
    enum access_log_format format;
    char *text;             /* format.text: 1..1000 characters */
    cfg_json_field_t *json; /* format.json: 1..100 pairs, keys distinct, in order */
    unsigned njson;
} cfg_access_log_t;

typedef struct cfg_attribute {
    char *key, *value;
} cfg_attribute_t;

typedef struct cfg_node {
    char *name;
    unsigned index; /* position in the document's virtualNodes, for messages */
    cfg_listener_t *listeners;
    unsigned nlisteners;
    enum discovery_kind discovery;
    char *hostname; /* dns */
    enum dns_response response_type;
    char *namespace_name; /* awsCloudMap */
    char *service_name;
    cfg_attribute_t *attributes; /* awsCloudMap.attributes: instances must match all */
    unsigned nattributes;
    enum ip_preference ip_preference; /* the node's own, else the mesh's serviceDiscovery's */
    char **backends;                  /* virtual service names */
    cfg_client_tls_t *backend_tls;    /* per backend, parallel to `backends` (present = 0: none) */
    unsigned nbackends;
    cfg_client_tls_t default_tls; /* backendDefaults.clientPolicy.tls */
    cfg_access_log_t access_log;  /* logging.accessLog */
} cfg_node_t;

typedef struct cfg_service {
    char *name;
    unsigned index; /* position in the document's virtualServices */
    enum provider_kind provider;
    char *provider_name;
} cfg_service_t;

typedef struct cfg_router {
    char *name;
    unsigned index; /* position in the document's virtualRouters */
    uint16_t *ports;
    uint8_t *tcp;      /* per listener, parallel to ports: its protocol is tcp */
    uint8_t *protocol; /* per listener, parallel to ports: enum port_protocol */
    unsigned nports;
} cfg_router_t;

typedef struct cfg_target {
    char *node;
    unsigned weight;
    uint16_t port; /* 0 when not given */
} cfg_target_t;

typedef struct cfg_header_match {
    char *name;
    int invert;
    enum header_match kind;
    char *value;        /* exact, prefix, suffix, regex */
    int64_t start, end; /* range: [start, end) */
} cfg_header_match_t;

typedef struct cfg_query_match {
    char *name;
    char *exact; /* NULL: the parameter must be present */
} cfg_query_match_t;

typedef struct cfg_route {
    char *router;
    char *name;
    unsigned index; /* position in the document's routes, for messages */
    enum route_kind kind;
    int tcp; /* a tcpRoute: only port, targets and idle apply */
    /* `router` and every targets[].node point at the kept router's and nodes' own names
     * (config_prune shares them: 2,500 routes need not hold 7,500 copies), not owned. */
    int shared_names;
    int priority; /* -1 when not given */
    enum path_match path_kind;
    char *path; /* prefix, exact path or regex; NULL: no prefix nor path, so every path */
    int method; /* enum http_method, -1 for any */
    int scheme; /* http2Route match.scheme: 0 http, 1 https, -1 any */
    uint16_t port;
    cfg_header_match_t *headers; /* grpcRoute: its metadata matchers */
    unsigned nheaders;
    char *grpc_service, *grpc_method; /* grpcRoute match.serviceName, methodName */
    cfg_query_match_t *query;
    unsigned nquery;
    cfg_target_t *targets;
    unsigned ntargets;
    int has_retry;
    unsigned max_retries;
    uint64_t per_retry_ms;
    unsigned retry_events;      /* RETRY_* bits */
    unsigned grpc_retry_events; /* GRPC_RETRY_* bits */
    uint64_t per_request_ms;    /* DURATION_UNSET when not given */
    uint64_t idle_ms;
} cfg_route_t;

/* A virtual gateway (VirtualGatewaySpec): listeners (portMapping, healthCheck, connectionPool,
 * tls, as a node listener's but http, http2 or grpc), the client policy toward the mesh
 * (backendDefaults.clientPolicy), logging. */
#define GATEWAY_MAX_LISTENERS 8

typedef struct cfg_gateway {
    char *name;
    unsigned index; /* position in the document's virtualGateways */
    cfg_listener_t *listeners;
    unsigned nlisteners;
    cfg_client_tls_t default_tls;
    cfg_access_log_t access_log;
} cfg_gateway_t;

enum gw_host { GW_HOST_ANY, GW_HOST_EXACT, GW_HOST_SUFFIX };

/* A gateway route (GatewayRouteSpec), with App Mesh's defaults settled: a prefix match
 * rewrites the prefix to "/" and Host to the target virtual service unless told otherwise. */
typedef struct cfg_gateway_route {
    char *gateway, *name;
    unsigned index; /* position in the document's gatewayRoutes */
    /* The match in a route's shape: kind, priority, path (prefix, exact, regex; NULL: any),
     * method, port, headers (gRPC: metadata), query, grpc_service. No targets. */
    cfg_route_t match;
    enum gw_host host_kind; /* match.hostname */
    char *host;
    char *service;         /* action.target.virtualService.virtualServiceName */
    uint16_t service_port; /* action.target.port; 0 when not given */
    int rewrite_host;      /* rewrite.hostname.defaultTargetHostname: 1 ENABLED (default), 0 */
    int rewrite_prefix;    /* rewrite.prefix.defaultPrefix: 1 ENABLED (default), 0 */
    char *prefix_value;    /* rewrite.prefix.value: the matched prefix becomes this */
    char *path_exact;      /* rewrite.path.exact: the path becomes this */
} cfg_gateway_route_t;

/* A rollout (remora's own `rollouts` list, docs/rollouts.md): drives one httpRoute's weights
 * from its baseline target to its canary target, step by step, judged by an analysis of each
 * interval's requests. Durations in milliseconds. */
typedef struct cfg_rollout_step {
    unsigned weight;  /* the canary's share, 0..100 */
    uint64_t hold_ms; /* DURATION_UNSET on the last step (reaching it is promotion) */
} cfg_rollout_step_t;

typedef struct cfg_rollout {
    char *name;
    unsigned index; /* position in the document's rollouts */
    char *router, *route, *baseline, *canary;
    int64_t start_ms; /* startTime, Unix ms; -1: when the rollout was first loaded */
    cfg_rollout_step_t *steps;
    unsigned nsteps;
    uint64_t interval_ms;
    unsigned min_requests; /* canary requests an interval needs to be judged (>= 1) */
    double max_error_rate, max_error_rate_increase, confidence;
    uint64_t max_p99_ms; /* DURATION_UNSET: no latency gate */
    unsigned failure_limit;
    uint64_t digest; /* of the element's text: a changed spec starts the rollout over */
} cfg_rollout_t;

/* Which awsCloudMap nodes are discovered through the Cloud Map API rather than DNS. */
enum cloudmap_use { CLOUDMAP_API_ATTRIBUTES, CLOUDMAP_API_ALWAYS, CLOUDMAP_API_NEVER };
/* DiscoverInstances' HealthStatus filter. */
enum cloudmap_health { CM_HEALTHY_OR_ELSE_ALL, CM_HEALTHY, CM_UNHEALTHY, CM_ALL };

/* remora's own settings from the config file; CLI flags and env vars override them. */
typedef struct cfg_proxy {
    char *node;
    char *gateway;                          /* proxy.gateway: serve this virtual gateway */
    int ingress_port, egress_port, workers; /* -1 when not given */
    char *admin;                            /* "addr:port" */
    char *log_level;
    uint64_t request_header_timeout_ms;
    uint64_t drain_timeout_ms;
    char *dns_servers; /* "ip:port,ip:port" from proxy.dns.servers */
    uint64_t dns_hold_ms;
    int xray_enabled; /* proxy.xray.enabled */
    char *xray_daemon, *xray_manifest, *xray_segment_name;
    double xray_rate;                               /* -1 when not given */
    int cloudmap_use;                               /* enum cloudmap_use; -1 when not given */
    int cloudmap_health;                            /* enum cloudmap_health; -1 when not given */
    uint64_t cloudmap_poll_ms, cloudmap_refresh_ms; /* DURATION_UNSET when not given */
    /* proxy.defaultRetryPolicy: 1, 0, or -1 when not given. route_table_build() settles it in
     * the config it owns to 0 or 1 (REMORA_DEFAULT_RETRY_POLICY wins; on by default). */
    int default_retry_policy;
} cfg_proxy_t;

/* How many of each resource list. */
typedef struct cfg_counts {
    unsigned nodes, services, routers, routes;
} cfg_counts_t;

struct config_index; /* by-name lookups (config.c) */

typedef struct config {
    char *source; /* file name for diagnostics, or "REMORA_CONFIG_JSON" */
    /* The document as given, for /config_dump. After a config_prune() that left something out:
     * the document cut to the resources kept, in document order, each as given but without
     * whitespace between tokens (and a node other than the pruned-for one without its
     * `backends`); itself a valid document that parses and prunes to the same config. */
    char *raw;
    size_t raw_len;
    char *mesh_name;
    enum egress_filter egress_filter;
    enum ip_preference ip_preference; /* mesh.spec.serviceDiscovery.ipPreference */
    cfg_node_t *nodes;
    unsigned nnodes;
    cfg_service_t *services;
    unsigned nservices;
    cfg_router_t *routers;
    unsigned nrouters;
    cfg_route_t *routes;
    unsigned nroutes;
    cfg_gateway_t *gateways;
    unsigned ngateways;
    cfg_gateway_route_t *gateway_routes;
    unsigned ngateway_routes;
    cfg_rollout_t *rollouts; /* remora's own `rollouts` */
    unsigned nrollouts;
    /* The gateway a table was built for (config_gateway_node): its node stands for it. */
    const cfg_gateway_t *serving_gateway;
    cfg_proxy_t proxy;
    cfg_counts_t document; /* what the document holds, before any pruning */
    char *pruned_for;      /* the node config_prune() kept what it reaches for; NULL: the whole */
    struct config_index *index;
} config_t;

/* Parse and validate a JSON document. Returns a config, or NULL with every problem in `d`. */
config_t *config_parse(const char *json, size_t len, const char *source, diag_t *d);
/* Read, parse and validate a file. */
config_t *config_load_file(const char *path, diag_t *d);
void config_free(config_t *c);

/* By name, in constant time (a hash index built by config_parse and config_prune); NULL when
 * absent. Virtual service names are compared without case. */
const cfg_node_t *config_node(const config_t *c, const char *name);
const cfg_service_t *config_service(const config_t *c, const char *name);
const cfg_router_t *config_router(const config_t *c, const char *name);
const cfg_gateway_t *config_gateway(const config_t *c, const char *name);

/* The gateway named `name` served through a virtual node of the same name that stands for it
 * (added to c->nodes): its backends are the virtual services its gateway routes target, its
 * client policy and logging the gateway's. Then routing builds the gateway as it builds a
 * sidecar's egress. Returns that node's name (owned by c) or NULL with diagnostics. */
const char *config_gateway_node(config_t *c, const char *name, diag_t *d);

/* Keeps only what `node` reaches, and frees the rest: the node; the virtual services its
 * backends name; their providers (virtual nodes, and virtual routers with all their routes);
 * those routes' target nodes. `raw` is cut to the same resources. Resources keep their `index`
 * (their place in the document), so messages still name the document's paths. Returns 0,
 * ERR_CONFIG when the node is not in the config (said in `d`), or UV_ENOMEM. */
int config_prune(config_t *c, const char *node, diag_t *d);

/* Cross-resource checks (config/validate.c), run by config_parse: references, unique names,
 * ports, and every regex compiles. */
void config_validate(const config_t *c, diag_t *d);

/* A deep copy of a rollout (its owner outlives the config it came from). Returns 0 or
 * UV_ENOMEM (dst then holds nothing to free). */
int config_rollout_copy(cfg_rollout_t *dst, const cfg_rollout_t *src);
void config_rollout_free(cfg_rollout_t *r); /* what it owns, not r itself */

#endif
