/* The exchange's lifecycle: created by a server codec through the stream handler, fed by the
 * stream events of both sides, timed by one timer, freed from the worker's deferred list. */
#include <stdlib.h>
#include <string.h>

#include "proxy/exchange_impl.h"
#include "proxy/server.h"
#include "proxy/worker.h"

#define EXCHANGE_KEEP 64 /* free exchanges a worker keeps (with their timers) */

http_stats_t *exchange_http_stats(exchange_t *ex)
{
    server_t *s = ex->w->srv;
    return ex->listener->kind != LISTENER_EGRESS ? &s->ingress_stats : &s->egress_stats;
}

/* ---- events from the client's side ---- */

static void c_head(void *ctx, head_t *h, unsigned msg)
{
    fwd_request_head(ctx, h, msg);
}
static void c_data(void *ctx, buf_t *b, const char *p, size_t n)
{
    fwd_request_data(ctx, b, p, n);
}
static void c_end(void *ctx, head_t *trailers)
{
    fwd_request_end(ctx, trailers);
}
static void c_error(void *ctx, int err)
{
    fwd_client_error(ctx, err);
}
static void c_drain(void *ctx)
{
    fwd_client_drained(ctx);
}

static const stream_events_t client_events = {
    .on_head = c_head,
    .on_data = c_data,
    .on_end = c_end,
    .on_error = c_error,
    .on_drain = c_drain,
};

/* ---- events from the upstream's side ---- */

static void u_head(void *ctx, head_t *h, unsigned msg)
{
    fwd_response_head(ctx, h, msg);
}
static void u_data(void *ctx, buf_t *b, const char *p, size_t n)
{
    fwd_response_data(ctx, b, p, n);
}
static void u_end(void *ctx, head_t *trailers)
{
    fwd_response_end(ctx, trailers);
}
static void u_error(void *ctx, int err)
{
    fwd_upstream_error(ctx, err);
}
static void u_drain(void *ctx)
{
    fwd_upstream_drained(ctx);
}

const stream_events_t exchange_upstream_events = {
    .on_head = u_head,
    .on_data = u_data,
    .on_end = u_end,
    .on_error = u_error,
    .on_drain = u_drain,
};

/* ---- timer and deferred work ---- */

static void on_timer(uv_timer_t *t)
{
    exchange_t *ex = t->data;
    ex->armed_for = 0;
    if (!ex->ended)
        fwd_timer(ex, uv_now(&ex->w->loop.uv));
}

static uint64_t earliest(const exchange_t *ex)
{
    uint64_t d = 0;
    const uint64_t all[] = {ex->request_deadline, ex->try_deadline, ex->idle_deadline};
    for (unsigned i = 0; i < 3; i++)
        if (all[i] && (!d || all[i] < d))
            d = all[i];
    return d;
}

/* Arm the timer for the earliest deadline; re-armed only when it moved earlier (a timer that
 * fires early finds nothing due and is armed again by fwd_timer). */
void exchange_set_timer(exchange_t *ex)
{
    uint64_t d = earliest(ex);
    if (!d) {
        return; /* a pending expiry finds nothing due */
    }
    if (ex->armed_for && ex->armed_for <= d)
        return;
    uint64_t now = uv_now(&ex->w->loop.uv);
    uv_timer_start(&ex->timer, on_timer, d > now ? d - now : 0, 0);
    ex->armed_for = d;
}

static void run_later(deferred_t *d)
{
    exchange_t *ex = (exchange_t *)(void *)((char *)d - offsetof(exchange_t, later));
    void (*fn)(exchange_t *) = ex->later_fn;
    ex->later_fn = NULL;
    if (fn)
        fn(ex);
}

void exchange_later(exchange_t *ex, void (*fn)(exchange_t *ex))
{
    ex->later_fn = fn;
    loop_defer(&ex->w->loop, &ex->later);
}

static void on_admitted(pool_wait_t *w, int result)
{
    exchange_t *ex = (exchange_t *)(void *)((char *)w - offsetof(exchange_t, wait));
    if (!ex->ended)
        fwd_admitted(ex, result);
}

