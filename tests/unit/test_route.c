/* routing/: path normalization, the weighted schedule, every match kind, priority order and
 * the answers for requests that match nothing. */
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

#include "routing/path.h"
#include "routing/route.h"

static void test_normalize(void **state)
{
    (void)state;
    const char *cases[][2] = {
        {"/a/b/../c", "/a/c"}, {"//a///b", "/a/b"}, {"/a/./b/", "/a/b/"}, {"/..", "/"},
        {"/a/b/..", "/a/"},    {"", "/"},           {"/a/.", "/a/"},      {"/../../x", "/x"},
        {"/a/..b/c", "/a/..b/c"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char out[64];
        size_t n = path_normalize(cases[i][0], strlen(cases[i][0]), out);
        assert_string_equal(out, cases[i][1]);
        assert_int_equal(n, strlen(cases[i][1]));
    }
}

static void test_schedule_is_exact_and_smooth(void **state)
{
    (void)state;
    uint8_t s[1000];
    unsigned w[] = {90, 10};
    assert_int_equal(route_schedule(w, 2, s), 100);
    unsigned count[2] = {0};
    for (int i = 0; i < 100; i++)
        count[s[i]]++;
    assert_int_equal(count[0], 90);
    assert_int_equal(count[1], 10);
    /* smooth: the 10% target is spread out, one in every 10 */
    for (int k = 0; k < 10; k++) {
        unsigned in_window = 0;
        for (int i = k * 10; i < k * 10 + 10; i++)
            in_window += s[i] == 1;
        assert_int_equal(in_window, 1);
    }
    unsigned three[] = {1, 1, 1}, zero[] = {0, 0}, one_zero[] = {0, 100};
    assert_int_equal(route_schedule(three, 3, s), 3);
    assert_true(s[0] != s[1] && s[1] != s[2] && s[0] != s[2]);
    assert_int_equal(route_schedule(zero, 2, s), 0);
    assert_int_equal(route_schedule(one_zero, 2, s), 100);
    for (int i = 0; i < 100; i++)
        assert_int_equal(s[i], 1);
}

/* ---- a table with one router and routes of every match kind ---- */

#define NODE(name)                                                                                 \
    "{\"virtualNodeName\":\"" name "\",\"spec\":{\"listeners\":[{\"portMapping\":{\"port\":80,"   \
    "\"protocol\":\"http\"}}]}}"
#define ROUTE(name, prio, match, target)                                                           \
    "{\"virtualRouterName\":\"r\",\"routeName\":\"" name "\",\"spec\":{" prio "\"httpRoute\":{"   \
    "\"match\":" match ",\"action\":{\"weightedTargets\":[{\"virtualNode\":\"" target "\","        \
    "\"weight\":1}]}}}}"

static const char *mesh =
    "{\"virtualNodes\":[{\"virtualNodeName\":\"web\",\"spec\":{\"backends\":["
    "{\"virtualService\":{\"virtualServiceName\":\"svc.local\"}},"
    "{\"virtualService\":{\"virtualServiceName\":\"zero.local\"}},"
    "{\"virtualService\":{\"virtualServiceName\":\"bare.local\"}}]}}," NODE("v1") "," NODE("v2") ","
    NODE("exact") "," NODE("regex") "," NODE("method") "," NODE("hexact") "," NODE("hprefix") ","
    NODE("hsuffix") "," NODE("hregex") "," NODE("hrange") "," NODE("hinvert") "," NODE("query") ","
    NODE("qpresent") "," NODE("canary") "],"
    "\"virtualServices\":[{\"virtualServiceName\":\"svc.local\",\"spec\":{\"provider\":"
    "{\"virtualRouter\":{\"virtualRouterName\":\"r\"}}}},"
    "{\"virtualServiceName\":\"zero.local\",\"spec\":{\"provider\":{\"virtualRouter\":"
    "{\"virtualRouterName\":\"z\"}}}},{\"virtualServiceName\":\"bare.local\",\"spec\":{}}],"
    "\"virtualRouters\":[{\"virtualRouterName\":\"r\",\"spec\":{\"listeners\":[{\"portMapping\":"
    "{\"port\":80,\"protocol\":\"http\"}}]}},{\"virtualRouterName\":\"z\",\"spec\":{\"listeners\":"
    "[{\"portMapping\":{\"port\":80,\"protocol\":\"http\"}}]}}],"
    "\"routes\":["
    ROUTE("catchall", "\"priority\":1000,", "{\"prefix\":\"/\"}", "v1") ","
    ROUTE("canary", "\"priority\":0,", "{\"prefix\":\"/\",\"headers\":[{\"name\":\"x-canary\","
          "\"match\":{\"exact\":\"true\"}}]}", "canary") ","
    ROUTE("exact", "\"priority\":1,", "{\"path\":{\"exact\":\"/exact\"}}", "exact") ","
    ROUTE("regex", "\"priority\":2,", "{\"path\":{\"regex\":\"/items/[0-9]+\"}}", "regex") ","
    ROUTE("method", "\"priority\":3,", "{\"prefix\":\"/m\",\"method\":\"DELETE\"}", "method") ","
    ROUTE("hexact", "\"priority\":4,", "{\"prefix\":\"/h\",\"headers\":[{\"name\":\"x-e\","
          "\"match\":{\"exact\":\"yes\"}}]}", "hexact") ","
    ROUTE("hprefix", "\"priority\":5,", "{\"prefix\":\"/h\",\"headers\":[{\"name\":\"x-p\","
          "\"match\":{\"prefix\":\"ab\"}}]}", "hprefix") ","
    ROUTE("hsuffix", "\"priority\":6,", "{\"prefix\":\"/h\",\"headers\":[{\"name\":\"x-s\","
          "\"match\":{\"suffix\":\"yz\"}}]}", "hsuffix") ","
    ROUTE("hregex", "\"priority\":7,", "{\"prefix\":\"/h\",\"headers\":[{\"name\":\"x-r\","
          "\"match\":{\"regex\":\"v[0-9]\"}}]}", "hregex") ","
    ROUTE("hrange", "\"priority\":8,", "{\"prefix\":\"/h\",\"headers\":[{\"name\":\"x-n\","
          "\"match\":{\"range\":{\"start\":10,\"end\":20}}}]}", "hrange") ","
    ROUTE("hinvert", "\"priority\":9,", "{\"prefix\":\"/inv\",\"headers\":[{\"name\":\"x-i\","
          "\"invert\":true,\"match\":{\"exact\":\"no\"}}]}", "hinvert") ","
    ROUTE("query", "\"priority\":10,", "{\"prefix\":\"/q\",\"queryParameters\":[{\"name\":\"v\","
          "\"match\":{\"exact\":\"2\"}}]}", "query") ","
    ROUTE("qpresent", "\"priority\":11,", "{\"prefix\":\"/q\",\"queryParameters\":[{\"name\":"
          "\"debug\"}]}", "qpresent") ","
    "{\"virtualRouterName\":\"z\",\"routeName\":\"zero\",\"spec\":{\"httpRoute\":{\"match\":"
    "{\"prefix\":\"/\"},\"action\":{\"weightedTargets\":[{\"virtualNode\":\"v1\",\"weight\":0},"
    "{\"virtualNode\":\"v2\",\"weight\":0}]}}}}"
    "]}";

typedef struct fake {
    const char *names[4], *values[4];
} fake_t;

static const char *fake_header(void *ctx, const char *name, size_t *len)
{
    fake_t *f = ctx;
    for (int i = 0; i < 4 && f->names[i]; i++)
        if (strcasecmp(f->names[i], name) == 0) {
            *len = strlen(f->values[i]);
            return f->values[i];
        }
    return NULL;
}

static route_table_t *table(registry_t *reg)
{
    diag_t d = {0};
    config_t *c = config_parse(mesh, strlen(mesh), "m.json", &d);
    for (size_t i = 0; i < d.n; i++)
        fprintf(stderr, "%s\n", d.lines[i]);
    assert_non_null(c);
    route_table_t *rt = route_table_build(c, "web", reg, &d);
    for (size_t i = 0; i < d.n; i++)
        fprintf(stderr, "%s\n", d.lines[i]);
    assert_non_null(rt);
    diag_free(&d);
    return rt;
}

/* The node a request is routed to ("" when answered locally, with the status appended). */
static const char *route_to(route_table_t *rt, const char *host, int method, const char *target,
                            fake_t *h)
{
    static char out[128];
    fake_t none = {{NULL}, {NULL}};
    const char *q = strchr(target, '?');
    route_request_t rr = {.method = method, .host = host, .host_len = strlen(host),
                          .path = target, .path_len = q ? (size_t)(q - target) : strlen(target),
                          .query = q ? q + 1 : NULL, .query_len = q ? strlen(q + 1) : 0,
                          .header = fake_header, .ctx = h ? h : &none};
    char path[64];
    snprintf(path, sizeof path, "%.*s", (int)rr.path_len, target);
    rr.path = path;
    route_result_t r;
    route_egress(rt, &rr, &r);
    if (!r.cluster) {
        snprintf(out, sizeof out, "%d", r.status);
        return out;
    }
    /* cds_egress_mesh_NODE_http_80 */
    const char *node = r.cluster->name + strlen("cds_egress_mesh_");
    snprintf(out, sizeof out, "%.*s", (int)(strstr(node, "_http_") - node), node);
    return out;
}

static void test_every_match_kind(void **state)
{
    (void)state;
    registry_t reg = {0};
    route_table_t *rt = table(&reg);
    fake_t canary = {{"x-canary"}, {"true"}};
    assert_string_equal(route_to(rt, "svc.local", HTTP_GET, "/any", &canary), "canary");
    assert_string_equal(route_to(rt, "svc.local", HTTP_GET, "/any", NULL), "v1");
    assert_string_equal(route_to(rt, "svc.local", HTTP_GET, "/exact", NULL), "exact");
    assert_string_equal(route_to(rt, "svc.local", HTTP_GET, "/exact/more", NULL), "v1");
    assert_string_equal(route_to(rt, "svc.local", HTTP_GET, "/items/42", NULL), "regex");
    assert_string_equal(route_to(rt, "svc.local", HTTP_GET, "/items/42x", NULL), "v1");
    assert_string_equal(route_to(rt, "svc.local", HTTP_DELETE, "/m", NULL), "method");
    assert_string_equal(route_to(rt, "svc.local", HTTP_GET, "/m", NULL), "v1");
    fake_t e = {{"x-e"}, {"yes"}}, p = {{"x-p"}, {"abc"}}, s = {{"x-s"}, {"xyz"}};
    fake_t re = {{"x-r"}, {"v7"}}, re_no = {{"x-r"}, {"v77"}};
    assert_string_equal(route_to(rt, "svc.local", HTTP_GET, "/h", &e), "hexact");
    assert_string_equal(route_to(rt, "svc.local", HTTP_GET, "/h", &p), "hprefix");
    assert_string_equal(route_to(rt, "svc.local", HTTP_GET, "/h", &s), "hsuffix");
    assert_string_equal(route_to(rt, "svc.local", HTTP_GET, "/h", &re), "hregex");
    assert_string_equal(route_to(rt, "svc.local", HTTP_GET, "/h", &re_no), "v1");
    fake_t n10 = {{"x-n"}, {"10"}}, n19 = {{"x-n"}, {"19"}}, n20 = {{"x-n"}, {"20"}};
    fake_t nx = {{"x-n"}, {"15x"}};
    assert_string_equal(route_to(rt, "svc.local", HTTP_GET, "/h", &n10), "hrange");
    assert_string_equal(route_to(rt, "svc.local", HTTP_GET, "/h", &n19), "hrange");
    assert_string_equal(route_to(rt, "svc.local", HTTP_GET, "/h", &n20), "v1"); /* [start, end) */
    assert_string_equal(route_to(rt, "svc.local", HTTP_GET, "/h", &nx), "v1");
    fake_t no = {{"x-i"}, {"no"}}, other = {{"x-i"}, {"yes"}};
    assert_string_equal(route_to(rt, "svc.local", HTTP_GET, "/inv", &no), "v1");
    assert_string_equal(route_to(rt, "svc.local", HTTP_GET, "/inv", &other), "hinvert");
    assert_string_equal(route_to(rt, "svc.local", HTTP_GET, "/inv", NULL), "hinvert");
    assert_string_equal(route_to(rt, "svc.local", HTTP_GET, "/q?a=1&v=2", NULL), "query");
    assert_string_equal(route_to(rt, "svc.local", HTTP_GET, "/q?v=22", NULL), "v1");
    assert_string_equal(route_to(rt, "svc.local", HTTP_GET, "/q?x&debug", NULL), "qpresent");
    assert_string_equal(route_to(rt, "SVC.local", HTTP_GET, "/", NULL), "v1");
    assert_string_equal(route_to(rt, "svc.local.", HTTP_GET, "/", NULL), "v1");
    route_table_unref(rt);
    registry_free(&reg);
}

static void test_no_route_answers(void **state)
{
    (void)state;
    registry_t reg = {0};
    route_table_t *rt = table(&reg);
    assert_string_equal(route_to(rt, "other.local", HTTP_GET, "/", NULL), "404");
    assert_string_equal(route_to(rt, "zero.local", HTTP_GET, "/", NULL), "503");
    assert_string_equal(route_to(rt, "bare.local", HTTP_GET, "/", NULL), "503");
    route_table_unref(rt);
    registry_free(&reg);
}

static void test_clusters_and_counters_outlive_reloads(void **state)
{
    (void)state;
    registry_t reg = {0};
    route_table_t *a = table(&reg);
    unsigned clusters = 0;
    for (cluster_t *c = reg.clusters; c; c = c->next)
        clusters++;
    route_table_t *b = table(&reg);
    unsigned again = 0;
    for (cluster_t *c = reg.clusters; c; c = c->next)
        again++;
    assert_int_equal(clusters, again);
    route_table_unref(a);
    assert_string_equal(route_to(b, "svc.local", HTTP_GET, "/exact", NULL), "exact");
    route_table_unref(b);
    registry_free(&reg);
}

/* A regex that does not compile is an error of the whole document (config_validate), even in
 * a router this node does not reach: the route table only holds what the node reaches. */
static void test_invalid_regex_is_reported(void **state)
{
    (void)state;
    const char *bad =
        "{\"virtualNodes\":[{\"virtualNodeName\":\"web\",\"spec\":{}}," NODE("v1") "],"
        "\"virtualRouters\":[{\"virtualRouterName\":\"r\",\"spec\":{\"listeners\":[{\"portMapping\":"
        "{\"port\":80,\"protocol\":\"http\"}}]}}],\"routes\":["
        ROUTE("x", "", "{\"path\":{\"regex\":\"/a(b\"}}", "v1") "]}";
    diag_t d = {0};
    registry_t reg = {0};
    assert_null(config_parse(bad, strlen(bad), "m.json", &d));
    assert_int_equal(d.n, 1);
    assert_non_null(strstr(d.lines[0], "m.json: routes[0].spec.httpRoute.match.path.regex: "
                                       "invalid regular expression \"/a(b\""));
    diag_free(&d);
    registry_free(&reg);
}

/* ---- App Mesh's default retry policy ---- */

/* web -> svc.local (router r: "own" with a retryPolicy, "plain" without, "raw" a tcpRoute on
 * the tcp listener) and node.local (node v1); `proxy` is the document's proxy object. */
#define RETRY_MESH(proxy)                                                                          \
    "{\"virtualNodes\":[{\"virtualNodeName\":\"web\",\"spec\":{\"backends\":["                     \
    "{\"virtualService\":{\"virtualServiceName\":\"svc.local\"}},"                                 \
    "{\"virtualService\":{\"virtualServiceName\":\"node.local\"}}]}},"                             \
    "{\"virtualNodeName\":\"v1\",\"spec\":{\"listeners\":[{\"portMapping\":{\"port\":80,"          \
    "\"protocol\":\"http\"}}]}},{\"virtualNodeName\":\"db\",\"spec\":{\"listeners\":[{"            \
    "\"portMapping\":{\"port\":6379,\"protocol\":\"tcp\"}}]}}],"                                   \
    "\"virtualServices\":[{\"virtualServiceName\":\"svc.local\",\"spec\":{\"provider\":"           \
    "{\"virtualRouter\":{\"virtualRouterName\":\"r\"}}}},{\"virtualServiceName\":\"node.local\","  \
    "\"spec\":{\"provider\":{\"virtualNode\":{\"virtualNodeName\":\"v1\"}}}}],"                    \
    "\"virtualRouters\":[{\"virtualRouterName\":\"r\",\"spec\":{\"listeners\":["                   \
    "{\"portMapping\":{\"port\":80,\"protocol\":\"http\"}},"                                       \
    "{\"portMapping\":{\"port\":6379,\"protocol\":\"tcp\"}}]}}],\"routes\":["                      \
    "{\"virtualRouterName\":\"r\",\"routeName\":\"own\",\"spec\":{\"httpRoute\":{\"match\":"       \
    "{\"prefix\":\"/own\",\"port\":80},\"action\":{\"weightedTargets\":[{\"virtualNode\":\"v1\","  \
    "\"weight\":1,\"port\":80}]},\"retryPolicy\":{\"maxRetries\":5,\"perRetryTimeout\":"           \
    "{\"unit\":\"ms\",\"value\":250},\"httpRetryEvents\":[\"client-error\"]}}}},"                  \
    "{\"virtualRouterName\":\"r\",\"routeName\":\"plain\",\"spec\":{\"httpRoute\":{\"match\":"     \
    "{\"prefix\":\"/\",\"port\":80},\"action\":{\"weightedTargets\":[{\"virtualNode\":\"v1\","     \
    "\"weight\":1,\"port\":80}]}}}},"                                                              \
    "{\"virtualRouterName\":\"r\",\"routeName\":\"raw\",\"spec\":{\"tcpRoute\":{\"match\":"        \
    "{\"port\":6379},\"action\":{\"weightedTargets\":[{\"virtualNode\":\"db\",\"weight\":1,"       \
    "\"port\":6379}]}}}}]" proxy "}"

static route_table_t *build(const char *json, registry_t *reg, diag_t *d)
{
    config_t *c = config_parse(json, strlen(json), "m.json", d);
    assert_non_null(c);
    return route_table_build(c, "web", reg, d);
}

static route_result_t egress(route_table_t *rt, const char *host, uint16_t port, const char *path)
{
    fake_t none = {{NULL}, {NULL}};
    route_request_t rr = {.method = HTTP_GET, .host = host, .host_len = strlen(host),
                          .port = port, .path = path, .path_len = strlen(path),
                          .header = fake_header, .ctx = &none};
    route_result_t r;
    route_egress(rt, &rr, &r);
    return r;
}

static void test_default_retry_policy(void **state)
{
    (void)state;
    unsetenv("REMORA_DEFAULT_RETRY_POLICY");
    registry_t reg = {0};
    diag_t d = {0};
    route_table_t *rt = build(RETRY_MESH(""), &reg, &d);
    assert_non_null(rt);
    assert_int_equal(route_table_config(rt)->proxy.default_retry_policy, 1);
    /* No retryPolicy: App Mesh's default (2 retries on 503, reset, connect failure; no per-try
     * timeout, the route's per-request timeout bounds every attempt). */
    route_result_t r = egress(rt, "svc.local", 80, "/x");
    assert_non_null(r.cluster);
    assert_int_equal(r.retry.max_retries, 2);
    assert_int_equal(r.retry.per_try_ms, 0);
    assert_int_equal(r.retry.events, RETRY_HTTP_503 | RETRY_STREAM_ERROR | RETRY_CONNECTION_ERROR);
    assert_int_equal(r.timeout_ms, ROUTE_DEFAULT_TIMEOUT_MS);
    /* Its own policy wins, whole. */
    r = egress(rt, "svc.local", 80, "/own");
    assert_int_equal(r.retry.max_retries, 5);
    assert_int_equal(r.retry.per_try_ms, 250);
    assert_int_equal(r.retry.events, RETRY_CLIENT_ERROR);
    /* A virtual node provider gets the default too (App Mesh adds it to their routes). */
    r = egress(rt, "node.local", 80, "/");
    assert_non_null(r.cluster);
    assert_int_equal(r.retry.max_retries, 2);
    /* tcpRoutes keep their connect retries. */
    assert_int_equal(route_egress_port(rt, 6379, &r), PORT_TCP);
    assert_int_equal(r.retry.max_retries, ROUTE_TCP_CONNECT_RETRIES);
    assert_int_equal(r.retry.events, RETRY_CONNECTION_ERROR);
    route_table_unref(rt);

    /* Off in the document. */
    rt = build(RETRY_MESH(",\"proxy\":{\"defaultRetryPolicy\":false}"), &reg, &d);
    assert_non_null(rt);
    r = egress(rt, "svc.local", 80, "/x");
    assert_int_equal(r.retry.max_retries, 0);
    assert_int_equal(r.retry.events, 0);
    assert_int_equal(egress(rt, "node.local", 80, "/").retry.events, 0);
    assert_int_equal(egress(rt, "svc.local", 80, "/own").retry.max_retries, 5);
    route_table_unref(rt);

    /* The environment wins over the document, both ways. */
    setenv("REMORA_DEFAULT_RETRY_POLICY", "1", 1);
    rt = build(RETRY_MESH(",\"proxy\":{\"defaultRetryPolicy\":false}"), &reg, &d);
    assert_int_equal(egress(rt, "svc.local", 80, "/x").retry.max_retries, 2);
    route_table_unref(rt);
    setenv("REMORA_DEFAULT_RETRY_POLICY", "0", 1);
    rt = build(RETRY_MESH(""), &reg, &d);
    assert_int_equal(route_table_config(rt)->proxy.default_retry_policy, 0);
    assert_int_equal(egress(rt, "svc.local", 80, "/x").retry.max_retries, 0);
    route_table_unref(rt);
    setenv("REMORA_DEFAULT_RETRY_POLICY", "yes", 1);
    assert_null(build(RETRY_MESH(""), &reg, &d));
    assert_int_equal(d.n, 1);
    assert_string_equal(d.lines[0],
                        "settings: REMORA_DEFAULT_RETRY_POLICY: must be 0 or 1, got \"yes\"");
    unsetenv("REMORA_DEFAULT_RETRY_POLICY");
    diag_free(&d);
    registry_free(&reg);
}

/* ---- matches with neither prefix nor path ---- */

/* App Mesh's howto-multiple-listeners: a router with two listeners whose routes match by port
 * alone; a header route without a path; priority first, then longer paths first, where a
 * match without a path ranks as prefix "/". */
#define PORTS_MESH                                                                                 \
    "{\"virtualNodes\":[{\"virtualNodeName\":\"web\",\"spec\":{\"backends\":["                     \
    "{\"virtualService\":{\"virtualServiceName\":\"svc.local\"}}]}}," NODE("p80") ","              \
    NODE("p81") "," NODE("hdr") "," NODE("api") "," NODE("tail") "],"                              \
    "\"virtualServices\":[{\"virtualServiceName\":\"svc.local\",\"spec\":{\"provider\":"           \
    "{\"virtualRouter\":{\"virtualRouterName\":\"r\"}}}}],"                                        \
    "\"virtualRouters\":[{\"virtualRouterName\":\"r\",\"spec\":{\"listeners\":["                   \
    "{\"portMapping\":{\"port\":80,\"protocol\":\"http\"}},"                                       \
    "{\"portMapping\":{\"port\":81,\"protocol\":\"http\"}}]}}],\"routes\":["                       \
    PROUTE("tail", "", "{\"port\":80}") "," PROUTE("p81", "", "{\"port\":81}") ","                 \
    PROUTE("api", "", "{\"prefix\":\"/api\",\"port\":80}") ","                                     \
    PROUTE("hdr", "\"priority\":1,", "{\"port\":80,\"headers\":[{\"name\":\"x-v\","                \
           "\"match\":{\"exact\":\"2\"}}]}") ","                                                   \
    PROUTE("p80", "", "{\"prefix\":\"/\",\"port\":80}") "]}"
#define PROUTE(name, prio, match)                                                                  \
    "{\"virtualRouterName\":\"r\",\"routeName\":\"" name "\",\"spec\":{" prio "\"httpRoute\":{"   \
    "\"match\":" match ",\"action\":{\"weightedTargets\":[{\"virtualNode\":\"" name "\","          \
    "\"weight\":1,\"port\":80}]}}}}"

static const char *routed(route_table_t *rt, uint16_t port, const char *path, fake_t *h)
{
    static char out[64];
    fake_t none = {{NULL}, {NULL}};
    route_request_t rr = {.method = HTTP_GET, .host = "svc.local", .host_len = 9, .port = port,
                          .path = path, .path_len = strlen(path), .header = fake_header,
                          .ctx = h ? h : &none};
    route_result_t r;
    route_egress(rt, &rr, &r);
    if (!r.cluster) {
        snprintf(out, sizeof out, "%d", r.status);
        return out;
    }
    const char *node = r.cluster->name + strlen("cds_egress_mesh_");
    snprintf(out, sizeof out, "%.*s", (int)(strstr(node, "_http_") - node), node);
    return out;
}

static void test_prefixless_matches(void **state)
{
    (void)state;
    registry_t reg = {0};
    diag_t d = {0};
    route_table_t *rt = build(PORTS_MESH, &reg, &d);
    for (size_t i = 0; i < d.n; i++)
        fprintf(stderr, "%s\n", d.lines[i]);
    assert_non_null(rt);
    fake_t v2 = {{"x-v"}, {"2"}};
    assert_string_equal(routed(rt, 81, "/anything", NULL), "p81"); /* by port alone */
    assert_string_equal(routed(rt, 81, "/api/x", &v2), "p81");
    assert_string_equal(routed(rt, 80, "/api/x", &v2), "hdr"); /* priority before length */
    assert_string_equal(routed(rt, 80, "/", &v2), "hdr");
    assert_string_equal(routed(rt, 80, "/api/x", NULL), "api"); /* longer match first */
    /* "tail" (no path) and "p80" (prefix /) rank alike: the document's order decides. */
    assert_string_equal(routed(rt, 80, "/other", NULL), "tail");
    assert_string_equal(routed(rt, 80, "*", NULL), "tail"); /* every path, even not "/..." */
    assert_string_equal(routed(rt, 82, "/", NULL), "404"); /* two listeners: the port decides */
    route_table_unref(rt);
    diag_free(&d);
    registry_free(&reg);
}

/* ---- a table holds what its node reaches ---- */

/* web reaches svc.local (router r, node v1); router far and nodes far1..far3 are the rest of
 * the mesh. */
#define FAR_MESH                                                                                   \
    "{\"virtualNodes\":[{\"virtualNodeName\":\"web\",\"spec\":{\"backends\":["                     \
    "{\"virtualService\":{\"virtualServiceName\":\"svc.local\"}}]}}," NODE("v1") ","               \
    NODE("far1") "," NODE("far2") "," NODE("far3") "],"                                            \
    "\"virtualServices\":[{\"virtualServiceName\":\"svc.local\",\"spec\":{\"provider\":"           \
    "{\"virtualRouter\":{\"virtualRouterName\":\"r\"}}}},{\"virtualServiceName\":\"far.local\","   \
    "\"spec\":{\"provider\":{\"virtualRouter\":{\"virtualRouterName\":\"far\"}}}}],"               \
    "\"virtualRouters\":[{\"virtualRouterName\":\"far\",\"spec\":{\"listeners\":[{"                \
    "\"portMapping\":{\"port\":80,\"protocol\":\"http\"}}]}},{\"virtualRouterName\":\"r\","        \
    "\"spec\":{\"listeners\":[{\"portMapping\":{\"port\":80,\"protocol\":\"http\"}}]}}],"          \
    "\"routes\":[" FROUTE("far", "f1", "far1") "," FROUTE("r", "one", "v1") ","                     \
    FROUTE("far", "f2", "far2") "," FROUTE("far", "f3", "far3") "]}"
#define FROUTE(router, name, target)                                                               \
    "{\"virtualRouterName\":\"" router "\",\"routeName\":\"" name "\",\"spec\":{\"httpRoute\":{"   \
    "\"match\":{\"prefix\":\"/\"},\"action\":{\"weightedTargets\":[{\"virtualNode\":\"" target     \
    "\",\"weight\":1}]}}}}"

static void test_table_holds_what_the_node_reaches(void **state)
{
    (void)state;
    registry_t reg = {0};
    diag_t d = {0};
    route_table_t *rt = build(FAR_MESH, &reg, &d);
    assert_non_null(rt);
    const config_t *c = route_table_config(rt);
    assert_int_equal(c->document.routes, 4);
    assert_int_equal(c->nroutes, 1);
    assert_int_equal(c->nnodes, 2);
    assert_null(config_node(c, "far1"));
    assert_string_equal(route_table_node(rt)->name, "web");
    /* Clusters only for what is reached: nothing discovers the far nodes. */
    for (cluster_t *cl = reg.clusters; cl; cl = cl->next)
        assert_null(strstr(cl->name, "far"));
    assert_string_equal(routed(rt, 80, "/", NULL), "v1");
    /* Messages still name the document's places. */
    assert_int_equal(c->routes[0].index, 1);
    route_table_unref(rt);
    diag_free(&d);
    registry_free(&reg);
}

/* The schedule keeps only one period of the reduced weights: 90/10 is 9/1, and a route's
 * picks over 100 requests are still exactly 90 and 10, one in every ten. */
static void test_reduced_schedules_stay_exact(void **state)
{
    (void)state;
    const char *json =
        "{\"virtualNodes\":[{\"virtualNodeName\":\"web\",\"spec\":{\"backends\":["
        "{\"virtualService\":{\"virtualServiceName\":\"svc.local\"}}]}}," NODE("v1") "," NODE("v2")
        "],\"virtualServices\":[{\"virtualServiceName\":\"svc.local\",\"spec\":{\"provider\":"
        "{\"virtualRouter\":{\"virtualRouterName\":\"r\"}}}}],\"virtualRouters\":["
        "{\"virtualRouterName\":\"r\",\"spec\":{\"listeners\":[{\"portMapping\":{\"port\":80,"
        "\"protocol\":\"http\"}}]}}],\"routes\":[{\"virtualRouterName\":\"r\",\"routeName\":"
        "\"c\",\"spec\":{\"httpRoute\":{\"match\":{\"prefix\":\"/\"},\"action\":{"
        "\"weightedTargets\":[{\"virtualNode\":\"v1\",\"weight\":90},{\"virtualNode\":\"v2\","
        "\"weight\":10}]}}}}]}";
    registry_t reg = {0};
    diag_t d = {0};
    route_table_t *rt = build(json, &reg, &d);
    assert_non_null(rt);
    unsigned v2 = 0;
    for (int i = 0; i < 100; i++) {
        int is_v2 = strcmp(routed(rt, 80, "/", NULL), "v2") == 0;
        v2 += (unsigned)is_v2;
        if (i % 10 == 9) {
            assert_int_equal(v2, (unsigned)(i / 10 + 1)); /* one in every ten */
        }
    }
    assert_int_equal(v2, 10);
    route_table_unref(rt);
    diag_free(&d);
    registry_free(&reg);
}

/* ---- HTTP/2 and gRPC ---- */

#define GNODE(name)                                                                                \
    "{\"virtualNodeName\":\"" name "\",\"spec\":{\"listeners\":[{\"portMapping\":{\"port\":50051," \
    "\"protocol\":\"grpc\"}}]}}"
#define H2NODE(name)                                                                               \
    "{\"virtualNodeName\":\"" name "\",\"spec\":{\"listeners\":[{\"portMapping\":{\"port\":8080,"  \
    "\"protocol\":\"http2\"}}]}}"
#define GROUTE(name, prio, match, target)                                                          \
    "{\"virtualRouterName\":\"rg\",\"routeName\":\"" name "\",\"spec\":{" prio "\"grpcRoute\":{"  \
    "\"match\":" match ",\"action\":{\"weightedTargets\":[{\"virtualNode\":\"" target "\","        \
    "\"weight\":1}]}}}}"
#define H2ROUTE(name, prio, match, target)                                                         \
    "{\"virtualRouterName\":\"rh\",\"routeName\":\"" name "\",\"spec\":{" prio "\"http2Route\":{" \
    "\"match\":" match ",\"action\":{\"weightedTargets\":[{\"virtualNode\":\"" target "\","        \
    "\"weight\":1}]}}}}"
#define META(name, match)                                                                          \
    "{\"serviceName\":\"m.Svc\",\"metadata\":[{\"name\":\"" name "\"," match "}]}"

/* web calls grpc.local (router rg, a grpc listener), h2.local (router rh, an http2 listener),
 * gnode.local and hnode.local (node providers with a grpc and an http2 listener). Targets are
 * named for the route that sends to them; "plain" listens on http, "multi" on http and grpc. */
static const char *h2_mesh =
    "{\"virtualNodes\":[{\"virtualNodeName\":\"web\",\"spec\":{\"backends\":["
    "{\"virtualService\":{\"virtualServiceName\":\"grpc.local\"}},"
    "{\"virtualService\":{\"virtualServiceName\":\"h2.local\"}},"
    "{\"virtualService\":{\"virtualServiceName\":\"gnode.local\"}},"
    "{\"virtualService\":{\"virtualServiceName\":\"hnode.local\"}}]}}," GNODE("method") ","
    GNODE("service") "," GNODE("mexact") "," GNODE("mprefix") "," GNODE("msuffix") ","
    GNODE("mregex") "," GNODE("mrange") "," GNODE("minvert") "," GNODE("w1") "," GNODE("w2") ","
    GNODE("retry") "," GNODE("any") "," H2NODE("h2exact") "," H2NODE("h2hdr") ","
    H2NODE("h2query") "," H2NODE("h2https") "," NODE("plain") ","
    "{\"virtualNodeName\":\"multi\",\"spec\":{\"listeners\":[{\"portMapping\":{\"port\":80,"
    "\"protocol\":\"http\"}},{\"portMapping\":{\"port\":50051,\"protocol\":\"grpc\"}}]}}],"
    "\"virtualServices\":[{\"virtualServiceName\":\"grpc.local\",\"spec\":{\"provider\":"
    "{\"virtualRouter\":{\"virtualRouterName\":\"rg\"}}}},"
    "{\"virtualServiceName\":\"h2.local\",\"spec\":{\"provider\":{\"virtualRouter\":"
    "{\"virtualRouterName\":\"rh\"}}}},"
    "{\"virtualServiceName\":\"gnode.local\",\"spec\":{\"provider\":{\"virtualNode\":"
    "{\"virtualNodeName\":\"any\"}}}},"
    "{\"virtualServiceName\":\"hnode.local\",\"spec\":{\"provider\":{\"virtualNode\":"
    "{\"virtualNodeName\":\"h2exact\"}}}}],"
    "\"virtualRouters\":[{\"virtualRouterName\":\"rg\",\"spec\":{\"listeners\":[{\"portMapping\":"
    "{\"port\":50051,\"protocol\":\"grpc\"}}]}},{\"virtualRouterName\":\"rh\",\"spec\":{"
    "\"listeners\":[{\"portMapping\":{\"port\":8080,\"protocol\":\"http2\"}}]}}],"
    "\"routes\":["
    GROUTE("service", "\"priority\":2,", "{\"serviceName\":\"pkg.Svc\"}", "service") ","
    GROUTE("method", "\"priority\":1,", "{\"serviceName\":\"pkg.Svc\",\"methodName\":\"Get\"}",
           "method") ","
    GROUTE("mexact", "\"priority\":3,", META("x-e", "\"match\":{\"exact\":\"yes\"}"), "mexact") ","
    GROUTE("mprefix", "\"priority\":4,", META("x-p", "\"match\":{\"prefix\":\"ab\"}"), "mprefix") ","
    GROUTE("msuffix", "\"priority\":5,", META("x-s", "\"match\":{\"suffix\":\"yz\"}"), "msuffix") ","
    GROUTE("mregex", "\"priority\":6,", META("x-r", "\"match\":{\"regex\":\"v[0-9]\"}"), "mregex") ","
    GROUTE("mrange", "\"priority\":7,",
           META("x-n", "\"match\":{\"range\":{\"start\":10,\"end\":20}}"), "mrange") ","
    GROUTE("minvert", "\"priority\":8,",
           "{\"serviceName\":\"inv.Svc\",\"metadata\":[{\"name\":\"x-i\",\"invert\":true,"
           "\"match\":{\"exact\":\"no\"}}]}", "minvert") ","
    "{\"virtualRouterName\":\"rg\",\"routeName\":\"weighted\",\"spec\":{\"priority\":9,"
    "\"grpcRoute\":{\"match\":{\"serviceName\":\"w.Svc\"},\"action\":{\"weightedTargets\":["
    "{\"virtualNode\":\"w1\",\"weight\":3},{\"virtualNode\":\"w2\",\"weight\":1}]}}}},"
    "{\"virtualRouterName\":\"rg\",\"routeName\":\"retry\",\"spec\":{\"priority\":10,"
    "\"grpcRoute\":{\"match\":{\"serviceName\":\"retry.Svc\"},\"action\":{\"weightedTargets\":["
    "{\"virtualNode\":\"retry\",\"weight\":1}]},\"retryPolicy\":{\"maxRetries\":3,"
    "\"perRetryTimeout\":{\"unit\":\"ms\",\"value\":100},\"grpcRetryEvents\":[\"cancelled\","
    "\"deadline-exceeded\",\"internal\",\"resource-exhausted\",\"unavailable\"]}}}},"
    "{\"virtualRouterName\":\"rg\",\"routeName\":\"any\",\"spec\":{\"grpcRoute\":{\"match\":{},"
    "\"action\":{\"weightedTargets\":[{\"virtualNode\":\"any\",\"weight\":1}]},\"timeout\":{"
    "\"perRequest\":{\"unit\":\"s\",\"value\":2},\"idle\":{\"unit\":\"s\",\"value\":30}}}}},"
    H2ROUTE("h2exact", "\"priority\":1,", "{\"path\":{\"exact\":\"/exact\"}}", "h2exact") ","
    H2ROUTE("h2hdr", "\"priority\":2,", "{\"prefix\":\"/h\",\"method\":\"POST\",\"headers\":[{"
            "\"name\":\"x-v\",\"match\":{\"exact\":\"2\"}}]}", "h2hdr") ","
    H2ROUTE("h2query", "\"priority\":3,", "{\"prefix\":\"/q\",\"queryParameters\":[{\"name\":"
            "\"v\",\"match\":{\"exact\":\"2\"}}]}", "h2query") ","
    H2ROUTE("h2https", "\"priority\":4,", "{\"prefix\":\"/s\",\"scheme\":\"https\"}", "h2https") ","
    "{\"virtualRouterName\":\"rh\",\"routeName\":\"m80\",\"spec\":{\"priority\":5,\"http2Route\":{"
    "\"match\":{\"prefix\":\"/m80\"},\"action\":{\"weightedTargets\":[{\"virtualNode\":\"multi\","
    "\"weight\":1,\"port\":80}]}}}},"
    "{\"virtualRouterName\":\"rh\",\"routeName\":\"mgrpc\",\"spec\":{\"priority\":6,"
    "\"http2Route\":{\"match\":{\"prefix\":\"/mg\"},\"action\":{\"weightedTargets\":[{"
    "\"virtualNode\":\"multi\",\"weight\":1,\"port\":50051}]}}}},"
    H2ROUTE("plain", "\"priority\":7,", "{\"prefix\":\"/\"}", "plain") "]}";

typedef struct h2_req {
    const char *host, *target, *scheme;
    int method;
    fake_t *h;
} h2_req_t;

/* The result for a request (a GET to grpc.local unless told). */
static route_result_t call(route_table_t *rt, h2_req_t q)
{
    fake_t none = {{NULL}, {NULL}};
    const char *host = q.host ? q.host : "grpc.local";
    const char *t = q.target, *qm = strchr(t, '?');
    route_request_t rr = {.method = q.method ? q.method : HTTP_GET, .host = host,
                          .host_len = strlen(host), .path = t,
                          .path_len = qm ? (size_t)(qm - t) : strlen(t),
                          .query = qm ? qm + 1 : NULL, .query_len = qm ? strlen(qm + 1) : 0,
                          .header = fake_header, .ctx = q.h ? q.h : &none, .scheme = q.scheme};
    char path[128];
    snprintf(path, sizeof path, "%.*s", (int)rr.path_len, t);
    rr.path = path;
    route_result_t r;
    route_egress(rt, &rr, &r);
    return r;
}

/* The cluster a request goes to, without its "cds_egress_mesh_" (the status when answered
 * locally). */
static const char *sent_to(route_table_t *rt, h2_req_t q)
{
    static char out[128];
    route_result_t r = call(rt, q);
    if (!r.cluster)
        snprintf(out, sizeof out, "%d", r.status);
    else
        snprintf(out, sizeof out, "%s", r.cluster->name + strlen("cds_egress_mesh_"));
    return out;
}

static route_table_t *h2_table(registry_t *reg)
{
    diag_t d = {0};
    route_table_t *rt = build(h2_mesh, reg, &d);
    for (size_t i = 0; i < d.n; i++)
        fprintf(stderr, "%s\n", d.lines[i]);
    assert_non_null(rt);
    diag_free(&d);
    return rt;
}

static void test_grpc_service_and_method(void **state)
{
    (void)state;
    unsetenv("REMORA_DEFAULT_RETRY_POLICY");
    registry_t reg = {0};
    route_table_t *rt = h2_table(&reg);
    fake_t e = {{"x-e"}, {"yes"}};
    assert_string_equal(sent_to(rt, (h2_req_t){.target = "/pkg.Svc/Get"}), "method_grpc_50051");
    assert_string_equal(sent_to(rt, (h2_req_t){.target = "/pkg.Svc/Put"}), "service_grpc_50051");
    assert_string_equal(sent_to(rt, (h2_req_t){.target = "/pkg.Svc/GetMore"}),
                        "service_grpc_50051");
    assert_string_equal(sent_to(rt, (h2_req_t){.target = "/pkg.Svc/"}), "service_grpc_50051");
    /* Priority first: service (2) before the metadata route (3). */
    assert_string_equal(sent_to(rt, (h2_req_t){.target = "/pkg.Svc/Put", .h = &e}),
                        "service_grpc_50051");
    /* The SERVICE segment exactly: no prefix of it, no other case, not without its '/'. */
    assert_string_equal(sent_to(rt, (h2_req_t){.target = "/pkg.SvcX/Get"}), "any_grpc_50051");
    assert_string_equal(sent_to(rt, (h2_req_t){.target = "/pkg.Sv/Get"}), "any_grpc_50051");
    assert_string_equal(sent_to(rt, (h2_req_t){.target = "/PKG.Svc/Get"}), "any_grpc_50051");
    assert_string_equal(sent_to(rt, (h2_req_t){.target = "/pkg.Svc"}), "any_grpc_50051");
    assert_string_equal(sent_to(rt, (h2_req_t){.target = "/x/pkg.Svc/Get"}), "any_grpc_50051");
    /* No serviceName: every request, whatever its path. */
    assert_string_equal(sent_to(rt, (h2_req_t){.target = "/"}), "any_grpc_50051");
    route_result_t r = call(rt, (h2_req_t){.target = "/pkg.Svc/Get"});
    assert_int_equal(r.upstream_h2, 1);
    assert_int_equal(r.grpc, 1);
    assert_string_equal(r.service, "grpc.local");
    assert_int_equal(r.timeout_ms, ROUTE_DEFAULT_TIMEOUT_MS);
    assert_int_equal(r.idle_ms, ROUTE_DEFAULT_IDLE_MS);
    r = call(rt, (h2_req_t){.target = "/any/Thing"});
    assert_int_equal(r.timeout_ms, 2000); /* the grpcRoute's own timeout */
    assert_int_equal(r.idle_ms, 30000);
    route_table_unref(rt);
    registry_free(&reg);
}

static void test_grpc_metadata(void **state)
{
    (void)state;
    registry_t reg = {0};
    route_table_t *rt = h2_table(&reg);
    const struct {
        fake_t h;
        const char *to;
    } cases[] = {
        {{{"x-e"}, {"yes"}}, "mexact_grpc_50051"},  {{{"x-e"}, {"yes!"}}, "any_grpc_50051"},
        {{{"x-p"}, {"abc"}}, "mprefix_grpc_50051"}, {{{"x-p"}, {"xab"}}, "any_grpc_50051"},
        {{{"x-s"}, {"xyz"}}, "msuffix_grpc_50051"}, {{{"x-s"}, {"yzx"}}, "any_grpc_50051"},
        {{{"x-r"}, {"v7"}}, "mregex_grpc_50051"},   {{{"x-r"}, {"v77"}}, "any_grpc_50051"},
        {{{"x-n"}, {"10"}}, "mrange_grpc_50051"},   {{{"x-n"}, {"19"}}, "mrange_grpc_50051"},
        {{{"x-n"}, {"20"}}, "any_grpc_50051"},      {{{"x-n"}, {"1x"}}, "any_grpc_50051"},
        {{{"X-E"}, {"yes"}}, "mexact_grpc_50051"}, /* metadata names have no case */
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        fake_t h = cases[i].h;
        assert_string_equal(sent_to(rt, (h2_req_t){.target = "/m.Svc/Do", .h = &h}), cases[i].to);
    }
    /* The matchers apply with the serviceName: another service does not match them. */
    fake_t e = {{"x-e"}, {"yes"}};
    assert_string_equal(sent_to(rt, (h2_req_t){.target = "/n.Svc/Do", .h = &e}), "any_grpc_50051");
    /* invert: taken when the metadata is absent or not "no". */
    fake_t no = {{"x-i"}, {"no"}}, yes = {{"x-i"}, {"yes"}};
    assert_string_equal(sent_to(rt, (h2_req_t){.target = "/inv.Svc/Do", .h = &no}),
                        "any_grpc_50051");
    assert_string_equal(sent_to(rt, (h2_req_t){.target = "/inv.Svc/Do", .h = &yes}),
                        "minvert_grpc_50051");
    assert_string_equal(sent_to(rt, (h2_req_t){.target = "/inv.Svc/Do"}), "minvert_grpc_50051");
    route_table_unref(rt);
    registry_free(&reg);
}

static void test_grpc_weights_and_retries(void **state)
{
    (void)state;
    unsetenv("REMORA_DEFAULT_RETRY_POLICY");
    registry_t reg = {0};
    route_table_t *rt = h2_table(&reg);
    unsigned w1 = 0;
    for (int i = 0; i < 8; i++)
        w1 += strcmp(sent_to(rt, (h2_req_t){.target = "/w.Svc/Do"}), "w1_grpc_50051") == 0;
    assert_int_equal(w1, 6); /* 3:1 */
    /* Its own retryPolicy: every grpcRetryEvent, copied. */
    route_result_t r = call(rt, (h2_req_t){.target = "/retry.Svc/Do"});
    assert_int_equal(r.retry.max_retries, 3);
    assert_int_equal(r.retry.per_try_ms, 100);
    assert_int_equal(r.retry.events, 0);
    assert_int_equal(r.retry.grpc_events,
                     GRPC_RETRY_CANCELLED | GRPC_RETRY_DEADLINE_EXCEEDED | GRPC_RETRY_INTERNAL |
                         GRPC_RETRY_RESOURCE_EXHAUSTED | GRPC_RETRY_UNAVAILABLE);
    /* None: App Mesh's default, with UNAVAILABLE. */
    r = call(rt, (h2_req_t){.target = "/pkg.Svc/Get"});
    assert_int_equal(r.retry.max_retries, DEFAULT_RETRY_MAX);
    assert_int_equal(r.retry.per_try_ms, 0);
    assert_int_equal(r.retry.events, DEFAULT_RETRY_EVENTS);
    assert_int_equal(r.retry.grpc_events, GRPC_RETRY_UNAVAILABLE);
    /* A node provider on a grpc listener: the same default; on http2: no gRPC events. */
    r = call(rt, (h2_req_t){.host = "gnode.local", .target = "/a.B/C"});
    assert_string_equal(r.cluster->name, "cds_egress_mesh_any_grpc_50051");
    assert_int_equal(r.upstream_h2, 1);
    assert_int_equal(r.grpc, 1);
    assert_int_equal(r.retry.max_retries, DEFAULT_RETRY_MAX);
    assert_int_equal(r.retry.grpc_events, GRPC_RETRY_UNAVAILABLE);
    r = call(rt, (h2_req_t){.host = "hnode.local", .target = "/a"});
    assert_string_equal(r.cluster->name, "cds_egress_mesh_h2exact_http2_8080");
    assert_int_equal(r.upstream_h2, 1);
    assert_int_equal(r.grpc, 0);
    assert_int_equal(r.retry.max_retries, DEFAULT_RETRY_MAX);
    assert_int_equal(r.retry.grpc_events, 0);
    route_table_unref(rt);
    /* The default policy off: nothing, gRPC included; a route's own policy stays. */
    setenv("REMORA_DEFAULT_RETRY_POLICY", "0", 1);
    rt = h2_table(&reg);
    r = call(rt, (h2_req_t){.target = "/pkg.Svc/Get"});
    assert_int_equal(r.retry.max_retries, 0);
    assert_int_equal(r.retry.events, 0);
    assert_int_equal(r.retry.grpc_events, 0);
    assert_int_equal(call(rt, (h2_req_t){.host = "gnode.local", .target = "/"}).retry.grpc_events,
                     0);
    assert_int_equal(call(rt, (h2_req_t){.target = "/retry.Svc/Do"}).retry.max_retries, 3);
    unsetenv("REMORA_DEFAULT_RETRY_POLICY");
    route_table_unref(rt);
    registry_free(&reg);
}

static void test_http2_routes(void **state)
{
    (void)state;
    registry_t reg = {0};
    route_table_t *rt = h2_table(&reg);
    fake_t v2 = {{"x-v"}, {"2"}};
#define H2(...) sent_to(rt, (h2_req_t){.host = "h2.local", __VA_ARGS__}) /* GET unless told */
    assert_string_equal(H2(.target = "/exact"), "h2exact_http2_8080");
    assert_string_equal(H2(.target = "/exact/x"), "plain_http_80");
    assert_string_equal(H2(.target = "/h", .method = HTTP_POST, .h = &v2), "h2hdr_http2_8080");
    assert_string_equal(H2(.target = "/h", .h = &v2), "plain_http_80"); /* GET: not its method */
    assert_string_equal(H2(.target = "/h", .method = HTTP_POST), "plain_http_80");
    assert_string_equal(H2(.target = "/q?a=1&v=2"), "h2query_http2_8080");
    assert_string_equal(H2(.target = "/q?v=3"), "plain_http_80");
    assert_string_equal(H2(.target = "/s", .scheme = "https"), "h2https_http2_8080");
    assert_string_equal(H2(.target = "/s", .scheme = "http"), "plain_http_80");
    assert_string_equal(H2(.target = "/s"), "plain_http_80"); /* no scheme: http */
    assert_string_equal(H2(.target = "/m80"), "multi_http_80");
    assert_string_equal(H2(.target = "/mg"), "multi_grpc_50051");
#undef H2
    route_table_unref(rt);
    registry_free(&reg);
}

/* upstream_h2 follows the target's listener, chosen as TLS chooses it: the target's port, else
 * the node's first listener; grpc follows the route's kind. */
static void test_upstream_h2_by_target_listener(void **state)
{
    (void)state;
    registry_t reg = {0};
    route_table_t *rt = h2_table(&reg);
    const struct {
        const char *target;
        unsigned h2, grpc;
    } cases[] = {
        {"/exact", 1, 0}, /* http2Route to an http2 listener */
        {"/plain", 0, 0}, /* http2Route to an http listener: HTTP/1.1 upstream */
        {"/m80", 0, 0},   /* multi's http listener, by the target port */
        {"/mg", 1, 0},    /* multi's grpc listener: HTTP/2, but not a grpcRoute */
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        route_result_t r = call(rt, (h2_req_t){.host = "h2.local", .target = cases[i].target});
        assert_non_null(r.cluster);
        assert_int_equal(r.upstream_h2, cases[i].h2);
        assert_int_equal(r.grpc, cases[i].grpc);
        assert_int_equal(r.retry.grpc_events, 0);
    }
    route_table_unref(rt);
    /* An httpRoute to an http listener speaks HTTP/1.1. */
    rt = table(&reg);
    route_result_t r = egress(rt, "svc.local", 80, "/");
    assert_non_null(r.cluster);
    assert_int_equal(r.upstream_h2, 0);
    assert_int_equal(r.grpc, 0);
    route_table_unref(rt);
    registry_free(&reg);
}

/* Ingress: each listener's own protocol, timeout and connectionPool. http2 and grpc pools have
 * maxRequests alone: no pending limit (0). */
static void test_ingress_by_listener_protocol(void **state)
{
    (void)state;
    const char *json =
        "{\"virtualNodes\":[{\"virtualNodeName\":\"web\",\"spec\":{\"listeners\":["
        "{\"portMapping\":{\"port\":8080,\"protocol\":\"http\"},\"timeout\":{\"http\":{"
        "\"perRequest\":{\"unit\":\"s\",\"value\":3},\"idle\":{\"unit\":\"ms\",\"value\":500}}},"
        "\"connectionPool\":{\"http\":{\"maxConnections\":4,\"maxPendingRequests\":2}}},"
        "{\"portMapping\":{\"port\":8081,\"protocol\":\"http2\"},\"timeout\":{\"http2\":{"
        "\"perRequest\":{\"unit\":\"s\",\"value\":7},\"idle\":{\"unit\":\"ms\",\"value\":900}}},"
        "\"connectionPool\":{\"http2\":{\"maxRequests\":33}}},"
        "{\"portMapping\":{\"port\":8082,\"protocol\":\"grpc\"},\"timeout\":{\"grpc\":{"
        "\"perRequest\":{\"unit\":\"s\",\"value\":11},\"idle\":{\"unit\":\"ms\",\"value\":1200}}},"
        "\"connectionPool\":{\"grpc\":{\"maxRequests\":44}}},"
        "{\"portMapping\":{\"port\":8083,\"protocol\":\"grpc\"}}]}}]}";
    registry_t reg = {0};
    diag_t d = {0};
    route_table_t *rt = build(json, &reg, &d);
    assert_non_null(rt);
    const struct {
        uint16_t port;
        unsigned h2, grpc;
        uint64_t timeout, idle;
        uint32_t max_requests, max_pending;
        const char *cluster;
    } want[] = {
        {8080, 0, 0, 3000, 500, 4, 2, "cds_ingress_mesh_web_http_8080"},
        {8081, 1, 0, 7000, 900, 33, 0, "cds_ingress_mesh_web_http2_8081"},
        {8082, 1, 1, 11000, 1200, 44, 0, "cds_ingress_mesh_web_grpc_8082"},
        {8083, 1, 1, ROUTE_DEFAULT_TIMEOUT_MS, ROUTE_DEFAULT_IDLE_MS, 0, 0,
         "cds_ingress_mesh_web_grpc_8083"},
    };
    for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
        const route_listener_t *l = route_ingress(rt, want[i].port);
        assert_int_equal(l->port, want[i].port);
        assert_int_equal(l->tcp, 0);
        assert_int_equal(l->r.upstream_h2, want[i].h2);
        assert_int_equal(l->r.grpc, want[i].grpc);
        assert_int_equal(l->r.timeout_ms, want[i].timeout);
        assert_int_equal(l->r.idle_ms, want[i].idle);
        assert_int_equal(l->r.max_requests, want[i].max_requests);
        assert_int_equal(l->r.max_pending, want[i].max_pending);
        assert_string_equal(l->r.cluster->name, want[i].cluster);
    }
    route_table_unref(rt);
    diag_free(&d);
    registry_free(&reg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_normalize),
        cmocka_unit_test(test_schedule_is_exact_and_smooth),
        cmocka_unit_test(test_every_match_kind),
        cmocka_unit_test(test_no_route_answers),
        cmocka_unit_test(test_clusters_and_counters_outlive_reloads),
        cmocka_unit_test(test_invalid_regex_is_reported),
        cmocka_unit_test(test_default_retry_policy),
        cmocka_unit_test(test_prefixless_matches),
        cmocka_unit_test(test_table_holds_what_the_node_reaches),
        cmocka_unit_test(test_reduced_schedules_stay_exact),
        cmocka_unit_test(test_grpc_service_and_method),
        cmocka_unit_test(test_grpc_metadata),
        cmocka_unit_test(test_grpc_weights_and_retries),
        cmocka_unit_test(test_http2_routes),
        cmocka_unit_test(test_upstream_h2_by_target_listener),
        cmocka_unit_test(test_ingress_by_listener_protocol),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
