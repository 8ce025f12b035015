#include "proxy/admin.h"

#include <inttypes.h>
#include <malloc.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "discovery/dns.h"
#include "base/http.h"
#include "base/log.h"
#include "base/text.h"
#include "http/h1_parse.h"
#include "proxy/metrics.h"
#include "proxy/rollouts.h"
#include "proxy/stats_filter.h"
#include "proxy/ui_page.h"
#include "base/version.h"

/* Caps. The admin API listens on loopback, but every container of the task shares it: a client
 * there must not be able to take the main loop (SPEC §6: /ready, signals and discovery run on
 * it) or the process's descriptors. */
#define ADMIN_MAX_REQUEST 8192 /* head and body bytes read; more: 400 */
/* Request-target bytes; more: 414. Room for a whole filter, percent-encoded. */
#define ADMIN_MAX_TARGET 4096
#define ADMIN_MAX_CONNS  64 /* open at once; more are answered 503 and closed */
/* From accept until the whole request has arrived, when proxy.requestHeaderTimeout is 0. */
#define ADMIN_HEAD_TIMEOUT_MS 10000
/* For the answer to leave once written (a client that does not read it). */
#define ADMIN_WRITE_TIMEOUT_MS 30000

/* A connection reads one request, then writes one answer and closes (Connection: close). */
enum conn_state { CONN_READING, CONN_WRITING };

typedef struct admin_conn {
    uv_tcp_t tcp;
    uv_timer_t timer; /* the current state's deadline */
    server_t *srv;
    h1_parser_t parser;
    head_t head;
    char url[ADMIN_MAX_TARGET + 1];
    size_t target_len; /* as received: over ADMIN_MAX_TARGET, url is "" and the answer 414 */
    size_t seen;
    enum conn_state state;
    int open_handles; /* tcp and timer: the connection is freed when both have closed */
    struct admin_conn *next, *prev;
} admin_conn_t;

/* ---- handlers ---- */

/* What a handler is given: the query string (after '?', "" when none); what it sets: the
 * content type when it is not the route's. */
typedef struct request {
    server_t *s;
    const char *query;
    const char *ctype;
} request_t;

static uint64_t now_ms(void)
{
    return uv_hrtime() / 1000000;
}

static uint64_t uptime_s(server_t *s)
{
    return uv_hrtime() / 1000000000u - s->started_ms / 1000;
}

static int hex(int c)
{
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

/* Percent-decodes value[0..n) into out (cap > 0 bytes, always terminated); 1, or UV_E2BIG
 * when it does not fit (out then holds the prefix that did). */
static int decode(const char *value, size_t n, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (o + 1 == cap) {
            out[o] = '\0';
            return UV_E2BIG;
        }
        if (value[i] == '%' && i + 2 < n && hex(value[i + 1]) >= 0 && hex(value[i + 2]) >= 0) {
            out[o++] = (char)(hex(value[i + 1]) * 16 + hex(value[i + 2]));
            i += 2;
        } else {
            out[o++] = value[i] == '+' ? ' ' : value[i];
        }
    }
    out[o] = '\0';
    return 1;
}

/* The value of `key` in a query string, percent-decoded into out (cap > 0 bytes); 1 when
 * present (a bare `key` has the value ""), 0 when absent, UV_E2BIG when the value does not fit.
 * Never a silent cut: a prefix can mean something else (a regex cut after `|`). */
static int param(const char *query, const char *key, char *out, size_t cap)
{
    size_t klen = strlen(key);
    for (const char *p = query; p && *p;) {
        const char *end = strchr(p, '&');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        if (n >= klen && !strncmp(p, key, klen) && (n == klen || p[klen] == '=')) {
            size_t skip = n == klen ? klen : klen + 1;
            return decode(p + skip, n - skip, out, cap);
        }
        p = end ? end + 1 : NULL;
    }
    out[0] = '\0';
    return 0;
}

