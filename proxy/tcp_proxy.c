#include "proxy/tcp_proxy.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "proxy/transport_tls.h"
#include "proxy/worker.h"

struct tcp_session {
    tq_node_t timeout; /* first: the connect queue hands the node back */
    struct worker *w;
    conn_t *up;
    route_table_t *rt;
    route_result_t route;
    const tcp_proxy_events_t *ev;
    void *ctx;
    endpoint_t ep;   /* being tried; holds the pick's reference */
    endpoint_t prev; /* the one that failed, avoided on the retry */
    struct sockaddr_storage dst;
    deferred_t start;         /* the first attempt, on the loop's next pass */
    uv_getaddrinfo_t resolve; /* a CONNECT target by name */
    char *host;
    uint16_t port;
    uint64_t connect_ns;
    unsigned attempts;
    unsigned resolving : 1;
    unsigned cancelled : 1;
};

static const conn_events_t quiet_events = {0};

static void try_connect(tcp_session_t *s);

static void session_free(tcp_session_t *s)
{
    worker_t *w = s->w;
    route_table_unref(s->rt);
    free(s->host);
    free(s);
    w->nconnecting--;
    worker_maybe_finish(w);
}

static void give_up(tcp_session_t *s, int err)
{
    if (!s->cancelled)
        s->ev->on_failed(s->ctx, err);
    session_free(s);
}

static void connected(tcp_session_t *s)
{
    cluster_t *c = s->route.cluster;
    cluster_done(c, &s->ep, 200, loop_now(&s->w->loop));
    hist_record_us(&c->stats.cx_connect_ms, (uv_hrtime() - s->connect_ns) / 1000);
    conn_t *up = s->up;
    s->up = NULL;
    if (s->cancelled) {
        conn_close(up);
    } else {
        stat_inc(&c->stats.upstream_cx_active);
        s->ev->on_connected(s->ctx, up);
    }
    session_free(s);
}

static void failed(tcp_session_t *s, int err)
{
    cluster_t *c = s->route.cluster;
    stat_inc(&c->stats.upstream_cx_connect_fail);
    cluster_done(c, &s->ep, 0, loop_now(&s->w->loop));
    conn_set_owner(s->up, &quiet_events, NULL);
    conn_close(s->up);
    s->up = NULL;
    const retry_policy_t *p = &s->route.retry;
    int retry = !s->cancelled && !s->route.passthrough && (p->events & RETRY_CONNECTION_ERROR) &&
                s->attempts <= p->max_retries && cluster_size(c) > 1;
    log_debug("tcp: connect to %s for %s failed: %s%s", s->ep.name, c->name, uv_strerror(err),
              retry ? "; trying another endpoint" : "");
    if (!retry) {
        give_up(s, err);
        return;
    }
    stat_inc(&c->stats.upstream_rq_retry);
    try_connect(s);
}

static void on_up_connect(void *owner, int status)
{
    tcp_session_t *s = owner;
    tq_del(&s->timeout);
    if (status == 0)
        connected(s);
    else
        failed(s, status);
}

static const conn_events_t up_events = {.on_connect = on_up_connect};

void tcp_proxy_expired(tq_node_t *n)
{
    tcp_session_t *s = (tcp_session_t *)n;
    stat_inc(&s->route.cluster->stats.upstream_cx_connect_timeout);
    failed(s, UV_ETIMEDOUT);
}

static int pick(tcp_session_t *s)
{
    if (s->route.passthrough)
        return endpoint_set(&s->ep, (const struct sockaddr *)&s->dst);
    return cluster_pick(s->route.cluster, s->attempts > 1 ? &s->prev : NULL, loop_now(&s->w->loop),
                        &s->ep);
}

