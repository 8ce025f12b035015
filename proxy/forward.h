/* One request/response exchange, from request head to the end of the response: ③ route,
 * ④ pick an endpoint, ⑤ take a pooled connection, ⑥ relay the response, with the route's
 * retries and timeouts.
 *
 * This is the single place where failures become the client's 4xx/5xx: the downstream and
 * upstream connections report events here and never answer the client themselves.
 *
 * Ownership: the downstream connection owns its current exchange (one at a time; pipelined
 * requests wait their turn). The exchange owns its upstream connection while it runs and hands
 * it back to the pool, or aborts it, before it ends. What routing decided is copied into the
 * exchange, so a reload mid-request changes nothing for it. */
#ifndef REMORA_FORWARD_H
#define REMORA_FORWARD_H

#include <stdint.h>

#include "discovery/cluster.h"
#include "base/buf.h"
#include "proxy/h1.h"
#include "routing/route.h"
#include "tracing/xray.h"

struct downstream;
struct upstream;
struct pool;
struct worker;

#define REPLAY_MAX_BYTES (64 * 1024) /* request body kept for a retry; larger is not retried */
#define REPLAY_MAX_SEGS  32

enum req_state { REQ_HEAD, REQ_BODY, REQ_DONE };
enum resp_state { RESP_WAITING, RESP_BODY, RESP_DONE };
enum body_framing { BODY_NONE, BODY_LENGTH, BODY_CHUNKED, BODY_UNTIL_CLOSE };

typedef struct replay_seg {
    buf_t *buf;
    const char *p;
    size_t n;
} replay_seg_t;

typedef struct exchange {
    struct downstream *ds;
    struct upstream *up;
    struct pool *pool;
    route_result_t route; /* the cluster, timeouts, retry policy and counters chosen */
    endpoint_t endpoint;  /* this attempt's endpoint */
    h1_head_t req, resp;
    char *target; /* normalized path sent upstream (NUL-terminated) */
    size_t target_len;
    const char *query; /* after '?', or NULL; in the same allocation as target */
    size_t query_len;
    const char *request_id;
    char request_id_buf[37];
    enum req_state req_state;
    enum resp_state resp_state;
    enum body_framing req_out;  /* how the request body is framed toward the upstream */
    enum body_framing resp_out; /* how the response body is framed toward the client */
    int status;                 /* the status the client was (or will be) sent */
    unsigned attempts;          /* upstream attempts so far (1 + retries) */
    replay_seg_t replay[REPLAY_MAX_SEGS];
    unsigned nreplay;
    size_t replay_bytes;
    struct exchange *wait_prev, *wait_next; /* the worker's queue for a connection-pool slot */
    xray_ctx_t *trace;                      /* when tracing is on */
    xray_ctx_t trace_ctx;                   /* what `trace` points at */
    struct exchange *next_free;             /* the worker's free list */
    uint64_t resp_bytes;                    /* response body bytes relayed */
    uint8_t method;
    uint8_t major, minor;    /* the client's HTTP version */
    unsigned keep_alive : 1; /* the client connection may carry another request */
    unsigned upgrade : 1;    /* the client asked for a protocol upgrade */
    unsigned expect_continue : 1;
    unsigned local_reply : 1;   /* remora answered; the upstream never saw this request */
    unsigned tunnel : 1;        /* upgraded: raw bytes both ways */
    unsigned reused : 1;        /* the upstream connection came from the pool */
    unsigned stale_retried : 1; /* sent again after a pooled connection turned out closed */
    unsigned replay_lost : 1;   /* the body outgrew the replay buffer: no more retries */
    unsigned has_slot : 1;      /* holds one of the cluster's max_requests slots */
    unsigned waiting : 1;       /* queued for a slot */
} exchange_t;

exchange_t *exchange_new(struct downstream *ds);
void exchange_free(exchange_t *ex);
/* At exit: free the worker's kept exchanges. */
void exchange_free_list(struct worker *w);

/* From the downstream parser. fwd_request_head returns 0 to read the body, or 1 to stop
 * parsing: remora answered locally, or the request waits for a connection-pool slot. */
int fwd_request_head(exchange_t *ex);
void fwd_request_body(exchange_t *ex, buf_t *b, const char *p, size_t n);
void fwd_request_done(exchange_t *ex);
void fwd_tunnel_from_client(exchange_t *ex, buf_t *b, const char *p, size_t n);
/* The client went away (reset, or EOF before its request was complete). */
void fwd_client_gone(exchange_t *ex);
/* The per-request deadline passed. */
void fwd_timeout(exchange_t *ex);
/* The per-try deadline (retryPolicy.perRetryTimeout) passed. */
void fwd_try_timeout(exchange_t *ex);
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

/* Start the requests of this worker that wait for a connection-pool slot, while slots last. */
void fwd_start_waiting(struct worker *w);

#endif