static int drained(server_t *s)
{
    return atomic_load(&s->healthcheck_failed) || atomic_load(&s->listeners_drained);
}

static int h_ready(request_t *rq, text_t *body)
{
    server_t *s = rq->s;
    enum server_state st = server_state(s);
    if (st == SERVER_LIVE && drained(s)) {
        text_printf(body, "DRAINING\n");
        return 503;
    }
    text_printf(body, "%s\n", server_state_name(st));
    return st == SERVER_LIVE ? 200 : 503;
}

static int h_server_info(request_t *rq, text_t *body)
{
    server_t *s = rq->s;
    uint64_t up = uptime_s(s);
    enum server_state st = server_state(s);
    /* The stock ECS health check greps for LIVE: after /healthcheck/fail or /drain_listeners
     * it must fail, as it does with Envoy. */
    const char *state = st == SERVER_LIVE && drained(s) ? "DRAINING" : server_state_name(st);
    text_printf(
        body,
        "{\n \"version\": \"%s\",\n \"state\": \"%s\",\n \"hot_restart_version\": \"disabled\",\n"
        " \"uptime_current_epoch\": \"%" PRIu64 "s\",\n \"uptime_all_epochs\": \"%" PRIu64
        "s\",\n \"health_check_failed\": %s,\n \"node\": {\"id\": \"%s\", \"cluster\": \"%s\"},\n"
        " \"command_line_options\": {\"concurrency\": %u, \"log_level\": \"%s\"}\n}\n",
        REMORA_VERSION, state, up, up, atomic_load(&s->healthcheck_failed) ? "true" : "false",
        s->set.node, route_table_config(s->routes)->mesh_name, s->nworkers,
        log_level_name(log_current_level()));
    return 200;
}

/* Fills q from /stats' parameters (filter=REGEX, usedonly; the filter lives in `filter`, of
 * STATS_FILTER_MAX + 1 bytes); 0, or the status to answer with its one-line reason in body:
 * a filter is never cut (a prefix can mean something else: a regex cut after `|`). */
static int stats_query(request_t *rq, char *filter, metrics_query_t *q, text_t *body)
{
    char flag[4];
    int found = param(rq->query, "filter", filter, STATS_FILTER_MAX + 1);
    if (found == UV_E2BIG) {
        text_printf(body, "filter longer than %d bytes\n", STATS_FILTER_MAX);
        return 400;
    }
    q->filter = found ? filter : NULL;
    q->used_only = param(rq->query, "usedonly", flag, sizeof flag) != 0;
    return 0;
}

/* /stats, with Envoy's parameters: filter=REGEX, usedonly, format=json|prometheus. */
static int h_stats(request_t *rq, text_t *body)
{
    char filter[STATS_FILTER_MAX + 1], format[32];
    metrics_query_t q = {0};
    int bad = stats_query(rq, filter, &q, body);
    if (bad)
        return bad;
    param(rq->query, "format", format, sizeof format);
    char *out = NULL;
    int rc;
    if (!strcmp(format, "json")) {
        rq->ctype = "application/json";
        rc = metrics_json(rq->s, &q, &out);
    } else if (!strcmp(format, "prometheus")) {
        rq->ctype = "text/plain; version=0.0.4";
        rc = metrics_prometheus(rq->s, &q, &out);
    } else if (!format[0] || !strcmp(format, "text")) {
        rc = metrics_text(rq->s, &q, &out);
    } else {
        text_printf(body, "unknown format %s: text, json or prometheus\n", format);
        return 400;
    }
    if (out)
        text_printf(body, "%s", out);
    free(out);
    return rc ? rc : 200;
}

static int h_prometheus(request_t *rq, text_t *body)
{
    char filter[STATS_FILTER_MAX + 1];
    metrics_query_t q = {0};
    int bad = stats_query(rq, filter, &q, body);
    if (bad)
        return bad;
    char *out = NULL;
    int rc = metrics_prometheus(rq->s, &q, &out);
    if (out)
        text_printf(body, "%s", out);
    free(out);
    return rc ? rc : 200;
}

