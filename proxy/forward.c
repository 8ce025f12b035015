#include "proxy/forward.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "discovery/cluster.h"
#include "proxy/downstream.h"
#include "proxy/err.h"
#include "proxy/log.h"
#include "proxy/pool.h"
#include "proxy/server.h"
#include "proxy/upstream.h"
#include "routing/route.h"

static http_stats_t *http_stats(exchange_t *ex)
{
    server_t *s = ex->ds->c.w->srv;
    return ex->ds->listener->kind == LISTENER_INGRESS ? &s->ingress_stats : &s->egress_stats;
}

exchange_t *exchange_new(downstream_t *ds)
{
    exchange_t *ex = calloc(1, sizeof *ex);
    if (!ex)
        return NULL;
    ex->ds = ds;
    h1_head_init(&ex->req);
    h1_head_init(&ex->resp);
    stat_inc(&http_stats(ex)->downstream_rq_total);
    stat_inc(&http_stats(ex)->downstream_rq_active);
    return ex;
}

/* Hand the upstream connection back to its pool (`reuse`) or close it. */
static void end_upstream(exchange_t *ex, int reuse)
{
    upstream_t *up = ex->up;
    if (!up)
        return;
    ex->up = NULL;
    cluster_stats_t *cs = &ex->cluster->stats;
    stat_dec(&cs->upstream_rq_active);
    if (reuse) {
        pool_release(up);
        return;
    }
    if (ex->resp_state != RESP_DONE)
        stat_inc(&cs->upstream_rq_tx_reset);
    upstream_abort(up);
}

void exchange_free(exchange_t *ex)
{
    end_upstream(ex, 0);
    stat_dec(&http_stats(ex)->downstream_rq_active);
    h1_head_free(&ex->req);
    h1_head_free(&ex->resp);
    free(ex);
}

/* ---- writing heads ---- */

/* Builds a head into `out` when it is set, or only measures it: the head is built twice,
 * once to size its buffer exactly and once to fill it. */
typedef struct head_writer {
    char *out;
    size_t len;
} head_writer_t;

static void put(head_writer_t *hw, const char *s, size_t n)
{
    if (hw->out)
        memcpy(hw->out + hw->len, s, n);
    hw->len += n;
}

static void puts_(head_writer_t *hw, const char *s)
{
    put(hw, s, strlen(s));
}

static void put_field(head_writer_t *hw, const h1_head_t *h, unsigned i)
{
    put(hw, h1_name(h, i), h->fields[i].name_len);
    put(hw, ": ", 2);
    put(hw, h1_value(h, i), h->fields[i].value_len);
    put(hw, "\r\n", 2);
}

/* Queues the finished head on `c` without copying it again. */
static int send_head(conn_t *c, void (*build)(exchange_t *, head_writer_t *), exchange_t *ex)
{
    head_writer_t hw = {0};
    build(ex, &hw);
    buf_t *b = buf_new(&c->w->bufs, hw.len);
    if (!b)
        return UV_ENOMEM;
    hw = (head_writer_t){.out = b->data};
    build(ex, &hw);
    b->len = (uint32_t)hw.len;
    conn_write(c, b, b->data, b->len);
    buf_unref(b);
    return 0;
}

/* The request-target in origin form: an absolute-form target (a client using remora as an
 * explicit proxy, RFC 9112 §3.2.2) loses its scheme and authority. */
static const char *origin_form(const exchange_t *ex, size_t *n)
{
    const char *t = h1_start(&ex->req);
    *n = ex->req.start_len;
    const char *scheme = memchr(t, ':', *n);
    if (*n == 0 || t[0] == '/' || !scheme || scheme + 3 > t + *n || memcmp(scheme, "://", 3) != 0)
        return t;
    const char *auth = scheme + 3;
    const char *path = memchr(auth, '/', (size_t)(t + *n - auth));
    if (!path) {
        *n = 1;
        return "/";
    }
    *n = (size_t)(t + *n - path);
    return path;
}

