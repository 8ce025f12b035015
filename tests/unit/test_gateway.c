/* routing/route_gateway.c: a virtual gateway's match order and App Mesh's rewrites, exactly
 * (shared/reference/cloudmap-gateways-rollouts.md §3.5). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "base/http.h"
#include "routing/route.h"

static const char *no_header(void *ctx, const char *name, size_t *len)
{
    (void)ctx;
    (void)name;
    (void)len;
    return NULL;
}

/* Two services (cart by a router, catalog by a node) and the gateway edge with `routes`. */
static route_table_t *gateway(const char *routes, registry_t *reg)
{
    static const char *const fmt =
        "{\"mesh\":{\"meshName\":\"shop\"},"
        "\"virtualNodes\":["
        "{\"virtualNodeName\":\"cart-v1\",\"spec\":{\"listeners\":[{\"portMapping\":{\"port\":"
        "9001,\"protocol\":\"http\"}}],\"serviceDiscovery\":{\"dns\":{\"hostname\":\"127.0.0.1\"}}}"
        "},"
        "{\"virtualNodeName\":\"catalog\",\"spec\":{\"listeners\":[{\"portMapping\":{\"port\":"
        "9002,\"protocol\":\"http\"}}],\"serviceDiscovery\":{\"dns\":{\"hostname\":\"127.0.0.1\"}}}"
        "}],"
        "\"virtualServices\":["
        "{\"virtualServiceName\":\"cart.shop.local\",\"spec\":{\"provider\":{\"virtualRouter\":"
        "{\"virtualRouterName\":\"cart\"}}}},"
        "{\"virtualServiceName\":\"catalog.shop.local\",\"spec\":{\"provider\":{\"virtualNode\":"
        "{\"virtualNodeName\":\"catalog\"}}}}],"
        "\"virtualRouters\":[{\"virtualRouterName\":\"cart\",\"spec\":{\"listeners\":["
        "{\"portMapping\":{\"port\":80,\"protocol\":\"http\"}}]}}],"
        "\"routes\":[{\"virtualRouterName\":\"cart\",\"routeName\":\"r\",\"spec\":{\"httpRoute\":"
        "{\"match\":{\"prefix\":\"/\"},\"action\":{\"weightedTargets\":[{\"virtualNode\":"
        "\"cart-v1\",\"weight\":1}]}}}}],"
        "\"virtualGateways\":[{\"virtualGatewayName\":\"edge\",\"spec\":{\"listeners\":["
        "{\"portMapping\":{\"port\":9080,\"protocol\":\"http\"}}]}}],"
        "\"gatewayRoutes\":[%s]}";
    char doc[8192];
    snprintf(doc, sizeof doc, fmt, routes);
    diag_t d = {0};
    config_t *c = config_parse(doc, strlen(doc), "t.json", &d);
    for (size_t i = 0; i < d.n; i++)
        fprintf(stderr, "%s\n", d.lines[i]);
    assert_non_null(c);
    route_table_t *rt = route_table_build(c, ROUTE_GATEWAY_PREFIX "edge", reg, &d);
    for (size_t i = 0; i < d.n; i++)
        fprintf(stderr, "%s\n", d.lines[i]);
    assert_non_null(rt);
    diag_free(&d);
    return rt;
}

typedef struct sent {
    int matched;
    char target[512];
    const char *host, *route, *service;
    int status;
} sent_t;

/* The request `path` (with ?query) to host `host` on the gateway's listener. */
static sent_t ask(route_table_t *rt, const char *host, const char *path)
{
    const char *q = strchr(path, '?');
    route_request_t req = {.method = HTTP_GET,
                           .host = host,
                           .host_len = strcspn(host, ":"),
                           .path = path,
                           .path_len = q ? (size_t)(q - path) : strlen(path),
                           .query = q ? q + 1 : NULL,
                           .query_len = q ? strlen(q + 1) : 0,
                           .header = no_header};
    char buf[512];
    route_rewrite_t rw = {.target = buf, .cap = sizeof buf};
    route_result_t out;
    sent_t s = {0};
    s.matched = route_gateway(rt, 9080, &req, &rw, &out);
    if (s.matched) {
        snprintf(s.target, sizeof s.target, "%.*s", (int)rw.target_len, rw.target);
        assert_int_equal(rw.path_len, strcspn(s.target, "?"));
        s.host = rw.host;
        s.route = rw.route;
    }
    s.service = out.service;
    s.status = out.cluster ? 200 : out.status;
    return s;
}

#define ROUTE(name, extra, match, rewrite)                                                         \
    "{\"virtualGatewayName\":\"edge\",\"gatewayRouteName\":\"" name "\",\"spec\":{" extra          \
    "\"httpRoute\":{\"match\":" match ",\"action\":{\"target\":{\"virtualService\":{"              \
    "\"virtualServiceName\":\"cart.shop.local\"}}" rewrite "}}}}"

