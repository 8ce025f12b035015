#include "proxy/headers.h"

#include <string.h>
#include <strings.h>

#include "base/err.h"

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
    /* The fixed set was marked as each field was added (field_classify). */
    if (head_find_id(h, F_CONNECTION, 0) < 0)
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

/* The X-Forwarded-For chain so far, every field in order, then the peer we received from. */
static int forwarded_for(head_t *h, unsigned nfields, const char *client_ip)
{
    char chain[2048];
    size_t at = 0, iplen = strlen(client_ip);
    for (unsigned i = 0; i < nfields; i++) {
        size_t n = h->fields[i].value_len;
        if (h->fields[i].id != F_X_FORWARDED_FOR)
            continue;
        h->fields[i].hop = 1; /* replaced by the chain below */
        if (n == 0)
            continue;
        if (at + n + 2 + iplen > sizeof chain)
            return ERR_TOO_LARGE;
        memcpy(chain + at, field_value(h, i), n);
        at += n;
        memcpy(chain + at, ", ", 2);
        at += 2;
    }
    memcpy(chain + at, client_ip, iplen);
    return head_add_field(h, "X-Forwarded-For", 15, chain, at + iplen);
}

int headers_edit_request(head_t *h, const request_edit_t *e)
{
    unsigned n = h->nfields; /* the client's; what is appended below is remora's */
    int has_host = 0, has_xfp = 0;
    for (unsigned i = 0; i < n; i++) {
        field_t *f = &h->fields[i];
        switch (f->id) {
        case F_X_REQUEST_ID:
            f->hop = 1;
            break;
        case F_X_AMZN_TRACE_ID:
            f->hop |= e->trace != NULL;
            break;
        case F_EXPECT:
            f->hop |= e->drop_expect;
            break;
        case F_HOST:
            f->hop |= e->authority != NULL;
            has_host = 1;
            break;
        case F_X_FORWARDED_PROTO:
            has_xfp = 1;
            break;
        default:
            break;
        }
    }
    int64_t off = head_store(h, e->target, e->target_len);
    if (off < 0)
        return (int)off;
    h->target = (uint32_t)off;
    h->target_len = (uint32_t)e->target_len;
    int err = 0;
    if (e->authority)
        err = head_add_field(h, "Host", 4, e->authority, e->authority_len);
    else if (!has_host && e->default_host)
        err = head_add_field(h, "Host", 4, e->default_host, strlen(e->default_host));
    if (err == 0)
        err = forwarded_for(h, n, e->client_ip);
    if (err == 0 && !has_xfp)
        err = head_add_field(h, "X-Forwarded-Proto", 17, e->secure ? "https" : "http",
                             e->secure ? 5 : 4);
    if (err == 0)
        err = head_add_field(h, "X-Request-Id", 12, e->request_id, strlen(e->request_id));
    if (err == 0 && e->trace)
        err = head_add_field(h, "X-Amzn-Trace-Id", 15, e->trace, e->trace_len);
    return err;
}
