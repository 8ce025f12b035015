/* TCP routes: a client connection whose bytes go, as they are, to an endpoint of a cluster
 * (a tcpRoute's pick, a TCP listener's local app, ALLOW_ALL's original destination, the
 * target of a CONNECT).
 *
 * The endpoint is picked and connected to (over TLS when the route says so) before a byte is
 * read from the client; a connect that fails or times out is retried on another endpoint as
 * the route's retry policy allows (App Mesh's default for TCP: twice), which is safe because
 * nothing has been relayed yet. Once connected, both connections go to a relay (relay.h),
 * which reads both sides at once, so server-first protocols work. */
#ifndef REMORA_TCP_PROXY_H
#define REMORA_TCP_PROXY_H

#include <sys/socket.h>

#include "proxy/conn.h"
#include "proxy/tqueue.h"
#include "routing/route.h"

struct worker;

#define TCP_CONNECT_TIMEOUT 5000 /* ms for one connect (and TLS handshake) */

typedef struct tcp_session tcp_session_t;

/* How a connect ends, told to its caller from a later callback, exactly once. */
typedef struct tcp_proxy_events {
    /* `up` is connected and now the caller's (to relay or close). */
    void (*on_connected)(void *ctx, conn_t *up);
    /* Nothing could be reached (UV_E* of the last attempt); the session is gone. */
    void (*on_failed)(void *ctx, int err);
} tcp_proxy_events_t;

/* Connect for `route` (copied; `rt` is held meanwhile, so what the route points at stays
 * valid). With route->passthrough the destination is `dst`, or else `host` (a name or an
 * address literal) and `port`. Events come from later loop passes, never from inside this
 * call; NULL when memory is exhausted (no event follows). */
tcp_session_t *tcp_proxy_connect(struct worker *w, const route_result_t *route, route_table_t *rt,
                                 const struct sockaddr *dst, const char *host, uint16_t port,
                                 const tcp_proxy_events_t *ev, void *ctx);
/* The caller is gone: no event follows. */
void tcp_proxy_cancel(tcp_session_t *s);

/* Take over `client` (accepted, not yet read from) and relay it to what `route` reaches,
 * under its connection limit (route->max_requests). The client is closed if nothing can be
 * reached. */
void tcp_proxy_start(struct worker *w, conn_t *client, const route_result_t *route,
                     route_table_t *rt, const struct sockaddr *dst);

/* The same for a client whose TLS handshake (a STRICT listener's) is still to come: nothing
 * is taken or connected to until it is done, so a client without a certificate holds no slot
 * of maxConnections and opens nothing to the app. A handshake that fails, or is not done by
 * the worker's handshake timeout, closes the client. */
void tcp_proxy_start_after_handshake(struct worker *w, conn_t *client, const route_result_t *route,
                                     route_table_t *rt);

/* The worker's connect timeout fired for a session (the worker owns the queue). */
void tcp_proxy_expired(tq_node_t *n);
/* Its handshake timeout fired for a client of tcp_proxy_start_after_handshake. */
void tcp_proxy_handshake_expired(tq_node_t *n);

#endif
