#include "proxy/h1_server.h"

#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"
#include "base/log.h"
#include "proxy/h1_out.h"
#include "http/h1_parse.h"
#include "proxy/tqueue.h"

enum phase { PH_HEADERS, PH_IDLE, PH_STREAM, PH_LINGER };
enum framing { RF_NONE, RF_LENGTH, RF_CHUNKED, RF_CLOSE };

/* Every idle keep-alive connection carries one, so it is kept small (docs/performance.md): the
 * client's address in 16 bytes, made text only when a request needs it; small fields packed. */
struct h1_server {
    server_stream_t s; /* first: the exchange's handle is this connection */
    h1_server_config_t *cfg;
    conn_t *c;
    tq_node_t timeout; /* in the queue of the current phase (none while a stream is open) */
    h1_parser_t parser;
    h1_server_t *next, *prev;
    const stream_events_t *ev; /* the open stream's exchange, NULL when none */
    void *ctx;
    buf_t *pending; /* unparsed input from pending_off on: a pipelined request, or a body */
    deferred_t next_request;
    uint8_t peer[16]; /* the client's address (conn_peer_addr) */
    uint32_t pending_off;
    uint8_t req_method;
    unsigned phase : 2;      /* enum phase */
    unsigned framing : 2;    /* enum framing */
    unsigned http11 : 1;     /* the request is HTTP/1.1 (not 1.0) */
    unsigned in_stream : 1;  /* an exchange holds the stream */
    unsigned req_done : 1;   /* the request's H1_END was delivered */
    unsigned resp_sent : 1;  /* the response head went out */
    unsigned resp_done : 1;  /* ... and its end */
    unsigned keep_alive : 1; /* another request may follow */
    unsigned paused : 1;     /* the exchange holds the request body */
    unsigned failed : 1;     /* the stream saw on_error: nothing more on it */
    unsigned closing : 1;    /* finishing: flushed, shut down, lingering */
    unsigned peer_eof : 1;   /* the client half-closed after a complete request */
    unsigned continued : 1;  /* 100 Continue sent */
    unsigned in_process : 1;
    unsigned detached : 1;
    unsigned retired : 1;     /* the connection is gone; freed once the stream is released */
    unsigned peer_gone : 1;   /* the client closed or reset first (a remote destroy) */
    unsigned lost_active : 1; /* the stream was released before its response ended */
};

_Static_assert(sizeof(struct h1_server) <= 216,
               "an idle connection's codec: 216 bytes of its slab");

/* The client's address as text, for a log line or the exchange. */
#define PEER_TEXT(h, buf) (conn_peer_format((h)->peer, (buf), sizeof(buf)), (buf))

static const char *pending_p(const h1_server_t *h)
{
    return h->pending ? h->pending->data + h->pending_off : NULL;
}

static size_t pending_n(const h1_server_t *h)
{
    return h->pending ? h->pending->len - h->pending_off : 0;
}

static const server_stream_ops_t stream_ops;
static void process(h1_server_t *h);
static void update_reading(h1_server_t *h);

/* ---- lifetime ---- */

static void free_later(deferred_t *d)
{
    h1_server_t *h = (h1_server_t *)(void *)((char *)d - offsetof(h1_server_t, next_request));
    h1_server_config_t *cfg = h->cfg;
    free((void *)h->s.orig_dst);
    slab_free(&cfg->loop->h1_servers, h);
    if (cfg->on_closed)
        cfg->on_closed(cfg->owner);
}

static void unlink_conn(h1_server_t *h)
{
    h1_server_config_t *cfg = h->cfg;
    if (h->prev)
        h->prev->next = h->next;
    else
        cfg->conns = h->next;
    if (h->next)
        h->next->prev = h->prev;
    cfg->nconns--;
    stat_dec(&cfg->stats->downstream_cx_active);
}

/* The connection is gone (closed, or handed to a tunnel): free what is left. */
static void retire(h1_server_t *h)
{
    if (h->pending)
        buf_unref(h->pending);
    h->pending = NULL;
    head_give(h->cfg->loop, h->parser.head);
    head_give(h->cfg->loop, h->parser.trailers);
    h->parser.head = h->parser.trailers = NULL;
    unlink_conn(h);
    tq_del(&h->timeout);
    loop_cancel(h->cfg->loop, &h->next_request);
    h->next_request.fn = free_later;
    h->retired = 1;
    if (h->in_stream)
        return; /* the exchange still holds the stream: freed when it releases it */
    /* Freed from the loop's next pass: a caller up the stack may still hold the stream. */
    loop_defer(h->cfg->loop, &h->next_request);
}

