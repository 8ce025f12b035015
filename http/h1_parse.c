#include "http/h1_parse.h"

#include <string.h>

#include "base/err.h"
#include "http/ascii.h"

/* RFC 9112 §2.2 asks a server to ignore at least one empty line before a request line; a few
 * cover every client bug seen in practice, and the cap keeps a peer from idling forever. */
#define MAX_EMPTY_LINES 4
/* Content-Length and chunk sizes stay below 2^63. */
#define SIZE_MAX_63 UINT64_C(0x7fffffffffffffff)
/* Head bytes copied per step: more than most heads, so one step is the rule, and few body bytes
 * that follow a head in the same read are copied with it (they are not consumed). */
#define COPY_STEP 4096

/* One parser state per place in the message; `remaining` and `scan` mean what the header says,
 * except where noted. */
enum state {
    S_IDLE,    /* before a message: empty lines may come first */
    S_INTERIM, /* response: a 1xx was reported, the final head is to come */
    /* The head: bytes are copied into p->head (scan of them so far) and parsed there as their
     * lines complete; line_len is where the first line not yet parsed starts. */
    S_LINE,   /* the start line */
    S_HEAD,   /* the field lines, up to the empty line */
    S_LENGTH, /* Content-Length body */
    S_CLOSE,  /* body delimited by the connection's close */
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
    S_TRAILERS,   /* the trailer section, copied into p->trailers and parsed like a head */
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
#define W 0x40 /* SP, HTAB: whitespace (OWS, BWS) */

#define VCHAR (V | U | Q)
#define ALNUM (VCHAR | T | A)
#define HEXCH (ALNUM | X)
#define OBS   (V | Q) /* obs-text */
#define OBS8  OBS, OBS, OBS, OBS, OBS, OBS, OBS, OBS

/* clang-format off */
static const unsigned char cls[256] = {
    ['\t'] = V | Q | W, [' '] = V | Q | W,
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
    return cls[c] & W;
}

static inline int is_digit(unsigned c)
{
    return c - '0' < 10u;
}

static inline unsigned hexval(unsigned c)
{
    return c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10;
}

/* Enters S_ERROR: every later call reports H1_ERROR with this status. Returns -1. */
static int bad(h1_parser_t *p, int status, const char *why)
{
    p->state = S_ERROR;
    p->remaining = (uint64_t)status;
    p->reason = why;
    return -1;
}

/* What the fields of a head say about framing. */
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
        for (;;) {
            while ((cls[v[i]] & A) && (cls[v[i + 1]] & A)) /* the value's NUL ends it */
                i += 2;
            i += (cls[v[i]] & A) != 0;
            if (!(i + 2 < n && v[i] == '%' && (cls[v[i + 1]] & X) && (cls[v[i + 2]] & X)))
                break;
            i += 3;
        }
    }
    if (i < n && v[i++] != ':')
        return 0;
    for (; i < n; i++)
        if (!is_digit(v[i]))
            return 0;
    return 1;
}

