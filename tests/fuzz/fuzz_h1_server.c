/* proxy/h1_server.c, with proxy/conn.c and proxy/h1_out.c under it, driven through the
 * transport seam (fuzz_glue.h) by a scripted exchange above it that keeps the stream.h contract.
 *
 * Input: eleven knob bytes, then the bytes the client sends.
 *   byte 0  bits 0-1 how the bytes are cut into reads (fuzz_glue.h next_slice); bit 3 writes
 *           are reported from the loop (else sent at once); bit 4 a write fails (byte 1 picks
 *           which), bit 5 ... later through its callback (else refused at once); bit 6 the
 *           listener starts draining after a few reads; bit 7 large responses (past the
 *           high-water mark) are allowed; bit 2 unused.
 *   byte 1  seed of the generator (read sizes, body lengths, pieces), and the failing write.
 *   byte 2  bit 0 the client does not end with an EOF: the drain deadline cuts the connection
 *           (h1_server_abort_all); bit 1 the EOF comes right after the last read, while the
 *           exchange may still be answering (else once it is done); bits 4-7 all set: the first
 *           0x01 byte stands for PAD_LEN bytes of 'p' (rare: padded inputs are slow).
 *   3..10   two bytes per request, requests cycling through four pairs:
 *           A bits 0-1 when the exchange answers: at the head, at the first body bytes, at the
 *             end of the request, or on a later turn of the loop; bits 2-4 what: a known
 *             length, streamed with trailers, streamed, 204, 304, 101 (Upgrade requests), an
 *             echo of the request body as it arrives, a large body; bit 5 the response is sent
 *             a piece per loop turn; bit 6 100 Continue first when asked; bit 7 the request
 *             body is paused at its head and resumed a turn later.
 *           B bits 0-1 release after the response: in the chain, from the loop's deferred
 *             list, a turn later; bits 2-3 the same after on_error; bits 4-6 all set: the
 *             response is aborted part way (release with abort=1); B & 0xf0 == 0x80: accept
 *             refuses (out of memory).
 *
 * The same bytes are parsed on the side by the strict parser in one piece (the reference):
 * every request the codec delivers must be the reference's next, field for field and byte for
 * byte, with the same MSG_* flags; a request the reference refuses must be refused (a reply of
 * the codec's own with the reference's status, or on_error(ERR_BAD_REQUEST) mid-body), and
 * after that no request is delivered. Bytes handed over with a 101 are exactly those read
 * after the request.
 *
 * Invariants, checked as events arrive (abort() on a violation): one stream at a time, each
 * released exactly once by the exchange, no event after release or after on_error, no
 * on_error from inside an op call (stream.h), no on_data/on_end after MSG_END, no request
 * after an aborted response or a refusal. When the codec leaves the exchange nothing to do it
 * must be reading (a quiet connection that neither reads nor ends is stuck); a response that
 * allowed keep-alive must be followed by the next pipelined request.
 *
 * At the end, what the codec wrote is parsed as responses (each as the answer to its request's
 * method: no body after HEAD): each must be the next one the exchange sent (status, body
 * bytes; a 100 only where sent), codec replies only last, nothing after a 101, a refusal or an
 * aborted response; every complete response must be there (unless a write failed, or a reset
 * cut the connection). No leak: every buffer, head, handle and request is returned. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"
#include "base/http.h"
#include "base/stats.h"
#include "http/h1_parse.h"
#include "proxy/h1_server.h"
#include "tests/fuzz/fuzz_glue.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define KNOBS     11
#define BIG_PIECE (60 * 1024) /* one piece of a large response, in its own 64 KiB buffer */

enum when { AT_HEAD, AT_DATA, AT_END, AT_TURN };
enum kind { K_LENGTH, K_STREAM_TRAILERS, K_STREAM, K_204, K_304, K_UPGRADE, K_ECHO, K_BIG };
enum later { L_CHAIN, L_DEFER, L_TURN, L_CHAIN2 }; /* two bits, three ways: the chain twice */

/* A response the client should see, in the order they were sent. */
typedef struct expect {
    int status;
    uint8_t method;     /* of the request it answers (HEAD: no body) */
    unsigned continues; /* 100 Continue sent before it */
    unsigned complete : 1;
    unsigned aborted : 1;
    unsigned codec : 1;    /* the codec's own answer (a refusal, 503) */
    unsigned upgrade : 1;  /* a 101: nothing follows */
    unsigned has_body : 1; /* bytes sent with it reach the client */
    sink_t body;
} expect_t;

/* The reference: the same stream parsed in one piece, one request at a time. */
typedef struct ref {
    h1_parser_t p;
    head_t head, trailers;
    const char *s;
    size_t n, pos;
    enum { R_NONE, R_DONE, R_ERROR, R_SHORT } state; /* of the current request */
    int have_head;
    size_t head_end, end; /* stream offsets */
    unsigned flags;
    enum h1_body body;
    int status; /* R_ERROR */
    sink_t bytes;
    int ahead; /* parsed ahead, not yet taken by a delivered request */
} ref_t;

typedef struct run run_t;

