#include "proxy/loop.h"

#include <stdlib.h>
#include <string.h>

#include "proxy/conn.h"

#define WREQ_KEEP 256 /* free write requests a loop keeps */

int loop_init(loop_t *l, void *owner)
{
    memset(l, 0, sizeof *l);
    l->owner = owner;
    return uv_loop_init(&l->uv);
}

void loop_defer(loop_t *l, deferred_t *d)
{
    if (d->queued)
        return;
    d->queued = 1;
    d->next = NULL;
    if (l->deferred_tail)
        l->deferred_tail->next = d;
    else
        l->deferred = d;
    l->deferred_tail = d;
}

void loop_cancel(loop_t *l, deferred_t *d)
{
    if (!d->queued)
        return;
    deferred_t *prev = NULL;
    for (deferred_t *q = l->deferred; q; prev = q, q = q->next) {
        if (q != d)
            continue;
        if (prev)
            prev->next = d->next;
        else
            l->deferred = d->next;
        if (l->deferred_tail == d)
            l->deferred_tail = prev;
        break;
    }
    d->queued = 0;
}

void loop_pass(loop_t *l)
{
    do { /* a flush can defer work (a drain owed), which can write more */
        while (l->deferred) {
            deferred_t *d = l->deferred;
            l->deferred = d->next;
            if (!l->deferred)
                l->deferred_tail = NULL;
            d->queued = 0;
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
        r = malloc(sizeof *r);
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
        free(r);
        return;
    }
    r->next_free = l->free_wreqs;
    l->free_wreqs = r;
    l->nfree_wreqs++;
}

void loop_free(loop_t *l)
{
    uv_loop_close(&l->uv);
    bufpool_drain(&l->bufs);
    while (l->free_wreqs) {
        wreq_t *r = l->free_wreqs;
        l->free_wreqs = r->next_free;
        free(r);
    }
    l->nfree_wreqs = 0;
}
