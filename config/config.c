#include "config/config.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Parsing context: where diagnostics go and the config being filled. */
typedef struct parse {
    diag_t *d;
    const char *source;
    config_t *c;
} parse_t;

#define PATH_MAX_LEN 256

/* `out` may be `base`: the result is built aside first. */
static void path_join(char *out, const char *base, const char *key)
{
    char tmp[PATH_MAX_LEN];
    snprintf(tmp, sizeof tmp, "%s%s%s", base, *base ? "." : "", key);
    memcpy(out, tmp, sizeof tmp);
}

static void path_index(char *out, const char *base, const char *key, int i)
{
    char tmp[PATH_MAX_LEN];
    snprintf(tmp, sizeof tmp, "%s%s%s[%d]", base, *base ? "." : "", key, i);
    memcpy(out, tmp, sizeof tmp);
}

/* A string member; NULL (with a diagnostic when `required` or of the wrong type) otherwise. */
static char *get_string(parse_t *ps, const cJSON *obj, const char *base, const char *key,
                        int required)
{
    char path[PATH_MAX_LEN];
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    path_join(path, base, key);
    if (!v) {
        if (required)
            diag_add(ps->d, ps->source, path, "is required");
        return NULL;
    }
    if (!cJSON_IsString(v)) {
        diag_add(ps->d, ps->source, path, "must be a string");
        return NULL;
    }
    return strdup(v->valuestring);
}

/* An integer member in [lo, hi]; `dflt` when absent or invalid (with a diagnostic then). */
static long long get_int(parse_t *ps, const cJSON *obj, const char *base, const char *key,
                         long long lo, long long hi, long long dflt, int required)
{
    char path[PATH_MAX_LEN];
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    path_join(path, base, key);
    if (!v) {
        if (required)
            diag_add(ps->d, ps->source, path, "is required");
        return dflt;
    }
    if (!cJSON_IsNumber(v) || v->valuedouble != (double)(long long)v->valuedouble) {
        diag_add(ps->d, ps->source, path, "must be an integer");
        return dflt;
    }
    long long n = (long long)v->valuedouble;
    if (n < lo || n > hi) {
        diag_add(ps->d, ps->source, path, "must be %lld..%lld, got %lld", lo, hi, n);
        return dflt;
    }
    return n;
}

/* An App Mesh Duration {"unit": "s"|"ms", "value": n} in milliseconds. */
static uint64_t get_duration(parse_t *ps, const cJSON *obj, const char *base, const char *key)
{
    char path[PATH_MAX_LEN];
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v)
        return DURATION_UNSET;
    path_join(path, base, key);
    if (!cJSON_IsObject(v)) {
        diag_add(ps->d, ps->source, path, "must be an object {unit, value}");
        return DURATION_UNSET;
    }
    char *unit = get_string(ps, v, path, "unit", 1);
    long long value = get_int(ps, v, path, "value", 0, INT64_MAX / 1000, -1, 1);
    uint64_t ms = DURATION_UNSET;
    if (unit && value >= 0) {
        if (strcmp(unit, "ms") == 0) {
            ms = (uint64_t)value;
        } else if (strcmp(unit, "s") == 0) {
            ms = (uint64_t)value * 1000;
        } else {
            char upath[PATH_MAX_LEN];
            path_join(upath, path, "unit");
            diag_add(ps->d, ps->source, upath, "must be \"s\" or \"ms\", got \"%s\"", unit);
        }
    }
    free(unit);
    return ms;
}

/* An array member; NULL when absent (fine) or not an array (diagnostic). */
static const cJSON *get_array(parse_t *ps, const cJSON *obj, const char *base, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (v && !cJSON_IsArray(v)) {
        char path[PATH_MAX_LEN];
        path_join(path, base, key);
        diag_add(ps->d, ps->source, path, "must be an array");
        return NULL;
    }
    return v;
}

