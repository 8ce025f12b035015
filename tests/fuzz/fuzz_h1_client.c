/* proxy/h1_client.c, with proxy/conn.c and proxy/h1_out.c under it, driven through the
 * transport seam: a fake pool owns the connection, a scripted exchange sends requests on it,
 * and the input is what the upstream answers.
 *
 * Input: nine knob bytes, then the upstream's bytes.
 *   byte 0  bits 0-1 how the bytes are cut into reads (fuzz_glue.h next_slice), though a read
 *           mostly ends where a response does; bit 3 writes are reported from the loop (else
 *           sent at once); bit 4 a write fails (byte 1 picks which), bit 5 ... later through
 *           its callback (else refused at once); bit 6 an idle connection is parked first;
 *           bit 7 a read arrives while the connection is idle (stray bytes: it must close);
 *           bit 2 unused.
 *   byte 1  seed of the generator (read sizes, body lengths, pieces), and the failing write.
 *   byte 2  bit 0 at the end the exchange drops its stream before the upstream's EOF; bit 1
 *           the EOF comes right after the last read (else once the exchange is done); bits 4-7
 *           all set: the first 0x01 byte stands for PAD_LEN bytes of 'p' (rare: slow).
 *   3..8    two bytes per stream, streams cycling through three pairs:
 *           A bits 0-2 the request: GET, HEAD, POST with a length, POST chunked, PUT chunked
 *             with trailers, GET with Upgrade, CONNECT, an extension method with a length;
 *             bits 3-4 when its end is sent: at once, after the response head, never, after
 *             the first response bytes; bit 5 Expect: 100-continue; bit 6 the response is
 *             paused at its head and resumed a turn later; bit 7 the body from a buffer of
 *             the loop's pool (else static storage).
 *           B bits 0-1 release after the response: in the chain, from the loop's deferred
 *             list, a turn later, or early (at the head, unclean); bit 2 release unclean; bits
 *             3-4 release after on_error the same three ways.
 *
 * Each stream's response is also parsed on the side by the strict parser, in one piece, from
 * where the stream began in the upstream's bytes (the reference, with the request's method);
 * what the codec reports must be it: the final status and MSG_* flags, the body byte for byte,
 * on_end exactly when it ends (or at EOF when the body runs to the close), on_error with
 * ERR_BAD_RESPONSE exactly when it is broken, ERR_UPSTREAM_CLOSED at an EOF that cuts it.
 *
 * Invariants (abort() on a violation): per stream on_head at most once, nothing before it but
 * on_error, nothing after on_end, on_error or release, no on_data or on_end after MSG_END;
 * on_data points inside its buffer; on_end's body adds up to the Content-Length; a 101 hands
 * over exactly the bytes after its head. Reuse: the pool hears on_idle after a release exactly
 * when the connection may carry another request: released clean, request and response
 * complete, no `close`, nothing read past the response, not a 101 or a 2xx to CONNECT (a
 * tunnel follows, RFC 9110 §9.3.6), no failed write; then the next stream is asked for on the
 * same connection and its response is the bytes that follow. on_gone exactly once, nothing
 * after it. A quiet connection with nothing left to the exchange must be reading.
 *
 * At the end, what the codec wrote is parsed as requests: each the one the exchange sent
 * (method, target, framing restated as asked, the body and trailers as sent). No leak: every
 * buffer, head, handle and request is returned. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"
#include "base/http.h"
#include "base/stats.h"
#include "proxy/h1_client.h"
#include "http/h1_parse.h"
#include "tests/fuzz/fuzz_glue.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define KNOBS  9
#define MAX_CX 16 /* streams per connection worth following */

enum req_kind {
    Q_GET,
    Q_HEAD,
    Q_POST_LEN,
    Q_POST_CHUNKED,
    Q_PUT_TRAILERS,
    Q_UPGRADE,
    Q_CONNECT,
    Q_OTHER
};
enum req_end { E_AT_ONCE, E_AFTER_HEAD, E_NEVER, E_AFTER_DATA };
enum later { L_CHAIN, L_DEFER, L_TURN, L_EARLY };

static const uint8_t methods[] = {HTTP_GET, HTTP_HEAD, HTTP_POST,    HTTP_POST,
                                  HTTP_PUT, HTTP_GET,  HTTP_CONNECT, HTTP_OTHER};

