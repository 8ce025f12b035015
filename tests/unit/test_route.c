/* routing/: path normalization, the weighted schedule, every match kind, priority order and
 * the answers for requests that match nothing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
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
    config_t *c = config_parse(bad, strlen(bad), "m.json", &d);
    assert_non_null(c);
    assert_null(route_table_build(c, "web", &reg, &d));
    assert_int_equal(d.n, 1);
    assert_non_null(strstr(d.lines[0], "m.json: routes[0].spec.httpRoute.match.path.regex: "
                                       "invalid regular expression \"/a(b\""));
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
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
