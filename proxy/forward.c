#include "proxy/forward.h"

#include <arpa/inet.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/downstream.h"
#include "base/err.h"
#include "proxy/heads.h"
#include "base/log.h"
#include "proxy/pool.h"
#include "proxy/server.h"
#include "proxy/upstream.h"
#include "routing/path.h"

#define RETRY_PER_TRY_TIMEOUT                                                                      \
    (1u << 30) /* not an App Mesh event: always retried under a policy                             \
                */

static http_stats_t *http_stats(exchange_t *ex)
{
    server_t *s = ex->ds->c.w->srv;
    return ex->ds->listener->kind == LISTENER_INGRESS ? &s->ingress_stats : &s->egress_stats;
}

#define EXCHANGE_KEEP     64         /* free exchanges a worker keeps */
#define HEAD_STORAGE_KEEP (8 * 1024) /* header storage kept with a free exchange */

exchange_t *exchange_new(downstream_t *ds)
{
    worker_t *w = ds->c.w;
    exchange_t *ex = w->free_exchanges;
    if (ex) { /* reuse it, and its header storage */
        w->free_exchanges = ex->next_free;
        w->nfree_exchanges--;
        h1_head_t req = ex->req, resp = ex->resp;
        memset(ex, 0, sizeof *ex);
        ex->req = req;
        ex->resp = resp;
        h1_head_reset(&ex->req);
        h1_head_reset(&ex->resp);
    } else {
        ex = calloc(1, sizeof *ex);
        if (!ex)
            return NULL;
        h1_head_init(&ex->req);
        h1_head_init(&ex->resp);
    }
    ex->ds = ds;
    if (++w->live_exchanges > w->peak_exchanges)
        w->peak_exchanges = w->live_exchanges;
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
    downstream_stop_try_timer(ex->ds);
    cluster_stats_t *cs = &ex->route.cluster->stats;
    stat_dec(&cs->upstream_rq_active);
    if (reuse) {
        pool_release(up);
        return;
    }
    if (ex->resp_state != RESP_DONE)
        stat_inc(&cs->upstream_rq_tx_reset);
    upstream_abort(up);
}

static void leave_queue(exchange_t *ex)
{
    if (!ex->waiting)
        return;
    worker_t *w = ex->ds->c.w;
    if (ex->wait_prev)
        ex->wait_prev->wait_next = ex->wait_next;
    else
        w->waiting_head = ex->wait_next;
    if (ex->wait_next)
        ex->wait_next->wait_prev = ex->wait_prev;
    else
        w->waiting_tail = ex->wait_prev;
    ex->waiting = 0;
    atomic_fetch_sub(&ex->route.cluster->pending_requests, 1);
    stat_dec(&ex->route.cluster->stats.upstream_rq_pending_active);
}

static void release_slot(exchange_t *ex)
{
    if (!ex->has_slot)
        return;
    ex->has_slot = 0;
    cluster_slot_release(ex->route.cluster);
    if (atomic_load(&ex->route.cluster->pending_requests) > 0)
        server_wake_workers(ex->ds->c.w->srv); /* a request may be waiting on any worker */
}

static void release_replay(exchange_t *ex)
{
    for (unsigned i = 0; i < ex->nreplay; i++)
        buf_unref(ex->replay[i].buf);
    ex->nreplay = 0;
    ex->replay_bytes = 0;
}

/* Tells the cluster how this attempt ended (outlier detection) and lets go of its endpoint;
 * status 0 is a connect failure or a reset. */
static void report(exchange_t *ex, int status)
{
    if (ex->trace)
        xray_attempt_end(ex->trace, status);
    if (ex->endpoint.state)
        cluster_done(ex->route.cluster, &ex->endpoint, status, uv_now(&ex->ds->c.w->loop));
}

