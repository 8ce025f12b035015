/* A stream's outgoing body on nghttp2, for both HTTP/2 codecs (h2_server sends responses with
 * it, h2_client requests): the exchange's pieces are queued by reference, framed without a
 * copy (NGHTTP2_DATA_FLAG_NO_COPY: the read callback only reserves a length, the send-data
 * callback writes the frame header and then references the pieces through conn_write), and
 * trailers go as a trailing HEADERS after the last DATA.
 *
 * Pieces of SMALL_COPY bytes or less are copied together into one buffer per stream, so that
 * small chunks neither pin a read buffer each nor cost an iovec each. What is queued is
 * counted as the buffer memory it pins (`pinned`, and the connection's `conn->pinned`), and
 * the watermarks below are judged on it. */
#ifndef REMORA_H2_BODY_H
#define REMORA_H2_BODY_H

#include <nghttp2/nghttp2.h>
#include <stddef.h>

#include "base/buf.h"
#include "http/head.h"
#include "proxy/conn.h"
#include "proxy/loop.h"

/* Limits both codecs keep (docs/http2.md). */
#define H2_STREAM_WINDOW     65535        /* SETTINGS_INITIAL_WINDOW_SIZE: body held per stream */
#define H2_CONN_WINDOW       (1u << 20)   /* the connection's receive window */
#define H2_HEADER_LIST_MAX   (64 * 1024)  /* SETTINGS_MAX_HEADER_LIST_SIZE; past it, refused */
#define H2_HEADER_LIST_ABUSE (256 * 1024) /* decoded past this: an HPACK bomb */

/* Watermarks on queued body, counted as pinned memory: a stream's, and all of a connection's
 * streams' together. Over either high mark the sender is told to pause; it is told to resume
 * once both are under their low marks. */
#define H2_STREAM_HIGH_WATER (128 * 1024)
#define H2_STREAM_LOW_WATER  (32 * 1024)
#define H2_CONN_QUEUE_HIGH   (1024 * 1024)
#define H2_CONN_QUEUE_LOW    (256 * 1024)

/* A connection's side of its streams' bodies. */
typedef struct h2_queue {
    size_t pinned;  /* by every stream's queued body */
    unsigned nover; /* streams told they are over a high mark, not yet told to resume */
} h2_queue_t;

typedef struct h2_seg {
    buf_t *b; /* NULL: static bytes */
    const char *p;
    size_t n, charge; /* charge: the memory it pins, counted once per buffer run */
} h2_seg_t;

typedef struct h2_body {
    h2_seg_t *segs; /* segs[head..n) are queued */
    unsigned n, head, cap;
    size_t bytes;    /* queued and not yet framed */
    size_t reserved; /* ... of which the read callback has promised to a frame */
    size_t pinned;
    h2_queue_t *conn;      /* the connection's sums over its streams */
    buf_t *tail;           /* where small pieces are copied */
    head_t *trailers;      /* to go after the last DATA */
    unsigned done : 1;     /* the sender gave its end */
    unsigned deferred : 1; /* the read callback deferred: resume the stream when more comes */
    unsigned over : 1;     /* told it is over a high mark */
} h2_body_t;

/* Queue n bytes at p inside b. 0, or UV_ENOMEM (nothing is queued then). */
int h2_body_queue(h2_body_t *o, bufpool_t *bufs, buf_t *b, const char *p, size_t n);
/* Keep a copy of `t`'s fields that HTTP/2 may carry (not hop-by-hop, not framing) to send
 * after the last DATA, and mark the body done. */
void h2_body_end(h2_body_t *o, loop_t *l, const head_t *t);
/* Drop what is queued, the copy buffer and the trailers. */
void h2_body_drop(h2_body_t *o, loop_t *l);
/* The stream is freed: drop everything, the piece array too. */
void h2_body_free(h2_body_t *o, loop_t *l);
/* Whether the sender must pause: the stream or its connection is over a high mark. */
int h2_body_over(h2_body_t *o);
/* 1, once, when a body that was over is back under both low marks: the sender may resume. */
int h2_body_drained(h2_body_t *o);
/* Whether any stream of the connection may be owed a resume. */
static inline int h2_queue_may_drain(const h2_queue_t *q)
{
    return q->nover > 0 && q->pinned < H2_CONN_QUEUE_LOW;
}
/* The nghttp2 read callback's work: reserve up to `length` queued bytes (NO_COPY), defer when
 * none is queued and the end has not come, at the end set EOF and submit the trailers. */
ssize_t h2_body_read(h2_body_t *o, loop_t *l, nghttp2_session *s, int32_t id, size_t length,
                     uint32_t *flags);
/* The send-data callback's work: the frame header, padding and `length` reserved bytes into c. */
void h2_body_frame(h2_body_t *o, conn_t *c, const nghttp2_frame *f, const uint8_t *framehd,
                   size_t length);

/* DATA that came for a stream its exchange has paused: copied into *held (one window, `cap`
 * bytes at most: flow control sees to that), delivered when it resumes. 0, UV_ENOMEM, or
 * ERR_TOO_LARGE (the peer sent past the window). */
int h2_hold(buf_t **held, bufpool_t *bufs, size_t cap, const uint8_t *p, size_t n);

/* The nghttp2 options both codecs use: windows credited by hand (they are backpressure), no
 * closed-stream state kept, and the floods' caps (1000 queued acknowledgements, 32 SETTINGS
 * entries, 8 CONTINUATION frames per block). NULL when memory is exhausted. */
nghttp2_option *h2_options_new(void);

/* Frame bytes nghttp2 made (they live until its next call): short ones copied into the write,
 * longer ones staged in *stage (one buffer per flush; the caller drops it after the flush) and
 * referenced. UV_ENOMEM: the connection cannot go on (a frame cannot be dropped). */
int h2_out_copy(conn_t *c, bufpool_t *bufs, buf_t **stage, const void *p, size_t n);

/* The fields of `h` as nghttp2 fields, names lower-cased into `names` (room for every name),
 * values by pointer, skipping those `skip` refuses; at most `max`. Returns how many. */
size_t h2_nv_fields(const head_t *h, nghttp2_nv *nv, size_t max, char *names,
                    int (*skip)(const head_t *h, unsigned i));
/* Whether field i of a head is one HTTP/2 never carries (RFC 9113 §8.2.2) or one that HTTP/2
 * restates itself (Host, Content-Length, framing). */
int h2_field_excluded(const head_t *h, unsigned i);
/* The bytes of every field name of h, for sizing h2_nv_fields' `names`. */
size_t h2_names_len(const head_t *h);

#endif