/* ---- birth ---- */

static exchange_t *get(worker_t *w)
{
    exchange_t *ex = w->free_exchanges;
    if (ex) {
        w->free_exchanges = ex->next_free;
        w->nfree_exchanges--;
        memset(ex, 0, offsetof(exchange_t, timer));
        ex->nreplay = 0;
        ex->replay_bytes = 0;
        return ex;
    }
    if (!w->exchanges.size)
        slab_init(&w->exchanges, sizeof *ex);
    ex = slab_alloc(&w->exchanges);
    if (!ex)
        return NULL;
    ex->w = w; /* for the slab it goes back to */
    uv_timer_init(&w->loop.uv, &ex->timer);
    ex->timer.data = ex;
    return ex;
}

static const stream_events_t *accept_stream(void *owner, server_stream_t *s, void **ctx)
{
    listener_t *l = owner;
    worker_t *w = l->w;
    exchange_t *ex = get(w);
    if (!ex)
        return NULL;
    ex->w = w;
    ex->listener = l;
    ex->ss = s;
    ex->secure = s->secure;
    ex->start_ns = uv_hrtime();
    size_t plen = strnlen(s->peer, sizeof ex->peer - 1);
    memcpy(ex->peer, s->peer, plen);
    ex->peer[plen] = '\0';
    ex->rt = route_table_ref(w->routes);
    arena_init(&ex->arena);
    ex->later.fn = run_later;
    ex->wait.cb = on_admitted;
    if (++w->live_exchanges > w->peak_exchanges)
        w->peak_exchanges = w->live_exchanges;
    stat_inc(&exchange_http_stats(ex)->downstream_rq_active);
    *ctx = ex;
    return &client_events;
}

const stream_handler_t exchange_handler = {.accept = accept_stream};

/* ---- death ---- */

static void free_from_timer(uv_handle_t *h)
{
    exchange_t *ex = h->data;
    slab_free(&ex->w->exchanges, ex);
}

static void release_now(exchange_t *ex)
{
    worker_t *w = ex->w;
    head_give(&w->loop, ex->req);
    head_give(&w->loop, ex->req_trailers);
    head_give(&w->loop, ex->resp);
    for (unsigned i = 0; i < ex->nreplay; i++)
        buf_unref(ex->replay[i].buf);
    arena_reset(&ex->arena);
    route_table_unref(ex->rt);
    w->live_exchanges--;
    if (w->nfree_exchanges < EXCHANGE_KEEP && !w->draining) {
        ex->next_free = w->free_exchanges;
        w->free_exchanges = ex;
        w->nfree_exchanges++;
        return;
    }
    ex->timer.data = ex;
    uv_close((uv_handle_t *)&ex->timer, free_from_timer);
}

void exchange_end(exchange_t *ex, int abort)
{
    if (ex->ended)
        return;
    connect_cancel(ex);
    fwd_finish(ex);
    ex->ended = 1; /* the timer may still fire: it finds nothing to do, and stays armed for
                      the next use of this exchange, which saves a re-arm per request */
    pool_done(&ex->w->pools, &ex->wait);
    fwd_drop_upstream(ex); /* a client that went away mid-answer leaves one */
    endpoint_release(&ex->endpoint);
    http_stats_t *hs = exchange_http_stats(ex);
    stat_dec(&hs->downstream_rq_active);
    hist_record_us(&hs->rq_time, (uv_hrtime() - ex->start_ns) / 1000);
    server_stream_t *ss = ex->ss;
    ex->ss = NULL;
    if (ss)
        ss->ops->release(ss, abort);
    exchange_later(ex, release_now); /* nothing may still hold it once the loop comes back */
}

void exchange_close_kept(worker_t *w)
{
    while (w->free_exchanges) {
        exchange_t *ex = w->free_exchanges;
        w->free_exchanges = ex->next_free;
        uv_close((uv_handle_t *)&ex->timer, free_from_timer);
    }
    w->nfree_exchanges = 0;
}
