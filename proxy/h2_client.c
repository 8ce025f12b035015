/* nghttp2 runs callbacks only inside nghttp2_session_mem_recv (a read) and
 * nghttp2_session_send (a flush, from a read or the loop's deferred list). The ops an exchange
 * calls only queue (nghttp2_submit_*, resume_data) and defer a flush; a failure found inside
 * an op reaches the exchange from the stream's deferred entry, on a later pass. Stream objects
 * are freed from the deferred list once nghttp2 has closed the stream (or never opened it) and
 * the exchange has released it. */
#include "proxy/h2_client.h"

#include <nghttp2/nghttp2.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"
#include "base/log.h"
#include "proxy/h2_body.h"
#include "proxy/transport_tls.h"

#define MAX_OUTBOUND_FRAMES 10000

typedef struct h2c_stream h2c_stream_t;

struct h2c_stream {
    client_stream_t s; /* first: the exchange's handle */
    h2_client_t *h;
    h2c_stream_t *next, *prev;
    int32_t id; /* 0 until submitted */
    const stream_events_t *ev;
    void *ctx;
    head_t *head;         /* the response head while its fields arrive */
    head_t *trailers;     /* response trailers while they arrive */
    head_t *end_trailers; /* ... received, waiting for the pause to end */
    h2_body_t req;        /* request body queued for DATA frames */
    buf_t *held;          /* response body that came while paused (one window at most) */
    size_t unconsumed;    /* bytes not yet credited to the stream's window */
    size_t hdr_bytes;
    unsigned hdr_fields;
    int err; /* to deliver from `later` */
    deferred_t later;
    unsigned released : 1, closed : 1, failed : 1, open : 1;
    unsigned head_done : 1; /* the final response head went to the exchange */
    unsigned resp_done : 1, req_sent : 1, paused : 1, end_pending : 1;
    unsigned bad : 1; /* the response broke a rule: ERR_BAD_RESPONSE when it closes */
};

struct h2_client {
    conn_t *c;
    loop_t *loop;
    cluster_stats_t *stats;
    const h2_client_owner_t *owner;
    void *owner_ctx;
    h2_client_timeouts_t *tmo; /* NULL: never timed out */
    tq_node_t timeout;         /* connecting, or idle with no stream */
    nghttp2_session *sess;
    h2c_stream_t *streams;
    unsigned nstreams; /* objects */
    unsigned nopen;    /* streams taken and not yet closed */
    h2_queue_t queued; /* request body pinned by every stream */
    buf_t *rbuf, *obuf;
    h2_client_t *next; /* the pool's list */
    deferred_t flush_d, free_d;
    uint64_t connect_ns;
    unsigned connected : 1, goaway : 1, retiring : 1, gone : 1, closed : 1, in_recv : 1;
    unsigned used : 1;        /* carried a stream before */
    unsigned settled : 1;     /* the peer's SETTINGS came: its stream limit is known */
    unsigned abused : 1;      /* a response broke a cap: no new stream, close once the rest end */
    unsigned lost : 1;        /* the connection's end is decided: lost_remote, lost_active */
    unsigned lost_remote : 1; /* ... the upstream closed or reset it first, or sent GOAWAY */
    unsigned lost_active : 1; /* ... with a stream taken and not finished */
};

static const client_stream_ops_t stream_ops;
static void schedule(h2_client_t *h);
static void flush(h2_client_t *h);
static void close_conn(h2_client_t *h, int err);

static int live(const h2_client_t *h)
{
    return h->sess && !h->closed;
}

/* ---- streams ---- */

static void stream_later(deferred_t *d);

static void free_stream(h2c_stream_t *st)
{
    h2_client_t *h = st->h;
    h2_body_free(&st->req, h->loop);
    if (st->held)
        buf_unref(st->held);
    head_give(h->loop, st->head);
    head_give(h->loop, st->trailers);
    head_give(h->loop, st->end_trailers);
    if (st->prev)
        st->prev->next = st->next;
    else
        h->streams = st->next;
    if (st->next)
        st->next->prev = st->prev;
    loop_cancel(h->loop, &st->later);
    free(st);
    h->nstreams--;
    if (h->closed && h->nstreams == 0) {
        loop_defer(h->loop, &h->free_d);
    }
}

static int freeable(const h2c_stream_t *st)
{
    return st->released && (st->closed || !st->open);
}

static void maybe_free(h2c_stream_t *st)
{
    if (freeable(st))
        loop_defer(st->h->loop, &st->later);
}

