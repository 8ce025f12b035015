#include "proxy/worker.h"

#include <arpa/inet.h>
#include <endian.h>
#include <errno.h>
#include <linux/netfilter_ipv4.h>
#include <linux/netfilter_ipv6/ip6_tables.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include "base/log.h"
#include "proxy/exchange.h"
#include "proxy/server.h"
#include "proxy/tcp_proxy.h"
#include "proxy/transport_tls.h"

static uint64_t worker_random(worker_t *w)
{
    /* xorshift64* */
    uint64_t x = w->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    w->rng = x;
    return x * 0x2545f4914f6cdd1dull;
}

/* The 8 lower-case hex digits of x, most significant first, computed on all of them at once:
 * each nibble spread to a byte of its own, the bytes put in writing order, then '0' added to
 * each, and 39 more to those above 9 (so 10 becomes 'a'). */
static void hex8(uint32_t x, char out[8])
{
    const uint64_t ones = UINT64_C(0x0101010101010101);
    uint64_t d = x;
    d = (d | d << 16) & UINT64_C(0x0000ffff0000ffff);
    d = (d | d << 8) & UINT64_C(0x00ff00ff00ff00ff);
    d = (d | d << 4) & (ones * 0x0f); /* byte k holds nibble k, least significant first */
    d = __builtin_bswap64(d);         /* byte k holds nibble 7 - k */
    d += ones * '0' + ((d + ones * 6) >> 4 & ones) * 39;
    d = htole64(d); /* byte k first */
    memcpy(out, &d, 8);
}

void worker_request_id(worker_t *w, char out[37])
{
    /* RFC 9562 version 4: xxxxxxxx-xxxx-4xxx-Nxxx-xxxxxxxxxxxx, N one of 8, 9, a, b; the other
     * 122 bits random. */
    uint64_t a = worker_random(w), b = worker_random(w);
    char mid[8];
    hex8((uint32_t)(a >> 32), out);
    out[8] = '-';
    hex8((uint32_t)a, mid);
    memcpy(out + 9, mid, 4);
    out[13] = '-';
    memcpy(out + 14, mid + 4, 4);
    out[14] = '4';
    out[18] = '-';
    hex8((uint32_t)(b >> 32), mid);
    memcpy(out + 19, mid, 4);
    out[19] = "89ab"[b >> 62];
    out[23] = '-';
    memcpy(out + 24, mid + 4, 4);
    hex8((uint32_t)b, out + 28);
    out[36] = '\0';
}

static void on_prepare(uv_prepare_t *h)
{
    worker_t *w = h->data;
    loop_pass(&w->loop);
    access_log_worker_flush(&w->alog_w);  /* lets go of access log slots written out */
    qsbr_quiescent(&w->srv->qsbr, w->id); /* no endpoint set is held across iterations */
}

static void on_check(uv_check_t *h)
{
    worker_t *w = h->data;
    loop_pass(&w->loop);
}

/* ---- accepting ---- */

/* Where the app meant to connect before iptables REDIRECT sent it here (SO_ORIGINAL_DST).
 * A connection made straight to the listener has none. */
static int original_destination(conn_t *c, uint16_t egress_port, struct sockaddr_storage *ss)
{
    uv_os_fd_t fd;
    socklen_t len = sizeof *ss;
    if (uv_fileno((uv_handle_t *)&c->tcp, &fd) != 0)
        return 0;
    if (getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, ss, &len) != 0) {
        len = sizeof *ss;
        if (getsockopt(fd, SOL_IPV6, IP6T_SO_ORIGINAL_DST, ss, &len) != 0)
            return 0;
    }
    uint16_t port = ss->ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)ss)->sin6_port)
                                              : ntohs(((struct sockaddr_in *)ss)->sin_port);
    return port != egress_port; /* not redirected: the "original" is the listener itself */
}

static uint16_t port_of(const struct sockaddr_storage *ss)
{
    return ss->ss_family == AF_INET6 ? ntohs(((const struct sockaddr_in6 *)ss)->sin6_port)
                                     : ntohs(((const struct sockaddr_in *)ss)->sin_port);
}

