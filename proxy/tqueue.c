#include "proxy/tqueue.h"

static void arm(tqueue_t *q);

static void on_timer(uv_timer_t *t)
{
    tqueue_t *q = t->data;
    uint64_t now = loop_now(q->loop);
    q->armed_for = 0;
    while (q->head && q->head->deadline <= now) {
        tq_node_t *n = q->head;
        tq_del(n);
        q->expired(n);
    }
    arm(q);
}

static void arm(tqueue_t *q)
{
    if (!q->head || (q->armed_for && q->armed_for <= q->head->deadline))
        return; /* armed early enough: a timer that fires early finds nothing due */
    uint64_t now = loop_now(q->loop), d = q->head->deadline;
    uv_timer_start(&q->timer, on_timer, d > now ? d - now : 0, 0);
    q->armed_for = d;
}

void tq_init(tqueue_t *q, loop_t *l, uint64_t ms, void (*expired)(tq_node_t *n))
{
    q->loop = l;
    q->ms = ms;
    q->armed_for = 0;
    q->head = q->tail = NULL;
    q->expired = expired;
    uv_timer_init(&l->uv, &q->timer);
    q->timer.data = q;
}

void tq_del(tq_node_t *n)
{
    tqueue_t *q = n->q;
    if (!q)
        return;
    if (n->prev)
        n->prev->next = n->next;
    else
        q->head = n->next;
    if (n->next)
        n->next->prev = n->prev;
    else
        q->tail = n->prev;
    n->prev = n->next = NULL;
    n->q = NULL;
}

void tq_add(tqueue_t *q, tq_node_t *n)
{
    tq_del(n);
    if (!q->ms)
        return;
    n->deadline = loop_now(q->loop) + q->ms;
    n->q = q;
    n->next = NULL;
    n->prev = q->tail;
    if (q->tail)
        q->tail->next = n;
    else
        q->head = n;
    q->tail = n;
    arm(q);
}

void tq_set_ms(tqueue_t *q, uint64_t ms)
{
    if (ms == q->ms)
        return;
    for (tq_node_t *n = q->head; n; n = n->next)
        n->deadline = n->deadline - q->ms + ms;
    q->ms = ms;
    if (ms == 0) { /* no timeout any more: nobody waits */
        while (q->head)
            tq_del(q->head);
        return;
    }
    q->armed_for = 0; /* the head may be due earlier than the timer */
    arm(q);
}

void tq_close(tqueue_t *q)
{
    /* A queue never initialized (the listener a virtual gateway does not open) has no timer. */
    if (q->loop && !uv_is_closing((uv_handle_t *)&q->timer))
        uv_close((uv_handle_t *)&q->timer, NULL);
}