/* The stream no longer counts against the connection's capacity. */
static void stream_closed(h2c_stream_t *st)
{
    if (st->closed)
        return;
    st->closed = 1;
    st->h->nopen--;
    h2_body_drop(&st->req, st->h->loop);
    if (st->h->nopen == 0 && st->h->tmo && st->h->connected && !st->h->closed)
        tq_add(&st->h->tmo->idle_q, &st->h->timeout);
}

/* The exchange hears on_error once, and nothing after; none after a complete response. */
static void fail_stream(h2c_stream_t *st, int err)
{
    if (st->released || st->failed || st->resp_done)
        return;
    st->failed = 1;
    st->ev->on_error(st->ctx, err);
}

/* From inside an op: on a later pass. */
static void fail_later(h2c_stream_t *st, int err)
{
    if (!st->err)
        st->err = err;
    loop_defer(st->h->loop, &st->later);
}

static void reset_stream(h2c_stream_t *st, uint32_t code)
{
    h2_client_t *h = st->h;
    if (st->open && !st->closed && live(h)) {
        nghttp2_submit_rst_stream(h->sess, NGHTTP2_FLAG_NONE, st->id, code);
        stat_inc(&h->stats->upstream_rq_tx_reset);
        schedule(h);
    }
}

static h2c_stream_t *stream_of(nghttp2_session *s, int32_t id)
{
    return id ? nghttp2_session_get_stream_user_data(s, id) : NULL;
}

/* ---- output ---- */

static int blocked(const h2_client_t *h)
{
    return !h->c || h->c->closing || conn_over_high_water(h->c);
}

static ssize_t send_cb(nghttp2_session *s, const uint8_t *data, size_t len, int flags, void *ud)
{
    (void)s;
    (void)flags;
    h2_client_t *h = ud;
    if (blocked(h))
        return NGHTTP2_ERR_WOULDBLOCK;
    if (h2_out_copy(h->c, &h->loop->bufs, &h->obuf, data, len) != 0)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    return (ssize_t)len;
}

static int send_data_cb(nghttp2_session *s, nghttp2_frame *f, const uint8_t *framehd, size_t length,
                        nghttp2_data_source *src, void *ud)
{
    (void)s;
    h2_client_t *h = ud;
    if (blocked(h))
        return NGHTTP2_ERR_WOULDBLOCK;
    h2c_stream_t *st = src->ptr;
    h2_body_frame(&st->req, h->c, f, framehd, length);
    return 0;
}

static ssize_t read_body(nghttp2_session *s, int32_t id, uint8_t *buf, size_t length,
                         uint32_t *flags, nghttp2_data_source *src, void *ud)
{
    (void)buf;
    h2_client_t *h = ud;
    h2c_stream_t *st = src->ptr;
    return h2_body_read(&st->req, h->loop, s, id, length, flags);
}

/* ---- responses: nghttp2's callbacks ---- */

static int on_begin_headers(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    h2_client_t *h = ud;
    h2c_stream_t *st = stream_of(s, f->hd.stream_id);
    if (!st || st->released || st->failed)
        return 0;
    st->hdr_bytes = 0;
    st->hdr_fields = 0;
    if (st->head_done && !st->trailers && !(st->trailers = head_take(h->loop)))
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    return 0;
}

static int status_of(const uint8_t *v, size_t n)
{
    if (n != 3)
        return -1;
    int code = 0;
    for (size_t i = 0; i < 3; i++) {
        if (v[i] < '0' || v[i] > '9')
            return -1;
        code = code * 10 + (v[i] - '0');
    }
    return code;
}

/* RFC 7541 §4.1 sizes. Past the caps HTTP/1.1 responses have, the response is bad: the rest
 * of its fields are dropped and, at the end of the block, the stream is reset and the exchange
 * hears ERR_BAD_RESPONSE (a 502); the connection goes on. Far past them the block decodes to
 * much more than it weighed: an HPACK bomb or a header flood. */
static int over_caps(h2c_stream_t *st, size_t nlen, size_t vlen, int *abuse)
{
    st->hdr_bytes += nlen + vlen + 32;
    st->hdr_fields++;
    *abuse = st->hdr_bytes > H2_HEADER_LIST_ABUSE || st->hdr_fields > 4 * HEAD_MAX_FIELDS;
    return st->hdr_bytes > H2_HEADER_LIST_MAX || st->hdr_fields > HEAD_MAX_FIELDS;
}

/* An upstream that sends such a block is hostile: decoding stops, its stream is reset, and
 * the connection takes no new stream (it closes once the others end). */
static int refuse_abuse(h2_client_t *h, h2c_stream_t *st)
{
    st->bad = 1;
    if (!h->abused) {
        h->abused = 1;
        stat_inc(&h->stats->upstream_cx_protocol_error);
    }
    return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
}