/* Ingress: the node listener the connection is for (by its original destination port) says
 * TLS or not, HTTP or bytes. */
static void serve_ingress(worker_t *w, listener_t *l, conn_t *c, const struct sockaddr_storage *dst)
{
    /* A gateway's listener is its own port; ingress is one port for every node listener. */
    uint16_t port = l->kind == LISTENER_GATEWAY ? l->port : dst ? port_of(dst) : 0;
    const route_listener_t *rl = route_ingress(w->routes, port);
    if (rl->tls &&
        transport_tls_server(c, rl->tls, &l->slot->ssl, rl->tls_mode == TLS_PERMISSIVE) != 0) {
        conn_close(c);
        return;
    }
    if (rl->tcp && rl->tls && rl->tls_mode != TLS_PERMISSIVE)
        tcp_proxy_start_after_handshake(w, c, &rl->r, w->routes);
    else if (rl->tcp)
        tcp_proxy_start(w, c, &rl->r, w->routes, NULL);
    else
        h2_server_accept(&l->h2, c, (const struct sockaddr *)dst); /* HTTP/2 or HTTP/1.1 */
}

/* Egress: a redirected connection is routed by its original destination port first (TCP
 * backends), then by Host (HTTP); one to no backend port goes where the app sent it under
 * ALLOW_ALL, as bytes (so TLS and any other protocol pass too). */
static void serve_egress(worker_t *w, listener_t *l, conn_t *c, const struct sockaddr_storage *dst)
{
    route_result_t r;
    enum route_port kind = dst ? route_egress_port(w->routes, port_of(dst), &r) : PORT_HTTP;
    if (kind == PORT_NONE && route_egress_passthrough(w->routes, &r))
        kind = PORT_TCP;
    if (kind == PORT_TCP)
        tcp_proxy_start(w, c, &r, w->routes, (const struct sockaddr *)dst);
    else
        h2_server_accept(&l->h2, c, (const struct sockaddr *)dst); /* HTTP/2 or HTTP/1.1 */
}

static void on_connection(uv_stream_t *server, int status)
{
    listener_t *l = server->data;
    worker_t *w = l->w;
    if (status < 0) {
        log_warn("accept on %s listener: %s", l->kind == LISTENER_EGRESS ? "egress" : "ingress",
                 uv_strerror(status));
        return;
    }
    conn_t *c = conn_new(&w->loop);
    if (!c)
        return;
    if (conn_accept(c, server) != 0) {
        conn_close(c);
        return;
    }
    listener_stats_t *ls = &l->slot->cx;
    stat_inc(&ls->downstream_cx_total);
    stat_inc(&ls->downstream_cx_active);
    c->accepted_by = ls;
    struct sockaddr_storage dst;
    int redirected = original_destination(c, l->port, &dst);
    if (l->kind != LISTENER_EGRESS) /* a gateway's listener is served as ingress is */
        serve_ingress(w, l, c, redirected ? &dst : NULL);
    else
        serve_egress(w, l, c, redirected ? &dst : NULL);
}

int worker_is_own_listener(worker_t *w, const endpoint_t *ep)
{
    uint16_t port = endpoint_port(ep);
    const settings_t *set = &w->srv->set;
    if (!endpoint_is_local(ep) && !host_addrs_has(&w->srv->host_addrs, &ep->addr))
        return 0;
    for (unsigned i = 0; i < w->nlisteners; i++)
        if (port == w->listeners[i].port)
            return 1;
    return port == set->admin_port;
}

_Static_assert(WORKER_MAX_LISTENERS >= GATEWAY_MAX_LISTENERS, "a gateway's listeners must fit");

static uint64_t idle_ms(worker_t *w, const listener_t *l)
{
    return l->kind == LISTENER_EGRESS ? ROUTE_DEFAULT_IDLE_MS
                                      : route_ingress(w->routes, l->port)->r.idle_ms;
}

