/* Access log formats: Envoy's format strings compiled once per snapshot into literal pieces and
 * operators, and one line rendered from an entry straight into the caller's buffer (the
 * worker's slot). access_log.h has the contract, docs/access_log.md every operator. */
#include <arpa/inet.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "proxy/access_log_impl.h"

/* Envoy's default (SubstitutionFormatUtils::DEFAULT_FORMAT), what App Mesh writes without a
 * `format`. */
static const char default_format[] =
    "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" "
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% "
    "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" "
    "\"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n";

#define WHERE_MAX 320  /* a JSON path in a diagnostic */
#define SCRATCH   1024 /* one operator's text before it is copied into the line */
#define LIT_PAD   16   /* readable bytes after every literal: short ones are copied in one move */

enum op {
    OP_LITERAL,
    OP_START_TIME,
    OP_REQ,
    OP_RESP,
    OP_RESPONSE_CODE,
    OP_RESPONSE_FLAGS,
    OP_RESPONSE_CODE_DETAILS,
    OP_BYTES_RECEIVED,
    OP_BYTES_SENT,
    OP_DURATION,
    OP_REQUEST_DURATION,
    OP_RESPONSE_DURATION,
    OP_RESPONSE_TX_DURATION,
    OP_UPSTREAM_HOST,
    OP_UPSTREAM_CLUSTER,
    OP_UPSTREAM_TRANSPORT_FAILURE_REASON,
    OP_UPSTREAM_REQUEST_ATTEMPT_COUNT,
    OP_DOWNSTREAM_REMOTE_ADDRESS,
    OP_DOWNSTREAM_LOCAL_ADDRESS,
    OP_DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT,
    OP_DOWNSTREAM_LOCAL_PORT,
    OP_PROTOCOL,
    OP_HOSTNAME,
    OP_STREAM_ID,
};

/* How an operator's value is written: text as it is ('-' when absent); inside a JSON string
 * (escaped, '-' when absent); or as a whole JSON value (a number, a string, or null). */
enum mode { MODE_TEXT, MODE_JSON_STRING, MODE_JSON_TYPED };

enum pseudo {
    PSEUDO_NONE,
    PSEUDO_METHOD,
    PSEUDO_PATH,
    PSEUDO_AUTHORITY,
    PSEUDO_SCHEME,
    PSEUDO_STATUS,
    PSEUDO_OTHER
};

static const struct {
    const char *name;
    uint8_t op;
} simple_ops[] = {
    {"RESPONSE_CODE", OP_RESPONSE_CODE},
    {"RESPONSE_FLAGS", OP_RESPONSE_FLAGS},
    {"RESPONSE_CODE_DETAILS", OP_RESPONSE_CODE_DETAILS},
    {"BYTES_RECEIVED", OP_BYTES_RECEIVED},
    {"BYTES_SENT", OP_BYTES_SENT},
    {"DURATION", OP_DURATION},
    {"REQUEST_DURATION", OP_REQUEST_DURATION},
    {"RESPONSE_DURATION", OP_RESPONSE_DURATION},
    {"RESPONSE_TX_DURATION", OP_RESPONSE_TX_DURATION},
    {"UPSTREAM_HOST", OP_UPSTREAM_HOST},
    {"UPSTREAM_CLUSTER", OP_UPSTREAM_CLUSTER},
    {"UPSTREAM_TRANSPORT_FAILURE_REASON", OP_UPSTREAM_TRANSPORT_FAILURE_REASON},
    {"UPSTREAM_REQUEST_ATTEMPT_COUNT", OP_UPSTREAM_REQUEST_ATTEMPT_COUNT},
    {"DOWNSTREAM_REMOTE_ADDRESS", OP_DOWNSTREAM_REMOTE_ADDRESS},
    {"DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT", OP_DOWNSTREAM_REMOTE_ADDRESS},
    {"DOWNSTREAM_DIRECT_REMOTE_ADDRESS", OP_DOWNSTREAM_REMOTE_ADDRESS},
    {"DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT", OP_DOWNSTREAM_REMOTE_ADDRESS},
    {"DOWNSTREAM_LOCAL_ADDRESS", OP_DOWNSTREAM_LOCAL_ADDRESS},
    {"DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT", OP_DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT},
    {"DOWNSTREAM_LOCAL_PORT", OP_DOWNSTREAM_LOCAL_PORT},
    {"PROTOCOL", OP_PROTOCOL},
    {"HOSTNAME", OP_HOSTNAME},
    {"STREAM_ID", OP_STREAM_ID},
};

