#include "proxy/downstream.h"

#include <arpa/inet.h>
#include <linux/netfilter_ipv4.h>
#include <linux/netfilter_ipv6/ip6_tables.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"
#include "proxy/forward.h"
#include "base/log.h"
#include "proxy/server.h"

#define LINGER_MS 5000 /* how long a closing connection may take to read our last bytes */

static http_stats_t *stats_of(downstream_t *ds)
{
    server_t *s = ds->c.w->srv;
    return ds->listener->kind == LISTENER_INGRESS ? &s->ingress_stats : &s->egress_stats;
}

static void process_input(downstream_t *ds);
static void update_reading(downstream_t *ds);

/* ---- timers ---- */

static void on_timer(uv_timer_t *t);

/* Phases change several times per request; the libuv timer is re-armed only when the new
 * deadline is earlier than the one it is armed for. A timer that fires early (the deadline
 * moved later) re-arms itself for the rest. */
static void set_timer(downstream_t *ds, enum ds_timer phase, uint64_t ms)
{
    ds->timer_phase = phase;
    if (phase == DS_TIMER_NONE || ms == 0) {
        ds->deadline = 0;
        return;
    }
    ds->deadline = uv_now(&ds->c.w->loop) + ms;
    if (!uv_is_active((uv_handle_t *)&ds->timer) || ds->armed_for > ds->deadline) {
        uv_timer_start(&ds->timer, on_timer, ms, 0);
        ds->armed_for = ds->deadline;
    }
}

/* The idle timeout in force: the route's once routed, else the ingress listener's. */
static uint64_t idle_ms(downstream_t *ds)
{
    if (ds->ex && ds->ex->route.cluster)
        return ds->ex->route.idle_ms;
    if (ds->listener->kind != LISTENER_INGRESS)
        return ROUTE_DEFAULT_IDLE_MS;
    route_result_t r;
    route_ingress(ds->c.w->routes, &r);
    return r.idle_ms;
}

void downstream_start_request_timer(downstream_t *ds, uint64_t ms)
{
    set_timer(ds, DS_TIMER_REQUEST, ms);
}

static void on_try_timer(uv_timer_t *t)
{
    downstream_t *ds = t->data;
    if (ds->ex)
        fwd_try_timeout(ds->ex);
}

void downstream_start_try_timer(downstream_t *ds, uint64_t ms)
{
    uv_timer_start(&ds->try_timer, on_try_timer, ms, 0);
}

void downstream_stop_try_timer(downstream_t *ds)
{
    if (uv_is_active((uv_handle_t *)&ds->try_timer))
        uv_timer_stop(&ds->try_timer);
}

/* ---- closing ---- */

static void free_downstream(downstream_t *ds)
{
    worker_t *w = ds->c.w;
    if (ds->pending)
        buf_unref(ds->pending);
    if (ds->prev)
        ds->prev->next = ds->next;
    else
        w->downstreams = ds->next;
    if (ds->next)
        ds->next->prev = ds->prev;
    w->ndownstreams--;
    stat_dec(&stats_of(ds)->downstream_cx_active);
    free(ds);
    worker_downstream_closed(w);
}

static void on_try_timer_closed(uv_handle_t *h)
{
    free_downstream(h->data);
}

static void on_timer_closed(uv_handle_t *h)
{
    downstream_t *ds = h->data;
    uv_close((uv_handle_t *)&ds->try_timer, on_try_timer_closed);
}

static void on_tcp_closed(uv_handle_t *h)
{
    downstream_t *ds = h->data; /* the conn is the first member */
    uv_close((uv_handle_t *)&ds->timer, on_timer_closed);
}