static void on_conn_closed(void *owner)
{
    h1_server_t *h = owner;
    h->c = NULL;
    http_count_cx_destroy(h->cfg->stats, h->peer_gone,
                          (h->in_stream && !h->resp_done) || h->lost_active);
    if (h->in_stream && !h->failed) { /* cannot happen: the stream is failed first */
        h->failed = 1;
        h->ev->on_error(h->ctx, ERR_CLIENT_GONE);
    }
    retire(h);
}

static void close_now(h1_server_t *h)
{
    if (!h->c || h->c->closing)
        return;
    tq_del(&h->timeout);
    conn_close(h->c);
}

static void set_phase(h1_server_t *h, enum phase ph);
static void local_reply(h1_server_t *h, int status, const char *body, size_t n);

/* Send what is queued, FIN, and keep reading and discarding until the client closes or the
 * linger time passes, so that a reset does not destroy our last bytes in flight. */
static void finish(h1_server_t *h)
{
    if (h->closing || !h->c || h->c->closing)
        return;
    h->closing = 1;
    set_phase(h, PH_LINGER);
    conn_shutdown(h->c);
    if (h->peer_eof) /* the client is done sending: close as soon as our answer is out */
        conn_notify_empty(h->c);
    update_reading(h);
}

/* ---- timeouts ---- */

/* The current phase's time is up (h1_server_config_t's queues). */
static void on_expired(tq_node_t *n)
{
    h1_server_t *h = (h1_server_t *)(void *)((char *)n - offsetof(h1_server_t, timeout));
    http_stats_t *st = h->cfg->stats;
    switch (h->phase) {
    case PH_HEADERS: {
        stat_inc(&st->downstream_cx_header_timeout);
        char peer[CONN_PEER_TEXT]; /* formatted only when debug lines are written */
        log_debug("downstream %s: request headers not received in time", PEER_TEXT(h, peer));
        if (h1_parser_busy(&h->parser)) {
            static const char body[] = "request header timeout\n";
            local_reply(h, 408, body, sizeof body - 1);
            finish(h);
        } else {
            close_now(h);
        }
        break;
    }
    case PH_IDLE:
        stat_inc(&st->downstream_cx_idle_timeout);
        close_now(h);
        break;
    case PH_LINGER:
        close_now(h);
        break;
    case PH_STREAM:
        break;
    }
}

static void set_phase(h1_server_t *h, enum phase ph)
{
    h1_server_config_t *cfg = h->cfg;
    h->phase = ph;
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
    case PH_STREAM:
        tq_del(&h->timeout);
        break;
    }
}

/* ---- replies of the codec's own ---- */

/* A refusal or timeout answered before any exchange saw the request. */
static void local_reply(h1_server_t *h, int status, const char *body, size_t n)
{
    const head_t *req = h->parser.head;
    int head_request = req && req->method_len == 4 && req->method == HTTP_HEAD;
    if (h->in_stream ? h->req_method == HTTP_HEAD : head_request)
        n = 0; /* a response to HEAD has no body (RFC 9112 §6.3); its length is not told */
    char head[160];
    int len = snprintf(head, sizeof head,
                       "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n"
                       "Connection: close\r\n\r\n",
                       status, http_reason(status), n);
    conn_write_copy(h->c, head, (size_t)len);
    conn_write(h->c, NULL, body, n);
}

static void refuse(h1_server_t *h, int status)
{
    http_stats_t *st = h->cfg->stats;
    stat_inc(&st->downstream_cx_protocol_error);
    if (status == 431 || status == 414)
        stat_inc(&st->downstream_rq_header_too_large);
    char peer[CONN_PEER_TEXT];
    log_debug("downstream %s: request refused (%s), answering %d", PEER_TEXT(h, peer),
              h->parser.reason, status);
    if (h->in_stream) { /* mid-body: the exchange answers, or cuts the response */
        h->failed = 1;
        h->keep_alive = 0;
        h->ev->on_error(h->ctx, ERR_BAD_REQUEST);
        return;
    }
    char body[128];
    int n =
        snprintf(body, sizeof body, "%s\n", h->parser.reason ? h->parser.reason : "bad request");
    local_reply(h, status, body, (size_t)n);
    finish(h);
}

