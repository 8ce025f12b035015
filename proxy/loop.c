#include "proxy/loop.h"

#include <stdlib.h>
#include <string.h>

#include "proxy/conn.h"

#define WREQ_KEEP  16 /* free write requests kept in front of their slab */
#define TRIM_FLOOR 16 /* heads kept by loop_trim */
#define BUF_FLOOR  8  /* read buffers (64 KiB each) kept the same way */

/* The last deferred's `next`: a queued one never has NULL there. */
static deferred_t end_of_queue;

int loop_init(loop_t *l, void *owner)
{
    memset(l, 0, sizeof *l);
    l->owner = owner;
    return uv_loop_init(&l->uv);
}

void loop_defer(loop_t *l, deferred_t *d)
{
    if (d->next)
        return; /* already queued */
    d->next = &end_of_queue;
    if (l->deferred_tail)
        l->deferred_tail->next = d;
    else
        l->deferred = d;
    l->deferred_tail = d;
}

void loop_cancel(loop_t *l, deferred_t *d)
{
    if (!d->next)
        return;
    deferred_t *prev = NULL;
    for (deferred_t *q = l->deferred; q && q != &end_of_queue; prev = q, q = q->next) {
        if (q != d)
            continue;
        deferred_t *next = d->next == &end_of_queue ? NULL : d->next;
        if (prev)
            prev->next = next ? next : &end_of_queue;
        else
            l->deferred = next;
        if (l->deferred_tail == d)
            l->deferred_tail = prev;
        break;
    }
    d->next = NULL;
}

void loop_pass(loop_t *l)
{
    do { /* a flush can defer work (a drain owed), which can write more */
        while (l->deferred) {
            deferred_t *d = l->deferred;
            l->deferred = d->next == &end_of_queue ? NULL : d->next;
            if (!l->deferred)
                l->deferred_tail = NULL;
            d->next = NULL;
            d->fn(d);
        }
        conn_flush_dirty(l);
    } while (l->deferred);
}

wreq_t *loop_wreq_get(loop_t *l)
{
    wreq_t *r = l->free_wreqs;
    if (r) {
        l->free_wreqs = r->next_free;
        l->nfree_wreqs--;
    } else {
        if (!l->wreqs.size)
            slab_init(&l->wreqs, sizeof(wreq_t));
        r = slab_alloc_raw(&l->wreqs);
        if (!r)
            return NULL;
    }
    r->n = 0;
    r->scratch_used = 0;
    r->pinned = 0;
    return r;
}

void loop_wreq_put(loop_t *l, wreq_t *r)
{
    if (l->nfree_wreqs >= WREQ_KEEP) {
        slab_free(&l->wreqs, r);
        return;
    }
    r->next_free = l->free_wreqs;
    l->free_wreqs = r;
    l->nfree_wreqs++;
}

static size_t drop_wreqs(loop_t *l)
{
    size_t freed = 0;
    while (l->free_wreqs) {
        wreq_t *r = l->free_wreqs;
        l->free_wreqs = r->next_free;
        slab_free(&l->wreqs, r);
        freed += sizeof *r;
    }
    l->nfree_wreqs = 0;
    return freed;
}

size_t loop_trim(loop_t *l)
{
    return drop_wreqs(l) + head_pool_trim(l, TRIM_FLOOR) + bufpool_trim(&l->bufs, BUF_FLOOR);
}

void loop_free(loop_t *l)
{
    uv_loop_close(&l->uv);
    bufpool_drain(&l->bufs);
    drop_wreqs(l);
    slab_destroy(&l->wreqs);
    slab_destroy(&l->conns);
    slab_destroy(&l->h1_servers);
}