static int on_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name, size_t nlen,
                     const uint8_t *value, size_t vlen, uint8_t flags, void *ud)
{
    (void)flags;
    h2_client_t *h = ud;
    h2c_stream_t *st = f->hd.type == NGHTTP2_HEADERS ? stream_of(s, f->hd.stream_id) : NULL;
    if (!st || st->released || st->failed)
        return 0;
    int abuse;
    if (over_caps(st, nlen, vlen, &abuse) || st->bad) {
        st->bad = 1;
        return abuse ? refuse_abuse(h, st) : 0;
    }
    head_t *hd = st->head_done ? st->trailers : st->head;
    if (nlen == 7 && memcmp(name, ":status", 7) == 0) {
        int code = status_of(value, vlen);
        st->bad = code < 100 || code > 599; /* nghttp2 takes any 3 digits; h1_parse does not */
        hd->status = (uint16_t)code;
        return 0;
    }
    if (nlen > 0 && name[0] == ':')
        return 0; /* nghttp2 refuses any other pseudo-header in a response */
    st->bad = head_add_field(hd, (const char *)name, nlen, (const char *)value, vlen) != 0;
    return 0;
}

static void deliver_end(h2c_stream_t *st)
{
    head_t *t = st->end_trailers;
    st->end_trailers = NULL;
    st->end_pending = 0;
    st->resp_done = 1;
    st->ev->on_end(st->ctx, t);
}

/* The response ended (END_STREAM): now, or when the exchange resumes the stream. */
static void response_ended(h2c_stream_t *st, head_t *trailers)
{
    st->end_trailers = trailers;
    if (st->paused || (st->held && st->held->len)) {
        st->end_pending = 1;
        return;
    }
    deliver_end(st);
}

static void response_head(h2c_stream_t *st, int end_stream)
{
    head_t *hd = st->head;
    if (hd->status >= 100 && hd->status < 200) { /* interim: the final head follows */
        head_reset(hd);
        return;
    }
    st->head = NULL;
    st->head_done = 1;
    hd->major = 2;
    hd->minor = 0;
    unsigned msg = 0;
    if (end_stream)
        msg |= MSG_END;
    else if (head_find_id(hd, F_CONTENT_LENGTH, 0) < 0)
        msg |= MSG_CHUNKED;
    if (end_stream)
        st->resp_done = 1;
    st->ev->on_head(st->ctx, hd, msg);
}

