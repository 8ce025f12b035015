/* The HTTP/2 server codec (h2_server.h; docs/http2.md): one h2_server_t per HTTP/2 connection
 * holding an nghttp2 session and its streams (h2_stream_t, each a server_stream_t). Which
 * connections get it is h2_sniff.c's decision.
 *
 * Calling discipline. nghttp2 runs its callbacks only from inside nghttp2_session_mem_recv
 * (from on_read) and nghttp2_session_send (flush, from on_read or the loop's deferred list),
 * never from inside an op the exchange calls: ops only queue (nghttp2_submit_*,
 * nghttp2_session_resume_data) and defer a flush. So every event reaches an exchange from a
 * read, a flush, a timer or a close, as stream.h asks. Stream objects are freed from the
 * deferred list, once nghttp2 has closed the stream and the exchange has released it.
 *
 * Ownership: the connection object owns its streams and outlives them (their peer and
 * orig_dst point into it); it is freed once its conn is closed and its last stream is gone. */
#include "proxy/h2_server.h"

#include <netinet/in.h>
#include <nghttp2/nghttp2.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"
#include "base/log.h"
#include "proxy/h2_body.h"

/* Abuse budgets (docs/http2.md has the reasons and Envoy's names for them). */
#define PREMATURE_MS            1000  /* a stream reset younger than this is a premature reset */
#define PREMATURE_STREAMS       500   /* streams closed before the ratio is judged (Envoy's) */
#define MAX_EMPTY_FRAMES        1     /* consecutive frames with no payload and no END_STREAM */
#define PRIORITY_PER_STREAM     100   /* PRIORITY frames per stream opened */
#define WINDOW_UPDATES_PER_DATA 10    /* WINDOW_UPDATE frames per DATA frame sent */
#define MAX_OUTBOUND_FRAMES     10000 /* frames nghttp2 may hold for a client that does not read */

enum phase { PH_NONE, PH_HEADERS, PH_IDLE, PH_LINGER };

typedef struct h2_stream h2_stream_t;

struct h2_stream {
    server_stream_t s; /* first: the exchange's handle */
    h2_server_t *h;
    h2_stream_t *next, *prev;
    int32_t id;
    const stream_events_t *ev; /* the exchange, once accepted */
    void *ctx;
    head_t *head;         /* the request head while its fields arrive */
    head_t *trailers;     /* request trailers while they arrive */
    head_t *end_trailers; /* ... received, waiting for on_end (the stream is paused) */
    char *cookie;         /* Cookie crumbs, joined with "; " (RFC 9113 §8.2.3) */
    size_t cookie_len, cookie_cap;
    size_t hdr_bytes; /* this header block, as RFC 7541 §4.1 counts it */
    unsigned hdr_fields, fields;
    uint64_t start_ms;
    buf_t *held;       /* request body that came while paused (copied: at most a window) */
    size_t unconsumed; /* bytes not yet credited to the stream's window */
    h2_body_t resp;    /* the response body queued for DATA frames; resp.done: send_end came */
    deferred_t later;  /* delivery resumed, or the object freed */
    unsigned accepted : 1, released : 1, closed : 1, failed : 1;
    unsigned refused : 1;     /* answered or reset by the codec: no exchange */
    unsigned req_ended : 1;   /* END_STREAM received */
    unsigned req_done : 1;    /* ... and told the exchange (MSG_END or on_end) */
    unsigned end_pending : 1; /* received, waiting for the pause to end */
    unsigned paused : 1;
    unsigned in_trailers : 1;
    unsigned too_large : 1, too_many : 1;
    unsigned has_authority : 1, has_length : 1, expect_continue : 1, head_request : 1;
    unsigned resp_sent : 1, no_body : 1, continued : 1;
    unsigned eos_sent : 1, rst_sent : 1, rx_reset : 1;
    unsigned tx_counted : 1; /* counted in downstream_rq_tx_reset */
};

struct h2_server {
    tq_node_t timeout; /* in the queue of its phase */
    h2_server_config_t *cfg;
    conn_t *c;
    nghttp2_session *sess;
    enum phase phase;
    h2_server_t *next, *prev;
    h2_stream_t *streams;
    unsigned nstreams; /* objects, open or held by an exchange */
    unsigned nopen;    /* request streams nghttp2 has open */
    h2_queue_t queued; /* response body pinned by every stream */
    buf_t *rbuf;       /* the read being parsed (DATA is referenced in it) */
    buf_t *obuf;       /* frame bytes staged for conn_write during one flush */
    deferred_t flush_d, free_d;
    char peer[48];
    struct sockaddr_storage dst;
    uint64_t streams_total, closed_streams, premature;
    uint64_t priority_frames, window_updates, data_frames_sent;
    unsigned empty_frames;
    uint32_t fail_code; /* the GOAWAY a failing callback asked for */
    const char *fail_why;
    uint32_t wire_left; /* octets left of the frame payload (at first, the preface) being read */
    uint8_t wire_hd[9]; /* a frame header as it arrives */
    uint8_t wire_hn;
    unsigned wire_in_hdr : 1; /* the frame being read is HEADERS or CONTINUATION */
    unsigned wire_block : 1;  /* ... and the block goes on past it (no END_HEADERS) */
    unsigned got_preface : 1; /* the client's SETTINGS arrived */
    unsigned hdr_pending : 1; /* a header block has begun and not ended */
    unsigned lost : 1;        /* the connection's end is decided: lost_remote, lost_active */
    unsigned lost_remote : 1; /* ... the client closed or reset it first */
    unsigned lost_active : 1; /* ... with a stream open */
    unsigned terminating : 1; /* an error GOAWAY is queued: written past the watermarks */
    unsigned closing : 1;     /* FIN sent (or owed), lingering */
    unsigned peer_eof : 1;
    unsigned retired : 1; /* the conn is gone */
    unsigned drain_notice : 1, drain_final : 1;
    unsigned in_recv : 1;
    unsigned error_counted : 1;
    unsigned premature_hit : 1;
};

static const server_stream_ops_t stream_ops;
static const conn_events_t conn_events;
static void flush(h2_server_t *h);
static void schedule(h2_server_t *h);
static void finish(h2_server_t *h);
static void close_now(h2_server_t *h);
static void terminate(h2_server_t *h, uint32_t code, const char *why);
static void update_phase(h2_server_t *h);
static void maybe_free(h2_stream_t *st);

static h2_stats_t *h2st(h2_server_t *h)
{
    return &h->cfg->stats->http2;
}

static int usable(const h2_stream_t *st)
{
    return !st->closed && st->h->sess && !st->h->retired;
}

/* ---- output: frames into conn.c ---- */

/* Writes stop at the high-water mark (nghttp2 keeps the frame and asks again after on_drain),
 * except for a connection being torn down: its last frames are few and must go. */
static int blocked(h2_server_t *h)
{
    return !h->c || h->c->closing || (!h->terminating && conn_over_high_water(h->c));
}

