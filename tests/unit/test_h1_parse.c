/* http/h1_parse.c and http/head.c: every strictness rule and cap of h1_parse.h, each input
 * fed whole, one byte at a time and split at every position (the transcripts must be equal),
 * pipelining, responses and their framing, end of stream; the neutral head's storage, caps and
 * lookups. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "base/err.h"
#include "http/h1_parse.h"
#include "http/head.h"

/* ---- a growable string ---- */

typedef struct sb {
    char *p;
    size_t len, cap;
} sb_t;

static void sb_add(sb_t *s, const char *p, size_t n)
{
    if (s->len + n + 1 > s->cap) {
        s->cap = (s->len + n + 1) * 2;
        s->p = realloc(s->p, s->cap);
        assert_non_null(s->p);
    }
    memcpy(s->p + s->len, p, n);
    s->len += n;
    s->p[s->len] = '\0';
}

static void sb_printf(sb_t *s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    assert_true(n >= 0);
    char *tmp = malloc((size_t)n + 1);
    assert_non_null(tmp);
    va_start(ap, fmt);
    vsnprintf(tmp, (size_t)n + 1, fmt, ap);
    va_end(ap);
    sb_add(s, tmp, (size_t)n);
    free(tmp);
}

/* An event token, space-separated. */
static void sb_event(sb_t *s, const char *fmt, ...)
{
    char tmp[64];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (s->len)
        sb_add(s, " ", 1);
    sb_add(s, tmp, (size_t)n);
}

/* ---- running the parser over an input, in pieces ---- */

typedef struct cfg {
    enum h1_kind kind;
    uint8_t method;    /* responses: the method of the request answered */
    int eof;           /* call h1_parse_eof after the input */
    int drop_trailers; /* p->trailers is NULL */
} cfg_t;

static const cfg_t REQ = {H1_REQUEST, HTTP_OTHER, 0, 0};
static const cfg_t REQ_EOF = {H1_REQUEST, HTTP_OTHER, 1, 0};

/* What a run produced. `events`: H (head), D (data, consecutive ones merged), E (end), X<status>
 * (error), T<n> (tunnel: n bytes left unconsumed). `heads`: each head and trailer section. */
typedef struct tr {
    sb_t events, heads, body;
    const char *reason;
} tr_t;

static void tr_free(tr_t *t)
{
    free(t->events.p);
    free(t->heads.p);
    free(t->body.p);
    memset(t, 0, sizeof *t);
}

/* Writes the fields, checking that each piece is a C string of its length. */
static void describe_fields(sb_t *s, const head_t *h, uint32_t wire)
{
    for (unsigned i = 0; i < h->nfields; i++) {
        const field_t *f = &h->fields[i];
        assert_int_equal(strlen(field_name(h, i)), f->name_len);
        assert_int_equal(strlen(field_value(h, i)), f->value_len);
        sb_printf(s, " | %s=%s", field_name(h, i), field_value(h, i));
        wire += f->name_len + f->value_len + 4;
    }
    assert_int_equal(h->wire, wire);
}

static void describe_head(sb_t *s, const h1_parser_t *p)
{
    const head_t *h = p->head;
    uint32_t wire;
    if (p->kind == H1_REQUEST) {
        assert_int_equal(strlen(head_str(h, h->method_text)), h->method_len);
        assert_int_equal(strlen(head_str(h, h->target)), h->target_len);
        sb_printf(s, "%s %s %u.%u", head_str(h, h->method_text), head_str(h, h->target), h->major,
                  h->minor);
        wire = h->method_len + h->target_len + 12;
    } else {
        assert_int_equal(strlen(head_str(h, h->reason)), h->reason_len);
        sb_printf(s, "%u [%s] %u.%u", h->status, head_str(h, h->reason), h->major, h->minor);
        wire = h->reason_len + 15;
    }
    sb_printf(s, " body=%d flags=%x", (int)p->body, p->flags);
    if (p->body == H1_BODY_LENGTH)
        sb_printf(s, " cl=%llu", (unsigned long long)p->content_length);
    describe_fields(s, h, wire);
    sb_add(s, "\n", 1);
}

enum { LAST_NONE, LAST_DATA, LAST_END, LAST_OTHER };

/* Records one event; returns whether the run is over (error, tunnel). */
static int record(tr_t *t, h1_parser_t *p, const h1_ev_t *ev, size_t used, int *last)
{
    switch (ev->type) {
    case H1_HEAD:
        sb_event(&t->events, "H");
        describe_head(&t->heads, p);
        assert_true(h1_parser_busy(p));
        *last = LAST_OTHER;
        return 0;
    case H1_DATA:
        if (*last != LAST_DATA)
            sb_event(&t->events, "D");
        sb_add(&t->body, ev->p, ev->n);
        assert_true(h1_parser_busy(p));
        *last = LAST_DATA;
        return 0;
    case H1_END:
        if (*last == LAST_END && used == 0)
            return 1; /* a tunnel: the caller notes it */
        sb_event(&t->events, "E");
        if (p->flags & H1F_TRAILERS) {
            sb_add(&t->heads, "trailers", 8);
            if (p->trailers)
                describe_fields(&t->heads, p->trailers, 0);
            sb_add(&t->heads, "\n", 1);
        }
        assert_false(h1_parser_busy(p));
        *last = LAST_END;
        return 0;
    case H1_ERROR:
        sb_event(&t->events, "X%d", ev->status);
        assert_non_null(p->reason);
        t->reason = p->reason;
        return 1;
    case H1_NEED_MORE:
        break;
    }
    return 0;
}

/* Errors are final: more input is refused, untouched, with the same status. */
static void check_sticky(h1_parser_t *p, int status)
{
    h1_ev_t ev;
    assert_int_equal(h1_parse(p, "GET / HTTP/1.1\r\n\r\n", 18, &ev), 0);
    assert_int_equal(ev.type, H1_ERROR);
    assert_int_equal(ev.status, status);
    h1_parse_eof(p, &ev);
    assert_int_equal(ev.type, H1_ERROR);
    assert_int_equal(ev.status, status);
    assert_false(h1_parser_busy(p));
}

/* Feeds in[0..n) as a first piece of `first` bytes (0: none), then pieces of `step` bytes, each
 * in its own allocation of exactly its size, so a read past the end is caught by ASan. */
static void run(tr_t *t, const cfg_t *c, const char *in, size_t n, size_t first, size_t step)
{
    h1_parser_t p;
    head_t head, trailers;
    h1_ev_t ev;
    head_init(&head);
    head_init(&trailers);
    h1_parser_init(&p, c->kind, &head, c->drop_trailers ? NULL : &trailers);
    p.request_method = c->method;
    memset(t, 0, sizeof *t);
    sb_add(&t->events, "", 0);
    sb_add(&t->heads, "", 0);
    sb_add(&t->body, "", 0);
    size_t off = 0, consumed = 0;
    int last = LAST_NONE, over = 0;
    while (off < n && !over) {
        size_t len = off == 0 && first ? first : step;
        if (len > n - off)
            len = n - off;
        char *buf = malloc(len);
        assert_non_null(buf);
        memcpy(buf, in + off, len);
        size_t at = 0;
        for (unsigned guard = 0;; guard++) {
            assert_true(guard < 1000000);
            size_t used = h1_parse(&p, buf + at, len - at, &ev);
            assert_true(used <= len - at);
            if (ev.type == H1_DATA) {
                assert_true(ev.n > 0);
                assert_ptr_equal(ev.p + ev.n, buf + at + used); /* zero copy, the last bytes */
            }
            at += used;
            consumed += used;
            if (ev.type == H1_NEED_MORE) {
                assert_int_equal(at, len);
                break;
            }
            if (record(t, &p, &ev, used, &last)) {
                over = 1;
                if (ev.type == H1_ERROR)
                    check_sticky(&p, ev.status);
                else
                    sb_event(&t->events, "T%zu", n - consumed);
                break;
            }
        }
        free(buf);
        off += len;
    }
    if (!over && c->eof) {
        h1_parse_eof(&p, &ev);
        if (ev.type != H1_NEED_MORE && record(t, &p, &ev, 0, &last))
            check_sticky(&p, ev.status);
    }
    head_free(&head);
    head_free(&trailers);
}

static void same_transcript(const tr_t *a, const tr_t *b)
{
    assert_string_equal(a->events.p, b->events.p);
    assert_string_equal(a->heads.p, b->heads.p);
    assert_int_equal(a->body.len, b->body.len);
    assert_memory_equal(a->body.p, b->body.p, a->body.len);
    assert_ptr_equal(a->reason, b->reason); /* static strings: the same error, however split */
}

/* Runs in[0..n) whole, byte by byte and split at every position (a sample of them for big
 * inputs), checks the events of the whole run and that all runs agree. Returns the whole run
 * for more checks; the caller frees it. */
static tr_t expect_n(const cfg_t *c, const char *in, size_t n, const char *events)
{
    tr_t whole, t;
    run(&whole, c, in, n, 0, n ? n : 1);
    if (strcmp(whole.events.p, events) != 0) {
        print_error("input: ");
        for (size_t i = 0; i < n && i < 200; i++)
            print_error((unsigned char)in[i] - 0x20u < 0x5fu ? "%c" : "\\x%02x",
                        (unsigned char)in[i]);
        print_error("\n");
    }
    assert_string_equal(whole.events.p, events);
    run(&t, c, in, n, 0, 1);
    same_transcript(&whole, &t);
    tr_free(&t);
    size_t stride = n > 4096 ? n / 61 : 1;
    for (size_t k = 1; k < n; k += stride) {
        run(&t, c, in, n, k, n);
        same_transcript(&whole, &t);
        tr_free(&t);
    }
    for (size_t k = n > 8 ? n - 8 : 1; k < n; k++) {
        run(&t, c, in, n, k, n);
        same_transcript(&whole, &t);
        tr_free(&t);
    }
    return whole;
}