/* The authority of an absolute-form target, which replaces Host (RFC 9112 §3.2.2). */
static const char *target_authority(const exchange_t *ex, size_t *n)
{
    const char *t = h1_start(&ex->req);
    size_t len = ex->req.start_len;
    const char *sep = len > 3 ? memmem(t, len, "://", 3) : NULL;
    if (!sep || t[0] == '/')
        return NULL;
    const char *auth = sep + 3;
    const char *end = auth;
    while (end < t + len && *end != '/' && *end != '?')
        end++;
    *n = (size_t)(end - auth);
    return *n ? auth : NULL;
}

static void request_id(downstream_t *ds, char out[37])
{
    uint64_t a = worker_random(ds->c.w), b = worker_random(ds->c.w);
    /* RFC 9562 version 4 layout. */
    a = (a & 0xffffffffffff0fffull) | 0x4000ull;
    b = (b & 0x3fffffffffffffffull) | 0x8000000000000000ull;
    snprintf(out, 37, "%08" PRIx64 "-%04" PRIx64 "-%04" PRIx64 "-%04" PRIx64 "-%012" PRIx64,
             a >> 32, (a >> 16) & 0xffff, a & 0xffff, b >> 48, b & (uint64_t)0xffffffffffff);
}

static void build_request_head(exchange_t *ex, head_writer_t *hw)
{
    const h1_head_t *h = &ex->req;
    size_t tlen;
    const char *target = origin_form(ex, &tlen);
    size_t alen = 0;
    const char *authority = target_authority(ex, &alen);
    puts_(hw, llhttp_method_name((llhttp_method_t)ex->method));
    put(hw, " ", 1);
    put(hw, target, tlen);
    put(hw, " HTTP/1.1\r\n", 11);
    int has_host = 0, has_xfp = 0, has_rid = 0;
    for (unsigned i = 0; i < h->nfields; i++) {
        if (h1_is_hop_by_hop(h, i) || h1_name_is(h, i, "x-forwarded-for"))
            continue;
        if (ex->expect_continue && h1_name_is(h, i, "expect"))
            continue; /* answered by remora itself */
        if (h1_name_is(h, i, "host")) {
            if (has_host++ || authority)
                continue;
        } else if (h1_name_is(h, i, "x-forwarded-proto")) {
            has_xfp = 1;
        } else if (h1_name_is(h, i, "x-request-id")) {
            has_rid = 1;
        }
        put_field(hw, h, i);
    }
    /* The chain so far (every X-Forwarded-For field, in order), then the peer we received from. */
    puts_(hw, "X-Forwarded-For: ");
    for (unsigned i = 0; i < h->nfields; i++) {
        if (!h1_name_is(h, i, "x-forwarded-for"))
            continue;
        put(hw, h1_value(h, i), h->fields[i].value_len);
        put(hw, ", ", 2);
    }
    puts_(hw, ex->ds->client_ip);
    put(hw, "\r\n", 2);
    if (authority) {
        put(hw, "Host: ", 6);
        put(hw, authority, alen);
        put(hw, "\r\n", 2);
    } else if (!has_host) {
        put(hw, "Host: ", 6);
        puts_(hw, ex->pool->name);
        put(hw, "\r\n", 2);
    }
    if (!has_xfp)
        puts_(hw, "X-Forwarded-Proto: http\r\n");
    if (!has_rid) {
        char id[37];
        request_id(ex->ds, id);
        put(hw, "X-Request-Id: ", 14);
        put(hw, id, 36);
        put(hw, "\r\n", 2);
    }
    if (ex->upgrade) {
        int u = h1_find(h, "upgrade");
        puts_(hw, "Connection: upgrade\r\n");
        if (u >= 0)
            put_field(hw, h, (unsigned)u);
    }
    if (ex->req_out == BODY_CHUNKED)
        puts_(hw, "Transfer-Encoding: chunked\r\n");
    put(hw, "\r\n", 2);
}