static ssize_t send_cb(nghttp2_session *sess, const uint8_t *data, size_t len, int flags, void *ud)
{
    (void)sess;
    (void)flags;
    h2_server_t *h = ud;
    if (blocked(h))
        return NGHTTP2_ERR_WOULDBLOCK;
    if (h2_out_copy(h->c, &h->cfg->loop->bufs, &h->obuf, data, len) != 0) {
        close_now(h); /* a frame cannot be dropped from the middle of the stream */
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    return (ssize_t)len;
}

/* DATA with NGHTTP2_DATA_FLAG_NO_COPY: the header, then the queued pieces by reference. */
static int send_data_cb(nghttp2_session *sess, nghttp2_frame *frame, const uint8_t *framehd,
                        size_t length, nghttp2_data_source *src, void *ud)
{
    (void)sess;
    h2_server_t *h = ud;
    h2_stream_t *st = src->ptr;
    if (blocked(h))
        return NGHTTP2_ERR_WOULDBLOCK;
    h2_body_frame(&st->resp, h->c, frame, framehd, length);
    h->data_frames_sent++;
    return 0;
}

/* The response body's source: what is queued, by length only (NO_COPY). */
static ssize_t read_body(nghttp2_session *sess, int32_t id, uint8_t *buf, size_t length,
                         uint32_t *flags, nghttp2_data_source *src, void *ud)
{
    (void)buf;
    h2_server_t *h = ud;
    h2_stream_t *st = src->ptr;
    return h2_body_read(&st->resp, h->cfg->loop, sess, id, length, flags);
}

/* ---- stream objects ---- */

static void stream_later(deferred_t *d);

static h2_stream_t *new_stream(h2_server_t *h, int32_t id)
{
    h2_stream_t *st = calloc(1, sizeof *st);
    if (!st)
        return NULL;
    if (!(st->head = head_take(h->cfg->loop))) {
        free(st);
        return NULL;
    }
    st->h = h;
    st->id = id;
    st->s.ops = &stream_ops;
    st->s.peer = h->peer;
    st->s.orig_dst = h->dst.ss_family ? (const struct sockaddr *)&h->dst : NULL;
    st->s.secure = h->c && conn_is_tls(h->c) ? 1 : 0;
    st->start_ms = loop_now(h->cfg->loop);
    st->later.fn = stream_later;
    st->resp.conn = &h->queued;
    st->next = h->streams;
    if (h->streams)
        h->streams->prev = st;
    h->streams = st;
    h->nstreams++;
    return st;
}

static void free_conn(h2_server_t *h);

static void free_stream(h2_stream_t *st)
{
    h2_server_t *h = st->h;
    loop_t *l = h->cfg->loop;
    h2_body_free(&st->resp, l);
    if (st->held)
        buf_unref(st->held);
    head_give(l, st->head);
    head_give(l, st->trailers);
    head_give(l, st->end_trailers);
    free(st->cookie);
    if (st->prev)
        st->prev->next = st->next;
    else
        h->streams = st->next;
    if (st->next)
        st->next->prev = st->prev;
    loop_cancel(l, &st->later);
    free(st);
    if (--h->nstreams == 0 && h->retired)
        free_conn(h);
}

static int freeable(const h2_stream_t *st)
{
    return st->closed && (st->released || !st->accepted);
}

static void maybe_free(h2_stream_t *st)
{
    if (freeable(st))
        loop_defer(st->h->cfg->loop, &st->later); /* never inside the chain that closed it */
}

/* Remora reset a request before its response was complete (Envoy's downstream_rq_tx_reset):
 * an RST_STREAM sent, or the connection ended from this side under it. Once per stream. */
static void count_tx_reset(h2_stream_t *st)
{
    if (st->tx_counted || st->eos_sent || st->rx_reset)
        return;
    st->tx_counted = 1;
    stat_inc(&st->h->cfg->stats->downstream_rq_tx_reset);
}

static void reset_stream(h2_stream_t *st, uint32_t code)
{
    if (!usable(st) || st->rst_sent)
        return;
    st->rst_sent = 1;
    nghttp2_submit_rst_stream(st->h->sess, NGHTTP2_FLAG_NONE, st->id, code);
    schedule(st->h);
}

/* The stream failed for the exchange: it hears on_error once, and nothing after. */
static void fail_stream(h2_stream_t *st, int err)
{
    if (!st->accepted || st->released || st->failed)
        return;
    st->failed = 1;
    st->ev->on_error(st->ctx, err);
}

/* ---- the codec's own answers ---- */

/* An answer no exchange saw the request for (431, 501, 503): a short plain-text body, counted
 * by its class as the exchange counts its answers (the request is in downstream_rq_total). */
static void local_reply(h2_stream_t *st, int status, const char *body)
{
    st->refused = 1;
    stat_inc(stat_class(&st->h->cfg->stats->downstream_rq_1xx, status));
    if (!usable(st))
        return;
    char code[4] = {(char)('0' + status / 100), (char)('0' + status / 10 % 10),
                    (char)('0' + status % 10), 0};
    size_t n = st->head_request ? 0 : strlen(body);
    char len[24];
    int ln = snprintf(len, sizeof len, "%zu", strlen(body));
    nghttp2_nv nv[] = {
        {(uint8_t *)":status", (uint8_t *)code, 7, 3, NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)"content-type", (uint8_t *)"text/plain", 12, 10, NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)"content-length", (uint8_t *)len, 14, (size_t)ln, NGHTTP2_NV_FLAG_NONE},
    };
    nghttp2_data_provider dp = {.source.ptr = st, .read_callback = read_body};
    st->resp_sent = 1;
    st->resp.done = 1;
    if (n && h2_body_queue(&st->resp, &st->h->cfg->loop->bufs, NULL, body, n) != 0)
        n = 0;
    if (nghttp2_submit_response(st->h->sess, st->id, nv, 3, n ? &dp : NULL) != 0)
        reset_stream(st, NGHTTP2_INTERNAL_ERROR);
    schedule(st->h);
}

/* ---- requests: nghttp2's callbacks ---- */

static h2_stream_t *stream_of(nghttp2_session *sess, int32_t id)
{
    return id ? nghttp2_session_get_stream_user_data(sess, id) : NULL;
}

static int fail_cb(h2_server_t *h, uint32_t code, const char *why)
{
    h->fail_code = code;
    h->fail_why = why;
    return NGHTTP2_ERR_CALLBACK_FAILURE;
}

static int on_begin_frame(nghttp2_session *sess, const nghttp2_frame_hd *hd, void *ud)
{
    (void)sess;
    h2_server_t *h = ud;
    switch (hd->type) {
    case NGHTTP2_HEADERS:
    case NGHTTP2_CONTINUATION:
        /* CVE-2019-9518: frames that carry nothing and end nothing cost work for free. */
        if (hd->length == 0 && !(hd->flags & NGHTTP2_FLAG_END_STREAM)) {
            if (++h->empty_frames > MAX_EMPTY_FRAMES) {
                stat_inc(&h2st(h)->inbound_empty_frames_flood);
                return fail_cb(h, NGHTTP2_ENHANCE_YOUR_CALM, "empty frames flood");
            }
        } else {
            h->empty_frames = 0;
        }
        return 0;
    case NGHTTP2_PRIORITY:
        /* nghttp2 skips PRIORITY frames whole without RFC 7540 priorities; RFC 9113 §6.3
         * still makes one on stream 0 a connection error. */
        if (hd->stream_id == 0)
            return fail_cb(h, NGHTTP2_PROTOCOL_ERROR, "PRIORITY on stream 0");
        if (++h->priority_frames > PRIORITY_PER_STREAM * (1 + h->streams_total)) {
            stat_inc(&h2st(h)->inbound_priority_frames_flood);
            return fail_cb(h, NGHTTP2_ENHANCE_YOUR_CALM, "PRIORITY flood");
        }
        return 0;
    case NGHTTP2_WINDOW_UPDATE:
        if (++h->window_updates >
            5 + 2 * (h->streams_total + WINDOW_UPDATES_PER_DATA * h->data_frames_sent)) {
            stat_inc(&h2st(h)->inbound_window_update_frames_flood);
            return fail_cb(h, NGHTTP2_ENHANCE_YOUR_CALM, "WINDOW_UPDATE flood");
        }
        return 0;
    default:
        return 0;
    }
}

