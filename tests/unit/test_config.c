/* config/: App Mesh shapes into structs, and every validation path with its message. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include "base/http.h"

#include "base/err.h"
#include "config/config.h"
#include "config/sampling_rules.h"

/* A valid mesh: web -> cart.shop.local (router cart, routes to cart-v1 / cart-v2). */
#define NODES                                                                                      \
    "\"virtualNodes\":[{\"virtualNodeName\":\"web\",\"metadata\":{\"arn\":\"x\"},\"spec\":{"       \
    "\"listeners\":[{\"portMapping\":{\"port\":8080,\"protocol\":\"http\"},"                       \
    "\"timeout\":{\"http\":{\"perRequest\":{\"unit\":\"s\",\"value\":3},"                          \
    "\"idle\":{\"unit\":\"ms\",\"value\":250}}},"                                                  \
    "\"connectionPool\":{\"http\":{\"maxConnections\":4,\"maxPendingRequests\":2}},"               \
    "\"healthCheck\":{\"protocol\":\"http\",\"path\":\"/ping\",\"intervalMillis\":5000,"           \
    "\"timeoutMillis\":2000,\"healthyThreshold\":2,\"unhealthyThreshold\":3},"                     \
    "\"outlierDetection\":{\"maxServerErrors\":5,\"interval\":{\"unit\":\"s\",\"value\":10},"      \
    "\"baseEjectionDuration\":{\"unit\":\"s\",\"value\":30},\"maxEjectionPercent\":50}}],"         \
    "\"serviceDiscovery\":{\"awsCloudMap\":{\"namespaceName\":\"ns.local\",\"serviceName\":"       \
    "\"web\"}},"                                                                                   \
    "\"backends\":[{\"virtualService\":{\"virtualServiceName\":\"cart.shop.local\"}}]}},"          \
    "{\"virtualNodeName\":\"cart-v1\",\"spec\":{\"listeners\":[{\"portMapping\":{\"port\":81,"     \
    "\"protocol\":\"http\"}}],\"serviceDiscovery\":{\"dns\":{\"hostname\":\"v1.local\","           \
    "\"responseType\":\"ENDPOINTS\"}}}},"                                                          \
    "{\"virtualNodeName\":\"cart-v2\",\"spec\":{\"listeners\":[{\"portMapping\":{\"port\":81,"     \
    "\"protocol\":\"http\"}}],\"serviceDiscovery\":{\"dns\":{\"hostname\":\"v2.local\"}}}}]"
#define SERVICES                                                                                   \
    "\"virtualServices\":[{\"virtualServiceName\":\"cart.shop.local\",\"spec\":{\"provider\":"     \
    "{\"virtualRouter\":{\"virtualRouterName\":\"cart\"}}}}],"                                     \
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
        "{\"mesh\":{\"meshName\":\"shop\",\"spec\":{\"egressFilter\":{\"type\":\"ALLOW_ALL\"}}}"
        "," NODES "," SERVICES ","
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
    "{" NODES "," SERVICES ",\"routes\":[{\"virtualRouterName\":\"cart\",\"routeName\":\"r\","     \
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
            "m.json: routes[0].spec.tcpRoute.match.port: router cart's listener on port 80 is "
            "http: it takes httpRoute");
    rejects(ROUTE("{\"tcpRoute\":{" ACTION ",\"match\":{\"port\":80,\"prefix\":\"/\"}}}"),
            "m.json: routes[0].spec.tcpRoute.match.prefix: unknown field");
    /* gRPC and HTTP/2 routes are checked as the API shapes them, and each kind suits its
     * router listener's protocol as a tcpRoute does. */
    rejects(ROUTE("{\"grpcRoute\":{\"match\":{\"serviceName\":\"s\"}," ACTION "}}"),
            "m.json: routes[0].spec.grpcRoute.match.port: router cart's listener on port 80 is "
            "http: it takes httpRoute");
    rejects(ROUTE("{\"http2Route\":{\"match\":{\"prefix\":\"/\"}," ACTION "}}"),
            "m.json: routes[0].spec.http2Route.match.port: router cart's listener on port 80 is "
            "http: it takes httpRoute");
    rejects(ROUTE("{\"grpcRoute\":{" ACTION "}}"),
            "m.json: routes[0].spec.grpcRoute.match: is required");
    rejects(ROUTE("{\"grpcRoute\":{\"match\":{\"methodName\":\"Get\"}," ACTION "}}"),
            "m.json: routes[0].spec.grpcRoute.match.methodName: needs serviceName");
    rejects(
        ROUTE("{\"grpcRoute\":{\"match\":{\"serviceName\":\"s\",\"prefix\":\"/\"}," ACTION "}}"),
        "m.json: routes[0].spec.grpcRoute.match.prefix: unknown field");
    rejects(ROUTE("{\"grpcRoute\":{\"match\":{\"serviceName\":\"s\"}," ACTION ",\"retryPolicy\":"
                  "{\"maxRetries\":1,\"perRetryTimeout\":{\"unit\":\"ms\",\"value\":1},"
                  "\"grpcRetryEvents\":[\"unavailabel\"]}}}"),
            "m.json: routes[0].spec.grpcRoute.retryPolicy.grpcRetryEvents[0]: must be one of "
            "cancelled, deadline-exceeded, internal, resource-exhausted, unavailable, got "
            "\"unavailabel\"");
    rejects(ROUTE("{\"http2Route\":{\"match\":{\"prefix\":\"/\",\"scheme\":\"ftp\"}," ACTION "}}"),
            "m.json: routes[0].spec.http2Route.match.scheme: must be one of http, https, got "
            "\"ftp\"");
    rejects(ROUTE("{\"httpRoute\":{\"match\":{\"prefix\":\"/\",\"scheme\":\"http\"}," ACTION "}}"),
            "m.json: routes[0].spec.httpRoute.match.scheme: unknown field");
    rejects(ROUTE("{\"httpRoute\":{\"match\":{\"path\":{\"regex\":\"(x\"}}," ACTION "}}"),
            "m.json: routes[0].spec.httpRoute.match.path.regex: invalid regular expression \"(x\": "
            "Unmatched ( or \\(");
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
    rejects(
        "{\"routes\":[{\"virtualRouterName\":\"r\",\"routeName\":\"x\",\"spec\":{"
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
            "m.json: virtualNodes[0].spec.listeners[0].tls.certificate: is required");
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

/* Expects `json` rejected with a message at `path` (after "m.json: ") containing `part`. */
static void rejects_at(const char *json, const char *path, const char *part)
{
    diag_t d = {0};
    config_t *c = config_parse(json, strlen(json), "m.json", &d);
    char prefix[256];
    snprintf(prefix, sizeof prefix, "m.json: %s: ", path);
    int found = 0;
    for (size_t i = 0; i < d.n; i++)
        found |= strncmp(d.lines[i], prefix, strlen(prefix)) == 0 &&
                 strstr(d.lines[i] + strlen(prefix), part) != NULL;
    if (!found)
        for (size_t i = 0; i < d.n; i++)
            fprintf(stderr, "got: %s\n", d.lines[i]);
    assert_null(c);
    assert_true(found);
    diag_free(&d);
}