/* The request as the trace documents describe it. */
static void trace_finish(exchange_t *ex)
{
    downstream_t *ds = ex->ds;
    int i = h1_find_id(&ex->req, H_HOST), ua = h1_find_id(&ex->req, H_USER_AGENT);
    int xff = h1_find_id(&ex->req, H_X_FORWARDED_FOR);
    size_t ip_len = 0;
    char ip[64];
    if (xff >= 0) { /* the first address of the chain, as the SDKs take it */
        const char *v = h1_value(&ex->req, (unsigned)xff);
        ip_len = strcspn(v, ",");
        const char *t = h1_trim(v, &ip_len);
        snprintf(ip, sizeof ip, "%.*s", (int)ip_len, t);
    }
    xray_request_t r = {
        .method = llhttp_method_name((llhttp_method_t)ex->method),
        .host = i >= 0 ? h1_value(&ex->req, (unsigned)i) : "",
        .host_len = i >= 0 ? ex->req.fields[i].value_len : 0,
        .path = ex->target ? ex->target : "",
        .path_len = ex->target ? ex->target_len : 0,
        .query = ex->query,
        .query_len = ex->query_len,
        .user_agent = ua >= 0 ? h1_value(&ex->req, (unsigned)ua) : NULL,
        .user_agent_len = ua >= 0 ? ex->req.fields[ua].value_len : 0,
        .client_ip = xff >= 0 && ip_len ? ip : ds->client_ip,
        .client_ip_from_xff = xff >= 0 && ip_len,
        .service = ex->route.service ? ex->route.service : "passthrough",
        .status = ex->status,
        .content_length = ex->resp_state == RESP_DONE ? (int64_t)ex->resp_bytes : -1,
    };
    xray_finish(ds->c.w->srv->xray, &ds->c.w->xray, ex->trace, &r);
    ex->trace = NULL;
}

void exchange_free(exchange_t *ex)
{
    if (ex->trace)
        trace_finish(ex);
    end_upstream(ex, 0);
    endpoint_release(&ex->endpoint);
    leave_queue(ex);
    release_slot(ex);
    release_replay(ex);
    stat_dec(&http_stats(ex)->downstream_rq_active);
    free(ex->target);
    worker_t *w = ex->ds->c.w;
    w->live_exchanges--;
    if (w->nfree_exchanges < EXCHANGE_KEEP && ex->req.cap <= HEAD_STORAGE_KEEP &&
        ex->resp.cap <= HEAD_STORAGE_KEEP) {
        ex->next_free = w->free_exchanges;
        w->free_exchanges = ex;
        w->nfree_exchanges++;
        return;
    }
    h1_head_free(&ex->req);
    h1_head_free(&ex->resp);
    free(ex);
}

void exchange_free_list(worker_t *w)
{
    while (w->free_exchanges) {
        exchange_t *ex = w->free_exchanges;
        w->free_exchanges = ex->next_free;
        h1_head_free(&ex->req);
        h1_head_free(&ex->resp);
        free(ex);
    }
    w->nfree_exchanges = 0;
}

/* ---- local replies ---- */

/* Whether body bytes of the request are still to come (llhttp counts content_length down). */
static int request_has_body(const exchange_t *ex)
{
    const llhttp_t *p = &ex->ds->parser;
    return (p->flags & F_CHUNKED) || p->content_length > 0;
}

static void count_response(exchange_t *ex, int status)
{
    stat_inc(stat_class(&http_stats(ex)->downstream_rq_1xx, status));
    if (ex->route.target)
        stat_inc(stat_class(&ex->route.target->rq_1xx, status));
}

void fwd_local_reply(exchange_t *ex, int status, const char *body, int close)
{
    downstream_t *ds = ex->ds;
    end_upstream(ex, 0);
    leave_queue(ex);
    if (close || (ex->req_state != REQ_DONE && request_has_body(ex)) || ds->c.w->draining ||
        ex->upgrade)
        ex->keep_alive = 0;
    ex->status = status;
    ex->local_reply = 1;
    ex->resp_state = RESP_DONE;
    count_response(ex, status);
    if (ex->attempts > 0)
        stat_inc(stat_class(&ex->route.cluster->stats.upstream_rq_1xx, status));
    heads_send_local(&ds->c, ex, status, body);
    log_debug("%s: %d %s", ds->client_ip, status, body);
    if (ex->req_state == REQ_DONE)
        downstream_exchange_done(ds);
    else if (!ex->keep_alive)
        downstream_finish(ds);
    /* else: a bodiless request whose end llhttp reports next; the exchange ends then. */
}

