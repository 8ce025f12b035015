/* A worker: one thread, one libuv loop (loop.h), its own listeners (SO_REUSEPORT), its own
 * upstream pools, tunnels and free lists. Workers share only immutable snapshots and atomic
 * stats. */
#ifndef REMORA_WORKER_H
#define REMORA_WORKER_H

#include <uv.h>

#include "proxy/access_log.h"
#include "proxy/h1_server.h"
#include "proxy/h2_server.h"
#include "proxy/loop.h"
#include "proxy/pool.h"
#include "proxy/relay.h"
#include "proxy/tqueue.h"
#include "tracing/xray.h"

struct server;
struct exchange;

/* A gateway's listener is served as ingress is (its HTTP stats are ingress's). */
enum listener_kind { LISTENER_INGRESS, LISTENER_EGRESS, LISTENER_GATEWAY };

#define WORKER_MAX_LISTENERS 8
#define WORKER_INGRESS       0
#define WORKER_EGRESS        1

/* A listener as /listeners and the stats name it (lds_KIND_0.0.0.0_PORT, listener.0.0.0.0_PORT):
 * what each worker opens on that port, and where every worker's socket there counts. */
typedef struct listener_slot {
    enum listener_kind kind;
    uint16_t port;
    listener_stats_t cx; /* every connection, HTTP or TCP */
    ssl_stats_t ssl;     /* its TLS handshakes (listener.ADDR.ssl.*) */
} listener_slot_t;

/* The KIND of lds_KIND_...: a gateway's listeners are "ingress", as Envoy names them. */
static inline const char *listener_kind_name(enum listener_kind kind)
{
    return kind == LISTENER_EGRESS ? "egress" : "ingress";
}

typedef struct listener {
    uv_tcp_t tcp;  /* 0.0.0.0:port */
    uv_tcp_t tcp6; /* [::]:port, IPv6 only (where the host has IPv6) */
    struct worker *w;
    enum listener_kind kind;
    uint16_t port;
    listener_slot_t *slot; /* the server's, at this listener's index */
    int open, open6;
    h1_server_config_t h1; /* its HTTP/1.1 connections */
    h2_server_config_t h2; /* its HTTP/2 ones, and those whose protocol is not known yet */
} listener_t;

typedef struct tunnel {
    struct tunnel *next, *prev;
    relay_t *relay;
    relay_owner_t owner;
    struct worker *w;
    cluster_t *cluster; /* a TCP route's: its active connection, and a slot if `slot` */
    int slot;
} tunnel_t;

typedef struct worker {
    loop_t loop; /* first: the loop's owner pointer leads back here */
    struct server *srv;
    struct route_table *routes;              /* this worker's reference to the snapshot */
    struct route_table *_Atomic next_routes; /* a newer snapshot, handed over by reload */
    access_log_t *alog; /* the access log of `routes` (a reference), or NULL: none */
    /* The access log of the newer snapshot: (uintptr_t)log | 1 (so a NULL log is a value);
     * 0 when nothing new. Published before next_routes and adopted with it. */
    _Atomic uintptr_t next_log;
    access_log_worker_t alog_w; /* this worker's slots in every access log */
    unsigned id;
    uv_thread_t thread;
    uv_async_t wake; /* main thread -> worker: look at srv->state */
    /* Held to send on `wake` and to close it: a worker that has finished closes it (and then
     * its loop) while the main thread or another worker may still be waking it. */
    uv_mutex_t wake_lock;
    int wake_closed;         /* under wake_lock */
    uv_prepare_t prepare;    /* deferred work and writes, before the loop blocks */
    uv_check_t check;        /* the same after each I/O pass */
    uv_timer_t housekeeping; /* gives freed memory back after a burst of connections */
    /* Requests in flight; the most at once since the last housekeeping tick (exchange.c keeps
     * both); the most at once since the free lists were last cut; the most at once, and the most
     * connections open, since memory was last trimmed. */
    unsigned live_exchanges, peak_exchanges, lists_peak, trim_peak_exchanges, trim_peak_conns;
    /* A sidecar's ingress ([WORKER_INGRESS]) and egress ([WORKER_EGRESS]); a virtual
     * gateway's listeners, in its spec's order. */
    listener_t listeners[WORKER_MAX_LISTENERS];
    unsigned nlisteners;
    xray_emitter_t xray; /* when tracing is on */
    pool_table_t pools;
    tunnel_t *tunnels; /* open Upgrade tunnels and TCP relays, for draining */
    unsigned ntunnels;
    tqueue_t tcp_connect_q;   /* TCP routes connecting (tcp_proxy.c) */
    tqueue_t tls_handshake_q; /* TLS clients of TCP listeners before their handshake */
    unsigned nconnecting;
    uint64_t rng;                    /* xorshift state for request ids, seeded from getrandom */
    struct exchange *free_exchanges; /* kept with their timers */
    unsigned nfree_exchanges;
    slab_t exchanges; /* where exchanges live (base/slab.h): their pages go back after a burst */
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
/* The access log of the snapshot about to be published (may be NULL: none); call it before
 * worker_publish, which it goes into force with. Takes a reference. Thread-safe. */
void worker_publish_log(worker_t *w, access_log_t *log);
void worker_join(worker_t *w);

/* A fresh X-Request-Id (UUID version 4) into out[37]. */
void worker_request_id(worker_t *w, char out[37]);
/* Relay bytes between a client and an upstream connection (an Upgrade tunnel, a TCP route);
 * the worker keeps it for draining. Takes ownership of both connections and pending buffers.
 * `cluster` (may be NULL): its upstream_cx_active is decremented when the relay ends, and with
 * `slot` one connection slot is given back. */
void worker_start_relay(worker_t *w, conn_t *client, buf_t *cb, const char *cp, size_t cn,
                        conn_t *upstream, buf_t *ub, const char *up, size_t un, uint64_t idle_ms,
                        cluster_t *cluster, int slot);
/* Whether an endpoint is one of remora's own listeners (a loop). */
int worker_is_own_listener(worker_t *w, const endpoint_t *ep);
/* A connection or session ended: if draining and nothing is left, end the loop. */
void worker_maybe_finish(worker_t *w);

#endif
