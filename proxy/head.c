#include "proxy/head.h"

#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "base/err.h"

#define BYTES_INITIAL  1024
#define FIELDS_INITIAL 16
/* The storage holds each piece once plus its NUL, which is never more than the wire form (": "
 * and CRLF are longer than two NULs), except for a raw head parsed in place (its own line
 * ends). Twice the wire cap bounds it with room for a codec that edits a head. */
#define BYTES_MAX (2 * HEAD_MAX_BYTES)

void head_init(head_t *h)
{
    h->bytes = NULL;
    h->cap = 0;
    h->fields = NULL;
    h->fields_cap = 0;
    head_reset(h);
}

void head_reset(head_t *h)
{
    h->len = h->wire = 0;
    h->nfields = 0;
    h->method = HTTP_OTHER;
    h->method_text = h->method_len = 0;
    h->target = h->target_len = 0;
    h->status = 0;
    h->reason = h->reason_len = 0;
    h->major = h->minor = 0;
}

void head_free(head_t *h)
{
    free(h->bytes);
    free(h->fields);
    head_init(h);
}

void head_swap(head_t *a, head_t *b)
{
    head_t t = *a;
    *a = *b;
    *b = t;
}

/* Makes room for n more bytes of storage; 0, ERR_TOO_LARGE or UV_ENOMEM. */
static int reserve(head_t *h, size_t n)
{
    size_t need = (size_t)h->len + n;
    if (need > BYTES_MAX)
        return ERR_TOO_LARGE;
    if (need <= h->cap)
        return 0;
    size_t cap = h->cap ? h->cap : BYTES_INITIAL;
    while (cap < need)
        cap *= 2;
    char *bytes = realloc(h->bytes, cap);
    if (!bytes)
        return UV_ENOMEM;
    h->bytes = bytes;
    h->cap = (uint32_t)cap;
    return 0;
}

int64_t head_store(head_t *h, const char *p, size_t n)
{
    int err = reserve(h, n + 1);
    if (err)
        return err;
    uint32_t off = h->len;
    memcpy(h->bytes + off, p, n);
    h->bytes[off + n] = '\0';
    h->len += (uint32_t)n + 1;
    return off;
}

/* The checks and the table slot shared by both ways of adding a field. */
static field_t *new_field(head_t *h, size_t name_len, size_t value_len, int *err)
{
    if (h->nfields == HEAD_STORE_FIELDS ||
        (size_t)h->wire + name_len + value_len + 4 > HEAD_STORE_BYTES) {
        *err = ERR_TOO_LARGE;
        return NULL;
    }
    if (h->nfields == h->fields_cap) {
        unsigned cap = h->fields_cap ? h->fields_cap * 2 : FIELDS_INITIAL;
        if (cap > HEAD_STORE_FIELDS)
            cap = HEAD_STORE_FIELDS;
        field_t *fields = realloc(h->fields, cap * sizeof *fields);
        if (!fields) {
            *err = UV_ENOMEM;
            return NULL;
        }
        h->fields = fields;
        h->fields_cap = cap;
    }
    return &h->fields[h->nfields];
}

static void fill(head_t *h, field_t *f, uint32_t name, uint32_t name_len, uint32_t value,
                 uint32_t value_len)
{
    int hop;
    f->name = name;
    f->name_len = name_len;
    f->value = value;
    f->value_len = value_len;
    f->id = (uint8_t)field_classify(h->bytes + name, name_len, &hop);
    f->hop = (uint8_t)hop;
    h->wire += name_len + value_len + 4;
    h->nfields++;
}

int head_add_field(head_t *h, const char *name, size_t name_len, const char *value,
                   size_t value_len)
{
    int err = 0;
    field_t *f = new_field(h, name_len, value_len, &err);
    if (!f)
        return err;
    /* Both pieces or neither: reserve once, so the second copy cannot fail. */
    if ((err = reserve(h, name_len + value_len + 2)))
        return err;
    uint32_t n = (uint32_t)head_store(h, name, name_len);
    uint32_t v = (uint32_t)head_store(h, value, value_len);
    fill(h, f, n, (uint32_t)name_len, v, (uint32_t)value_len);
    return 0;
}

int head_add_stored(head_t *h, uint32_t name, uint32_t name_len, uint32_t value, uint32_t value_len)
{
    int err = 0;
    field_t *f = new_field(h, name_len, value_len, &err);
    if (!f)
        return err;
    fill(h, f, name, name_len, value, value_len);
    return 0;
}

/* ASCII lower case, without the locale strncasecmp consults. */
static inline unsigned char lower(unsigned char c)
{
    return (unsigned char)(c + (((unsigned)c - 'A' < 26u) << 5));
}

