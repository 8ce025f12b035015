#include "proxy/heads.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "proxy/downstream.h"
#include "proxy/pool.h"
#include "proxy/worker.h"

/* Builds a head into `out` when it is set, or only measures it: each head is built twice,
 * once to size its buffer exactly and once to fill it. */
typedef struct head_writer {
    char *out;
    size_t len;
} head_writer_t;

static void put(head_writer_t *hw, const char *s, size_t n)
{
    if (hw->out)
        memcpy(hw->out + hw->len, s, n);
    hw->len += n;
}

static void puts_(head_writer_t *hw, const char *s)
{
    put(hw, s, strlen(s));
}

static void put_field(head_writer_t *hw, const h1_head_t *h, unsigned i)
{
    put(hw, h1_name(h, i), h->fields[i].name_len);
    put(hw, ": ", 2);
    put(hw, h1_value(h, i), h->fields[i].value_len);
    put(hw, "\r\n", 2);
}

static int send_built(conn_t *c, void (*build)(const exchange_t *, head_writer_t *),
                      const exchange_t *ex)
{
    head_writer_t hw = {0};
    build(ex, &hw);
    buf_t *b = buf_new(&c->w->bufs, hw.len);
    if (!b)
        return UV_ENOMEM;
    hw = (head_writer_t){.out = b->data};
    build(ex, &hw);
    b->len = (uint32_t)hw.len;
    conn_write(c, b, b->data, b->len);
    buf_unref(b);
    return 0;
}

const char *heads_authority(const exchange_t *ex, size_t *n)
{
    const char *t = h1_start(&ex->req);
    size_t len = ex->req.start_len;
    const char *sep = len > 3 && t[0] != '/' ? memmem(t, len, "://", 3) : NULL;
    if (!sep)
        return NULL;
    const char *auth = sep + 3, *end = auth;
    while (end < t + len && *end != '/' && *end != '?')
        end++;
    *n = (size_t)(end - auth);
    return *n ? auth : NULL;
}

static void build_request(const exchange_t *ex, head_writer_t *hw)
{
    const h1_head_t *h = &ex->req;
    size_t alen = 0;
    const char *authority = heads_authority(ex, &alen);
    puts_(hw, llhttp_method_name((llhttp_method_t)ex->method));
    put(hw, " ", 1);
    put(hw, ex->target, ex->target_len);
    if (ex->query) {
        put(hw, "?", 1);
        put(hw, ex->query, ex->query_len);
    }
    put(hw, " HTTP/1.1\r\n", 11);
    int has_host = 0, has_xfp = 0;
    for (unsigned i = 0; i < h->nfields; i++) {
        const h1_field_t *f = &h->fields[i];
        if (f->hop || f->id == H_X_FORWARDED_FOR || f->id == H_X_REQUEST_ID ||
            (ex->trace && f->id == H_X_AMZN_TRACE_ID))
            continue;
        if (ex->expect_continue && f->id == H_EXPECT)
            continue; /* answered by remora itself */
        if (f->id == H_HOST) {
            if (has_host++ || authority)
                continue;
        } else if (f->id == H_X_FORWARDED_PROTO) {
            has_xfp = 1;
        }
        put_field(hw, h, i);
    }
    /* The chain so far (every X-Forwarded-For field, in order), then the peer we received from. */
    puts_(hw, "X-Forwarded-For: ");
    for (unsigned i = 0; i < h->nfields; i++) {
        if (h->fields[i].id == H_X_FORWARDED_FOR) {
            put(hw, h1_value(h, i), h->fields[i].value_len);
            put(hw, ", ", 2);
        }
    }
    puts_(hw, ex->ds->client_ip);
    put(hw, "\r\n", 2);
    if (authority || !has_host) {
        put(hw, "Host: ", 6);
        if (authority)
            put(hw, authority, alen);
        else
            puts_(hw, ex->pool->name);
        put(hw, "\r\n", 2);
    }
    if (!has_xfp)
        puts_(hw, "X-Forwarded-Proto: http\r\n");
    put(hw, "X-Request-Id: ", 14);
    puts_(hw, ex->request_id);
    put(hw, "\r\n", 2);
    if (ex->trace) {
        char trace[TRACE_ID_LEN + SPAN_ID_LEN + TRACE_EXTRA_MAX + 40];
        size_t n = xray_outgoing(ex->trace, trace, sizeof trace);
        put(hw, "X-Amzn-Trace-Id: ", 17);
        put(hw, trace, n);
        put(hw, "\r\n", 2);
    }
    if (ex->upgrade) {
        int u = h1_find_id(h, H_UPGRADE);
        puts_(hw, "Connection: upgrade\r\n");
        if (u >= 0)
            put_field(hw, h, (unsigned)u);
    }
    if (ex->req_out == BODY_CHUNKED)
        puts_(hw, "Transfer-Encoding: chunked\r\n");
    put(hw, "\r\n", 2);
}

