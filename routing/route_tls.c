/* TLS in the route table: which context each listener and each (backend, target) uses, App
 * Mesh's rule for when a client policy applies, health checks over the same TLS, and the
 * files a rotation is watched on. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "routing/route_impl.h"

tls_ctx_t *route_hold_tls(route_table_t *rt, tls_ctx_t *t)
{
    if (!t)
        return NULL;
    tls_ctx_t **held = realloc(rt->tls_held, (rt->ntls_held + 1) * sizeof *held);
    if (!held) {
        tls_ctx_unref(t);
        return NULL;
    }
    rt->tls_held = held;
    held[rt->ntls_held++] = t;
    return t;
}

const cfg_listener_t *route_node_listener(const cfg_node_t *n, uint16_t port)
{
    for (unsigned i = 0; i < n->nlisteners; i++)
        if (n->listeners[i].port == port)
            return &n->listeners[i];
    return n->nlisteners ? &n->listeners[0] : NULL;
}

static int policy_covers(const cfg_client_tls_t *p, uint16_t port)
{
    if (!p || !p->present || !p->enforce)
        return 0;
    for (unsigned i = 0; i < p->nports; i++)
        if (p->ports[i] == port)
            return 1;
    return p->nports == 0;
}

/* App Mesh's rule: an enforced policy covering the port configures the client; otherwise a
 * target whose listener has TLS (STRICT or PERMISSIVE) is still spoken to over TLS, unchecked. */
tls_ctx_t *route_client_tls(route_table_t *rt, registry_t *reg, const cfg_client_tls_t *policy,
                            const cluster_t *c, diag_t *d)
{
    const cfg_node_t *n = c ? config_node(rt->cfg, c->node) : NULL;
    const cfg_listener_t *l = n ? route_node_listener(n, c->port) : NULL;
    if (!n)
        return NULL;
    char name[2100] = "";
    if (n->discovery == DISCOVERY_DNS)
        snprintf(name, sizeof name, "%s", n->hostname);
    else if (n->discovery == DISCOVERY_CLOUD_MAP)
        snprintf(name, sizeof name, "%s.%s", n->service_name, n->namespace_name);
    const char *sni = name[0] ? name : NULL;
    if (policy_covers(policy, c->port))
        return route_hold_tls(rt, tls_client_ctx(&reg->tls, policy, sni, rt->cfg->source, d));
    if (l && l->tls.mode != TLS_DISABLED)
        return route_hold_tls(rt, tls_client_ctx(&reg->tls, NULL, sni, rt->cfg->source, d));
    return NULL;
}

static void build_backend_tls(route_table_t *rt, registry_t *reg, backend_t *b,
                              const cfg_client_tls_t *policy, diag_t *d)
{
    b->policy = policy && policy->present ? policy : NULL;
    b->tls = route_client_tls(rt, reg, policy, b->cluster, d);
    if (!b->router)
        return;
    /* By position in the router: a backend's share of a table, not the table's size. Most
     * backends speak plaintext to every target: they keep none. */
    tls_ctx_t **tls = calloc(b->router->nroutes * MAX_TARGETS + 1, sizeof *tls);
    int any = 0;
    for (unsigned i = 0; tls && i < b->router->nroutes; i++) {
        const route_t *r = b->router->routes[i];
        for (unsigned t = 0; t < r->cfg->ntargets; t++) {
            tls[r->pos * MAX_TARGETS + t] = route_client_tls(rt, reg, policy, r->clusters[t], d);
            any |= tls[r->pos * MAX_TARGETS + t] != NULL;
        }
    }
    if (!any) {
        free(tls);
        tls = NULL;
    }
    b->route_tls = tls;
}

void route_build_tls(route_table_t *rt, registry_t *reg, diag_t *d)
{
    const cfg_node_t *node = rt->node;
    for (unsigned i = 0; i < rt->nbackends; i++) {
        const cfg_client_tls_t *own = node->backend_tls ? &node->backend_tls[i] : NULL;
        build_backend_tls(rt, reg, &rt->backends[i], own && own->present ? own : &node->default_tls,
                          d);
    }
}

static void clear_health_tls(cluster_t *c, tls_ctx_t *t)
{
    (void)t;
    tls_ctx_unref(c->health_tls);
    c->health_tls = NULL;
}

static void offer_health_tls(cluster_t *c, tls_ctx_t *t)
{
    if (t && !c->health_tls)
        c->health_tls = tls_ctx_ref(t);
}

/* fn(cluster, the TLS it is reached with) for every backend's provider and route target. */
static void each_target(const route_table_t *rt, void (*fn)(cluster_t *c, tls_ctx_t *t))
{
    for (unsigned i = 0; i < rt->nbackends; i++) {
        const backend_t *b = &rt->backends[i];
        if (b->cluster)
            fn(b->cluster, b->tls);
        for (unsigned k = 0; b->router && k < b->router->nroutes; k++) {
            const route_t *r = b->router->routes[k];
            for (unsigned t = 0; t < r->cfg->ntargets; t++)
                if (r->clusters[t])
                    fn(r->clusters[t],
                       b->route_tls ? b->route_tls[r->pos * MAX_TARGETS + t] : NULL);
        }
    }
}

void route_table_set_health_tls(const route_table_t *rt)
{
    each_target(rt, clear_health_tls); /* the table holds its contexts: none is freed here */
    each_target(rt, offer_health_tls);
}

void route_table_tls_files(const route_table_t *rt, void (*fn)(void *arg, const char *path),
                           void *arg)
{
    for (unsigned i = 0; i < rt->ntls_held; i++)
        for (unsigned f = 0; f < 3; f++)
            if (rt->tls_held[i]->files[f])
                fn(arg, rt->tls_held[i]->files[f]);
}
