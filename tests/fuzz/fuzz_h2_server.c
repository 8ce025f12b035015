/* proxy/h2_server.c (nghttp2 inside, proxy/conn.c under it, and proxy/h1_server.c for what its
 * sniffer hands over) driven through the transport seam (fuzz_glue.h) by a scripted exchange
 * above it that keeps the stream.h contract, with many streams at once.
 *
 * Input: eight knob bytes, then the bytes the client sends.
 *   byte 0  bits 0-1 how the bytes are cut into reads (fuzz_glue.h next_slice); bit 2 the input
 *           is the whole client stream (else the connection preface and an empty SETTINGS are
 *           sent first, so that the fuzzer starts among frames); bit 3 writes are reported from
 *           the loop (else sent at once); bit 4 a write fails (byte 1 picks which), bit 5 ...
 *           later through its callback (else refused at once); bit 6 the listener drains after
 *           a few reads; bit 7 the connection goes through h2_server_accept (the sniffer; what
 *           is not the preface goes to h1_server) rather than h2_server_start.
 *   byte 1  seed of the generator (read sizes, body lengths, pieces), and the failing write.
 *   byte 2  bit 0 the client never ends: the drain deadline cuts the connection
 *           (h2_server_abort_all); bit 1 the EOF comes right after the last read.
 *   3..7    one byte per stream, cycling: bits 0-1 when the exchange answers (at the head, at
 *           the first body bytes, at the end of the request, on a later turn); bits 2-4 what:
 *           a known length, streamed with trailers, streamed, 204, 304, an echo of the request
 *           body as it arrives, a large body past the high-water mark (resumed by on_drain),
 *           100 Continue then a known length; bit 5 the request body is paused at the head
 *           and resumed a turn later; bits 6-7 release after the response: in the chain, from
 *           the loop's deferred list, a turn later, or aborted part way (release, abort=1).
 *
 * Invariants, checked as events arrive (abort() on a violation): each stream gets one head,
 * then body and end only while it is not complete, nothing after release or after on_error,
 * no on_error from inside an op call (stream.h); a head is well formed (method and target
 * set, version 2, field names lower case and not pseudo-header fields, a Host); MSG_CHUNKED
 * exactly when no Content-Length came and the head is not the whole request; body bytes point
 * into their buffer and add up to the Content-Length; trailers carry no pseudo-header field.
 * A quiet connection with nothing left to the exchanges is reading, or closing.
 *
 * At the end, what the codec wrote is walked frame by frame when the connection was HTTP/2:
 * the server's SETTINGS first, every frame's length within 16384 (the default frame size;
 * DATA never larger), header blocks decode with HPACK (nghttp2's inflater, in order), a
 * response starts with :status and carries no upper-case or connection-specific field,
 * trailers no pseudo-header field, DATA only after a final response head and before the
 * stream's end, nothing but RST_STREAM on a stream after its END_STREAM and nothing after
 * its RST_STREAM, nothing at all after a GOAWAY with an error code, no PUSH_PROMISE. No
 * leak: every buffer, head, handle and write request is returned (loop_teardown).
 *
 * The harness is not TLS: transport_tls_alpn is a stub here (no connection has ALPN). */
#include <nghttp2/nghttp2.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"
#include "base/http.h"
#include "base/stats.h"
#include "proxy/h1_server.h"
#include "proxy/h2_server.h"
#include "proxy/transport_tls.h"
#include "tests/fuzz/fuzz_glue.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

const unsigned char *transport_tls_alpn(const conn_t *c, unsigned *len)
{
    (void)c;
    *len = 0;
    return NULL;
}

#define KNOBS     8
#define BIG_PIECE (60 * 1024)