typedef struct sx {
    run_t *run;
    server_stream_t *s;
    unsigned id;
    uint8_t a, b;
    enum when when;
    enum kind kind;
    head_t *req;
    unsigned msg;
    uint8_t method, minor;
    size_t body_in;
    int exp; /* index of its response in run->exp, -1 */
    /* the response under way */
    unsigned step, npieces;
    size_t len; /* declared body length, or BODY_STREAM */
    head_t *echo_trailers;
    deferred_t later;
    enum { DO_NONE, DO_RELEASE } later_what;
    int later_abort;
    size_t sent; /* body bytes handed to send_data */
    unsigned got_head : 1, got_end : 1, got_error : 1, released : 1, detached : 1;
    unsigned continued : 1; /* a 100 Continue went out for it */
    unsigned answering : 1, head_sent : 1, ended : 1, paused : 1, wait_drain : 1;
    unsigned turn_answer : 1;  /* answer on the next turn */
    unsigned turn_release : 1; /* release on the next turn */
    unsigned turn_abort : 1;
    unsigned req_done_at_head : 1; /* the request was complete when the response head went */
    unsigned close_delim : 1;      /* the response body ends with the connection */
    unsigned keep_alive : 1;       /* computed at release: the codec must go on */
} sx_t;

struct run {
    loop_t loop;
    wire_t wire;
    h1_server_config_t cfg;
    http_stats_t stats;
    stream_handler_t handler;
    rng_t rng;
    const uint8_t *knobs;
    ref_t ref;
    sx_t **xs; /* every exchange of the run, kept to the end to catch late events */
    unsigned nxs, capxs, accepts;
    expect_t *exp;
    size_t nexp, capexp;
    size_t fed; /* stream bytes read by the codec */
    unsigned reads;
    unsigned in_op;       /* inside a call into the codec's ops */
    uint64_t errors_seen; /* downstream_cx_protocol_error accounted for */
    unsigned bad_request_errors;
    unsigned refused : 1;           /* the codec refused a request: no more may come */
    unsigned cut_all : 1;           /* h1_server_abort_all was called */
    unsigned dangling_continue : 1; /* a 100 Continue no response followed */
    unsigned aborted : 1;           /* a response was aborted: no more may come */
    unsigned reset : 1;             /* the connection was cut: what was written is a prefix */
    unsigned eof : 1;
    unsigned draining : 1;
    unsigned big_done : 1;
    conn_t *tunnel; /* a detached connection, ours to close */
    unsigned tunnel_closed : 1;
    unsigned closed_cbs;
};

/* ---- the reference ---- */

static void ref_init(ref_t *r, const char *s, size_t n)
{
    memset(r, 0, sizeof *r);
    head_init(&r->head);
    head_init(&r->trailers);
    h1_parser_init(&r->p, H1_REQUEST, &r->head, &r->trailers);
    r->s = s;
    r->n = n;
}

static void ref_free(ref_t *r)
{
    head_free(&r->head);
    head_free(&r->trailers);
    sink_free(&r->bytes);
}

/* Parse the next request whole (unless already parsed ahead). */
static void ref_peek(ref_t *r)
{
    if (r->ahead)
        return;
    r->ahead = 1;
    if (r->state == R_ERROR || r->state == R_SHORT)
        return; /* final */
    head_reset(&r->head);
    head_reset(&r->trailers);
    r->bytes.n = 0;
    r->have_head = 0;
    r->state = R_NONE;
    for (;;) {
        h1_ev_t ev;
        size_t used = h1_parse(&r->p, r->s + r->pos, r->n - r->pos, &ev);
        r->pos += used;
        switch (ev.type) {
        case H1_HEAD:
            r->have_head = 1;
            r->head_end = r->pos;
            r->flags = r->p.flags;
            r->body = r->p.body;
            break;
        case H1_DATA:
            sink_put(&r->bytes, ev.p, ev.n);
            break;
        case H1_END:
            r->flags = r->p.flags;
            r->end = r->pos;
            r->state = R_DONE;
            return;
        case H1_ERROR:
            r->state = R_ERROR;
            r->status = ev.status;
            r->end = r->pos;
            return;
        case H1_NEED_MORE:
            r->state = R_SHORT;
            return;
        }
    }
}

static void ref_take(ref_t *r)
{
    ref_peek(r);
    r->ahead = 0;
}

static unsigned ref_msg(const ref_t *r)
{
    unsigned m = 0;
    if (r->body == H1_BODY_NONE)
        m |= MSG_END;
    if (r->body == H1_BODY_CHUNKED)
        m |= MSG_CHUNKED;
    if (r->flags & H1F_CLOSE)
        m |= MSG_CLOSE;
    if (r->flags & H1F_UPGRADE)
        m |= MSG_UPGRADE;
    if (r->flags & H1F_CONTINUE)
        m |= MSG_CONTINUE;
    if (r->flags & H1F_CODINGS)
        m |= MSG_CODINGS;
    return m;
}

static int same_piece(const head_t *a, uint32_t ao, uint32_t an, const head_t *b, uint32_t bo,
                      uint32_t bn)
{
    return an == bn && memcmp(a->bytes + ao, b->bytes + bo, an) == 0;
}