static tr_t expect_tr(const cfg_t *c, const char *in, const char *events)
{
    return expect_n(c, in, strlen(in), events);
}

static void expect(const cfg_t *c, const char *in, const char *events)
{
    tr_t t = expect_tr(c, in, events);
    tr_free(&t);
}

/* Like expect, with the trailers dropped too: the events must not change. */
static void expect_both(const cfg_t *c, const char *in, const char *events)
{
    cfg_t d = *c;
    d.drop_trailers = 1;
    expect(c, in, events);
    expect(&d, in, events);
}

static cfg_t resp(uint8_t method, int eof)
{
    cfg_t c = {H1_RESPONSE, method, eof, 0};
    return c;
}

/* A request with `fields` (CRLF-terminated lines) after a GET request line. */
static void expect_get(const char *fields, const char *events)
{
    char in[1024];
    int n = snprintf(in, sizeof in, "GET / HTTP/1.1\r\n%s\r\n", fields);
    assert_true(n > 0 && (size_t)n < sizeof in);
    expect(&REQ, in, events);
}

#define H_A "Host: a\r\n"

/* ==== head.c ==== */

static void test_head_fields_and_lookup(void **state)
{
    (void)state;
    head_t h;
    head_init(&h);
    assert_int_equal(head_add_field(&h, "Host", 4, "example.com", 11), 0);
    assert_int_equal(head_add_field(&h, "X-Empty", 7, "", 0), 0);
    assert_int_equal(head_add_field(&h, "connection", 10, "close", 5), 0);
    assert_int_equal(head_add_field(&h, "X-Empty", 7, "2", 1), 0);
    assert_int_equal(h.nfields, 4);
    assert_string_equal(field_name(&h, 0), "Host");
    assert_string_equal(field_value(&h, 0), "example.com");
    assert_string_equal(field_value(&h, 1), "");
    assert_int_equal(h.fields[0].id, F_HOST);
    assert_int_equal(h.fields[0].hop, 0);
    assert_int_equal(h.fields[2].id, F_CONNECTION);
    assert_int_equal(h.fields[2].hop, 1);
    assert_int_equal(h.wire, (4 + 11 + 4) + (7 + 0 + 4) + (10 + 5 + 4) + (7 + 1 + 4));
    assert_int_equal(head_find(&h, "HOST", 4), 0);
    assert_int_equal(head_find(&h, "x-empty", 7), 1);
    assert_int_equal(head_find(&h, "x-empt", 6), -1);
    assert_int_equal(head_find(&h, "Connection", 10), 2);
    assert_int_equal(head_find_id(&h, F_CONNECTION, 0), 2);
    assert_int_equal(head_find_id(&h, F_CONNECTION, 3), -1);
    assert_int_equal(head_find_id(&h, F_OTHER, 2), 3);
    assert_int_equal(head_find_id(&h, F_TE, 0), -1);

    /* A field whose pieces are already stored, as the parser adds them. */
    int64_t n = head_store(&h, "TE", 2), v = head_store(&h, "trailers", 8);
    assert_true(n >= 0 && v >= 0);
    uint32_t wire = h.wire;
    assert_int_equal(head_add_stored(&h, (uint32_t)n, 2, (uint32_t)v, 8), 0);
    assert_int_equal(h.fields[4].id, F_TE);
    assert_int_equal(h.fields[4].hop, 1);
    assert_string_equal(field_value(&h, 4), "trailers");
    assert_int_equal(h.wire, wire + 2 + 8 + 4);
    head_free(&h);
    head_free(&h); /* a freed head is an empty one */
}

static void test_head_caps(void **state)
{
    (void)state;
    head_t h;
    head_init(&h);
    char name[16];
    /* A head holds what was received (the parser keeps that within HEAD_MAX_*) plus what
     * remora adds when forwarding: HEAD_STORE_* in all. */
    for (int i = 0; i < HEAD_STORE_FIELDS; i++) {
        int n = snprintf(name, sizeof name, "X-%d", i);
        assert_int_equal(head_add_field(&h, name, (size_t)n, "v", 1), 0);
    }
    uint32_t len = h.len, wire = h.wire;
    assert_int_equal(head_add_field(&h, "One-More", 8, "v", 1), ERR_TOO_LARGE);
    assert_int_equal(head_add_stored(&h, 0, 1, 0, 1), ERR_TOO_LARGE);
    assert_int_equal(h.nfields, HEAD_STORE_FIELDS);
    assert_int_equal(h.len, len);
    assert_int_equal(h.wire, wire);

    /* Bytes: a field that fills the head to exactly HEAD_STORE_BYTES fits, one byte more not. */
    head_reset(&h);
    size_t big = HEAD_STORE_BYTES - 4 - 1;
    char *v = malloc(big + 1);
    assert_non_null(v);
    memset(v, 'v', big + 1);
    assert_int_equal(head_add_field(&h, "X", 1, v, big + 1), ERR_TOO_LARGE);
    assert_int_equal(h.nfields, 0);
    assert_int_equal(h.wire, 0);
    assert_int_equal(head_add_field(&h, "X", 1, v, big), 0);
    assert_int_equal(h.wire, HEAD_STORE_BYTES);
    assert_int_equal(head_add_field(&h, "Y", 1, "", 0), ERR_TOO_LARGE);
    assert_int_equal(h.nfields, 1);
    free(v);
    head_free(&h);
}

static void test_head_store_reset_swap(void **state)
{
    (void)state;
    head_t a, b;
    head_init(&a);
    head_init(&b);
    int64_t o1 = head_store(&a, "/path", 5), o2 = head_store(&a, "", 0);
    assert_int_equal(o1, 0);
    assert_int_equal(o2, 6);
    assert_string_equal(head_str(&a, (uint32_t)o1), "/path");
    assert_string_equal(head_str(&a, (uint32_t)o2), "");
    assert_int_equal(a.wire, 0);
    assert_int_equal(head_add_field(&a, "A", 1, "1", 1), 0);
    a.status = 204;

    /* reset empties the head and keeps its storage */
    char *bytes = a.bytes;
    field_t *fields = a.fields;
    head_reset(&a);
    assert_int_equal(a.len, 0);
    assert_int_equal(a.nfields, 0);
    assert_int_equal(a.wire, 0);
    assert_int_equal(a.status, 0);
    assert_ptr_equal(a.bytes, bytes);
    assert_ptr_equal(a.fields, fields);

    assert_int_equal(head_add_field(&a, "A", 1, "1", 1), 0);
    assert_int_equal(head_add_field(&b, "B", 1, "2", 1), 0);
    assert_int_equal(head_add_field(&b, "C", 1, "3", 1), 0);
    head_swap(&a, &b);
    assert_int_equal(a.nfields, 2);
    assert_string_equal(field_name(&a, 1), "C");
    assert_int_equal(b.nfields, 1);
    assert_ptr_equal(b.bytes, bytes);
    assert_string_equal(field_value(&b, 0), "1");
    head_free(&a);
    head_free(&b);
}

