#include "proxy/h1_client.h"

#include <stdlib.h>
#include <string.h>

#include "base/err.h"
#include "base/log.h"
#include "proxy/h1_out.h"
#include "http/h1_parse.h"

struct h1_client {
    client_stream_t s; /* first: the exchange's handle is this connection */
    conn_t *c;
    loop_t *loop;
    cluster_stats_t *stats;
    const h1_client_owner_t *owner;
    void *owner_ctx;
    h1_client_timeouts_t *tmo; /* NULL: never timed out (a codec driven by a test) */
    tq_node_t timeout;         /* connecting, or idle in the pool */
    deferred_t freeing;
    h1_parser_t parser;
    const stream_events_t *ev; /* the stream's exchange while busy */
    void *ctx;
    h1_client_t *idle_next; /* the pool's idle list */
    uint64_t connect_ns;    /* when connecting began (upstream_cx_connect_ms) */
    buf_t *tail;            /* while on_head runs: the read it came in, and what follows the head */
    const char *tail_p;
    size_t tail_n;
    unsigned busy : 1;
    unsigned chunked : 1; /* the request body is sent chunked */
    unsigned req_done : 1;
    unsigned resp_done : 1;
    unsigned keep_alive : 1; /* the response allows another request on this connection */
    unsigned failed : 1;     /* on_error was delivered */
    unsigned gone : 1;       /* closing: the pool was told */
    unsigned detached : 1;
    unsigned remote_closed : 1; /* the upstream closed first (destroy_remote, not _local) */
    unsigned lost_active : 1;   /* released before its response ended: the connection goes too */
};

static const client_stream_ops_t stream_ops;

/* ---- lifetime ---- */

static void free_later(deferred_t *d)
{
    free((char *)d - offsetof(h1_client_t, freeing));
}

/* Freed from the loop's next pass: the codec's own parse loop may be up the stack. */
static void retire(h1_client_t *h)
{
    tq_del(&h->timeout);
    head_give(h->loop, h->parser.head);
    head_give(h->loop, h->parser.trailers);
    h->parser.head = h->parser.trailers = NULL;
    h->freeing.fn = free_later;
    loop_defer(h->loop, &h->freeing);
}

static void gone(h1_client_t *h)
{
    if (h->gone)
        return;
    h->gone = 1;
    h->owner->on_gone(h->owner_ctx, h);
}

static void on_conn_closed(void *owner)
{
    h1_client_t *h = owner;
    h->c = NULL;
    cluster_count_cx_destroy(h->stats, h->remote_closed,
                             h->lost_active || (h->busy && !h->resp_done));
    if (h->busy && !h->failed) { /* closed under the stream (say, no memory to write) */
        h->failed = 1;
        h->ev->on_error(h->ctx, UV_ECONNABORTED);
    }
    gone(h);
    retire(h);
}

void h1_client_close(h1_client_t *h)
{
    gone(h);
    tq_del(&h->timeout);
    if (h->c)
        conn_close(h->c);
}

/* The stream fails once; the exchange releases it and the connection closes then. */
static void fail(h1_client_t *h, int err)
{
    if (!h->busy || h->failed) {
        if (!h->busy)
            h1_client_close(h);
        return;
    }
    h->failed = 1;
    h->ev->on_error(h->ctx, err);
}

/* ---- input ---- */

static unsigned msg_flags(const h1_parser_t *p)
{
    unsigned m = 0;
    if (p->body == H1_BODY_NONE)
        m |= MSG_END;
    if (p->body == H1_BODY_CHUNKED || p->body == H1_BODY_UNTIL_CLOSE)
        m |= MSG_CHUNKED;
    if (p->flags & H1F_CLOSE)
        m |= MSG_CLOSE;
    if (p->flags & H1F_CODINGS)
        m |= MSG_CODINGS;
    return m;
}

static void on_head(h1_client_t *h)
{
    head_t *head = h->parser.head;
    if (head->status >= 100 && head->status < 200 && head->status != 101) {
        head_reset(head); /* interim: remora answered Expect itself; the final one follows */
        return;
    }
    h->parser.head = NULL;
    unsigned msg = msg_flags(&h->parser);
    if (head->status == 101)
        msg |= MSG_UPGRADE | MSG_END;
    h->keep_alive = !(h->parser.flags & H1F_CLOSE);
    if (h->parser.request_method == HTTP_CONNECT && head->status / 100 == 2)
        h->keep_alive = 0; /* the connection is a tunnel now: never back to the pool */
    if (msg & MSG_END) {
        h->resp_done = 1;
        if (h->tail_n > 0 && head->status != 101)
            h->keep_alive = 0; /* bytes after a bodiless response: out of step, never reuse */
    }
    if (h->parser.body == H1_BODY_CHUNKED && !h->parser.trailers)
        h->parser.trailers = head_take(h->loop);
    h->ev->on_head(h->ctx, head, msg);
}