static const char client_start[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
                                   "\x00\x00\x00\x04\x00\x00\x00\x00\x00";

enum when { AT_HEAD, AT_DATA, AT_END, AT_TURN };
enum kind { K_LENGTH, K_TRAILERS, K_STREAM, K_204, K_304, K_ECHO, K_BIG, K_CONTINUE };
enum later { L_CHAIN, L_DEFER, L_TURN, L_ABORT };

typedef struct run run_t;

typedef struct sx {
    run_t *run;
    server_stream_t *s;
    uint8_t k;
    enum when when;
    enum kind kind;
    enum later how;
    unsigned msg;
    int64_t length; /* the request's Content-Length, -1 */
    size_t body_in;
    unsigned step, npieces;
    size_t len; /* the response body declared, or BODY_STREAM */
    size_t sent;
    deferred_t later;
    unsigned got_head : 1, got_end : 1, got_error : 1, released : 1, head_sent : 1, ended : 1;
    unsigned answering : 1, paused : 1, wait_drain : 1, turn_answer : 1, turn_release : 1;
    unsigned later_release : 1, turn_abort : 1, no_body : 1;
} sx_t;

struct run {
    loop_t loop;
    wire_t wire;
    h1_server_config_t h1;
    h2_server_config_t cfg;
    http_stats_t stats;
    stream_handler_t handler;
    rng_t rng;
    const uint8_t *knobs;
    sx_t **xs; /* every exchange of the run, kept to the end to catch late events */
    unsigned nxs, capxs;
    size_t fed;
    unsigned reads;
    unsigned in_op;
    unsigned closed_cbs;
    unsigned eof : 1, cut_all : 1, draining : 1, big_done : 1;
};

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
    x->released = 1;
    x->turn_answer = x->turn_release = x->answering = 0;
    OP(x, release(x->s, abort));
}

static void run_later(deferred_t *d)
{
    sx_t *x = (sx_t *)(void *)((char *)d - offsetof(sx_t, later));
    if (x->later_release && !x->released) {
        x->later_release = 0;
        do_release(x, 0);
    }
}