static const cJSON *get_object(parse_t *ps, const cJSON *obj, const char *base, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (v && !cJSON_IsObject(v)) {
        char path[PATH_MAX_LEN];
        path_join(path, base, key);
        diag_add(ps->d, ps->source, path, "must be an object");
        return NULL;
    }
    return v;
}

static void parse_listener(parse_t *ps, const cJSON *j, const char *path, cfg_listener_t *l)
{
    char p[PATH_MAX_LEN];
    l->per_request_ms = l->idle_ms = DURATION_UNSET;
    const cJSON *pm = get_object(ps, j, path, "portMapping");
    path_join(p, path, "portMapping");
    if (!pm) {
        diag_add(ps->d, ps->source, p, "is required");
        return;
    }
    l->port = (uint16_t)get_int(ps, pm, p, "port", 1, 65535, 0, 1);
    l->protocol = get_string(ps, pm, p, "protocol", 1);
    const cJSON *timeout = get_object(ps, j, path, "timeout");
    if (timeout && l->protocol) {
        char tp[PATH_MAX_LEN];
        path_join(p, path, "timeout");
        const cJSON *http = get_object(ps, timeout, p, l->protocol);
        path_join(tp, p, l->protocol);
        if (http) {
            l->per_request_ms = get_duration(ps, http, tp, "perRequest");
            l->idle_ms = get_duration(ps, http, tp, "idle");
        }
    }
}

static void parse_discovery(parse_t *ps, const cJSON *spec, const char *path, cfg_node_t *n)
{
    char p[PATH_MAX_LEN];
    const cJSON *sd = get_object(ps, spec, path, "serviceDiscovery");
    if (!sd)
        return;
    path_join(p, path, "serviceDiscovery");
    const cJSON *dns = get_object(ps, sd, p, "dns");
    const cJSON *cm = get_object(ps, sd, p, "awsCloudMap");
    if (dns && cm) {
        diag_add(ps->d, ps->source, p, "must have exactly one of dns, awsCloudMap");
        return;
    }
    char q[PATH_MAX_LEN];
    if (dns) {
        path_join(q, p, "dns");
        n->discovery = DISCOVERY_DNS;
        n->hostname = get_string(ps, dns, q, "hostname", 1);
    } else if (cm) {
        path_join(q, p, "awsCloudMap");
        n->discovery = DISCOVERY_CLOUD_MAP;
        n->namespace_name = get_string(ps, cm, q, "namespaceName", 1);
        n->service_name = get_string(ps, cm, q, "serviceName", 1);
    }
}

static void parse_node(parse_t *ps, const cJSON *j, const char *path, cfg_node_t *n)
{
    char p[PATH_MAX_LEN], q[PATH_MAX_LEN];
    n->name = get_string(ps, j, path, "virtualNodeName", 1);
    const cJSON *spec = get_object(ps, j, path, "spec");
    if (!spec)
        return;
    path_join(p, path, "spec");
    const cJSON *ls = get_array(ps, spec, p, "listeners");
    n->nlisteners = (unsigned)cJSON_GetArraySize(ls);
    n->listeners = calloc(n->nlisteners ? n->nlisteners : 1, sizeof *n->listeners);
    for (unsigned i = 0; i < n->nlisteners; i++) {
        path_index(q, p, "listeners", (int)i);
        parse_listener(ps, cJSON_GetArrayItem(ls, (int)i), q, &n->listeners[i]);
    }
    parse_discovery(ps, spec, p, n);
    const cJSON *bs = get_array(ps, spec, p, "backends");
    n->nbackends = (unsigned)cJSON_GetArraySize(bs);
    n->backends = calloc(n->nbackends ? n->nbackends : 1, sizeof *n->backends);
    for (unsigned i = 0; i < n->nbackends; i++) {
        char r[PATH_MAX_LEN];
        path_index(q, p, "backends", (int)i);
        const cJSON *vs = get_object(ps, cJSON_GetArrayItem(bs, (int)i), q, "virtualService");
        path_join(r, q, "virtualService");
        if (vs)
            n->backends[i] = get_string(ps, vs, r, "virtualServiceName", 1);
        else
            diag_add(ps->d, ps->source, r, "is required");
    }
}

