/* discovery/cluster.c: round-robin picks, a retry avoiding the endpoint that failed, and the
 * connection-pool slots. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <arpa/inet.h>

#include "discovery/cluster.h"

static cluster_t *three(void)
{
    endpoint_t *eps = calloc(3, sizeof *eps);
    for (int i = 0; i < 3; i++) {
        struct sockaddr_in in = {.sin_family = AF_INET, .sin_port = htons(8080)};
        in.sin_addr.s_addr = htonl(0x7f000001 + (uint32_t)i);
        endpoint_set(&eps[i], (struct sockaddr *)&in);
    }
    return cluster_new("c", eps, 3);
}

static void test_round_robin_and_retry_elsewhere(void **state)
{
    (void)state;
    cluster_t *c = three();
    assert_string_equal(cluster_pick(c)->name, "127.0.0.1:8080");
    assert_string_equal(cluster_pick(c)->name, "127.0.0.2:8080");
    assert_string_equal(cluster_pick(c)->name, "127.0.0.3:8080");
    for (int i = 0; i < 10; i++) {
        const endpoint_t *failed = cluster_pick(c);
        const endpoint_t *next = cluster_pick_other(c, failed);
        assert_string_not_equal(next->name, failed->name);
    }
    cluster_free(c);
    endpoint_t *one = calloc(1, sizeof *one);
    struct sockaddr_in in = {.sin_family = AF_INET, .sin_port = htons(1)};
    endpoint_set(one, (struct sockaddr *)&in);
    c = cluster_new("one", one, 1);
    assert_ptr_equal(cluster_pick_other(c, &c->endpoints[0]), &c->endpoints[0]);
    cluster_free(c);
    c = cluster_new("none", NULL, 0);
    assert_null(cluster_pick(c));
    cluster_free(c);
}

static void test_slots(void **state)
{
    (void)state;
    cluster_t *c = three();
    assert_true(cluster_slot_take(c)); /* unlimited */
    c->max_requests = 2;
    c->active_requests = 0;
    assert_true(cluster_slot_take(c));
    assert_true(cluster_slot_take(c));
    assert_false(cluster_slot_take(c));
    cluster_slot_release(c);
    assert_true(cluster_slot_take(c));
    cluster_free(c);
}

static void test_endpoint_helpers(void **state)
{
    (void)state;
    endpoint_t ep;
    struct sockaddr_in6 in6 = {.sin6_family = AF_INET6, .sin6_port = htons(9)};
    in6.sin6_addr = in6addr_loopback;
    assert_int_equal(endpoint_set(&ep, (struct sockaddr *)&in6), 0);
    assert_string_equal(ep.name, "[::1]:9");
    assert_int_equal(endpoint_port(&ep), 9);
    assert_true(endpoint_is_local(&ep));
    struct sockaddr_in in = {.sin_family = AF_INET, .sin_port = htons(80)};
    inet_pton(AF_INET, "10.1.2.3", &in.sin_addr);
    endpoint_set(&ep, (struct sockaddr *)&in);
    assert_false(endpoint_is_local(&ep));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_robin_and_retry_elsewhere),
        cmocka_unit_test(test_slots),
        cmocka_unit_test(test_endpoint_helpers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