static int on_begin_headers(nghttp2_session *sess, const nghttp2_frame *f, void *ud)
{
    h2_server_t *h = ud;
    if (f->hd.type != NGHTTP2_HEADERS)
        return 0;
    if (f->headers.cat == NGHTTP2_HCAT_REQUEST) {
        h->streams_total++;
        h2_stream_t *st = new_stream(h, f->hd.stream_id);
        if (!st) { /* out of memory: refused, so the client may try again (RFC 9113 §8.7) */
            nghttp2_submit_rst_stream(sess, NGHTTP2_FLAG_NONE, f->hd.stream_id,
                                      NGHTTP2_REFUSED_STREAM);
            return 0;
        }
        nghttp2_session_set_stream_user_data(sess, f->hd.stream_id, st);
        h->nopen++;
        stat_inc(&h2st(h)->streams_active);
        return 0;
    }
    h2_stream_t *st = stream_of(sess, f->hd.stream_id); /* trailers */
    if (!st)
        return 0;
    st->in_trailers = 1;
    st->hdr_bytes = 0;
    st->hdr_fields = 0;
    if (!st->trailers && st->accepted && !st->released)
        st->trailers = head_take(h->cfg->loop); /* NULL: they are dropped */
    return 0;
}

static int is(const uint8_t *p, size_t n, const char *lit)
{
    size_t k = strlen(lit);
    return n == k && memcmp(p, lit, k) == 0;
}

static void pseudo(h2_stream_t *st, const uint8_t *name, size_t nlen, const uint8_t *value,
                   size_t vlen)
{
    head_t *hd = st->head;
    const char *v = (const char *)value;
    if (is(name, nlen, ":method")) {
        int64_t off = head_store(hd, v, vlen);
        if (off < 0) {
            st->too_large = 1;
            return;
        }
        hd->method = (uint8_t)http_method_of(v, vlen);
        hd->method_text = (uint32_t)off;
        hd->method_len = (uint32_t)vlen;
        st->head_request = hd->method == HTTP_HEAD;
    } else if (is(name, nlen, ":path")) {
        int64_t off = head_store(hd, v, vlen);
        if (off < 0) {
            st->too_large = 1;
            return;
        }
        hd->target = (uint32_t)off;
        hd->target_len = (uint32_t)vlen;
    } else if (is(name, nlen, ":authority")) {
        /* Host for the rest of the way (RFC 9113 §8.3.1: an intermediary forwarding to
         * HTTP/1.1 makes Host from :authority). */
        if (head_add_field(hd, "host", 4, v, vlen) != 0)
            st->too_large = 1;
        st->has_authority = 1;
    } /* :scheme: the connection says http or https (X-Forwarded-Proto) */
}

static int add_cookie(h2_stream_t *st, const uint8_t *v, size_t n)
{
    if (n == 0)
        return 0; /* an empty crumb adds nothing to the joined field */
    size_t need = st->cookie_len + (st->cookie_len ? 2 : 0) + n;
    if (need > st->cookie_cap) {
        size_t cap = st->cookie_cap ? st->cookie_cap * 2 : 256;
        while (cap < need)
            cap *= 2;
        char *p = realloc(st->cookie, cap);
        if (!p)
            return UV_ENOMEM;
        st->cookie = p;
        st->cookie_cap = cap;
    }
    if (st->cookie_len) {
        memcpy(st->cookie + st->cookie_len, "; ", 2);
        st->cookie_len += 2;
    }
    memcpy(st->cookie + st->cookie_len, v, n);
    st->cookie_len += n;
    return 0;
}

static void field(h2_stream_t *st, const uint8_t *name, size_t nlen, const uint8_t *value,
                  size_t vlen)
{
    head_t *hd = st->head;
    const char *v = (const char *)value;
    if (++st->fields > HEAD_MAX_FIELDS) {
        if (!st->too_many)
            stat_inc(&h2st(st->h)->too_many_headers);
        st->too_many = 1;
        return;
    }
    if (is(name, nlen, "host") && st->has_authority) {
        int i = head_find_id(hd, F_HOST, 0);
        if (i >= 0 && hd->fields[i].value_len == vlen &&
            memcmp(field_value(hd, (unsigned)i), v, vlen) == 0)
            return; /* the same as :authority: kept once */
        /* RFC 9113 §8.3.1: a Host that names another entity than :authority is malformed. */
        stat_inc(&h2st(st->h)->rx_messaging_error);
        st->refused = 1;
        reset_stream(st, NGHTTP2_PROTOCOL_ERROR);
        return;
    }
    if (is(name, nlen, "cookie")) {
        if (add_cookie(st, value, vlen) != 0)
            st->too_large = 1;
        return;
    }
    if (is(name, nlen, "content-length"))
        st->has_length = 1;
    else if (is(name, nlen, "expect") && list_has(v, vlen, "100-continue", 12))
        st->expect_continue = 1;
    if (head_add_field(hd, (const char *)name, nlen, v, vlen) != 0)
        st->too_large = 1;
}

static int on_header(nghttp2_session *sess, const nghttp2_frame *f, const uint8_t *name,
                     size_t nlen, const uint8_t *value, size_t vlen, uint8_t flags, void *ud)
{
    (void)flags;
    h2_server_t *h = ud;
    h2_stream_t *st = f->hd.type == NGHTTP2_HEADERS ? stream_of(sess, f->hd.stream_id) : NULL;
    if (!st)
        return 0;
    /* RFC 7541 §4.1 sizes. Past the advertised limit the request is answered 431 (as h1
     * does); far past it, the block decodes to much more than it weighed on the wire: an
     * HPACK bomb, a connection error. */
    st->hdr_bytes += nlen + vlen + 32;
    if (st->hdr_bytes > H2_HEADER_LIST_ABUSE || ++st->hdr_fields > 4 * HEAD_MAX_FIELDS) {
        stat_inc(st->hdr_bytes > H2_HEADER_LIST_ABUSE ? &h2st(h)->header_overflow
                                                      : &h2st(h)->too_many_headers);
        return fail_cb(h, NGHTTP2_ENHANCE_YOUR_CALM, "header list far past its limit");
    }
    if (st->refused || st->too_large || st->too_many)
        return 0;
    if (st->hdr_bytes > H2_HEADER_LIST_MAX) {
        stat_inc(&h2st(h)->header_overflow);
        st->too_large = 1;
        return 0;
    }
    if (st->in_trailers) {
        if (st->trailers && head_add_field(st->trailers, (const char *)name, nlen,
                                           (const char *)value, vlen) != 0) {
            head_give(h->cfg->loop, st->trailers); /* too many: all are dropped, as h1 does */
            st->trailers = NULL;
        }
        return 0;
    }
    if (nlen > 0 && name[0] == ':')
        pseudo(st, name, nlen, value, vlen);
    else
        field(st, name, nlen, value, vlen);
    return 0;
}

static void deliver_end(h2_stream_t *st)
{
    head_t *t = st->end_trailers;
    st->end_trailers = NULL;
    st->end_pending = 0;
    if (!st->accepted || st->released || st->failed) {
        head_give(st->h->cfg->loop, t);
        return;
    }
    st->req_done = 1;
    st->ev->on_end(st->ctx, t); /* the exchange owns the trailers now */
}

static void request_ended(h2_stream_t *st, head_t *trailers)
{
    st->req_ended = 1;
    st->end_trailers = trailers;
    if (st->req_done || !st->accepted || st->released || st->failed) {
        head_give(st->h->cfg->loop, st->end_trailers);
        st->end_trailers = NULL;
        return;
    }
    if (st->paused || (st->held && st->held->len)) {
        st->end_pending = 1; /* after the body held, once the pause ends */
        return;
    }
    deliver_end(st);
}

