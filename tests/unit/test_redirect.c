/* proxy/redirect.c: ECS proxyConfiguration properties into the aws-appmesh CNI plugin's
 * iptables commands, word for word (what --dry-run prints), and every validation message. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <uv.h>

#include "base/err.h"
#include "proxy/redirect.h"

static char *diag_text(const diag_t *d)
{
    static char out[8192];
    size_t used = 0;
    out[0] = '\0';
    for (size_t i = 0; i < d->n; i++)
        used += (size_t)snprintf(out + used, sizeof out - used, "%s\n", d->lines[i]);
    return out;
}

/* Parses `in` (which must be valid), plans `act`, and compares each command, formatted as
 * --dry-run prints it, with `cmds` (NULL-terminated), and what was warned with `warnings`. */
static void expect_plan(const redirect_input_t *in, enum redirect_action act,
                        const char *const *cmds, const char *warnings)
{
    diag_t e = {0}, w = {0};
    redirect_conf_t c;
    int err = redirect_parse(in, act, &c, &e, &w);
    assert_string_equal(diag_text(&e), "");
    assert_int_equal(err, 0);
    assert_string_equal(diag_text(&w), warnings);
    redirect_plan_t p;
    if (act == REDIRECT_INSTALL)
        redirect_plan_install(&c, &p);
    else
        redirect_plan_remove(&c, &p);
    unsigned n = 0;
    for (; cmds[n]; n++) {
        char line[4096];
        assert_true(n < p.n);
        assert_true(redirect_cmd_format(&p.cmds[n], line, sizeof line) >= 0);
        assert_string_equal(line, cmds[n]);
    }
    assert_int_equal(p.n, n);
    diag_free(&e);
    diag_free(&w);
}

/* Parses `in`, which must fail with exactly the lines `errors` (NULL-terminated). */
static void expect_errors(const redirect_input_t *in, enum redirect_action act,
                          const char *const *errors)
{
    diag_t e = {0}, w = {0};
    redirect_conf_t c;
    assert_int_equal(redirect_parse(in, act, &c, &e, &w), ERR_CONFIG);
    size_t n = 0;
    for (; errors[n]; n++) {
        assert_true(n < e.n);
        assert_string_equal(e.lines[n], errors[n]);
    }
    assert_int_equal(e.n, n);
    diag_free(&e);
    diag_free(&w);
}

/* One expected line, or several. */
#define ONE(line)  ((const char *const[]){line, NULL})
#define LINES(...) ((const char *const[]){__VA_ARGS__, NULL})

/* reference/appmesh.md §2.4: the task definition's proxyConfiguration, as the ECS guide has it;
 * the rules are §2.5's, in the plugin's order. */
static void test_ecs_example(void **state)
{
    (void)state;
    redirect_input_t in = {
        .ignored_uid = "1337",
        .proxy_ingress_port = "15000",
        .proxy_egress_port = "15001",
        .app_ports = "9080",
        .egress_ignored_ips = "169.254.170.2,169.254.169.254",
        .egress_ignored_ports = "22",
    };
    static const char *const cmds[] = {
        "iptables -w -t nat -N APPMESH_EGRESS",
        "iptables -w -t nat -A APPMESH_EGRESS -m owner --uid-owner 1337 -j RETURN",
        "iptables -w -t nat -A APPMESH_EGRESS -p tcp -m multiport --dports 22 -j RETURN",
        "iptables -w -t nat -A APPMESH_EGRESS -p tcp -d 169.254.170.2,169.254.169.254 -j RETURN",
        "iptables -w -t nat -A APPMESH_EGRESS -p tcp -j REDIRECT --to 15001",
        "iptables -w -t nat -A OUTPUT -p tcp -m addrtype ! --dst-type LOCAL -j APPMESH_EGRESS",
        "iptables -w -t nat -N APPMESH_INGRESS",
        "iptables -w -t nat -A APPMESH_INGRESS -p tcp -m multiport --dports 9080 -j REDIRECT "
        "--to-port 15000",
        "iptables -w -t nat -A PREROUTING -p tcp -m addrtype ! --src-type LOCAL -j APPMESH_INGRESS",
        NULL,
    };
    expect_plan(&in, REDIRECT_INSTALL, cmds, "");
}