/* Envoy operators remora has no data for yet: refused by name rather than printed as '-'
 * forever, so a migrated format says what it would lose. */
static const char unsupported_ops[] =
    " UPSTREAM_LOCAL_ADDRESS TRAILER CONNECTION_ID ROUTE_NAME GRPC_STATUS LOCAL_REPLY_BODY"
    " DYNAMIC_METADATA CLUSTER_METADATA FILTER_STATE REQUESTED_SERVER_NAME REQUEST_TX_DURATION"
    " CONNECTION_TERMINATION_DETAILS DOWNSTREAM_REMOTE_PORT UPSTREAM_WIRE_BYTES_SENT"
    " UPSTREAM_WIRE_BYTES_RECEIVED DOWNSTREAM_PEER_URI_SAN DOWNSTREAM_PEER_SUBJECT"
    " DOWNSTREAM_TLS_VERSION DOWNSTREAM_TLS_CIPHER REQUEST_HEADERS_BYTES RESPONSE_HEADERS_BYTES ";

/* Envoy's short flag names, in bit order (enum response_flag). */
static const char *const flag_names[RF_COUNT] = {"UH", "UT", "LR",  "UF", "UC",  "UO",
                                                 "NR", "DC", "URX", "SI", "DPE", "UPE"};

/* A piece of START_TIME(FMT): a strftime format, or (strf NULL) %s or %Nf. */
typedef struct tseg {
    const char *strf;
    uint8_t digits; /* %Nf: N; 0: %s */
} tseg_t;

typedef struct piece {
    uint8_t op, mode;
    uint8_t id[2];     /* REQ/RESP: field_classify of each name ([1]: the alternative) */
    uint8_t pseudo[2]; /* enum pseudo */
    uint8_t slot[2];   /* RESP: the index of the kept value */
    uint8_t nnames;    /* REQ/RESP: 1, or 2 with an alternative */
    uint32_t max;      /* :N (bytes), else UINT32_MAX */
    const char *s[2];  /* OP_LITERAL: the text; REQ/RESP: the names */
    uint32_t n[2];
    const tseg_t *tsegs; /* START_TIME(FMT); NULL: Envoy's default format */
    unsigned ntsegs;
} piece_t;

/* ---- text helpers ---- */

static size_t u64_text(uint64_t v, char *out)
{
    char tmp[20];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    return n;
}

/* The length of a valid UTF-8 sequence at s (n bytes left), or 0. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    size_t len = s[0] >= 0xc2 && s[0] <= 0xdf   ? 2
                 : s[0] >= 0xe0 && s[0] <= 0xef ? 3
                 : s[0] >= 0xf0 && s[0] <= 0xf4 ? 4
                                                : 0;
    if (!len || len > n)
        return 0;
    for (size_t i = 1; i < len; i++)
        if ((s[i] & 0xc0) != 0x80)
            return 0;
    if ((s[0] == 0xe0 && s[1] < 0xa0) || (s[0] == 0xed && s[1] >= 0xa0) ||
        (s[0] == 0xf0 && s[1] < 0x90) || (s[0] == 0xf4 && s[1] >= 0x90))
        return 0; /* overlong, surrogate, beyond U+10FFFF */
    return len;
}

/* JSON string contents (RFC 8259 §7): quote, backslash and controls escaped; a byte that is not
 * valid UTF-8 is taken as Latin-1 (\u00XX), so every line stays valid JSON. Returns the end, or
 * NULL when out..end is too small. */
