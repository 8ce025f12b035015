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

#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "config/diag.h"

#define STATSD_DATAGRAM     1432 /* fits one Ethernet frame */
#define STATSD_FLUSH_MS     5000 /* Envoy's stats_flush_interval */
#define STATSD_DEFAULT_ADDR "127.0.0.1"
#define STATSD_DEFAULT_PORT 8125

struct server;
typedef struct statsd statsd_t;

/* Where the sink sends, resolved with the other settings so that a bad one refuses start-up. */
typedef struct statsd_settings {
    int on;     /* ENABLE_ENVOY_DOG_STATSD=1 */
    int family; /* AF_UNIX (STATSD_SOCKET_PATH), AF_INET or AF_INET6 */
    struct sockaddr_storage to;
    socklen_t tolen;
    uint64_t flush_ms; /* REMORA_STATSD_FLUSH_MS, else STATSD_FLUSH_MS */
} statsd_settings_t;

/* From the environment. The other variables are read only when ENABLE_ENVOY_DOG_STATSD=1:
 * STATSD_SOCKET_PATH wins, else STATSD_ADDRESS (an IPv4 or IPv6 address) and STATSD_PORT
 * (1..65535). Problems go to `d` (source "settings", the variable as the path); returns 0 or
 * ERR_CONFIG. */
int statsd_settings_resolve(statsd_settings_t *st, diag_t *d);
/* The sink for `s->set.statsd`; NULL when it is off (or no socket could be had: logged). */
statsd_t *statsd_start(struct server *s, uv_loop_t *loop);
/* Flush now (tests, shutdown) and stop. */
void statsd_stop(statsd_t *d);

#endif