/* IPv6 on: the same chains through ip6tables; each family gets its own ignored addresses. */
static void test_ipv6_mixed_ips(void **state)
{
    (void)state;
    redirect_input_t in = {
        .ignored_uid = "1337",
        .app_ports = "9080,9081",
        .egress_ignored_ips = "169.254.170.2, fd00:ec2::254 ,10.0.0.0/8,2001:db8::/32",
        .egress_ignored_ports = "2049",
        .enable_ipv6 = "true",
    };
    static const char *const cmds[] = {
        "iptables -w -t nat -N APPMESH_EGRESS",
        "iptables -w -t nat -A APPMESH_EGRESS -m owner --uid-owner 1337 -j RETURN",
        "iptables -w -t nat -A APPMESH_EGRESS -p tcp -m multiport --dports 2049,22 -j RETURN",
        "iptables -w -t nat -A APPMESH_EGRESS -p tcp -d 169.254.170.2,10.0.0.0/8 -j RETURN",
        "iptables -w -t nat -A APPMESH_EGRESS -p tcp -j REDIRECT --to 15001",
        "iptables -w -t nat -A OUTPUT -p tcp -m addrtype ! --dst-type LOCAL -j APPMESH_EGRESS",
        "iptables -w -t nat -N APPMESH_INGRESS",
        "iptables -w -t nat -A APPMESH_INGRESS -p tcp -m multiport --dports 9080,9081 -j REDIRECT "
        "--to-port 15000",
        "iptables -w -t nat -A PREROUTING -p tcp -m addrtype ! --src-type LOCAL -j APPMESH_INGRESS",
        "ip6tables -w -t nat -N APPMESH_EGRESS",
        "ip6tables -w -t nat -A APPMESH_EGRESS -m owner --uid-owner 1337 -j RETURN",
        "ip6tables -w -t nat -A APPMESH_EGRESS -p tcp -m multiport --dports 2049,22 -j RETURN",
        "ip6tables -w -t nat -A APPMESH_EGRESS -p tcp -d fd00:ec2::254,2001:db8::/32 -j RETURN",
        "ip6tables -w -t nat -A APPMESH_EGRESS -p tcp -j REDIRECT --to 15001",
        "ip6tables -w -t nat -A OUTPUT -p tcp -m addrtype ! --dst-type LOCAL -j APPMESH_EGRESS",
        "ip6tables -w -t nat -N APPMESH_INGRESS",
        "ip6tables -w -t nat -A APPMESH_INGRESS -p tcp -m multiport --dports 9080,9081 -j "
        "REDIRECT --to-port 15000",
        "ip6tables -w -t nat -A PREROUTING -p tcp -m addrtype ! --src-type LOCAL -j "
        "APPMESH_INGRESS",
        NULL,
    };
    expect_plan(&in, REDIRECT_INSTALL, cmds, "");

    /* Without IPv6 the v6 addresses have nowhere to go: said, not an error (the plugin drops
     * them silently). */
    in.enable_ipv6 = "0";
    in.app_ports = NULL;
    static const char *const v4_only[] = {
        "iptables -w -t nat -N APPMESH_EGRESS",
        "iptables -w -t nat -A APPMESH_EGRESS -m owner --uid-owner 1337 -j RETURN",
        "iptables -w -t nat -A APPMESH_EGRESS -p tcp -m multiport --dports 2049,22 -j RETURN",
        "iptables -w -t nat -A APPMESH_EGRESS -p tcp -d 169.254.170.2,10.0.0.0/8 -j RETURN",
        "iptables -w -t nat -A APPMESH_EGRESS -p tcp -j REDIRECT --to 15001",
        "iptables -w -t nat -A OUTPUT -p tcp -m addrtype ! --dst-type LOCAL -j APPMESH_EGRESS",
        NULL,
    };
    expect_plan(&in, REDIRECT_INSTALL, v4_only,
                "remora redirect: EgressIgnoredIPs: IPv6 addresses fd00:ec2::254,2001:db8::/32 "
                "ignored: IPv6 is not enabled, so no ip6tables rules are installed (set "
                "IPv6=true for them)\n");
}

/* The egress chain alone, for IgnoredUID 1337 and the defaults. */
static const char *const egress_1337[] = {
    "iptables -w -t nat -N APPMESH_EGRESS",
    "iptables -w -t nat -A APPMESH_EGRESS -m owner --uid-owner 1337 -j RETURN",
    "iptables -w -t nat -A APPMESH_EGRESS -p tcp -m multiport --dports 22 -j RETURN",
    "iptables -w -t nat -A APPMESH_EGRESS -p tcp -j REDIRECT --to 15001",
    "iptables -w -t nat -A OUTPUT -p tcp -m addrtype ! --dst-type LOCAL -j APPMESH_EGRESS",
    NULL,
};