static void headers_received(h2c_stream_t *st, const nghttp2_frame *f)
{
    int end = (f->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    if (st->bad) {
        stat_inc(&st->h->stats->upstream_cx_protocol_error);
        reset_stream(st, NGHTTP2_INTERNAL_ERROR);
        fail_stream(st, ERR_BAD_RESPONSE);
        return;
    }
    if (!st->head_done) {
        response_head(st, end);
        return;
    }
    head_t *t = st->trailers; /* trailers end the stream (nghttp2 checks) */
    st->trailers = NULL;
    response_ended(st, t);
}

static int on_frame_recv(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    h2_client_t *h = ud;
    if (f->hd.type == NGHTTP2_GOAWAY) {
        h->goaway = 1; /* streams above its last id close REFUSED_STREAM */
        return 0;
    }
    if (f->hd.type == NGHTTP2_SETTINGS && !(f->hd.flags & NGHTTP2_FLAG_ACK))
        h->settled = 1;
    h2c_stream_t *st = stream_of(s, f->hd.stream_id);
    if (!st || st->released || st->failed)
        return 0;
    if (f->hd.type == NGHTTP2_HEADERS)
        headers_received(st, f);
    else if (f->hd.type == NGHTTP2_DATA && (f->hd.flags & NGHTTP2_FLAG_END_STREAM) &&
             st->head_done && !st->resp_done && !st->end_pending)
        response_ended(st, NULL);
    return 0;
}

static int on_data_chunk(nghttp2_session *s, uint8_t flags, int32_t id, const uint8_t *data,
                         size_t len, void *ud)
{
    (void)flags;
    h2_client_t *h = ud;
    nghttp2_session_consume_connection(s, len); /* only a stream's own window holds back */
    h2c_stream_t *st = stream_of(s, id);
    if (!st || st->released || st->failed || !st->head_done) {
        nghttp2_session_consume_stream(s, id, len);
        return 0;
    }
    st->unconsumed += len;
    if (st->paused || (st->held && st->held->len)) {
        if (h2_hold(&st->held, &st->h->loop->bufs, H2_STREAM_WINDOW, data, len) != 0) {
            reset_stream(st, NGHTTP2_INTERNAL_ERROR);
            fail_stream(st, UV_ENOMEM);
        }
        return 0;
    }
    st->ev->on_data(st->ctx, h->rbuf, (const char *)data, len);
    if (!st->paused || st->released || st->failed) {
        nghttp2_session_consume_stream(s, id, st->unconsumed);
        st->unconsumed = 0;
    }
    return 0;
}

static int close_error(const h2c_stream_t *st, uint32_t code)
{
    if (code == NGHTTP2_REFUSED_STREAM)
        return ERR_REFUSED;
    if (st->bad || code == NGHTTP2_PROTOCOL_ERROR)
        return ERR_BAD_RESPONSE;
    return UV_ECONNRESET;
}

static int on_stream_close(nghttp2_session *s, int32_t id, uint32_t code, void *ud)
{
    h2_client_t *h = ud;
    h2c_stream_t *st = stream_of(s, id);
    if (!st)
        return 0;
    nghttp2_session_set_stream_user_data(s, id, NULL);
    stream_closed(st);
    if (!st->resp_done && !st->end_pending) {
        if (code == NGHTTP2_REFUSED_STREAM || !st->head_done)
            ; /* counted by the exchange as a failed attempt */
        else
            stat_inc(&h->stats->upstream_rq_rx_reset);
        fail_stream(st, close_error(st, code));
    }
    maybe_free(st);
    schedule(h);
    return 0;
}

/* A request HEADERS that could not go (GOAWAY came first, or the stream limit): unprocessed. */
static int on_frame_not_send(nghttp2_session *s, const nghttp2_frame *f, int lib_error, void *ud)
{
    (void)lib_error;
    h2_client_t *h = ud;
    if (f->hd.type != NGHTTP2_HEADERS)
        return 0;
    h2c_stream_t *st = h->streams; /* nghttp2 may not have opened it: no user data to ask */
    while (st && st->id != f->hd.stream_id)
        st = st->next;
    if (!st || st->closed)
        return 0;
    nghttp2_session_set_stream_user_data(s, f->hd.stream_id, NULL); /* if it was opened */
    stream_closed(st);
    fail_stream(st, ERR_REFUSED);
    maybe_free(st);
    return 0;
}

static nghttp2_session_callbacks *callbacks;
static nghttp2_option *options;

static void make_session_setup(void)
{
    nghttp2_session_callbacks *cb;
    nghttp2_option *opt;
    if (nghttp2_session_callbacks_new(&cb) != 0)
        return;
    if (!(opt = h2_options_new())) {
        nghttp2_session_callbacks_del(cb);
        return;
    }
    nghttp2_session_callbacks_set_send_callback(cb, send_cb);
    nghttp2_session_callbacks_set_send_data_callback(cb, send_data_cb);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data_chunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
    nghttp2_session_callbacks_set_on_frame_not_send_callback(cb, on_frame_not_send);
    callbacks = cb;
    options = opt;
}

static int new_session(h2_client_t *h)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, make_session_setup);
    if (!callbacks || nghttp2_session_client_new2(&h->sess, callbacks, h, options) != 0)
        return UV_ENOMEM;
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, H2_STREAM_WINDOW},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, H2_HEADER_LIST_MAX},
        {NGHTTP2_SETTINGS_NO_RFC7540_PRIORITIES, 1},
    };
    if (nghttp2_submit_settings(h->sess, NGHTTP2_FLAG_NONE, iv, sizeof iv / sizeof *iv) != 0 ||
        nghttp2_session_set_local_window_size(h->sess, NGHTTP2_FLAG_NONE, 0, H2_CONN_WINDOW) != 0) {
        nghttp2_session_del(h->sess);
        h->sess = NULL;
        return UV_ENOMEM;
    }
    return 0;
}

/* ---- the connection ---- */

static void gone(h2_client_t *h)
{
    if (h->gone)
        return;
    h->gone = 1;
    h->owner->on_gone(h->owner_ctx, h);
}

/* The connection's end is decided, once, before its streams fail: counted when it is closed
 * (cluster_count_cx_destroy). */
static void lost(h2_client_t *h, int remote)
{
    if (h->lost)
        return;
    h->lost = 1;
    h->lost_remote = remote ? 1 : 0;
    h->lost_active = h->nopen > 0;
}

/* Every stream an exchange holds fails; the connection closes. After the upstream's GOAWAY
 * the upstream ended it; otherwise remora does, unless on_eof or a write error said first. */
static void close_conn(h2_client_t *h, int err)
{
    lost(h, h->goaway);
    gone(h);
    h2c_stream_t *next;
    for (h2c_stream_t *st = h->streams; st; st = next) {
        next = st->next;
        stream_closed(st);
        fail_stream(st, st->open || !h->connected ? err : ERR_REFUSED);
        maybe_free(st);
    }
    tq_del(&h->timeout);
    if (h->c && !h->c->closing)
        conn_close(h->c);
}