void downstream_abort(downstream_t *ds)
{
    if (ds->c.closing)
        return;
    if (ds->ex) {
        exchange_t *ex = ds->ex;
        ds->ex = NULL;
        exchange_free(ex);
    }
    uv_timer_stop(&ds->timer);
    conn_close(&ds->c, on_tcp_closed);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    downstream_t *ds = req->data;
    free(req);
    (void)status;
    /* Lingering close (RFC 9112 §9.6): keep reading and discarding until the client closes or
     * the linger time passes, so that a reset does not destroy our last bytes in flight. */
    if (!ds->c.closing) {
        ds->reading = 0;
        update_reading(ds);
    }
}

void downstream_finish(downstream_t *ds)
{
    if (ds->closing || ds->c.closing)
        return;
    ds->closing = 1;
    if (ds->ex) {
        exchange_t *ex = ds->ex;
        ds->ex = NULL;
        exchange_free(ex);
    }
    set_timer(ds, DS_TIMER_IDLE, LINGER_MS);
    conn_flush(&ds->c);
    uv_shutdown_t *req = malloc(sizeof *req);
    if (!req || uv_shutdown(req, (uv_stream_t *)&ds->c.tcp, on_shutdown) < 0) {
        free(req);
        downstream_abort(ds);
        return;
    }
    req->data = ds;
    update_reading(ds);
}

/* ---- exchange lifecycle ---- */

void downstream_exchange_done(downstream_t *ds)
{
    exchange_t *ex = ds->ex;
    int keep = ex && ex->keep_alive && !ds->peer_eof && !ds->c.w->draining;
    if (ex) {
        ds->ex = NULL;
        exchange_free(ex);
    }
    ds->requests++;
    if (!keep) {
        downstream_finish(ds);
        return;
    }
    ds->paused = 0;
    set_timer(ds, DS_TIMER_IDLE, idle_ms(ds));
    process_input(ds);
}

void downstream_resume(downstream_t *ds)
{
    ds->paused = 0;
    process_input(ds);
}

void downstream_start_tunnel(downstream_t *ds)
{
    set_timer(ds, DS_TIMER_NONE, 0);
    ds->upstream_full = 0;
    process_input(ds); /* sends what the client wrote after its upgrade request */
}

void downstream_set_upstream_full(downstream_t *ds, int full)
{
    ds->upstream_full = full ? 1 : 0;
    update_reading(ds);
}

/* ---- llhttp callbacks ---- */

static int fail(llhttp_t *p, int status, const char *reason)
{
    downstream_t *ds = p->data;
    if (ds->ex)
        ds->ex->status = status;
    llhttp_set_error_reason(p, reason);
    return HPE_USER;
}

static int on_message_begin(llhttp_t *p)
{
    downstream_t *ds = p->data;
    ds->ex = exchange_new(ds);
    if (!ds->ex)
        return fail(p, 503, "out of memory");
    set_timer(ds, DS_TIMER_HEADERS, ds->c.w->srv->set.header_timeout_ms);
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t n)
{
    downstream_t *ds = p->data;
    return h1_append_start(&ds->ex->req, at, n) ? fail(p, 414, "request-target too long") : 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t n)
{
    downstream_t *ds = p->data;
    return h1_append_name(&ds->ex->req, at, n) ? fail(p, 431, "header section too large") : 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t n)
{
    downstream_t *ds = p->data;
    return h1_append_value(&ds->ex->req, at, n) ? fail(p, 431, "header section too large") : 0;
}

static int on_header_value_complete(llhttp_t *p)
{
    downstream_t *ds = p->data;
    h1_field_done(&ds->ex->req);
    return 0;
}