static char *json_escape(char *out, char *end, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)s, *e = p + n;
    while (p < e) {
        unsigned c = *p;
        if (c >= 0x20 && c != '"' && c != '\\' && c < 0x7f) {
            if (out == end)
                return NULL;
            *out++ = (char)c;
            p++;
            continue;
        }
        size_t u = c >= 0x80 ? utf8_len(p, (size_t)(e - p)) : 0;
        if (u) {
            if ((size_t)(end - out) < u)
                return NULL;
            memcpy(out, p, u);
            out += u;
            p += u;
            continue;
        }
        const char *esc = c == '"'    ? "\\\""
                          : c == '\\' ? "\\\\"
                          : c == '\n' ? "\\n"
                          : c == '\r' ? "\\r"
                          : c == '\t' ? "\\t"
                          : c == '\b' ? "\\b"
                          : c == '\f' ? "\\f"
                                      : NULL;
        if (esc) {
            if (end - out < 2)
                return NULL;
            memcpy(out, esc, 2);
            out += 2;
        } else {
            if (end - out < 6)
                return NULL;
            memcpy(out, "\\u00", 4);
            out[4] = hex[c >> 4];
            out[5] = hex[c & 15];
            out += 6;
        }
        p++;
    }
    return out;
}

/* ---- the compiler ---- */

typedef struct compiler {
    access_log_t *l;
    piece_t *pieces;
    unsigned n, cap;
    enum mode mode;
    char where[WHERE_MAX]; /* the JSON path of the format string being compiled */
    char err[300];
} compiler_t;

static int fail(compiler_t *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int fail(compiler_t *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err, sizeof c->err, fmt, ap);
    va_end(ap);
    return -1;
}

static int oom(compiler_t *c)
{
    return fail(c, "out of memory");
}

static piece_t *add_piece(compiler_t *c, enum op op)
{
    if (c->n == c->cap) {
        unsigned cap = c->cap ? c->cap * 2 : 32;
        piece_t *p = realloc(c->pieces, cap * sizeof *p);
        if (!p)
            return NULL;
        c->pieces = p;
        c->cap = cap;
    }
    piece_t *p = &c->pieces[c->n++];
    memset(p, 0, sizeof *p);
    p->op = (uint8_t)op;
    p->mode = (uint8_t)c->mode;
    p->max = UINT32_MAX;
    return p;
}

/* Literal text, escaped once here when it goes inside a JSON string. */
static int add_literal(compiler_t *c, const char *s, size_t n, int escape)
{
    if (!n)
        return 0;
    char *copy = arena_alloc(&c->l->strings, (escape ? n * 6 : n) + LIT_PAD);
    piece_t *p = copy ? add_piece(c, OP_LITERAL) : NULL;
    if (!p)
        return oom(c);
    size_t len = n;
    if (escape)
        len = (size_t)(json_escape(copy, copy + n * 6, s, n) - copy);
    else
        memcpy(copy, s, n);
    p->s[0] = copy;
    p->n[0] = (uint32_t)len;
    return 0;
}

/* REQ(X?Y) / RESP(X?Y): a header name and an optional alternative. `op` is the operator as
 * written, for messages. */
static int header_names(compiler_t *c, piece_t *p, const char *arg, size_t n, const char *op,
                        int oplen, size_t pos)
{
    static const char *const pseudos[] = {":METHOD", ":PATH", ":AUTHORITY", ":SCHEME", ":STATUS"};
    const char *q = memchr(arg, '?', n);
    if (q && memchr(q + 1, '?', (size_t)(arg + n - q - 1)))
        return fail(c, "%.*s at position %zu names more than one alternative header", oplen, op,
                    pos);
    p->nnames = q ? 2 : 1;
    for (unsigned k = 0; k < p->nnames; k++) {
        const char *name = k ? q + 1 : arg;
        size_t len = k ? (size_t)(arg + n - q - 1) : q ? (size_t)(q - arg) : n;
        if (!len)
            return fail(c, "%.*s at position %zu has an empty header name", oplen, op, pos);
        if (!(p->s[k] = arena_strndup(&c->l->strings, name, len)))
            return oom(c);
        p->n[k] = (uint32_t)len;
        if (name[0] == ':') {
            p->pseudo[k] = PSEUDO_OTHER; /* Envoy knows no other: always absent */
            for (unsigned i = 0; i < 5; i++)
                if (strlen(pseudos[i]) == len && strncasecmp(pseudos[i], name, len) == 0)
                    p->pseudo[k] = (uint8_t)(PSEUDO_METHOD + i);
            continue;
        }
        int hop;
        p->id[k] = (uint8_t)field_classify(name, len, &hop);
        if (p->op != OP_RESP)
            continue;
        access_log_t *l = c->l;
        unsigned i = 0;
        while (i < l->nresp && (l->resp[i].n != len || strncasecmp(l->resp[i].s, name, len) != 0))
            i++;
        if (i == MAX_RESP)
            return fail(c, "%.*s at position %zu: a format may name at most %d RESP headers", oplen,
                        op, pos, MAX_RESP);
        if (i == l->nresp)
            l->resp[l->nresp++] = (resp_name_t){p->s[k], (uint32_t)len, p->id[k]};
        p->slot[k] = (uint8_t)i;
    }
    return 0;
}

