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

static unsigned target_hash(const char *router, const char *route, const char *target)
{
    unsigned h = 2166136261u;
    const char *parts[] = {router, route, target};
    for (int i = 0; i < 3; i++) {
        for (const char *p = parts[i]; *p; p++)
            h = (h ^ (unsigned char)*p) * 16777619u;
        h = (h ^ 0xffu) * 16777619u;
    }
    return h;
}

/* Doubles the buckets once there are more entries than buckets. */
static void grow_targets(registry_t *reg)
{
    if (reg->ntargets < reg->nbuckets)
        return;
    unsigned n = reg->nbuckets ? reg->nbuckets * 2 : 256;
    target_stats_entry_t **b = calloc(n, sizeof *b);
    if (!b)
        return; /* the chains only get longer */
    for (target_stats_entry_t *e = reg->targets; e; e = e->next) {
        unsigned i = target_hash(e->router, e->route, e->target) & (n - 1);
        e->hnext = b[i];
        b[i] = e;
    }
    free(reg->buckets);
    reg->buckets = b;
    reg->nbuckets = n;
}

static target_stats_t *registry_target(registry_t *reg, const char *router, const char *route,
                                       const char *target)
{
    grow_targets(reg);
    unsigned h = target_hash(router, route, target);
    for (target_stats_entry_t *e = reg->nbuckets ? reg->buckets[h & (reg->nbuckets - 1)] : NULL; e;
         e = e->hnext)
        if (!strcmp(e->router, router) && !strcmp(e->route, route) && !strcmp(e->target, target))
            return &e->stats;
    /* One allocation: the names follow the entry (thousands of them in a large mesh). */
    size_t a = strlen(router) + 1, b = strlen(route) + 1, c = strlen(target) + 1;
    target_stats_entry_t *e = calloc(1, sizeof *e + a + b + c);
    if (!e || !reg->nbuckets) {
        free(e);
        return NULL;
    }
    e->router = memcpy((char *)(e + 1), router, a);
    e->route = memcpy(e->router + a, route, b);
    e->target = memcpy(e->route + b, target, c);
    e->next = reg->targets;
    reg->targets = e;
    e->hnext = reg->buckets[h & (reg->nbuckets - 1)];
    reg->buckets[h & (reg->nbuckets - 1)] = e;
    reg->ntargets++;
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
        free(e); /* and the names that follow it */
    }
    free(r->buckets);
    r->buckets = NULL;
    r->nbuckets = r->ntargets = 0;
    tls_cache_free(&r->tls);
}

/* ---- weighted schedule ---- */

static unsigned gcd(unsigned a, unsigned b)
{
    while (b) {
        unsigned t = a % b;
        a = b;
        b = t;
    }
    return a;
}

/* The weights divided by their greatest common divisor, and their sum: 90/10 and 9/1 give the
 * same smooth sequence (every step scales), so one period of 10 picks serves. */
static unsigned reduce_weights(const unsigned *weights, unsigned n, unsigned *out)
{
    unsigned g = 0, total = 0;
    for (unsigned i = 0; i < n; i++)
        g = gcd(g, weights[i]);
    for (unsigned i = 0; i < n; i++) {
        out[i] = g ? weights[i] / g : 0;
        total += out[i];
    }
    return total;
}

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

const char *const route_kind_names[] = {"httpRoute", "http2Route", "grpcRoute", "tcpRoute"};

int route_listener_h2(const cfg_listener_t *l)
{
    return l && (strcmp(l->protocol, "http2") == 0 || route_listener_grpc(l));
}

int route_listener_grpc(const cfg_listener_t *l)
{
    return l && strcmp(l->protocol, "grpc") == 0;
}

int route_speaks_h2(const config_t *cfg, const cluster_t *c)
{
    const cfg_node_t *n = c && c->node ? config_node(cfg, c->node) : NULL;
    return n && route_listener_h2(route_node_listener(n, c->port));
}

/* Named as App Mesh's Envoy names it: cds_egress_MESH_NODE_PROTOCOL_PORT. */
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
             l ? l->protocol : "http", port);
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

/* Regexes were checked by config_validate(); compiling them again here cannot fail but for
 * memory, and is reported the same way if it does. */
