/* The loop's free list of heads: a request takes two or three and gives them back, so the
 * steady state allocates nothing. Heads grown past HEAD_KEEP_BYTES are freed, not kept. Only
 * heads from head_take may be given back. */
#include <stddef.h>
#include <stdlib.h>

#include "http/head.h"
#include "proxy/loop.h"

#define HEAD_KEEP       128
#define HEAD_KEEP_BYTES (8 * 1024)

typedef struct pooled {
    head_t h; /* first: a head_t * is a pooled * */
    struct pooled *next;
} pooled_t;

head_t *head_take(loop_t *l)
{
    pooled_t *p = (pooled_t *)l->free_heads;
    if (p) {
        l->free_heads = (head_t *)p->next;
        l->nfree_heads--;
        head_reset(&p->h);
    } else {
        p = malloc(sizeof *p);
        if (!p)
            return NULL;
        head_init(&p->h);
    }
    return &p->h;
}

void head_give(loop_t *l, head_t *h)
{
    if (!h)
        return;
    pooled_t *p = (pooled_t *)h;
    if (l->nfree_heads >= HEAD_KEEP || h->cap > HEAD_KEEP_BYTES) {
        head_free(h);
        free(p);
        return;
    }
    p->next = (pooled_t *)l->free_heads;
    l->free_heads = h;
    l->nfree_heads++;
}

/* What a kept head holds: itself, its bytes and its field table. */
static size_t held(const pooled_t *p)
{
    return sizeof *p + p->h.cap + p->h.fields_cap * sizeof *p->h.fields;
}

size_t head_pool_trim(loop_t *l, unsigned keep)
{
    size_t freed = 0;
    while (l->nfree_heads > keep) {
        pooled_t *p = (pooled_t *)l->free_heads;
        l->free_heads = (head_t *)p->next;
        l->nfree_heads--;
        freed += held(p);
        head_free(&p->h);
        free(p);
    }
    return freed;
}

void head_pool_free(loop_t *l)
{
    while (l->free_heads) {
        pooled_t *p = (pooled_t *)l->free_heads;
        l->free_heads = (head_t *)p->next;
        head_free(&p->h);
        free(p);
    }
    l->nfree_heads = 0;
}
