/* Routing by port: the node's listeners as ingress serves them (HTTP or TCP, each with its
 * TLS), and egress ports: which backend a connection's original destination port belongs to,
 * and for a TCP backend, the pick of its tcpRoute's targets. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "routing/route_impl.h"

/* ---- ingress ---- */

static void build_listener(route_table_t *rt, registry_t *reg, const cfg_listener_t *l,
                           route_listener_t *out, diag_t *d)
{
    const cfg_node_t *node = rt->node;
    uint16_t port = l ? l->port : 0;
    char name[600];
    snprintf(name, sizeof name, "cds_ingress_%s_%s_%s_%u", rt->cfg->mesh_name, node->name,
             l ? l->protocol : "http", port);
    out->port = port;
    out->tcp = l && strcmp(l->protocol, "tcp") == 0;
    if (!rt->cfg->serving_gateway) /* a gateway has no local app */
        out->r.cluster = route_registry_cluster(reg, name, NULL, port, 1);
    out->r.timeout_ms = l && !out->tcp
                            ? route_or_default(l->per_request_ms, ROUTE_DEFAULT_TIMEOUT_MS)
                            : (out->tcp ? 0 : ROUTE_DEFAULT_TIMEOUT_MS);
    out->r.idle_ms =
        l ? route_or_default(l->idle_ms, ROUTE_DEFAULT_IDLE_MS) : ROUTE_DEFAULT_IDLE_MS;
    /* Limits belong to this snapshot: a rejected reload never reaches a request. http2 and
     * grpc pools have maxRequests alone (Envoy's HTTP/2 pool has no pending-request breaker):
     * max_pending stays 0, unlimited. */
    if (l) {
        out->r.max_requests = l->max_connections;
        out->r.max_pending = l->max_pending;
    }
    out->r.upstream_h2 = (unsigned)route_listener_h2(l); /* the app is spoken to as the listener */
    out->r.grpc = (unsigned)route_listener_grpc(l);
    if (!out->r.cluster) {
        out->r.status = 503;
        out->r.reason = "no local app listener";
    }
    if (rt->cfg->serving_gateway && l)
        out->r.timeout_ms = ROUTE_DEFAULT_TIMEOUT_MS; /* a route's, once one is chosen */
    if (l && l->tls.mode != TLS_DISABLED) {
        out->tls_mode = l->tls.mode;
        out->tls = route_hold_tls(rt, tls_server_ctx(&reg->tls, &l->tls, rt->cfg->source, d));
    }
}

/* A sidecar's node listeners, or a gateway's listeners (their TLS and connection pools; the
 * gateway's routes decide where requests go). */
void route_build_ingress(route_table_t *rt, registry_t *reg, diag_t *d)
{
    const cfg_gateway_t *g = rt->cfg->serving_gateway;
    const cfg_listener_t *ls = g ? g->listeners : rt->node->listeners;
    unsigned n = g ? g->nlisteners : rt->node->nlisteners;
    rt->ningress = n ? n : 1;
    rt->ingress = calloc(rt->ningress, sizeof *rt->ingress);
    if (!rt->ingress) {
        rt->ningress = 0;
        return;
    }
    for (unsigned i = 0; i < rt->ningress; i++)
        build_listener(rt, reg, n ? &ls[i] : NULL, &rt->ingress[i], d);
}

const route_listener_t *route_ingress(const route_table_t *rt, uint16_t port)
{
    for (unsigned i = 0; port && i < rt->ningress; i++)
        if (rt->ingress[i].port == port)
            return &rt->ingress[i];
    return &rt->ingress[0];
}

/* ---- egress ports ---- */

static const tcp_port_t *tcp_port(const route_table_t *rt, uint16_t port)
{
    for (unsigned i = 0; i < rt->ntcp_ports; i++)
        if (rt->tcp_ports[i].port == port)
            return &rt->tcp_ports[i];
    return NULL;
}

static int http_port(const route_table_t *rt, uint16_t port)
{
    for (unsigned i = 0; i < rt->nhttp_ports; i++)
        if (rt->http_ports[i] == port)
            return 1;
    return 0;
}

static void add_http_port(route_table_t *rt, uint16_t port)
{
    if (http_port(rt, port))
        return;
    uint16_t *p = realloc(rt->http_ports, (rt->nhttp_ports + 1) * sizeof *p);
    if (!p)
        return;
    rt->http_ports = p;
    p[rt->nhttp_ports++] = port;
}

