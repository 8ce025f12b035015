/* http/h1_parse.c against the contract in http/h1_parse.h.
 *
 * Input: byte 0 picks where the stream is split in two (0..255 scaled to its length); byte 1
 * picks the kind (bit 0: request or response), for responses the method of the request being
 * answered (bits 1-2: GET, HEAD, CONNECT, POST), whether trailers are kept or dropped (bit 3:
 * p->trailers NULL) and whether the first 0x01 byte of the stream stands for PAD_LEN bytes of
 * 'p' (bit 4), which brings the 64 KB caps on heads, request lines and trailers within reach
 * of short inputs. The rest is the stream.
 *
 * The stream is parsed three ways: in the two pieces (each its own exact-size allocation, the
 * first freed before the second is fed, so a parser that keeps pointers into old input is a
 * use-after-free), whole, and one byte at a time (each byte its own allocation; the padding of
 * padded inputs in PAD_STEP pieces). Each ends with h1_parse_eof. Every way must give the same
 * transcript: the events other than H1_DATA, every head and trailer block as parsed, each
 * message's body bytes and the error status. On the way, every event is checked against the
 * contract (abort() on a violation):
 *   - consumed <= n; H1_NEED_MORE consumed everything; no more than two events in a row
 *     consume nothing (an empty body's H1_END may);
 *   - events come in order: H1_HEAD (after interim 1xx heads), H1_DATA*, H1_END; H1_DATA
 *     points inside the bytes this call consumed and is not empty;
 *   - H1_ERROR has one of the documented statuses and a reason, and every later call gives
 *     H1_ERROR again, consuming nothing, h1_parse_eof included; after the H1_END of a 101 or
 *     a 2xx to CONNECT every call gives H1_END, consuming nothing;
 *   - H1_BODY_LENGTH bodies add up to content_length; no body where §6.3 says none (HEAD,
 *     1xx, 204, 304, 2xx to CONNECT); a request body is never delimited by the close;
 *   - a head is well-formed: offsets inside its storage, names tokens, values trimmed and
 *     free of CTLs other than HTAB, version 1.x, a 3-digit status;
 *   - h1_parser_busy agrees with where the message is, and h1_parse_eof with both;
 *   - h1_put_lines (http/h1_lines.h) writes a head's fields, and two more appended, exactly as
 *     writing them piece by piece does, within the head's wire count. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/http.h"
#include "http/h1_lines.h"
#include "http/h1_parse.h"
#include "http/head.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A broken invariant: say which, then abort() so that libFuzzer keeps the input. */
static void fail(const char *what, int line)
{
    fprintf(stderr, "%s:%d: invariant broken: %s\n", __FILE__, line, what);
    abort();
}
#define check(ok) ((ok) ? (void)0 : fail(#ok, __LINE__))

/* ---- the transcript: a growable byte string ---- */

typedef struct sink {
    unsigned char *p;
    size_t n, cap;
} sink_t;