/* A request head is complete: to the exchange, or answered here. */
static void request_head(h2_server_t *h, h2_stream_t *st, int end_stream)
{
    if (st->refused)
        return;
    head_t *hd = st->head;
    stat_inc(&h->cfg->stats->downstream_rq_total); /* a 431 or a 501 too, as HTTP/1.1 counts */
    if (!st->too_large && !st->too_many && st->cookie_len &&
        head_add_field(hd, "cookie", 6, st->cookie, st->cookie_len) != 0)
        st->too_large = 1;
    if (st->too_large || st->too_many) {
        stat_inc(&h->cfg->stats->downstream_rq_header_too_large);
        log_debug("downstream %s: stream %d: request headers too large, answering 431", h->peer,
                  st->id);
        local_reply(st, 431, "request headers too large\n");
        return;
    }
    if (hd->method == HTTP_CONNECT) {
        /* RFC 9113 §8.5 tunnels over one stream; remora does not (docs/http2.md). */
        local_reply(st, 501, "CONNECT is not supported over HTTP/2\n");
        return;
    }
    hd->major = 2;
    hd->minor = 0;
    unsigned msg = 0;
    if (end_stream) {
        msg = MSG_END;
        st->req_ended = st->req_done = 1;
    } else {
        msg |= st->has_length ? 0 : MSG_CHUNKED;
        msg |= st->expect_continue ? MSG_CONTINUE : 0;
    }
    st->ev = h->cfg->handler->accept(h->cfg->owner, &st->s, &st->ctx);
    if (!st->ev) {
        local_reply(st, 503, "out of memory\n");
        return;
    }
    st->accepted = 1;
    st->head = NULL;
    st->ev->on_head(st->ctx, hd, msg);
}

static int on_data_chunk(nghttp2_session *sess, uint8_t flags, int32_t id, const uint8_t *data,
                         size_t len, void *ud)
{
    (void)flags;
    h2_server_t *h = ud;
    /* The connection window is credited at once: only a stream's own window holds back. */
    nghttp2_session_consume_connection(sess, len);
    h2_stream_t *st = stream_of(sess, id);
    if (!st || !st->accepted || st->released || st->failed || st->req_done) {
        nghttp2_session_consume_stream(sess, id, len);
        return 0;
    }
    st->unconsumed += len;
    if (st->paused || (st->held && st->held->len)) {
        if (h2_hold(&st->held, &st->h->cfg->loop->bufs, H2_STREAM_WINDOW, data, len) != 0) {
            reset_stream(st, NGHTTP2_INTERNAL_ERROR);
            fail_stream(st, UV_ENOMEM);
        }
        return 0;
    }
    st->ev->on_data(st->ctx, h->rbuf, (const char *)data, len);
    if (!st->paused || st->released || st->failed) { /* else credited when the exchange resumes */
        nghttp2_session_consume_stream(sess, id, st->unconsumed);
        st->unconsumed = 0;
    }
    return 0;
}

static int peer_error(uint32_t code)
{
    return code == NGHTTP2_PROTOCOL_ERROR || code == NGHTTP2_FLOW_CONTROL_ERROR ||
           code == NGHTTP2_STREAM_CLOSED || code == NGHTTP2_FRAME_SIZE_ERROR ||
           code == NGHTTP2_REFUSED_STREAM || code == NGHTTP2_COMPRESSION_ERROR;
}

/* Rapid reset (CVE-2023-44487, and the server-provoked kind, CVE-2025-8671), as Envoy judges
 * it: once half of the streams closed (or 250 within the first 500) were reset within a
 * second of opening, by the client or for its errors, the connection goes. Returns whether
 * the budget is spent: a callback inside mem_recv then fails it, so that not one more frame
 * of the read (a new stream) is taken; inside send, check_budgets acts once send returns. */
static int count_premature(h2_server_t *h)
{
    h->premature++;
    uint64_t closed = h->closed_streams;
    int over = closed < PREMATURE_STREAMS ? h->premature * 2 >= PREMATURE_STREAMS
                                          : h->premature * 2 >= closed;
    if (over && !h->premature_hit) {
        h->premature_hit = 1;
        stat_inc(&h->cfg->stats->downstream_rq_too_many_premature_resets);
    }
    return h->premature_hit;
}

