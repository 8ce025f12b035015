#include "proxy/pool.h"

#include <stdlib.h>
#include <string.h>

#include "proxy/h1_client.h"
#include "proxy/h2_client.h"
#include "proxy/transport_tls.h"

struct pool {
    pool_t *next;      /* hash chain */
    pool_t *idle_next; /* the table's with_idle list (HTTP/1.1), or its with_h2 list */
    pool_table_t *table;
    cluster_t *cluster;
    tls_ctx_t *tls; /* held while the entry lives, so the key cannot be reused */
    struct sockaddr_storage addr;
    socklen_t addrlen;
    h1_client_t *idle; /* HTTP/1.1: most recently released first */
    h2_client_t *h2;   /* HTTP/2: every connection that takes streams, newest first */
    unsigned nidle, nconns;
    uint32_t h2_limit;   /* the peer's stream limit, as its last settled connection said */
    unsigned listed : 1; /* on with_idle, or on with_h2 */
    unsigned is_h2 : 1;  /* part of the key: the endpoint is spoken to in HTTP/2 */
};

void pool_table_init(pool_table_t *t, loop_t *l)
{
    memset(t, 0, sizeof *t);
    t->loop = l;
    h1_client_timeouts_init(&t->timeouts, l, POOL_CONNECT_TIMEOUT, POOL_IDLE_TIMEOUT);
    h2_client_timeouts_init(&t->h2_timeouts, l, POOL_CONNECT_TIMEOUT, POOL_IDLE_TIMEOUT);
}