/* No AppPorts (and no ProxyIngressPort): egress only, no ingress chain; the defaults apply. */
static void test_no_app_ports(void **state)
{
    (void)state;
    redirect_input_t in = {.ignored_uid = "1337"};
    expect_plan(&in, REDIRECT_INSTALL, egress_1337, "");

    /* Empty means unset, as ECS passes it; blanks and empty items are dropped. */
    redirect_input_t empty = {.ignored_uid = " 1337 ",
                              .proxy_ingress_port = "",
                              .app_ports = " , ",
                              .egress_ignored_ips = "",
                              .egress_ignored_ports = ""};
    expect_plan(&empty, REDIRECT_INSTALL, egress_1337, "");

    /* AppPorts alone: ProxyIngressPort takes remora's 15000. */
    redirect_input_t app = {.ignored_uid = "0",
                            .proxy_egress_port = "7001",
                            .app_ports = "8080, 8443,",
                            .egress_ignored_ports = "22,443"};
    static const char *const cmds[] = {
        "iptables -w -t nat -N APPMESH_EGRESS",
        "iptables -w -t nat -A APPMESH_EGRESS -m owner --uid-owner 0 -j RETURN",
        "iptables -w -t nat -A APPMESH_EGRESS -p tcp -m multiport --dports 22,443 -j RETURN",
        "iptables -w -t nat -A APPMESH_EGRESS -p tcp -j REDIRECT --to 7001",
        "iptables -w -t nat -A OUTPUT -p tcp -m addrtype ! --dst-type LOCAL -j APPMESH_EGRESS",
        "iptables -w -t nat -N APPMESH_INGRESS",
        "iptables -w -t nat -A APPMESH_INGRESS -p tcp -m multiport --dports 8080,8443 -j REDIRECT "
        "--to-port 15000",
        "iptables -w -t nat -A PREROUTING -p tcp -m addrtype ! --src-type LOCAL -j APPMESH_INGRESS",
        NULL,
    };
    expect_plan(&app, REDIRECT_INSTALL, cmds, "");
}

static void test_only_gid(void **state)
{
    (void)state;
    redirect_input_t in = {.ignored_uid = "", .ignored_gid = "1338"};
    static const char *const gid[] = {
        "iptables -w -t nat -N APPMESH_EGRESS",
        "iptables -w -t nat -A APPMESH_EGRESS -m owner --gid-owner 1338 -j RETURN",
        "iptables -w -t nat -A APPMESH_EGRESS -p tcp -m multiport --dports 22 -j RETURN",
        "iptables -w -t nat -A APPMESH_EGRESS -p tcp -j REDIRECT --to 15001",
        "iptables -w -t nat -A OUTPUT -p tcp -m addrtype ! --dst-type LOCAL -j APPMESH_EGRESS",
        NULL,
    };
    expect_plan(&in, REDIRECT_INSTALL, gid, "");

    /* Both: the uid rule, then the gid rule, as the plugin appends them. */
    in.ignored_uid = "1337";
    static const char *const both[] = {
        "iptables -w -t nat -N APPMESH_EGRESS",
        "iptables -w -t nat -A APPMESH_EGRESS -m owner --uid-owner 1337 -j RETURN",
        "iptables -w -t nat -A APPMESH_EGRESS -m owner --gid-owner 1338 -j RETURN",
        "iptables -w -t nat -A APPMESH_EGRESS -p tcp -m multiport --dports 22 -j RETURN",
        "iptables -w -t nat -A APPMESH_EGRESS -p tcp -j REDIRECT --to 15001",
        "iptables -w -t nat -A OUTPUT -p tcp -m addrtype ! --dst-type LOCAL -j APPMESH_EGRESS",
        NULL,
    };
    expect_plan(&in, REDIRECT_INSTALL, both, "");
}