static const char *health_flags(const endpoint_t *e, uint64_t now)
{
    return atomic_load(&e->state->unhealthy)                ? "/failed_active_hc"
           : atomic_load(&e->state->ejected_until_ms) > now ? "/failed_outlier_check"
                                                            : "healthy";
}

static void clusters_text(server_t *s, text_t *body)
{
    uint64_t now = now_ms();
    for (cluster_t *c = s->reg.clusters; c; c = c->next) {
        text_printf(body, "%s::observability_name::%s\n", c->name, c->name);
        text_printf(body, "%s::membership_total::%u\n", c->name, cluster_size(c));
        text_printf(body, "%s::membership_healthy::%u\n", c->name, cluster_healthy(c, now));
        if (c->discovery_source)
            text_printf(body, "%s::discovery_source::%s\n%s::discovery_name::%s\n", c->name,
                        c->discovery_source, c->name, c->discovery_name);
        const endpoint_set_t *set = atomic_load(&c->set);
        for (unsigned i = 0; set && i < set->n; i++) {
            const endpoint_t *e = &set->eps[i];
            endpoint_state_t *st = e->state;
            const char *cn = c->name, *en = e->name;
            text_printf(body, "%s::%s::rq_active::%u\n", cn, en, atomic_load(&st->active_requests));
            text_printf(body, "%s::%s::rq_error::%" PRIu64 "\n", cn, en, atomic_load(&st->errors));
            text_printf(body, "%s::%s::rq_total::%" PRIu64 "\n", cn, en,
                        atomic_load(&st->requests));
            text_printf(body, "%s::%s::health_flags::%s\n", cn, en, health_flags(e, now));
            text_printf(body, "%s::%s::weight::%u\n%s::%s::priority::%u\n", cn, en, e->weight, cn,
                        en, e->priority);
            text_printf(body, "%s::%s::times_ejected::%u\n", cn, en,
                        atomic_load(&st->times_ejected));
        }
    }
}

/* Where the cluster's endpoints come from (remora's own field beside Envoy's). */
static void discovery_json(const cluster_t *c, text_t *body)
{
    if (!c->discovery_source)
        return;
    text_printf(body, ",\"discovery\":{\"source\":\"%s\",\"name\":", c->discovery_source);
    text_json_string(body, c->discovery_name);
    if (!strcmp(c->discovery_source, "cloudmap_api"))
        text_printf(body, ",\"revision\":%lld", (long long)atomic_load(&c->cloudmap_revision));
    text_printf(body, "}");
}

static void clusters_json(server_t *s, text_t *body)
{
    uint64_t now = now_ms();
    text_printf(body, "{\"cluster_statuses\":[");
    for (cluster_t *c = s->reg.clusters; c; c = c->next) {
        text_printf(body, "%s{\"name\":\"%s\",\"observability_name\":\"%s\",\"host_statuses\":[",
                    c == s->reg.clusters ? "" : ",", c->name, c->name);
        const endpoint_set_t *set = atomic_load(&c->set);
        for (unsigned i = 0; set && i < set->n; i++) {
            const endpoint_t *e = &set->eps[i];
            endpoint_state_t *st = e->state;
            char host[64];
            snprintf(host, sizeof host, "%s", e->name);
            char *colon = strrchr(host, ':');
            if (colon)
                *colon = '\0';
            const char *flags = health_flags(e, now);
            text_printf(
                body,
                "%s{\"address\":{\"socket_address\":{\"address\":\"%s\",\"port_value\":%u}},"
                "\"stats\":[{\"name\":\"rq_total\",\"value\":\"%" PRIu64 "\",\"type\":"
                "\"COUNTER\"},{\"name\":\"rq_error\",\"value\":\"%" PRIu64 "\",\"type\":"
                "\"COUNTER\"},{\"name\":\"rq_active\",\"value\":\"%u\",\"type\":\"GAUGE\"}],"
                "\"health_status\":{%s\"eds_health_status\":\"HEALTHY\"},\"weight\":%u,"
                "\"priority\":%u}",
                i ? "," : "", host, endpoint_port(e), atomic_load(&st->requests),
                atomic_load(&st->errors), atomic_load(&st->active_requests),
                !strcmp(flags, "/failed_active_hc")       ? "\"failed_active_health_check\":true,"
                : !strcmp(flags, "/failed_outlier_check") ? "\"failed_outlier_check\":true,"
                                                          : "",
                e->weight, e->priority);
        }
        text_printf(body, "]");
        discovery_json(c, body);
        text_printf(body, "}");
    }
    text_printf(body, "]}\n");
}

