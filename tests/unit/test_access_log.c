/* proxy/access_log.c: the logging config, the format compiler (every operator, REQ(X?Y):N,
 * refusals naming the operator), exact lines from hand-filled entries in text and JSON, JSON
 * escaping, response flag order, and the writer: a full buffer drops and counts, reopen. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "config/config.h"
#include "proxy/access_log.h"

#define WHERE "virtualNodes[0].spec.logging.accessLog.file"

static access_log_stats_t stats;

static char *diag_text(const diag_t *d)
{
    static char out[8192];
    size_t used = 0;
    out[0] = '\0';
    for (size_t i = 0; i < d->n; i++)
        used += (size_t)snprintf(out + used, sizeof out - used, "%s\n", d->lines[i]);
    return out;
}

static access_log_t *build(const cfg_access_log_t *cfg)
{
    diag_t d = {0};
    access_log_t *l = access_log_build(cfg, "m.json", 1, &stats, &d);
    if (!l)
        fprintf(stderr, "unexpected: %s", diag_text(&d));
    assert_non_null(l);
    diag_free(&d);
    return l;
}

static access_log_t *text_log(const char *fmt)
{
    cfg_access_log_t cfg = {
        .path = "/dev/null", .where = WHERE, .format = ACCESS_LOG_TEXT, .text = (char *)fmt};
    return build(&cfg);
}

/* The log a format is refused with, and that exact diagnostic. */
static void refused(const cfg_access_log_t *cfg, const char *expected)
{
    diag_t d = {0};
    access_log_t *l = access_log_build(cfg, "m.json", 1, &stats, &d);
    assert_null(l);
    assert_int_equal(d.n, 1);
    assert_string_equal(d.lines[0], expected);
    diag_free(&d);
}

static void text_refused(const char *fmt, const char *message)
{
    cfg_access_log_t cfg = {
        .path = "/dev/null", .where = WHERE, .format = ACCESS_LOG_TEXT, .text = (char *)fmt};
    char expected[600];
    snprintf(expected, sizeof expected, "m.json: " WHERE ".format.text: %s", message);
    refused(&cfg, expected);
}

/* ---- a request, a response and an entry, filled by hand ---- */

static head_t req, resp;
static access_log_worker_t aw;
static arena_t arena;
static char hostname[256];

static void add(head_t *h, const char *name, const char *value)
{
    assert_int_equal(head_add_field(h, name, strlen(name), value, strlen(value)), 0);
}

static void request_line(head_t *h, const char *method, int id, const char *target)
{
    head_free(h); /* what an earlier call filled; empty and ready after */
    h->method_text = (uint32_t)head_store(h, method, strlen(method));
    h->method_len = (uint32_t)strlen(method);
    h->method = (uint8_t)id;
    h->target = (uint32_t)head_store(h, target, strlen(target));
    h->target_len = (uint32_t)strlen(target);
    h->major = 1;
    h->minor = 1;
}

static struct sockaddr_in local_addr;

/* A proxied GET: what forward.c knows at the end of a successful exchange. */
static access_log_entry_t proxied(const access_log_t *l)
{
    request_line(&req, "GET", HTTP_GET, "/a/../echo?x=1");
    add(&req, "Host", "cart.shop.local");
    add(&req, "User-Agent", "curl/8.5.0");
    add(&req, "X-Forwarded-For", "10.0.0.1");
    req.fields[req.nfields - 1].hop = 1; /* replaced by remora's, below */
    add(&req, "X-Forwarded-For", "10.0.0.1, 127.0.0.1");
    add(&req, "X-Request-Id", "rid-1");
    head_free(&resp);
    resp.status = 200;
    add(&resp, "Content-Type", "application/json");
    add(&resp, "X-Envoy-Upstream-Service-Time", "3");
    local_addr = (struct sockaddr_in){
        .sin_family = AF_INET, .sin_port = htons(9080), .sin_addr.s_addr = htonl(0x0a000002)};
    return (access_log_entry_t){
        .req = &req,
        .path = "/echo?x=1",
        .path_len = 9,
        .request_id = "rid-1",
        .resp = access_log_keep_response(l, &resp, &arena),
        .start_sec = 1460751420, /* 2016-04-15T20:17:00Z */
        .start_nsec = 310123456,
        .duration_ms = 12,
        .request_ms = 1,
        .response_ms = 9,
        .bytes_received = 5,
        .bytes_sent = 364,
        .status = 200,
        .attempts = 1,
        .details = "via_upstream",
        .upstream_host = "127.0.0.1:9090",
        .upstream_cluster = "cds_egress_shop_cart-v1_http_9090",
        .client_ip = "127.0.0.1",
        .local = (const struct sockaddr *)&local_addr,
    };
}

