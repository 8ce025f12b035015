#include "proxy/conn.h"

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

conn_t *conn_new(loop_t *l)
{
    if (!l->conns.size)
        slab_init(&l->conns, sizeof(conn_t));
    conn_t *c = slab_alloc(&l->conns);
    if (!c)
        return NULL;
    c->loop = l;
    c->tp = &transport_tcp;
    uv_tcp_init(&l->uv, &c->tcp);
    c->tcp.data = c;
    return c;
}

void conn_set_owner(conn_t *c, const conn_events_t *ev, void *owner)
{
    c->ev = ev;
    c->owner = owner;
}

/* ---- connecting ---- */

static void send_backlog(conn_t *c);
static void drop_backlog(conn_t *c);

typedef struct connect_req {
    uv_connect_t req;
    deferred_t later; /* an immediate failure, reported from the worker's next pass */
    conn_t *c;
    int status;
} connect_req_t;

void conn_on_ready(conn_t *c, int status)
{
    if (c->closing)
        return;
    if (status == 0) {
        c->connected = 1;
        conn_read(c, c->want_read);
        send_backlog(c);
        if (c->shut && !c->write_failed)
            c->tp->shutdown(c);
    } else {
        drop_backlog(c);
    }
    c->ev->on_connect(c->owner, status);
}

static void report_connect(connect_req_t *r)
{
    conn_t *c = r->c;
    int status = r->status;
    free(r);
    if (c->closing)
        return;
    if (status == 0)
        uv_tcp_nodelay(&c->tcp, 1);
    if (status == 0 && c->tp->handshake)
        c->tp->handshake(c);
    else
        conn_on_ready(c, status);
}

static void on_connect(uv_connect_t *req, int status)
{
    connect_req_t *r = req->data;
    r->status = status == UV_ECANCELED ? UV_ECANCELED : status;
    if (status == UV_ECANCELED) { /* closed while connecting: nobody to tell */
        free(r);
        return;
    }
    report_connect(r);
}

static void on_connect_later(deferred_t *d)
{
    report_connect((connect_req_t *)((char *)d - offsetof(connect_req_t, later)));
}

void conn_connect(conn_t *c, const struct sockaddr *addr)
{
    connect_req_t *r = calloc(1, sizeof *r);
    int err = r ? uv_tcp_connect(&r->req, &c->tcp, addr, on_connect) : UV_ENOMEM;
    if (err == 0) {
        r->req.data = r;
        r->c = c;
        return;
    }
    if (!r) { /* not even room to report it: fail as a write error would */
        c->write_failed = 1;
        return;
    }
    /* Never report from inside the call: the caller is still setting up. */
    r->c = c;
    r->status = err;
    r->later.fn = on_connect_later;
    loop_defer(c->loop, &r->later);
}

/* ---- reading ---- */

void conn_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *out)
{
    (void)suggested;
    conn_t *c = h->data;
    buf_t *b = buf_new(&c->loop->bufs, BUF_READ_SIZE);
    *out = b ? uv_buf_init(b->data, b->cap) : uv_buf_init(NULL, 0);
}

void conn_read(conn_t *c, int on)
{
    c->want_read = on ? 1 : 0;
    if (c->closing || !c->connected || c->reading == c->want_read)
        return;
    if (on) {
        if (c->tp->read_start(c) == 0)
            c->reading = 1;
    } else {
        c->tp->read_stop(c);
        c->reading = 0;
    }
}

/* Where c's bytes read (or written) are counted: an accepted connection's listener, a client
 * side's own counters; NULL for nowhere. */
static stat_t *byte_count(const conn_t *c, int written)
{
    if (!c->accepted)
        return written ? c->tx_bytes : c->rx_bytes;
    if (!c->accepted_by)
        return NULL;
    return written ? &c->accepted_by->tx_bytes : &c->accepted_by->rx_bytes;
}

void conn_on_read(conn_t *c, ssize_t nread, buf_t *b)
{
    if (nread <= 0 || c->closing) {
        if (b)
            buf_unref(b);
        if (nread < 0 && !c->closing) {
            c->tp->read_stop(c);
            c->reading = c->want_read = 0;
            c->ev->on_eof(c->owner, (int)nread);
        }
        return;
    }
    b->len = (uint32_t)nread;
    stat_t *rx = byte_count(c, 0);
    if (rx)
        stat_add(rx, (uint64_t)nread);
    c->ev->on_read(c->owner, b);
    buf_unref(b);
}

