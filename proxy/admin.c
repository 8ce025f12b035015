#include "proxy/admin.h"

#include <inttypes.h>
#include <malloc.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "discovery/dns.h"
#include "base/log.h"
#include "base/text.h"
#include "http/h1_parse.h"
#include "proxy/metrics.h"
#include "proxy/rollouts.h"
#include "proxy/ui_page.h"
#include "base/version.h"

#define ADMIN_MAX_REQUEST 8192

typedef struct admin_conn {
    uv_tcp_t tcp;
    server_t *srv;
    h1_parser_t parser;
    head_t head;
    char url[512];
    size_t seen;
    int done;
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

/* The value of `key` in a query string, percent-decoded into out; 1 when present (a bare
 * `key` has the value ""), 0 when absent. */
static int param(const char *query, const char *key, char *out, size_t cap)
{
    size_t klen = strlen(key);
    for (const char *p = query; p && *p;) {
        const char *end = strchr(p, '&');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        if (n >= klen && !strncmp(p, key, klen) && (n == klen || p[klen] == '=')) {
            size_t o = 0;
            for (size_t i = klen + 1; i < n && o + 1 < cap; i++) {
                if (p[i] == '%' && i + 2 < n && hex(p[i + 1]) >= 0 && hex(p[i + 2]) >= 0) {
                    out[o++] = (char)(hex(p[i + 1]) * 16 + hex(p[i + 2]));
                    i += 2;
                } else {
                    out[o++] = p[i] == '+' ? ' ' : p[i];
                }
            }
            if (cap)
                out[o < cap ? o : cap - 1] = '\0';
            return 1;
        }
        p = end ? end + 1 : NULL;
    }
    if (cap)
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

/* /stats, with Envoy's parameters: filter=REGEX, usedonly, format=json|prometheus. */
static int h_stats(request_t *rq, text_t *body)
{
    char filter[256], format[32], tmp[4];
    param(rq->query, "format", format, sizeof format);
    metrics_query_t q = {.filter =
                             param(rq->query, "filter", filter, sizeof filter) ? filter : NULL,
                         .used_only = param(rq->query, "usedonly", tmp, sizeof tmp)};
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
    char filter[256], tmp[4];
    metrics_query_t q = {.filter =
                             param(rq->query, "filter", filter, sizeof filter) ? filter : NULL,
                         .used_only = param(rq->query, "usedonly", tmp, sizeof tmp)};
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

static void on_closed(uv_handle_t *h)
{
    admin_conn_t *c = h->data;
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
    if (!uv_is_closing((uv_handle_t *)&c->tcp))
        uv_close((uv_handle_t *)&c->tcp, on_closed);
}

typedef struct admin_write {
    uv_write_t req;
    text_t out;
} admin_write_t;

static void on_written(uv_write_t *req, int status)
{
    admin_write_t *w = (admin_write_t *)req;
    (void)status;
    close_conn(req->handle->data);
    free(w->out.p);
    free(w);
}

static void respond(admin_conn_t *c, int status, const char *ctype, text_t *body, int head)
{
    admin_write_t *w = calloc(1, sizeof *w);
    if (!w) {
        close_conn(c);
        return;
    }
    const char *reason = status == 200   ? "OK"
                         : status == 404 ? "Not Found"
                         : status == 405 ? "Method Not Allowed"
                         : status == 400 ? "Bad Request"
                                         : "Service Unavailable";
    text_printf(&w->out,
                "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                "Connection: close\r\n\r\n",
                status, reason, ctype, body->len);
    if (!head && body->len)
        text_printf(&w->out, "%.*s", (int)body->len, body->p);
    uv_buf_t b = uv_buf_init(w->out.p, (unsigned)w->out.len);
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_written) != 0) {
        free(w->out.p);
        free(w);
        close_conn(c);
    }
}

static void dispatch(admin_conn_t *c)
{
    text_t body = {0};
    int method = c->head.method;
    size_t plen = strcspn(c->url, "?");
    const char *query = c->url[plen] ? c->url + plen + 1 : "";
    c->url[plen] = '\0';
    int status = 404;
    const char *ctype = "text/plain";
    for (size_t i = 0; i < sizeof routes / sizeof *routes; i++) {
        if (strcmp(c->url, routes[i].path) != 0)
            continue;
        if (routes[i].post && method != HTTP_POST) {
            status = 405;
            text_printf(&body, "%s requires a POST\n", routes[i].path);
        } else {
            request_t rq = {.s = c->srv, .query = query, .ctype = routes[i].content_type};
            status = routes[i].handler(&rq, &body);
            ctype = rq.ctype;
        }
        break;
    }
    if (status == 404)
        text_printf(&body, "unknown admin path %s\n", c->url);
    respond(c, status, ctype, &body, method == HTTP_HEAD);
    free(body.p);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    (void)h;
    (void)suggested;
    b->base = malloc(2048);
    b->len = b->base ? 2048 : 0;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    admin_conn_t *c = s->data;
    if (nread < 0 || c->done) {
        free(b->base);
        if (nread < 0)
            close_conn(c);
        return;
    }
    c->seen += (size_t)nread;
    const char *p = b->base;
    size_t n = (size_t)nread;
    h1_ev_t ev = {.type = H1_NEED_MORE};
    while (!c->done) { /* the body of a POST, if any, is read and ignored */
        size_t used = h1_parse(&c->parser, p, n, &ev);
        p += used;
        n -= used;
        if (ev.type == H1_HEAD) {
            size_t len = c->head.target_len < sizeof c->url ? c->head.target_len : 0;
            memcpy(c->url, head_str(&c->head, c->head.target), len);
            c->url[len] = '\0';
        }
        c->done = ev.type == H1_END;
        if (ev.type == H1_ERROR || ev.type == H1_NEED_MORE)
            break;
    }
    free(b->base);
    if (c->done) {
        uv_read_stop(s);
        dispatch(c);
    } else if (ev.type == H1_ERROR || c->seen > ADMIN_MAX_REQUEST) {
        text_t body = {0};
        text_printf(&body, "bad request\n");
        c->done = 1;
        respond(c, 400, "text/plain", &body, 0);
        free(body.p);
    }
}

static void on_connection(uv_stream_t *server, int status)
{
    server_t *s = server->data;
    if (status < 0)
        return;
    admin_conn_t *c = calloc(1, sizeof *c);
    if (!c)
        return;
    c->srv = s;
    uv_tcp_init(s->loop, &c->tcp);
    c->tcp.data = c;
    c->next = s->admin_conns;
    if (s->admin_conns)
        s->admin_conns->prev = c;
    s->admin_conns = c;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
        close_conn(c);
        return;
    }
    head_init(&c->head);
    h1_parser_init(&c->parser, H1_REQUEST, &c->head, NULL);
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
