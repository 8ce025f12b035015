/* The seam between the exchange and the codecs: one stream is one request/response pair on a
 * connection, whatever the protocol. A codec owns its streams and the tables of functions the
 * exchange calls on them (server_stream_ops_t, client_stream_ops_t); the exchange hands the
 * codec a stream_events_t table to report what arrives. Neither side includes the other.
 *
 * Rules both sides keep:
 *   - Events may come from inside an op call (sending the head may fail the stream at once
 *     only through on_error, delivered on a later loop pass, never from inside the call).
 *   - After on_error, or after the owner called release, no event comes on the stream.
 *   - Heads are passed by pointer and owned by the receiver from then on (the codec takes a
 *     head from the loop's pool, fills it, and gives it away with on_head).
 *   - Body bytes are passed as (buf, p, n) with p inside buf; the receiver takes a reference
 *     if it keeps them. */
#ifndef REMORA_STREAM_H
#define REMORA_STREAM_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "base/buf.h"
#include "http/head.h"

struct conn;

/* What a head tells about the message that follows, in codec-neutral terms. */
#define MSG_END      0x01 /* the head is the whole message: no body, no on_end */
#define MSG_CLOSE    0x02 /* the sender ends its connection after this message */
#define MSG_UPGRADE  0x04 /* request: asks to switch protocols; response: 101, switched */
#define MSG_CONTINUE 0x08 /* request: the client waits for 100 Continue before its body */
#define MSG_CHUNKED  0x10 /* the body arrives without a length */
#define MSG_CODINGS  0x20 /* Transfer-Encoding names codings besides chunked (kept in the head) */

/* How a sender frames what it sends: the body length, or BODY_STREAM when unknown. */
#define BODY_STREAM (-1)

typedef struct stream_events {
    void (*on_head)(void *ctx, head_t *h, unsigned msg); /* MSG_* */
    void (*on_data)(void *ctx, buf_t *b, const char *p, size_t n);
    void (*on_end)(void *ctx, head_t *trailers); /* trailers may be NULL; owned by ctx */
    /* The stream failed: err is ERR_BAD_REQUEST / ERR_BAD_RESPONSE (a framing error), a
     * connect error, UV_EOF (the peer closed early), or another UV_E* code. */
    void (*on_error)(void *ctx, int err);
    /* Output toward the peer fell below the low-water mark. */
    void (*on_drain)(void *ctx);
} stream_events_t;

/* ---- the client's side (served by h1_server) ---- */

typedef struct server_stream server_stream_t;

typedef struct server_stream_ops {
    /* The response head; `len` is the body length, 0 for none, or BODY_STREAM. `msg`: MSG_CLOSE
     * to end the connection after it, MSG_UPGRADE for a 101 the tunnel follows. */
    void (*send_head)(server_stream_t *s, const head_t *h, int64_t len, unsigned msg);
    void (*send_data)(server_stream_t *s, buf_t *b, const char *p, size_t n);
    void (*send_end)(server_stream_t *s, const head_t *trailers);
    /* Interim 100 Continue (the exchange decides when). */
    void (*send_continue)(server_stream_t *s);
    /* Deliver request body or hold it (backpressure from the upstream). */
    void (*pause)(server_stream_t *s, int paused);
    int (*over_high_water)(server_stream_t *s);
    /* The exchange is done with the stream. `abort`: the response is incomplete and must be
     * seen as broken (h1: the connection is cut). Otherwise the codec goes on to the next
     * request, or closes if either side asked to. */
    void (*release)(server_stream_t *s, int abort);
    /* For a tunnel (101 sent): the connection and any bytes the client sent after its request
     * move to the caller; the stream is released. */
    struct conn *(*detach)(server_stream_t *s, buf_t **pending, const char **p, size_t *n);
} server_stream_ops_t;

struct server_stream {
    const server_stream_ops_t *ops;
    const char *peer; /* the client's address, as text */
    /* Where the client meant to connect before iptables REDIRECT sent it here, or NULL. */
    const struct sockaddr *orig_dst;
    unsigned secure : 1; /* the client's connection is TLS */
};

/* The codec's upper side: a new request begins. Returns the events table and its context, or
 * NULL to refuse (out of memory: the codec answers 503 and closes). */
typedef struct stream_handler {
    const stream_events_t *(*accept)(void *owner, server_stream_t *s, void **ctx);
} stream_handler_t;

/* ---- the upstream's side (served by h1_client, handed out by pool.c) ---- */

typedef struct client_stream client_stream_t;

typedef struct client_stream_ops {
    void (*send_head)(client_stream_t *s, const head_t *h, int64_t len, unsigned msg);
    void (*send_data)(client_stream_t *s, buf_t *b, const char *p, size_t n);
    void (*send_end)(client_stream_t *s, const head_t *trailers);
    void (*pause)(client_stream_t *s, int paused);
    int (*over_high_water)(client_stream_t *s);
    /* Done: `clean` when request and response both completed (the connection may be reused);
     * otherwise the stream is reset (h1: the connection closes). */
    void (*release)(client_stream_t *s, int clean);
    struct conn *(*detach)(client_stream_t *s, buf_t **pending, const char **p, size_t *n);
} client_stream_ops_t;

struct client_stream {
    const client_stream_ops_t *ops;
    unsigned reused : 1;    /* on a connection that carried an earlier request */
    unsigned connected : 1; /* the connection is up (errors after this are stream errors) */
};

#endif