/* The response a stream should get: its bytes parsed whole from where the stream began. */
typedef struct ref {
    enum { R_DONE, R_ERROR, R_SHORT } state;
    int have_head;
    int status;
    unsigned flags;
    enum h1_body body;
    size_t head_end, end; /* stream offsets */
    sink_t bytes;
    head_t head, trailers;
} ref_t;

typedef struct run run_t;

typedef struct cx {
    run_t *run;
    client_stream_t *s;
    unsigned id;
    uint8_t a, b;
    enum req_kind kind;
    enum req_end when_end;
    uint8_t method;
    size_t start; /* where its response begins in the upstream's bytes */
    ref_t ref;
    /* the request as sent */
    int64_t len;
    int chunked, expect, upgrade, trailers_sent;
    sink_t body;
    deferred_t later;
    int later_clean;
    unsigned msg;
    size_t data_in;
    int64_t cl; /* the response's Content-Length, -1 */
    unsigned head_sent : 1, req_done : 1;
    unsigned got_head : 1, got_end : 1, got_error : 1, released : 1, detached : 1;
    unsigned paused : 1, turn_release : 1, later_queued : 1;
    unsigned complete : 1; /* the response is whole (on_end, or a head with MSG_END) */
} cx_t;

struct run {
    loop_t loop;
    wire_t wire;
    cluster_stats_t stats;
    h1_client_t *h;
    conn_t *c;
    rng_t rng;
    const uint8_t *knobs;
    const char *s; /* the upstream's bytes */
    size_t n, fed;
    cx_t *cx[MAX_CX];
    unsigned ncx;
    unsigned in_op;
    unsigned idles, gones;
    unsigned idle_pending : 1; /* on_idle heard; the next stream not asked for yet */
    unsigned eof : 1;
    conn_t *tunnel;
    unsigned tunnel_closed : 1;
};

/* ---- the reference ---- */

static void ref_parse(ref_t *f, const char *s, size_t n, size_t start, uint8_t method)
{
    memset(f, 0, sizeof *f);
    head_init(&f->head);
    head_init(&f->trailers);
    h1_parser_t p;
    h1_parser_init(&p, H1_RESPONSE, &f->head, &f->trailers);
    p.request_method = method;
    size_t pos = start;
    for (;;) {
        h1_ev_t ev;
        size_t used = h1_parse(&p, s + pos, n - pos, &ev);
        pos += used;
        switch (ev.type) {
        case H1_HEAD:
            if (f->head.status >= 100 && f->head.status < 200 && f->head.status != 101) {
                head_reset(&f->head); /* interim: the codec answers Expect itself */
                break;
            }
            f->have_head = 1;
            f->status = f->head.status;
            f->head_end = pos;
            f->flags = p.flags;
            f->body = p.body;
            break;
        case H1_DATA:
            sink_put(&f->bytes, ev.p, ev.n);
            break;
        case H1_END:
            f->flags = p.flags;
            f->end = pos;
            f->state = R_DONE;
            return;
        case H1_ERROR:
            f->end = pos;
            f->state = R_ERROR;
            return;
        case H1_NEED_MORE:
            f->state = R_SHORT;
            f->end = pos;
            return;
        }
    }
}

/* Whether s[start..end) alone is already a broken response (whatever would follow). */
static int broken_prefix(const char *s, size_t start, size_t end, uint8_t method)
{
    head_t head, trailers;
    head_init(&head);
    head_init(&trailers);
    h1_parser_t p;
    h1_parser_init(&p, H1_RESPONSE, &head, &trailers);
    p.request_method = method;
    size_t pos = start;
    h1_ev_t ev;
    do {
        pos += h1_parse(&p, s + pos, end - pos, &ev);
        if (ev.type == H1_HEAD && head.status >= 100 && head.status < 200 && head.status != 101)
            head_reset(&head);
    } while (ev.type != H1_NEED_MORE && ev.type != H1_ERROR && ev.type != H1_END);
    head_free(&head);
    head_free(&trailers);
    return ev.type == H1_ERROR;
}

static void ref_free(ref_t *f)
{
    head_free(&f->head);
    head_free(&f->trailers);
    sink_free(&f->bytes);
}