static unsigned hash(const cluster_t *cl, const tls_ctx_t *tls, int h2,
                     const struct sockaddr_storage *a, socklen_t n)
{
    /* FNV-1a over the address bytes and the cluster and TLS context pointers. */
    uint64_t h = 1469598103934665603ull ^ (uint64_t)(uintptr_t)cl ^
                 ((uint64_t)(uintptr_t)tls << 1) ^ (uint64_t)h2;
    const unsigned char *p = (const unsigned char *)a;
    for (socklen_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 1099511628211ull;
    return (unsigned)(h % POOL_BUCKETS);
}

static pool_t *find(pool_table_t *t, cluster_t *cl, const endpoint_t *ep, tls_ctx_t *tls, int h2,
                    int create)
{
    pool_t **bucket = &t->buckets[hash(cl, tls, h2, &ep->addr, ep->addrlen)];
    for (pool_t *p = *bucket; p; p = p->next)
        if (p->cluster == cl && p->tls == tls && p->is_h2 == (unsigned)h2 &&
            p->addrlen == ep->addrlen && memcmp(&p->addr, &ep->addr, p->addrlen) == 0)
            return p;
    if (!create)
        return NULL;
    pool_t *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->table = t;
    p->cluster = cl;
    p->tls = tls ? tls_ctx_ref(tls) : NULL;
    p->is_h2 = h2 ? 1 : 0;
    memcpy(&p->addr, &ep->addr, ep->addrlen);
    p->addrlen = ep->addrlen;
    p->next = *bucket;
    *bucket = p;
    t->npools++;
    return p;
}

static void unlist(pool_t *p)
{
    if (!p->listed)
        return;
    pool_t **pp = p->is_h2 ? &p->table->with_h2 : &p->table->with_idle;
    while (*pp != p)
        pp = &(*pp)->idle_next;
    *pp = p->idle_next;
    p->listed = 0;
}

/* An entry with no connection left is freed. */
static void maybe_free(pool_t *p)
{
    if (p->nconns > 0)
        return;
    pool_table_t *t = p->table;
    unlist(p);
    pool_t **pp = &t->buckets[hash(p->cluster, p->tls, p->is_h2, &p->addr, p->addrlen)];
    while (*pp != p)
        pp = &(*pp)->next;
    *pp = p->next;
    t->npools--;
    tls_ctx_unref(p->tls);
    free(p);
}

static void unlink_idle(pool_t *p, h1_client_t *h)
{
    for (h1_client_t **pp = &p->idle; *pp; pp = h1_client_idle_link(*pp)) {
        if (*pp == h) {
            *pp = *h1_client_idle_link(h);
            *h1_client_idle_link(h) = NULL;
            p->nidle--;
            break;
        }
    }
    if (!p->idle)
        unlist(p);
}

static int still_member(const pool_t *p)
{
    if (!p->cluster->node)
        return 1; /* the local app and passthrough destinations are not discovered */
    const endpoint_set_t *s = atomic_load_explicit(&p->cluster->set, memory_order_acquire);
    for (unsigned i = 0; s && i < s->n; i++)
        if (s->eps[i].addrlen == p->addrlen && memcmp(&s->eps[i].addr, &p->addr, p->addrlen) == 0)
            return 1;
    return 0;
}

static void on_idle(void *owner, h1_client_t *h)
{
    pool_t *p = owner;
    if (p->nidle >= POOL_IDLE_MAX || !still_member(p)) {
        h1_client_close(h);
        return;
    }
    h1_client_park(h);
    *h1_client_idle_link(h) = p->idle;
    p->idle = h;
    p->nidle++;
    if (!p->listed) {
        p->listed = 1;
        p->idle_next = p->table->with_idle;
        p->table->with_idle = p;
    }
}

static void on_gone(void *owner, h1_client_t *h)
{
    pool_t *p = owner;
    unlink_idle(p, h);
    p->nconns--;
    stat_dec(&p->cluster->stats.upstream_cx_active);
    maybe_free(p);
}

static const h1_client_owner_t client_owner = {.on_idle = on_idle, .on_gone = on_gone};

/* An HTTP/2 connection takes no more streams: out of the entry. */
static void on_h2_gone(void *owner, h2_client_t *h)
{
    pool_t *p = owner;
    for (h2_client_t **pp = &p->h2; *pp; pp = h2_client_link(*pp)) {
        if (*pp == h) {
            *pp = *h2_client_link(h);
            break;
        }
    }
    p->nconns--;
    maybe_free(p);
}

static const h2_client_owner_t h2_owner = {.on_gone = on_h2_gone};

/* A new connection for entry p, over TLS when the entry's key says so (offering h2 alone by
 * ALPN for an HTTP/2 entry). */
static conn_t *dial(pool_table_t *t, pool_t *p)
{
    conn_t *c = conn_new(t->loop);
    if (!c)
        return NULL;
    const struct sockaddr *sa = (const struct sockaddr *)&p->addr;
    if (p->tls && (transport_tls_client(c, p->tls, &p->cluster->ssl, sa) != 0 ||
                   (p->is_h2 && transport_tls_offer_alpn(c, "h2") != 0))) {
        conn_close(c);
        return NULL;
    }
    return c;
}

static void list_h2(pool_t *p)
{
    if (p->listed)
        return;
    p->listed = 1;
    p->idle_next = p->table->with_h2;
    p->table->with_h2 = p;
}

/* A stream on the newest connection with room, else on a new one. */
static client_stream_t *h2_stream(pool_table_t *t, pool_t *p, int fresh, const stream_events_t *ev,
                                  void *ctx)
{
    for (h2_client_t *h = p->h2; h; h = *h2_client_link(h)) {
        uint32_t limit = h2_client_peer_limit(h);
        if (limit)
            p->h2_limit = limit; /* new connections assume it until their SETTINGS come */
        if (!fresh && h2_client_has_room(h, p->h2_limit)) {
            stat_inc(&p->cluster->stats.upstream_cx_pool_reuse);
            return h2_client_stream(h, ev, ctx);
        }
    }
    conn_t *c = dial(t, p);
    h2_client_t *h = c ? h2_client_connect(c, (const struct sockaddr *)&p->addr, &p->cluster->stats,
                                           &t->h2_timeouts, &h2_owner, p)
                       : NULL;
    if (!h) {
        maybe_free(p);
        return NULL;
    }
    *h2_client_link(h) = p->h2;
    p->h2 = h;
    p->nconns++;
    list_h2(p);
    return h2_client_stream(h, ev, ctx);
}

client_stream_t *pool_stream(pool_table_t *t, cluster_t *cl, const endpoint_t *ep, tls_ctx_t *tls,
                             int h2, int fresh, const stream_events_t *ev, void *ctx)
{
    pool_t *p = find(t, cl, ep, tls, h2, 1);
    if (!p)
        return NULL;
    if (h2)
        return h2_stream(t, p, fresh, ev, ctx);
    while (p->idle && !fresh) {
        h1_client_t *h = p->idle;
        unlink_idle(p, h);
        if (!h1_client_usable(h)) {
            h1_client_close(h);
            continue;
        }
        stat_inc(&cl->stats.upstream_cx_pool_reuse);
        return h1_client_stream(h, ev, ctx);
    }
    conn_t *c = dial(t, p);
    h1_client_t *h = c ? h1_client_connect(c, (const struct sockaddr *)&p->addr, &cl->stats,
                                           &t->timeouts, &client_owner, p)
                       : NULL;
    if (!h) {
        maybe_free(p);
        return NULL;
    }
    p->nconns++;
    stat_inc(&cl->stats.upstream_cx_active);
    return h1_client_stream(h, ev, ctx);
}

/* ---- admission ---- */

static void admitted_later(deferred_t *d)
{
    pool_wait_t *w = (pool_wait_t *)(void *)((char *)d - offsetof(pool_wait_t, later));
    w->cb(w, w->result);
}

static void answer(pool_table_t *t, pool_wait_t *w, int result)
{
    w->result = result;
    w->later.fn = admitted_later;
    loop_defer(t->loop, &w->later);
}

static void enqueue(pool_table_t *t, pool_wait_t *w)
{
    w->queued = 1;
    w->next = NULL;
    w->prev = t->wait_tail;
    if (t->wait_tail)
        t->wait_tail->next = w;
    else
        t->wait_head = w;
    t->wait_tail = w;
    stat_inc(&w->cluster->stats.upstream_rq_pending_total);
    stat_inc(&w->cluster->stats.upstream_rq_pending_active);
}

static void dequeue(pool_table_t *t, pool_wait_t *w)
{
    if (!w->queued)
        return;
    if (w->prev)
        w->prev->next = w->next;
    else
        t->wait_head = w->next;
    if (w->next)
        w->next->prev = w->prev;
    else
        t->wait_tail = w->prev;
    w->queued = 0;
    atomic_fetch_sub(&w->cluster->pending_requests, 1);
    stat_dec(&w->cluster->stats.upstream_rq_pending_active);
}

int pool_admit(pool_table_t *t, pool_wait_t *w)
{
    cluster_t *c = w->cluster;
    if (cluster_slot_take(c, w->max_requests)) {
        w->admitted = 1;
        return 1;
    }
    unsigned pending = atomic_fetch_add(&c->pending_requests, 1);
    if (w->max_pending && pending >= w->max_pending) {
        atomic_fetch_sub(&c->pending_requests, 1);
        stat_inc(&c->stats.upstream_rq_pending_overflow);
        answer(t, w, POOL_FULL);
        return 0;
    }
    enqueue(t, w);
    return 0;
}

void pool_done(pool_table_t *t, pool_wait_t *w)
{
    dequeue(t, w);
    if (!w->admitted)
        return;
    w->admitted = 0;
    cluster_slot_release(w->cluster);
    if (atomic_load(&w->cluster->pending_requests) > 0 && t->wake_all)
        t->wake_all(t->wake_ctx); /* a request may be waiting on any worker */
}

void pool_admit_waiting(pool_table_t *t)
{
    pool_wait_t *next;
    for (pool_wait_t *w = t->wait_head; w; w = next) {
        next = w->next;
        if (!cluster_slot_take(w->cluster, w->max_requests))
            continue; /* another cluster's waiter further on may fit */
        dequeue(t, w);
        w->admitted = 1;
        answer(t, w, POOL_GO);
    }
}

/* ---- idle connections ---- */

/* Each of the entry's HTTP/2 connections takes no new stream and closes once its streams are
 * done (the last one gone may free p). */
static void retire_h2(pool_t *p)
{
    for (unsigned n = p->nconns; n > 0; n--) /* each leaves the list at once (on_h2_gone) */
        h2_client_retire(p->h2);
}

void pool_close_departed(pool_table_t *t)
{
    pool_t *next;
    for (pool_t *p = t->with_h2; p; p = next) {
        next = p->idle_next;
        if (!still_member(p))
            retire_h2(p);
    }
    for (pool_t *p = t->with_idle; p; p = next) {
        next = p->idle_next;
        if (still_member(p))
            continue;
        for (unsigned n = p->nidle; n > 0; n--) /* the last close may free p */
            h1_client_close(p->idle);
    }
}

void pool_close_idle(pool_table_t *t)
{
    while (t->with_h2) /* the entry is freed with its last connection */
        retire_h2(t->with_h2);
    while (t->with_idle) {
        pool_t *p = t->with_idle;
        unsigned n = p->nidle;
        if (n == 0) { /* cannot happen: an entry is listed while it has idle ones */
            unlist(p);
            continue;
        }
        while (n-- > 0) /* the last close may free p */
            h1_client_close(p->idle);
    }
}

void pool_table_close(pool_table_t *t)
{
    h1_client_timeouts_close(&t->timeouts);
    h2_client_timeouts_close(&t->h2_timeouts);
}
