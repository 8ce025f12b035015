/* proxy/h2_client.c (nghttp2 inside, proxy/conn.c and proxy/h2_body.c under it) driven through
 * the transport seam (fuzz_glue.h): a fake pool owns the connection and hands its streams to
 * scripted exchanges, many at once, and the input is what the upstream sends.
 *
 * Input: ten knob bytes, then the upstream's bytes (server frames).
 *   byte 0  bits 0-1 how the bytes are cut into reads (fuzz_glue.h next_slice); bit 2 the input
 *           is the whole server stream (else an empty SETTINGS is sent first, so that the
 *           fuzzer starts among frames); bit 3 writes are reported from the loop (else sent at
 *           once); bit 4 a write fails (byte 1 picks which), bit 5 ... later through its
 *           callback (else refused at once); bit 6 the SETTINGS sent first grants 1 MiB
 *           windows (with a WINDOW_UPDATE for the connection), so large bodies flow; bit 7 it
 *           also sets SETTINGS_MAX_CONCURRENT_STREAMS to 2.
 *   byte 1  seed of the generator (read sizes, body lengths, pieces), and the failing write.
 *   byte 2  bits 0-2 streams opened before the first read (1-8); bits 3-5 streams opened later
 *           (0-7), after a read, from inside an on_end or the on_error of a refused stream
 *           (a retry), while h2_client_has_room; bit 6 the EOF comes right after the last
 *           read; bit 7 at the end the exchanges drop their streams (unclean) before the EOF.
 *   byte 3  the pool: bit 6 retires the connection (h2_client_retire), bit 7 closes it
 *           (h2_client_close) instead; bits 0-3 after which read; bits 4-5 where: between
 *           reads, inside the codec's next on_head or on_data (its callback chain, inside
 *           nghttp2_session_mem_recv), from the loop's deferred list, a turn later.
 *   4..9    two bytes per stream, streams cycling through three pairs:
 *           A bits 0-2 the request: GET, HEAD, POST with a length, POST streamed with trailers
 *             (and TE: trailers), PUT streamed, GET with Upgrade (MSG_UPGRADE: HTTP/2 has none,
 *             the stream must fail), PURGE (an extension method) with a length, DELETE
 *             streamed with an empty body; bits 3-4 when its end is sent: once the body is,
 *             after the response head, a turn later, never; bit 5 the head goes on a later
 *             turn; bit 6 the response is paused at its head and resumed a turn later; bit 7
 *             the body from buffers of the loop's pool (else static storage).
 *           B bits 0-1 release after the response: in the chain, from the loop's deferred
 *             list, a turn later, or early (at the head, unclean); bit 2 release unclean;
 *             bits 3-4 release after on_error the same three ways; bit 5 paused at the first
 *             body bytes (resumed a turn later); bit 6 released at the first body bytes
 *             (unclean); bit 7 a large body (256 KiB-1 MiB in 16 KiB pieces: from the pool it
 *             goes past the high-water mark and waits for on_drain).
 * The heads carry framing and hop-by-hop fields for the codec to restate or drop, and now and
 * then a Cookie of up to 20 KB (frames past 256 octets, CONTINUATIONs). On a turn an exchange
 * takes its request's own steps before a release put off to that turn.
 *
 * Invariants (abort() on a violation): no event from inside an op call (the ops only queue,
 * h2_client.c); per stream on_head at most once, final (2xx-5xx), version 2, lower-case field
 * names and no pseudo-header field, MSG_CHUNKED exactly when neither END_STREAM nor a
 * Content-Length came; nothing after on_end, on_error or release, no on_data or on_end after
 * MSG_END or while paused; on_data not empty and inside its buffer; the body adds up to the
 * Content-Length (none after HEAD, 204, 304); exactly one of on_end (or a head with MSG_END) and
 * on_error per stream unless released first, with a documented code (UV_EPROTO only for the
 * Upgrade); on_drain only while it may send. The pool: on_gone exactly once, with
 * h2_client_has_room false from then on, and nothing from the pool after it; every stream
 * comes connected, `reused` from the second on. A quiet connection with nothing left to the
 * exchanges is reading or closing.
 *
 * At the end, what the codec wrote is read by an nghttp2 server session (what answers the
 * input rather than this session taken out: SETTINGS ACKs, and frames on the streams of the
 * input's PUSH_PROMISEs): the client preface, then frames that session takes without a
 * connection or stream error (its HTTP messaging checks included: pseudo-header fields,
 * connection-specific fields, Content-Length against DATA), at most 16384 octets each. Each
 * request is the one its exchange sent: :method, :scheme http, :authority from the Host field,
 * :path; no Host; fields as sent, lower-cased, minus those HTTP/2 does not carry;
 * content-length exactly when a length was given (not 0 on a GET or HEAD); the body as sent (a
 * prefix, all of it at END_STREAM, which comes only after send_end), the trailers as sent; no
 * request for the Upgrade; every stream that got a response head was sent. No leak: every
 * buffer, head, handle and write request is returned (loop_teardown), the stats count no
 * connection left.
 *
 * FUZZ_VERBOSE=1 prints each stream's events; FUZZ_DUMP=<file> writes what the codec sent.
 * The harness is not TLS: transport_tls_alpn is a stub here (no connection has ALPN). */
#include <nghttp2/nghttp2.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"
#include "base/http.h"
#include "base/stats.h"
#include "proxy/h2_client.h"
#include "proxy/transport_tls.h"
#include "tests/fuzz/fuzz_glue.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

