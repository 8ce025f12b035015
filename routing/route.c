#include "routing/route.h"
#include "routing/route_impl.h"

#include <errno.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- registry: what outlives a reload ---- */

/* The cluster named `name`, created empty on first use: discovery fills it (discovery_sync),
 * except the local app's, whose one endpoint is known now. */
cluster_t *route_registry_cluster(registry_t *reg, const char *name, const char *node,
                                  uint16_t port, int local)
{
    for (cluster_t *c = reg->clusters; c; c = c->next)
        if (strcmp(c->name, name) == 0)
            return c;
    cluster_t *c = cluster_new(name, node, port);
    if (!c)
        return NULL;
    if (local || !node) {
        endpoint_t ep;
        struct sockaddr_in in = {.sin_family = AF_INET, .sin_port = htons(port)};
        in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        endpoint_set(&ep, (const struct sockaddr *)&in);
        endpoint_set_free(cluster_publish(c, &ep, local && port ? 1 : 0));
        atomic_store(&c->answered, 1);
    }
    c->next = reg->clusters;
    reg->clusters = c;
    return c;
}

static target_stats_t *registry_target(registry_t *reg, const char *router, const char *route,
                                       const char *target)
{
    for (target_stats_entry_t *e = reg->targets; e; e = e->next)
        if (!strcmp(e->router, router) && !strcmp(e->route, route) && !strcmp(e->target, target))
            return &e->stats;
    target_stats_entry_t *e = calloc(1, sizeof *e);
    if (!e)
        return NULL;
    e->router = strdup(router);
    e->route = strdup(route);
    e->target = strdup(target);
    e->next = reg->targets;
    reg->targets = e;
    return &e->stats;
}

void registry_free(registry_t *r)
{
    while (r->clusters) {
        cluster_t *c = r->clusters;
        r->clusters = c->next;
        cluster_free(c);
    }
    while (r->targets) {
        target_stats_entry_t *e = r->targets;
        r->targets = e->next;
        free(e->router);
        free(e->route);
        free(e->target);
        free(e);
    }
    tls_cache_free(&r->tls);
}

/* ---- weighted schedule ---- */

unsigned route_schedule(const unsigned *weights, unsigned n, uint8_t *out)
{
    int current[MAX_TARGETS] = {0};
    unsigned total = 0;
    for (unsigned i = 0; i < n; i++)
        total += weights[i];
    for (unsigned k = 0; k < total; k++) {
        unsigned best = 0;
        for (unsigned i = 0; i < n; i++) {
            current[i] += (int)weights[i];
            if (current[i] > current[best])
                best = i;
        }
        current[best] -= (int)total;
        out[k] = (uint8_t)best;
    }
    return total;
}

/* ---- building ---- */

uint64_t route_or_default(uint64_t v, uint64_t dflt)
{
    return v == DURATION_UNSET ? dflt : v;
}

cluster_t *route_egress_cluster(route_table_t *rt, registry_t *reg, const char *node_name,
                                uint16_t port)
{
    const cfg_node_t *n = config_node(rt->cfg, node_name);
    const cfg_listener_t *l = n ? route_node_listener(n, port) : NULL;
    if (!n)
        return NULL;
    if (!port && l)
        port = l->port;
    char name[600];
    snprintf(name, sizeof name, "cds_egress_%s_%s_%s_%u", rt->cfg->mesh_name, n->name,
             l && strcmp(l->protocol, "tcp") == 0 ? "tcp" : "http", port);
    return route_registry_cluster(reg, name, n->name, port, 0);
}

/* "^(pattern)$": App Mesh regexes match the whole value. POSIX extended syntax. */
static int compile(regex_t *re, const char *pattern, const char *source, const char *path,
                   diag_t *d)
{
    size_t n = strlen(pattern) + 5;
    char *full = malloc(n);
    if (!full)
        return -1;
    snprintf(full, n, "^(%s)$", pattern);
    int rc = regcomp(re, full, REG_EXTENDED | REG_NOSUB);
    free(full);
    if (rc != 0) {
        char msg[128];
        regerror(rc, re, msg, sizeof msg);
        diag_add(d, source, path, "invalid regular expression \"%s\": %s", pattern, msg);
        return -1;
    }
    return 0;
}