static void maybe_finish(worker_t *w);

static void on_conn_closed(void *owner)
{
    listener_t *l = owner;
    maybe_finish(l->w);
}

/* A listening socket of our own so that SO_REUSEPORT is set before bind (libuv 1.44 has no flag
 * for it): every worker binds the same port and the kernel spreads connections over them. */
static int listen_socket(uv_loop_t *loop, uv_tcp_t *h, void *owner, int family, uint16_t port)
{
    struct sockaddr_storage ss = {0};
    socklen_t len;
    if (family == AF_INET6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        a->sin6_family = AF_INET6, a->sin6_port = htons(port), a->sin6_addr = in6addr_any;
        len = sizeof *a;
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        a->sin_family = AF_INET, a->sin_port = htons(port), a->sin_addr.s_addr = htonl(INADDR_ANY);
        len = sizeof *a;
    }
    int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0 ||
        (family == AF_INET6 && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one) < 0) ||
        bind(fd, (struct sockaddr *)&ss, len) < 0) {
        int err = -errno;
        close(fd);
        return err;
    }
    uv_tcp_init(loop, h);
    h->data = owner;
    int err = uv_tcp_open(h, fd);
    if (err == 0)
        err = uv_listen((uv_stream_t *)h, 4096, on_connection);
    if (err < 0)
        uv_close((uv_handle_t *)h, NULL);
    return err;
}

/* IPv4 always; IPv6 too where the host has it (interception of IPv6 needs it: ip6tables
 * REDIRECT goes to [::]:port). */
static int listener_open(worker_t *w, unsigned i)
{
    server_t *s = w->srv;
    listener_t *l = &w->listeners[i];
    enum listener_kind kind = s->listeners[i].kind;
    uint16_t port = s->listeners[i].port;
    l->w = w;
    l->kind = kind; /* copied from the slot: what every connection asks */
    l->port = port;
    l->slot = &s->listeners[i];
    l->h1 = (h1_server_config_t){
        .loop = &w->loop,
        .handler = &exchange_handler,
        .owner = l,
        .stats = kind != LISTENER_EGRESS ? &s->ingress_stats : &s->egress_stats,
        .on_closed = on_conn_closed,
    };
    h1_server_config_init(&l->h1, s->set.header_timeout_ms, idle_ms(w, l));
    l->h2 = (h2_server_config_t){
        .loop = &w->loop,
        .handler = &exchange_handler,
        .owner = l,
        .stats = l->h1.stats,
        .h1 = &l->h1,
        .on_closed = on_conn_closed,
    };
    h2_server_config_init(&l->h2, s->set.header_timeout_ms, idle_ms(w, l));
    int err = listen_socket(&w->loop.uv, &l->tcp, l, AF_INET, port);
    if (err < 0)
        return err;
    l->open = 1;
    err = listen_socket(&w->loop.uv, &l->tcp6, l, AF_INET6, port);
    l->open6 = err == 0;
    if (err < 0 && err != UV_EAFNOSUPPORT && err != UV_EADDRNOTAVAIL)
        log_warn("cannot listen on [::]:%u (%s): IPv6 connections will not be served", port,
                 uv_strerror(err));
    return 0;
}

static void listener_close(listener_t *l)
{
    if (l->open6)
        uv_close((uv_handle_t *)&l->tcp6, NULL);
    l->open6 = 0;
    if (!l->open)
        return;
    l->open = 0;
    uv_close((uv_handle_t *)&l->tcp, NULL);
}

/* ---- tunnels ---- */

static void on_tunnel_closed(void *ctx)
{
    tunnel_t *t = ctx;
    worker_t *w = t->w;
    if (t->cluster)
        stat_dec(&t->cluster->stats.upstream_cx_active);
    if (t->slot)
        cluster_slot_release(t->cluster);
    if (t->prev)
        t->prev->next = t->next;
    else
        w->tunnels = t->next;
    if (t->next)
        t->next->prev = t->prev;
    w->ntunnels--;
    free(t);
    maybe_finish(w);
}

