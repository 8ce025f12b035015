/* AWS Signature Version 4 (docs.aws.amazon.com/IAM/latest/UserGuide/reference_sigv_create-
 * signed-request.html). The canonical request is streamed into SHA-256 as it is produced,
 * never built whole, so its size needs no cap; only the sort arrays are capped. */
#include "aws/sigv4.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <uv.h>

#include "base/err.h"

#define SHA256_LEN     32
#define HEX_LEN        (2 * SHA256_LEN)
#define DATE_LEN       16 /* YYYYMMDDTHHMMSSZ */
#define SCOPE_PART_MAX 64 /* region, service: several times what AWS uses */
#define ALGORITHM      "AWS4-HMAC-SHA256"

static const char HEX[] = "0123456789abcdef";
static const char HEX_UPPER[] = "0123456789ABCDEF"; /* percent escapes: SigV4 wants upper case */

/* Where canonical text goes. With `md`, buf is a small staging area flushed into the digest;
 * without, buf is the caller's output and running out of it is ERR_TOO_LARGE. The first error
 * sticks and later writes do nothing, so callers check once at the end. */
typedef struct sink {
    EVP_MD_CTX *md;
    char *buf;
    size_t len, cap;
    int err;
} sink_t;

static void flush(sink_t *s)
{
    if (s->len && !EVP_DigestUpdate(s->md, s->buf, s->len))
        s->err = UV_ENOMEM;
    s->len = 0;
}

static void put(sink_t *s, const void *p, size_t n)
{
    const char *c = p;
    while (n && !s->err) {
        if (s->len == s->cap) {
            if (!s->md) {
                s->err = ERR_TOO_LARGE;
                return;
            }
            flush(s);
            continue;
        }
        size_t k = n < s->cap - s->len ? n : s->cap - s->len;
        memcpy(s->buf + s->len, c, k);
        s->len += k;
        c += k;
        n -= k;
    }
}

static void put_str(sink_t *s, const char *str)
{
    put(s, str, strlen(str));
}

static void put_char(sink_t *s, char ch)
{
    put(s, &ch, 1);
}

static void hex(const unsigned char *in, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = HEX[in[i] >> 4];
        out[2 * i + 1] = HEX[in[i] & 15];
    }
    out[2 * n] = '\0';
}

/* RFC 3986 unreserved: the only bytes SigV4 leaves unencoded (besides '/' in paths). */
static int unreserved(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_' || c == '.' || c == '~';
}

static void put_escaped(sink_t *s, unsigned char c)
{
    char e[3] = {'%', HEX_UPPER[c >> 4], HEX_UPPER[c & 15]};
    put(s, e, 3);
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* RFC 9110 §5.6.2 tchar. */
static int tchar(unsigned char c)
{
    return unreserved(c) || (c && strchr("!#$%&'*+^`|", c) != NULL);
}

static int is_token(const char *s)
{
    if (!*s)
        return 0;
    for (; *s; s++)
        if (!tchar((unsigned char)*s))
            return 0;
    return 1;
}

/* A path or query that can go into a request line as it is: no whitespace, control bytes,
 * fragment or raw non-ASCII, and every '%' starts an escape (the query is decoded). */
static int target_ok(const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c <= ' ' || c >= 0x7f || c == '#')
            return 0;
        if (c == '%' && (hexval(s[1]) < 0 || hexval(s[2]) < 0))
            return 0;
    }
    return 1;
}

/* A field value that cannot break out of its line: control bytes other than HTAB refused
 * (RFC 9110 §5.5); obs-text (0x80-0xff) is passed through. */
static int value_ok(const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if ((c < ' ' && c != '\t') || c == 0x7f)
            return 0;
    }
    return 1;
}

/* Visible ASCII, nonempty, NUL-terminated within n bytes, none of `extra`. */
static int visible(const char *s, size_t n, const char *extra)
{
    size_t len = s ? strnlen(s, n) : 0;
    if (len == 0 || len == n)
        return 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= ' ' || c >= 0x7f || strchr(extra, c))
            return 0;
    }
    return 1;
}

/* ---- The canonical URI ---- */

static int dot_segment(const char *seg, const char *end, int dots)
{
    return end - seg == dots && (dots == 1 ? seg[0] == '.' : seg[0] == '.' && seg[1] == '.');
}

