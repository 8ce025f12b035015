/* What one node reaches: a fleet's config document holds the whole mesh (at App Mesh's quotas
 * 200 nodes and 10,000 routes, about 3 MB), and a sidecar needs the few percent its node's
 * backends lead to. config_prune() keeps those, frees the rest, and cuts the raw text the same
 * way. */
#include <malloc.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "base/err.h"
#include "config/config_impl.h"
#include "config/config_tls.h"

#define PRUNE_TRIM_BYTES (256u << 10) /* a document this large leaves heap worth returning */

typedef struct keep {
    uint8_t *nodes, *services, *routers, *routes;
    uint8_t *rollouts; /* those of a kept router's routes */
} keep_t;

static void keep_node(const config_t *c, keep_t *k, const char *name)
{
    const cfg_node_t *n = config_node(c, name);
    if (n)
        k->nodes[n - c->nodes] = 1;
}

/* ---- the walk ---- */

static void mark(const config_t *c, const cfg_node_t *self, keep_t *k)
{
    k->nodes[self - c->nodes] = 1;
    for (unsigned b = 0; b < self->nbackends; b++) {
        const cfg_service_t *s = config_service(c, self->backends[b]);
        if (!s)
            continue;
        k->services[s - c->services] = 1;
        if (s->provider == PROVIDER_NODE) {
            keep_node(c, k, s->provider_name);
        } else if (s->provider == PROVIDER_ROUTER) {
            const cfg_router_t *r = config_router(c, s->provider_name);
            if (r)
                k->routers[r - c->routers] = 1;
        }
    }
    for (unsigned i = 0; i < c->nroutes; i++) {
        const cfg_route_t *r = &c->routes[i];
        const cfg_router_t *rt = config_router(c, r->router);
        if (!rt || !k->routers[rt - c->routers])
            continue;
        k->routes[i] = 1;
        for (unsigned t = 0; t < r->ntargets; t++)
            keep_node(c, k, r->targets[t].node);
    }
    for (unsigned i = 0; i < c->nrollouts; i++) {
        const cfg_router_t *rt = config_router(c, c->rollouts[i].router);
        k->rollouts[i] = rt && k->routers[rt - c->routers];
    }
}

/* Moves the kept elements of an array of `n` `size`-byte items to its front, in order, freeing
 * the others with `drop`; returns how many are kept. */
static unsigned compact(void *items, unsigned n, size_t size, const uint8_t *keep,
                        void (*drop)(void *))
{
    char *base = items;
    unsigned out = 0;
    for (unsigned i = 0; i < n; i++) {
        if (!keep[i]) {
            drop(base + i * size);
            continue;
        }
        if (out != i)
            memcpy(base + out * size, base + i * size, size);
        out++;
    }
    return out;
}

/* A node this one sends to keeps no backends: as in the cut text. */
static void drop_backends(cfg_node_t *n)
{
    for (unsigned b = 0; b < n->nbackends; b++) {
        free(n->backends[b]);
        if (n->backend_tls)
            config_free_client_tls(&n->backend_tls[b]);
    }
    free(n->backends);
    free(n->backend_tls);
    n->backends = NULL;
    n->backend_tls = NULL;
    n->nbackends = 0;
}

static void drop_node(void *p)
{
    cfg_free_node(p);
}
static void drop_service(void *p)
{
    cfg_free_service(p);
}
static void drop_router(void *p)
{
    cfg_free_router(p);
}
static void drop_route(void *p)
{
    cfg_free_route(p);
}
static void drop_rollout(void *p)
{
    config_rollout_free(p);
}

/* Each kept route's router and target names become the router's and nodes' own strings. */
static void share_names(config_t *c)
{
    for (unsigned i = 0; i < c->nroutes; i++) {
        cfg_route_t *r = &c->routes[i];
        const cfg_router_t *rt = config_router(c, r->router);
        int all = rt != NULL;
        for (unsigned t = 0; t < r->ntargets && all; t++)
            all = config_node(c, r->targets[t].node) != NULL;
        if (!all || r->shared_names)
            continue;
        free(r->router);
        r->router = rt->name;
        for (unsigned t = 0; t < r->ntargets; t++) {
            const cfg_node_t *n = config_node(c, r->targets[t].node);
            free(r->targets[t].node);
            r->targets[t].node = n->name;
        }
        r->shared_names = 1;
    }
}