/* ---- writing ---- */

/* A connection is on the loop's dirty list exactly while it has an `out`; the links are in that
 * write request. */
static void mark_dirty(conn_t *c)
{
    loop_t *l = c->loop;
    c->out->dirty_prev = NULL;
    c->out->dirty_next = l->dirty;
    if (l->dirty)
        l->dirty->out->dirty_prev = c;
    l->dirty = c;
}

static void unmark_dirty(conn_t *c)
{
    wreq_t *r = c->out;
    if (!r)
        return;
    if (r->dirty_prev)
        r->dirty_prev->out->dirty_next = r->dirty_next;
    else
        c->loop->dirty = r->dirty_next;
    if (r->dirty_next)
        r->dirty_next->out->dirty_prev = r->dirty_prev;
    r->dirty_prev = r->dirty_next = NULL;
}

static void tell_later(conn_t *c);

/* A write failed: told to the owner from the loop's next pass, never from inside the owner's
 * own call (a write refused at once comes back from inside conn_write). */
static void write_failed(conn_t *c, int err)
{
    if (c->write_failed)
        return;
    c->write_failed = 1;
    c->write_error = err;
    tell_later(c);
}

/* Room for one more iovec and `scratch` copied bytes. When no write request can be had the
 * connection cannot carry the message intact: it is failed rather than sent with a hole. */
static wreq_t *out_room(conn_t *c, size_t scratch)
{
    if (c->out && (c->out->n == WREQ_IOV_MAX || c->out->scratch_used + scratch > WREQ_SCRATCH))
        conn_flush(c);
    if (!c->out) {
        c->out = loop_wreq_get(c->loop);
        if (!c->out) {
            write_failed(c, UV_ENOMEM);
            return NULL;
        }
        c->out->c = c;
        mark_dirty(c);
    }
    return c->out;
}

void conn_write(conn_t *c, buf_t *b, const char *p, size_t n)
{
    if (n == 0 || c->closing || c->write_failed)
        return;
    /* A small piece of a large read buffer: copy it rather than keep 64 KiB alive for it. */
    if (b && n <= SMALL_COPY && b->cap > SMALL_COPY) {
        conn_write_copy(c, p, n);
        return;
    }
    wreq_t *r = out_room(c, 0);
    if (!r)
        return;
    if (b && !(r->n > 0 && r->ref[r->n - 1] == b))
        r->pinned += b->cap; /* each buffer once per request, whatever share of it is sent */
    r->iov[r->n] = uv_buf_init((char *)p, (unsigned)n);
    r->ref[r->n] = b ? buf_ref(b) : NULL;
    r->n++;
}

void conn_write_copy(conn_t *c, const void *p, size_t n)
{
    if (n == 0 || c->closing || c->write_failed)
        return;
    wreq_t *r = out_room(c, n);
    if (!r)
        return;
    char *dst = r->scratch + r->scratch_used;
    memcpy(dst, p, n);
    r->scratch_used += (unsigned)n;
    r->pinned += n;
    /* Adjacent scratch bytes extend the previous iovec instead of taking a new one. */
    if (r->n > 0 && !r->ref[r->n - 1] && r->iov[r->n - 1].base + r->iov[r->n - 1].len == dst) {
        r->iov[r->n - 1].len += n;
    } else {
        r->iov[r->n] = uv_buf_init(dst, (unsigned)n);
        r->ref[r->n] = NULL;
        r->n++;
    }
}

static void release(loop_t *l, wreq_t *r)
{
    for (unsigned i = 0; i < r->n; i++)
        if (r->ref[i])
            buf_unref(r->ref[i]);
    loop_wreq_put(l, r);
}

void conn_on_written(wreq_t *r, int status)
{
    conn_t *c = r->c;
    c->pinned_inflight -= r->pinned;
    release(c->loop, r);
    if (c->closing)
        return;
    if (status < 0) {
        write_failed(c, status);
        return;
    }
    conn_on_progress(c);
}

void conn_on_progress(conn_t *c)
{
    if (c->closing)
        return;
    if ((c->above_high && conn_pinned(c) < CONN_LOW_WATER) ||
        (c->want_empty && conn_pinned(c) == 0)) {
        c->above_high = c->want_empty = 0;
        if (c->ev->on_drain)
            c->ev->on_drain(c->owner);
    }
}

static void submit(conn_t *c, wreq_t *r);