/* A request no route takes: no upstream, no response head, no body. */
static access_log_entry_t no_route(void)
{
    request_line(&req, "DELETE", HTTP_DELETE, "/x");
    add(&req, "Host", "nope.local");
    return (access_log_entry_t){
        .req = &req,
        .path = "/x",
        .path_len = 2,
        .request_id = "00000000-0000-4000-8000-000000000000",
        .start_sec = 1460751420,
        .start_nsec = 5000000,
        .duration_ms = 0,
        .request_ms = 0,
        .response_ms = -1,
        .bytes_sent = 68,
        .status = 404,
        .flags = RF_NR,
        .details = "route_not_found",
        .client_ip = "127.0.0.1",
    };
}

static char line[70000];

static const char *format(const access_log_t *l, const access_log_entry_t *e)
{
    size_t n = access_log_format(l, &aw, e, line, sizeof line - 1);
    line[n] = '\0';
    return line;
}

static int setup(void **state)
{
    (void)state;
    access_log_worker_init(&aw, NULL, 0);
    arena_init(&arena);
    if (gethostname(hostname, sizeof hostname - 1) != 0)
        hostname[0] = '\0';
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    head_free(&req);
    head_free(&resp);
    arena_reset(&arena);
    return 0;
}

/* ---- the config ---- */

#define MESH(logging)                                                                              \
    "{\"mesh\":{\"meshName\":\"shop\"},\"virtualNodes\":[{\"virtualNodeName\":\"web\",\"spec\":{"  \
    "\"listeners\":[{\"portMapping\":{\"port\":8080,\"protocol\":\"http\"}}],"                     \
    "\"serviceDiscovery\":{\"dns\":{\"hostname\":\"web.local\"}},\"logging\":" logging "}}]}"

static const cfg_access_log_t *parse_ok(const char *json, config_t **cfg)
{
    diag_t d = {0};
    *cfg = config_parse(json, strlen(json), "m.json", &d);
    if (!*cfg)
        fprintf(stderr, "unexpected: %s", diag_text(&d));
    assert_non_null(*cfg);
    diag_free(&d);
    return &config_node(*cfg, "web")->access_log;
}

static void config_refused(const char *json, const char *expected)
{
    diag_t d = {0};
    config_t *c = config_parse(json, strlen(json), "m.json", &d);
    assert_null(c);
    if (!strstr(diag_text(&d), expected))
        fprintf(stderr, "expected \"%s\" among:\n%s", expected, diag_text(&d));
    assert_non_null(strstr(diag_text(&d), expected));
    diag_free(&d);
}