static int on_frame_recv(nghttp2_session *sess, const nghttp2_frame *f, void *ud)
{
    h2_server_t *h = ud;
    h2_stream_t *st = stream_of(sess, f->hd.stream_id);
    switch (f->hd.type) {
    case NGHTTP2_DATA:
        if (f->hd.length - f->data.padlen == 0 && !(f->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
            if (++h->empty_frames > MAX_EMPTY_FRAMES) {
                stat_inc(&h2st(h)->inbound_empty_frames_flood);
                return fail_cb(h, NGHTTP2_ENHANCE_YOUR_CALM, "empty frames flood");
            }
        } else {
            h->empty_frames = 0;
        }
        if (st && (f->hd.flags & NGHTTP2_FLAG_END_STREAM))
            request_ended(st, NULL);
        break;
    case NGHTTP2_HEADERS:
        if (!st)
            break;
        if (f->headers.cat == NGHTTP2_HCAT_REQUEST) {
            if (f->hd.flags & NGHTTP2_FLAG_END_STREAM)
                st->req_ended = 1;
            request_head(h, st, f->hd.flags & NGHTTP2_FLAG_END_STREAM);
        } else if (st->in_trailers) {
            st->in_trailers = 0;
            stat_inc(&h2st(h)->trailers);
            head_t *t = st->trailers;
            st->trailers = NULL;
            if (t && t->nfields == 0) {
                head_give(h->cfg->loop, t);
                t = NULL;
            }
            request_ended(st, t);
        }
        break;
    case NGHTTP2_SETTINGS:
        if (!(f->hd.flags & NGHTTP2_FLAG_ACK))
            h->got_preface = 1;
        break;
    case NGHTTP2_RST_STREAM:
        stat_inc(&h2st(h)->rx_reset);
        if (st)
            st->rx_reset = 1;
        break;
    case NGHTTP2_PING:
        /* The drain's round trip: the client has seen the notice, so every stream it opened
         * before it is known; the real GOAWAY names the last (RFC 9113 §6.8). */
        if ((f->hd.flags & NGHTTP2_FLAG_ACK) && h->drain_notice && !h->drain_final) {
            h->drain_final = 1;
            nghttp2_submit_goaway(sess, NGHTTP2_FLAG_NONE,
                                  nghttp2_session_get_last_proc_stream_id(sess), NGHTTP2_NO_ERROR,
                                  NULL, 0);
        }
        break;
    default:
        break;
    }
    return 0;
}

static int on_invalid_frame(nghttp2_session *sess, const nghttp2_frame *f, int lib_error, void *ud)
{
    (void)sess;
    h2_server_t *h = ud;
    if (lib_error == NGHTTP2_ERR_HTTP_HEADER || lib_error == NGHTTP2_ERR_HTTP_MESSAGING)
        stat_inc(&h2st(h)->rx_messaging_error);
    log_debug("downstream %s: invalid frame (type %u, stream %d): %s", h->peer, f->hd.type,
              f->hd.stream_id, nghttp2_strerror(lib_error));
    return 0;
}

static int on_frame_send(nghttp2_session *sess, const nghttp2_frame *f, void *ud)
{
    h2_server_t *h = ud;
    h2_stream_t *st = stream_of(sess, f->hd.stream_id);
    switch (f->hd.type) {
    case NGHTTP2_RST_STREAM:
        stat_inc(&h2st(h)->tx_reset);
        if (st)
            count_tx_reset(st);
        if (!st && peer_error(f->rst_stream.error_code)) { /* a stream nghttp2 never opened */
            h->closed_streams++;
            count_premature(h);
        }
        break;
    case NGHTTP2_GOAWAY:
        stat_inc(&h2st(h)->goaway_sent);
        if (f->goaway.error_code != NGHTTP2_NO_ERROR && !h->error_counted) {
            h->error_counted = 1;
            stat_inc(&h->cfg->stats->downstream_cx_protocol_error);
        }
        break;
    case NGHTTP2_HEADERS:
    case NGHTTP2_DATA:
        if (st && (f->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
            st->eos_sent = 1;
            /* A complete response before the complete request: the rest is not wanted
             * (RFC 9113 §8.1). */
            if (!st->req_ended)
                reset_stream(st, NGHTTP2_NO_ERROR);
        }
        break;
    default:
        break;
    }
    return 0;
}

static int on_frame_not_send(nghttp2_session *sess, const nghttp2_frame *f, int lib_error, void *ud)
{
    h2_server_t *h = ud;
    h2_stream_t *st = stream_of(sess, f->hd.stream_id);
    log_debug("downstream %s: frame (type %u, stream %d) not sent: %s", h->peer, f->hd.type,
              f->hd.stream_id, nghttp2_strerror(lib_error));
    if (st && f->hd.type == NGHTTP2_HEADERS)
        reset_stream(st, NGHTTP2_INTERNAL_ERROR);
    return 0;
}

static int on_stream_close(nghttp2_session *sess, int32_t id, uint32_t code, void *ud)
{
    h2_server_t *h = ud;
    h2_stream_t *st = stream_of(sess, id);
    if (!st)
        return 0;
    nghttp2_session_set_stream_user_data(sess, id, NULL);
    st->closed = 1;
    h->nopen--;
    h->closed_streams++;
    stat_dec(&h2st(h)->streams_active);
    h2_body_drop(&st->resp, h->cfg->loop);
    int by_peer = st->rx_reset || peer_error(code);
    int spent = code != NGHTTP2_NO_ERROR && by_peer && !st->eos_sent &&
                loop_now(h->cfg->loop) - st->start_ms < PREMATURE_MS && count_premature(h);
    if (st->accepted && !st->released && !st->failed && !(st->req_done && st->resp.done)) {
        if (st->rx_reset)
            stat_inc(&h->cfg->stats->downstream_rq_rx_reset);
        fail_stream(st, !st->rx_reset && peer_error(code) ? ERR_BAD_REQUEST : ERR_CLIENT_GONE);
    }
    maybe_free(st);
    /* The rest of the read is not looked at: its GOAWAY names this stream at most. */
    if (spent && h->in_recv)
        return fail_cb(h, NGHTTP2_ENHANCE_YOUR_CALM, "too many premature stream resets");
    return 0;
}

static int on_error(nghttp2_session *sess, int lib_error, const char *msg, size_t len, void *ud)
{
    (void)sess;
    (void)lib_error;
    h2_server_t *h = ud;
    log_debug("downstream %s: http2: %.*s", h->peer, (int)len, msg);
    return 0;
}

/* ---- the session ---- */

static nghttp2_session_callbacks *callbacks;
static nghttp2_option *options;

static void make_session_setup(void)
{
    nghttp2_session_callbacks *cb;
    if (nghttp2_session_callbacks_new(&cb) != 0)
        return;
    nghttp2_session_callbacks_set_send_callback(cb, send_cb);
    nghttp2_session_callbacks_set_send_data_callback(cb, send_data_cb);
    nghttp2_session_callbacks_set_on_begin_frame_callback(cb, on_begin_frame);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(cb, on_invalid_frame);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data_chunk);
    nghttp2_session_callbacks_set_on_frame_send_callback(cb, on_frame_send);
    nghttp2_session_callbacks_set_on_frame_not_send_callback(cb, on_frame_not_send);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
    nghttp2_session_callbacks_set_error_callback2(cb, on_error);
    nghttp2_option *opt = h2_options_new();
    if (!opt) {
        nghttp2_session_callbacks_del(cb);
        return;
    }
    callbacks = cb;
    options = opt;
}

static int new_session(h2_server_t *h)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, make_session_setup);
    if (!callbacks || nghttp2_session_server_new2(&h->sess, callbacks, h, options) != 0)
        return UV_ENOMEM;
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, H2_MAX_STREAMS},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, H2_STREAM_WINDOW},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, H2_HEADER_LIST_MAX},
        {NGHTTP2_SETTINGS_NO_RFC7540_PRIORITIES, 1}, /* no priority tree to churn (9513) */
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

static void set_phase(h2_server_t *h, enum phase ph)
{
    if (ph == h->phase)
        return;
    h->phase = ph;
    h2_server_config_t *cfg = h->cfg;
    switch (ph) {
    case PH_HEADERS:
        tq_add(&cfg->headers_q, &h->timeout);
        break;
    case PH_IDLE:
        tq_add(&cfg->idle_q, &h->timeout);
        break;
    case PH_LINGER:
        tq_add(&cfg->linger_q, &h->timeout);
        break;
    case PH_NONE:
        tq_del(&h->timeout);
        break;
    }
}

static void update_phase(h2_server_t *h)
{
    if (h->retired)
        return;
    set_phase(h, h->closing                          ? PH_LINGER
                 : !h->got_preface || h->hdr_pending ? PH_HEADERS
                 : h->nopen == 0                     ? PH_IDLE
                                                     : PH_NONE);
}

static void update_reading(h2_server_t *h)
{
    if (!h->c || h->c->closing)
        return;
    int want = !h->peer_eof && (h->closing || (h->sess && nghttp2_session_want_read(h->sess)));
    conn_read(h->c, want);
}

/* The connection's end is decided, once: by the client (`remote`: it closed or reset it) or by
 * remora, whose decision resets every stream still open. Counted when the conn is closed. */
static void lost(h2_server_t *h, int remote)
{
    if (h->lost)
        return;
    h->lost = 1;
    h->lost_remote = remote ? 1 : 0;
    h->lost_active = h->nopen > 0;
    if (remote)
        return;
    for (h2_stream_t *st = h->streams; st; st = st->next)
        if (!st->closed)
            count_tx_reset(st);
}

static void close_now(h2_server_t *h)
{
    if (!h->c || h->c->closing)
        return;
    lost(h, 0);
    tq_del(&h->timeout);
    conn_close(h->c);
}

/* Every stream an exchange still holds fails (the connection is going). */
static void fail_all(h2_server_t *h, int err)
{
    h2_stream_t *next;
    for (h2_stream_t *st = h->streams; st; st = next) {
        next = st->next; /* streams are freed from the loop, never here */
        fail_stream(st, err);
    }
}

/* Send what is queued, FIN, then read and discard until the client closes or the linger time
 * passes, so that a reset does not destroy the last frames (the GOAWAY) in flight. */
static void finish(h2_server_t *h)
{
    if (h->closing || !h->c || h->c->closing)
        return;
    lost(h, 0);
    h->closing = 1;
    fail_all(h, ERR_CLIENT_GONE); /* after a connection error nghttp2 found: none is answered */
    set_phase(h, PH_LINGER);
    conn_shutdown(h->c);
    if (h->peer_eof)
        conn_notify_empty(h->c);
    update_reading(h);
}

/* A connection error, or remora ending the connection: GOAWAY with `code`, the streams fail,
 * and the connection closes once the GOAWAY is out. */
static void terminate(h2_server_t *h, uint32_t code, const char *why)
{
    if (!h->sess || h->terminating || h->closing)
        return;
    if (code != NGHTTP2_NO_ERROR)
        log_debug("downstream %s: GOAWAY %s: %s", h->peer, nghttp2_http2_strerror(code), why);
    lost(h, 0);
    h->terminating = 1;
    nghttp2_session_terminate_session(h->sess, code);
    fail_all(h, ERR_CLIENT_GONE);
    schedule(h);
}

