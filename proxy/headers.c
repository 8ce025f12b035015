#include "proxy/headers.h"

#include <string.h>
#include <strings.h>

#include "base/err.h"

static int hop_by_id(uint8_t id)
{
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
        return 1;
    default:
        return 0;
    }
}

static int never_hop(uint8_t id)
{
    return id == F_CONTENT_LENGTH || id == F_TRANSFER_ENCODING || id == F_HOST;
}

/* Mark the fields named `token` (n bytes) hop-by-hop. */
static void mark_named(head_t *h, const char *token, size_t n)
{
    if ((n == 5 && strncasecmp(token, "close", 5) == 0) ||
        (n == 10 && strncasecmp(token, "keep-alive", 10) == 0))
        return;
    for (unsigned i = 0; i < h->nfields; i++) {
        field_t *f = &h->fields[i];
        if (!f->hop && !never_hop(f->id) && f->name_len == n &&
            strncasecmp(field_name(h, i), token, n) == 0)
            f->hop = 1;
    }
}

void headers_mark_hop(head_t *h)
{
    int has_connection = 0;
    for (unsigned i = 0; i < h->nfields; i++) {
        h->fields[i].hop = (uint8_t)hop_by_id(h->fields[i].id);
        has_connection |= h->fields[i].id == F_CONNECTION;
    }
    if (!has_connection)
        return;
    for (unsigned c = 0; c < h->nfields; c++) {
        if (h->fields[c].id != F_CONNECTION)
            continue;
        const char *list = field_value(h, c), *end = list + h->fields[c].value_len;
        while (list < end) {
            const char *comma = memchr(list, ',', (size_t)(end - list));
            size_t len = (size_t)((comma ? comma : end) - list);
            const char *token = trim_ows(list, &len);
            list = comma ? comma + 1 : end;
            if (len)
                mark_named(h, token, len);
        }
    }
}

static int add(head_t *out, const char *name, size_t nlen, const char *v, size_t vlen)
{
    return head_add_field(out, name, nlen, v, vlen);
}

static int copy_field(head_t *out, const head_t *in, unsigned i)
{
    return add(out, field_name(in, i), in->fields[i].name_len, field_value(in, i),
               in->fields[i].value_len);
}

/* The X-Forwarded-For chain so far, every field in order, then the peer we received from. */
static int forwarded_for(head_t *out, const head_t *in, const char *client_ip)
{
    char chain[2048];
    size_t at = 0, iplen = strlen(client_ip);
    for (unsigned i = 0; i < in->nfields; i++) {
        size_t n = in->fields[i].value_len;
        if (in->fields[i].id != F_X_FORWARDED_FOR || n == 0)
            continue;
        if (at + n + 2 + iplen > sizeof chain)
            return ERR_TOO_LARGE;
        memcpy(chain + at, field_value(in, i), n);
        at += n;
        memcpy(chain + at, ", ", 2);
        at += 2;
    }
    memcpy(chain + at, client_ip, iplen);
    return add(out, "X-Forwarded-For", 15, chain, at + iplen);
}

static int keep_request_field(const field_t *f, const request_edit_t *e)
{
    switch (f->id) {
    case F_X_FORWARDED_FOR:
    case F_X_REQUEST_ID:
    case F_CONTENT_LENGTH:
        return 0;
    case F_X_AMZN_TRACE_ID:
        return !e->trace;
    case F_EXPECT:
        return !e->drop_expect;
    case F_HOST:
        return !e->authority;
    case F_TRANSFER_ENCODING:
        return e->keep_codings;
    case F_UPGRADE:
        return e->upgrade;
    default:
        return !f->hop;
    }
}

int headers_request(head_t *out, const head_t *in, const request_edit_t *e)
{
    out->method = in->method;
    out->major = 1;
    out->minor = 1;
    int64_t off = head_store(out, head_str(in, in->method_text), in->method_len);
    if (off < 0)
        return (int)off;
    out->method_text = (uint32_t)off;
    out->method_len = in->method_len;
    if ((off = head_store(out, e->target, e->target_len)) < 0)
        return (int)off;
    out->target = (uint32_t)off;
    out->target_len = (uint32_t)e->target_len;
    int err = 0, has_host = 0, has_xfp = 0;
    for (unsigned i = 0; i < in->nfields && err == 0; i++) {
        const field_t *f = &in->fields[i];
        if (!keep_request_field(f, e))
            continue;
        has_host |= f->id == F_HOST;
        has_xfp |= f->id == F_X_FORWARDED_PROTO;
        err = copy_field(out, in, i);
    }
    if (err == 0 && e->authority)
        err = add(out, "Host", 4, e->authority, e->authority_len);
    else if (err == 0 && !has_host && e->default_host)
        err = add(out, "Host", 4, e->default_host, strlen(e->default_host));
    if (err == 0)
        err = forwarded_for(out, in, e->client_ip);
    if (err == 0 && !has_xfp)
        err = add(out, "X-Forwarded-Proto", 17, "http", 4);
    if (err == 0)
        err = add(out, "X-Request-Id", 12, e->request_id, strlen(e->request_id));
    if (err == 0 && e->trace)
        err = add(out, "X-Amzn-Trace-Id", 15, e->trace, e->trace_len);
    return err;
}

int headers_response(head_t *out, const head_t *in, int keep_codings, int upgrade)
{
    out->status = in->status;
    out->major = 1;
    out->minor = 1;
    int64_t off = head_store(out, head_str(in, in->reason), in->reason_len);
    if (off < 0)
        return (int)off;
    out->reason = (uint32_t)off;
    out->reason_len = in->reason_len;
    int err = 0;
    for (unsigned i = 0; i < in->nfields && err == 0; i++) {
        const field_t *f = &in->fields[i];
        int keep = f->id == F_TRANSFER_ENCODING ? keep_codings
                   : f->id == F_UPGRADE         ? upgrade
                                                : !f->hop;
        if (keep)
            err = copy_field(out, in, i);
    }
    return err;
}
