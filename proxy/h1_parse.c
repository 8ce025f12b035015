#include "proxy/h1_parse.h"

#include <string.h>

#include "base/err.h"

/* RFC 9112 §2.2 asks a server to ignore at least one empty line before a request line; a few
 * cover every client bug seen in practice, and the cap keeps a peer from idling forever. */
#define MAX_EMPTY_LINES 4
/* Content-Length and chunk sizes stay below 2^63. */
#define SIZE_MAX_63 UINT64_C(0x7fffffffffffffff)

/* One parser state per place in the message; `remaining` and `scan` mean what the header says,
 * except where noted. */
enum state {
    S_IDLE,    /* before a message: empty lines may come first */
    S_INTERIM, /* response: a 1xx was reported, the final head is to come */
    S_LINE,    /* collecting the start line (scan bytes stored), parsed when its LF is in */
    S_HEAD,    /* collecting the field lines until the empty line; line_len: where they start */
    S_LENGTH,  /* Content-Length body */
    S_CLOSE,   /* body delimited by the connection's close */
    /* Chunked (RFC 9112 §7.1): the size line, with `remaining` accumulating the size. */
    S_SIZE0,      /* the first HEXDIG */
    S_SIZE,       /* more HEXDIG, or what follows them */
    S_EXT_WS,     /* BWS, then ";" */
    S_EXT_NAME0,  /* after ";" and BWS: the chunk-ext-name */
    S_EXT_NAME,   /* in the name */
    S_EXT_EQ,     /* BWS after the name, then "=" or ";" */
    S_EXT_VAL0,   /* after "=" and BWS: a token or a quoted-string */
    S_EXT_TOKEN,  /* in a token value */
    S_EXT_QUOTED, /* in a quoted-string */
    S_EXT_QPAIR,  /* after a backslash in it */
    S_EXT_AFTER,  /* right after the closing quote */
    S_DATA,       /* chunk-data */
    S_DATA_END,   /* the CRLF after it */
    S_TRAILERS,   /* collecting the trailer section into p->trailers (scan bytes stored) */
    /* Trailers dropped (p->trailers NULL), checked as they pass: `scan` counts the field
     * lines' bytes and `remaining` the fields, for the caps. */
    S_TL_LINE,    /* at the start of a line */
    S_TL_NAME,    /* in a field name */
    S_TL_VALUE,   /* in a field value */
    S_END,        /* the message is complete: H1_END is next */
    S_END_TUNNEL, /* the same, then the bytes belong to a tunnel */
    S_TUNNEL,     /* H1_END again, nothing consumed */
    S_ERROR,      /* H1_ERROR again; `remaining` holds the status */
};

/* Character classes (RFC 9110 §5.6.2, RFC 9112 §3.2, §7.1.1, RFC 3986 §2). */
#define T 0x01 /* tchar */
#define V 0x02 /* field-vchar, SP, HTAB: what a field value or reason phrase may hold */
#define U 0x04 /* VCHAR: what a request-target may hold */
#define X 0x08 /* HEXDIG */
#define A 0x10 /* unreserved / sub-delims: a reg-name or IP-literal, with pct-encoded aside */
#define Q 0x20 /* qdtext */

#define VCHAR (V | U | Q)
#define ALNUM (VCHAR | T | A)
#define HEXCH (ALNUM | X)
#define OBS   (V | Q) /* obs-text */
#define OBS8  OBS, OBS, OBS, OBS, OBS, OBS, OBS, OBS