static void test_config_shapes(void **state)
{
    (void)state;
    config_t *c;
    const cfg_access_log_t *al =
        parse_ok(MESH("{\"accessLog\":{\"file\":{\"path\":\"/dev/stdout\"}}}"), &c);
    assert_string_equal(al->path, "/dev/stdout");
    assert_int_equal(al->format, ACCESS_LOG_DEFAULT);
    assert_string_equal(al->where, WHERE);
    config_free(c);
    al = parse_ok(MESH("{\"accessLog\":{\"file\":{\"path\":\"/l\",\"format\":{\"text\":"
                       "\"%START_TIME% %RESPONSE_CODE%\\n\"}}}}"),
                  &c);
    assert_int_equal(al->format, ACCESS_LOG_TEXT);
    assert_string_equal(al->text, "%START_TIME% %RESPONSE_CODE%\n");
    config_free(c);
    al = parse_ok(MESH("{\"accessLog\":{\"file\":{\"path\":\"/l\",\"format\":{\"json\":["
                       "{\"key\":\"code\",\"value\":\"%RESPONSE_CODE%\"},"
                       "{\"key\":\"a\",\"value\":\"x\"}]}}}}"),
                  &c);
    assert_int_equal(al->format, ACCESS_LOG_JSON);
    assert_int_equal(al->njson, 2);
    assert_string_equal(al->json[0].key, "code");
    assert_string_equal(al->json[1].value, "x");
    config_free(c);
    al = parse_ok(MESH("{}"), &c); /* logging without an access log */
    assert_null(al->path);
    config_free(c);
}

static void test_config_refusals(void **state)
{
    (void)state;
    config_refused(MESH("{\"accessLog\":{\"file\":{\"path\":\"/l\",\"mode\":1}}}"),
                   "m.json: " WHERE ".mode: unknown field");
    config_refused(MESH("{\"accessLog\":{}}"),
                   "m.json: virtualNodes[0].spec.logging.accessLog: must have exactly one of file");
    config_refused(MESH("{\"accessLog\":{\"file\":{}}}"), "m.json: " WHERE ".path: is required");
    config_refused(MESH("{\"accessLog\":{\"file\":{\"path\":\"\"}}}"),
                   "m.json: " WHERE ".path: must be 1..255 characters, got 0");
    config_refused(MESH("{\"accessLog\":{\"file\":{\"path\":\"/l\",\"format\":{}}}}"),
                   "m.json: " WHERE ".format: must have exactly one of json, text");
    config_refused(MESH("{\"accessLog\":{\"file\":{\"path\":\"/l\",\"format\":{\"text\":\"a\","
                        "\"json\":[]}}}}"),
                   "m.json: " WHERE ".format: must have exactly one of json, text");
    config_refused(MESH("{\"accessLog\":{\"file\":{\"path\":\"/l\",\"format\":{\"json\":[]}}}}"),
                   "m.json: " WHERE ".format.json: must have 1..100 items, got 0");
    config_refused(MESH("{\"accessLog\":{\"file\":{\"path\":\"/l\",\"format\":{\"json\":["
                        "{\"key\":\"a\",\"value\":\"1\"},{\"key\":\"a\",\"value\":\"2\"}]}}}}"),
                   "m.json: " WHERE ".format.json[1].key: \"a\" is already the key of json[0]");
    config_refused(MESH("{\"accessLog\":{\"file\":{\"path\":\"/l\",\"format\":{\"json\":["
                        "{\"key\":\"a\"}]}}}}"),
                   "m.json: " WHERE ".format.json[0].value: is required");
    char big[1200];
    memset(big, 'x', 1001);
    big[1001] = '\0';
    char json[1600];
    snprintf(json, sizeof json,
             MESH("{\"accessLog\":{\"file\":{\"path\":\"/l\",\"format\":{\"text\":\"%s\"}}}}"),
             big);
    config_refused(json, "m.json: " WHERE ".format.text: must be 1..1000 characters, got 1001");
}

/* ---- the compiler ---- */

