/* What every object on one worker's event loop shares, below the codecs and above nothing but
 * base/: the libuv loop, the buffer and write-request free lists, the connections with output
 * to flush, and work deferred to the loop's next pass.
 *
 * Deferred work is how "never from inside the call" is kept: a failure found while a caller
 * is still setting up (a connect that fails at once, a pool with no room) and an object whose
 * release must wait until no callback chain holds it are queued here and run from the loop's
 * prepare and check passes, in order. */
#ifndef REMORA_LOOP_H
#define REMORA_LOOP_H

#include <stdint.h>
#include <uv.h>

#include "base/buf.h"
#include "base/slab.h"

struct conn;
struct wreq;

/* Queued while `next` is not NULL (the last one's points at a sentinel): 16 bytes, which every
 * connection carries. Zeroed, it is not queued. */
typedef struct deferred {
    struct deferred *next;
    void (*fn)(struct deferred *d);
} deferred_t;

typedef struct loop {
    uv_loop_t uv;
    bufpool_t bufs;
    struct conn *dirty; /* connections with queued output (linked through their write requests) */
    deferred_t *deferred, *deferred_tail; /* NULL when nothing is deferred */
    struct head *free_heads;              /* kept with their storage (head_take / head_give) */
    unsigned nfree_heads;
    struct wreq *free_wreqs; /* a few kept in front of the slab below, for speed */
    unsigned nfree_wreqs;
    /* In pages of their own (base/slab.h), each set up on first use: what every open connection
     * carries, the conn_t (conn.c) and the HTTP/1 server codec (h1_server.c), so that nothing
     * long-lived sits between a burst's short-lived allocations in the heap; and write requests
     * (3 KiB each, hundreds at once in a burst), whose pages go back once the burst is over. */
    slab_t conns, h1_servers, wreqs;
    void *owner; /* the worker; opaque below it */
} loop_t;

int loop_init(loop_t *l, void *owner);
/* Run d->fn(d) on the loop's next pass; a deferred already queued is not queued twice. */
void loop_defer(loop_t *l, deferred_t *d);
/* Take d off the queue if it is on it (its owner is being freed). */
void loop_cancel(loop_t *l, deferred_t *d);
/* Run everything deferred (including what that queues) and flush output, until neither is
 * left: the loop must never block with work queued. */
void loop_pass(loop_t *l);
struct wreq *loop_wreq_get(loop_t *l);
void loop_wreq_put(loop_t *l, struct wreq *r);
/* Housekeeping, off the request path, when no request is in flight after a burst: cut the free
 * lists to a small floor (heads, read buffers) or to nothing (write requests, which go back to
 * their slab), so that what the burst left in them goes back to malloc and the slab's pages can
 * be unmapped. Returns about the bytes freed. */
size_t loop_trim(loop_t *l);
/* The heads' part of it (head_pool.c): free kept heads beyond `keep`; bytes freed. */
size_t head_pool_trim(loop_t *l, unsigned keep);
/* At exit, once the uv loop has ended. */
void loop_free(loop_t *l);

static inline uint64_t loop_now(loop_t *l)
{
    return uv_now(&l->uv);
}

#endif
