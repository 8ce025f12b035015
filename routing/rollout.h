/* A rollout's decisions, with no I/O: given its spec, the clock and one analysis interval's
 * counts for the canary and the baseline, what state it is in and the canary's weight
 * (docs/rollouts.md has the state machine and the statistics). proxy/rollouts.c owns the
 * timers, reads the counters and applies the weights.
 *
 *   progressing --interval fails--> holding --failureLimit in a row--> rolled_back (sticky)
 *        ^  |                          |
 *        |  +--hold passed, pass-->  next step ... last step: promoted (sticky)
 *        +------ interval passes ------+
 *
 * An interval with too few canary requests is `insufficient`: the step holds (never advance on
 * no data); it neither counts as a failure nor ends a run of failures. */
#ifndef REMORA_ROLLOUT_H
#define REMORA_ROLLOUT_H

#include <stddef.h>
#include <stdint.h>

#include "config/config.h"

enum rollout_state {
    ROLLOUT_PROGRESSING,
    ROLLOUT_HOLDING,
    ROLLOUT_PROMOTED,
    ROLLOUT_ROLLED_BACK,
};
#define ROLLOUT_STATES 4

enum rollout_result { ROLLOUT_PASS, ROLLOUT_FAIL, ROLLOUT_INSUFFICIENT };
#define ROLLOUT_RESULTS 3

const char *rollout_state_name(enum rollout_state s);
const char *rollout_result_name(enum rollout_result r);

/* One target's requests in one interval: responses, of which errors (5xx, including the
 * 502/503/504 remora answers for resets, connect failures and timeouts), and the p99 of their
 * durations (negative: none measured). */
typedef struct rollout_sample {
    uint64_t requests, errors;
    double p99_ms;
} rollout_sample_t;

typedef struct rollout_decision {
    int64_t time_ms; /* Unix ms */
    enum rollout_result result;
    char reason[200];
    rollout_sample_t canary, baseline;
    int step;        /* the step after the decision */
    unsigned weight; /* the canary's weight after the decision */
} rollout_decision_t;

typedef struct rollout_run {
    enum rollout_state state;
    int step;          /* index into steps; -1 before startTime */
    unsigned weight;   /* the canary's weight in force */
    unsigned failures; /* failed intervals in a row */
    int64_t step_began_ms;
    uint64_t decisions; /* intervals judged (any result) */
    int has_last;
    rollout_decision_t last;
} rollout_run_t;

/* The step the schedule puts `now` in: the last one whose nominal start (start + the holds of
 * the steps before it) is not after now; -1 before start. *began_ms is that nominal start. */
int rollout_clock_step(const cfg_rollout_t *r, int64_t start_ms, int64_t now_ms, int64_t *began_ms);

/* A run as the clock places it (a first load, a restart, a changed spec): at the step the
 * schedule says, progressing (or promoted at the last step, holding before startTime). */
void rollout_begin(rollout_run_t *run, const cfg_rollout_t *r, int64_t start_ms, int64_t now_ms);

/* Judges one interval. Returns the result and writes why into reason. */
enum rollout_result rollout_judge(const cfg_rollout_t *r, const rollout_sample_t *canary,
                                  const rollout_sample_t *baseline, char *reason, size_t cap);

/* The end of an analysis interval at `now`: judges it (unless the run is promoted, rolled back
 * or not started) and moves the run. Returns 1 when the interval was judged (run->last holds
 * the decision), 0 otherwise. run->weight may change either way. */
int rollout_tick(rollout_run_t *run, const cfg_rollout_t *r, int64_t start_ms, int64_t now_ms,
                 const rollout_sample_t *canary, const rollout_sample_t *baseline);

/* The statistics (docs/rollouts.md), exposed for tests. P(X >= k) for X ~ Binomial(n, p). */
double rollout_binom_tail(uint64_t k, uint64_t n, double p);
/* The one-sided p-value of "the canary's error rate is above the baseline's": given the
 * xc + xb errors of both, under equal rates the canary's count is Binomial(xc + xb,
 * nc / (nc + nb)) (the conditional test of two Poisson counts; Fisher's exact test is its
 * hypergeometric twin). 1 when either side had no requests. */
double rollout_excess_p(uint64_t xc, uint64_t nc, uint64_t xb, uint64_t nb);

#endif