static void feed(h2_client_t *h, buf_t *b)
{
    h->rbuf = b;
    h->in_recv = 1;
    ssize_t rv = nghttp2_session_mem_recv(h->sess, (const uint8_t *)b->data, b->len);
    h->in_recv = 0;
    h->rbuf = NULL;
    if (rv < 0) {
        stat_inc(&h->stats->upstream_cx_protocol_error);
        log_debug("upstream: http2 connection error: %s", nghttp2_strerror((int)rv));
        int flood = rv == NGHTTP2_ERR_FLOODED || rv == NGHTTP2_ERR_TOO_MANY_CONTINUATIONS;
        nghttp2_session_terminate_session(h->sess, flood ? NGHTTP2_ENHANCE_YOUR_CALM
                                                         : NGHTTP2_PROTOCOL_ERROR);
        nghttp2_session_send(h->sess); /* the GOAWAY, best effort: written before the close */
        if (h->c)
            conn_flush(h->c);
        close_conn(h, UV_ECONNRESET); /* which stream was at fault is not known: a reset each */
        return;
    }
    if (nghttp2_session_get_outbound_queue_size(h->sess) > MAX_OUTBOUND_FRAMES) {
        stat_inc(&h->stats->upstream_cx_protocol_error);
        close_conn(h, UV_ECONNRESET); /* frames pile up for an upstream that does not read */
    }
}

static void tell_drained(h2_client_t *h)
{
    if (!h2_queue_may_drain(&h->queued))
        return;
    h2c_stream_t *next;
    for (h2c_stream_t *st = h->streams; st && h->queued.nover; st = next) {
        next = st->next;
        if (h2_body_drained(&st->req) && !st->released && !st->failed)
            st->ev->on_drain(st->ctx);
    }
}

/* Nothing goes out before the connection is up (and, over TLS, ALPN has chosen h2). */
static void flush(h2_client_t *h)
{
    loop_cancel(h->loop, &h->flush_d);
    if (!live(h) || !h->c || h->c->closing || !h->connected)
        return;
    int rv = nghttp2_session_send(h->sess);
    if (h->obuf) {
        buf_unref(h->obuf);
        h->obuf = NULL;
    }
    if (rv != 0) {
        log_debug("upstream: http2 send failed: %s", nghttp2_strerror(rv));
        close_conn(h, UV_ECONNABORTED);
        return;
    }
    tell_drained(h);
    int done = !nghttp2_session_want_read(h->sess) && !nghttp2_session_want_write(h->sess);
    if (done || ((h->goaway || h->retiring || h->abused) && h->nopen == 0)) {
        close_conn(h, ERR_UPSTREAM_CLOSED);
        return;
    }
    if (h->goaway || h->abused)
        gone(h); /* no new stream; the open ones finish */
}

static void on_flush(deferred_t *d)
{
    flush((h2_client_t *)(void *)((char *)d - offsetof(h2_client_t, flush_d)));
}

static void schedule(h2_client_t *h)
{
    if (live(h) && !h->in_recv)
        loop_defer(h->loop, &h->flush_d);
}

static void on_read(void *owner, buf_t *b)
{
    h2_client_t *h = owner;
    if (!live(h))
        return;
    feed(h, b);
    flush(h);
}

static void on_eof(void *owner, int err)
{
    h2_client_t *h = owner;
    lost(h, 1);
    close_conn(h, err == UV_EOF ? ERR_UPSTREAM_CLOSED : err);
}

static void on_drain(void *owner)
{
    flush(owner); /* frames held at the high-water mark */
}

static void on_write_error(void *owner, int err)
{
    lost(owner, 1); /* the upstream reset it (EPIPE, ECONNRESET) */
    close_conn(owner, err);
}

/* ALPN must have chosen h2 on a TLS connection. */
static int speaks_h2(const conn_t *c)
{
    unsigned n;
    const unsigned char *p = transport_tls_alpn(c, &n);
    return !conn_is_tls(c) || (p && n == 2 && memcmp(p, "h2", 2) == 0);
}

/* The connect failed or timed out: every stream that waited on it fails with it. */
static void connect_failed(h2_client_t *h, int err)
{
    stat_inc(&h->stats->upstream_cx_connect_fail);
    stat_add(&h->stats->upstream_rq_pending_failure_eject, h->nopen);
    close_conn(h, err);
}