/* Whether the segments in [from, end) remove, with a ".." no later segment of theirs
 * absorbs, the segment just before `from`. */
static int popped(const char *from, const char *end)
{
    unsigned depth = 0;
    while (from < end) {
        const char *seg = from + 1; /* from points at a '/' */
        const char *next = memchr(seg, '/', (size_t)(end - seg));
        next = next ? next : end;
        if (dot_segment(seg, next, 2)) {
            if (depth == 0)
                return 1;
            depth--;
        } else if (next > seg && !dot_segment(seg, next, 1)) {
            depth++;
        }
        from = next;
    }
    return 0;
}

/* What botocore does for every service but S3 (and AWS checks): RFC 3986 §5.2.4 dot segments
 * removed, empty segments dropped, then each byte but unreserved ones encoded, so an escape
 * as sent is encoded again. A trailing '/' stays if any segment does. Quadratic in the number
 * of segments, which keeps it free of buffers; paths here have a handful. */
static void put_normalized_path(sink_t *s, const char *path)
{
    const char *end = path + strlen(path);
    int any = 0;
    put_char(s, '/');
    for (const char *seg = path + 1; seg <= end;) {
        const char *next = memchr(seg, '/', (size_t)(end - seg));
        next = next ? next : end;
        if (next > seg && !dot_segment(seg, next, 1) && !dot_segment(seg, next, 2) &&
            !popped(next, end)) {
            if (any)
                put_char(s, '/');
            for (const char *p = seg; p < next; p++) {
                if (unreserved((unsigned char)*p))
                    put_char(s, *p);
                else
                    put_escaped(s, (unsigned char)*p);
            }
            any = 1;
        }
        seg = next + 1;
    }
    if (any && end[-1] == '/')
        put_char(s, '/');
}

static void put_path(sink_t *s, const sigv4_request_t *r)
{
    const char *path = r->path && *r->path ? r->path : "/";
    if (r->flags & SIGV4_PATH_AS_IS)
        put_str(s, path);
    else
        put_normalized_path(s, path);
}

/* ---- The canonical query string ---- */

typedef struct param {
    const char *key, *value;
    size_t klen, vlen;
} param_t;

/* Yields, one character at a time, the SigV4 encoding of percent-encoded text: each byte
 * decoded, then written again as itself if unreserved, else as %XX. Sorting compares these
 * streams, so no encoded copy is ever stored. */
typedef struct recode {
    const char *p, *end;
    char out[3];
    unsigned n, i;
} recode_t;

static int recode_next(recode_t *e)
{
    if (e->i == e->n) {
        if (e->p == e->end)
            return -1;
        unsigned char c = (unsigned char)*e->p++;
        if (c == '%') { /* target_ok checked the two hex digits */
            c = (unsigned char)(hexval(e->p[0]) << 4 | hexval(e->p[1]));
            e->p += 2;
        }
        e->i = 0;
        e->n = unreserved(c) ? 1 : 3;
        e->out[0] = unreserved(c) ? (char)c : '%';
        e->out[1] = HEX_UPPER[c >> 4];
        e->out[2] = HEX_UPPER[c & 15];
    }
    return (unsigned char)e->out[e->i++];
}

static int recoded_cmp(const char *a, size_t an, const char *b, size_t bn)
{
    recode_t x = {.p = a, .end = a + an}, y = {.p = b, .end = b + bn};
    for (;;) {
        int ca = recode_next(&x), cb = recode_next(&y);
        if (ca != cb || ca < 0)
            return ca - cb;
    }
}

static void put_recoded(sink_t *s, const char *p, size_t n)
{
    recode_t e = {.p = p, .end = p + n};
    for (int c; (c = recode_next(&e)) >= 0;)
        put_char(s, (char)c);
}

/* Sorted by encoded name, then encoded value, as SigV4 orders repeated names. */
static int param_cmp(const void *a, const void *b)
{
    const param_t *x = a, *y = b;
    int d = recoded_cmp(x->key, x->klen, y->key, y->klen);
    return d ? d : recoded_cmp(x->value, x->vlen, y->value, y->vlen);
}

