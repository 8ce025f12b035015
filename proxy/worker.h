/* A worker: one thread, one libuv loop, its own listeners (SO_REUSEPORT), its own upstream
 * pools and buffer free lists. Workers share only immutable snapshots and atomic stats. */
#ifndef REMORA_WORKER_H
#define REMORA_WORKER_H

#include <uv.h>

#include "base/buf.h"
#include "proxy/conn.h"
#include "proxy/pool.h"
#include "tracing/xray.h"

struct server;
struct downstream;

enum listener_kind { LISTENER_INGRESS, LISTENER_EGRESS };

typedef struct listener {
    uv_tcp_t tcp;
    struct worker *w;
    enum listener_kind kind;
    int open;
} listener_t;

typedef struct worker {
    struct server *srv;
    struct route_table *routes;              /* this worker's reference to the snapshot */
    struct route_table *_Atomic next_routes; /* a newer snapshot, handed over by reload */
    unsigned id;
    uv_loop_t loop;
    uv_thread_t thread;
    uv_async_t wake;         /* main thread -> worker: look at srv->state */
    uv_prepare_t prepare;    /* flush before the loop blocks */
    uv_check_t check;        /* flush after each I/O pass */
    uv_timer_t housekeeping; /* gives freed memory back after a burst of connections */
    unsigned live_exchanges, peak_exchanges; /* requests in flight, and their recent peak */
    conn_t *dirty;                           /* connections with queued output */
    bufpool_t bufs;
    wreq_t *free_wreqs;
    unsigned nfree_wreqs;
    listener_t ingress, egress;
    xray_emitter_t xray; /* when tracing is on */
    pool_table_t pools;
    uint64_t rng;                   /* xorshift state for request ids, seeded from getrandom */
    struct downstream *downstreams; /* every open client connection, for draining */
    struct exchange *waiting_head, *waiting_tail; /* requests waiting for a pool slot */
    struct exchange *free_exchanges;              /* kept with their header storage */
    unsigned nfree_exchanges;
    unsigned ndownstreams;
    int draining;
} worker_t;

/* Set up the loop and listeners; the listening sockets are bound here so that bind errors are
 * reported before any thread starts. Returns 0 or a UV_E* code. */
int worker_init(worker_t *w, struct server *srv, unsigned id);
int worker_start(worker_t *w);
/* Wake the worker to act on a server state change (drain, stop). Thread-safe. */
void worker_notify(worker_t *w);
/* Hand the worker a new snapshot (takes a reference on its behalf). Thread-safe. */
void worker_publish(worker_t *w, struct route_table *rt);
void worker_join(worker_t *w);
/* A client connection of this worker closed (it may have been the last one of a drain). */
void worker_downstream_closed(worker_t *w);

/* 64 random bits (not for secrets: request ids). */
uint64_t worker_random(worker_t *w);

wreq_t *worker_wreq_get(worker_t *w);
void worker_wreq_put(worker_t *w, wreq_t *r);

#endif