static void test_default_prefix_rewrite(void **state)
{
    (void)state;
    registry_t reg = {0};
    route_table_t *rt = gateway(ROUTE("c", "", "{\"prefix\":\"/cart\"}",
                                      "") "," ROUTE("r", "", "{\"prefix\":\"/red/\"}", ""),
                                &reg);
    const char *cases[][2] = {
        {"/cart/items", "/items"}, {"/cart", "/"},         {"/cart/", "/"}, {"/cartoon", "/oon"},
        {"/cart/a?b=1", "/a?b=1"}, {"/red/tell", "/tell"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        sent_t s = ask(rt, "shop.example.com", cases[i][0]);
        assert_true(s.matched);
        assert_string_equal(s.target, cases[i][1]);
        assert_string_equal(s.host, "cart.shop.local");
        assert_string_equal(s.service, "cart.shop.local");
        assert_int_equal(s.status, 200);
    }
    sent_t none = ask(rt, "shop.example.com", "/other");
    assert_false(none.matched);
    assert_int_equal(none.status, 404);
    route_table_unref(rt);
    registry_free(&reg);
}

static void test_explicit_rewrites(void **state)
{
    (void)state;
    registry_t reg = {0};
    route_table_t *rt = gateway(
        ROUTE(
            "keep", "", "{\"prefix\":\"/keep/\"}",
            ",\"rewrite\":{\"prefix\":{\"defaultPrefix\":\"DISABLED\"},"
            "\"hostname\":{\"defaultTargetHostname\":\"DISABLED\"}}") "," ROUTE("swap", "",
                                                                                "{\"prefix\":\"/"
                                                                                "maroon/\"}",
                                                                                ",\"rewrite\":{"
                                                                                "\"prefix\":{"
                                                                                "\"value\":\"/red/"
                                                                                "\"}}") "," ROUTE("exact",
                                                                                                  "",
                                                                                                  "{\"path\":{\"exact\":\"/old\"}}",
                                                                                                  ",\"rewrite\":{\"path\":{\"exact\":\"/new\"}}"),
        &reg);
    sent_t s = ask(rt, "shop.example.com", "/keep/x");
    assert_string_equal(s.target, "/keep/x");
    assert_null(s.host); /* the client's Host stays */
    s = ask(rt, "shop.example.com", "/maroon/tell?x=1");
    assert_string_equal(s.target, "/red/tell?x=1");
    s = ask(rt, "shop.example.com", "/old?q");
    assert_string_equal(s.target, "/new?q");
    assert_string_equal(s.route, "exact");
    assert_false(ask(rt, "shop.example.com", "/old/x").matched);
    route_table_unref(rt);
    registry_free(&reg);
}

static void test_order_and_hostnames(void **state)
{
    (void)state;
    registry_t reg = {0};
    route_table_t *rt =
        gateway(ROUTE("any", "", "{\"prefix\":\"/\"}", "") "," ROUTE(
                    "long", "", "{\"prefix\":\"/a/b\"}",
                    "") "," ROUTE("p5", "\"priority\":5,", "{\"prefix\":\"/a\"}",
                                  "") "," ROUTE("p1", "\"priority\":1,",
                                                "{\"prefix\":\"/"
                                                "a\",\"hostname\":{\"suffix\":\".example.com\"}}",
                                                "") "," ROUTE("exact", "\"priority\":0,",
                                                              "{\"prefix\":\"/"
                                                              "a\",\"hostname\":{\"exact\":\"api."
                                                              "example.com\"}}",
                                                              ""),
                &reg);
    assert_string_equal(ask(rt, "API.Example.com:8443", "/a/b").route, "exact");
    assert_string_equal(ask(rt, "eu.example.com", "/a/b").route, "p1");
    assert_string_equal(ask(rt, "example.com", "/a/b").route,
                        "p5"); /* ".example.com" needs a label */
    assert_string_equal(ask(rt, "other.org", "/x").route, "any");
    route_table_unref(rt);
    registry_free(&reg);
    rt = gateway(ROUTE("any", "", "{\"prefix\":\"/\"}", "") "," ROUTE("long", "",
                                                                      "{\"prefix\":\"/a/b\"}", ""),
                 &reg);
    assert_string_equal(ask(rt, "h", "/a/b/c").route, "long"); /* the longer prefix first */
    assert_string_equal(ask(rt, "h", "/a/c").route, "any");
    route_table_unref(rt);
    registry_free(&reg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_default_prefix_rewrite),
        cmocka_unit_test(test_explicit_rewrites),
        cmocka_unit_test(test_order_and_hostnames),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
