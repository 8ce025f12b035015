/* routing/rollout.c and config/config_rollout.c: the rollouts list, the schedule, the
 * statistics and the state machine, with exact decisions on fixed inputs. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "config/config.h"
#include "routing/rollout.h"

#define MESH                                                                                       \
    "\"virtualNodes\":[{\"virtualNodeName\":\"web\",\"spec\":{\"listeners\":[{\"portMapping\":"    \
    "{\"port\":8080,\"protocol\":\"http\"}}],\"backends\":[{\"virtualService\":"                   \
    "{\"virtualServiceName\":\"cart.shop.local\"}}]}},"                                            \
    "{\"virtualNodeName\":\"other\",\"spec\":{}},"                                                 \
    "{\"virtualNodeName\":\"cart-v1\",\"spec\":{\"listeners\":[{\"portMapping\":{\"port\":81,"     \
    "\"protocol\":\"http\"}}],\"serviceDiscovery\":{\"dns\":{\"hostname\":\"v1.local\"}}}},"       \
    "{\"virtualNodeName\":\"cart-v2\",\"spec\":{\"listeners\":[{\"portMapping\":{\"port\":81,"     \
    "\"protocol\":\"http\"}}],\"serviceDiscovery\":{\"dns\":{\"hostname\":\"v2.local\"}}}}],"      \
    "\"virtualServices\":[{\"virtualServiceName\":\"cart.shop.local\",\"spec\":{\"provider\":"     \
    "{\"virtualRouter\":{\"virtualRouterName\":\"cart\"}}}}],"                                     \
    "\"virtualRouters\":[{\"virtualRouterName\":\"cart\",\"spec\":{\"listeners\":"                 \
    "[{\"portMapping\":{\"port\":80,\"protocol\":\"http\"}}]}}],"                                  \
    "\"routes\":[{\"virtualRouterName\":\"cart\",\"routeName\":\"canary\",\"spec\":{"              \
    "\"httpRoute\":{\"match\":{\"prefix\":\"/\"},\"action\":{\"weightedTargets\":["                \
    "{\"virtualNode\":\"cart-v1\",\"weight\":90},{\"virtualNode\":\"cart-v2\",\"weight\":10}]}}}}]"

#define STEPS                                                                                      \
    "\"steps\":[{\"weight\":5,\"hold\":{\"unit\":\"s\",\"value\":60}},{\"weight\":25,\"hold\":"    \
    "{\"unit\":\"s\",\"value\":60}},{\"weight\":100}]"

#define ANALYSIS                                                                                   \
    "\"analysis\":{\"interval\":{\"unit\":\"s\",\"value\":10},\"minRequests\":50,"                 \
    "\"maxErrorRate\":0.01,\"maxErrorRateIncrease\":0.005,\"confidence\":0.95,"                    \
    "\"maxP99Latency\":{\"unit\":\"ms\",\"value\":500},\"failureLimit\":2}"

#define ROLLOUT(extra)                                                                             \
    "{\"rolloutName\":\"cart-v2\",\"virtualRouterName\":\"cart\",\"routeName\":\"canary\","        \
    "\"baseline\":\"cart-v1\",\"canary\":\"cart-v2\"," extra "}"

#define DOC(rollouts) "{" MESH ",\"rollouts\":[" rollouts "]}"

#define T0 1795860000000LL /* 2026-11-28T10:00:00Z, ms */

static config_t *parse_ok(const char *json)
{
    diag_t d = {0};
    config_t *c = config_parse(json, strlen(json), "m.json", &d);
    for (size_t i = 0; i < d.n; i++)
        fprintf(stderr, "unexpected: %s\n", d.lines[i]);
    assert_int_equal(d.n, 0);
    diag_free(&d);
    assert_non_null(c);
    return c;
}

static void rejects(const char *json, const char *expected)
{
    diag_t d = {0};
    config_t *c = config_parse(json, strlen(json), "m.json", &d);
    int found = 0;
    for (size_t i = 0; i < d.n; i++)
        found |= strcmp(d.lines[i], expected) == 0;
    if (!found)
        for (size_t i = 0; i < d.n; i++)
            fprintf(stderr, "got: %s\n", d.lines[i]);
    assert_null(c);
    assert_true(found);
    diag_free(&d);
}

