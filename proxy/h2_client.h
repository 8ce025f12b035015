/* The HTTP/2 client codec (RFC 9113) on nghttp2, behind the same stream seam as h1_client:
 * one connection to an upstream endpoint carries many streams at once, each a client_stream_t
 * with its own exchange. h2c with prior knowledge in plaintext; over TLS the pool offers ALPN
 * "h2" alone and the connection fails unless the upstream selects it. docs/http2.md has the
 * translation, the limits and what an upstream's misbehaviour costs it.
 *
 * Capacity: a connection takes streams while it is up or connecting, has no GOAWAY, and has
 * fewer open than the peer's SETTINGS_MAX_CONCURRENT_STREAMS (until its SETTINGS come, what the
 * pool learned from an earlier connection to the endpoint, else 100; never more than
 * H2_CLIENT_MAX_STREAMS). The pool (pool.c) looks for one with room and dials another when
 * none has. Nothing is written before the connection is up: over TLS the preface goes only
 * once ALPN has chosen h2. A response past the header caps resets its stream and retires the
 * connection (no new stream; it closes when the others end).
 *
 * Failures reach a stream's exchange through on_error: ERR_REFUSED for a stream the upstream
 * refused (RST_STREAM REFUSED_STREAM) or left unprocessed by GOAWAY (RFC 9113 §8.7: it may be
 * sent again anywhere), ERR_BAD_RESPONSE for a malformed response, a connection error or a
 * response header list past its cap, UV_ECONNRESET for another reset, ERR_UPSTREAM_CLOSED when
 * the connection ends under it, a connect error before the connection is up.
 *
 * Flow control is backpressure, as on the server side: the connection window is credited at
 * once, a stream's only after its bytes went on, unless the exchange paused the stream. */
#ifndef REMORA_H2_CLIENT_H
#define REMORA_H2_CLIENT_H

#include <sys/socket.h>

#include "base/stats.h"
#include "proxy/conn.h"
#include "proxy/stream.h"
#include "proxy/tqueue.h"

#define H2_CLIENT_MAX_STREAMS 100 /* streams open at once on one upstream connection */

typedef struct h2_client h2_client_t;

/* The connect and idle timeouts of a pool table's HTTP/2 connections (tqueue.h). */
typedef struct h2_client_timeouts {
    tqueue_t connect_q; /* then every stream fails with UV_ETIMEDOUT */
    tqueue_t idle_q;    /* no stream open for this long: the connection closes */
} h2_client_timeouts_t;

void h2_client_timeouts_init(h2_client_timeouts_t *t, loop_t *l, uint64_t connect_ms,
                             uint64_t idle_ms);
void h2_client_timeouts_close(h2_client_timeouts_t *t);

typedef struct h2_client_owner {
    /* The connection is closing (it takes no stream from now on); freed once closed and its
     * last stream released. */
    void (*on_gone)(void *owner, h2_client_t *h);
} h2_client_owner_t;

/* Start connecting `c` (new; TLS already attached when `secure`) to `addr`; the preface and
 * SETTINGS go out once it is up. NULL only when memory is exhausted (`c` is closed then). */
h2_client_t *h2_client_connect(conn_t *c, const struct sockaddr *addr, cluster_stats_t *stats,
                               h2_client_timeouts_t *tmo, const h2_client_owner_t *owner,
                               void *owner_ctx);
/* Take over a connection that is up (tests and fuzzing drive the codec over a transport of
 * their own). NULL when memory is exhausted; `c` is then the caller's. */
h2_client_t *h2_client_new(conn_t *c, cluster_stats_t *stats, const h2_client_owner_t *owner,
                           void *owner_ctx);
/* Whether it can take another stream now. Until the peer's SETTINGS come its limit is taken
 * to be `assumed` (what an earlier connection to the same endpoint learned; 0: unknown, 100). */
int h2_client_has_room(const h2_client_t *h, uint32_t assumed);
/* The peer's SETTINGS_MAX_CONCURRENT_STREAMS once known, else 0. */
uint32_t h2_client_peer_limit(const h2_client_t *h);
/* A new stream for an exchange (`ev`, `ctx`); NULL when memory is exhausted. */
client_stream_t *h2_client_stream(h2_client_t *h, const stream_events_t *ev, void *ctx);
/* No new stream: close once the open ones are done (drain, a departed endpoint). */
void h2_client_retire(h2_client_t *h);
/* Close now: open streams fail. */
void h2_client_close(h2_client_t *h);
/* The pool's list of an entry's connections. */
h2_client_t **h2_client_link(h2_client_t *h);

#endif
