/* config/: App Mesh shapes into structs, and every validation path with its message. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>
#include "base/http.h"

#include "config/config.h"

/* A valid mesh: web -> cart.shop.local (router cart, routes to cart-v1 / cart-v2). */
#define NODES                                                                                      \
    "\"virtualNodes\":[{\"virtualNodeName\":\"web\",\"metadata\":{\"arn\":\"x\"},\"spec\":{"      \
    "\"listeners\":[{\"portMapping\":{\"port\":8080,\"protocol\":\"http\"},"                       \
    "\"timeout\":{\"http\":{\"perRequest\":{\"unit\":\"s\",\"value\":3},"                          \
    "\"idle\":{\"unit\":\"ms\",\"value\":250}}},"                                                   \
    "\"connectionPool\":{\"http\":{\"maxConnections\":4,\"maxPendingRequests\":2}},"                \
    "\"healthCheck\":{\"protocol\":\"http\",\"path\":\"/ping\",\"intervalMillis\":5000,"            \
    "\"timeoutMillis\":2000,\"healthyThreshold\":2,\"unhealthyThreshold\":3},"                      \
    "\"outlierDetection\":{\"maxServerErrors\":5,\"interval\":{\"unit\":\"s\",\"value\":10},"      \
    "\"baseEjectionDuration\":{\"unit\":\"s\",\"value\":30},\"maxEjectionPercent\":50}}],"         \
    "\"serviceDiscovery\":{\"awsCloudMap\":{\"namespaceName\":\"ns.local\",\"serviceName\":"       \
    "\"web\"}},"                                                                                    \
    "\"backends\":[{\"virtualService\":{\"virtualServiceName\":\"cart.shop.local\"}}]}},"          \
    "{\"virtualNodeName\":\"cart-v1\",\"spec\":{\"listeners\":[{\"portMapping\":{\"port\":81,"    \
    "\"protocol\":\"http\"}}],\"serviceDiscovery\":{\"dns\":{\"hostname\":\"v1.local\","           \
    "\"responseType\":\"ENDPOINTS\"}}}},"                                                           \
    "{\"virtualNodeName\":\"cart-v2\",\"spec\":{\"listeners\":[{\"portMapping\":{\"port\":81,"    \
    "\"protocol\":\"http\"}}],\"serviceDiscovery\":{\"dns\":{\"hostname\":\"v2.local\"}}}}]"
#define SERVICES                                                                                   \
    "\"virtualServices\":[{\"virtualServiceName\":\"cart.shop.local\",\"spec\":{\"provider\":"     \
    "{\"virtualRouter\":{\"virtualRouterName\":\"cart\"}}}}],"                                      \
    "\"virtualRouters\":[{\"virtualRouterName\":\"cart\",\"spec\":{\"listeners\":"                 \
    "[{\"portMapping\":{\"port\":80,\"protocol\":\"http\"}}]}}]"

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

/* Parses `json`, expects it to be rejected, and checks that `expected` is among the messages. */
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