static int build_route(route_table_t *rt, registry_t *reg, route_t *r, diag_t *d)
{
    const cfg_route_t *c = r->cfg;
    char path[160];
    int ok = 1;
    if (c->path_kind == PATH_REGEX) {
        snprintf(path, sizeof path, "routes[%u].spec.httpRoute.match.path.regex", r->index);
        r->has_path_re = compile(&r->path_re, c->path, rt->cfg->source, path, d) == 0;
        ok &= r->has_path_re;
    }
    for (unsigned h = 0; h < c->nheaders; h++) {
        if (c->headers[h].kind != HM_REGEX)
            continue;
        snprintf(path, sizeof path, "routes[%u].spec.httpRoute.match.headers[%u].match.regex",
                 r->index, h);
        int good = compile(&r->header_re[h], c->headers[h].value, rt->cfg->source, path, d) == 0;
        if (good)
            r->header_has_re |= 1u << h;
        ok &= good;
    }
    unsigned weights[MAX_TARGETS];
    for (unsigned t = 0; t < c->ntargets; t++) {
        r->clusters[t] = route_egress_cluster(rt, reg, c->targets[t].node, c->targets[t].port);
        r->stats[t] = registry_target(reg, c->router, c->name, c->targets[t].node);
        weights[t] = c->targets[t].weight;
        ok &= r->clusters[t] && r->stats[t];
    }
    r->schedule_len = route_schedule(weights, c->ntargets, r->schedule);
    r->timeout_ms = route_or_default(c->per_request_ms, ROUTE_DEFAULT_TIMEOUT_MS);
    r->idle_ms = route_or_default(c->idle_ms, ROUTE_DEFAULT_IDLE_MS);
    if (c->has_retry)
        r->retry = (retry_policy_t){c->max_retries, c->per_retry_ms, c->retry_events};
    return ok ? 0 : -1;
}

/* Match order (SPEC §4): routes with a priority first, lowest value first; then the others,
 * longer match first; config order breaks ties. */
static int route_order(const void *a, const void *b)
{
    const route_t *x = *(route_t *const *)a, *y = *(route_t *const *)b;
    long px = x->cfg->priority < 0 ? 100000 : x->cfg->priority;
    long py = y->cfg->priority < 0 ? 100000 : y->cfg->priority;
    if (px != py)
        return px < py ? -1 : 1;
    if (x->cfg->priority < 0) {
        size_t lx = x->cfg->path ? strlen(x->cfg->path) : 0,
               ly = y->cfg->path ? strlen(y->cfg->path) : 0;
        if (lx != ly)
            return lx > ly ? -1 : 1;
    }
    return x->index < y->index ? -1 : x->index > y->index;
}

static int build_routers(route_table_t *rt, registry_t *reg, diag_t *d)
{
    const config_t *cfg = rt->cfg;
    rt->routes = calloc(cfg->nroutes ? cfg->nroutes : 1, sizeof *rt->routes);
    rt->routers = calloc(cfg->nrouters ? cfg->nrouters : 1, sizeof *rt->routers);
    if (!rt->routes || !rt->routers)
        return -1;
    rt->nroutes = cfg->nroutes;
    rt->nrouters = cfg->nrouters;
    int ok = 1;
    for (unsigned i = 0; i < cfg->nroutes; i++) {
        rt->routes[i].cfg = &cfg->routes[i];
        rt->routes[i].index = i;
        ok &= build_route(rt, reg, &rt->routes[i], d) == 0;
    }
    for (unsigned i = 0; i < cfg->nrouters; i++) {
        router_t *ro = &rt->routers[i];
        ro->cfg = &cfg->routers[i];
        ro->routes = calloc(cfg->nroutes ? cfg->nroutes : 1, sizeof *ro->routes);
        if (!ro->routes)
            return -1;
        for (unsigned k = 0; k < cfg->nroutes; k++)
            if (strcmp(cfg->routes[k].router, ro->cfg->name) == 0)
                ro->routes[ro->nroutes++] = &rt->routes[k];
        qsort(ro->routes, ro->nroutes, sizeof *ro->routes, route_order);
    }
    return ok ? 0 : -1;
}

static router_t *find_router(route_table_t *rt, const char *name)
{
    for (unsigned i = 0; i < rt->nrouters; i++)
        if (strcmp(rt->routers[i].cfg->name, name) == 0)
            return &rt->routers[i];
    return NULL;
}

static int build_backends(route_table_t *rt, registry_t *reg)
{
    const cfg_node_t *node = rt->node;
    rt->backends = calloc(node->nbackends ? node->nbackends : 1, sizeof *rt->backends);
    if (!rt->backends)
        return -1;
    for (unsigned i = 0; i < node->nbackends; i++) {
        backend_t *b = &rt->backends[rt->nbackends++];
        b->svc = config_service(rt->cfg, node->backends[i]);
        if (b->svc->provider == PROVIDER_NODE)
            b->cluster = route_egress_cluster(rt, reg, b->svc->provider_name, 0);
        else if (b->svc->provider == PROVIDER_ROUTER)
            b->router = find_router(rt, b->svc->provider_name);
    }
    return 0;
}