static void parse_service(parse_t *ps, const cJSON *j, const char *path, cfg_service_t *s)
{
    char p[PATH_MAX_LEN], q[PATH_MAX_LEN];
    s->name = get_string(ps, j, path, "virtualServiceName", 1);
    const cJSON *spec = get_object(ps, j, path, "spec");
    path_join(p, path, "spec");
    const cJSON *prov = spec ? get_object(ps, spec, p, "provider") : NULL;
    if (!prov)
        return;
    path_join(p, p, "provider");
    const cJSON *vn = get_object(ps, prov, p, "virtualNode");
    const cJSON *vr = get_object(ps, prov, p, "virtualRouter");
    if (vn && vr) {
        diag_add(ps->d, ps->source, p, "must have exactly one of virtualNode, virtualRouter");
    } else if (vn) {
        path_join(q, p, "virtualNode");
        s->provider = PROVIDER_NODE;
        s->provider_name = get_string(ps, vn, q, "virtualNodeName", 1);
    } else if (vr) {
        path_join(q, p, "virtualRouter");
        s->provider = PROVIDER_ROUTER;
        s->provider_name = get_string(ps, vr, q, "virtualRouterName", 1);
    }
}

static void parse_router(parse_t *ps, const cJSON *j, const char *path, cfg_router_t *r)
{
    char p[PATH_MAX_LEN], q[PATH_MAX_LEN];
    r->name = get_string(ps, j, path, "virtualRouterName", 1);
    const cJSON *spec = get_object(ps, j, path, "spec");
    path_join(p, path, "spec");
    const cJSON *ls = spec ? get_array(ps, spec, p, "listeners") : NULL;
    r->nports = (unsigned)cJSON_GetArraySize(ls);
    r->ports = calloc(r->nports ? r->nports : 1, sizeof *r->ports);
    for (unsigned i = 0; i < r->nports; i++) {
        path_index(q, p, "listeners", (int)i);
        const cJSON *pm = get_object(ps, cJSON_GetArrayItem(ls, (int)i), q, "portMapping");
        path_join(q, q, "portMapping");
        if (pm)
            r->ports[i] = (uint16_t)get_int(ps, pm, q, "port", 1, 65535, 0, 1);
    }
}

static void parse_route(parse_t *ps, const cJSON *j, const char *path, cfg_route_t *r)
{
    char p[PATH_MAX_LEN], q[PATH_MAX_LEN];
    r->router = get_string(ps, j, path, "virtualRouterName", 1);
    r->name = get_string(ps, j, path, "routeName", 1);
    const cJSON *spec = get_object(ps, j, path, "spec");
    if (!spec)
        return;
    path_join(p, path, "spec");
    r->priority = (int)get_int(ps, spec, p, "priority", 0, 1000, -1, 0);
    const cJSON *http = get_object(ps, spec, p, "httpRoute");
    path_join(p, p, "httpRoute");
    const cJSON *action = http ? get_object(ps, http, p, "action") : NULL;
    path_join(p, p, "action");
    const cJSON *wt = action ? get_array(ps, action, p, "weightedTargets") : NULL;
    r->ntargets = (unsigned)cJSON_GetArraySize(wt);
    r->targets = calloc(r->ntargets ? r->ntargets : 1, sizeof *r->targets);
    for (unsigned i = 0; i < r->ntargets; i++) {
        const cJSON *t = cJSON_GetArrayItem(wt, (int)i);
        path_index(q, p, "weightedTargets", (int)i);
        r->targets[i].node = get_string(ps, t, q, "virtualNode", 1);
        r->targets[i].weight = (unsigned)get_int(ps, t, q, "weight", 0, 100, 0, 1);
        r->targets[i].port = (uint16_t)get_int(ps, t, q, "port", 1, 65535, 0, 0);
    }
}