/* Gives back the unused tail of an array that compact() shortened (it stays valid if not). */
static void *shrink(void *items, unsigned n, size_t size)
{
    void *p = realloc(items, (n ? n : 1) * size);
    return p ? p : items;
}

/* ---- the raw text, cut to the same resources ---- */

/* The end of the JSON string starting at *p == '"'. */
static const char *skip_string(const char *p, const char *end)
{
    for (p++; p < end; p++) {
        if (*p == '\\')
            p++;
        else if (*p == '"')
            return p + 1;
    }
    return NULL;
}

static const char *skip_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    return p;
}

/* The end of the JSON value at p (a document cJSON has parsed: only its extent is found). */
static const char *skip_value(const char *p, const char *end)
{
    if (p >= end)
        return NULL;
    if (*p == '"')
        return skip_string(p, end);
    if (*p != '{' && *p != '[') {
        while (p < end && !strchr(",]} \t\r\n", *p))
            p++;
        return p;
    }
    unsigned depth = 0;
    while (p < end) {
        if (*p == '"') {
            if (!(p = skip_string(p, end)))
                return NULL;
            continue;
        }
        if (*p == '{' || *p == '[')
            depth++;
        else if ((*p == '}' || *p == ']') && --depth == 0)
            return p + 1;
        p++;
    }
    return NULL;
}

typedef struct out {
    char *buf;
    size_t len, cap;
} out_t;

static int put(out_t *o, const char *p, size_t n)
{
    if (o->len + n + 1 > o->cap) {
        size_t cap = o->cap ? o->cap : 4096;
        while (cap < o->len + n + 1)
            cap *= 2;
        char *b = realloc(o->buf, cap);
        if (!b)
            return -1;
        o->buf = b;
        o->cap = cap;
    }
    memcpy(o->buf + o->len, p, n);
    o->len += n;
    o->buf[o->len] = '\0';
    return 0;
}

/* JSON text [p, end) without the whitespace between tokens (a pretty-printed document's
 * indentation would otherwise be most of what a sidecar keeps); strings as they are. */
static int put_min(out_t *o, const char *p, const char *end)
{
    while (p < end) {
        const char *q = p;
        if (*p == '"') {
            if (!(q = skip_string(p, end)))
                return -1;
        } else {
            while (q < end && *q != '"' && !strchr(" \t\r\n", *q))
                q++;
        }
        if (q > p && put(o, p, (size_t)(q - p)) != 0)
            return -1;
        p = skip_ws(q, end);
    }
    return 0;
}

/* One member of an object's text: "key" (quotes included) and its value. */
typedef struct member {
    const char *key, *key_end, *value, *value_end;
} member_t;

/* The next member of the object whose text continues at *p (just after its '{' or after the
 * previous member). Returns 1 with *m filled, 0 at the closing brace (*p just past it), -1 when
 * the text is not JSON. */
static int next_member(const char **p, const char *end, member_t *m)
{
    const char *q = skip_ws(*p, end);
    if (q < end && *q == ',')
        q = skip_ws(q + 1, end);
    if (q < end && *q == '}') {
        *p = q + 1;
        return 0;
    }
    if (q >= end || *q != '"' || !(m->key_end = skip_string(q, end)))
        return -1;
    m->key = q;
    q = skip_ws(m->key_end, end);
    if (q >= end || *q != ':')
        return -1;
    m->value = skip_ws(q + 1, end);
    if (!(m->value_end = skip_value(m->value, end)))
        return -1;
    *p = m->value_end;
    return 1;
}

static int is_key(const member_t *m, const char *quoted)
{
    size_t n = strlen(quoted);
    return (size_t)(m->key_end - m->key) == n && memcmp(m->key, quoted, n) == 0;
}

/* A member's text (without whitespace between tokens), after a comma unless it is the
 * object's first. */
static int put_member(out_t *o, const member_t *m, int *first)
{
    int err = *first ? 0 : put(o, ",", 1);
    *first = 0;
    return err | put(o, m->key, (size_t)(m->key_end - m->key)) | put(o, ":", 1) |
           put_min(o, m->value, m->value_end);
}