static void test_parses_app_mesh_shapes(void **state)
{
    (void)state;
    const char *json =
        "{\"mesh\":{\"meshName\":\"shop\",\"spec\":{\"egressFilter\":{\"type\":\"ALLOW_ALL\"}}},"
        NODES "," SERVICES ","
        "\"routes\":[{\"virtualRouterName\":\"cart\",\"routeName\":\"r\",\"status\":{},"
        "\"spec\":{\"priority\":5,\"httpRoute\":{\"match\":{\"prefix\":\"/\",\"method\":\"POST\","
        "\"headers\":[{\"name\":\"x-canary\",\"invert\":true,\"match\":{\"range\":{\"start\":1,"
        "\"end\":5}}},{\"name\":\"x-any\"}],\"queryParameters\":[{\"name\":\"v\",\"match\":"
        "{\"exact\":\"2\"}}]},"
        "\"action\":{\"weightedTargets\":[{\"virtualNode\":\"cart-v1\",\"weight\":90},"
        "{\"virtualNode\":\"cart-v2\",\"weight\":10,\"port\":81}]},"
        "\"retryPolicy\":{\"maxRetries\":2,\"perRetryTimeout\":{\"unit\":\"ms\",\"value\":500},"
        "\"httpRetryEvents\":[\"gateway-error\",\"stream-error\"],"
        "\"tcpRetryEvents\":[\"connection-error\"]},"
        "\"timeout\":{\"perRequest\":{\"unit\":\"s\",\"value\":7}}}}}]}";
    config_t *c = parse_ok(json);
    assert_string_equal(c->mesh_name, "shop");
    assert_int_equal(c->egress_filter, EGRESS_ALLOW_ALL);
    const cfg_node_t *n = config_node(c, "web");
    const cfg_listener_t *l = &n->listeners[0];
    assert_int_equal(l->port, 8080);
    assert_int_equal(l->per_request_ms, 3000);
    assert_int_equal(l->idle_ms, 250);
    assert_int_equal(l->max_connections, 4);
    assert_int_equal(l->max_pending, 2);
    assert_true(l->health.present);
    assert_string_equal(l->health.path, "/ping");
    assert_int_equal(l->health.unhealthy_threshold, 3);
    assert_int_equal(l->outlier.base_ejection_ms, 30000);
    assert_int_equal(n->discovery, DISCOVERY_CLOUD_MAP);
    assert_string_equal(n->namespace_name, "ns.local");
    assert_int_equal(config_node(c, "cart-v1")->response_type, DNS_ENDPOINTS);
    assert_int_equal(config_service(c, "CART.shop.local")->provider, PROVIDER_ROUTER);
    const cfg_route_t *r = &c->routes[0];
    assert_int_equal(r->priority, 5);
    assert_int_equal(r->path_kind, PATH_PREFIX);
    assert_int_equal(r->method, HTTP_POST);
    assert_int_equal(r->nheaders, 2);
    assert_int_equal(r->headers[0].kind, HM_RANGE);
    assert_true(r->headers[0].invert);
    assert_int_equal(r->headers[1].kind, HM_PRESENT);
    assert_string_equal(r->query[0].exact, "2");
    assert_int_equal(r->targets[1].weight, 10);
    assert_int_equal(r->max_retries, 2);
    assert_int_equal(r->per_retry_ms, 500);
    assert_int_equal(r->retry_events,
                     RETRY_GATEWAY_ERROR | RETRY_STREAM_ERROR | RETRY_CONNECTION_ERROR);
    assert_int_equal(r->per_request_ms, 7000);
    assert_int_equal(r->idle_ms, DURATION_UNSET);
    config_free(c);
}

#define ROUTE(spec)                                                                                \
    "{" NODES "," SERVICES ",\"routes\":[{\"virtualRouterName\":\"cart\",\"routeName\":\"r\","    \
    "\"spec\":" spec "}]}"
#define ACTION "\"action\":{\"weightedTargets\":[{\"virtualNode\":\"cart-v1\",\"weight\":1}]}"

