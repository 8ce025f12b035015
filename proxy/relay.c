#include "proxy/relay.h"

#include <stdlib.h>

/* One direction's end: its connection and whether its peer finished sending. */
typedef struct side {
    relay_t *r;
    conn_t *c;
    unsigned eof : 1;  /* it sent FIN */
    unsigned shut : 1; /* we sent it FIN */
} side_t;

struct relay {
    side_t s[2];
    uv_timer_t timer;
    uint64_t idle_ms;
    uint64_t last; /* loop time of the last byte either way */
    const relay_owner_t *owner;
    unsigned open; /* connections not yet closed */
    unsigned closing : 1;
};

static side_t *other(side_t *s)
{
    return s == &s->r->s[0] ? &s->r->s[1] : &s->r->s[0];
}

static void on_timer_closed(uv_handle_t *h)
{
    relay_t *r = h->data;
    const relay_owner_t *owner = r->owner;
    free(r);
    if (owner && owner->on_closed)
        owner->on_closed(owner->ctx);
}

static void on_side_closed(void *ctx)
{
    side_t *s = ctx;
    relay_t *r = s->r;
    s->c = NULL;
    if (--r->open == 0)
        uv_close((uv_handle_t *)&r->timer, on_timer_closed);
}

static void close_both(relay_t *r)
{
    r->closing = 1;
    uv_timer_stop(&r->timer);
    for (int i = 0; i < 2; i++)
        if (r->s[i].c)
            conn_close(r->s[i].c);
}

static void update(side_t *s)
{
    /* Read a side while the other can take more and nobody ended that direction. */
    side_t *o = other(s);
    if (s->c && !s->c->closing)
        conn_read(s->c, !s->eof && o->c && !o->shut && !conn_over_high_water(o->c));
}

static void forward(side_t *s, buf_t *b, const char *p, size_t n)
{
    side_t *o = other(s);
    s->r->last = loop_now(s->c->loop);
    conn_write(o->c, b, p, n);
    if (conn_over_high_water(o->c))
        update(s);
}

static void on_read(void *ctx, buf_t *b)
{
    side_t *s = ctx;
    forward(s, b, b->data, b->len);
}

static void on_eof(void *ctx, int err)
{
    side_t *s = ctx;
    relay_t *r = s->r;
    side_t *o = other(s);
    if (err != UV_EOF) {
        close_both(r);
        return;
    }
    s->eof = 1;
    if (o->c && !o->shut) { /* pass the half-close on; the other direction goes on */
        o->shut = 1;
        conn_shutdown(o->c);
    }
    if (o->eof)
        close_both(r);
}

static void on_drain(void *ctx)
{
    side_t *s = ctx;
    update(other(s));
}

static void on_write_error(void *ctx, int err)
{
    (void)err;
    side_t *s = ctx;
    close_both(s->r);
}

static const conn_events_t side_events = {
    .on_read = on_read,
    .on_eof = on_eof,
    .on_drain = on_drain,
    .on_write_error = on_write_error,
    .on_closed = on_side_closed,
};

static void on_timer(uv_timer_t *t)
{
    relay_t *r = t->data;
    uint64_t now = loop_now(r->s[0].c ? r->s[0].c->loop : r->s[1].c->loop);
    if (now < r->last + r->idle_ms) {
        uv_timer_start(&r->timer, on_timer, r->last + r->idle_ms - now, 0);
        return;
    }
    close_both(r);
}

relay_t *relay_start(conn_t *a, buf_t *a_pending, const char *ap, size_t an, conn_t *b,
                     buf_t *b_pending, const char *bp, size_t bn, uint64_t idle_ms,
                     const relay_owner_t *owner)
{
    relay_t *r = calloc(1, sizeof *r);
    if (!r) {
        if (a_pending)
            buf_unref(a_pending);
        if (b_pending)
            buf_unref(b_pending);
        conn_close(a);
        conn_close(b);
        return NULL;
    }
    r->owner = owner;
    r->idle_ms = idle_ms;
    r->open = 2;
    r->s[0] = (side_t){.r = r, .c = a};
    r->s[1] = (side_t){.r = r, .c = b};
    conn_set_owner(a, &side_events, &r->s[0]);
    conn_set_owner(b, &side_events, &r->s[1]);
    uv_timer_init(&a->loop->uv, &r->timer);
    r->timer.data = r;
    r->last = loop_now(a->loop);
    if (idle_ms)
        uv_timer_start(&r->timer, on_timer, idle_ms, 0);
    if (a_pending) {
        forward(&r->s[0], a_pending, ap, an);
        buf_unref(a_pending);
    }
    if (b_pending) {
        forward(&r->s[1], b_pending, bp, bn);
        buf_unref(b_pending);
    }
    update(&r->s[0]);
    update(&r->s[1]);
    return r;
}

void relay_abort(relay_t *r)
{
    close_both(r);
}
