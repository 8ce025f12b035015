#include "discovery/health_h2.h"

#include <nghttp2/nghttp2.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#define HEADER_BUDGET 16384 /* response header fields, head and trailers together */
#define INPUT_MAX     65536 /* bytes read from the target, every frame counted */
#define STREAM_WINDOW 16384 /* offered once, never reopened: the most DATA the target may send */
#define MESSAGE_MAX   64    /* a HealthCheckResponse is 2 bytes; room for unknown fields */
#define GRPC_PREFIX   5     /* compressed flag + 4-byte big-endian length (gRPC over HTTP/2) */

/* Where the response is. The http2 check decides at the final head, as the http check decides
 * at the status line; the grpc check reads the message and decides at END_STREAM. */
enum state { AWAIT_HEAD, AWAIT_END, PASSED, FAILED };

struct health_h2 {
    nghttp2_session *s;
    enum health_h2_kind kind;
    enum state state;
    int32_t stream;
    int status;      /* :status of the latest head; 0 before one */
    int grpc_status; /* -1 until a valid grpc-status field */
    int goaway;      /* a GOAWAY came: a refused stream is its doing */
    size_t header_bytes, received, body_sent;
    uint8_t msg[GRPC_PREFIX + MESSAGE_MAX];
    size_t msg_len;
    char why[80];
    uint8_t out[4096]; /* gathered output, so that a step is one write */
    size_t out_len;
};