/* START_TIME(FMT): strftime pieces split around %s and %Nf (Envoy's additions). */
static int start_time_format(compiler_t *c, piece_t *p, const char *f, size_t n)
{
    tseg_t *segs = arena_alloc(&c->l->strings, (n + 1) * sizeof *segs);
    if (!segs)
        return oom(c);
    unsigned k = 0;
    size_t from = 0, i = 0;
    while (i < n) {
        size_t spec = 0; /* the length of a %s, %f or %Nf at i */
        uint8_t digits = 0;
        if (f[i] == '%' && i + 1 < n) {
            char d = f[i + 1];
            if (d == 's' || d == 'f') {
                spec = 2;
                digits = d == 'f' ? 9 : 0;
            } else if (d >= '1' && d <= '9' && i + 2 < n && f[i + 2] == 'f') {
                spec = 3;
                digits = (uint8_t)(d - '0');
            }
        }
        if (!spec) {
            i += f[i] == '%' && i + 1 < n ? 2 : 1; /* "%%" and the rest stay strftime's */
            continue;
        }
        if (i > from && !(segs[k++].strf = arena_strndup(&c->l->strings, f + from, i - from)))
            return oom(c);
        segs[k++] = (tseg_t){NULL, digits};
        i += spec;
        from = i;
    }
    if (n > from && !(segs[k++].strf = arena_strndup(&c->l->strings, f + from, n - from)))
        return oom(c);
    p->tsegs = segs;
    p->ntsegs = k;
    return 0;
}

