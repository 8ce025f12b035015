/* Quiescent-state-based reclamation: how an object that workers read without locks (an
 * endpoint set) is freed once no worker can still be looking at it.
 *
 * Readers (workers) use such a pointer only within one loop callback, and report a quiescent
 * point once per loop iteration (qsbr_quiescent, from the prepare hook). The writer (the main
 * thread) swaps the pointer, then retires the old object; it is freed when every reader has
 * reported a quiescent point since. A reader that has stopped is marked offline. */
#ifndef REMORA_QSBR_H
#define REMORA_QSBR_H

#include <stdatomic.h>
#include <stdint.h>

typedef struct qsbr_retired {
    struct qsbr_retired *next;
    void *p;
    void (*free_fn)(void *);
    uint64_t epoch;
} qsbr_retired_t;

typedef struct qsbr {
    _Atomic uint64_t epoch;
    _Atomic uint64_t *seen; /* per reader: the epoch at its last quiescent point */
    unsigned nreaders;
    qsbr_retired_t *retired; /* writer only */
} qsbr_t;

int qsbr_init(qsbr_t *q, unsigned nreaders);
void qsbr_quiescent(qsbr_t *q, unsigned reader);
void qsbr_offline(qsbr_t *q, unsigned reader);
/* Writer: after swapping the pointer away from `p`. */
void qsbr_retire(qsbr_t *q, void *p, void (*free_fn)(void *));
/* Writer: free what no reader can see any more; returns how many are still waiting. */
unsigned qsbr_reclaim(qsbr_t *q);
/* Writer, at exit with every reader stopped: free everything. */
void qsbr_destroy(qsbr_t *q);

#endif