static void check_same_fields(const head_t *a, const head_t *b)
{
    check(a->nfields == b->nfields);
    for (unsigned i = 0; i < a->nfields; i++) {
        const field_t *x = &a->fields[i], *y = &b->fields[i];
        check(same_piece(a, x->name, x->name_len, b, y->name, y->name_len));
        check(same_piece(a, x->value, x->value_len, b, y->value, y->value_len));
    }
}

/* ---- expected responses ---- */

static int expect_new(run_t *r, int status, uint8_t method)
{
    if (r->nexp == r->capexp) {
        r->capexp = r->capexp ? 2 * r->capexp : 8;
        r->exp = realloc(r->exp, r->capexp * sizeof *r->exp);
        check(r->exp != NULL);
    }
    expect_t *e = &r->exp[r->nexp];
    memset(e, 0, sizeof *e);
    e->status = status;
    e->method = method;
    return (int)r->nexp++;
}

/* How the client reads a reply of the codec's own: as the answer to the method it sent, when
 * the request line was understood (no body after HEAD, RFC 9112 §6.3). Known bug
 * (regressions/h1_server/{400,503}-to-a-head-request-carries-a-body): local_reply always
 * sends its text body. */
static uint8_t codec_reply_method(const run_t *r)
{
    return skip_known() ? HTTP_GET : r->ref.head.method;
}