/* ---- input ---- */

static unsigned msg_flags(const h1_parser_t *p)
{
    unsigned m = 0;
    if (p->body == H1_BODY_NONE)
        m |= MSG_END;
    if (p->body == H1_BODY_CHUNKED)
        m |= MSG_CHUNKED;
    if (p->flags & H1F_CLOSE)
        m |= MSG_CLOSE;
    if (p->flags & H1F_UPGRADE)
        m |= MSG_UPGRADE;
    if (p->flags & H1F_CONTINUE)
        m |= MSG_CONTINUE;
    if (p->flags & H1F_CODINGS)
        m |= MSG_CODINGS;
    return m;
}

static void on_head(h1_server_t *h)
{
    head_t *head = h->parser.head;
    h->parser.head = NULL;
    h->req_method = head->method;
    h->http11 = head->minor >= 1;
    h->keep_alive = !(h->parser.flags & H1F_CLOSE) && !h->cfg->draining;
    h->in_stream = 1;
    h->resp_sent = h->resp_done = h->failed = h->paused = h->continued = 0;
    h->req_done = h->parser.body == H1_BODY_NONE; /* MSG_END: the head is the whole request */
    set_phase(h, PH_STREAM);
    stat_inc(&h->cfg->stats->downstream_rq_total);
    h->s.secure = conn_is_tls(h->c) ? 1 : 0; /* PERMISSIVE decides per connection */
    char peer[CONN_PEER_TEXT];
    h->s.peer = PEER_TEXT(h, peer); /* for accept only, which copies it */
    h->ev = h->cfg->handler->accept(h->cfg->owner, &h->s, &h->ctx);
    h->s.peer = "";
    if (!h->ev) {
        head_give(h->cfg->loop, head);
        static const char body[] = "out of memory\n";
        local_reply(h, 503, body, sizeof body - 1); /* while in_stream: h->req_method counts */
        h->in_stream = 0;
        finish(h);
        return;
    }
    if (h->parser.body == H1_BODY_CHUNKED && !h->parser.trailers)
        h->parser.trailers = head_take(h->cfg->loop); /* NULL: trailers are dropped */
    h->ev->on_head(h->ctx, head, msg_flags(&h->parser));
}

static void on_end(h1_server_t *h)
{
    if (h->req_done || !h->in_stream)
        return; /* a bodiless request, already whole at its head */
    h->req_done = 1;
    head_t *trailers = NULL;
    if (h->parser.trailers && (h->parser.flags & H1F_TRAILERS)) {
        trailers = h->parser.trailers; /* the exchange owns them now */
        h->parser.trailers = NULL;
    }
    head_give(h->cfg->loop, h->parser.trailers); /* an idle connection holds no head */
    h->parser.trailers = NULL;
    h->ev->on_end(h->ctx, trailers);
}

static int blocked(h1_server_t *h)
{
    if (h->closing || !h->c || h->c->closing || h->detached)
        return 1;
    if (h->in_stream) /* a bodiless request still has its end to consume */
        return (h->req_done && h1_parser_busy(&h->parser) == 0) || h->paused || h->failed;
    /* Between requests: the next waits until the client has read enough of the last. */
    return conn_over_high_water(h->c);
}

static void consume(h1_server_t *h, size_t used)
{
    h->pending_off += (uint32_t)used;
    if (h->pending_off == h->pending->len) {
        buf_unref(h->pending);
        h->pending = NULL;
    }
}

/* Parse pending input until it runs out or the connection must wait. Re-entry (an exchange
 * ending inside an event) is refused; the caller's loop goes on. */