/* The Connection options remora acts on (RFC 9110 §7.6.1, RFC 9112 §9.3), in one pass. */
static void connection_options(struct facts *f, const char *v, size_t n)
{
    const char *end = v + n;
    for (;;) {
        const char *comma = memchr(v, ',', (size_t)(end - v));
        size_t len = (size_t)((comma ? comma : end) - v);
        const char *o = trim_ows(v, &len);
        if (len == 5 && same(o, "close", 5))
            f->close = 1;
        else if (len == 10 && same(o, "keep-alive", 10))
            f->keep_alive = 1;
        else if (len == 7 && same(o, "upgrade", 7))
            f->upgrade_token = 1;
        if (!comma)
            return;
        v = comma + 1;
    }
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
        connection_options(f, v, fl->value_len);
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

/* Eight bytes at a time (SWAR): runs of value and target characters are most of a head's bytes.
 * Each `*_stops` sets the high bit of the word's bytes that end a run (or need the byte loop).
 * Borrows and carries flow only toward later bytes and start only at such a byte, so the
 * lowest bit set is exact: on a little-endian machine, the first stop. Elsewhere the byte
 * loops do it all. */
#define ONES  UINT64_C(0x0101010101010101)
#define HIGHS (ONES * 0x80)
#define WORDS (__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__)

static inline uint64_t load8(const unsigned char *c)
{
    uint64_t x;
    memcpy(&x, c, 8);
    return x;
}

/* Bytes below n (n <= 128). */
static inline uint64_t below(uint64_t x, unsigned n)
{
    return (x - ONES * n) & ~x & HIGHS;
}

/* Bytes above n (n < 128). */
static inline uint64_t above(uint64_t x, unsigned n)
{
    return ((x + ONES * (127 - n)) | x) & HIGHS;
}

/* Field values: CTLs and DEL (HTAB too, rare, left to the byte loop). */
static inline uint64_t value_stops(uint64_t x)
{
    return below(x, 0x20) | below(x ^ (ONES * 0x7f), 1);
}

/* Request-targets: all but VCHAR. */
static inline uint64_t target_stops(uint64_t x)
{
    return below(x, 0x21) | above(x, 0x7e);
}

/* Past the tchars from c, two at a time (c[1] is readable when c[0] is not the NUL). */
static inline unsigned char *skip_token(unsigned char *c)
{
    while ((cls[c[0]] & T) && (cls[c[1]] & T))
        c += 2;
    return c + ((cls[c[0]] & T) != 0);
}

/* Past the run of `class` characters from c, the storage's NUL stopping the byte loop at end. */
static inline unsigned char *skip(unsigned char *c, const unsigned char *end,
                                  uint64_t (*stops)(uint64_t), unsigned class)
{
    while (WORDS && end - c >= 8) {
        uint64_t m = stops(load8(c));
        if (m) {
            c += (unsigned)__builtin_ctzll(m) >> 3;
            break;
        }
        c += 8;
    }
    while (cls[*c] & class)
        c++;
    return c;
}

/* The byte at c breaks the line: -1 for a CR not followed by LF, or `why`; 0 (more bytes
 * needed, to tell which) when a CR ends the bytes so far. */
static int broken(h1_parser_t *p, const unsigned char *c, const unsigned char *end, const char *why)
{
    if (c[0] == '\r') {
        if (c + 1 >= end)
            return 0;
        if (c[1] != '\n')
            why = "CR not followed by LF";
    }
    return bad(p, 400, why);
}

/* A line end at c (CRLF, or a lone LF: §2.2): 1 and *next past it; 0 when the bytes stop at
 * end first; -1 (an error: `why`, or a CR not followed by LF) otherwise. */
static inline int line_end(h1_parser_t *p, unsigned char *c, const unsigned char *end,
                           unsigned char **next, const char *why)
{
    if (c >= end || (c[0] == '\r' && c + 1 >= end))
        return 0;
    if (c[0] == '\n') {
        *next = c + 1;
        return 1;
    }
    if (c[0] == '\r' && c[1] == '\n') {
        *next = c + 2;
        return 1;
    }
    return broken(p, c, end, why);
}

/* "HTTP/" DIGIT "." DIGIT (§2.3, case-sensitive): 1, 0 (more bytes needed) or -1. */
static int version(h1_parser_t *p, head_t *h, const unsigned char *c, const unsigned char *end)
{
    static const char form[8] = "HTTP/#.#";
    if (end - c >= 8 && memcmp(c, "HTTP/1.1", 8) == 0) { /* nearly always */
        h->major = h->minor = 1;
        return 1;
    }
    for (int i = 0; i < 8; i++) {
        if (c + i >= end)
            return 0;
        if (form[i] == '#' ? !is_digit(c[i]) : c[i] != form[i])
            return broken(p, c + i, end, "invalid HTTP version");
    }
    h->major = (uint8_t)(c[5] - '0');
    h->minor = (uint8_t)(c[7] - '0');
    if (h->major != 1)
        return bad(p, 505, "HTTP version not supported");
    return 1;
}

/* request-line = method SP request-target SP HTTP-version (§3), from the start of the stored
 * bytes up to end: 1 (parsed, line_len past it), 0 (more bytes needed) or -1. An invalid line,
 * HTTP/0.9 included, is refused as soon as the bytes show it. */
static int request_line(h1_parser_t *p, head_t *h, const unsigned char *end)
{
    unsigned char *s = (unsigned char *)h->bytes, *c = s, *t, *next = s;
    while (cls[*c] & T)
        c++;
    if (c >= end)
        return 0;
    if (c == s || *c != ' ')
        return broken(p, c, end, "invalid method");
    t = ++c;
    c = skip(c, end, target_stops, U);
    if (c >= end)
        return 0;
    if (c == t || *c != ' ')
        return broken(p, c, end, "invalid request-target");
    int rc = version(p, h, c + 1, end);
    if (rc <= 0)
        return rc;
    if ((rc = line_end(p, c + 9, end, &next, "invalid request line")) <= 0)
        return rc;
    h->method_text = 0;
    h->method_len = (uint32_t)(t - 1 - s);
    h->method = h->method_len == 3 && s[0] == 'G' && s[1] == 'E' && s[2] == 'T'
                    ? HTTP_GET /* most requests, without the table search */
                    : (uint8_t)http_method_of((const char *)s, h->method_len);
    h->target = (uint32_t)(t - s);
    h->target_len = (uint32_t)(c - t);
    s[h->method_len] = '\0';
    *c = '\0';
    h->wire = h->method_len + h->target_len + 12; /* 2 SP, HTTP/1.1, CRLF */
    if (h->wire > HEAD_MAX_BYTES)                 /* as sent on, if received with a lone LF */
        return bad(p, 414, "request line too long");
    p->line_len = (uint32_t)(next - s);
    return 1;
}

/* status-line = HTTP-version SP status-code SP [ reason-phrase ] (§4), like request_line. A
 * missing SP before an empty reason is tolerated: servers that send "HTTP/1.1 200" exist, and
 * it frames nothing. */
static int status_line(h1_parser_t *p, head_t *h, const unsigned char *end)
{
    unsigned char *s = (unsigned char *)h->bytes, *c = s + 8, *r, *next = s;
    int rc = version(p, h, s, end);
    if (rc <= 0)
        return rc;
    for (int i = 0; i < 4; i++) {
        if (c + i >= end)
            return 0;
        if (i == 0 ? c[0] != ' ' : !is_digit(c[i]))
            return broken(p, c + i, end, "invalid status line");
    }
    unsigned status = (c[1] - '0') * 100u + (c[2] - '0') * 10u + (c[3] - '0');
    if (status < 100 || status > 599)
        return bad(p, 400, "invalid status code");
    c += 4;
    r = c;
    if (*c == ' ')
        c = skip(r = c + 1, end, value_stops, V);
    if ((rc = line_end(p, c, end, &next, "invalid status line")) <= 0)
        return rc;
    h->status = (uint16_t)status;
    h->reason = (uint32_t)(r - s);
    h->reason_len = (uint32_t)(c - r);
    *c = '\0';
    h->wire = h->reason_len + 15; /* HTTP/1.1, 2 SP, the code, CRLF */
    if (h->wire > HEAD_MAX_BYTES)
        return bad(p, 431, "head too large");
    p->line_len = (uint32_t)(next - s);
    return 1;
}

static int too_large(h1_parser_t *p)
{
    return bad(p, 431, p->state == S_TRAILERS ? "trailers too large" : "head too large");
}

/* field-line = field-name ":" OWS field-value OWS (§5) at line, the name already skipped (it
 * ends at c): 1 when the line ended within lim and its field was added (*next past it), 0 when
 * more bytes are needed, -1. The line is changed (name and trimmed value made C strings) only
 * once it is complete, so an incomplete one is parsed again with more bytes. */
static int field_line(h1_parser_t *p, head_t *h, unsigned char *line, unsigned char *c,
                      const unsigned char *lim, unsigned char **next)
{
    unsigned char *s = (unsigned char *)h->bytes, *colon = c, *v, *ve;
    if (c >= lim)
        return 0;
    if (*c != ':')
        return broken(p, c, lim, is_ws(*c) ? "whitespace before colon" : "invalid field name");
    for (c++; is_ws(*c); c++)
        ;
    v = c;
    ve = c = skip(c, lim, value_stops, V);
    while (ve > v && is_ws(ve[-1]))
        ve--;
    if (c + 1 < lim && c[0] == '\r' && c[1] == '\n') {
        *next = c + 2;
    } else {
        int rc = line_end(p, c, lim, next, "invalid character in field value");
        if (rc <= 0)
            return rc;
    }
    /* The received caps (HEAD_MAX_*; the head's own are larger, for what remora adds). */
    uint32_t name_len = (uint32_t)(colon - line), value_len = (uint32_t)(ve - v);
    if (h->nfields == HEAD_MAX_FIELDS || h->wire + name_len + value_len + 4 > HEAD_MAX_BYTES)
        return too_large(p);
    *colon = '\0';
    *ve = '\0';
    if (head_add_stored(h, (uint32_t)(line - s), name_len, (uint32_t)(v - s), value_len))
        return bad(p, 503, "out of memory"); /* within the caps above, only that can fail */
    return 1;
}

/* The field lines from line_len on: 1 when the empty line ending the section is reached
 * (line_len is where it starts, *stop past it), 0 when more bytes are needed, -1. Field lines
 * must end within lim (the cap), the empty line within end; nothing past those is looked at,
 * so the outcome never depends on how the bytes were split. */
static int lines(h1_parser_t *p, head_t *h, const unsigned char *lim, const unsigned char *end,
                 uint32_t *stop)
{
    unsigned char *s = (unsigned char *)h->bytes, *line = s + p->line_len, *next = line;
    int rc;
    for (;; line = next) {
        if (line >= lim && line < end && *line != '\r' && *line != '\n') {
            rc = too_large(p); /* at the cap: only the empty line may come */
            break;
        }
        unsigned char *c = skip_token(line);
        if (c == line) {
            rc = line_end(p, c, end, &next,
                          is_ws(*c) ? "obs-fold or whitespace before a field line"
                                    : "invalid field name");
            if (rc > 0)
                *stop = (uint32_t)(next - s);
            break;
        }
        if ((rc = field_line(p, h, line, c, lim, &next)) <= 0) {
            /* A field line without its end is past the cap once the bytes reach it. */
            if (rc == 0 && p->scan >= HEAD_MAX_BYTES)
                rc = too_large(p);
            break;
        }
    }
    p->line_len = (uint32_t)(line - s);
    return rc;
}

static enum state refuse(h1_parser_t *p, int status, const char *why)
{
    bad(p, status, why);
    return S_ERROR;
}

/* Framing of a request (RFC 9112 §6.1, §6.3, §9.3; Host: §3.2); the state after its head. */
static enum state request_framing(h1_parser_t *p, const head_t *h, const struct facts *f)
{
    int http11 = h->minor >= 1;
    if (http11 ? f->hosts != 1 : f->hosts > 1)
        return refuse(p, 400, f->hosts ? "repeated Host" : "missing Host");
    if (f->hosts) {
        const field_t *fl = &h->fields[f->host];
        if (!valid_authority((const unsigned char *)h->bytes + fl->value, fl->value_len))
            return refuse(p, 400, "invalid Host");
    }
    if (f->close || (!http11 && !f->keep_alive))
        p->flags |= H1F_CLOSE;
    if (f->upgrade_token && f->upgrade)
        p->flags |= H1F_UPGRADE;
    if (http11 && f->expect_100)
        p->flags |= H1F_CONTINUE;
    if (f->codings)
        p->flags |= H1F_CODINGS;
    if (f->te) {
        const char *why = !http11            ? "Transfer-Encoding in an HTTP/1.0 request"
                          : f->cl            ? "Content-Length with Transfer-Encoding"
                          : !f->last_chunked ? "Transfer-Encoding does not end in chunked"
                          : f->chunked > 1   ? "chunked applied twice"
                                             : NULL;
        if (why)
            return refuse(p, 400, why);
        if (f->unknown)
            return refuse(p, 501, "unknown transfer coding");
        p->body = H1_BODY_CHUNKED;
        return S_SIZE0;
    }
    if (f->cl && f->length) {
        p->body = H1_BODY_LENGTH;
        return S_LENGTH;
    }
    return S_END;
}

/* Framing of a response (§6.3); the state after its head. */
static enum state response_framing(h1_parser_t *p, const head_t *h, const struct facts *f)
{
    unsigned status = h->status;
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

/* The head is complete: what its fields say, then the framing. */
static void head_done(h1_parser_t *p)
{
    head_t *h = p->head;
    struct facts f;
    memset(&f, 0, sizeof f);
    for (unsigned i = 0; i < h->nfields; i++)
        if (h->fields[i].id != F_OTHER && note(p, &f, h, i) < 0)
            return;
    p->flags = 0;
    p->body = H1_BODY_NONE;
    p->content_length = f.cl ? f.length : 0;
    p->remaining = f.length;
    p->line_len = 0;
    p->empty_lines = 0;
    p->state = p->kind == H1_REQUEST ? request_framing(p, h, &f) : response_framing(p, h, &f);
    if (p->state != S_LENGTH && p->state != S_ERROR)
        p->remaining = 0;
}

/* Appends d[0..n) to the raw section in h's storage; head_store's NUL stays after it. */
static int store(h1_parser_t *p, head_t *h, const unsigned char *d, size_t n)
{
    if (head_store(h, (const char *)d, n) < 0)
        return bad(p, 503, "out of memory");
    h->len--; /* the next copy overwrites the NUL: the raw section stays contiguous */
    p->scan += (uint32_t)n;
    return 0;
}

/* Copies d[0..n) (n > 0) into h's storage a step at a time and parses what is complete: the
 * start line (S_LINE), then the field lines (S_HEAD, S_TRAILERS) up to the empty line. The cap
 * is on the section as received (start line included, final empty line not). Bytes copied past
 * the empty line are not consumed. Returns the bytes consumed. */
static size_t collect(h1_parser_t *p, head_t *h, const unsigned char *d, size_t n)
{
    for (size_t taken = 0; taken < n;) {
        size_t k = n - taken < COPY_STEP ? n - taken : COPY_STEP;
        uint32_t base = p->scan, stop = 0;
        if (store(p, h, d + taken, k) < 0)
            return taken;
        /* What may be looked at: the cap, and the empty line just past it. */
        const unsigned char *s = (const unsigned char *)h->bytes, *all = s + p->scan;
        const unsigned char *lim = p->scan < HEAD_MAX_BYTES ? all : s + HEAD_MAX_BYTES;
        const unsigned char *end = p->scan < HEAD_MAX_BYTES + 2 ? all : s + HEAD_MAX_BYTES + 2;
        int rc = 1;
        if (p->state == S_LINE) {
            rc = p->kind == H1_REQUEST ? request_line(p, h, lim) : status_line(p, h, lim);
            if (rc == 0 && p->scan >= HEAD_MAX_BYTES) /* the line and its end are past the cap */
                rc = bad(p, p->kind == H1_REQUEST ? 414 : 431,
                         p->kind == H1_REQUEST ? "request line too long" : "head too large");
            if (rc > 0)
                p->state = S_HEAD;
        }
        if (rc > 0)
            rc = lines(p, h, lim, end, &stop);
        if ((rc > 0 && p->line_len > HEAD_MAX_BYTES) || (rc == 0 && end < all))
            rc = too_large(p);
        if (rc < 0)
            return taken + k;
        if (rc == 0) {
            taken += k;
            continue;
        }
        /* Complete: keep the section and its NUL, give back what was copied past it. */
        h->bytes[stop] = '\0';
        h->len = stop + 1;
        p->scan = stop;
        if (p->state == S_TRAILERS) {
            if (h->nfields)
                p->flags |= H1F_TRAILERS;
            p->state = S_END;
        } else {
            head_done(p);
        }
        return taken + (stop - base);
    }
    return n;
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
            } else if (c == '\n') { /* a field, counted as a collected one would be */
                p->saw_cr = 0;
                p->state = S_TL_LINE;
                p->flags |= H1F_TRAILERS;
                if (++p->remaining > HEAD_MAX_FIELDS) {
                    bad(p, 431, "trailers too large");
                    return i;
                }
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
        case S_HEAD:
            if (i == n)
                return event(ev, H1_NEED_MORE, i);
            i += collect(p, p->head, d + i, n - i);
            if (p->state != S_LINE && p->state != S_HEAD && p->state != S_ERROR)
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
