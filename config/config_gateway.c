/* Virtual gateways and gateway routes (botocore's VirtualGatewaySpec and GatewayRouteSpec;
 * shared/reference/cloudmap-gateways-rollouts.md §3): parsed with the node parsers where the
 * shapes are the same, validated with the references between them, and turned into the node
 * that stands for a gateway when a table is built for it. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "config/config_impl.h"
#include "config/config_tls.h"

#define NAME_MAX_LEN 255

/* ---- virtualGateways ---- */

static void parse_gateway(jctx_t *j, const cJSON *o, const char *path, cfg_gateway_t *g)
{
    static const char *const fields[] = {"listeners", "backendDefaults", "logging", NULL};
    char p[JPATH_MAX], q[JPATH_MAX];
    g->name = j_string(j, o, path, "virtualGatewayName", J_REQUIRED, 1, NAME_MAX_LEN);
    const cJSON *spec = j_object(j, o, path, "spec", J_REQUIRED);
    jpath(p, path, "spec");
    j_only(j, spec, p, fields);
    g->listeners = cfg_parse_listeners(j, spec, p, 1, &g->nlisteners);
    static const char *const defaults_fields[] = {"clientPolicy", NULL};
    const cJSON *defaults = j_object(j, spec, p, "backendDefaults", J_OPTIONAL);
    jpath(q, p, "backendDefaults");
    j_only(j, defaults, q, defaults_fields);
    config_parse_client_policy(j, defaults, q, &g->default_tls);
    const cJSON *lg = j_object(j, spec, p, "logging", J_OPTIONAL);
    jpath(q, p, "logging");
    if (lg)
        cfg_parse_logging(j, lg, q, &g->access_log);
}

/* ---- gatewayRoutes ---- */

static void parse_hostname(jctx_t *j, const cJSON *match, const char *path, cfg_gateway_route_t *r)
{
    static const char *const kinds[] = {"exact", "suffix", NULL};
    const cJSON *h = j_object(j, match, path, "hostname", J_OPTIONAL), *v = NULL;
    if (!h)
        return;
    char p[JPATH_MAX];
    jpath(p, path, "hostname");
    int which = j_union(j, h, p, kinds, J_REQUIRED, &v);
    if (which < 0)
        return;
    r->host_kind = which == 0 ? GW_HOST_EXACT : GW_HOST_SUFFIX;
    r->host = j_string(j, h, p, kinds[which], J_REQUIRED, 1, 253);
}

static void parse_rewrite(jctx_t *j, const cJSON *a, const char *path, cfg_gateway_route_t *r)
{
    static const char *const fields[] = {"hostname", "prefix", "path", NULL};
    static const char *const grpc_fields[] = {"hostname", NULL};
    static const char *const host_fields[] = {"defaultTargetHostname", NULL};
    static const char *const prefix_fields[] = {"defaultPrefix", "value", NULL};
    static const char *const path_fields[] = {"exact", NULL};
    static const char *const defaults[] = {"DISABLED", "ENABLED", NULL};
    const cJSON *rw = j_object(j, a, path, "rewrite", J_OPTIONAL), *v;
    if (!rw)
        return;
    char p[JPATH_MAX], q[JPATH_MAX];
    jpath(p, path, "rewrite");
    j_only(j, rw, p, r->match.kind == ROUTE_GRPC ? grpc_fields : fields);
    if ((v = j_object(j, rw, p, "hostname", J_OPTIONAL))) {
        jpath(q, p, "hostname");
        j_only(j, v, q, host_fields);
        r->rewrite_host = j_enum(j, v, q, "defaultTargetHostname", defaults, J_OPTIONAL, 1);
    }
    if ((v = j_object(j, rw, p, "prefix", J_OPTIONAL))) {
        jpath(q, p, "prefix");
        j_only(j, v, q, prefix_fields);
        r->rewrite_prefix = j_enum(j, v, q, "defaultPrefix", defaults, J_OPTIONAL, 1);
        r->prefix_value = j_string(j, v, q, "value", J_OPTIONAL, 1, 255);
        if (r->prefix_value && r->prefix_value[0] != '/')
            jerr(j, q, "value", "must start with /, got \"%s\"", r->prefix_value);
        if (r->prefix_value && !r->rewrite_prefix)
            jerr(j, q, NULL, "has a value and defaultPrefix DISABLED: choose one");
    }
    if ((v = j_object(j, rw, p, "path", J_OPTIONAL))) {
        jpath(q, p, "path");
        j_only(j, v, q, path_fields);
        r->path_exact = j_string(j, v, q, "exact", J_REQUIRED, 1, 255);
        if (r->path_exact && r->path_exact[0] != '/')
            jerr(j, q, "exact", "must start with /, got \"%s\"", r->path_exact);
    }
}

