#include "base/buf.h"

#include <stdlib.h>

buf_t *buf_new(bufpool_t *pool, size_t min)
{
    buf_t *b;
    if (min <= BUF_READ_SIZE && pool->free) {
        b = pool->free;
        pool->free = b->next_free;
        pool->nfree--;
    } else {
        size_t cap = min <= BUF_READ_SIZE ? BUF_READ_SIZE : min;
        b = malloc(sizeof *b + cap);
        if (!b)
            return NULL;
        b->pool = pool;
        b->cap = (uint32_t)cap;
    }
    b->refs = 1;
    b->len = 0;
    b->next_free = NULL;
    pool->live++;
    return b;
}

void buf_unref(buf_t *b)
{
    if (--b->refs > 0)
        return;
    bufpool_t *pool = b->pool;
    pool->live--;
    if (b->cap == BUF_READ_SIZE && pool->nfree < BUF_POOL_KEEP) {
        b->next_free = pool->free;
        pool->free = b;
        pool->nfree++;
        return;
    }
    free(b);
}

size_t bufpool_trim(bufpool_t *pool, unsigned keep)
{
    size_t freed = 0;
    while (pool->nfree > keep) {
        buf_t *b = pool->free;
        pool->free = b->next_free;
        pool->nfree--;
        freed += sizeof *b + b->cap;
        free(b);
    }
    return freed;
}

void bufpool_drain(bufpool_t *pool)
{
    bufpool_trim(pool, 0);
}