route_table_t *route_table_build(config_t *cfg, const char *node_name, registry_t *reg, diag_t *d)
{
    route_table_t *rt = calloc(1, sizeof *rt);
    if (!rt) {
        config_free(cfg);
        return NULL;
    }
    atomic_init(&rt->refs, 1);
    rt->cfg = cfg;
    rt->node = config_node(cfg, node_name);
    if (!rt->node) {
        diag_add(d, cfg->source, "node", "virtual node \"%s\" is not in the config", node_name);
        route_table_unref(rt);
        return NULL;
    }
    size_t before = d->n;
    route_build_ingress(rt, reg, d);
    if (cfg->egress_filter == EGRESS_ALLOW_ALL) {
        char name[300];
        snprintf(name, sizeof name, "cds_egress_%s_passthrough", cfg->mesh_name);
        rt->passthrough = route_registry_cluster(reg, name, NULL, 0, 0);
    }
    if (build_routers(rt, reg, d) == 0 && build_backends(rt, reg) == 0) {
        route_build_tls(rt, reg, d);
        route_build_ports(rt, reg, d);
    }
    if (!rt->backends || !rt->ingress || d->n > before) {
        if (d->n == before)
            diag_add(d, cfg->source, "$", "out of memory building the route table");
        route_table_unref(rt);
        return NULL;
    }
    return rt;
}

route_table_t *route_table_ref(route_table_t *rt)
{
    atomic_fetch_add_explicit(&rt->refs, 1, memory_order_relaxed);
    return rt;
}

void route_table_unref(route_table_t *rt)
{
    if (!rt || atomic_fetch_sub_explicit(&rt->refs, 1, memory_order_acq_rel) != 1)
        return;
    for (unsigned i = 0; i < rt->nroutes; i++) {
        route_t *r = &rt->routes[i];
        if (r->has_path_re)
            regfree(&r->path_re);
        for (unsigned h = 0; h < 10; h++)
            if (r->header_has_re & (1u << h))
                regfree(&r->header_re[h]);
    }
    for (unsigned i = 0; i < rt->nrouters; i++)
        free(rt->routers[i].routes);
    for (unsigned i = 0; i < rt->nbackends; i++)
        free(rt->backends[i].route_tls);
    for (unsigned i = 0; i < rt->ntls_held; i++)
        tls_ctx_unref(rt->tls_held[i]);
    route_free_ports(rt);
    free(rt->tls_held);
    free(rt->routers);
    free(rt->routes);
    free(rt->backends);
    config_free(rt->cfg);
    free(rt);
}

const config_t *route_table_config(const route_table_t *rt)
{
    return rt->cfg;
}

const cfg_node_t *route_table_node(const route_table_t *rt)
{
    return rt->node;
}

/* ---- matching ---- */

static int header_matches(const route_t *r, unsigned h, const route_request_t *req)
{
    const cfg_header_match_t *m = &r->cfg->headers[h];
    size_t len = 0;
    const char *v = req->header(req->ctx, m->name, &len);
    int match = 0;
    if (v) {
        size_t n = m->value ? strlen(m->value) : 0;
        switch (m->kind) {
        case HM_PRESENT:
            match = 1;
            break;
        case HM_EXACT:
            match = len == n && memcmp(v, m->value, n) == 0;
            break;
        case HM_PREFIX:
            match = len >= n && memcmp(v, m->value, n) == 0;
            break;
        case HM_SUFFIX:
            match = len >= n && memcmp(v + len - n, m->value, n) == 0;
            break;
        case HM_REGEX:
            match = regexec(&r->header_re[h], v, 0, NULL, 0) == 0;
            break;
        case HM_RANGE: {
            /* The whole value must be a base-10 integer; the range is [start, end). */
            char *end;
            errno = 0;
            long long x = strtoll(v, &end, 10);
            match = len > 0 && errno == 0 && end == v + len && x >= m->start && x < m->end;
            break;
        }
        }
    }
    return match != m->invert;
}