static unsigned ref_msg(const ref_t *f)
{
    unsigned m = 0;
    if (f->body == H1_BODY_NONE)
        m |= MSG_END;
    if (f->body == H1_BODY_CHUNKED || f->body == H1_BODY_UNTIL_CLOSE)
        m |= MSG_CHUNKED;
    if (f->flags & H1F_CLOSE)
        m |= MSG_CLOSE;
    if (f->flags & H1F_CODINGS)
        m |= MSG_CODINGS;
    if (f->status == 101)
        m |= MSG_UPGRADE | MSG_END;
    return m;
}

static void check_same_fields(const head_t *a, const head_t *b)
{
    check(a->nfields == b->nfields);
    for (unsigned i = 0; i < a->nfields; i++) {
        const field_t *x = &a->fields[i], *y = &b->fields[i];
        check(x->name_len == y->name_len && x->value_len == y->value_len);
        check(memcmp(field_name(a, i), field_name(b, i), x->name_len) == 0);
        check(memcmp(field_value(a, i), field_value(b, i), x->value_len) == 0);
    }
}

/* ---- the fake pool ---- */

static void on_idle(void *owner, h1_client_t *h)
{
    run_t *r = owner;
    check(h == r->h && r->gones == 0 && !r->idle_pending);
    r->idles++;
    r->idle_pending = 1;
}

static void on_gone(void *owner, h1_client_t *h)
{
    run_t *r = owner;
    check(h == r->h && r->gones == 0);
    r->gones++;
    r->idle_pending = 0;
}

static const h1_client_owner_t pool_owner = {.on_idle = on_idle, .on_gone = on_gone};

/* ---- the scripted exchange ---- */

static void ev_head(void *ctx, head_t *h, unsigned msg);
static void ev_data(void *ctx, buf_t *b, const char *p, size_t n);
static void ev_end(void *ctx, head_t *trailers);
static void ev_error(void *ctx, int err);
static void ev_drain(void *ctx);

static const stream_events_t events = {
    .on_head = ev_head,
    .on_data = ev_data,
    .on_end = ev_end,
    .on_error = ev_error,
    .on_drain = ev_drain,
};

#define OP(x, call)                                                                                \
    do {                                                                                           \
        (x)->run->in_op++;                                                                         \
        (x)->s->ops->call;                                                                         \
        (x)->run->in_op--;                                                                         \
    } while (0)

static const char pattern[] = "The quick brown fox jumps over the lazy dog. 0123456789 abcdefghij";

static int live(const cx_t *x)
{
    return !x->released;
}

static void add(head_t *h, const char *name, const char *value)
{
    check(head_add_field(h, name, strlen(name), value, strlen(value)) == 0);
}

static void send_piece(cx_t *x, size_t n)
{
    run_t *r = x->run;
    size_t at = x->body.n % 50;
    if (x->a & 0x80) {
        buf_t *b = buf_new(&r->loop.bufs, n);
        check(b != NULL);
        for (size_t i = 0; i < n; i++)
            b->data[i] = pattern[(at + i) % 64];
        b->len = (uint32_t)n;
        sink_put(&x->body, b->data, n);
        OP(x, send_data(x->s, b, b->data, n));
        buf_unref(b);
    } else {
        static char stat_bytes[4096];
        if (!stat_bytes[0])
            for (size_t i = 0; i < sizeof stat_bytes; i++)
                stat_bytes[i] = pattern[i % 64];
        sink_put(&x->body, stat_bytes + at, n);
        OP(x, send_data(x->s, NULL, stat_bytes + at, n));
    }
}

static void send_request_end(cx_t *x)
{
    run_t *r = x->run;
    if (x->req_done || !live(x))
        return;
    x->req_done = 1;
    head_t *t = NULL;
    if (x->kind == Q_PUT_TRAILERS) {
        t = head_take(&r->loop);
        check(t != NULL);
        add(t, "X-Sum", "1");
        x->trailers_sent = 1;
    }
    OP(x, send_end(x->s, t));
    head_give(&r->loop, t);
}