void conn_flush(conn_t *c)
{
    wreq_t *r = c->out;
    unmark_dirty(c);
    if (!r)
        return;
    c->out = NULL;
    if (c->closing || c->write_failed) {
        release(c->loop, r);
        return;
    }
    if (!c->connected) { /* not up yet: sent in order once it is (a client connection) */
        wreq_t **tail = &c->backlog; /* a few at most: what is written while connecting */
        while (*tail)
            tail = &(*tail)->next_free;
        r->next_free = NULL;
        *tail = r;
        c->pinned_inflight += r->pinned;
        return;
    }
    submit(c, r);
}

/* What the owner is owed from a write: the failure, else a drain. */
static void tell(deferred_t *d)
{
    conn_t *c = (conn_t *)(void *)((char *)d - offsetof(conn_t, told));
    if (c->closing || !c->ev)
        return;
    if (c->write_failed && !c->error_told) {
        c->error_told = 1;
        if (c->ev->on_write_error)
            c->ev->on_write_error(c->owner, c->write_error);
        if (c->closing)
            return;
    }
    if (c->want_empty && conn_pinned(c) == 0)
        c->want_empty = 0; /* owed whether or not a write failed: nothing is queued */
    else if (c->write_failed || !c->above_high || conn_pinned(c) >= CONN_LOW_WATER)
        return;
    c->above_high = 0;
    if (c->ev->on_drain)
        c->ev->on_drain(c->owner);
}

static void tell_later(conn_t *c)
{
    c->told.fn = tell;
    loop_defer(c->loop, &c->told);
}

static void submit(conn_t *c, wreq_t *r)
{
    stat_t *tx = byte_count(c, 1);
    if (tx) {
        size_t n = 0;
        for (unsigned i = 0; i < r->n; i++)
            n += r->iov[i].len;
        stat_add(tx, n);
    }
    int rc = c->tp->write(c, r);
    if (rc < 0) {
        release(c->loop, r);
        write_failed(c, rc);
        return;
    }
    if (rc == 0) {
        c->pinned_inflight += r->pinned;
        return;
    }
    release(c->loop, r); /* all sent at once; a drain owed is told outside the writer's call */
    if ((c->above_high && conn_pinned(c) < CONN_LOW_WATER) || (c->want_empty && !conn_pinned(c)))
        tell_later(c);
}

/* Connected: what was written while connecting goes out first, in order. */
static void send_backlog(conn_t *c)
{
    while (c->backlog) {
        wreq_t *r = c->backlog;
        c->backlog = r->next_free;
        c->pinned_inflight -= r->pinned;
        submit(c, r);
    }
}

static void drop_backlog(conn_t *c)
{
    if (c->accepted)
        return; /* never connecting: the union holds accepted_by */
    while (c->backlog) {
        wreq_t *r = c->backlog;
        c->backlog = r->next_free;
        c->pinned_inflight -= r->pinned;
        release(c->loop, r);
    }
}

size_t conn_pinned(const conn_t *c)
{
    size_t own = c->tp->pinned ? c->tp->pinned(c) : 0; /* a transport's handshakes, alerts */
    return c->pinned_inflight + (c->out ? c->out->pinned : 0) + own;
}

int conn_over_high_water(conn_t *c)
{
    if (conn_pinned(c) <= CONN_HIGH_WATER)
        return 0;
    c->above_high = 1;
    return 1;
}

void conn_flush_dirty(loop_t *l)
{
    while (l->dirty)
        conn_flush(l->dirty);
}

/* ---- ending ---- */

void conn_notify_empty(conn_t *c)
{
    c->want_empty = 1;
    if (conn_pinned(c) == 0)
        tell_later(c);
}

void conn_shutdown(conn_t *c)
{
    if (c->shut || c->closing)
        return;
    c->shut = 1;
    conn_flush(c);
    if (c->connected && !c->write_failed)
        c->tp->shutdown(c);
}

static void on_closed(uv_handle_t *h)
{
    conn_t *c = h->data;
    if (c->ev && c->ev->on_closed)
        c->ev->on_closed(c->owner);
    loop_cancel(c->loop, &c->told);
    if (c->accepted && c->accepted_by) {
        stat_dec(&c->accepted_by->downstream_cx_active);
        stat_inc(&c->accepted_by->downstream_cx_destroy);
    }
    if (c->tp->free)
        c->tp->free(c);
    slab_free(&c->loop->conns, c);
}

