#include "routing/rollout.h"

#include <stdio.h>

const char *rollout_state_name(enum rollout_state s)
{
    switch (s) {
    case ROLLOUT_PROGRESSING:
        return "progressing";
    case ROLLOUT_HOLDING:
        return "holding";
    case ROLLOUT_PROMOTED:
        return "promoted";
    case ROLLOUT_ROLLED_BACK:
        return "rolled_back";
    }
    return "unknown";
}

const char *rollout_result_name(enum rollout_result r)
{
    switch (r) {
    case ROLLOUT_PASS:
        return "pass";
    case ROLLOUT_FAIL:
        return "fail";
    case ROLLOUT_INSUFFICIENT:
        return "insufficient";
    }
    return "unknown";
}

/* ---- statistics (docs/rollouts.md, "The statistics") ---- */

/* The terms of Binomial(n, p) relative to the one at the mode (1 there, so nothing overflows
 * and nothing needs exp or log: libm stays out of the binary), summed outward from the mode
 * with pmf(i+1)/pmf(i) = (n-i)/(i+1) * p/(1-p) until they no longer change the sums; the tail
 * is its share of the whole. */
double rollout_binom_tail(uint64_t k, uint64_t n, double p)
{
    if (k == 0 || p >= 1)
        return 1;
    if (k > n || p <= 0)
        return 0;
    const double up = p / (1 - p), eps = 1e-17;
    uint64_t mode = (uint64_t)((double)(n + 1) * p);
    if (mode > n)
        mode = n;
    double all = 0, tail = 0, t = 1;
    for (uint64_t i = mode;; i++) { /* the mode and above */
        all += t;
        if (i >= k)
            tail += t;
        if (i == n || (t < all * eps && i >= k))
            break;
        t *= (double)(n - i) / (double)(i + 1) * up;
        if (t == 0)
            break; /* underflow: what is left is below any threshold */
    }
    t = 1;
    for (uint64_t i = mode; i > 0;) { /* below the mode */
        t *= (double)i / (double)(n - i + 1) / up;
        i--;
        all += t;
        if (i >= k)
            tail += t;
        if (t < all * eps)
            break;
    }
    double r = tail / all;
    return r > 1 ? 1 : r;
}

double rollout_excess_p(uint64_t xc, uint64_t nc, uint64_t xb, uint64_t nb)
{
    if (nc == 0 || nb == 0)
        return 1;
    return rollout_binom_tail(xc, xc + xb, (double)nc / (double)(nc + nb));
}

enum rollout_result rollout_judge(const cfg_rollout_t *r, const rollout_sample_t *canary,
                                  const rollout_sample_t *baseline, char *reason, size_t cap)
{
    const rollout_sample_t *c = canary, *b = baseline;
    unsigned long long ce = c->errors, cn = c->requests, be = b->errors, bn = b->requests;
    if (c->requests < r->min_requests) {
        snprintf(reason, cap, "canary had %llu requests, fewer than minRequests %u", cn,
                 r->min_requests);
        return ROLLOUT_INSUFFICIENT;
    }
    double alpha = 1 - r->confidence;
    double p_abs = rollout_binom_tail(c->errors, c->requests, r->max_error_rate);
    if (p_abs < alpha) {
        snprintf(reason, cap,
                 "canary errors %llu/%llu above maxErrorRate %g (one-sided p %.3g < %.3g)", ce, cn,
                 r->max_error_rate, p_abs, alpha);
        return ROLLOUT_FAIL;
    }
    double rate_c = (double)ce / (double)cn, rate_b = bn ? (double)be / (double)bn : 0;
    double p_rel = rollout_excess_p(c->errors, c->requests, b->errors, b->requests);
    if (p_rel < alpha && rate_c - rate_b > r->max_error_rate_increase) {
        snprintf(reason, cap,
                 "canary errors %llu/%llu vs baseline %llu/%llu: higher by %.2f points, above "
                 "maxErrorRateIncrease %g (one-sided p %.3g < %.3g)",
                 ce, cn, be, bn, (rate_c - rate_b) * 100, r->max_error_rate_increase, p_rel, alpha);
        return ROLLOUT_FAIL;
    }
    if (r->max_p99_ms != DURATION_UNSET && c->p99_ms > (double)r->max_p99_ms) {
        snprintf(reason, cap, "canary p99 %.1f ms above maxP99Latency %llu ms", c->p99_ms,
                 (unsigned long long)r->max_p99_ms);
        return ROLLOUT_FAIL;
    }
    snprintf(reason, cap, "canary errors %llu/%llu, baseline %llu/%llu, canary p99 %.1f ms", ce, cn,
             be, bn, c->p99_ms < 0 ? 0 : c->p99_ms);
    return ROLLOUT_PASS;
}