static int query_matches(const cfg_query_match_t *m, const route_request_t *req)
{
    size_t nlen = strlen(m->name);
    const char *q = req->query, *end = req->query + req->query_len;
    while (q && q < end) {
        const char *amp = memchr(q, '&', (size_t)(end - q));
        const char *stop = amp ? amp : end;
        const char *eq = memchr(q, '=', (size_t)(stop - q));
        const char *name_end = eq ? eq : stop;
        if ((size_t)(name_end - q) == nlen && memcmp(q, m->name, nlen) == 0) {
            if (!m->exact)
                return 1;
            const char *v = eq ? eq + 1 : stop;
            size_t vlen = (size_t)(stop - v);
            if (vlen == strlen(m->exact) && memcmp(v, m->exact, vlen) == 0)
                return 1;
        }
        q = amp ? amp + 1 : NULL;
    }
    return 0;
}

static int route_matches(const route_t *r, const route_request_t *req, uint16_t port)
{
    const cfg_route_t *c = r->cfg;
    if (c->port && c->port != port)
        return 0;
    if (c->method >= 0 && c->method != req->method)
        return 0;
    size_t n = strlen(c->path);
    switch (c->path_kind) {
    case PATH_PREFIX:
        if (req->path_len < n || memcmp(req->path, c->path, n) != 0)
            return 0;
        break;
    case PATH_EXACT:
        if (req->path_len != n || memcmp(req->path, c->path, n) != 0)
            return 0;
        break;
    case PATH_REGEX:
        if (regexec(&r->path_re, req->path, 0, NULL, 0) != 0)
            return 0;
        break;
    }
    for (unsigned h = 0; h < c->nheaders; h++)
        if (!header_matches(r, h, req))
            return 0;
    for (unsigned q = 0; q < c->nquery; q++)
        if (!query_matches(&c->query[q], req))
            return 0;
    return 1;
}

/* ---- lookups ---- */

static void no_target(route_result_t *out, int status, const char *reason)
{
    out->cluster = NULL;
    out->status = status;
    out->reason = reason;
}

void route_pick(route_t *r, const backend_t *b, route_result_t *out)
{
    if (r->schedule_len == 0) {
        no_target(out, 503, "every weighted target of the matching route has weight 0");
        return;
    }
    unsigned k = atomic_fetch_add_explicit(&r->cursor, 1, memory_order_relaxed);
    unsigned t = r->schedule[k % r->schedule_len];
    out->cluster = r->clusters[t];
    out->target = r->stats[t];
    out->tls = b->route_tls ? b->route_tls[r->index * MAX_TARGETS + t] : NULL;
    out->timeout_ms = r->timeout_ms;
    out->idle_ms = r->idle_ms;
    out->retry = r->retry;
    stat_inc(&r->stats[t]->picks);
}

static void route_router(const backend_t *b, const route_request_t *req, route_result_t *out)
{
    router_t *ro = b->router;
    uint16_t port = req->port;
    int listens = 0;
    for (unsigned i = 0; i < ro->cfg->nports; i++)
        listens |= ro->cfg->ports[i] == port;
    if (!port || !listens) {
        if (port && ro->cfg->nports > 1) {
            no_target(out, 404, "the virtual router has no listener on that port");
            return;
        }
        port = ro->cfg->ports[0]; /* one listener: it takes the request whatever the port */
    }
    for (unsigned i = 0; i < ro->nroutes; i++) {
        if (route_matches(ro->routes[i], req, port)) {
            route_pick(ro->routes[i], b, out);
            return;
        }
    }
    no_target(out, 404, "no route matches the request");
}

void route_egress(route_table_t *rt, const route_request_t *req, route_result_t *out)
{
    memset(out, 0, sizeof *out);
    out->timeout_ms = ROUTE_DEFAULT_TIMEOUT_MS;
    out->idle_ms = ROUTE_DEFAULT_IDLE_MS;
    size_t len = req->host_len;
    if (len > 0 && req->host[len - 1] == '.') /* a fully qualified name matches too */
        len--;
    for (unsigned i = 0; i < rt->nbackends; i++) {
        backend_t *b = &rt->backends[i];
        if (strlen(b->svc->name) != len || strncasecmp(b->svc->name, req->host, len) != 0)
            continue;
        out->service = b->svc->name;
        if (b->router) {
            route_router(b, req, out);
        } else if (b->cluster) {
            out->cluster = b->cluster;
            out->tls = b->tls;
        } else
            no_target(out, 503, "the virtual service has no provider");
        return;
    }
    if (rt->passthrough) {
        out->cluster = rt->passthrough;
        out->passthrough = 1;
        return;
    }
    no_target(out, 404, NULL);
}