/* A virtual node's text without spec.backends: the node is one this sidecar sends to, and its
 * backends are its own sidecar's business (and name services this document no longer holds).
 * Everything else as given. */
static int put_node_fields(out_t *o, const char *p, const char *end)
{
    member_t m, sm;
    int first = 1, err = p >= end || *p != '{' || put(o, "{", 1);
    int r = -1;
    for (p++; !err && (r = next_member(&p, end, &m)) == 1;) {
        if (!is_key(&m, "\"spec\"") || *m.value != '{') {
            err |= put_member(o, &m, &first);
            continue;
        }
        err |= (first ? 0 : put(o, ",", 1)) | put(o, m.key, (size_t)(m.key_end - m.key)) |
               put(o, ":{", 2);
        first = 0;
        int sfirst = 1, sr = -1;
        for (const char *q = m.value + 1; !err && (sr = next_member(&q, end, &sm)) == 1;)
            if (!is_key(&sm, "\"backends\""))
                err |= put_member(o, &sm, &sfirst);
        err |= sr < 0 || put(o, "}", 1);
    }
    return err || r < 0 || put(o, "}", 1) ? -1 : 0;
}

/* The same for a list element, which may also be describe-virtual-node's output pasted whole:
 * {"virtualNode": {...}}, the node inside (cfg_list_item reads it so). */
static int put_node_without_backends(out_t *o, const char *p, const char *end)
{
    static const char wrapper[] = "{\"virtualNode\":";
    const char *q = p + 1;
    member_t m, more;
    if (p < end && *p == '{' && next_member(&q, end, &m) == 1 && is_key(&m, "\"virtualNode\"") &&
        *m.value == '{' && next_member(&q, end, &more) == 0)
        return put(o, wrapper, sizeof wrapper - 1) || put_node_fields(o, m.value, m.value_end) ||
                       put(o, "}", 1)
                   ? -1
                   : 0;
    return put_node_fields(o, p, end);
}

/* The array at p with only the elements whose keep[i] is set, into o; element `self` (or none:
 * -1) as given, the others through `each` when it is set. Returns the end of the array, or
 * NULL. */
static const char *cut_array(const char *p, const char *end, const uint8_t *keep, unsigned n,
                             long self, int (*each)(out_t *, const char *, const char *), out_t *o)
{
    p = skip_ws(p + 1, end);
    int first = 1, err = put(o, "[", 1);
    for (unsigned i = 0; p && p < end && *p != ']'; i++) {
        const char *v = skip_value(p, end);
        if (!v)
            return NULL;
        if (i < n && keep[i]) {
            err |= first ? 0 : put(o, ",", 1);
            err |= each && (long)i != self ? each(o, p, v) : put_min(o, p, v);
            first = 0;
        }
        p = skip_ws(v, end);
        if (p < end && *p == ',')
            p = skip_ws(p + 1, end);
    }
    if (!p || p >= end || err || put(o, "]", 1) != 0)
        return NULL;
    return p + 1;
}

/* The document cut to what is kept: each resource list holds the kept elements, as given but
 * for the nodes this one sends to, which lose their backends (so that the text is a document
 * that parses and validates on its own, to the same config); the other members as given. All
 * of it without whitespace between tokens. NULL when the text is not what cJSON parsed (not
 * expected). */