static void build_response_head(exchange_t *ex, head_writer_t *hw)
{
    const h1_head_t *h = &ex->resp;
    char status[16];
    snprintf(status, sizeof status, "HTTP/1.1 %03d ", ex->status);
    puts_(hw, status);
    put(hw, h1_start(h), h->start_len);
    put(hw, "\r\n", 2);
    for (unsigned i = 0; i < h->nfields; i++)
        if (!h1_is_hop_by_hop(h, i))
            put_field(hw, h, i);
    if (ex->tunnel) {
        int u = h1_find(h, "upgrade");
        puts_(hw, "Connection: upgrade\r\n");
        if (u >= 0)
            put_field(hw, h, (unsigned)u);
    } else if (!ex->keep_alive) {
        puts_(hw, "Connection: close\r\n");
    } else if (ex->minor == 0) {
        puts_(hw, "Connection: keep-alive\r\n");
    }
    if (ex->resp_out == BODY_CHUNKED)
        puts_(hw, "Transfer-Encoding: chunked\r\n");
    put(hw, "\r\n", 2);
}

/* ---- local replies ---- */

/* Whether body bytes of the request are still to come (llhttp counts content_length down). */
static int request_has_body(const exchange_t *ex)
{
    const llhttp_t *p = &ex->ds->parser;
    return (p->flags & F_CHUNKED) || p->content_length > 0;
}

/* Reason phrases (RFC 9110 §15) of the statuses remora answers with itself. */
static const char *reason_phrase(int status)
{
    switch (status) {
    case 400:
        return "Bad Request";
    case 404:
        return "Not Found";
    case 408:
        return "Request Timeout";
    case 414:
        return "URI Too Long";
    case 431:
        return "Request Header Fields Too Large";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    default:
        return "";
    }
}

void fwd_local_reply(exchange_t *ex, int status, const char *body, int close)
{
    downstream_t *ds = ex->ds;
    end_upstream(ex, 0);
    if (close || (ex->req_state != REQ_DONE && request_has_body(ex)) || ds->c.w->draining ||
        ex->upgrade)
        ex->keep_alive = 0;
    ex->status = status;
    ex->local_reply = 1;
    ex->resp_state = RESP_DONE;
    stat_inc(stat_class(&http_stats(ex)->downstream_rq_1xx, status));
    size_t blen = strlen(body);
    buf_t *b = buf_new(&ds->c.w->bufs, 256 + blen);
    if (b) {
        int n = snprintf(b->data, b->cap,
                         "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n"
                         "%s\r\n%s",
                         status, reason_phrase(status), ex->method == HTTP_HEAD ? 0 : blen,
                         ex->keep_alive ? "" : "Connection: close\r\n",
                         ex->method == HTTP_HEAD ? "" : body);
        conn_write(&ds->c, b, b->data, (size_t)n);
        buf_unref(b);
    }
    log_debug("%s: %d %s", ds->client_ip, status, body);
    if (ex->req_state == REQ_DONE)
        downstream_exchange_done(ds);
    else if (!ex->keep_alive)
        downstream_finish(ds);
    /* else: a bodiless request whose end llhttp reports next; the exchange ends then. */
}

/* ---- request path ---- */

static int route(exchange_t *ex, route_result_t *r)
{
    downstream_t *ds = ex->ds;
    const route_table_t *rt = ds->c.w->srv->routes;
    if (ds->listener->kind == LISTENER_INGRESS)
        return route_ingress(rt, r);
    size_t n = 0;
    const char *host = target_authority(ex, &n);
    if (!host) {
        int i = h1_find(&ex->req, "host");
        if (i < 0)
            return ERR_NO_ROUTE;
        n = ex->req.fields[i].value_len;
        host = h1_trim(h1_value(&ex->req, (unsigned)i), &n);
    }
    return route_egress(rt, host, n, r);
}

/* Take a connection from the pool and send the request head; body bytes follow as they come.
 * Returns 0, or an error when no connection could be had (nothing was sent). */