const unsigned char *transport_tls_alpn(const conn_t *c, unsigned *len)
{
    (void)c;
    *len = 0;
    return NULL;
}

#define KNOBS     10
#define MAX_CX    24 /* streams per run worth following */
#define BIG_PIECE (16 * 1024)

static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

enum req_kind {
    Q_GET,
    Q_HEAD,
    Q_POST_LEN,
    Q_POST_TRAILERS,
    Q_PUT_STREAM,
    Q_UPGRADE,
    Q_PURGE_LEN,
    Q_DELETE_EMPTY
};
enum req_end { E_AFTER_BODY, E_AFTER_HEAD, E_TURN, E_NEVER };
enum later { L_CHAIN, L_DEFER, L_TURN, L_EARLY };
enum act_where { A_BETWEEN, A_CHAIN, A_DEFER, A_TURN };

static const uint8_t methods[] = {HTTP_GET, HTTP_HEAD, HTTP_POST,  HTTP_POST,
                                  HTTP_PUT, HTTP_GET,  HTTP_OTHER, HTTP_DELETE};

typedef struct run run_t;

typedef struct cx {
    run_t *run;
    client_stream_t *s;
    unsigned id;
    uint8_t a, b;
    enum req_kind kind;
    enum req_end when_end;
    char host[32], path[48];
    /* the request as sent */
    int64_t len;           /* given to send_head: a length, 0, or BODY_STREAM */
    size_t total;          /* the body it sends */
    sink_t body;           /* ... what of it went to send_data so far */
    size_t big_field;      /* the length of its large Cookie, or 0 */
    unsigned nfields_sent; /* fields of the head that HTTP/2 carries */
    unsigned head_sent : 1, ended : 1, end_wanted : 1, trailers_sent : 1, wait_drain : 1;
    unsigned head_turn : 1, end_turn : 1;
    /* the response */
    unsigned msg;
    int status;
    size_t data_in;
    int64_t cl; /* the response's Content-Length, -1 */
    unsigned got_head : 1, got_end : 1, got_error : 1, released : 1, paused : 1;
    unsigned saw_data : 1, no_body : 1;
    int err;
    /* its release */
    deferred_t later;
    int later_clean;
    unsigned turn_release : 1, later_queued : 1;
    /* what the upstream got (check_requests) */
    int32_t wire_id;
    sink_t wire_body;
    unsigned wire_end : 1, wire_trailers : 1, wire_trailer_ok : 1;
} cx_t;

struct run {
    loop_t loop;
    wire_t wire;
    transport_t tp;
    cluster_stats_t stats;
    h2_client_t *h;
    conn_t *c;
    rng_t rng;
    const uint8_t *knobs;
    size_t n, fed;
    unsigned reads;
    cx_t *cx[MAX_CX];
    unsigned ncx, nwant, in_op;
    unsigned gones;
    /* the pool's one action (byte 3) */
    int act; /* 0 none, 1 retire, 2 close */
    unsigned act_at;
    enum act_where act_where;
    deferred_t act_d;
    unsigned act_armed : 1, act_done : 1, act_turn : 1;
    unsigned conn_freed : 1, eof : 1, open_in_end : 1;
    uint32_t last_wire_id;
};

/* The harness's transport: the wire's, plus a `free` that tells when conn.c freed c. */
static run_t *current_run;

static void tp_free(conn_t *c)
{
    (void)c;
    current_run->conn_freed = 1;
}

/* ---- the fake pool ---- */

static int holds_stream(const run_t *r)
{
    for (unsigned i = 0; i < r->ncx; i++)
        if (!r->cx[i]->released)
            return 1;
    return 0;
}

static void on_gone(void *owner, h2_client_t *h)
{
    run_t *r = owner;
    check(h == r->h && r->gones == 0);
    r->gones++;
    check(!h2_client_has_room(h, 0)); /* the connection takes no stream from now on */
}

static const h2_client_owner_t pool_owner = {.on_gone = on_gone};

/* The pool acts on its connection (once): retire or close, unless it is gone already. */
static void pool_act(run_t *r)
{
    r->act_armed = r->act_turn = 0;
    if (r->act_done || r->gones)
        return;
    r->act_done = 1;
    if (r->act == 1)
        h2_client_retire(r->h);
    else
        h2_client_close(r->h);
}

static void act_later(deferred_t *d)
{
    pool_act((run_t *)(void *)((char *)d - offsetof(run_t, act_d)));
}

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

/* on_end, a head with MSG_END or on_error came. */
static int outcome(const cx_t *x)
{
    return x->got_end || (x->got_head && (x->msg & MSG_END)) || x->got_error;
}

/* What the exchange may still do with its stream. */
static int usable(const cx_t *x)
{
    return live(x) && !x->got_error;
}

static void add(head_t *h, const char *name, const char *value)
{
    check(head_add_field(h, name, strlen(name), value, strlen(value)) == 0);
}

static void open_stream(run_t *r);

