/* Timeout queues: many objects that wait for the same length of time share one libuv timer.
 *
 * A queue holds nodes in the order they were added; with one length per queue their deadlines
 * are in that order too, so adding and removing are O(1) and the timer is armed only for the
 * head. This is how connections time out (the header, keep-alive and linger timeouts are one
 * length each per listener): a node costs 32 bytes where a uv_timer_t costs 152, and entering or
 * leaving a phase touches no heap. When the length changes (a reload), every deadline moves by
 * the same amount, which keeps the order. */
#ifndef REMORA_TQUEUE_H
#define REMORA_TQUEUE_H

#include <stdint.h>

#include "proxy/loop.h"

typedef struct tq_node {
    struct tq_node *prev, *next;
    struct tqueue *q; /* NULL when in no queue */
    uint64_t deadline;
} tq_node_t;

typedef struct tqueue {
    uv_timer_t timer;
    loop_t *loop;
    uint64_t ms;        /* the length; 0: nodes added are never timed out */
    uint64_t armed_for; /* 0: the timer is not armed */
    tq_node_t *head, *tail;
    /* A node's time is up; it is already out of the queue. */
    void (*expired)(tq_node_t *n);
} tqueue_t;

void tq_init(tqueue_t *q, loop_t *l, uint64_t ms, void (*expired)(tq_node_t *n));
/* Put n at the tail (deadline now + q->ms), out of any queue it was in. */
void tq_add(tqueue_t *q, tq_node_t *n);
void tq_del(tq_node_t *n);
/* A new length: every waiting deadline moves by the difference. */
void tq_set_ms(tqueue_t *q, uint64_t ms);
/* Close the timer (the loop is ending); the queue must be empty. */
void tq_close(tqueue_t *q);

#endif