static void on_connect(void *owner, int status)
{
    h2_client_t *h = owner;
    tq_del(&h->timeout);
    if (status == 0 && !speaks_h2(h->c)) {
        log_warn("upstream: TLS peer did not select h2 by ALPN");
        status = ERR_TLS;
    }
    if (status < 0) {
        connect_failed(h, status);
        return;
    }
    h->connected = 1;
    hist_record_us(&h->stats->cx_connect_ms, (uv_hrtime() - h->connect_ns) / 1000);
    for (h2c_stream_t *st = h->streams; st; st = st->next)
        st->s.connected = 1;
    if (h->nopen == 0 && h->tmo)
        tq_add(&h->tmo->idle_q, &h->timeout);
    flush(h);
}

static void free_later(deferred_t *d)
{
    free((char *)d - offsetof(h2_client_t, free_d));
}

static void on_conn_closed(void *owner)
{
    h2_client_t *h = owner;
    h->c = NULL;
    lost(h, 0);
    cluster_count_cx_destroy(h->stats, h->lost_remote, h->lost_active);
    stat_dec(&h->stats->upstream_cx_active);
    close_conn(h, UV_ECONNABORTED);
    h->closed = 1;
    loop_cancel(h->loop, &h->flush_d);
    nghttp2_session_del(h->sess);
    h->sess = NULL;
    if (h->obuf)
        buf_unref(h->obuf);
    h->obuf = NULL;
    if (h->nstreams == 0)
        loop_defer(h->loop, &h->free_d);
}

static const conn_events_t conn_events = {
    .on_read = on_read,
    .on_eof = on_eof,
    .on_drain = on_drain,
    .on_write_error = on_write_error,
    .on_connect = on_connect,
    .on_closed = on_conn_closed,
};

static void on_expired(tq_node_t *n)
{
    h2_client_t *h = (h2_client_t *)(void *)((char *)n - offsetof(h2_client_t, timeout));
    if (h->connected) {
        stat_inc(&h->stats->upstream_cx_idle_timeout);
        close_conn(h, ERR_UPSTREAM_CLOSED);
        return;
    }
    stat_inc(&h->stats->upstream_cx_connect_timeout);
    log_warn("upstream: connect timed out");
    connect_failed(h, UV_ETIMEDOUT);
}

/* ---- the stream, as the exchange drives it ---- */

static h2c_stream_t *of(client_stream_t *s)
{
    return (h2c_stream_t *)s;
}

static void stream_later(deferred_t *d)
{
    h2c_stream_t *st = (h2c_stream_t *)(void *)((char *)d - offsetof(h2c_stream_t, later));
    if (freeable(st)) {
        free_stream(st);
        return;
    }
    if (st->err) {
        int err = st->err;
        st->err = 0;
        fail_stream(st, err);
        return;
    }
    if (st->paused || st->released || st->failed)
        return;
    if (st->held && st->held->len) { /* resumed: what came meanwhile */
        buf_t *b = st->held;
        st->held = NULL;
        st->ev->on_data(st->ctx, b, b->data, b->len);
        buf_unref(b);
        if (st->paused || st->released || st->failed)
            return; /* paused again from on_data: the rest waits for the next resume */
    }
    if (st->unconsumed && live(st->h) && !st->closed) {
        nghttp2_session_consume_stream(st->h->sess, st->id, st->unconsumed);
        schedule(st->h);
    }
    st->unconsumed = 0;
    if (st->end_pending && !st->released && !st->failed)
        deliver_end(st);
}

/* RFC 9113 §8.3.1: :authority from Host, which HTTP/2 does not carry. The Host forwarded, as
 * h1_out writes it: one the header policy marked hop-by-hop (a gateway's rewrite, an
 * absolute-form target) is replaced by the one it appended. */
static void authority(const head_t *req, const char **p, size_t *n)
{
    int i = head_find_id(req, F_HOST, 0);
    while (i >= 0 && req->fields[i].hop)
        i = head_find_id(req, F_HOST, (unsigned)i + 1);
    *p = i >= 0 ? field_value(req, (unsigned)i) : "";
    *n = i >= 0 ? req->fields[i].value_len : 0;
}

static int wants_trailers(const head_t *req)
{
    for (int i = head_find_id(req, F_TE, 0); i >= 0; i = head_find_id(req, F_TE, (unsigned)i + 1))
        if (list_has(field_value(req, (unsigned)i), req->fields[i].value_len, "trailers", 8))
            return 1;
    return 0;
}

#define NV(n, v, vl) ((nghttp2_nv){(uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, (vl), 0})

/* The request head as HTTP/2 fields: the pseudo-header fields, then the fields HTTP/2 may
 * carry (names lower-cased), `te: trailers` when the client asked for trailers, and the
 * length. Returns how many, or 0 when memory is exhausted. */