static void parse_action(jctx_t *j, const cJSON *route, const char *path, cfg_gateway_route_t *r)
{
    static const char *const fields[] = {"target", "rewrite", NULL};
    static const char *const target_fields[] = {"virtualService", "port", NULL};
    static const char *const vs_fields[] = {"virtualServiceName", NULL};
    char p[JPATH_MAX], q[JPATH_MAX];
    const cJSON *a = j_object(j, route, path, "action", J_REQUIRED);
    if (!a)
        return;
    jpath(p, path, "action");
    j_only(j, a, p, fields);
    const cJSON *t = j_object(j, a, p, "target", J_REQUIRED);
    jpath(q, p, "target");
    j_only(j, t, q, target_fields);
    r->service_port = (uint16_t)j_int(j, t, q, "port", 1, 65535, 0, J_OPTIONAL);
    const cJSON *vs = t ? j_object(j, t, q, "virtualService", J_REQUIRED) : NULL;
    jpath(q, q, "virtualService");
    j_only(j, vs, q, vs_fields);
    if (vs)
        r->service = j_string(j, vs, q, "virtualServiceName", J_REQUIRED, 1, NAME_MAX_LEN);
    parse_rewrite(j, a, p, r);
}

/* httpRoute and http2Route {match, action}; grpcRoute {match {serviceName, hostname, metadata,
 * port}, action}. */
static void parse_route_body(jctx_t *j, const cJSON *m, const char *path, cfg_gateway_route_t *r)
{
    static const char *const fields[] = {"match", "action", NULL};
    static const char *const grpc_match[] = {"serviceName", "hostname", "metadata", "port", NULL};
    char p[JPATH_MAX];
    j_only(j, m, path, fields);
    const cJSON *match = j_object(j, m, path, "match", J_REQUIRED);
    jpath(p, path, "match");
    if (match && r->match.kind == ROUTE_GRPC) {
        j_only(j, match, p, grpc_match);
        r->match.grpc_service = j_string(j, match, p, "serviceName", J_OPTIONAL, 1, 1024);
        r->match.port = (uint16_t)j_int(j, match, p, "port", 1, 65535, 0, J_OPTIONAL);
        cfg_parse_header_list(j, match, p, "metadata", &r->match);
    } else if (match) {
        cfg_parse_match(j, match, p, &r->match, 1);
    }
    if (match)
        parse_hostname(j, match, p, r);
    parse_action(j, m, path, r);
}

static void parse_gateway_route(jctx_t *j, const cJSON *o, const char *path, cfg_gateway_route_t *r)
{
    static const char *const fields[] = {"priority", "httpRoute", "http2Route", "grpcRoute", NULL};
    static const char *const kinds[] = {"httpRoute", "http2Route", "grpcRoute", NULL};
    static const enum route_kind route_kinds[] = {ROUTE_HTTP, ROUTE_HTTP2, ROUTE_GRPC};
    char p[JPATH_MAX];
    r->match.method = r->match.scheme = -1;
    r->match.per_request_ms = r->match.idle_ms = DURATION_UNSET;
    r->rewrite_host = r->rewrite_prefix = 1;
    r->gateway = j_string(j, o, path, "virtualGatewayName", J_REQUIRED, 1, NAME_MAX_LEN);
    r->name = j_string(j, o, path, "gatewayRouteName", J_REQUIRED, 1, NAME_MAX_LEN);
    const cJSON *spec = j_object(j, o, path, "spec", J_REQUIRED), *m = NULL;
    jpath(p, path, "spec");
    j_only(j, spec, p, fields);
    r->match.priority = (int)j_int(j, spec, p, "priority", 0, 1000, -1, J_OPTIONAL);
    int which = spec ? j_union(j, spec, p, kinds, J_REQUIRED, &m) : -1;
    if (which < 0)
        return;
    r->match.kind = route_kinds[which];
    jpath(p, p, kinds[which]);
    parse_route_body(j, m, p, r);
}