int route_compile_match(route_t *r, const char *source, const char *where, diag_t *d)
{
    const cfg_route_t *c = r->cfg;
    char path[320];
    int ok = 1;
    if (c->path && c->path_kind == PATH_REGEX) {
        snprintf(path, sizeof path, "%s.match.path.regex", where);
        r->path_re = malloc(sizeof *r->path_re);
        if (r->path_re && compile(r->path_re, c->path, source, path, d) != 0) {
            free(r->path_re);
            r->path_re = NULL;
        }
        ok &= r->path_re != NULL;
    }
    for (unsigned h = 0; h < c->nheaders; h++) {
        if (c->headers[h].kind != HM_REGEX)
            continue;
        if (!r->header_re && !(r->header_re = calloc(c->nheaders, sizeof *r->header_re))) {
            ok = 0;
            break;
        }
        snprintf(path, sizeof path, "%s.match.%s[%u].match.regex", where,
                 c->kind == ROUTE_GRPC ? "metadata" : "headers", h);
        int good = compile(&r->header_re[h], c->headers[h].value, source, path, d) == 0;
        if (good)
            r->header_has_re |= 1u << h;
        ok &= good;
    }
    return ok ? 0 : -1;
}

/* The rollout of the document that drives route `c`'s weights, if any: r->rollout and the
 * canary's weight in this table (rollouts_prepare set it in the config). */
static void find_rollout(const config_t *cfg, route_t *r)
{
    const cfg_route_t *c = r->cfg;
    for (unsigned i = 0; i < cfg->nrollouts; i++) {
        const cfg_rollout_t *ro = &cfg->rollouts[i];
        if (strcmp(ro->router, c->router) != 0 || strcmp(ro->route, c->name) != 0)
            continue;
        r->rollout = ro->name;
        for (unsigned t = 0; t < c->ntargets; t++)
            if (!strcmp(c->targets[t].node, ro->canary))
                r->rollout_weight = c->targets[t].weight;
        return;
    }
}

/* App Mesh's default policy for a route or node provider that has none of its own: a gRPC one
 * (grpcRoute, grpc listener) also retries UNAVAILABLE. Nothing when the policy is off. */
static retry_policy_t default_retry(const route_table_t *rt, int grpc)
{
    retry_policy_t p = rt->default_retry;
    if (grpc && p.max_retries)
        p.grpc_events = DEFAULT_GRPC_RETRY_EVENTS;
    return p;
}

/* r->clusters, stats and schedule point into the table's slabs, with room for the route's
 * targets and its reduced schedule. */
static int build_route(route_table_t *rt, registry_t *reg, route_t *r, diag_t *d)
{
    const cfg_route_t *c = r->cfg;
    char where[64];
    snprintf(where, sizeof where, "routes[%u].spec.%s", r->index, route_kind_names[c->kind]);
    int ok = route_compile_match(r, rt->cfg->source, where, d) == 0;
    find_rollout(rt->cfg, r);
    unsigned weights[MAX_TARGETS], reduced[MAX_TARGETS];
    for (unsigned t = 0; t < c->ntargets; t++) {
        r->clusters[t] = route_egress_cluster(rt, reg, c->targets[t].node, c->targets[t].port);
        r->stats[t] = registry_target(reg, c->router, c->name, c->targets[t].node);
        weights[t] = c->targets[t].weight;
        r->h2_targets |= (unsigned)route_speaks_h2(rt->cfg, r->clusters[t]) << t;
        ok &= r->clusters[t] && r->stats[t];
    }
    reduce_weights(weights, c->ntargets, reduced);
    r->schedule_len = route_schedule(reduced, c->ntargets, (uint8_t *)r->schedule);
    r->timeout_ms = route_or_default(c->per_request_ms, ROUTE_DEFAULT_TIMEOUT_MS);
    r->idle_ms = route_or_default(c->idle_ms, ROUTE_DEFAULT_IDLE_MS);
    if (c->has_retry)
        r->retry = (retry_policy_t){c->max_retries, c->per_retry_ms, c->retry_events,
                                    c->grpc_retry_events};
    else if (!c->tcp) /* tcpRoutes keep their connect retries (route_tcp.c) */
        r->retry = default_retry(rt, c->kind == ROUTE_GRPC);
    return ok ? 0 : -1;
}

/* How long a route's path match is, for ordering routes without a priority. A match with
 * neither prefix nor path takes every path, as prefix "/" does, and ranks as it would. */
static size_t match_length(const cfg_route_t *c)
{
    return c->path ? strlen(c->path) : 1;
}

/* Match order (SPEC §4): routes with a priority first, lowest value first; then the others,
 * longer match first; config order breaks ties. */
int route_order(const void *a, const void *b)
{
    const route_t *x = *(route_t *const *)a, *y = *(route_t *const *)b;
    long px = x->cfg->priority < 0 ? 100000 : x->cfg->priority;
    long py = y->cfg->priority < 0 ? 100000 : y->cfg->priority;
    if (px != py)
        return px < py ? -1 : 1;
    if (x->cfg->priority < 0) {
        size_t lx = match_length(x->cfg), ly = match_length(y->cfg);
        if (lx != ly)
            return lx > ly ? -1 : 1;
    }
    return x->index < y->index ? -1 : x->index > y->index;
}

