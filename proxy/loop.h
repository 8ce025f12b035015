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

struct conn;
struct wreq;

typedef struct deferred {
    struct deferred *next;
    void (*fn)(struct deferred *d);
    unsigned queued : 1;
} deferred_t;

typedef struct loop {
    uv_loop_t uv;
    bufpool_t bufs;
    struct wreq *free_wreqs;
    unsigned nfree_wreqs;
    struct conn *dirty; /* connections with queued output */
    deferred_t *deferred, *deferred_tail;
    struct head *free_heads; /* kept with their storage (head_take / head_give) */
    unsigned nfree_heads;
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
/* At exit, once the uv loop has ended. */
void loop_free(loop_t *l);

static inline uint64_t loop_now(loop_t *l)
{
    return uv_now(&l->uv);
}

#endif