static void send_request(cx_t *x)
{
    run_t *r = x->run;
    head_t *h = head_take(&r->loop);
    check(h != NULL);
    h->method = x->method;
    h->major = h->minor = 1;
    if (x->method == HTTP_OTHER) {
        int64_t off = head_store(h, "PURGE", 5);
        check(off >= 0);
        h->method_text = (uint32_t)off;
        h->method_len = 5;
    }
    const char *target = x->kind == Q_CONNECT ? "upstream.local:443" : "/fuzz/path?q=1";
    int64_t off = head_store(h, target, strlen(target));
    check(off >= 0);
    h->target = (uint32_t)off;
    h->target_len = (uint32_t)strlen(target);
    add(h, "Host", x->kind == Q_CONNECT ? "upstream.local:443" : "upstream.local");
    add(h, "User-Agent", "remora-fuzz");
    unsigned msg = 0;
    x->len = 0;
    switch (x->kind) {
    case Q_POST_LEN:
    case Q_OTHER:
        x->len = (int64_t)rng_upto(&r->rng, 2000);
        break;
    case Q_POST_CHUNKED:
    case Q_PUT_TRAILERS:
        x->len = BODY_STREAM;
        x->chunked = 1;
        break;
    case Q_UPGRADE:
        add(h, "Upgrade", "websocket");
        msg |= MSG_UPGRADE;
        x->upgrade = 1;
        break;
    default:
        break;
    }
    if (x->len == 0)
        msg |= MSG_END;
    if ((x->a & 0x20) && x->len != 0) {
        add(h, "Expect", "100-continue");
        x->expect = 1;
    }
    if (rng_next(&r->rng) & 1) /* framing in the head is restated by the codec, never copied */
        add(h, "Content-Length", "3");
    if (rng_next(&r->rng) & 1)
        add(h, "Connection", "keep-alive");
    x->head_sent = 1;
    x->req_done = (msg & MSG_END) != 0;
    OP(x, send_head(x->s, h, x->len, msg));
    head_give(&r->loop, h);
    if (x->req_done)
        return;
    /* The body, in pieces; its end now or later. */
    size_t total = x->len > 0 ? (size_t)x->len : rng_next(&r->rng) % 3000;
    unsigned pieces = (unsigned)rng_upto(&r->rng, 4);
    for (unsigned i = 0; i < pieces && x->body.n < total && live(x); i++) {
        size_t left = total - x->body.n;
        size_t k = i + 1 == pieces ? left : rng_next(&r->rng) % (left + 1);
        if (k > 4000)
            k = 4000;
        if (k)
            send_piece(x, k);
    }
    if (x->len > 0)
        while (x->body.n < total && live(x)) /* a declared length is always sent whole */
            send_piece(x, total - x->body.n > 4000 ? 4000 : total - x->body.n);
    if (x->when_end == E_AT_ONCE)
        send_request_end(x);
}

/* Whether the connection may now carry another request, as h1_client.h promises. Known bug
 * (regressions/h1_client/connect-2xx-connection-goes-back-to-the-pool): after a 2xx to
 * CONNECT the codec offers the connection, a tunnel now, back to its pool. */
static int reusable(const cx_t *x, int clean)
{
    const run_t *r = x->run;
    const ref_t *f = &x->ref;
    return clean && x->req_done && x->complete && !x->got_error && f->state == R_DONE &&
           !(f->flags & H1F_CLOSE) && f->status != 101 &&
           !(x->method == HTTP_CONNECT && f->status / 100 == 2 && !skip_known()) &&
           r->fed == f->end && !r->wire.failed && !r->eof;
}

static void do_release(cx_t *x, int clean)
{
    run_t *r = x->run;
    check(live(x));
    x->released = 1;
    x->turn_release = 0;
    int expect_idle = reusable(x, clean);
    if (getenv("FUZZ_VERBOSE"))
        fprintf(stderr,
                "release %u clean %d: req_done %d complete %d error %d ref %d/%d flags %x "
                "fed %zu end %zu failed %d eof %d -> idle %d\n",
                x->id, clean, x->req_done, x->complete, x->got_error, (int)x->ref.state,
                x->ref.status, x->ref.flags, r->fed, x->ref.end, r->wire.failed, r->eof,
                expect_idle);
    unsigned idles = r->idles;
    OP(x, release(x->s, clean));
    if (expect_idle != (r->idles == idles + 1))
        glue_fail(__FILE__, __LINE__,
                  expect_idle ? "a reusable connection was not offered back to its pool"
                              : "a connection that must not carry another request went idle");
}

