#include "proxy/worker.h"

#include <arpa/inet.h>
#include <errno.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include "proxy/downstream.h"
#include "proxy/forward.h"
#include "base/log.h"
#include "proxy/server.h"

#define WREQ_KEEP 256 /* free write requests a worker keeps */

wreq_t *worker_wreq_get(worker_t *w)
{
    wreq_t *r = w->free_wreqs;
    if (r) {
        w->free_wreqs = r->next_free;
        w->nfree_wreqs--;
    } else {
        r = malloc(sizeof *r);
        if (!r)
            return NULL;
    }
    r->n = 0;
    r->scratch_used = 0;
    r->bytes = 0;
    return r;
}

void worker_wreq_put(worker_t *w, wreq_t *r)
{
    if (w->nfree_wreqs >= WREQ_KEEP) {
        free(r);
        return;
    }
    r->next_free = w->free_wreqs;
    w->free_wreqs = r;
    w->nfree_wreqs++;
}

uint64_t worker_random(worker_t *w)
{
    /* xorshift64* */
    uint64_t x = w->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    w->rng = x;
    return x * 0x2545f4914f6cdd1dull;
}

static void on_flush_prepare(uv_prepare_t *h)
{
    worker_t *w = h->data;
    conn_flush_dirty(w);
    qsbr_quiescent(&w->srv->qsbr, w->id); /* no endpoint set is held across iterations */
}

static void on_flush_check(uv_check_t *h)
{
    conn_flush_dirty(h->data);
}

static void on_connection(uv_stream_t *server, int status)
{
    listener_t *l = server->data;
    if (status < 0) {
        log_warn("accept on %s listener: %s", l->kind == LISTENER_INGRESS ? "ingress" : "egress",
                 uv_strerror(status));
        return;
    }
    downstream_accept(l);
}

/* A listening socket of our own so that SO_REUSEPORT is set before bind (libuv 1.44 has no flag
 * for it): every worker binds the same port and the kernel spreads connections over them. */
static int listener_open(worker_t *w, listener_t *l, enum listener_kind kind, uint16_t port)
{
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    addr.sin_addr.s_addr = htonl(INADDR_ANY);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0 ||
        bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        int err = -errno;
        close(fd);
        return err;
    }
    l->w = w;
    l->kind = kind;
    uv_tcp_init(&w->loop, &l->tcp);
    l->tcp.data = l;
    int err = uv_tcp_open(&l->tcp, fd);
    if (err == 0)
        err = uv_listen((uv_stream_t *)&l->tcp, 4096, on_connection);
    if (err < 0) {
        uv_close((uv_handle_t *)&l->tcp, NULL);
        return err;
    }
    l->open = 1;
    return 0;
}

static void listener_close(listener_t *l)
{
    if (!l->open)
        return;
    l->open = 0;
    uv_close((uv_handle_t *)&l->tcp, NULL);
}

/* Once draining and every client connection is gone, release what is left and let the loop
 * end. */
static void maybe_finish(worker_t *w)
{
    if (!w->draining || w->ndownstreams > 0)
        return;
    pool_close_idle(&w->pools);
    if (uv_is_closing((uv_handle_t *)&w->wake))
        return;
    /* Connections close their own handles; these are the worker's. */
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
    w->routes = next; /* requests already routed keep what they copied */
    route_table_unref(old);
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
    fwd_start_waiting(w);
    enum server_state st = server_state(w->srv);
    if (st == SERVER_DRAINING || st == SERVER_STOPPED) {
        if (!w->draining) {
            w->draining = 1;
            listener_close(&w->ingress);
            listener_close(&w->egress);
        }
        downstream_drain_all(w);
        if (st == SERVER_STOPPED)
            downstream_abort_all(w);
    }
    maybe_finish(w);
}

void worker_downstream_closed(worker_t *w)
{
    maybe_finish(w);
}

/* A burst of thousands of connections leaves freed memory inside the heap that glibc keeps;
 * once connections have come and gone, hand it back so that idle RSS reflects what is open. */
static void on_housekeeping(uv_timer_t *t)
{
    worker_t *w = t->data;
    if (w->peak_exchanges < w->live_exchanges + 256)
        return; /* no burst has passed */
    w->peak_exchanges = w->live_exchanges;
    malloc_trim(64 * 1024);
}

int worker_init(worker_t *w, server_t *srv, unsigned id)
{
    memset(w, 0, sizeof *w);
    w->srv = srv;
    w->id = id;
    w->routes = route_table_ref(srv->routes);
    if (getrandom(&w->rng, sizeof w->rng, 0) != sizeof w->rng || w->rng == 0)
        w->rng = uv_hrtime() | 1;
    w->xray.fd = -1;
    int err = uv_loop_init(&w->loop);
    if (err < 0)
        return err;
    if (srv->xray && (err = xray_emitter_open(srv->xray, &w->xray)) < 0)
        return err;
    uv_async_init(&w->loop, &w->wake, on_wake);
    w->wake.data = w;
    uv_prepare_init(&w->loop, &w->prepare);
    w->prepare.data = w;
    uv_prepare_start(&w->prepare, on_flush_prepare);
    uv_check_init(&w->loop, &w->check);
    w->check.data = w;
    uv_check_start(&w->check, on_flush_check);
    uv_timer_init(&w->loop, &w->housekeeping);
    w->housekeeping.data = w;
    uv_timer_start(&w->housekeeping, on_housekeeping, 1000, 1000);
    err = listener_open(w, &w->ingress, LISTENER_INGRESS, srv->set.ingress_port);
    if (err == 0)
        err = listener_open(w, &w->egress, LISTENER_EGRESS, srv->set.egress_port);
    return err;
}

static void run(void *arg)
{
    worker_t *w = arg;
    uv_run(&w->loop, UV_RUN_DEFAULT);
    /* Every handle is closed by now; nothing else can run on this loop. */
    uv_loop_close(&w->loop);
    route_table_unref(atomic_exchange(&w->next_routes, NULL));
    route_table_unref(w->routes);
    w->routes = NULL;
    pool_table_free(&w->pools);
    bufpool_drain(&w->bufs);
    xray_emitter_close(&w->xray);
    exchange_free_list(w);
    qsbr_offline(&w->srv->qsbr, w->id);
    while (w->free_wreqs) {
        wreq_t *r = w->free_wreqs;
        w->free_wreqs = r->next_free;
        free(r);
    }
    server_worker_exited(w->srv);
}

int worker_start(worker_t *w)
{
    return uv_thread_create(&w->thread, run, w);
}

void worker_notify(worker_t *w)
{
    uv_async_send(&w->wake);
}

void worker_join(worker_t *w)
{
    uv_thread_join(&w->thread);
}