static void process(h1_server_t *h)
{
    if (h->in_process)
        return;
    h->in_process = 1;
    while (!blocked(h)) {
        if (h->pending && !h->parser.head && !(h->parser.head = head_take(h->cfg->loop))) {
            static const char body[] = "out of memory\n";
            local_reply(h, 503, body, sizeof body - 1);
            finish(h);
            break;
        }
        if (!h->in_stream && h->phase == PH_IDLE && h->pending)
            set_phase(h, PH_HEADERS); /* a new request begins */
        buf_t *b = h->pending ? buf_ref(h->pending) : NULL;
        int was_in_stream = h->in_stream;
        h1_ev_t ev;
        size_t used = h1_parse(&h->parser, pending_p(h), pending_n(h), &ev);
        if (b)
            consume(h, used);
        switch (ev.type) {
        case H1_HEAD:
            on_head(h);
            break;
        case H1_DATA:
            h->ev->on_data(h->ctx, b, ev.p, ev.n);
            break;
        case H1_END:
            on_end(h);
            break;
        case H1_ERROR:
            refuse(h, ev.status);
            break;
        case H1_NEED_MORE:
            break;
        }
        if (b)
            buf_unref(b);
        if (ev.type == H1_NEED_MORE || (was_in_stream && !h->in_stream))
            break; /* a stream ended inside this event: the next starts from the loop */
    }
    h->in_process = 0;
    update_reading(h);
}

static void update_reading(h1_server_t *h)
{
    if (!h->c || h->c->closing || h->detached)
        return;
    int want =
        h->closing ? !h->peer_eof : !h->peer_eof && !h->pending && !(h->in_stream && h->paused);
    conn_read(h->c, want);
}

static void on_read(void *owner, buf_t *b)
{
    h1_server_t *h = owner;
    if (h->closing)
        return;       /* lingering: discard */
    if (h->pending) { /* cannot happen: reading stops while input is pending */
        close_now(h);
        return;
    }
    h->pending = buf_ref(b);
    h->pending_off = 0;
    if (!h->in_stream && h->phase == PH_IDLE)
        set_phase(h, PH_HEADERS);
    process(h);
}

static void on_eof(void *owner, int err)
{
    h1_server_t *h = owner;
    h->peer_gone |= !h->closing;
    if (h->closing && h->c && conn_pinned(h->c) > 0) {
        h->peer_eof = 1; /* our last bytes are still going out: close once they are */
        conn_notify_empty(h->c);
        return;
    }
    if (!h->in_stream && err == UV_EOF && h->c && conn_pinned(h->c) > 0) {
        h->peer_eof = 1; /* a half-close right after an answer: let the answer go out */
        finish(h);
        return;
    }
    if (h->closing || !h->in_stream) {
        close_now(h);
        return;
    }
    if (err == UV_EOF && h->req_done && !h->failed) {
        h->peer_eof = 1; /* half-close after a complete request: answer it, then close */
        h->keep_alive = 0;
        return;
    }
    stat_inc(&h->cfg->stats->downstream_rq_rx_reset);
    if (!h->failed) {
        h->failed = 1;
        h->ev->on_error(h->ctx, ERR_CLIENT_GONE);
    }
}

static void on_drain(void *owner)
{
    h1_server_t *h = owner;
    if (h->closing && h->peer_eof) { /* both sides are done and our last byte is out */
        close_now(h);
        return;
    }
    if (h->in_stream && !h->failed)
        h->ev->on_drain(h->ctx);
    else if (!h->in_stream)
        process(h); /* a pipelined request waited for the client to read */
}

static void on_write_error(void *owner, int err)
{
    h1_server_t *h = owner;
    char peer[CONN_PEER_TEXT];
    log_debug("downstream %s: write failed: %s", PEER_TEXT(h, peer), uv_strerror(err));
    h->peer_gone = 1;
    if (h->in_stream && !h->failed) {
        stat_inc(&h->cfg->stats->downstream_rq_rx_reset);
        h->failed = 1;
        h->ev->on_error(h->ctx, ERR_CLIENT_GONE);
    } else if (!h->in_stream) {
        close_now(h);
    }
}

static const conn_events_t conn_events = {
    .on_read = on_read,
    .on_eof = on_eof,
    .on_drain = on_drain,
    .on_write_error = on_write_error,
    .on_closed = on_conn_closed,
};

/* ---- the stream, as the exchange drives it ---- */

static h1_server_t *of(server_stream_t *s)
{
    return (h1_server_t *)s;
}