static void on_end(h1_client_t *h)
{
    if (h->resp_done)
        return; /* bodiless: already whole at its head */
    h->resp_done = 1;
    head_t *trailers = NULL;
    if (h->parser.trailers && (h->parser.flags & H1F_TRAILERS)) {
        trailers = h->parser.trailers;
        h->parser.trailers = NULL;
    }
    h->ev->on_end(h->ctx, trailers);
}

static void parse(h1_client_t *h, buf_t *b, const char *p, size_t n)
{
    while (h->busy && !h->failed && !h->detached) {
        if (!h->parser.head && !h->resp_done && !(h->parser.head = head_take(h->loop))) {
            fail(h, UV_ENOMEM);
            return;
        }
        h1_ev_t ev;
        size_t used = h1_parse(&h->parser, p, n, &ev);
        p += used;
        n -= used;
        switch (ev.type) {
        case H1_HEAD:
            h->tail = b; /* a 101's tunnel starts with the bytes after it (detach) */
            h->tail_p = p;
            h->tail_n = n;
            on_head(h);
            h->tail = NULL;
            break;
        case H1_DATA:
            h->ev->on_data(h->ctx, b, ev.p, ev.n);
            break;
        case H1_END:
            if (n > 0)
                h->keep_alive = 0; /* bytes after the response: never reuse this connection */
            on_end(h);
            return;
        case H1_ERROR:
            stat_inc(&h->stats->upstream_cx_protocol_error);
            log_debug("upstream: bad response: %s", h->parser.reason);
            h->keep_alive = 0;
            fail(h, ERR_BAD_RESPONSE);
            return;
        case H1_NEED_MORE:
            return;
        }
    }
}

static void on_read(void *owner, buf_t *b)
{
    h1_client_t *h = owner;
    if (!h->busy || h->resp_done) { /* bytes on an idle connection: out of step, drop it */
        stat_inc(&h->stats->upstream_cx_protocol_error);
        h->keep_alive = 0;
        if (!h->busy)
            h1_client_close(h);
        return;
    }
    parse(h, b, b->data, b->len);
}

static void on_eof(void *owner, int err)
{
    h1_client_t *h = owner;
    h->remote_closed = 1;
    h->keep_alive = 0;
    if (!h->busy || h->resp_done) {
        if (!h->busy)
            h1_client_close(h);
        return;
    }
    if (err == UV_EOF && !h->failed) {
        /* A response delimited by the close (RFC 9112 §6.3 rule 8) completes here. */
        h1_ev_t ev;
        h1_parse_eof(&h->parser, &ev);
        if (ev.type == H1_END) {
            on_end(h);
            return;
        }
    }
    fail(h, err == UV_EOF ? ERR_UPSTREAM_CLOSED : err);
}

static void on_drain(void *owner)
{
    h1_client_t *h = owner;
    if (h->busy && !h->failed)
        h->ev->on_drain(h->ctx);
}

/* The connect failed or timed out: the request that waited on it fails with it. */
static void count_connect_failure(h1_client_t *h)
{
    stat_inc(&h->stats->upstream_cx_connect_fail);
    stat_inc(&h->stats->upstream_rq_pending_failure_eject);
}

static void on_expired(tq_node_t *n)
{
    h1_client_t *h = (h1_client_t *)(void *)((char *)n - offsetof(h1_client_t, timeout));
    if (!h->busy) {
        stat_inc(&h->stats->upstream_cx_idle_timeout);
        h1_client_close(h);
        return;
    }
    stat_inc(&h->stats->upstream_cx_connect_timeout);
    count_connect_failure(h);
    log_warn("upstream: connect timed out");
    fail(h, UV_ETIMEDOUT);
}

static void on_connect(void *owner, int status)
{
    h1_client_t *h = owner;
    tq_del(&h->timeout);
    if (status < 0) {
        count_connect_failure(h);
        h->keep_alive = 0;
        fail(h, status);
        return;
    }
    h->s.connected = 1;
    hist_record_us(&h->stats->cx_connect_ms, (uv_hrtime() - h->connect_ns) / 1000);
}

/* A failed write is not acted on here: the read side sees the close right after, and a
 * response the upstream sent before closing (say, an early 413) still reaches the client. */
static const conn_events_t conn_events = {
    .on_read = on_read,
    .on_eof = on_eof,
    .on_drain = on_drain,
    .on_connect = on_connect,
    .on_closed = on_conn_closed,
};

/* ---- the stream, as the exchange drives it ---- */

static h1_client_t *of(client_stream_t *s)
{
    return (h1_client_t *)s;
}