static int is_name_char(char ch)
{
    return (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '_';
}

/* One %NAME(ARG):N% at s[at], in Envoy's grammar (a name of [A-Z0-9_], an argument without
 * ')', a decimal length). Sets *end past it. */
static int command(compiler_t *c, const char *s, size_t n, size_t at, size_t *end)
{
    size_t i = at + 1, arg = 0, arg_len = 0;
    int has_arg = 0, has_max = 0;
    uint64_t max = 0;
    while (i < n && is_name_char(s[i]))
        i++;
    const char *name = s + at + 1;
    size_t nlen = i - at - 1;
    if (!nlen)
        return fail(c,
                    "'%%' at position %zu does not start a command operator (Envoy's formats "
                    "have no escape for a literal '%%')",
                    at);
    if (i < n && s[i] == '(') {
        const char *close = memchr(s + i, ')', n - i);
        if (!close)
            return fail(c, "%%%.*s( at position %zu has no closing ')'", (int)nlen, name, at);
        has_arg = 1;
        arg = i + 1;
        arg_len = (size_t)(close - (s + arg));
        i = (size_t)(close - s) + 1;
    }
    if (i < n && s[i] == ':') {
        size_t digits = ++i;
        while (i < n && s[i] >= '0' && s[i] <= '9' && max <= UINT32_MAX)
            max = max * 10 + (uint64_t)(s[i++] - '0');
        if (i == digits || max > UINT32_MAX)
            return fail(c, "%%%.*s at position %zu: ':' must be followed by a length", (int)nlen,
                        name, at);
        has_max = 1;
    }
    if (i >= n || s[i] != '%')
        return fail(c, "%%%.*s at position %zu is not closed by '%%'", (int)nlen, name, at);
    *end = i + 1;
    const char *op = s + at;
    int oplen = (int)(*end - at);
#define IS(lit) (nlen == sizeof(lit) - 1 && memcmp(name, lit, nlen) == 0)
    if (IS("REQ") || IS("RESP")) {
        piece_t *p = add_piece(c, IS("REQ") ? OP_REQ : OP_RESP);
        if (!p)
            return oom(c);
        if (!arg_len)
            return fail(c, "%.*s at position %zu needs a header name, as in %%%.*s(USER-AGENT)%%",
                        oplen, op, at, (int)nlen, name);
        p->max = has_max ? (uint32_t)max : UINT32_MAX;
        return header_names(c, p, s + arg, arg_len, op, oplen, at);
    }
    if (has_max)
        return fail(c, "%.*s at position %zu: only REQ and RESP take a :length", oplen, op, at);
    if (IS("START_TIME")) {
        piece_t *p = add_piece(c, OP_START_TIME);
        if (!p)
            return oom(c);
        return arg_len ? start_time_format(c, p, s + arg, arg_len) : 0;
    }
#undef IS
    for (size_t k = 0; k < sizeof simple_ops / sizeof simple_ops[0]; k++) {
        if (strlen(simple_ops[k].name) != nlen || memcmp(simple_ops[k].name, name, nlen) != 0)
            continue;
        if (has_arg)
            return fail(c, "%.*s at position %zu takes no argument", oplen, op, at);
        return add_piece(c, (enum op)simple_ops[k].op) ? 0 : oom(c);
    }
    for (const char *u = unsupported_ops; (u = strstr(u, " ")) && u[1]; u++)
        if (strncmp(u + 1, name, nlen) == 0 && u[1 + nlen] == ' ')
            return fail(c, "%.*s at position %zu is an Envoy operator remora does not support",
                        oplen, op, at);
    return fail(c, "unknown command operator %.*s at position %zu", oplen, op, at);
}

/* A format string: literals and operators, in order. */
static int compile_string(compiler_t *c, const char *s, size_t n)
{
    size_t lit = 0, i = 0;
    while (i < n) {
        if (s[i] != '%') {
            i++;
            continue;
        }
        if (add_literal(c, s + lit, i - lit, c->mode != MODE_TEXT) != 0 ||
            command(c, s, n, i, &i) != 0)
            return -1;
        lit = i;
    }
    return add_literal(c, s + lit, n - lit, c->mode != MODE_TEXT);
}

/* format.json: one object per line, keys in the given order; a value that is one operator
 * is typed (a number, a string, or null when absent), any other value is a string. */
static int compile_json(compiler_t *c, const cfg_access_log_t *cfg)
{
    for (unsigned i = 0; i < cfg->njson; i++) {
        const cfg_json_field_t *f = &cfg->json[i];
        snprintf(c->where, sizeof c->where, "%s.format.json[%u].value", cfg->where, i);
        c->mode = MODE_TEXT;
        if (add_literal(c, i ? ",\"" : "{\"", 2, 0) != 0 ||
            add_literal(c, f->key, strlen(f->key), 1) != 0 || add_literal(c, "\":\"", 3, 0) != 0)
            return -1;
        unsigned quote = c->n - 1, first = c->n;
        c->mode = MODE_JSON_STRING;
        if (compile_string(c, f->value, strlen(f->value)) != 0)
            return -1;
        if (c->n == first + 1 && c->pieces[first].op != OP_LITERAL) {
            c->pieces[first].mode = MODE_JSON_TYPED;
            c->pieces[quote].n[0]--; /* `":"` becomes `":` */
        } else if (add_literal(c, "\"", 1, 0) != 0) {
            return -1;
        }
    }
    c->mode = MODE_TEXT;
    return add_literal(c, "}\n", 2, 0);
}

/* Adjacent literals become one. */
static int merge_literals(compiler_t *c)
{
    unsigned out = 0;
    for (unsigned i = 0; i < c->n;) {
        unsigned j = i + 1;
        size_t len = c->pieces[i].n[0];
        while (c->pieces[i].op == OP_LITERAL && j < c->n && c->pieces[j].op == OP_LITERAL)
            len += c->pieces[j++].n[0];
        piece_t p = c->pieces[i];
        if (j > i + 1) {
            char *s = arena_alloc(&c->l->strings, len + LIT_PAD);
            if (!s)
                return -1;
            size_t at = 0;
            for (unsigned k = i; k < j; k++) {
                memcpy(s + at, c->pieces[k].s[0], c->pieces[k].n[0]);
                at += c->pieces[k].n[0];
            }
            p.s[0] = s;
            p.n[0] = (uint32_t)len;
        }
        c->pieces[out++] = p;
        i = j;
    }
    c->n = out;
    return 0;
}

/* ---- values ---- */

static int64_t find_field(const head_t *h, uint8_t id, const char *name, uint32_t n)
{
    int64_t any = -1; /* a field remora replaced (hop set) counts only if no other has the name */
    for (unsigned i = 0; i < h->nfields; i++) {
        const field_t *f = &h->fields[i];
        if (id != F_OTHER ? f->id != id
                          : f->name_len != n || strncasecmp(field_name(h, i), name, n) != 0)
            continue;
        if (!f->hop)
            return i;
        if (any < 0)
            any = i;
    }
    return any;
}

static int req_value(const piece_t *pc, unsigned k, const access_log_entry_t *e, const char **v,
                     size_t *n)
{
    const head_t *h = e->req;
    if (!h)
        return 0;
    switch (pc->pseudo[k]) {
    case PSEUDO_METHOD:
        *v = head_str(h, h->method_text);
        *n = h->method_len;
        return 1;
    case PSEUDO_PATH:
        *v = e->path ? e->path : head_str(h, h->target);
        *n = e->path ? e->path_len : h->target_len;
        return 1;
    case PSEUDO_AUTHORITY:
        if (e->authority) {
            *v = e->authority;
            *n = e->authority_len;
            return 1;
        }
        break; /* the Host */
    case PSEUDO_SCHEME:
        *v = e->secure ? "https" : "http";
        *n = strlen(*v);
        return 1;
    case PSEUDO_STATUS:
    case PSEUDO_OTHER:
        return 0;
    default:
        break;
    }
    uint8_t id = pc->pseudo[k] == PSEUDO_AUTHORITY ? F_HOST : pc->id[k];
    int64_t i = find_field(h, id, pc->s[k], pc->n[k]);
    if (i >= 0) {
        *v = field_value(h, (unsigned)i);
        *n = h->fields[i].value_len;
        return 1;
    }
    if (id == F_X_REQUEST_ID && e->request_id && *e->request_id) { /* Envoy sets one */
        *v = e->request_id;
        *n = strlen(e->request_id);
        return 1;
    }
    return 0;
}

static size_t flags_text(uint32_t flags, char *out)
{
    size_t n = 0;
    for (unsigned i = 0; i < RF_COUNT; i++) {
        if (!(flags & (1u << i)))
            continue;
        if (n)
            out[n++] = ',';
        size_t len = strlen(flag_names[i]);
        memcpy(out + n, flag_names[i], len);
        n += len;
    }
    if (!n)
        out[n++] = '-';
    return n;
}

static const struct tm *start_tm(int64_t sec, struct tm *tm)
{
    time_t t = (time_t)sec;
    return gmtime_r(&t, tm);
}

/* Envoy's default: 2016-04-15T20:17:00.310Z, the second's text cached per worker. */
static size_t start_time_default(access_log_worker_t *aw, const access_log_entry_t *e, char *out)
{
    if (aw->cache_sec != e->start_sec) {
        struct tm tm;
        if (!start_tm(e->start_sec, &tm) ||
            !(aw->cache_len = (unsigned)strftime(aw->cache_text, sizeof aw->cache_text,
                                                 "%Y-%m-%dT%H:%M:%S", &tm)))
            return 0;
        aw->cache_sec = e->start_sec;
    }
    size_t n = aw->cache_len;
    memcpy(out, aw->cache_text, n);
    unsigned ms = e->start_nsec / 1000000;
    out[n++] = '.';
    out[n++] = (char)('0' + ms / 100);
    out[n++] = (char)('0' + ms / 10 % 10);
    out[n++] = (char)('0' + ms % 10);
    out[n++] = 'Z';
    return n;
}

static size_t start_time_custom(access_log_worker_t *aw, const piece_t *pc,
                                const access_log_entry_t *e, char *out, size_t cap)
{
    struct tm tm;
    (void)aw;
    if (!start_tm(e->start_sec, &tm))
        return 0;
    size_t n = 0;
    for (unsigned i = 0; i < pc->ntsegs; i++) {
        const tseg_t *t = &pc->tsegs[i];
        if (t->strf) {
            n += strftime(out + n, cap - n, t->strf, &tm); /* 0 when it does not fit */
        } else if (!t->digits) {
            if (cap - n < 21)
                return n;
            n += e->start_sec < 0 ? 0 : u64_text((uint64_t)e->start_sec, out + n);
        } else {
            char ns[10];
            snprintf(ns, sizeof ns, "%09u", e->start_nsec % 1000000000u);
            if (cap - n < t->digits)
                return n;
            memcpy(out + n, ns, t->digits);
            n += t->digits;
        }
    }
    return n;
}

static size_t sockaddr_text(const struct sockaddr *sa, int with_ip, int with_port, char *out)
{
    char ip[INET6_ADDRSTRLEN] = "";
    unsigned port;
    int v6 = sa->sa_family == AF_INET6;
    if (v6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)(const void *)sa;
        inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof ip);
        port = ntohs(a->sin6_port);
    } else if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)(const void *)sa;
        inet_ntop(AF_INET, &a->sin_addr, ip, sizeof ip);
        port = ntohs(a->sin_port);
    } else {
        return 0;
    }
    if (!with_ip)
        return (size_t)snprintf(out, 8, "%u", port);
    if (!with_port)
        return (size_t)snprintf(out, INET6_ADDRSTRLEN, "%s", ip);
    return (size_t)snprintf(out, INET6_ADDRSTRLEN + 10, v6 ? "[%s]:%u" : "%s:%u", ip, port);
}