/* clang-format off */
static const unsigned char cls[256] = {
    ['\t'] = V | Q, [' '] = V | Q,
    ['"'] = V | U, ['\\'] = V | U,
    ['/'] = VCHAR, [':'] = VCHAR, ['<'] = VCHAR, ['>'] = VCHAR, ['?'] = VCHAR, ['@'] = VCHAR,
    ['['] = VCHAR, [']'] = VCHAR, ['{'] = VCHAR, ['}'] = VCHAR,
    ['#'] = VCHAR | T, ['%'] = VCHAR | T, ['^'] = VCHAR | T, ['`'] = VCHAR | T, ['|'] = VCHAR | T,
    ['('] = VCHAR | A, [')'] = VCHAR | A, [','] = VCHAR | A, [';'] = VCHAR | A, ['='] = VCHAR | A,
    ['!'] = ALNUM, ['$'] = ALNUM, ['&'] = ALNUM, ['\''] = ALNUM, ['*'] = ALNUM, ['+'] = ALNUM,
    ['-'] = ALNUM, ['.'] = ALNUM, ['_'] = ALNUM, ['~'] = ALNUM,
    ['0'] = HEXCH, ['1'] = HEXCH, ['2'] = HEXCH, ['3'] = HEXCH, ['4'] = HEXCH,
    ['5'] = HEXCH, ['6'] = HEXCH, ['7'] = HEXCH, ['8'] = HEXCH, ['9'] = HEXCH,
    ['A'] = HEXCH, ['B'] = HEXCH, ['C'] = HEXCH, ['D'] = HEXCH, ['E'] = HEXCH, ['F'] = HEXCH,
    ['G'] = ALNUM, ['H'] = ALNUM, ['I'] = ALNUM, ['J'] = ALNUM, ['K'] = ALNUM, ['L'] = ALNUM,
    ['M'] = ALNUM, ['N'] = ALNUM, ['O'] = ALNUM, ['P'] = ALNUM, ['Q'] = ALNUM, ['R'] = ALNUM,
    ['S'] = ALNUM, ['T'] = ALNUM, ['U'] = ALNUM, ['V'] = ALNUM, ['W'] = ALNUM, ['X'] = ALNUM,
    ['Y'] = ALNUM, ['Z'] = ALNUM,
    ['a'] = HEXCH, ['b'] = HEXCH, ['c'] = HEXCH, ['d'] = HEXCH, ['e'] = HEXCH, ['f'] = HEXCH,
    ['g'] = ALNUM, ['h'] = ALNUM, ['i'] = ALNUM, ['j'] = ALNUM, ['k'] = ALNUM, ['l'] = ALNUM,
    ['m'] = ALNUM, ['n'] = ALNUM, ['o'] = ALNUM, ['p'] = ALNUM, ['q'] = ALNUM, ['r'] = ALNUM,
    ['s'] = ALNUM, ['t'] = ALNUM, ['u'] = ALNUM, ['v'] = ALNUM, ['w'] = ALNUM, ['x'] = ALNUM,
    ['y'] = ALNUM, ['z'] = ALNUM,
    [0x80] = OBS8, OBS8, OBS8, OBS8, OBS8, OBS8, OBS8, OBS8,
             OBS8, OBS8, OBS8, OBS8, OBS8, OBS8, OBS8, OBS8,
};
/* clang-format on */

static inline int is_ws(unsigned c)
{
    return c == ' ' || c == '\t';
}

static inline int is_digit(unsigned c)
{
    return c - '0' < 10u;
}

static inline unsigned hexval(unsigned c)
{
    return c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10;
}

/* Whether the n bytes at p are `lit` (lower case) in any case. */
static int same(const char *p, const char *lit, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned c = (unsigned char)p[i];
        if (c - 'A' < 26u)
            c |= 0x20;
        if (c != (unsigned char)lit[i])
            return 0;
    }
    return 1;
}

/* Enters S_ERROR: every later call reports H1_ERROR with this status. Returns -1. */
static int bad(h1_parser_t *p, int status, const char *why)
{
    p->state = S_ERROR;
    p->remaining = (uint64_t)status;
    p->reason = why;
    return -1;
}

/* What the field lines of a head say about framing, gathered in one pass. */
struct facts {
    unsigned hosts, host;  /* Host fields, and the index of the first */
    unsigned cl;           /* Content-Length fields */
    uint64_t length;       /* its value */
    unsigned te;           /* Transfer-Encoding fields */
    unsigned chunked;      /* times chunked was applied */
    unsigned codings;      /* other codings */
    unsigned unknown;      /* codings not registered (RFC 9110 §8.4.1, RFC 9112 §7) */
    unsigned last_chunked; /* the final coding is chunked */
    unsigned close, keep_alive, upgrade_token; /* Connection options */
    unsigned upgrade;                          /* an Upgrade field */
    unsigned expect_100;                       /* Expect: 100-continue */
};

/* 1*DIGIT below 2^63 (RFC 9110 §8.6: no list, no sign, no space). */
static int parse_length(const char *v, size_t n, uint64_t *out)
{
    uint64_t x = 0;
    if (n == 0)
        return -1;
    for (size_t i = 0; i < n; i++) {
        unsigned d = (unsigned char)v[i] - '0';
        if (d > 9 || x > (SIZE_MAX_63 - d) / 10)
            return -1;
        x = x * 10 + d;
    }
    *out = x;
    return 0;
}

/* One Transfer-Encoding field: a list of codings, each a bare token, none empty (§6.1). */
static int transfer_codings(h1_parser_t *p, struct facts *f, const char *v, size_t n)
{
    const char *end = v + n;
    for (;;) {
        const char *comma = memchr(v, ',', (size_t)(end - v));
        size_t len = (size_t)((comma ? comma : end) - v);
        const char *c = trim_ows(v, &len);
        if (len == 0)
            return bad(p, 400, "empty Transfer-Encoding element");
        for (size_t i = 0; i < len; i++)
            if (!(cls[(unsigned char)c[i]] & T))
                return bad(p, 400, "invalid transfer coding");
        f->last_chunked = len == 7 && same(c, "chunked", 7);
        if (f->last_chunked) {
            f->chunked++;
        } else {
            f->codings++;
            f->unknown +=
                !((len == 4 && same(c, "gzip", 4)) || (len == 7 && same(c, "deflate", 7)) ||
                  (len == 8 && same(c, "compress", 8)) || (len == 6 && same(c, "x-gzip", 6)) ||
                  (len == 10 && same(c, "x-compress", 10)));
        }
        if (!comma)
            return 0;
        v = comma + 1;
    }
}

