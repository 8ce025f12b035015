#include "proxy/h1.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "base/err.h"

#define H1_INITIAL_CAP 1024

void h1_head_init(h1_head_t *h)
{
    h->bytes = NULL;
    h->cap = 0;
    h->fields = NULL;
    h->fields_cap = 0;
    h1_head_reset(h);
}

void h1_head_reset(h1_head_t *h)
{
    h->len = h->start = h->start_len = h->wire = 0;
    h->nfields = 0;
    h->state = H1_BETWEEN;
}

void h1_head_free(h1_head_t *h)
{
    free(h->bytes);
    free(h->fields);
    h->bytes = NULL;
    h->fields = NULL;
    h->cap = h->fields_cap = 0;
}

/* Appends n bytes and keeps a NUL after them (not counted in len), so every piece can be used
 * as a C string; `wire_extra` is the framing the piece costs on the wire (": ", CRLF). */
static int append(h1_head_t *h, const char *p, size_t n, uint32_t wire_extra)
{
    if ((size_t)h->wire + n + wire_extra > H1_MAX_HEAD_BYTES)
        return ERR_TOO_LARGE;
    if ((size_t)h->len + n + 2 > h->cap) {
        size_t cap = h->cap ? h->cap : H1_INITIAL_CAP;
        while (cap < (size_t)h->len + n + 2)
            cap *= 2;
        char *bytes = realloc(h->bytes, cap);
        if (!bytes)
            return ERR_TOO_LARGE;
        h->bytes = bytes;
        h->cap = (uint32_t)cap;
    }
    memcpy(h->bytes + h->len, p, n);
    h->len += (uint32_t)n;
    h->bytes[h->len] = '\0';
    h->wire += (uint32_t)n + wire_extra;
    return 0;
}

/* Ends the current piece: its NUL terminator becomes part of the stored bytes. */
static void seal(h1_head_t *h)
{
    if (h->cap > h->len + 1) {
        h->bytes[h->len] = '\0';
        h->len++;
    }
}

int h1_append_start(h1_head_t *h, const char *p, size_t n)
{
    if (h->start_len == 0)
        h->start = h->len;
    int err = append(h, p, n, 0);
    if (err == 0)
        h->start_len += (uint32_t)n;
    return err;
}

int h1_append_name(h1_head_t *h, const char *p, size_t n)
{
    if (h->state != H1_IN_NAME) {
        if (h->nfields == H1_MAX_FIELDS)
            return ERR_TOO_LARGE;
        if (h->nfields == h->fields_cap) {
            unsigned cap = h->fields_cap ? h->fields_cap * 2 : 16;
            if (cap > H1_MAX_FIELDS)
                cap = H1_MAX_FIELDS;
            h1_field_t *grown = realloc(h->fields, cap * sizeof *grown);
            if (!grown)
                return ERR_TOO_LARGE;
            h->fields = grown;
            h->fields_cap = cap;
        }
        seal(h);
        h1_field_t *f = &h->fields[h->nfields];
        *f = (h1_field_t){.name = h->len};
        int err = append(h, p, n, 4); /* ": " and CRLF */
        if (err)
            return err;
        h->nfields++;
        h->state = H1_IN_NAME;
        f->name_len = (uint32_t)n;
        return 0;
    }
    int err = append(h, p, n, 0);
    if (err == 0)
        h->fields[h->nfields - 1].name_len += (uint32_t)n;
    return err;
}

static void start_value(h1_head_t *h)
{
    seal(h);
    h->fields[h->nfields - 1].value = h->len;
    h->state = H1_IN_VALUE;
}

int h1_append_value(h1_head_t *h, const char *p, size_t n)
{
    if (h->nfields == 0)
        return ERR_TOO_LARGE;
    if (h->state == H1_IN_NAME)
        start_value(h);
    int err = append(h, p, n, 0);
    if (err == 0)
        h->fields[h->nfields - 1].value_len += (uint32_t)n;
    return err;
}

void h1_field_done(h1_head_t *h)
{
    if (h->state == H1_IN_NAME) { /* empty value: point it at a NUL */
        start_value(h);
        append(h, "", 0, 0);
    }
    h->state = H1_BETWEEN;
}

static int name_is(const h1_head_t *h, unsigned i, const char *name)
{
    size_t n = strlen(name);
    return h->fields[i].name_len == n && strncasecmp(h1_name(h, i), name, n) == 0;
}

