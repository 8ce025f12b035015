#include "routing/route.h"

#include <errno.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define MAX_TARGETS 10

typedef struct route {
    const cfg_route_t *cfg;
    unsigned index; /* position in the config, for diagnostics and stable ordering */
    regex_t path_re;
    int has_path_re;
    regex_t header_re[10];
    unsigned header_has_re; /* bit per header matcher */
    cluster_t *clusters[MAX_TARGETS];
    target_stats_t *stats[MAX_TARGETS];
    uint8_t schedule[MAX_TARGETS * 100];
    unsigned schedule_len;
    _Atomic unsigned cursor;
    retry_policy_t retry;
    uint64_t timeout_ms, idle_ms;
} route_t;

typedef struct router {
    const cfg_router_t *cfg;
    route_t **routes; /* in match order */
    unsigned nroutes;
} router_t;

typedef struct backend {
    const cfg_service_t *svc;
    cluster_t *cluster;    /* virtual node provider */
    router_t *router;      /* virtual router provider */
    tls_ctx_t *tls;        /* toward the provider node */
    tls_ctx_t **route_tls; /* toward route target t of route r: [r * MAX_TARGETS + t] */
} backend_t;

struct route_table {
    _Atomic unsigned refs;
    config_t *cfg;
    const cfg_node_t *node;
    cluster_t *passthrough; /* ALLOW_ALL's original-destination cluster */
    route_result_t ingress;
    enum tls_mode ingress_tls_mode;
    tls_ctx_t *ingress_tls;
    tls_ctx_t **tls_held; /* every context above, one reference each */
    unsigned ntls_held;
    backend_t *backends;
    unsigned nbackends;
    router_t *routers;
    unsigned nrouters;
    route_t *routes;
    unsigned nroutes;
};

/* ---- registry: what outlives a reload ---- */

/* The cluster named `name`, created empty on first use: discovery fills it (discovery_sync),
 * except the local app's, whose one endpoint is known now. */
static cluster_t *registry_cluster(registry_t *reg, const char *name, const char *node,
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

static uint64_t or_default(uint64_t v, uint64_t dflt)
{
    return v == DURATION_UNSET ? dflt : v;
}

static cluster_t *egress_cluster(route_table_t *rt, registry_t *reg, const char *node_name,
                                 uint16_t port)
{
    const cfg_node_t *n = config_node(rt->cfg, node_name);
    if (!n)
        return NULL;
    if (!port && n->nlisteners)
        port = n->listeners[0].port;
    char name[600];
    snprintf(name, sizeof name, "cds_egress_%s_%s_http_%u", rt->cfg->mesh_name, n->name, port);
    return registry_cluster(reg, name, n->name, port, 0);
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
        r->clusters[t] = egress_cluster(rt, reg, c->targets[t].node, c->targets[t].port);
        r->stats[t] = registry_target(reg, c->router, c->name, c->targets[t].node);
        weights[t] = c->targets[t].weight;
        ok &= r->clusters[t] && r->stats[t];
    }
    r->schedule_len = route_schedule(weights, c->ntargets, r->schedule);
    r->timeout_ms = or_default(c->per_request_ms, ROUTE_DEFAULT_TIMEOUT_MS);
    r->idle_ms = or_default(c->idle_ms, ROUTE_DEFAULT_IDLE_MS);
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
            b->cluster = egress_cluster(rt, reg, b->svc->provider_name, 0);
        else if (b->svc->provider == PROVIDER_ROUTER)
            b->router = find_router(rt, b->svc->provider_name);
    }
    return 0;
}

static void build_ingress(route_table_t *rt, registry_t *reg)
{
    const cfg_node_t *node = rt->node;
    const cfg_listener_t *l = node->nlisteners ? &node->listeners[0] : NULL;
    uint16_t port = l ? l->port : 0;
    char name[600];
    snprintf(name, sizeof name, "cds_ingress_%s_%s_http_%u", rt->cfg->mesh_name, node->name, port);
    rt->ingress.cluster = registry_cluster(reg, name, NULL, port, 1);
    rt->ingress.timeout_ms =
        l ? or_default(l->per_request_ms, ROUTE_DEFAULT_TIMEOUT_MS) : ROUTE_DEFAULT_TIMEOUT_MS;
    rt->ingress.idle_ms = l ? or_default(l->idle_ms, ROUTE_DEFAULT_IDLE_MS) : ROUTE_DEFAULT_IDLE_MS;
    if (l) { /* limits belong to this snapshot: a rejected reload never reaches a request */
        rt->ingress.max_requests = l->max_connections;
        rt->ingress.max_pending = l->max_pending;
    }
    if (!rt->ingress.cluster) {
        rt->ingress.status = 503;
        rt->ingress.reason = "no local app listener";
    }
}