/* A Host value (RFC 9112 §3.2, RFC 3986 §3.2.2-3): an IP-literal in brackets or a reg-name
 * (which covers IPv4 addresses), then an optional ":" port; empty is valid. */
static int valid_authority(const unsigned char *v, size_t n)
{
    size_t i = 0;
    if (n > 0 && v[0] == '[') {
        for (i = 1; i < n && ((cls[v[i]] & A) || v[i] == ':'); i++)
            ;
        if (i == 1 || i == n || v[i] != ']')
            return 0;
        i++;
    } else {
        while (i < n) {
            if (cls[v[i]] & A)
                i++;
            else if (v[i] == '%' && i + 2 < n && (cls[v[i + 1]] & X) && (cls[v[i + 2]] & X))
                i += 3;
            else
                break;
        }
    }
    if (i < n && v[i++] != ':')
        return 0;
    for (; i < n; i++)
        if (!is_digit(v[i]))
            return 0;
    return 1;
}

/* Notes what a field means for framing; -1 when it breaks a rule. */
static int note(h1_parser_t *p, struct facts *f, const head_t *h, unsigned i)
{
    const field_t *fl = &h->fields[i];
    const char *v = h->bytes + fl->value;
    switch (fl->id) {
    case F_HOST:
        if (f->hosts++ == 0)
            f->host = i;
        return 0;
    case F_CONTENT_LENGTH:
        if (f->cl++)
            return bad(p, 400, "repeated Content-Length");
        if (parse_length(v, fl->value_len, &f->length) < 0)
            return bad(p, 400, "invalid Content-Length");
        return 0;
    case F_TRANSFER_ENCODING:
        f->te++;
        return transfer_codings(p, f, v, fl->value_len);
    case F_CONNECTION:
        f->close |= list_has(v, fl->value_len, "close", 5);
        f->keep_alive |= list_has(v, fl->value_len, "keep-alive", 10);
        f->upgrade_token |= list_has(v, fl->value_len, "upgrade", 7);
        return 0;
    case F_UPGRADE:
        f->upgrade = 1;
        return 0;
    case F_EXPECT:
        f->expect_100 |= list_has(v, fl->value_len, "100-continue", 12);
        return 0;
    default:
        return 0;
    }
}

/* A line end at *q: CRLF, or a lone LF (§2.2). 0 and past it, or -1. */
static inline int line_end(unsigned char **q)
{
    unsigned char *s = *q;
    if (s[0] == '\n') {
        *q = s + 1;
        return 0;
    }
    if (s[0] == '\r' && s[1] == '\n') {
        *q = s + 2;
        return 0;
    }
    return -1;
}

/* Why the byte at q cannot end a line. */
static const char *not_line_end(const unsigned char *q, const char *otherwise)
{
    return q[0] == '\r' && q[1] != '\n' ? "CR not followed by LF" : otherwise;
}

/* "HTTP/" DIGIT "." DIGIT (§2.3, case-sensitive). The && chain stops at the section's NUL. */
static int version(h1_parser_t *p, head_t *h, const unsigned char *q)
{
    if (!(q[0] == 'H' && q[1] == 'T' && q[2] == 'T' && q[3] == 'P' && q[4] == '/' &&
          is_digit(q[5]) && q[6] == '.' && is_digit(q[7])))
        return bad(p, 400, "invalid HTTP version");
    h->major = (uint8_t)(q[5] - '0');
    h->minor = (uint8_t)(q[7] - '0');
    if (h->major != 1)
        return bad(p, 505, "HTTP version not supported");
    return 0;
}

/* request-line = method SP request-target SP HTTP-version (§3), complete in the storage.
 * Sets p->line_len to its length with the line end. */