static int h_clusters(request_t *rq, text_t *body)
{
    char format[16];
    param(rq->query, "format", format, sizeof format);
    if (!strcmp(format, "json")) {
        rq->ctype = "application/json";
        clusters_json(rq->s, body);
    } else {
        clusters_text(rq->s, body);
    }
    return 200;
}

static int h_listeners(request_t *rq, text_t *body)
{
    server_t *s = rq->s;
    char format[16];
    param(rq->query, "format", format, sizeof format);
    const listener_slot_t *l = s->listeners;
    if (strcmp(format, "json") != 0) {
        for (unsigned i = 0; i < s->nlisteners; i++)
            text_printf(body, "lds_%s_0.0.0.0_%u::0.0.0.0:%u\n", listener_kind_name(l[i].kind),
                        l[i].port, l[i].port);
        return 200;
    }
    rq->ctype = "application/json";
    text_printf(body, "{\"listener_statuses\":[");
    for (unsigned i = 0; i < s->nlisteners; i++)
        text_printf(body,
                    "%s{\"name\":\"lds_%s_0.0.0.0_%u\",\"local_address\":{\"socket_address\":"
                    "{\"address\":\"0.0.0.0\",\"port_value\":%u}}}",
                    i ? "," : "", listener_kind_name(l[i].kind), l[i].port, l[i].port);
    text_printf(body, "]}\n");
    return 200;
}

static int h_config_dump(request_t *rq, text_t *body)
{
    const config_t *c = route_table_config(rq->s->routes);
    text_printf(body, "{\"source\": \"%s\", \"node\": \"%s\", \"config\": %s}\n", c->source,
                rq->s->set.node, c->raw);
    return 200;
}

static int h_certs(request_t *rq, text_t *body)
{
    char *json = tls_certs_json(&rq->s->reg.tls);
    if (!json)
        return 503;
    text_printf(body, "%s", json);
    free(json);
    return 200;
}

static int h_memory(request_t *rq, text_t *body)
{
    (void)rq;
    struct mallinfo2 mi = mallinfo2();
    text_printf(
        body,
        "{\n \"allocated\": \"%zu\",\n \"heap_size\": \"%zu\",\n \"pageheap_unmapped\": \"0\",\n"
        " \"pageheap_free\": \"%zu\",\n \"total_thread_cache\": \"0\",\n"
        " \"total_physical_bytes\": \"%zu\"\n}\n",
        mi.uordblks + mi.hblkhd, mi.arena + mi.hblkhd, mi.fordblks, mi.arena + mi.hblkhd);
    return 200;
}

static int h_runtime(request_t *rq, text_t *body)
{
    (void)rq;
    text_printf(body, "{\n \"layers\": [],\n \"entries\": {}\n}\n");
    return 200;
}

