#include "proxy/rollouts.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>

#include "base/log.h"
#include "proxy/server.h"

#define RECENT 10 /* decisions kept per rollout for /rollouts and the page */

/* One side (canary or baseline) of a rollout: where its counters are, and their values at the
 * start of the interval. */
typedef struct side {
    const char *node;
    target_stats_t *ts; /* routing's counters of the route's target (outlive reloads) */
    cluster_t *cl;      /* the target node's cluster (outlives reloads) */
    uint64_t requests, errors;
    uint64_t buckets[HIST_BOUNDS];
} side_t;

typedef struct slot {
    struct slot *next;
    rollouts_t *ro;
    cfg_rollout_t spec; /* a copy: the config it came from is freed on reload */
    int64_t start_ms;
    rollout_run_t run;
    int live;    /* in the config in force: its timer runs */
    int applied; /* the weight in force, -1 before any */
    int seen;    /* in the config being prepared */
    int ticking; /* the timer was started */
    uv_timer_t timer;
    side_t canary, baseline;
    stat_t decisions[ROLLOUT_RESULTS];
    rollout_decision_t recent[RECENT]; /* a ring: recent[(nrecent - 1) % RECENT] is the latest */
    unsigned nrecent;
} slot_t;

struct rollouts {
    server_t *s;
    slot_t *slots;
    int started; /* rollouts_start: timers may run (the main loop will) */
    int stopped;
};

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

rollouts_t *rollouts_new(server_t *s)
{
    rollouts_t *ro = calloc(1, sizeof *ro);
    if (ro)
        ro->s = s;
    return ro;
}

static void on_slot_closed(uv_handle_t *h)
{
    slot_t *sl = h->data;
    config_rollout_free(&sl->spec);
    free(sl);
}

/* Unlinked already; freed once its timer is closed (or at once if it never had one). */
static void drop_slot(slot_t *sl)
{
    if (sl->ticking) {
        uv_close((uv_handle_t *)&sl->timer, on_slot_closed);
        return;
    }
    config_rollout_free(&sl->spec);
    free(sl);
}

void rollouts_stop(rollouts_t *ro)
{
    if (!ro)
        return;
    ro->stopped = 1;
    for (slot_t *sl = ro->slots; sl; sl = sl->next)
        if (sl->ticking) {
            uv_timer_stop(&sl->timer);
            uv_close((uv_handle_t *)&sl->timer, NULL);
            sl->ticking = 0;
        }
}

void rollouts_free(rollouts_t *ro)
{
    if (!ro)
        return;
    int on_loop = 0;
    while (ro->slots) {
        slot_t *sl = ro->slots;
        ro->slots = sl->next;
        if (sl->ticking) { /* start-up failed after the timers started: the loop still lists */
            on_loop = 1;   /* the handle, so its memory stays (the process is exiting) */
            continue;
        }
        config_rollout_free(&sl->spec);
        free(sl);
    }
    if (!on_loop)
        free(ro);
}

static slot_t *find(rollouts_t *ro, const char *name, uint64_t digest)
{
    for (slot_t *sl = ro->slots; sl; sl = sl->next)
        if (sl->spec.digest == digest && !strcmp(sl->spec.name, name))
            return sl;
    return NULL;
}

/* ---- counters ---- */

static uint64_t responses(target_stats_t *ts)
{
    return stat_get(&ts->rq_1xx) + stat_get(&ts->rq_2xx) + stat_get(&ts->rq_3xx) +
           stat_get(&ts->rq_4xx) + stat_get(&ts->rq_5xx);
}

/* Finds the side's counters once they exist (a route table built with the target). */
static void locate(server_t *s, const cfg_rollout_t *r, side_t *sd)
{
    if (!sd->ts)
        for (target_stats_entry_t *e = s->reg.targets; e; e = e->next)
            if (!strcmp(e->router, r->router) && !strcmp(e->route, r->route) &&
                !strcmp(e->target, sd->node)) {
                sd->ts = &e->stats;
                break;
            }
    if (!sd->cl)
        for (cluster_t *c = s->reg.clusters; c; c = c->next)
            if (c->node && !strcmp(c->node, sd->node)) {
                sd->cl = c;
                break;
            }
}

