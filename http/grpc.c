#include "http/grpc.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "base/err.h"

/* Field i is named `name` (`len` bytes, lower case). */
static int field_is(const head_t *h, unsigned i, const char *name, size_t len)
{
    return h->fields[i].name_len == len && strncasecmp(field_name(h, i), name, len) == 0;
}

#define NAMED(lit) lit, sizeof(lit) - 1

/* The value of the first field `name` that is forwarded, or NULL. */
static const char *value_of(const head_t *h, const char *name, size_t len, size_t *n)
{
    for (unsigned i = 0; i < h->nfields; i++) {
        if (!h->fields[i].hop && field_is(h, i, name, len)) {
            *n = h->fields[i].value_len;
            return field_value(h, i);
        }
    }
    return NULL;
}

int grpc_is_request(const head_t *h)
{
    size_t n;
    const char *v = value_of(h, NAMED("content-type"), &n);
    if (!v || n < 16 || strncasecmp(v, "application/grpc", 16) != 0)
        return 0;
    return n == 16 || v[16] == '+' || v[16] == ';';
}

/* ms per unit, rounded up for the sub-millisecond ones by the caller. */
static int unit_ms(char u, uint64_t v, uint64_t *ms)
{
    switch (u) {
    case 'H':
        *ms = v * 3600000;
        return 1;
    case 'M':
        *ms = v * 60000;
        return 1;
    case 'S':
        *ms = v * 1000;
        return 1;
    case 'm':
        *ms = v;
        return 1;
    case 'u':
        *ms = (v + 999) / 1000;
        return 1;
    case 'n':
        *ms = (v + 999999) / 1000000;
        return 1;
    default:
        return 0;
    }
}

int grpc_timeout_ms(const head_t *h, uint64_t *ms)
{
    size_t n;
    const char *v = value_of(h, NAMED("grpc-timeout"), &n);
    if (!v || n < 2 || n > 9)
        return 0;
    uint64_t x = 0;
    for (size_t i = 0; i + 1 < n; i++) {
        if (v[i] < '0' || v[i] > '9')
            return 0;
        x = x * 10 + (uint64_t)(v[i] - '0');
    }
    return unit_ms(v[n - 1], x, ms);
}

int grpc_set_timeout(head_t *h, uint64_t ms)
{
    for (unsigned i = 0; i < h->nfields; i++)
        if (field_is(h, i, NAMED("grpc-timeout")))
            h->fields[i].hop = 1;
    char v[24];
    if (ms > 99999999) /* eight digits at most: in seconds then */
        snprintf(v, sizeof v, "%lluS", (unsigned long long)((ms + 999) / 1000));
    else
        snprintf(v, sizeof v, "%llum", (unsigned long long)ms);
    return head_add_field(h, "grpc-timeout", 12, v, strlen(v)) == 0 ? 0 : ERR_TOO_LARGE;
}

int grpc_status_of(const head_t *h)
{
    size_t n;
    const char *v = value_of(h, NAMED("grpc-status"), &n);
    if (!v || n == 0 || n > 3)
        return -1;
    int s = 0;
    for (size_t i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9')
            return -1;
        s = s * 10 + (v[i] - '0');
    }
    return s;
}

enum grpc_status grpc_status_for_http(int http_status)
{
    switch (http_status) {
    case 400:
    case 431:
        return GRPC_INTERNAL;
    case 401:
        return GRPC_UNAUTHENTICATED;
    case 403:
        return GRPC_PERMISSION_DENIED;
    case 404:
        return GRPC_UNIMPLEMENTED;
    case 408:
    case 504:
        return GRPC_DEADLINE_EXCEEDED;
    case 429:
    case 502:
    case 503:
        return GRPC_UNAVAILABLE;
    default:
        return GRPC_UNKNOWN;
    }
}

/* Percent-encoding of grpc-message: bytes outside 0x20-0x7E, and '%'. */
static size_t percent_encode(const char *s, size_t n, char *out, size_t cap)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t at = 0;
    for (size_t i = 0; i < n && at + 3 < cap; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c <= 0x7e && c != '%') {
            out[at++] = (char)c;
            continue;
        }
        out[at++] = '%';
        out[at++] = hex[c >> 4];
        out[at++] = hex[c & 15];
    }
    return at;
}

int grpc_reply_head(head_t *h, enum grpc_status status, const char *message)
{
    h->status = 200;
    char code[8], msg[768];
    int cn = snprintf(code, sizeof code, "%d", (int)status);
    size_t n = strlen(message);
    while (n > 0 && (message[n - 1] == '\n' || message[n - 1] == '\r'))
        n--;
    size_t mn = percent_encode(message, n, msg, sizeof msg);
    if (head_add_field(h, "content-type", 12, "application/grpc", 16) != 0 ||
        head_add_field(h, "grpc-status", 11, code, (size_t)cn) != 0 ||
        (mn > 0 && head_add_field(h, "grpc-message", 12, msg, mn) != 0))
        return ERR_TOO_LARGE;
    return 0;
}