static void test_compiler_refuses_naming_the_operator(void **state)
{
    (void)state;
    text_refused("[%START_TIME%] %FOO% x", "unknown command operator %FOO% at position 15");
    text_refused("%UPSTREAM_LOCAL_ADDRESS%",
                 "%UPSTREAM_LOCAL_ADDRESS% at position 0 is an Envoy operator remora does not "
                 "support");
    text_refused("100% done", "'%' at position 3 does not start a command operator (Envoy's "
                              "formats have no escape for a literal '%')");
    text_refused("%REQ(A?B?C)%",
                 "%REQ(A?B?C)% at position 0 names more than one alternative header");
    text_refused("%REQ()%", "%REQ()% at position 0 needs a header name, as in %REQ(USER-AGENT)%");
    text_refused("%REQ(?B)%", "%REQ(?B)% at position 0 has an empty header name");
    text_refused("%DURATION:3%", "%DURATION:3% at position 0: only REQ and RESP take a :length");
    text_refused("%DURATION(x)%", "%DURATION(x)% at position 0 takes no argument");
    text_refused("%REQ(A", "%REQ( at position 0 has no closing ')'");
    text_refused("x %DURATION", "%DURATION at position 2 is not closed by '%'");
    text_refused("%REQ(A):x%", "%REQ at position 0: ':' must be followed by a length");
    text_refused("%duration%", "'%' at position 0 does not start a command operator (Envoy's "
                               "formats have no escape for a literal '%')");
    cfg_json_field_t pairs[] = {{"ok", "%DURATION%"}, {"bad", "took %BAD_ONE%"}};
    cfg_access_log_t json = {
        .path = "/dev/null", .where = WHERE, .format = ACCESS_LOG_JSON, .json = pairs, .njson = 2};
    refused(&json, "m.json: " WHERE ".format.json[1].value: unknown command operator %BAD_ONE% "
                   "at position 5");
    cfg_access_log_t nofile = {.path = "/nonexistent-dir/access.log", .where = WHERE};
    refused(&nofile, "m.json: " WHERE ".path: cannot open \"/nonexistent-dir/access.log\": no "
                     "such file or directory");
}

static void test_every_operator(void **state)
{
    (void)state;
    access_log_t *l = text_log(
        "%START_TIME%|%START_TIME(%Y/%m/%d %H:%M:%S.%3f %6f %9f %f %s %%)%|%REQ(:METHOD)%|"
        "%REQ(:PATH)%|%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%|%REQ(:AUTHORITY)%|%REQ(:SCHEME)%|"
        "%REQ(user-agent)%|%REQ(X-MISSING)%|%REQ(X-MISSING?USER-AGENT):4%|%REQ(USER-AGENT):0%|"
        "%REQ(X-FORWARDED-FOR)%|%REQ(X-REQUEST-ID)%|%REQ(:OTHER)%|%RESP(CONTENT-TYPE)%|"
        "%RESP(:STATUS)%|%RESP(X-ABSENT?CONTENT-TYPE):11%|%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%|"
        "%RESPONSE_CODE%|%RESPONSE_FLAGS%|%RESPONSE_CODE_DETAILS%|%BYTES_RECEIVED%|%BYTES_SENT%|"
        "%DURATION%|%REQUEST_DURATION%|%RESPONSE_DURATION%|%RESPONSE_TX_DURATION%|"
        "%UPSTREAM_HOST%|%UPSTREAM_CLUSTER%|%UPSTREAM_TRANSPORT_FAILURE_REASON%|"
        "%UPSTREAM_REQUEST_ATTEMPT_COUNT%|%DOWNSTREAM_REMOTE_ADDRESS%|"
        "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%|%DOWNSTREAM_DIRECT_REMOTE_ADDRESS%|"
        "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT%|%DOWNSTREAM_LOCAL_ADDRESS%|"
        "%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%|%DOWNSTREAM_LOCAL_PORT%|%PROTOCOL%|%HOSTNAME%|"
        "%STREAM_ID%\n");
    access_log_entry_t e = proxied(l);
    char expected[2048];
    snprintf(expected, sizeof expected,
             "2016-04-15T20:17:00.310Z|2016/04/15 20:17:00.310 310123 310123456 310123456 "
             "1460751420 %%|GET|/echo?x=1|/echo?x=1|cart.shop.local|http|curl/8.5.0|-|curl||"
             "10.0.0.1, 127.0.0.1|rid-1|-|application/json|200|application|3|200|-|via_upstream|"
             "5|364|12|1|9|3|127.0.0.1:9090|cds_egress_shop_cart-v1_http_9090|-|1|127.0.0.1|"
             "127.0.0.1|127.0.0.1|127.0.0.1|10.0.0.2:9080|10.0.0.2|9080|HTTP/1.1|%s|rid-1\n",
             hostname[0] ? hostname : "-");
    assert_string_equal(format(l, &e), expected);

    /* What is absent prints '-' (Envoy's rule), numbers stay numbers. */
    access_log_entry_t nr = no_route();
    snprintf(expected, sizeof expected,
             "2016-04-15T20:17:00.005Z|2016/04/15 20:17:00.005 005000 005000000 005000000 "
             "1460751420 %%|DELETE|/x|/x|nope.local|http|-|-|-|-|-|"
             "00000000-0000-4000-8000-000000000000|-|-|404|-|-|404|NR|route_not_found|0|68|0|0|"
             "-|-|-|-|-|0|127.0.0.1|127.0.0.1|127.0.0.1|127.0.0.1|-|-|-|HTTP/1.1|%s|"
             "00000000-0000-4000-8000-000000000000\n",
             hostname[0] ? hostname : "-");
    assert_string_equal(format(l, &nr), expected);
    access_log_unref(l);
}