static void send_head(client_stream_t *s, const head_t *req, int64_t len, unsigned msg)
{
    h1_client_t *h = of(s);
    h->parser.request_method = req->method;
    h1_framing_t f = {.length = len > 0 ? len : -1, .chunked = len == BODY_STREAM};
    if (msg & MSG_UPGRADE)
        f.connection = "upgrade";
    h->chunked = f.chunked;
    h->req_done = (msg & MSG_END) != 0;
    const char *method =
        req->method == HTTP_OTHER ? head_str(req, req->method_text) : http_method_name(req->method);
    size_t mlen = req->method == HTTP_OTHER ? req->method_len : strlen(method);
    size_t n = mlen + 1 + req->target_len + 11;
    char small[512];
    char *start = n <= sizeof small ? small : malloc(n);
    if (!start) {
        conn_close(h->c); /* reported through the close, on a later pass */
        return;
    }
    memcpy(start, method, mlen);
    start[mlen] = ' ';
    memcpy(start + mlen + 1, head_str(req, req->target), req->target_len);
    memcpy(start + mlen + 1 + req->target_len, " HTTP/1.1\r\n", 11);
    if (h1_write_head(h->c, start, n, req, &f) != 0)
        h->keep_alive = 0;
    if (start != small)
        free(start);
}

static void send_data(client_stream_t *s, buf_t *b, const char *p, size_t n)
{
    h1_client_t *h = of(s);
    h1_write_data(h->c, h->chunked, b, p, n);
}

static void send_end(client_stream_t *s, const head_t *trailers)
{
    h1_client_t *h = of(s);
    if (h->chunked)
        h1_write_last_chunk(h->c, trailers);
    h->req_done = 1;
}

static void pause_(client_stream_t *s, int paused)
{
    h1_client_t *h = of(s);
    conn_read(h->c, !paused);
}

static int over_high_water(client_stream_t *s)
{
    return conn_over_high_water(of(s)->c);
}

static void release(client_stream_t *s, int clean)
{
    h1_client_t *h = of(s);
    h->busy = 0;
    h->ev = NULL;
    h->ctx = NULL;
    if (!h->resp_done || !h->req_done)
        stat_inc(&h->stats->upstream_rq_tx_reset);
    h->lost_active = !h->resp_done;
    if (clean && h->keep_alive && h->resp_done && h->req_done && h1_client_usable(h)) {
        conn_read(h->c, 1); /* to see the upstream close it */
        h->owner->on_idle(h->owner_ctx, h);
        return;
    }
    h1_client_close(h);
}

static conn_t *detach(client_stream_t *s, buf_t **pending, const char **p, size_t *n)
{
    h1_client_t *h = of(s);
    conn_t *c = h->c;
    *pending = h->tail && h->tail_n ? buf_ref(h->tail) : NULL;
    *p = h->tail_p;
    *n = *pending ? h->tail_n : 0;
    h->tail = NULL;
    h->detached = 1;
    h->busy = 0;
    h->c = NULL;
    conn_set_owner(c, NULL, NULL);
    gone(h);
    retire(h);
    return c;
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

void h1_client_timeouts_init(h1_client_timeouts_t *t, loop_t *l, uint64_t connect_ms,
                             uint64_t idle_ms)
{
    tq_init(&t->connect_q, l, connect_ms, on_expired);
    tq_init(&t->idle_q, l, idle_ms, on_expired);
}

void h1_client_timeouts_close(h1_client_timeouts_t *t)
{
    tq_close(&t->connect_q);
    tq_close(&t->idle_q);
}

h1_client_t *h1_client_connect(conn_t *c, const struct sockaddr *addr, cluster_stats_t *stats,
                               h1_client_timeouts_t *tmo, const h1_client_owner_t *owner,
                               void *owner_ctx)
{
    h1_client_t *h = h1_client_new(c, stats, owner, owner_ctx);
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

h1_client_t *h1_client_new(conn_t *c, cluster_stats_t *stats, const h1_client_owner_t *owner,
                           void *owner_ctx)
{
    loop_t *l = c->loop;
    h1_client_t *h = calloc(1, sizeof *h);
    if (!h)
        return NULL;
    h->s.connected = c->connected;
    h->c = c;
    h->loop = l;
    h->stats = stats;
    h->owner = owner;
    h->owner_ctx = owner_ctx;
    h->s.ops = &stream_ops;
    h1_parser_init(&h->parser, H1_RESPONSE, NULL, NULL);
    conn_set_owner(c, &conn_events, h);
    stat_inc(&stats->upstream_cx_total);
    conn_read(c, 1);
    return h;
}

client_stream_t *h1_client_stream(h1_client_t *h, const stream_events_t *ev, void *ctx)
{
    h->busy = 1;
    h->ev = ev;
    h->ctx = ctx;
    h->req_done = h->resp_done = h->failed = 0;
    h->keep_alive = 0;
    h1_parser_init(&h->parser, H1_RESPONSE, h->parser.head, h->parser.trailers);
    if (h->s.connected) {
        tq_del(&h->timeout); /* out of the idle queue */
        conn_read(h->c, 1);
    }
    return &h->s;
}

h1_client_t **h1_client_idle_link(h1_client_t *h)
{
    return &h->idle_next;
}

void h1_client_park(h1_client_t *h)
{
    h->s.reused = 1;
    if (h->tmo)
        tq_add(&h->tmo->idle_q, &h->timeout);
}

int h1_client_usable(const h1_client_t *h)
{
    return h->c && !h->c->closing && !h->c->write_failed && !h->gone && !h->detached;
}
