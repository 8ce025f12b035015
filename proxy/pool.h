/* Upstream connection pools: hand out client streams for (cluster, endpoint), one table per
 * worker, and admit requests under the connection-pool limits their route table snapshot
 * carries.
 *
 * Streams: an idle connection (most recently used first: warm sockets, while the cold ones age
 * out) or a new one. HTTP/1 carries one stream per connection; idle ones are kept up to
 * POOL_IDLE_MAX per endpoint for POOL_IDLE_TIMEOUT. HTTP/2 carries many: a stream goes on the
 * newest connection with room (h2_client_has_room: under the peer's MAX_CONCURRENT_STREAMS, no
 * GOAWAY), else on a new connection; one with no stream open closes after POOL_IDLE_TIMEOUT.
 * An entry with no connection left is freed.
 * Failures always arrive later, through the stream's on_error, never from inside the call.
 *
 * Admission (App Mesh's listener connectionPool, ingress): at most max_requests requests in
 * flight across workers, up to max_pending more wait in a per-worker queue, in order; beyond
 * that the request is refused (503, as Envoy's circuit breaker). The counts live in the
 * long-lived cluster; the limits come with each request. */
#ifndef REMORA_POOL_H
#define REMORA_POOL_H

#include <stdint.h>

#include "discovery/cluster.h"
#include "proxy/loop.h"
#include "proxy/h1_client.h"
#include "proxy/h2_client.h"
#include "proxy/stream.h"
#include "tls/tls.h"

#define POOL_IDLE_MAX        256   /* idle connections kept per endpoint per worker */
#define POOL_IDLE_TIMEOUT    60000 /* ms an idle upstream connection is kept */
#define POOL_CONNECT_TIMEOUT 5000  /* ms a connect may take */
#define POOL_BUCKETS         64

typedef struct pool pool_t;

typedef struct pool_table {
    loop_t *loop;
    h1_client_timeouts_t timeouts;
    h2_client_timeouts_t h2_timeouts;
    pool_t *buckets[POOL_BUCKETS];
    pool_t *with_idle; /* entries that hold idle connections (checked after discovery) */
    pool_t *with_h2;   /* HTTP/2 entries that hold connections taking streams */
    struct pool_wait *wait_head, *wait_tail;
    unsigned npools;
    /* A slot was freed while requests wait: wake every worker (they may wait anywhere). */
    void (*wake_all)(void *ctx);
    void *wake_ctx;
} pool_table_t;

/* A request's place in the admission queue; embedded in the exchange. */
typedef struct pool_wait {
    struct pool_wait *prev, *next;
    deferred_t later;
    cluster_t *cluster;
    uint32_t max_requests, max_pending;
    /* Admitted (POOL_GO) or refused (POOL_FULL); always from a later loop pass. */
    void (*cb)(struct pool_wait *w, int result);
    int result;
    unsigned queued : 1;
    unsigned admitted : 1; /* holds a slot: pool_done gives it back */
} pool_wait_t;

enum { POOL_GO, POOL_FULL };

void pool_table_init(pool_table_t *t, loop_t *l);
/* A stream to `ep` of `cl` over TLS with `tls` (NULL: plaintext), in HTTP/2 when `h2`,
 * reporting to (ev, ctx); `fresh` takes a new connection. Connections are pooled by (cluster,
 * endpoint, TLS context, protocol). NULL only when memory is exhausted. */
client_stream_t *pool_stream(pool_table_t *t, cluster_t *cl, const endpoint_t *ep, tls_ctx_t *tls,
                             int h2, int fresh, const stream_events_t *ev, void *ctx);

/* Admission: 1 when a slot was taken at once; 0 when the answer comes through w->cb. */
int pool_admit(pool_table_t *t, pool_wait_t *w);
/* Leave the queue, or give back the slot held. Idempotent. */
void pool_done(pool_table_t *t, pool_wait_t *w);
/* Admit waiting requests while slots last (a slot freed, on any worker). */
void pool_admit_waiting(pool_table_t *t);

/* Close idle connections to endpoints discovery removed; busy ones are not pooled again. */
void pool_close_departed(pool_table_t *t);
/* Close every idle connection (drain, shutdown). */
void pool_close_idle(pool_table_t *t);
/* The loop is ending and no connection is left: close the timeouts' timers. */
void pool_table_close(pool_table_t *t);

#endif