static void do_release(cx_t *x, int clean)
{
    run_t *r = x->run;
    check(!x->released);
    if (getenv("FUZZ_VERBOSE"))
        fprintf(stderr, "stream %u released %s\n", x->id, clean ? "clean" : "unclean");
    x->released = 1;
    x->turn_release = x->wait_drain = x->paused = 0;
    r->in_op++;
    x->s->ops->release(x->s, clean);
    r->in_op--;
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
    if (x->turn_release || x->later_queued || !live(x))
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
        static char stat_bytes[BIG_PIECE + 64];
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
    if (x->ended || !usable(x) || !x->head_sent)
        return;
    x->ended = 1;
    head_t *t = NULL;
    if (x->kind == Q_POST_TRAILERS) {
        t = head_take(&r->loop);
        check(t != NULL);
        add(t, "X-Sum", "1");
        uint32_t v = rng_next(&r->rng);
        if (v & 1) /* framing and hop-by-hop fields in trailers are never sent */
            add(t, "Content-Length", "1");
        if (v & 2)
            add(t, "Connection", "close");
        if (v & 4)
            add(t, "X-Trace", "t");
        x->trailers_sent = 1;
    }
    if (getenv("FUZZ_VERBOSE"))
        fprintf(stderr, "stream %u: send_end after %zu bytes%s\n", x->id, x->body.n,
                t ? ", trailers" : "");
    OP(x, send_end(x->s, t));
    head_give(&r->loop, t);
}

/* The body, as far as it goes before the high-water mark; the end once all of it went and the
 * end is wanted. */
static void send_body(cx_t *x)
{
    run_t *r = x->run;
    while (usable(x) && !x->wait_drain && x->body.n < x->total) {
        size_t left = x->total - x->body.n;
        size_t k;
        if (x->b & 0x80)
            k = left < BIG_PIECE ? left : BIG_PIECE;
        else
            k = rng_next(&r->rng) % (left + 1);
        if (k > 4000 && !(x->b & 0x80))
            k = 4000;
        if (k == 0 && (rng_next(&r->rng) & 1))
            k = left; /* pieces of every size, and the rest at once now and then */
        if (k)
            send_piece(x, k);
        if (usable(x) && x->s->ops->over_high_water(x->s))
            x->wait_drain = 1; /* on_drain goes on */
    }
    if (usable(x) && x->body.n == x->total && x->end_wanted)
        send_request_end(x);
}

static void send_request(cx_t *x)
{
    run_t *r = x->run;
    head_t *h = head_take(&r->loop);
    check(h != NULL);
    uint8_t method = methods[x->kind];
    h->method = method;
    h->major = h->minor = 1;
    if (method == HTTP_OTHER) {
        int64_t off = head_store(h, "PURGE", 5);
        check(off >= 0);
        h->method_text = (uint32_t)off;
        h->method_len = 5;
    }
    int64_t off = head_store(h, x->path, strlen(x->path));
    check(off >= 0);
    h->target = (uint32_t)off;
    h->target_len = (uint32_t)strlen(x->path);
    uint32_t v = rng_next(&r->rng);
    if (v & 1) /* Host anywhere among the fields */
        add(h, "User-Agent", "remora-fuzz");
    add(h, "Host", x->host);
    if (!(v & 1))
        add(h, "User-Agent", "remora-fuzz");
    x->nfields_sent = 1;
    unsigned msg = 0;
    x->len = 0;
    x->total = 0;
    size_t big = (x->b & 0x80) ? (256 * 1024 + rng_next(&r->rng) % (768 * 1024)) : 0;
    switch (x->kind) {
    case Q_POST_LEN:
    case Q_PURGE_LEN:
        x->total = big ? big : rng_upto(&r->rng, 3000);
        x->len = (int64_t)x->total;
        break;
    case Q_POST_TRAILERS:
        add(h, "TE", "trailers");
        /* fall through */
    case Q_PUT_STREAM:
        x->len = BODY_STREAM;
        x->total = big ? big : rng_next(&r->rng) % 3000;
        break;
    case Q_DELETE_EMPTY:
        x->len = BODY_STREAM;
        break;
    case Q_UPGRADE:
        add(h, "Connection", "upgrade");
        add(h, "Upgrade", "websocket");
        msg |= MSG_UPGRADE;
        break;
    default:
        break;
    }
    if (x->len == 0)
        msg |= MSG_END;
    /* Framing and hop-by-hop fields in the head are restated or dropped by the codec. */
    if (v & 2)
        add(h, "Content-Length", "3");
    if (v & 4)
        add(h, "Connection", "keep-alive");
    if (v & 8)
        add(h, "Transfer-Encoding", "chunked");
    if (v & 16)
        add(h, "Keep-Alive", "timeout=5");
    if (v & 32) {
        add(h, "X-Mixed-Case", "Value");
        x->nfields_sent++;
    }
    if (v & 64) {
        add(h, "accept", "*/*");
        x->nfields_sent++;
    }
    if ((v & 0x380) == 0x380) { /* a large field: frames past 256 octets, CONTINUATIONs */
        static char big_value[20000];
        if (!big_value[0])
            memset(big_value, 'c', sizeof big_value);
        x->big_field = 300 + rng_next(&r->rng) % (sizeof big_value - 300);
        check(head_add_field(h, "Cookie", 6, big_value, x->big_field) == 0);
        x->nfields_sent++;
    }
    x->head_sent = 1;
    x->ended = (msg & MSG_END) != 0;
    if (getenv("FUZZ_VERBOSE"))
        fprintf(stderr, "stream %u: send_head kind %d len %lld msg %#x\n", x->id, (int)x->kind,
                (long long)x->len, msg);
    OP(x, send_head(x->s, h, x->len, msg));
    head_give(&r->loop, h);
    if (x->ended)
        return;
    if (x->when_end == E_AFTER_BODY)
        x->end_wanted = 1;
    else if (x->when_end == E_TURN)
        x->end_turn = 1;
    send_body(x);
}

/* The response is whole: done with the stream. */
static void response_done(cx_t *x)
{
    run_t *r = x->run;
    enum later how = (enum later)(x->b & 3);
    release_by(x, how == L_EARLY ? L_CHAIN : how, !(x->b & 4));
    /* The next stream from inside this chain (a retry, say). */
    if (r->open_in_end && r->ncx < r->nwant && !r->gones && h2_client_has_room(r->h, 0)) {
        r->open_in_end = 0;
        open_stream(r);
    }
}

