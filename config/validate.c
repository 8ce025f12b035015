/* Checks across resources: every reference resolves, names are unique, ports agree, regexes
 * compile. Runs only when each resource parsed cleanly, so that messages are about the mesh,
 * not the JSON. Linear in the document: every lookup goes through a name index, so a whole
 * fleet's mesh (10,000 routes) validates in milliseconds. */
#include <regex.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "config/config.h"

#include "config/config_impl.h"
#include "config/index.h"

static int has_port(const cfg_node_t *n, uint16_t port)
{
    for (unsigned i = 0; i < n->nlisteners; i++)
        if (n->listeners[i].port == port)
            return 1;
    return 0;
}

/* The `char *` at byte `offset` of element i of an array of `size`-byte elements. */
static const char *name_at(const void *items, size_t size, size_t offset, unsigned i)
{
    return *(char *const *)(const void *)((const char *)items + i * size + offset);
}

/* Each resource list's names are unique (virtual service names are DNS names, so compared
 * without case): a repeat is reported against the first holder of the name. */
static void unique(const config_t *c, diag_t *d, const void *items, unsigned n, size_t size,
                   size_t offset, const char *list, const char *field, int nocase)
{
    char path[128];
    name_index_t seen;
    if (name_index_init(&seen, n, nocase) != 0) {
        diag_add(d, c->source, list, "out of memory checking names");
        return;
    }
    for (unsigned i = 0; i < n; i++) {
        const char *a = name_at(items, size, offset, i);
        long k = name_index_add(&seen, a, NULL, i);
        if (k >= 0) {
            snprintf(path, sizeof path, "%s[%u].%s", list, i, field);
            diag_add(d, c->source, path, "\"%s\" is already %s[%ld]", a, list, k);
        }
    }
    name_index_free(&seen);
}

static void unique_names(const config_t *c, diag_t *d)
{
    unique(c, d, c->nodes, c->nnodes, sizeof *c->nodes, offsetof(cfg_node_t, name), "virtualNodes",
           "virtualNodeName", 0);
    unique(c, d, c->services, c->nservices, sizeof *c->services, offsetof(cfg_service_t, name),
           "virtualServices", "virtualServiceName", 1);
    unique(c, d, c->routers, c->nrouters, sizeof *c->routers, offsetof(cfg_router_t, name),
           "virtualRouters", "virtualRouterName", 0);
    /* Route names are unique per router. */
    char path[128];
    name_index_t seen;
    if (name_index_init(&seen, c->nroutes, 0) != 0) {
        diag_add(d, c->source, "routes", "out of memory checking names");
        return;
    }
    for (unsigned i = 0; i < c->nroutes; i++) {
        long k = name_index_add(&seen, c->routes[i].name, c->routes[i].router, i);
        if (k >= 0) {
            snprintf(path, sizeof path, "routes[%u].routeName", i);
            diag_add(d, c->source, path, "\"%s\" is already routes[%ld] of router %s",
                     c->routes[i].name, k, c->routes[i].router);
        }
    }
    name_index_free(&seen);
}

static void check_nodes(const config_t *c, diag_t *d)
{
    char path[160];
    for (unsigned i = 0; i < c->nnodes; i++) {
        const cfg_node_t *n = &c->nodes[i];
        for (unsigned b = 0; b < n->nbackends; b++) {
            if (!config_service(c, n->backends[b])) {
                snprintf(path, sizeof path,
                         "virtualNodes[%u].spec.backends[%u].virtualService.virtualServiceName", i,
                         b);
                diag_add(d, c->source, path, "virtual service \"%s\" does not exist",
                         n->backends[b]);
            }
        }
        for (unsigned l = 0; l < n->nlisteners; l++) {
            const cfg_listener_t *li = &n->listeners[l];
            for (unsigned k = 0; k < l; k++)
                if (n->listeners[k].port == li->port) {
                    snprintf(path, sizeof path,
                             "virtualNodes[%u].spec.listeners[%u].portMapping.port", i, l);
                    diag_add(d, c->source, path, "port %u is already listeners[%u]", li->port, k);
                }
            if (li->health.present && li->health.port && li->health.port != li->port) {
                snprintf(path, sizeof path, "virtualNodes[%u].spec.listeners[%u].healthCheck.port",
                         i, l);
                diag_add(d, c->source, path, "must match the listener port %u, got %u", li->port,
                         li->health.port);
            }
        }
    }
}

static void check_services(const config_t *c, diag_t *d)
{
    char path[160];
    for (unsigned i = 0; i < c->nservices; i++) {
        const cfg_service_t *s = &c->services[i];
        if (s->provider == PROVIDER_NODE && !config_node(c, s->provider_name)) {
            snprintf(path, sizeof path,
                     "virtualServices[%u].spec.provider.virtualNode.virtualNodeName", i);
            diag_add(d, c->source, path, "virtual node \"%s\" does not exist", s->provider_name);
        } else if (s->provider == PROVIDER_ROUTER && !config_router(c, s->provider_name)) {
            snprintf(path, sizeof path,
                     "virtualServices[%u].spec.provider.virtualRouter.virtualRouterName", i);
            diag_add(d, c->source, path, "virtual router \"%s\" does not exist", s->provider_name);
        }
    }
}

