/* The mesh configuration as plain C structs: App Mesh resources as `aws appmesh describe-*`
 * returns them, plus remora's own `proxy` object. Nothing outside config/ sees cJSON.
 *
 * A config_t is immutable once loaded and owns every string in it. */
#ifndef REMORA_CONFIG_H
#define REMORA_CONFIG_H

#include <stdint.h>

#include "config/diag.h"

enum egress_filter { EGRESS_DROP_ALL, EGRESS_ALLOW_ALL };
enum discovery_kind { DISCOVERY_NONE, DISCOVERY_DNS, DISCOVERY_CLOUD_MAP };
enum provider_kind { PROVIDER_NONE, PROVIDER_NODE, PROVIDER_ROUTER };

#define DURATION_UNSET UINT64_MAX

typedef struct cfg_listener {
    uint16_t port;
    char *protocol;          /* http, http2, grpc, tcp */
    uint64_t per_request_ms; /* DURATION_UNSET when not given */
    uint64_t idle_ms;
} cfg_listener_t;

typedef struct cfg_node {
    char *name;
    cfg_listener_t *listeners;
    unsigned nlisteners;
    enum discovery_kind discovery;
    char *hostname;       /* dns */
    char *namespace_name; /* awsCloudMap */
    char *service_name;
    char **backends; /* virtual service names */
    unsigned nbackends;
} cfg_node_t;

typedef struct cfg_service {
    char *name;
    enum provider_kind provider;
    char *provider_name;
} cfg_service_t;

typedef struct cfg_router {
    char *name;
    uint16_t *ports;
    unsigned nports;
} cfg_router_t;

typedef struct cfg_target {
    char *node;
    unsigned weight;
    uint16_t port; /* 0 when not given */
} cfg_target_t;

typedef struct cfg_route {
    char *router;
    char *name;
    int priority; /* -1 when not given */
    cfg_target_t *targets;
    unsigned ntargets;
} cfg_route_t;

/* remora's own settings from the config file; CLI flags and env vars override them. */
typedef struct cfg_proxy {
    char *node;
    int ingress_port, egress_port, workers; /* -1 when not given */
    char *admin;                            /* "addr:port" */
    char *log_level;
    uint64_t request_header_timeout_ms;
    uint64_t drain_timeout_ms;
} cfg_proxy_t;

typedef struct config {
    char *source; /* file name for diagnostics, or "REMORA_CONFIG_JSON" */
    char *mesh_name;
    enum egress_filter egress_filter;
    cfg_node_t *nodes;
    unsigned nnodes;
    cfg_service_t *services;
    unsigned nservices;
    cfg_router_t *routers;
    unsigned nrouters;
    cfg_route_t *routes;
    unsigned nroutes;
    cfg_proxy_t proxy;
} config_t;

/* Parse a JSON document. Returns a config, or NULL with every problem added to `d`. */
config_t *config_parse(const char *json, size_t len, const char *source, diag_t *d);
/* Read and parse a file. */
config_t *config_load_file(const char *path, diag_t *d);
void config_free(config_t *c);

const cfg_node_t *config_node(const config_t *c, const char *name);
const cfg_service_t *config_service(const config_t *c, const char *name);

#endif