static int dispatch(exchange_t *ex, int fresh)
{
    int reused = 0, err = UV_ENOMEM;
    upstream_t *up = ex->pool ? pool_acquire(ex->pool, fresh, &reused, &err) : NULL;
    if (!up) {
        log_warn("upstream %s: %s", ex->pool ? ex->pool->name : "?", err_str(err));
        return err;
    }
    ex->up = up;
    ex->reused = reused ? 1 : 0;
    upstream_attach(up, ex);
    stat_inc(&ex->cluster->stats.upstream_rq_total);
    stat_inc(&ex->cluster->stats.upstream_rq_active);
    return send_head(&up->c, build_request_head, ex);
}

/* A pooled connection can be closed by the upstream just as we reuse it (its keep-alive
 * timeout raced our request). Like nginx and HAProxy, an idempotent request with no body is
 * then sent once more on a fresh connection (RFC 9112 §9.3.1). */
static int retry_stale(exchange_t *ex, int err)
{
    if (!ex->reused || ex->retried || err == ERR_BAD_RESPONSE || ex->resp_state != RESP_WAITING ||
        ex->req_state != REQ_DONE || ex->req_out != BODY_NONE)
        return 0;
    switch (ex->method) {
    case HTTP_GET:
    case HTTP_HEAD:
    case HTTP_OPTIONS:
    case HTTP_TRACE:
    case HTTP_PUT:
    case HTTP_DELETE:
        break;
    default:
        return 0;
    }
    ex->retried = 1;
    end_upstream(ex, 0);
    int ok = dispatch(ex, 1) == 0;
    if (ok)
        log_debug("upstream %s: pooled connection was closed, request sent again", ex->pool->name);
    return ok;
}

static void no_route_reply(exchange_t *ex)
{
    char body[600];
    int i = h1_find(&ex->req, "host");
    snprintf(body, sizeof body, "no virtual service for host \"%.*s\" among this node's backends\n",
             i < 0 ? 0
                   : (int)(ex->req.fields[i].value_len > 400 ? 400 : ex->req.fields[i].value_len),
             i < 0 ? "" : h1_value(&ex->req, (unsigned)i));
    fwd_local_reply(ex, 404, body, 0);
}

int fwd_request_head(exchange_t *ex)
{
    downstream_t *ds = ex->ds;
    ex->req_state = REQ_BODY;
    /* RFC 9112 §3.2: a 1.1 request without exactly one Host is a 400. */
    int hosts = 0;
    for (unsigned i = 0; i < ex->req.nfields; i++)
        hosts += h1_name_is(&ex->req, i, "host");
    if ((ex->minor >= 1 && hosts == 0) || hosts > 1) {
        fwd_local_reply(ex, 400, hosts ? "more than one Host header\n" : "missing Host header\n",
                        1);
        return ds->closing;
    }
    route_result_t r;
    if (route(ex, &r) != 0) {
        no_route_reply(ex);
        return ds->closing;
    }
    ex->cluster = r.cluster;
    ex->timeout_ms = r.timeout_ms;
    ex->idle_ms = r.idle_ms;
    const endpoint_t *ep = r.cluster ? cluster_pick(r.cluster) : NULL;
    if (!ep) {
        fwd_local_reply(ex, 503, "no healthy upstream\n", 0);
        return ds->closing;
    }
    ex->pool = pool_get(ds->c.w, r.cluster, ep);
    const llhttp_t *p = &ds->parser;
    ex->req_out = (p->flags & F_CHUNKED) ? BODY_CHUNKED
                  : request_has_body(ex) ? BODY_LENGTH
                                         : BODY_NONE;
    int expect = h1_find(&ex->req, "expect");
    if (expect >= 0 && ex->minor >= 1 && ex->req_out != BODY_NONE &&
        h1_list_has(h1_value(&ex->req, (unsigned)expect), ex->req.fields[expect].value_len,
                    "100-continue", 12)) {
        /* We forward the body as it comes, so the client may send it now (RFC 9110 §10.1.1).
         * Expect is hop-by-hop in effect: the upstream does not see it. */
        ex->expect_continue = 1;
        conn_write(&ds->c, NULL, "HTTP/1.1 100 Continue\r\n\r\n", 25);
    }
    if (dispatch(ex, 0) != 0) {
        fwd_local_reply(ex, 503, "upstream connect error\n", 0);
        return ds->closing;
    }
    return 0;
}

