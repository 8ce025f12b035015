/* The DogStatsD sink, as the App Mesh Envoy image turns it on (ENABLE_ENVOY_DOG_STATSD=1,
 * STATSD_ADDRESS, STATSD_PORT, STATSD_SOCKET_PATH): every flush interval, each counter that
 * was ever written goes out as `envoy.NAME:DELTA|c|#tags`, each gauge as `|g`, with Envoy's
 * tag-extracted names and dotted tags (metrics.h), plus appmesh.mesh and appmesh.virtual_node
 * when ENABLE_ENVOY_STATS_TAGS=1. Histograms go as timers: one `|ms` line per bucket that
 * gained samples, at the bucket's middle, with the sample rate standing for how many (so the
 * agent counts them all) — Envoy sends one line per sample, which the workers here never pay
 * for.
 *
 * Lines are packed into datagrams of at most STATSD_DATAGRAM bytes and sent without blocking
 * (a full socket buffer or an absent agent costs a counted drop, nothing else). Main thread. */
#ifndef REMORA_STATSD_H
#define REMORA_STATSD_H

#include <uv.h>

#define STATSD_DATAGRAM     1432 /* fits one Ethernet frame */
#define STATSD_FLUSH_MS     5000 /* Envoy's stats_flush_interval */
#define STATSD_DEFAULT_ADDR "127.0.0.1"
#define STATSD_DEFAULT_PORT 8125

struct server;
typedef struct statsd statsd_t;

/* From the environment; NULL when the sink is off. A bad setting is logged and leaves it off. */
statsd_t *statsd_start(struct server *s, uv_loop_t *loop);
/* Flush now (tests, shutdown) and stop. */
void statsd_stop(statsd_t *d);

#endif