static void test_route_errors(void **state)
{
    (void)state;
    rejects(ROUTE("{\"httpRoute\":{\"match\":{\"prefix\":\"/\"},\"action\":{\"weightedTargets\":"
                  "[{\"virtualNode\":\"cart-v1\",\"weight\":140}]}}}"),
            "m.json: routes[0].spec.httpRoute.action.weightedTargets[0].weight: must be 0..100, "
            "got 140");
    rejects(ROUTE("{\"httpRoute\":{\"match\":{\"prefix\":\"/\"},\"action\":{\"weightedTargets\":"
                  "[{\"virtualNode\":\"cart-v9\",\"weight\":1}]}}}"),
            "m.json: routes[0].spec.httpRoute.action.weightedTargets[0]: virtual node \"cart-v9\" "
            "does not exist");
    rejects(ROUTE("{\"httpRoute\":{\"match\":{\"prefix\":\"/\",\"path\":{\"exact\":\"/a\"}}," ACTION
                  "}}"),
            "m.json: routes[0].spec.httpRoute.match: must have exactly one of prefix, path");
    rejects(ROUTE("{\"httpRoute\":{\"match\":{\"prefix\":\"api\"}," ACTION "}}"),
            "m.json: routes[0].spec.httpRoute.match.prefix: must start with /, got \"api\"");
    rejects(ROUTE("{\"httpRoute\":{\"match\":{\"prefix\":\"/\",\"methd\":\"GET\"}," ACTION "}}"),
            "m.json: routes[0].spec.httpRoute.match.methd: unknown field");
    rejects(ROUTE("{\"httpRoute\":{\"match\":{\"prefix\":\"/\",\"method\":\"FETCH\"}," ACTION "}}"),
            "m.json: routes[0].spec.httpRoute.match.method: must be one of GET, HEAD, POST, PUT, "
            "DELETE, CONNECT, OPTIONS, TRACE, PATCH, got \"FETCH\"");
    rejects(ROUTE("{\"priority\":1001,\"httpRoute\":{\"match\":{\"prefix\":\"/\"}," ACTION "}}"),
            "m.json: routes[0].spec.priority: must be 0..1000, got 1001");
    rejects(ROUTE("{\"httpRoute\":{\"match\":{\"prefix\":\"/\",\"headers\":[{\"name\":\"a\","
                  "\"match\":{\"exact\":\"1\",\"prefix\":\"2\"}}]}," ACTION "}}"),
            "m.json: routes[0].spec.httpRoute.match.headers[0].match: must have exactly one of "
            "exact, prefix, suffix, regex, range");
    rejects(ROUTE("{\"httpRoute\":{\"match\":{\"prefix\":\"/\",\"headers\":[{\"name\":\"a\","
                  "\"match\":{\"range\":{\"start\":5,\"end\":5}}}]}," ACTION "}}"),
            "m.json: routes[0].spec.httpRoute.match.headers[0].match.range: end must be greater "
            "than start (the range is [start, end))");
    rejects(ROUTE("{\"httpRoute\":{\"match\":{\"prefix\":\"/\"}," ACTION ",\"retryPolicy\":"
                  "{\"maxRetries\":1,\"perRetryTimeout\":{\"unit\":\"m\",\"value\":1},"
                  "\"httpRetryEvents\":[\"oops\"]}}}"),
            "m.json: routes[0].spec.httpRoute.retryPolicy.httpRetryEvents[0]: must be one of "
            "server-error, gateway-error, client-error, stream-error, got \"oops\"");
    rejects(ROUTE("{\"httpRoute\":{\"match\":{\"prefix\":\"/\"}," ACTION ",\"retryPolicy\":"
                  "{\"maxRetries\":1,\"perRetryTimeout\":{\"unit\":\"m\",\"value\":1},"
                  "\"httpRetryEvents\":[\"server-error\"]}}}"),
            "m.json: routes[0].spec.httpRoute.retryPolicy.perRetryTimeout.unit: must be one of s, "
            "ms, got \"m\"");
    rejects(ROUTE("{\"tcpRoute\":{" ACTION "}}"),
            "m.json: routes[0].spec.tcpRoute: is not supported: remora routes HTTP/1.1 (use "
            "httpRoute)");
    rejects(ROUTE("{\"httpRoute\":{\"match\":{\"prefix\":\"/\",\"port\":81}," ACTION "}}"),
            "m.json: routes[0].spec.httpRoute.match.port: router cart has no listener on port 81");
}

static void test_reference_and_node_errors(void **state)
{
    (void)state;
    rejects("{\"virtualNodes\":[{\"virtualNodeName\":\"a\",\"spec\":{\"backends\":[{"
            "\"virtualService\":{\"virtualServiceName\":\"nope.local\"}}]}}]}",
            "m.json: virtualNodes[0].spec.backends[0].virtualService.virtualServiceName: virtual "
            "service \"nope.local\" does not exist");
    rejects("{\"virtualServices\":[{\"virtualServiceName\":\"s\",\"spec\":{\"provider\":{"
            "\"virtualRouter\":{\"virtualRouterName\":\"r\"}}}}]}",
            "m.json: virtualServices[0].spec.provider.virtualRouter.virtualRouterName: virtual "
            "router \"r\" does not exist");
    rejects("{\"virtualServices\":[{\"virtualServiceName\":\"s\",\"spec\":{\"provider\":{}}}]}",
            "m.json: virtualServices[0].spec.provider: must have exactly one of virtualNode, "
            "virtualRouter");
    rejects("{\"routes\":[{\"virtualRouterName\":\"r\",\"routeName\":\"x\",\"spec\":{"
            "\"httpRoute\":{\"match\":{\"prefix\":\"/\"},\"action\":{\"weightedTargets\":[]}}}}]}",
            "m.json: routes[0].spec.httpRoute.action.weightedTargets: must have 1..10 items, got 0");
    rejects("{\"virtualNodes\":[{\"virtualNodeName\":\"a\",\"spec\":{\"listeners\":[{"
            "\"portMapping\":{\"port\":80,\"protocol\":\"http\"},\"healthCheck\":{\"protocol\":"
            "\"http\",\"path\":\"/\",\"intervalMillis\":100,\"timeoutMillis\":2000,"
            "\"healthyThreshold\":2,\"unhealthyThreshold\":2}}]}}]}",
            "m.json: virtualNodes[0].spec.listeners[0].healthCheck.intervalMillis: must be "
            "5000..300000, got 100");
    rejects("{\"virtualNodes\":[{\"virtualNodeName\":\"a\",\"spec\":{\"listeners\":[{"
            "\"portMapping\":{\"port\":80,\"protocol\":\"http\"},\"connectionPool\":{\"tcp\":{"
            "\"maxConnections\":1}}}]}}]}",
            "m.json: virtualNodes[0].spec.listeners[0].connectionPool.tcp: does not match the "
            "listener protocol http");
    rejects("{\"virtualNodes\":[{\"virtualNodeName\":\"a\",\"spec\":{\"listeners\":[{"
            "\"portMapping\":{\"port\":80,\"protocol\":\"http\"},\"tls\":{\"mode\":\"STRICT\"}}]"
            "}}]}",
            "m.json: virtualNodes[0].spec.listeners[0].tls.mode: STRICT is not supported: remora "
            "does not terminate TLS yet (use DISABLED)");
    rejects("{\"virtualNodes\":[{\"virtualNodeName\":\"a\",\"spec\":{\"serviceDiscovery\":{"
            "\"dns\":{\"hostname\":\"x\"},\"awsCloudMap\":{}}}},{\"virtualNodeName\":\"a\","
            "\"spec\":{}}]}",
            "m.json: virtualNodes[0].spec.serviceDiscovery: must have exactly one of dns, "
            "awsCloudMap");
    rejects("{\"virtualNodes\":[{\"virtualNodeName\":\"a\",\"spec\":{}},{\"virtualNodeName\":"
            "\"a\",\"spec\":{}}]}",
            "m.json: virtualNodes[1].virtualNodeName: \"a\" is already virtualNodes[0]");
    rejects("{\"virtualNodes\":[{\"virtualNodeName\":\"a\",\"spec\":{\"listener\":[]}}]}",
            "m.json: virtualNodes[0].spec.listener: unknown field");
    rejects("{\"proxy\":{\"nodes\":\"a\"}}", "m.json: proxy.nodes: unknown field");
}

