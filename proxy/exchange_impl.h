/* The exchange's insides, shared by its lifecycle (exchange.c) and its policy (forward.c)
 * only. */
#ifndef REMORA_EXCHANGE_IMPL_H
#define REMORA_EXCHANGE_IMPL_H

#include <stdint.h>

#include "base/arena.h"
#include "discovery/cluster.h"
#include "proxy/access_log.h"
#include "proxy/exchange.h"
#include "proxy/pool.h"
#include "routing/route.h"
#include "tracing/xray.h"

#define REPLAY_MAX_BYTES (64 * 1024) /* request body kept for a retry; larger is not retried */
#define REPLAY_MAX_SEGS  32

enum req_state { REQ_HEAD, REQ_BODY, REQ_DONE };
enum resp_state { RESP_WAITING, RESP_BODY, RESP_DONE };

typedef struct replay_seg {
    buf_t *buf;
    const char *p;
    size_t n;
} replay_seg_t;

struct exchange {
    struct worker *w;
    struct listener *listener;
    route_table_t *rt; /* the snapshot this request was routed with (a reference) */
    server_stream_t *ss;
    client_stream_t *cs;
    head_t *req; /* the client's request head */
    head_t *req_trailers;
    head_t *resp; /* the upstream's response head, while it is relayed */
    route_result_t route;
    struct tcp_session *tcp; /* a CONNECT's upstream, while it connects (connect.c) */
    endpoint_t endpoint;     /* this attempt's endpoint */
    pool_wait_t wait;        /* admission under the route's connection-pool limits */
    uint64_t request_deadline, try_deadline, idle_deadline; /* loop ms; 0: none */
    uint64_t grpc_deadline; /* the gRPC client's grpc-timeout from the request head; 0: none */
    deferred_t later;       /* release, or a failure found while setting up an attempt */
    void (*later_fn)(exchange_t *ex);
    struct exchange *next_free;
    const char *target; /* normalized path plus ?query, sent upstream */
    size_t target_len;
    /* What the client asked for, when a gateway route rewrote `target` (else NULL): the trace
     * shows the client's URL. */
    const char *client_target;
    size_t client_target_len, client_path_len;
    size_t path_len;       /* of target, without the query */
    const char *authority; /* absolute-form authority, or NULL */
    size_t authority_len;
    const char *request_id;
    char peer[48];    /* the client's address (outlives the server stream, for traces) */
    int64_t req_len;  /* request body: its length, BODY_STREAM, or 0 */
    unsigned req_msg; /* MSG_* of the request head */
    enum req_state req_state;
    enum resp_state resp_state;
    int status;                 /* the status the client was (or will be) sent */
    unsigned attempts;          /* upstream attempts so far (1 + retries) */
    xray_ctx_t *trace;          /* when tracing is on: &trace_ctx */
    uint64_t resp_bytes;        /* response body bytes relayed */
    unsigned ended : 1;         /* exchange_end ran: only the release is left */
    unsigned local_reply : 1;   /* remora answered; the upstream never saw this request */
    unsigned stale_retried : 1; /* sent again after a pooled connection turned out closed */
    unsigned replay_lost : 1;   /* the body outgrew the replay buffer: no more retries */
    unsigned continued : 1;     /* 100 Continue sent */
    unsigned client_paused : 1; /* the client's body is held (upstream full, or waiting) */
    unsigned upstream_paused : 1;
    unsigned req_edited : 1; /* the head was made the upstream's (headers_edit_request) */
    unsigned secure : 1;     /* the client came over TLS */
    unsigned grpc : 1;       /* a gRPC request: remora's own answers are gRPC's (http/grpc.h) */
    unsigned refused_retried : 1; /* sent again after an HTTP/2 upstream refused the stream */
    /* uv_hrtime at the request head, its end and (with an access log) the response head;
     * 0: not yet. The histograms and the access log's durations are measured on them. */
    uint64_t start_ns, req_end_ns, resp_head_ns;
    /* What the access log line says (fwd_finish). Response flags and details are recorded
     * where a failure is decided, log or not; the rest only when there is a log. */
    uint32_t rflags;      /* RF_* (access_log.h) */
    const char *details;  /* %RESPONSE_CODE_DETAILS%: why, when remora decided */
    int upstream_err;     /* the last connect failure (%UPSTREAM_TRANSPORT_FAILURE_REASON%) */
    uint64_t req_bytes;   /* request body bytes received */
    uint32_t reply_bytes; /* a local reply's body */
    access_log_t *alog;   /* the worker's log when this request was routed (a reference) */
    access_log_value_t *resp_kept; /* the RESP(...) values of the response (in the arena) */
    int64_t start_sec;             /* wall clock at the request head */
    uint32_t start_nsec;
    /* Not cleared when a kept exchange is reused: each is set up before use. */
    uv_timer_t timer;   /* the one for all its deadlines (exchange_set_timer) */
    uint64_t armed_for; /* what the timer is armed for (it may outlive an exchange's use) */
    arena_t arena;      /* the normalized target, the request id, messages */
    unsigned nreplay;
    size_t replay_bytes;
    replay_seg_t replay[REPLAY_MAX_SEGS];
    xray_ctx_t trace_ctx;
};

/* A failure decided here: Envoy's response flag for it, and remora's reason. */
static inline void exchange_flag(exchange_t *ex, uint32_t flag, const char *details)
{
    ex->rflags |= flag;
    ex->details = details;
}

/* exchange.c */
void exchange_end(exchange_t *ex, int abort);
void exchange_set_timer(exchange_t *ex);
void exchange_later(exchange_t *ex, void (*fn)(exchange_t *ex));
http_stats_t *exchange_http_stats(exchange_t *ex);
extern const stream_events_t exchange_upstream_events;

/* forward.c: the policy, driven by the events */
void fwd_request_head(exchange_t *ex, head_t *h, unsigned msg);
void fwd_request_data(exchange_t *ex, buf_t *b, const char *p, size_t n);
void fwd_request_end(exchange_t *ex, head_t *trailers);
void fwd_client_error(exchange_t *ex, int err);
void fwd_client_drained(exchange_t *ex);
void fwd_response_head(exchange_t *ex, head_t *h, unsigned msg);
void fwd_response_data(exchange_t *ex, buf_t *b, const char *p, size_t n);
void fwd_response_end(exchange_t *ex, head_t *trailers);
void fwd_upstream_error(exchange_t *ex, int err);
void fwd_upstream_drained(exchange_t *ex);
void fwd_timer(exchange_t *ex, uint64_t now);
void fwd_admitted(exchange_t *ex, int result);
/* The end of the exchange as traces and stats see it. */
void fwd_finish(exchange_t *ex);
/* Release the upstream stream, if any, and count it out of upstream_rq_active. */
void fwd_drop_upstream(exchange_t *ex);
/* Answer the client with `status` and a plain-text body, and end the exchange. */
void fwd_local_reply(exchange_t *ex, int status, const char *body);

/* connect.c: CONNECT from explicit-proxy clients */
void connect_request(exchange_t *ex);
void connect_cancel(exchange_t *ex);

#endif