static void test_field_classify(void **state)
{
    (void)state;
    static const struct {
        const char *name;
        enum field_id id;
        int hop;
    } cases[] = {
        {"Host", F_HOST, 0},
        {"CONNECTION", F_CONNECTION, 1},
        {"keep-alive", F_KEEP_ALIVE, 1},
        {"Proxy-Connection", F_PROXY_CONNECTION, 1},
        {"te", F_TE, 1},
        {"Transfer-Encoding", F_TRANSFER_ENCODING, 1},
        {"upgrade", F_UPGRADE, 1},
        {"Trailer", F_TRAILER, 1},
        {"Proxy-Authenticate", F_PROXY_AUTHENTICATE, 1},
        {"proxy-authorization", F_PROXY_AUTHORIZATION, 1},
        {"X-Forwarded-For", F_X_FORWARDED_FOR, 0},
        {"x-forwarded-proto", F_X_FORWARDED_PROTO, 0},
        {"X-Request-Id", F_X_REQUEST_ID, 0},
        {"X-Amzn-Trace-Id", F_X_AMZN_TRACE_ID, 0},
        {"Expect", F_EXPECT, 0},
        {"User-Agent", F_USER_AGENT, 0},
        {"content-LENGTH", F_CONTENT_LENGTH, 0},
        /* same lengths, other names */
        {"Hos", F_OTHER, 0},
        {"Hosu", F_OTHER, 0},
        {"tf", F_OTHER, 0},
        {"Trailes", F_OTHER, 0},
        {"Upgrada", F_OTHER, 0},
        {"keep-alivf", F_OTHER, 0},
        {"Content-Type", F_OTHER, 0},
        {"x-amzn-trace-ix", F_OTHER, 0},
        {"x-forwarded-fox", F_OTHER, 0},
        {"Content-Lengt\r", F_OTHER, 0},
        {"Content\rLength", F_OTHER, 0}, /* CR is no '-' in any case */
        {"Transfer-Encodin", F_OTHER, 0},
        {"", F_OTHER, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        int hop = -1;
        assert_int_equal(field_classify(cases[i].name, strlen(cases[i].name), &hop), cases[i].id);
        assert_int_equal(hop, cases[i].hop);
    }
}

static void test_list_has_and_trim_ows(void **state)
{
    (void)state;
    const char *v = "close, Keep-Alive ,\tupgrade,,x";
    assert_true(list_has(v, strlen(v), "close", 5));
    assert_true(list_has(v, strlen(v), "keep-alive", 10));
    assert_true(list_has(v, strlen(v), "UPGRADE", 7));
    assert_true(list_has(v, strlen(v), "x", 1));
    assert_false(list_has(v, strlen(v), "clos", 4));
    assert_false(list_has(v, strlen(v), "upgrade,", 8));
    assert_false(list_has("", 0, "close", 5));
    assert_false(list_has("closed", 6, "close", 5));
    assert_true(list_has("a,close", 5, "a", 1)); /* only n bytes are read */
    assert_false(list_has("a,close", 5, "close", 5));

    size_t n = 7;
    const char *t = trim_ows(" \ta b\t ", &n);
    assert_int_equal(n, 3);
    assert_memory_equal(t, "a b", 3);
    n = 3;
    trim_ows("   ", &n);
    assert_int_equal(n, 0);
}

/* ==== requests ==== */

static void test_request_head(void **state)
{
    (void)state;
    tr_t t = expect_tr(&REQ,
                       "GET /a/b?c=d HTTP/1.1\r\nHost: example.com\r\nX-Pad:  \t spaced \t \r\n"
                       "X-Empty:\r\nUser-Agent: curl/8\r\n\r\n",
                       "H E");
    assert_string_equal(t.heads.p,
                        "GET /a/b?c=d 1.1 body=0 flags=0 | Host=example.com | X-Pad=spaced | "
                        "X-Empty= | User-Agent=curl/8\n");
    tr_free(&t);

    /* The fields in detail, on one parser. */
    h1_parser_t p;
    head_t h;
    h1_ev_t ev;
    head_init(&h);
    h1_parser_init(&p, H1_REQUEST, &h, NULL);
    const char *in = "OPTIONS * HTTP/1.1\r\nhost: a\r\nCONNECTION: keep-alive\r\nfoo: bar\r\n\r\n";
    assert_int_equal(h1_parse(&p, in, strlen(in), &ev), strlen(in));
    assert_int_equal(ev.type, H1_HEAD);
    assert_int_equal(h.method, HTTP_OPTIONS);
    assert_string_equal(head_str(&h, h.method_text), "OPTIONS");
    assert_string_equal(head_str(&h, h.target), "*");
    assert_int_equal(h.major, 1);
    assert_int_equal(h.minor, 1);
    assert_int_equal(h.nfields, 3);
    assert_int_equal(h.fields[0].id, F_HOST);
    assert_int_equal(h.fields[1].id, F_CONNECTION);
    assert_int_equal(h.fields[1].hop, 1);
    assert_int_equal(h.fields[2].id, F_OTHER);
    assert_int_equal(head_find(&h, "Foo", 3), 2);
    assert_int_equal(h.wire, strlen(in) - 2);
    assert_int_equal(p.body, H1_BODY_NONE);
    assert_int_equal(p.flags, 0);
    assert_int_equal(h1_parse(&p, "", 0, &ev), 0);
    assert_int_equal(ev.type, H1_END);
    assert_int_equal(h1_parse(&p, "", 0, &ev), 0);
    assert_int_equal(ev.type, H1_NEED_MORE);
    head_free(&h);

    /* Methods remora knows and others; a typical browser-sized head. */
    expect(&REQ, "PATCH /x HTTP/1.1\r\n" H_A "\r\n", "H E");
    expect(&REQ, "M-SEARCH * HTTP/1.1\r\n" H_A "\r\n", "H E");
    expect(&REQ,
           "GET /index.html HTTP/1.1\r\nHost: www.example.com\r\nUser-Agent: Mozilla/5.0 "
           "(X11; Linux x86_64)\r\nAccept: text/html,application/xhtml+xml\r\nAccept-Language: "
           "en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate\r\nConnection: keep-alive\r\n\r\n",
           "H E");
}

static void test_request_bodies(void **state)
{
    (void)state;
    tr_t t = expect_tr(&REQ, "POST /p HTTP/1.1\r\n" H_A "Content-Length: 5\r\n\r\nhello", "H D E");
    assert_string_equal(t.body.p, "hello");
    assert_string_equal(t.heads.p, "POST /p 1.1 body=1 flags=0 cl=5 | Host=a | Content-Length=5\n");
    tr_free(&t);
    expect(&REQ, "POST / HTTP/1.1\r\n" H_A "Content-Length: 0\r\n\r\n", "H E");
    expect(&REQ, "POST / HTTP/1.1\r\n" H_A "Content-Length: 007\r\n\r\n1234567", "H D E");

    t = expect_tr(&REQ,
                  "POST / HTTP/1.1\r\n" H_A "Transfer-Encoding: chunked\r\n\r\n"
                  "5\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Sum: 1\r\n\r\n",
                  "H D E");
    assert_string_equal(t.body.p, "helloabcdefghijklmnopqrstuvwxyz");
    assert_string_equal(t.heads.p,
                        "POST / 1.1 body=2 flags=0 | Host=a | Transfer-Encoding=chunked\n"
                        "trailers | X-Sum=1\n");
    tr_free(&t);
    /* A chunked body with no data, and one split into many chunks. */
    expect_both(&REQ, "POST / HTTP/1.1\r\n" H_A "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                "H E");
    t = expect_tr(&REQ,
                  "PUT / HTTP/1.1\r\n" H_A "Transfer-Encoding: chunked\r\n\r\n"
                  "1\r\na\r\n1\r\nb\r\n01\r\nc\r\n0\r\n\r\n",
                  "H D E");
    assert_string_equal(t.body.p, "abc");
    tr_free(&t);
}

static void test_pipelined(void **state)
{
    (void)state;
    tr_t t = expect_tr(&REQ,
                       "GET /1 HTTP/1.1\r\n" H_A "\r\n"
                       "POST /2 HTTP/1.1\r\n" H_A "Content-Length: 3\r\n\r\nabc"
                       "POST /3 HTTP/1.1\r\n" H_A "Transfer-Encoding: chunked\r\n\r\n"
                       "2\r\nde\r\n0\r\n\r\n"
                       "\r\nGET /4 HTTP/1.0\r\n\r\n",
                       "H E H D E H D E H E");
    assert_string_equal(t.body.p, "abcde");
    assert_string_equal(t.heads.p,
                        "GET /1 1.1 body=0 flags=0 | Host=a\n"
                        "POST /2 1.1 body=1 flags=0 cl=3 | Host=a | Content-Length=3\n"
                        "POST /3 1.1 body=2 flags=0 | Host=a | Transfer-Encoding=chunked\n"
                        "GET /4 1.0 body=0 flags=1\n");
    tr_free(&t);

    /* The caller may stop after any event: a second request waits in the caller's buffer, and
     * the head it takes away with head_swap is replaced by the one it gives. */
    h1_parser_t p;
    head_t h, mine;
    h1_ev_t ev;
    head_init(&h);
    head_init(&mine);
    h1_parser_init(&p, H1_REQUEST, &h, NULL);
    const char *in = "GET /1 HTTP/1.1\r\n" H_A "\r\nGET /2 HTTP/1.1\r\n" H_A "\r\n";
    size_t first = strlen("GET /1 HTTP/1.1\r\n" H_A "\r\n");
    assert_int_equal(h1_parse(&p, in, strlen(in), &ev), first);
    assert_int_equal(ev.type, H1_HEAD);
    head_swap(&h, &mine);
    assert_int_equal(h1_parse(&p, in + first, strlen(in) - first, &ev), 0);
    assert_int_equal(ev.type, H1_END);
    assert_false(h1_parser_busy(&p));
    assert_int_equal(h1_parse(&p, in + first, strlen(in) - first, &ev), strlen(in) - first);
    assert_int_equal(ev.type, H1_HEAD);
    assert_string_equal(head_str(&h, h.target), "/2");
    assert_string_equal(head_str(&mine, mine.target), "/1");
    head_free(&h);
    head_free(&mine);
}

static void test_leading_empty_lines(void **state)
{
    (void)state;
    expect(&REQ, "\r\nGET / HTTP/1.1\r\n" H_A "\r\n", "H E");
    expect(&REQ, "\n\r\n\n\r\nGET / HTTP/1.1\r\n" H_A "\r\n", "H E");
    expect(&REQ, "\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\n" H_A "\r\n", "X400");
    expect(&REQ, "\rGET / HTTP/1.1\r\n" H_A "\r\n", "X400");
    /* Empty lines alone are no message. */
    expect(&REQ_EOF, "\r\n\r\n", "");
    /* The count starts again at each message. */
    expect(&REQ,
           "GET / HTTP/1.1\r\n" H_A "\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\n" H_A
           "\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\n" H_A "\r\n",
           "H E H E H E");
}

static void test_bare_cr(void **state)
{
    (void)state;
    const cfg_t *c = &REQ;
    /* start line */
    expect(c, "GET / HTTP/1.1\rHost: a\r\n\r\n", "X400");
    expect(c, "GET /\r HTTP/1.1\r\n" H_A "\r\n", "X400");
    expect(c, "GET\r / HTTP/1.1\r\n" H_A "\r\n", "X400");
    expect(c, "GET / HTTP/1.1\r\r\n" H_A "\r\n", "X400");
    /* field line */
    expect(c, "GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", "X400");
    expect(c, "GET / HTTP/1.1\r\nHost: a\r\r\n\r\n", "X400");
    expect(c, "GET / HTTP/1.1\r\nHo\rst: a\r\n\r\n", "X400");
    expect(c, "GET / HTTP/1.1\r\n" H_A "X: a\rb\r\n\r\n", "X400");
    expect(c, "GET / HTTP/1.1\r\n" H_A "\rX: b\r\n\r\n", "X400");
    expect(c, "GET / HTTP/1.1\r\n" H_A "\r\r\n", "X400");
    const char *te = "POST / HTTP/1.1\r\n" H_A "Transfer-Encoding: chunked\r\n\r\n";
    char in[256];
    static const struct {
        const char *body, *events;
    } chunked[] = {
        {"5\rhello\r\n0\r\n\r\n", "H X400"}, /* chunk size line */
        {"5;a\rhello\r\n0\r\n\r\n", "H X400"},
        {"5;a=\"\r\"\r\nhello\r\n0\r\n\r\n", "H X400"},
        {"5\r\nhello\r0\r\n\r\n", "H D X400"}, /* after chunk data */
        {"5\r\nhello\r\r\n0\r\n\r\n", "H D X400"},
        {"0\r\nX: a\rb\r\n\r\n", "H X400"}, /* trailers */
        {"0\r\nX: a\r\r\n\r\n", "H X400"},
        {"0\r\nX\r: a\r\n\r\n", "H X400"},
        {"0\r\nX: a\r\n\rY: b\r\n\r\n", "H X400"},
        {"0\r\n\r\r\n", "H X400"},
        {"0\r\r\n\r\n", "H X400"},
    };
    for (size_t i = 0; i < sizeof chunked / sizeof *chunked; i++) {
        snprintf(in, sizeof in, "%s%s", te, chunked[i].body);
        expect_both(c, in, chunked[i].events);
    }
    /* Found as the bytes arrive, without waiting for the end of a line or section. */
    expect(c, "GET / HTTP/1.1\rX", "X400");
    expect(c, "GET / HTTP/1.1\r\nHost: a\rX", "X400");
    snprintf(in, sizeof in, "%s0\r\nX: a\rb", te);
    expect_both(c, in, "H X400");
}

static void test_lone_lf(void **state)
{
    (void)state;
    tr_t t = expect_tr(&REQ,
                       "POST / HTTP/1.1\nHost: a\nTransfer-Encoding: chunked\n\n"
                       "3;x=y\nabc\n0\nT: 1\n\n",
                       "H D E");
    assert_string_equal(t.body.p, "abc");
    tr_free(&t);
    expect(&REQ, "GET / HTTP/1.1\r\nHost: a\n\r\n", "H E");
    expect(&REQ, "GET / HTTP/1.1\nHost: a\r\n\n", "H E");
    cfg_t r = resp(HTTP_GET, 0);
    expect(&r, "HTTP/1.1 200 OK\nContent-Length: 1\n\nx", "H D E");
    expect(&r, "HTTP/1.1 204\n\n", "H E");
}

static void test_request_line(void **state)
{
    (void)state;
    /* HTTP/0.9 is refused as soon as its line is in, without waiting for more. */
    expect(&REQ, "GET /\r\n", "X400");
    expect(&REQ, "GET /\n", "X400");
    expect(&REQ, "GET / HTTP/2.0\r\n", "X505");
    expect(&REQ, "GET / HTTP/0.9\r\n" H_A "\r\n", "X505");
    expect(&REQ, "GET / HTTP/3.0\r\n", "X505");
    expect(&REQ, "GET / HTTP/1.0\r\n\r\n", "H E");
    expect(&REQ, "GET / HTTP/1.9\r\n" H_A "\r\n", "H E");
    static const char *const bad[] = {
        "GET / HTTP/1.1 \r\n",
        "GET  / HTTP/1.1\r\n",
        "GET /  HTTP/1.1\r\n",
        " GET / HTTP/1.1\r\n",
        "GET / http/1.1\r\n",
        "GET / HTTP/1\r\n",
        "GET / HTTP/1.\r\n",
        "GET / HTTP/11.1\r\n",
        "GET / HTTP/1.1x\r\n",
        "GET / HTTP/a.1\r\n",
        "GET\r\n",
        "GET /\tx HTTP/1.1\r\n",
        "G(T / HTTP/1.1\r\n",
        "GET / HTTP/1.1\r\n\r\n" /* Host */,
        "/ HTTP/1.1\r\n",
        "GET HTTP/1.1\r\n",
        "GET / HTTP /1.1\r\n",
        "GET /\x7f HTTP/1.1\r\n",
        "GET /\x80 HTTP/1.1\r\n",
        "GET /\0 HTTP/1.1\r\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        const char *in = bad[i];
        size_t n = strlen(in);
        if (strncmp(in, "GET /\0", 6) == 0)
            n = 17;
        char full[128];
        memcpy(full, in, n);
        memcpy(full + n, H_A "\r\n", 11);
        tr_t t = expect_n(&REQ, full, n + 11, "X400");
        tr_free(&t);
    }
    /* Every byte in a request-target: VCHAR only. */
    for (unsigned c = 0; c < 256; c++) {
        char in[64];
        int n = snprintf(in, sizeof in, "GET /%c HTTP/1.1\r\n" H_A "\r\n", c ? (char)c : '?');
        in[5] = (char)c;
        tr_t t = expect_n(&REQ, in, (size_t)n, c > 0x20 && c < 0x7f ? "H E" : "X400");
        tr_free(&t);
    }
    /* Every byte in a method: tchar only. */
    const char *tchar = "!#$%&'*+-.^_`|~";
    for (unsigned c = 0; c < 256; c++) {
        char in[64];
        int n = snprintf(in, sizeof in, "G?T / HTTP/1.1\r\n" H_A "\r\n");
        in[1] = (char)c;
        int ok = (c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') ||
                 (c && strchr(tchar, (int)c));
        tr_t t = expect_n(&REQ, in, (size_t)n, ok ? "H E" : "X400");
        tr_free(&t);
    }
}

static void test_field_names(void **state)
{
    (void)state;
    expect_get("Ho st: a\r\n", "X400");
    expect_get("Host\x01: a\r\n", "X400");
    expect_get(H_A "X-Foo : b\r\n", "X400");      /* space before the colon */
    expect_get(H_A "X-Foo\t: b\r\n", "X400");     /* tab too */
    expect_get(H_A "X-Foo: b\r\n c\r\n", "X400"); /* obs-fold */
    expect_get(H_A "X-Foo: b\r\n\tc\r\n", "X400");
    expect_get(" " H_A, "X400"); /* whitespace before the first field line */
    expect_get(H_A ": b\r\n", "X400");
    expect_get(H_A "X-Foo\r\n", "X400");
    expect_get(H_A "X-Foo b\r\n", "X400");
    expect_get(H_A "X-\xc3\xa9: b\r\n", "X400");
    expect_get(H_A "X!#$%&'*+-.^_`|~09azAZ: b\r\n", "H E");
    /* Every byte inside a name: tchar only. */
    const char *tchar = "!#$%&'*+-.^_`|~";
    for (unsigned c = 0; c < 256; c++) {
        char in[64];
        int n = snprintf(in, sizeof in, "GET / HTTP/1.1\r\n" H_A "X?Y: v\r\n\r\n");
        in[strlen("GET / HTTP/1.1\r\n" H_A) + 1] = (char)c;
        int ok = (c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') ||
                 (c && strchr(tchar, (int)c)) || c == ':'; /* then the name is "X" */
        tr_t t = expect_n(&REQ, in, (size_t)n, ok ? "H E" : "X400");
        tr_free(&t);
    }
}

static void test_field_values(void **state)
{
    (void)state;
    /* Every byte inside a value: VCHAR, obs-text, SP and HTAB; no CTL, no DEL, no NUL. */
    for (unsigned c = 0; c < 256; c++) {
        char in[64];
        int n = snprintf(in, sizeof in, "GET / HTTP/1.1\r\n" H_A "X: a?b\r\n\r\n");
        in[strlen("GET / HTTP/1.1\r\n" H_A) + 4] = (char)c;
        int ok = c == ' ' || c == '\t' || (c > 0x20 && c != 0x7f);
        tr_t t = expect_n(&REQ, in, (size_t)n, ok ? "H E" : "X400");
        if (ok) {
            char want[64];
            snprintf(want, sizeof want, "GET / 1.1 body=0 flags=0 | Host=a | X=a%cb\n", (char)c);
            assert_string_equal(t.heads.p, want);
        }
        tr_free(&t);
    }
    /* Leading and trailing OWS go; inner stays; an empty value is a field. */
    tr_t t = expect_tr(
        &REQ, "GET / HTTP/1.1\r\nHost:a\r\nA: \t\r\nB:\t x  y \t\r\nC:\r\nD: \xff\r\n\r\n", "H E");
    assert_string_equal(t.heads.p,
                        "GET / 1.1 body=0 flags=0 | Host=a | A= | B=x  y | C= | D=\xff\n");
    tr_free(&t);
}

static void test_host(void **state)
{
    (void)state;
    expect_get("", "X400");
    expect_get(H_A H_A, "X400");
    expect_get("Host: a\r\nhost: b\r\n", "X400");
    expect_get("Host: a b\r\n", "X400");
    expect_get("Host: a/b\r\n", "X400");
    expect_get("Host: a@b\r\n", "X400");
    expect_get("Host: a:b\r\n", "X400");
    expect_get("Host: a:80:81\r\n", "X400");
    expect_get("Host: [::1\r\n", "X400");
    expect_get("Host: []\r\n", "X400");
    expect_get("Host: [::1]x\r\n", "X400");
    expect_get("Host: a%2\r\n", "X400");
    expect_get("Host: a%zz\r\n", "X400");
    expect_get("Host: a?\r\n", "X400");
    expect_get("Host: a#\r\n", "X400");
    expect_get("Host: [::1]:80\r\n", "H E");
    expect_get("Host: [v1.fe]\r\n", "H E");
    expect_get("Host: example.com:8080\r\n", "H E");
    expect_get("Host: 10.0.0.1\r\n", "H E");
    expect_get("Host: a%41b.c-d_e~f!$&'()*+,;=\r\n", "H E");
    expect_get("Host: a:\r\n", "H E"); /* port = *DIGIT */
    expect_get("Host:\r\n", "H E");    /* empty: no authority in the target (RFC 9112 §3.2) */
    expect_get("Host:   example.com  \r\n", "H E");
    /* HTTP/1.0: at most one, and valid if present. */
    expect(&REQ, "GET / HTTP/1.0\r\n\r\n", "H E");
    expect(&REQ, "GET / HTTP/1.0\r\n" H_A "\r\n", "H E");
    expect(&REQ, "GET / HTTP/1.0\r\n" H_A H_A "\r\n", "X400");
    expect(&REQ, "GET / HTTP/1.0\r\nHost: a b\r\n\r\n", "X400");
    /* absolute-form still needs its Host */
    expect(&REQ, "GET http://a/ HTTP/1.1\r\n\r\n", "X400");
    expect(&REQ, "GET http://a/ HTTP/1.1\r\n" H_A "\r\n", "H E");
    expect(&REQ, "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", "H E");
}

static void test_content_length(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",
        "-1",
        "+5",
        "5 5",
        "5,5",
        "5, 5",
        "0x5",
        "5a",
        "\xff",
        "9223372036854775808",
        "99999999999999999999",
    };
    char f[128];
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        snprintf(f, sizeof f, H_A "Content-Length: %s\r\n", bad[i]);
        expect_get(f, "X400");
    }
    expect_get(H_A "Content-Length: 1\r\nContent-Length: 1\r\n", "X400");
    expect_get(H_A "Content-Length: 1\r\ncontent-length: 2\r\n", "X400");
    /* The largest length is accepted: its body is still to come. */
    tr_t t = expect_tr(
        &REQ, "POST / HTTP/1.1\r\n" H_A "Content-Length: 9223372036854775807\r\n\r\nab", "H D");
    assert_string_equal(t.heads.p, "POST / 1.1 body=1 flags=0 cl=9223372036854775807 | Host=a | "
                                   "Content-Length=9223372036854775807\n");
    tr_free(&t);
    expect(&REQ, "POST / HTTP/1.1\r\n" H_A "Content-Length:  3 \r\n\r\nabc", "H D E");
}

static void test_transfer_encoding(void **state)
{
    (void)state;
    const char *body = "3\r\nabc\r\n0\r\n\r\n";
    char in[512];
    static const struct {
        const char *fields;
        const char *events;
        unsigned flags;
    } cases[] = {
        {"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n", "X400", 0},
        {"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n", "X400", 0},
        {"Transfer-Encoding:\r\n", "X400", 0},
        {"Transfer-Encoding: \r\n", "X400", 0},
        {"Transfer-Encoding: ,\r\n", "X400", 0},
        {"Transfer-Encoding: ,chunked\r\n", "X400", 0},
        {"Transfer-Encoding: chunked,\r\n", "X400", 0},
        {"Transfer-Encoding: gzip,,chunked\r\n", "X400", 0},
        {"Transfer-Encoding: chunked, chunked\r\n", "X400", 0},
        {"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", "X400", 0},
        {"Transfer-Encoding: chunked, gzip\r\n", "X400", 0},
        {"Transfer-Encoding: gzip\r\n", "X400", 0},
        {"Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n", "X400", 0},
        {"Transfer-Encoding: chunked;q=1\r\n", "X400", 0},
        {"Transfer-Encoding: \"chunked\"\r\n", "X400", 0},
        {"Transfer-Encoding: chun ked\r\n", "X400", 0},
        {"Transfer-Encoding: foo, chunked\r\n", "X501", 0},
        {"Transfer-Encoding: chunked\r\n", "H D E", 0},
        {"Transfer-Encoding: CHUNKED\r\n", "H D E", 0},
        {"Transfer-Encoding:  chunked \r\n", "H D E", 0},
        {"Transfer-Encoding: gzip, chunked\r\n", "H D E", H1F_CODINGS},
        {"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n", "H D E", H1F_CODINGS},
        {"Transfer-Encoding: deflate,x-gzip , compress,x-compress,chunked\r\n", "H D E",
         H1F_CODINGS},
        /* Connection naming a framing field is no reason to ignore it. */
        {"Connection: Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n", "H D E", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        snprintf(in, sizeof in, "POST / HTTP/1.1\r\n" H_A "%s\r\n%s", cases[i].fields, body);
        tr_t t = expect_tr(&REQ, in, cases[i].events);
        if (cases[i].events[0] == 'H') {
            assert_string_equal(t.body.p, "abc");
            char want[32];
            snprintf(want, sizeof want, "body=2 flags=%x |", cases[i].flags);
            assert_non_null(strstr(t.heads.p, want));
        }
        tr_free(&t);
    }
    /* In HTTP/1.0 it is refused outright (RFC 9112 §6.1). */
    expect(&REQ, "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "X400");
}

static void test_connection_flags(void **state)
{
    (void)state;
    static const struct {
        const char *req;
        unsigned flags;
    } cases[] = {
        {"GET / HTTP/1.1\r\n" H_A "\r\n", 0},
        {"GET / HTTP/1.1\r\n" H_A "Connection: close\r\n\r\n", H1F_CLOSE},
        {"GET / HTTP/1.1\r\n" H_A "Connection: foo, CLOSE\r\n\r\n", H1F_CLOSE},
        {"GET / HTTP/1.1\r\n" H_A "Connection: closed\r\n\r\n", 0},
        {"GET / HTTP/1.0\r\n\r\n", H1F_CLOSE},
        {"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", 0},
        {"GET / HTTP/1.0\r\nConnection: Keep-Alive, close\r\n\r\n", H1F_CLOSE},
        {"GET / HTTP/1.1\r\n" H_A "Connection: upgrade\r\nUpgrade: websocket\r\n\r\n", H1F_UPGRADE},
        {"GET / HTTP/1.1\r\n" H_A "Upgrade: websocket\r\n\r\n", 0},
        {"GET / HTTP/1.1\r\n" H_A "Connection: upgrade\r\n\r\n", 0},
        {"GET / HTTP/1.1\r\n" H_A "Expect: 100-continue\r\n\r\n", H1F_CONTINUE},
        {"GET / HTTP/1.1\r\n" H_A "Expect: 100-Continue\r\n\r\n", H1F_CONTINUE},
        {"GET / HTTP/1.1\r\n" H_A "Expect: 100\r\n\r\n", 0},
        {"GET / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n", H1F_CLOSE},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        tr_t t = expect_tr(&REQ, cases[i].req, "H E");
        char want[32];
        snprintf(want, sizeof want, "body=0 flags=%x", cases[i].flags);
        assert_non_null(strstr(t.heads.p, want));
        tr_free(&t);
    }
    /* Connection: Content-Length changes nothing about framing: the body is still read. */
    tr_t t = expect_tr(&REQ,
                       "POST / HTTP/1.1\r\n" H_A "Connection: Content-Length\r\n"
                       "Content-Length: 2\r\n\r\nabGET / HTTP/1.1\r\n" H_A "\r\n",
                       "H D E H E");
    assert_string_equal(t.body.p, "ab");
    tr_free(&t);
}

static void test_chunk_extensions(void **state)
{
    (void)state;
    static const struct {
        const char *line;
        int ok;
    } cases[] = {
        {"5;a=b;c=d", 1},
        {"5 ; a = \"x y\"", 1},
        {"5;a", 1},
        {"5;a;b", 1},
        {"5\t;\ta\t=\tb", 1},
        {"5;a=\"\"", 1},
        {"5;a=\"q\\\"uo\\\\te\"", 1},
        {"5;a=\"\x80\xff\"", 1},
        {"5;!#$%&'*+-.^_`|~=x", 1},
        {"5;a=b ;c", 1},
        {"5;a=\"b\" ; c=\"d\"", 1},
        {"5;a=\"b\";c", 1},
        {"5;=", 0},
        {"5;", 0},
        {"5;=b", 0},
        {"5 ", 0},
        {"5\t", 0},
        {"5;a ", 0},
        {"5;a=", 0},
        {"5;a= ", 0},
        {"5;a=b ", 0},
        {"5;a=\"b\" ", 0},
        {"5;a=\"b", 0},
        {"5;a=\"b\"c", 0},
        {"5;a=b c", 0},
        {"5;a b", 0},
        {"5;a=b=c", 0},
        {"5;a=(b)", 0},
        {"5;a=\"\x01\"", 0},
        {"5;a=\"\\\x01\"", 0},
        {"5;a=\"\\", 0},
        {"5;a@b", 0},
        {"5;a\x7f", 0},
        {"5,a", 0},
        {"5;;a", 0},
        {";a", 0},
    };
    char in[256];
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        snprintf(in, sizeof in,
                 "POST / HTTP/1.1\r\n" H_A "Transfer-Encoding: chunked\r\n\r\n%s\r\nhello\r\n"
                 "0;last=1\r\n\r\n",
                 cases[i].line);
        tr_t t = expect_tr(&REQ, in, cases[i].ok ? "H D E" : "H X400");
        if (cases[i].ok)
            assert_string_equal(t.body.p, "hello");
        tr_free(&t);
    }
}

static void test_chunk_sizes(void **state)
{
    (void)state;
    const char *head = "POST / HTTP/1.1\r\n" H_A "Transfer-Encoding: chunked\r\n\r\n";
    char in[8192];
    /* hex in both cases, leading zeros */
    snprintf(in, sizeof in, "%s%s", head, "a\r\n0123456789\r\nA\r\n0123456789\r\n000\r\n\r\n");
    tr_t t = expect_tr(&REQ, in, "H D E");
    assert_int_equal(t.body.len, 20);
    tr_free(&t);
    /* 2^63 - 1 is a size; 2^63 is not */
    snprintf(in, sizeof in, "%s%s", head, "7fffffffffffffff\r\nabc");
    expect(&REQ, in, "H D");
    snprintf(in, sizeof in, "%s%s", head, "0007FFFFFFFFFFFFFFF\r\nabc");
    expect(&REQ, in, "H D");
    snprintf(in, sizeof in, "%s%s", head, "8000000000000000\r\n");
    expect(&REQ, in, "H X400");
    snprintf(in, sizeof in, "%s%s", head, "10000000000000000\r\n");
    expect(&REQ, in, "H X400");
    static const char *const bad[] = {
        "\r\n", "g\r\n", "-1\r\n", "+1\r\n", " 1\r\n", "0x1\r\n", "1 1\r\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        snprintf(in, sizeof in, "%s%sx\r\n0\r\n\r\n", head, bad[i]);
        expect(&REQ, in, "H X400");
    }
    /* Data not followed by CRLF. */
    snprintf(in, sizeof in, "%s%s", head, "3\r\nabcd\r\n0\r\n\r\n");
    expect(&REQ, in, "H D X400");
    snprintf(in, sizeof in, "%s%s", head, "3\r\nabc0\r\n\r\n");
    expect(&REQ, in, "H D X400");
    /* A chunk line of exactly H1_MAX_CHUNK_LINE bytes (line end aside), then one more. */
    for (int extra = 0; extra <= 1; extra++) {
        int n = snprintf(in, sizeof in, "%s1;x=", head);
        size_t pad = H1_MAX_CHUNK_LINE - 4 + (size_t)extra;
        memset(in + n, 'v', pad);
        n += (int)pad;
        n += snprintf(in + n, sizeof in - (size_t)n, "\r\nz\r\n0\r\n\r\n");
        tr_t r = expect_n(&REQ, in, (size_t)n, extra ? "H X400" : "H D E");
        tr_free(&r);
    }
}

static void test_trailers(void **state)
{
    (void)state;
    const char *head = "POST / HTTP/1.1\r\n" H_A "Transfer-Encoding: chunked\r\n\r\n1\r\nx\r\n";
    char in[1024];
    snprintf(in, sizeof in, "%s0\r\nChecksum:  abc \r\nX-Other:\r\n\r\n", head);
    tr_t t = expect_tr(&REQ, in, "H D E");
    assert_non_null(strstr(t.heads.p, "trailers | Checksum=abc | X-Other=\n"));
    tr_free(&t);
    cfg_t drop = REQ;
    drop.drop_trailers = 1;
    t = expect_tr(&drop, in, "H D E");
    assert_non_null(strstr(t.heads.p, "\ntrailers\n")); /* flagged, not kept */
    tr_free(&t);

    /* No trailers: the flag stays clear. */
    snprintf(in, sizeof in, "%s0\r\n\r\n", head);
    t = expect_tr(&REQ, in, "H D E");
    assert_null(strstr(t.heads.p, "trailers"));
    tr_free(&t);

    static const char *const bad[] = {
        "X : a\r\n", "X\t: a\r\n", "X: a\r\n b\r\n", " X: a\r\n",   "X a\r\n",
        ": a\r\n",   "X\r\n",      "X: \x01\r\n",    "X: \x7f\r\n", "(X): a\r\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        snprintf(in, sizeof in, "%s0\r\n%s\r\n", head, bad[i]);
        expect_both(&REQ, in, "H D X400");
    }
    /* Framing fields in trailers are kept as fields and frame nothing. */
    snprintf(in, sizeof in, "%s0\r\nContent-Length: 5\r\n\r\nGET / HTTP/1.1\r\n" H_A "\r\n", head);
    expect_both(&REQ, in, "H D E H E");
}

/* A request whose head (or trailer section), as received and without its final empty line, is
 * `size` bytes: a padding field fills it. */
static char *sized(size_t size, int trailer, size_t *n)
{
    const char *start = trailer ? "POST / HTTP/1.1\r\n" H_A "Transfer-Encoding: chunked\r\n\r\n"
                                  "1\r\nx\r\n0\r\n"
                                : "GET / HTTP/1.1\r\n" H_A;
    size_t before = trailer ? 0 : strlen(start);
    size_t pad = size - before - strlen("X: \r\n");
    char *in = malloc(strlen(start) + size + 8);
    assert_non_null(in);
    size_t k = strlen(start);
    memcpy(in, start, k);
    memcpy(in + k, "X: ", 3);
    k += 3;
    memset(in + k, 'p', pad);
    k += pad;
    memcpy(in + k, "\r\n\r\n", 4);
    *n = k + 4;
    return in;
}

static void test_head_bytes_cap(void **state)
{
    (void)state;
    size_t n;
    char *in = sized(HEAD_MAX_BYTES, 0, &n);
    tr_t t = expect_n(&REQ, in, n, "H E");
    tr_free(&t);
    free(in);
    in = sized(HEAD_MAX_BYTES + 1, 0, &n);
    t = expect_n(&REQ, in, n, "X431");
    tr_free(&t);
    free(in);

    /* The request line alone: with its CRLF, HEAD_MAX_BYTES fits; one more is 414. */
    for (int extra = 0; extra <= 1; extra++) {
        size_t line = HEAD_MAX_BYTES + (size_t)extra;
        char *r = malloc(line + 2);
        assert_non_null(r);
        memcpy(r, "GET /", 5);
        memset(r + 5, 'a', line - 5 - 11);
        memcpy(r + line - 11, " HTTP/1.0\r\n\r\n", 13);
        t = expect_n(&REQ, r, line + 2, extra ? "X414" : "H E");
        tr_free(&t);
        free(r);
    }
    /* A request line that fits, with a field after it: the head is past its cap. */
    in = malloc(HEAD_MAX_BYTES + 11);
    assert_non_null(in);
    memcpy(in, "GET /", 5);
    memset(in + 5, 'a', HEAD_MAX_BYTES - 16);
    memcpy(in + HEAD_MAX_BYTES - 11, " HTTP/1.1\r\n" H_A "\r\n", 22);
    t = expect_n(&REQ, in, HEAD_MAX_BYTES + 11, "X431");
    tr_free(&t);
    free(in);
    /* A status line alone: the same cap, 431. */
    for (int extra = 0; extra <= 1; extra++) {
        size_t line = HEAD_MAX_BYTES + (size_t)extra;
        char *r = malloc(line + 2);
        assert_non_null(r);
        memcpy(r, "HTTP/1.1 204 ", 13);
        memset(r + 13, 'r', line - 13 - 2);
        memcpy(r + line - 2, "\r\n\r\n", 4);
        cfg_t c = resp(HTTP_GET, 0);
        t = expect_n(&c, r, line + 2, extra ? "X431" : "H E");
        tr_free(&t);
        free(r);
    }
    /* Trailers: the same cap, kept or dropped. */
    for (int drop = 0; drop <= 1; drop++) {
        cfg_t c = REQ;
        c.drop_trailers = drop;
        in = sized(HEAD_MAX_BYTES, 1, &n);
        t = expect_n(&c, in, n, "H D E");
        tr_free(&t);
        free(in);
        in = sized(HEAD_MAX_BYTES + 1, 1, &n);
        t = expect_n(&c, in, n, "H D X431");
        tr_free(&t);
        free(in);
    }
}

/* Whatever the split, the same bytes decide: nothing past a cap is looked at, so a head that is
 * too large is 414/431 however it arrives, and an error before the cap is that error. */
static void test_caps_decide_alike_for_any_split(void **state)
{
    (void)state;
    /* A request line one byte too long whose version is inside the cap: 505. Its version
     * straddling the cap: 414. */
    for (int beyond = 0; beyond <= 1; beyond++) {
        size_t line = HEAD_MAX_BYTES + (beyond ? 9 : 1), n = line + 11;
        char *r = malloc(n);
        assert_non_null(r);
        memcpy(r, "GET /", 5);
        memset(r + 5, 'a', line - 5 - 11);
        memcpy(r + line - 11, " HTTP/0.1\r\n" H_A "\r\n", 22);
        tr_t t = expect_n(&REQ, r, n, beyond ? "X414" : "X505");
        tr_free(&t);
        free(r);
    }
    /* A bad byte just before the cap is that error; at the cap, the head is too large. */
    for (int at_cap = 0; at_cap <= 1; at_cap++) {
        size_t n;
        char *in = sized(HEAD_MAX_BYTES + 5, 0, &n);
        in[HEAD_MAX_BYTES - 1 + at_cap] = '\x01';
        tr_t t = expect_n(&REQ, in, n, at_cap ? "X431" : "X400");
        tr_free(&t);
        free(in);
    }
    /* The 101st field is too many before the broken line after it is looked at. */
    sb_t h = {0};
    sb_printf(&h, "GET / HTTP/1.1\r\n" H_A);
    for (unsigned i = 1; i <= HEAD_MAX_FIELDS; i++)
        sb_printf(&h, "X-%u: %u\r\n", i, i);
    sb_printf(&h, "Broken : line\r\n\r\n");
    tr_t t = expect_n(&REQ, h.p, h.len, "X431");
    tr_free(&t);
    free(h.p);
    /* Trailers, kept or dropped: at the cap only the empty line may come. */
    static const struct {
        const char *after, *events;
    } trailers[] = {
        {"\r\n", "H D E"},           {"\n", "H D E"},
        {" x\r\n\r\n", "H D X431"},  {"x: y\r\n\r\n", "H D X431"},
        {"\rx\r\n\r\n", "H D X400"},
    };
    for (size_t i = 0; i < sizeof trailers / sizeof *trailers; i++) {
        size_t n, k = strlen(trailers[i].after);
        char *in = sized(HEAD_MAX_BYTES, 1, &n);
        char *full = malloc(n - 2 + k);
        assert_non_null(full);
        memcpy(full, in, n - 2);
        memcpy(full + n - 2, trailers[i].after, k);
        for (int drop = 0; drop <= 1; drop++) {
            cfg_t c = REQ;
            c.drop_trailers = drop;
            t = expect_n(&c, full, n - 2 + k, trailers[i].events);
            tr_free(&t);
        }
        free(full);
        free(in);
    }
}

/* The word-at-a-time scans of values and targets: a byte of every kind at every position of a
 * word and across words. */
static void test_word_scans(void **state)
{
    (void)state;
    static const unsigned char bytes[] = {0x00, 0x01, '\t', '\n', '\r', 0x1f, ' ',
                                          '!',  '~',  0x7f, 0x80, 0xfe, 0xff};
    for (size_t b = 0; b < sizeof bytes; b++) {
        unsigned c = bytes[b];
        for (size_t at = 0; at < 20; at++) {
            /* In a value: VCHAR, obs-text, SP and HTAB pass. A LF ends the field line early: the
             * rest is a line without a colon, unless nothing is left of it. */
            char in[128], val[20];
            memset(val, 'v', sizeof val);
            val[at] = (char)c;
            size_t n = strlen("GET / HTTP/1.1\r\n" H_A "X: ");
            memcpy(in, "GET / HTTP/1.1\r\n" H_A "X: ", n);
            memcpy(in + n, val, sizeof val);
            memcpy(in + n + sizeof val, "\r\n\r\n", 4);
            n += sizeof val + 4;
            int ok = c == '\t' || c == ' ' || (c > 0x20 && c != 0x7f) ||
                     (c == '\n' && at == sizeof val - 1);
            const char *events = ok ? "H E" : "X400";
            tr_t t = expect_n(&REQ, in, n, events);
            tr_free(&t);
            /* In a request-target: VCHAR only. */
            memcpy(in, "GET /", 5);
            memcpy(in + 5, val, 20);
            memcpy(in + 25, " HTTP/1.1\r\n" H_A "\r\n", 22);
            t = expect_n(&REQ, in, 47, c > 0x20 && c < 0x7f ? "H E" : "X400");
            tr_free(&t);
        }
    }
}

/* A head (or trailer section) of `count` fields. */
static char *counted(unsigned count, int trailer, size_t *n)
{
    sb_t s = {0};
    if (trailer) {
        sb_printf(&s, "POST / HTTP/1.1\r\n" H_A "Transfer-Encoding: chunked\r\n\r\n0\r\n");
    } else {
        sb_printf(&s, "GET / HTTP/1.1\r\n" H_A);
        count--;
    }
    for (unsigned i = 0; i < count; i++)
        sb_printf(&s, "X-%u: %u\r\n", i, i);
    sb_printf(&s, "\r\n");
    *n = s.len;
    return s.p;
}

static void test_field_count_cap(void **state)
{
    (void)state;
    size_t n;
    char *in = counted(HEAD_MAX_FIELDS, 0, &n);
    expect(&REQ, in, "H E");
    free(in);
    in = counted(HEAD_MAX_FIELDS + 1, 0, &n);
    expect(&REQ, in, "X431");
    free(in);
    in = counted(HEAD_MAX_FIELDS, 1, &n);
    expect_both(&REQ, in, "H E");
    free(in);
    in = counted(HEAD_MAX_FIELDS + 1, 1, &n);
    expect_both(&REQ, in, "H X431");
    free(in);
}

/* ==== responses ==== */

static void test_responses_without_body(void **state)
{
    (void)state;
    cfg_t head = resp(HTTP_HEAD, 0), get = resp(HTTP_GET, 0);
    expect(&head, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", "H E");
    expect(&head, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "H E");
    expect(&head, "HTTP/1.1 200 OK\r\n\r\nHTTP/1.1 404 Not Found\r\n\r\n", "H E H E");
    expect(&get, "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", "H E");
    expect(&get, "HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n", "H E");
    expect(&get, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", "H E");
    /* Framing fields are still checked. */
    expect(&head, "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", "X400");
    expect(&get, "HTTP/1.1 204 No Content\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
           "X400");
    expect(&get, "HTTP/1.1 204 No Content\r\nTransfer-Encoding: ,\r\n\r\n", "X400");
}

static void test_interim_responses(void **state)
{
    (void)state;
    cfg_t get = resp(HTTP_POST, 1);
    tr_t t = expect_tr(&get,
                       "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s>\r\n\r\n"
                       "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                       "H H H D E");
    assert_string_equal(t.heads.p, "100 [Continue] 1.1 body=0 flags=0\n"
                                   "103 [Early Hints] 1.1 body=0 flags=0 | Link=</s>\n"
                                   "200 [OK] 1.1 body=1 flags=0 cl=2 | Content-Length=2\n");
    tr_free(&t);
    /* After an interim head the response is under way: the end of stream truncates it. */
    expect(&get, "HTTP/1.1 100 Continue\r\n\r\n", "H X400");
    h1_parser_t p;
    head_t h;
    h1_ev_t ev;
    head_init(&h);
    h1_parser_init(&p, H1_RESPONSE, &h, NULL);
    p.request_method = HTTP_GET;
    const char *in = "HTTP/1.1 100 Continue\r\n\r\n";
    assert_int_equal(h1_parse(&p, in, strlen(in), &ev), strlen(in));
    assert_int_equal(ev.type, H1_HEAD);
    assert_int_equal(h.status, 100);
    assert_int_equal(h1_parse(&p, "", 0, &ev), 0);
    assert_int_equal(ev.type, H1_NEED_MORE);
    assert_true(h1_parser_busy(&p));
    head_free(&h);
}

static void test_tunnels(void **state)
{
    (void)state;
    cfg_t get = resp(HTTP_GET, 1), connect = resp(HTTP_CONNECT, 1);
    /* 101: the head, the end, then the bytes are the new protocol's. */
    tr_t t = expect_tr(&get,
                       "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                       "Connection: Upgrade\r\n\r\n\x81\x05hello",
                       "H E T7");
    assert_string_equal(t.heads.p, "101 [Switching Protocols] 1.1 body=0 flags=0 | "
                                   "Upgrade=websocket | Connection=Upgrade\n");
    tr_free(&t);
    expect(&get, "HTTP/1.1 101 Switching Protocols\r\n\r\n", "H E T0");
    /* CONNECT: a 2xx is a tunnel whatever its framing fields say; other statuses are not. */
    expect(&connect, "HTTP/1.1 200 Connection Established\r\n\r\nxyz", "H E T3");
    expect(&connect, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabcdefgh", "H E T8");
    expect(&connect, "HTTP/1.1 407 Auth\r\nContent-Length: 2\r\n\r\nnoHTTP/1.1 200 OK\r\n\r\nz",
           "H D E H E T1");
    /* After the tunnel starts, the parser consumes nothing. */
    h1_parser_t p;
    head_t h;
    h1_ev_t ev;
    head_init(&h);
    h1_parser_init(&p, H1_RESPONSE, &h, NULL);
    p.request_method = HTTP_GET;
    const char *in = "HTTP/1.1 101 Switching Protocols\r\n\r\nGET / HTTP/1.1\r\n\r\n";
    size_t head_len = strlen("HTTP/1.1 101 Switching Protocols\r\n\r\n");
    assert_int_equal(h1_parse(&p, in, strlen(in), &ev), head_len);
    assert_int_equal(ev.type, H1_HEAD);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(h1_parse(&p, in + head_len, strlen(in) - head_len, &ev), 0);
        assert_int_equal(ev.type, H1_END);
        assert_false(h1_parser_busy(&p));
    }
    h1_parse_eof(&p, &ev);
    assert_int_equal(ev.type, H1_NEED_MORE);
    head_free(&h);
}

static void test_response_framing(void **state)
{
    (void)state;
    cfg_t get = resp(HTTP_GET, 1);
    static const struct {
        const char *in;
        const char *events;
        const char *body;
        const char *facts;
    } cases[] = {
        /* neither header: until close, then the connection ends */
        {"HTTP/1.1 200 OK\r\n\r\nabc", "H D E", "abc", "body=3 flags=1"},
        {"HTTP/1.0 200 OK\r\n\r\nabc", "H D E", "abc", "body=3 flags=1"},
        {"HTTP/1.1 200 OK\r\n\r\n", "H E", "", "body=3 flags=1"},
        /* Transfer-Encoding wins over Content-Length, and the connection closes */
        {"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
         "5\r\nhello\r\n0\r\n\r\n",
         "H D E", "hello", "body=2 flags=1"},
        /* a Transfer-Encoding not ending in chunked: until close */
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nzzz", "H D E", "zzz", "body=3 flags=9"},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n1\r\nz", "H D E", "1\r\nz",
         "body=3 flags=9"},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n1\r\nz\r\n0\r\n\r\n", "H D E",
         "z", "body=2 flags=8"},
        /* Transfer-Encoding in HTTP/1.0: processed, then close (RFC 9112 §6.1) */
        {"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"
         "1\r\nz\r\n0\r\n\r\n",
         "H D E", "z", "body=2 flags=1"},
        {"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\nz", "H D E", "z",
         "body=1 flags=0"},
        {"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nz", "H D E", "z",
         "body=1 flags=1"},
        /* status lines */
        {"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", "H E", "", "200 [] 1.1"},
        {"HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n", "H E", "", "200 [] 1.1"},
        {"HTTP/1.1 599 Odd \t\x80 Reason\r\nContent-Length: 0\r\n\r\n", "H E", "",
         "599 [Odd \t\x80 Reason] 1.1"},
        {"HTTP/1.1 200OK\r\n\r\n", "X400", "", NULL},
        {"HTTP/1.1 20 OK\r\n\r\n", "X400", "", NULL},
        {"HTTP/1.1 2000 OK\r\n\r\n", "X400", "", NULL},
        {"HTTP/1.1 099 OK\r\n\r\n", "X400", "", NULL},
        {"HTTP/1.1 600 OK\r\n\r\n", "X400", "", NULL},
        {"HTTP/1.1  200 OK\r\n\r\n", "X400", "", NULL},
        {"http/1.1 200 OK\r\n\r\n", "X400", "", NULL},
        {"HTTP/1.1 200 O\x01K\r\n\r\n", "X400", "", NULL},
        {"HTTP/1.1 200 OK\rX: y\r\n\r\n", "X400", "", NULL},
        {"HTTP/2.0 200 OK\r\n\r\n", "X505", "", NULL},
        {"HTTP/1.1 200 OK\r\nX : y\r\n\r\n", "X400", "", NULL},
        {"HTTP/1.1 200 OK\r\nContent-Length: 1, 1\r\n\r\n", "X400", "", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        tr_t t = expect_tr(&get, cases[i].in, cases[i].events);
        assert_string_equal(t.body.p, cases[i].body);
        if (cases[i].facts)
            assert_non_null(strstr(t.heads.p, cases[i].facts));
        tr_free(&t);
    }
}

static void test_end_of_stream(void **state)
{
    (void)state;
    cfg_t get = resp(HTTP_GET, 1);
    static const struct {
        const char *in;
        const char *events;
    } cases[] = {
        {"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel", "H D X400"},
        {"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", "H X400"},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", "H D X400"},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello", "H D X400"},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", "H D X400"},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;a=", "H X400"},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n", "H X400"},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: 1\r\n", "H X400"},
        {"HTTP/1.1 200 OK\r\nContent-Len", "X400"},
        {"HTTP/1.1 200 OK\r\n", "X400"},
        {"HTTP/1.1 2", "X400"},
        {"HTTP/1.1 204 No Content\r\n\r\n", "H E"},
        {"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nz", "H D E"},
        {"", ""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        cfg_t c = get;
        expect(&c, cases[i].in, cases[i].events);
        c.drop_trailers = 1;
        expect(&c, cases[i].in, cases[i].events);
    }
    expect(&REQ_EOF, "GET / HTTP/1.1\r\nHo", "X400");
    expect(&REQ_EOF, "GET / HTTP/1.1\r\n" H_A "\r\n", "H E");
    expect(&REQ_EOF, "GET / HTTP/1.1\r\n" H_A "\r\n\r\n", "H E");
    expect(&REQ_EOF, "POST / HTTP/1.1\r\n" H_A "Content-Length: 2\r\n\r\na", "H D X400");

    /* A message whose end is pending (no h1_parse call since) ends at h1_parse_eof. */
    h1_parser_t p;
    head_t h;
    h1_ev_t ev;
    head_init(&h);
    h1_parser_init(&p, H1_REQUEST, &h, NULL);
    const char *in = "GET / HTTP/1.1\r\n" H_A "\r\n";
    assert_int_equal(h1_parse(&p, in, strlen(in), &ev), strlen(in));
    assert_int_equal(ev.type, H1_HEAD);
    assert_true(h1_parser_busy(&p));
    h1_parse_eof(&p, &ev);
    assert_int_equal(ev.type, H1_END);
    assert_false(h1_parser_busy(&p));
    h1_parse_eof(&p, &ev);
    assert_int_equal(ev.type, H1_NEED_MORE);
    head_free(&h);
}

static void test_busy_and_errors(void **state)
{
    (void)state;
    h1_parser_t p;
    head_t h;
    h1_ev_t ev;
    head_init(&h);
    h1_parser_init(&p, H1_REQUEST, &h, NULL);
    assert_false(h1_parser_busy(&p));
    assert_int_equal(h1_parse(&p, "\r\n", 2, &ev), 2); /* an empty line is no message */
    assert_int_equal(ev.type, H1_NEED_MORE);
    assert_false(h1_parser_busy(&p));
    assert_int_equal(h1_parse(&p, "G", 1, &ev), 1);
    assert_int_equal(ev.type, H1_NEED_MORE);
    assert_true(h1_parser_busy(&p));
    const char *rest = "ET / HTTP/1.1\r\n" H_A "Content-Length: 1\r\n\r\nzGET";
    size_t used = h1_parse(&p, rest, strlen(rest), &ev);
    assert_int_equal(ev.type, H1_HEAD);
    assert_int_equal(p.body, H1_BODY_LENGTH);
    assert_int_equal(p.content_length, 1);
    rest += used;
    assert_int_equal(h1_parse(&p, rest, strlen(rest), &ev), 1);
    assert_int_equal(ev.type, H1_DATA);
    assert_true(h1_parser_busy(&p));
    rest++;
    assert_int_equal(h1_parse(&p, rest, strlen(rest), &ev), 0);
    assert_int_equal(ev.type, H1_END);
    assert_false(h1_parser_busy(&p));
    assert_int_equal(h1_parse(&p, rest, strlen(rest), &ev), 3);
    assert_int_equal(ev.type, H1_NEED_MORE);
    assert_true(h1_parser_busy(&p));
    /* An error, with its status and reason, then nothing more. */
    assert_int_equal(h1_parse(&p, " / HTTP/2.0\r\n", 13, &ev), 13);
    assert_int_equal(ev.type, H1_ERROR);
    assert_int_equal(ev.status, 505);
    assert_string_equal(p.reason, "HTTP version not supported");
    assert_int_equal(h1_parse(&p, "\r\n", 2, &ev), 0);
    assert_int_equal(ev.type, H1_ERROR);
    assert_int_equal(ev.status, 505);
    head_free(&h);

    /* A few reasons, as a log would show them. */
    static const struct {
        const char *in;
        const char *reason;
    } cases[] = {
        {"GET / HTTP/1.1\rX", "CR not followed by LF"},
        {"GET /\r\n", "invalid request-target"},
        {"GET / HTTP/1.1\r\nHost : a\r\n\r\n", "whitespace before colon"},
        {"GET / HTTP/1.1\r\n" H_A " x\r\n\r\n", "obs-fold or whitespace before a field line"},
        {"GET / HTTP/1.1\r\n\r\n", "missing Host"},
        {"GET / HTTP/1.1\r\n" H_A H_A "\r\n", "repeated Host"},
        {"POST / HTTP/1.1\r\n" H_A "Transfer-Encoding: chunked\r\n\r\n5;=\r\n",
         "invalid chunk extension"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        tr_t t = expect_tr(&REQ, cases[i].in, strstr(cases[i].in, "chunked") ? "H X400" : "X400");
        assert_string_equal(t.reason, cases[i].reason);
        tr_free(&t);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_head_fields_and_lookup),
        cmocka_unit_test(test_head_caps),
        cmocka_unit_test(test_head_store_reset_swap),
        cmocka_unit_test(test_field_classify),
        cmocka_unit_test(test_list_has_and_trim_ows),
        cmocka_unit_test(test_request_head),
        cmocka_unit_test(test_request_bodies),
        cmocka_unit_test(test_pipelined),
        cmocka_unit_test(test_leading_empty_lines),
        cmocka_unit_test(test_bare_cr),
        cmocka_unit_test(test_lone_lf),
        cmocka_unit_test(test_request_line),
        cmocka_unit_test(test_field_names),
        cmocka_unit_test(test_field_values),
        cmocka_unit_test(test_host),
        cmocka_unit_test(test_content_length),
        cmocka_unit_test(test_transfer_encoding),
        cmocka_unit_test(test_connection_flags),
        cmocka_unit_test(test_chunk_extensions),
        cmocka_unit_test(test_chunk_sizes),
        cmocka_unit_test(test_trailers),
        cmocka_unit_test(test_head_bytes_cap),
        cmocka_unit_test(test_field_count_cap),
        cmocka_unit_test(test_caps_decide_alike_for_any_split),
        cmocka_unit_test(test_word_scans),
        cmocka_unit_test(test_responses_without_body),
        cmocka_unit_test(test_interim_responses),
        cmocka_unit_test(test_tunnels),
        cmocka_unit_test(test_response_framing),
        cmocka_unit_test(test_end_of_stream),
        cmocka_unit_test(test_busy_and_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