static void maybe_act_in_chain(run_t *r)
{
    if (r->act_armed && r->act_where == A_CHAIN)
        pool_act(r);
}

static int lower_token(const char *p, size_t n)
{
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((p[i] >= 'A' && p[i] <= 'Z') || p[i] == ':' || (unsigned char)p[i] <= ' ')
            return 0;
    return 1;
}

static void ev_head(void *ctx, head_t *h, unsigned msg)
{
    cx_t *x = ctx;
    run_t *r = x->run;
    check(r->in_op == 0); /* the ops only queue: no event from inside them */
    check(live(x) && !x->got_head && !x->got_error && x->head_sent);
    check(h != NULL);
    x->got_head = 1;
    x->msg = msg;
    x->status = h->status;
    if (getenv("FUZZ_VERBOSE"))
        fprintf(stderr, "stream %u: on_head %d msg %#x\n", x->id, h->status, msg);
    check(h->status >= 200 && h->status <= 599); /* final: 1xx heads are the codec's */
    check(h->major == 2 && h->minor == 0);
    check((msg & ~(unsigned)(MSG_END | MSG_CHUNKED)) == 0);
    for (unsigned i = 0; i < h->nfields; i++) {
        check(lower_token(field_name(h, i), h->fields[i].name_len));
        check(h->fields[i].name < h->len && h->fields[i].value + h->fields[i].value_len < h->len);
    }
    int cl = head_find_id(h, F_CONTENT_LENGTH, 0);
    if (!(msg & MSG_END))
        check(!(msg & MSG_CHUNKED) == (cl >= 0));
    x->no_body = methods[x->kind] == HTTP_HEAD || h->status == 204 || h->status == 304;
    x->cl = -1;
    if (cl >= 0 && !x->no_body) {
        const char *p = field_value(h, (unsigned)cl);
        int64_t v = 0;
        for (uint32_t i = 0; i < h->fields[cl].value_len; i++) {
            check(p[i] >= '0' && p[i] <= '9'); /* nghttp2 checks it */
            if (v < (int64_t)1 << 50)
                v = v * 10 + (p[i] - '0');
        }
        x->cl = v;
        if (msg & MSG_END)
            check(v == 0);
    }
    head_give(&r->loop, h);
    maybe_act_in_chain(r);
    if (!live(x) || x->got_error)
        return;                  /* the pool closed the connection from here */
    if ((x->b & 3) == L_EARLY) { /* the client went away: the stream is dropped */
        release_by(x, L_CHAIN, 0);
        return;
    }
    if ((x->a & 0x40) && !(msg & MSG_END)) {
        x->paused = 1;
        OP(x, pause(x->s, 1));
    }
    if (x->when_end == E_AFTER_HEAD && !x->ended) {
        x->end_wanted = 1;
        send_body(x);
    }
    if (live(x) && (msg & MSG_END))
        response_done(x);
}

static void ev_data(void *ctx, buf_t *b, const char *p, size_t n)
{
    cx_t *x = ctx;
    run_t *r = x->run;
    check(r->in_op == 0);
    check(live(x) && x->got_head && !x->got_end && !x->got_error);
    check(!(x->msg & MSG_END));
    check(!x->paused); /* held while paused */
    check(n > 0 && b && p >= b->data && p + n <= b->data + b->len && b->refs > 0);
    check(!x->no_body);
    x->data_in += n;
    check(x->cl < 0 || x->data_in <= (uint64_t)x->cl);
    int first = !x->saw_data;
    x->saw_data = 1;
    maybe_act_in_chain(r);
    if (!usable(x))
        return;
    if (first && (x->b & 0x40)) {
        release_by(x, L_CHAIN, 0);
        return;
    }
    if (first && (x->b & 0x20)) {
        x->paused = 1;
        OP(x, pause(x->s, 1));
    }
}

static void ev_end(void *ctx, head_t *trailers)
{
    cx_t *x = ctx;
    run_t *r = x->run;
    check(r->in_op == 0);
    check(live(x) && x->got_head && !x->got_end && !x->got_error);
    check(!(x->msg & MSG_END));
    check(!x->paused); /* held while paused */
    x->got_end = 1;
    if (getenv("FUZZ_VERBOSE"))
        fprintf(stderr, "stream %u: on_end, %zu bytes%s\n", x->id, x->data_in,
                trailers ? ", trailers" : "");
    check(x->cl < 0 || (uint64_t)x->cl == x->data_in);
    if (trailers) {
        for (unsigned i = 0; i < trailers->nfields; i++)
            check(lower_token(field_name(trailers, i), trailers->fields[i].name_len));
        head_give(&r->loop, trailers);
    }
    response_done(x);
}