/* A refusal of the codec's own since the last look: the reference must refuse there too. */
static void note_refusals(run_t *r)
{
    uint64_t errors = stat_get(&r->stats.downstream_cx_protocol_error);
    check(errors >= r->errors_seen);
    if (errors == r->errors_seen)
        return;
    check(errors == r->errors_seen + 1); /* one refusal, then nothing more is parsed */
    r->errors_seen = errors;
    if (r->bad_request_errors == errors)
        return; /* mid-body: reported to the exchange */
    check(!r->refused);
    r->refused = 1;
    ref_peek(&r->ref);
    check(r->ref.state == R_ERROR && !r->ref.have_head);
    int e = expect_new(r, r->ref.status, codec_reply_method(r));
    r->exp[e].codec = 1;
    r->exp[e].complete = 1;
    r->exp[e].has_body = 1;
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

static const char pattern[] = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ+/";

static int live(const sx_t *x)
{
    return !x->released;
}

static int request_done(const sx_t *x)
{
    return (x->msg & MSG_END) || x->got_end;
}

static void do_release(sx_t *x, int abort)
{
    check(!x->released);
    run_t *r = x->run;
    if (x->exp >= 0 && (!x->ended || abort)) {
        r->exp[x->exp].aborted = 1;
        r->aborted = 1;
        /* A body delimited by the close is cut with a reset, which loses whatever the peer
         * had not received yet: earlier complete responses gathered into the same write too. */
        if (x->close_delim)
            r->reset = 1;
    }
    if (x->exp < 0 && x->continued)
        r->dangling_continue = 1;
    x->keep_alive = !abort && x->ended && !x->got_error && x->req_done_at_head &&
                    !(x->msg & MSG_CLOSE) && !x->close_delim && !x->detached && !r->draining &&
                    !r->eof && !r->wire.failed;
    x->released = 1;
    x->turn_answer = x->turn_release = 0;
    head_give(&r->loop, x->req);
    x->req = NULL;
    head_give(&r->loop, x->echo_trailers);
    x->echo_trailers = NULL;
    OP(x, release(x->s, abort));
}

static void run_later(deferred_t *d)
{
    sx_t *x = (sx_t *)(void *)((char *)d - offsetof(sx_t, later));
    if (x->later_what == DO_RELEASE && !x->released) {
        x->later_what = DO_NONE;
        do_release(x, x->later_abort);
    }
}

/* Release now, from the loop's deferred list, or on a later turn. */
static void release_by(sx_t *x, enum later how, int abort)
{
    switch (how) {
    case L_CHAIN:
    case L_CHAIN2:
        do_release(x, abort);
        break;
    case L_DEFER:
        x->later_what = DO_RELEASE;
        x->later_abort = abort;
        loop_defer(&x->run->loop, &x->later);
        break;
    case L_TURN:
        x->turn_release = 1;
        x->turn_abort = abort;
        break;
    }
}

static head_t *response_head(sx_t *x, int status)
{
    run_t *r = x->run;
    head_t *h = head_take(&r->loop);
    check(h != NULL);
    h->status = (uint16_t)status;
    h->major = 1;
    h->minor = 1;
    uint32_t v = rng_next(&r->rng);
    if (v & 1) {
        int64_t off = head_store(h, "Fuzzy", 5);
        check(off >= 0);
        h->reason = (uint32_t)off;
        h->reason_len = 5;
    }
    check(head_add_field(h, "Server", 6, "remora-fuzz", 11) == 0);
    if (v & 2) /* framing in the head is restated by the codec, never copied (HEAD, 304 aside) */
        check(head_add_field(h, "Content-Length", 14, "7", 1) == 0);
    if (v & 4)
        check(head_add_field(h, "Connection", 10, "close", 5) == 0);
    if (v & 8)
        check(head_add_field(h, "Transfer-Encoding", 17, "gzip", 4) == 0);
    if (v & 16)
        check(head_add_field(h, "Keep-Alive", 10, "timeout=5", 9) == 0);
    if (status == 101)
        check(head_add_field(h, "Upgrade", 7, "websocket", 9) == 0);
    return h;
}

static int body_allowed(const sx_t *x, int status)
{
    return x->method != HTTP_HEAD && status >= 200 && status != 204 && status != 304;
}

/* Send the head of the response. */
static void answer_head(sx_t *x)
{
    run_t *r = x->run;
    int status = 200;
    enum kind k = x->kind;
    switch (k) {
    case K_204:
        status = 204;
        x->len = 0;
        break;
    case K_304:
        status = 304;
        x->len = 0;
        break;
    case K_UPGRADE:
        status = 101;
        x->len = 0;
        break;
    case K_LENGTH:
        if (x->method == HTTP_CONNECT)
            status = 405;
        x->len = rng_next(&r->rng) % 3000;
        if (rng_next(&r->rng) % 4 == 0)
            x->len = 0;
        break;
    case K_BIG:
        x->len = 5 * BIG_PIECE;
        break;
    default:
        x->len = (size_t)BODY_STREAM;
        break;
    }
    x->npieces = k == K_BIG ? 5 : x->len == 0 ? 0 : (unsigned)rng_upto(&r->rng, 4);
    if (k == K_ECHO)
        x->npieces = 0;
    x->exp = expect_new(r, status, x->method);
    expect_t *e = &r->exp[x->exp];
    e->continues = x->continued;
    e->has_body = body_allowed(x, status);
    e->upgrade = status == 101;
    x->req_done_at_head = request_done(x);
    x->close_delim = e->has_body && x->len == (size_t)BODY_STREAM && x->minor == 0;
    head_t *h = response_head(x, status);
    int64_t len = x->len == (size_t)BODY_STREAM ? BODY_STREAM : (int64_t)x->len;
    x->head_sent = 1;
    OP(x, send_head(x->s, h, len, status == 101 ? MSG_UPGRADE : 0));
    head_give(&r->loop, h);
}

/* One body piece from static storage or a buffer of our own. */
static void answer_piece(sx_t *x, size_t n)
{
    run_t *r = x->run;
    expect_t *e = &r->exp[x->exp];
    if (x->kind == K_BIG) {
        buf_t *b = buf_new(&r->loop.bufs, BUF_READ_SIZE);
        check(b != NULL);
        for (size_t i = 0; i < n; i++)
            b->data[i] = pattern[(i + x->step) % 64];
        b->len = (uint32_t)n;
        if (e->has_body)
            sink_put(&e->body, b->data, n);
        OP(x, send_data(x->s, b, b->data, n));
        buf_unref(b);
        return;
    }
    if (rng_next(&r->rng) & 1) {
        buf_t *b = buf_new(&r->loop.bufs, n);
        check(b != NULL);
        for (size_t i = 0; i < n; i++)
            b->data[i] = pattern[(i * 7 + x->step) % 64];
        b->len = (uint32_t)n;
        if (e->has_body)
            sink_put(&e->body, b->data, n);
        OP(x, send_data(x->s, b, b->data, n));
        buf_unref(b);
    } else {
        static char stat_bytes[4096];
        if (!stat_bytes[0])
            for (size_t i = 0; i < sizeof stat_bytes; i++)
                stat_bytes[i] = pattern[i % 64];
        size_t at = x->step % 64;
        if (e->has_body)
            sink_put(&e->body, stat_bytes + at, n);
        OP(x, send_data(x->s, NULL, stat_bytes + at, n));
    }
}

static void answer_end(sx_t *x)
{
    run_t *r = x->run;
    if (((x->b >> 4) & 7) == 7) { /* aborted part way: the client must see it broken */
        release_by(x, (enum later)(x->b & 3), 1);
        return;
    }
    head_t *t = NULL;
    if (x->kind == K_STREAM_TRAILERS) {
        t = head_take(&r->loop);
        check(t != NULL);
        check(head_add_field(t, "X-Checksum", 10, "42", 2) == 0);
        if (rng_next(&r->rng) & 1) /* framing in trailers is never sent */
            check(head_add_field(t, "Content-Length", 14, "1", 1) == 0);
    } else if (x->kind == K_ECHO) {
        t = x->echo_trailers;
        x->echo_trailers = NULL;
    }
    x->ended = 1;
    r->exp[x->exp].complete = 1;
    OP(x, send_end(x->s, t));
    head_give(&r->loop, t);
    release_by(x, (enum later)(x->b & 3), 0);
}

/* The tunnel's side of a detached connection: nothing arrives, it is closed at once. */
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
static void tn_write_error(void *owner, int err)
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
    .on_write_error = tn_write_error,
    .on_closed = tn_closed,
};

static void do_detach(sx_t *x)
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
    x->ended = 1;
    r->exp[x->exp].complete = 1;
    head_give(&r->loop, x->req);
    x->req = NULL;
    check(c != NULL);
    /* What the client sent after its request is the tunnel's: exactly the bytes read since. */
    check(r->ref.state == R_DONE);
    check(r->fed >= r->ref.end && n == r->fed - r->ref.end);
    if (n) {
        check(pending && p >= pending->data && p + n <= pending->data + pending->len);
        check(memcmp(p, r->ref.s + r->ref.end, n) == 0);
    }
    if (pending)
        buf_unref(pending);
    r->tunnel = c;
    conn_set_owner(c, &tunnel_events, r);
    conn_shutdown(c);
}

