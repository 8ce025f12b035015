/* The HTTP/2 server codec (RFC 9113) on nghttp2, behind the same stream seam as h1_server: one
 * client connection carries many streams at once, each its own server_stream_t with its own
 * exchange. docs/http2.md has the states, the limits and the abuse budgets.
 *
 * Which codec a connection gets is decided here, at its first bytes (h2_server_accept): a TLS
 * connection by the protocol ALPN selected ("h2", else HTTP/1.1); a plaintext one by the
 * client connection preface of RFC 9113 §3.4 sent with prior knowledge, compared as it
 * arrives: the first byte that differs hands the connection and every byte read so far to
 * h1_server, so an HTTP/1.1 request is served exactly as before. There is no Upgrade to h2c
 * (RFC 9113 §3.1 removed it).
 *
 * Translation (RFC 9113 §8): a request's pseudo-header fields become the neutral head
 * (:method, :path as the target, :authority as Host; a Host that differs from :authority is
 * malformed), crumbs of Cookie are joined, connection-specific fields and TE other than
 * "trailers" are refused by nghttp2 (stream PROTOCOL_ERROR), Content-Length is checked against
 * the DATA received, request trailers come with on_end. Responses go out as :status and the
 * fields that are not hop-by-hop (names lower-cased), Content-Length restated, the body as DATA
 * frames that reference the exchange's buffers (no copy), trailers as a trailing HEADERS.
 * CONNECT is answered 501 by the codec; extended CONNECT is not offered.
 *
 * Flow control is backpressure: a stream the exchange pauses stops having its DATA consumed,
 * so its window closes and only that stream stalls; the connection window is credited at once.
 * Output goes through conn.c (its watermarks); each stream's queued response body has its own
 * watermark, and on_drain tells its exchange to resume.
 *
 * Timers, in the listener's queues like h1_server's: the header timeout until the client's
 * preface (SETTINGS) and while a header block is incomplete, the idle timeout while no stream
 * is open, the linger after remora decided to close. Streams are timed by their exchanges. */
#ifndef REMORA_H2_SERVER_H
#define REMORA_H2_SERVER_H

#include <stdint.h>

#include "base/stats.h"
#include "proxy/conn.h"
#include "proxy/h1_server.h"
#include "proxy/stream.h"
#include "proxy/tqueue.h"

/* Limits (docs/http2.md; those both codecs keep are in h2_body.h). */
#define H2_MAX_STREAMS 100 /* SETTINGS_MAX_CONCURRENT_STREAMS */

typedef struct h2_server h2_server_t;
typedef struct h2_sniff h2_sniff_t;

/* Per listener and worker; outlives its connections. */
typedef struct h2_server_config {
    loop_t *loop;
    const stream_handler_t *handler;
    void *owner; /* handed to handler->accept */
    http_stats_t *stats;
    h1_server_config_t *h1; /* where connections that speak HTTP/1.1 go */
    /* The timeouts of the phases (h2_server_config_init); tq_set_ms(&idle_q, ...) on reload. */
    tqueue_t headers_q, idle_q, linger_q;
    tqueue_t sniff_q; /* connections whose protocol is not known yet (the header timeout) */
    int draining;
    h2_server_t *conns;             /* every open HTTP/2 connection */
    h2_sniff_t *sniffs;             /* connections whose protocol is not known yet */
    unsigned nconns;                /* both kinds */
    void (*on_closed)(void *owner); /* a connection is gone (for drain completion) */
} h2_server_config_t;

/* Set up the timeout queues of a config whose other fields are filled in. */
void h2_server_config_init(h2_server_config_t *cfg, uint64_t header_timeout_ms, uint64_t idle_ms);
/* The worker is ending (no connection left): close the queues' timers. */
void h2_server_config_close(h2_server_config_t *cfg);
/* Take over an accepted HTTP connection: HTTP/2 if the client speaks it, else it goes to
 * cfg->h1 with every byte read. `orig_dst` (may be NULL) is copied. */
void h2_server_accept(h2_server_config_t *cfg, conn_t *c, const struct sockaddr *orig_dst);
/* Take over a connection known to speak HTTP/2 (ALPN "h2"; a test harness), starting to read.
 * `pending` (may be NULL): bytes already read from it, handed over with a reference. */
void h2_server_start(h2_server_config_t *cfg, conn_t *c, const struct sockaddr *orig_dst,
                     buf_t *pending);
/* Draining: connections not yet known are closed; HTTP/2 ones get a GOAWAY (a notice first,
 * then one round trip later the last stream id) and close when their streams are done. */
void h2_server_drain(h2_server_config_t *cfg);
/* The drain deadline passed: close every connection now. */
void h2_server_abort_all(h2_server_config_t *cfg);

/* h2_sniff.c, for h2_server.c: the sniffers' queue (with the config's), and closing every
 * connection still sniffing (drain, abort). */
void h2_sniff_init(h2_server_config_t *cfg, uint64_t header_timeout_ms);
void h2_sniff_close_all(h2_server_config_t *cfg);

#endif