static size_t request_nv(h2c_stream_t *st, const head_t *req, int64_t len, nghttp2_nv *nv,
                         char *names, char *length)
{
    const char *method =
        req->method == HTTP_OTHER ? head_str(req, req->method_text) : http_method_name(req->method);
    size_t mlen = req->method == HTTP_OTHER ? req->method_len : strlen(method);
    const char *auth;
    size_t alen;
    authority(req, &auth, &alen);
    size_t n = 0;
    nv[n++] = NV(":method", method, mlen);
    nv[n++] =
        NV(":scheme", conn_is_tls(st->h->c) ? "https" : "http", conn_is_tls(st->h->c) ? 5 : 4);
    nv[n++] = NV(":authority", auth, alen);
    nv[n++] = NV(":path", head_str(req, req->target), req->target_len);
    n += h2_nv_fields(req, nv + n, HEAD_STORE_FIELDS, names, h2_field_excluded);
    if (wants_trailers(req))
        nv[n++] = NV("te", "trailers", 8);
    if (len > 0 || (len == 0 && req->method != HTTP_GET && req->method != HTTP_HEAD)) {
        int ln = snprintf(length, 24, "%lld", (long long)len);
        nv[n++] = NV("content-length", length, (size_t)ln);
    }
    return n;
}

static void send_head(client_stream_t *s, const head_t *req, int64_t len, unsigned msg)
{
    h2c_stream_t *st = of(s);
    h2_client_t *h = st->h;
    if (!live(h) || (msg & MSG_UPGRADE)) { /* HTTP/2 has no Upgrade (RFC 9113 §8.6) */
        fail_later(st, live(h) ? UV_EPROTO : ERR_REFUSED);
        return;
    }
    size_t names = h2_names_len(req);
    char stack[4096], *low = names <= sizeof stack ? stack : malloc(names);
    nghttp2_nv nv[HEAD_STORE_FIELDS + 7];
    char length[24];
    size_t n = low ? request_nv(st, req, len, nv, low, length) : 0;
    nghttp2_data_provider dp = {.source.ptr = st, .read_callback = read_body};
    int32_t id = n ? nghttp2_submit_request(h->sess, NULL, nv, n, msg & MSG_END ? NULL : &dp, st)
                   : NGHTTP2_ERR_NOMEM;
    if (low != stack)
        free(low);
    st->req_sent = 1;
    if (id < 0) {
        fail_later(st, id == NGHTTP2_ERR_STREAM_ID_NOT_AVAILABLE ? ERR_REFUSED : UV_ENOMEM);
        return;
    }
    st->id = id;
    st->open = 1;
    if (msg & MSG_END)
        st->req.done = 1;
    schedule(h);
}

static void resume_body(h2c_stream_t *st)
{
    if (st->req.deferred && st->open && !st->closed && live(st->h)) {
        st->req.deferred = 0;
        nghttp2_session_resume_data(st->h->sess, st->id);
    }
    schedule(st->h);
}

static void send_data(client_stream_t *s, buf_t *b, const char *p, size_t n)
{
    h2c_stream_t *st = of(s);
    if (n == 0 || !st->open || st->closed || st->req.done)
        return;
    if (h2_body_queue(&st->req, &st->h->loop->bufs, b, p, n) != 0) {
        reset_stream(st, NGHTTP2_INTERNAL_ERROR);
        fail_later(st, UV_ENOMEM);
        return;
    }
    resume_body(st);
}

static void send_end(client_stream_t *s, const head_t *trailers)
{
    h2c_stream_t *st = of(s);
    if (st->req.done || !st->open || st->closed)
        return;
    h2_body_end(&st->req, st->h->loop, trailers);
    resume_body(st);
}

static void pause_(client_stream_t *s, int paused)
{
    h2c_stream_t *st = of(s);
    if (st->paused == (paused ? 1u : 0u))
        return;
    st->paused = paused ? 1 : 0;
    if (!paused)
        loop_defer(st->h->loop, &st->later); /* resumed outside the caller's chain */
}

static int over_high_water(client_stream_t *s)
{
    return h2_body_over(&of(s)->req);
}

/* Unless both directions completed, the stream is reset (CANCEL): the upstream stops work
 * nobody waits for, and the rest of the connection goes on. */
static void release(client_stream_t *s, int clean)
{
    h2c_stream_t *st = of(s);
    st->released = 1;
    st->ev = NULL;
    st->ctx = NULL;
    if (st->held) {
        buf_unref(st->held);
        st->held = NULL;
    }
    if (st->open && !st->closed) {
        if (st->unconsumed && live(st->h))
            nghttp2_session_consume_stream(st->h->sess, st->id, st->unconsumed);
        if (!clean || !st->resp_done || !st->req.done)
            reset_stream(st, NGHTTP2_CANCEL);
    }
    st->unconsumed = 0;
    if (!st->open)
        stream_closed(st);
    maybe_free(st);
    schedule(st->h);
}