/* POST /logging: no parameter lists the loggers; level=L sets them all (Envoy's names). */
static int h_logging(request_t *rq, text_t *body)
{
    char level[32];
    if (param(rq->query, "level", level, sizeof level)) {
        enum log_level l;
        if (log_parse_level(level, &l) != 0) {
            text_printf(body,
                        "invalid level %s: trace, debug, info, warning, error, critical, off\n",
                        level);
            return 400;
        }
        log_set_level(l);
    } else if (rq->query[0]) {
        text_printf(body, "usage: /logging?level=trace|debug|info|warning|error|critical|off\n");
        return 400;
    }
    text_printf(body, "active loggers:\n  remora: %s\n", log_level_name(log_current_level()));
    return 200;
}

static int h_reset_counters(request_t *rq, text_t *body)
{
    metrics_reset_counters(rq->s);
    text_printf(body, "OK\n");
    return 200;
}

static int h_drain_listeners(request_t *rq, text_t *body)
{
    server_drain_listeners(rq->s);
    text_printf(body, "OK\n");
    return 200;
}

static int h_quit(request_t *rq, text_t *body)
{
    text_printf(body, "OK\n");
    server_drain(rq->s);
    return 200;
}

static int h_hc_fail(request_t *rq, text_t *body)
{
    atomic_store(&rq->s->healthcheck_failed, 1);
    text_printf(body, "OK\n");
    return 200;
}

static int h_hc_ok(request_t *rq, text_t *body)
{
    atomic_store(&rq->s->healthcheck_failed, 0);
    text_printf(body, "OK\n");
    return 200;
}

static int h_rollouts(request_t *rq, text_t *body)
{
    rollouts_json(rq->s->rollouts, body);
    return 200;
}

static int h_ui(request_t *rq, text_t *body)
{
    (void)rq;
    text_printf(body, "%s", ui_page_html);
    return 200;
}

static int h_ui_state(request_t *rq, text_t *body)
{
    ui_state_json(rq->s, body);
    return 200;
}

static int h_help(request_t *rq, text_t *body);

typedef struct route_entry {
    const char *path;
    int post; /* changes state: POST only, as in Envoy */
    int (*handler)(request_t *rq, text_t *body);
    const char *content_type;
    const char *help;
} route_entry_t;

static const route_entry_t routes[] = {
    {"/ready", 0, h_ready, "text/plain", "LIVE when serving, else the state and 503"},
    {"/server_info", 0, h_server_info, "application/json", "version, state, uptime"},
    {"/stats", 0, h_stats, "text/plain",
     "statistics; filter=REGEX, usedonly, format=json|prometheus"},
    {"/stats/prometheus", 0, h_prometheus, "text/plain; version=0.0.4",
     "statistics in Prometheus text format; filter=REGEX, usedonly"},
    {"/clusters", 0, h_clusters, "text/plain", "upstream clusters and endpoints; format=json"},
    {"/listeners", 0, h_listeners, "text/plain", "listeners; format=json"},
    {"/config_dump", 0, h_config_dump, "application/json", "the config in force"},
    {"/certs", 0, h_certs, "application/json", "loaded certificates"},
    {"/memory", 0, h_memory, "application/json", "heap statistics"},
    {"/runtime", 0, h_runtime, "application/json", "runtime values (none)"},
    {"/rollouts", 0, h_rollouts, "application/json", "rollouts: state, step, weight, decisions"},
    {"/ui", 0, h_ui, "text/html; charset=utf-8", "a live page of routes, weights and rollouts"},
    {"/ui/state", 0, h_ui_state, "application/json", "what /ui shows, as JSON"},
    {"/help", 0, h_help, "text/plain", "this list"},
    {"/logging", 1, h_logging, "text/plain", "log level; level=trace..off"},
    {"/reset_counters", 1, h_reset_counters, "text/plain", "zero every counter"},
    {"/drain_listeners", 1, h_drain_listeners, "text/plain",
     "stop accepting; /server_info says DRAINING"},
    {"/healthcheck/fail", 1, h_hc_fail, "text/plain", "fail health checks (DRAINING)"},
    {"/healthcheck/ok", 1, h_hc_ok, "text/plain", "pass health checks again"},
    {"/quitquitquit", 1, h_quit, "text/plain", "drain, then exit"},
};

