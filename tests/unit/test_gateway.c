/* routing/route_gateway.c: a virtual gateway's match order and App Mesh's rewrites, exactly
 * (shared/reference/cloudmap-gateways-rollouts.md §3.5). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

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

/* ---- HTTP/2 and gRPC ---- */

static const char *tier_header(void *ctx, const char *name, size_t *len)
{
    const char *tier = ctx;
    if (!tier || strcasecmp(name, "x-tier") != 0)
        return NULL;
    *len = strlen(tier);
    return tier;
}

/* Gateway h2edge: an http2 listener on 9081 and a grpc one on 9082, before greeter.shop.local
 * (router greeter, grpc, to node greeter-v1) and web.shop.local (node h2app, http2). */
static const char *h2_doc(const char *routes)
{
    static char doc[8192];
    static const char *const fmt =
        "{\"mesh\":{\"meshName\":\"shop\"},\"virtualNodes\":["
        "{\"virtualNodeName\":\"greeter-v1\",\"spec\":{\"listeners\":[{\"portMapping\":{\"port\":"
        "50051,\"protocol\":\"grpc\"}}],\"serviceDiscovery\":{\"dns\":{\"hostname\":\"127.0.0.1\"}}"
        "}},{\"virtualNodeName\":\"h2app\",\"spec\":{\"listeners\":[{\"portMapping\":{\"port\":"
        "9003,\"protocol\":\"http2\"}}],\"serviceDiscovery\":{\"dns\":{\"hostname\":\"127.0.0.1\"}}"
        "}}],\"virtualServices\":["
        "{\"virtualServiceName\":\"greeter.shop.local\",\"spec\":{\"provider\":{\"virtualRouter\":"
        "{\"virtualRouterName\":\"greeter\"}}}},"
        "{\"virtualServiceName\":\"web.shop.local\",\"spec\":{\"provider\":{\"virtualNode\":"
        "{\"virtualNodeName\":\"h2app\"}}}}],"
        "\"virtualRouters\":[{\"virtualRouterName\":\"greeter\",\"spec\":{\"listeners\":["
        "{\"portMapping\":{\"port\":50051,\"protocol\":\"grpc\"}}]}}],"
        "\"routes\":[{\"virtualRouterName\":\"greeter\",\"routeName\":\"all\",\"spec\":{"
        "\"grpcRoute\":{\"match\":{},\"action\":{\"weightedTargets\":[{\"virtualNode\":"
        "\"greeter-v1\",\"weight\":1}]}}}}],"
        "\"virtualGateways\":[{\"virtualGatewayName\":\"h2edge\",\"spec\":{\"listeners\":["
        "{\"portMapping\":{\"port\":9081,\"protocol\":\"http2\"}},"
        "{\"portMapping\":{\"port\":9082,\"protocol\":\"grpc\"}}]}}],"
        "\"gatewayRoutes\":[%s]}";
    snprintf(doc, sizeof doc, fmt, routes);
    return doc;
}

#define GW_GRPC(name, prio, match, rewrite)                                                        \
    "{\"virtualGatewayName\":\"h2edge\",\"gatewayRouteName\":\"" name "\",\"spec\":{" prio         \
    "\"grpcRoute\":{\"match\":" match ",\"action\":{\"target\":{\"virtualService\":{"              \
    "\"virtualServiceName\":\"greeter.shop.local\"}}" rewrite "}}}}"
#define GW_H2(name, match)                                                                         \
    "{\"virtualGatewayName\":\"h2edge\",\"gatewayRouteName\":\"" name "\",\"spec\":{"              \
    "\"http2Route\":{\"match\":" match ",\"action\":{\"target\":{\"virtualService\":{"             \
    "\"virtualServiceName\":\"web.shop.local\"}}}}}}"

/* clang-format off */
static const char *h2_routes =
    GW_GRPC("gold", "\"priority\":0,", "{\"serviceName\":\"helloworld.Greeter\",\"port\":9082,"
            "\"metadata\":[{\"name\":\"x-tier\",\"match\":{\"exact\":\"gold\"}}]}", "") ","
    GW_GRPC("greeter", "\"priority\":1,", "{\"serviceName\":\"helloworld.Greeter\",\"port\":9082,"
            "\"hostname\":{\"suffix\":\".example.com\"}}",
            ",\"rewrite\":{\"hostname\":{\"defaultTargetHostname\":\"DISABLED\"}}") ","
    GW_GRPC("other", "\"priority\":2,", "{\"port\":9082,\"metadata\":[{\"name\":\"x-tier\","
            "\"invert\":true,\"match\":{\"prefix\":\"bronze\"}}]}", "") ","
    GW_H2("api", "{\"prefix\":\"/api\",\"port\":9081}");
/* A grpcRoute on the http2 listener, an http2Route on the grpc one. */
static const char *mismatched_routes =
    GW_GRPC("g", "", "{\"port\":9081}", "") "," GW_H2("h", "{\"prefix\":\"/\",\"port\":9082}");
/* clang-format on */

typedef struct h2_sent {
    int matched;
    char target[256];
    const char *host, *route;
    route_result_t out;
} h2_sent_t;

static h2_sent_t ask_on(route_table_t *rt, uint16_t port, const char *host, const char *path,
                        const char *tier)
{
    route_request_t req = {.method = HTTP_POST,
                           .host = host,
                           .host_len = strlen(host),
                           .path = path,
                           .path_len = strlen(path),
                           .header = tier_header,
                           .ctx = (void *)tier};
    char buf[512];
    route_rewrite_t rw = {.target = buf, .cap = sizeof buf};
    h2_sent_t s = {0};
    s.matched = route_gateway(rt, port, &req, &rw, &s.out);
    if (s.matched) {
        snprintf(s.target, sizeof s.target, "%.*s", (int)rw.target_len, rw.target);
        s.host = rw.host;
        s.route = rw.route;
    }
    return s;
}

