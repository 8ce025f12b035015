/* The HTTP/1.1 client codec: one connection to an upstream endpoint carrying one stream at a
 * time. Requests are framed on the way out (request line, Content-Length or chunked, the
 * coding list kept), responses parsed by the strict parser and reported as stream events.
 *
 * States: connecting -> busy (a stream is out) <-> idle (in its pool) -> closed. An idle
 * connection keeps reading, so an upstream that closes it, or sends a stray byte, is noticed
 * at once and the connection leaves the pool; no request is written to a connection known to
 * be closed. Freed only after its handles are closed. */
#ifndef REMORA_H1_CLIENT_H
#define REMORA_H1_CLIENT_H

#include <sys/socket.h>

#include "base/stats.h"
#include "proxy/conn.h"
#include "proxy/stream.h"
#include "proxy/tqueue.h"

typedef struct h1_client h1_client_t;

/* The connect and idle timeouts, shared by a pool table's connections (tqueue.h). */
typedef struct h1_client_timeouts {
    tqueue_t connect_q; /* then the stream fails with UV_ETIMEDOUT */
    tqueue_t idle_q;    /* then a pooled connection is closed */
} h1_client_timeouts_t;

void h1_client_timeouts_init(h1_client_timeouts_t *t, loop_t *l, uint64_t connect_ms,
                             uint64_t idle_ms);
/* The loop is ending (no connection left). */
void h1_client_timeouts_close(h1_client_timeouts_t *t);

/* What the connection tells its pool. */
typedef struct h1_client_owner {
    /* The stream was released clean and the connection can carry another. */
    void (*on_idle)(void *owner, h1_client_t *h);
    /* The connection is closing (from busy or idle); it is freed once closed. */
    void (*on_gone)(void *owner, h1_client_t *h);
} h1_client_owner_t;

/* Start connecting `c` (new, its transport chosen) to `addr` and return the connection at
 * once: what is sent before the connection is up goes out when it is; a failure to connect
 * (or to finish a TLS handshake) reaches ev->on_error on a later loop pass. NULL only when
 * memory is exhausted; `c` is closed then. */
h1_client_t *h1_client_connect(conn_t *c, const struct sockaddr *addr, cluster_stats_t *stats,
                               h1_client_timeouts_t *tmo, const h1_client_owner_t *owner,
                               void *owner_ctx);
/* Take over a connection that is up (or set up elsewhere: tests and fuzzing drive a codec over
 * a transport of their own). NULL when memory is exhausted; the connection is then the
 * caller's to close. */
h1_client_t *h1_client_new(conn_t *c, cluster_stats_t *stats, const h1_client_owner_t *owner,
                           void *owner_ctx);
/* The connection's stream, to be handed to a new exchange (`ev`, `ctx`). */
client_stream_t *h1_client_stream(h1_client_t *h, const stream_events_t *ev, void *ctx);
/* Idle connections: link for the pool's list, the idle deadline, close. */
h1_client_t **h1_client_idle_link(h1_client_t *h);
/* Idle in its pool: the idle timeout runs (when the connection has timeouts). */
void h1_client_park(h1_client_t *h);
void h1_client_close(h1_client_t *h);
/* Whether it may carry another request (not closing, no stray bytes, no failed write). */
int h1_client_usable(const h1_client_t *h);

#endif
