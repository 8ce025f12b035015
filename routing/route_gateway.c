/* A virtual gateway's routes (shared/reference/cloudmap-gateways-rollouts.md §3.4, §3.5):
 * matched in order (priority, then the longer prefix, then document order) on the listener's
 * port and Host, then as their kind says: httpRoute and http2Route by path, method, headers
 * and query; grpcRoute by serviceName (the first segment of :path) and metadata. The request
 * is rewritten with App Mesh's defaults (the matched prefix becomes "/", Host the target
 * virtual service's name; a grpcRoute rewrites the Host alone), then routed as a sidecar's
 * egress routes a request to that virtual service. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "routing/route_impl.h"

typedef struct gw_route {
    route_t m; /* m.cfg is the gateway route's match */
    const cfg_gateway_route_t *cfg;
    const backend_t *b; /* the target virtual service */
} gw_route_t;

static int gw_order(const void *a, const void *b)
{
    const gw_route_t *x = a, *y = b;
    const route_t *px = &x->m, *py = &y->m;
    return route_order(&px, &py);
}

void route_build_gateway(route_table_t *rt, diag_t *d)
{
    const config_t *c = rt->cfg;
    const cfg_gateway_t *g = c->serving_gateway;
    if (!g)
        return;
    rt->gw_routes = calloc(c->ngateway_routes + 1, sizeof *rt->gw_routes);
    if (!rt->gw_routes) {
        diag_add(d, c->source, "$", "out of memory building the gateway's routes");
        return;
    }
    for (unsigned i = 0; i < c->ngateway_routes; i++) {
        const cfg_gateway_route_t *r = &c->gateway_routes[i];
        if (strcmp(r->gateway, g->name) != 0)
            continue;
        gw_route_t *gr = &rt->gw_routes[rt->ngw_routes++];
        gr->cfg = r;
        gr->m.cfg = &r->match;
        gr->m.index = r->index;
        gr->b = route_backend(rt, r->service, strlen(r->service));
        char where[64];
        snprintf(where, sizeof where, "gatewayRoutes[%u].spec.%s", r->index,
                 route_kind_names[r->match.kind]);
        route_compile_match(&gr->m, c->source, where, d);
    }
    qsort(rt->gw_routes, rt->ngw_routes, sizeof *rt->gw_routes, gw_order);
}

void route_free_gateway(route_table_t *rt)
{
    for (unsigned i = 0; i < rt->ngw_routes; i++)
        route_free_route(&rt->gw_routes[i].m);
    free(rt->gw_routes);
}

/* match.hostname against the request's Host (its name, without a port; no case). */
static int host_matches(const cfg_gateway_route_t *r, const route_request_t *req)
{
    size_t n = req->host_len, k = r->host ? strlen(r->host) : 0;
    const char *h = req->host;
    if (n && h[n - 1] == '.')
        n--;
    switch (r->host_kind) {
    case GW_HOST_ANY:
        return 1;
    case GW_HOST_EXACT:
        return h && n == k && strncasecmp(h, r->host, k) == 0;
    case GW_HOST_SUFFIX:
        return h && n > k && strncasecmp(h + n - k, r->host, k) == 0;
    }
    return 0;
}

/* The rewritten path?query into rw->target: the matched prefix replaced by prefix.value, or
 * by "/" (App Mesh's default, with no "//" where the rest starts with "/"); path.exact replaces
 * the whole path; the query is kept. */
static int rewrite_target(const cfg_gateway_route_t *r, const route_request_t *req,
                          route_rewrite_t *rw)
{
    const cfg_route_t *m = &r->match;
    const char *rest = req->path;
    size_t rest_len = req->path_len;
    const char *head = "";
    if (r->path_exact) {
        head = r->path_exact;
        rest_len = 0;
    } else if (m->path && m->path_kind == PATH_PREFIX && r->rewrite_prefix) {
        size_t plen = strlen(m->path);
        head = r->prefix_value ? r->prefix_value : "/";
        rest = req->path + plen;
        rest_len = req->path_len - plen;
        size_t hlen = strlen(head);
        if (rest_len && rest[0] == '/' && hlen && head[hlen - 1] == '/')
            rest++, rest_len--;
    }
    int n = snprintf(rw->target, rw->cap, "%s%.*s", head, (int)rest_len, rest);
    if (n < 0 || (size_t)n >= rw->cap)
        return -1;
    rw->path_len = (size_t)n;
    if (req->query) {
        int q =
            snprintf(rw->target + n, rw->cap - (size_t)n, "?%.*s", (int)req->query_len, req->query);
        if (q < 0 || (size_t)q >= rw->cap - (size_t)n)
            return -1;
        n += q;
    }
    rw->target_len = (size_t)n;
    return 0;
}

int route_gateway(route_table_t *rt, uint16_t port, const route_request_t *req, route_rewrite_t *rw,
                  route_result_t *out)
{
    route_result_init(out);
    for (unsigned i = 0; i < rt->ngw_routes; i++) {
        const gw_route_t *gr = &rt->gw_routes[i];
        if (!route_match(&gr->m, req, port) || !host_matches(gr->cfg, req))
            continue;
        rw->route = gr->cfg->name;
        rw->host = gr->cfg->rewrite_host ? gr->cfg->service : NULL;
        if (rewrite_target(gr->cfg, req, rw) != 0) {
            route_no_target(out, 414, "the rewritten path is too long");
            return 1;
        }
        route_request_t to = *req;
        to.path = rw->target;
        to.path_len = rw->path_len;
        to.port = gr->cfg->service_port;
        if (rw->host) {
            to.host = rw->host;
            to.host_len = strlen(rw->host);
        }
        if (!gr->b)
            route_no_target(out, 503, "the gateway route's virtual service is not served");
        else
            route_to_backend(rt, gr->b, &to, out);
        out->grpc |= gr->m.cfg->kind == ROUTE_GRPC; /* a gRPC request, whatever serves it */
        return 1;
    }
    route_no_target(out, 404, NULL);
    return 0;
}
