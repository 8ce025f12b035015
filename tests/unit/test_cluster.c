/* discovery/cluster.c: picks (round-robin, RFC 2782 priority and weight, health, ejection,
 * panic), a retry avoiding the endpoint that failed, outlier ejection within its cap, state
 * carried across a new set, and the connection-pool slots. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <cmocka.h>

#include "discovery/cluster.h"

static endpoint_t ep(unsigned last_octet, uint16_t prio, uint16_t weight)
{
    endpoint_t e;
    struct sockaddr_in in = {.sin_family = AF_INET, .sin_port = htons(8080)};
    in.sin_addr.s_addr = htonl(0x7f000000u + last_octet);
    endpoint_set(&e, (struct sockaddr *)&in);
    e.priority = prio;
    e.weight = weight;
    return e;
}

static cluster_t *with(const endpoint_t *eps, unsigned n)
{
    cluster_t *c = cluster_new("c", "node", 8080);
    endpoint_set_free(cluster_publish(c, eps, n));
    return c;
}

/* Picks `n` times and counts per last octet (index 1..9). */
static void count_picks(cluster_t *c, unsigned n, unsigned counts[10])
{
    memset(counts, 0, 10 * sizeof *counts);
    for (unsigned i = 0; i < n; i++) {
        endpoint_t e;
        assert_int_equal(cluster_pick(c, NULL, 1000, &e), 0);
        counts[e.name[8] - '0']++;
        cluster_done(c, &e, 200, 1000);
    }
}

static void test_round_robin_and_retry_elsewhere(void **state)
{
    (void)state;
    endpoint_t eps[] = {ep(1, 0, 1), ep(2, 0, 1), ep(3, 0, 1)};
    cluster_t *c = with(eps, 3);
    unsigned counts[10];
    count_picks(c, 300, counts);
    assert_int_equal(counts[1], 100);
    assert_int_equal(counts[2], 100);
    assert_int_equal(counts[3], 100);
    for (int i = 0; i < 10; i++) {
        endpoint_t failed, next;
        cluster_pick(c, NULL, 1000, &failed);
        cluster_pick(c, &failed, 1000, &next);
        assert_string_not_equal(next.name, failed.name);
        endpoint_release(&failed);
        endpoint_release(&next);
    }
    cluster_free(c);
    c = cluster_new("none", "n", 1);
    endpoint_t e;
    assert_int_equal(cluster_pick(c, NULL, 0, &e), -1);
    cluster_free(c);
}

static void test_srv_priority_and_weight(void **state)
{
    (void)state;
    endpoint_t eps[] = {ep(1, 1, 30), ep(2, 1, 10), ep(3, 2, 100)};
    cluster_t *c = with(eps, 3);
    unsigned counts[10];
    count_picks(c, 4000, counts);
    assert_int_equal(counts[3], 0); /* a worse priority is used only when the best has nothing */
    assert_in_range(counts[1], 2800, 3200);
    assert_in_range(counts[2], 800, 1200);
    const endpoint_set_t *s = c->set;
    atomic_store(&s->eps[0].state->unhealthy, 1);
    atomic_store(&s->eps[1].state->unhealthy, 1);
    count_picks(c, 10, counts);
    assert_int_equal(counts[3], 10);
    cluster_free(c);
}

static void test_health_ejection_and_panic(void **state)
{
    (void)state;
    endpoint_t eps[] = {ep(1, 0, 1), ep(2, 0, 1)};
    cluster_t *c = with(eps, 2);
    const endpoint_set_t *s = c->set;
    atomic_store(&s->eps[0].state->unhealthy, 1);
    unsigned counts[10];
    count_picks(c, 10, counts);
    assert_int_equal(counts[2], 10);
    atomic_store(&s->eps[1].state->ejected_until_ms, 5000);
    count_picks(c, 10, counts); /* nothing usable: panic spreads over all */
    assert_int_equal(counts[1] + counts[2], 10);
    assert_true(counts[1] > 0 && counts[2] > 0);
    assert_int_equal(stat_get(&c->stats.lb_healthy_panic), 10);
    cluster_free(c);
}