int h1_find(const h1_head_t *h, const char *name)
{
    for (unsigned i = 0; i < h->nfields; i++)
        if (name_is(h, i, name))
            return (int)i;
    return -1;
}

const char *h1_trim(const char *p, size_t *n)
{
    while (*n > 0 && (*p == ' ' || *p == '\t')) {
        p++;
        (*n)--;
    }
    while (*n > 0 && (p[*n - 1] == ' ' || p[*n - 1] == '\t'))
        (*n)--;
    return p;
}

int h1_list_has(const char *list, size_t n, const char *token, size_t tlen)
{
    size_t i = 0;
    while (i < n) {
        size_t j = i;
        while (j < n && list[j] != ',')
            j++;
        size_t len = j - i;
        const char *item = h1_trim(list + i, &len);
        if (len == tlen && strncasecmp(item, token, tlen) == 0)
            return 1;
        i = j + 1;
    }
    return 0;
}

/* Names by length, so that a field is compared with at most a few candidates. */
static const struct {
    const char *name;
    uint8_t len, id, hop;
} known[] = {
    {"te", 2, H_TE, 1},
    {"host", 4, H_HOST, 0},
    {"expect", 6, H_EXPECT, 0},
    {"upgrade", 7, H_UPGRADE, 1},
    {"trailer", 7, H_TRAILER, 1},
    {"keep-alive", 10, H_KEEP_ALIVE, 1},
    {"connection", 10, H_CONNECTION, 1},
    {"user-agent", 10, H_USER_AGENT, 0},
    {"x-request-id", 12, H_X_REQUEST_ID, 0},
    {"content-length", 14, H_CONTENT_LENGTH, 0},
    {"x-amzn-trace-id", 15, H_X_AMZN_TRACE_ID, 0},
    {"x-forwarded-for", 15, H_X_FORWARDED_FOR, 0},
    {"proxy-connection", 16, H_PROXY_CONNECTION, 1},
    {"transfer-encoding", 17, H_TRANSFER_ENCODING, 1},
    {"x-forwarded-proto", 17, H_X_FORWARDED_PROTO, 0},
    {"proxy-authenticate", 18, H_PROXY_AUTHENTICATE, 1},
    {"proxy-authorization", 19, H_PROXY_AUTHORIZATION, 1},
};

void h1_classify(h1_head_t *h)
{
    int has_connection = 0;
    for (unsigned i = 0; i < h->nfields; i++) {
        h1_field_t *f = &h->fields[i];
        f->id = H_OTHER;
        f->hop = 0;
        for (size_t k = 0; k < sizeof known / sizeof *known && known[k].len <= f->name_len; k++) {
            if (known[k].len == f->name_len &&
                strncasecmp(h->bytes + f->name, known[k].name, f->name_len) == 0) {
                f->id = known[k].id;
                f->hop = known[k].hop;
                break;
            }
        }
        has_connection |= f->id == H_CONNECTION;
    }
    if (!has_connection)
        return;
    /* Fields the Connection header names are hop-by-hop too (RFC 9110 §7.6.1). The usual
     * tokens, close and keep-alive, name nothing more to drop. */
    for (unsigned c = 0; c < h->nfields; c++) {
        if (h->fields[c].id != H_CONNECTION)
            continue;
        const char *list = h1_value(h, c), *end = list + h->fields[c].value_len;
        while (list < end) {
            const char *comma = memchr(list, ',', (size_t)(end - list));
            size_t len = (size_t)((comma ? comma : end) - list);
            const char *token = h1_trim(list, &len);
            list = comma ? comma + 1 : end;
            if ((len == 5 && strncasecmp(token, "close", 5) == 0) ||
                (len == 10 && strncasecmp(token, "keep-alive", 10) == 0))
                continue;
            for (unsigned i = 0; i < h->nfields; i++)
                if (!h->fields[i].hop && h->fields[i].name_len == len &&
                    strncasecmp(h1_name(h, i), token, len) == 0)
                    h->fields[i].hop = 1;
        }
    }
}

int h1_find_id(const h1_head_t *h, enum h1_name id)
{
    for (unsigned i = 0; i < h->nfields; i++)
        if (h->fields[i].id == id)
            return (int)i;
    return -1;
}