/* The table's router for the config's `r` (routers are built in config order). */
static router_t *router_of(route_table_t *rt, const cfg_router_t *r)
{
    return r ? &rt->routers[r - rt->cfg->routers] : NULL;
}

static int build_routers(route_table_t *rt, registry_t *reg, diag_t *d)
{
    const config_t *cfg = rt->cfg;
    rt->routes = calloc(cfg->nroutes ? cfg->nroutes : 1, sizeof *rt->routes);
    rt->routers = calloc(cfg->nrouters ? cfg->nrouters : 1, sizeof *rt->routers);
    route_t **of = rt->by_router = calloc(cfg->nroutes ? cfg->nroutes : 1, sizeof *of);
    size_t ntargets = 0, npicks = 0;
    for (unsigned i = 0; i < cfg->nroutes; i++) {
        unsigned w[MAX_TARGETS], reduced[MAX_TARGETS], n = cfg->routes[i].ntargets;
        for (unsigned t = 0; t < n && t < MAX_TARGETS; t++)
            w[t] = cfg->routes[i].targets[t].weight;
        ntargets += n;
        npicks += reduce_weights(w, n < MAX_TARGETS ? n : MAX_TARGETS, reduced);
    }
    rt->cluster_slab = calloc(ntargets + 1, sizeof *rt->cluster_slab);
    rt->stats_slab = calloc(ntargets + 1, sizeof *rt->stats_slab);
    rt->schedule_slab = malloc(npicks + 1);
    if (!rt->routes || !rt->routers || !of || !rt->cluster_slab || !rt->stats_slab ||
        !rt->schedule_slab)
        return -1;
    rt->nroutes = cfg->nroutes;
    rt->nrouters = cfg->nrouters;
    int ok = 1;
    size_t toff = 0, poff = 0;
    for (unsigned i = 0; i < cfg->nroutes; i++) {
        route_t *r = &rt->routes[i];
        r->cfg = &cfg->routes[i];
        r->index = cfg->routes[i].index;
        r->clusters = rt->cluster_slab + toff;
        r->stats = rt->stats_slab + toff;
        r->schedule = rt->schedule_slab + poff;
        ok &= build_route(rt, reg, r, d) == 0;
        toff += r->cfg->ntargets;
        poff += r->schedule_len;
        router_t *ro = router_of(rt, config_router(cfg, cfg->routes[i].router));
        if (ro)
            ro->nroutes++; /* counted here, filled below */
    }
    unsigned at = 0;
    for (unsigned i = 0; i < cfg->nrouters; i++) {
        router_t *ro = &rt->routers[i];
        ro->cfg = &cfg->routers[i];
        ro->routes = of + at;
        at += ro->nroutes;
        ro->nroutes = 0;
    }
    for (unsigned i = 0; i < cfg->nroutes; i++) {
        router_t *ro = router_of(rt, config_router(cfg, cfg->routes[i].router));
        if (ro)
            ro->routes[ro->nroutes++] = &rt->routes[i];
    }
    for (unsigned i = 0; i < cfg->nrouters; i++) {
        router_t *ro = &rt->routers[i];
        qsort(ro->routes, ro->nroutes, sizeof *ro->routes, route_order);
        for (unsigned k = 0; k < ro->nroutes; k++)
            ro->routes[k]->pos = k;
    }
    return ok ? 0 : -1;
}

/* A virtual node provider: its first listener's cluster, and how that listener speaks. */
static void provider_node(route_table_t *rt, registry_t *reg, backend_t *b)
{
    const cfg_node_t *n = config_node(rt->cfg, b->svc->provider_name);
    const cfg_listener_t *l = n && n->nlisteners ? &n->listeners[0] : NULL;
    b->cluster = route_egress_cluster(rt, reg, b->svc->provider_name, 0);
    b->h2 = (unsigned)route_listener_h2(l);
    b->grpc = (unsigned)route_listener_grpc(l);
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
            provider_node(rt, reg, b);
        else if (b->svc->provider == PROVIDER_ROUTER)
            b->router = router_of(rt, config_router(rt->cfg, b->svc->provider_name));
    }
    return 0;
}

/* REMORA_DEFAULT_RETRY_POLICY=0|1 over proxy.defaultRetryPolicy, on when neither says:
 * App Mesh applies the policy in every account made after July 2020. Settled in the config
 * here, where every config becomes a table (start, reload, `check`, whatever its source). */