static void try_connect(tcp_session_t *s)
{
    cluster_t *c = s->route.cluster;
    s->prev = s->ep;
    s->attempts++;
    if (pick(s) != 0) {
        log_debug("tcp: %s has no endpoint", c->name);
        give_up(s, UV_EHOSTUNREACH);
        return;
    }
    if (worker_is_own_listener(s->w, &s->ep)) {
        log_warn("tcp: refusing a connection to %s: it is remora's own listener", s->ep.name);
        endpoint_release(&s->ep);
        give_up(s, UV_ELOOP);
        return;
    }
    const struct sockaddr *sa = (const struct sockaddr *)&s->ep.addr;
    s->up = conn_new(&s->w->loop);
    if (!s->up || (s->route.tls && transport_tls_client(s->up, s->route.tls, &c->ssl, sa) != 0)) {
        if (s->up)
            conn_close(s->up);
        s->up = NULL;
        endpoint_release(&s->ep);
        give_up(s, UV_ENOMEM);
        return;
    }
    stat_inc(&c->stats.upstream_cx_total);
    s->connect_ns = uv_hrtime();
    s->up->rx_bytes = &c->stats.upstream_cx_rx_bytes_total;
    s->up->tx_bytes = &c->stats.upstream_cx_tx_bytes_total;
    conn_set_owner(s->up, &up_events, s);
    conn_connect(s->up, sa);
    tq_add(&s->w->tcp_connect_q, &s->timeout);
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    tcp_session_t *s = req->data;
    s->resolving = 0;
    if (status == 0 && res && res->ai_addrlen <= sizeof s->dst)
        memcpy(&s->dst, res->ai_addr, res->ai_addrlen);
    uv_freeaddrinfo(res);
    if (status != 0 || s->cancelled) {
        log_debug("tcp: cannot resolve %s: %s", s->host, uv_strerror(status));
        give_up(s, status ? status : UV_ECANCELED);
        return;
    }
    try_connect(s);
}

/* Where a passthrough goes: dst, an address literal, or a name looked up on the loop (1). */
static int resolve(tcp_session_t *s)
{
    if (!s->host)
        return 0;
    if (uv_ip4_addr(s->host, s->port, (struct sockaddr_in *)&s->dst) == 0 ||
        uv_ip6_addr(s->host, s->port, (struct sockaddr_in6 *)&s->dst) == 0)
        return 0;
    char service[8];
    snprintf(service, sizeof service, "%u", s->port);
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_family = AF_UNSPEC};
    s->resolve.data = s;
    int err = uv_getaddrinfo(&s->w->loop.uv, &s->resolve, on_resolved, s->host, service, &hints);
    s->resolving = err == 0;
    return err == 0 ? 1 : err;
}

static void on_start(deferred_t *d)
{
    tcp_session_t *s = (tcp_session_t *)(void *)((char *)d - offsetof(tcp_session_t, start));
    int rc = s->cancelled ? UV_ECANCELED : s->route.passthrough ? resolve(s) : 0;
    if (rc == 0)
        try_connect(s);
    else if (rc < 0)
        give_up(s, rc);
}

tcp_session_t *tcp_proxy_connect(worker_t *w, const route_result_t *route, route_table_t *rt,
                                 const struct sockaddr *dst, const char *host, uint16_t port,
                                 const tcp_proxy_events_t *ev, void *ctx)
{
    tcp_session_t *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->w = w;
    s->route = *route;
    s->rt = route_table_ref(rt);
    s->ev = ev;
    s->ctx = ctx;
    if (dst)
        memcpy(&s->dst, dst,
               dst->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                          : sizeof(struct sockaddr_in));
    if (host && !(s->host = strdup(host))) {
        route_table_unref(s->rt);
        free(s);
        return NULL;
    }
    s->port = port;
    w->nconnecting++;
    s->start.fn = on_start; /* never an event from inside this call */
    loop_defer(&w->loop, &s->start);
    return s;
}

void tcp_proxy_cancel(tcp_session_t *s)
{
    s->cancelled = 1; /* the session ends on its own, silently */
    if (s->resolving)
        uv_cancel((uv_req_t *)&s->resolve);
}