static void fail(health_h2_t *x, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The first failure is the one reported. */
static void fail(health_h2_t *x, const char *fmt, ...)
{
    if (x->state == PASSED || x->state == FAILED)
        return;
    x->state = FAILED;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(x->why, sizeof x->why, fmt, ap);
    va_end(ap);
}

/* A decimal of at most `digits` digits without a sign; -1 otherwise. */
static int decimal(const uint8_t *v, size_t n, size_t digits)
{
    if (n == 0 || n > digits)
        return -1;
    int d = 0;
    for (size_t i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9')
            return -1;
        d = d * 10 + (v[i] - '0');
    }
    return d;
}

static int field_is(const uint8_t *name, size_t n, const char *want)
{
    return n == strlen(want) && memcmp(name, want, n) == 0;
}

static void judge_status(health_h2_t *x)
{
    if (x->status >= 200 && x->status <= 399)
        x->state = PASSED;
    else
        fail(x, "status %d", x->status);
}

/* The one message of a unary response: `08 01` is SERVING (field 1, varint 1), `08 02`
 * NOT_SERVING, an empty message UNKNOWN (proto3 leaves the default out). */
static void judge_message(health_h2_t *x)
{
    static const uint8_t serving[] = {0, 0, 0, 0, 2, 0x08, 0x01};
    static const uint8_t not_serving[] = {0, 0, 0, 0, 2, 0x08, 0x02};
    static const uint8_t unknown[GRPC_PREFIX] = {0};
    if (x->msg_len == sizeof serving && memcmp(x->msg, serving, sizeof serving) == 0)
        x->state = PASSED;
    else if (x->msg_len == sizeof not_serving && memcmp(x->msg, not_serving, x->msg_len) == 0)
        fail(x, "NOT_SERVING");
    else if (x->msg_len == sizeof unknown && memcmp(x->msg, unknown, x->msg_len) == 0)
        fail(x, "UNKNOWN");
    else if (x->msg_len == 0)
        fail(x, "grpc-status 0 without a message");
    else
        fail(x, "unexpected HealthCheckResponse (%zu bytes)", x->msg_len);
}

/* END_STREAM: the trailers (or a Trailers-Only head) have the status. */
static void judge_grpc(health_h2_t *x)
{
    if (x->grpc_status < 0)
        fail(x, "no valid grpc-status");
    else if (x->grpc_status != 0)
        fail(x, "grpc-status %d", x->grpc_status);
    else
        judge_message(x);
}

/* A complete header block on the stream: a head (1xx ones are skipped, RFC 9110 §15.2) or,
 * for grpc, the trailers. nghttp2 has checked the block (RFC 9113 §8.1: one :status, trailers
 * only with END_STREAM). */
static void on_header_block(health_h2_t *x, int end_stream)
{
    switch (x->state) {
    case AWAIT_HEAD:
        if (x->status < 200)
            return;
        if (x->kind == HEALTH_H2_GET) {
            judge_status(x);
            return;
        }
        if (x->status != 200) {
            fail(x, "status %d", x->status);
            return;
        }
        x->state = AWAIT_END;
        if (end_stream)
            judge_grpc(x); /* Trailers-Only */
        return;
    case AWAIT_END:
        if (end_stream)
            judge_grpc(x);
        return;
    case PASSED:
    case FAILED:
        return;
    }
}

static int on_frame_recv(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    (void)s;
    health_h2_t *x = ud;
    int end_stream = (f->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    if (f->hd.type == NGHTTP2_GOAWAY) {
        x->goaway = 1;
        if (f->goaway.error_code != NGHTTP2_NO_ERROR)
            fail(x, "GOAWAY %s", nghttp2_http2_strerror(f->goaway.error_code));
    } else if (f->hd.stream_id != x->stream) {
        return 0;
    } else if (f->hd.type == NGHTTP2_HEADERS) {
        on_header_block(x, end_stream);
    } else if (f->hd.type == NGHTTP2_DATA && end_stream && x->state == AWAIT_END) {
        judge_grpc(x); /* trailers missing */
    }
    return 0;
}

/* Every field of the response counts against one budget (name + value + 32, RFC 9113
 * §6.5.2): nghttp2 1.52 advertises SETTINGS_MAX_HEADER_LIST_SIZE but does not enforce it. */
static int on_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags, void *ud)
{
    (void)s;
    (void)flags;
    health_h2_t *x = ud;
    if (f->hd.stream_id != x->stream)
        return 0;
    x->header_bytes += namelen + valuelen + 32;
    if (x->header_bytes > HEADER_BUDGET) {
        fail(x, "response headers over %d bytes", HEADER_BUDGET);
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    if (field_is(name, namelen, ":status"))
        x->status = decimal(value, valuelen, 3);
    else if (field_is(name, namelen, "grpc-status"))
        x->grpc_status = decimal(value, valuelen, 2);
    return 0;
}

static int on_data_chunk(nghttp2_session *s, uint8_t flags, int32_t stream_id, const uint8_t *data,
                         size_t len, void *ud)
{
    (void)s;
    (void)flags;
    health_h2_t *x = ud;
    if (stream_id != x->stream || x->state != AWAIT_END)
        return 0;
    if (len > sizeof x->msg - x->msg_len) {
        fail(x, "response message over %d bytes", MESSAGE_MAX);
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    memcpy(x->msg + x->msg_len, data, len);
    x->msg_len += len;
    return 0;
}

/* nghttp2 ends a session it finds broken with a GOAWAY of its own. */
static int on_frame_send(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    (void)s;
    if (f->hd.type == NGHTTP2_GOAWAY)
        fail(ud, "HTTP/2 connection error: %s", nghttp2_http2_strerror(f->goaway.error_code));
    return 0;
}

static int on_stream_close(nghttp2_session *s, int32_t stream_id, uint32_t code, void *ud)
{
    (void)s;
    health_h2_t *x = ud;
    if (stream_id != x->stream)
        return 0;
    if (code == NGHTTP2_REFUSED_STREAM && x->goaway)
        fail(x, "refused by GOAWAY");
    else if (code != NGHTTP2_NO_ERROR)
        fail(x, "stream reset: %s", nghttp2_http2_strerror(code));
    else
        fail(x, "stream closed before a response");
    return 0;
}

/* The grpc request body: an empty HealthCheckRequest (service "", the whole server) is 0
 * bytes, so only its prefix (uncompressed, length 0), then END_STREAM. */
static ssize_t read_body(nghttp2_session *s, int32_t stream_id, uint8_t *buf, size_t len,
                         uint32_t *flags, nghttp2_data_source *src, void *ud)
{
    (void)s;
    (void)stream_id;
    (void)src;
    health_h2_t *x = ud;
    size_t n = GRPC_PREFIX - x->body_sent;
    n = n < len ? n : len;
    memset(buf, 0, n);
    x->body_sent += n;
    if (x->body_sent == GRPC_PREFIX)
        *flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
}

static int new_session(health_h2_t *x)
{
    nghttp2_session_callbacks *cb;
    nghttp2_option *opt;
    if (nghttp2_session_callbacks_new(&cb) != 0)
        return UV_ENOMEM;
    if (nghttp2_option_new(&opt) != 0) {
        nghttp2_session_callbacks_del(cb);
        return UV_ENOMEM;
    }
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data_chunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
    nghttp2_session_callbacks_set_on_frame_send_callback(cb, on_frame_send);
    nghttp2_option_set_no_auto_window_update(opt, 1); /* DATA stops at STREAM_WINDOW */
    nghttp2_option_set_max_continuations(opt, 8);
    nghttp2_option_set_max_settings(opt, 32);
    nghttp2_option_set_max_outbound_ack(opt, 64);
    nghttp2_option_set_max_reserved_remote_streams(opt, 0);
    int rc = nghttp2_session_client_new2(&x->s, cb, x, opt);
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cb);
    return rc == 0 ? 0 : UV_ENOMEM;
}

static int submit(health_h2_t *x, const char *authority, const char *path, int tls)
{
#define NV(n, v)                                                                                   \
    {                                                                                              \
        (uint8_t *)(n), (uint8_t *)(v), strlen(n), strlen(v), NGHTTP2_NV_FLAG_NONE                 \
    }
    const char *scheme = tls ? "https" : "http";
    const nghttp2_settings_entry settings[] = {
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, HEADER_BUDGET},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW},
    };
    const nghttp2_nv get[] = {
        NV(":method", "GET"),
        NV(":scheme", scheme),
        NV(":authority", authority),
        NV(":path", path),
        NV("user-agent", "remora-health-check"),
    };
    const nghttp2_nv grpc[] = {
        NV(":method", "POST"),
        NV(":scheme", scheme),
        NV(":authority", authority),
        NV(":path", "/grpc.health.v1.Health/Check"),
        NV("content-type", "application/grpc"),
        NV("te", "trailers"),
        NV("user-agent", "remora-health-check"),
    };
#undef NV
    nghttp2_data_provider body = {.read_callback = read_body};
    if (nghttp2_submit_settings(x->s, NGHTTP2_FLAG_NONE, settings,
                                sizeof settings / sizeof *settings) != 0)
        return UV_ENOMEM;
    x->stream =
        x->kind == HEALTH_H2_GRPC
            ? nghttp2_submit_request(x->s, NULL, grpc, sizeof grpc / sizeof *grpc, &body, NULL)
            : nghttp2_submit_request(x->s, NULL, get, sizeof get / sizeof *get, NULL, NULL);
    return x->stream > 0 ? 0 : UV_ENOMEM;
}