static void run_later(deferred_t *d)
{
    cx_t *x = (cx_t *)(void *)((char *)d - offsetof(cx_t, later));
    x->later_queued = 0;
    if (live(x))
        do_release(x, x->later_clean);
}

static void release_by(cx_t *x, enum later how, int clean)
{
    if (x->turn_release || x->later_queued)
        return; /* already on its way out */
    switch (how) {
    case L_CHAIN:
    case L_EARLY:
        do_release(x, clean);
        break;
    case L_DEFER:
        x->later_clean = clean;
        x->later_queued = 1;
        loop_defer(&x->run->loop, &x->later);
        break;
    case L_TURN:
        x->later_clean = clean;
        x->turn_release = 1;
        break;
    }
}

/* The response is whole: done with the stream. */
static void response_done(cx_t *x)
{
    x->complete = 1;
    enum later how = (enum later)(x->b & 3);
    release_by(x, how == L_EARLY ? L_CHAIN : how, !(x->b & 4));
}

/* ---- the tunnel's side of a detached connection: closed at once ---- */

static void tn_read(void *owner, buf_t *b)
{
    (void)owner;
    (void)b;
}
static void tn_eof(void *owner, int err)
{
    (void)owner;
    (void)err;
}
static void tn_closed(void *owner)
{
    run_t *r = owner;
    r->tunnel_closed = 1;
}
static const conn_events_t tunnel_events = {
    .on_read = tn_read,
    .on_eof = tn_eof,
    .on_closed = tn_closed,
};

static void do_detach(cx_t *x)
{
    run_t *r = x->run;
    buf_t *pending;
    const char *p;
    size_t n;
    r->in_op++;
    conn_t *c = x->s->ops->detach(x->s, &pending, &p, &n);
    r->in_op--;
    x->detached = 1;
    x->released = 1;
    check(c != NULL && r->gones == 1);
    /* The upstream's bytes after the 101 are the tunnel's: exactly those read since. */
    check(r->fed >= x->ref.head_end && n == r->fed - x->ref.head_end);
    if (n) {
        check(pending && p >= pending->data && p + n <= pending->data + pending->len);
        check(memcmp(p, r->s + x->ref.head_end, n) == 0);
    }
    if (pending)
        buf_unref(pending);
    r->tunnel = c;
    conn_set_owner(c, &tunnel_events, r);
    conn_close(c);
}

static void ev_head(void *ctx, head_t *h, unsigned msg)
{
    cx_t *x = ctx;
    run_t *r = x->run;
    const ref_t *f = &x->ref;
    check(live(x) && !x->got_head && !x->got_error);
    check(h != NULL);
    x->got_head = 1;
    x->msg = msg;
    check(f->have_head && r->fed >= f->head_end);
    check(h->status == f->status && h->major == f->head.major && h->minor == f->head.minor);
    check(msg == ref_msg(f));
    check_same_fields(h, &f->head);
    x->cl = -1;
    int i = head_find_id(h, F_CONTENT_LENGTH, 0);
    if (i >= 0 && !(msg & (MSG_END | MSG_CHUNKED))) {
        const char *v = field_value(h, (unsigned)i);
        uint64_t cl = 0;
        for (uint32_t k = 0; k < h->fields[i].value_len; k++)
            cl = cl * 10 + (uint64_t)(v[k] - '0');
        x->cl = (int64_t)cl;
    }
    head_give(&r->loop, h);

    if (msg & MSG_UPGRADE) {
        if (x->upgrade) {
            do_detach(x); /* inside on_head: the bytes after the 101 are handed over here */
            return;
        }
        release_by(x, L_CHAIN, 0); /* switching protocols nobody asked for */
        return;
    }
    if ((x->b & 3) == L_EARLY) { /* the client went away: the stream is dropped */
        release_by(x, L_CHAIN, 0);
        return;
    }
    if (x->a & 0x40) {
        x->paused = 1;
        OP(x, pause(x->s, 1));
    }
    if (x->when_end == E_AFTER_HEAD || (x->when_end == E_AFTER_DATA && (msg & MSG_END)))
        send_request_end(x);
    if (live(x) && (msg & MSG_END))
        response_done(x);
}

