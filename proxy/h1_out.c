#include "proxy/h1_out.h"

#include <string.h>
#include <strings.h>

#include "http/h1_lines.h"

static inline int skipped(const field_t *f, const h1_framing_t *fr)
{
    if (f->id == F_OTHER) /* most fields */
        return f->hop;
    switch (f->id) {
    case F_TRANSFER_ENCODING: /* restated below from the coding list */
    case F_CONNECTION:
        return 1;
    case F_CONTENT_LENGTH:
        return !fr->keep_length;
    case F_UPGRADE: /* kept by the policy only for a protocol switch */
        return !fr->connection || strcmp(fr->connection, "upgrade") != 0;
    default:
        return f->hop;
    }
}

/* Whether the coding list to send needs ", chunked" after the head's own Transfer-Encoding
 * values (RFC 9112 §6.1: codings are kept from the sender, and the list must end in chunked);
 * *n is the bytes those values take, joined with ", ". */
static int te_values(const head_t *h, size_t *n)
{
    int last = -1;
    *n = 0;
    for (unsigned i = 0; i < h->nfields; i++) {
        if (h->fields[i].id != F_TRANSFER_ENCODING)
            continue;
        *n += (last >= 0 ? 2 : 0) + h->fields[i].value_len;
        last = (int)i;
    }
    if (last < 0)
        return 1;
    const char *v = field_value(h, (unsigned)last);
    size_t end = h->fields[last].value_len, start = end;
    while (start > 0 && v[start - 1] != ',')
        start--;
    size_t tlen = end - start;
    const char *t = trim_ows(v + start, &tlen);
    return !(tlen == 7 && strncasecmp(t, "chunked", 7) == 0);
}

static size_t put(char *out, size_t at, const char *s, size_t n)
{
    memcpy(out + at, s, n);
    return at + n;
}

/* What h1_put_lines writes of a head: the fields not skipped. */
static int kept(const field_t *f, const void *framing)
{
    return !skipped(f, framing);
}

static size_t put_u64(char *out, size_t at, uint64_t v)
{
    char tmp[24];
    size_t len = 0;
    do
        tmp[len++] = (char)('0' + v % 10);
    while ((v /= 10) > 0);
    while (len)
        out[at++] = tmp[--len];
    return at;
}

int h1_write_head(conn_t *c, const char *start, size_t start_len, const head_t *h,
                  const h1_framing_t *f)
{
    size_t te_len = 0;
    int add_chunked = f->chunked ? te_values(h, &te_len) : 0;
    /* h->wire counts every field's line (and the start line as received): at least what the
     * fields take here. */
    size_t size = start_len + h->wire + 2 + 64 + 40 + (f->chunked ? te_len + 40 : 0);
    buf_t *b = buf_new(&c->loop->bufs, size);
    if (!b)
        return UV_ENOMEM;
    char *o = b->data;
    size_t at = put(o, 0, start, start_len);
    at = h1_put_lines(o, at, h, kept, f);
    if (f->length >= 0) {
        at = put(o, at, "Content-Length: ", 16);
        at = put_u64(o, at, (uint64_t)f->length);
        at = put(o, at, "\r\n", 2);
    }
    if (f->chunked) {
        at = put(o, at, "Transfer-Encoding: ", 19);
        size_t first = at;
        for (unsigned i = 0; i < h->nfields; i++) {
            if (h->fields[i].id != F_TRANSFER_ENCODING)
                continue;
            if (at > first)
                at = put(o, at, ", ", 2);
            at = put(o, at, field_value(h, i), h->fields[i].value_len);
        }
        if (add_chunked)
            at = put(o, at, at > first ? ", chunked" : "chunked", at > first ? 9 : 7);
        at = put(o, at, "\r\n", 2);
    }
    if (f->connection) {
        at = put(o, at, "Connection: ", 12);
        at = put(o, at, f->connection, strlen(f->connection));
        at = put(o, at, "\r\n", 2);
    }
    at = put(o, at, "\r\n", 2);
    b->len = (uint32_t)at;
    conn_write(c, b, b->data, b->len);
    buf_unref(b);
    return 0;
}

size_t h1_chunk_line(size_t n, char out[24])
{
    static const char digits[] = "0123456789abcdef";
    char tmp[20];
    size_t len = 0, i = 0;
    do
        tmp[len++] = digits[n & 15];
    while ((n >>= 4) && len < sizeof tmp);
    while (len)
        out[i++] = tmp[--len];
    out[i++] = '\r';
    out[i++] = '\n';
    return i;
}

void h1_write_data(conn_t *c, int chunked, buf_t *b, const char *p, size_t n)
{
    if (n == 0)
        return;
    if (!chunked) {
        conn_write(c, b, p, n);
        return;
    }
    char line[24];
    conn_write_copy(c, line, h1_chunk_line(n, line));
    conn_write(c, b, p, n);
    conn_write(c, NULL, "\r\n", 2);
}

void h1_write_last_chunk(conn_t *c, const head_t *trailers)
{
    if (!trailers || trailers->nfields == 0) {
        conn_write(c, NULL, "0\r\n\r\n", 5);
        return;
    }
    static const h1_framing_t none = {.length = -1};
    h1_write_head(c, "0\r\n", 3, trailers, &none);
}