static void test_parses_spec_shape(void **state)
{
    (void)state;
    config_t *c = parse_ok(DOC(ROLLOUT("\"startTime\":\"2026-11-28T10:00:00Z\"," STEPS
                                       "," ANALYSIS)));
    assert_int_equal(c->nrollouts, 1);
    const cfg_rollout_t *r = &c->rollouts[0];
    assert_string_equal(r->name, "cart-v2");
    assert_string_equal(r->router, "cart");
    assert_string_equal(r->route, "canary");
    assert_true(r->start_ms == T0);
    assert_int_equal(r->nsteps, 3);
    assert_int_equal(r->steps[0].weight, 5);
    assert_int_equal(r->steps[1].hold_ms, 60000);
    assert_true(r->steps[2].hold_ms == DURATION_UNSET);
    assert_int_equal(r->interval_ms, 10000);
    assert_int_equal(r->min_requests, 50);
    assert_int_equal(r->max_p99_ms, 500);
    assert_int_equal(r->failure_limit, 2);
    assert_true(r->confidence == 0.95);
    config_free(c);
    /* Defaults: no startTime (when first loaded), analysis as docs/rollouts.md says. */
    c = parse_ok(DOC(ROLLOUT(STEPS)));
    r = &c->rollouts[0];
    assert_true(r->start_ms == -1);
    assert_int_equal(r->interval_ms, 60000);
    assert_int_equal(r->min_requests, 50);
    assert_true(r->max_error_rate == 0.01);
    assert_true(r->max_p99_ms == DURATION_UNSET);
    assert_int_equal(r->failure_limit, 2);
    config_free(c);
}

static void test_rejects_with_paths(void **state)
{
    (void)state;
    rejects(DOC("{\"rolloutName\":\"x\",\"virtualRouterName\":\"nope\",\"routeName\":\"canary\","
                "\"baseline\":\"cart-v1\",\"canary\":\"cart-v2\"," STEPS "}"),
            "m.json: rollouts[0].virtualRouterName: virtual router \"nope\" is not in the config");
    rejects(DOC("{\"rolloutName\":\"x\",\"virtualRouterName\":\"cart\",\"routeName\":\"r2\","
                "\"baseline\":\"cart-v1\",\"canary\":\"cart-v2\"," STEPS "}"),
            "m.json: rollouts[0].routeName: router \"cart\" has no route \"r2\"");
    rejects(DOC("{\"rolloutName\":\"x\",\"virtualRouterName\":\"cart\",\"routeName\":\"canary\","
                "\"baseline\":\"cart-v1\",\"canary\":\"other\"," STEPS "}"),
            "m.json: rollouts[0].canary: \"other\" is not a weighted target of route cart/canary");
    rejects(DOC(ROLLOUT("\"steps\":[{\"weight\":50,\"hold\":{\"unit\":\"s\",\"value\":1}},"
                        "{\"weight\":20,\"hold\":{\"unit\":\"s\",\"value\":1}},{\"weight\":100}]")),
            "m.json: rollouts[0].steps[1].weight: must not be below the previous step's (50), "
            "got 20");
    rejects(DOC(ROLLOUT("\"steps\":[{\"weight\":5},{\"weight\":100}]")),
            "m.json: rollouts[0].steps[0].hold: is required");
    rejects(DOC(ROLLOUT("\"steps\":[{\"weight\":140}]")),
            "m.json: rollouts[0].steps[0].weight: must be 0..100, got 140");
    rejects(DOC(ROLLOUT("\"steps\":[{\"weight\":100,\"hold\":{\"unit\":\"s\",\"value\":1}}]")),
            "m.json: rollouts[0].steps[0].hold: the last step has no hold: reaching it is "
            "promotion");
    rejects(DOC(ROLLOUT("\"startTime\":\"2026-12-01 10:00\"," STEPS)),
            "m.json: rollouts[0].startTime: must be an ISO-8601 UTC time like "
            "2026-12-01T10:00:00Z, got \"2026-12-01 10:00\"");
    rejects(DOC(ROLLOUT(STEPS ",\"analysis\":{\"confidence\":1.5}")),
            "m.json: rollouts[0].analysis.confidence: must be a number in 0.5..0.9999");
    rejects(DOC(ROLLOUT(STEPS ",\"analysis\":{\"interval\":{\"unit\":\"ms\",\"value\":10}}")),
            "m.json: rollouts[0].analysis.interval: must be 1 s..1 h, got 10 ms");
    rejects(DOC(ROLLOUT(STEPS ",\"analysis\":{\"minRequests\":0}")),
            "m.json: rollouts[0].analysis.minRequests: must be 1..100000000, got 0");
    rejects(DOC(ROLLOUT(STEPS) "," ROLLOUT(STEPS)),
            "m.json: rollouts[1].rolloutName: \"cart-v2\" is also rollouts[0]");
    rejects(DOC(ROLLOUT(STEPS ",\"stepz\":1")), "m.json: rollouts[0].stepz: unknown field");
}

