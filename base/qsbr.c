#include "base/qsbr.h"

#include <stdlib.h>

int qsbr_init(qsbr_t *q, unsigned nreaders)
{
    q->seen = calloc(nreaders ? nreaders : 1, sizeof *q->seen);
    q->nreaders = nreaders;
    q->retired = NULL;
    atomic_init(&q->epoch, 1);
    return q->seen ? 0 : -1;
}

void qsbr_quiescent(qsbr_t *q, unsigned reader)
{
    atomic_store(&q->seen[reader], atomic_load(&q->epoch));
}

void qsbr_offline(qsbr_t *q, unsigned reader)
{
    atomic_store(&q->seen[reader], UINT64_MAX);
}

void qsbr_retire(qsbr_t *q, void *p, void (*free_fn)(void *))
{
    qsbr_retired_t *r = malloc(sizeof *r);
    uint64_t epoch = atomic_fetch_add(&q->epoch, 1) + 1;
    if (!r)
        return; /* leaks one object rather than freeing it under a reader */
    *r = (qsbr_retired_t){q->retired, p, free_fn, epoch};
    q->retired = r;
}

unsigned qsbr_reclaim(qsbr_t *q)
{
    uint64_t oldest = UINT64_MAX;
    for (unsigned i = 0; i < q->nreaders; i++) {
        uint64_t s = atomic_load(&q->seen[i]);
        if (s < oldest)
            oldest = s;
    }
    unsigned waiting = 0;
    for (qsbr_retired_t **link = &q->retired; *link;) {
        qsbr_retired_t *r = *link;
        if (r->epoch <= oldest) {
            *link = r->next;
            r->free_fn(r->p);
            free(r);
        } else {
            waiting++;
            link = &r->next;
        }
    }
    return waiting;
}

void qsbr_destroy(qsbr_t *q)
{
    for (unsigned i = 0; i < q->nreaders; i++)
        qsbr_offline(q, i);
    qsbr_reclaim(q);
    free(q->seen);
    q->seen = NULL;
}