/* ---- routing ---- */

static const char *header_value(void *ctx, const char *name, size_t *len)
{
    const exchange_t *ex = ctx;
    int i = h1_find(&ex->req, name);
    if (i < 0)
        return NULL;
    *len = ex->req.fields[i].value_len;
    return h1_value(&ex->req, (unsigned)i);
}

/* Splits "name", "name:port", "[v6]" or "[v6]:port"; returns 0, or -1 for a bad port. */
static int split_host(const char *host, size_t n, size_t *name_len, uint16_t *port)
{
    const char *colon = memrchr(host, ':', n);
    *name_len = n;
    *port = 0;
    if (!colon || (host[0] == '[' && memchr(colon, ']', (size_t)(host + n - colon))))
        return 0;
    if (host[0] != '[' && memchr(host, ':', (size_t)(colon - host)))
        return 0; /* a bare IPv6 literal */
    unsigned long v = 0;
    for (const char *p = colon + 1; p < host + n; p++) {
        if (*p < '0' || *p > '9' || (v = v * 10 + (unsigned)(*p - '0')) > 65535)
            return -1;
    }
    *name_len = (size_t)(colon - host);
    *port = (uint16_t)v;
    return 0;
}

/* Normalizes the request-target into ex->target (path) and ex->query, and fills the routing
 * view of the request. Returns 0 or UV_ENOMEM. */
static int prepare(exchange_t *ex, route_request_t *rr)
{
    const char *t = h1_start(&ex->req);
    size_t n = ex->req.start_len;
    size_t alen = 0;
    const char *authority = heads_authority(ex, &alen);
    if (authority) { /* absolute-form: the origin form starts after the authority */
        const char *rest = authority + alen;
        n -= (size_t)(rest - t);
        t = rest;
    }
    const char *q = memchr(t, '?', n);
    size_t plen = q ? (size_t)(q - t) : n;
    size_t qlen = q ? n - plen - 1 : 0;
    ex->target = malloc(plen + qlen + 3);
    if (!ex->target)
        return UV_ENOMEM;
    if (plen == 1 && t[0] == '*') { /* OPTIONS * */
        memcpy(ex->target, "*", 2);
        ex->target_len = 1;
    } else {
        ex->target_len = path_normalize(t, plen, ex->target);
    }
    if (q) {
        ex->query = ex->target + ex->target_len + 1;
        memcpy((char *)ex->query, q + 1, qlen);
        ((char *)ex->query)[qlen] = '\0';
        ex->query_len = qlen;
    }
    const char *host = authority;
    size_t hlen = alen;
    int hi = h1_find_id(&ex->req, H_HOST);
    if (!host && hi >= 0) {
        hlen = ex->req.fields[hi].value_len;
        host = h1_trim(h1_value(&ex->req, (unsigned)hi), &hlen);
    }
    *rr = (route_request_t){.method = ex->method,
                            .path = ex->target,
                            .path_len = ex->target_len,
                            .query = ex->query,
                            .query_len = ex->query_len,
                            .header = header_value,
                            .ctx = ex};
    if (host) {
        rr->host = host;
        if (split_host(host, hlen, &rr->host_len, &rr->port) != 0)
            rr->host_len = 0;
    }
    if (!rr->port && ex->ds->has_orig_dst)
        rr->port = endpoint_port(&ex->ds->orig_dst);
    return 0;
}

/* ALLOW_ALL: an unknown host goes where the app sent it: the iptables original destination,
 * else the Host when it is an IP literal. */