/* Whether the n bytes at p are `lit` (lower case) in any case. */
static int same(const char *p, const char *lit, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (lower((unsigned char)p[i]) != (unsigned char)lit[i])
            return 0;
    return 1;
}

/* `id` if the n bytes at p are `lit` in any case, else F_OTHER. */
static enum field_id is(const char *p, size_t n, const char *lit, enum field_id id)
{
    return same(p, lit, n) ? id : F_OTHER;
}

enum field_id field_classify(const char *name, size_t n, int *hop)
{
    /* By length, then by one letter, so one full comparison at most. */
    enum field_id id = F_OTHER;
    switch (n) {
    case 2:
        id = is(name, n, "te", F_TE);
        break;
    case 4:
        id = is(name, n, "host", F_HOST);
        break;
    case 6:
        id = is(name, n, "expect", F_EXPECT);
        break;
    case 7:
        if (lower((unsigned char)name[0]) == 'u')
            id = is(name, n, "upgrade", F_UPGRADE);
        else
            id = is(name, n, "trailer", F_TRAILER);
        break;
    case 10:
        switch (lower((unsigned char)name[0])) {
        case 'c':
            id = is(name, n, "connection", F_CONNECTION);
            break;
        case 'k':
            id = is(name, n, "keep-alive", F_KEEP_ALIVE);
            break;
        default:
            id = is(name, n, "user-agent", F_USER_AGENT);
        }
        break;
    case 12:
        id = is(name, n, "x-request-id", F_X_REQUEST_ID);
        break;
    case 14:
        id = is(name, n, "content-length", F_CONTENT_LENGTH);
        break;
    case 15:
        if (lower((unsigned char)name[2]) == 'a')
            id = is(name, n, "x-amzn-trace-id", F_X_AMZN_TRACE_ID);
        else
            id = is(name, n, "x-forwarded-for", F_X_FORWARDED_FOR);
        break;
    case 16:
        id = is(name, n, "proxy-connection", F_PROXY_CONNECTION);
        break;
    case 17:
        if (lower((unsigned char)name[0]) == 't')
            id = is(name, n, "transfer-encoding", F_TRANSFER_ENCODING);
        else
            id = is(name, n, "x-forwarded-proto", F_X_FORWARDED_PROTO);
        break;
    case 18:
        id = is(name, n, "proxy-authenticate", F_PROXY_AUTHENTICATE);
        break;
    case 19:
        id = is(name, n, "proxy-authorization", F_PROXY_AUTHORIZATION);
        break;
    }
    switch (id) {
    case F_CONNECTION:
    case F_KEEP_ALIVE:
    case F_PROXY_CONNECTION:
    case F_TE:
    case F_TRANSFER_ENCODING:
    case F_UPGRADE:
    case F_TRAILER:
    case F_PROXY_AUTHENTICATE:
    case F_PROXY_AUTHORIZATION:
        *hop = 1;
        break;
    default:
        *hop = 0;
    }
    return id;
}

int head_find(const head_t *h, const char *name, size_t n)
{
    for (unsigned i = 0; i < h->nfields; i++) {
        const field_t *f = &h->fields[i];
        if (f->name_len != n)
            continue;
        const unsigned char *a = (const unsigned char *)h->bytes + f->name;
        const unsigned char *b = (const unsigned char *)name;
        size_t k = 0;
        while (k < n && lower(a[k]) == lower(b[k]))
            k++;
        if (k == n)
            return (int)i;
    }
    return -1;
}

int head_find_id(const head_t *h, enum field_id id, unsigned from)
{
    for (unsigned i = from; i < h->nfields; i++)
        if (h->fields[i].id == id)
            return (int)i;
    return -1;
}

int list_has(const char *list, size_t n, const char *token, size_t tlen)
{
    const char *end = list + n;
    while (list <= end) {
        const char *comma = memchr(list, ',', (size_t)(end - list));
        size_t len = (size_t)((comma ? comma : end) - list);
        const char *item = trim_ows(list, &len);
        if (len == tlen) {
            size_t k = 0;
            while (k < len && lower((unsigned char)item[k]) == lower((unsigned char)token[k]))
                k++;
            if (k == len)
                return 1;
        }
        if (!comma)
            break;
        list = comma + 1;
    }
    return 0;
}

const char *trim_ows(const char *p, size_t *n)
{
    size_t len = *n;
    while (len > 0 && (*p == ' ' || *p == '\t')) {
        p++;
        len--;
    }
    while (len > 0 && (p[len - 1] == ' ' || p[len - 1] == '\t'))
        len--;
    *n = len;
    return p;
}