/* Send the next part of the response; all of it unless split. */
static void answer_more(sx_t *x)
{
    run_t *r = x->run;
    int split = (x->a >> 5) & 1;
    while (live(x) && x->answering && !x->wait_drain && !x->turn_release) {
        if (x->step == 0) {
            if (x->kind == K_UPGRADE && (x->msg & MSG_UPGRADE) && request_done(x)) {
                answer_head(x);
                do_detach(x);
                return;
            }
            if (x->kind == K_UPGRADE)
                x->kind = K_LENGTH; /* not asked to switch: a plain answer */
            if (x->kind == K_BIG && (r->big_done || !(r->knobs[0] & 0x80)))
                x->kind = K_LENGTH;
            if (x->kind == K_BIG)
                r->big_done = 1;
            answer_head(x);
            x->step = 1;
            if (x->kind == K_ECHO) {
                x->answering = 0; /* the rest follows the request */
                if (request_done(x))
                    answer_end(x);
                return;
            }
        } else if (x->step <= x->npieces) {
            size_t n;
            if (x->kind == K_BIG) {
                n = BIG_PIECE;
            } else if (x->len != (size_t)BODY_STREAM) {
                size_t left = x->len - x->sent;
                n = x->step == x->npieces ? left : rng_next(&r->rng) % (left + 1);
            } else {
                n = rng_next(&r->rng) % 1500;
            }
            x->sent += n;
            if (n)
                answer_piece(x, n);
            x->step++;
            if (live(x) && x->kind == K_BIG && x->s->ops->over_high_water(x->s))
                x->wait_drain = 1; /* the rest after on_drain */
        } else {
            x->answering = 0;
            answer_end(x);
            return;
        }
        if (split)
            return;
    }
}

static void start_answer(sx_t *x)
{
    if (x->answering || x->head_sent || !live(x) || x->got_error)
        return;
    x->answering = 1;
    answer_more(x);
}

static const stream_events_t *accept_(void *owner, server_stream_t *s, void **ctx)
{
    run_t *r = owner;
    check(!r->refused && !r->aborted); /* nothing is parsed after a refusal or a cut */
    check(r->tunnel == NULL);
    for (unsigned i = 0; i < r->nxs; i++)
        check(r->xs[i]->released); /* one stream at a time */
    unsigned k = r->accepts++;
    uint8_t a = r->knobs[3 + 2 * (k % 4)], b = r->knobs[4 + 2 * (k % 4)];
    if ((b & 0xf0) == 0x80) { /* out of memory: the codec answers 503 itself */
        ref_peek(&r->ref);
        check(r->ref.have_head);
        int e = expect_new(r, 503, codec_reply_method(r));
        r->exp[e].codec = 1;
        r->exp[e].complete = 1;
        r->exp[e].has_body = 1;
        r->refused = 1;
        return NULL;
    }
    if (r->nxs == r->capxs) {
        r->capxs = r->capxs ? 2 * r->capxs : 8;
        r->xs = realloc(r->xs, r->capxs * sizeof *r->xs);
        check(r->xs != NULL);
    }
    sx_t *x = calloc(1, sizeof *x);
    check(x != NULL);
    x->run = r;
    x->s = s;
    x->id = k;
    x->a = a;
    x->b = b;
    x->when = (enum when)(a & 3);
    x->kind = (enum kind)((a >> 2) & 7);
    x->exp = -1;
    x->later.fn = run_later;
    r->xs[r->nxs++] = x;
    *ctx = x;
    return &events;
}

static void ev_head(void *ctx, head_t *h, unsigned msg)
{
    sx_t *x = ctx;
    run_t *r = x->run;
    check(live(x) && !x->got_head && !x->got_error);
    check(h != NULL);
    x->got_head = 1;
    x->req = h;
    x->msg = msg;
    x->method = h->method;
    x->minor = h->minor;
    if (x->method == HTTP_CONNECT && x->kind != K_304)
        x->kind = K_LENGTH; /* answered 405: a 2xx to CONNECT opens a tunnel (RFC 9110 §9.3.6) */

    /* The reference's next request, as delivered. */
    ref_take(&r->ref);
    ref_t *f = &r->ref;
    check(f->have_head);
    check(msg == ref_msg(f));
    check(h->method == f->head.method && h->major == f->head.major && h->minor == f->head.minor);
    check(same_piece(h, h->target, h->target_len, &f->head, f->head.target, f->head.target_len));
    check(same_piece(h, h->method_text, h->method_len, &f->head, f->head.method_text,
                     f->head.method_len));
    check_same_fields(h, &f->head);
    check(f->head_end <= r->fed);

    if ((x->a & 0x40) && (msg & MSG_CONTINUE)) {
        x->continued = x->minor >= 1; /* the codec sends it to 1.1 clients only */
        OP(x, send_continue(x->s));
    }
    if ((x->a & 0x80) && !(msg & MSG_END)) {
        x->paused = 1;
        OP(x, pause(x->s, 1));
    }
    if (x->when == AT_TURN && x->kind != K_ECHO)
        x->turn_answer = 1;
    else if (x->kind == K_ECHO || x->when == AT_HEAD || (msg & MSG_END))
        start_answer(x);
}