static uint32_t fatal_code(h2_server_t *h, int rv, const char **why)
{
    switch (rv) {
    case NGHTTP2_ERR_FLOODED: /* PING or SETTINGS acknowledgements pile up (9512, 9515) */
        stat_inc(&h2st(h)->outbound_control_flood);
        *why = "PING or SETTINGS flood";
        return NGHTTP2_ENHANCE_YOUR_CALM;
    case NGHTTP2_ERR_TOO_MANY_CONTINUATIONS: /* CVE-2024-28182 */
        stat_inc(&h2st(h)->header_overflow);
        *why = "CONTINUATION flood";
        return NGHTTP2_ENHANCE_YOUR_CALM;
    case NGHTTP2_ERR_BAD_CLIENT_MAGIC:
        *why = "not the HTTP/2 connection preface";
        return NGHTTP2_PROTOCOL_ERROR;
    case NGHTTP2_ERR_CALLBACK_FAILURE:
        *why = h->fail_why ? h->fail_why : "out of memory";
        return h->fail_code ? h->fail_code : NGHTTP2_INTERNAL_ERROR;
    default:
        *why = nghttp2_strerror(rv);
        return NGHTTP2_INTERNAL_ERROR;
    }
}

/* Budgets judged between calls into nghttp2, never inside one. */
static void check_budgets(h2_server_t *h)
{
    if (h->premature_hit && !h->terminating) {
        terminate(h, NGHTTP2_ENHANCE_YOUR_CALM, "too many premature stream resets");
        return;
    }
    if (h->sess && !h->terminating &&
        nghttp2_session_get_outbound_queue_size(h->sess) > MAX_OUTBOUND_FRAMES) {
        stat_inc(&h2st(h)->outbound_flood);
        terminate(h, NGHTTP2_ENHANCE_YOUR_CALM, "frames pile up for a client that does not read");
    }
}

/* Whether the input stops inside a header block, for the header timeout. nghttp2 tells the
 * end of the blocks it processes (on_frame_recv), but not of those it ignores (trailers racing
 * a reset, HEADERS on a closed stream id: RFC 9113 §5.1; the rest of a malformed block), nor
 * the beginning of every frame; so the frame boundaries are followed here, from the lengths in
 * the 9-octet frame headers (RFC 9113 §4.1). */
static void track_frames(h2_server_t *h, const uint8_t *p, size_t n)
{
    while (n) {
        if (h->wire_left) {
            size_t k = n < h->wire_left ? n : h->wire_left;
            h->wire_left -= (uint32_t)k;
            p += k;
            n -= k;
            continue;
        }
        h->wire_hd[h->wire_hn++] = *p++;
        n--;
        if (h->wire_hn < sizeof h->wire_hd)
            continue;
        h->wire_hn = 0;
        const uint8_t *hd = h->wire_hd;
        uint8_t type = hd[3];
        h->wire_left = (uint32_t)hd[0] << 16 | (uint32_t)hd[1] << 8 | hd[2];
        h->wire_in_hdr = type == NGHTTP2_HEADERS || type == NGHTTP2_CONTINUATION;
        h->wire_block = h->wire_in_hdr && !(hd[4] & NGHTTP2_FLAG_END_HEADERS);
    }
    h->hdr_pending = h->wire_block || (h->wire_in_hdr && h->wire_left);
}

static void feed(h2_server_t *h, buf_t *b, const char *p, size_t n)
{
    h->rbuf = b;
    h->in_recv = 1;
    ssize_t rv = nghttp2_session_mem_recv(h->sess, (const uint8_t *)p, n);
    h->in_recv = 0;
    h->rbuf = NULL;
    track_frames(h, (const uint8_t *)p, n);
    if (rv < 0) {
        const char *why;
        uint32_t code = fatal_code(h, (int)rv, &why);
        terminate(h, code, why);
    }
    check_budgets(h);
}

static void tell_drained(h2_server_t *h)
{
    if (!h2_queue_may_drain(&h->queued))
        return;
    h2_stream_t *next;
    for (h2_stream_t *st = h->streams; st && h->queued.nover; st = next) {
        next = st->next;
        if (h2_body_drained(&st->resp) && st->accepted && !st->released && !st->failed)
            st->ev->on_drain(st->ctx);
    }
}

/* Hand nghttp2's frames to the connection, then see whether the connection is done. */
static void flush(h2_server_t *h)
{
    loop_cancel(h->cfg->loop, &h->flush_d);
    if (!h->sess || !h->c || h->c->closing || h->closing)
        return;
    int rv = nghttp2_session_send(h->sess);
    if (h->obuf) {
        buf_unref(h->obuf);
        h->obuf = NULL;
    }
    if (rv != 0) {
        log_debug("downstream %s: http2 send failed: %s", h->peer, nghttp2_strerror(rv));
        fail_all(h, ERR_CLIENT_GONE);
        close_now(h);
        return;
    }
    check_budgets(h);
    if (h->terminating && nghttp2_session_want_write(h->sess)) {
        schedule(h); /* the budget just tripped: its GOAWAY goes on the next pass */
        return;
    }
    tell_drained(h);
    if (h->drain_notice && !h->drain_final && h->nopen == 0) {
        /* No PING ACK yet, but nothing is left to finish: the real GOAWAY now. */
        h->drain_final = 1;
        nghttp2_submit_goaway(h->sess, NGHTTP2_FLAG_NONE,
                              nghttp2_session_get_last_proc_stream_id(h->sess), NGHTTP2_NO_ERROR,
                              NULL, 0);
        schedule(h);
        return;
    }
    if (!nghttp2_session_want_read(h->sess) && !nghttp2_session_want_write(h->sess)) {
        finish(h); /* GOAWAY sent or received, and no stream left */
        return;
    }
    if (h->peer_eof && h->nopen == 0 && !nghttp2_session_want_write(h->sess)) {
        finish(h);
        return;
    }
    update_phase(h);
    update_reading(h);
}

static void on_flush(deferred_t *d)
{
    h2_server_t *h = (h2_server_t *)(void *)((char *)d - offsetof(h2_server_t, flush_d));
    flush(h);
}

static void schedule(h2_server_t *h)
{
    if (h->sess && !h->in_recv)
        loop_defer(h->cfg->loop, &h->flush_d);
}

static void on_read(void *owner, buf_t *b)
{
    h2_server_t *h = owner;
    if (h->closing || h->terminating || !h->sess)
        return; /* lingering: discarded */
    feed(h, b, b->data, b->len);
    flush(h);
}

static void on_eof(void *owner, int err)
{
    h2_server_t *h = owner;
    h->peer_eof = 1;
    lost(h, 1); /* unless remora had decided first */
    if (h->closing) {
        if (h->c && conn_pinned(h->c) > 0)
            conn_notify_empty(h->c); /* the last frames are still going out */
        else
            close_now(h);
        return;
    }
    if (err != UV_EOF || !h->sess) {
        fail_all(h, ERR_CLIENT_GONE);
        close_now(h);
        return;
    }
    /* A half-close: requests already complete are still answered; the others cannot be. */
    h2_stream_t *next;
    for (h2_stream_t *st = h->streams; st; st = next) {
        next = st->next;
        if (st->closed || st->req_ended)
            continue;
        st->tx_counted = 1; /* the client's doing: counted as its reset */
        reset_stream(st, NGHTTP2_CANCEL);
        if (st->accepted && !st->released && !st->failed)
            stat_inc(&h->cfg->stats->downstream_rq_rx_reset);
        fail_stream(st, ERR_CLIENT_GONE);
    }
    nghttp2_submit_goaway(h->sess, NGHTTP2_FLAG_NONE,
                          nghttp2_session_get_last_proc_stream_id(h->sess), NGHTTP2_NO_ERROR, NULL,
                          0);
    flush(h);
}