/* One multiport match takes 15 ports: the rest are ignored, and stderr says which. */
static void test_multiport_cap(void **state)
{
    (void)state;
    redirect_input_t in = {
        .ignored_uid = "1337",
        .app_ports = "9001,9002,9003,9004,9005,9006,9007,9008,9009,9010,9011,9012,9013,9014,"
                     "9015,9016,9017",
        .egress_ignored_ports = "22,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16",
    };
    static const char *const capped[] = {
        "iptables -w -t nat -N APPMESH_EGRESS",
        "iptables -w -t nat -A APPMESH_EGRESS -m owner --uid-owner 1337 -j RETURN",
        "iptables -w -t nat -A APPMESH_EGRESS -p tcp -m multiport --dports "
        "22,1,2,3,4,5,6,7,8,9,10,11,12,13,14 -j RETURN",
        "iptables -w -t nat -A APPMESH_EGRESS -p tcp -j REDIRECT --to 15001",
        "iptables -w -t nat -A OUTPUT -p tcp -m addrtype ! --dst-type LOCAL -j APPMESH_EGRESS",
        "iptables -w -t nat -N APPMESH_INGRESS",
        "iptables -w -t nat -A APPMESH_INGRESS -p tcp -m multiport --dports "
        "9001,9002,9003,9004,9005,9006,9007,9008,9009,9010,9011,9012,9013,9014,9015 -j REDIRECT "
        "--to-port 15000",
        "iptables -w -t nat -A PREROUTING -p tcp -m addrtype ! --src-type LOCAL -j APPMESH_INGRESS",
        NULL,
    };
    expect_plan(&in, REDIRECT_INSTALL, capped,
                "remora redirect: AppPorts: 17 ports, but one iptables multiport rule takes at "
                "most 15: ignoring 9016,9017 (the CNI plugin also ignores ports past the 15th); "
                "list at most 15\n"
                "remora redirect: EgressIgnoredPorts: 17 ports, but one iptables multiport rule "
                "takes at most 15: ignoring 15,16 (the CNI plugin also ignores ports past the "
                "15th); list at most 15\n");

    /* 22 is always ignored: when it is not among the first 15, it takes the 15th place. */
    in.app_ports = NULL;
    in.egress_ignored_ports = "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15";
    static const char *const ssh_kept[] = {
        "iptables -w -t nat -N APPMESH_EGRESS",
        "iptables -w -t nat -A APPMESH_EGRESS -m owner --uid-owner 1337 -j RETURN",
        "iptables -w -t nat -A APPMESH_EGRESS -p tcp -m multiport --dports "
        "1,2,3,4,5,6,7,8,9,10,11,12,13,14,22 -j RETURN",
        "iptables -w -t nat -A APPMESH_EGRESS -p tcp -j REDIRECT --to 15001",
        "iptables -w -t nat -A OUTPUT -p tcp -m addrtype ! --dst-type LOCAL -j APPMESH_EGRESS",
        NULL,
    };
    expect_plan(&in, REDIRECT_INSTALL, ssh_kept,
                "remora redirect: EgressIgnoredPorts: 16 ports with 22 (always ignored, for SSH; "
                "kept), but one iptables multiport rule takes at most 15: ignoring 15 (the CNI "
                "plugin also ignores ports past the 15th); list at most 14\n");

    /* Exactly 14 others and 22: all fit, nothing said. */
    in.egress_ignored_ports = "1,2,3,4,5,6,7,8,9,10,11,12,13,14";
    expect_plan(&in, REDIRECT_INSTALL, ssh_kept, "");
}