static void build_response(const exchange_t *ex, head_writer_t *hw)
{
    const h1_head_t *h = &ex->resp;
    char status[13];
    memcpy(status, "HTTP/1.1 000 ", sizeof status);
    status[9] = (char)('0' + ex->status / 100 % 10);
    status[10] = (char)('0' + ex->status / 10 % 10);
    status[11] = (char)('0' + ex->status % 10);
    put(hw, status, sizeof status);
    put(hw, h1_start(h), h->start_len);
    put(hw, "\r\n", 2);
    for (unsigned i = 0; i < h->nfields; i++)
        if (!h1_is_hop_by_hop(h, i))
            put_field(hw, h, i);
    if (ex->tunnel) {
        int u = h1_find_id(h, H_UPGRADE);
        puts_(hw, "Connection: upgrade\r\n");
        if (u >= 0)
            put_field(hw, h, (unsigned)u);
    } else if (!ex->keep_alive) {
        puts_(hw, "Connection: close\r\n");
    } else if (ex->minor == 0) {
        puts_(hw, "Connection: keep-alive\r\n");
    }
    if (ex->resp_out == BODY_CHUNKED)
        puts_(hw, "Transfer-Encoding: chunked\r\n");
    put(hw, "\r\n", 2);
}

int heads_send_request(conn_t *c, const exchange_t *ex)
{
    return send_built(c, build_request, ex);
}

int heads_send_response(conn_t *c, const exchange_t *ex)
{
    return send_built(c, build_response, ex);
}

/* Two hex digits per byte, for request ids. */
static void hex_bytes(const unsigned char *in, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
}

void heads_request_id(worker_t *w, char out[37])
{
    /* RFC 9562 version 4: xxxxxxxx-xxxx-4xxx-Nxxx-xxxxxxxxxxxx (N is 8, 9, a or b). */
    uint64_t r[2] = {worker_random(w), worker_random(w)};
    unsigned char b[16];
    memcpy(b, r, sizeof b);
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
    hex_bytes(b, 4, out);
    out[8] = '-';
    hex_bytes(b + 4, 2, out + 9);
    out[13] = '-';
    hex_bytes(b + 6, 2, out + 14);
    out[18] = '-';
    hex_bytes(b + 8, 2, out + 19);
    out[23] = '-';
    hex_bytes(b + 10, 6, out + 24);
    out[36] = '\0';
}

/* Reason phrases (RFC 9110 §15) of the statuses remora answers with itself. */
static const char *reason_phrase(int status)
{
    switch (status) {
    case 400:
        return "Bad Request";
    case 404:
        return "Not Found";
    case 408:
        return "Request Timeout";
    case 414:
        return "URI Too Long";
    case 431:
        return "Request Header Fields Too Large";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 508:
        return "Loop Detected";
    default:
        return "";
    }
}

void heads_send_local(conn_t *c, const exchange_t *ex, int status, const char *body)
{
    size_t blen = strlen(body);
    buf_t *b = buf_new(&c->w->bufs, 256 + blen);
    if (!b)
        return;
    int head = ex->method == HTTP_HEAD;
    int n = snprintf(b->data, b->cap,
                     "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n"
                     "%s\r\n%s",
                     status, reason_phrase(status), head ? 0 : blen,
                     ex->keep_alive ? "" : "Connection: close\r\n", head ? "" : body);
    conn_write(c, b, b->data, (size_t)n);
    buf_unref(b);
}
