#include "proxy/h2_body.h"

#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "base/err.h"

static void seg_drop(h2_body_t *o, h2_seg_t *sg)
{
    if (sg->b)
        buf_unref(sg->b);
    o->pinned -= sg->charge;
    o->conn->pinned -= sg->charge;
}

static int grow(h2_body_t *o)
{
    if (o->head > 0 && o->head == o->n)
        o->n = o->head = 0;
    if (o->n < o->cap)
        return 0;
    if (o->head > 0) { /* slide the live pieces down */
        memmove(o->segs, o->segs + o->head, (o->n - o->head) * sizeof *o->segs);
        o->n -= o->head;
        o->head = 0;
        return 0;
    }
    unsigned cap = o->cap ? o->cap * 2 : 8;
    h2_seg_t *p = realloc(o->segs, cap * sizeof *p);
    if (!p)
        return UV_ENOMEM;
    o->segs = p;
    o->cap = cap;
    return 0;
}

/* A small piece joins the copy buffer; returns where it now lives, or NULL (no memory). With
 * *merged set it extended the last queued piece and needs no piece of its own. */
static const char *copy_small(h2_body_t *o, bufpool_t *bufs, const char *p, size_t n, int *merged)
{
    h2_seg_t *last = o->n > o->head ? &o->segs[o->n - 1] : NULL;
    if (!o->tail || o->tail->cap - o->tail->len < n) {
        if (o->tail)
            buf_unref(o->tail);
        if (!(o->tail = buf_new(bufs, BUF_READ_SIZE)))
            return NULL;
    }
    char *dst = o->tail->data + o->tail->len;
    memcpy(dst, p, n);
    o->tail->len += (uint32_t)n;
    *merged = last && last->b == o->tail && last->p + last->n == dst;
    if (*merged)
        last->n += n;
    return dst;
}

int h2_body_queue(h2_body_t *o, bufpool_t *bufs, buf_t *b, const char *p, size_t n)
{
    if (b && n <= SMALL_COPY) {
        int merged;
        if (!(p = copy_small(o, bufs, p, n, &merged)))
            return UV_ENOMEM;
        o->bytes += n;
        if (merged)
            return 0;
        b = o->tail;
    } else {
        o->bytes += n;
    }
    if (grow(o) != 0) {
        o->bytes -= n;
        return UV_ENOMEM;
    }
    h2_seg_t *last = o->n > o->head ? &o->segs[o->n - 1] : NULL;
    size_t charge = b && !(last && last->b == b) ? b->cap : 0;
    o->segs[o->n++] = (h2_seg_t){b ? buf_ref(b) : NULL, p, n, charge};
    o->pinned += charge;
    o->conn->pinned += charge;
    return 0;
}

void h2_body_end(h2_body_t *o, loop_t *l, const head_t *t)
{
    o->done = 1;
    if (!t || t->nfields == 0 || !(o->trailers = head_take(l)))
        return;
    for (unsigned i = 0; i < t->nfields; i++)
        if (!h2_field_excluded(t, i))
            head_add_field(o->trailers, field_name(t, i), t->fields[i].name_len, field_value(t, i),
                           t->fields[i].value_len);
}

void h2_body_drop(h2_body_t *o, loop_t *l)
{
    for (unsigned i = o->head; i < o->n; i++)
        seg_drop(o, &o->segs[i]);
    o->n = o->head = 0;
    o->bytes = o->reserved = 0;
    if (o->tail)
        buf_unref(o->tail);
    o->tail = NULL;
    head_give(l, o->trailers);
    o->trailers = NULL;
}

void h2_body_free(h2_body_t *o, loop_t *l)
{
    h2_body_drop(o, l);
    free(o->segs);
    o->segs = NULL;
    o->cap = 0;
    if (o->over)
        o->conn->nover--;
    o->over = 0;
}

int h2_body_over(h2_body_t *o)
{
    if (o->pinned <= H2_STREAM_HIGH_WATER && o->conn->pinned <= H2_CONN_QUEUE_HIGH)
        return 0;
    if (!o->over) {
        o->over = 1;
        o->conn->nover++;
    }
    return 1;
}

int h2_body_drained(h2_body_t *o)
{
    if (!o->over || o->pinned >= H2_STREAM_LOW_WATER || o->conn->pinned >= H2_CONN_QUEUE_LOW)
        return 0;
    o->over = 0;
    o->conn->nover--;
    return 1;
}

static void submit_trailers(h2_body_t *o, loop_t *l, nghttp2_session *s, int32_t id,
                            uint32_t *flags)
{
    head_t *t = o->trailers;
    o->trailers = NULL;
    if (t && t->nfields > 0) {
        nghttp2_nv nv[HEAD_STORE_FIELDS];
        char *names = malloc(h2_names_len(t) + 1);
        size_t n = names ? h2_nv_fields(t, nv, HEAD_STORE_FIELDS, names, NULL) : 0;
        if (names && nghttp2_submit_trailer(s, id, nv, n) == 0)
            *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
        free(names);
    }
    head_give(l, t);
}