#define FILE_CERT  "{\"file\":{\"certificateChain\":\"/c/chain.pem\",\"privateKey\":\"/c/key.pem\"}}"
#define FILE_TRUST "\"trust\":{\"file\":{\"certificateChain\":\"/c/ca.pem\"}}"
#define SANS(list) "\"subjectAlternativeNames\":{\"match\":{\"exact\":[" list "]}}"
/* Node a with one listener whose `tls` is `tls`. */
#define LISTENER_TLS(tls)                                                                          \
    "{\"virtualNodes\":[{\"virtualNodeName\":\"a\",\"spec\":{\"listeners\":[{\"portMapping\":"     \
    "{\"port\":80,\"protocol\":\"http\"},\"tls\":" tls "}]}}]}"
#define LTLS "virtualNodes[0].spec.listeners[0].tls"
/* Node a with a backend s.local whose clientPolicy.tls is `tls`, or with `tls` as its defaults. */
#define SERVICE_S "\"virtualServices\":[{\"virtualServiceName\":\"s.local\",\"spec\":{}}]"
#define BACKEND_TLS(tls)                                                                           \
    "{" SERVICE_S ",\"virtualNodes\":[{\"virtualNodeName\":\"a\",\"spec\":{\"backends\":[{"        \
    "\"virtualService\":{\"virtualServiceName\":\"s.local\",\"clientPolicy\":{\"tls\":" tls        \
    "}}}]}}]}"
#define BTLS "virtualNodes[0].spec.backends[0].virtualService.clientPolicy.tls"
#define DEFAULTS_TLS(tls)                                                                          \
    "{\"virtualNodes\":[{\"virtualNodeName\":\"a\",\"spec\":{\"backendDefaults\":{"                \
    "\"clientPolicy\":{\"tls\":" tls "}}}}]}"
#define DTLS "virtualNodes[0].spec.backendDefaults.clientPolicy.tls"

/* Node web: listeners 80 STRICT with mTLS and SANs, 81 PERMISSIVE, 82 DISABLED with mTLS, 83
 * plain; backends cart.local (own policy), pay.local (clientPolicy without tls), ship.local;
 * defaults not enforced, with a wildcard SAN. */
#define STRICT_80                                                                                  \
    "{\"portMapping\":{\"port\":80,\"protocol\":\"http\"},\"tls\":{\"mode\":\"STRICT\","           \
    "\"certificate\":" FILE_CERT ",\"validation\":{" FILE_TRUST                                    \
    "," SANS("\"spiffe://td/web\",\"web.apps.local\"") "}}}"
#define PERMISSIVE_81                                                                              \
    "{\"portMapping\":{\"port\":81,\"protocol\":\"http\"},\"tls\":{\"mode\":\"PERMISSIVE\","       \
    "\"certificate\":" FILE_CERT "}}"
#define DISABLED_82                                                                                \
    "{\"portMapping\":{\"port\":82,\"protocol\":\"http\"},\"tls\":{\"mode\":\"DISABLED\","         \
    "\"certificate\":" FILE_CERT ",\"validation\":{" FILE_TRUST "}}}"
#define CART_POLICY                                                                                \
    "\"clientPolicy\":{\"tls\":{\"ports\":[8080,8443],\"certificate\":" FILE_CERT                  \
    ",\"validation\":{" FILE_TRUST "," SANS("\"cart.local\"") "}}}"
#define DEFAULT_POLICY                                                                             \
    "\"clientPolicy\":{\"tls\":{\"enforce\":false,\"ports\":[],\"validation\":{" FILE_TRUST        \
    "," SANS("\"*.apps.local\"") "}}}"

static void test_tls_shapes(void **state)
{
    (void)state;
    const char *json =
        "{\"virtualServices\":[{\"virtualServiceName\":\"cart.local\",\"spec\":{}},"
        "{\"virtualServiceName\":\"pay.local\",\"spec\":{}},"
        "{\"virtualServiceName\":\"ship.local\",\"spec\":{}}],"
        "\"virtualNodes\":[{\"virtualNodeName\":\"web\",\"spec\":{"
        "\"listeners\":[" STRICT_80 "," PERMISSIVE_81 "," DISABLED_82 ","
        "{\"portMapping\":{\"port\":83,\"protocol\":\"http\"}}],"
        "\"backends\":[{\"virtualService\":{\"virtualServiceName\":\"cart.local\"," CART_POLICY
        "}},"
        "{\"virtualService\":{\"virtualServiceName\":\"pay.local\",\"clientPolicy\":{}}},"
        "{\"virtualService\":{\"virtualServiceName\":\"ship.local\"}}],"
        "\"backendDefaults\":{" DEFAULT_POLICY "}}}]}";
    config_t *c = parse_ok(json);
    const cfg_node_t *n = &c->nodes[0];
    const cfg_listener_tls_t *strict = &n->listeners[0].tls;
    assert_int_equal(strict->mode, TLS_STRICT);
    assert_string_equal(strict->path, LTLS);
    assert_string_equal(strict->cert_chain, "/c/chain.pem");
    assert_string_equal(strict->private_key, "/c/key.pem");
    assert_true(strict->has_validation);
    assert_string_equal(strict->validation.trust_file, "/c/ca.pem");
    assert_int_equal(strict->validation.nsans, 2);
    assert_string_equal(strict->validation.sans[0], "spiffe://td/web");
    assert_string_equal(strict->validation.sans[1], "web.apps.local");
    const cfg_listener_tls_t *permissive = &n->listeners[1].tls;
    assert_int_equal(permissive->mode, TLS_PERMISSIVE);
    assert_string_equal(permissive->path, "virtualNodes[0].spec.listeners[1].tls");
    assert_false(permissive->has_validation);
    assert_null(permissive->validation.trust_file);
    const cfg_listener_tls_t *disabled = &n->listeners[2].tls;
    assert_int_equal(disabled->mode, TLS_DISABLED);
    assert_string_equal(disabled->cert_chain, "/c/chain.pem");
    assert_true(disabled->has_validation);
    assert_int_equal(disabled->validation.nsans, 0);
    const cfg_listener_tls_t *plain = &n->listeners[3].tls;
    assert_int_equal(plain->mode, TLS_DISABLED);
    assert_null(plain->path);
    assert_null(plain->cert_chain);

    const cfg_client_tls_t *cart = &n->backend_tls[0];
    assert_true(cart->present);
    assert_string_equal(cart->path, "virtualNodes[0].spec.backends[0].virtualService."
                                    "clientPolicy.tls");
    assert_true(cart->enforce);
    assert_int_equal(cart->nports, 2);
    assert_int_equal(cart->ports[0], 8080);
    assert_int_equal(cart->ports[1], 8443);
    assert_string_equal(cart->cert_chain, "/c/chain.pem");
    assert_string_equal(cart->private_key, "/c/key.pem");
    assert_string_equal(cart->validation.trust_file, "/c/ca.pem");
    assert_int_equal(cart->validation.nsans, 1);
    assert_string_equal(cart->validation.sans[0], "cart.local");
    assert_false(n->backend_tls[1].present); /* clientPolicy without tls */
    assert_false(n->backend_tls[2].present);
    assert_null(n->backend_tls[2].path);
    const cfg_client_tls_t *dflt = &n->default_tls;
    assert_true(dflt->present);
    assert_string_equal(dflt->path, DTLS);
    assert_false(dflt->enforce);
    assert_int_equal(dflt->nports, 0);
    assert_null(dflt->cert_chain);
    assert_int_equal(dflt->validation.nsans, 1);
    assert_string_equal(dflt->validation.sans[0], "*.apps.local");
    config_free(c);

    /* enforce defaults to true; without a client policy nothing is present */
    c = parse_ok(DEFAULTS_TLS("{\"validation\":{" FILE_TRUST "}}"));
    assert_true(c->nodes[0].default_tls.enforce);
    assert_int_equal(c->nodes[0].default_tls.validation.nsans, 0);
    config_free(c);
    c = parse_ok("{\"virtualNodes\":[{\"virtualNodeName\":\"a\",\"spec\":{}}]}");
    assert_false(c->nodes[0].default_tls.present);
    config_free(c);
}

