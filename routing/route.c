#include "routing/route.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "discovery/resolve_once.h"
#include "proxy/err.h"

typedef struct backend {
    char *service; /* virtual service name, matched against Host */
    cluster_t *cluster;
} backend_t;

struct route_table {
    enum egress_filter egress_filter;
    route_result_t ingress;
    backend_t *backends;
    unsigned nbackends;
    cluster_t **clusters; /* owned: ingress first, then one per distinct target node */
    unsigned nclusters;
};

static uint64_t or_default(uint64_t v, uint64_t dflt)
{
    return v == DURATION_UNSET ? dflt : v;
}

static int add_cluster(route_table_t *rt, cluster_t *c)
{
    cluster_t **grown = realloc(rt->clusters, (rt->nclusters + 1) * sizeof *grown);
    if (!grown)
        return -1;
    rt->clusters = grown;
    rt->clusters[rt->nclusters++] = c;
    return 0;
}

static cluster_t *ingress_cluster(const config_t *cfg, const cfg_node_t *node)
{
    char name[512];
    uint16_t port = node->nlisteners ? node->listeners[0].port : 0;
    snprintf(name, sizeof name, "cds_ingress_%s_%s_http_%u", cfg->mesh_name, node->name, port);
    endpoint_t *ep = calloc(1, sizeof *ep);
    if (!ep)
        return NULL;
    struct sockaddr_in local = {.sin_family = AF_INET, .sin_port = htons(port)};
    local.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    endpoint_set(ep, (const struct sockaddr *)&local);
    return cluster_new(name, ep, port ? 1 : 0);
}

/* The node a router sends to until weighted routing lands: the heaviest target of the route
 * with the best priority. */
static const cfg_target_t *router_target(const config_t *cfg, const char *router)
{
    const cfg_route_t *best = NULL;
    for (unsigned i = 0; i < cfg->nroutes; i++) {
        const cfg_route_t *r = &cfg->routes[i];
        if (!r->router || strcmp(r->router, router) != 0 || r->ntargets == 0)
            continue;
        unsigned rp = r->priority < 0 ? 1001u : (unsigned)r->priority;
        unsigned bp = best ? (best->priority < 0 ? 1001u : (unsigned)best->priority) : 1002u;
        if (rp < bp)
            best = r;
    }
    if (!best)
        return NULL;
    const cfg_target_t *t = &best->targets[0];
    for (unsigned i = 1; i < best->ntargets; i++)
        if (best->targets[i].weight > t->weight)
            t = &best->targets[i];
    return t;
}

static cluster_t *find_cluster(route_table_t *rt, const char *name)
{
    for (unsigned i = 0; i < rt->nclusters; i++)
        if (strcmp(rt->clusters[i]->name, name) == 0)
            return rt->clusters[i];
    return NULL;
}

static cluster_t *egress_cluster(route_table_t *rt, const config_t *cfg, const char *node_name,
                                 uint16_t port_hint, const char *path, diag_t *d)
{
    const cfg_node_t *target = config_node(cfg, node_name);
    if (!target) {
        diag_add(d, cfg->source, path, "virtual node \"%s\" does not exist", node_name);
        return NULL;
    }
    uint16_t port = port_hint ? port_hint : target->nlisteners ? target->listeners[0].port : 0;
    char name[512];
    snprintf(name, sizeof name, "cds_egress_%s_%s_http_%u", cfg->mesh_name, target->name, port);
    cluster_t *c = find_cluster(rt, name);
    if (c)
        return c;
    endpoint_t *eps = NULL;
    unsigned n = 0;
    resolve_once(target, port, &eps, &n);
    c = cluster_new(name, eps, n);
    if (!c || add_cluster(rt, c) != 0) {
        cluster_free(c);
        return NULL;
    }
    return c;
}