/* ---- a client connection relayed ---- */

typedef struct relayed {
    worker_t *w;
    conn_t *client;
    cluster_t *cluster;
    uint64_t idle_ms;
    unsigned slot : 1;
} relayed_t;

static void relay_connected(void *ctx, conn_t *up)
{
    relayed_t *r = ctx;
    worker_start_relay(r->w, r->client, NULL, NULL, 0, up, NULL, NULL, 0, r->idle_ms, r->cluster,
                       r->slot);
    free(r);
}

static void relay_failed(void *ctx, int err)
{
    (void)err;
    relayed_t *r = ctx;
    conn_close(r->client);
    if (r->slot)
        cluster_slot_release(r->cluster);
    free(r);
}

static const tcp_proxy_events_t relay_events = {.on_connected = relay_connected,
                                                .on_failed = relay_failed};

void tcp_proxy_start(worker_t *w, conn_t *client, const route_result_t *route, route_table_t *rt,
                     const struct sockaddr *dst)
{
    relayed_t *r = route->cluster ? calloc(1, sizeof *r) : NULL;
    if (!r) {
        conn_close(client);
        return;
    }
    *r =
        (relayed_t){.w = w, .client = client, .cluster = route->cluster, .idle_ms = route->idle_ms};
    conn_set_owner(client, &quiet_events, NULL);
    if (!cluster_slot_take(route->cluster, route->max_requests)) {
        stat_inc(&route->cluster->stats.upstream_cx_overflow);
        log_debug("tcp: %s is at its %u connections", route->cluster->name, route->max_requests);
        relay_failed(r, UV_EBUSY);
        return;
    }
    r->slot = 1;
    if (!tcp_proxy_connect(w, route, rt, dst, NULL, 0, &relay_events, r))
        relay_failed(r, UV_ENOMEM);
}

/* ---- a TLS client, relayed once its handshake is done ---- */

typedef struct gated {
    tq_node_t timeout; /* first: the handshake queue hands the node back */
    worker_t *w;
    conn_t *client;
    route_result_t route;
    route_table_t *rt; /* held: what the route points at stays valid */
} gated_t;

static void gate_free(gated_t *g)
{
    worker_t *w = g->w;
    tq_del(&g->timeout);
    route_table_unref(g->rt);
    free(g);
    w->nconnecting--;
    worker_maybe_finish(w);
}

static void gate_refuse(gated_t *g)
{
    conn_set_owner(g->client, &quiet_events, NULL);
    conn_close(g->client);
    gate_free(g);
}

static void on_gate_open(void *owner, int status)
{
    gated_t *g = owner;
    if (status != 0) {
        gate_refuse(g);
        return;
    }
    conn_read(g->client, 0); /* early plaintext waits in the transport for the relay */
    tcp_proxy_start(g->w, g->client, &g->route, g->rt, NULL);
    gate_free(g);
}

static void on_gate_eof(void *owner, int err)
{
    (void)err; /* the handshake failed, or the client left before it was done */
    gate_refuse(owner);
}

static const conn_events_t gate_events = {.on_connect = on_gate_open, .on_eof = on_gate_eof};

void tcp_proxy_handshake_expired(tq_node_t *n)
{
    gated_t *g = (gated_t *)n;
    log_debug("tcp: TLS handshake not done in time; closing the client");
    gate_refuse(g);
}

void tcp_proxy_start_after_handshake(worker_t *w, conn_t *client, const route_result_t *route,
                                     route_table_t *rt)
{
    gated_t *g = calloc(1, sizeof *g);
    if (!g) {
        conn_close(client);
        return;
    }
    *g = (gated_t){.w = w, .client = client, .route = *route, .rt = route_table_ref(rt)};
    w->nconnecting++; /* a drain waits for it, as for a connect */
    tq_add(&w->tls_handshake_q, &g->timeout);
    conn_set_owner(client, &gate_events, g);
    conn_read(client, 1); /* the handshake's records come in through the read side */
}