static int request_line(h1_parser_t *p, head_t *h)
{
    unsigned char *s = (unsigned char *)h->bytes, *c = s;
    while (cls[*c] & T)
        c++;
    if (c == s || *c != ' ')
        return bad(p, 400, not_line_end(c, "invalid method"));
    h->method_text = 0;
    h->method_len = (uint32_t)(c - s);
    h->method = (uint8_t)http_method_of((const char *)s, h->method_len);
    *c++ = '\0';
    unsigned char *t = c;
    while (cls[*c] & U)
        c++;
    if (c == t || *c != ' ')
        return bad(p, 400, not_line_end(c, "invalid request-target"));
    h->target = (uint32_t)(t - s);
    h->target_len = (uint32_t)(c - t);
    *c++ = '\0';
    if (version(p, h, c) < 0)
        return -1;
    c += 8;
    if (line_end(&c) < 0)
        return bad(p, 400, not_line_end(c, "invalid request line"));
    h->wire = h->method_len + h->target_len + 12; /* 2 SP, HTTP/1.1, CRLF */
    if (h->wire > HEAD_MAX_BYTES)
        return bad(p, 414, "request line too long");
    p->line_len = (uint32_t)(c - s);
    return 0;
}

/* status-line = HTTP-version SP status-code SP [ reason-phrase ] (§4), like request_line. A
 * missing SP before an empty reason is tolerated: servers that send "HTTP/1.1 200" exist, and
 * it frames nothing. The reason's NUL goes in with the field lines: until then the line end
 * must stay as received, for find_end. */
static int status_line(h1_parser_t *p, head_t *h)
{
    unsigned char *s = (unsigned char *)h->bytes, *c = s;
    if (version(p, h, c) < 0)
        return -1;
    c += 8;
    if (!(c[0] == ' ' && is_digit(c[1]) && is_digit(c[2]) && is_digit(c[3])))
        return bad(p, 400, "invalid status line");
    h->status = (uint16_t)((c[1] - '0') * 100 + (c[2] - '0') * 10 + (c[3] - '0'));
    if (h->status < 100 || h->status > 599)
        return bad(p, 400, "invalid status code");
    c += 4;
    unsigned char *r = c;
    if (*c == ' ') {
        r = ++c;
        while (cls[*c] & V)
            c++;
    }
    h->reason = (uint32_t)(r - s);
    h->reason_len = (uint32_t)(c - r);
    if (line_end(&c) < 0)
        return bad(p, 400, not_line_end(c, "invalid status line"));
    h->wire = h->reason_len + 15; /* HTTP/1.1, 2 SP, the code, CRLF */
    p->line_len = (uint32_t)(c - s);
    return 0;
}

/* field-line = field-name ":" OWS field-value OWS (§5), up to the empty line ending the
 * section; each name and trimmed value becomes a C string in place. f is NULL for trailers. */
static int field_lines(h1_parser_t *p, head_t *h, unsigned char *c, struct facts *f)
{
    unsigned char *s = (unsigned char *)h->bytes;
    for (;;) {
        unsigned char *name = c;
        while (cls[*c] & T)
            c++;
        if (c == name) {
            if (line_end(&c) == 0)
                return 0;
            if (is_ws(*c))
                return bad(p, 400, "obs-fold or whitespace before a field line");
            return bad(p, 400, not_line_end(c, "invalid field name"));
        }
        if (*c != ':')
            return bad(p, 400, is_ws(*c) ? "whitespace before colon" : "invalid field name");
        uint32_t name_len = (uint32_t)(c - name);
        *c++ = '\0';
        while (is_ws(*c))
            c++;
        unsigned char *v = c;
        while (cls[*c] & V)
            c++;
        unsigned char *ve = c;
        while (ve > v && is_ws(ve[-1]))
            ve--;
        if (line_end(&c) < 0)
            return bad(p, 400, not_line_end(c, "invalid character in field value"));
        *ve = '\0';
        int err = h->nfields == HEAD_MAX_FIELDS
                      ? ERR_TOO_LARGE
                      : head_add_stored(h, (uint32_t)(name - s), name_len, (uint32_t)(v - s),
                                        (uint32_t)(ve - v));
        if (err == ERR_TOO_LARGE)
            return bad(p, 431, f ? "head too large" : "trailers too large");
        if (err)
            return bad(p, 503, "out of memory");
        if (f && note(p, f, h, h->nfields - 1) < 0)
            return -1;
    }
}