static int on_headers_complete(llhttp_t *p)
{
    downstream_t *ds = p->data;
    exchange_t *ex = ds->ex;
    ex->method = llhttp_get_method(p);
    ex->major = llhttp_get_http_major(p);
    ex->minor = llhttp_get_http_minor(p);
    ex->keep_alive = llhttp_should_keep_alive(p) ? 1 : 0;
    ex->upgrade = llhttp_get_upgrade(p) ? 1 : 0;
    h1_classify(&ex->req);
    int stop = fwd_request_head(ex);
    /* Routed: the body (if any) streams under the route's idle timeout, unless the exchange
     * already moved the timer on (answered, or waiting for a pool slot). */
    if (ds->ex == ex && ds->timer_phase == DS_TIMER_HEADERS)
        set_timer(ds, DS_TIMER_IDLE, idle_ms(ds));
    if (stop) {
        /* Answered locally, or waiting for a connection-pool slot: read no further for now. */
        ds->paused = 1;
        return HPE_PAUSED;
    }
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t n)
{
    downstream_t *ds = p->data;
    if (ds->timer_phase == DS_TIMER_IDLE)
        set_timer(ds, DS_TIMER_IDLE, idle_ms(ds));
    fwd_request_body(ds->ex, ds->pending_cur, at, n);
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    downstream_t *ds = p->data;
    ds->paused = 1;
    fwd_request_done(ds->ex); /* may end the exchange, which clears `paused` */
    return HPE_PAUSED;
}

static const llhttp_settings_t parser_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_header_value_complete = on_header_value_complete,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* ---- input ---- */

static void stash(downstream_t *ds, buf_t *b, const char *p, size_t n)
{
    ds->pending = buf_ref(b);
    ds->pending_p = p;
    ds->pending_n = n;
}

/* A request could not be parsed: answer 400 (or the status a callback chose) and close. */
static void protocol_error(downstream_t *ds, int err)
{
    exchange_t *ex = ds->ex;
    stat_inc(&stats_of(ds)->downstream_cx_protocol_error);
    int status = ex && ex->status ? ex->status : 400;
    if (status == 431 || status == 414)
        stat_inc(&stats_of(ds)->downstream_rq_header_too_large);
    log_debug("downstream %s: bad request (%s: %s), answering %d", ds->client_ip,
              llhttp_errno_name((llhttp_errno_t)err), llhttp_get_error_reason(&ds->parser), status);
    if (!ex) {
        ex = ds->ex = exchange_new(ds);
        if (!ex) {
            downstream_abort(ds);
            return;
        }
    }
    if (ex->resp_state != RESP_WAITING) {
        downstream_finish(ds); /* the response already started: all we can do is stop */
        return;
    }
    const char *reason = status == 431   ? "request header section too large\n"
                         : status == 414 ? "request-target too long\n"
                                         : "malformed request\n";
    fwd_local_reply(ex, status, reason, 1);
}

/* Parse what is pending until the parser pauses at a message end, the input runs out, or the
 * connection starts closing. Re-entry (an exchange ending inside a callback) just unpauses. */
static void process_input(downstream_t *ds)
{
    if (ds->in_parse)
        return;
    ds->in_parse = 1;
    while (ds->pending && !ds->paused && !ds->closing && !ds->c.closing &&
           !(ds->ex && ds->ex->tunnel)) {
        buf_t *b = ds->pending;
        const char *p = ds->pending_p;
        size_t n = ds->pending_n;
        ds->pending = NULL;
        if (llhttp_get_errno(&ds->parser) == HPE_PAUSED)
            llhttp_resume(&ds->parser);
        ds->pending_cur = b;
        llhttp_errno_t err = llhttp_execute(&ds->parser, p, n);
        ds->pending_cur = NULL;
        if (err == HPE_PAUSED) {
            const char *at = llhttp_get_error_pos(&ds->parser);
            if (at && at < p + n)
                stash(ds, b, at, (size_t)(p + n - at));
        } else if (err != HPE_OK) {
            protocol_error(ds, err);
        }
        buf_unref(b);
    }
    ds->in_parse = 0;
    if (ds->ex && ds->ex->tunnel && ds->pending) {
        buf_t *b = ds->pending;
        ds->pending = NULL;
        fwd_tunnel_from_client(ds->ex, b, ds->pending_p, ds->pending_n);
        buf_unref(b);
    }
    update_reading(ds);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *ub);