static void ev_error(void *ctx, int err)
{
    cx_t *x = ctx;
    run_t *r = x->run;
    check(r->in_op == 0); /* a failure is never reported from inside the call (stream.h) */
    check(live(x));
    check(!outcome(x)); /* one of on_end and on_error, once */
    x->got_error = 1;
    x->err = err;
    x->wait_drain = x->paused = x->head_turn = x->end_turn = 0;
    if (getenv("FUZZ_VERBOSE"))
        fprintf(stderr, "stream %u: on_error %d (%s)\n", x->id, err, err_str(err));
    switch (err) {
    case ERR_REFUSED:
    case ERR_BAD_RESPONSE:
    case ERR_UPSTREAM_CLOSED:
    case UV_ECONNRESET:
    case UV_ECONNABORTED:
    case UV_EPIPE: /* the wire's failed writes */
        break;
    case UV_EPROTO:
        check(x->kind == Q_UPGRADE);
        break;
    default:
        glue_fail(__FILE__, __LINE__, "unexpected on_error code");
    }
    enum later how = (enum later)((x->b >> 3) & 3);
    release_by(x, how == L_EARLY ? L_CHAIN : how, 0);
    /* A refused stream is retried, here on the same connection while it has room: a new
     * stream from inside the codec's chain (nghttp2's on_stream_close, say). */
    if (err == ERR_REFUSED && r->ncx < r->nwant && !r->gones && h2_client_has_room(r->h, 0))
        open_stream(r);
}

static void ev_drain(void *ctx)
{
    cx_t *x = ctx;
    check(x->run->in_op == 0);
    check(live(x) && !x->got_error);
    if (x->wait_drain) {
        x->wait_drain = 0;
        send_body(x);
    }
}

/* A new stream from the pool, and its request (now or on a later turn). */
static void open_stream(run_t *r)
{
    check(r->ncx < MAX_CX && r->gones == 0 && h2_client_has_room(r->h, 0));
    unsigned k = r->ncx;
    cx_t *x = calloc(1, sizeof *x);
    check(x != NULL);
    x->run = r;
    x->id = k;
    x->a = r->knobs[4 + 2 * (k % 3)];
    x->b = r->knobs[5 + 2 * (k % 3)];
    x->kind = (enum req_kind)(x->a & 7);
    x->when_end = (enum req_end)((x->a >> 3) & 3);
    x->later.fn = run_later;
    x->cl = -1;
    snprintf(x->host, sizeof x->host, "up%u.local:%u", k, 8000 + k);
    snprintf(x->path, sizeof x->path, "/s%u/fuzz?q=%u", k, k * 7);
    r->cx[r->ncx++] = x;
    x->s = h2_client_stream(r->h, &events, x);
    check(x->s != NULL);
    check(x->s->connected && x->s->reused == (k > 0));
    if (x->a & 0x20)
        x->head_turn = 1;
    else
        send_request(x);
}

/* ---- the driver ---- */

static int has_turn(const cx_t *x)
{
    return live(x) &&
           (x->turn_release || (!x->got_error && (x->paused || x->head_turn || x->end_turn)));
}

static int turn(run_t *r)
{
    int did = 0;
    for (unsigned i = 0; i < r->ncx; i++) {
        cx_t *x = r->cx[i];
        if (!has_turn(x))
            continue;
        did = 1;
        /* The request's own steps first: an exchange still sends after its response is in. */
        if (x->head_turn && !x->got_error) {
            x->head_turn = 0;
            send_request(x);
        } else if (x->end_turn && !x->got_error) {
            x->end_turn = 0;
            x->end_wanted = 1;
            send_body(x);
        } else if (x->turn_release) {
            do_release(x, x->later_clean);
        } else {
            x->paused = 0;
            OP(x, pause(x->s, 0));
        }
    }
    if (r->act_turn) {
        did = 1;
        pool_act(r);
    }
    return did;
}

static int any_turn(const run_t *r)
{
    for (unsigned i = 0; i < r->ncx; i++)
        if (has_turn(r->cx[i]))
            return 1;
    return r->act_turn;
}

static void settle_all(run_t *r)
{
    unsigned rounds = 0;
    do {
        pump(&r->wire);
        check(++rounds < 10000);
    } while (turn(r));
}

/* The pool's action comes due after read `reads`. */
static void arm_action(run_t *r)
{
    if (!r->act || r->act_done || r->act_armed || r->act_turn || r->reads < r->act_at)
        return;
    switch (r->act_where) {
    case A_BETWEEN:
        pool_act(r);
        break;
    case A_CHAIN:
        r->act_armed = 1; /* at the next on_head or on_data */
        break;
    case A_DEFER:
        r->act_armed = 1;
        loop_defer(&r->loop, &r->act_d);
        break;
    case A_TURN:
        r->act_turn = 1;
        break;
    }
}

/* ---- what the upstream received: an nghttp2 server session reads it ---- */

typedef struct upstream {
    run_t *r;
    int failed;
    /* the header block being read */
    int32_t id;
    int request;
    cx_t *x;
    char method[16], scheme[16], authority[64];
    unsigned nregular;
} upstream_t;

/* Whether the request carries content-length: a length given, but none of 0 on a GET or HEAD
 * (RFC 9110 §8.6: a user agent should not send one for a request without content). */
static int sends_length(const cx_t *x)
{
    uint8_t m = methods[x->kind];
    return x->len > 0 || (x->len == 0 && m != HTTP_GET && m != HTTP_HEAD);
}

static cx_t *wire_stream(run_t *r, int32_t id)
{
    for (unsigned i = 0; i < r->ncx; i++)
        if (r->cx[i]->wire_id == id)
            return r->cx[i];
    return NULL;
}

static int sv_begin_headers(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    upstream_t *u = ud;
    check(f->hd.type == NGHTTP2_HEADERS);
    u->id = f->hd.stream_id;
    u->request = f->headers.cat == NGHTTP2_HCAT_REQUEST;
    u->x = u->request ? NULL : wire_stream(u->r, f->hd.stream_id);
    u->method[0] = u->scheme[0] = u->authority[0] = 0;
    u->nregular = 0;
    if (u->request) /* the client's send window is the input's to give: take all of it */
        check(nghttp2_session_set_local_window_size(s, NGHTTP2_FLAG_NONE, f->hd.stream_id,
                                                    0x7fffffff) == 0);
    return 0;
}

