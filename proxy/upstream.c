#include "proxy/upstream.h"

#include <stdlib.h>
#include <string.h>

#include "discovery/cluster.h"
#include "base/err.h"
#include "proxy/forward.h"
#include "base/log.h"
#include "proxy/pool.h"
#include "proxy/worker.h"

static cluster_stats_t *stats_of(upstream_t *up)
{
    return &up->pool->cluster->stats;
}

/* ---- closing ---- */

static void on_timer_closed(uv_handle_t *h)
{
    upstream_t *up = h->data;
    pool_t *p = up->pool;
    stat_dec(&p->cluster->stats.upstream_cx_active);
    p->nactive--;
    free(up);
}

static void on_tcp_closed(uv_handle_t *h)
{
    upstream_t *up = h->data;
    uv_close((uv_handle_t *)&up->timer, on_timer_closed);
}

void upstream_abort(upstream_t *up)
{
    if (up->state == UP_CLOSING)
        return;
    if (up->state == UP_IDLE)
        pool_unlink_idle(up);
    up->state = UP_CLOSING;
    up->ex = NULL;
    uv_timer_stop(&up->timer);
    conn_close(&up->c, on_tcp_closed);
}

/* ---- reading ---- */

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *ub);

void upstream_set_reading(upstream_t *up, int on)
{
    if (!up->connected || up->state == UP_CLOSING || on == up->reading)
        return;
    if (on) {
        if (uv_read_start((uv_stream_t *)&up->c.tcp, conn_alloc_cb, on_read) == 0)
            up->reading = 1;
    } else {
        uv_read_stop((uv_stream_t *)&up->c.tcp);
        up->reading = 0;
    }
}

/* ---- llhttp callbacks: everything goes to the exchange ---- */

static int on_status(llhttp_t *p, const char *at, size_t n)
{
    upstream_t *up = p->data;
    return h1_append_start(&up->ex->resp, at, n) ? HPE_USER : 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t n)
{
    upstream_t *up = p->data;
    return h1_append_name(&up->ex->resp, at, n) ? HPE_USER : 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t n)
{
    upstream_t *up = p->data;
    return h1_append_value(&up->ex->resp, at, n) ? HPE_USER : 0;
}

static int on_header_value_complete(llhttp_t *p)
{
    upstream_t *up = p->data;
    h1_field_done(&up->ex->resp);
    return 0;
}

static int on_headers_complete(llhttp_t *p)
{
    upstream_t *up = p->data;
    h1_classify(&up->ex->resp);
    int rc = fwd_response_head(up->ex, llhttp_get_status_code(p));
    if (!up->ex)
        return HPE_USER; /* the exchange gave up on this connection */
    if (up->ex->tunnel)
        return 2; /* 101: no body; llhttp_execute returns HPE_PAUSED_UPGRADE */
    return rc;
}

static int on_body(llhttp_t *p, const char *at, size_t n)
{
    upstream_t *up = p->data;
    fwd_response_body(up->ex, up->cur, at, n);
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    upstream_t *up = p->data;
    int status = llhttp_get_status_code(p);
    if (up->ex->tunnel || (status >= 100 && status < 200))
        return 0; /* an interim response: the final one follows on the same connection */
    up->keep_alive = llhttp_should_keep_alive(p) ? 1 : 0;
    up->message_done = 1;
    return HPE_PAUSED;
}