/* Drop what is queued; 0 when the connection was already closing. */
static int begin_close(conn_t *c)
{
    if (c->closing)
        return 0;
    c->closing = 1;
    unmark_dirty(c);
    if (c->out) {
        release(c->loop, c->out);
        c->out = NULL;
    }
    drop_backlog(c);
    return 1;
}

void conn_close(conn_t *c)
{
    if (!c->closing && c->connected && !c->write_failed && c->tp->close)
        c->tp->close(c);
    if (begin_close(c))
        uv_close((uv_handle_t *)&c->tcp, on_closed);
}

int conn_accept(conn_t *c, uv_stream_t *server)
{
    int err = uv_accept(server, (uv_stream_t *)&c->tcp);
    c->accepted = 1; /* from here on the union holds accepted_by (NULL until the caller sets it) */
    if (err == 0) {
        c->connected = 1;
        uv_tcp_nodelay(&c->tcp, 1);
    }
    return err;
}

void conn_reset(conn_t *c)
{
    if (begin_close(c) && uv_tcp_close_reset(&c->tcp, on_closed) != 0)
        uv_close((uv_handle_t *)&c->tcp, on_closed);
}

void conn_peer_name(conn_t *c, char *out, size_t n)
{
    struct sockaddr_storage ss;
    int len = sizeof ss;
    out[0] = '\0';
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) != 0)
        return;
    if (ss.ss_family == AF_INET)
        uv_ip4_name((struct sockaddr_in *)&ss, out, n);
    else if (ss.ss_family == AF_INET6)
        uv_ip6_name((struct sockaddr_in6 *)&ss, out, n);
}

void conn_peer_addr(conn_t *c, uint8_t out[16])
{
    struct sockaddr_storage ss;
    int len = sizeof ss;
    memset(out, 0, 16);
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) != 0)
        return;
    if (ss.ss_family == AF_INET) {
        out[10] = out[11] = 0xff;
        memcpy(out + 12, &((struct sockaddr_in *)&ss)->sin_addr, 4);
    } else if (ss.ss_family == AF_INET6) {
        memcpy(out, &((struct sockaddr_in6 *)&ss)->sin6_addr, 16);
    }
}

/* 0..255 in decimal, and how many digits. */
static const struct {
    char d[3];
    uint8_t n;
} octets[256] = {
#define O1(v)                                                                                      \
    {                                                                                              \
        {'0' + (v)}, 1                                                                             \
    }
#define O2(v)                                                                                      \
    {                                                                                              \
        {'0' + (v) / 10, '0' + (v) % 10}, 2                                                        \
    }
#define O3(v)                                                                                      \
    {                                                                                              \
        {'0' + (v) / 100, '0' + (v) / 10 % 10, '0' + (v) % 10}, 3                                  \
    }
#define T10(F, b)                                                                                  \
    F(b), F(b + 1), F(b + 2), F(b + 3), F(b + 4), F(b + 5), F(b + 6), F(b + 7), F(b + 8), F(b + 9)
    T10(O1, 0),   T10(O2, 10),  T10(O2, 20),  T10(O2, 30),  T10(O2, 40),  T10(O2, 50),
    T10(O2, 60),  T10(O2, 70),  T10(O2, 80),  T10(O2, 90),  T10(O3, 100), T10(O3, 110),
    T10(O3, 120), T10(O3, 130), T10(O3, 140), T10(O3, 150), T10(O3, 160), T10(O3, 170),
    T10(O3, 180), T10(O3, 190), T10(O3, 200), T10(O3, 210), T10(O3, 220), T10(O3, 230),
    T10(O3, 240), O3(250),      O3(251),      O3(252),      O3(253),      O3(254),
    O3(255),
#undef O1
#undef O2
#undef O3
#undef T10
};

void conn_peer_format(const uint8_t a[16], char *out, size_t n)
{
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    static const uint8_t zero[16];
    out[0] = '\0';
    if (memcmp(a, zero, 16) == 0)
        return;
    if (memcmp(a, mapped, 12) == 0) { /* by hand: once per request */
        if (n < 16)
            return;
        char *p = out;
        for (int i = 12; i < 16; i++) {
            memcpy(p, octets[a[i]].d, 3);
            p += octets[a[i]].n;
            *p++ = '.';
        }
        p[-1] = '\0';
        return;
    }
    if (!inet_ntop(AF_INET6, a, out, (socklen_t)n))
        out[0] = '\0';
}