static int passthrough_endpoint(exchange_t *ex, const route_request_t *rr)
{
    downstream_t *ds = ex->ds;
    if (ds->has_orig_dst) {
        ex->endpoint = ds->orig_dst;
    } else {
        char ip[64];
        struct sockaddr_storage ss;
        const char *h = rr->host;
        size_t n = rr->host_len;
        if (n > 2 && h[0] == '[') {
            h++;
            n -= 2;
        }
        if (!h || n == 0 || n >= sizeof ip)
            return -1;
        memcpy(ip, h, n);
        ip[n] = '\0';
        uint16_t port = rr->port ? rr->port : 80;
        if (uv_ip4_addr(ip, port, (struct sockaddr_in *)&ss) != 0 &&
            uv_ip6_addr(ip, port, (struct sockaddr_in6 *)&ss) != 0)
            return -1;
        endpoint_set(&ex->endpoint, (struct sockaddr *)&ss);
    }
    server_t *s = ds->c.w->srv;
    uint16_t port = endpoint_port(&ex->endpoint);
    if ((port == s->set.egress_port || port == s->set.ingress_port) &&
        endpoint_is_local(&ex->endpoint))
        return -2; /* ourselves: a loop */
    return 0;
}

static void no_route_reply(exchange_t *ex, const route_request_t *rr)
{
    char body[600];
    if (ex->route.reason) {
        snprintf(body, sizeof body, "%s\n", ex->route.reason);
        fwd_local_reply(ex, ex->route.status, body, 0);
        return;
    }
    snprintf(body, sizeof body, "no virtual service for host \"%.*s\" among this node's backends\n",
             (int)(rr->host_len > 400 ? 400 : rr->host_len), rr->host ? rr->host : "");
    fwd_local_reply(ex, 404, body, 0);
}

/* ---- attempts ---- */

/* "<size in hex>\r\n", the chunk-size line of RFC 9112 §7.1; returns its length. */
static size_t chunk_line(size_t n, char out[24])
{
    static const char digits[] = "0123456789abcdef";
    char tmp[20];
    size_t len = 0, i = 0;
    do
        tmp[len++] = digits[n & 15];
    while ((n >>= 4) && len < sizeof tmp);
    while (len)
        out[i++] = tmp[--len];
    out[i++] = '\r';
    out[i++] = '\n';
    return i;
}

static int replay(exchange_t *ex)
{
    conn_t *c = &ex->up->c;
    for (unsigned i = 0; i < ex->nreplay; i++) {
        const replay_seg_t *s = &ex->replay[i];
        if (ex->req_out == BODY_CHUNKED) {
            char line[24];
            conn_write_copy(c, line, chunk_line(s->n, line));
        }
        conn_write(c, s->buf, s->p, s->n);
        if (ex->req_out == BODY_CHUNKED)
            conn_write(c, NULL, "\r\n", 2);
    }
    if (ex->req_state == REQ_DONE && ex->req_out == BODY_CHUNKED)
        conn_write(c, NULL, "0\r\n\r\n", 5);
    return 0;
}

/* Take a connection to ex->endpoint and send the request (head, and on a retry the body kept so
 * far). Returns 0, or an error when no connection could be had (nothing was sent). */
static int dispatch(exchange_t *ex, int fresh)
{
    downstream_t *ds = ex->ds;
    ex->pool = pool_get(ds->c.w, ex->route.cluster, &ex->endpoint);
    int reused = 0, err = UV_ENOMEM;
    upstream_t *up = ex->pool ? pool_acquire(ex->pool, fresh, &reused, &err) : NULL;
    if (!up) {
        log_warn("upstream %s: %s", ex->endpoint.name, err_str(err));
        return err;
    }
    ex->up = up;
    ex->reused = reused ? 1 : 0;
    upstream_attach(up, ex);
    stat_inc(&ex->route.cluster->stats.upstream_rq_total);
    stat_inc(&ex->route.cluster->stats.upstream_rq_active);
    if (ex->route.retry.per_try_ms)
        downstream_start_try_timer(ds, ex->route.retry.per_try_ms);
    int rc = heads_send_request(&up->c, ex);
    return rc ? rc : replay(ex);
}

/* Pick an endpoint (a different one on a retry, where there is one) and dispatch. */
static int start_attempt(exchange_t *ex)
{
    cluster_t *c = ex->route.cluster;
    if (!ex->route.passthrough) {
        endpoint_t previous = ex->endpoint;
        endpoint_release(&ex->endpoint);
        if (cluster_pick(c, ex->attempts ? &previous : NULL, uv_now(&ex->ds->c.w->loop),
                         &ex->endpoint) != 0)
            return ERR_NO_ENDPOINT;
    }
    ex->attempts++;
    if (ex->trace)
        xray_attempt_start(&ex->ds->c.w->xray, ex->trace, ex->endpoint.name);
    return dispatch(ex, 0);
}

