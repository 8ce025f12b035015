/* Endpoints resolved once, at start-up, with the system resolver (blocking is allowed then and
 * only then). The discovery issue replaces this with c-ares on the loop, refreshed by TTL. */
#ifndef REMORA_RESOLVE_ONCE_H
#define REMORA_RESOLVE_ONCE_H

#include "config/config.h"
#include "discovery/cluster.h"

/* The endpoints of `node` at `port`: A/AAAA of its DNS hostname, or of SERVICE.NAMESPACE for
 * Cloud Map. Returns 0 (possibly with *n == 0 when nothing resolved) or a UV_E* code. */
int resolve_once(const cfg_node_t *node, uint16_t port, endpoint_t **out, unsigned *n);

#endif