static void send_head(server_stream_t *s, const head_t *resp, int64_t len, unsigned msg)
{
    h1_server_t *h = of(s);
    int st = resp->status;
    int no_body = h->req_method == HTTP_HEAD || st < 200 || st == 204 || st == 304;
    h1_framing_t f = {.length = -1};
    if (msg & MSG_CLOSE || !h->req_done)
        h->keep_alive = 0;   /* an early answer: the rest of the request is not read */
    if (msg & MSG_UPGRADE) { /* a 101, or the 2xx that makes a CONNECT a tunnel */
        h->framing = RF_NONE;
        f.connection = h->req_method == HTTP_CONNECT ? NULL : "upgrade";
    } else if (no_body) {
        h->framing = RF_NONE;
        f.keep_length = h->req_method == HTTP_HEAD || st == 304;
    } else if (len >= 0) {
        h->framing = RF_LENGTH;
        f.length = len;
    } else if (h->http11) {
        h->framing = RF_CHUNKED;
        f.chunked = 1;
    } else {
        h->framing = RF_CLOSE; /* a 1.0 client reads until we close */
        h->keep_alive = 0;
    }
    if (h->cfg->draining || h->peer_eof)
        h->keep_alive = 0;
    if (!(msg & MSG_UPGRADE))
        f.connection = !h->keep_alive ? "close" : !h->http11 ? "keep-alive" : NULL;
    char line[16] = "HTTP/1.1 000 ";
    size_t n = 13;
    line[9] = (char)('0' + st / 100 % 10);
    line[10] = (char)('0' + st / 10 % 10);
    line[11] = (char)('0' + st % 10);
    size_t rlen = resp->reason_len;
    const char *reason = rlen ? head_str(resp, resp->reason) : http_reason(st);
    if (!rlen)
        rlen = strlen(reason);
    char start[600];
    if (rlen > sizeof start - n - 2)
        rlen = sizeof start - n - 2;
    memcpy(start, line, n);
    memcpy(start + n, reason, rlen);
    memcpy(start + n + rlen, "\r\n", 2);
    h->resp_sent = 1;
    if (h1_write_head(h->c, start, n + rlen + 2, resp, &f) != 0)
        h->keep_alive = 0, h->framing = RF_CLOSE;
}

static void send_data(server_stream_t *s, buf_t *b, const char *p, size_t n)
{
    h1_server_t *h = of(s);
    if (h->framing != RF_NONE)
        h1_write_data(h->c, h->framing == RF_CHUNKED, b, p, n);
}

static void send_end(server_stream_t *s, const head_t *trailers)
{
    h1_server_t *h = of(s);
    if (h->framing == RF_CHUNKED)
        h1_write_last_chunk(h->c, trailers);
    h->resp_done = 1;
}

static void send_continue(server_stream_t *s)
{
    h1_server_t *h = of(s);
    if (!h->http11 || h->continued || h->resp_sent)
        return;
    h->continued = 1;
    conn_write(h->c, NULL, "HTTP/1.1 100 Continue\r\n\r\n", 25);
}

static void pause_(server_stream_t *s, int paused)
{
    h1_server_t *h = of(s);
    if (h->paused == (paused ? 1u : 0u))
        return;
    h->paused = paused ? 1 : 0;
    if (paused)
        update_reading(h);
    else
        loop_defer(h->cfg->loop, &h->next_request); /* resume outside the caller's chain */
}

static int over_high_water(server_stream_t *s)
{
    h1_server_t *h = of(s);
    return !h->c || conn_over_high_water(h->c);
}

/* Cut the response so that the client sees it broken: a framed one ends short, one delimited
 * by the close must not end with a clean close. */
static void cut(h1_server_t *h)
{
    if (h->framing == RF_CLOSE && h->resp_sent && h->c && !h->c->closing) {
        tq_del(&h->timeout);
        conn_reset(h->c);
        return;
    }
    finish(h);
}

static void release(server_stream_t *s, int abort)
{
    h1_server_t *h = of(s);
    h->in_stream = 0;
    h->lost_active = !h->resp_done;
    h->ev = NULL;
    h->ctx = NULL;
    h->paused = 0;
    if (h->retired) { /* the connection went first; the stream was kept for this release */
        loop_defer(h->cfg->loop, &h->next_request);
        return;
    }
    if (!h->c || h->c->closing)
        return;
    if (h->failed &&
        h->peer_gone) { /* the client reset or left mid-request: nothing to linger for */
        close_now(h);
        return;
    }
    if (abort || (h->resp_sent && !h->resp_done)) {
        if (!h->failed) /* remora's doing, not the client's */
            stat_inc(&h->cfg->stats->downstream_rq_tx_reset);
        cut(h);
        return;
    }
    if (!h->resp_sent || !h->keep_alive || !h->req_done || h->failed || h->cfg->draining) {
        finish(h);
        return;
    }
    set_phase(h, PH_IDLE);
    loop_defer(h->cfg->loop, &h->next_request); /* the next request, outside the caller */
}