/* config_prune keeps the rollouts of the routes a node reaches, in the config and its text. */
static void test_prune_keeps_reached(void **state)
{
    (void)state;
    diag_t d = {0};
    config_t *c = parse_ok(DOC(ROLLOUT(STEPS)));
    assert_int_equal(config_prune(c, "web", &d), 0);
    assert_int_equal(c->nrollouts, 1);
    assert_non_null(strstr(c->raw, "\"rollouts\":[{\"rolloutName\":\"cart-v2\""));
    config_t *again = parse_ok(c->raw); /* the cut text is a document of its own */
    assert_int_equal(again->nrollouts, 1);
    config_free(again);
    config_free(c);
    c = parse_ok(DOC(ROLLOUT(STEPS)));
    assert_int_equal(config_prune(c, "other", &d), 0);
    assert_int_equal(c->nrollouts, 0);
    assert_non_null(strstr(c->raw, "\"rollouts\":[]"));
    config_free(c);
    diag_free(&d);
}

static cfg_rollout_t *spec(config_t **owner)
{
    *owner = parse_ok(DOC(ROLLOUT("\"startTime\":\"2026-11-28T10:00:00Z\"," STEPS "," ANALYSIS)));
    return &(*owner)->rollouts[0];
}

static void test_clock_step(void **state)
{
    (void)state;
    config_t *c;
    cfg_rollout_t *r = spec(&c);
    int64_t began;
    assert_int_equal(rollout_clock_step(r, T0, T0 - 1, &began), -1);
    assert_int_equal(rollout_clock_step(r, T0, T0, &began), 0);
    assert_true(began == T0);
    assert_int_equal(rollout_clock_step(r, T0, T0 + 59999, &began), 0);
    assert_int_equal(rollout_clock_step(r, T0, T0 + 60000, &began), 1);
    assert_true(began == T0 + 60000);
    assert_int_equal(rollout_clock_step(r, T0, T0 + 125000, &began), 2);
    assert_true(began == T0 + 120000);
    assert_int_equal(rollout_clock_step(r, T0, T0 + 999999999, &began), 2);

    rollout_run_t run;
    rollout_begin(&run, r, T0, T0 - 5);
    assert_int_equal(run.state, ROLLOUT_HOLDING);
    assert_int_equal(run.step, -1);
    assert_int_equal(run.weight, 0);
    rollout_begin(&run, r, T0, T0 + 70000); /* a restart mid-rollout rejoins the schedule */
    assert_int_equal(run.state, ROLLOUT_PROGRESSING);
    assert_int_equal(run.step, 1);
    assert_int_equal(run.weight, 25);
    rollout_begin(&run, r, T0, T0 + 200000);
    assert_int_equal(run.state, ROLLOUT_PROMOTED);
    assert_int_equal(run.weight, 100);
    config_free(c);
}

/* The worked numbers of reference §4.4: baseline 2/1000 errors. */
static void test_statistics(void **state)
{
    (void)state;
    assert_float_equal(rollout_excess_p(1, 50, 2, 1000), 0.13616, 1e-5);
    assert_float_equal(rollout_excess_p(2, 50, 2, 1000), 0.012757, 1e-6);
    assert_float_equal(rollout_excess_p(3, 50, 2, 1000), 0.0010041, 1e-7);
    assert_float_equal(rollout_binom_tail(2, 100, 0.01), 0.264238, 1e-6);
    assert_float_equal(rollout_binom_tail(10, 200, 0.01), 4.01418e-5, 1e-9);
    assert_float_equal(rollout_binom_tail(0, 10, 0.5), 1, 0);
    assert_float_equal(rollout_binom_tail(11, 10, 0.5), 0, 0);
    assert_float_equal(rollout_binom_tail(3, 3, 0.5), 0.125, 1e-12);
    assert_float_equal(rollout_excess_p(5, 0, 0, 10), 1, 0);
    /* Large intervals: terms are summed outward from the mode, with no overflow. */
    assert_float_equal(rollout_binom_tail(1100, 100000, 0.01), 9.117803e-4, 1e-9);
    assert_float_equal(rollout_binom_tail(950, 100000, 0.01), 0.9466734, 1e-7);
    assert_true(rollout_binom_tail(1500, 100000, 0.01) < 1e-40);
}

static enum rollout_result judge(const cfg_rollout_t *r, uint64_t cn, uint64_t ce, uint64_t bn,
                                 uint64_t be, double p99, char *why)
{
    rollout_sample_t c = {cn, ce, p99}, b = {bn, be, 1};
    return rollout_judge(r, &c, &b, why, 200);
}

