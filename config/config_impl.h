/* Inside config/: what config.c (parsing, lookups) shares with prune.c (what a node reaches). */
#ifndef REMORA_CONFIG_IMPL_H
#define REMORA_CONFIG_IMPL_H

#include <cjson/cJSON.h>

#include "config/config.h"
#include "config/json.h"

/* Parsers config_gateway.c shares: a listener (`gateway`: a virtual gateway's, which has no
 * outlierDetection or timeout and speaks http, http2 or grpc), an HTTP match (`gateway`: a
 * gateway route's, which may also match `hostname`, parsed by the caller), header or metadata
 * matchers, logging. */
void cfg_parse_listener(jctx_t *j, const cJSON *o, const char *path, cfg_listener_t *l,
                        int gateway);
/* spec.listeners parsed into a new array (a gateway's: 1..50 required; a node's: 0..50). */
cfg_listener_t *cfg_parse_listeners(jctx_t *j, const cJSON *spec, const char *path, int gateway,
                                    unsigned *n);
void cfg_parse_match(jctx_t *j, const cJSON *o, const char *path, cfg_route_t *r, int gateway);
void cfg_parse_header_list(jctx_t *j, const cJSON *o, const char *path, const char *key,
                           cfg_route_t *r);
void cfg_parse_logging(jctx_t *j, const cJSON *o, const char *path, cfg_access_log_t *al);
void cfg_free_listener(cfg_listener_t *l);
void cfg_free_access_log(cfg_access_log_t *al);
/* An element of the resource list `key` ("virtualNodes", ...) as the object to parse: itself,
 * or, for `aws appmesh describe-*` output pasted whole ({"virtualNode": {...}}), its one member,
 * whose name then ends `path` (JPATH_MAX bytes). NULL, reported, when it is not an object. */
const cJSON *cfg_list_item(jctx_t *j, const cJSON *item, const char *key, char *path);
/* Parse the document's virtualGateways and gatewayRoutes (config_gateway.c). */
void config_parse_gateways(jctx_t *j, const cJSON *root, config_t *c);
void config_validate_gateways(const config_t *c, diag_t *d);
void config_free_gateways(config_t *c);
/* Parse and check the document's rollouts (config_rollout.c), after the routes are parsed:
 * their routers, routes and targets must exist in `c`. */
void config_parse_rollouts(jctx_t *j, const cJSON *root, config_t *c);
void config_free_rollouts(config_t *c);

/* Each frees what the resource owns, not the resource itself. */
void cfg_free_node(cfg_node_t *n);
void cfg_free_service(cfg_service_t *s);
void cfg_free_router(cfg_router_t *r);
void cfg_free_route(cfg_route_t *r);

/* (Re)builds c->index over the lists as they are. Returns 0 or UV_ENOMEM (no index: every
 * lookup finds nothing). */
int config_index_build(config_t *c);
void config_index_free(config_t *c);

#endif