/* The p99 of an interval's samples from bucket deltas, interpolated within the bucket (as
 * /stats computes quantiles); -1 with no samples. */
static double p99_of(const uint64_t *delta)
{
    uint64_t n = 0;
    for (unsigned i = 0; i < HIST_BOUNDS; i++)
        n += delta[i];
    if (!n)
        return -1;
    double target = 0.99 * (double)n, seen = 0;
    for (unsigned i = 0; i < HIST_BOUNDS; i++) {
        double in = (double)delta[i];
        if (in > 0 && seen + in >= target) {
            double lo = i ? hist_bounds[i - 1] / 2.0 : 0, hi = hist_bounds[i] / 2.0;
            return lo + (hi - lo) * (target - seen) / in;
        }
        seen += in;
    }
    return hist_bounds[HIST_BOUNDS - 1] / 2.0;
}

/* The side's counts since the last call (the sample), and the start of the next interval. */
static rollout_sample_t take(server_t *s, const cfg_rollout_t *r, side_t *sd)
{
    rollout_sample_t out = {0, 0, -1};
    locate(s, r, sd);
    if (sd->ts) {
        uint64_t rq = responses(sd->ts);
        uint64_t er = stat_get(&sd->ts->rq_5xx) + stat_get(&sd->ts->grpc_errors);
        out.requests = rq >= sd->requests ? rq - sd->requests : rq; /* a /reset_counters */
        out.errors = er >= sd->errors ? er - sd->errors : er;
        sd->requests = rq;
        sd->errors = er;
        if (out.errors > out.requests)
            out.errors = out.requests;
    }
    if (sd->cl) {
        uint64_t delta[HIST_BOUNDS];
        for (unsigned i = 0; i < HIST_BOUNDS; i++) {
            uint64_t v = stat_get(&sd->cl->stats.rq_time.buckets[i]);
            delta[i] = v >= sd->buckets[i] ? v - sd->buckets[i] : v;
            sd->buckets[i] = v;
        }
        out.p99_ms = p99_of(delta);
    }
    return out;
}

/* ---- the timer ---- */

static void put_in_force(slot_t *sl)
{
    if (sl->applied == (int)sl->run.weight || sl->ro->stopped)
        return;
    log_info("rollout %s: canary %s weight %u -> %u; rebuilding the route table", sl->spec.name,
             sl->spec.canary, sl->applied < 0 ? 0 : (unsigned)sl->applied, sl->run.weight);
    if (server_rebuild(sl->ro->s) != 0)
        log_error("rollout %s: the weight could not be put in force; retrying next interval",
                  sl->spec.name);
}

static void on_tick(uv_timer_t *t)
{
    slot_t *sl = t->data;
    server_t *s = sl->ro->s;
    rollout_sample_t c = take(s, &sl->spec, &sl->canary), b = take(s, &sl->spec, &sl->baseline);
    enum rollout_state before = sl->run.state;
    int step = sl->run.step;
    unsigned weight = sl->run.weight; /* the interval's */
    if (rollout_tick(&sl->run, &sl->spec, sl->start_ms, wall_ms(), &c, &b)) {
        const rollout_decision_t *d = &sl->run.last;
        stat_inc(&sl->decisions[d->result]);
        sl->recent[sl->nrecent++ % RECENT] = *d;
        log_info("rollout %s: interval %s at step %d (canary weight %u): %s", sl->spec.name,
                 rollout_result_name(d->result), step, weight, d->reason);
    }
    if (sl->run.state != before && (sl->run.state == ROLLOUT_ROLLED_BACK))
        log_warn("rollout %s: rolled back after %u failed intervals in a row; canary %s gets "
                 "weight 0 until the rollout's spec changes",
                 sl->spec.name, sl->run.failures, sl->spec.canary);
    else if (sl->run.state != before && sl->run.state == ROLLOUT_PROMOTED)
        log_info("rollout %s: promoted: canary %s at weight %u", sl->spec.name, sl->spec.canary,
                 sl->run.weight);
    else if (sl->run.step != step)
        log_info("rollout %s: step %d -> %d (canary weight %u)", sl->spec.name, step, sl->run.step,
                 sl->run.weight);
    put_in_force(sl);
}