static void test_judge(void **state)
{
    (void)state;
    config_t *c;
    cfg_rollout_t *r = spec(&c);
    char why[200];
    assert_int_equal(judge(r, 49, 0, 1000, 0, 1, why), ROLLOUT_INSUFFICIENT);
    assert_string_equal(why, "canary had 49 requests, fewer than minRequests 50");
    /* 1/50 against 2/1000 is no evidence (p 0.136); 2/50 is (p 0.0128, 3.8 points worse). */
    assert_int_equal(judge(r, 50, 1, 1000, 2, 1, why), ROLLOUT_PASS);
    assert_int_equal(judge(r, 50, 2, 1000, 2, 1, why), ROLLOUT_FAIL);
    assert_string_equal(why, "canary errors 2/50 vs baseline 2/1000: higher by 3.80 points, "
                             "above maxErrorRateIncrease 0.005 (one-sided p 0.0128 < 0.05)");
    /* The absolute gate alone: 10/200 against maxErrorRate 1% with no baseline traffic. */
    assert_int_equal(judge(r, 200, 10, 0, 0, 1, why), ROLLOUT_FAIL);
    assert_string_equal(why, "canary errors 10/200 above maxErrorRate 0.01 (one-sided p 4.01e-05 "
                             "< 0.05)");
    /* 3/200 (1.5%) is not enough evidence of a rate above 1% (p 0.32). */
    assert_int_equal(judge(r, 200, 3, 0, 0, 1, why), ROLLOUT_PASS);
    assert_int_equal(judge(r, 100, 0, 900, 0, 501, why), ROLLOUT_FAIL);
    assert_string_equal(why, "canary p99 501.0 ms above maxP99Latency 500 ms");
    assert_int_equal(judge(r, 100, 0, 900, 0, 500, why), ROLLOUT_PASS);
    config_free(c);
}

static void tick(rollout_run_t *run, const cfg_rollout_t *r, int64_t at, uint64_t cn, uint64_t ce,
                 double p99)
{
    rollout_sample_t c = {cn, ce, p99}, b = {1000, 0, 1};
    rollout_tick(run, r, T0, at, &c, &b);
}

static void test_state_machine(void **state)
{
    (void)state;
    config_t *c;
    cfg_rollout_t *r = spec(&c);
    rollout_run_t run;
    rollout_begin(&run, r, T0, T0);
    /* Passing intervals: the step advances once its hold has passed. */
    tick(&run, r, T0 + 10000, 100, 0, 10);
    assert_int_equal(run.step, 0);
    assert_int_equal(run.state, ROLLOUT_PROGRESSING);
    tick(&run, r, T0 + 60000, 100, 0, 10);
    assert_int_equal(run.step, 1);
    assert_int_equal(run.weight, 25);
    /* Too little traffic holds, and does not end a run of failures. */
    tick(&run, r, T0 + 130000, 10, 0, 10);
    assert_int_equal(run.state, ROLLOUT_HOLDING);
    assert_int_equal(run.step, 1);
    assert_int_equal(run.last.result, ROLLOUT_INSUFFICIENT);
    tick(&run, r, T0 + 140000, 100, 20, 10);
    assert_int_equal(run.state, ROLLOUT_HOLDING);
    assert_int_equal(run.failures, 1);
    tick(&run, r, T0 + 150000, 10, 0, 10);
    assert_int_equal(run.failures, 1);
    /* A pass ends the run of failures; the hold has passed, so it advances: promotion. */
    tick(&run, r, T0 + 160000, 100, 0, 10);
    assert_int_equal(run.failures, 0);
    assert_int_equal(run.state, ROLLOUT_PROMOTED);
    assert_int_equal(run.weight, 100);
    assert_int_equal(run.decisions, 6);
    assert_int_equal(rollout_tick(&run, r, T0, T0 + 170000, &run.last.canary, &run.last.baseline),
                     0);

    /* failureLimit (2) failed intervals in a row roll back, and that sticks. */
    rollout_begin(&run, r, T0, T0 + 61000);
    assert_int_equal(run.weight, 25);
    tick(&run, r, T0 + 70000, 100, 5, 10);
    assert_int_equal(run.state, ROLLOUT_HOLDING);
    assert_int_equal(run.weight, 25);
    tick(&run, r, T0 + 80000, 100, 0, 900); /* slow */
    assert_int_equal(run.state, ROLLOUT_ROLLED_BACK);
    assert_int_equal(run.weight, 0);
    assert_int_equal(run.last.weight, 0);
    tick(&run, r, T0 + 90000, 100, 0, 10);
    assert_int_equal(run.state, ROLLOUT_ROLLED_BACK);
    assert_int_equal(run.decisions, 2);

    /* Before startTime nothing is judged; the first interval after it places the run. */
    rollout_begin(&run, r, T0, T0 - 20000);
    tick(&run, r, T0 - 10000, 100, 0, 10);
    assert_int_equal(run.step, -1);
    tick(&run, r, T0 + 1000, 100, 0, 10);
    assert_int_equal(run.step, 0);
    assert_int_equal(run.weight, 5);
    assert_int_equal(run.decisions, 0);
    config_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parses_spec_shape),   cmocka_unit_test(test_rejects_with_paths),
        cmocka_unit_test(test_prune_keeps_reached), cmocka_unit_test(test_clock_step),
        cmocka_unit_test(test_statistics),          cmocka_unit_test(test_judge),
        cmocka_unit_test(test_state_machine),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