static void on_drain(void *owner)
{
    h2_server_t *h = owner;
    if (h->closing) {
        if (h->peer_eof)
            close_now(h); /* both sides are done and the last byte is out */
        return;
    }
    flush(h); /* frames held at the high-water mark */
}

static void on_write_error(void *owner, int err)
{
    h2_server_t *h = owner;
    log_debug("downstream %s: write failed: %s", h->peer, uv_strerror(err));
    lost(h, 1); /* the client reset it (EPIPE, ECONNRESET) */
    fail_all(h, ERR_CLIENT_GONE);
    close_now(h);
}

static void free_later(deferred_t *d)
{
    h2_server_t *h = (h2_server_t *)(void *)((char *)d - offsetof(h2_server_t, free_d));
    h2_server_config_t *cfg = h->cfg;
    free(h);
    if (cfg->on_closed)
        cfg->on_closed(cfg->owner);
}

static void free_conn(h2_server_t *h)
{
    h->free_d.fn = free_later;
    loop_defer(h->cfg->loop, &h->free_d);
}

/* The conn is closed: the session goes, streams the exchanges hold stay until released. */
static void on_conn_closed(void *owner)
{
    h2_server_t *h = owner;
    h2_server_config_t *cfg = h->cfg;
    h->c = NULL;
    lost(h, 0); /* closed under the codec (no memory to write): remora's doing */
    http_count_cx_destroy(cfg->stats, h->lost_remote, h->lost_active);
    fail_all(h, ERR_CLIENT_GONE);
    loop_cancel(cfg->loop, &h->flush_d);
    tq_del(&h->timeout);
    h->retired = 1;
    nghttp2_session_del(h->sess);
    h->sess = NULL;
    if (h->obuf)
        buf_unref(h->obuf);
    h->obuf = NULL;
    if (h->prev)
        h->prev->next = h->next;
    else
        cfg->conns = h->next;
    if (h->next)
        h->next->prev = h->prev;
    cfg->nconns--;
    stat_dec(&cfg->stats->downstream_cx_active);
    stat_dec(&cfg->stats->downstream_cx_http2_active);
    for (h2_stream_t *st = h->streams; st; st = st->next) {
        if (!st->closed) {
            st->closed = 1;
            stat_dec(&h2st(h)->streams_active);
        }
        if (freeable(st))
            loop_defer(cfg->loop, &st->later);
    }
    if (h->nstreams == 0)
        free_conn(h);
}

static const conn_events_t conn_events = {
    .on_read = on_read,
    .on_eof = on_eof,
    .on_drain = on_drain,
    .on_write_error = on_write_error,
    .on_closed = on_conn_closed,
};

/* ---- the stream, as the exchange drives it ---- */

static h2_stream_t *of(server_stream_t *s)
{
    return (h2_stream_t *)s;
}

static void stream_later(deferred_t *d)
{
    h2_stream_t *st = (h2_stream_t *)(void *)((char *)d - offsetof(h2_stream_t, later));
    if (freeable(st)) {
        free_stream(st);
        return;
    }
    /* The pause ended: what was held goes up, then the window opens again. */
    if (st->paused || !st->accepted || st->released || st->failed)
        return;
    if (st->held && st->held->len) {
        buf_t *b = st->held;
        st->held = NULL;
        st->ev->on_data(st->ctx, b, b->data, b->len);
        buf_unref(b);
        if (st->paused && !st->released && !st->failed)
            return; /* held again: the window stays closed for those bytes */
    }
    if (st->unconsumed && usable(st)) {
        nghttp2_session_consume_stream(st->h->sess, st->id, st->unconsumed);
        schedule(st->h); /* the WINDOW_UPDATE */
    }
    st->unconsumed = 0;
    if (st->end_pending && !st->released && !st->failed)
        deliver_end(st);
}

/* Content-Length is kept as the upstream sent it for HEAD and 304 (RFC 9110 §8.6). */
static int excluded_but_length(const head_t *h, unsigned i)
{
    return h->fields[i].id != F_CONTENT_LENGTH && h2_field_excluded(h, i);
}

/* 103 Early Hints and the like: an interim HEADERS. */
static void send_interim(h2_stream_t *st, int status)
{
    if (!usable(st) || st->resp_sent)
        return;
    char code[4] = {'1', (char)('0' + status / 10 % 10), (char)('0' + status % 10), 0};
    nghttp2_nv nv = {(uint8_t *)":status", (uint8_t *)code, 7, 3, NGHTTP2_NV_FLAG_NONE};
    nghttp2_submit_headers(st->h->sess, NGHTTP2_FLAG_NONE, st->id, NULL, &nv, 1, NULL);
    schedule(st->h);
}

/* `msg`: MSG_CLOSE is about an HTTP/1.1 connection and a 101 never comes (no Upgrade);
 * MSG_END with length 0 is a head that is the whole answer (gRPC's Trailers-Only): no
 * content-length is restated for it. */
static void send_head(server_stream_t *s, const head_t *resp, int64_t len, unsigned msg)
{
    h2_stream_t *st = of(s);
    h2_server_t *h = st->h;
    int status = resp->status;
    if (status >= 100 && status < 200 && status != 101) {
        send_interim(st, status);
        return;
    }
    if (st->resp_sent)
        return;
    st->resp_sent = 1;
    if (!usable(st))
        return;
    if (status < 200 || status > 999) { /* a 101: HTTP/2 has no protocol switch (§8.6) */
        reset_stream(st, NGHTTP2_INTERNAL_ERROR);
        return;
    }
    int keep_length = st->head_request || status == 304;
    st->no_body = st->head_request || status == 204 || status == 304 || len == 0;
    size_t names = h2_names_len(resp);
    char stack[4096], *low = names <= sizeof stack ? stack : malloc(names);
    if (!low) {
        reset_stream(st, NGHTTP2_INTERNAL_ERROR);
        return;
    }
    nghttp2_nv nv[HEAD_STORE_FIELDS + 2];
    char code[4] = {(char)('0' + status / 100 % 10), (char)('0' + status / 10 % 10),
                    (char)('0' + status % 10), 0};
    nv[0] = (nghttp2_nv){(uint8_t *)":status", (uint8_t *)code, 7, 3, NGHTTP2_NV_FLAG_NONE};
    size_t n = 1 + h2_nv_fields(resp, nv + 1, HEAD_STORE_FIELDS, low,
                                keep_length ? excluded_but_length : h2_field_excluded);
    char length[24];
    if (len >= 0 && !keep_length && status != 204 && !(len == 0 && (msg & MSG_END))) {
        int ln = snprintf(length, sizeof length, "%lld", (long long)len);
        nv[n++] = (nghttp2_nv){(uint8_t *)"content-length", (uint8_t *)length, 14, (size_t)ln,
                               NGHTTP2_NV_FLAG_NONE};
    }
    nghttp2_data_provider dp = {.source.ptr = st, .read_callback = read_body};
    int rv = nghttp2_submit_response(h->sess, st->id, nv, n, st->no_body ? NULL : &dp);
    if (low != stack)
        free(low);
    if (rv != 0)
        reset_stream(st, NGHTTP2_INTERNAL_ERROR);
    schedule(h);
}

static void resume_body(h2_stream_t *st)
{
    if (st->resp.deferred && usable(st)) {
        st->resp.deferred = 0;
        nghttp2_session_resume_data(st->h->sess, st->id);
    }
    schedule(st->h);
}