/* An operator's value: 1 with (*v, *n), pointing into the entry or into tmp[SCRATCH]; *num
 * when it is a number (typed JSON). 0 when absent. */
static int value(const access_log_t *l, access_log_worker_t *aw, const piece_t *pc,
                 const access_log_entry_t *e, char *tmp, const char **v, size_t *n, int *num)
{
    const char *s = NULL;
    int64_t ms = -1;
    *num = 0;
    *v = tmp;
    switch ((enum op)pc->op) {
    case OP_START_TIME:
        *n =
            pc->tsegs ? start_time_custom(aw, pc, e, tmp, SCRATCH) : start_time_default(aw, e, tmp);
        return 1;
    case OP_REQ:
        for (unsigned k = 0; k < pc->nnames; k++)
            if (req_value(pc, k, e, v, n))
                return 1;
        return 0;
    case OP_RESP:
        for (unsigned k = 0; k < pc->nnames; k++) {
            if (pc->pseudo[k] == PSEUDO_STATUS && e->status) {
                *n = u64_text(e->status, tmp);
                return 1;
            }
            if (!pc->pseudo[k] && e->resp && e->resp[pc->slot[k]].p) {
                *v = e->resp[pc->slot[k]].p;
                *n = e->resp[pc->slot[k]].n;
                return 1;
            }
        }
        return 0;
    case OP_RESPONSE_CODE:
        *num = 1;
        *n = u64_text(e->status, tmp);
        return 1;
    case OP_RESPONSE_FLAGS:
        *n = flags_text(e->flags, tmp);
        return 1;
    case OP_BYTES_RECEIVED:
    case OP_BYTES_SENT:
    case OP_UPSTREAM_REQUEST_ATTEMPT_COUNT:
        *num = 1;
        *n = u64_text(pc->op == OP_BYTES_RECEIVED ? e->bytes_received
                      : pc->op == OP_BYTES_SENT   ? e->bytes_sent
                                                  : e->attempts,
                      tmp);
        return 1;
    case OP_DURATION:
        ms = e->duration_ms;
        break;
    case OP_REQUEST_DURATION:
        ms = e->request_ms;
        break;
    case OP_RESPONSE_DURATION:
        ms = e->response_ms;
        break;
    case OP_RESPONSE_TX_DURATION:
        ms = e->response_ms >= 0 && e->duration_ms >= e->response_ms
                 ? e->duration_ms - e->response_ms
                 : -1;
        break;
    case OP_RESPONSE_CODE_DETAILS:
        s = e->details;
        break;
    case OP_UPSTREAM_HOST:
        s = e->upstream_host;
        break;
    case OP_UPSTREAM_CLUSTER:
        s = e->upstream_cluster;
        break;
    case OP_UPSTREAM_TRANSPORT_FAILURE_REASON:
        s = e->upstream_failure;
        break;
    case OP_DOWNSTREAM_REMOTE_ADDRESS:
        s = e->client_ip;
        break;
    case OP_DOWNSTREAM_LOCAL_ADDRESS:
    case OP_DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT:
    case OP_DOWNSTREAM_LOCAL_PORT:
        if (!e->local)
            return 0;
        *n = sockaddr_text(e->local, pc->op != OP_DOWNSTREAM_LOCAL_PORT,
                           pc->op == OP_DOWNSTREAM_LOCAL_ADDRESS, tmp);
        return *n > 0;
    case OP_PROTOCOL: /* Envoy's names: HTTP/1.0, HTTP/1.1, HTTP/2 */
        if (!e->req)
            return 0;
        s = e->req->major >= 2 ? "HTTP/2" : e->req->minor ? "HTTP/1.1" : "HTTP/1.0";
        break;
    case OP_HOSTNAME:
        s = l->hostname[0] ? l->hostname : NULL;
        break;
    case OP_STREAM_ID:
        s = e->request_id;
        break;
    case OP_LITERAL:
        return 0;
    }
    if (ms >= 0) {
        *num = 1;
        *n = u64_text((uint64_t)ms, tmp);
        return 1;
    }
    if (!s || !*s)
        return 0;
    *v = s;
    *n = strlen(s);
    return 1;
}