static void release_by(sx_t *x, int abort)
{
    switch (x->how) {
    case L_CHAIN:
    case L_ABORT:
        do_release(x, abort);
        break;
    case L_DEFER:
        if (abort) {
            do_release(x, 1);
            break;
        }
        x->later_release = 1;
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
    check(head_add_field(h, "Server", 6, "remora-fuzz", 11) == 0);
    if (v & 2) /* framing in the head is restated by the codec, never copied (HEAD, 304 aside) */
        check(head_add_field(h, "Content-Length", 14, "7", 1) == 0);
    if (v & 4)
        check(head_add_field(h, "Connection", 10, "close", 5) == 0);
    if (v & 8)
        check(head_add_field(h, "Transfer-Encoding", 17, "chunked", 7) == 0);
    if (v & 16)
        check(head_add_field(h, "Keep-Alive", 10, "timeout=5", 9) == 0);
    if (v & 32)
        check(head_add_field(h, "X-Mixed-Case", 12, "v", 1) == 0);
    return h;
}

static void answer_head(sx_t *x)
{
    run_t *r = x->run;
    int status = 200;
    switch (x->kind) {
    case K_204:
        status = 204;
        x->len = 0;
        break;
    case K_304:
        status = 304;
        x->len = 0;
        break;
    case K_BIG:
        x->len = 5 * BIG_PIECE;
        break;
    case K_LENGTH:
    case K_CONTINUE:
        x->len = rng_next(&r->rng) % 3000;
        if (rng_next(&r->rng) % 4 == 0)
            x->len = 0;
        break;
    default:
        x->len = (size_t)BODY_STREAM;
        break;
    }
    x->npieces = x->kind == K_BIG ? 5 : x->len == 0 ? 0 : (unsigned)rng_upto(&r->rng, 4);
    if (x->kind == K_ECHO)
        x->npieces = 0;
    if (x->kind == K_CONTINUE) { /* an interim answer first, as an upstream's 103 would be */
        head_t *e = head_take(&r->loop);
        check(e != NULL);
        e->status = 103;
        check(head_add_field(e, "Link", 4, "</a>; rel=preload", 17) == 0);
        OP(x, send_head(x->s, e, 0, 0));
        head_give(&r->loop, e);
    }
    head_t *h = response_head(x, status);
    int64_t len = x->len == (size_t)BODY_STREAM ? BODY_STREAM : (int64_t)x->len;
    x->head_sent = 1;
    OP(x, send_head(x->s, h, len, rng_next(&r->rng) & 1 ? MSG_CLOSE : 0));
    head_give(&r->loop, h);
}

static void answer_piece(sx_t *x, size_t n)
{
    run_t *r = x->run;
    if (x->kind == K_BIG || (rng_next(&r->rng) & 1)) {
        buf_t *b = buf_new(&r->loop.bufs, n);
        check(b != NULL);
        for (size_t i = 0; i < n; i++)
            b->data[i] = pattern[(i * 7 + x->step) % 64];
        b->len = (uint32_t)n;
        OP(x, send_data(x->s, b, b->data, n));
        buf_unref(b);
    } else {
        static char stat_bytes[4096];
        if (!stat_bytes[0])
            for (size_t i = 0; i < sizeof stat_bytes; i++)
                stat_bytes[i] = pattern[i % 64];
        OP(x, send_data(x->s, NULL, stat_bytes + x->step % 64, n));
    }
}

static void answer_end(sx_t *x, head_t *echo_trailers)
{
    run_t *r = x->run;
    if (x->how == L_ABORT) { /* aborted part way: the client must see it broken */
        head_give(&r->loop, echo_trailers);
        release_by(x, 1);
        return;
    }
    head_t *t = echo_trailers;
    if (!t && x->kind == K_TRAILERS) {
        t = head_take(&r->loop);
        check(t != NULL);
        check(head_add_field(t, "X-Checksum", 10, "42", 2) == 0);
        if (rng_next(&r->rng) & 1) /* framing in trailers is never sent */
            check(head_add_field(t, "Content-Length", 14, "1", 1) == 0);
    }
    x->ended = 1;
    OP(x, send_end(x->s, t));
    head_give(&r->loop, t);
    release_by(x, 0);
}

static void answer_more(sx_t *x)
{
    run_t *r = x->run;
    while (live(x) && x->answering && !x->wait_drain && !x->turn_release) {
        if (x->step == 0) {
            if (x->kind == K_BIG && (r->big_done || (rng_next(&r->rng) & 3)))
                x->kind = K_LENGTH; /* one large body per run at most, and not always */
            if (x->kind == K_BIG)
                r->big_done = 1;
            answer_head(x);
            x->step = 1;
            if (x->kind == K_ECHO) {
                x->answering = 0; /* the rest follows the request */
                if (request_done(x))
                    answer_end(x, NULL);
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
                x->wait_drain = 1;
        } else {
            x->answering = 0;
            answer_end(x, NULL);
            return;
        }
        if (rng_next(&r->rng) & 1)
            return; /* the rest on a later turn */
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
    if (r->nxs == r->capxs) {
        r->capxs = r->capxs ? 2 * r->capxs : 8;
        r->xs = realloc(r->xs, r->capxs * sizeof *r->xs);
        check(r->xs != NULL);
    }
    sx_t *x = calloc(1, sizeof *x);
    check(x != NULL);
    uint8_t k = r->knobs[3 + r->nxs % 5];
    x->run = r;
    x->s = s;
    x->k = k;
    x->when = (enum when)(k & 3);
    x->kind = (enum kind)((k >> 2) & 7);
    x->how = (enum later)(k >> 6);
    x->length = -1;
    x->later.fn = run_later;
    r->xs[r->nxs++] = x;
    *ctx = x;
    return &events;
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

static void check_h2_head(const head_t *h)
{
    check(h->major == 2);
    check(h->method_len > 0 && h->target_len > 0);
    int host = 0;
    for (unsigned i = 0; i < h->nfields; i++) {
        check(lower_token(field_name(h, i), h->fields[i].name_len));
        check(h->fields[i].name < h->len && h->fields[i].value + h->fields[i].value_len < h->len);
        host += h->fields[i].id == F_HOST;
    }
    check(host == 1); /* :authority or Host, exactly once */
}

static void ev_head(void *ctx, head_t *h, unsigned msg)
{
    sx_t *x = ctx;
    run_t *r = x->run;
    check(live(x) && !x->got_head && !x->got_error && r->in_op == 0);
    check(h != NULL);
    x->got_head = 1;
    x->msg = msg;
    x->no_body = h->method == HTTP_HEAD;
    if (h->major == 2) {
        check_h2_head(h);
        check((msg & ~(unsigned)(MSG_END | MSG_CHUNKED | MSG_CONTINUE)) == 0);
        int cl = head_find_id(h, F_CONTENT_LENGTH, 0);
        if (!(msg & MSG_END))
            check(!(msg & MSG_CHUNKED) == (cl >= 0));
        if (cl >= 0) {
            int64_t v = 0;
            const char *p = field_value(h, (unsigned)cl);
            for (uint32_t i = 0; i < h->fields[cl].value_len; i++) {
                check(p[i] >= '0' && p[i] <= '9');
                v = v * 10 + (p[i] - '0');
            }
            x->length = v;
            if (msg & MSG_END)
                check(v == 0);
        }
    }
    head_give(&r->loop, h);
    if (x->kind == K_CONTINUE && (msg & MSG_CONTINUE))
        OP(x, send_continue(x->s));
    if ((x->k & 0x20) && !(msg & MSG_END)) {
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
    check(live(x) && x->got_head && !x->got_end && !x->got_error && x->run->in_op == 0);
    check(!(x->msg & MSG_END));
    check(n > 0 && b && p >= b->data && p + n <= b->data + b->len && b->refs > 0);
    x->body_in += n;
    check(x->length < 0 || x->body_in <= (size_t)x->length);
    if (x->kind == K_ECHO && x->head_sent && !x->ended)
        OP(x, send_data(x->s, b, p, n));
    if (x->when == AT_DATA)
        start_answer(x);
}

static void ev_end(void *ctx, head_t *trailers)
{
    sx_t *x = ctx;
    run_t *r = x->run;
    check(live(x) && x->got_head && !x->got_end && !x->got_error && r->in_op == 0);
    check(!(x->msg & MSG_END));
    x->got_end = 1;
    check(x->length < 0 || x->body_in == (size_t)x->length);
    if (trailers) {
        check(trailers->nfields > 0);
        for (unsigned i = 0; i < trailers->nfields; i++)
            check(lower_token(field_name(trailers, i), trailers->fields[i].name_len));
    }
    if (x->kind == K_ECHO && x->head_sent && !x->ended) {
        answer_end(x, trailers);
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
    check(r->in_op == 0); /* never from inside the call (stream.h) */
    check(err == ERR_BAD_REQUEST || err == ERR_CLIENT_GONE || err == UV_ENOMEM);
    x->got_error = 1;
    x->answering = x->turn_answer = x->wait_drain = 0;
    if (x->turn_release || x->later_release)
        return;                                    /* already on its way out */
    if (err == ERR_BAD_REQUEST && !x->head_sent) { /* the exchange answers 400 */
        head_t *h = response_head(x, 400);
        x->head_sent = 1;
        OP(x, send_head(x->s, h, 0, MSG_CLOSE));
        head_give(&r->loop, h);
        x->ended = 1;
        OP(x, send_end(x->s, NULL));
        release_by(x, 0);
        return;
    }
    release_by(x, x->head_sent && !x->ended);
}

static void ev_drain(void *ctx)
{
    sx_t *x = ctx;
    check(live(x) && !x->got_error && x->run->in_op == 0);
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
        } else if (x->paused) {
            x->paused = 0;
            OP(x, pause(x->s, 0));
        } else if (x->turn_answer) {
            x->turn_answer = 0;
            start_answer(x);
        } else {
            answer_more(x);
        }
    }
    return did;
}

static int any_turn(const run_t *r)
{
    for (unsigned i = 0; i < r->nxs; i++)
        if (has_turn(r->xs[i]))
            return 1;
    return 0;
}

static int server_alive(const run_t *r)
{
    return r->cfg.nconns > 0 || r->h1.nconns > 0;
}

static void settle_all(run_t *r)
{
    unsigned rounds = 0;
    do {
        pump(&r->wire);
        check(++rounds < 10000);
    } while (turn(r));
}

/* ---- what the client received ---- */

typedef struct ostream {
    int32_t id;
    unsigned final : 1, ended : 1, reset : 1;
} ostream_t;

static ostream_t *ostream(ostream_t **v, size_t *n, int32_t id)
{
    for (size_t i = 0; i < *n; i++)
        if ((*v)[i].id == id)
            return &(*v)[i];
    *v = realloc(*v, (*n + 1) * sizeof **v);
    check(*v != NULL);
    (*v)[*n] = (ostream_t){.id = id};
    return &(*v)[(*n)++];
}

static int is_name(const nghttp2_nv *nv, const char *s)
{
    return nv->namelen == strlen(s) && memcmp(nv->name, s, nv->namelen) == 0;
}

/* One header block of a response: decoded in order, checked field by field. */
static void check_block(nghttp2_hd_inflater *inf, const uint8_t *p, size_t n, ostream_t *st)
{
    int first = 1, interim = 0;
    for (;;) {
        nghttp2_nv nv;
        int flags = 0;
        ssize_t used = nghttp2_hd_inflate_hd2(inf, &nv, &flags, p, n, 1);
        check(used >= 0); /* every block the codec sends decodes */
        p += used;
        n -= (size_t)used;
        if (flags & NGHTTP2_HD_INFLATE_EMIT) {
            check(lower_token((const char *)nv.name, nv.namelen) ||
                  (first && !st->final && is_name(&nv, ":status")));
            if (first && !st->final) {
                check(is_name(&nv, ":status") && nv.valuelen == 3);
                interim = nv.value[0] == '1';
            }
            check(!is_name(&nv, "connection") && !is_name(&nv, "transfer-encoding") &&
                  !is_name(&nv, "keep-alive") && !is_name(&nv, "upgrade") &&
                  !is_name(&nv, "proxy-connection"));
            first = 0;
        }
        if (flags & NGHTTP2_HD_INFLATE_FINAL) {
            nghttp2_hd_inflate_end_headers(inf);
            break;
        }
        if (used == 0 && n == 0)
            break;
    }
    check(!first || st->final); /* a response head is never empty */
    if (!st->final && !interim)
        st->final = 1;
}

static void check_output(run_t *r, int h2)
{
    const uint8_t *o = (const uint8_t *)r->wire.out.p;
    size_t n = r->wire.out.n, pos = 0;
    if (getenv("FUZZ_VERBOSE"))
        fprintf(stderr, "http/2 %d, streams accepted %u, output %zu bytes\n", h2, r->nxs, n);
    if (!h2 || n == 0)
        return;
    check(n >= 9 && o[3] == NGHTTP2_SETTINGS && !(o[4] & NGHTTP2_FLAG_ACK));
    nghttp2_hd_inflater *inf;
    check(nghttp2_hd_inflate_new(&inf) == 0);
    ostream_t *streams = NULL;
    size_t nstreams = 0;
    uint8_t *block = NULL;
    size_t blen = 0;
    ostream_t *bst = NULL; /* the stream whose header block is being read */
    int dead = 0, bend = 0;
    while (pos + 9 <= n) {
        size_t len = (size_t)o[pos] << 16 | (size_t)o[pos + 1] << 8 | o[pos + 2];
        uint8_t type = o[pos + 3], flags = o[pos + 4];
        int32_t id = (int32_t)((uint32_t)o[pos + 5] << 24 | (uint32_t)o[pos + 6] << 16 |
                               (uint32_t)o[pos + 7] << 8 | o[pos + 8]) &
                     0x7fffffff;
        if (pos + 9 + len > n) {
            check(r->wire.lost); /* cut short only by a failed write */
            break;
        }
        const uint8_t *pl = o + pos + 9;
        pos += 9 + len;
        check(!dead); /* nothing after a GOAWAY with an error */
        check(len <= 16384 && type != NGHTTP2_PUSH_PROMISE);
        check(!bst || type == NGHTTP2_CONTINUATION);
        ostream_t *st = id ? ostream(&streams, &nstreams, id) : NULL;
        if (st) {
            check(id & 1);
            check(!st->reset);
            check(!st->ended || type == NGHTTP2_RST_STREAM);
        }
        switch (type) {
        case NGHTTP2_HEADERS:
        case NGHTTP2_CONTINUATION:
            check(st != NULL);
            if (type == NGHTTP2_HEADERS) {
                check(!bst);
                bst = st;
                blen = 0;
                bend = flags & NGHTTP2_FLAG_END_STREAM;
            }
            check(bst == st);
            block = realloc(block, blen + len + 1);
            check(block != NULL);
            memcpy(block + blen, pl, len);
            blen += len;
            if (flags & NGHTTP2_FLAG_END_HEADERS) {
                check_block(inf, block, blen, st);
                st->ended = bend; /* once the block is complete */
                bst = NULL;
            }
            break;
        case NGHTTP2_DATA:
            check(st != NULL && st->final);
            if (flags & NGHTTP2_FLAG_END_STREAM)
                st->ended = 1;
            break;
        case NGHTTP2_RST_STREAM:
            check(st != NULL && len == 4);
            st->reset = 1;
            break;
        case NGHTTP2_GOAWAY:
            check(id == 0 && len >= 8);
            if (pl[4] | pl[5] | pl[6] | pl[7])
                dead = 1;
            break;
        case NGHTTP2_SETTINGS:
        case NGHTTP2_PING:
        case NGHTTP2_WINDOW_UPDATE:
            break;
        default:
            check(0); /* nothing else is sent */
        }
    }
    free(block);
    free(streams);
    nghttp2_hd_inflate_del(inf);
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
    size_t pre = flags & 4 ? 0 : sizeof client_start - 1;
    size_t n = pre + size - KNOBS;
    char *stream = malloc(n ? n : 1);
    check(stream != NULL);
    memcpy(stream, client_start, pre);
    memcpy(stream + pre, data + KNOBS, size - KNOBS);

    check(loop_init(&r->loop, NULL) == 0);
    wire_init(&r->wire, &r->loop);
    r->wire.queue_writes = (flags >> 3) & 1;
    if (flags & 0x10) {
        r->wire.fail_at = 1 + data[1] % 8;
        r->wire.how = flags & 0x20 ? WF_LATER : WF_REFUSE;
    }
    r->handler.accept = accept_;
    /* The run must not depend on time: no timeout comes within it. */
    r->h1 = (h1_server_config_t){.loop = &r->loop,
                                 .handler = &r->handler,
                                 .owner = r,
                                 .stats = &r->stats,
                                 .on_closed = on_conn_gone};
    h1_server_config_init(&r->h1, 1000u * 1000 * 1000, 1000u * 1000 * 1000);
    r->cfg = (h2_server_config_t){.loop = &r->loop,
                                  .handler = &r->handler,
                                  .owner = r,
                                  .stats = &r->stats,
                                  .h1 = &r->h1,
                                  .on_closed = on_conn_gone};
    h2_server_config_init(&r->cfg, 1000u * 1000 * 1000, 1000u * 1000 * 1000);
    unsigned drain_at = (flags & 0x40) ? (unsigned)rng_next(&r->rng) % 4 : ~0u;

    conn_t *c = wire_conn(&r->wire);
    if (flags & 0x80)
        h2_server_accept(&r->cfg, c, NULL);
    else
        h2_server_start(&r->cfg, c, NULL, NULL);

    unsigned rounds = 0;
    for (;;) {
        settle_all(r);
        check(++rounds < 1000000);
        if (!server_alive(r) || c->closing) /* (c is freed once no codec holds it) */
            break;
        if (!any_turn(r) && r->fed < n)
            check(c->reading); /* a quiet connection with nothing left to do reads */
        int can_read = c->reading && r->fed < n;
        if (any_turn(r) && (!can_read || (rng_next(&r->rng) & 1))) {
            turn(r);
            continue;
        }
        if (!can_read)
            break;
        size_t k = next_slice(&r->rng, flags & 3, 1, n - r->fed);
        r->fed += k;
        r->reads++;
        wire_feed(&r->wire, c, stream + r->fed - k, k);
        if (r->fed == n && (data[2] & 2) && server_alive(r) && c->reading && !c->closing) {
            r->eof = 1;
            conn_on_read(c, UV_EOF, NULL);
        }
        if (r->reads == drain_at + 1 && server_alive(r)) {
            r->draining = 1;
            h1_server_drain(&r->h1);
            h2_server_drain(&r->cfg);
        }
    }
    settle_all(r);

    /* The client ends: EOF while it reads, else the drain deadline cuts it. */
    for (unsigned i = 0; i < 4 && server_alive(r) && !(data[2] & 1); i++) {
        if (!c->reading || c->closing)
            break;
        r->eof = 1;
        conn_on_read(c, UV_EOF, NULL);
        settle_all(r);
    }
    if (server_alive(r)) {
        r->cut_all = 1;
        h1_server_abort_all(&r->h1);
        h2_server_abort_all(&r->cfg);
        settle_all(r);
    }
    check(!server_alive(r));
    check(r->closed_cbs == 1);
    for (unsigned i = 0; i < r->nxs; i++)
        check(r->xs[i]->released);
    check(stat_get(&r->stats.downstream_cx_active) == 0);
    check(stat_get(&r->stats.http2.streams_active) == 0);
    int h2 = stat_get(&r->stats.downstream_cx_http2_total) == 1;
    h1_server_config_close(&r->h1);
    h2_server_config_close(&r->cfg);
    loop_teardown(&r->wire);
    check_output(r, h2);
    wire_free(&r->wire);

    for (unsigned i = 0; i < r->nxs; i++)
        free(r->xs[i]);
    free(r->xs);
    free(stream);
    free(r);
    return 0;
}
