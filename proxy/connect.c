/* CONNECT from explicit-proxy clients (HTTPS_PROXY=http://127.0.0.1:15001): the target
 * `host:port` is routed as a connection redirected to that port would be. A TCP backend's
 * port goes by its tcpRoute; under ALLOW_ALL anything else goes to host:port itself; under
 * DROP_ALL it is refused (403). The 200 is sent once the upstream is connected, so a target
 * that cannot be reached is answered (503) rather than cut; then the client's connection and
 * the upstream's are relayed as bytes, with whatever the client sent after its request. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/exchange_impl.h"
#include "proxy/tcp_proxy.h"
#include "proxy/worker.h"

#define HOST_MAX 256

/* authority-form (RFC 9112 §3.2.3): host ":" port, the host an IPv6 literal in brackets. */
static int parse_authority(const char *t, size_t n, char host[HOST_MAX], uint16_t *port)
{
    const char *colon = NULL;
    for (size_t i = 0; i < n; i++)
        if (t[i] == ':')
            colon = t + i;
    if (!colon || colon == t || colon == t + n - 1)
        return -1;
    unsigned long p = 0;
    for (const char *c = colon + 1; c < t + n; c++) {
        if (*c < '0' || *c > '9' || (p = p * 10 + (unsigned long)(*c - '0')) > 65535)
            return -1;
    }
    const char *h = t;
    size_t hn = (size_t)(colon - t);
    if (h[0] == '[') {
        if (hn < 3 || h[hn - 1] != ']')
            return -1;
        h++, hn -= 2;
    }
    if (p == 0 || hn >= HOST_MAX)
        return -1;
    memcpy(host, h, hn);
    host[hn] = '\0';
    *port = (uint16_t)p;
    return 0;
}

static void on_connected(void *ctx, conn_t *up)
{
    exchange_t *ex = ctx;
    ex->tcp = NULL;
    head_t *h = head_take(&ex->w->loop);
    if (!h) {
        conn_close(up);
        stat_dec(&ex->route.cluster->stats.upstream_cx_active);
        fwd_local_reply(ex, 503, "out of memory\n");
        return;
    }
    h->status = 200;
    ex->status = 200;
    ex->ss->ops->send_head(ex->ss, h, 0, MSG_UPGRADE); /* no framing: the tunnel follows */
    head_give(&ex->w->loop, h);
    buf_t *cb;
    const char *cp;
    size_t cn;
    server_stream_t *ss = ex->ss;
    ex->ss = NULL;
    conn_t *dc = ss->ops->detach(ss, &cb, &cp, &cn);
    worker_start_relay(ex->w, dc, cb, cp, cn, up, NULL, NULL, 0, ex->route.idle_ms,
                       ex->route.cluster, 0);
    ex->resp_state = RESP_DONE;
    exchange_end(ex, 0);
}

static void on_failed(void *ctx, int err)
{
    exchange_t *ex = ctx;
    ex->tcp = NULL;
    if (err == UV_ELOOP)
        fwd_local_reply(ex, 508, "the CONNECT target is remora itself\n");
    else
        fwd_local_reply(ex, 503, "the CONNECT target cannot be reached\n");
}

static const tcp_proxy_events_t connect_events = {.on_connected = on_connected,
                                                  .on_failed = on_failed};

void connect_request(exchange_t *ex)
{
    char host[HOST_MAX], msg[HOST_MAX + 120];
    uint16_t port;
    const head_t *h = ex->req;
    if (parse_authority(head_str(h, h->target), h->target_len, host, &port) != 0) {
        fwd_local_reply(ex, 400, "a CONNECT target is host:port\n");
        return;
    }
    route_result_t r;
    enum route_port kind = route_egress_port(ex->rt, port, &r);
    if (kind != PORT_TCP && !route_egress_passthrough(ex->rt, &r)) {
        snprintf(msg, sizeof msg,
                 "CONNECT %s:%u: no TCP backend has port %u, and the mesh's egress filter is "
                 "DROP_ALL\n",
                 host, port, port);
        fwd_local_reply(ex, 403, msg);
        return;
    }
    ex->route = r;
    ex->tcp = tcp_proxy_connect(ex->w, &ex->route, ex->rt, NULL, kind == PORT_TCP ? NULL : host,
                                port, &connect_events, ex);
    if (!ex->tcp)
        fwd_local_reply(ex, 503, "out of memory\n");
}

void connect_cancel(exchange_t *ex)
{
    if (!ex->tcp)
        return;
    tcp_proxy_cancel(ex->tcp);
    ex->tcp = NULL;
}