/* Framing of a request (RFC 9112 §6.1, §6.3, §9.3; Host: §3.2). */
static int request_framing(h1_parser_t *p, const head_t *h, const struct facts *f)
{
    int http11 = h->minor >= 1;
    if (http11 ? f->hosts != 1 : f->hosts > 1)
        return bad(p, 400, f->hosts ? "repeated Host" : "missing Host");
    if (f->hosts) {
        const field_t *fl = &h->fields[f->host];
        if (!valid_authority((const unsigned char *)h->bytes + fl->value, fl->value_len))
            return bad(p, 400, "invalid Host");
    }
    p->body = H1_BODY_NONE;
    if (f->te) {
        if (!http11)
            return bad(p, 400, "Transfer-Encoding in an HTTP/1.0 request");
        if (f->cl)
            return bad(p, 400, "Content-Length with Transfer-Encoding");
        if (!f->last_chunked)
            return bad(p, 400, "Transfer-Encoding does not end in chunked");
        if (f->chunked > 1)
            return bad(p, 400, "chunked applied twice");
        if (f->unknown)
            return bad(p, 501, "unknown transfer coding");
        p->body = H1_BODY_CHUNKED;
    } else if (f->cl && f->length) {
        p->body = H1_BODY_LENGTH;
    }
    if (f->close || (!http11 && !f->keep_alive))
        p->flags |= H1F_CLOSE;
    if (f->upgrade_token && f->upgrade)
        p->flags |= H1F_UPGRADE;
    if (http11 && f->expect_100)
        p->flags |= H1F_CONTINUE;
    if (f->codings)
        p->flags |= H1F_CODINGS;
    return 0;
}

/* Framing of a response (§6.3); returns the state after its head. */
static enum state response_framing(h1_parser_t *p, const head_t *h, const struct facts *f)
{
    unsigned status = h->status;
    p->body = H1_BODY_NONE;
    if (f->close || (h->minor == 0 && !f->keep_alive))
        p->flags |= H1F_CLOSE;
    if (f->te && (f->cl || h->minor == 0)) /* faulty framing: §6.1, §6.3 */
        p->flags |= H1F_CLOSE;
    if (f->codings)
        p->flags |= H1F_CODINGS;
    if (status == 101 || (p->request_method == HTTP_CONNECT && status / 100 == 2))
        return S_END_TUNNEL;
    if (status < 200)
        return S_INTERIM;
    if (p->request_method == HTTP_HEAD || status == 204 || status == 304)
        return S_END;
    if (f->te && f->last_chunked) {
        p->body = H1_BODY_CHUNKED;
        return S_SIZE0;
    }
    if (!f->te && f->cl) {
        p->body = f->length ? H1_BODY_LENGTH : H1_BODY_NONE;
        return f->length ? S_LENGTH : S_END;
    }
    p->body = H1_BODY_UNTIL_CLOSE;
    p->flags |= H1F_CLOSE;
    return S_CLOSE;
}

/* The head is complete in p->head's storage, its start line parsed: parse the field lines in
 * place and set the framing. */
static void parse_head(h1_parser_t *p)
{
    head_t *h = p->head;
    struct facts f;
    memset(&f, 0, sizeof f);
    p->flags = 0;
    p->content_length = 0;
    p->empty_lines = 0;
    if (p->kind == H1_RESPONSE)
        h->bytes[h->reason + h->reason_len] = '\0';
    if (field_lines(p, h, (unsigned char *)h->bytes + p->line_len, &f) < 0)
        return;
    p->content_length = f.cl ? f.length : 0;
    p->remaining = 0;
    p->line_len = 0;
    if (p->kind == H1_RESPONSE) {
        p->state = response_framing(p, h, &f);
    } else if (request_framing(p, h, &f) == 0) {
        p->state = p->body == H1_BODY_CHUNKED  ? S_SIZE0
                   : p->body == H1_BODY_LENGTH ? S_LENGTH
                                               : S_END;
    }
    if (p->state == S_LENGTH)
        p->remaining = f.length;
}

/* The trailer section is complete in p->trailers' storage. */
static void parse_trailers(h1_parser_t *p)
{
    head_t *h = p->trailers;
    h->wire = 0;
    if (field_lines(p, h, (unsigned char *)h->bytes, NULL) < 0)
        return;
    if (h->nfields)
        p->flags |= H1F_TRAILERS;
    p->state = S_END;
}

/* The byte `back` places before d[i], counting the len section bytes already in s; the start of
 * the section reads as a line end. */
static inline unsigned before(const char *s, size_t len, const unsigned char *d, size_t i,
                              size_t back)
{
    if (i >= back)
        return d[i - back];
    if (len + i >= back)
        return (unsigned char)s[len + i - back];
    return '\n';
}

/* Index in d[0..n) of the LF that ends the section's empty line, or n. */
static size_t find_end(const char *s, size_t len, const unsigned char *d, size_t n)
{
    const unsigned char *q = d, *end = d + n;
    while ((q = memchr(q, '\n', (size_t)(end - q)))) {
        size_t i = (size_t)(q - d);
        unsigned b1 = before(s, len, d, i, 1);
        if (b1 == '\n' || (b1 == '\r' && before(s, len, d, i, 2) == '\n'))
            return i;
        q++;
    }
    return n;
}

/* Appends d[0..n) to the raw section in h's storage. */
static int store(h1_parser_t *p, head_t *h, const unsigned char *d, size_t n)
{
    if (head_store(h, (const char *)d, n) < 0)
        return bad(p, 503, "out of memory");
    h->len--; /* the next copy overwrites the NUL: the raw section stays contiguous */
    p->scan += (uint32_t)n;
    return 0;
}

