/* A client connection on the ingress or egress listener: reads and parses requests (llhttp),
 * one exchange at a time, in order. Pipelined requests wait in the read buffer, parsing paused,
 * until the previous response is complete (RFC 9112 §9.3.2).
 *
 * One timer covers the phases of the connection: the header timeout while a request head
 * arrives, the idle timeout while its body streams and between requests, and the per-request
 * timeout while the response is awaited. */
#ifndef REMORA_DOWNSTREAM_H
#define REMORA_DOWNSTREAM_H

#include <llhttp.h>
#include <uv.h>

#include "discovery/cluster.h"
#include "proxy/conn.h"
#include "proxy/worker.h"

enum ds_timer { DS_TIMER_NONE, DS_TIMER_HEADERS, DS_TIMER_IDLE, DS_TIMER_REQUEST };

typedef struct downstream {
    conn_t c;
    llhttp_t parser;
    listener_t *listener;
    struct exchange *ex;
    uv_timer_t timer;
    enum ds_timer timer_phase;
    uint64_t deadline;              /* when the current phase times out (loop time, ms); 0: none */
    uint64_t armed_for;             /* the deadline the libuv timer is set for */
    uv_timer_t try_timer;           /* retryPolicy.perRetryTimeout of the current attempt */
    endpoint_t orig_dst;            /* where iptables REDIRECT meant the connection to go */
    struct downstream *next, *prev; /* worker's list */
    buf_t *pending;                 /* unparsed bytes of pipelined requests (or tunnel data) */
    const char *pending_p;
    size_t pending_n;
    buf_t *pending_cur; /* the buffer llhttp is parsing, for on_body references */
    char client_ip[48];
    unsigned requests;
    unsigned reading : 1;
    unsigned paused : 1;   /* parser paused after a complete request */
    unsigned peer_eof : 1; /* the client half-closed; finish the current response, then close */
    unsigned closing : 1;  /* finishing: flushed, shut down, lingering */
    unsigned in_parse : 1;
    unsigned upstream_full : 1; /* the upstream's write queue is over the high-water mark */
    unsigned has_orig_dst : 1;
} downstream_t;

/* The listener accepted a connection: set it up and start reading. */
void downstream_accept(listener_t *l);
/* The exchange is over (response complete, or abandoned): go on with the next request or
 * close, as the exchange decided. */
void downstream_exchange_done(downstream_t *ds);
/* The upstream switched protocols: from now on bytes flow both ways unparsed. */
void downstream_start_tunnel(downstream_t *ds);
/* Stop reading the client while the upstream cannot keep up, and start again. */
void downstream_set_upstream_full(downstream_t *ds, int full);
/* Begin the per-request deadline (request complete, response awaited). */
void downstream_start_request_timer(downstream_t *ds, uint64_t ms);
void downstream_start_try_timer(downstream_t *ds, uint64_t ms);
void downstream_stop_try_timer(downstream_t *ds);
/* Parsing was paused while the request waited for a slot: go on with its body. */
void downstream_resume(downstream_t *ds);
/* Flush what is queued and close once it is written (a broken or final response). */
void downstream_finish(downstream_t *ds);
/* Close now; any exchange is abandoned. */
void downstream_abort(downstream_t *ds);
/* The server drains: close idle connections now, others after their current response. */
void downstream_drain_all(worker_t *w);
/* The drain deadline passed: close every connection now. */
void downstream_abort_all(worker_t *w);

#endif