static int settle_default_retry(config_t *cfg, diag_t *d)
{
    const char *v = getenv("REMORA_DEFAULT_RETRY_POLICY");
    if (v && *v && strcmp(v, "0") != 0 && strcmp(v, "1") != 0) {
        diag_add(d, "settings", "REMORA_DEFAULT_RETRY_POLICY", "must be 0 or 1, got \"%s\"", v);
        return -1;
    }
    if (v && *v)
        cfg->proxy.default_retry_policy = v[0] == '1';
    else if (cfg->proxy.default_retry_policy < 0)
        cfg->proxy.default_retry_policy = 1;
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
    if (!strncmp(node_name, ROUTE_GATEWAY_PREFIX, strlen(ROUTE_GATEWAY_PREFIX)) &&
        !(node_name = config_gateway_node(cfg, node_name + strlen(ROUTE_GATEWAY_PREFIX), d))) {
        route_table_unref(rt);
        return NULL;
    }
    if (!config_node(cfg, node_name)) {
        diag_add(d, cfg->source, "node", "virtual node \"%s\" is not in the config", node_name);
        route_table_unref(rt);
        return NULL;
    }
    size_t before = d->n;
    if (settle_default_retry(cfg, d) != 0 || config_prune(cfg, node_name, d) != 0) {
        if (d->n == before)
            diag_add(d, cfg->source, "$", "out of memory building the route table");
        route_table_unref(rt);
        return NULL;
    }
    rt->node = config_node(cfg, node_name); /* the pruned config's */
    if (cfg->proxy.default_retry_policy)
        rt->default_retry = (retry_policy_t){DEFAULT_RETRY_MAX, 0, DEFAULT_RETRY_EVENTS, 0};
    route_build_ingress(rt, reg, d);
    if (cfg->egress_filter == EGRESS_ALLOW_ALL) {
        char name[300];
        snprintf(name, sizeof name, "cds_egress_%s_passthrough", cfg->mesh_name);
        rt->passthrough = route_registry_cluster(reg, name, NULL, 0, 0);
    }
    if (build_routers(rt, reg, d) == 0 && build_backends(rt, reg) == 0) {
        route_build_tls(rt, reg, d);
        route_build_ports(rt, reg, d);
        route_build_gateway(rt, d);
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

void route_free_route(route_t *r)
{
    if (r->path_re)
        regfree(r->path_re);
    free(r->path_re);
    for (unsigned h = 0; h < 10; h++)
        if (r->header_has_re & (1u << h))
            regfree(&r->header_re[h]);
    free(r->header_re);
}

void route_table_unref(route_table_t *rt)
{
    if (!rt || atomic_fetch_sub_explicit(&rt->refs, 1, memory_order_acq_rel) != 1)
        return;
    for (unsigned i = 0; i < rt->nroutes; i++)
        route_free_route(&rt->routes[i]);
    route_free_gateway(rt);
    free(rt->by_router);
    free(rt->cluster_slab);
    free(rt->stats_slab);
    free(rt->schedule_slab);
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

static int path_matches(const route_t *r, const route_request_t *req)
{
    const cfg_route_t *c = r->cfg;
    size_t n = c->path ? strlen(c->path) : 0;
    switch (c->path ? c->path_kind : PATH_PREFIX) {
    case PATH_PREFIX: /* no prefix nor path: every path */
        return !c->path || (req->path_len >= n && memcmp(req->path, c->path, n) == 0);
    case PATH_EXACT:
        return req->path_len == n && memcmp(req->path, c->path, n) == 0;
    case PATH_REGEX:
        return r->path_re && regexec(r->path_re, req->path, 0, NULL, 0) == 0;
    }
    return 0;
}

/* http2Route's match.scheme against the request's (a request without one is "http"). */
static int scheme_matches(const cfg_route_t *c, const route_request_t *req)
{
    static const char *const schemes[] = {"http", "https"};
    return c->scheme < 0 || strcmp(req->scheme ? req->scheme : "http", schemes[c->scheme]) == 0;
}

/* An httpRoute's or http2Route's method, path, scheme and query parameters. */
static int http_matches(const route_t *r, const route_request_t *req)
{
    const cfg_route_t *c = r->cfg;
    if ((c->method >= 0 && c->method != req->method) || !path_matches(r, req) ||
        !scheme_matches(c, req))
        return 0;
    for (unsigned q = 0; q < c->nquery; q++)
        if (!query_matches(&c->query[q], req))
            return 0;
    return 1;
}

/* A grpcRoute's serviceName and methodName against gRPC's :path, "/SERVICE/METHOD" (each
 * compared exactly, case included): a serviceName alone takes every method of the service; no
 * serviceName takes every request. */
static int grpc_matches(const cfg_route_t *c, const route_request_t *req)
{
    if (!c->grpc_service)
        return 1;
    const char *p = req->path;
    size_t s = strlen(c->grpc_service);
    if (req->path_len < s + 2 || p[0] != '/' || memcmp(p + 1, c->grpc_service, s) != 0 ||
        p[s + 1] != '/')
        return 0;
    size_t m = c->grpc_method ? strlen(c->grpc_method) : 0;
    return !c->grpc_method ||
           (req->path_len == s + 2 + m && memcmp(p + s + 2, c->grpc_method, m) == 0);
}

int route_match(const route_t *r, const route_request_t *req, uint16_t port)
{
    const cfg_route_t *c = r->cfg;
    if (c->tcp || (c->port && c->port != port))
        return 0; /* a tcpRoute never takes an HTTP request, even on a one-listener router */
    if (c->kind == ROUTE_GRPC ? !grpc_matches(c, req) : !http_matches(r, req))
        return 0;
    for (unsigned h = 0; h < c->nheaders; h++) /* grpcRoute: its metadata */
        if (!header_matches(r, h, req))
            return 0;
    return 1;
}

/* ---- lookups ---- */

void route_no_target(route_result_t *out, int status, const char *reason)
{
    out->cluster = NULL;
    out->status = status;
    out->reason = reason;
}

void route_pick(route_t *r, const backend_t *b, route_result_t *out)
{
    if (r->schedule_len == 0) {
        route_no_target(out, 503, "every weighted target of the matching route has weight 0");
        return;
    }
    unsigned k = atomic_fetch_add_explicit(&r->cursor, 1, memory_order_relaxed);
    unsigned t = r->schedule[k % r->schedule_len];
    out->cluster = r->clusters[t];
    out->target = r->stats[t];
    out->tls = b->route_tls ? b->route_tls[r->pos * MAX_TARGETS + t] : NULL;
    out->timeout_ms = r->timeout_ms;
    out->idle_ms = r->idle_ms;
    out->retry = r->retry;
    out->rollout = r->rollout;
    out->rollout_weight = r->rollout_weight;
    out->upstream_h2 = (r->h2_targets >> t) & 1u;
    out->grpc = r->cfg->kind == ROUTE_GRPC;
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
            route_no_target(out, 404, "the virtual router has no listener on that port");
            return;
        }
        port = ro->cfg->ports[0]; /* one listener: it takes the request whatever the port */
    }
    for (unsigned i = 0; i < ro->nroutes; i++) {
        if (route_match(ro->routes[i], req, port)) {
            route_pick(ro->routes[i], b, out);
            return;
        }
    }
    route_no_target(out, 404, "no route matches the request");
}

void route_result_init(route_result_t *out)
{
    memset(out, 0, sizeof *out);
    out->timeout_ms = ROUTE_DEFAULT_TIMEOUT_MS;
    out->idle_ms = ROUTE_DEFAULT_IDLE_MS;
}

const backend_t *route_backend(const route_table_t *rt, const char *name, size_t len)
{
    if (len > 0 && name[len - 1] == '.') /* a fully qualified name matches too */
        len--;
    for (unsigned i = 0; i < rt->nbackends; i++) {
        const backend_t *b = &rt->backends[i];
        if (strlen(b->svc->name) == len && strncasecmp(b->svc->name, name, len) == 0)
            return b;
    }
    return NULL;
}

void route_to_backend(const route_table_t *rt, const backend_t *b, const route_request_t *req,
                      route_result_t *out)
{
    out->service = b->svc->name;
    if (b->router) {
        route_router(b, req, out);
    } else if (b->cluster) {
        /* App Mesh routes to a node provider as its listener's protocol says, with the
         * default policy too. */
        out->cluster = b->cluster;
        out->tls = b->tls;
        out->upstream_h2 = b->h2;
        out->grpc = b->grpc;
        out->retry = default_retry(rt, b->grpc);
    } else {
        route_no_target(out, 503, "the virtual service has no provider");
    }
}

void route_egress(route_table_t *rt, const route_request_t *req, route_result_t *out)
{
    route_result_init(out);
    const backend_t *b = route_backend(rt, req->host, req->host_len);
    if (b) {
        route_to_backend(rt, b, req, out);
        return;
    }
    if (rt->passthrough) {
        out->cluster = rt->passthrough;
        out->passthrough = 1;
        return;
    }
    route_no_target(out, 404, NULL);
}