static void ev_data(void *ctx, buf_t *b, const char *p, size_t n)
{
    sx_t *x = ctx;
    run_t *r = x->run;
    check(live(x) && x->got_head && !x->got_end && !x->got_error);
    check(!(x->msg & MSG_END));
    check(n > 0 && b && p >= b->data && p + n <= b->data + b->len);
    /* The reference's body, byte for byte. */
    check(x->body_in + n <= r->ref.bytes.n);
    check(memcmp(r->ref.bytes.p + x->body_in, p, n) == 0);
    x->body_in += n;
    if (x->kind == K_ECHO && x->head_sent && !x->ended && x->exp >= 0) {
        expect_t *e = &r->exp[x->exp];
        if (e->has_body)
            sink_put(&e->body, p, n);
        OP(x, send_data(x->s, b, p, n));
    }
    if (x->when == AT_DATA)
        start_answer(x);
}

static void ev_end(void *ctx, head_t *trailers)
{
    sx_t *x = ctx;
    run_t *r = x->run;
    check(live(x) && x->got_head && !x->got_end && !x->got_error);
    check(!(x->msg & MSG_END));
    x->got_end = 1;
    check(r->ref.state == R_DONE && x->body_in == r->ref.bytes.n);
    if (r->ref.flags & H1F_TRAILERS) {
        check(trailers != NULL);
        check_same_fields(trailers, &r->ref.trailers);
    } else {
        check(trailers == NULL);
    }
    if (x->kind == K_ECHO && x->head_sent && !x->ended) {
        x->echo_trailers = trailers;
        answer_end(x);
        return;
    }
    head_give(&r->loop, trailers);
    if (x->when != AT_TURN)
        start_answer(x);
}

static void ev_error(void *ctx, int err)
{
    sx_t *x = ctx;
    run_t *r = x->run;
    check(live(x) && !x->got_error);
    /* A failure is never reported from inside the call (stream.h). Known bug
     * (regressions/h1_server/on-error-from-inside-send-data-when-a-write-fails-at-once): a
     * write the transport refuses at once while send_data gathers (conn.c out_room flushes a
     * full request) reaches on_error from inside send_data. */
    check(r->in_op == 0 || skip_known());
    check(err == ERR_BAD_REQUEST || err == ERR_CLIENT_GONE);
    check(!x->detached);
    x->got_error = 1;
    x->answering = 0;
    x->turn_answer = 0;
    x->wait_drain = 0;
    if (err == ERR_BAD_REQUEST) {
        r->bad_request_errors++;
        r->refused = 1;
        /* The reference refuses this request's body too. */
        check(x->got_head && !x->got_end && r->ref.state == R_ERROR);
    } else {
        /* The client went: its EOF mid-request, a failed write, or every connection cut. */
        check(r->eof || r->wire.failed || r->cut_all);
    }
    enum later how = (enum later)((x->b >> 2) & 3);
    /* Known bug (regressions/h1_server/stream-freed-before-release-after-connection-cut): when
     * the connection closes while the exchange still holds a failed stream, the codec frees
     * the stream on the next loop pass; a release after that is a use after free. */
    if (how == L_TURN && skip_known())
        how = L_DEFER;
    if (x->turn_release || x->later_what == DO_RELEASE) /* already on its way out */
        return;
    if (err == ERR_BAD_REQUEST && !x->head_sent) {
        /* The exchange answers the broken request itself. */
        x->kind = K_LENGTH;
        x->exp = expect_new(r, 400, x->method);
        r->exp[x->exp].has_body = body_allowed(x, 400);
        r->exp[x->exp].continues = x->continued;
        x->req_done_at_head = 0;
        head_t *h = response_head(x, 400);
        x->head_sent = 1;
        OP(x, send_head(x->s, h, 0, MSG_CLOSE));
        head_give(&r->loop, h);
        x->ended = 1;
        r->exp[x->exp].complete = 1;
        OP(x, send_end(x->s, NULL));
        release_by(x, how, 0);
        return;
    }
    release_by(x, how, x->head_sent && !x->ended);
}

static void ev_drain(void *ctx)
{
    sx_t *x = ctx;
    check(live(x) && !x->got_error);
    if (x->wait_drain) {
        x->wait_drain = 0;
        answer_more(x);
    }
}

/* ---- the driver ---- */

static int has_turn(const sx_t *x)
{
    return live(x) && (x->paused || x->turn_answer || x->turn_release ||
                       (x->answering && !x->wait_drain && !x->got_error));
}