static void test_outlier_ejection_within_the_cap(void **state)
{
    (void)state;
    endpoint_t eps[] = {ep(1, 0, 1), ep(2, 0, 1), ep(3, 0, 1), ep(4, 0, 1)};
    cluster_t *c = with(eps, 4);
    c->outlier = (outlier_policy_t){.max_errors = 3, .base_ejection_ms = 1000,
                                    .max_ejection_percent = 25};
    const endpoint_set_t *s = c->set;
    for (int round = 0; round < 3; round++) {
        for (unsigned i = 0; i < 2; i++) { /* endpoints .1 and .2 fail every time */
            endpoint_t e = s->eps[i];
            atomic_fetch_add(&e.state->refs, 1);
            atomic_fetch_add(&e.state->active_requests, 1);
            cluster_done(c, &e, 503, 100);
        }
    }
    /* 25% of 4: only one may be out at a time. */
    assert_int_equal(atomic_load(&s->eps[0].state->ejected_until_ms), 1100);
    assert_int_equal(atomic_load(&s->eps[1].state->ejected_until_ms), 0);
    assert_int_equal(cluster_healthy(c, 100), 3);
    assert_int_equal(cluster_healthy(c, 1100), 4); /* the ejection ends on time */
    assert_int_equal(stat_get(&c->stats.outlier_detection_ejections_enforced_total), 1);
    /* A success resets the count. */
    endpoint_t e = s->eps[2];
    atomic_fetch_add(&e.state->refs, 1);
    cluster_done(c, &e, 500, 100);
    e = s->eps[2];
    atomic_fetch_add(&e.state->refs, 1);
    cluster_done(c, &e, 200, 100);
    assert_int_equal(atomic_load(&s->eps[2].state->consecutive_errors), 0);
    cluster_free(c);
}

static void test_state_survives_a_new_set(void **state)
{
    (void)state;
    endpoint_t eps[] = {ep(1, 0, 1), ep(2, 0, 1)};
    cluster_t *c = with(eps, 2);
    atomic_store(&c->set->eps[1].state->unhealthy, 1);
    endpoint_t in_flight;
    assert_int_equal(cluster_pick(c, NULL, 0, &in_flight), 0); /* .1, the healthy one */
    endpoint_t next[] = {ep(2, 0, 1), ep(3, 0, 1)};
    endpoint_set_t *old = cluster_publish(c, next, 2);
    assert_true(atomic_load(&c->set->eps[0].state->unhealthy)); /* .2 kept its verdict */
    assert_false(atomic_load(&c->set->eps[1].state->unhealthy));
    endpoint_set_free(old);
    /* The request in flight to .1, which left, still holds its state. */
    assert_int_equal(atomic_load(&in_flight.state->active_requests), 1);
    cluster_done(c, &in_flight, 200, 0);
    cluster_free(c);
}

static void test_slots(void **state)
{
    (void)state;
    cluster_t *c = cluster_new("c", NULL, 1);
    assert_true(cluster_slot_take(c, 0)); /* unlimited, but counted */
    assert_int_equal(c->active_requests, 1);
    /* A reload sets a limit of 2 while that request is in flight: one more fits. */
    assert_true(cluster_slot_take(c, 2));
    assert_false(cluster_slot_take(c, 2));
    cluster_slot_release(c); /* the request from before the reload ends */
    assert_true(cluster_slot_take(c, 2));
    assert_false(cluster_slot_take(c, 2));
    cluster_slot_release(c);
    cluster_slot_release(c);
    assert_int_equal(c->active_requests, 0);
    cluster_free(c);
}

static void test_endpoint_helpers(void **state)
{
    (void)state;
    endpoint_t e;
    struct sockaddr_in6 in6 = {.sin6_family = AF_INET6, .sin6_port = htons(9)};
    in6.sin6_addr = in6addr_loopback;
    assert_int_equal(endpoint_set(&e, (struct sockaddr *)&in6), 0);
    assert_string_equal(e.name, "[::1]:9");
    assert_int_equal(endpoint_port(&e), 9);
    assert_true(endpoint_is_local(&e));
    struct sockaddr_in in = {.sin_family = AF_INET, .sin_port = htons(80)};
    inet_pton(AF_INET, "10.1.2.3", &in.sin_addr);
    endpoint_set(&e, (struct sockaddr *)&in);
    assert_false(endpoint_is_local(&e));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_robin_and_retry_elsewhere),
        cmocka_unit_test(test_srv_priority_and_weight),
        cmocka_unit_test(test_health_ejection_and_panic),
        cmocka_unit_test(test_outlier_ejection_within_the_cap),
        cmocka_unit_test(test_state_survives_a_new_set),
        cmocka_unit_test(test_slots),
        cmocka_unit_test(test_endpoint_helpers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