static void put(sink_t *s, const void *p, size_t n)
{
    if (s->n + n > s->cap) {
        size_t cap = s->cap ? s->cap : 4096;
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

static void put_u64(sink_t *s, uint64_t v)
{
    put(s, &v, sizeof v);
}

static void put_str(sink_t *s, const char *p, size_t n)
{
    put_u64(s, n);
    put(s, p, n);
}

/* ---- one way of feeding the parser ---- */

enum phase { AWAIT_HEAD, IN_BODY, STOPPED };

typedef struct run {
    h1_parser_t p;
    head_t head, trailers;
    sink_t out;  /* the transcript */
    sink_t body; /* the current message's body bytes */
    enum phase phase;
    enum h1_body framing; /* of the current message, as set at its H1_HEAD */
    uint64_t declared;
    unsigned zero_streak; /* events in a row that consumed nothing */
    char story[256];      /* the events in short, printed when the ways disagree */
} run_t;

/* Appends an event to the story: "HEAD 200", "END 5" (body bytes), "ERROR 400"... */
static void tell(run_t *r, const char *what, unsigned long long v)
{
    size_t used = strlen(r->story);
    if (used + 32 < sizeof r->story)
        snprintf(r->story + used, sizeof r->story - used, "%s%s %llu", used ? ", " : "", what, v);
}

static const uint8_t methods[] = {HTTP_GET, HTTP_HEAD, HTTP_CONNECT, HTTP_POST};

/* What the 0x01 byte stands for in padded inputs: the caps are 512 bytes past it. */
#define PAD_LEN (HEAD_MAX_BYTES - 512)

static void run_init(run_t *r, enum h1_kind kind, uint8_t request_method, int keep_trailers)
{
    memset(r, 0, sizeof *r);
    head_init(&r->head);
    head_init(&r->trailers);
    h1_parser_init(&r->p, kind, &r->head, keep_trailers ? &r->trailers : NULL);
    r->p.request_method = request_method;
    r->phase = AWAIT_HEAD;
}

static void run_free(run_t *r)
{
    head_free(&r->head);
    head_free(&r->trailers);
    free(r->out.p);
    free(r->body.p);
}

static int is_tchar(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c && strchr("!#$%&'*+-.^_`|~", c));
}

/* The piece at off (n bytes) lies inside the storage and is NUL-terminated there. */
static void check_piece(const head_t *h, uint32_t off, uint32_t n)
{
    check((uint64_t)off + n < h->len && h->bytes[off + n] == '\0');
}

static void check_fields(const head_t *h)
{
    check(h->nfields <= HEAD_MAX_FIELDS && h->len <= h->cap);
    for (unsigned i = 0; i < h->nfields; i++) {
        const field_t *f = &h->fields[i];
        check(f->name_len > 0);
        check_piece(h, f->name, f->name_len);
        check_piece(h, f->value, f->value_len);
        for (uint32_t k = 0; k < f->name_len; k++)
            check(is_tchar((unsigned char)h->bytes[f->name + k]));
        const unsigned char *v = (const unsigned char *)h->bytes + f->value;
        for (uint32_t k = 0; k < f->value_len; k++)
            check(v[k] == '\t' || (v[k] >= 0x20 && v[k] != 0x7f));
        if (f->value_len)
            check(v[0] != ' ' && v[0] != '\t' && v[f->value_len - 1] != ' ' &&
                  v[f->value_len - 1] != '\t');
    }
}

/* ---- http/h1_lines.h against writing each field piece by piece ---- */

/* A copy in its own allocation of exactly n bytes (n may be 0). */
static void *dup_exact(const void *p, size_t n)
{
    void *c = malloc(n ? n : 1);
    check(c != NULL);
    if (n)
        memcpy(c, p, n);
    return c;
}

/* The fields the check leaves out: a third of them or so, by the name's first byte. */
static int keep_some(const field_t *f, const void *head)
{
    return (unsigned char)((const head_t *)head)->bytes[f->name] % 3 != 0;
}

/* A parsed head (the received lines in place, with whatever whitespace and line ends they came
 * with) and two fields appended as remora appends its own, written by h1_put_lines into exactly
 * the bytes its wire count allows: the same bytes, field for field, as the plain way. */
static void check_lines(const head_t *parsed)
{
    head_t h = *parsed;
    h.bytes = dup_exact(parsed->bytes, parsed->cap);
    h.fields = dup_exact(parsed->fields, parsed->fields_cap * sizeof *parsed->fields);
    char *first = h.nfields ? dup_exact(field_value(&h, 0), h.fields[0].value_len) : NULL;
    int full = first && head_add_field(&h, "X-Added", 7, first, h.fields[0].value_len);
    free(first);
    if (full)
        goto done; /* at the storage's caps: nothing to check */
    if (head_add_field(&h, "X-Empty", 7, "", 0))
        goto done;
    char *fast = malloc(h.wire ? h.wire : 1), *plain = malloc(h.wire ? h.wire : 1);
    check(fast && plain);
    size_t n = h1_put_lines(fast, 0, &h, keep_some, &h), m = 0;
    for (unsigned i = 0; i < h.nfields; i++) {
        const field_t *f = &h.fields[i];
        if (!keep_some(f, &h))
            continue;
        memcpy(plain + m, field_name(&h, i), f->name_len);
        m += f->name_len;
        memcpy(plain + m, ": ", 2);
        memcpy(plain + m + 2, field_value(&h, i), f->value_len);
        m += 2 + f->value_len;
        memcpy(plain + m, "\r\n", 2);
        m += 2;
    }
    check(n == m && n <= h.wire && memcmp(fast, plain, n) == 0);
    free(fast);
    free(plain);
done:
    head_free(&h);
}

static void put_fields(sink_t *s, const head_t *h)
{
    put_u64(s, h->nfields);
    for (unsigned i = 0; i < h->nfields; i++) {
        put_str(s, field_name(h, i), h->fields[i].name_len);
        put_str(s, field_value(h, i), h->fields[i].value_len);
        put_u64(s, h->fields[i].id);
    }
}

static void on_head(run_t *r)
{
    const head_t *h = &r->head;
    check(r->phase == AWAIT_HEAD);
    check(h1_parser_busy(&r->p));
    check_fields(h);
    check_lines(h);
    check(h->major == 1 && h->minor <= 9);
    put(&r->out, "H", 1);
    tell(r, "HEAD", r->p.kind == H1_REQUEST ? h->method : h->status);
    if (r->p.kind == H1_REQUEST) {
        check(h->method_len > 0 && h->target_len > 0);
        check_piece(h, h->method_text, h->method_len);
        check_piece(h, h->target, h->target_len);
        check(h->method == http_method_of(head_str(h, h->method_text), h->method_len));
        put_str(&r->out, head_str(h, h->method_text), h->method_len);
        put_str(&r->out, head_str(h, h->target), h->target_len);
    } else {
        check(h->status >= 100 && h->status <= 999);
        if (h->reason_len)
            check_piece(h, h->reason, h->reason_len);
        put_u64(&r->out, h->status);
        put_str(&r->out, h->reason_len ? head_str(h, h->reason) : "", h->reason_len);
    }
    put_u64(&r->out, (uint64_t)h->major << 8 | h->minor);
    put_fields(&r->out, h);
    put_u64(&r->out, r->p.flags);
    put_u64(&r->out, r->p.body);
    if (r->p.body == H1_BODY_LENGTH)
        put_u64(&r->out, r->p.content_length);

    int interim = r->p.kind == H1_RESPONSE && h->status < 200 && h->status != 101;
    if (interim) {
        check(r->p.body == H1_BODY_NONE);
        return; /* the final head is still to come */
    }
    if (r->p.kind == H1_REQUEST)
        check(r->p.body != H1_BODY_UNTIL_CLOSE);
    else if (r->p.request_method == HTTP_HEAD || h->status < 200 || h->status == 204 ||
             h->status == 304 || (r->p.request_method == HTTP_CONNECT && h->status / 100 == 2))
        check(r->p.body == H1_BODY_NONE);
    r->phase = IN_BODY;
    r->framing = r->p.body;
    r->declared = r->p.content_length;
    r->body.n = 0;
}

static void on_end(run_t *r)
{
    check(r->phase == IN_BODY);
    if (r->framing == H1_BODY_LENGTH)
        check(r->body.n == r->declared);
    if (r->framing == H1_BODY_NONE)
        check(r->body.n == 0);
    put(&r->out, "E", 1);
    tell(r, "END", r->body.n);
    put_str(&r->out, (const char *)r->body.p, r->body.n);
    put_u64(&r->out, r->p.flags & H1F_TRAILERS);
    if (r->p.flags & H1F_TRAILERS) {
        check(r->framing == H1_BODY_CHUNKED);
        if (r->p.trailers) {
            check(r->trailers.nfields > 0);
            check_fields(&r->trailers);
            check_lines(&r->trailers);
            put_fields(&r->out, &r->trailers);
        }
    }
    check(!h1_parser_busy(&r->p));
    r->phase = AWAIT_HEAD;
    const head_t *h = &r->head;
    if (r->p.kind == H1_RESPONSE &&
        (h->status == 101 || (r->p.request_method == HTTP_CONNECT && h->status / 100 == 2))) {
        put(&r->out, "T", 1); /* a tunnel: the bytes after are not HTTP */
        r->phase = STOPPED;
    }
}

static void on_error(run_t *r, const h1_ev_t *ev, const char *rest, size_t n)
{
    static const int statuses[] = {400, 414, 431, 501, 505};
    int known = 0;
    for (size_t i = 0; i < sizeof statuses / sizeof *statuses; i++)
        known |= ev->status == statuses[i];
    check(known && r->p.reason != NULL);
    put(&r->out, "X", 1);
    tell(r, "ERROR", (unsigned long long)ev->status);
    put_u64(&r->out, (uint64_t)ev->status);
    r->phase = STOPPED;
    /* Final: the rest of the input, or none, gives H1_ERROR again and is not consumed. */
    h1_ev_t again;
    check(h1_parse(&r->p, rest, n, &again) == 0 && again.type == H1_ERROR);
    check(h1_parse(&r->p, rest, 0, &again) == 0 && again.type == H1_ERROR);
    check(again.status == ev->status);
    h1_parse_eof(&r->p, &again);
    check(again.type == H1_ERROR && again.status == ev->status);
}

/* After the H1_END of a 101 or a 2xx to CONNECT: nothing more is consumed, ever. */
static void after_tunnel(run_t *r, const char *rest, size_t n)
{
    h1_ev_t again;
    check(h1_parse(&r->p, rest, n, &again) == 0 && again.type == H1_END);
    check(!h1_parser_busy(&r->p));
    h1_parse_eof(&r->p, &again);
    check(again.type != H1_ERROR);
}

/* Feeds data[0..n) and handles events until the parser wants more or stops for good. */
static void feed(run_t *r, const char *data, size_t n)
{
    size_t off = 0;
    while (r->phase != STOPPED) {
        h1_ev_t ev;
        memset(&ev, 0, sizeof ev);
        size_t used = h1_parse(&r->p, data + off, n - off, &ev);
        check(used <= n - off);
        const char *start = data + off;
        off += used;
        r->zero_streak = used ? 0 : r->zero_streak + 1;
        switch (ev.type) {
        case H1_NEED_MORE:
            check(off == n);
            return;
        case H1_ERROR:
            on_error(r, &ev, data + off, n - off);
            return;
        case H1_HEAD:
            on_head(r);
            break;
        case H1_DATA:
            check(r->phase == IN_BODY && ev.n > 0);
            check(ev.p >= start && ev.p + ev.n <= start + used);
            put(&r->body, ev.p, ev.n);
            if (r->framing == H1_BODY_LENGTH)
                check(r->body.n <= r->declared);
            check(r->framing != H1_BODY_NONE);
            break;
        case H1_END:
            on_end(r);
            if (r->phase == STOPPED)
                after_tunnel(r, data + off, n - off);
            break;
        default:
            check(0);
        }
        check(r->zero_streak <= 2);
    }
}

static void finish(run_t *r)
{
    if (r->phase == STOPPED)
        return;
    int busy = h1_parser_busy(&r->p);
    if (r->phase == IN_BODY)
        check(busy);
    h1_ev_t ev;
    memset(&ev, 0, sizeof ev);
    h1_parse_eof(&r->p, &ev);
    put(&r->out, "F", 1);
    tell(r, "EOF", ev.type);
    put_u64(&r->out, ev.type);
    switch (ev.type) {
    case H1_END:
        check(r->phase == IN_BODY && r->framing == H1_BODY_UNTIL_CLOSE);
        on_end(r);
        break;
    case H1_ERROR:
        check(busy && !(r->phase == IN_BODY && r->framing == H1_BODY_UNTIL_CLOSE));
        break;
    case H1_NEED_MORE:
        check(!busy);
        break;
    default:
        check(0);
    }
}

/* The stream of a padded input: data with its first 0x01 replaced by PAD_LEN bytes of 'p'
 * (*pad_at is where they start, *pad_n how many: 0 without a 0x01). */
static uint8_t *padded(const uint8_t *data, size_t n, size_t *out_n, size_t *pad_at, size_t *pad_n)
{
    const uint8_t *at = memchr(data, 0x01, n);
    size_t before = at ? (size_t)(at - data) : n, pad = at ? PAD_LEN : 0;
    size_t after = at ? n - before - 1 : 0;
    uint8_t *s = malloc(before + pad + after + 1);
    check(s != NULL);
    memcpy(s, data, before);
    memset(s + before, 'p', pad);
    if (after)
        memcpy(s + before + pad, at + 1, after);
    *out_n = before + pad + after;
    *pad_at = before;
    *pad_n = pad;
    return s;
}

/* The byte-at-a-time run feeds the padding in pieces of this many bytes: its edges still go
 * one byte at a time, and 64 K single-byte calls on one line would be most of the time spent
 * (the parser re-reads an incomplete line from its start). */
#define PAD_STEP 4099

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    enum h1_kind kind = data[1] & 1 ? H1_RESPONSE : H1_REQUEST;
    uint8_t method = methods[(data[1] >> 1) & 3];
    int keep_trailers = !(data[1] & 8);
    uint8_t *stream = NULL;
    const uint8_t *msg = data + 2;
    size_t n = size - 2, pad_at = 0, pad_n = 0;
    if (data[1] & 16)
        msg = stream = padded(data + 2, size - 2, &n, &pad_at, &pad_n);
    size_t split = (size_t)data[0] * n / 255;

    run_t two, whole, bytes;
    run_init(&two, kind, method, keep_trailers);
    char *a = dup_exact(msg, split);
    feed(&two, a, split);
    free(a);
    char *b = dup_exact(msg + split, n - split);
    feed(&two, b, n - split);
    free(b);
    finish(&two);

    run_init(&whole, kind, method, keep_trailers);
    char *all = dup_exact(msg, n);
    feed(&whole, all, n);
    free(all);
    finish(&whole);

    run_init(&bytes, kind, method, keep_trailers);
    for (size_t i = 0, k; i < n && bytes.phase != STOPPED; i += k) {
        k = 1;
        if (i >= pad_at && i < pad_at + pad_n)
            k = pad_at + pad_n - i < PAD_STEP ? pad_at + pad_n - i : PAD_STEP;
        char *piece = dup_exact(msg + i, k);
        feed(&bytes, piece, k);
        free(piece);
    }
    finish(&bytes);

    int same_two = two.out.n == whole.out.n && memcmp(two.out.p, whole.out.p, whole.out.n) == 0;
    int same_bytes =
        bytes.out.n == whole.out.n && memcmp(bytes.out.p, whole.out.p, whole.out.n) == 0;
    if (!same_two || !same_bytes)
        fprintf(stderr, "whole: %s\nsplit at %zu: %s\nbyte by byte: %s\n", whole.story, split,
                two.story, bytes.story);
    check(same_two && same_bytes);
    run_free(&two);
    run_free(&whole);
    run_free(&bytes);
    free(stream);
    return 0;
}
