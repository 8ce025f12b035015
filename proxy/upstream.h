/* One connection to an upstream endpoint, parsing responses with llhttp.
 *
 * States: CONNECTING -> ACTIVE (an exchange owns it) <-> IDLE (in its pool) -> CLOSING.
 * While ACTIVE every parse event is handed to the exchange (forward.c); the connection never
 * decides what the client sees. Freed only from its close callback. */
#ifndef REMORA_UPSTREAM_H
#define REMORA_UPSTREAM_H

#include <llhttp.h>
#include <uv.h>

#include "proxy/conn.h"

#define UPSTREAM_CONNECT_TIMEOUT 5000 /* ms */

struct exchange;
struct pool;

enum upstream_state { UP_CONNECTING, UP_ACTIVE, UP_IDLE, UP_CLOSING };

typedef struct upstream {
    conn_t c;
    llhttp_t parser;
    struct pool *pool;
    struct exchange *ex;
    enum upstream_state state;
    uv_connect_t connect_req;
    uv_timer_t timer; /* connect timeout, then idle timeout while pooled */
    uint64_t idle_deadline;
    struct upstream *idle_next, *idle_prev;
    buf_t *cur;        /* the buffer llhttp is parsing, for on_body references */
    unsigned requests; /* exchanges served, for reuse accounting */
    unsigned reading : 1;
    unsigned connected : 1;
    unsigned message_done : 1; /* the current response is complete */
    unsigned keep_alive : 1;   /* ...and the connection may carry another */
} upstream_t;

/* Start connecting to the pool's endpoint. Returns NULL with *err on immediate failure. */
upstream_t *upstream_connect(struct pool *p, int *err);
/* Prepare a connection for a new exchange (resets the response parser). */
void upstream_attach(upstream_t *up, struct exchange *ex);
/* Stop or restart reading (backpressure from the client side). */
void upstream_set_reading(upstream_t *up, int on);
/* Close without returning to the pool; the exchange is detached first. */
void upstream_abort(upstream_t *up);
/* The pool takes an idle connection: keep reading to notice a close, start the idle timer. */
void upstream_park(upstream_t *up);

#endif