static int h_help(request_t *rq, text_t *body)
{
    (void)rq;
    text_printf(body, "admin commands are:\n");
    for (size_t i = 0; i < sizeof routes / sizeof *routes; i++)
        text_printf(body, "  %s%s: %s\n", routes[i].path, routes[i].post ? " (POST)" : "",
                    routes[i].help);
    return 200;
}

/* ---- connection plumbing ---- */

/* One of the connection's two handles has closed; after the second it leaves the list and is
 * freed (STYLE 8: only here). */
static void on_closed(uv_handle_t *h)
{
    admin_conn_t *c = h->data;
    if (--c->open_handles > 0)
        return;
    if (c->prev)
        c->prev->next = c->next;
    else
        c->srv->admin_conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    head_free(&c->head);
    free(c);
}

static void close_conn(admin_conn_t *c)
{
    if (uv_is_closing((uv_handle_t *)&c->tcp))
        return;
    uv_close((uv_handle_t *)&c->timer, on_closed);
    uv_close((uv_handle_t *)&c->tcp, on_closed);
}

/* The data plane's proxy.requestHeaderTimeout bounds the admin request too; 0 there turns the
 * data plane's off, never the admin API's. */
static uint64_t read_timeout_ms(const server_t *s)
{
    return s->set.header_timeout_ms ? s->set.header_timeout_ms : ADMIN_HEAD_TIMEOUT_MS;
}

static void on_timeout(uv_timer_t *t);

/* Enters st and starts its deadline. */
static void set_state(admin_conn_t *c, enum conn_state st)
{
    c->state = st;
    uint64_t ms = st == CONN_READING ? read_timeout_ms(c->srv) : ADMIN_WRITE_TIMEOUT_MS;
    uv_timer_start(&c->timer, on_timeout, ms, 0);
}

typedef struct admin_write {
    uv_write_t req;
    text_t out;
} admin_write_t;

/* Also called with UV_ECANCELED when the connection closes before the answer left. */
static void on_written(uv_write_t *req, int status)
{
    admin_write_t *w = (admin_write_t *)req;
    (void)status;
    close_conn(req->handle->data);
    free(w->out.p);
    free(w);
}

/* Writes the one answer; the connection stops reading and closes once it is out. */
static void respond(admin_conn_t *c, int status, const char *ctype, text_t *body, int head)
{
    uv_read_stop((uv_stream_t *)&c->tcp);
    set_state(c, CONN_WRITING);
    admin_write_t *w = calloc(1, sizeof *w);
    if (!w) {
        close_conn(c);
        return;
    }
    text_printf(&w->out,
                "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                "Connection: close\r\n\r\n",
                status, http_reason(status), ctype, body->len);
    if (!head && body->len)
        text_printf(&w->out, "%.*s", (int)body->len, body->p);
    uv_buf_t b = uv_buf_init(w->out.p, (unsigned)w->out.len);
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_written) != 0) {
        free(w->out.p);
        free(w);
        close_conn(c);
    }
}

static void respond_text(admin_conn_t *c, int status, const char *message)
{
    text_t body = {0};
    text_printf(&body, "%s", message);
    respond(c, status, "text/plain", &body, 0);
    free(body.p);
}

/* The time of c's state is up. Reading: a request under way gets 408, as the data plane's do
 * (docs/engine.md); a connection that sent nothing is closed quietly. Writing: the client is
 * not taking its answer. */
static void on_timeout(uv_timer_t *t)
{
    admin_conn_t *c = t->data;
    switch (c->state) {
    case CONN_READING:
        log_debug("admin: request not received within %" PRIu64 " ms; closing",
                  read_timeout_ms(c->srv));
        if (c->seen)
            respond_text(c, 408, "request timeout\n");
        else
            close_conn(c);
        break;
    case CONN_WRITING:
        log_debug("admin: answer not taken within %d ms; closing", ADMIN_WRITE_TIMEOUT_MS);
        close_conn(c);
        break;
    }
}