/* Whether d[0..n), after the section bytes stored so far, holds a CR not followed by LF: an
 * error found as the bytes arrive, not at the end of a section a peer using bare CRs would
 * never end. */
static int bare_cr(h1_parser_t *p, const head_t *h, const unsigned char *d, size_t n)
{
    int bare = p->scan && h->bytes[p->scan - 1] == '\r' && d[0] != '\n';
    for (const unsigned char *q = d; !bare && (q = memchr(q, '\r', (size_t)(d + n - q))); q++)
        bare = q + 1 < d + n && q[1] != '\n';
    if (bare)
        bad(p, 400, "CR not followed by LF");
    return bare;
}

/* Copies the start line from d[0..n) (n > 0) and parses it once its LF is in, so a request
 * line that is wrong (HTTP/0.9 included) is answered without waiting for more. The cap: the
 * line with its line end. Returns the bytes consumed. */
static size_t collect_line(h1_parser_t *p, const unsigned char *d, size_t n)
{
    const unsigned char *lf = memchr(d, '\n', n);
    size_t take = lf ? (size_t)(lf - d) + 1 : n;
    if ((size_t)p->scan + take + !lf > HEAD_MAX_BYTES) {
        if (p->kind == H1_REQUEST)
            bad(p, 414, "request line too long");
        else
            bad(p, 431, "head too large");
        return 0;
    }
    if (bare_cr(p, p->head, d, take) || store(p, p->head, d, take) < 0 || !lf)
        return take;
    if ((p->kind == H1_REQUEST ? request_line : status_line)(p, p->head) == 0)
        p->state = S_HEAD;
    return take;
}

/* Copies d[0..n) (n > 0) into h's storage up to the empty line that ends the section (the field
 * lines of a head, or a trailer section), and parses the section once it is complete. The cap
 * is on the section as received (start line included), without that empty line. Returns the
 * bytes consumed. */
static size_t collect(h1_parser_t *p, head_t *h, const unsigned char *d, size_t n)
{
    size_t e = find_end(h->bytes, p->scan, d, n);
    size_t take = e < n ? e + 1 : n;
    size_t total = p->scan + take;
    /* Without the end, at most the last byte (a CR) belongs to the empty line. */
    size_t least = e < n ? total - (before(h->bytes, p->scan, d, e, 1) == '\r' ? 2 : 1) : total - 1;
    if (least > HEAD_MAX_BYTES) {
        bad(p, 431, p->state == S_HEAD ? "head too large" : "trailers too large");
        return 0;
    }
    if (bare_cr(p, h, d, take) || store(p, h, d, take) < 0 || e == n)
        return take;
    h->len++; /* keep the NUL after the section */
    if (p->state == S_HEAD)
        parse_head(p);
    else
        parse_trailers(p);
    return take;
}

/* The state after the last chunk's line: the trailer section. */
static void start_trailers(h1_parser_t *p)
{
    p->scan = 0;
    p->remaining = 0;
    if (p->trailers) {
        head_reset(p->trailers);
        p->state = S_TRAILERS;
    } else {
        p->state = S_TL_LINE;
    }
}

/* A chunk line has ended (its LF consumed). */
static void chunk_line_done(h1_parser_t *p)
{
    p->line_len = 0;
    if (p->state == S_DATA_END) {
        p->state = S_SIZE0;
        p->remaining = 0;
    } else if (p->remaining == 0) {
        start_trailers(p);
    } else {
        p->state = S_DATA;
    }
}

/* What may follow a size, a token value, or a closing quote. */
static int after_item(h1_parser_t *p, unsigned c)
{
    if (c == ';')
        p->state = S_EXT_NAME0;
    else if (is_ws(c))
        p->state = S_EXT_WS;
    else
        return bad(p, 400, "invalid chunk extension");
    return 0;
}