static void send_data(server_stream_t *s, buf_t *b, const char *p, size_t n)
{
    h2_stream_t *st = of(s);
    if (n == 0 || !usable(st) || !st->resp_sent || st->resp.done || st->no_body || st->rst_sent)
        return;
    if (h2_body_queue(&st->resp, &st->h->cfg->loop->bufs, b, p, n) != 0) {
        reset_stream(st, NGHTTP2_INTERNAL_ERROR);
        return;
    }
    resume_body(st);
}

static void send_end(server_stream_t *s, const head_t *trailers)
{
    h2_stream_t *st = of(s);
    if (st->resp.done)
        return;
    if (!usable(st) || !st->resp_sent || st->no_body || st->rst_sent) {
        st->resp.done = 1;
        return;
    }
    h2_body_end(&st->resp, st->h->cfg->loop, trailers);
    resume_body(st);
}

static void send_continue(server_stream_t *s)
{
    h2_stream_t *st = of(s);
    if (st->continued || st->resp_sent || !usable(st))
        return;
    st->continued = 1;
    nghttp2_nv nv = {(uint8_t *)":status", (uint8_t *)"100", 7, 3, NGHTTP2_NV_FLAG_NONE};
    nghttp2_submit_headers(st->h->sess, NGHTTP2_FLAG_NONE, st->id, NULL, &nv, 1, NULL);
    schedule(st->h);
}

static void pause_(server_stream_t *s, int paused)
{
    h2_stream_t *st = of(s);
    if (st->paused == (paused ? 1u : 0u))
        return;
    st->paused = paused ? 1 : 0;
    if (!paused)
        loop_defer(st->h->cfg->loop, &st->later); /* resumed outside the caller's chain */
}

static int over_high_water(server_stream_t *s)
{
    h2_stream_t *st = of(s);
    return !usable(st) || h2_body_over(&st->resp); /* unusable: its on_error is on the way */
}

static void release(server_stream_t *s, int abort)
{
    h2_stream_t *st = of(s);
    h2_server_t *h = st->h;
    st->released = 1;
    st->ev = NULL;
    st->ctx = NULL;
    st->paused = 0;
    if (st->held) {
        buf_unref(st->held);
        st->held = NULL;
    }
    head_give(h->cfg->loop, st->end_trailers);
    st->end_trailers = NULL;
    if (usable(st)) {
        if (st->unconsumed)
            nghttp2_session_consume_stream(h->sess, st->id, st->unconsumed);
        if (abort || !st->resp_sent || !st->resp.done) {
            /* The client must see the response broken, never complete. */
            h2_body_drop(&st->resp, h->cfg->loop);
            reset_stream(st, NGHTTP2_INTERNAL_ERROR);
        }
        schedule(h);
    }
    st->unconsumed = 0;
    maybe_free(st);
}

static conn_t *detach(server_stream_t *s, buf_t **pending, const char **p, size_t *n)
{
    /* Never called: no request on HTTP/2 carries MSG_UPGRADE, so no tunnel follows. */
    (void)s;
    *pending = NULL;
    *p = NULL;
    *n = 0;
    return NULL;
}

static const server_stream_ops_t stream_ops = {
    .send_head = send_head,
    .send_data = send_data,
    .send_end = send_end,
    .send_continue = send_continue,
    .pause = pause_,
    .over_high_water = over_high_water,
    .release = release,
    .detach = detach,
};

/* ---- starting ---- */

static void drain_conn(h2_server_t *h);

void h2_server_start(h2_server_config_t *cfg, conn_t *c, const struct sockaddr *orig_dst,
                     buf_t *pending)
{
    h2_server_t *h = calloc(1, sizeof *h);
    if (!h || new_session(h) != 0) {
        free(h);
        conn_close(c);
        return;
    }
    if (orig_dst)
        memcpy(&h->dst, orig_dst,
               orig_dst->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                               : sizeof(struct sockaddr_in));
    h->cfg = cfg;
    h->c = c;
    h->flush_d.fn = on_flush;
    h->wire_left = NGHTTP2_CLIENT_MAGIC_LEN; /* the preface's first octets, then frames */
    conn_peer_name(c, h->peer, sizeof h->peer);
    conn_set_owner(c, &conn_events, h);
    h->next = cfg->conns;
    if (cfg->conns)
        cfg->conns->prev = h;
    cfg->conns = h;
    cfg->nconns++;
    http_stats_t *st = cfg->stats;
    stat_inc(&st->downstream_cx_total);
    stat_inc(&st->downstream_cx_active);
    stat_inc(&st->downstream_cx_http2_total);
    stat_inc(&st->downstream_cx_http2_active);
    set_phase(h, PH_HEADERS); /* the client's preface is bounded by the header timeout */
    if (cfg->draining)
        drain_conn(h);
    if (pending && pending->len && !h->terminating)
        feed(h, pending, pending->data, pending->len);
    flush(h);
    update_reading(h);
}

/* ---- sniffing: which codec a new connection gets ---- */

/* ---- timeouts, draining ---- */

static void on_expired(tq_node_t *n)
{
    h2_server_t *h = (h2_server_t *)(void *)((char *)n - offsetof(h2_server_t, timeout));
    enum phase was = h->phase;
    h->phase = PH_NONE; /* out of its queue now */
    switch (was) {
    case PH_HEADERS:
        stat_inc(&h->cfg->stats->downstream_cx_header_timeout);
        log_debug("downstream %s: HTTP/2 preface or header block not received in time", h->peer);
        if (!h->got_preface)
            close_now(h);
        else
            terminate(h, NGHTTP2_NO_ERROR, "header timeout");
        break;
    case PH_IDLE:
        stat_inc(&h->cfg->stats->downstream_cx_idle_timeout);
        terminate(h, NGHTTP2_NO_ERROR, "idle timeout");
        break;
    case PH_LINGER:
        close_now(h);
        break;
    case PH_NONE:
        break;
    }
}

void h2_server_config_init(h2_server_config_t *cfg, uint64_t header_timeout_ms, uint64_t idle_ms)
{
    h2_sniff_init(cfg, header_timeout_ms);
    tq_init(&cfg->headers_q, cfg->loop, header_timeout_ms, on_expired);
    tq_init(&cfg->idle_q, cfg->loop, idle_ms, on_expired);
    tq_init(&cfg->linger_q, cfg->loop, H1_LINGER_MS, on_expired);
}

void h2_server_config_close(h2_server_config_t *cfg)
{
    tq_close(&cfg->sniff_q);
    tq_close(&cfg->headers_q);
    tq_close(&cfg->idle_q);
    tq_close(&cfg->linger_q);
}

static void drain_conn(h2_server_t *h)
{
    if (!h->sess || h->closing || h->terminating || h->drain_notice)
        return;
    if (h->nopen == 0) {
        stat_inc(&h->cfg->stats->downstream_cx_drain_close);
        terminate(h, NGHTTP2_NO_ERROR, "draining");
        return;
    }
    /* RFC 9113 §6.8: a notice first, the last stream id one round trip later (on_frame_recv). */
    h->drain_notice = 1;
    nghttp2_submit_shutdown_notice(h->sess);
    nghttp2_submit_ping(h->sess, NGHTTP2_FLAG_NONE, NULL);
    schedule(h);
}

void h2_server_drain(h2_server_config_t *cfg)
{
    cfg->draining = 1;
    h2_sniff_close_all(cfg);
    for (h2_server_t *h = cfg->conns; h; h = h->next)
        drain_conn(h);
}

void h2_server_abort_all(h2_server_config_t *cfg)
{
    h2_sniff_close_all(cfg);
    h2_server_t *next;
    for (h2_server_t *h = cfg->conns; h; h = next) {
        next = h->next; /* listed until its close callback */
        fail_all(h, ERR_CLIENT_GONE);
        close_now(h);
    }
}