/* ---- prepare and adopt ---- */

static void start_timer(slot_t *sl)
{
    rollouts_t *ro = sl->ro;
    if (sl->ticking || !ro->started || ro->stopped)
        return;
    uv_timer_init(ro->s->loop, &sl->timer);
    sl->timer.data = sl;
    uv_timer_start(&sl->timer, on_tick, sl->spec.interval_ms, sl->spec.interval_ms);
    sl->ticking = 1;
}

static void override(config_t *cfg, const slot_t *sl)
{
    for (unsigned i = 0; i < cfg->nroutes; i++) {
        cfg_route_t *r = &cfg->routes[i];
        if (strcmp(r->router, sl->spec.router) || strcmp(r->name, sl->spec.route))
            continue;
        for (unsigned t = 0; t < r->ntargets; t++) {
            if (!strcmp(r->targets[t].node, sl->spec.canary))
                r->targets[t].weight = sl->run.weight;
            else if (!strcmp(r->targets[t].node, sl->spec.baseline))
                r->targets[t].weight = 100 - sl->run.weight;
        }
    }
}

void rollouts_prepare(rollouts_t *ro, config_t *cfg)
{
    if (!ro)
        return;
    int64_t now = wall_ms();
    for (unsigned i = 0; i < cfg->nrollouts; i++) {
        const cfg_rollout_t *r = &cfg->rollouts[i];
        slot_t *sl = find(ro, r->name, r->digest);
        if (!sl) {
            sl = calloc(1, sizeof *sl);
            if (!sl || config_rollout_copy(&sl->spec, r) != 0) {
                free(sl);
                log_error("rollout %s: out of memory; its route keeps the document's weights",
                          r->name);
                continue;
            }
            sl->ro = ro;
            sl->applied = -1;
            sl->start_ms = r->start_ms >= 0 ? r->start_ms : now;
            sl->canary.node = sl->spec.canary;
            sl->baseline.node = sl->spec.baseline;
            rollout_begin(&sl->run, &sl->spec, sl->start_ms, now);
            sl->next = ro->slots;
            ro->slots = sl;
            log_info("rollout %s: route %s/%s, %s -> %s, %u steps: %s at step %d, canary weight %u",
                     r->name, r->router, r->route, r->baseline, r->canary, r->nsteps,
                     rollout_state_name(sl->run.state), sl->run.step, sl->run.weight);
        }
        override(cfg, sl);
    }
}

static int holds(const config_t *cfg, const slot_t *sl)
{
    for (unsigned i = 0; i < cfg->nrollouts; i++)
        if (cfg->rollouts[i].digest == sl->spec.digest &&
            !strcmp(cfg->rollouts[i].name, sl->spec.name))
            return 1;
    return 0;
}

void rollouts_adopt(rollouts_t *ro, const config_t *cfg)
{
    if (!ro)
        return;
    for (slot_t **p = &ro->slots; *p;) {
        slot_t *sl = *p;
        if (!holds(cfg, sl)) {
            *p = sl->next;
            if (sl->live)
                log_info("rollout %s: no longer in the config (or its spec changed)",
                         sl->spec.name);
            drop_slot(sl);
            continue;
        }
        sl->applied = (int)sl->run.weight;
        if (!sl->live) {
            sl->live = 1;
            take(ro->s, &sl->spec, &sl->canary); /* the first interval starts now */
            take(ro->s, &sl->spec, &sl->baseline);
        }
        start_timer(sl);
        p = &sl->next;
    }
}

void rollouts_start(rollouts_t *ro)
{
    if (!ro)
        return;
    ro->started = 1;
    for (slot_t *sl = ro->slots; sl; sl = sl->next)
        if (sl->live)
            start_timer(sl);
}

/* ---- views ---- */

void rollouts_each(rollouts_t *ro, void (*fn)(void *ctx, const rollout_view_t *v), void *ctx)
{
    for (slot_t *sl = ro ? ro->slots : NULL; sl; sl = sl->next)
        if (sl->live) {
            rollout_view_t v = {sl->spec.name, &sl->run, sl->decisions};
            fn(ctx, &v);
        }
}