static unsigned status_event(int status)
{
    unsigned e = 0;
    if (status == 409)
        e |= RETRY_CLIENT_ERROR;
    if (status >= 502 && status <= 504)
        e |= RETRY_GATEWAY_ERROR;
    if (status >= 500 && status <= 511 && status != 509)
        e |= RETRY_SERVER_ERROR;
    return e;
}

/* Try again under the route's retry policy when `event` is one it names (a per-try timeout
 * always is) and the request can be sent again. Returns 1 when a new attempt is under way. */
static int retry(exchange_t *ex, unsigned event)
{
    const retry_policy_t *p = &ex->route.retry;
    if (!(p->events & event) && !(event == RETRY_PER_TRY_TIMEOUT && p->per_try_ms))
        return 0;
    if (ex->attempts > p->max_retries || ex->resp_state != RESP_WAITING || ex->tunnel ||
        ex->replay_lost)
        return 0;
    stat_inc(&ex->route.cluster->stats.upstream_rq_retry);
    if (ex->route.target)
        stat_inc(&ex->route.target->retries);
    log_debug("upstream %s: retrying (attempt %u of %u)", ex->endpoint.name, ex->attempts + 1,
              p->max_retries + 1);
    end_upstream(ex, 0);
    h1_head_reset(&ex->resp);
    return start_attempt(ex) == 0;
}

/* A pooled connection can be closed by the upstream just as we reuse it (its keep-alive
 * timeout raced our request). Like nginx and HAProxy, an idempotent request with no body is
 * then sent once more on a fresh connection to the same endpoint (RFC 9112 §9.3.1). */
static int retry_stale(exchange_t *ex, int err)
{
    if (!ex->reused || ex->stale_retried || err == ERR_BAD_RESPONSE ||
        ex->resp_state != RESP_WAITING || ex->req_state != REQ_DONE || ex->req_out != BODY_NONE)
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
    ex->stale_retried = 1;
    end_upstream(ex, 0);
    int ok = dispatch(ex, 1) == 0;
    if (ok)
        log_debug("upstream %s: pooled connection was closed, request sent again", ex->pool->name);
    return ok;
}

/* ---- request path ---- */

/* Wait for a connectionPool slot (ingress), or overflow with a 503 like Envoy's circuit
 * breaker. Returns 1 when queued. */
static int queue_for_slot(exchange_t *ex)
{
    cluster_t *c = ex->route.cluster;
    unsigned pending = atomic_fetch_add(&c->pending_requests, 1);
    if (c->max_pending && pending >= c->max_pending) {
        atomic_fetch_sub(&c->pending_requests, 1);
        stat_inc(&c->stats.upstream_rq_pending_overflow);
        fwd_local_reply(ex, 503,
                        "upstream connection pool is full (maxConnections and "
                        "maxPendingRequests reached)\n",
                        0);
        return 0;
    }
    worker_t *w = ex->ds->c.w;
    ex->waiting = 1;
    ex->wait_prev = w->waiting_tail;
    ex->wait_next = NULL;
    if (w->waiting_tail)
        w->waiting_tail->wait_next = ex;
    else
        w->waiting_head = ex;
    w->waiting_tail = ex;
    stat_inc(&c->stats.upstream_rq_pending_total);
    stat_inc(&c->stats.upstream_rq_pending_active);
    downstream_start_request_timer(ex->ds, ex->route.timeout_ms);
    return 1;
}

void fwd_start_waiting(worker_t *w)
{
    while (w->waiting_head) {
        exchange_t *ex = w->waiting_head;
        if (!cluster_slot_take(ex->route.cluster))
            return;
        leave_queue(ex);
        ex->has_slot = 1;
        if (start_attempt(ex) != 0) {
            fwd_local_reply(ex, 503, "upstream connect error\n", 0);
            continue;
        }
        downstream_resume(ex->ds);
    }
}

