/* Rollouts on the main thread: one timer per rollout at its analysis interval reads the
 * canary's and baseline's counters (routing's per-target responses, the target clusters'
 * rq_time histograms), lets routing/rollout.c decide, and puts a changed canary weight in force
 * by building the route table again from the document in force with the route's weights
 * overridden (server_rebuild). Every decision is logged and counted.
 *
 * A rollout's state is kept by rolloutName and the digest of its spec: a reload with the same
 * spec keeps it (a rollback stays rolled back); a changed spec starts it over from the clock.
 * State is not kept across restarts: a restarted sidecar rejoins at the step the clock says. */
#ifndef REMORA_ROLLOUTS_H
#define REMORA_ROLLOUTS_H

#include "base/stats.h"
#include "base/text.h"
#include "config/config.h"
#include "routing/rollout.h"

struct server;
typedef struct rollouts rollouts_t;

rollouts_t *rollouts_new(struct server *s);
/* The main loop is about to run: the timers start (those of rollouts adopted later, when they
 * are adopted). Before it, nothing is left on the loop to close should start-up fail. */
void rollouts_start(rollouts_t *ro);
/* Closes the timers (the main loop can then end); the state stays readable. */
void rollouts_stop(rollouts_t *ro);
void rollouts_free(rollouts_t *ro);

/* A config is about to be built into a route table: each of its rollouts gets its state (kept,
 * or begun from the clock), and the route's baseline and canary weights in `cfg` are set from
 * it. `cfg` is not in force yet, so it may be changed. */
void rollouts_prepare(rollouts_t *ro, config_t *cfg);
/* `cfg` (pruned: only the rollouts of routes the node reaches) is in force: states of
 * rollouts it does not hold are dropped, and the others' timers run. */
void rollouts_adopt(rollouts_t *ro, const config_t *cfg);

/* GET /rollouts (docs/rollouts.md): a JSON array. */
void rollouts_json(rollouts_t *ro, text_t *out);

/* What metrics.c shows of each rollout. */
typedef struct rollout_view {
    const char *name;
    const rollout_run_t *run;
    stat_t *decisions; /* [ROLLOUT_RESULTS], by enum rollout_result */
} rollout_view_t;
void rollouts_each(rollouts_t *ro, void (*fn)(void *ctx, const rollout_view_t *v), void *ctx);

#endif
