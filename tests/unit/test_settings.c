/* proxy/settings.c: node identity from App Mesh ARNs, CPU limits from cgroups, precedence. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "discovery/dns.h"
#include "base/err.h"
#include "proxy/settings.h"
#include "tracing/xray.h"

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
    static const char *const names[] = {
        "APPMESH_RESOURCE_ARN",    "APPMESH_VIRTUAL_NODE_NAME", "ENVOY_CONCURRENCY",
        "ENVOY_ADMIN_ACCESS_PORT", "ENVOY_LOG_LEVEL",           "ENABLE_ENVOY_XRAY_TRACING",
        "XRAY_SAMPLING_RATE",      "AWS_XRAY_DAEMON_ADDRESS",   "XRAY_DAEMON_PORT",
        "REMORA_DNS_SERVERS",      "ENABLE_ENVOY_DOG_STATSD",   "STATSD_PORT",
        "STATSD_ADDRESS",          "STATSD_SOCKET_PATH",        "REMORA_STATSD_FLUSH_MS"};
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

/* XRAY_SAMPLING_RATE: decimals in [0, 1], with an exponent if need be (strtod always took
 * one); strtod's NaN, infinities, hex and spaces are not. */
static void test_sampling_rate(void **state)
{
    (void)state;
    static const char *const good[] = {"0",     "1",        "0.05", ".5",   "1.",
                                       "1.000", "0.999999", "5e-2", "1E-1", "1e+0"};
    static const double want[] = {0, 1, 0.05, 0.5, 1, 1, 0.999999, 0.05, 0.1, 1};
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        double r = -1;
        assert_int_equal(settings_parse_rate(good[i], &r), 0);
        assert_true(r == want[i]);
    }
    static const char *const bad[] = {"nan",  "NaN", "inf", "-0",  "+0.5", "0x0.1",    "0X1",
                                      "1e",   "1e+", "e5",  "2e0", "1.5",  "2",        " 0.5",
                                      "0.5 ", ".",   "",    "5%",  "0..1", "1.0000001"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        double r = 0.25;
        assert_int_equal(settings_parse_rate(bad[i], &r), -1);
        assert_true(r == 0.25); /* untouched */
    }
}