size_t access_log_format(const access_log_t *l, access_log_worker_t *aw,
                         const access_log_entry_t *e, char *out, size_t cap)
{
    char *p = out, *end = out + cap;
    char tmp[SCRATCH];
    for (unsigned i = 0; i < l->npieces; i++) {
        const piece_t *pc = &l->pieces[i];
        const char *v;
        size_t n;
        int num;
        if (pc->op == OP_LITERAL) {
            n = pc->n[0];
            if (n <= LIT_PAD && end - p >= LIT_PAD)
                memcpy(p, pc->s[0], LIT_PAD); /* one wide move; the rest is written over */
            else if ((size_t)(end - p) >= n)
                memcpy(p, pc->s[0], n);
            else
                return 0;
            p += n;
            continue;
        }
        /* Text computed for the line (a number, a time) is made in place when there is room. */
        char *scratch = pc->mode == MODE_TEXT && end - p >= SCRATCH ? p : tmp;
        if (!value(l, aw, pc, e, scratch, &v, &n, &num)) {
            v = pc->mode == MODE_JSON_TYPED ? "null" : "-";
            n = pc->mode == MODE_JSON_TYPED ? 4 : 1;
            num = 1; /* written as it is */
        } else if (n > pc->max) {
            n = pc->max;
        }
        if (pc->mode == MODE_TEXT || num) {
            if ((size_t)(end - p) < n)
                return 0;
            if (v != p)
                memcpy(p, v, n);
            p += n;
            continue;
        }
        int quoted = pc->mode == MODE_JSON_TYPED; /* else inside a string the format quotes */
        if (quoted && p == end)
            return 0;
        if (quoted)
            *p++ = '"';
        if (!(p = json_escape(p, end, v, n)) || (quoted && p == end))
            return 0;
        if (quoted)
            *p++ = '"';
    }
    return (size_t)(p - out);
}