/* The client's X-Request-Id, or a new one. */
static void request_id(exchange_t *ex)
{
    int i = h1_find_id(&ex->req, H_X_REQUEST_ID);
    if (i >= 0 && ex->req.fields[i].value_len > 0) {
        ex->request_id = h1_value(&ex->req, (unsigned)i);
        return;
    }
    heads_request_id(ex->ds->c.w, ex->request_id_buf);
    ex->request_id = ex->request_id_buf;
}

/* Tracing on: the incoming X-Amzn-Trace-Id is read, a decision made, and ours goes upstream. */
static int begin_trace(exchange_t *ex, const route_request_t *rr)
{
    worker_t *w = ex->ds->c.w;
    if (!w->srv->xray)
        return 0;
    ex->trace = &ex->trace_ctx;
    int i = h1_find_id(&ex->req, H_X_AMZN_TRACE_ID);
    xray_begin(w->srv->xray, &w->xray, ex->trace, ex->ds->listener->kind == LISTENER_EGRESS,
               i >= 0 ? h1_value(&ex->req, (unsigned)i) : NULL,
               i >= 0 ? ex->req.fields[i].value_len : 0, rr->host ? rr->host : "", rr->host_len,
               llhttp_method_name((llhttp_method_t)ex->method), ex->target, ex->target_len);
    return 0;
}

static void expect_continue(exchange_t *ex)
{
    int i = h1_find_id(&ex->req, H_EXPECT);
    if (i < 0 || ex->minor < 1 || ex->req_out == BODY_NONE ||
        !h1_list_has(h1_value(&ex->req, (unsigned)i), ex->req.fields[i].value_len, "100-continue",
                     12))
        return;
    /* We forward the body as it comes, so the client may send it now (RFC 9110 §10.1.1).
     * Expect is hop-by-hop in effect: the upstream does not see it. */
    ex->expect_continue = 1;
    conn_write(&ex->ds->c, NULL, "HTTP/1.1 100 Continue\r\n\r\n", 25);
}

