/* The HTTP/1.1 server codec: one client connection, requests parsed by the strict parser
 * (h1_parse.h) and handed upward one stream at a time, in order; responses framed on the way
 * back (status line, Content-Length or chunked, Connection), 100 Continue, trailers.
 *
 * Pipelined requests wait as unparsed bytes until the current response is complete and the
 * client has read enough of it (output below the high-water mark), so a client that sends and
 * never reads holds one read buffer, not a queue of responses (RFC 9112 §9.3.2).
 *
 * One timer per connection: the header timeout while a request head arrives (408, or a quiet
 * close when nothing arrived), the keep-alive idle timeout between requests, and the linger
 * after remora decided to close (RFC 9112 §9.6). While a stream is open the exchange times it.
 *
 * A request the parser refuses is answered here (400, 414, 431, 501, 505; counted as a
 * protocol error, logged once at debug level) and the connection closes without reading or
 * forwarding another byte. */
#ifndef REMORA_H1_SERVER_H
#define REMORA_H1_SERVER_H

#include <stdint.h>

#include "base/stats.h"
#include "proxy/conn.h"
#include "proxy/stream.h"
#include "proxy/tqueue.h"

#define H1_LINGER_MS 5000 /* how long a closing connection may take to read our last bytes */

typedef struct h1_server h1_server_t;

/* Per listener and worker; outlives its connections. */
typedef struct h1_server_config {
    loop_t *loop;
    const stream_handler_t *handler;
    void *owner; /* handed to handler->accept */
    http_stats_t *stats;
    /* The timeouts of the phases (h1_server_config_init); tq_set_ms(&idle_q, ...) on reload. */
    tqueue_t headers_q, idle_q, linger_q;
    int draining;       /* answer with Connection: close and end idle connections */
    h1_server_t *conns; /* every open connection */
    unsigned nconns;
    void (*on_closed)(void *owner); /* a connection is gone (for drain completion) */
} h1_server_config_t;

/* Set up the timeout queues of a config whose other fields are filled in. */
void h1_server_config_init(h1_server_config_t *cfg, uint64_t header_timeout_ms, uint64_t idle_ms);
/* The worker is ending (no connection left): close the queues' timers. */
void h1_server_config_close(h1_server_config_t *cfg);
/* Take over an accepted connection and start reading; `orig_dst` (may be NULL) is copied. */
void h1_server_start(h1_server_config_t *cfg, conn_t *c, const struct sockaddr *orig_dst);
/* Draining: close idle connections now; busy ones close after their current response. */
void h1_server_drain(h1_server_config_t *cfg);
/* The drain deadline passed: close every connection now. */
void h1_server_abort_all(h1_server_config_t *cfg);

#endif