static int split_query(const char *q, param_t *out, size_t *n)
{
    *n = 0;
    while (*q) {
        size_t len = strcspn(q, "&");
        if (len > 0) {
            if (*n == SIGV4_MAX_PARAMS)
                return ERR_TOO_LARGE;
            const char *eq = memchr(q, '=', len);
            param_t *p = &out[(*n)++];
            p->key = q;
            p->klen = eq ? (size_t)(eq - q) : len;
            p->value = eq ? eq + 1 : q + len;
            p->vlen = eq ? len - p->klen - 1 : 0;
        }
        q += len + (q[len] == '&');
    }
    return 0;
}

static int put_query(sink_t *s, const char *query)
{
    param_t params[SIGV4_MAX_PARAMS];
    size_t n;
    int err = split_query(query ? query : "", params, &n);
    if (err)
        return err;
    qsort(params, n, sizeof params[0], param_cmp);
    for (size_t i = 0; i < n; i++) {
        if (i)
            put_char(s, '&');
        put_recoded(s, params[i].key, params[i].klen);
        put_char(s, '=');
        put_recoded(s, params[i].value, params[i].vlen);
    }
    return 0;
}

/* ---- Canonical headers ---- */

typedef struct field {
    const char *name, *value;
    unsigned order; /* position given: keeps repeats in the order sent */
} field_t;