static void test_validation_errors(void **state)
{
    (void)state;
    const char *need_id =
        "remora redirect: IgnoredUID: one of IgnoredUID or IgnoredGID is required: the user (or "
        "group) id the proxy runs as, whose own connections are not redirected (1337 in the ECS "
        "examples)";
    redirect_input_t none = {0};
    expect_errors(&none, REDIRECT_INSTALL, ONE(need_id));
    redirect_input_t both_empty = {.ignored_uid = "", .ignored_gid = " "};
    expect_errors(&both_empty, REDIRECT_INSTALL, ONE(need_id));

    redirect_input_t ids = {.ignored_uid = "envoy", .ignored_gid = "2147483648"};
    expect_errors(
        &ids, REDIRECT_INSTALL,
        LINES("remora redirect: IgnoredUID: must be a numeric id 0..2147483647, got \"envoy\"",
              "remora redirect: IgnoredGID: must be a numeric id 0..2147483647, got "
              "\"2147483648\""));
    redirect_input_t neg = {.ignored_uid = "-1"};
    expect_errors(&neg, REDIRECT_INSTALL,
                  ONE("remora redirect: IgnoredUID: must be a numeric id 0..2147483647, got "
                      "\"-1\""));

    redirect_input_t egress = {.ignored_uid = "1337", .proxy_egress_port = ""};
    expect_errors(&egress, REDIRECT_INSTALL,
                  ONE("remora redirect: ProxyEgressPort: is required but set empty: the port "
                      "the proxy takes redirected outbound connections on (leave it out for "
                      "remora's 15001)"));
    egress.proxy_egress_port = "0";
    expect_errors(&egress, REDIRECT_INSTALL,
                  ONE("remora redirect: ProxyEgressPort: must be a port 1..65535, got \"0\""));
    egress.proxy_egress_port = "65536";
    expect_errors(&egress, REDIRECT_INSTALL,
                  ONE("remora redirect: ProxyEgressPort: must be a port 1..65535, got \"65536\""));
    egress.proxy_egress_port = "15001x";
    expect_errors(&egress, REDIRECT_INSTALL,
                  ONE("remora redirect: ProxyEgressPort: must be a port 1..65535, got "
                      "\"15001x\""));

    /* AppPorts and ProxyIngressPort: both or neither. */
    redirect_input_t ingress_only = {.ignored_uid = "1337", .proxy_ingress_port = "15000"};
    expect_errors(&ingress_only, REDIRECT_INSTALL,
                  ONE("remora redirect: ProxyIngressPort: is set but AppPorts is not: set both "
                      "(the app's ports, whose inbound connections go to ProxyIngressPort) or "
                      "neither (no inbound redirect)"));
    redirect_input_t app_only = {
        .ignored_uid = "1337", .proxy_ingress_port = "", .app_ports = "80"};
    expect_errors(&app_only, REDIRECT_INSTALL,
                  ONE("remora redirect: AppPorts: is set but ProxyIngressPort is empty: set both "
                      "or neither (leave ProxyIngressPort out for remora's 15000)"));
    redirect_input_t ingress_bad = {
        .ignored_uid = "1337", .proxy_ingress_port = "http", .app_ports = "80"};
    expect_errors(&ingress_bad, REDIRECT_INSTALL,
                  ONE("remora redirect: ProxyIngressPort: must be a port 1..65535, got "
                      "\"http\""));

    /* Every bad item of every list, at once. */
    redirect_input_t lists = {.ignored_uid = "1337",
                              .app_ports = "9080,0,99999",
                              .egress_ignored_ports = "ssh",
                              .egress_ignored_ips = "10.0.0.1,300.1.1.1,10.0.0.0/33,fd00::/129,"
                                                    "example.com,/8"};
    expect_errors(
        &lists, REDIRECT_INSTALL,
        LINES("remora redirect: AppPorts: \"0\" is not a port 1..65535",
              "remora redirect: AppPorts: \"99999\" is not a port 1..65535",
              "remora redirect: EgressIgnoredPorts: \"ssh\" is not a port 1..65535",
              "remora redirect: EgressIgnoredIPs: \"300.1.1.1\" is not an IPv4 or IPv6 address "
              "or CIDR block",
              "remora redirect: EgressIgnoredIPs: \"10.0.0.0/33\" is not an IPv4 or IPv6 address "
              "or CIDR block",
              "remora redirect: EgressIgnoredIPs: \"fd00::/129\" is not an IPv4 or IPv6 address "
              "or CIDR block",
              "remora redirect: EgressIgnoredIPs: \"example.com\" is not an IPv4 or IPv6 address "
              "or CIDR block",
              "remora redirect: EgressIgnoredIPs: \"/8\" is not an IPv4 or IPv6 address or CIDR "
              "block"));

    const char *bad_v6 =
        "remora redirect: IPv6: must be true or false (1/0, yes/no, on/off), got \"maybe\"";
    redirect_input_t v6 = {.ignored_uid = "1337", .enable_ipv6 = "maybe"};
    expect_errors(&v6, REDIRECT_INSTALL, ONE(bad_v6));
    /* remove reads only IPv6: nothing else is checked. */
    redirect_input_t rm = {.app_ports = "garbage", .enable_ipv6 = "maybe"};
    expect_errors(&rm, REDIRECT_REMOVE, ONE(bad_v6));
}