/* The tcpRoute serving a router's tcp listener on `port`: the first in match order. */
static route_t *tcp_route_for(const router_t *ro, uint16_t port)
{
    for (unsigned i = 0; i < ro->nroutes; i++) {
        route_t *r = ro->routes[i];
        if (r->cfg->tcp && (r->cfg->port == port || (!r->cfg->port && ro->cfg->nports == 1)))
            return r;
    }
    return NULL;
}

/* One TCP port for backend i; a port two backends claim is refused (App Mesh's rule). */
static void add_tcp_port(route_table_t *rt, unsigned i, tcp_port_t tp, diag_t *d)
{
    const tcp_port_t *seen = tcp_port(rt, tp.port);
    if (seen || http_port(rt, tp.port)) {
        char path[96];
        snprintf(path, sizeof path, "virtualNodes[%u].spec.backends[%u]",
                 (unsigned)(rt->node - rt->cfg->nodes), i);
        diag_add(d, rt->cfg->source, path,
                 "%s's TCP port %u is also %s's: TCP is routed by port alone, so two backends "
                 "cannot share a TCP port",
                 tp.b->svc->name, tp.port, seen ? seen->b->svc->name : "an HTTP backend");
        return;
    }
    tcp_port_t *p = realloc(rt->tcp_ports, (rt->ntcp_ports + 1) * sizeof *p);
    if (!p)
        return;
    rt->tcp_ports = p;
    p[rt->ntcp_ports++] = tp;
}

/* Backend i's ports: its router's listeners, or its provider node's. HTTP ones first (pass
 * 0), so that a TCP port clashing with any of them is found (pass 1). */
static void backend_ports(route_table_t *rt, registry_t *reg, unsigned i, int tcp_pass, diag_t *d)
{
    const backend_t *b = &rt->backends[i];
    if (b->router) {
        const cfg_router_t *c = b->router->cfg;
        for (unsigned k = 0; k < c->nports; k++) {
            route_t *r = c->tcp[k] ? tcp_route_for(b->router, c->ports[k]) : NULL;
            if (!tcp_pass && !c->tcp[k])
                add_http_port(rt, c->ports[k]);
            else if (tcp_pass && r)
                add_tcp_port(rt, i, (tcp_port_t){.port = c->ports[k], .b = b, .route = r}, d);
        }
        return;
    }
    const cfg_node_t *n = b->cluster ? config_node(rt->cfg, b->cluster->node) : NULL;
    for (unsigned k = 0; n && k < n->nlisteners; k++) {
        const cfg_listener_t *l = &n->listeners[k];
        int tcp = strcmp(l->protocol, "tcp") == 0;
        if (!tcp_pass && !tcp)
            add_http_port(rt, l->port);
        if (!tcp_pass || !tcp)
            continue;
        cluster_t *c = route_egress_cluster(rt, reg, n->name, l->port);
        tcp_port_t tp = {.port = l->port, .b = b, .cluster = c};
        tp.tls = c ? route_client_tls(rt, reg, b->policy, c, d) : NULL;
        add_tcp_port(rt, i, tp, d);
    }
}

void route_build_ports(route_table_t *rt, registry_t *reg, diag_t *d)
{
    for (int pass = 0; pass < 2; pass++)
        for (unsigned i = 0; i < rt->nbackends; i++)
            backend_ports(rt, reg, i, pass, d);
}

void route_free_ports(route_table_t *rt)
{
    free(rt->tcp_ports);
    free(rt->http_ports);
    free(rt->ingress);
}

enum route_port route_egress_port(route_table_t *rt, uint16_t port, route_result_t *out)
{
    memset(out, 0, sizeof *out);
    const tcp_port_t *tp = port ? tcp_port(rt, port) : NULL;
    if (!tp)
        return port && http_port(rt, port) ? PORT_HTTP : PORT_NONE;
    out->service = tp->b->svc->name;
    out->idle_ms = ROUTE_DEFAULT_IDLE_MS;
    if (tp->route) {
        route_pick(tp->route, tp->b, out);
    } else {
        out->cluster = tp->cluster;
        out->tls = tp->tls;
    }
    out->timeout_ms = 0; /* a TCP connection lasts as long as it is not idle */
    out->retry = (retry_policy_t){ROUTE_TCP_CONNECT_RETRIES, 0, RETRY_CONNECTION_ERROR, 0};
    return PORT_TCP;
}

int route_egress_passthrough(const route_table_t *rt, route_result_t *out)
{
    memset(out, 0, sizeof *out);
    if (!rt->passthrough)
        return 0;
    out->cluster = rt->passthrough;
    out->passthrough = 1;
    out->idle_ms = ROUTE_DEFAULT_IDLE_MS;
    return 1;
}