/* ---- TLS ---- */

static tls_ctx_t *hold(route_table_t *rt, tls_ctx_t *t)
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

static const cfg_listener_t *listener_on(const cfg_node_t *n, uint16_t port)
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
static tls_ctx_t *client_tls(route_table_t *rt, registry_t *reg, const cfg_client_tls_t *policy,
                             const cluster_t *c, diag_t *d)
{
    const cfg_node_t *n = c ? config_node(rt->cfg, c->node) : NULL;
    const cfg_listener_t *l = n ? listener_on(n, c->port) : NULL;
    if (!n)
        return NULL;
    char name[2100] = "";
    if (n->discovery == DISCOVERY_DNS)
        snprintf(name, sizeof name, "%s", n->hostname);
    else if (n->discovery == DISCOVERY_CLOUD_MAP)
        snprintf(name, sizeof name, "%s.%s", n->service_name, n->namespace_name);
    const char *sni = name[0] ? name : NULL;
    if (policy_covers(policy, c->port))
        return hold(rt, tls_client_ctx(&reg->tls, policy, sni, rt->cfg->source, d));
    if (l && l->tls.mode != TLS_DISABLED)
        return hold(rt, tls_client_ctx(&reg->tls, NULL, sni, rt->cfg->source, d));
    return NULL;
}

static void build_backend_tls(route_table_t *rt, registry_t *reg, backend_t *b,
                              const cfg_client_tls_t *policy, diag_t *d)
{
    b->tls = client_tls(rt, reg, policy, b->cluster, d);
    if (!b->router)
        return;
    b->route_tls = calloc(rt->nroutes * MAX_TARGETS + 1, sizeof *b->route_tls);
    for (unsigned i = 0; b->route_tls && i < b->router->nroutes; i++) {
        const route_t *r = b->router->routes[i];
        for (unsigned t = 0; t < r->cfg->ntargets; t++)
            b->route_tls[r->index * MAX_TARGETS + t] =
                client_tls(rt, reg, policy, r->clusters[t], d);
    }
}

static void build_tls(route_table_t *rt, registry_t *reg, diag_t *d)
{
    const cfg_node_t *node = rt->node;
    const cfg_listener_t *l = node->nlisteners ? &node->listeners[0] : NULL;
    if (l && l->tls.mode != TLS_DISABLED) {
        rt->ingress_tls_mode = l->tls.mode;
        rt->ingress_tls = hold(rt, tls_server_ctx(&reg->tls, &l->tls, rt->cfg->source, d));
    }
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
        for (unsigned k = 0; b->router && b->route_tls && k < b->router->nroutes; k++) {
            const route_t *r = b->router->routes[k];
            for (unsigned t = 0; t < r->cfg->ntargets; t++)
                if (r->clusters[t])
                    fn(r->clusters[t], b->route_tls[r->index * MAX_TARGETS + t]);
        }
    }
}

void route_table_set_health_tls(const route_table_t *rt)
{
    each_target(rt, clear_health_tls); /* the table holds its contexts: none is freed here */
    each_target(rt, offer_health_tls);
}

tls_ctx_t *route_ingress_tls(const route_table_t *rt, enum tls_mode *mode)
{
    *mode = rt->ingress_tls_mode;
    return rt->ingress_tls;
}

void route_table_tls_files(const route_table_t *rt, void (*fn)(void *arg, const char *path),
                           void *arg)
{
    for (unsigned i = 0; i < rt->ntls_held; i++)
        for (unsigned f = 0; f < 3; f++)
            if (rt->tls_held[i]->files[f])
                fn(arg, rt->tls_held[i]->files[f]);
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
    build_ingress(rt, reg);
    if (cfg->egress_filter == EGRESS_ALLOW_ALL) {
        char name[300];
        snprintf(name, sizeof name, "cds_egress_%s_passthrough", cfg->mesh_name);
        rt->passthrough = registry_cluster(reg, name, NULL, 0, 0);
    }
    if (build_routers(rt, reg, d) == 0 && build_backends(rt, reg) == 0)
        build_tls(rt, reg, d);
    if (!rt->backends || d->n > before) {
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

void route_ingress(const route_table_t *rt, route_result_t *out)
{
    *out = rt->ingress;
}

static void no_target(route_result_t *out, int status, const char *reason)
{
    out->cluster = NULL;
    out->status = status;
    out->reason = reason;
}

static void pick(route_t *r, const backend_t *b, route_result_t *out)
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
            pick(ro->routes[i], b, out);
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