static void test_remove(void **state)
{
    (void)state;
    static const char *const v4[] = {
        "iptables -w -t nat -D OUTPUT -p tcp -m addrtype ! --dst-type LOCAL -j APPMESH_EGRESS",
        "iptables -w -t nat -F APPMESH_EGRESS",
        "iptables -w -t nat -X APPMESH_EGRESS",
        "iptables -w -t nat -D PREROUTING -p tcp -m addrtype ! --src-type LOCAL -j APPMESH_INGRESS",
        "iptables -w -t nat -F APPMESH_INGRESS",
        "iptables -w -t nat -X APPMESH_INGRESS",
        NULL,
    };
    redirect_input_t none = {.app_ports = "not read"};
    expect_plan(&none, REDIRECT_REMOVE, v4, "");

    static const char *const both[] = {
        "iptables -w -t nat -D OUTPUT -p tcp -m addrtype ! --dst-type LOCAL -j APPMESH_EGRESS",
        "iptables -w -t nat -F APPMESH_EGRESS",
        "iptables -w -t nat -X APPMESH_EGRESS",
        "iptables -w -t nat -D PREROUTING -p tcp -m addrtype ! --src-type LOCAL -j APPMESH_INGRESS",
        "iptables -w -t nat -F APPMESH_INGRESS",
        "iptables -w -t nat -X APPMESH_INGRESS",
        "ip6tables -w -t nat -D OUTPUT -p tcp -m addrtype ! --dst-type LOCAL -j APPMESH_EGRESS",
        "ip6tables -w -t nat -F APPMESH_EGRESS",
        "ip6tables -w -t nat -X APPMESH_EGRESS",
        "ip6tables -w -t nat -D PREROUTING -p tcp -m addrtype ! --src-type LOCAL -j "
        "APPMESH_INGRESS",
        "ip6tables -w -t nat -F APPMESH_INGRESS",
        "ip6tables -w -t nat -X APPMESH_INGRESS",
        NULL,
    };
    redirect_input_t v6 = {.enable_ipv6 = "Yes"};
    expect_plan(&v6, REDIRECT_REMOVE, both, "");

    /* The runner's conditions: jumps are deleted while -C finds them, chains only if they
     * exist; an install's commands always run. */
    redirect_conf_t c;
    diag_t e = {0}, w = {0};
    assert_int_equal(redirect_parse(&none, REDIRECT_REMOVE, &c, &e, &w), 0);
    redirect_plan_t p;
    redirect_plan_remove(&c, &p);
    assert_int_equal(p.cmds[0].when, REDIRECT_UNJUMP);
    assert_string_equal(p.cmds[0].argv[REDIRECT_VERB], "-D");
    assert_int_equal(p.cmds[1].when, REDIRECT_IF_CHAIN);
    assert_int_equal(p.cmds[2].when, REDIRECT_IF_CHAIN);
    redirect_input_t in = {.ignored_uid = "1337"};
    assert_int_equal(redirect_parse(&in, REDIRECT_INSTALL, &c, &e, &w), 0);
    redirect_plan_install(&c, &p);
    for (unsigned i = 0; i < p.n; i++)
        assert_int_equal(p.cmds[i].when, REDIRECT_ALWAYS);
}

static void test_format_cap(void **state)
{
    (void)state;
    redirect_cmd_t cmd = {.argv = {"iptables", "-w", "-t", "nat", "-N", "APPMESH_EGRESS", NULL}};
    char buf[64];
    assert_int_equal(redirect_cmd_format(&cmd, buf, sizeof buf), 36);
    assert_string_equal(buf, "iptables -w -t nat -N APPMESH_EGRESS");
    assert_int_equal(redirect_cmd_format(&cmd, buf, 36), ERR_TOO_LARGE); /* no room for NUL */
    assert_int_equal(redirect_cmd_format(&cmd, buf, 37), 36);
}

static void test_net_admin(void **state)
{
    (void)state;
    assert_int_equal(
        redirect_has_net_admin("Name:\tremora\nCapInh:\t0000000000000000\n"
                               "CapPrm:\t000001ffffffffff\nCapEff:\t000001ffffffffff\n"),
        1);
    assert_int_equal(redirect_has_net_admin("CapPrm:\t0000000000001000\n"
                                            "CapEff:\t0000000000000000\n"),
                     0);
    assert_int_equal(redirect_has_net_admin("CapEff:\t0000000000001000\n"), 1); /* bit 12 only */
    assert_int_equal(redirect_has_net_admin("CapEff:\t00000000a80425fb\n"), 0); /* docker's set */
    assert_int_equal(redirect_has_net_admin("CapEff:\t00000000a80435fb\n"), 1); /* + NET_ADMIN */
    assert_int_equal(redirect_has_net_admin("Name:\tx\n"), UV_EINVAL);
    assert_int_equal(redirect_has_net_admin("CapEff:\tzz\n"), UV_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ecs_example),   cmocka_unit_test(test_ipv6_mixed_ips),
        cmocka_unit_test(test_no_app_ports),  cmocka_unit_test(test_only_gid),
        cmocka_unit_test(test_multiport_cap), cmocka_unit_test(test_validation_errors),
        cmocka_unit_test(test_remove),        cmocka_unit_test(test_format_cap),
        cmocka_unit_test(test_net_admin),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
