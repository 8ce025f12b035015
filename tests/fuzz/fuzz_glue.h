/* Shared harness for the codec targets (fuzz_h1_server.c, fuzz_h1_client.c): one connection
 * over a transport of the harness's own, driven the way libuv would drive it, with no socket
 * and no clock.
 *
 * The wire (wire_t) is that transport. Writes are recorded byte for byte into `out`, then
 * either reported as sent at once (write returns 1), or queued and completed from the pump,
 * after write returned (0), or refused (a UV_E* code) or failed later (conn_on_written with an
 * error) when the run's knobs say so; failed bytes are not recorded. A write after shutdown
 * is a broken invariant: those bytes would be lost. Reading is whatever conn.c last asked for
 * (c->reading); the driver feeds input only while it is on, as libuv would.
 *
 * pump_once() is one loop iteration in libuv's order: finished writes are reported (the poll
 * phase), deferred work runs and output is flushed (loop_pass, the worker's prepare and check
 * passes), writes of connections closed meanwhile are cancelled (libuv reports them with
 * UV_ECANCELED before the close callback), then close callbacks (uv_run, UV_RUN_NOWAIT).
 *
 * Everything here is `static inline` so that each target uses what it needs. */
#ifndef REMORA_FUZZ_GLUE_H
#define REMORA_FUZZ_GLUE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "base/buf.h"
#include "proxy/conn.h"
#include "http/head.h"
#include "proxy/loop.h"
#include "proxy/transport.h"

/* A broken invariant: say which, then abort() so that libFuzzer keeps the input. */
static inline void glue_fail(const char *file, int line, const char *what)
{
    fprintf(stderr, "%s:%d: invariant broken: %s\n", file, line, what);
    abort();
}
#define check(ok) ((ok) ? (void)0 : glue_fail(__FILE__, __LINE__, #ok))

/* FUZZ_SKIP_KNOWN=1 in the environment steers a target around the bugs it already found (each
 * is named where it is skipped, with its input in regressions/): long runs then look for new
 * ones. Replays (make fuzz-smoke) never set it, so the regressions fail until fixed. */
static inline int skip_known(void)
{
    static int skip = -1;
    if (skip < 0)
        skip = getenv("FUZZ_SKIP_KNOWN") != NULL;
    return skip;
}

/* ---- a growable byte string ---- */

typedef struct sink {
    char *p;
    size_t n, cap;
} sink_t;

static inline void sink_put(sink_t *s, const void *p, size_t n)
{
    if (s->n + n > s->cap) {
        size_t cap = s->cap ? s->cap : 1024;
        while (cap < s->n + n)
            cap *= 2;
        s->p = realloc(s->p, cap);
        check(s->p != NULL);
        s->cap = cap;
    }
    if (n)
        memcpy(s->p + s->n, p, n);
    s->n += n;
}

static inline void sink_free(sink_t *s)
{
    free(s->p);
    memset(s, 0, sizeof *s);
}

/* ---- knobs: a small deterministic generator seeded from input bytes ---- */

typedef struct rng {
    uint64_t s;
} rng_t;

static inline uint32_t rng_next(rng_t *r)
{
    r->s += 0x9e3779b97f4a7c15u; /* splitmix64 */
    uint64_t z = r->s;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return (uint32_t)((z ^ (z >> 31)) >> 16);
}

/* 1..max */
static inline size_t rng_upto(rng_t *r, size_t max)
{
    return 1 + rng_next(r) % max;
}

/* How the input is cut into reads: 0 whole (up to one read buffer), 1 pieces of 1..8 bytes,
 * 2 of 1..300, 3 of 1..64; `scale` times that for padded inputs (thousands of reads of a few
 * bytes each would make them slow and teach nothing more). */
static inline size_t next_slice(rng_t *r, unsigned mode, size_t scale, size_t left)
{
    static const size_t max[] = {BUF_READ_SIZE, 8, 300, 64};
    size_t n = mode == 0 ? BUF_READ_SIZE : rng_upto(r, max[mode & 3] * scale);
    if (n > BUF_READ_SIZE)
        n = BUF_READ_SIZE;
    return n < left ? n : left;
}

/* Where the stream holds a 0x01 byte (first one only), padded inputs carry PAD_LEN bytes of 'p'
 * instead, which puts the 64 KiB caps on heads and trailers within reach of short inputs.
 * Returns a fresh copy (free it); *n is its length. */
#define PAD_LEN (HEAD_MAX_BYTES - 512)
static inline char *expand_stream(const uint8_t *data, size_t size, int pad, size_t *n)
{
    const uint8_t *one = pad ? memchr(data, 0x01, size) : NULL;
    size_t len = size + (one ? PAD_LEN - 1 : 0);
    char *s = malloc(len ? len : 1);
    check(s != NULL);
    if (!one) {
        if (size)
            memcpy(s, data, size);
    } else {
        size_t at = (size_t)(one - data);
        memcpy(s, data, at);
        memset(s + at, 'p', PAD_LEN);
        memcpy(s + at + PAD_LEN, one + 1, size - at - 1);
    }
    *n = len;
    return s;
}

/* ---- the wire ---- */

enum wire_fail { WF_NONE, WF_REFUSE, WF_LATER }; /* how the failing write fails */