static int is(const uint8_t *p, size_t n, const char *s)
{
    return n == strlen(s) && memcmp(p, s, n) == 0;
}

static void keep(char *dst, size_t cap, const uint8_t *v, size_t n)
{
    check(n < cap);
    memcpy(dst, v, n);
    dst[n] = 0;
}

/* A request's fields: the pseudo-header fields first (request_nv's order: :method, :scheme,
 * :authority, :path), the exchange known by its :path; then the rest. */
static int sv_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name, size_t nlen,
                     const uint8_t *value, size_t vlen, uint8_t flags, void *ud)
{
    (void)s;
    (void)flags;
    upstream_t *u = ud;
    run_t *r = u->r;
    check(f->hd.stream_id == u->id);
    if (!u->request) { /* trailers */
        cx_t *x = u->x;
        check(x != NULL && x->trailers_sent);
        check(lower_token((const char *)name, nlen));
        check(!is(name, nlen, "content-length") && !is(name, nlen, "connection"));
        if (is(name, nlen, "x-sum") && is(value, vlen, "1"))
            x->wire_trailer_ok = 1;
        x->wire_trailers = 1;
        return 0;
    }
    if (is(name, nlen, ":method")) {
        keep(u->method, sizeof u->method, value, vlen);
        return 0;
    }
    if (is(name, nlen, ":scheme")) {
        keep(u->scheme, sizeof u->scheme, value, vlen);
        return 0;
    }
    if (is(name, nlen, ":authority")) {
        keep(u->authority, sizeof u->authority, value, vlen);
        return 0;
    }
    if (is(name, nlen, ":path")) {
        check(u->x == NULL && wire_stream(r, u->id) == NULL);
        unsigned k = 0;
        check(vlen > 2 && sscanf((const char *)value, "/s%u/", &k) == 1 && k < r->ncx);
        cx_t *x = r->cx[k];
        check(is(value, vlen, x->path));
        check(x->wire_id == 0);                      /* each request once */
        check(x->head_sent && x->kind != Q_UPGRADE); /* HTTP/2 has no Upgrade */
        check((uint32_t)u->id > r->last_wire_id);
        r->last_wire_id = (uint32_t)u->id;
        x->wire_id = u->id;
        u->x = x;
        const char *m =
            methods[x->kind] == HTTP_OTHER ? "PURGE" : http_method_name(methods[x->kind]);
        check(strcmp(u->method, m) == 0);
        check(strcmp(u->scheme, "http") == 0);
        check(strcmp(u->authority, x->host) == 0); /* from Host (RFC 9113 §8.3.1) */
        return 0;
    }
    cx_t *x = u->x;
    check(x != NULL); /* the pseudo-header fields came first */
    check(lower_token((const char *)name, nlen));
    check(!is(name, nlen, "host") && !is(name, nlen, "connection") &&
          !is(name, nlen, "keep-alive") && !is(name, nlen, "transfer-encoding") &&
          !is(name, nlen, "upgrade"));
    u->nregular++;
    if (is(name, nlen, "content-length")) {
        char want[24];
        snprintf(want, sizeof want, "%lld", (long long)x->len);
        check(sends_length(x) && is(value, vlen, want));
    }
    if (is(name, nlen, "te"))
        check(x->kind == Q_POST_TRAILERS && is(value, vlen, "trailers"));
    if (is(name, nlen, "x-mixed-case"))
        check(is(value, vlen, "Value"));
    if (is(name, nlen, "cookie"))
        check(vlen == x->big_field);
    return 0;
}

static int sv_data(nghttp2_session *s, uint8_t flags, int32_t id, const uint8_t *data, size_t len,
                   void *ud)
{
    (void)s;
    (void)flags;
    upstream_t *u = ud;
    cx_t *x = wire_stream(u->r, id);
    check(x != NULL && !x->wire_end);
    sink_put(&x->wire_body, data, len);
    check(x->wire_body.n <= x->body.n &&
          memcmp(x->wire_body.p, x->body.p, x->wire_body.n) == 0); /* the body as sent */
    return 0;
}

static int sv_frame(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    (void)s;
    upstream_t *u = ud;
    if (f->hd.type != NGHTTP2_HEADERS && f->hd.type != NGHTTP2_DATA)
        return 0;
    cx_t *x = wire_stream(u->r, f->hd.stream_id);
    check(x != NULL);
    if (f->hd.type == NGHTTP2_HEADERS && f->headers.cat == NGHTTP2_HCAT_REQUEST) {
        /* the fields as sent, those HTTP/2 carries, te and content-length as restated */
        check(u->nregular ==
              x->nfields_sent + (x->kind == Q_POST_TRAILERS) + (unsigned)sends_length(x));
    }
    if (f->hd.flags & NGHTTP2_FLAG_END_STREAM) {
        check(x->ended); /* END_STREAM only after send_end (or a head with MSG_END) */
        check(x->wire_body.n == x->body.n);
        check(x->wire_trailers == (x->trailers_sent && x->kind == Q_POST_TRAILERS));
        if (x->wire_trailers)
            check(x->wire_trailer_ok);
        x->wire_end = 1;
    }
    return 0;
}

static int sv_invalid_frame(nghttp2_session *s, const nghttp2_frame *f, int lib_error, void *ud)
{
    (void)s;
    upstream_t *u = ud;
    fprintf(stderr, "the upstream finds an invalid frame (type %u, stream %d): %s\n", f->hd.type,
            f->hd.stream_id, nghttp2_strerror(lib_error));
    u->failed = 1;
    return 0;
}