static void iso_time(text_t *out, int64_t ms)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    char buf[40];
    gmtime_r(&t, &tm);
    strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
    text_printf(out, "\"%s.%03dZ\"", buf, (int)(ms % 1000));
}

static void sample_json(text_t *out, const rollout_sample_t *s)
{
    text_printf(out, "{\"requests\": %llu, \"errors\": %llu, \"p99Ms\": ",
                (unsigned long long)s->requests, (unsigned long long)s->errors);
    if (s->p99_ms < 0)
        text_printf(out, "null}");
    else
        text_printf(out, "%.1f}", s->p99_ms);
}

static void decision_json(text_t *out, const rollout_decision_t *d)
{
    text_printf(out, "{\"time\": ");
    iso_time(out, d->time_ms);
    text_printf(out, ", \"result\": \"%s\", \"reason\": ", rollout_result_name(d->result));
    text_json_string(out, d->reason);
    text_printf(out, ", \"step\": %d, \"canaryWeight\": %u, \"canary\": ", d->step, d->weight);
    sample_json(out, &d->canary);
    text_printf(out, ", \"baseline\": ");
    sample_json(out, &d->baseline);
    text_printf(out, "}");
}

void rollouts_json(rollouts_t *ro, text_t *out)
{
    text_printf(out, "[");
    int first = 1;
    for (slot_t *sl = ro ? ro->slots : NULL; sl; sl = sl->next) {
        if (!sl->live)
            continue;
        const cfg_rollout_t *r = &sl->spec;
        const rollout_run_t *run = &sl->run;
        text_printf(out, "%s\n{\"rolloutName\": ", first ? "" : ",");
        first = 0;
        text_json_string(out, r->name);
        text_printf(out, ", \"virtualRouterName\": ");
        text_json_string(out, r->router);
        text_printf(out, ", \"routeName\": ");
        text_json_string(out, r->route);
        text_printf(out, ", \"baseline\": ");
        text_json_string(out, r->baseline);
        text_printf(out, ", \"canary\": ");
        text_json_string(out, r->canary);
        text_printf(out, ", \"state\": \"%s\", \"step\": %d, \"canaryWeight\": %u, \"startTime\": ",
                    rollout_state_name(run->state), run->step, run->weight);
        iso_time(out, sl->start_ms);
        text_printf(out, ", \"stepStartedAt\": ");
        if (run->step >= 0)
            iso_time(out, run->step_began_ms);
        else
            text_printf(out, "null");
        text_printf(out, ", \"steps\": [");
        for (unsigned i = 0; i < r->nsteps; i++) {
            text_printf(out, "%s{\"weight\": %u", i ? ", " : "", r->steps[i].weight);
            if (r->steps[i].hold_ms != DURATION_UNSET)
                text_printf(out, ", \"holdMs\": %llu", (unsigned long long)r->steps[i].hold_ms);
            text_printf(out, "}");
        }
        text_printf(out,
                    "], \"intervalMs\": %llu, \"failureLimit\": %u, \"consecutiveFailures\": %u, "
                    "\"lastDecision\": ",
                    (unsigned long long)r->interval_ms, r->failure_limit, run->failures);
        if (run->has_last)
            decision_json(out, &run->last);
        else
            text_printf(out, "null");
        text_printf(out,
                    ", \"decisions\": %llu, \"decisionCounts\": {\"pass\": %llu, \"fail\": %llu, "
                    "\"insufficient\": %llu}, \"recentDecisions\": [",
                    (unsigned long long)run->decisions,
                    (unsigned long long)stat_get(&sl->decisions[ROLLOUT_PASS]),
                    (unsigned long long)stat_get(&sl->decisions[ROLLOUT_FAIL]),
                    (unsigned long long)stat_get(&sl->decisions[ROLLOUT_INSUFFICIENT]));
        unsigned n = sl->nrecent < RECENT ? sl->nrecent : RECENT;
        for (unsigned i = 0; i < n; i++) {
            text_printf(out, "%s", i ? ", " : "");
            decision_json(out, &sl->recent[(sl->nrecent - 1 - i) % RECENT]);
        }
        text_printf(out, "]}");
    }
    text_printf(out, "%s]\n", first ? "" : "\n");
}
