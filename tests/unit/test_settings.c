/* proxy/settings.c: node identity from App Mesh ARNs, CPU limits from cgroups, precedence. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "proxy/settings.h"

static void test_node_from_arn(void **state)
{
    (void)state;
    assert_string_equal(settings_node_from_arn(
                            "arn:aws:appmesh:us-west-2:111122223333:mesh/shop/virtualNode/web-v1"),
                        "web-v1");
    assert_string_equal(settings_node_from_arn("mesh/shop/virtualNode/cart"), "cart");
    assert_null(settings_node_from_arn("arn:aws:appmesh:us-west-2:1:mesh/shop/virtualGateway/gw"));
    assert_null(settings_node_from_arn("mesh//virtualNode/x"));
    assert_null(settings_node_from_arn("mesh/shop/virtualNode/"));
    assert_null(settings_node_from_arn("nomesh/shop/virtualNode/x"));
}

static void test_cpu_limit(void **state)
{
    (void)state;
    assert_int_equal(settings_cpu_limit("max 100000\n", 8), 8);
    assert_int_equal(settings_cpu_limit("200000 100000\n", 8), 2);
    assert_int_equal(settings_cpu_limit("150000 100000\n", 8), 2); /* 1.5 CPUs round up */
    assert_int_equal(settings_cpu_limit("50000 100000\n", 8), 1);
    assert_int_equal(settings_cpu_limit("400000 100000\n", 2), 2); /* affinity bounds it */
    assert_int_equal(settings_cpu_limit("garbage", 4), 4);
}

static config_t *parse(const char *json)
{
    diag_t d = {0};
    config_t *c = config_parse(json, strlen(json), "t.json", &d);
    diag_free(&d);
    assert_non_null(c);
    return c;
}

/* The variables these tests set, all unset: only what a test sets next is in force. */
static void unset_env(void)
{
    static const char *const names[] = {"APPMESH_RESOURCE_ARN", "APPMESH_VIRTUAL_NODE_NAME",
                                        "ENVOY_CONCURRENCY",    "ENVOY_ADMIN_ACCESS_PORT",
                                        "ENVOY_LOG_LEVEL",      "ENABLE_ENVOY_XRAY_TRACING"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        unsetenv(names[i]);
}

static void test_precedence(void **state)
{
    (void)state;
    config_t *c = parse("{\"virtualNodes\":[{\"virtualNodeName\":\"a\",\"spec\":{}},{"
                        "\"virtualNodeName\":\"b\",\"spec\":{}}],"
                        "\"proxy\":{\"node\":\"a\",\"ingressPort\":7000,\"workers\":3,"
                        "\"logLevel\":\"debug\",\"admin\":\"127.0.0.1:9000\"}}");
    cli_opts_t cli = {.ingress_port = -1, .egress_port = -1, .workers = -1};
    settings_t s;
    diag_t d = {0};
    unset_env();
    assert_int_equal(settings_resolve(&s, &cli, c, &d), 0);
    assert_string_equal(s.node, "a");
    assert_int_equal(s.ingress_port, 7000);
    assert_int_equal(s.egress_port, 15001);
    assert_int_equal(s.workers, 3);
    assert_int_equal(s.admin_port, 9000);
    assert_int_equal(s.log_level, LOG_DEBUG);
    /* environment beats the file */
    setenv("APPMESH_VIRTUAL_NODE_NAME", "mesh/m/virtualNode/b", 1);
    setenv("ENVOY_CONCURRENCY", "2", 1);
    setenv("ENVOY_ADMIN_ACCESS_PORT", "9999", 1);
    assert_int_equal(settings_resolve(&s, &cli, c, &d), 0);
    assert_string_equal(s.node, "b");
    assert_int_equal(s.workers, 2);
    assert_int_equal(s.admin_port, 9999);
    /* flags beat the environment */
    cli.node = "a";
    cli.workers = 5;
    cli.ingress_port = 1234;
    assert_int_equal(settings_resolve(&s, &cli, c, &d), 0);
    assert_string_equal(s.node, "a");
    assert_int_equal(s.workers, 5);
    assert_int_equal(s.ingress_port, 1234);
    /* errors are reported, not guessed around */
    cli.node = "zzz";
    setenv("ENVOY_CONCURRENCY", "lots", 1);
    assert_int_not_equal(settings_resolve(&s, &cli, c, &d), 0);
    assert_int_equal(d.n, 1);
    assert_string_equal(d.lines[0], "settings: node: virtual node \"zzz\" is not in the config");
    cli.workers = -1;
    diag_free(&d);
    assert_int_not_equal(settings_resolve(&s, &cli, c, &d), 0);
    assert_int_equal(d.n, 2);
    diag_free(&d);
    unset_env();
    config_free(c);
}

/* SPEC §2: the environment beats the file's proxy object for which node or gateway this is and
 * whether X-Ray is on, both ways. */
static void test_environment_beats_the_files_gateway_and_xray(void **state)
{
    (void)state;
    config_t *c =
        parse("{\"virtualNodes\":[{\"virtualNodeName\":\"b\",\"spec\":{}}],"
              "\"virtualGateways\":[{\"virtualGatewayName\":\"edge\",\"spec\":{\"listeners\":"
              "[{\"portMapping\":{\"port\":8443,\"protocol\":\"http\"}}]}}],"
              "\"proxy\":{\"gateway\":\"edge\",\"xray\":{\"enabled\":true}}}");
    cli_opts_t cli = {.ingress_port = -1, .egress_port = -1, .workers = -1};
    settings_t s;
    diag_t d = {0};
    unset_env();
    assert_int_equal(settings_resolve(&s, &cli, c, &d), 0);
    assert_true(s.gateway);
    assert_string_equal(s.node, "edge");
    assert_true(s.xray);
    setenv("APPMESH_VIRTUAL_NODE_NAME", "mesh/m/virtualNode/b", 1);
    setenv("ENABLE_ENVOY_XRAY_TRACING", "0", 1);
    assert_int_equal(settings_resolve(&s, &cli, c, &d), 0);
    assert_false(s.gateway);
    assert_string_equal(s.node, "b");
    assert_false(s.xray);
    unsetenv("APPMESH_VIRTUAL_NODE_NAME");
    setenv("APPMESH_RESOURCE_ARN", "arn:aws:appmesh:us-east-1:1:mesh/m/virtualNode/b", 1);
    assert_int_equal(settings_resolve(&s, &cli, c, &d), 0);
    assert_false(s.gateway);
    assert_string_equal(s.node, "b");
    assert_int_equal(d.n, 0);
    unset_env();
    config_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_node_from_arn),
        cmocka_unit_test(test_cpu_limit),
        cmocka_unit_test(test_precedence),
        cmocka_unit_test(test_environment_beats_the_files_gateway_and_xray),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
