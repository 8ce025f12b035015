/* AWS X-Ray tracing (SPEC §7; formats in shared/reference/xray.md).
 *
 * Called by the proxy, never calling back. An exchange keeps an xray_ctx_t: begun at the request
 * head (the incoming header parsed, the sampling decision made, ids drawn), told of each
 * upstream attempt, and finished when the exchange ends, which emits its documents:
 * - ingress: one segment per request, named XRAY_SEGMENT_NAME, origin AWS::AppMesh::Proxy;
 * - egress: a subsegment (namespace remote, named after the virtual service) with one child
 *   per upstream attempt, sent on its own when it continues an incoming trace, inside a new
 *   segment otherwise.
 * Unsampled requests still forward Root;Parent;Sampled=0. Sending is one non-blocking UDP
 * datagram per document, to a socket per worker; a missing daemon costs a counter. */
#ifndef REMORA_XRAY_H
#define REMORA_XRAY_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "config/sampling_rules.h"
#include "base/stats.h"
#include "tracing/trace.h"

#define XRAY_MAX_ATTEMPTS 32    /* attempts recorded in detail; more are counted */
#define XRAY_DOC_MAX      65000 /* header line + document must fit one datagram (daemon: 64 KiB) */
#define XRAY_NAME_MAX     200

typedef struct xray_settings {
    char daemon[256];   /* "host:port", or "tcp:h:p udp:h:p" (the udp one is used) */
    double rate;        /* XRAY_SAMPLING_RATE after the reservoir */
    char manifest[512]; /* XRAY_SAMPLING_RULE_MANIFEST, "" for none */
    char segment_name[256];
    char mesh[256], node[256];
} xray_settings_t;

typedef struct xray xray_t;

/* Per worker: the UDP socket and a document buffer. */
typedef struct xray_emitter {
    int fd;
    char *buf;
    unsigned char rnd[4096]; /* getrandom output, drawn from for ids */
    unsigned rnd_used;
} xray_emitter_t;

typedef struct xray_attempt {
    char id[SPAN_ID_LEN + 1];
    double start, end;
    int status; /* 0: no response (connect failure, reset, timeout) */
    char endpoint[64];
} xray_attempt_t;

typedef struct xray_ctx {
    int sampled;
    int egress;
    int continued; /* the incoming header had a Root and a Parent */
    char trace_id[TRACE_ID_LEN + 1];
    char parent[SPAN_ID_LEN + 1]; /* the incoming Parent */
    char id[SPAN_ID_LEN + 1];     /* our segment (ingress) or subsegment (egress) */
    char extra[TRACE_EXTRA_MAX];
    double start;
    xray_attempt_t *attempts; /* XRAY_MAX_ATTEMPTS of them, allocated when sampled */
    unsigned nattempts;
} xray_ctx_t;

/* What the finished documents say about the request. */
typedef struct xray_request {
    const char *method;
    const char *host;
    size_t host_len;
    const char *path;
    size_t path_len;
    const char *query; /* after '?', or NULL */
    size_t query_len;
    const char *user_agent;
    size_t user_agent_len;
    const char *client_ip;
    int client_ip_from_xff;
    const char *service;     /* egress: the virtual service */
    const char *rollout;     /* egress: the rollout driving the route's weights, or NULL */
    unsigned rollout_weight; /* its canary's weight when the request was routed */
    int secure;              /* the client came over TLS: an https URL */
    int status;              /* what the client got; 0 if nothing */
    int64_t content_length;  /* -1 unknown */
} xray_request_t;

/* NULL when `spec` (xray_settings_t.daemon's form) names a host and a port of 1..65535, else
 * what is wrong with it ("expected HOST:PORT ..."); the host is not resolved. Static text. */
const char *xray_daemon_check(const char *spec);
/* NULL with diagnostics when the manifest or daemon address is bad. */
xray_t *xray_new(const xray_settings_t *s, diag_t *d);
void xray_free(xray_t *x);
int xray_emitter_open(xray_t *x, xray_emitter_t *e);
void xray_emitter_close(xray_emitter_t *e);

void xray_begin(xray_t *x, xray_emitter_t *e, xray_ctx_t *ctx, int egress, const char *header,
                size_t header_len, const char *host, size_t host_len, const char *method,
                const char *path, size_t path_len);
/* The value of the X-Amzn-Trace-Id to send upstream; returns its length. */
size_t xray_outgoing(const xray_ctx_t *ctx, char *out, size_t cap);
void xray_attempt_start(xray_emitter_t *e, xray_ctx_t *ctx, const char *endpoint);
void xray_attempt_end(xray_ctx_t *ctx, int status);
/* Emits the documents (when sampled) and releases what the context holds. */
void xray_finish(xray_t *x, xray_emitter_t *e, xray_ctx_t *ctx, const xray_request_t *req);

/* Counters for /stats: documents sent, send failures, sampled and unsampled requests. */
typedef struct xray_stats {
    stat_t sent, send_failed, sampled, unsampled, split;
} xray_stats_t;
xray_stats_t *xray_stats(xray_t *x);

/* Sampling alone, for tests: 1 when (host, method, path) at second `now_s`, with a uniform
 * random `u` in [0, 1), is to be traced. */
int xray_sample(xray_t *x, const char *host, size_t host_len, const char *method, const char *path,
                size_t path_len, uint64_t now_s, double u);

#endif