/* One byte of a chunk line other than its line end. */
static int chunk_byte(h1_parser_t *p, unsigned c)
{
    unsigned k = cls[c];
    switch (p->state) {
    case S_SIZE0:
        if (!(k & X))
            return bad(p, 400, "invalid chunk size");
        p->remaining = hexval(c);
        p->state = S_SIZE;
        return 0;
    case S_SIZE:
        if (!(k & X))
            return after_item(p, c);
        if (p->remaining >> 59)
            return bad(p, 400, "chunk size too large");
        p->remaining = p->remaining << 4 | hexval(c);
        return 0;
    case S_EXT_WS:
        if (c == ';')
            p->state = S_EXT_NAME0;
        else if (!is_ws(c))
            return bad(p, 400, "invalid chunk extension");
        return 0;
    case S_EXT_NAME0:
        if (k & T)
            p->state = S_EXT_NAME;
        else if (!is_ws(c))
            return bad(p, 400, "invalid chunk extension");
        return 0;
    case S_EXT_NAME:
    case S_EXT_EQ:
        if (c == '=')
            p->state = S_EXT_VAL0;
        else if (c == ';')
            p->state = S_EXT_NAME0;
        else if (is_ws(c))
            p->state = S_EXT_EQ;
        else if (!(k & T) || p->state == S_EXT_EQ)
            return bad(p, 400, "invalid chunk extension");
        return 0;
    case S_EXT_VAL0:
        if (k & T)
            p->state = S_EXT_TOKEN;
        else if (c == '"')
            p->state = S_EXT_QUOTED;
        else if (!is_ws(c))
            return bad(p, 400, "invalid chunk extension");
        return 0;
    case S_EXT_TOKEN:
        return k & T ? 0 : after_item(p, c);
    case S_EXT_QUOTED:
        if (c == '"')
            p->state = S_EXT_AFTER;
        else if (c == '\\')
            p->state = S_EXT_QPAIR;
        else if (!(k & Q))
            return bad(p, 400, "invalid chunk extension");
        return 0;
    case S_EXT_QPAIR:
        if (!(k & V))
            return bad(p, 400, "invalid chunk extension");
        p->state = S_EXT_QUOTED;
        return 0;
    case S_EXT_AFTER:
        return after_item(p, c);
    default: /* S_DATA_END */
        return bad(p, 400, "chunk data not followed by CRLF");
    }
}

/* Whether a chunk line may end in this state. */
static int may_end(unsigned state)
{
    return state == S_SIZE || state == S_EXT_NAME || state == S_EXT_TOKEN || state == S_EXT_AFTER ||
           state == S_DATA_END;
}

/* Consumes chunk-line bytes from d[0..n) until the line ends, the data does, or an error. */
static size_t chunk_line(h1_parser_t *p, const unsigned char *d, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned c = d[i];
        if (p->saw_cr && c != '\n') {
            bad(p, 400, "CR not followed by LF");
            return i;
        }
        if (c == '\r' || c == '\n') {
            if (!may_end(p->state)) {
                bad(p, 400, p->state == S_SIZE0 ? "invalid chunk size" : "invalid chunk extension");
                return i;
            }
            if (c == '\r') {
                p->saw_cr = 1;
                continue;
            }
            p->saw_cr = 0;
            chunk_line_done(p);
            return i + 1;
        }
        if (++p->line_len > H1_MAX_CHUNK_LINE) {
            bad(p, 400, "chunk line too long");
            return i;
        }
        if (chunk_byte(p, c) < 0)
            return i;
    }
    return n;
}

/* Trailer field lines checked as they pass, with the rules and caps of collected ones. */
static size_t drop_trailers(h1_parser_t *p, const unsigned char *d, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned c = d[i];
        if (p->saw_cr && c != '\n') {
            bad(p, 400, "CR not followed by LF");
            return i;
        }
        if (p->state != S_TL_LINE || (c != '\r' && c != '\n')) {
            if (++p->scan > HEAD_MAX_BYTES) {
                bad(p, 431, "trailers too large");
                return i;
            }
        }
        switch (p->state) {
        case S_TL_LINE:
            if (c == '\r') {
                p->saw_cr = 1;
                break;
            }
            if (c == '\n') {
                p->saw_cr = 0;
                p->state = S_END;
                return i + 1;
            }
            if (!(cls[c] & T)) {
                bad(p, 400,
                    is_ws(c) ? "obs-fold or whitespace before a field line" : "invalid field name");
                return i;
            }
            if (++p->remaining > HEAD_MAX_FIELDS) {
                bad(p, 431, "trailers too large");
                return i;
            }
            p->flags |= H1F_TRAILERS;
            p->state = S_TL_NAME;
            break;
        case S_TL_NAME:
            if (c == ':') {
                p->state = S_TL_VALUE;
            } else if (!(cls[c] & T)) {
                bad(p, 400, is_ws(c) ? "whitespace before colon" : "invalid field name");
                return i;
            }
            break;
        default: /* S_TL_VALUE */
            if (c == '\r') {
                p->saw_cr = 1;
            } else if (c == '\n') {
                p->saw_cr = 0;
                p->state = S_TL_LINE;
            } else if (!(cls[c] & V)) {
                bad(p, 400, "invalid character in field value");
                return i;
            }
        }
    }
    return n;
}

