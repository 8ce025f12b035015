/* Reference-counted byte buffers with a per-worker free list.
 *
 * Every byte that crosses remora lives in a buf_t: a socket read lands in one, the parsed head
 * and body pieces point into it, and the write that forwards those bytes holds a reference until
 * libuv is done with them, so bodies are relayed without a copy. A pool belongs to one worker loop
 * and is never touched from another thread. */
#ifndef REMORA_BUF_H
#define REMORA_BUF_H

#include <stddef.h>
#include <stdint.h>

#define BUF_READ_SIZE (64 * 1024) /* one socket read; also the pooled size */
#define BUF_POOL_KEEP 64          /* free buffers a worker keeps for reuse */

typedef struct bufpool bufpool_t;

typedef struct buf {
    bufpool_t *pool;
    struct buf *next_free;
    uint32_t refs;
    uint32_t cap;
    uint32_t len;
    char data[];
} buf_t;

struct bufpool {
    buf_t *free;
    unsigned nfree;
    size_t live; /* buffers handed out and not yet returned, for /stats and leak checks */
};

/* A buffer with room for at least `min` bytes, len 0, one reference (the caller's).
 * Returns NULL only when memory is exhausted. */
buf_t *buf_new(bufpool_t *pool, size_t min);
static inline buf_t *buf_ref(buf_t *b)
{
    b->refs++;
    return b;
}
void buf_unref(buf_t *b);
/* Free kept buffers beyond `keep` (after a burst: 64 KiB each, touched, so they count in RSS);
 * returns the bytes freed. */
size_t bufpool_trim(bufpool_t *pool, unsigned keep);
void bufpool_drain(bufpool_t *pool);

#endif