/* Headers an intermediary may add, drop or rewrite (botocore's list, with all of proxy-*). */
static int never_signed(const char *name)
{
    static const char *const names[] = {
        "connection", "expect",     "keep-alive",      "te", "trailer", "transfer-encoding",
        "upgrade",    "user-agent", "x-amzn-trace-id",
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (!strcasecmp(name, names[i]))
            return 1;
    return !strncasecmp(name, "proxy-", 6);
}

/* Headers this signer writes (or, for host, takes from r->host): a second copy would be
 * signed as a repeat and sent twice. */
static int reserved(const char *name)
{
    static const char *const names[] = {
        "host", "authorization", "x-amz-date", "x-amz-security-token", "x-amz-content-sha256",
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (!strcasecmp(name, names[i]))
            return 1;
    return 0;
}

static int field_cmp(const void *a, const void *b)
{
    const field_t *x = a, *y = b;
    int d = strcasecmp(x->name, y->name);
    return d ? d : (x->order > y->order) - (x->order < y->order);
}

static void put_lower(sink_t *s, const char *name)
{
    for (; *name; name++)
        put_char(s, *name >= 'A' && *name <= 'Z' ? (char)(*name | 0x20) : *name);
}

/* SigV4's Trimall: leading and trailing SP/HTAB dropped, inner runs made one space. */
static void put_trimmed(sink_t *s, const char *v)
{
    int started = 0, gap = 0;
    for (; *v; v++) {
        if (*v == ' ' || *v == '\t') {
            gap = started;
            continue;
        }
        if (gap)
            put_char(s, ' ');
        put_char(s, *v);
        started = 1;
        gap = 0;
    }
}

/* The fields to sign, sorted: r's headers less the never-signed ones, plus host, x-amz-date and
 * the optional token and payload hash. Returns their count or a negative error. */
static int collect_fields(const sigv4_request_t *r, const aws_creds_t *c, const char *date,
                          const char *payload, field_t *f)
{
    unsigned n = 0;
    f[n++] = (field_t){"host", r->host, 0};
    f[n++] = (field_t){"x-amz-date", date, 0};
    if (c->token[0])
        f[n++] = (field_t){"x-amz-security-token", c->token, 0};
    if (r->flags & SIGV4_CONTENT_SHA256)
        f[n++] = (field_t){"x-amz-content-sha256", payload, 0};
    if (r->nheaders > SIGV4_MAX_HEADERS)
        return ERR_TOO_LARGE;
    for (unsigned i = 0; i < r->nheaders; i++) {
        const sigv4_header_t *h = &r->headers[i];
        if (!h->name || !h->value || !is_token(h->name) || !value_ok(h->value) || reserved(h->name))
            return UV_EINVAL;
        if (!never_signed(h->name))
            f[n++] = (field_t){h->name, h->value, i + 1};
    }
    qsort(f, n, sizeof f[0], field_cmp);
    return (int)n;
}

/* "name:value,value\n" per name, then the blank line ending the block. */
static void put_canonical_headers(sink_t *s, const field_t *f, int n)
{
    for (int i = 0; i < n; i++) {
        int repeat = i > 0 && !strcasecmp(f[i].name, f[i - 1].name);
        if (repeat) {
            put_char(s, ',');
        } else {
            if (i > 0)
                put_char(s, '\n');
            put_lower(s, f[i].name);
            put_char(s, ':');
        }
        put_trimmed(s, f[i].value);
    }
    put_str(s, "\n\n");
}

static void put_signed_headers(sink_t *s, const field_t *f, int n)
{
    for (int i = 0; i < n; i++) {
        if (i > 0 && !strcasecmp(f[i].name, f[i - 1].name))
            continue;
        if (i > 0)
            put_char(s, ';');
        put_lower(s, f[i].name);
    }
}

/* ---- Hashes, scope, signature ---- */

static int sha256_hex(const void *p, size_t n, char out[HEX_LEN + 1])
{
    unsigned char md[SHA256_LEN];
    if (!EVP_Digest(n ? p : "", n, md, NULL, EVP_sha256(), NULL))
        return UV_ENOMEM;
    hex(md, sizeof md, out);
    return 0;
}

/* Hex SHA-256 of the canonical request: method, URI, query, headers, signed list and payload
 * hash, one per line. */
static int hash_canonical_request(const sigv4_request_t *r, const field_t *f, int nf,
                                  const char *payload, char out[HEX_LEN + 1])
{
    char stage[512];
    sink_t s = {.md = EVP_MD_CTX_new(), .buf = stage, .cap = sizeof stage};
    if (!s.md || !EVP_DigestInit_ex(s.md, EVP_sha256(), NULL)) {
        EVP_MD_CTX_free(s.md);
        return UV_ENOMEM;
    }
    put_str(&s, r->method);
    put_char(&s, '\n');
    put_path(&s, r);
    put_char(&s, '\n');
    int err = put_query(&s, r->query);
    put_char(&s, '\n');
    put_canonical_headers(&s, f, nf);
    put_signed_headers(&s, f, nf);
    put_char(&s, '\n');
    put_str(&s, payload);
    flush(&s);
    unsigned char md[SHA256_LEN];
    if (!err && !s.err && !EVP_DigestFinal_ex(s.md, md, NULL))
        s.err = UV_ENOMEM;
    EVP_MD_CTX_free(s.md);
    if (err || s.err)
        return err ? err : s.err;
    hex(md, sizeof md, out);
    return 0;
}

/* "<YYYYMMDD>/<region>/<service>/aws4_request" */
static void put_scope(sink_t *s, const char *date, const char *region, const char *service)
{
    put(s, date, 8);
    put_char(s, '/');
    put_str(s, region);
    put_char(s, '/');
    put_str(s, service);
    put_str(s, "/aws4_request");
}

static int hmac(const void *key, size_t klen, const void *msg, size_t mlen,
                unsigned char out[SHA256_LEN])
{
    return HMAC(EVP_sha256(), key, (int)klen, msg, mlen, out, NULL) ? 0 : UV_ENOMEM;
}

/* The signing key is the HMAC chain "AWS4"+secret -> date -> region -> service ->
 * "aws4_request"; the signature is its HMAC of the string to sign. */
static int signature(const aws_creds_t *c, const char *date, const char *region,
                     const char *service, const char *sts, size_t sts_len, char out[HEX_LEN + 1])
{
    char secret[4 + sizeof c->secret_key];
    size_t slen = strlen(c->secret_key);
    memcpy(secret, "AWS4", 4);
    memcpy(secret + 4, c->secret_key, slen);
    unsigned char k[SHA256_LEN];
    int err = hmac(secret, 4 + slen, date, 8, k);
    OPENSSL_cleanse(secret, sizeof secret);
    const char *const chain[] = {region, service, "aws4_request"};
    for (size_t i = 0; i < 3 && !err; i++) {
        unsigned char next[SHA256_LEN]; /* HMAC() is not documented to allow key == out */
        err = hmac(k, sizeof k, chain[i], strlen(chain[i]), next);
        memcpy(k, next, sizeof k);
        OPENSSL_cleanse(next, sizeof next);
    }
    unsigned char sig[SHA256_LEN];
    if (!err)
        err = hmac(k, sizeof k, sts, sts_len, sig);
    OPENSSL_cleanse(k, sizeof k);
    if (!err)
        hex(sig, sizeof sig, out);
    return err;
}

static int sign_string(const aws_creds_t *c, const char *date, const char *region,
                       const char *service, const char *crhash, char out[HEX_LEN + 1])
{
    char sts[sizeof ALGORITHM + DATE_LEN + 2 * SCOPE_PART_MAX + HEX_LEN + 32];
    sink_t s = {.buf = sts, .cap = sizeof sts};
    put_str(&s, ALGORITHM "\n");
    put_str(&s, date);
    put_char(&s, '\n');
    put_scope(&s, date, region, service);
    put_char(&s, '\n');
    put_str(&s, crhash);
    return s.err ? s.err : signature(c, date, region, service, sts, s.len, out);
}

/* ---- The entry point ---- */

static int check_inputs(const sigv4_request_t *r, const aws_creds_t *c, const char *region,
                        const char *service)
{
    if (!r->method || !is_token(r->method) || !r->host || !visible(r->host, 1024, "/?#") ||
        (r->path && *r->path && (r->path[0] != '/' || !target_ok(r->path))) ||
        (r->query && !target_ok(r->query)) || (r->nheaders && !r->headers) ||
        (r->body_len && !r->body))
        return UV_EINVAL;
    /* The key id and scope parts go inside "Credential=<id>/<scope>," and the token is sent
     * as a header line: none may carry a separator or a line break. */
    if (!visible(c->access_key, sizeof c->access_key, "/,") ||
        strnlen(c->secret_key, sizeof c->secret_key) == sizeof c->secret_key || !c->secret_key[0] ||
        strnlen(c->token, sizeof c->token) == sizeof c->token ||
        (c->token[0] && !visible(c->token, sizeof c->token, "")) ||
        !visible(region, SCOPE_PART_MAX, "/,") || !visible(service, SCOPE_PART_MAX, "/,"))
        return UV_EINVAL;
    return 0;
}

static int format_date(time_t now, char out[DATE_LEN + 1])
{
    struct tm tm;
    if (!gmtime_r(&now, &tm) || tm.tm_year + 1900 < 1000 || tm.tm_year + 1900 > 9999)
        return UV_EINVAL;
    return strftime(out, DATE_LEN + 1, "%Y%m%dT%H%M%SZ", &tm) == DATE_LEN ? 0 : UV_EINVAL;
}

static void put_line(sink_t *s, const char *name, const char *value)
{
    put_str(s, name);
    put_str(s, ": ");
    put_str(s, value);
    put_str(s, "\r\n");
}

static int write_headers(const aws_creds_t *c, const char *date, const char *region,
                         const char *service, const char *payload, const field_t *f, int nf,
                         const char *sig, int with_payload, char *out, size_t outlen)
{
    sink_t s = {.buf = out, .cap = outlen - 1}; /* room for the NUL */
    put_line(&s, "X-Amz-Date", date);
    if (c->token[0])
        put_line(&s, "X-Amz-Security-Token", c->token);
    if (with_payload)
        put_line(&s, "X-Amz-Content-SHA256", payload);
    put_str(&s, "Authorization: " ALGORITHM " Credential=");
    put_str(&s, c->access_key);
    put_char(&s, '/');
    put_scope(&s, date, region, service);
    put_str(&s, ", SignedHeaders=");
    put_signed_headers(&s, f, nf);
    put_str(&s, ", Signature=");
    put_str(&s, sig);
    put_str(&s, "\r\n");
    out[s.err ? 0 : s.len] = '\0'; /* never a cut header */
    return s.err ? s.err : (int)s.len;
}

int sigv4_sign(const sigv4_request_t *r, const aws_creds_t *c, const char *region,
               const char *service, time_t now, char *out, size_t outlen)
{
    if (outlen == 0)
        return ERR_TOO_LARGE;
    out[0] = '\0';
    int err = check_inputs(r, c, region, service);
    char date[DATE_LEN + 1], payload[HEX_LEN + 1], crhash[HEX_LEN + 1], sig[HEX_LEN + 1];
    if (err || (err = format_date(now, date)) || (err = sha256_hex(r->body, r->body_len, payload)))
        return err;
    field_t f[SIGV4_MAX_HEADERS + 4];
    int nf = collect_fields(r, c, date, payload, f);
    if (nf < 0)
        return nf;
    if ((err = hash_canonical_request(r, f, nf, payload, crhash)) ||
        (err = sign_string(c, date, region, service, crhash, sig)))
        return err;
    return write_headers(c, date, region, service, payload, f, nf, sig,
                         r->flags & SIGV4_CONTENT_SHA256, out, outlen);
}