static void update_reading(downstream_t *ds)
{
    if (ds->c.closing)
        return;
    int want;
    if (ds->closing)
        want = 1; /* lingering: read and discard */
    else
        want = !ds->peer_eof && !ds->upstream_full && !(ds->pending && (ds->paused || ds->ex));
    if (want && !ds->reading) {
        if (uv_read_start((uv_stream_t *)&ds->c.tcp, conn_alloc_cb, on_read) == 0)
            ds->reading = 1;
    } else if (!want && ds->reading) {
        uv_read_stop((uv_stream_t *)&ds->c.tcp);
        ds->reading = 0;
    }
}

static void on_eof(downstream_t *ds, ssize_t nread)
{
    exchange_t *ex = ds->ex;
    if (ds->closing || !ex) {
        downstream_abort(ds);
        return;
    }
    if (nread == UV_EOF && ex->req_state == REQ_DONE && !ex->tunnel) {
        /* Half-close after a complete request: answer it, then close. */
        ds->peer_eof = 1;
        update_reading(ds);
        return;
    }
    stat_inc(&stats_of(ds)->downstream_rq_rx_reset);
    fwd_client_gone(ex);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *ub)
{
    downstream_t *ds = s->data;
    buf_t *b = conn_read_buf(ub);
    if (nread <= 0) {
        if (b)
            buf_unref(b);
        if (nread < 0)
            on_eof(ds, nread);
        return;
    }
    if (ds->closing) { /* lingering: discard */
        buf_unref(b);
        return;
    }
    b->len = (uint32_t)nread;
    if (ds->ex && ds->ex->tunnel) {
        fwd_tunnel_from_client(ds->ex, b, b->data, (size_t)nread);
    } else {
        stash(ds, b, b->data, (size_t)nread);
        process_input(ds);
    }
    buf_unref(b);
}

static void on_timer(uv_timer_t *t)
{
    downstream_t *ds = t->data;
    uint64_t now = uv_now(&ds->c.w->loop);
    if (!ds->deadline)
        return;
    if (now < ds->deadline) {
        uv_timer_start(&ds->timer, on_timer, ds->deadline - now, 0);
        ds->armed_for = ds->deadline;
        return;
    }
    ds->deadline = 0;
    exchange_t *ex = ds->ex;
    http_stats_t *st = stats_of(ds);
    switch (ds->timer_phase) {
    case DS_TIMER_HEADERS:
        stat_inc(&st->downstream_cx_header_timeout);
        log_debug("downstream %s: request headers not received in time", ds->client_ip);
        if (ex && ex->resp_state == RESP_WAITING) {
            fwd_local_reply(ex, 408, "request header timeout\n", 1);
        } else {
            downstream_abort(ds);
        }
        break;
    case DS_TIMER_IDLE:
        if (ds->closing) {
            downstream_abort(ds);
        } else if (ex && ex->req_state != REQ_DONE) {
            /* The client stalled mid-body: as Envoy's stream idle timeout, 408 if we can. */
            stat_inc(&st->downstream_cx_idle_timeout);
            if (ex->resp_state == RESP_WAITING)
                fwd_local_reply(ex, 408, "request timeout: the request body stalled\n", 1);
            else
                fwd_client_gone(ex);
        } else {
            stat_inc(&st->downstream_cx_idle_timeout);
            downstream_abort(ds);
        }
        break;
    case DS_TIMER_REQUEST:
        if (ex)
            fwd_timeout(ex);
        break;
    case DS_TIMER_NONE:
        break;
    }
}

/* ---- output backpressure: the client is slow to read the response ---- */

static void on_drain(conn_t *c)
{
    downstream_t *ds = (downstream_t *)c;
    if (ds->ex)
        fwd_client_drained(ds->ex);
}

static void on_write_error(conn_t *c, int err)
{
    downstream_t *ds = (downstream_t *)c;
    log_debug("downstream %s: write failed: %s", ds->client_ip, uv_strerror(err));
    if (ds->ex && !ds->closing) {
        stat_inc(&stats_of(ds)->downstream_rq_rx_reset);
        fwd_client_gone(ds->ex);
    } else {
        downstream_abort(ds);
    }
}