/* Runs the handler of c->url's route; returns the status, with the answer in body. */
static int run_route(admin_conn_t *c, text_t *body, const char **ctype)
{
    size_t plen = strcspn(c->url, "?");
    const char *query = c->url[plen] ? c->url + plen + 1 : "";
    c->url[plen] = '\0';
    for (size_t i = 0; i < sizeof routes / sizeof *routes; i++) {
        if (strcmp(c->url, routes[i].path) != 0)
            continue;
        if (routes[i].post && c->head.method != HTTP_POST) {
            text_printf(body, "%s requires a POST\n", routes[i].path);
            return 405;
        }
        request_t rq = {.s = c->srv, .query = query, .ctype = routes[i].content_type};
        int status = routes[i].handler(&rq, body);
        *ctype = rq.ctype;
        return status;
    }
    text_printf(body, "unknown admin path %s\n", c->url);
    return 404;
}

static void dispatch(admin_conn_t *c)
{
    text_t body = {0};
    const char *ctype = "text/plain";
    int status;
    if (c->target_len > ADMIN_MAX_TARGET) { /* RFC 9110 §15.5.15 */
        status = 414;
        text_printf(&body, "request target of %zu bytes: the admin API takes at most %d\n",
                    c->target_len, ADMIN_MAX_TARGET);
    } else {
        status = run_route(c, &body, &ctype);
    }
    respond(c, status, ctype, &body, c->head.method == HTTP_HEAD);
    free(body.p);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    (void)h;
    (void)suggested;
    b->base = malloc(2048);
    b->len = b->base ? 2048 : 0;
}

/* Copies the request-target out of the head, for dispatch to cut at '?'; of one longer than
 * ADMIN_MAX_TARGET only the length is kept, for the 414. */
static void keep_target(admin_conn_t *c)
{
    c->target_len = c->head.target_len;
    size_t len = c->target_len <= ADMIN_MAX_TARGET ? c->target_len : 0;
    memcpy(c->url, head_str(&c->head, c->head.target), len);
    c->url[len] = '\0';
}

/* Parses p[0..n); returns the last event: H1_END once the request is complete (the body of a
 * POST, if any, is read and dropped), H1_ERROR, or H1_NEED_MORE. */
static h1_ev_t feed(admin_conn_t *c, const char *p, size_t n)
{
    h1_ev_t ev = {.type = H1_NEED_MORE};
    for (;;) {
        size_t used = h1_parse(&c->parser, p, n, &ev);
        p += used;
        n -= used;
        if (ev.type == H1_HEAD)
            keep_target(c);
        if (ev.type == H1_END || ev.type == H1_ERROR || ev.type == H1_NEED_MORE)
            return ev;
    }
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    admin_conn_t *c = s->data;
    if (nread < 0 || c->state != CONN_READING) {
        free(b->base);
        if (nread < 0)
            close_conn(c);
        return;
    }
    c->seen += (size_t)nread;
    h1_ev_t ev = feed(c, b->base, (size_t)nread);
    free(b->base);
    if (ev.type == H1_END)
        dispatch(c);
    else if (ev.type == H1_ERROR || c->seen > ADMIN_MAX_REQUEST)
        respond_text(c, 400, "bad request\n");
}

/* Connections holding a descriptor: a closing one gave its back in uv_close. At most
 * ADMIN_MAX_CONNS, so counting them at each accept is cheaper than keeping a count right. */
static unsigned open_conns(const server_t *s)
{
    unsigned n = 0;
    for (const admin_conn_t *c = s->admin_conns; c; c = c->next)
        n += !uv_is_closing((const uv_handle_t *)&c->tcp);
    return n;
}

static const char busy_answer[] = "HTTP/1.1 503 Service Unavailable\r\n"
                                  "Content-Type: text/plain\r\nContent-Length: 32\r\n"
                                  "Connection: close\r\n\r\n"
                                  "too many admin connections open\n";