static void test_listener_tls_errors(void **state)
{
    (void)state;
    rejects_at(LISTENER_TLS("{\"mode\":\"STRICT\",\"certificate\":{\"acm\":{\"certificateArn\":"
                            "\"arn:aws:acm:x\"}}}"),
               LTLS ".certificate.acm", "ACM certificates cannot be exported to a sidecar");
    rejects_at(LISTENER_TLS("{\"mode\":\"STRICT\",\"certificate\":{\"sds\":{\"secretName\":"
                            "\"s\"}}}"),
               LTLS ".certificate.sds", "run SPIRE's spiffe-helper");
    rejects_at(LISTENER_TLS("{\"mode\":\"DISABLED\",\"certificate\":{\"sds\":{\"secretName\":"
                            "\"s\"}}}"),
               LTLS ".certificate.sds", "use certificate.file");
    rejects_at(LISTENER_TLS("{\"mode\":\"STRICT\",\"certificate\":" FILE_CERT
                            ",\"validation\":{\"trust\":{\"sds\":{\"secretName\":\"s\"}}}}"),
               LTLS ".validation.trust.sds", "run SPIRE's spiffe-helper");
    rejects_at(LISTENER_TLS("{\"mode\":\"STRICT\",\"certificate\":" FILE_CERT
                            ",\"validation\":{\"trust\":{\"acm\":{\"certificateAuthorityArns\":"
                            "[\"arn:x\"]}}}}"),
               LTLS ".validation.trust.acm", "unknown field");
    rejects_at(LISTENER_TLS("{\"mode\":\"STRICT\",\"certificate\":{}}"), LTLS ".certificate",
               "must have exactly one of acm, file, sds");
    rejects_at(LISTENER_TLS("{\"mode\":\"STRICT\",\"certificate\":{\"file\":{"
                            "\"certificateChain\":\"/c/chain.pem\"}}}"),
               LTLS ".certificate.file.privateKey", "is required");
    rejects_at(LISTENER_TLS("{\"certificate\":" FILE_CERT "}"), LTLS ".mode", "is required");
    rejects_at(LISTENER_TLS("{\"mode\":\"strict\",\"certificate\":" FILE_CERT "}"), LTLS ".mode",
               "must be one of DISABLED, STRICT, PERMISSIVE, got \"strict\"");
    rejects_at(
        LISTENER_TLS("{\"mode\":\"STRICT\",\"certificate\":" FILE_CERT ",\"validation\":{}}"),
        LTLS ".validation.trust", "is required");
    rejects_at(LISTENER_TLS("{\"mode\":\"STRICT\",\"certificate\":" FILE_CERT
                            ",\"validation\":{" FILE_TRUST "," SANS("\"*.apps.local\"") "}}"),
               LTLS ".validation.subjectAlternativeNames.match.exact[0]",
               "wildcard SANs are allowed only in a client policy with enforce false");
    rejects_at(LISTENER_TLS("{\"mode\":\"STRICT\",\"certificate\":" FILE_CERT ",\"ciphers\":[]}"),
               LTLS ".ciphers", "unknown field");
}