static const conn_ops_t downstream_ops = {.on_drain = on_drain, .on_write_error = on_write_error};

/* ---- accept and drain ---- */

static void client_ip(downstream_t *ds)
{
    struct sockaddr_storage ss;
    int len = sizeof ss;
    ds->client_ip[0] = '\0';
    if (uv_tcp_getpeername(&ds->c.tcp, (struct sockaddr *)&ss, &len) != 0)
        return;
    if (ss.ss_family == AF_INET)
        uv_ip4_name((struct sockaddr_in *)&ss, ds->client_ip, sizeof ds->client_ip);
    else if (ss.ss_family == AF_INET6)
        uv_ip6_name((struct sockaddr_in6 *)&ss, ds->client_ip, sizeof ds->client_ip);
}

/* Where the app meant to connect before iptables REDIRECT sent it here (SO_ORIGINAL_DST). A
 * connection made straight to the listener has none. */
static void original_destination(downstream_t *ds)
{
    uv_os_fd_t fd;
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (uv_fileno((uv_handle_t *)&ds->c.tcp, &fd) != 0)
        return;
    if (getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, &ss, &len) != 0) {
        len = sizeof ss;
        if (getsockopt(fd, SOL_IPV6, IP6T_SO_ORIGINAL_DST, &ss, &len) != 0)
            return;
    }
    if (endpoint_set(&ds->orig_dst, (struct sockaddr *)&ss) != 0)
        return;
    /* Not redirected: the "original" destination is the listener itself. */
    ds->has_orig_dst = endpoint_port(&ds->orig_dst) != ds->c.w->srv->set.egress_port;
}

void downstream_accept(listener_t *l)
{
    worker_t *w = l->w;
    downstream_t *ds = calloc(1, sizeof *ds);
    if (!ds)
        return;
    conn_init(&ds->c, w, &downstream_ops);
    if (uv_accept((uv_stream_t *)&l->tcp, (uv_stream_t *)&ds->c.tcp) != 0) {
        uv_close((uv_handle_t *)&ds->c.tcp, (uv_close_cb)free);
        return;
    }
    ds->listener = l;
    uv_tcp_nodelay(&ds->c.tcp, 1);
    uv_timer_init(&w->loop, &ds->timer);
    ds->timer.data = ds;
    uv_timer_init(&w->loop, &ds->try_timer);
    ds->try_timer.data = ds;
    if (l->kind == LISTENER_EGRESS)
        original_destination(ds);
    llhttp_init(&ds->parser, HTTP_REQUEST, &parser_settings);
    ds->parser.data = ds;
    client_ip(ds);
    ds->next = w->downstreams;
    if (w->downstreams)
        w->downstreams->prev = ds;
    w->downstreams = ds;
    w->ndownstreams++;
    stat_inc(&stats_of(ds)->downstream_cx_total);
    stat_inc(&stats_of(ds)->downstream_cx_active);
    /* A connection's first request head is bounded by the header timeout from accept. */
    set_timer(ds, DS_TIMER_HEADERS, w->srv->set.header_timeout_ms);
    update_reading(ds);
}

void downstream_drain_all(worker_t *w)
{
    downstream_t *next;
    for (downstream_t *ds = w->downstreams; ds; ds = next) {
        next = ds->next;
        if (ds->closing || ds->c.closing)
            continue;
        if (!ds->ex) {
            stat_inc(&stats_of(ds)->downstream_cx_drain_close);
            downstream_finish(ds);
        } else {
            ds->ex->keep_alive = 0; /* close once the current response is complete */
        }
    }
}

void downstream_abort_all(worker_t *w)
{
    downstream_t *next;
    for (downstream_t *ds = w->downstreams; ds; ds = next) {
        next = ds->next; /* a closing connection stays listed until its close callback */
        downstream_abort(ds);
    }
}