void worker_start_relay(worker_t *w, conn_t *client, buf_t *cb, const char *cp, size_t cn,
                        conn_t *upstream, buf_t *ub, const char *up, size_t un, uint64_t idle_ms,
                        cluster_t *cluster, int slot)
{
    tunnel_t *t = calloc(1, sizeof *t);
    if (!t) {
        relay_start(client, cb, cp, cn, upstream, ub, up, un, idle_ms, NULL);
        if (cluster)
            stat_dec(&cluster->stats.upstream_cx_active);
        if (slot)
            cluster_slot_release(cluster);
        return;
    }
    t->w = w;
    t->cluster = cluster;
    t->slot = slot;
    t->owner = (relay_owner_t){.on_closed = on_tunnel_closed, .ctx = t};
    t->next = w->tunnels;
    if (w->tunnels)
        w->tunnels->prev = t;
    w->tunnels = t;
    w->ntunnels++;
    t->relay = relay_start(client, cb, cp, cn, upstream, ub, up, un, idle_ms, &t->owner);
}

/* ---- draining and the end ---- */

void worker_maybe_finish(worker_t *w)
{
    maybe_finish(w);
}

/* Once draining and every client connection and tunnel is gone, release what is left and let
 * the loop end. */
static void maybe_finish(worker_t *w)
{
    if (!w->draining || w->ntunnels > 0 || w->nconnecting > 0)
        return;
    for (unsigned i = 0; i < w->nlisteners; i++)
        if (w->listeners[i].h1.nconns > 0 || w->listeners[i].h2.nconns > 0)
            return;
    loop_pass(&w->loop); /* exchanges still queued for release go first */
    pool_close_idle(&w->pools);
    if (uv_is_closing((uv_handle_t *)&w->wake))
        return;
    /* Connections close their own handles; these are the worker's. */
    exchange_close_kept(w);
    pool_table_close(&w->pools);
    tq_close(&w->tcp_connect_q);
    tq_close(&w->tls_handshake_q);
    access_log_worker_close(&w->alog_w); /* what is left is written as the loop ends */
    for (unsigned i = 0; i < w->nlisteners; i++) {
        h1_server_config_close(&w->listeners[i].h1);
        h2_server_config_close(&w->listeners[i].h2);
    }
    uv_mutex_lock(&w->wake_lock);
    w->wake_closed = 1;
    uv_mutex_unlock(&w->wake_lock);
    uv_close((uv_handle_t *)&w->wake, NULL);
    uv_close((uv_handle_t *)&w->prepare, NULL);
    uv_close((uv_handle_t *)&w->check, NULL);
    uv_close((uv_handle_t *)&w->housekeeping, NULL);
}

static void adopt_routes(worker_t *w)
{
    route_table_t *next = atomic_exchange(&w->next_routes, NULL);
    if (!next)
        return;
    route_table_t *old = w->routes;
    w->routes = next; /* requests already routed keep their own reference */
    route_table_unref(old);
    uintptr_t log = atomic_exchange(&w->next_log, 0); /* published before next_routes */
    if (log) {
        access_log_unref(w->alog); /* exchanges and unwritten lines keep their own */
        w->alog = (access_log_t *)(log & ~(uintptr_t)1);
    }
    for (unsigned i = 0; i < w->nlisteners; i++) {
        listener_t *l = &w->listeners[i];
        tq_set_ms(&l->h1.idle_q, idle_ms(w, l));
        tq_set_ms(&l->h2.idle_q, idle_ms(w, l));
    }
}

void worker_publish_log(worker_t *w, access_log_t *log)
{
    uintptr_t stale = atomic_exchange(&w->next_log, (uintptr_t)access_log_ref(log) | 1);
    access_log_unref((access_log_t *)(stale & ~(uintptr_t)1));
}

void worker_publish(worker_t *w, route_table_t *rt)
{
    route_table_t *stale = atomic_exchange(&w->next_routes, route_table_ref(rt));
    route_table_unref(stale); /* an older one the worker never picked up */
    worker_notify(w);
}