static void test_req_alternative_and_truncation(void **state)
{
    (void)state;
    access_log_t *l =
        text_log("%REQ(X-A?X-B):3%,%REQ(X-B?X-A):3%,%REQ(X-A?X-C)%,%REQ(X-A):100%,%REQ(X-B):2%");
    request_line(&req, "PUT", HTTP_PUT, "/");
    add(&req, "X-B", "bravo");
    access_log_entry_t e = {.req = &req, .request_id = "r"};
    assert_string_equal(format(l, &e), "bra,bra,-,-,br");
    head_free(&req);
    add(&req, "X-A", "alpha");
    assert_string_equal(format(l, &e), "alp,alp,alpha,alpha,-");
    e.req = NULL; /* no request at all (never happens for HTTP): every REQ is absent */
    assert_string_equal(format(l, &e), "-,-,-,-,-");
    access_log_unref(l);
}

static void test_default_format(void **state)
{
    (void)state;
    cfg_access_log_t cfg = {.path = "/dev/null", .where = WHERE};
    access_log_t *l = build(&cfg);
    access_log_entry_t e = proxied(l);
    assert_string_equal(format(l, &e),
                        "[2016-04-15T20:17:00.310Z] \"GET /echo?x=1 HTTP/1.1\" 200 - 5 364 12 3 "
                        "\"10.0.0.1, 127.0.0.1\" \"curl/8.5.0\" \"rid-1\" \"cart.shop.local\" "
                        "\"127.0.0.1:9090\"\n");
    access_log_entry_t nr = no_route();
    assert_string_equal(format(l, &nr),
                        "[2016-04-15T20:17:00.005Z] \"DELETE /x HTTP/1.1\" 404 NR 0 68 0 - \"-\" "
                        "\"-\" \"00000000-0000-4000-8000-000000000000\" \"nope.local\" \"-\"\n");
    access_log_unref(l);
}

static void test_json_types_order_and_escaping(void **state)
{
    (void)state;
    cfg_json_field_t pairs[] = {
        {"code", "%RESPONSE_CODE%"},
        {"dur", "%DURATION%"},
        {"resp_dur", "%RESPONSE_DURATION%"},
        {"flags", "%RESPONSE_FLAGS%"},
        {"ua", "%REQ(USER-AGENT)%"},
        {"missing", "%REQ(X-MISSING)%"},
        {"mixed", "took %DURATION%ms"},
        {"mixed_missing", "x=%REQ(X-MISSING)%"},
        {"mixed_ua", "<%REQ(USER-AGENT)%>"},
        {"lit", "plain \"text\" \\ here"},
        {"k\"ey", "%PROTOCOL%"},
        {"bytes", "%BYTES_SENT%"},
        {"start", "%START_TIME%"},
    };
    cfg_access_log_t cfg = {.path = "/dev/null",
                            .where = WHERE,
                            .format = ACCESS_LOG_JSON,
                            .json = pairs,
                            .njson = sizeof pairs / sizeof pairs[0]};
    access_log_t *l = build(&cfg);
    access_log_entry_t e = no_route();
    /* A quote, a backslash, a tab, a control byte, valid UTF-8 (é), an invalid byte. */
    add(&req, "User-Agent", "a\"b\\c\td\x01 \xc3\xa9 \xff");
    assert_string_equal(format(l, &e),
                        "{\"code\":404,\"dur\":0,\"resp_dur\":null,\"flags\":\"NR\","
                        "\"ua\":\"a\\\"b\\\\c\\td\\u0001 \xc3\xa9 \\u00ff\",\"missing\":null,"
                        "\"mixed\":\"took 0ms\",\"mixed_missing\":\"x=-\","
                        "\"mixed_ua\":\"<a\\\"b\\\\c\\td\\u0001 \xc3\xa9 \\u00ff>\","
                        "\"lit\":\"plain \\\"text\\\" \\\\ here\",\"k\\\"ey\":\"HTTP/1.1\","
                        "\"bytes\":68,\"start\":\"2016-04-15T20:17:00.005Z\"}\n");
    access_log_unref(l);
}