static char *cut_raw(const config_t *c, const keep_t *k, unsigned self, size_t *len)
{
    static const char *const lists[] = {"\"virtualNodes\"", "\"virtualServices\"",
                                        "\"virtualRouters\"", "\"routes\"", "\"rollouts\""};
    const uint8_t *keeps[] = {k->nodes, k->services, k->routers, k->routes, k->rollouts};
    const unsigned counts[] = {c->nnodes, c->nservices, c->nrouters, c->nroutes, c->nrollouts};
    const char *p = c->raw, *end = c->raw + c->raw_len;
    if (end - p >= 3 && memcmp(p, "\xEF\xBB\xBF", 3) == 0) /* cJSON skips a UTF-8 BOM too */
        p += 3;
    p = skip_ws(p, end);
    out_t o = {0};
    member_t m;
    int seen[5] = {0}, first = 1, r = -1;
    int err = p >= end || *p != '{' || put(&o, "{", 1) != 0;
    for (p = p < end ? p + 1 : p; !err && (r = next_member(&p, end, &m)) == 1;) {
        int list = -1;
        for (int i = 0; i < 5; i++)
            if (is_key(&m, lists[i]))
                list = i;
        if (list < 0 || *m.value != '[') {
            err |= put_member(&o, &m, &first);
            continue;
        }
        if (seen[list]) /* a repeated member: cJSON read the first one only */
            continue;
        seen[list] = 1;
        err |= (first ? 0 : put(&o, ",", 1)) | put(&o, m.key, (size_t)(m.key_end - m.key)) |
               put(&o, ":", 1);
        first = 0;
        err |= !cut_array(m.value, end, keeps[list], counts[list], list == 0 ? (long)self : -1,
                          list == 0 ? put_node_without_backends : NULL, &o);
    }
    if (err || r != 0 || put(&o, "}", 1) != 0) {
        free(o.buf);
        return NULL;
    }
    *len = o.len;
    char *fit = realloc(o.buf, o.len + 1); /* held for the table's life: no slack */
    return fit ? fit : o.buf;
}

/* ---- config_prune ---- */

static int all_kept(const uint8_t *keep, unsigned n)
{
    for (unsigned i = 0; i < n; i++)
        if (!keep[i])
            return 0;
    return 1;
}

int config_prune(config_t *c, const char *node, diag_t *d)
{
    const cfg_node_t *self = config_node(c, node);
    if (!self) {
        diag_add(d, c->source, "node", "virtual node \"%s\" is not in the config", node);
        return ERR_CONFIG;
    }
    size_t doc_len = c->raw_len;
    keep_t k = {calloc(c->nnodes + 1, 1), calloc(c->nservices + 1, 1), calloc(c->nrouters + 1, 1),
                calloc(c->nroutes + 1, 1), calloc(c->nrollouts + 1, 1)};
    char *name = strdup(node);
    int err = 0;
    if (!k.nodes || !k.services || !k.routers || !k.routes || !k.rollouts || !name) {
        err = UV_ENOMEM;
        goto done;
    }
    mark(c, self, &k);
    int whole = all_kept(k.nodes, c->nnodes) && all_kept(k.services, c->nservices) &&
                all_kept(k.routers, c->nrouters) && all_kept(k.routes, c->nroutes) &&
                all_kept(k.rollouts, c->nrollouts);
    if (!whole) {
        size_t len = 0;
        char *raw = cut_raw(c, &k, self->index, &len);
        if (raw) { /* else the document stays as given: larger, still true */
            free(c->raw);
            c->raw = raw;
            c->raw_len = len;
        }
        for (unsigned i = 0; i < c->nnodes; i++)
            if (k.nodes[i] && &c->nodes[i] != self)
                drop_backends(&c->nodes[i]);
        c->nnodes = compact(c->nodes, c->nnodes, sizeof *c->nodes, k.nodes, drop_node);
        c->nservices =
            compact(c->services, c->nservices, sizeof *c->services, k.services, drop_service);
        c->nrouters = compact(c->routers, c->nrouters, sizeof *c->routers, k.routers, drop_router);
        c->nroutes = compact(c->routes, c->nroutes, sizeof *c->routes, k.routes, drop_route);
        c->nrollouts =
            compact(c->rollouts, c->nrollouts, sizeof *c->rollouts, k.rollouts, drop_rollout);
        c->nodes = shrink(c->nodes, c->nnodes, sizeof *c->nodes);
        c->services = shrink(c->services, c->nservices, sizeof *c->services);
        c->routers = shrink(c->routers, c->nrouters, sizeof *c->routers);
        c->routes = shrink(c->routes, c->nroutes, sizeof *c->routes);
        err = config_index_build(c);
        share_names(c);
    }
    free(c->pruned_for);
    c->pruned_for = name;
    name = NULL;
done:
    free(name);
    free(k.nodes);
    free(k.services);
    free(k.routers);
    free(k.routes);
    free(k.rollouts);
    /* The parse tree and what is left out are free now, but glibc keeps freed heap pages
     * mapped: give them back, so that a sidecar's RSS is what it uses, not what it read. */
    if (doc_len >= PRUNE_TRIM_BYTES)
        malloc_trim(0);
    return err;
}