health_h2_t *health_h2_new(enum health_h2_kind kind, const char *authority, const char *path,
                           int tls)
{
    health_h2_t *x = calloc(1, sizeof *x);
    if (!x)
        return NULL;
    x->kind = kind;
    x->grpc_status = -1;
    if (new_session(x) != 0 || submit(x, authority, path, tls) != 0) {
        health_h2_free(x);
        return NULL;
    }
    return x;
}

/* Gathers output, so that a step is one write; what does not fit goes out first. */
static int gather(health_h2_t *x, const uint8_t *data, size_t n, health_h2_write_cb write, void *ud)
{
    if (x->out_len + n > sizeof x->out) {
        int err = x->out_len ? write(ud, x->out, x->out_len) : 0;
        x->out_len = 0;
        if (err || n > sizeof x->out)
            return err ? err : write(ud, data, n);
    }
    memcpy(x->out + x->out_len, data, n);
    x->out_len += n;
    return 0;
}

static int emit(health_h2_t *x, health_h2_write_cb write, void *ud)
{
    const uint8_t *chunk;
    ssize_t n;
    int err = 0;
    x->out_len = 0;
    while (!err && (n = nghttp2_session_mem_send(x->s, &chunk)) > 0)
        err = gather(x, chunk, (size_t)n, write, ud);
    if (!err && n < 0)
        err = UV_EPROTO;
    if (!err && x->out_len)
        err = write(ud, x->out, x->out_len);
    return err;
}

enum health_verdict health_h2_step(health_h2_t *x, const uint8_t *data, size_t n,
                                   health_h2_write_cb write, void *ud)
{
    if (x->state == AWAIT_HEAD || x->state == AWAIT_END) {
        x->received += n;
        ssize_t rv = n ? nghttp2_session_mem_recv(x->s, data, n) : 0;
        if (rv < 0)
            fail(x, "HTTP/2: %s", nghttp2_strerror((int)rv));
        else if (x->received > INPUT_MAX)
            fail(x, "response over %d bytes", INPUT_MAX);
    }
    if (x->state == AWAIT_HEAD || x->state == AWAIT_END) {
        if (emit(x, write, ud) != 0)
            fail(x, "write failed");
        else if (!nghttp2_session_want_read(x->s))
            fail(x, "HTTP/2 connection error"); /* nghttp2 ended the session (GOAWAY sent) */
    }
    return x->state == PASSED ? HEALTH_PASS : x->state == FAILED ? HEALTH_FAIL : HEALTH_PENDING;
}

const char *health_h2_why(const health_h2_t *x)
{
    return x->why;
}

void health_h2_free(health_h2_t *x)
{
    if (!x)
        return;
    nghttp2_session_del(x->s);
    free(x);
}