static void test_client_tls_errors(void **state)
{
    (void)state;
    rejects_at(BACKEND_TLS("{\"validation\":{\"trust\":{\"acm\":{\"certificateAuthorityArns\":"
                           "[\"arn:x\"]}}}}"),
               BTLS ".validation.trust.acm", "aws acm-pca get-certificate-authority-certificate");
    rejects_at(DEFAULTS_TLS("{\"validation\":{\"trust\":{\"acm\":{\"certificateAuthorityArns\":"
                            "[\"arn:x\"]}}}}"),
               DTLS ".validation.trust.acm", "to a file and use trust.file");
    rejects_at(BACKEND_TLS("{\"validation\":{\"trust\":{\"sds\":{\"secretName\":\"s\"}}}}"),
               BTLS ".validation.trust.sds", "run SPIRE's spiffe-helper");
    rejects_at(
        BACKEND_TLS("{\"certificate\":{\"sds\":{\"secretName\":\"s\"}},\"validation\":{" FILE_TRUST
                    "}}"),
        BTLS ".certificate.sds", "run SPIRE's spiffe-helper");
    rejects_at(BACKEND_TLS("{\"certificate\":{\"acm\":{}},\"validation\":{" FILE_TRUST "}}"),
               BTLS ".certificate.acm", "unknown field");
    rejects_at(BACKEND_TLS("{\"ports\":[8080]}"), BTLS ".validation", "is required");
    rejects_at(DEFAULTS_TLS("{}"), DTLS ".validation", "is required");
    rejects_at(BACKEND_TLS("{\"validation\":{" FILE_TRUST "," SANS("\"*.apps.local\"") "}}"),
               BTLS ".validation.subjectAlternativeNames.match.exact[0]",
               "\"*.apps.local\": wildcard SANs are allowed only in a client policy with enforce "
               "false");
    rejects_at(DEFAULTS_TLS("{\"enforce\":true,\"validation\":{" FILE_TRUST
                            "," SANS("\"a.local\",\"spiffe://td/*\"") "}}"),
               DTLS ".validation.subjectAlternativeNames.match.exact[1]", "wildcard SANs");
    rejects_at(BACKEND_TLS("{\"validation\":{" FILE_TRUST "," SANS("\"a b.local\"") "}}"),
               BTLS ".validation.subjectAlternativeNames.match.exact[0]", "without spaces");
    rejects_at(BACKEND_TLS("{\"validation\":{" FILE_TRUST "," SANS("\"a..local\"") "}}"),
               BTLS ".validation.subjectAlternativeNames.match.exact[0]",
               "without empty labels or a URI such as spiffe://trust-domain/path, got "
               "\"a..local\"");
    rejects_at(BACKEND_TLS("{\"validation\":{" FILE_TRUST "," SANS("\"a.local.\"") "}}"),
               BTLS ".validation.subjectAlternativeNames.match.exact[0]", "empty labels");
    rejects_at(BACKEND_TLS("{\"validation\":{" FILE_TRUST "," SANS("\"://td/x\"") "}}"),
               BTLS ".validation.subjectAlternativeNames.match.exact[0]", "got \"://td/x\"");
    rejects_at(BACKEND_TLS("{\"validation\":{" FILE_TRUST "," SANS("\"\"") "}}"),
               BTLS ".validation.subjectAlternativeNames.match.exact[0]", "1..254 characters");
    rejects_at(BACKEND_TLS("{\"ports\":[8080,0],\"validation\":{" FILE_TRUST "}}"),
               BTLS ".ports[1]", "must be a port number 1..65535");
    rejects_at(BACKEND_TLS("{\"ports\":[65536],\"validation\":{" FILE_TRUST "}}"), BTLS ".ports[0]",
               "must be a port number 1..65535");
    rejects_at(BACKEND_TLS("{\"ports\":[\"80\"],\"validation\":{" FILE_TRUST "}}"),
               BTLS ".ports[0]", "must be a port number 1..65535");
    rejects_at(BACKEND_TLS("{\"enforce\":\"yes\",\"validation\":{" FILE_TRUST "}}"),
               BTLS ".enforce", "must be true or false");
    rejects_at(BACKEND_TLS("{\"enforced\":true,\"validation\":{" FILE_TRUST "}}"), BTLS ".enforced",
               "unknown field");
    rejects_at("{" SERVICE_S ",\"virtualNodes\":[{\"virtualNodeName\":\"a\",\"spec\":{"
               "\"backends\":[{\"virtualService\":{\"virtualServiceName\":\"s.local\","
               "\"clientPolicy\":{\"http\":{}}}}]}}]}",
               "virtualNodes[0].spec.backends[0].virtualService.clientPolicy.http",
               "unknown field");
    rejects_at("{\"virtualNodes\":[{\"virtualNodeName\":\"a\",\"spec\":{\"backendDefaults\":{"
               "\"tls\":{}}}}]}",
               "virtualNodes[0].spec.backendDefaults.tls", "unknown field");
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

/* A router with an http and a tcp listener; a tcpRoute on the tcp one. */
#define TCP_MESH                                                                                   \
    "{\"virtualNodes\":[{\"virtualNodeName\":\"db\",\"spec\":{\"listeners\":[{\"portMapping\":"    \
    "{\"port\":6379,\"protocol\":\"tcp\"},\"timeout\":{\"tcp\":{\"idle\":{\"unit\":\"s\","         \
    "\"value\":7}}},\"connectionPool\":{\"tcp\":{\"maxConnections\":3}}}],"                        \
    "\"serviceDiscovery\":{\"dns\":{\"hostname\":\"db.local\"}}}}],"                               \
    "\"virtualRouters\":[{\"virtualRouterName\":\"r\",\"spec\":{\"listeners\":["                   \
    "{\"portMapping\":{\"port\":80,\"protocol\":\"http\"}},"                                       \
    "{\"portMapping\":{\"port\":6379,\"protocol\":\"tcp\"}}]}}],"                                  \
    "\"routes\":[{\"virtualRouterName\":\"r\",\"routeName\":\"t\",\"spec\":{\"tcpRoute\":{"        \
    "\"action\":{\"weightedTargets\":[{\"virtualNode\":\"db\",\"weight\":3,\"port\":6379}]},"      \
    "\"match\":{\"port\":6379},\"timeout\":{\"idle\":{\"unit\":\"ms\",\"value\":1500}}}}}]}"

static void test_tcp_routes(void **state)
{
    (void)state;
    config_t *c = parse_ok(TCP_MESH);
    const cfg_router_t *r = config_router(c, "r");
    assert_int_equal(r->nports, 2);
    assert_int_equal(r->tcp[0], 0);
    assert_int_equal(r->tcp[1], 1);
    const cfg_route_t *t = &c->routes[0];
    assert_int_equal(t->tcp, 1);
    assert_int_equal(t->port, 6379);
    assert_int_equal(t->idle_ms, 1500);
    assert_true(t->per_request_ms == DURATION_UNSET);
    assert_int_equal(t->ntargets, 1);
    assert_string_equal(t->targets[0].node, "db");
    assert_int_equal(t->targets[0].weight, 3);
    const cfg_listener_t *l = &config_node(c, "db")->listeners[0];
    assert_string_equal(l->protocol, "tcp");
    assert_int_equal(l->idle_ms, 7000);
    assert_int_equal(l->max_connections, 3);
    config_free(c);
}

/* ---- issue 14: App Mesh's defaults, prefix-less matches, mesh ipPreference, pruning ---- */

/* Neither prefix nor path: every path (App Mesh's howto-multiple-listeners matches by port
 * alone). Both together stay an error. */
static void test_prefixless_match(void **state)
{
    (void)state;
    config_t *c = parse_ok(ROUTE("{\"httpRoute\":{\"match\":{\"port\":80}," ACTION "}}"));
    assert_null(c->routes[0].path);
    assert_int_equal(c->routes[0].path_kind, PATH_PREFIX);
    assert_int_equal(c->routes[0].port, 80);
    config_free(c);
    c = parse_ok(ROUTE("{\"httpRoute\":{\"match\":{\"headers\":[{\"name\":\"x-v\"}],\"method\":"
                       "\"GET\"}," ACTION "}}"));
    assert_null(c->routes[0].path);
    assert_int_equal(c->routes[0].nheaders, 1);
    config_free(c);
    c = parse_ok(ROUTE("{\"httpRoute\":{\"match\":{}," ACTION "}}"));
    assert_null(c->routes[0].path);
    config_free(c);
    rejects(ROUTE("{\"httpRoute\":{\"match\":{\"prefix\":\"/\",\"path\":{\"exact\":\"/a\"}}," ACTION
                  "}}"),
            "m.json: routes[0].spec.httpRoute.match: must have exactly one of prefix, path");
}

#define MESH_SD(sd)                                                                                \
    "{\"mesh\":{\"meshName\":\"m\",\"spec\":{\"serviceDiscovery\":" sd "}},"                       \
    "\"virtualNodes\":[{\"virtualNodeName\":\"a\",\"spec\":{\"serviceDiscovery\":{\"dns\":"        \
    "{\"hostname\":\"a.local\"}}}},{\"virtualNodeName\":\"b\",\"spec\":{\"serviceDiscovery\":"     \
    "{\"dns\":{\"hostname\":\"b.local\",\"ipPreference\":\"IPv4_ONLY\"}}}}]}"

/* mesh.spec.serviceDiscovery.ipPreference is what a node that sets none gets; a node's own
 * wins. */
static void test_mesh_ip_preference(void **state)
{
    (void)state;
    config_t *c = parse_ok(MESH_SD("{\"ipPreference\":\"IPv6_ONLY\"}"));
    assert_int_equal(c->ip_preference, IP_V6_ONLY);
    assert_int_equal(config_node(c, "a")->ip_preference, IP_V6_ONLY);
    assert_int_equal(config_node(c, "b")->ip_preference, IP_V4_ONLY);
    config_free(c);
    c = parse_ok(MESH_SD("{}"));
    assert_int_equal(config_node(c, "a")->ip_preference, IP_DEFAULT);
    config_free(c);
    rejects(MESH_SD("{\"ipPreference\":\"IPv5\"}"),
            "m.json: mesh.spec.serviceDiscovery.ipPreference: must be one of , IPv4_PREFERRED, "
            "IPv6_PREFERRED, IPv4_ONLY, IPv6_ONLY, got \"IPv5\"");
    rejects(MESH_SD("{\"ipPref\":\"IPv4_ONLY\"}"),
            "m.json: mesh.spec.serviceDiscovery.ipPref: unknown field");
}

static void test_default_retry_setting(void **state)
{
    (void)state;
    config_t *c = parse_ok("{\"proxy\":{\"defaultRetryPolicy\":false}}");
    assert_int_equal(c->proxy.default_retry_policy, 0);
    config_free(c);
    c = parse_ok("{\"proxy\":{\"defaultRetryPolicy\":true}}");
    assert_int_equal(c->proxy.default_retry_policy, 1);
    config_free(c);
    c = parse_ok("{\"proxy\":{}}");
    assert_int_equal(c->proxy.default_retry_policy, -1); /* settled by route_table_build */
    config_free(c);
    rejects("{\"proxy\":{\"defaultRetryPolicy\":\"no\"}}",
            "m.json: proxy.defaultRetryPolicy: must be true or false");
}

/* web -> a.local (router ra: routes to a1, a2) and b.local (node b); router rz, its routes
 * and node z (behind z.local) are the rest of the mesh, which web does not reach. a1 has
 * backends of its own. */
#define Z_ROUTE(kind, match) "\"" kind "Route\":{\"match\":" match
#define Z_GRPC               Z_ROUTE("grpc", "{\"serviceName\":\"x\"}")
#define Z_HTTP2              Z_ROUTE("http2", "{\"prefix\":\"/\"}")
#define Z_HTTP               Z_ROUTE("http", "{\"prefix\":\"/\"}")
#define WIDE_MESH(z_listener, z_route, extra_route)                                                \
    "{\"mesh\":{\"meshName\":\"m\"},\"virtualNodes\":["                                            \
    "{\"virtualNodeName\":\"z\",\"spec\":{\"listeners\":[{\"portMapping\":{\"port\":90,"           \
    "\"protocol\":\"" z_listener "\"}}]}},"                                                        \
    "{\"virtualNodeName\":\"web\",\"spec\":{\"backends\":["                                        \
    "{\"virtualService\":{\"virtualServiceName\":\"a.local\"}},"                                   \
    "{\"virtualService\":{\"virtualServiceName\":\"b.local\"}}]}},"                                \
    "{\"virtualNodeName\":\"a1\",\"spec\":{\"listeners\":[{\"portMapping\":{\"port\":80,"          \
    "\"protocol\":\"http\"}}],\"backends\":[{\"virtualService\":{\"virtualServiceName\":"          \
    "\"z.local\"}}]}},"                                                                            \
    "{\"virtualNodeName\":\"a2\",\"spec\":{\"listeners\":[{\"portMapping\":{\"port\":80,"          \
    "\"protocol\":\"http\"}}]}},"                                                                  \
    "{\"virtualNodeName\":\"b\",\"spec\":{\"listeners\":[{\"portMapping\":{\"port\":80,"           \
    "\"protocol\":\"http\"}}]}}],"                                                                 \
    "\"virtualServices\":["                                                                        \
    "{\"virtualServiceName\":\"z.local\",\"spec\":{\"provider\":{\"virtualRouter\":"               \
    "{\"virtualRouterName\":\"rz\"}}}},"                                                           \
    "{\"virtualServiceName\":\"a.local\",\"spec\":{\"provider\":{\"virtualRouter\":"               \
    "{\"virtualRouterName\":\"ra\"}}}},"                                                           \
    "{\"virtualServiceName\":\"b.local\",\"spec\":{\"provider\":{\"virtualNode\":"                 \
    "{\"virtualNodeName\":\"b\"}}}}],"                                                             \
    "\"virtualRouters\":["                                                                         \
    "{\"virtualRouterName\":\"rz\",\"spec\":{\"listeners\":[{\"portMapping\":{\"port\":90,"        \
    "\"protocol\":\"" z_listener "\"}}]}},"                                                        \
    "{\"virtualRouterName\":\"ra\",\"spec\":{\"listeners\":[{\"portMapping\":{\"port\":80,"        \
    "\"protocol\":\"http\"}}]}}],"                                                                 \
    "\"routes\":["                                                                                 \
    "{\"virtualRouterName\":\"rz\",\"routeName\":\"z0\",\"spec\":{" z_route ",\"action\":"         \
    "{\"weightedTargets\":"                                                                        \
    "[{\"virtualNode\":\"z\",\"weight\":1}]}}}},"                                                  \
    "{\"virtualRouterName\":\"ra\",\"routeName\":\"a\",\"spec\":{\"httpRoute\":{\"match\":"        \
    "{\"prefix\":\"/\"},\"action\":{\"weightedTargets\":[{\"virtualNode\":\"a1\",\"weight\":9},"   \
    "{\"virtualNode\":\"a2\",\"weight\":1}]}}}}" extra_route "]}"

static void test_prune_keeps_what_the_node_reaches(void **state)
{
    (void)state;
    const char *json = WIDE_MESH("grpc", Z_GRPC, "");
    config_t *c = parse_ok(json);
    diag_t d = {0};
    int err = config_prune(c, "web", &d);
    for (size_t i = 0; i < d.n; i++)
        fprintf(stderr, "unexpected: %s\n", d.lines[i]);
    assert_int_equal(err, 0);
    assert_string_equal(c->pruned_for, "web");
    assert_int_equal(c->document.nodes, 5);
    assert_int_equal(c->document.routes, 2);
    assert_int_equal(c->nnodes, 4); /* web, a1, a2, b: not z */
    assert_int_equal(c->nservices, 2);
    assert_int_equal(c->nrouters, 1);
    assert_int_equal(c->nroutes, 1);
    assert_null(config_node(c, "z"));
    assert_null(config_router(c, "rz"));
    assert_null(config_service(c, "z.local"));
    /* Lookups still work, and resources keep their place in the document for messages. */
    assert_int_equal(config_node(c, "web")->index, 1);
    assert_int_equal(config_node(c, "b")->index, 4);
    assert_int_equal(config_router(c, "ra")->index, 1);
    assert_int_equal(c->routes[0].index, 1);
    assert_int_equal(config_node(c, "web")->nbackends, 2);
    assert_int_equal(config_node(c, "a1")->nbackends, 0); /* its sidecar's business */
    /* The raw text holds the same resources, and is a document of its own: parsed again, it
     * validates and prunes to the same config. */
    assert_null(strstr(c->raw, "\"rz\""));
    assert_null(strstr(c->raw, "z.local"));
    assert_non_null(strstr(c->raw, "\"meshName\":\"m\""));
    config_t *again = parse_ok(c->raw);
    assert_int_equal(again->nnodes, 4);
    assert_int_equal(again->nroutes, 1);
    assert_int_equal(config_prune(again, "web", &d), 0);
    assert_int_equal(again->nnodes, 4);
    assert_string_equal(again->raw, c->raw);
    config_free(again);
    config_free(c);
    /* Another node of the same document reaches other parts of it. */
    c = parse_ok(WIDE_MESH("http", Z_HTTP, ""));
    assert_int_equal(config_prune(c, "a1", &d), 0);
    assert_int_equal(c->nnodes, 2); /* a1, and z through z.local and rz */
    assert_non_null(config_node(c, "z"));
    config_free(c);
    /* A node that reaches everything keeps the document as given, byte for byte. */
    const char *small = "{\"virtualNodes\": [ {\"virtualNodeName\": \"solo\", \"spec\": {}} ]}";
    c = parse_ok(small);
    assert_int_equal(config_prune(c, "solo", &d), 0);
    assert_string_equal(c->raw, small);
    config_free(c);
    /* A cut document drops the whitespace between tokens (a pretty-printed document's
     * indentation would be most of it), never inside a string. */
    const char *pretty =
        "{\n  \"virtualNodes\" : [\n    {\"virtualNodeName\": \"solo\", \"spec\": {}},\n"
        "    {\"virtualNodeName\": \"other\", \"metadata\": {\"note\": \"two  spaces, "
        "a \\\" and a \\\\\"}, \"spec\": {}}\n  ],\n  \"proxy\": { \"node\" : \"x\" }\n}\n";
    c = parse_ok(pretty);
    assert_int_equal(config_prune(c, "solo", &d), 0);
    assert_string_equal(c->raw, "{\"virtualNodes\":[{\"virtualNodeName\":\"solo\",\"spec\":{}}],"
                                "\"proxy\":{\"node\":\"x\"}}");
    config_free(c);
    c = parse_ok(pretty);
    assert_int_equal(config_prune(c, "other", &d), 0);
    assert_string_equal(c->raw, "{\"virtualNodes\":[{\"virtualNodeName\":\"other\",\"metadata\":"
                                "{\"note\":\"two  spaces, a \\\" and a \\\\\"},\"spec\":{}}],"
                                "\"proxy\":{\"node\":\"x\"}}");
    config_free(c);
    diag_free(&d);
}

/* HTTP/2 and gRPC are kept where the node meets them, as every protocol is: a router's grpc
 * listener and grpcRoute, a node's own http2 listener. */
/* describe-* output pasted whole ({"virtualNode": {...}}): read as the node inside, and a
 * pruned document's text drops a reached node's backends inside the wrapper too, so that it
 * parses again on its own (a rollout's rebuild and a URL reload parse it). */
static void test_wrapped_describe_output_prunes(void **state)
{
    (void)state;
    const char *json =
        "{\"virtualNodes\":[{\"virtualNode\":{\"virtualNodeName\":\"web\",\"spec\":{\"backends\":"
        "[{\"virtualService\":{\"virtualServiceName\":\"a.local\"}}]},\"status\":{\"status\":"
        "\"ACTIVE\"}}},{\"virtualNode\":{\"virtualNodeName\":\"a\",\"spec\":{\"listeners\":[{"
        "\"portMapping\":{\"port\":80,\"protocol\":\"http\"}}],\"serviceDiscovery\":{\"dns\":"
        "{\"hostname\":\"a.local\"}},\"backends\":[{\"virtualService\":{\"virtualServiceName\":"
        "\"z.local\"}}]}}},{\"virtualNodeName\":\"z\",\"spec\":{}}],"
        "\"virtualServices\":[{\"virtualService\":{\"virtualServiceName\":\"a.local\",\"spec\":"
        "{\"provider\":{\"virtualNode\":{\"virtualNodeName\":\"a\"}}}}},{\"virtualServiceName\":"
        "\"z.local\",\"spec\":{\"provider\":{\"virtualNode\":{\"virtualNodeName\":\"z\"}}}}]}";
    config_t *c = parse_ok(json);
    assert_int_equal(c->nnodes, 3);
    assert_int_equal(config_node(c, "a")->nbackends, 1);
    diag_t d = {0};
    assert_int_equal(config_prune(c, "web", &d), 0);
    assert_int_equal(c->nnodes, 2);
    assert_null(strstr(c->raw, "z.local"));
    assert_non_null(strstr(c->raw, "{\"virtualNode\":{\"virtualNodeName\":\"a\""));
    config_t *again = parse_ok(c->raw);
    assert_int_equal(again->nnodes, 2);
    assert_int_equal(config_node(again, "a")->nbackends, 0);
    config_free(again);
    config_free(c);
    /* A wrapper with a second member is not describe output: an element with unknown fields. */
    const char *odd = "{\"virtualNodes\":[{\"virtualNode\":{},\"spec\":{}}]}";
    assert_null(config_parse(odd, strlen(odd), "m.json", &d));
    assert_true(d.n >= 1);
    diag_free(&d);
}

static void test_http2_and_grpc_where_reached(void **state)
{
    (void)state;
    diag_t d = {0};
    config_t *c = parse_ok(WIDE_MESH("grpc", Z_GRPC, ""));
    assert_int_equal(config_prune(c, "a1", &d), 0); /* a1 calls z.local */
    assert_int_equal(d.n, 0);
    assert_int_equal(c->nroutes, 1);
    assert_int_equal(c->routes[0].kind, ROUTE_GRPC);
    assert_string_equal(c->routes[0].grpc_service, "x");
    assert_int_equal(config_router(c, "rz")->protocol[0], PROTO_GRPC);
    assert_string_equal(config_node(c, "z")->listeners[0].protocol, "grpc");
    config_free(c);
    c = parse_ok(WIDE_MESH("http2", Z_HTTP2, ""));
    assert_int_equal(config_prune(c, "z", &d), 0);
    assert_int_equal(d.n, 0);
    assert_string_equal(config_node(c, "z")->listeners[0].protocol, "http2");
    config_free(c);
}

/* The http2 and grpc members of a listener's timeout and connectionPool unions, and
 * http2Route's scheme. */
static void test_http2_and_grpc_shapes(void **state)
{
    (void)state;
    static const char *const protocols[] = {"http2", "grpc"};
    for (int i = 0; i < 2; i++) {
        char json[600];
        snprintf(json, sizeof json,
                 "{\"virtualNodes\":[{\"virtualNodeName\":\"n\",\"spec\":{\"listeners\":[{"
                 "\"portMapping\":{\"port\":50051,\"protocol\":\"%s\"},\"timeout\":{\"%s\":"
                 "{\"perRequest\":{\"unit\":\"s\",\"value\":7},\"idle\":{\"unit\":\"ms\","
                 "\"value\":900}}},\"connectionPool\":{\"%s\":{\"maxRequests\":33}}}]}}]}",
                 protocols[i], protocols[i], protocols[i]);
        config_t *c = parse_ok(json);
        const cfg_listener_t *l = &c->nodes[0].listeners[0];
        assert_string_equal(l->protocol, protocols[i]);
        assert_int_equal(l->per_request_ms, 7000);
        assert_int_equal(l->idle_ms, 900);
        assert_int_equal(l->max_connections, 33);
        assert_int_equal(l->max_pending, 0);
        config_free(c);
    }
    rejects("{\"virtualNodes\":[{\"virtualNodeName\":\"n\",\"spec\":{\"listeners\":[{"
            "\"portMapping\":{\"port\":50051,\"protocol\":\"grpc\"},\"connectionPool\":"
            "{\"grpc\":{\"maxRequests\":1,\"maxPendingRequests\":1}}}]}}]}",
            "m.json: virtualNodes[0].spec.listeners[0].connectionPool.grpc.maxPendingRequests: "
            "unknown field");
    config_t *c = parse_ok(WIDE_MESH("http2",
                                     Z_ROUTE("http2", "{\"prefix\":\"/\",\"scheme\":"
                                                      "\"https\"}"),
                                     ""));
    assert_int_equal(c->routes[0].kind, ROUTE_HTTP2);
    assert_int_equal(c->routes[0].scheme, 1);
    assert_int_equal(c->routes[1].scheme, -1); /* an httpRoute has none */
    config_free(c);
    c = parse_ok(WIDE_MESH("grpc", Z_GRPC, ""));
    assert_int_equal(c->routes[0].scheme, -1);
    config_free(c);
}

/* `check` validates the whole document: a bad regex in a route no node of interest reaches is
 * still an error, from config_parse. */
static void test_whole_document_is_validated(void **state)
{
    (void)state;
    rejects(WIDE_MESH("http", Z_HTTP,
                      ",{\"virtualRouterName\":\"rz\",\"routeName\":\"bad\",\"spec\":{"
                      "\"httpRoute\":{\"match\":{\"prefix\":\"/\",\"headers\":[{\"name\":"
                      "\"x\",\"match\":{\"regex\":\"[a\"}}]},\"action\":{"
                      "\"weightedTargets\":[{\"virtualNode\":\"z\",\"weight\":1}]}}}}"),
            "m.json: routes[2].spec.httpRoute.match.headers[0].match.regex: invalid regular "
            "expression \"[a\": Unmatched [, [^, [:, [., or [=");
}

/* Duplicate names are found in linear time and named against the first holder. */
static void test_duplicates_at_scale(void **state)
{
    (void)state;
    enum { N = 3000 };
    size_t cap = (size_t)N * 200 + 512, len = 0;
    char *json = malloc(cap);
    assert_non_null(json);
    len +=
        (size_t)snprintf(json + len, cap - len,
                         "{\"virtualNodes\":[{\"virtualNodeName\":\"v\",\"spec\":{\"listeners\":"
                         "[{\"portMapping\":{\"port\":80,\"protocol\":\"http\"}}]}}],"
                         "\"virtualRouters\":[{\"virtualRouterName\":\"r\",\"spec\":{"
                         "\"listeners\":[{\"portMapping\":{\"port\":80,\"protocol\":\"http\"}}]}}],"
                         "\"routes\":[");
    for (int i = 0; i < N; i++)
        len += (size_t)snprintf(json + len, cap - len,
                                "%s{\"virtualRouterName\":\"r\",\"routeName\":\"x%d\",\"spec\":{"
                                "\"httpRoute\":{\"match\":{\"prefix\":\"/\"},\"action\":{"
                                "\"weightedTargets\":[{\"virtualNode\":\"v\",\"weight\":1}]}}}}",
                                i ? "," : "", i == N - 1 ? 7 : i);
    snprintf(json + len, cap - len, "]}");
    rejects(json, "m.json: routes[2999].routeName: \"x7\" is already routes[7] of router r");
    free(json);
}

/* A node the tests below wrap in documents: valid on its own. */
#define ONE_NODE                                                                                   \
    "\"virtualNodes\":[{\"virtualNodeName\":\"web\",\"spec\":{\"listeners\":[{\"portMapping\":"    \
    "{\"port\":80,\"protocol\":\"http\"}}]}}]"

/* cJSON keeps every copy of a repeated key and lookups find the first, while jq, Python and Go
 * take the last: an override appended by an operator was dropped without a word. Refused, named
 * by path; the same key in different objects, and equal array elements, are no duplicates. */
static void test_duplicate_keys_are_refused(void **state)
{
    (void)state;
    rejects("{" ONE_NODE ",\"proxy\":{\"node\":\"web\",\"node\":\"cart-v1\"}}",
            "m.json: proxy.node: duplicate key \"node\" (2 times); keep only one");
    rejects("{" ONE_NODE "," ONE_NODE "," ONE_NODE "}",
            "m.json: virtualNodes: duplicate key \"virtualNodes\" (3 times); keep only one");
    rejects("{\"virtualNodes\":[{\"virtualNodeName\":\"web\",\"spec\":{\"listeners\":[{"
            "\"portMapping\":{\"port\":80,\"protocol\":\"http\"}},{\"portMapping\":{\"port\":81,"
            "\"port\":82,\"protocol\":\"http\"}}]}}]}",
            "m.json: virtualNodes[0].spec.listeners[1].portMapping.port: duplicate key \"port\" "
            "(2 times); keep only one");
    /* In describe-* output, and in a part of a resource the proxy ignores. */
    rejects("{\"virtualNodes\":[{\"virtualNode\":{\"virtualNodeName\":\"web\",\"spec\":{},"
            "\"spec\":{}}}]}",
            "m.json: virtualNodes[0].virtualNode.spec: duplicate key \"spec\" (2 times); keep "
            "only one");
    rejects("{\"virtualNodes\":[{\"virtualNodeName\":\"web\",\"metadata\":{\"a\":1,\"b\":2,"
            "\"a\":3},\"spec\":{}}]}",
            "m.json: virtualNodes[0].metadata.a: duplicate key \"a\" (2 times); keep only one");
    /* Every duplicate is reported, and nothing else is checked on top of them. */
    const char *two = "{\"mesh\":{\"meshName\":\"a\",\"meshName\":\"b\"},\"proxy\":{\"node\":"
                      "\"x\",\"node\":\"y\"}}";
    diag_t d = {0};
    assert_null(config_parse(two, strlen(two), "m.json", &d));
    assert_int_equal(d.n, 2);
    assert_string_equal(
        d.lines[0], "m.json: mesh.meshName: duplicate key \"meshName\" (2 times); keep only one");
    assert_string_equal(d.lines[1],
                        "m.json: proxy.node: duplicate key \"node\" (2 times); keep only one");
    diag_free(&d);
    config_free(parse_ok("{\"virtualNodes\":[{\"virtualNode\":{\"virtualNodeName\":\"web\","
                         "\"spec\":{\"listeners\":[{\"portMapping\":{\"port\":80,\"protocol\":"
                         "\"http\"}},{\"portMapping\":{\"port\":81,\"protocol\":\"http\"}}]}}},"
                         "{\"virtualNodeName\":\"b\",\"spec\":{}}],\"mesh\":{\"meshName\":\"m\","
                         "\"spec\":{}},\"proxy\":{\"node\":\"web\"}}"));
}

/* One document: whitespace may follow it, nothing else (cJSON stops at the value's end). */
static void test_content_after_the_document_is_refused(void **state)
{
    (void)state;
    rejects("{" ONE_NODE "} garbage",
            "m.json: $: unexpected content after the JSON document at byte 114 (line 1); a "
            "config is one document");
    rejects("{" ONE_NODE "}\n{" ONE_NODE "}\n",
            "m.json: $: unexpected content after the JSON document at byte 114 (line 2); a "
            "config is one document");
    rejects("{" ONE_NODE "}\n\n,",
            "m.json: $: unexpected content after the JSON document at byte 115 (line 3); a "
            "config is one document");
    /* A NUL inside the length is content too: the whole buffer is the document. */
    diag_t d = {0};
    const char nul[] = "{" ONE_NODE "}\0{}";
    assert_null(config_parse(nul, sizeof nul - 1, "m.json", &d));
    assert_int_equal(d.n, 1);
    assert_string_equal(d.lines[0], "m.json: $: unexpected content after the JSON document at "
                                    "byte 113 (line 1); a config is one document");
    diag_free(&d);
    config_free(parse_ok("\xEF\xBB\xBF \r\n\t{" ONE_NODE "} \r\n\t\n"));
}

/* Finding duplicates sorts each object's names: an object of 100,000 members costs n log n,
 * and 100,000 copies of one key are one message. */
static void test_duplicate_keys_at_scale(void **state)
{
    (void)state;
    enum { N = 100000 };
    size_t cap = (size_t)N * 16 + 512, len = 0;
    char *json = malloc(cap);
    assert_non_null(json);
    for (int same = 0; same < 2; same++) {
        len = (size_t)snprintf(json, cap,
                               "{" ONE_NODE ",\"mesh\":{\"meshName\":\"m\","
                               "\"metadata\":{");
        for (int i = 0; i < N; i++)
            len += (size_t)snprintf(json + len, cap - len, "%s\"k%d\":%d", i ? "," : "",
                                    same ? 0 : i, i);
        snprintf(json + len, cap - len, "}}}");
        if (same)
            rejects(json, "m.json: mesh.metadata.k0: duplicate key \"k0\" (100000 times); keep "
                          "only one");
        else
            config_free(parse_ok(json));
    }
    free(json);
}

/* The X-Ray sampling rule manifest is read the same way. */
static void test_sampling_manifest_is_one_document(void **state)
{
    (void)state;
    static const char *const bad[][2] = {
        {"{\"version\":2,\"default\":{\"fixed_target\":1,\"rate\":0.1,\"rate\":1}}",
         "default.rate: duplicate key \"rate\" (2 times); keep only one"},
        {"{\"version\":2,\"default\":{\"fixed_target\":1,\"rate\":0.1}}\n]",
         "$: unexpected content after the JSON document at byte 54 (line 2); a config is one "
         "document"},
    };
    char path[] = "/tmp/test_config_rules_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    assert_non_null(f);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(ftruncate(fd, 0), 0);
        rewind(f);
        fputs(bad[i][0], f);
        fflush(f);
        sampling_rules_cfg_t r;
        diag_t d = {0};
        assert_int_equal(sampling_rules_load(path, &r, &d), -1);
        assert_int_equal(d.n, 1);
        char want[300];
        snprintf(want, sizeof want, "%s: %s", path, bad[i][1]);
        assert_string_equal(d.lines[0], want);
        diag_free(&d);
    }
    fclose(f);
    unlink(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parses_app_mesh_shapes),
        cmocka_unit_test(test_route_errors),
        cmocka_unit_test(test_reference_and_node_errors),
        cmocka_unit_test(test_tls_shapes),
        cmocka_unit_test(test_listener_tls_errors),
        cmocka_unit_test(test_client_tls_errors),
        cmocka_unit_test(test_reports_every_problem),
        cmocka_unit_test(test_not_json),
        cmocka_unit_test(test_fuzzer_findings),
        cmocka_unit_test(test_tcp_routes),
        cmocka_unit_test(test_prefixless_match),
        cmocka_unit_test(test_mesh_ip_preference),
        cmocka_unit_test(test_default_retry_setting),
        cmocka_unit_test(test_prune_keeps_what_the_node_reaches),
        cmocka_unit_test(test_wrapped_describe_output_prunes),
        cmocka_unit_test(test_http2_and_grpc_where_reached),
        cmocka_unit_test(test_http2_and_grpc_shapes),
        cmocka_unit_test(test_whole_document_is_validated),
        cmocka_unit_test(test_duplicates_at_scale),
        cmocka_unit_test(test_duplicate_keys_are_refused),
        cmocka_unit_test(test_content_after_the_document_is_refused),
        cmocka_unit_test(test_duplicate_keys_at_scale),
        cmocka_unit_test(test_sampling_manifest_is_one_document),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