static conn_t *detach(client_stream_t *s, buf_t **pending, const char **p, size_t *n)
{
    (void)s;
    (void)pending;
    (void)p;
    (void)n;
    return NULL; /* never called: no 101 comes over HTTP/2 */
}

static const client_stream_ops_t stream_ops = {
    .send_head = send_head,
    .send_data = send_data,
    .send_end = send_end,
    .pause = pause_,
    .over_high_water = over_high_water,
    .release = release,
    .detach = detach,
};

/* ---- the pool's side ---- */

void h2_client_timeouts_init(h2_client_timeouts_t *t, loop_t *l, uint64_t connect_ms,
                             uint64_t idle_ms)
{
    tq_init(&t->connect_q, l, connect_ms, on_expired);
    tq_init(&t->idle_q, l, idle_ms, on_expired);
}

void h2_client_timeouts_close(h2_client_timeouts_t *t)
{
    tq_close(&t->connect_q);
    tq_close(&t->idle_q);
}

h2_client_t *h2_client_new(conn_t *c, cluster_stats_t *stats, const h2_client_owner_t *owner,
                           void *owner_ctx)
{
    h2_client_t *h = calloc(1, sizeof *h);
    if (!h)
        return NULL;
    h->c = c;
    h->loop = c->loop;
    h->stats = stats;
    h->owner = owner;
    h->owner_ctx = owner_ctx;
    h->connected = c->connected;
    h->flush_d.fn = on_flush;
    h->free_d.fn = free_later;
    if (new_session(h) != 0) {
        free(h);
        return NULL;
    }
    conn_set_owner(c, &conn_events, h);
    stat_inc(&stats->upstream_cx_total);
    stat_inc(&stats->upstream_cx_http2_total);
    stat_inc(&stats->upstream_cx_active);
    conn_read(c, 1);
    schedule(h); /* the preface and SETTINGS, queued until the connection is up */
    return h;
}

h2_client_t *h2_client_connect(conn_t *c, const struct sockaddr *addr, cluster_stats_t *stats,
                               h2_client_timeouts_t *tmo, const h2_client_owner_t *owner,
                               void *owner_ctx)
{
    h2_client_t *h = h2_client_new(c, stats, owner, owner_ctx);
    if (!h) {
        conn_close(c);
        return NULL;
    }
    h->tmo = tmo;
    h->connect_ns = uv_hrtime();
    c->rx_bytes = &stats->upstream_cx_rx_bytes_total;
    c->tx_bytes = &stats->upstream_cx_tx_bytes_total;
    conn_connect(c, addr);
    tq_add(&tmo->connect_q, &h->timeout);
    return h;
}

uint32_t h2_client_peer_limit(const h2_client_t *h)
{
    if (!live(h) || !h->settled)
        return 0;
    return nghttp2_session_get_remote_settings(h->sess, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
}

int h2_client_has_room(const h2_client_t *h, uint32_t assumed)
{
    if (!live(h) || h->goaway || h->retiring || h->abused || h->gone || !h->c || h->c->closing)
        return 0;
    uint32_t peer = h->settled ? h2_client_peer_limit(h)
                    : assumed  ? assumed
                               : H2_CLIENT_MAX_STREAMS;
    return h->nopen < (peer < H2_CLIENT_MAX_STREAMS ? peer : H2_CLIENT_MAX_STREAMS);
}

client_stream_t *h2_client_stream(h2_client_t *h, const stream_events_t *ev, void *ctx)
{
    h2c_stream_t *st = calloc(1, sizeof *st);
    if (!st || !(st->head = head_take(h->loop))) {
        free(st);
        return NULL;
    }
    st->s.ops = &stream_ops;
    st->s.connected = h->connected;
    st->s.reused = h->used;
    st->h = h;
    st->ev = ev;
    st->ctx = ctx;
    st->req.conn = &h->queued;
    st->later.fn = stream_later;
    st->next = h->streams;
    if (h->streams)
        h->streams->prev = st;
    h->streams = st;
    h->nstreams++;
    h->nopen++;
    h->used = 1;
    if (h->connected)
        tq_del(&h->timeout); /* out of the idle queue */
    return &st->s;
}

void h2_client_retire(h2_client_t *h)
{
    h->retiring = 1;
    gone(h);
    if (h->nopen == 0)
        close_conn(h, ERR_UPSTREAM_CLOSED);
    else
        schedule(h);
}

void h2_client_close(h2_client_t *h)
{
    close_conn(h, ERR_UPSTREAM_CLOSED);
}

h2_client_t **h2_client_link(h2_client_t *h)
{
    return &h->next;
}