static void test_response_flags_in_envoys_order(void **state)
{
    (void)state;
    access_log_t *l = text_log("%RESPONSE_FLAGS%");
    access_log_entry_t e = {.flags = RF_URX | RF_UF};
    assert_string_equal(format(l, &e), "UF,URX");
    e.flags = RF_URX | RF_UT;
    assert_string_equal(format(l, &e), "UT,URX");
    e.flags = (1u << RF_COUNT) - 1;
    assert_string_equal(format(l, &e), "UH,UT,LR,UF,UC,UO,NR,DC,URX,SI,DPE,UPE");
    e.flags = 0;
    assert_string_equal(format(l, &e), "-");
    access_log_unref(l);
}

static void test_same_config_keeps_the_log(void **state)
{
    (void)state;
    cfg_access_log_t a = {
        .path = "/dev/null", .where = WHERE, .format = ACCESS_LOG_TEXT, .text = "%DURATION%\n"};
    access_log_t *l = build(&a);
    assert_true(access_log_same(l, &a));
    cfg_access_log_t b = a;
    b.text = "%DURATION% \n";
    assert_false(access_log_same(l, &b));
    b = a;
    b.path = "/dev/stdout";
    assert_false(access_log_same(l, &b));
    b = a;
    b.format = ACCESS_LOG_DEFAULT;
    b.text = NULL;
    assert_false(access_log_same(l, &b));
    access_log_unref(l);
}

/* ---- the writer ---- */

static uv_loop_t loop;
static char dir[64];

/* What the flush timer does, then the loop until the writes in flight are done (the timer does
 * not keep it running). */
static void run_writes(access_log_worker_t *w)
{
    access_log_worker_sync(w);
    uv_unref((uv_handle_t *)&w->timer); /* a full pipe re-arms it: the test drives instead */
    uv_run(&loop, UV_RUN_DEFAULT);
    access_log_worker_flush(w); /* lets go of empty slots */
}

