/* config/config.c: resource shapes into structs, and path-qualified diagnostics. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "config/config.h"

static void test_parses_app_mesh_shapes(void **state)
{
    (void)state;
    const char *json =
        "{\"mesh\":{\"meshName\":\"shop\",\"spec\":{\"egressFilter\":{\"type\":\"ALLOW_ALL\"}}},"
        "\"virtualNodes\":[{\"virtualNodeName\":\"web\",\"metadata\":{\"arn\":\"x\"},\"spec\":{"
        "\"listeners\":[{\"portMapping\":{\"port\":8080,\"protocol\":\"http\"},"
        "\"timeout\":{\"http\":{\"perRequest\":{\"unit\":\"s\",\"value\":3},"
        "\"idle\":{\"unit\":\"ms\",\"value\":250}}}}],"
        "\"serviceDiscovery\":{\"awsCloudMap\":{\"namespaceName\":\"ns.local\",\"serviceName\":\"web\"}},"
        "\"backends\":[{\"virtualService\":{\"virtualServiceName\":\"cart.shop.local\"}}]}}],"
        "\"virtualServices\":[{\"virtualServiceName\":\"cart.shop.local\",\"spec\":{\"provider\":"
        "{\"virtualRouter\":{\"virtualRouterName\":\"cart\"}}}}],"
        "\"virtualRouters\":[{\"virtualRouterName\":\"cart\",\"spec\":{\"listeners\":"
        "[{\"portMapping\":{\"port\":80,\"protocol\":\"http\"}}]}}],"
        "\"routes\":[{\"virtualRouterName\":\"cart\",\"routeName\":\"r\",\"spec\":{\"priority\":5,"
        "\"httpRoute\":{\"match\":{\"prefix\":\"/\"},\"action\":{\"weightedTargets\":["
        "{\"virtualNode\":\"v1\",\"weight\":90},{\"virtualNode\":\"v2\",\"weight\":10,\"port\":81}]}}}}]}";
    diag_t d = {0};
    config_t *c = config_parse(json, strlen(json), "m.json", &d);
    assert_int_equal(d.n, 0);
    assert_non_null(c);
    assert_string_equal(c->mesh_name, "shop");
    assert_int_equal(c->egress_filter, EGRESS_ALLOW_ALL);
    const cfg_node_t *n = config_node(c, "web");
    assert_non_null(n);
    assert_int_equal(n->listeners[0].port, 8080);
    assert_int_equal(n->listeners[0].per_request_ms, 3000);
    assert_int_equal(n->listeners[0].idle_ms, 250);
    assert_int_equal(n->discovery, DISCOVERY_CLOUD_MAP);
    assert_string_equal(n->namespace_name, "ns.local");
    assert_string_equal(n->backends[0], "cart.shop.local");
    const cfg_service_t *s = config_service(c, "CART.shop.local");
    assert_non_null(s);
    assert_int_equal(s->provider, PROVIDER_ROUTER);
    assert_int_equal(c->routers[0].ports[0], 80);
    assert_int_equal(c->routes[0].priority, 5);
    assert_int_equal(c->routes[0].ntargets, 2);
    assert_int_equal(c->routes[0].targets[1].weight, 10);
    assert_int_equal(c->routes[0].targets[1].port, 81);
    config_free(c);
}

static void test_reports_every_problem_with_its_path(void **state)
{
    (void)state;
    const char *json =
        "{\"virtualNodes\":[{\"spec\":{\"listeners\":[{\"portMapping\":{\"port\":0,"
        "\"protocol\":\"http\"}}]}}],"
        "\"routes\":[{\"virtualRouterName\":\"r\",\"routeName\":\"x\",\"spec\":{\"httpRoute\":"
        "{\"action\":{\"weightedTargets\":[{\"virtualNode\":\"v\",\"weight\":140}]}}}}],"
        "\"mesh\":{\"meshName\":\"m\",\"spec\":{\"egressFilter\":{\"type\":\"SOME\"}}}}";
    diag_t d = {0};
    config_t *c = config_parse(json, strlen(json), "m.json", &d);
    assert_null(c);
    assert_int_equal(d.n, 4);
    assert_string_equal(d.lines[0], "m.json: mesh.spec.egressFilter.type: must be ALLOW_ALL or "
                                    "DROP_ALL, got \"SOME\"");
    assert_string_equal(d.lines[1], "m.json: virtualNodes[0].virtualNodeName: is required");
    assert_string_equal(d.lines[2],
                        "m.json: virtualNodes[0].spec.listeners[0].portMapping.port: must be 1..65535, got 0");
    assert_string_equal(d.lines[3], "m.json: routes[0].spec.httpRoute.action.weightedTargets[0]."
                                    "weight: must be 0..100, got 140");
    diag_free(&d);
}

static void test_not_json(void **state)
{
    (void)state;
    diag_t d = {0};
    assert_null(config_parse("{\"a\": ", 6, "x.json", &d));
    assert_int_equal(d.n, 1);
    assert_non_null(strstr(d.lines[0], "x.json: $: not a JSON object"));
    diag_free(&d);
    assert_null(config_parse("[1]", 3, "x.json", &d));
    assert_int_equal(d.n, 1);
    diag_free(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parses_app_mesh_shapes),
        cmocka_unit_test(test_reports_every_problem_with_its_path),
        cmocka_unit_test(test_not_json),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
