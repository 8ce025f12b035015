#include "tracing/trace.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

static int hex_run(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isxdigit((unsigned char)s[i]))
            return 0;
    return 1;
}

static int trace_id_valid(const char *s, size_t n)
{
    return n == TRACE_ID_LEN && s[0] == '1' && s[1] == '-' && s[10] == '-' && hex_run(s + 2, 8) &&
           hex_run(s + 11, 24);
}

static int span_id_valid(const char *s, size_t n)
{
    return n == SPAN_ID_LEN && hex_run(s, n);
}

static void lower_copy(char *dst, const char *src, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = (char)tolower((unsigned char)src[i]);
    dst[n] = '\0';
}

static const char *trim(const char *p, size_t *n)
{
    while (*n && isspace((unsigned char)*p)) {
        p++;
        (*n)--;
    }
    while (*n && isspace((unsigned char)p[*n - 1]))
        (*n)--;
    return p;
}

static void keep_extra(trace_header_t *h, const char *p, size_t n)
{
    size_t used = strlen(h->extra);
    if (used + n + 2 > sizeof h->extra)
        return; /* a bounded budget, as the SDKs have */
    if (used)
        h->extra[used++] = ';';
    memcpy(h->extra + used, p, n);
    h->extra[used + n] = '\0';
}

void trace_header_parse(const char *v, size_t n, trace_header_t *out)
{
    memset(out, 0, sizeof *out);
    out->sampled = SAMPLED_UNKNOWN;
    const char *end = v + n;
    while (v < end) {
        const char *semi = memchr(v, ';', (size_t)(end - v));
        size_t flen = (size_t)((semi ? semi : end) - v);
        const char *field = trim(v, &flen);
        v = semi ? semi + 1 : end;
        const char *eq = memchr(field, '=', flen);
        if (!eq || flen == 0)
            continue;
        size_t klen = (size_t)(eq - field), vlen = flen - klen - 1;
        const char *key = trim(field, &klen);
        const char *val = trim(eq + 1, &vlen);
        if (klen == 4 && strncasecmp(key, "root", 4) == 0) {
            if (trace_id_valid(val, vlen))
                lower_copy(out->root, val, vlen);
        } else if (klen == 6 && strncasecmp(key, "parent", 6) == 0) {
            if (span_id_valid(val, vlen))
                lower_copy(out->parent, val, vlen);
        } else if (klen == 7 && strncasecmp(key, "sampled", 7) == 0) {
            if (vlen == 1 && val[0] == '1')
                out->sampled = SAMPLED_YES;
            else if (vlen == 1 && val[0] == '0')
                out->sampled = SAMPLED_NO;
            else if (vlen == 1 && val[0] == '?')
                out->sampled = SAMPLED_REQUESTED;
        } else if (!(klen == 4 && strncasecmp(key, "self", 4) == 0)) {
            keep_extra(out, field, flen);
        }
    }
}

/* Appends s (n bytes) at *len when it fits. */
static void add(char *out, size_t cap, size_t *len, const char *s, size_t n)
{
    if (*len + n < cap) {
        memcpy(out + *len, s, n);
        *len += n;
    }
}

size_t trace_header_format(const char *root, const char *parent, int sampled, const char *extra,
                           char *out, size_t cap)
{
    size_t len = 0;
    add(out, cap, &len, "Root=", 5);
    add(out, cap, &len, root, strlen(root));
    add(out, cap, &len, ";Parent=", 8);
    add(out, cap, &len, parent, strlen(parent));
    add(out, cap, &len, sampled ? ";Sampled=1" : ";Sampled=0", 10);
    if (extra && *extra) {
        add(out, cap, &len, ";", 1);
        add(out, cap, &len, extra, strlen(extra));
    }
    out[len < cap ? len : cap - 1] = '\0';
    return len;
}
