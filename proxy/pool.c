#include "proxy/pool.h"

#include <stdlib.h>
#include <string.h>

#include "discovery/cluster.h"
#include "proxy/upstream.h"
#include "proxy/worker.h"

static unsigned hash(const cluster_t *cl, const endpoint_t *ep)
{
    /* FNV-1a over the address bytes and the cluster pointer. */
    uint64_t h = 1469598103934665603ull ^ (uint64_t)(uintptr_t)cl;
    const unsigned char *p = (const unsigned char *)&ep->addr;
    for (socklen_t i = 0; i < ep->addrlen; i++)
        h = (h ^ p[i]) * 1099511628211ull;
    return (unsigned)(h % POOL_BUCKETS);
}

pool_t *pool_get(worker_t *w, cluster_t *cl, const endpoint_t *ep)
{
    pool_t **bucket = &w->pools.buckets[hash(cl, ep)];
    for (pool_t *p = *bucket; p; p = p->next)
        if (p->cluster == cl && p->addrlen == ep->addrlen &&
            memcmp(&p->addr, &ep->addr, p->addrlen) == 0)
            return p;
    pool_t *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->worker = w;
    p->cluster = cl;
    memcpy(&p->addr, &ep->addr, ep->addrlen);
    p->addrlen = ep->addrlen;
    memcpy(p->name, ep->name, sizeof p->name);
    p->next = *bucket;
    *bucket = p;
    return p;
}

void pool_unlink_idle(upstream_t *up)
{
    pool_t *p = up->pool;
    if (up->idle_prev)
        up->idle_prev->idle_next = up->idle_next;
    else
        p->idle = up->idle_next;
    if (up->idle_next)
        up->idle_next->idle_prev = up->idle_prev;
    up->idle_next = up->idle_prev = NULL;
    p->nidle--;
}

upstream_t *pool_acquire(pool_t *p, int fresh, int *reused, int *err)
{
    while (p->idle && !fresh) {
        upstream_t *up = p->idle;
        pool_unlink_idle(up);
        up->state = UP_ACTIVE;
        if (up->c.closing || up->c.write_failed) {
            upstream_abort(up);
            continue;
        }
        *reused = 1;
        stat_inc(&p->cluster->stats.upstream_cx_pool_reuse);
        return up;
    }
    *reused = 0;
    return upstream_connect(p, err);
}

static int still_member(const pool_t *p)
{
    const endpoint_set_t *s = atomic_load_explicit(&p->cluster->set, memory_order_acquire);
    if (!p->cluster->node)
        return 1; /* the local app and passthrough destinations are not discovered */
    for (unsigned i = 0; s && i < s->n; i++)
        if (s->eps[i].addrlen == p->addrlen && memcmp(&s->eps[i].addr, &p->addr, p->addrlen) == 0)
            return 1;
    return 0;
}

void pool_release(upstream_t *up)
{
    pool_t *p = up->pool;
    if (!up->keep_alive || !up->connected || up->c.closing || up->c.write_failed ||
        p->nidle >= POOL_IDLE_MAX || p->worker->draining || !still_member(p)) {
        upstream_abort(up);
        return;
    }
    upstream_park(up);
    up->idle_prev = NULL;
    up->idle_next = p->idle;
    if (p->idle)
        p->idle->idle_prev = up;
    p->idle = up;
    p->nidle++;
}

void pool_close_departed(pool_table_t *t)
{
    for (unsigned i = 0; i < POOL_BUCKETS; i++)
        for (pool_t *p = t->buckets[i]; p; p = p->next)
            if (p->idle && !still_member(p))
                while (p->idle)
                    upstream_abort(p->idle);
}

void pool_close_idle(pool_table_t *t)
{
    for (unsigned i = 0; i < POOL_BUCKETS; i++)
        for (pool_t *p = t->buckets[i]; p; p = p->next)
            while (p->idle)
                upstream_abort(p->idle);
}

void pool_table_free(pool_table_t *t)
{
    for (unsigned i = 0; i < POOL_BUCKETS; i++) {
        pool_t *p = t->buckets[i];
        while (p) {
            pool_t *next = p->next;
            free(p);
            p = next;
        }
        t->buckets[i] = NULL;
    }
}