static void write_chunked(conn_t *c, enum body_framing f, buf_t *b, const char *p, size_t n)
{
    if (f != BODY_CHUNKED) {
        conn_write(c, b, p, n);
        return;
    }
    char line[24];
    int len = snprintf(line, sizeof line, "%zx\r\n", n);
    conn_write_copy(c, line, (size_t)len);
    conn_write(c, b, p, n);
    conn_write(c, NULL, "\r\n", 2);
}

void fwd_request_body(exchange_t *ex, buf_t *b, const char *p, size_t n)
{
    upstream_t *up = ex->up;
    if (!up || ex->local_reply)
        return;
    write_chunked(&up->c, ex->req_out, b, p, n);
    if (conn_over_high_water(&up->c))
        downstream_set_upstream_full(ex->ds, 1);
}

void fwd_upstream_drained(exchange_t *ex)
{
    if (ex->tunnel || ex->req_state != REQ_DONE)
        downstream_set_upstream_full(ex->ds, 0);
}

void fwd_request_done(exchange_t *ex)
{
    ex->req_state = REQ_DONE;
    if (ex->resp_state == RESP_DONE) { /* answered already (locally or early) */
        downstream_exchange_done(ex->ds);
        return;
    }
    if (ex->up && ex->req_out == BODY_CHUNKED)
        conn_write(&ex->up->c, NULL, "0\r\n\r\n", 5);
    if (!ex->tunnel)
        downstream_start_request_timer(ex->ds, ex->timeout_ms);
}

/* ---- response path ---- */

static enum body_framing response_framing(exchange_t *ex, int status)
{
    const llhttp_t *p = &ex->up->parser;
    if (ex->method == HTTP_HEAD || status == 204 || status == 304 || status < 200)
        return BODY_NONE;
    if (p->flags & F_CHUNKED)
        return ex->minor >= 1 ? BODY_CHUNKED : BODY_UNTIL_CLOSE;
    if (p->flags & F_CONTENT_LENGTH)
        return BODY_LENGTH;
    /* Delimited by the upstream's close: re-frame as chunked for a 1.1 client so its
     * connection survives; a 1.0 client reads until we close. */
    return ex->minor >= 1 ? BODY_CHUNKED : BODY_UNTIL_CLOSE;
}

int fwd_response_head(exchange_t *ex, int status)
{
    downstream_t *ds = ex->ds;
    if (status >= 100 && status < 200 && status != 101) {
        /* Interim responses are not relayed: remora already answered Expect itself. */
        h1_head_reset(&ex->resp);
        return 0;
    }
    if (status == 101 && !ex->upgrade) {
        fwd_upstream_failed(ex, ERR_BAD_RESPONSE); /* switching protocols nobody asked for */
        return 0;
    }
    ex->status = status;
    stat_inc(stat_class(&ex->cluster->stats.upstream_rq_1xx, status));
    stat_inc(stat_class(&http_stats(ex)->downstream_rq_1xx, status));
    if (status == 101 && ex->upgrade) {
        ex->tunnel = 1;
        ex->resp_out = BODY_NONE;
        stat_inc(&http_stats(ex)->downstream_cx_upgrades_total);
    } else {
        ex->resp_out = response_framing(ex, status);
        if (ex->resp_out == BODY_UNTIL_CLOSE || ex->req_state != REQ_DONE || ex->upgrade ||
            ds->c.w->draining)
            ex->keep_alive = 0;
    }
    ex->resp_state = RESP_BODY;
    if (send_head(&ds->c, build_response_head, ex) != 0) {
        fwd_upstream_failed(ex, UV_ENOMEM);
        return 0;
    }
    if (ex->tunnel)
        downstream_start_tunnel(ds);
    return ex->method == HTTP_HEAD ? 1 : 0;
}