/* ---- the state machine ---- */

int rollout_clock_step(const cfg_rollout_t *r, int64_t start_ms, int64_t now_ms, int64_t *began_ms)
{
    *began_ms = start_ms;
    if (now_ms < start_ms || r->nsteps == 0)
        return -1;
    int64_t t = start_ms;
    unsigned i = 0;
    while (i + 1 < r->nsteps && r->steps[i].hold_ms != DURATION_UNSET &&
           t + (int64_t)r->steps[i].hold_ms <= now_ms) {
        t += (int64_t)r->steps[i].hold_ms;
        i++;
    }
    *began_ms = t;
    return (int)i;
}

static void enter_step(rollout_run_t *run, const cfg_rollout_t *r, int step, int64_t began_ms)
{
    run->step = step;
    run->step_began_ms = began_ms;
    run->weight = r->steps[step].weight;
    run->state = (unsigned)step + 1 == r->nsteps ? ROLLOUT_PROMOTED : ROLLOUT_PROGRESSING;
}

void rollout_begin(rollout_run_t *run, const cfg_rollout_t *r, int64_t start_ms, int64_t now_ms)
{
    *run = (rollout_run_t){.state = ROLLOUT_HOLDING, .step = -1};
    int64_t began;
    int step = rollout_clock_step(r, start_ms, now_ms, &began);
    if (step >= 0)
        enter_step(run, r, step, began);
}

int rollout_tick(rollout_run_t *run, const cfg_rollout_t *r, int64_t start_ms, int64_t now_ms,
                 const rollout_sample_t *canary, const rollout_sample_t *baseline)
{
    if (run->state == ROLLOUT_PROMOTED || run->state == ROLLOUT_ROLLED_BACK)
        return 0;
    if (run->step < 0) {
        if (now_ms >= start_ms) {
            uint64_t n = run->decisions;
            rollout_begin(run, r, start_ms, now_ms);
            run->decisions = n;
        }
        return 0;
    }
    rollout_decision_t *d = &run->last;
    d->result = rollout_judge(r, canary, baseline, d->reason, sizeof d->reason);
    d->time_ms = now_ms;
    d->canary = *canary;
    d->baseline = *baseline;
    run->decisions++;
    run->has_last = 1;
    switch (d->result) {
    case ROLLOUT_FAIL:
        if (++run->failures >= r->failure_limit) {
            run->state = ROLLOUT_ROLLED_BACK;
            run->weight = 0;
        } else {
            run->state = ROLLOUT_HOLDING;
        }
        break;
    case ROLLOUT_INSUFFICIENT:
        run->state = ROLLOUT_HOLDING;
        break;
    case ROLLOUT_PASS: {
        run->failures = 0;
        run->state = ROLLOUT_PROGRESSING;
        const cfg_rollout_step_t *s = &r->steps[run->step];
        if (s->hold_ms != DURATION_UNSET && now_ms >= run->step_began_ms + (int64_t)s->hold_ms)
            enter_step(run, r, run->step + 1, now_ms);
        break;
    }
    }
    d->step = run->step;
    d->weight = run->weight;
    return 1;
}
