/* Active health checks, run from the main loop against every endpoint of a cluster, as the
 * target node's listener `healthCheck` says: http (HTTP/1.1 GET path, 200..399 is healthy),
 * http2 (the same over HTTP/2), grpc (grpc.health.v1.Health/Check answers SERVING) or tcp (a
 * connect), with its interval, timeout and thresholds; in TLS when the cluster's requests are
 * (http2 and grpc then offer only "h2" by ALPN). The HTTP/2 exchange is health_h2.c's.
 * Checks are spread over the interval (one endpoint per tick), not fired all at once; a new
 * endpoint is healthy until proven otherwise. The verdict is endpoint_state_t.unhealthy, which
 * cluster_pick reads. */
#ifndef REMORA_HEALTH_H
#define REMORA_HEALTH_H

#include <uv.h>

#include "config/config.h"
#include "discovery/cluster.h"

typedef struct health health_t;

/* Start, reconfigure (cfg changed) or stop (cfg NULL) the checker of `c`; returns the checker
 * in force (NULL when none). */
health_t *health_sync(health_t *h, uv_loop_t *loop, cluster_t *c, const cfg_health_check_t *cfg);
void health_stop(health_t *h);

#endif