static int sv_invalid_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name,
                             size_t nlen, const uint8_t *value, size_t vlen, uint8_t flags,
                             void *ud)
{
    (void)s;
    (void)flags;
    upstream_t *u = ud;
    fprintf(stderr, "the upstream finds an invalid field on stream %d: %.*s: %.*s\n",
            f->hd.stream_id, (int)nlen, (const char *)name, (int)vlen, (const char *)value);
    u->failed = 1;
    return 0;
}

static int sv_stream_close(nghttp2_session *s, int32_t id, uint32_t code, void *ud)
{
    (void)s;
    (void)ud;
    (void)id;
    (void)code;
    return 0;
}

static ssize_t sv_send(nghttp2_session *s, const uint8_t *data, size_t len, int flags, void *ud)
{
    (void)s;
    (void)data;
    (void)flags;
    (void)ud;
    return (ssize_t)len; /* this upstream never answers */
}

static void check_requests(run_t *r)
{
    const uint8_t *o = (const uint8_t *)r->wire.out.p;
    size_t n = r->wire.out.n;
    int lost = r->wire.lost;
    if (getenv("FUZZ_VERBOSE"))
        fprintf(stderr, "streams %u, output %zu bytes%s\n", r->ncx, n, lost ? " (cut)" : "");
    const char *dump = getenv("FUZZ_DUMP"); /* what the codec wrote, to look at */
    FILE *df = dump ? fopen(dump, "wb") : NULL;
    if (df) {
        fwrite(o ? (const void *)o : "", 1, n, df);
        fclose(df);
    }
    if (n == 0) {
        check(lost || r->gones); /* the preface goes out unless the connection died first */
        return;
    }
    size_t pl = sizeof preface - 1;
    check(memcmp(o, preface, n < pl ? n : pl) == 0);
    if (n < pl) {
        check(lost);
        return;
    }
    /* The frames, every SETTINGS ACK taken out (they answer the input's SETTINGS). */
    uint8_t *in = malloc(n);
    check(in != NULL);
    memcpy(in, o, pl);
    size_t m = pl, pos = pl;
    int first = 1;
    while (pos + 9 <= n) {
        size_t len = (size_t)o[pos] << 16 | (size_t)o[pos + 1] << 8 | o[pos + 2];
        uint8_t type = o[pos + 3], flags = o[pos + 4];
        if (first)
            check(type == NGHTTP2_SETTINGS && !(flags & NGHTTP2_FLAG_ACK));
        first = 0;
        check(len <= 16384);
        check(type <= NGHTTP2_CONTINUATION && type != NGHTTP2_PUSH_PROMISE &&
              type != NGHTTP2_PRIORITY);
        size_t end = pos + 9 + len > n ? n : pos + 9 + len;
        uint32_t id = ((uint32_t)o[pos + 5] << 24 | (uint32_t)o[pos + 6] << 16 |
                       (uint32_t)o[pos + 7] << 8 | o[pos + 8]) &
                      0x7fffffff;
        /* Out too: what answers the input rather than this session, SETTINGS ACKs and
         * frames on the streams of the input's PUSH_PROMISEs (even ids; the RST_STREAM that
         * refuses one). */
        int theirs =
            (type == NGHTTP2_SETTINGS && (flags & NGHTTP2_FLAG_ACK)) ||
            (id && !(id & 1) && (type == NGHTTP2_RST_STREAM || type == NGHTTP2_WINDOW_UPDATE));
        if (id && !(id & 1))
            check(theirs); /* the client opens odd streams only */
        if (!theirs) {
            memcpy(in + m, o + pos, end - pos);
            m += end - pos;
        }
        pos = end;
    }
    if (pos < n) { /* a piece of a frame header: only where a write failed */
        memcpy(in + m, o + pos, n - pos);
        m += n - pos;
    }
    if (pos + 9 > n && pos != n)
        check(lost);

    upstream_t u = {.r = r};
    nghttp2_session_callbacks *cb;
    check(nghttp2_session_callbacks_new(&cb) == 0);
    nghttp2_session_callbacks_set_send_callback(cb, sv_send);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, sv_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cb, sv_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, sv_data);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, sv_frame);
    nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(cb, sv_invalid_frame);
    nghttp2_session_callbacks_set_on_invalid_header_callback(cb, sv_invalid_header);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, sv_stream_close);
    nghttp2_session *sv;
    check(nghttp2_session_server_new(&sv, cb, &u) == 0);
    check(nghttp2_session_set_local_window_size(sv, NGHTTP2_FLAG_NONE, 0, 0x7fffffff) == 0);
    ssize_t rv = nghttp2_session_mem_recv(sv, in, m);
    if (rv < 0)
        fprintf(stderr, "the upstream cannot read the client: %s\n", nghttp2_strerror((int)rv));
    check(rv == (ssize_t)m);
    check(!u.failed); /* the client wrote something an HTTP/2 server refuses */
    nghttp2_session_del(sv);
    nghttp2_session_callbacks_del(cb);
    free(in);

    for (unsigned i = 0; i < r->ncx; i++) {
        const cx_t *x = r->cx[i];
        if (x->got_head && !lost)
            check(x->wire_id != 0); /* a response came: its request went */
    }
}