static void on_wake(uv_async_t *h)
{
    worker_t *w = h->data;
    adopt_routes(w);
    pool_close_departed(&w->pools);
    pool_admit_waiting(&w->pools); /* a slot freed: waiting exchanges may go on */
    enum server_state st = server_state(w->srv);
    int draining = st == SERVER_DRAINING || st == SERVER_STOPPED;
    if (atomic_load(&w->srv->listeners_drained) || (draining && !w->draining))
        for (unsigned i = 0; i < w->nlisteners; i++)
            listener_close(&w->listeners[i]);
    if (draining) {
        w->draining = 1;
        for (unsigned i = 0; i < w->nlisteners; i++) {
            h1_server_drain(&w->listeners[i].h1);
            h2_server_drain(&w->listeners[i].h2);
            if (st == SERVER_STOPPED) {
                h1_server_abort_all(&w->listeners[i].h1);
                h2_server_abort_all(&w->listeners[i].h2);
            }
        }
        for (tunnel_t *t = w->tunnels; st == SERVER_STOPPED && t; t = t->next)
            relay_abort(t->relay);
    }
    maybe_finish(w);
}

/* Connections open on the worker's HTTP listeners. */
static unsigned open_conns(const worker_t *w)
{
    unsigned n = 0;
    for (unsigned i = 0; i < w->nlisteners; i++)
        n += w->listeners[i].h1.nconns + w->listeners[i].h2.nconns;
    return n;
}

#define TRIM_BURST     256          /* requests or connections fewer than at their peak */
#define TRIM_MIN_BYTES (256 * 1024) /* freed from the free lists */
#define LISTS_BURST    64           /* requests at once that make the free lists worth cutting */
#define EXCHANGE_FLOOR 8            /* more kept than this when cut: all are freed */
#define EXCHANGE_BYTES 2700         /* about what a kept exchange holds */

/* Once a second, off the request path. A burst (thousands of connections, hundreds of requests
 * at once) leaves its write requests, heads, exchanges and read buffers in the free lists, and
 * freed memory inside the heap that glibc keeps. Once no request is in flight after one (64 or
 * more at once), the free lists are cut to a small floor; once load has fallen well below its
 * peak (or the lists gave back enough), malloc_trim hands pages back, so that idle RSS reflects
 * what is open. A steady load below that frees nothing and trims nothing, so nothing it uses
 * is allocated again. */
static void on_housekeeping(uv_timer_t *t)
{
    worker_t *w = t->data;
    unsigned peak = w->peak_exchanges; /* the most in flight at once during the last second */
    w->peak_exchanges = w->live_exchanges;
    if (peak > w->lists_peak)
        w->lists_peak = peak;
    if (peak > w->trim_peak_exchanges)
        w->trim_peak_exchanges = peak;
    unsigned conns = open_conns(w);
    if (conns > w->trim_peak_conns)
        w->trim_peak_conns = conns;
    size_t freed = 0;
    if (w->live_exchanges == 0 && w->lists_peak >= LISTS_BURST) {
        w->lists_peak = 0;
        freed = loop_trim(&w->loop);
        if (w->nfree_exchanges > EXCHANGE_FLOOR) { /* their slab pages go; rebuilt on demand */
            freed += w->nfree_exchanges * (size_t)EXCHANGE_BYTES;
            exchange_close_kept(w);
        }
    }
    int load_fell = w->trim_peak_exchanges >= w->live_exchanges + TRIM_BURST ||
                    w->trim_peak_conns >= conns + TRIM_BURST;
    if (!load_fell && freed < TRIM_MIN_BYTES)
        return;
    w->trim_peak_exchanges = w->live_exchanges;
    w->trim_peak_conns = conns;
    malloc_trim(64 * 1024);
}

static void wake_all(void *ctx)
{
    server_wake_workers(ctx);
}