static void ev_data(void *ctx, buf_t *b, const char *p, size_t n)
{
    cx_t *x = ctx;
    check(live(x) && x->got_head && !x->got_end && !x->got_error);
    check(!(x->msg & MSG_END));
    check(n > 0 && b && p >= b->data && p + n <= b->data + b->len);
    check(x->data_in + n <= x->ref.bytes.n);
    check(memcmp(x->ref.bytes.p + x->data_in, p, n) == 0);
    x->data_in += n;
    if (x->when_end == E_AFTER_DATA)
        send_request_end(x);
}

static void ev_end(void *ctx, head_t *trailers)
{
    cx_t *x = ctx;
    run_t *r = x->run;
    const ref_t *f = &x->ref;
    check(live(x) && x->got_head && !x->got_end && !x->got_error);
    check(!(x->msg & MSG_END));
    x->got_end = 1;
    /* Complete exactly where the reference is, or at EOF for a body that runs to the close. */
    if (f->state == R_DONE)
        check(r->fed >= f->end);
    else
        check(f->state == R_SHORT && f->body == H1_BODY_UNTIL_CLOSE && r->eof);
    check(x->data_in == f->bytes.n);
    check(x->cl < 0 || (uint64_t)x->cl == x->data_in);
    if (f->state == R_DONE && (f->flags & H1F_TRAILERS)) {
        check(trailers != NULL);
        check_same_fields(trailers, &f->trailers);
    } else {
        check(trailers == NULL);
    }
    head_give(&r->loop, trailers);
    response_done(x);
}

static void ev_error(void *ctx, int err)
{
    cx_t *x = ctx;
    run_t *r = x->run;
    const ref_t *f = &x->ref;
    check(live(x) && !x->got_end && !x->got_error);
    check(r->in_op == 0); /* a failure is never reported from inside the call (stream.h) */
    x->got_error = 1;
    if (getenv("FUZZ_VERBOSE"))
        fprintf(stderr, "stream %u on_error %d: reference %d, body %d, fed %zu of %zu, eof %d\n",
                x->id, err, (int)f->state, (int)f->body, r->fed, r->n, r->eof);
    switch (err) {
    case ERR_BAD_RESPONSE: /* broken as the reference is, and by the bytes read so far */
        check(f->state == R_ERROR && broken_prefix(r->s, x->start, r->fed, x->method));
        break;
    case ERR_UPSTREAM_CLOSED: /* cut by the upstream's EOF */
        check(r->eof && f->state == R_SHORT && f->body != H1_BODY_UNTIL_CLOSE);
        break;
    default:
        glue_fail(__FILE__, __LINE__, "unexpected on_error code");
    }
    enum later how = (enum later)((x->b >> 3) & 3);
    release_by(x, how == L_EARLY ? L_CHAIN : how, 0);
}

static void ev_drain(void *ctx)
{
    cx_t *x = ctx;
    check(live(x) && !x->got_error);
}

/* A new stream on the connection, and its request. */
static void start_stream(run_t *r)
{
    check(r->ncx < MAX_CX && r->gones == 0);
    unsigned k = r->ncx;
    cx_t *x = calloc(1, sizeof *x);
    check(x != NULL);
    x->run = r;
    x->id = k;
    x->a = r->knobs[3 + 2 * (k % 3)];
    x->b = r->knobs[4 + 2 * (k % 3)];
    x->kind = (enum req_kind)(x->a & 7);
    x->when_end = (enum req_end)((x->a >> 3) & 3);
    x->later.fn = run_later;
    x->start = r->fed;
    r->cx[r->ncx++] = x;
    x->method = methods[x->kind];
    ref_parse(&x->ref, r->s, r->n, x->start, x->method);
    r->idle_pending = 0;
    x->s = h1_client_stream(r->h, &events, x);
    check(x->s != NULL && x->s->connected);
    check(x->s->reused == (k > 0 && (r->knobs[0] & 0x40)));
    send_request(x);
}

/* ---- the driver ---- */

static int has_turn(const cx_t *x)
{
    return live(x) && (x->paused || x->turn_release);
}

