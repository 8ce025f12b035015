#include "proxy/conn.h"

#include <string.h>

#include "proxy/worker.h"

void conn_init(conn_t *c, worker_t *w, const conn_ops_t *ops)
{
    memset(c, 0, sizeof *c);
    c->w = w;
    c->ops = ops;
    uv_tcp_init(&w->loop, &c->tcp);
    c->tcp.data = c;
}

static void mark_dirty(conn_t *c)
{
    if (c->dirty)
        return;
    worker_t *w = c->w;
    c->dirty = 1;
    c->dirty_prev = NULL;
    c->dirty_next = w->dirty;
    if (w->dirty)
        w->dirty->dirty_prev = c;
    w->dirty = c;
}

static void unmark_dirty(conn_t *c)
{
    if (!c->dirty)
        return;
    if (c->dirty_prev)
        c->dirty_prev->dirty_next = c->dirty_next;
    else
        c->w->dirty = c->dirty_next;
    if (c->dirty_next)
        c->dirty_next->dirty_prev = c->dirty_prev;
    c->dirty = 0;
    c->dirty_prev = c->dirty_next = NULL;
}

static wreq_t *out_room(conn_t *c, size_t scratch)
{
    if (c->out && (c->out->n == WREQ_IOV_MAX || c->out->scratch_used + scratch > WREQ_SCRATCH))
        conn_flush(c);
    if (!c->out) {
        c->out = worker_wreq_get(c->w);
        if (!c->out)
            return NULL;
        mark_dirty(c);
    }
    return c->out;
}

void conn_write(conn_t *c, buf_t *b, const char *p, size_t n)
{
    if (n == 0 || c->closing)
        return;
    /* A small piece of a large read buffer: copy it rather than keep 64 KiB alive for it. */
    if (b && n <= SMALL_COPY && b->cap > SMALL_COPY) {
        conn_write_copy(c, p, n);
        return;
    }
    wreq_t *r = out_room(c, 0);
    if (!r)
        return;
    r->iov[r->n] = uv_buf_init((char *)p, (unsigned)n);
    r->ref[r->n] = b ? buf_ref(b) : NULL;
    r->n++;
    r->bytes += n;
}

void conn_write_copy(conn_t *c, const void *p, size_t n)
{
    if (n == 0 || c->closing)
        return;
    wreq_t *r = out_room(c, n);
    if (!r)
        return;
    char *dst = r->scratch + r->scratch_used;
    memcpy(dst, p, n);
    r->scratch_used += (unsigned)n;
    /* Adjacent scratch bytes extend the previous iovec instead of taking a new one. */
    if (r->n > 0 && !r->ref[r->n - 1] && r->iov[r->n - 1].base + r->iov[r->n - 1].len == dst) {
        r->iov[r->n - 1].len += n;
    } else {
        r->iov[r->n] = uv_buf_init(dst, (unsigned)n);
        r->ref[r->n] = NULL;
        r->n++;
    }
    r->bytes += n;
}

static void release(worker_t *w, wreq_t *r)
{
    for (unsigned i = 0; i < r->n; i++)
        if (r->ref[i])
            buf_unref(r->ref[i]);
    worker_wreq_put(w, r);
}

static void on_written(uv_write_t *req, int status)
{
    wreq_t *r = (wreq_t *)req;
    conn_t *c = req->handle->data;
    release(c->w, r);
    if (c->closing)
        return;
    if (status < 0) {
        if (!c->write_failed) {
            c->write_failed = 1;
            if (c->ops->on_write_error)
                c->ops->on_write_error(c, status);
        }
        return;
    }
    if (c->above_high && conn_queued(c) < CONN_LOW_WATER) {
        c->above_high = 0;
        if (c->ops->on_drain)
            c->ops->on_drain(c);
    }
}

void conn_flush(conn_t *c)
{
    wreq_t *r = c->out;
    unmark_dirty(c);
    if (!r)
        return;
    c->out = NULL;
    if (c->closing || c->write_failed) {
        release(c->w, r);
        return;
    }
    int err = uv_write(&r->req, (uv_stream_t *)&c->tcp, r->iov, r->n, on_written);
    if (err < 0) {
        release(c->w, r);
        if (!c->write_failed) {
            c->write_failed = 1;
            if (c->ops->on_write_error)
                c->ops->on_write_error(c, err);
        }
    }
}

size_t conn_queued(const conn_t *c)
{
    return c->tcp.write_queue_size + (c->out ? c->out->bytes : 0);
}

int conn_over_high_water(conn_t *c)
{
    if (conn_queued(c) <= CONN_HIGH_WATER)
        return 0;
    c->above_high = 1;
    return 1;
}

void conn_close(conn_t *c, uv_close_cb done)
{
    if (c->closing)
        return;
    c->closing = 1;
    unmark_dirty(c);
    if (c->out) {
        release(c->w, c->out);
        c->out = NULL;
    }
    uv_close((uv_handle_t *)&c->tcp, done);
}

void conn_flush_dirty(worker_t *w)
{
    while (w->dirty)
        conn_flush(w->dirty);
}

void conn_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *out)
{
    (void)suggested;
    conn_t *c = h->data;
    buf_t *b = buf_new(&c->w->bufs, BUF_READ_SIZE);
    *out = b ? uv_buf_init(b->data, b->cap) : uv_buf_init(NULL, 0);
}