/* A list of objects at root[key], each parsed by `each` into an element of `size` bytes. */
static void *parse_array(jctx_t *j, const cJSON *root, const char *key, size_t size, unsigned *n,
                         void (*each)(jctx_t *, const cJSON *, const char *, void *, unsigned))
{
    const cJSON *arr = j_array(j, root, "", key, J_OPTIONAL, 0, 10000);
    *n = (unsigned)cJSON_GetArraySize(arr);
    char *items = calloc(*n ? *n : 1, size);
    unsigned i = 0;
    const cJSON *item;
    cJSON_ArrayForEach(item, arr)
    {
        char path[JPATH_MAX];
        jpath_index(path, "", key, (int)i);
        if (!items)
            break;
        const cJSON *o = cfg_list_item(j, item, key, path);
        if (o)
            each(j, o, path, items + i * size, i);
        i++;
    }
    if (!items)
        *n = 0;
    return items;
}

static void each_gateway(jctx_t *j, const cJSON *o, const char *path, void *out, unsigned i)
{
    cfg_gateway_t *g = out;
    g->index = i;
    parse_gateway(j, o, path, g);
}

static void each_route(jctx_t *j, const cJSON *o, const char *path, void *out, unsigned i)
{
    cfg_gateway_route_t *r = out;
    r->index = i;
    parse_gateway_route(j, o, path, r);
}

void config_parse_gateways(jctx_t *j, const cJSON *root, config_t *c)
{
    c->gateways =
        parse_array(j, root, "virtualGateways", sizeof *c->gateways, &c->ngateways, each_gateway);
    c->gateway_routes = parse_array(j, root, "gatewayRoutes", sizeof *c->gateway_routes,
                                    &c->ngateway_routes, each_route);
}

/* ---- validation ---- */

