/* The exchange's policy: route, admit, pick, send, relay, retry, time out, and map every
 * failure to what the client sees. No protocol byte is written here: the codecs frame. */
#include <arpa/inet.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/err.h"
#include "base/log.h"
#include "http/grpc.h"
#include "proxy/exchange_impl.h"
#include "proxy/headers.h"
#include "proxy/relay.h"
#include "proxy/server.h"
#include "proxy/worker.h"
#include "routing/path.h"

#define RETRY_PER_TRY_TIMEOUT (1u << 30) /* not an App Mesh event: retried under any policy */

static cluster_stats_t *cstats(exchange_t *ex)
{
    return &ex->route.cluster->stats;
}

static uint64_t now_ms(exchange_t *ex)
{
    return uv_now(&ex->w->loop.uv);
}

static void count_response(exchange_t *ex, int status)
{
    stat_inc(stat_class(&exchange_http_stats(ex)->downstream_rq_1xx, status));
    if (ex->route.target)
        stat_inc(stat_class(&ex->route.target->rq_1xx, status));
}

/* Tells the cluster how this attempt ended (outlier detection) and lets go of its endpoint;
 * status 0 is a connect failure or a reset. */
static void report(exchange_t *ex, int status)
{
    if (ex->trace)
        xray_attempt_end(ex->trace, status);
    if (ex->endpoint.state)
        cluster_done(ex->route.cluster, &ex->endpoint, status, now_ms(ex));
}

/* Lets the upstream stream go; `clean`: its connection may carry another, and reads again
 * (a pause for a slow client that the response outlasted ends here: a resume). */
static void release_upstream(exchange_t *ex, int clean)
{
    client_stream_t *cs = ex->cs;
    if (!cs)
        return;
    ex->cs = NULL;
    ex->try_deadline = 0;
    if (ex->upstream_paused && clean)
        stat_inc(&cstats(ex)->upstream_flow_control_resumed_reading_total);
    ex->upstream_paused = 0;
    stat_dec(&cstats(ex)->upstream_rq_active);
    cs->ops->release(cs, clean);
}

void fwd_drop_upstream(exchange_t *ex)
{
    release_upstream(ex, 0);
}

/* ---- local replies ---- */

static void local_reply(exchange_t *ex, int status, const char *body);

void fwd_local_reply(exchange_t *ex, int status, const char *body)
{
    local_reply(ex, status, body);
}

static void send_reply(exchange_t *ex, int status, const char *body);
static void send_grpc_reply(exchange_t *ex, int status, const char *body);

/* Counted and logged with the HTTP status it stands for, whichever form the client gets. */
static void local_reply(exchange_t *ex, int status, const char *body)
{
    fwd_drop_upstream(ex);
    pool_done(&ex->w->pools, &ex->wait);
    ex->status = status;
    ex->local_reply = 1;
    ex->resp_state = RESP_DONE;
    count_response(ex, status);
    if (ex->attempts > 0) {
        stat_inc(stat_class(&cstats(ex)->upstream_rq_1xx, status));
        cluster_count_code(ex->route.cluster, status);
    }
    log_debug("%s: %d %s", ex->peer, status, body);
    if (ex->grpc)
        send_grpc_reply(ex, status, body);
    else
        send_reply(ex, status, body);
}

/* A Trailers-Only answer: one HEADERS with the status, no body. */
static void send_grpc_reply(exchange_t *ex, int status, const char *body)
{
    head_t *h = head_take(&ex->w->loop);
    if (!h || grpc_reply_head(h, grpc_status_for_http(status), body) != 0) {
        head_give(&ex->w->loop, h);
        exchange_end(ex, 1);
        return;
    }
    unsigned msg = MSG_END | (ex->req_state == REQ_DONE ? 0 : MSG_CLOSE);
    ex->ss->ops->send_head(ex->ss, h, 0, msg);
    head_give(&ex->w->loop, h);
    ex->ss->ops->send_end(ex->ss, NULL);
    exchange_end(ex, 0);
}

static void send_reply(exchange_t *ex, int status, const char *body)
{
    head_t *h = head_take(&ex->w->loop);
    size_t n = strlen(body);
    ex->reply_bytes = (uint32_t)n;
    if (!h || head_add_field(h, "Content-Type", 12, "text/plain", 10) != 0) {
        head_give(&ex->w->loop, h);
        exchange_end(ex, 1);
        return;
    }
    h->status = (uint16_t)status;
    /* The rest of a request body is not read after an early answer: the connection closes. */
    unsigned msg = ex->req_state == REQ_DONE ? 0 : MSG_CLOSE;
    ex->ss->ops->send_head(ex->ss, h, (int64_t)n, msg);
    head_give(&ex->w->loop, h);
    buf_t *b = buf_new(&ex->w->loop.bufs, n);
    if (b) {
        memcpy(b->data, body, n);
        b->len = (uint32_t)n;
        ex->ss->ops->send_data(ex->ss, b, b->data, n);
        buf_unref(b);
    }
    ex->ss->ops->send_end(ex->ss, NULL);
    exchange_end(ex, 0);
}

/* ---- the request, as routing sees it ---- */