static void parse_proxy(parse_t *ps, const cJSON *root)
{
    cfg_proxy_t *px = &ps->c->proxy;
    px->ingress_port = px->egress_port = px->workers = -1;
    px->request_header_timeout_ms = px->drain_timeout_ms = DURATION_UNSET;
    const cJSON *j = get_object(ps, root, "", "proxy");
    if (!j)
        return;
    px->node = get_string(ps, j, "proxy", "node", 0);
    px->ingress_port = (int)get_int(ps, j, "proxy", "ingressPort", 1, 65535, -1, 0);
    px->egress_port = (int)get_int(ps, j, "proxy", "egressPort", 1, 65535, -1, 0);
    px->workers = (int)get_int(ps, j, "proxy", "workers", 1, 256, -1, 0);
    px->admin = get_string(ps, j, "proxy", "admin", 0);
    px->log_level = get_string(ps, j, "proxy", "logLevel", 0);
    px->request_header_timeout_ms = get_duration(ps, j, "proxy", "requestHeaderTimeout");
    px->drain_timeout_ms = get_duration(ps, j, "proxy", "drainTimeout");
}

static void parse_mesh(parse_t *ps, const cJSON *root)
{
    const cJSON *mesh = get_object(ps, root, "", "mesh");
    ps->c->egress_filter = EGRESS_DROP_ALL; /* App Mesh's default */
    if (!mesh) {
        ps->c->mesh_name = strdup("mesh");
        return;
    }
    ps->c->mesh_name = get_string(ps, mesh, "mesh", "meshName", 1);
    const cJSON *spec = get_object(ps, mesh, "mesh", "spec");
    const cJSON *ef = spec ? get_object(ps, spec, "mesh.spec", "egressFilter") : NULL;
    char *type = ef ? get_string(ps, ef, "mesh.spec.egressFilter", "type", 1) : NULL;
    if (type && strcmp(type, "ALLOW_ALL") == 0)
        ps->c->egress_filter = EGRESS_ALLOW_ALL;
    else if (type && strcmp(type, "DROP_ALL") != 0)
        diag_add(ps->d, ps->source, "mesh.spec.egressFilter.type",
                 "must be ALLOW_ALL or DROP_ALL, got \"%s\"", type);
    free(type);
}

/* Parses root[key] as an array of `size`-byte elements with `each`; returns the element count. */
static unsigned parse_list(parse_t *ps, const cJSON *root, const char *key, size_t size, void **out,
                           void (*each)(parse_t *, const cJSON *, const char *, void *))
{
    const cJSON *arr = get_array(ps, root, "", key);
    unsigned n = (unsigned)cJSON_GetArraySize(arr);
    char *items = calloc(n ? n : 1, size);
    *out = items;
    for (unsigned i = 0; i < n && items; i++) {
        char path[PATH_MAX_LEN];
        const cJSON *item = cJSON_GetArrayItem(arr, (int)i);
        path_index(path, "", key, (int)i);
        if (!cJSON_IsObject(item)) {
            diag_add(ps->d, ps->source, path, "must be an object");
            continue;
        }
        each(ps, item, path, items + i * size);
    }
    return n;
}

#define EACH(fn, type)                                                                             \
    static void fn##_any(parse_t *ps, const cJSON *j, const char *path, void *out)                 \
    {                                                                                              \
        fn(ps, j, path, (type *)out);                                                              \
    }
EACH(parse_node, cfg_node_t)
EACH(parse_service, cfg_service_t)
EACH(parse_router, cfg_router_t)
EACH(parse_route, cfg_route_t)