static void close_worker(access_log_worker_t *w)
{
    access_log_worker_close(w);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static size_t slurp(const char *path, char *out, size_t cap)
{
    int fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    ssize_t n = read(fd, out, cap - 1);
    close(fd);
    out[n > 0 ? n : 0] = '\0';
    return n > 0 ? (size_t)n : 0;
}

static void test_full_buffer_drops_and_counts(void **state)
{
    (void)state;
    assert_int_equal(uv_loop_init(&loop), 0);
    snprintf(dir, sizeof dir, "/tmp/alogXXXXXX");
    assert_non_null(mkdtemp(dir));
    char path[128];
    snprintf(path, sizeof path, "%s/fifo", dir);
    assert_int_equal(mkfifo(path, 0600), 0);
    int rfd = open(path, O_RDONLY | O_NONBLOCK); /* a reader that does not read, for now */
    assert_true(rfd >= 0);
    access_log_stats_t st = {0};
    cfg_access_log_t cfg = {
        .path = path, .where = WHERE, .format = ACCESS_LOG_TEXT, .text = "%REQ(X-PAD)%\n"};
    diag_t d = {0};
    access_log_t *l = access_log_build(&cfg, "m.json", 1, &st, &d);
    assert_non_null(l);
    access_log_worker_t w;
    access_log_worker_init(&w, &loop, 0);
    char pad[1000];
    memset(pad, 'p', sizeof pad);
    request_line(&req, "GET", HTTP_GET, "/");
    assert_int_equal(head_add_field(&req, "X-Pad", 5, pad, sizeof pad), 0);
    access_log_entry_t e = {.req = &req};
    /* 400 lines of 1001 bytes: the pipe takes 64 KiB, the buffer 256 KiB, the rest is dropped;
     * the writer never waits. */
    const unsigned total = 400;
    for (unsigned i = 0; i < total; i++) {
        access_log_write(l, &w, &e);
        run_writes(&w);
    }
    uint64_t dropped = atomic_load(&st.dropped);
    assert_true(dropped > 0);
    assert_true(dropped < total - 100);
    assert_int_equal(atomic_load(&st.write_errors), 0);
    /* The reader wakes up: every line it gets is whole, and once it has read, the buffered lines
     * follow (after the retry pause). */
    static char got[512 * 1024];
    size_t have = 0;
    uint64_t deadline = uv_hrtime() + 5000000000ull;
    while (have < (total - dropped) * 1001 && uv_hrtime() < deadline) {
        ssize_t n = read(rfd, got + have, sizeof got - have);
        if (n > 0)
            have += (size_t)n;
        uv_update_time(&loop);
        run_writes(&w);
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL); /* polling the pipe, not waiting for a time to pass */
    }
    assert_int_equal(have, (total - dropped) * 1001);
    for (size_t at = 0; at < have; at += 1001) {
        assert_memory_equal(got + at, pad, sizeof pad);
        assert_int_equal(got[at + 1000], '\n');
    }
    assert_int_equal(atomic_load(&st.bytes_written), have);
    assert_false(access_log_worker_busy(&w));
    /* Ending with a full pipe: what cannot be written at once is dropped, not waited for. */
    for (unsigned i = 0; i < 200; i++)
        access_log_write(l, &w, &e);
    uint64_t before = atomic_load(&st.dropped);
    access_log_worker_close(&w); /* as a worker's loop ends */
    while (access_log_worker_busy(&w)) {
        access_log_worker_flush(&w);
        uv_run(&loop, UV_RUN_DEFAULT);
    }
    assert_true(atomic_load(&st.dropped) > before);
    assert_true(atomic_load(&st.bytes_written) > have); /* what the pipe took at once */
    access_log_unref(l);
    close(rfd);
    unlink(path);
    rmdir(dir);
    head_free(&req);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_long_line_is_dropped(void **state)
{
    (void)state;
    assert_int_equal(uv_loop_init(&loop), 0);
    access_log_stats_t st = {0};
    cfg_access_log_t cfg = {.path = "/dev/null",
                            .where = WHERE,
                            .format = ACCESS_LOG_TEXT,
                            .text = "%REQ(X-PAD)%%REQ(X-PAD)%%REQ(X-PAD)%%REQ(X-PAD)%"
                                    "%REQ(X-PAD)%%REQ(X-PAD)%%REQ(X-PAD)%\n"};
    diag_t d = {0};
    access_log_t *l = access_log_build(&cfg, "m.json", 1, &st, &d);
    access_log_worker_t w;
    access_log_worker_init(&w, &loop, 0);
    static char pad[40000];
    memset(pad, 'p', sizeof pad);
    request_line(&req, "GET", HTTP_GET, "/");
    assert_int_equal(head_add_field(&req, "X-Pad", 5, pad, sizeof pad), 0);
    access_log_entry_t e = {.req = &req};
    access_log_write(l, &w, &e); /* 280001 bytes: more than the whole buffer */
    assert_int_equal(atomic_load(&st.dropped), 1);
    assert_false(access_log_worker_busy(&w));
    access_log_unref(l);
    head_free(&req);
    close_worker(&w);
}

static void test_reopen_moves_to_the_new_file(void **state)
{
    (void)state;
    assert_int_equal(uv_loop_init(&loop), 0);
    snprintf(dir, sizeof dir, "/tmp/alogXXXXXX");
    assert_non_null(mkdtemp(dir));
    char path[128], moved[140], sub[100], gone[140];
    snprintf(path, sizeof path, "%s/access.log", dir);
    snprintf(moved, sizeof moved, "%s/access.log.1", dir);
    access_log_stats_t st = {0};
    cfg_access_log_t cfg = {
        .path = path, .where = WHERE, .format = ACCESS_LOG_TEXT, .text = "%REQ(:PATH)%\n"};
    diag_t d = {0};
    access_log_t *l = access_log_build(&cfg, "m.json", 1, &st, &d);
    assert_non_null(l);
    access_log_worker_t w;
    access_log_worker_init(&w, &loop, 0);
    request_line(&req, "GET", HTTP_GET, "/");
    access_log_entry_t e = {.req = &req, .path = "/one", .path_len = 4};
    access_log_write(l, &w, &e);
    run_writes(&w);
    assert_int_equal(rename(path, moved), 0); /* logrotate */
    e.path = "/two";
    access_log_write(l, &w, &e); /* before the reopen: still the old file */
    assert_int_equal(access_log_reopen(l), 0);
    run_writes(&w);
    e.path = "/six";
    access_log_write(l, &w, &e);
    run_writes(&w);
    char text[256];
    slurp(moved, text, sizeof text);
    assert_string_equal(text, "/one\n");
    slurp(path, text, sizeof text); /* the buffered line went out after the reopen */
    assert_string_equal(text, "/two\n/six\n");
    assert_int_equal(atomic_load(&st.reopens), 1);
    /* A path that cannot be opened: counted, lines dropped until a reopen works. */
    snprintf(sub, sizeof sub, "%s/d", dir);
    assert_int_equal(mkdir(sub, 0700), 0);
    access_log_unref(l);
    snprintf(path, sizeof path, "%s/d/access.log", dir);
    cfg.path = path;
    l = access_log_build(&cfg, "m.json", 1, &st, &d);
    assert_non_null(l);
    snprintf(gone, sizeof gone, "%s/d.gone", dir);
    assert_int_equal(rename(sub, gone), 0);
    assert_int_equal(access_log_reopen(l), UV_ENOENT);
    assert_int_equal(atomic_load(&st.open_failures), 1);
    uint64_t before = atomic_load(&st.dropped);
    access_log_write(l, &w, &e);
    assert_int_equal(atomic_load(&st.dropped), before + 1);
    assert_int_equal(rename(gone, sub), 0);
    assert_int_equal(access_log_reopen(l), 0);
    e.path = "/ten";
    access_log_write(l, &w, &e);
    run_writes(&w);
    while (access_log_worker_busy(&w))
        run_writes(&w);
    slurp(path, text, sizeof text);
    assert_string_equal(text, "/ten\n");
    access_log_unref(l);
    unlink(path);
    rmdir(sub);
    unlink(moved);
    snprintf(path, sizeof path, "%s/access.log", dir);
    unlink(path);
    rmdir(dir);
    head_free(&req);
    close_worker(&w);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_shapes),
        cmocka_unit_test(test_config_refusals),
        cmocka_unit_test(test_compiler_refuses_naming_the_operator),
        cmocka_unit_test_setup_teardown(test_every_operator, setup, teardown),
        cmocka_unit_test_setup_teardown(test_req_alternative_and_truncation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_default_format, setup, teardown),
        cmocka_unit_test_setup_teardown(test_json_types_order_and_escaping, setup, teardown),
        cmocka_unit_test_setup_teardown(test_response_flags_in_envoys_order, setup, teardown),
        cmocka_unit_test(test_same_config_keeps_the_log),
        cmocka_unit_test(test_full_buffer_drops_and_counts),
        cmocka_unit_test(test_long_line_is_dropped),
        cmocka_unit_test(test_reopen_moves_to_the_new_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