int worker_init(worker_t *w, server_t *srv, unsigned id)
{
    memset(w, 0, sizeof *w);
    w->srv = srv;
    w->id = id;
    w->routes = route_table_ref(srv->routes);
    w->alog = access_log_ref(srv->alog);
    if (getrandom(&w->rng, sizeof w->rng, 0) != sizeof w->rng || w->rng == 0)
        w->rng = uv_hrtime() | 1;
    w->xray.fd = -1;
    int err = loop_init(&w->loop, w);
    if (err < 0)
        return err;
    access_log_worker_init(&w->alog_w, &w->loop.uv, id);
    pool_table_init(&w->pools, &w->loop);
    tq_init(&w->tcp_connect_q, &w->loop, TCP_CONNECT_TIMEOUT, tcp_proxy_expired);
    /* As long as a request's head may take (0 there means no limit; a handshake gets one). */
    uint64_t handshake_ms = srv->set.header_timeout_ms ? srv->set.header_timeout_ms : 10000;
    tq_init(&w->tls_handshake_q, &w->loop, handshake_ms, tcp_proxy_handshake_expired);
    w->pools.wake_all = wake_all;
    w->pools.wake_ctx = srv;
    if (srv->xray && (err = xray_emitter_open(srv->xray, &w->xray)) < 0)
        return err;
    if ((err = uv_mutex_init(&w->wake_lock)) < 0)
        return err;
    uv_async_init(&w->loop.uv, &w->wake, on_wake);
    w->wake.data = w;
    uv_prepare_init(&w->loop.uv, &w->prepare);
    w->prepare.data = w;
    uv_prepare_start(&w->prepare, on_prepare);
    uv_check_init(&w->loop.uv, &w->check);
    w->check.data = w;
    uv_check_start(&w->check, on_check);
    uv_timer_init(&w->loop.uv, &w->housekeeping);
    w->housekeeping.data = w;
    uv_timer_start(&w->housekeeping, on_housekeeping, 1000, 1000);
    /* A sidecar's ingress and egress, or a virtual gateway's listeners (server.c names them). */
    for (unsigned i = 0; err == 0 && i < srv->nlisteners; i++, w->nlisteners++)
        err = listener_open(w, i);
    return err;
}

static void run(void *arg)
{
    worker_t *w = arg;
    uv_run(&w->loop.uv, UV_RUN_DEFAULT);
    /* The last close callbacks may have deferred frees, which may close handles in turn; the
     * last access log lines are written (a pipe that is full now is not waited for). */
    w->alog_w.closing = 1; /* (already, unless the loop ended another way) */
    while (w->loop.deferred || access_log_worker_busy(&w->alog_w)) {
        loop_pass(&w->loop);
        access_log_worker_flush(&w->alog_w);
        uv_run(&w->loop.uv, UV_RUN_DEFAULT);
    }
    access_log_unref(w->alog);
    w->alog = NULL;
    uintptr_t log = atomic_exchange(&w->next_log, 0);
    access_log_unref((access_log_t *)(log & ~(uintptr_t)1));
    /* Every handle is closed by now; nothing else can run on this loop. */
    route_table_unref(atomic_exchange(&w->next_routes, NULL));
    route_table_unref(w->routes);
    w->routes = NULL;
    xray_emitter_close(&w->xray);
    head_pool_free(&w->loop);
    loop_free(&w->loop);
    slab_destroy(&w->exchanges); /* the last ones went with their timers' close callbacks */
    qsbr_offline(&w->srv->qsbr, w->id);
    server_worker_exited(w->srv);
}

int worker_start(worker_t *w)
{
    return uv_thread_create(&w->thread, run, w);
}

void worker_notify(worker_t *w)
{
    uv_mutex_lock(&w->wake_lock);
    if (!w->wake_closed)
        uv_async_send(&w->wake);
    uv_mutex_unlock(&w->wake_lock);
}

void worker_join(worker_t *w)
{
    uv_thread_join(&w->thread);
    uv_mutex_destroy(&w->wake_lock);
}