/* The DNS server list c-ares gets: a port of 99999 would silently become 34463. */
static void test_dns_servers(void **state)
{
    (void)state;
    static const char *const good[] = {"1.2.3.4", "1.2.3.4:53", "1.2.3.4:65535,5.6.7.8",
                                       "::1",     "[::1]:5353", "[fd00::2]:53,10.0.0.2:1",
                                       "[::1]"};
    for (size_t i = 0; i < sizeof good / sizeof *good; i++)
        assert_int_equal(dns_servers_check(good[i]), 0);
    static const char *const bad[] = {"garbage",
                                      "1.2.3.4:99999",
                                      "1.2.3.4:0",
                                      "1.2.3.4:",
                                      "1.2.3.4:53x",
                                      "1.2.3.4:+53",
                                      "1.2.3.4:-1",
                                      "1.2.3.4,",
                                      ",1.2.3.4",
                                      "1.2.3.4, 5.6.7.8",
                                      "[::1]:99999",
                                      "[::1",
                                      "[::1]53",
                                      "[1.2.3.4]:53",
                                      "dns.local:53",
                                      "1.2.3.4:0000053",
                                      "",
                                      "256.1.1.1"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        assert_int_equal(dns_servers_check(bad[i]), UV_EINVAL);
}

/* AWS_XRAY_DAEMON_ADDRESS: getaddrinfo would take port 99999 as 34463. */
static void test_xray_daemon(void **state)
{
    (void)state;
    static const char *const good[] = {"127.0.0.1:2000", "xray:2000", "[::1]:2000",
                                       "tcp:1.2.3.4:2000 udp:5.6.7.8:2001",
                                       "udp:5.6.7.8:65535 tcp:1.2.3.4:2000"};
    for (size_t i = 0; i < sizeof good / sizeof *good; i++)
        assert_null(xray_daemon_check(good[i]));
    static const char *const bad[] = {"127.0.0.1:99999",  "127.0.0.1:0",
                                      "127.0.0.1:",       "127.0.0.1:20x",
                                      "127.0.0.1:+20",    ":2000",
                                      "garbage",          "[::1]:",
                                      "tcp:1.2.3.4:2000", "tcp:1.2.3.4:2000 udp:5.6.7.8:70000"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        assert_non_null(xray_daemon_check(bad[i]));
}

/* Each bad variable refuses start-up with one line naming it and its value (SPEC §3). */
static void test_bad_variables_are_named(void **state)
{
    (void)state;
    static const struct {
        const char *name, *value, *line;
    } cases[] = {
        {"XRAY_SAMPLING_RATE", "nan",
         "settings: XRAY_SAMPLING_RATE: must be a decimal number 0..1, got \"nan\""},
        {"XRAY_SAMPLING_RATE", "0x0.1",
         "settings: XRAY_SAMPLING_RATE: must be a decimal number 0..1, got \"0x0.1\""},
        {"AWS_XRAY_DAEMON_ADDRESS", "127.0.0.1:99999",
         "settings: AWS_XRAY_DAEMON_ADDRESS: expected HOST:PORT with a port of 1..65535, got "
         "\"127.0.0.1:99999\""},
        {"REMORA_DNS_SERVERS", "1.2.3.4:99999",
         "settings: REMORA_DNS_SERVERS: expected IP[:PORT][,IP[:PORT]] (IPv6 as [IP]:PORT) with "
         "ports 1..65535, got \"1.2.3.4:99999\""},
        {"STATSD_PORT", "x", "settings: STATSD_PORT: must be 1..65535, got \"x\""},
        {"STATSD_ADDRESS", "garbage",
         "settings: STATSD_ADDRESS: must be an IPv4 or IPv6 address, got \"garbage\""},
        {"REMORA_STATSD_FLUSH_MS", "5",
         "settings: REMORA_STATSD_FLUSH_MS: must be 100..3600000 (milliseconds), got \"5\""},
    };
    config_t *c = parse("{\"virtualNodes\":[{\"virtualNodeName\":\"a\",\"spec\":{}}]}");
    cli_opts_t cli = {.ingress_port = -1, .egress_port = -1, .workers = -1};
    settings_t s;
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        diag_t d = {0};
        unset_env();
        setenv("ENABLE_ENVOY_DOG_STATSD", "1", 1);
        setenv("ENABLE_ENVOY_XRAY_TRACING", "1", 1);
        setenv(cases[i].name, cases[i].value, 1);
        assert_int_equal(settings_resolve(&s, &cli, c, &d), ERR_CONFIG);
        assert_int_equal(d.n, 1);
        assert_string_equal(d.lines[0], cases[i].line);
        diag_free(&d);
    }
    /* The StatsD variables are read only when the sink is on, as Envoy's image reads them;
     * the X-Ray daemon's address only when tracing is. */
    unset_env();
    setenv("STATSD_PORT", "x", 1);
    setenv("AWS_XRAY_DAEMON_ADDRESS", "127.0.0.1:99999", 1);
    diag_t d = {0};
    assert_int_equal(settings_resolve(&s, &cli, c, &d), 0);
    assert_false(s.statsd.on);
    setenv("ENABLE_ENVOY_DOG_STATSD", "1", 1);
    setenv("STATSD_PORT", "9125", 1);
    setenv("XRAY_SAMPLING_RATE", "0.5", 1);
    setenv("REMORA_DNS_SERVERS", "127.0.0.1:5353,[::1]:53", 1);
    assert_int_equal(settings_resolve(&s, &cli, c, &d), 0);
    assert_int_equal(d.n, 0);
    assert_true(s.statsd.on);
    assert_int_equal(s.statsd.family, AF_INET);
    assert_true(s.xray_set.rate == 0.5);
    assert_string_equal(s.dns_servers, "127.0.0.1:5353,[::1]:53");
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
        cmocka_unit_test(test_sampling_rate),
        cmocka_unit_test(test_dns_servers),
        cmocka_unit_test(test_xray_daemon),
        cmocka_unit_test(test_bad_variables_are_named),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