static int turn(run_t *r)
{
    int did = 0;
    for (unsigned i = 0; i < r->ncx; i++) {
        cx_t *x = r->cx[i];
        if (!has_turn(x))
            continue;
        did = 1;
        if (x->turn_release) {
            do_release(x, x->later_clean);
        } else {
            x->paused = 0;
            OP(x, pause(x->s, 0));
        }
    }
    return did;
}

static int any_turn(const run_t *r)
{
    for (unsigned i = 0; i < r->ncx; i++)
        if (has_turn(r->cx[i]))
            return 1;
    return 0;
}

static void settle(run_t *r)
{
    pump(&r->wire);
}

static void settle_all(run_t *r)
{
    unsigned rounds = 0;
    do {
        settle(r);
        check(++rounds < 10000);
    } while (turn(r));
}

/* The connection is ours to feed: not gone, not handed to a tunnel. */
static int up(const run_t *r)
{
    return r->gones == 0;
}

static cx_t *current(const run_t *r)
{
    return r->ncx ? r->cx[r->ncx - 1] : NULL;
}

/* ---- what the upstream received ---- */

static void check_requests(run_t *r)
{
    const sink_t *out = &r->wire.out;
    const char *bytes = out->p ? out->p : "";
    if (getenv("FUZZ_VERBOSE")) { /* what the upstream got, to write seeds with */
        fprintf(stderr, "streams %u, idle %u, events:", r->ncx, r->idles);
        for (unsigned i = 0; i < r->ncx; i++) {
            const cx_t *x = r->cx[i];
            fprintf(stderr, " [%u%s%s%s%s]", x->ref.status, x->got_head ? " head" : "",
                    x->got_end ? " end" : "", x->got_error ? " error" : "",
                    x->detached ? " detached" : "");
        }
        fprintf(stderr, "\nrequests:\n%.*s\n", (int)out->n, bytes);
    }
    head_t head, trailers;
    head_init(&head);
    head_init(&trailers);
    h1_parser_t p;
    h1_parser_init(&p, H1_REQUEST, &head, &trailers);
    size_t pos = 0;
    unsigned k = 0;
    int in_msg = 0, prefix = r->wire.lost;
    sink_t got = {0};
    for (;;) {
        if (!in_msg) {
            head_reset(&head);
            head_reset(&trailers);
        }
        h1_ev_t ev;
        size_t used = h1_parse(&p, bytes + pos, out->n - pos, &ev);
        pos += used;
        if (ev.type == H1_NEED_MORE)
            break;
        check(ev.type != H1_ERROR); /* the codec wrote something that is not a request */
        check(k < r->ncx);
        const cx_t *x = r->cx[k];
        switch (ev.type) {
        case H1_HEAD: {
            check(!in_msg && x->head_sent);
            in_msg = 1;
            got.n = 0;
            check(head.method == x->method);
            const char *target = x->kind == Q_CONNECT ? "upstream.local:443" : "/fuzz/path?q=1";
            check(head.target_len == strlen(target) &&
                  memcmp(head_str(&head, head.target), target, head.target_len) == 0);
            check(!!(p.flags & H1F_UPGRADE) == x->upgrade);
            check(!!(p.flags & H1F_CONTINUE) == x->expect);
            check(!(p.flags & H1F_CLOSE));
            if (x->len > 0)
                check(p.body == H1_BODY_LENGTH && p.content_length == (uint64_t)x->len);
            else if (x->chunked)
                check(p.body == H1_BODY_CHUNKED);
            else
                check(p.body == H1_BODY_NONE);
            break;
        }
        case H1_DATA:
            check(in_msg);
            sink_put(&got, ev.p, ev.n);
            check(got.n <= x->body.n && memcmp(got.p, x->body.p, got.n) == 0);
            break;
        case H1_END:
            check(in_msg);
            check(got.n == x->body.n);
            check(!!(p.flags & H1F_TRAILERS) == x->trailers_sent);
            in_msg = 0;
            k++;
            break;
        default:
            break;
        }
    }
    /* Every request was sent whole, but the last: its end may not have been sent, or the
     * connection closed (a reset stream) with some of it still queued, which is dropped. */
    if (!prefix)
        check(k == r->ncx || k + 1 == r->ncx);
    sink_free(&got);
    head_free(&head);
    head_free(&trailers);
}