int fwd_request_head(exchange_t *ex)
{
    downstream_t *ds = ex->ds;
    ex->req_state = REQ_BODY;
    /* RFC 9112 §3.2: a 1.1 request without exactly one Host is a 400. */
    int hosts = 0;
    for (unsigned i = 0; i < ex->req.nfields; i++)
        hosts += ex->req.fields[i].id == H_HOST;
    if ((ex->minor >= 1 && hosts == 0) || hosts > 1) {
        fwd_local_reply(ex, 400, hosts ? "more than one Host header\n" : "missing Host header\n",
                        1);
        return ds->closing;
    }
    route_request_t rr;
    request_id(ex);
    if (prepare(ex, &rr) != 0 || begin_trace(ex, &rr) != 0) {
        fwd_local_reply(ex, 503, "out of memory\n", 1);
        return 1;
    }
    if (ds->listener->kind == LISTENER_INGRESS)
        route_ingress(ds->c.w->routes, &ex->route);
    else
        route_egress(ds->c.w->routes, &rr, &ex->route);
    if (!ex->route.cluster) {
        no_route_reply(ex, &rr);
        return ds->closing;
    }
    if (ex->route.passthrough) {
        int rc = passthrough_endpoint(ex, &rr);
        if (rc != 0) {
            fwd_local_reply(ex, rc == -2 ? 508 : 502,
                            rc == -2 ? "the original destination is remora itself\n"
                                     : "cannot tell where this request was going: no original "
                                       "destination and the Host is not an address\n",
                            0);
            return ds->closing;
        }
    }
    const llhttp_t *p = &ds->parser;
    ex->req_out = (p->flags & F_CHUNKED) ? BODY_CHUNKED
                  : request_has_body(ex) ? BODY_LENGTH
                                         : BODY_NONE;
    expect_continue(ex);
    if (!cluster_slot_take(ex->route.cluster))
        return queue_for_slot(ex) || ds->closing;
    ex->has_slot = 1;
    if (start_attempt(ex) != 0) {
        fwd_local_reply(ex, 503,
                        cluster_size(ex->route.cluster) ? "upstream connect error\n"
                                                        : "no healthy upstream\n",
                        0);
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
    conn_write_copy(c, line, chunk_line(n, line));
    conn_write(c, b, p, n);
    conn_write(c, NULL, "\r\n", 2);
}

/* Keep body bytes for a retry, up to REPLAY_MAX_BYTES; past that the request is not retried. */
static void keep_for_replay(exchange_t *ex, buf_t *b, const char *p, size_t n)
{
    if (ex->replay_lost || (!ex->route.retry.max_retries && !ex->route.retry.per_try_ms))
        return;
    if (ex->nreplay == REPLAY_MAX_SEGS || ex->replay_bytes + n > REPLAY_MAX_BYTES) {
        ex->replay_lost = 1;
        release_replay(ex);
        return;
    }
    ex->replay[ex->nreplay++] = (replay_seg_t){buf_ref(b), p, n};
    ex->replay_bytes += n;
}

void fwd_request_body(exchange_t *ex, buf_t *b, const char *p, size_t n)
{
    if (ex->local_reply)
        return;
    keep_for_replay(ex, b, p, n);
    upstream_t *up = ex->up;
    if (!up)
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
    if (!ex->tunnel && !ex->waiting)
        downstream_start_request_timer(ex->ds, ex->route.timeout_ms);
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
    report(ex, status);
    unsigned event = status_event(status);
    if (event && retry(ex, event))
        return 0; /* this upstream is detached; the response is dropped with it */
    downstream_stop_try_timer(ds);
    if (ex->attempts > 1)
        stat_inc(&ex->route.cluster->stats.upstream_rq_retry_success);
    ex->status = status;
    stat_inc(stat_class(&ex->route.cluster->stats.upstream_rq_1xx, status));
    count_response(ex, status);
    if (status == 101) {
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
    if (heads_send_response(&ds->c, ex) != 0) {
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
    ex->resp_bytes += n;
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
    int connected = ex->up && ex->up->connected;
    if (!(ex->resp_state == RESP_WAITING && ex->reused && !ex->stale_retried))
        report(ex, err == ERR_BAD_RESPONSE ? 502 : 0);
    if (ex->resp_state == RESP_WAITING) {
        if (retry_stale(ex, err))
            return;
        if (err != ERR_BAD_RESPONSE &&
            retry(ex, connected ? RETRY_STREAM_ERROR : RETRY_CONNECTION_ERROR))
            return;
    }
    if (ex->resp_state == RESP_BODY && !ex->tunnel)
        stat_inc(&ex->route.cluster->stats.upstream_rq_rx_reset);
    end_upstream(ex, 0);
    if (ex->resp_state != RESP_WAITING) {
        /* Mid-response: the client must see a broken message, never a complete one. */
        if (!ex->tunnel)
            log_warn("upstream %s: %s mid-response; closing the client connection",
                     ex->endpoint.name, err_str(err));
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
        log_warn("upstream %s: %s before the response", ex->endpoint.name, err_str(err));
        fwd_local_reply(ex, 503, "upstream reset before response headers\n", 0);
    }
}

void fwd_client_gone(exchange_t *ex)
{
    log_debug("downstream %s: client went away", ex->ds->client_ip);
    downstream_abort(ex->ds); /* frees the exchange, which aborts the upstream request */
}

static void give_up(exchange_t *ex)
{
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

void fwd_timeout(exchange_t *ex)
{
    report(ex, 504);
    stat_inc(&http_stats(ex)->downstream_rq_timeout);
    stat_inc(&ex->route.cluster->stats.upstream_rq_timeout);
    log_warn("upstream %s: no complete response within %" PRIu64 " ms", ex->endpoint.name,
             ex->route.timeout_ms);
    give_up(ex);
}

void fwd_try_timeout(exchange_t *ex)
{
    report(ex, 504);
    stat_inc(&ex->route.cluster->stats.upstream_rq_per_try_timeout);
    if (retry(ex, RETRY_PER_TRY_TIMEOUT))
        return;
    stat_inc(&http_stats(ex)->downstream_rq_timeout);
    log_warn("upstream %s: no response within the per-try timeout of %" PRIu64 " ms",
             ex->endpoint.name, ex->route.retry.per_try_ms);
    give_up(ex);
}