static route_table_t *h2_gateway(registry_t *reg)
{
    const char *doc = h2_doc(h2_routes);
    diag_t d = {0};
    config_t *c = config_parse(doc, strlen(doc), "t.json", &d);
    for (size_t i = 0; i < d.n; i++)
        fprintf(stderr, "%s\n", d.lines[i]);
    assert_non_null(c);
    route_table_t *rt = route_table_build(c, ROUTE_GATEWAY_PREFIX "h2edge", reg, &d);
    for (size_t i = 0; i < d.n; i++)
        fprintf(stderr, "%s\n", d.lines[i]);
    assert_non_null(rt);
    diag_free(&d);
    return rt;
}

static void test_grpc_gateway_routes(void **state)
{
    (void)state;
    unsetenv("REMORA_DEFAULT_RETRY_POLICY");
    registry_t reg = {0};
    route_table_t *rt = h2_gateway(&reg);
    h2_sent_t s = ask_on(rt, 9082, "api.example.com", "/helloworld.Greeter/SayHello", "gold");
    assert_true(s.matched);
    assert_string_equal(s.route, "gold");
    assert_string_equal(s.target, "/helloworld.Greeter/SayHello"); /* the :path is kept */
    assert_string_equal(s.host, "greeter.shop.local");
    assert_string_equal(s.out.cluster->name, "cds_egress_shop_greeter-v1_grpc_50051");
    assert_string_equal(s.out.service, "greeter.shop.local");
    assert_int_equal(s.out.upstream_h2, 1);
    assert_int_equal(s.out.grpc, 1);
    assert_int_equal(s.out.retry.grpc_events, GRPC_RETRY_UNAVAILABLE);
    /* Without the metadata: the next by priority, whose rewrite keeps the client's Host. */
    s = ask_on(rt, 9082, "api.example.com", "/helloworld.Greeter/SayHello", NULL);
    assert_string_equal(s.route, "greeter");
    assert_null(s.host);
    assert_int_equal(s.out.grpc, 1);
    /* Another service: the inverted metadata matcher takes it unless the tier is bronze... */
    assert_string_equal(ask_on(rt, 9082, "h", "/other.Svc/Do", "silver").route, "other");
    assert_string_equal(ask_on(rt, 9082, "h", "/other.Svc/Do", NULL).route, "other");
    s = ask_on(rt, 9082, "h", "/other.Svc/Do", "bronze-2");
    assert_false(s.matched);
    assert_int_equal(s.out.status, 404);
    /* ...and the gRPC routes are the grpc listener's alone. */
    assert_false(ask_on(rt, 9081, "h", "/helloworld.Greeter/SayHello", "gold").matched);
    route_table_unref(rt);
    registry_free(&reg);
}

static void test_http2_gateway_routes_and_listeners(void **state)
{
    (void)state;
    registry_t reg = {0};
    route_table_t *rt = h2_gateway(&reg);
    h2_sent_t s = ask_on(rt, 9081, "h", "/api/items", NULL);
    assert_true(s.matched);
    assert_string_equal(s.route, "api");
    assert_string_equal(s.target, "/items"); /* the default prefix rewrite, as httpRoute's */
    assert_string_equal(s.host, "web.shop.local");
    assert_string_equal(s.out.cluster->name, "cds_egress_shop_h2app_http2_9003");
    assert_int_equal(s.out.upstream_h2, 1);
    assert_int_equal(s.out.grpc, 0);
    assert_int_equal(s.out.retry.grpc_events, 0);
    assert_false(ask_on(rt, 9081, "h", "/other", NULL).matched);
    /* The listeners: what each speaks. */
    const route_listener_t *l = route_ingress(rt, 9081);
    assert_int_equal(l->port, 9081);
    assert_int_equal(l->r.upstream_h2, 1);
    assert_int_equal(l->r.grpc, 0);
    l = route_ingress(rt, 9082);
    assert_int_equal(l->port, 9082);
    assert_int_equal(l->r.upstream_h2, 1);
    assert_int_equal(l->r.grpc, 1);
    route_table_unref(rt);
    registry_free(&reg);
}

/* A gateway route suits the protocol of the listener it is on, as a router's routes do. */
static void test_route_kind_must_suit_the_listener(void **state)
{
    (void)state;
    const char *doc = h2_doc(mismatched_routes);
    diag_t d = {0};
    assert_null(config_parse(doc, strlen(doc), "t.json", &d));
    assert_int_equal(d.n, 2);
    assert_string_equal(d.lines[0], "t.json: gatewayRoutes[0].spec.grpcRoute: the gateway "
                                    "\"h2edge\"'s listener on port 9081 is http2: it takes "
                                    "http2Route");
    assert_string_equal(d.lines[1], "t.json: gatewayRoutes[1].spec.http2Route: the gateway "
                                    "\"h2edge\"'s listener on port 9082 is grpc: it takes "
                                    "grpcRoute");
    diag_free(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_default_prefix_rewrite),
        cmocka_unit_test(test_explicit_rewrites),
        cmocka_unit_test(test_order_and_hostnames),
        cmocka_unit_test(test_grpc_gateway_routes),
        cmocka_unit_test(test_http2_gateway_routes_and_listeners),
        cmocka_unit_test(test_route_kind_must_suit_the_listener),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
