#include "proxy/h1.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "proxy/err.h"

#define H1_INITIAL_CAP 1024

void h1_head_init(h1_head_t *h)
{
    h->bytes = NULL;
    h->cap = 0;
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
    h->bytes = NULL;
    h->cap = 0;
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

int h1_name_is(const h1_head_t *h, unsigned i, const char *name)
{
    size_t n = strlen(name);
    return h->fields[i].name_len == n && strncasecmp(h1_name(h, i), name, n) == 0;
}

int h1_find(const h1_head_t *h, const char *name)
{
    for (unsigned i = 0; i < h->nfields; i++)
        if (h1_name_is(h, i, name))
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

static const char *const hop_by_hop[] = {
    "connection", "proxy-connection",   "keep-alive",          "te", "transfer-encoding", "upgrade",
    "trailer",    "proxy-authenticate", "proxy-authorization",
};

int h1_is_hop_by_hop(const h1_head_t *h, unsigned i)
{
    for (size_t k = 0; k < sizeof hop_by_hop / sizeof *hop_by_hop; k++)
        if (h1_name_is(h, i, hop_by_hop[k]))
            return 1;
    for (unsigned c = 0; c < h->nfields; c++) {
        if (!h1_name_is(h, c, "connection"))
            continue;
        if (h1_list_has(h1_value(h, c), h->fields[c].value_len, h1_name(h, i),
                        h->fields[i].name_len))
            return 1;
    }
    return 0;
}