/* One turn for every exchange with something to do; returns whether any had. */
static int turn(run_t *r)
{
    int did = 0;
    for (unsigned i = 0; i < r->nxs; i++) {
        sx_t *x = r->xs[i];
        if (!has_turn(x))
            continue;
        did = 1;
        if (x->turn_release) {
            x->turn_release = 0;
            do_release(x, x->turn_abort);
            continue;
        }
        if (x->paused) {
            x->paused = 0;
            OP(x, pause(x->s, 0));
            continue;
        }
        if (x->turn_answer) {
            x->turn_answer = 0;
            start_answer(x);
            continue;
        }
        answer_more(x);
    }
    return did;
}

static int server_alive(const run_t *r)
{
    return r->cfg.conns != NULL;
}

static conn_t *server_conn(run_t *r, conn_t *c)
{
    return server_alive(r) && r->tunnel == NULL ? c : NULL;
}

/* Pump, looking for refusals after every step, and close the tunnel once its 101 is out. */
static void settle(run_t *r)
{
    unsigned rounds = 0;
    for (;;) {
        int did = pump_once(&r->wire);
        note_refusals(r);
        if (r->tunnel && !r->tunnel_closed && r->wire.npending == 0 && !r->tunnel->closing) {
            conn_close(r->tunnel);
            did = 1;
        }
        if (!did)
            break;
        check(++rounds < 100000);
    }
}

/* Everything the exchange has left to do, done. */
static void settle_all(run_t *r)
{
    unsigned rounds = 0;
    do {
        settle(r);
        check(++rounds < 10000);
    } while (turn(r));
}

static int any_turn(const run_t *r)
{
    for (unsigned i = 0; i < r->nxs; i++)
        if (has_turn(r->xs[i]))
            return 1;
    return 0;
}

static int any_live(const run_t *r)
{
    for (unsigned i = 0; i < r->nxs; i++)
        if (live(r->xs[i]))
            return 1;
    return 0;
}

/* A quiet connection with nothing left to the exchange must be reading: else it is stuck. */
static void check_not_stuck(run_t *r, conn_t *c)
{
    if (!server_conn(r, c) || any_turn(r))
        return;
    check(c->reading || c->closing);
}

/* The last response allowed keep-alive and the next request was read: it must have come. */
static void check_went_on(run_t *r)
{
    if (r->nxs == 0 || r->refused || any_live(r) || r->accepts != r->nxs)
        return;
    const sx_t *last = r->xs[r->nxs - 1];
    if (!last->released || !last->keep_alive || r->ref.ahead || r->draining || r->wire.lost)
        return;
    if (r->ref.state != R_DONE)
        return;
    ref_peek(&r->ref);
    if ((r->ref.have_head && r->ref.head_end <= r->fed) ||
        (r->ref.state == R_ERROR && r->ref.end < r->fed))
        glue_fail(__FILE__, __LINE__, "a pipelined request after a keep-alive response was lost");
}

/* ---- what the client received ---- */

static void check_output(run_t *r)
{
    const sink_t *out = &r->wire.out;
    const char *bytes = out->p ? out->p : "";
    if (getenv("FUZZ_VERBOSE")) /* what the client got, to write seeds with */
        fprintf(stderr, "accepted %u, responses sent %zu, output:\n%.*s\n", r->accepts, r->nexp,
                (int)out->n, bytes);
    head_t head, trailers;
    head_init(&head);
    head_init(&trailers);
    h1_parser_t p;
    h1_parser_init(&p, H1_RESPONSE, &head, &trailers);
    size_t pos = 0, k = 0, body = 0;
    unsigned continues = 0;
    int in_msg = 0, prefix = r->wire.lost || r->reset;
    sink_t got = {0};
    for (;;) {
        if (!in_msg) {
            if (k < r->nexp)
                p.request_method = r->exp[k].method;
            head_reset(&head);
            head_reset(&trailers);
        }
        h1_ev_t ev;
        size_t used = h1_parse(&p, bytes + pos, out->n - pos, &ev);
        pos += used;
        if (ev.type == H1_NEED_MORE && pos == out->n)
            h1_parse_eof(&p, &ev); /* the connection ended there */
        if (ev.type == H1_NEED_MORE)
            break; /* between messages */
        if (ev.type == H1_ERROR) {
            /* Cut short: an aborted response, a failed write, or a 100 Continue no response
             * followed (the exchange ended without one). */
            check(in_msg ? prefix || r->exp[k].aborted
                         : continues > 0 && (prefix || r->dangling_continue));
            break;
        }
        if (ev.type == H1_HEAD && head.status < 200 && head.status != 101) {
            /* A 100 Continue: before the response it belongs to, or last when none followed. */
            check(head.status == 100 && !in_msg);
            check(k < r->nexp ? !r->exp[k].codec : r->dangling_continue || prefix);
            continues++;
            head_reset(&head);
            continue;
        }
        check(k < r->nexp); /* a response nobody sent */
        const expect_t *e = &r->exp[k];
        switch (ev.type) {
        case H1_HEAD:
            check(!in_msg);
            in_msg = 1;
            check(head.status == e->status);
            got.n = 0;
            body = 0;
            break;
        case H1_DATA:
            check(in_msg);
            sink_put(&got, ev.p, ev.n);
            body += ev.n;
            check((e->has_body && body <= e->body.n) || e->codec);
            if (!e->codec)
                check(memcmp(got.p, e->body.p, got.n) == 0);
            break;
        case H1_END:
            check(in_msg);
            if (!e->codec && !e->aborted)
                check(got.n == e->body.n);
            check(continues == e->continues || prefix);
            in_msg = 0;
            continues = 0;
            k++;
            if (e->upgrade || e->codec || e->aborted)
                check(pos == out->n); /* nothing after a 101, a refusal or a cut */
            break;
        default:
            break;
        }
        if (pos == out->n && !in_msg && ev.type == H1_END)
            break;
    }
    if (!prefix) {
        /* Every complete response reached the client; only an aborted one may be missing. */
        for (size_t i = k; i < r->nexp; i++)
            check(r->exp[i].aborted || !r->exp[i].complete);
    }
    sink_free(&got);
    head_free(&head);
    head_free(&trailers);
}