typedef struct wire {
    loop_t *loop;
    sink_t out;       /* every byte the codec sent, in order */
    wreq_t **pending; /* writes queued, reported from the pump */
    size_t npending, cap;
    unsigned writes;     /* write calls so far */
    unsigned fail_at;    /* this write call (1-based) and all after it fail; 0: none */
    enum wire_fail how;  /* ... this way */
    int queue_writes;    /* report writes from the pump (0) rather than at once (1) */
    unsigned shut : 1;   /* FIN sent */
    unsigned failed : 1; /* a write failure was reported to conn.c */
    unsigned lost : 1;   /* bytes were lost: what was recorded is a prefix */
} wire_t;

/* The transport's callbacks get only the connection; each run drives one wire. */
static wire_t *current_wire;

static inline int wire_read_start(conn_t *c)
{
    (void)c;
    return 0;
}

static inline void wire_read_stop(conn_t *c)
{
    (void)c;
}

static inline int wire_write(conn_t *c, wreq_t *r)
{
    wire_t *w = current_wire;
    (void)c;
    check(!w->shut); /* bytes after our FIN would never reach the peer */
    w->writes++;
    int failing = w->fail_at && w->writes >= w->fail_at;
    if (failing)
        w->lost = 1;
    if (failing && w->how == WF_REFUSE) {
        w->failed = 1;
        return UV_EPIPE;
    }
    if (!failing)
        for (unsigned i = 0; i < r->n; i++)
            sink_put(&w->out, r->iov[i].base, r->iov[i].len);
    if (!failing && !w->queue_writes)
        return 1;
    if (w->npending == w->cap) {
        w->cap = w->cap ? 2 * w->cap : 16;
        w->pending = realloc(w->pending, w->cap * sizeof *w->pending);
        check(w->pending != NULL);
    }
    /* A failing write is marked through req.data (conn.c leaves it alone): UV_EPIPE later. */
    r->req.data = failing ? (void *)w : NULL;
    w->pending[w->npending++] = r;
    return 0;
}

static inline int wire_shutdown(conn_t *c)
{
    wire_t *w = current_wire;
    (void)c;
    check(!w->shut);
    w->shut = 1;
    return 0;
}

static const transport_t wire_transport = {
    .name = "fuzz",
    .read_start = wire_read_start,
    .read_stop = wire_read_stop,
    .write = wire_write,
    .shutdown = wire_shutdown,
};

static inline void wire_init(wire_t *w, loop_t *l)
{
    memset(w, 0, sizeof *w);
    w->loop = l;
    current_wire = w;
}

static inline void wire_free(wire_t *w)
{
    sink_free(&w->out);
    free(w->pending);
    current_wire = NULL;
}

/* A connection over the wire, up, not yet owned. */
static inline conn_t *wire_conn(wire_t *w)
{
    conn_t *c = conn_new(w->loop);
    check(c != NULL);
    c->tp = &wire_transport;
    c->connected = 1;
    return c;
}

/* Report queued writes: those of closing connections (only) when `closing_only`. */
static inline int wire_complete(wire_t *w, int closing_only)
{
    int did = 0;
    size_t keep = 0;
    /* Reporting may queue more (a drain writes the next piece): take the list as it is now. */
    size_t n = w->npending;
    wreq_t **batch = malloc((n ? n : 1) * sizeof *batch);
    check(batch != NULL);
    size_t nb = 0;
    for (size_t i = 0; i < n; i++) {
        wreq_t *r = w->pending[i];
        if (closing_only && !r->c->closing)
            w->pending[keep++] = r;
        else
            batch[nb++] = r;
    }
    w->npending = keep;
    for (size_t i = 0; i < nb; i++) {
        wreq_t *r = batch[i];
        int status = r->c->closing ? UV_ECANCELED : r->req.data ? UV_EPIPE : 0;
        if (status == UV_EPIPE)
            w->failed = 1;
        conn_on_written(r, status);
        did = 1;
    }
    free(batch);
    return did;
}

/* One loop iteration; returns whether anything happened. */
static inline int pump_once(wire_t *w)
{
    loop_t *l = w->loop;
    int did = wire_complete(w, 0);
    if (l->deferred || l->dirty) {
        loop_pass(l);
        did = 1;
    }
    did |= wire_complete(w, 1);
    /* libuv keeps handles being closed on this (private, unix) list until their callbacks. */
    if (l->uv.closing_handles) {
        uv_run(&l->uv, UV_RUN_NOWAIT);
        did = 1;
    }
    return did;
}

/* Until nothing is left to do; a run that never settles is a livelock. */
static inline void pump(wire_t *w)
{
    unsigned rounds = 0;
    while (pump_once(w))
        check(++rounds < 100000);
}

/* Bytes from the peer: n bytes at p as one read (n <= BUF_READ_SIZE). */
static inline void wire_feed(wire_t *w, conn_t *c, const char *p, size_t n)
{
    buf_t *b = buf_new(&w->loop->bufs, BUF_READ_SIZE);
    check(b != NULL);
    memcpy(b->data, p, n);
    conn_on_read(c, (ssize_t)n, b);
}

static inline void count_handle(uv_handle_t *h, void *arg)
{
    (void)h;
    ++*(unsigned *)arg;
}

/* The end of a run: every handle closed, every buffer back; the loop is freed, the wire (and
 * what was written) is kept for the caller to read, then wire_free(). */
static inline void loop_teardown(wire_t *w)
{
    loop_t *l = w->loop;
    pump(w);
    check(!uv_loop_alive(&l->uv)); /* no timer left running, nothing left closing */
    unsigned handles = 0;
    uv_walk(&l->uv, count_handle, &handles);
    check(handles == 0);
    check(l->deferred == NULL && l->dirty == NULL);
    check(l->bufs.live == 0);
    check(w->npending == 0);
    head_pool_free(l);
    loop_free(l);
}

#endif
