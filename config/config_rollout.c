/* remora's `rollouts` list (docs/rollouts.md): parsed and checked against the routes of the
 * same document, every problem reported with its JSON path. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>

#include "base/iso8601.h"
#include "config/config_impl.h"

#define NAME_MAX_LEN             255
#define ROLLOUT_MAX_STEPS        100
#define ROLLOUT_DEFAULT_INTERVAL 60000 /* Flagger's default interval */
#define ROLLOUT_MIN_INTERVAL     1000
#define ROLLOUT_MAX_INTERVAL     3600000

/* A number in [lo, hi] at obj.key, or dflt. */
static double j_number(jctx_t *j, const cJSON *obj, const char *base, const char *key, double lo,
                       double hi, double dflt)
{
    const cJSON *v = cJSON_IsObject(obj) ? cJSON_GetObjectItemCaseSensitive(obj, key) : NULL;
    if (!v)
        return dflt;
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= lo && v->valuedouble <= hi)) {
        jerr(j, base, key, "must be a number in %g..%g", lo, hi);
        return dflt;
    }
    return v->valuedouble;
}

static uint64_t fnv1a(const char *s)
{
    uint64_t h = 14695981039346656037ull;
    for (; s && *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static void parse_steps(jctx_t *j, const cJSON *o, const char *path, cfg_rollout_t *r)
{
    static const char *const fields[] = {"weight", "hold", NULL};
    const cJSON *arr = j_array(j, o, path, "steps", J_REQUIRED, 1, ROLLOUT_MAX_STEPS);
    r->nsteps = (unsigned)cJSON_GetArraySize(arr);
    r->steps = calloc(r->nsteps ? r->nsteps : 1, sizeof *r->steps);
    if (!r->steps) {
        r->nsteps = 0;
        return;
    }
    unsigned i = 0;
    long long prev = 0;
    for (const cJSON *s = arr ? arr->child : NULL; s; s = s->next, i++) {
        char sp[JPATH_MAX];
        jpath_index(sp, path, "steps", (int)i);
        if (!cJSON_IsObject(s)) {
            jerr(j, sp, NULL, "must be an object");
            continue;
        }
        j_only(j, s, sp, fields);
        long long w = j_int(j, s, sp, "weight", 0, 100, prev, J_REQUIRED);
        if (w < prev)
            jerr(j, sp, "weight", "must not be below the previous step's (%lld), got %lld", prev,
                 w);
        r->steps[i].weight = (unsigned)w;
        prev = w;
        int last = i + 1 == r->nsteps;
        r->steps[i].hold_ms = j_duration(j, s, sp, "hold", last ? J_OPTIONAL : J_REQUIRED);
        if (last && r->steps[i].hold_ms != DURATION_UNSET) {
            jerr(j, sp, "hold", "the last step has no hold: reaching it is promotion");
            r->steps[i].hold_ms = DURATION_UNSET;
        }
    }
}

static void parse_analysis(jctx_t *j, const cJSON *o, const char *path, cfg_rollout_t *r)
{
    static const char *const fields[] = {
        "interval",   "minRequests",   "maxErrorRate", "maxErrorRateIncrease",
        "confidence", "maxP99Latency", "failureLimit", NULL};
    char ap[JPATH_MAX];
    jpath(ap, path, "analysis");
    const cJSON *a = j_object(j, o, path, "analysis", J_OPTIONAL);
    j_only(j, a, ap, fields);
    r->interval_ms = j_duration(j, a, ap, "interval", J_OPTIONAL);
    if (r->interval_ms == DURATION_UNSET)
        r->interval_ms = ROLLOUT_DEFAULT_INTERVAL;
    else if (r->interval_ms < ROLLOUT_MIN_INTERVAL || r->interval_ms > ROLLOUT_MAX_INTERVAL)
        jerr(j, ap, "interval", "must be 1 s..1 h, got %llu ms",
             (unsigned long long)r->interval_ms);
    r->min_requests = (unsigned)j_int(j, a, ap, "minRequests", 1, 100000000, 50, J_OPTIONAL);
    r->max_error_rate = j_number(j, a, ap, "maxErrorRate", 0, 1, 0.01);
    r->max_error_rate_increase = j_number(j, a, ap, "maxErrorRateIncrease", 0, 1, 0.005);
    r->confidence = j_number(j, a, ap, "confidence", 0.5, 0.9999, 0.95);
    r->max_p99_ms = j_duration(j, a, ap, "maxP99Latency", J_OPTIONAL);
    if (r->max_p99_ms == 0)
        jerr(j, ap, "maxP99Latency", "must be above 0");
    r->failure_limit = (unsigned)j_int(j, a, ap, "failureLimit", 1, 100, 2, J_OPTIONAL);
}

static void parse_rollout(jctx_t *j, const cJSON *o, const char *path, void *out)
{
    static const char *const fields[] = {
        "rolloutName", "virtualRouterName", "routeName", "baseline", "canary", "startTime",
        "steps",       "analysis",          NULL};
    cfg_rollout_t *r = out;
    j_only(j, o, path, fields);
    r->name = j_string(j, o, path, "rolloutName", J_REQUIRED, 1, NAME_MAX_LEN);
    r->router = j_string(j, o, path, "virtualRouterName", J_REQUIRED, 1, NAME_MAX_LEN);
    r->route = j_string(j, o, path, "routeName", J_REQUIRED, 1, NAME_MAX_LEN);
    r->baseline = j_string(j, o, path, "baseline", J_REQUIRED, 1, NAME_MAX_LEN);
    r->canary = j_string(j, o, path, "canary", J_REQUIRED, 1, NAME_MAX_LEN);
    char *start = j_string(j, o, path, "startTime", J_OPTIONAL, 1, 64);
    r->start_ms = -1;
    if (start && (r->start_ms = iso8601_ms(start)) < 0)
        jerr(j, path, "startTime",
             "must be an ISO-8601 UTC time like 2026-12-01T10:00:00Z, got "
             "\"%s\"",
             start);
    free(start);
    parse_steps(j, o, path, r);
    parse_analysis(j, o, path, r);
    char *text = cJSON_PrintUnformatted(o);
    r->digest = fnv1a(text);
    cJSON_free(text);
}

/* The route, baseline and canary a rollout names must be in the same document. */
static void check_rollout(jctx_t *j, const config_t *c, const cfg_rollout_t *r, const char *path)
{
    if (!r->router || !r->route || !r->baseline || !r->canary)
        return;
    const cfg_route_t *route = NULL;
    int router_seen = 0;
    for (unsigned i = 0; i < c->nrouters && !router_seen; i++)
        router_seen = c->routers[i].name && strcmp(c->routers[i].name, r->router) == 0;
    for (unsigned i = 0; i < c->nroutes && !route; i++)
        if (c->routes[i].router && c->routes[i].name && !strcmp(c->routes[i].router, r->router) &&
            !strcmp(c->routes[i].name, r->route))
            route = &c->routes[i];
    if (!router_seen) {
        jerr(j, path, "virtualRouterName", "virtual router \"%s\" is not in the config", r->router);
        return;
    }
    if (!route) {
        jerr(j, path, "routeName", "router \"%s\" has no route \"%s\"", r->router, r->route);
        return;
    }
    if (route->kind == ROUTE_TCP) {
        jerr(j, path, "routeName",
             "route \"%s\" must be an httpRoute, http2Route or grpcRoute (rollouts judge "
             "requests)",
             r->route);
        return;
    }
    const char *keys[] = {"baseline", "canary"};
    const char *names[] = {r->baseline, r->canary};
    for (int k = 0; k < 2; k++) {
        int found = 0;
        for (unsigned t = 0; t < route->ntargets && !found; t++)
            found = route->targets[t].node && !strcmp(route->targets[t].node, names[k]);
        if (!found)
            jerr(j, path, keys[k], "\"%s\" is not a weighted target of route %s/%s", names[k],
                 r->router, r->route);
    }
    if (!strcmp(r->baseline, r->canary))
        jerr(j, path, "canary", "must differ from the baseline");
}

void config_parse_rollouts(jctx_t *j, const cJSON *root, config_t *c)
{
    const cJSON *arr = j_array(j, root, "", "rollouts", J_OPTIONAL, 0, 1000);
    unsigned n = (unsigned)cJSON_GetArraySize(arr);
    c->rollouts = calloc(n ? n : 1, sizeof *c->rollouts);
    if (!c->rollouts)
        return;
    c->nrollouts = n;
    unsigned i = 0;
    for (const cJSON *item = arr ? arr->child : NULL; item; item = item->next, i++) {
        char path[JPATH_MAX];
        jpath_index(path, "", "rollouts", (int)i);
        c->rollouts[i].index = i;
        c->rollouts[i].start_ms = -1;
        if (!cJSON_IsObject(item)) {
            jerr(j, path, NULL, "must be an object");
            continue;
        }
        parse_rollout(j, item, path, &c->rollouts[i]);
        check_rollout(j, c, &c->rollouts[i], path);
        for (unsigned k = 0; k < i; k++) {
            const cfg_rollout_t *a = &c->rollouts[k], *b = &c->rollouts[i];
            if (a->name && b->name && !strcmp(a->name, b->name))
                jerr(j, path, "rolloutName", "\"%s\" is also rollouts[%u]", b->name, k);
            else if (a->router && b->router && a->route && b->route &&
                     !strcmp(a->router, b->router) && !strcmp(a->route, b->route))
                jerr(j, path, "routeName", "route %s/%s already has a rollout (rollouts[%u])",
                     b->router, b->route, k);
        }
    }
}

void config_rollout_free(cfg_rollout_t *r)
{
    free(r->name);
    free(r->router);
    free(r->route);
    free(r->baseline);
    free(r->canary);
    free(r->steps);
    memset(r, 0, sizeof *r);
}

void config_free_rollouts(config_t *c)
{
    for (unsigned i = 0; i < c->nrollouts; i++)
        config_rollout_free(&c->rollouts[i]);
    free(c->rollouts);
    c->rollouts = NULL;
    c->nrollouts = 0;
}

int config_rollout_copy(cfg_rollout_t *dst, const cfg_rollout_t *src)
{
    *dst = *src;
    dst->name = strdup(src->name);
    dst->router = strdup(src->router);
    dst->route = strdup(src->route);
    dst->baseline = strdup(src->baseline);
    dst->canary = strdup(src->canary);
    dst->steps = malloc((src->nsteps ? src->nsteps : 1) * sizeof *dst->steps);
    if (!dst->name || !dst->router || !dst->route || !dst->baseline || !dst->canary ||
        !dst->steps) {
        config_rollout_free(dst);
        return UV_ENOMEM;
    }
    memcpy(dst->steps, src->steps, src->nsteps * sizeof *dst->steps);
    return 0;
}
