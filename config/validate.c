/* Checks across resources: every reference resolves, names are unique, ports agree. Runs only
 * when each resource parsed cleanly, so that messages are about the mesh, not the JSON. */
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "config/config.h"

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
 * without case). */
static void unique(const config_t *c, diag_t *d, const void *items, unsigned n, size_t size,
                   size_t offset, const char *list, const char *field, int nocase)
{
    char path[128];
    for (unsigned i = 0; i < n; i++) {
        const char *a = name_at(items, size, offset, i);
        for (unsigned k = 0; k < i; k++) {
            const char *b = name_at(items, size, offset, k);
            if ((nocase ? strcasecmp(a, b) : strcmp(a, b)) == 0) {
                snprintf(path, sizeof path, "%s[%u].%s", list, i, field);
                diag_add(d, c->source, path, "\"%s\" is already %s[%u]", a, list, k);
            }
        }
    }
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
    for (unsigned i = 0; i < c->nroutes; i++)
        for (unsigned k = 0; k < i; k++)
            if (strcmp(c->routes[i].router, c->routes[k].router) == 0 &&
                strcmp(c->routes[i].name, c->routes[k].name) == 0) {
                snprintf(path, sizeof path, "routes[%u].routeName", i);
                diag_add(d, c->source, path, "\"%s\" is already routes[%u] of router %s",
                         c->routes[i].name, k, c->routes[i].router);
            }
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

static void check_route_ports(const config_t *c, const cfg_route_t *r, const cfg_router_t *rt,
                              unsigned i, diag_t *d)
{
    const char *kind = r->tcp ? "tcpRoute" : "httpRoute";
    char path[160];
    int l = route_listener(r, rt);
    snprintf(path, sizeof path, "routes[%u].spec.%s.match.port", i, kind);
    if (r->port && l < 0)
        diag_add(d, c->source, path, "router %s has no listener on port %u", rt->name, r->port);
    else if (!r->port && rt->nports > 1)
        diag_add(d, c->source, path, "is required: router %s has %u listeners", rt->name,
                 rt->nports);
    else if (l >= 0 && rt->tcp[l] != (r->tcp != 0))
        diag_add(d, c->source, path, "router %s's listener on port %u is %s: it takes %s", rt->name,
                 rt->ports[l], rt->tcp[l] ? "tcp" : "http", rt->tcp[l] ? "tcpRoute" : "httpRoute");
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
}

void config_validate(const config_t *c, diag_t *d)
{
    unique_names(c, d);
    check_nodes(c, d);
    check_services(c, d);
    check_routes(c, d);
}