static void on_turned_away(uv_handle_t *h)
{
    free(h);
}

/* What the client has sent so far, read and dropped: a socket closed with unread bytes sends a
 * reset, which can destroy the answer before the client reads it. */
static void discard_received(uv_tcp_t *t)
{
    uv_os_fd_t fd;
    char sink[4096];
    if (uv_fileno((uv_handle_t *)t, &fd) != 0)
        return;
    for (int i = 0; i < 4 && recv(fd, sink, sizeof sink, MSG_DONTWAIT) == (ssize_t)sizeof sink;
         i++) {
    }
}

/* Over ADMIN_MAX_CONNS. The connection is accepted all the same: libuv stops accepting while
 * one waits untaken, and the backlog would hold it. The 503 is best effort (a fresh socket's
 * send buffer takes it whole), ended by a FIN; the close frees the descriptor at once. */
static void turn_away(server_t *s, uv_stream_t *server)
{
    log_debug("admin: %d connections open; answering a new one 503", ADMIN_MAX_CONNS);
    uv_tcp_t *t = malloc(sizeof *t);
    if (!t)
        return;
    uv_tcp_init(s->loop, t);
    if (uv_accept(server, (uv_stream_t *)t) == 0) {
        discard_received(t);
        uv_buf_t b = uv_buf_init((char *)busy_answer, sizeof busy_answer - 1);
        uv_os_fd_t fd;
        if (uv_try_write((uv_stream_t *)t, &b, 1) > 0 && uv_fileno((uv_handle_t *)t, &fd) == 0)
            shutdown(fd, SHUT_WR);
    }
    uv_close((uv_handle_t *)t, on_turned_away);
}

static void on_connection(uv_stream_t *server, int status)
{
    server_t *s = server->data;
    if (status < 0)
        return;
    if (open_conns(s) >= ADMIN_MAX_CONNS) {
        turn_away(s, server);
        return;
    }
    admin_conn_t *c = calloc(1, sizeof *c);
    if (!c)
        return;
    c->srv = s;
    uv_tcp_init(s->loop, &c->tcp);
    uv_timer_init(s->loop, &c->timer);
    c->tcp.data = c->timer.data = c;
    c->open_handles = 2;
    c->next = s->admin_conns;
    if (s->admin_conns)
        s->admin_conns->prev = c;
    s->admin_conns = c;
    head_init(&c->head);
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
        close_conn(c);
        return;
    }
    h1_parser_init(&c->parser, H1_REQUEST, &c->head, NULL);
    set_state(c, CONN_READING);
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

int admin_start(server_t *s)
{
    struct sockaddr_storage addr;
    int err = uv_ip4_addr(s->set.admin_host, s->set.admin_port, (struct sockaddr_in *)&addr);
    if (err)
        err = uv_ip6_addr(s->set.admin_host, s->set.admin_port, (struct sockaddr_in6 *)&addr);
    if (err) {
        log_error("admin: bad address %s", s->set.admin_host);
        return err;
    }
    uv_tcp_init(s->loop, &s->admin);
    s->admin.data = s;
    err = uv_tcp_bind(&s->admin, (struct sockaddr *)&addr, 0);
    if (err == 0)
        err = uv_listen((uv_stream_t *)&s->admin, 128, on_connection);
    if (err) {
        log_error("admin: cannot listen on %s:%u: %s", s->set.admin_host, s->set.admin_port,
                  uv_strerror(err));
        uv_close((uv_handle_t *)&s->admin, NULL);
        return err;
    }
    return 0;
}

void admin_stop(server_t *s)
{
    if (!uv_is_closing((uv_handle_t *)&s->admin))
        uv_close((uv_handle_t *)&s->admin, NULL);
    for (admin_conn_t *c = s->admin_conns; c; c = c->next)
        close_conn(c);
}