/* A problem at `where` (a JSON path) + "." + `sub`. */
static void report(const config_t *c, diag_t *d, const char *where, const char *sub,
                   const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static void report(const config_t *c, diag_t *d, const char *where, const char *sub,
                   const char *fmt, ...)
{
    char path[JPATH_MAX + 64], msg[400];
    snprintf(path, sizeof path, "%s%s%s", where, sub[0] && sub[0] != '[' ? "." : "", sub);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    diag_add(d, c->source, path, "%s", msg);
}

static void check_gateway(const config_t *c, const cfg_gateway_t *g, diag_t *d)
{
    char where[JPATH_MAX], sub[JPATH_MAX];
    snprintf(where, sizeof where, "virtualGateways[%u]", g->index);
    for (unsigned k = 0; k < c->ngateways && &c->gateways[k] != g; k++)
        if (c->gateways[k].name && g->name && !strcmp(c->gateways[k].name, g->name))
            report(c, d, where, "virtualGatewayName", "\"%s\" repeats virtualGateways[%u]", g->name,
                   k);
    if (g->nlisteners > GATEWAY_MAX_LISTENERS)
        report(c, d, where, "spec.listeners", "at most %d listeners, got %u", GATEWAY_MAX_LISTENERS,
               g->nlisteners);
    for (unsigned i = 0; i < g->nlisteners; i++)
        for (unsigned k = 0; k < i; k++)
            if (g->listeners[k].port == g->listeners[i].port) {
                snprintf(sub, sizeof sub, "spec.listeners[%u].portMapping.port", i);
                report(c, d, where, sub, "%u is also listeners[%u]'s", g->listeners[i].port, k);
            }
}

static const char *const route_kinds[] = {"httpRoute", "http2Route", "grpcRoute", "tcpRoute"};
/* The listener protocol each route kind serves (enum route_kind order). */
static const char *const kind_protocols[] = {"http", "http2", "grpc", "tcp"};

/* The gateway route kind a listener of `protocol` takes, as a router listener's does. */
static enum route_kind kind_for(const char *protocol)
{
    enum route_kind k = ROUTE_HTTP;
    while (k < ROUTE_TCP && strcmp(kind_protocols[k], protocol) != 0)
        k++;
    return k;
}

/* The listener a gateway route is on: the one on its match.port, else the only one. */
static const cfg_listener_t *route_listener(const cfg_gateway_t *g, uint16_t port)
{
    for (unsigned i = 0; i < g->nlisteners; i++)
        if (g->listeners[i].port == port || (!port && g->nlisteners == 1))
            return &g->listeners[i];
    return NULL;
}

/* The virtual service's provider's listener ports: a router's, or a node's. */
static unsigned provider_ports(const config_t *c, const cfg_service_t *s, const uint16_t **ports,
                               uint16_t *one)
{
    const cfg_router_t *rt =
        s->provider == PROVIDER_ROUTER ? config_router(c, s->provider_name) : NULL;
    const cfg_node_t *n = s->provider == PROVIDER_NODE ? config_node(c, s->provider_name) : NULL;
    if (rt) {
        *ports = rt->ports;
        return rt->nports;
    }
    if (n && n->nlisteners) {
        *one = n->listeners[0].port;
        *ports = one;
        return n->nlisteners == 1 ? 1 : n->nlisteners;
    }
    return 0;
}

static void check_target(const config_t *c, const cfg_gateway_route_t *r, const char *where,
                         diag_t *d)
{
    const cfg_service_t *s = r->service ? config_service(c, r->service) : NULL;
    if (r->service && !s) {
        report(c, d, where, "action.target.virtualService.virtualServiceName",
               "no virtual service \"%s\"", r->service);
        return;
    }
    if (!s)
        return;
    const uint16_t *ports = NULL;
    uint16_t one;
    unsigned n = provider_ports(c, s, &ports, &one);
    if (n > 1 && !r->service_port)
        report(c, d, where, "action.target.port",
               "required: the provider of \"%s\" "
               "has %u listeners",
               r->service, n);
    int found = !r->service_port || s->provider != PROVIDER_ROUTER;
    for (unsigned i = 0; !found && i < n; i++)
        found = ports[i] == r->service_port;
    if (!found)
        report(c, d, where, "action.target.port",
               "%u is not a listener port of the "
               "provider of \"%s\"",
               r->service_port, r->service);
}

static int reserved_prefix(const char *p)
{
    return !strncasecmp(p, "/aws-appmesh", 12) || !strncasecmp(p, "/aws-app-mesh", 13);
}

static void check_match(const config_t *c, const cfg_gateway_route_t *r, const cfg_gateway_t *g,
                        const char *where, diag_t *d)
{
    const cfg_route_t *m = &r->match;
    if (m->path && m->path_kind == PATH_PREFIX && reserved_prefix(m->path))
        report(c, d, where, "match.prefix", "\"%s\" is reserved by App Mesh", m->path);
    if (m->grpc_service && !strncasecmp(m->grpc_service, "aws.app", 7))
        report(c, d, where, "match.serviceName", "\"%s\" is reserved by App Mesh", m->grpc_service);
    const cfg_listener_t *l = g ? route_listener(g, m->port) : NULL;
    if (g && m->port && !l)
        report(c, d, where, "match.port", "the gateway \"%s\" has no listener on %u", g->name,
               m->port);
    if (l && l->protocol && kind_for(l->protocol) != m->kind)
        report(c, d, where, "", "the gateway \"%s\"'s listener on port %u is %s: it takes %s",
               g->name, l->port, l->protocol, route_kinds[kind_for(l->protocol)]);
    if (g && !m->port && g->nlisteners > 1)
        report(c, d, where, "match.port",
               "required: the gateway \"%s\" has %u "
               "listeners",
               g->name, g->nlisteners);
    int prefix = m->path && m->path_kind == PATH_PREFIX;
    if ((r->prefix_value || !r->rewrite_prefix) && !prefix)
        report(c, d, where, "action.rewrite.prefix", "needs a prefix match");
    if (r->path_exact && prefix)
        report(c, d, where, "action.rewrite.path",
               "cannot be combined with a prefix "
               "match (rewrite the prefix instead)");
}

static void check_route(const config_t *c, const cfg_gateway_route_t *r, diag_t *d)
{
    char where[JPATH_MAX], top[JPATH_MAX];
    snprintf(where, sizeof where, "gatewayRoutes[%u].spec.%s", r->index,
             route_kinds[r->match.kind]);
    snprintf(top, sizeof top, "gatewayRoutes[%u]", r->index);
    const cfg_gateway_t *g = r->gateway ? config_gateway(c, r->gateway) : NULL;
    if (r->gateway && !g)
        report(c, d, top, "virtualGatewayName", "no virtual gateway \"%s\"", r->gateway);
    for (unsigned k = 0; k < c->ngateway_routes && &c->gateway_routes[k] != r; k++) {
        const cfg_gateway_route_t *o = &c->gateway_routes[k];
        if (o->name && r->name && o->gateway && r->gateway && !strcmp(o->name, r->name) &&
            !strcmp(o->gateway, r->gateway))
            report(c, d, top, "gatewayRouteName",
                   "\"%s\" repeats gatewayRoutes[%u] of the same "
                   "gateway",
                   r->name, k);
    }
    check_match(c, r, g, where, d);
    check_target(c, r, where, d);
}

void config_validate_gateways(const config_t *c, diag_t *d)
{
    for (unsigned i = 0; i < c->ngateways; i++)
        check_gateway(c, &c->gateways[i], d);
    for (unsigned i = 0; i < c->ngateway_routes; i++)
        check_route(c, &c->gateway_routes[i], d);
}

/* ---- lookups, the standing node, freeing ---- */

const cfg_gateway_t *config_gateway(const config_t *c, const char *name)
{
    for (unsigned i = 0; i < c->ngateways; i++)
        if (c->gateways[i].name && !strcmp(c->gateways[i].name, name))
            return &c->gateways[i];
    return NULL;
}

static int has_backend(const cfg_node_t *n, const char *service)
{
    for (unsigned i = 0; i < n->nbackends; i++)
        if (!strcasecmp(n->backends[i], service))
            return 1;
    return 0;
}

/* The node's backends: every service a route of `g` targets, once. */
static int gateway_backends(const config_t *c, const cfg_gateway_t *g, cfg_node_t *n)
{
    n->backends = calloc(c->ngateway_routes + 1, sizeof *n->backends);
    n->backend_tls = calloc(c->ngateway_routes + 1, sizeof *n->backend_tls);
    if (!n->backends || !n->backend_tls)
        return -1;
    for (unsigned i = 0; i < c->ngateway_routes; i++) {
        const cfg_gateway_route_t *r = &c->gateway_routes[i];
        if (strcmp(r->gateway, g->name) != 0 || has_backend(n, r->service))
            continue;
        if (!(n->backends[n->nbackends] = strdup(r->service)))
            return -1;
        n->nbackends++;
    }
    return 0;
}

const char *config_gateway_node(config_t *c, const char *name, diag_t *d)
{
    cfg_gateway_t *g = (cfg_gateway_t *)config_gateway(c, name);
    if (!g) {
        diag_add(d, c->source, "gateway", "virtual gateway \"%s\" is not in the config", name);
        return NULL;
    }
    if (config_node(c, name)) {
        diag_add(d, c->source, "gateway",
                 "virtual gateway \"%s\" has the name of a virtual node; rename one of them", name);
        return NULL;
    }
    cfg_node_t *nodes = realloc(c->nodes, (c->nnodes + 1) * sizeof *nodes);
    if (!nodes)
        goto oom;
    c->nodes = nodes;
    cfg_node_t *n = &c->nodes[c->nnodes];
    memset(n, 0, sizeof *n);
    n->index = c->document.nodes; /* past the document's nodes: in no message */
    if (!(n->name = strdup(name)) || gateway_backends(c, g, n) != 0) {
        cfg_free_node(n);
        goto oom;
    }
    /* The gateway's client policy and logging move to the node that stands for it. */
    n->default_tls = g->default_tls;
    n->access_log = g->access_log;
    memset(&g->default_tls, 0, sizeof g->default_tls);
    memset(&g->access_log, 0, sizeof g->access_log);
    c->nnodes++;
    c->serving_gateway = g;
    if (config_index_build(c) != 0)
        goto oom;
    return n->name;
oom:
    diag_add(d, c->source, "$", "out of memory building the gateway \"%s\"", name);
    return NULL;
}

void config_free_gateways(config_t *c)
{
    for (unsigned i = 0; i < c->ngateways; i++) {
        cfg_gateway_t *g = &c->gateways[i];
        for (unsigned k = 0; k < g->nlisteners; k++)
            cfg_free_listener(&g->listeners[k]);
        free(g->listeners);
        free(g->name);
        config_free_client_tls(&g->default_tls);
        cfg_free_access_log(&g->access_log);
    }
    for (unsigned i = 0; i < c->ngateway_routes; i++) {
        cfg_gateway_route_t *r = &c->gateway_routes[i];
        cfg_free_route(&r->match);
        free(r->gateway);
        free(r->name);
        free(r->host);
        free(r->service);
        free(r->prefix_value);
        free(r->path_exact);
    }
    free(c->gateways);
    free(c->gateway_routes);
}