static const llhttp_settings_t parser_settings = {
    .on_status = on_status,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_header_value_complete = on_header_value_complete,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

static void parse(upstream_t *up, buf_t *b, const char *p, size_t n)
{
    up->cur = b;
    llhttp_errno_t err = llhttp_execute(&up->parser, p, n);
    up->cur = NULL;
    exchange_t *ex = up->ex;
    if (!ex)
        return; /* the exchange ended inside a callback (client gone) */
    const char *at = llhttp_get_error_pos(&up->parser);
    if (err == HPE_OK)
        return;
    if (err == HPE_PAUSED && up->message_done) {
        if (at && at < p + n)
            up->keep_alive = 0; /* bytes after the response: never reuse this connection */
        fwd_response_done(ex);
    } else if (err == HPE_PAUSED_UPGRADE && ex->tunnel) {
        if (at && at < p + n)
            fwd_tunnel_from_upstream(ex, b, at, (size_t)(p + n - at));
    } else {
        stat_inc(&stats_of(up)->upstream_cx_protocol_error);
        log_debug("upstream %s: bad response: %s (%s)", up->pool->name, llhttp_errno_name(err),
                  llhttp_get_error_reason(&up->parser));
        fwd_upstream_failed(ex, ERR_BAD_RESPONSE);
    }
}

static void on_eof(upstream_t *up, ssize_t nread)
{
    exchange_t *ex = up->ex;
    if (!ex) { /* idle in the pool: the upstream closed it */
        stat_inc(&stats_of(up)->upstream_cx_destroy_remote);
        upstream_abort(up);
        return;
    }
    if (ex->tunnel) {
        fwd_upstream_failed(ex, ERR_UPSTREAM_CLOSED);
        return;
    }
    /* A response delimited by the close (RFC 9112 §6.3 rule 8) completes here. */
    llhttp_errno_t fin = nread == UV_EOF ? llhttp_finish(&up->parser) : HPE_USER;
    if ((fin == HPE_OK || fin == HPE_PAUSED) && up->message_done) {
        up->keep_alive = 0;
        fwd_response_done(ex);
        return;
    }
    stat_inc(&stats_of(up)->upstream_cx_destroy_remote);
    fwd_upstream_failed(ex, nread == UV_EOF ? ERR_UPSTREAM_CLOSED : (int)nread);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *ub)
{
    upstream_t *up = s->data;
    buf_t *b = conn_read_buf(ub);
    if (nread <= 0) {
        if (b)
            buf_unref(b);
        if (nread < 0)
            on_eof(up, nread);
        return;
    }
    b->len = (uint32_t)nread;
    if (!up->ex) { /* bytes on an idle connection: it is out of step, drop it */
        stat_inc(&stats_of(up)->upstream_cx_protocol_error);
        upstream_abort(up);
    } else if (up->ex->tunnel) {
        fwd_tunnel_from_upstream(up->ex, b, b->data, (size_t)nread);
    } else {
        parse(up, b, b->data, (size_t)nread);
    }
    buf_unref(b);
}

/* ---- connecting ---- */

static void on_timer(uv_timer_t *t)
{
    upstream_t *up = t->data;
    uint64_t now = uv_now(&up->c.w->loop);
    if (up->state == UP_IDLE && now < up->idle_deadline) { /* reused since: wait for the rest */
        uv_timer_start(&up->timer, on_timer, up->idle_deadline - now, 0);
        return;
    }
    if (up->state == UP_IDLE) {
        stat_inc(&stats_of(up)->upstream_cx_idle_timeout);
        upstream_abort(up);
    } else if (up->state == UP_CONNECTING && up->ex) {
        stat_inc(&stats_of(up)->upstream_cx_connect_timeout);
        stat_inc(&stats_of(up)->upstream_cx_connect_fail);
        log_warn("upstream %s: connect timed out", up->pool->name);
        fwd_upstream_failed(up->ex, UV_ETIMEDOUT);
    }
}

static void on_connect(uv_connect_t *req, int status)
{
    upstream_t *up = req->data;
    if (up->state == UP_CLOSING)
        return;
    uv_timer_stop(&up->timer);
    if (status < 0) {
        stat_inc(&stats_of(up)->upstream_cx_connect_fail);
        log_warn("upstream %s: connect failed: %s", up->pool->name, uv_strerror(status));
        if (up->ex)
            fwd_upstream_failed(up->ex, status);
        else
            upstream_abort(up);
        return;
    }
    up->connected = 1;
    if (up->state == UP_CONNECTING)
        up->state = UP_ACTIVE;
    uv_tcp_nodelay(&up->c.tcp, 1);
    upstream_set_reading(up, 1);
}

static void on_drain(conn_t *c)
{
    upstream_t *up = (upstream_t *)c;
    if (up->ex)
        fwd_upstream_drained(up->ex);
}

/* A failed write is not acted on here: the read side sees the close right after, and a
 * response the upstream sent before closing (say, an early 413) still reaches the client. */
static const conn_ops_t upstream_ops = {.on_drain = on_drain};

upstream_t *upstream_connect(pool_t *p, int *err)
{
    worker_t *w = p->worker;
    upstream_t *up = calloc(1, sizeof *up);
    if (!up) {
        *err = UV_ENOMEM;
        return NULL;
    }
    conn_init(&up->c, w, &upstream_ops);
    uv_timer_init(&w->loop, &up->timer);
    up->timer.data = up;
    up->pool = p;
    up->state = UP_CONNECTING;
    up->connect_req.data = up;
    p->nactive++;
    stat_inc(&p->cluster->stats.upstream_cx_total);
    stat_inc(&p->cluster->stats.upstream_cx_active);
    *err =
        uv_tcp_connect(&up->connect_req, &up->c.tcp, (const struct sockaddr *)&p->addr, on_connect);
    if (*err < 0) {
        stat_inc(&p->cluster->stats.upstream_cx_connect_fail);
        upstream_abort(up);
        return NULL;
    }
    uv_timer_start(&up->timer, on_timer, UPSTREAM_CONNECT_TIMEOUT, 0);
    return up;
}

void upstream_attach(upstream_t *up, exchange_t *ex)
{
    up->ex = ex;
    if (up->state == UP_IDLE)
        up->state = UP_ACTIVE; /* the idle timer, if it fires, sees it busy and lets it be */
    up->message_done = 0;
    up->keep_alive = 0;
    up->requests++;
    llhttp_init(&up->parser, HTTP_RESPONSE, &parser_settings);
    up->parser.data = up;
    upstream_set_reading(up, 1);
}

void upstream_park(upstream_t *up)
{
    up->ex = NULL;
    up->state = UP_IDLE;
    up->idle_deadline = uv_now(&up->c.w->loop) + POOL_IDLE_TIMEOUT;
    if (!uv_is_active((uv_handle_t *)&up->timer))
        uv_timer_start(&up->timer, on_timer, POOL_IDLE_TIMEOUT, 0);
    upstream_set_reading(up, 1); /* to see the upstream close it */
}