access_log_value_t *access_log_keep_response(const access_log_t *l, const head_t *h, arena_t *a)
{
    if (!l->nresp)
        return NULL;
    access_log_value_t *v = arena_alloc(a, l->nresp * sizeof *v);
    for (unsigned k = 0; v && k < l->nresp; k++) {
        int64_t i = find_field(h, l->resp[k].id, l->resp[k].s, l->resp[k].n);
        v[k].n = i >= 0 ? h->fields[i].value_len : 0;
        v[k].p = i >= 0 ? arena_strndup(a, field_value(h, (unsigned)i), v[k].n) : NULL;
    }
    return v;
}

int access_log_compile(access_log_t *l, const cfg_access_log_t *cfg, char *where, size_t wcap,
                       char *err, size_t ecap)
{
    compiler_t c = {.l = l, .mode = MODE_TEXT};
    snprintf(c.where, sizeof c.where, "%s%s", cfg->where,
             cfg->format == ACCESS_LOG_DEFAULT ? "" : ".format.text");
    const char *text = cfg->format == ACCESS_LOG_TEXT ? cfg->text : default_format;
    int rc = cfg->format == ACCESS_LOG_JSON ? compile_json(&c, cfg)
                                            : compile_string(&c, text, strlen(text));
    if (rc == 0 && merge_literals(&c) != 0)
        rc = oom(&c);
    l->pieces = c.pieces;
    l->npieces = c.n;
    snprintf(where, wcap, "%s", c.where);
    snprintf(err, ecap, "%s", c.err);
    return rc;
}