static int add_backend(route_table_t *rt, const config_t *cfg, const char *vs_name,
                       const char *path, diag_t *d)
{
    const cfg_service_t *vs = config_service(cfg, vs_name);
    if (!vs) {
        diag_add(d, cfg->source, path, "virtual service \"%s\" does not exist", vs_name);
        return -1;
    }
    const char *node_name = NULL;
    uint16_t port = 0;
    if (vs->provider == PROVIDER_NODE) {
        node_name = vs->provider_name;
    } else if (vs->provider == PROVIDER_ROUTER) {
        const cfg_target_t *t = router_target(cfg, vs->provider_name);
        if (t) {
            node_name = t->node;
            port = t->port;
        }
    }
    cluster_t *c = NULL;
    if (node_name) {
        c = egress_cluster(rt, cfg, node_name, port, path, d);
        if (!c)
            return -1;
    }
    backend_t *b = &rt->backends[rt->nbackends++];
    b->service = strdup(vs_name);
    b->cluster = c; /* NULL: a service with no provider yet answers 503 */
    return 0;
}

route_table_t *route_table_build(const config_t *cfg, const cfg_node_t *node, diag_t *d)
{
    route_table_t *rt = calloc(1, sizeof *rt);
    if (!rt)
        return NULL;
    rt->egress_filter = cfg->egress_filter;
    cluster_t *in = ingress_cluster(cfg, node);
    if (!in || add_cluster(rt, in) != 0) {
        cluster_free(in);
        route_table_free(rt);
        return NULL;
    }
    const cfg_listener_t *l = node->nlisteners ? &node->listeners[0] : NULL;
    rt->ingress.cluster = in;
    rt->ingress.timeout_ms =
        l ? or_default(l->per_request_ms, ROUTE_DEFAULT_TIMEOUT_MS) : ROUTE_DEFAULT_TIMEOUT_MS;
    rt->ingress.idle_ms = l ? or_default(l->idle_ms, ROUTE_DEFAULT_IDLE_MS) : ROUTE_DEFAULT_IDLE_MS;
    rt->backends = calloc(node->nbackends ? node->nbackends : 1, sizeof *rt->backends);
    int failed = !rt->backends;
    for (unsigned i = 0; i < node->nbackends && !failed; i++) {
        char path[128];
        snprintf(path, sizeof path, "virtualNodes[%s].spec.backends[%u]", node->name, i);
        failed = add_backend(rt, cfg, node->backends[i], path, d) != 0;
    }
    if (failed) {
        route_table_free(rt);
        return NULL;
    }
    return rt;
}

void route_table_free(route_table_t *rt)
{
    if (!rt)
        return;
    for (unsigned i = 0; i < rt->nbackends; i++)
        free(rt->backends[i].service);
    for (unsigned i = 0; i < rt->nclusters; i++)
        cluster_free(rt->clusters[i]);
    free(rt->backends);
    free(rt->clusters);
    free(rt);
}

int route_ingress(const route_table_t *rt, route_result_t *out)
{
    *out = rt->ingress;
    return 0;
}

int route_egress(const route_table_t *rt, const char *host, size_t len, route_result_t *out)
{
    /* Host is `name` or `name:port` (RFC 9110 §7.2); an IPv6 literal keeps its brackets. */
    const char *colon = memrchr(host, ':', len);
    if (colon && !memchr(colon, ']', (size_t)(host + len - colon)))
        len = (size_t)(colon - host);
    if (len > 0 && host[len - 1] == '.') /* a fully qualified name matches too */
        len--;
    for (unsigned i = 0; i < rt->nbackends; i++) {
        const backend_t *b = &rt->backends[i];
        if (strlen(b->service) == len && strncasecmp(b->service, host, len) == 0) {
            out->cluster = b->cluster;
            out->timeout_ms = ROUTE_DEFAULT_TIMEOUT_MS;
            out->idle_ms = ROUTE_DEFAULT_IDLE_MS;
            out->service = b->service;
            return 0;
        }
    }
    return ERR_NO_ROUTE;
}

enum egress_filter route_egress_filter(const route_table_t *rt)
{
    return rt->egress_filter;
}

unsigned route_clusters(const route_table_t *rt, cluster_t *const **out)
{
    *out = rt->clusters;
    return rt->nclusters;
}
