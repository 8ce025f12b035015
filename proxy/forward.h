/* One request/response exchange, from request head to the end of the response: ③ route,
 * ④ pick an endpoint, ⑤ take a pooled connection, ⑥ relay the response.
 *
 * This is the single place where failures become the client's 4xx/5xx: the downstream and
 * upstream connections report events here and never answer the client themselves.
 *
 * Ownership: the downstream connection owns its current exchange (one at a time; pipelined
 * requests wait their turn). The exchange owns its upstream connection while it runs and hands
 * it back to the pool, or aborts it, before it ends. */
#ifndef REMORA_FORWARD_H
#define REMORA_FORWARD_H

#include <stdint.h>

#include "proxy/buf.h"
#include "proxy/h1.h"

struct downstream;
struct upstream;
struct cluster;
struct endpoint;
struct pool;

enum req_state { REQ_HEAD, REQ_BODY, REQ_DONE };
enum resp_state { RESP_WAITING, RESP_BODY, RESP_DONE };
enum body_framing { BODY_NONE, BODY_LENGTH, BODY_CHUNKED, BODY_UNTIL_CLOSE };

typedef struct exchange {
    struct downstream *ds;
    struct upstream *up;
    struct pool *pool;
    struct cluster *cluster;
    h1_head_t req, resp;
    enum req_state req_state;
    enum resp_state resp_state;
    enum body_framing req_out;  /* how the request body is framed toward the upstream */
    enum body_framing resp_out; /* how the response body is framed toward the client */
    uint64_t timeout_ms;        /* per-request; 0 disables */
    uint64_t idle_ms;
    int status; /* the status the client was (or will be) sent */
    uint8_t method;
    uint8_t major, minor;    /* the client's HTTP version */
    unsigned keep_alive : 1; /* the client connection may carry another request */
    unsigned upgrade : 1;    /* the client asked for a protocol upgrade */
    unsigned expect_continue : 1;
    unsigned local_reply : 1; /* remora answered; the upstream never saw this request */
    unsigned tunnel : 1;      /* upgraded: raw bytes both ways */
    unsigned reused : 1;      /* the upstream connection came from the pool */
    unsigned retried : 1;     /* sent again after a pooled connection turned out closed */
} exchange_t;

exchange_t *exchange_new(struct downstream *ds);
void exchange_free(exchange_t *ex);

/* From the downstream parser. fwd_request_head returns 0 to read the body, or 1 when remora has
 * answered locally and the rest of the request is to be discarded. */
int fwd_request_head(exchange_t *ex);
void fwd_request_body(exchange_t *ex, buf_t *b, const char *p, size_t n);
void fwd_request_done(exchange_t *ex);
void fwd_tunnel_from_client(exchange_t *ex, buf_t *b, const char *p, size_t n);
/* The client went away (reset, or EOF before its request was complete). */
void fwd_client_gone(exchange_t *ex);
/* The per-request deadline passed. */
void fwd_timeout(exchange_t *ex);
/* Answer the client locally with `status` and a short text body; `close` ends the connection. */
void fwd_local_reply(exchange_t *ex, int status, const char *body, int close);
/* The client's output queue drained below the low-water mark. */
void fwd_client_drained(exchange_t *ex);

/* From the upstream connection. fwd_response_head returns llhttp's on_headers_complete value:
 * 0, or 1 when the response has no body (a HEAD request). */
int fwd_response_head(exchange_t *ex, int status);
void fwd_response_body(exchange_t *ex, buf_t *b, const char *p, size_t n);
void fwd_response_done(exchange_t *ex);
void fwd_tunnel_from_upstream(exchange_t *ex, buf_t *b, const char *p, size_t n);
/* The upstream failed: connect error, reset, EOF or a parse error (err tells which). */
void fwd_upstream_failed(exchange_t *ex, int err);
void fwd_upstream_drained(exchange_t *ex);

#endif