void fwd_response_body(exchange_t *ex, buf_t *b, const char *p, size_t n)
{
    downstream_t *ds = ex->ds;
    write_chunked(&ds->c, ex->resp_out, b, p, n);
    if (ex->up && conn_over_high_water(&ds->c))
        upstream_set_reading(ex->up, 0);
}

void fwd_client_drained(exchange_t *ex)
{
    if (ex->up)
        upstream_set_reading(ex->up, 1);
}

void fwd_response_done(exchange_t *ex)
{
    downstream_t *ds = ex->ds;
    if (ex->resp_out == BODY_CHUNKED)
        conn_write(&ds->c, NULL, "0\r\n\r\n", 5);
    ex->resp_state = RESP_DONE;
    int reuse = ex->req_state == REQ_DONE && ex->up && ex->up->keep_alive;
    end_upstream(ex, reuse);
    if (ex->req_state != REQ_DONE)
        ex->keep_alive = 0; /* the upstream answered before the request ended */
    downstream_exchange_done(ds);
}

void fwd_tunnel_from_upstream(exchange_t *ex, buf_t *b, const char *p, size_t n)
{
    conn_write(&ex->ds->c, b, p, n);
    if (ex->up && conn_over_high_water(&ex->ds->c))
        upstream_set_reading(ex->up, 0);
}

void fwd_tunnel_from_client(exchange_t *ex, buf_t *b, const char *p, size_t n)
{
    if (!ex->up)
        return;
    conn_write(&ex->up->c, b, p, n);
    if (conn_over_high_water(&ex->up->c))
        downstream_set_upstream_full(ex->ds, 1);
}

/* ---- failures ---- */

void fwd_upstream_failed(exchange_t *ex, int err)
{
    downstream_t *ds = ex->ds;
    if (retry_stale(ex, err))
        return;
    int connected = ex->up && ex->up->connected;
    if (ex->resp_state == RESP_BODY && !ex->tunnel)
        stat_inc(&ex->cluster->stats.upstream_rq_rx_reset);
    end_upstream(ex, 0);
    if (ex->resp_state != RESP_WAITING) {
        /* Mid-response: the client must see a broken message, never a complete one. */
        if (!ex->tunnel)
            log_warn("upstream %s: %s mid-response; closing the client connection",
                     ex->pool ? ex->pool->name : "?", err_str(err));
        if (ex->resp_out == BODY_UNTIL_CLOSE)
            downstream_abort(ds); /* a reset, since a clean close would mark the end */
        else
            downstream_finish(ds);
        return;
    }
    if (err == ERR_BAD_RESPONSE) {
        fwd_local_reply(ex, 502, "upstream sent an invalid response\n", 0);
    } else if (!connected) {
        fwd_local_reply(ex, 503, "upstream connect error\n", 0);
    } else {
        log_warn("upstream %s: %s before the response", ex->pool ? ex->pool->name : "?",
                 err_str(err));
        fwd_local_reply(ex, 503, "upstream reset before response headers\n", 0);
    }
}

void fwd_client_gone(exchange_t *ex)
{
    log_debug("downstream %s: client went away", ex->ds->client_ip);
    downstream_abort(ex->ds); /* frees the exchange, which aborts the upstream request */
}

void fwd_timeout(exchange_t *ex)
{
    stat_inc(&http_stats(ex)->downstream_rq_timeout);
    if (ex->cluster)
        stat_inc(&ex->cluster->stats.upstream_rq_timeout);
    log_warn("upstream %s: no complete response within %" PRIu64 " ms",
             ex->pool ? ex->pool->name : "?", ex->timeout_ms);
    if (ex->resp_state == RESP_WAITING) {
        fwd_local_reply(ex, 504, "upstream request timeout\n", 0);
        return;
    }
    end_upstream(ex, 0);
    if (ex->resp_out == BODY_UNTIL_CLOSE)
        downstream_abort(ex->ds);
    else
        downstream_finish(ex->ds);
}