/* ---- one run ---- */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < KNOBS)
        return 0;
    run_t *r = calloc(1, sizeof *r);
    check(r != NULL);
    r->knobs = data;
    uint8_t flags = data[0];
    r->rng.s = (uint64_t)data[1] << 32 | 0xc11e;
    size_t n;
    char *stream = expand_stream(data + KNOBS, size - KNOBS, (data[2] & 0xf0) == 0xf0, &n);
    r->s = stream;
    r->n = n;

    check(loop_init(&r->loop, NULL) == 0);
    wire_init(&r->wire, &r->loop);
    r->wire.queue_writes = (flags >> 3) & 1;
    if (flags & 0x10) {
        r->wire.fail_at = 1 + data[1] % 8;
        r->wire.how = flags & 0x20 ? WF_LATER : WF_REFUSE;
    }
    r->c = wire_conn(&r->wire);
    r->h = h1_client_new(r->c, &r->stats, &pool_owner, r);
    check(r->h != NULL);
    start_stream(r);

    unsigned rounds = 0;
    for (;;) {
        settle(r);
        check(++rounds < 1000000);
        if (!up(r))
            break;
        cx_t *x = current(r);
        if (r->idle_pending && !any_turn(r)) {
            /* Idle in its pool: stray bytes must close it; else the next stream takes it. */
            if ((flags & 0x80) && r->fed < n && r->c->reading) {
                size_t k = next_slice(&r->rng, flags & 3, n > size ? 256 : 1, n - r->fed);
                r->fed += k;
                wire_feed(&r->wire, r->c, stream + r->fed - k, k);
                settle(r);
                check(!up(r));
                break;
            }
            if (r->ncx == MAX_CX || r->fed == n)
                break;
            if (!h1_client_usable(r->h)) { /* the pool would drop it (a write failed) */
                h1_client_close(r->h);
                continue;
            }
            if (flags & 0x40)
                h1_client_park(r->h);
            start_stream(r);
            continue;
        }
        if (!any_turn(r))
            check(r->c->reading || r->c->closing || !live(x)); /* else it is stuck */
        int can_read = r->c->reading && !r->c->closing && r->fed < n;
        if (any_turn(r) && (!can_read || (rng_next(&r->rng) & 1))) {
            turn(r);
            continue;
        }
        if (!can_read)
            break;
        size_t k = next_slice(&r->rng, flags & 3, n > size ? 256 : 1, n - r->fed);
        /* Upstreams mostly send a response per write: reads end where the response does, but
         * now and then one carries the next bytes too (then the connection is not reused). */
        if (x && live(x) && x->ref.state == R_DONE && r->fed < x->ref.end &&
            r->fed + k > x->ref.end && rng_next(&r->rng) % 8)
            k = x->ref.end - r->fed;
        r->fed += k;
        wire_feed(&r->wire, r->c, stream + r->fed - k, k);
        if (r->fed == n && (data[2] & 2) && up(r) && r->c->reading && !r->c->closing) {
            r->eof = 1; /* the upstream closes at once, while the exchange may be busy */
            conn_on_read(r->c, UV_EOF, NULL);
        }
    }
    settle_all(r);

    /* The upstream closes (an EOF while reading), then whatever is open is closed. */
    cx_t *x = current(r);
    if ((data[2] & 1) && x && live(x)) {
        do_release(x, 0);
        settle_all(r);
    }
    if (up(r) && r->c->reading && !r->c->closing) {
        r->eof = 1;
        conn_on_read(r->c, UV_EOF, NULL);
        settle_all(r);
    }
    if (x && live(x)) {
        do_release(x, 0);
        settle_all(r);
    }
    if (up(r)) {
        h1_client_close(r->h);
        settle_all(r);
    }
    check(r->gones == 1);
    for (unsigned i = 0; i < r->ncx; i++)
        check(r->cx[i]->released);
    check(r->tunnel == NULL || r->tunnel_closed);
    loop_teardown(&r->wire);
    check_requests(r);
    wire_free(&r->wire);

    for (unsigned i = 0; i < r->ncx; i++) {
        ref_free(&r->cx[i]->ref);
        sink_free(&r->cx[i]->body);
        free(r->cx[i]);
    }
    free(stream);
    free(r);
    return 0;
}
