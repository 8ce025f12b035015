/* Inside config/: what config.c (parsing, lookups) shares with prune.c (what a node reaches). */
#ifndef REMORA_CONFIG_IMPL_H
#define REMORA_CONFIG_IMPL_H

#include "config/config.h"

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