static const char *header_value(void *ctx, const char *name, size_t *len)
{
    const exchange_t *ex = ctx;
    int i = head_find(ex->req, name, strlen(name));
    if (i < 0)
        return NULL;
    *len = ex->req->fields[i].value_len;
    return field_value(ex->req, (unsigned)i);
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

/* The authority of an absolute-form request-target (RFC 9112 §3.2.2), or NULL. */
static const char *target_authority(const char *t, size_t len, size_t *n)
{
    const char *sep = len > 3 && t[0] != '/' ? memmem(t, len, "://", 3) : NULL;
    if (!sep)
        return NULL;
    const char *auth = sep + 3, *end = auth;
    while (end < t + len && *end != '/' && *end != '?')
        end++;
    *n = (size_t)(end - auth);
    return *n ? auth : NULL;
}

/* Normalizes the request-target into ex->target (path, then ?query) and fills the routing
 * view of the request. Returns 0 or UV_ENOMEM. */
static int prepare(exchange_t *ex, route_request_t *rr, const char **query, size_t *qlen)
{
    const head_t *h = ex->req;
    const char *t = head_str(h, h->target);
    size_t n = h->target_len;
    const char *authority = target_authority(t, n, &ex->authority_len);
    if (authority) { /* absolute-form: the origin form starts after the authority */
        const char *rest = authority + ex->authority_len;
        n -= (size_t)(rest - t);
        t = rest;
        /* Copied: editing the head for the upstream may move its bytes. */
        if (!(ex->authority = arena_strndup(&ex->arena, authority, ex->authority_len)))
            return UV_ENOMEM;
    }
    const char *q = memchr(t, '?', n);
    size_t plen = q ? (size_t)(q - t) : n;
    *qlen = q ? n - plen - 1 : 0;
    char *out = arena_alloc(&ex->arena, plen + *qlen + 4);
    if (!out)
        return UV_ENOMEM;
    if (plen == 1 && t[0] == '*') { /* OPTIONS * */
        out[0] = '*';
        ex->path_len = 1;
    } else {
        ex->path_len = path_normalize(t, plen, out);
    }
    out[ex->path_len] = '\0';
    ex->target = out;
    ex->target_len = ex->path_len;
    *query = NULL;
    if (q) {
        out[ex->path_len] = '?';
        memcpy(out + ex->path_len + 1, q + 1, *qlen);
        out[ex->path_len + 1 + *qlen] = '\0';
        ex->target_len += 1 + *qlen;
        *query = out + ex->path_len + 1;
    }
    const char *host = ex->authority;
    size_t hlen = host ? ex->authority_len : 0;
    int hi = head_find_id(h, F_HOST, 0);
    if (!host && hi >= 0) {
        hlen = h->fields[hi].value_len;
        host = field_value(h, (unsigned)hi);
    }
    *rr = (route_request_t){.method = h->method,
                            .path = ex->target,
                            .path_len = ex->path_len,
                            .query = *query,
                            .query_len = *qlen,
                            .header = header_value,
                            .ctx = ex,
                            .scheme = ex->secure ? "https" : "http"};
    if (host) {
        rr->host = host;
        if (split_host(host, hlen, &rr->host_len, &rr->port) != 0)
            rr->host_len = 0;
    }
    endpoint_t dst;
    if (!rr->port && ex->ss->orig_dst && endpoint_set(&dst, ex->ss->orig_dst) == 0)
        rr->port = endpoint_port(&dst);
    return 0;
}

/* The port the client meant to reach before iptables REDIRECT, 0 when not redirected. */
static uint16_t orig_port(const exchange_t *ex)
{
    endpoint_t dst;
    if (!ex->ss->orig_dst || endpoint_set(&dst, ex->ss->orig_dst) != 0)
        return 0;
    return endpoint_port(&dst);
}

/* ALLOW_ALL: an unknown host goes where the app sent it: the iptables original destination,
 * else the Host when it is an IP literal. */
static int passthrough_endpoint(exchange_t *ex, const route_request_t *rr)
{
    if (ex->ss->orig_dst) {
        endpoint_set(&ex->endpoint, ex->ss->orig_dst);
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
    return worker_is_own_listener(ex->w, &ex->endpoint) ? -2 : 0; /* ourselves: a loop */
}

static void no_route_reply(exchange_t *ex, const route_request_t *rr)
{
    char body[600];
    exchange_flag(ex, RF_NR, "route_not_found");
    if (ex->route.reason) {
        snprintf(body, sizeof body, "%s\n", ex->route.reason);
        local_reply(ex, ex->route.status, body);
        return;
    }
    snprintf(body, sizeof body, "no virtual service for host \"%.*s\" among this node's backends\n",
             (int)(rr->host_len > 400 ? 400 : rr->host_len), rr->host ? rr->host : "");
    local_reply(ex, 404, body);
}

/* ---- attempts ---- */

static void trace_header(exchange_t *ex, char *out, size_t cap, size_t *n)
{
    *n = ex->trace ? xray_outgoing(ex->trace, out, cap) : 0;
}

/* What a gRPC upstream is told it has (grpc-timeout): the client's deadline, or the route's
 * timeout when that ends first (before the request's end it has not started: all of it is
 * still ahead). */
static uint64_t grpc_time_left(exchange_t *ex)
{
    uint64_t now = now_ms(ex);
    uint64_t d = ex->request_deadline ? ex->request_deadline : ex->grpc_deadline;
    uint64_t left = d > now ? d - now : 1;
    if (ex->req_state != REQ_DONE && ex->route.timeout_ms && ex->route.timeout_ms < left)
        left = ex->route.timeout_ms;
    return left;
}

/* Send the request on ex->cs: the head, and on a retry the body kept so far. */
static int send_request(exchange_t *ex)
{
    if (!ex->req_edited) { /* once: a retry sends the same head again */
        char trace[TRACE_ID_LEN + SPAN_ID_LEN + TRACE_EXTRA_MAX + 40];
        size_t tlen;
        trace_header(ex, trace, sizeof trace, &tlen);
        request_edit_t e = {
            .target = ex->target,
            .target_len = ex->target_len,
            .authority = ex->authority,
            .authority_len = ex->authority_len,
            .default_host = ex->endpoint.name,
            .client_ip = ex->peer,
            .request_id = ex->request_id,
            .trace = ex->trace ? trace : NULL,
            .trace_len = tlen,
            .drop_expect = ex->continued,
            .secure = ex->secure,
        };
        int err = headers_edit_request(ex->req, &e);
        if (err)
            return err;
        ex->req_edited = 1;
    }
    if (ex->grpc_deadline && grpc_set_timeout(ex->req, grpc_time_left(ex)) != 0)
        return ERR_TOO_LARGE;
    ex->cs->ops->send_head(ex->cs, ex->req, ex->req_len, ex->req_msg & (MSG_UPGRADE | MSG_END));
    for (unsigned i = 0; i < ex->nreplay; i++)
        ex->cs->ops->send_data(ex->cs, ex->replay[i].buf, ex->replay[i].p, ex->replay[i].n);
    if (ex->req_state == REQ_DONE && !(ex->req_msg & MSG_END))
        ex->cs->ops->send_end(ex->cs, ex->req_trailers);
    return 0;
}

/* Take a stream to ex->endpoint and send the request. Every failure, even one found at once,
 * comes back through fwd_upstream_error on a later pass. */
static void dispatch(exchange_t *ex, int fresh);

static void no_stream(exchange_t *ex)
{
    fwd_upstream_error(ex, UV_ENOMEM);
}

static void dispatch(exchange_t *ex, int fresh)
{
    ex->cs = pool_stream(&ex->w->pools, ex->route.cluster, &ex->endpoint, ex->route.tls,
                         ex->route.upstream_h2, fresh, &exchange_upstream_events, ex);
    if (!ex->cs) {
        exchange_later(ex, no_stream);
        return;
    }
    stat_inc(&cstats(ex)->upstream_rq_total);
    stat_inc(&cstats(ex)->upstream_rq_active);
    if (ex->route.retry.per_try_ms) {
        ex->try_deadline = now_ms(ex) + ex->route.retry.per_try_ms;
        exchange_set_timer(ex);
    }
    if (send_request(ex) != 0) {
        log_warn("upstream %s: cannot build the request head", ex->endpoint.name);
        exchange_flag(ex, 0, "request_head_too_large_to_send");
        local_reply(ex, 502, "request head too large to send upstream\n");
    }
}

static void no_endpoint(exchange_t *ex)
{
    exchange_flag(ex, RF_UH, "no_healthy_upstream");
    local_reply(ex, 503,
                cluster_size(ex->route.cluster) ? "upstream connect error\n"
                                                : "no healthy upstream\n");
}

/* Pick an endpoint (a different one on a retry, where there is one) and dispatch. */
static void start_attempt(exchange_t *ex)
{
    if (!ex->route.passthrough) {
        endpoint_t previous = ex->endpoint;
        endpoint_release(&ex->endpoint);
        if (cluster_pick(ex->route.cluster, ex->attempts ? &previous : NULL, now_ms(ex),
                         &ex->endpoint) != 0) {
            exchange_later(ex, no_endpoint);
            return;
        }
    }
    ex->attempts++;
    if (ex->trace)
        xray_attempt_start(&ex->w->xray, ex->trace, ex->endpoint.name);
    dispatch(ex, 0);
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
    if (status == 503)
        e |= RETRY_HTTP_503; /* App Mesh's default policy retries 503 alone */
    return e;
}

/* The grpcRetryEvents bit of a grpc-status, or 0. */
static unsigned grpc_status_event(int status)
{
    switch (status) {
    case GRPC_CANCELLED:
        return GRPC_RETRY_CANCELLED;
    case GRPC_DEADLINE_EXCEEDED:
        return GRPC_RETRY_DEADLINE_EXCEEDED;
    case GRPC_INTERNAL:
        return GRPC_RETRY_INTERNAL;
    case GRPC_RESOURCE_EXHAUSTED:
        return GRPC_RETRY_RESOURCE_EXHAUSTED;
    case GRPC_UNAVAILABLE:
        return GRPC_RETRY_UNAVAILABLE;
    default:
        return 0;
    }
}

/* The grpcRetryEvents bit of a Trailers-Only response's grpc-status, or 0. */
static unsigned grpc_event(const head_t *h, unsigned msg)
{
    if (!(msg & MSG_END))
        return 0; /* a status in trailers comes after the body went to the client */
    return grpc_status_event(grpc_status_of(h));
}

/* A gRPC status the route's retry events name is an error to a rollout (SPEC §8), in a
 * Trailers-Only head or in trailers; a 5xx is one already. */
static void count_grpc_status(exchange_t *ex, const head_t *h)
{
    if (ex->grpc && h && ex->route.target && ex->status < 500 &&
        (ex->route.retry.grpc_events & grpc_status_event(grpc_status_of(h))))
        stat_inc(&ex->route.target->grpc_errors);
}

/* Try again under the route's retry policy when `event` (or the gRPC `gevent`) is one it
 * names (a per-try timeout always is) and the request can be sent again. Returns 1 when a new
 * attempt is under way. */
static int retry(exchange_t *ex, unsigned event, unsigned gevent)
{
    const retry_policy_t *p = &ex->route.retry;
    if (!(p->events & event) && !(p->grpc_events & gevent) &&
        !(event == RETRY_PER_TRY_TIMEOUT && p->per_try_ms))
        return 0;
    if (ex->attempts > p->max_retries) {
        ex->rflags |= RF_URX; /* the policy would retry this, but no retry is left */
        stat_inc(&cstats(ex)->upstream_rq_retry_limit_exceeded);
        return 0;
    }
    if (ex->resp_state != RESP_WAITING || ex->replay_lost || (ex->req_msg & MSG_UPGRADE))
        return 0;
    stat_inc(&cstats(ex)->upstream_rq_retry);
    if (ex->route.target)
        stat_inc(&ex->route.target->retries);
    log_debug("upstream %s: retrying (attempt %u of %u)", ex->endpoint.name, ex->attempts + 1,
              p->max_retries + 1);
    fwd_drop_upstream(ex);
    start_attempt(ex);
    return 1;
}

/* A pooled connection can be closed by the upstream just as we reuse it (its keep-alive
 * timeout raced our request). Like nginx and HAProxy, an idempotent request with no body is
 * then sent once more on a fresh connection to the same endpoint (RFC 9112 §9.3.1). */
static int retry_stale(exchange_t *ex, int err, int reused)
{
    if (!reused || ex->stale_retried || err == ERR_BAD_RESPONSE || ex->resp_state != RESP_WAITING ||
        ex->req_state != REQ_DONE || !(ex->req_msg & MSG_END) ||
        !http_method_idempotent(ex->req->method))
        return 0;
    ex->stale_retried = 1;
    fwd_drop_upstream(ex);
    log_debug("upstream %s: pooled connection was closed, request sent again", ex->endpoint.name);
    dispatch(ex, 1);
    return 1;
}

/* Whether every byte of the request body sent so far can be sent again. */
static int replayable(const exchange_t *ex)
{
    const retry_policy_t *p = &ex->route.retry;
    return (ex->req_msg & MSG_END) || (!ex->replay_lost && (p->max_retries || p->per_try_ms));
}

/* An HTTP/2 upstream refused the stream, or its GOAWAY left the stream unprocessed: it did no
 * work (RFC 9113 §8.7), so the request goes again, once, whatever its method. */
static int retry_refused(exchange_t *ex)
{
    if (ex->refused_retried || ex->resp_state != RESP_WAITING || !replayable(ex))
        return 0;
    ex->refused_retried = 1;
    fwd_drop_upstream(ex);
    log_debug("upstream %s: stream refused, request sent again", ex->endpoint.name);
    dispatch(ex, 0);
    return 1;
}

/* ---- the request ---- */

static void log_begin(exchange_t *ex);

/* The client's X-Request-Id, or a new one. */
static void request_id(exchange_t *ex)
{
    int i = head_find_id(ex->req, F_X_REQUEST_ID, 0);
    if (i >= 0 && ex->req->fields[i].value_len > 0) { /* copied: the head's bytes may move */
        ex->request_id = arena_strndup(&ex->arena, field_value(ex->req, (unsigned)i),
                                       ex->req->fields[i].value_len);
        if (ex->request_id)
            return;
    }
    char *id = arena_alloc(&ex->arena, 37);
    if (id)
        worker_request_id(ex->w, id);
    ex->request_id = id ? id : "";
}

/* A virtual gateway's request: the first gateway route that takes it rewrites it (path, Host)
 * and sends it to its virtual service, under the gateway listener's connection pool. Returns
 * -1 when it has answered instead: no gateway route, 404 naming the host and path. */
static int gateway_route(exchange_t *ex, const route_request_t *rr)
{
    uint16_t port = ex->listener->port; /* the gateway's listener it came to */
    size_t cap = ex->target_len + ROUTE_REWRITE_SLACK;
    route_rewrite_t rw = {.target = arena_alloc(&ex->arena, cap), .cap = cap};
    if (!rw.target) {
        exchange_flag(ex, 0, "out_of_memory");
        local_reply(ex, 503, "out of memory\n");
        return -1;
    }
    if (!route_gateway(ex->rt, port, rr, &rw, &ex->route)) {
        char body[700];
        exchange_flag(ex, RF_NR, "route_not_found");
        snprintf(body, sizeof body, "no gateway route for host \"%.*s\" and path \"%.*s\"\n",
                 (int)(rr->host_len > 300 ? 300 : rr->host_len), rr->host ? rr->host : "",
                 (int)(ex->path_len > 300 ? 300 : ex->path_len), ex->target);
        local_reply(ex, 404, body);
        return -1;
    }
    ex->client_target = ex->target;
    ex->client_target_len = ex->target_len;
    ex->client_path_len = ex->path_len;
    ex->target = rw.target;
    ex->target_len = rw.target_len;
    ex->path_len = rw.path_len;
    if (rw.host) { /* becomes the Host upstream (headers.c) */
        ex->authority = rw.host;
        ex->authority_len = strlen(rw.host);
    }
    const route_listener_t *gl = route_ingress(ex->rt, port);
    ex->route.max_requests = gl->r.max_requests;
    ex->route.max_pending = gl->r.max_pending;
    return 0;
}

/* Tracing on: the incoming X-Amzn-Trace-Id is read, a decision made, and ours goes upstream. */
static void begin_trace(exchange_t *ex, const route_request_t *rr)
{
    worker_t *w = ex->w;
    if (!w->srv->xray)
        return;
    ex->trace = &ex->trace_ctx;
    int i = head_find_id(ex->req, F_X_AMZN_TRACE_ID, 0);
    xray_begin(w->srv->xray, &w->xray, ex->trace, ex->listener->kind == LISTENER_EGRESS,
               i >= 0 ? field_value(ex->req, (unsigned)i) : NULL,
               i >= 0 ? ex->req->fields[i].value_len : 0, rr->host ? rr->host : "", rr->host_len,
               http_method_name(ex->req->method), ex->target, ex->path_len);
}

/* Admitted under the connection-pool limits (or refused: 503 like Envoy's circuit breaker). */
void fwd_admitted(exchange_t *ex, int result)
{
    if (result == POOL_FULL) {
        exchange_flag(ex, RF_UO, "upstream_reset_before_response_started{overflow}");
        local_reply(ex, 503,
                    "upstream connection pool is full (maxConnections and "
                    "maxPendingRequests reached)\n");
        return;
    }
    if (ex->client_paused) {
        ex->client_paused = 0;
        ex->ss->ops->pause(ex->ss, 0);
    }
    start_attempt(ex);
}

static int64_t content_length(const head_t *h)
{
    int i = head_find_id(h, F_CONTENT_LENGTH, 0);
    if (i < 0)
        return -1;
    int64_t v = 0;
    const char *p = field_value(h, (unsigned)i);
    for (uint32_t k = 0; k < h->fields[i].value_len; k++)
        v = v * 10 + (p[k] - '0'); /* the parser accepted only 1*DIGIT below 2^63 */
    return v;
}

/* When the request times out: the route's timeout once `started` (from the end of the request,
 * as Envoy counts it), and the gRPC client's deadline, whichever comes first. */
static uint64_t request_deadline(exchange_t *ex, int started)
{
    uint64_t d = started && ex->route.timeout_ms ? now_ms(ex) + ex->route.timeout_ms : 0;
    return ex->grpc_deadline && (!d || ex->grpc_deadline < d) ? ex->grpc_deadline : d;
}

/* A gRPC request: remora's answers to it are gRPC's, and its grpc-timeout is a deadline. */
static void grpc_request(exchange_t *ex, const head_t *h)
{
    uint64_t ms;
    ex->grpc = grpc_is_request(h) ? 1 : 0;
    ex->grpc_deadline = ex->grpc && grpc_timeout_ms(h, &ms) ? now_ms(ex) + (ms ? ms : 1) : 0;
}

void fwd_request_head(exchange_t *ex, head_t *h, unsigned msg)
{
    ex->req = h;
    ex->req_msg = msg;
    ex->req_state = msg & MSG_END ? REQ_DONE : REQ_BODY;
    ex->req_end_ns = msg & MSG_END ? ex->start_ns : 0;
    ex->req_len = msg & MSG_END ? 0 : msg & MSG_CHUNKED ? BODY_STREAM : content_length(h);
    if (ex->w->alog)
        log_begin(ex);
    headers_mark_hop(h);
    grpc_request(ex, h);
    if (h->method == HTTP_CONNECT) {
        if (ex->listener->kind == LISTENER_EGRESS) {
            connect_request(ex);
        } else {
            exchange_flag(ex, 0, "connect_on_ingress");
            local_reply(ex, 501, "CONNECT is served by the egress listener only\n");
        }
        return;
    }
    route_request_t rr;
    const char *query;
    size_t qlen;
    request_id(ex);
    if (prepare(ex, &rr, &query, &qlen) != 0) {
        exchange_flag(ex, 0, "out_of_memory");
        local_reply(ex, 503, "out of memory\n");
        return;
    }
    begin_trace(ex, &rr);
    if (ex->listener->kind == LISTENER_INGRESS)
        ex->route = route_ingress(ex->rt, orig_port(ex))->r;
    else if (ex->listener->kind == LISTENER_GATEWAY) {
        if (gateway_route(ex, &rr) != 0)
            return;
    } else
        route_egress(ex->rt, &rr, &ex->route);
    if (!ex->route.cluster) {
        no_route_reply(ex, &rr);
        return;
    }
    if (ex->route.passthrough) {
        int rc = passthrough_endpoint(ex, &rr);
        if (rc != 0) {
            exchange_flag(ex, 0, rc == -2 ? "passthrough_loop" : "passthrough_no_destination");
            local_reply(ex, rc == -2 ? 508 : 502,
                        rc == -2 ? "the original destination is remora itself\n"
                                 : "cannot tell where this request was going: no original "
                                   "destination and the Host is not an address\n");
            return;
        }
    }
    if ((msg & MSG_CONTINUE) && ex->req_state != REQ_DONE) {
        /* We forward the body as it comes, so the client may send it now (RFC 9110 §10.1.1);
         * Expect is then hop-by-hop in effect: the upstream does not see it. */
        ex->continued = 1;
        ex->ss->ops->send_continue(ex->ss);
    }
    ex->idle_deadline = ex->req_state == REQ_BODY ? now_ms(ex) + ex->route.idle_ms : 0;
    ex->wait.cluster = ex->route.cluster;
    ex->wait.max_requests = ex->route.max_requests;
    ex->wait.max_pending = ex->route.max_pending;
    /* Bodiless: no on_end comes. A gRPC client's deadline runs from now either way. */
    ex->request_deadline = request_deadline(ex, ex->req_state == REQ_DONE);
    if (pool_admit(&ex->w->pools, &ex->wait)) {
        start_attempt(ex);
    } else if (!ex->ended) { /* waits for a slot (or the refusal) with its body held */
        ex->client_paused = 1;
        ex->ss->ops->pause(ex->ss, 1);
        ex->request_deadline = request_deadline(ex, 1);
    }
    exchange_set_timer(ex);
}

/* Keep body bytes for a retry, up to REPLAY_MAX_BYTES; past that the request is not retried. */
static void keep_for_replay(exchange_t *ex, buf_t *b, const char *p, size_t n)
{
    if (ex->replay_lost || (!ex->route.retry.max_retries && !ex->route.retry.per_try_ms))
        return;
    if (ex->nreplay == REPLAY_MAX_SEGS || ex->replay_bytes + n > REPLAY_MAX_BYTES) {
        ex->replay_lost = 1;
        for (unsigned i = 0; i < ex->nreplay; i++)
            buf_unref(ex->replay[i].buf);
        ex->nreplay = 0;
        ex->replay_bytes = 0;
        return;
    }
    ex->replay[ex->nreplay++] = (replay_seg_t){buf_ref(b), p, n};
    ex->replay_bytes += n;
}

void fwd_request_data(exchange_t *ex, buf_t *b, const char *p, size_t n)
{
    ex->req_bytes += n;
    if (ex->ended || ex->local_reply)
        return;
    if (ex->route.idle_ms)
        ex->idle_deadline = now_ms(ex) + ex->route.idle_ms;
    keep_for_replay(ex, b, p, n);
    if (!ex->cs)
        return;
    ex->cs->ops->send_data(ex->cs, b, p, n);
    if (!ex->client_paused && ex->cs->ops->over_high_water(ex->cs)) {
        stat_inc(&cstats(ex)->upstream_flow_control_backed_up_total);
        ex->client_paused = 1;
        ex->ss->ops->pause(ex->ss, 1);
    }
}

void fwd_upstream_drained(exchange_t *ex)
{
    if (ex->client_paused && !ex->wait.queued) {
        stat_inc(&cstats(ex)->upstream_flow_control_drained_total);
        ex->client_paused = 0;
        ex->ss->ops->pause(ex->ss, 0);
    }
}

void fwd_request_end(exchange_t *ex, head_t *trailers)
{
    ex->req_state = REQ_DONE;
    ex->req_end_ns = uv_hrtime();
    ex->req_trailers = trailers;
    ex->idle_deadline = 0;
    if (ex->ended)
        return;
    if (ex->cs)
        ex->cs->ops->send_end(ex->cs, trailers);
    if (!ex->wait.queued)
        ex->request_deadline = request_deadline(ex, 1);
    exchange_set_timer(ex);
}

void fwd_client_error(exchange_t *ex, int err)
{
    if (ex->ended)
        return;
    if (err == ERR_BAD_REQUEST)
        exchange_flag(ex, RF_DPE, "downstream_protocol_error");
    else if (server_state(ex->w->srv) == SERVER_STOPPED) /* the drain deadline cut it */
        exchange_flag(ex, RF_LR, "downstream_local_disconnect");
    else
        exchange_flag(ex, RF_DC, "downstream_remote_disconnect");
    if (err == ERR_BAD_REQUEST && ex->resp_state == RESP_WAITING) {
        local_reply(ex, 400, "malformed request body\n");
        return;
    }
    log_debug("downstream %s: %s", ex->peer, err_str(err));
    exchange_end(ex, 1); /* releases the upstream stream, which aborts the upstream request */
}

/* ---- the response ---- */

static void start_tunnel(exchange_t *ex);

void fwd_response_head(exchange_t *ex, head_t *h, unsigned msg)
{
    if (ex->ended) {
        head_give(&ex->w->loop, h);
        return;
    }
    int status = h->status;
    if (status == 101 && !(ex->req_msg & MSG_UPGRADE)) {
        head_give(&ex->w->loop, h);
        fwd_upstream_error(ex, ERR_BAD_RESPONSE); /* switching protocols nobody asked for */
        return;
    }
    report(ex, status);
    unsigned event = status_event(status), gevent = ex->grpc ? grpc_event(h, msg) : 0;
    if ((event || gevent) && retry(ex, event, gevent)) {
        head_give(&ex->w->loop, h);
        return; /* this upstream is released; its response is dropped with it */
    }
    ex->try_deadline = 0;
    if (ex->attempts > 1 && !(ex->rflags & RF_URX)) /* a retry got what was not retried */
        stat_inc(&cstats(ex)->upstream_rq_retry_success);
    ex->status = status;
    if (ex->alog) {
        ex->resp_head_ns = uv_hrtime();
        ex->resp_kept = access_log_keep_response(ex->alog, h, &ex->arena);
    }
    stat_inc(stat_class(&cstats(ex)->upstream_rq_1xx, status));
    cluster_count_code(ex->route.cluster, status);
    count_response(ex, status);
    if (msg & MSG_END)
        count_grpc_status(ex, h);
    headers_mark_hop(h); /* the codec forwards what is left: no copy */
    int64_t len = msg & MSG_END ? 0 : msg & MSG_CHUNKED ? BODY_STREAM : content_length(h);
    ex->resp_state = msg & MSG_END ? RESP_DONE : RESP_BODY;
    if (len < 0)
        len = BODY_STREAM;
    ex->ss->ops->send_head(ex->ss, h, len, status == 101 ? MSG_UPGRADE : 0);
    head_give(&ex->w->loop, h);
    if (status == 101) {
        start_tunnel(ex);
        return;
    }
    if (ex->resp_state == RESP_DONE)
        fwd_response_end(ex, NULL);
}

void fwd_response_data(exchange_t *ex, buf_t *b, const char *p, size_t n)
{
    if (ex->ended)
        return;
    ex->resp_bytes += n;
    ex->ss->ops->send_data(ex->ss, b, p, n);
    if (!ex->upstream_paused && ex->ss->ops->over_high_water(ex->ss)) {
        stat_inc(&cstats(ex)->upstream_flow_control_paused_reading_total);
        ex->upstream_paused = 1;
        ex->cs->ops->pause(ex->cs, 1);
    }
}

void fwd_client_drained(exchange_t *ex)
{
    if (ex->upstream_paused && ex->cs) {
        stat_inc(&cstats(ex)->upstream_flow_control_resumed_reading_total);
        ex->upstream_paused = 0;
        ex->cs->ops->pause(ex->cs, 0);
    }
}

void fwd_response_end(exchange_t *ex, head_t *trailers)
{
    if (ex->ended) {
        head_give(&ex->w->loop, trailers);
        return;
    }
    ex->resp_state = RESP_DONE;
    count_grpc_status(ex, trailers);
    ex->ss->ops->send_end(ex->ss, trailers);
    head_give(&ex->w->loop, trailers);
    if (ex->req_end_ns) /* Envoy's upstream_rq_time: from the end of the request */
        hist_record_us(&cstats(ex)->rq_time, (uv_hrtime() - ex->req_end_ns) / 1000);
    release_upstream(ex, ex->req_state == REQ_DONE);
    exchange_end(ex, 0);
}

/* ---- tunnels ---- */

static void start_tunnel(exchange_t *ex)
{
    buf_t *cb, *ub;
    const char *cp, *up;
    size_t cn, un;
    client_stream_t *cs = ex->cs;
    server_stream_t *ss = ex->ss;
    ex->cs = NULL;
    ex->ss = NULL;
    stat_dec(&cstats(ex)->upstream_rq_active);
    conn_t *uc = cs->ops->detach(cs, &ub, &up, &un);
    conn_t *dc = ss->ops->detach(ss, &cb, &cp, &cn);
    worker_start_relay(ex->w, dc, cb, cp, cn, uc, ub, up, un, ex->route.idle_ms, NULL, 0);
    ex->resp_state = RESP_DONE;
    exchange_end(ex, 0);
}

/* ---- failures ---- */

void fwd_upstream_error(exchange_t *ex, int err)
{
    if (ex->ended)
        return;
    int connected = ex->cs && ex->cs->connected;
    int reused = ex->cs && ex->cs->reused;
    if (!connected)
        ex->upstream_err = err; /* kept even when a retry works, as Envoy keeps it */
    if (!(ex->resp_state == RESP_WAITING && reused && !ex->stale_retried))
        report(ex, err == ERR_BAD_RESPONSE ? 502 : 0);
    if (ex->resp_state == RESP_WAITING) {
        if ((err == ERR_REFUSED && retry_refused(ex)) || retry_stale(ex, err, reused))
            return;
        if (err != ERR_BAD_RESPONSE &&
            retry(ex, connected ? RETRY_STREAM_ERROR : RETRY_CONNECTION_ERROR, 0))
            return;
    }
    if (ex->resp_state == RESP_BODY)
        stat_inc(&cstats(ex)->upstream_rq_rx_reset);
    fwd_drop_upstream(ex);
    if (ex->resp_state != RESP_WAITING) {
        /* Mid-response: the client must see a broken message, never a complete one. */
        log_warn("upstream %s: %s mid-response; closing the client connection", ex->endpoint.name,
                 err_str(err));
        if (err == ERR_BAD_RESPONSE)
            exchange_flag(ex, RF_UPE, "upstream_reset_after_response_started{protocol_error}");
        else
            exchange_flag(ex, RF_UC,
                          "upstream_reset_after_response_started{connection_termination}");
        exchange_end(ex, 1);
        return;
    }
    if (err == ERR_BAD_RESPONSE) {
        exchange_flag(ex, RF_UPE, "upstream_reset_before_response_started{protocol_error}");
        local_reply(ex, 502, "upstream sent an invalid response\n");
    } else if (!connected) {
        log_warn("upstream %s: connect failed: %s", ex->endpoint.name, err_str(err));
        exchange_flag(ex, RF_UF, "upstream_reset_before_response_started{connection_failure}");
        local_reply(ex, 503, "upstream connect error\n");
    } else {
        log_warn("upstream %s: %s before the response", ex->endpoint.name, err_str(err));
        exchange_flag(ex, RF_UC, "upstream_reset_before_response_started{connection_termination}");
        local_reply(ex, 503, "upstream reset before response headers\n");
    }
}

static void give_up(exchange_t *ex)
{
    if (ex->resp_state == RESP_WAITING) {
        local_reply(ex, 504, "upstream request timeout\n");
        return;
    }
    fwd_drop_upstream(ex);
    exchange_end(ex, 1);
}

static void request_timeout(exchange_t *ex)
{
    exchange_flag(ex, RF_UT, "upstream_response_timeout");
    report(ex, 504);
    stat_inc(&exchange_http_stats(ex)->downstream_rq_timeout);
    stat_inc(&cstats(ex)->upstream_rq_timeout);
    log_warn("upstream %s: no complete response within %" PRIu64 " ms", ex->endpoint.name,
             ex->route.timeout_ms);
    give_up(ex);
}

static void try_timeout(exchange_t *ex)
{
    report(ex, 504);
    stat_inc(&cstats(ex)->upstream_rq_per_try_timeout);
    if (retry(ex, RETRY_PER_TRY_TIMEOUT, 0))
        return;
    exchange_flag(ex, RF_UT, "upstream_per_try_timeout");
    stat_inc(&exchange_http_stats(ex)->downstream_rq_timeout);
    log_warn("upstream %s: no response within the per-try timeout of %" PRIu64 " ms",
             ex->endpoint.name, ex->route.retry.per_try_ms);
    give_up(ex);
}

/* The client stalled mid-body: as Envoy's stream idle timeout, 408 if we can. */
static void idle_timeout(exchange_t *ex)
{
    stat_inc(&exchange_http_stats(ex)->downstream_cx_idle_timeout);
    exchange_flag(ex, RF_SI, "stream_idle_timeout");
    if (ex->resp_state == RESP_WAITING)
        local_reply(ex, 408, "request timeout: the request body stalled\n");
    else
        exchange_end(ex, 1);
}

void fwd_timer(exchange_t *ex, uint64_t now)
{
    if (ex->idle_deadline && now >= ex->idle_deadline) {
        idle_timeout(ex);
    } else if (ex->try_deadline && now >= ex->try_deadline) {
        ex->try_deadline = 0;
        try_timeout(ex);
    } else if (ex->request_deadline && now >= ex->request_deadline) {
        request_timeout(ex);
    } else {
        exchange_set_timer(ex); /* fired early: a deadline moved later */
    }
}

/* ---- the end, as access logs and traces see it ---- */

/* The request head arrived: the log of the worker's snapshot is this exchange's from now on,
 * as the route table is (a reload changes neither for it). */
static void log_begin(exchange_t *ex)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ex->alog = access_log_ref(ex->w->alog);
    ex->start_sec = (int64_t)ts.tv_sec;
    ex->start_nsec = (uint32_t)ts.tv_nsec;
}

/* Milliseconds from the request head to `t` (uv_hrtime), -1 when `t` has not come. */
static int64_t since_start(const exchange_t *ex, uint64_t t)
{
    return t ? (int64_t)((t - ex->start_ns) / 1000000) : -1;
}

/* A sampled request, for /ui's recent traces. */
static void remember_trace(exchange_t *ex, const xray_request_t *r)
{
    recent_trace_t t = {.status = ex->status,
                        .duration_ms = (unsigned)since_start(ex, uv_hrtime()),
                        .egress = ex->trace->egress};
    uv_timeval64_t tv;
    uv_gettimeofday(&tv);
    t.time_ms = (uint64_t)tv.tv_sec * 1000 + (uint64_t)tv.tv_usec / 1000;
    snprintf(t.trace_id, sizeof t.trace_id, "%s", ex->trace->trace_id);
    snprintf(t.method, sizeof t.method, "%s", r->method);
    snprintf(t.host, sizeof t.host, "%.*s", (int)r->host_len, r->host);
    snprintf(t.path, sizeof t.path, "%.*s", (int)r->path_len, r->path);
    snprintf(t.service, sizeof t.service, "%s", r->service ? r->service : "");
    recent_add(&ex->w->srv->recent, &t);
}

/* One line for this exchange, into the worker's buffer of the log; the reference goes. */
static void log_exchange(exchange_t *ex)
{
    const char *details = ex->details;
    if (!details)
        details = ex->local_reply ? "local_reply" : ex->status ? "via_upstream" : NULL;
    access_log_entry_t e = {
        .req = ex->req,
        .path = ex->target,
        .path_len = ex->target_len,
        .authority = ex->authority,
        .authority_len = ex->authority_len,
        .request_id = ex->request_id,
        .resp = ex->resp_kept,
        .start_sec = ex->start_sec,
        .start_nsec = ex->start_nsec,
        .duration_ms = since_start(ex, uv_hrtime()),
        .request_ms = since_start(ex, ex->req_end_ns),
        .response_ms = since_start(ex, ex->resp_head_ns),
        .bytes_received = ex->req_bytes,
        .bytes_sent = ex->local_reply ? ex->reply_bytes : ex->resp_bytes,
        .status = (unsigned)ex->status,
        .attempts = ex->attempts,
        .flags = ex->rflags,
        .details = details,
        .upstream_host = ex->endpoint.name[0] ? ex->endpoint.name : NULL,
        .upstream_cluster = ex->route.cluster ? ex->route.cluster->name : NULL,
        .upstream_failure = ex->upstream_err ? err_str(ex->upstream_err) : NULL,
        .client_ip = ex->peer,
        .local = ex->ss ? ex->ss->orig_dst : NULL,
        .secure = ex->secure,
    };
    access_log_write(ex->alog, &ex->w->alog_w, &e);
    access_log_unref(ex->alog);
    ex->alog = NULL;
}

void fwd_finish(exchange_t *ex)
{
    if (ex->alog)
        log_exchange(ex);
    if (!ex->trace)
        return;
    const head_t *h = ex->req;
    const char *url = ex->client_target ? ex->client_target : ex->target;
    size_t url_len = ex->client_target ? ex->client_target_len : ex->target_len;
    size_t url_path_len = ex->client_target ? ex->client_path_len : ex->path_len;
    int i = head_find_id(h, F_HOST, 0), ua = head_find_id(h, F_USER_AGENT, 0);
    int xff = head_find_id(h, F_X_FORWARDED_FOR, 0);
    size_t ip_len = 0;
    char ip[64];
    if (xff >= 0) { /* the first address of the chain, as the SDKs take it */
        const char *v = field_value(h, (unsigned)xff);
        ip_len = strcspn(v, ",");
        const char *t = trim_ows(v, &ip_len);
        snprintf(ip, sizeof ip, "%.*s", (int)ip_len, t);
    }
    xray_request_t r = {
        .rollout = ex->route.rollout,
        .rollout_weight = ex->route.rollout_weight,
        .method = http_method_name(h->method),
        .host = i >= 0 ? field_value(h, (unsigned)i) : "",
        .host_len = i >= 0 ? h->fields[i].value_len : 0,
        .path = url ? url : "",
        .path_len = url ? url_path_len : 0,
        .query = url && url_len > url_path_len ? url + url_path_len + 1 : NULL,
        .query_len = url_len > url_path_len ? url_len - url_path_len - 1 : 0,
        .user_agent = ua >= 0 ? field_value(h, (unsigned)ua) : NULL,
        .user_agent_len = ua >= 0 ? h->fields[ua].value_len : 0,
        .client_ip = xff >= 0 && ip_len ? ip : ex->peer,
        .client_ip_from_xff = xff >= 0 && ip_len,
        .service = ex->route.service ? ex->route.service : "passthrough",
        .secure = ex->secure,
        .status = ex->status,
        .content_length = ex->resp_state == RESP_DONE ? (int64_t)ex->resp_bytes : -1,
    };
    if (ex->trace->sampled)
        remember_trace(ex, &r);
    xray_finish(ex->w->srv->xray, &ex->w->xray, ex->trace, &r);
    ex->trace = NULL;
}