config_t *config_parse(const char *json, size_t len, const char *source, diag_t *d)
{
    config_t *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->source = strdup(source);
    parse_t ps = {.d = d, .source = source, .c = c};
    size_t before = d->n;
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root || !cJSON_IsObject(root)) {
        const char *at = cJSON_GetErrorPtr();
        long off = at && at >= json && at <= json + len ? (long)(at - json) : -1;
        diag_add(d, source, "$", "not a JSON object%s (near byte %ld)", root ? "" : ": parse error",
                 off);
        cJSON_Delete(root);
        config_free(c);
        return NULL;
    }
    parse_mesh(&ps, root);
    c->nnodes = parse_list(&ps, root, "virtualNodes", sizeof(cfg_node_t), (void **)&c->nodes,
                           parse_node_any);
    c->nservices = parse_list(&ps, root, "virtualServices", sizeof(cfg_service_t),
                              (void **)&c->services, parse_service_any);
    c->nrouters = parse_list(&ps, root, "virtualRouters", sizeof(cfg_router_t),
                             (void **)&c->routers, parse_router_any);
    c->nroutes =
        parse_list(&ps, root, "routes", sizeof(cfg_route_t), (void **)&c->routes, parse_route_any);
    parse_proxy(&ps, root);
    cJSON_Delete(root);
    if (d->n > before) {
        config_free(c);
        return NULL;
    }
    return c;
}

config_t *config_load_file(const char *path, diag_t *d)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        diag_add(d, path, "$", "cannot open: %s", strerror(errno));
        return NULL;
    }
    size_t cap = 64 * 1024, len = 0;
    char *data = malloc(cap);
    while (data) {
        len += fread(data + len, 1, cap - len, f);
        if (len < cap)
            break;
        char *more = realloc(data, cap * 2);
        if (!more) {
            free(data);
            data = NULL;
            break;
        }
        data = more;
        cap *= 2;
    }
    int read_error = ferror(f);
    fclose(f);
    if (!data || read_error) {
        diag_add(d, path, "$", "cannot read");
        free(data);
        return NULL;
    }
    config_t *c = config_parse(data, len, path, d);
    free(data);
    return c;
}

static void free_strings(char **v, unsigned n)
{
    for (unsigned i = 0; i < n && v; i++)
        free(v[i]);
    free(v);
}

void config_free(config_t *c)
{
    if (!c)
        return;
    for (unsigned i = 0; i < c->nnodes; i++) {
        cfg_node_t *n = &c->nodes[i];
        for (unsigned k = 0; k < n->nlisteners; k++)
            free(n->listeners[k].protocol);
        free(n->listeners);
        free(n->name);
        free(n->hostname);
        free(n->namespace_name);
        free(n->service_name);
        free_strings(n->backends, n->nbackends);
    }
    for (unsigned i = 0; i < c->nservices; i++) {
        free(c->services[i].name);
        free(c->services[i].provider_name);
    }
    for (unsigned i = 0; i < c->nrouters; i++) {
        free(c->routers[i].name);
        free(c->routers[i].ports);
    }
    for (unsigned i = 0; i < c->nroutes; i++) {
        cfg_route_t *r = &c->routes[i];
        for (unsigned k = 0; k < r->ntargets; k++)
            free(r->targets[k].node);
        free(r->targets);
        free(r->router);
        free(r->name);
    }
    free(c->nodes);
    free(c->services);
    free(c->routers);
    free(c->routes);
    free(c->proxy.node);
    free(c->proxy.admin);
    free(c->proxy.log_level);
    free(c->mesh_name);
    free(c->source);
    free(c);
}

const cfg_node_t *config_node(const config_t *c, const char *name)
{
    for (unsigned i = 0; i < c->nnodes; i++)
        if (c->nodes[i].name && strcmp(c->nodes[i].name, name) == 0)
            return &c->nodes[i];
    return NULL;
}

const cfg_service_t *config_service(const config_t *c, const char *name)
{
    for (unsigned i = 0; i < c->nservices; i++)
        if (c->services[i].name && strcasecmp(c->services[i].name, name) == 0)
            return &c->services[i];
    return NULL;
}