/* ---- one run ---- */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < KNOBS)
        return 0;
    run_t *r = calloc(1, sizeof *r);
    check(r != NULL);
    current_run = r;
    r->knobs = data;
    uint8_t flags = data[0];
    r->rng.s = (uint64_t)data[1] << 32 | 0x2c11;

    /* What the upstream sends: a SETTINGS of the harness's first, unless the input is all. */
    uint8_t start[64];
    size_t pre = 0;
    if (!(flags & 4)) {
        uint8_t set[18];
        size_t sn = 0;
        if (flags & 0x40) { /* SETTINGS_INITIAL_WINDOW_SIZE 1 MiB */
            memcpy(set + sn, "\x00\x04\x00\x10\x00\x00", 6);
            sn += 6;
        }
        if (flags & 0x80) { /* SETTINGS_MAX_CONCURRENT_STREAMS 2 */
            memcpy(set + sn, "\x00\x03\x00\x00\x00\x02", 6);
            sn += 6;
        }
        memcpy(start, "\x00\x00\x00\x04\x00\x00\x00\x00\x00", 9);
        start[2] = (uint8_t)sn;
        memcpy(start + 9, set, sn);
        pre = 9 + sn;
        if (flags & 0x40) { /* WINDOW_UPDATE on the connection: +1 MiB */
            memcpy(start + pre, "\x00\x00\x04\x08\x00\x00\x00\x00\x00\x00\x10\x00\x00", 13);
            pre += 13;
        }
    }
    size_t n = pre + size - KNOBS;
    char *stream = malloc(n ? n : 1);
    check(stream != NULL);
    memcpy(stream, start, pre);
    memcpy(stream + pre, data + KNOBS, size - KNOBS);
    r->n = n;

    check(loop_init(&r->loop, NULL) == 0);
    wire_init(&r->wire, &r->loop);
    r->wire.queue_writes = (flags >> 3) & 1;
    if (flags & 0x10) {
        r->wire.fail_at = 1 + data[1] % 8;
        r->wire.how = flags & 0x20 ? WF_LATER : WF_REFUSE;
    }
    r->tp = wire_transport;
    r->tp.free = tp_free;
    r->act = data[3] & 0x80 ? 2 : data[3] & 0x40 ? 1 : 0;
    r->act_at = data[3] & 15;
    r->act_where = (enum act_where)((data[3] >> 4) & 3);
    r->act_d.fn = act_later;

    r->c = wire_conn(&r->wire);
    r->c->tp = &r->tp;
    r->h = h2_client_new(r->c, &r->stats, &pool_owner, r);
    check(r->h != NULL);
    check(h2_client_has_room(r->h, 0));
    unsigned first = 1 + (data[2] & 7);
    r->nwant = first + ((data[2] >> 3) & 7);
    for (unsigned i = 0; i < first && h2_client_has_room(r->h, 0); i++)
        open_stream(r);
    arm_action(r);

    unsigned rounds = 0;
    for (;;) {
        settle_all(r);
        check(++rounds < 1000000);
        if (r->conn_freed)
            break;
        if (r->gones && holds_stream(r))
            check(!h2_client_has_room(r->h, 0)); /* (a held stream keeps h) */
        /* More streams now and then while it has room, from here or an exchange's chain. */
        if (r->ncx < r->nwant && !r->gones && h2_client_has_room(r->h, 0)) {
            uint32_t v = rng_next(&r->rng);
            if (v % 4 == 0) {
                open_stream(r);
                continue;
            }
            if (v % 4 == 1)
                r->open_in_end = 1;
        }
        if (!any_turn(r) && r->fed < n)
            check(r->c->reading || r->c->closing); /* a quiet connection reads */
        int can_read = r->c->reading && !r->c->closing && r->fed < n;
        if (any_turn(r) && (!can_read || (rng_next(&r->rng) & 1))) {
            turn(r);
            continue;
        }
        if (!can_read)
            break;
        size_t k = next_slice(&r->rng, flags & 3, 1, n - r->fed);
        r->fed += k;
        r->reads++;
        wire_feed(&r->wire, r->c, stream + r->fed - k, k);
        if (r->fed == n && (data[2] & 0x40) && !r->conn_freed && r->c->reading && !r->c->closing) {
            r->eof = 1; /* the upstream closes at once, while exchanges may be busy */
            conn_on_read(r->c, UV_EOF, NULL);
        }
        arm_action(r);
    }
    settle_all(r);

    /* The end: the exchanges may drop their streams, the upstream closes (an EOF while the
     * connection reads), whatever is left is released, and the pool closes what it still
     * holds. */
    if (data[2] & 0x80)
        for (unsigned i = 0; i < r->ncx; i++)
            if (live(r->cx[i]) && !r->cx[i]->turn_release && !r->cx[i]->later_queued)
                do_release(r->cx[i], 0);
    settle_all(r);
    if (!r->conn_freed && r->c->reading && !r->c->closing) {
        r->eof = 1;
        conn_on_read(r->c, UV_EOF, NULL);
        settle_all(r);
    }
    if (!r->gones) {
        h2_client_close(r->h);
        settle_all(r);
    }
    check(r->gones == 1);
    check(r->conn_freed);
    for (unsigned i = 0; i < r->ncx; i++) /* each heard how it ended, and let go */
        check(r->cx[i]->released);
    check(stat_get(&r->stats.upstream_cx_active) == 0);
    loop_teardown(&r->wire);
    check_requests(r);
    wire_free(&r->wire);

    for (unsigned i = 0; i < r->ncx; i++) {
        sink_free(&r->cx[i]->body);
        sink_free(&r->cx[i]->wire_body);
        free(r->cx[i]);
    }
    free(stream);
    free(r);
    current_run = NULL;
    return 0;
}