/* Empty lines before a start line; the first other byte starts the head. */
static size_t idle(h1_parser_t *p, const unsigned char *d, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned c = d[i];
        if (p->saw_cr && c != '\n') {
            bad(p, 400, "CR not followed by LF");
            return i;
        }
        if (c == '\r') {
            p->saw_cr = 1;
        } else if (c == '\n') {
            p->saw_cr = 0;
            if (++p->empty_lines > MAX_EMPTY_LINES) {
                bad(p, 400, "too many empty lines before the start line");
                return i;
            }
        } else {
            head_reset(p->head);
            p->scan = 0;
            p->state = S_LINE;
            return i;
        }
    }
    return n;
}

void h1_parser_init(h1_parser_t *p, enum h1_kind kind, head_t *head, head_t *trailers)
{
    memset(p, 0, sizeof *p);
    p->kind = kind;
    p->head = head;
    p->trailers = trailers;
    p->request_method = HTTP_OTHER;
    p->body = H1_BODY_NONE;
    p->state = S_IDLE;
}

static size_t event(h1_ev_t *ev, enum h1_event type, size_t used)
{
    ev->type = type;
    return used;
}

size_t h1_parse(h1_parser_t *p, const char *data, size_t n, h1_ev_t *ev)
{
    const unsigned char *d = (const unsigned char *)data;
    size_t i = 0;
    ev->p = NULL;
    ev->n = 0;
    ev->status = 0;
    for (;;) {
        switch ((enum state)p->state) {
        case S_IDLE:
        case S_INTERIM:
            if (i == n)
                return event(ev, H1_NEED_MORE, i);
            i += idle(p, d + i, n - i);
            break;
        case S_LINE:
            if (i == n)
                return event(ev, H1_NEED_MORE, i);
            i += collect_line(p, d + i, n - i);
            break;
        case S_HEAD:
            if (i == n)
                return event(ev, H1_NEED_MORE, i);
            i += collect(p, p->head, d + i, n - i);
            if (p->state != S_HEAD && p->state != S_ERROR)
                return event(ev, H1_HEAD, i);
            break;
        case S_LENGTH:
        case S_DATA:
        case S_CLOSE: {
            if (i == n)
                return event(ev, H1_NEED_MORE, i);
            size_t k = n - i;
            if (p->state != S_CLOSE) {
                if (k > p->remaining)
                    k = (size_t)p->remaining;
                p->remaining -= k;
                if (p->remaining == 0)
                    p->state = p->state == S_LENGTH ? S_END : S_DATA_END;
            }
            ev->p = data + i;
            ev->n = k;
            return event(ev, H1_DATA, i + k);
        }
        case S_SIZE0:
        case S_SIZE:
        case S_EXT_WS:
        case S_EXT_NAME0:
        case S_EXT_NAME:
        case S_EXT_EQ:
        case S_EXT_VAL0:
        case S_EXT_TOKEN:
        case S_EXT_QUOTED:
        case S_EXT_QPAIR:
        case S_EXT_AFTER:
        case S_DATA_END:
            if (i == n)
                return event(ev, H1_NEED_MORE, i);
            i += chunk_line(p, d + i, n - i);
            break;
        case S_TRAILERS:
            if (i == n)
                return event(ev, H1_NEED_MORE, i);
            i += collect(p, p->trailers, d + i, n - i);
            break;
        case S_TL_LINE:
        case S_TL_NAME:
        case S_TL_VALUE:
            if (i == n)
                return event(ev, H1_NEED_MORE, i);
            i += drop_trailers(p, d + i, n - i);
            break;
        case S_END:
            p->state = S_IDLE;
            p->empty_lines = 0;
            return event(ev, H1_END, i);
        case S_END_TUNNEL:
            p->state = S_TUNNEL;
            return event(ev, H1_END, i);
        case S_TUNNEL:
            return event(ev, H1_END, i);
        case S_ERROR:
            ev->status = (int)p->remaining;
            return event(ev, H1_ERROR, i);
        }
    }
}

void h1_parse_eof(h1_parser_t *p, h1_ev_t *ev)
{
    ev->p = NULL;
    ev->n = 0;
    ev->status = 0;
    switch ((enum state)p->state) {
    case S_IDLE:
    case S_TUNNEL:
        p->saw_cr = 0;
        ev->type = H1_NEED_MORE;
        return;
    case S_CLOSE:
    case S_END:
        p->state = S_IDLE;
        p->empty_lines = 0;
        ev->type = H1_END;
        return;
    case S_END_TUNNEL:
        p->state = S_TUNNEL;
        ev->type = H1_END;
        return;
    case S_ERROR:
        break;
    default:
        bad(p, 400, "truncated message");
    }
    ev->status = (int)p->remaining;
    ev->type = H1_ERROR;
}

int h1_parser_busy(const h1_parser_t *p)
{
    switch ((enum state)p->state) {
    case S_IDLE:
    case S_TUNNEL:
    case S_ERROR:
        return 0;
    default:
        return 1;
    }
}