static void on_next_request(deferred_t *d)
{
    h1_server_t *h = (h1_server_t *)(void *)((char *)d - offsetof(h1_server_t, next_request));
    process(h);
}

static conn_t *detach(server_stream_t *s, buf_t **pending, const char **p, size_t *n)
{
    h1_server_t *h = of(s);
    conn_t *c = h->c;
    *pending = h->pending; /* the caller takes the reference */
    *p = pending_p(h);
    *n = pending_n(h);
    h->pending = NULL;
    h->detached = 1;
    h->in_stream = 0;
    h->ev = NULL;
    h->c = NULL;
    conn_set_owner(c, NULL, NULL);
    stat_inc(&h->cfg->stats->downstream_cx_upgrades_total);
    retire(h);
    return c;
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

/* ---- listener side ---- */

void h1_server_config_init(h1_server_config_t *cfg, uint64_t header_timeout_ms, uint64_t idle_ms)
{
    tq_init(&cfg->headers_q, cfg->loop, header_timeout_ms, on_expired);
    tq_init(&cfg->idle_q, cfg->loop, idle_ms, on_expired);
    tq_init(&cfg->linger_q, cfg->loop, H1_LINGER_MS, on_expired);
}

void h1_server_config_close(h1_server_config_t *cfg)
{
    tq_close(&cfg->headers_q);
    tq_close(&cfg->idle_q);
    tq_close(&cfg->linger_q);
}

void h1_server_start(h1_server_config_t *cfg, conn_t *c, const struct sockaddr *orig_dst)
{
    slab_t *slab = &cfg->loop->h1_servers;
    if (!slab->size)
        slab_init(slab, sizeof(h1_server_t));
    h1_server_t *h = slab_alloc(slab);
    struct sockaddr_storage *dst = orig_dst ? malloc(sizeof *dst) : NULL;
    if (!h || (orig_dst && !dst)) {
        slab_free(slab, h);
        free(dst);
        conn_close(c);
        return;
    }
    if (dst) {
        memcpy(dst, orig_dst,
               orig_dst->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                               : sizeof(struct sockaddr_in));
        h->s.orig_dst = (const struct sockaddr *)dst;
    }
    h->cfg = cfg;
    h->c = c;
    h->s.ops = &stream_ops;
    h->s.peer = "";
    h->next_request.fn = on_next_request;
    h1_parser_init(&h->parser, H1_REQUEST, NULL, NULL);
    conn_peer_addr(c, h->peer);
    conn_set_owner(c, &conn_events, h);
    h->next = cfg->conns;
    if (cfg->conns)
        cfg->conns->prev = h;
    cfg->conns = h;
    cfg->nconns++;
    stat_inc(&cfg->stats->downstream_cx_total);
    stat_inc(&cfg->stats->downstream_cx_active);
    /* A connection's first request head is bounded by the header timeout from accept. */
    set_phase(h, PH_HEADERS);
    update_reading(h);
}

void h1_server_drain(h1_server_config_t *cfg)
{
    cfg->draining = 1;
    h1_server_t *next;
    for (h1_server_t *h = cfg->conns; h; h = next) {
        next = h->next;
        if (h->closing || !h->c || h->c->closing)
            continue;
        if (!h->in_stream) {
            stat_inc(&cfg->stats->downstream_cx_drain_close);
            finish(h);
        } else {
            h->keep_alive = 0; /* close once the current response is complete */
        }
    }
}

void h1_server_abort_all(h1_server_config_t *cfg)
{
    h1_server_t *next;
    for (h1_server_t *h = cfg->conns; h; h = next) {
        next = h->next; /* a closing connection stays listed until its close callback */
        if (h->in_stream && !h->failed) {
            h->failed = 1;
            h->ev->on_error(h->ctx, ERR_CLIENT_GONE);
        }
        close_now(h);
    }
}