ssize_t h2_body_read(h2_body_t *o, loop_t *l, nghttp2_session *s, int32_t id, size_t length,
                     uint32_t *flags)
{
    size_t avail = o->bytes - o->reserved;
    size_t n = avail < length ? avail : length;
    if (n == 0 && !o->done) {
        o->deferred = 1;
        return NGHTTP2_ERR_DEFERRED;
    }
    *flags |= NGHTTP2_DATA_FLAG_NO_COPY;
    o->reserved += n;
    if (n == avail && o->done) {
        *flags |= NGHTTP2_DATA_FLAG_EOF;
        submit_trailers(o, l, s, id, flags);
    }
    return (ssize_t)n;
}

void h2_body_frame(h2_body_t *o, conn_t *c, const nghttp2_frame *f, const uint8_t *framehd,
                   size_t length)
{
    conn_write_copy(c, framehd, 9);
    size_t pad = f->data.padlen;
    if (pad > 0) {
        uint8_t pl = (uint8_t)(pad - 1);
        conn_write_copy(c, &pl, 1);
    }
    size_t left = length;
    while (left > 0 && o->head < o->n) {
        h2_seg_t *sg = &o->segs[o->head];
        size_t k = sg->n < left ? sg->n : left;
        conn_write(c, sg->b, sg->p, k);
        sg->p += k;
        sg->n -= k;
        left -= k;
        o->bytes -= k;
        if (sg->n == 0) {
            seg_drop(o, sg);
            o->head++;
        }
    }
    if (o->head == o->n)
        o->n = o->head = 0;
    o->reserved -= length - left;
    static const char zeros[256];
    for (size_t z = pad > 1 ? pad - 1 : 0; z > 0;) {
        size_t k = z < sizeof zeros ? z : sizeof zeros;
        conn_write_copy(c, zeros, k);
        z -= k;
    }
}

nghttp2_option *h2_options_new(void)
{
    nghttp2_option *opt;
    if (nghttp2_option_new(&opt) != 0)
        return NULL;
    nghttp2_option_set_no_auto_window_update(opt, 1);
    nghttp2_option_set_no_closed_streams(opt, 1);
    nghttp2_option_set_max_outbound_ack(opt, 1000);
    nghttp2_option_set_max_settings(opt, 32);
    nghttp2_option_set_max_continuations(opt, 8);
    return opt;
}

int h2_hold(buf_t **held, bufpool_t *bufs, size_t cap, const uint8_t *p, size_t n)
{
    if (!*held && !(*held = buf_new(bufs, cap)))
        return UV_ENOMEM;
    buf_t *b = *held;
    if (b->cap - b->len < n)
        return ERR_TOO_LARGE;
    memcpy(b->data + b->len, p, n);
    b->len += (uint32_t)n;
    return 0;
}

int h2_out_copy(conn_t *c, bufpool_t *bufs, buf_t **stage, const void *p, size_t n)
{
    if (n <= 256) {
        conn_write_copy(c, p, n);
        return 0;
    }
    buf_t *b = *stage;
    if (!b || b->cap - b->len < n) {
        if (b)
            buf_unref(b);
        if (!(b = *stage = buf_new(bufs, n)))
            return UV_ENOMEM;
    }
    char *dst = b->data + b->len;
    memcpy(dst, p, n);
    b->len += (uint32_t)n;
    conn_write(c, b, dst, n);
    return 0;
}

/* ---- fields ---- */

int h2_field_excluded(const head_t *h, unsigned i)
{
    const field_t *f = &h->fields[i];
    switch (f->id) {
    case F_CONNECTION:
    case F_KEEP_ALIVE:
    case F_PROXY_CONNECTION:
    case F_TRANSFER_ENCODING:
    case F_UPGRADE:
    case F_HOST:
    case F_CONTENT_LENGTH:
        return 1;
    default:
        return f->hop || f->name_len == 0;
    }
}

size_t h2_names_len(const head_t *h)
{
    size_t n = 0;
    for (unsigned i = 0; i < h->nfields; i++)
        n += h->fields[i].name_len;
    return n;
}

static int has_upper(const char *p, size_t n)
{
    for (size_t k = 0; k < n; k++)
        if (p[k] >= 'A' && p[k] <= 'Z')
            return 1;
    return 0;
}

size_t h2_nv_fields(const head_t *h, nghttp2_nv *nv, size_t max, char *names,
                    int (*skip)(const head_t *h, unsigned i))
{
    size_t n = 0, at = 0;
    for (unsigned i = 0; i < h->nfields && n < max; i++) {
        if (skip ? skip(h, i) : h->fields[i].name_len == 0)
            continue;
        const field_t *f = &h->fields[i];
        const char *name = field_name(h, i);
        if (has_upper(name, f->name_len)) {
            for (uint32_t k = 0; k < f->name_len; k++)
                names[at + k] = (char)(name[k] >= 'A' && name[k] <= 'Z' ? name[k] + 32 : name[k]);
            name = names + at;
            at += f->name_len;
        }
        nv[n++] = (nghttp2_nv){(uint8_t *)name, (uint8_t *)field_value(h, i), f->name_len,
                               f->value_len, NGHTTP2_NV_FLAG_NONE};
    }
    return n;
}