/* ---- one run ---- */

static void on_conn_gone(void *owner)
{
    run_t *r = owner;
    r->closed_cbs++;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < KNOBS)
        return 0;
    run_t *r = calloc(1, sizeof *r);
    check(r != NULL);
    r->knobs = data;
    uint8_t flags = data[0];
    r->rng.s = (uint64_t)data[1] << 32 | 0x5eed;
    size_t n;
    char *stream = expand_stream(data + KNOBS, size - KNOBS, (data[2] & 0xf0) == 0xf0, &n);
    ref_init(&r->ref, stream, n);

    check(loop_init(&r->loop, NULL) == 0);
    wire_init(&r->wire, &r->loop);
    r->wire.queue_writes = (flags >> 3) & 1;
    if (flags & 0x10) {
        r->wire.fail_at = 1 + data[1] % 8;
        r->wire.how = flags & 0x20 ? WF_LATER : WF_REFUSE;
    }
    r->handler.accept = accept_;
    r->cfg.loop = &r->loop;
    r->cfg.handler = &r->handler;
    r->cfg.owner = r;
    r->cfg.stats = &r->stats;
    r->cfg.on_closed = on_conn_gone;
    /* The run must not depend on time: no timeout comes within it (the linger is 5 s). */
    h1_server_config_init(&r->cfg, 1000u * 1000 * 1000, 1000u * 1000 * 1000);
    unsigned drain_at = (flags & 0x40) ? (unsigned)rng_next(&r->rng) % 4 : ~0u;

    conn_t *c = wire_conn(&r->wire);
    h1_server_start(&r->cfg, c, NULL);
    check(r->cfg.nconns == 1);

    unsigned rounds = 0;
    for (;;) {
        settle(r);
        check(++rounds < 1000000);
        if (!server_conn(r, c))
            break;
        check_not_stuck(r, c);
        int can_read = c->reading && !c->closing && r->fed < n;
        if (any_turn(r) && (!can_read || (rng_next(&r->rng) & 1))) {
            turn(r);
            continue;
        }
        if (!can_read)
            break;
        size_t k = next_slice(&r->rng, flags & 3, n > size ? 256 : 1, n - r->fed);
        r->fed += k;
        r->reads++;
        wire_feed(&r->wire, c, stream + r->fed - k, k);
        note_refusals(r);
        if (r->fed == n && (data[2] & 2) && server_conn(r, c) && c->reading && !c->closing) {
            r->eof = 1; /* the client half-closes at once, while the exchange may be busy */
            /* Known bug (regressions/h1_server/half-close-after-a-request-drops-its-queued-
             * response): an EOF between requests closes at once, dropping what is queued. */
            r->reset |= skip_known();
            conn_on_read(c, UV_EOF, NULL);
            note_refusals(r);
        }
        if (r->reads == drain_at + 1 && server_alive(r)) {
            r->draining = 1;
            h1_server_drain(&r->cfg);
        }
    }
    settle_all(r);
    check_went_on(r);

    /* The client ends: EOF while it reads (again, as libuv reports it again), else the drain
     * deadline cuts it. Then every exchange has heard of it and released. */
    int cut_first = data[2] & 1; /* or the drain deadline comes first */
    for (unsigned i = 0; i < 4 && server_conn(r, c) && !cut_first; i++) {
        if (!c->reading || c->closing)
            break;
        r->eof = 1;
        conn_on_read(c, UV_EOF, NULL);
        settle_all(r);
    }
    if (server_conn(r, c)) {
        r->cut_all = 1;
        h1_server_abort_all(&r->cfg);
        settle_all(r);
    }
    check(!server_alive(r) && r->cfg.nconns == 0);
    check(r->closed_cbs == 1);
    for (unsigned i = 0; i < r->nxs; i++)
        check(r->xs[i]->released);
    check(r->tunnel == NULL || r->tunnel_closed);
    check(stat_get(&r->stats.downstream_cx_header_timeout) == 0);
    h1_server_config_close(&r->cfg);
    loop_teardown(&r->wire);
    check_output(r);
    wire_free(&r->wire);

    for (unsigned i = 0; i < r->nxs; i++)
        free(r->xs[i]);
    free(r->xs);
    for (size_t i = 0; i < r->nexp; i++)
        sink_free(&r->exp[i].body);
    free(r->exp);
    ref_free(&r->ref);
    free(stream);
    free(r);
    return 0;
}