/* The router listener a route serves: its match.port's, or the router's only one; -1. */
static int route_listener(const cfg_route_t *r, const cfg_router_t *rt)
{
    for (unsigned p = 0; p < rt->nports; p++)
        if (rt->ports[p] == r->port || (!r->port && rt->nports == 1))
            return (int)p;
    return -1;
}

/* The spec member of each enum route_kind, and the route kind each enum port_protocol takes. */
static const char *const route_kinds[] = {"httpRoute", "http2Route", "grpcRoute", "tcpRoute"};
static const char *const protocols[] = {"http", "tcp", "http2", "grpc"};
static const enum route_kind takes[] = {ROUTE_HTTP, ROUTE_TCP, ROUTE_HTTP2, ROUTE_GRPC};

static void check_route_ports(const config_t *c, const cfg_route_t *r, const cfg_router_t *rt,
                              unsigned i, diag_t *d)
{
    const char *kind = route_kinds[r->kind];
    char path[160];
    int l = route_listener(r, rt);
    snprintf(path, sizeof path, "routes[%u].spec.%s.match.port", i, kind);
    if (r->port && l < 0)
        diag_add(d, c->source, path, "router %s has no listener on port %u", rt->name, r->port);
    else if (!r->port && rt->nports > 1)
        diag_add(d, c->source, path, "is required: router %s has %u listeners", rt->name,
                 rt->nports);
    else if (l >= 0 && takes[rt->protocol[l]] != r->kind)
        diag_add(d, c->source, path, "router %s's listener on port %u is %s: it takes %s", rt->name,
                 rt->ports[l], protocols[rt->protocol[l]], route_kinds[takes[rt->protocol[l]]]);
    for (unsigned t = 0; t < r->ntargets; t++) {
        const cfg_node_t *n = config_node(c, r->targets[t].node);
        snprintf(path, sizeof path, "routes[%u].spec.%s.action.weightedTargets[%u]", i, kind, t);
        if (!n) {
            diag_add(d, c->source, path, "virtual node \"%s\" does not exist", r->targets[t].node);
            continue;
        }
        if (r->targets[t].port && !has_port(n, r->targets[t].port))
            diag_add(d, c->source, path, "virtual node %s has no listener on port %u", n->name,
                     r->targets[t].port);
        else if (!r->targets[t].port && rt->nports > 1)
            diag_add(d, c->source, path, "port is required: router %s has %u listeners", rt->name,
                     rt->nports);
        else if (n->nlisteners == 0)
            diag_add(d, c->source, path, "virtual node %s has no listener to send to", n->name);
    }
}

/* "^(pattern)$": App Mesh regexes match the whole value, POSIX extended syntax here (the
 * route table compiles the same way; a regex that does not compile is an error wherever it
 * is, not only in routes some node reaches). */
static void check_regex(const config_t *c, const char *pattern, const char *path, diag_t *d)
{
    size_t n = strlen(pattern) + 5;
    char *full = malloc(n);
    if (!full)
        return;
    snprintf(full, n, "^(%s)$", pattern);
    regex_t re;
    int rc = regcomp(&re, full, REG_EXTENDED | REG_NOSUB);
    free(full);
    if (rc == 0) {
        regfree(&re);
        return;
    }
    char msg[128];
    regerror(rc, &re, msg, sizeof msg);
    regfree(&re);
    diag_add(d, c->source, path, "invalid regular expression \"%s\": %s", pattern, msg);
}

static void check_route_regexes(const config_t *c, const cfg_route_t *r, unsigned i, diag_t *d)
{
    const char *kind = route_kinds[r->kind];
    char path[200];
    if (r->path && r->path_kind == PATH_REGEX) {
        snprintf(path, sizeof path, "routes[%u].spec.%s.match.path.regex", i, kind);
        check_regex(c, r->path, path, d);
    }
    for (unsigned h = 0; h < r->nheaders; h++) {
        if (r->headers[h].kind != HM_REGEX || !r->headers[h].value)
            continue;
        snprintf(path, sizeof path, "routes[%u].spec.%s.match.%s[%u].match.regex", i, kind,
                 r->kind == ROUTE_GRPC ? "metadata" : "headers", h);
        check_regex(c, r->headers[h].value, path, d);
    }
}

static void check_routes(const config_t *c, diag_t *d)
{
    char path[160];
    for (unsigned i = 0; i < c->nroutes; i++) {
        const cfg_route_t *r = &c->routes[i];
        const cfg_router_t *rt = config_router(c, r->router);
        if (!rt) {
            snprintf(path, sizeof path, "routes[%u].virtualRouterName", i);
            diag_add(d, c->source, path, "virtual router \"%s\" does not exist", r->router);
            continue;
        }
        check_route_ports(c, r, rt, i, d);
    }
    for (unsigned i = 0; i < c->nroutes; i++)
        check_route_regexes(c, &c->routes[i], i, d);
}

void config_validate(const config_t *c, diag_t *d)
{
    unique_names(c, d);
    check_nodes(c, d);
    check_services(c, d);
    check_routes(c, d);
    config_validate_gateways(c, d);
}