static void test_reports_every_problem(void **state)
{
    (void)state;
    const char *json =
        "{\"virtualNodes\":[{\"spec\":{\"listeners\":[{\"portMapping\":{\"port\":0,"
        "\"protocol\":\"http\"}}]}}],"
        "\"mesh\":{\"meshName\":\"m\",\"spec\":{\"egressFilter\":{\"type\":\"SOME\"}}}}";
    diag_t d = {0};
    assert_null(config_parse(json, strlen(json), "m.json", &d));
    assert_int_equal(d.n, 3);
    assert_string_equal(d.lines[0], "m.json: mesh.spec.egressFilter.type: must be one of "
                                    "DROP_ALL, ALLOW_ALL, got \"SOME\"");
    assert_string_equal(d.lines[1], "m.json: virtualNodes[0].virtualNodeName: is required");
    assert_string_equal(d.lines[2], "m.json: virtualNodes[0].spec.listeners[0].portMapping.port: "
                                    "must be 1..65535, got 0");
    diag_free(&d);
}

static void test_not_json(void **state)
{
    (void)state;
    diag_t d = {0};
    assert_null(config_parse("{\"a\": ", 6, "x.json", &d));
    assert_int_equal(d.n, 1);
    assert_non_null(strstr(d.lines[0], "x.json: $: not valid JSON"));
    diag_free(&d);
    assert_null(config_parse("[1]", 3, "x.json", &d));
    assert_string_equal(d.lines[0], "x.json: $: must be a JSON object");
    diag_free(&d);
}

/* Inputs the config fuzzer found (tests/fuzz/regressions/config): each was undefined
 * behaviour, each is now a clear message. */
static void test_fuzzer_findings(void **state)
{
    (void)state;
    rejects("{\"proxy\":{\"workers\":1e30}}", "m.json: proxy.workers: must be 1..256");
    diag_t d = {0};
    const char *no_protocol[] = {
        "{\"virtualNodes\":[{\"spec\":{\"listeners\":[{\"connectionPool\":{\"http\":{}}}]}}]}",
        "{\"virtualNodes\":[{\"spec\":{\"listeners\":[{\"timeout\":{\"http\":{}}}]}}]}",
    };
    for (size_t i = 0; i < 2; i++) {
        assert_null(config_parse(no_protocol[i], strlen(no_protocol[i]), "m.json", &d));
        int found = 0;
        for (size_t k = 0; k < d.n; k++)
            found |= strstr(d.lines[k], "listeners[0].portMapping: is required") != NULL;
        assert_true(found);
        diag_free(&d);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parses_app_mesh_shapes),
        cmocka_unit_test(test_route_errors),
        cmocka_unit_test(test_reference_and_node_errors),
        cmocka_unit_test(test_reports_every_problem),
        cmocka_unit_test(test_not_json),
        cmocka_unit_test(test_fuzzer_findings),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
