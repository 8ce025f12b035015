#include "proxy/admin.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "discovery/dns.h"
#include "base/log.h"
#include "proxy/h1_parse.h"
#include "proxy/version.h"

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

/* ---- a growable text buffer for responses ---- */

typedef struct text {
    char *p;
    size_t len, cap;
} text_t;

static void tprintf(text_t *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void tprintf(text_t *t, const char *fmt, ...)
{
    va_list ap;
    for (;;) {
        va_start(ap, fmt);
        int n = vsnprintf(t->p ? t->p + t->len : NULL, t->p ? t->cap - t->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0)
            return;
        if (t->p && t->len + (size_t)n < t->cap) {
            t->len += (size_t)n;
            return;
        }
        size_t cap = t->cap ? t->cap * 2 : 4096;
        while (cap <= t->len + (size_t)n)
            cap *= 2;
        char *p = realloc(t->p, cap);
        if (!p)
            return;
        t->p = p;
        t->cap = cap;
    }
}

/* ---- handlers ---- */

static uint64_t now_ms(void)
{
    return uv_hrtime() / 1000000;
}

static uint64_t uptime_s(server_t *s)
{
    return uv_hrtime() / 1000000000u - s->started_ms / 1000;
}

static int is_ready(server_t *s)
{
    return server_state(s) == SERVER_LIVE && !atomic_load(&s->healthcheck_failed);
}

static int h_ready(server_t *s, text_t *body)
{
    enum server_state st = server_state(s);
    if (st == SERVER_LIVE && atomic_load(&s->healthcheck_failed)) {
        tprintf(body, "HEALTH_CHECK_FAILED\n");
        return 503;
    }
    tprintf(body, "%s\n", server_state_name(st));
    return is_ready(s) ? 200 : 503;
}

static int h_server_info(server_t *s, text_t *body)
{
    uint64_t up = uptime_s(s);
    tprintf(
        body,
        "{\n \"version\": \"%s\",\n \"state\": \"%s\",\n \"hot_restart_version\": \"disabled\",\n"
        " \"uptime_current_epoch\": \"%" PRIu64 "s\",\n \"uptime_all_epochs\": \"%" PRIu64
        "s\",\n \"health_check_failed\": %s,\n \"node\": {\"id\": \"%s\", \"cluster\": \"%s\"},\n"
        " \"command_line_options\": {\"concurrency\": %u, \"log_level\": \"%d\"}\n}\n",
        REMORA_VERSION, server_state_name(server_state(s)), up, up,
        atomic_load(&s->healthcheck_failed) ? "true" : "false", s->set.node,
        route_table_config(s->routes)->mesh_name, s->nworkers, (int)s->set.log_level);
    return 200;
}

static void stats_http(text_t *t, const char *prefix, http_stats_t *st)
{
#define LINE(stat, gauge)                                                                          \
    tprintf(t, "http.%s.%s: %" PRIu64 "\n", prefix, #stat, stat_get(&st->stat));
    HTTP_STATS(LINE)
#undef LINE
}

static void stats_ssl(text_t *t, const char *scope, const char *name, ssl_stats_t *st)
{
#define LINE(stat, gauge)                                                                          \
    tprintf(t, "%s.%s.ssl.%s: %" PRIu64 "\n", scope, name, #stat, stat_get(&st->stat));
    SSL_STATS(LINE)
#undef LINE
}

/* Envoy names a listener by its address: 0.0.0.0_15000. */
static void listener_name(server_t *s, char *out, size_t n)
{
    snprintf(out, n, "0.0.0.0_%u", s->set.ingress_port);
}

static void stats_cluster(text_t *t, cluster_t *c)
{
    cluster_stats_t *st = &c->stats;
#define LINE(stat, gauge)                                                                          \
    tprintf(t, "cluster.%s.%s: %" PRIu64 "\n", c->name, #stat, stat_get(&st->stat));
    CLUSTER_STATS(LINE)
#undef LINE
    stats_ssl(t, "cluster", c->name, &c->ssl);
    tprintf(t, "cluster.%s.membership_total: %u\n", c->name, cluster_size(c));
    tprintf(t, "cluster.%s.membership_healthy: %u\n", c->name, cluster_healthy(c, now_ms()));
    for (int r = 0; r < DNS_CANCELLED; r++)
        tprintf(t, "remora.dns.%s.%s: %" PRIu64 "\n", c->name, dns_result_name((enum dns_result)r),
                stat_get(&c->dns_answers[r]));
}

static void stats_targets(text_t *t, registry_t *reg)
{
    for (target_stats_entry_t *e = reg->targets; e; e = e->next) {
#define LINE(stat, gauge)                                                                          \
    tprintf(t, "remora.route.%s.%s.%s.%s: %" PRIu64 "\n", e->router, e->route, e->target, #stat,   \
            stat_get(&e->stats.stat));
        TARGET_STATS(LINE)
#undef LINE
    }
}

static int h_stats(server_t *s, text_t *body)
{
    for (cluster_t *c = s->reg.clusters; c; c = c->next)
        stats_cluster(body, c);
    stats_http(body, "egress", &s->egress_stats);
    stats_http(body, "ingress", &s->ingress_stats);
    char listener[64];
    listener_name(s, listener, sizeof listener);
    stats_ssl(body, "listener", listener, &s->ingress_ssl);
    stats_targets(body, &s->reg);
    tprintf(body, "remora.config.reload_ok: %" PRIu64 "\n", stat_get(&s->reg.reloads_ok));
    tprintf(body, "remora.config.reload_failed: %" PRIu64 "\n", stat_get(&s->reg.reloads_failed));
    tprintf(body, "remora.tls.reload_ok: %" PRIu64 "\n", stat_get(&s->tls_reloads_ok));
    tprintf(body, "remora.tls.reload_failed: %" PRIu64 "\n", stat_get(&s->tls_reloads_failed));
    if (s->xray) {
        xray_stats_t *x = xray_stats(s->xray);
        tprintf(body,
                "remora.xray.sent: %" PRIu64 "\nremora.xray.send_failed: %" PRIu64
                "\nremora.xray.sampled: %" PRIu64 "\nremora.xray.unsampled: %" PRIu64
                "\nremora.xray.split: %" PRIu64 "\n",
                stat_get(&x->sent), stat_get(&x->send_failed), stat_get(&x->sampled),
                stat_get(&x->unsampled), stat_get(&x->split));
    }
    tprintf(body, "server.concurrency: %u\n", s->nworkers);
    tprintf(body, "server.live: %d\n", server_state(s) == SERVER_LIVE);
    tprintf(body, "server.uptime: %" PRIu64 "\n", uptime_s(s));
    return 200;
}

/* Envoy's Prometheus names: envoy_<scope>_<stat>, with the scope's name as a label; the
 * per-class counters ..._2xx fold into one family ..._xx labelled by class. Returns the class
 * digit, or 0 for a stat that is not per-class. */
static char family_of(const char *stat, char *family, size_t cap)
{
    size_t n = strlen(stat);
    snprintf(family, cap, "%s", stat);
    if (n < 5 || n >= cap || stat[n - 4] != '_' || stat[n - 3] < '1' || stat[n - 3] > '5' ||
        strcmp(stat + n - 2, "xx") != 0)
        return 0;
    memcpy(family + n - 3, "xx", 3);
    return stat[n - 3];
}

static void prom_series(text_t *t, const char *scope, const char *stat, int gauge,
                        const char *label, const char *value, uint64_t v, int *typed)
{
    char family[96];
    char cls = family_of(stat, family, sizeof family);
    if (!*typed)
        tprintf(t, "# TYPE envoy_%s_%s %s\n", scope, family, gauge ? "gauge" : "counter");
    *typed = 1;
    if (cls)
        tprintf(t, "envoy_%s_%s{envoy_response_code_class=\"%c\",%s=\"%s\"} %" PRIu64 "\n", scope,
                family, cls, label, value, v);
    else
        tprintf(t, "envoy_%s_%s{%s=\"%s\"} %" PRIu64 "\n", scope, family, label, value, v);
}

/* remora_route_target_*: what Envoy has no name for. Picks, responses by class and retries per
 * weighted target, so a canary's error rate reads per version and per route. */
static void prom_targets(text_t *t, registry_t *reg)
{
    static const char *const classes = "12345";
    tprintf(t, "# TYPE remora_route_target_picks_total counter\n");
    for (target_stats_entry_t *e = reg->targets; e; e = e->next)
        tprintf(t,
                "remora_route_target_picks_total{router=\"%s\",route=\"%s\",target=\"%s\"} "
                "%" PRIu64 "\n",
                e->router, e->route, e->target, stat_get(&e->stats.picks));
    tprintf(t, "# TYPE remora_route_target_rq_xx counter\n");
    for (target_stats_entry_t *e = reg->targets; e; e = e->next)
        for (int c = 0; c < 5; c++)
            tprintf(t,
                    "remora_route_target_rq_xx{response_code_class=\"%c\",router=\"%s\","
                    "route=\"%s\",target=\"%s\"} %" PRIu64 "\n",
                    classes[c], e->router, e->route, e->target, stat_get(&e->stats.rq_1xx + c));
    tprintf(t, "# TYPE remora_route_target_retries_total counter\n");
    for (target_stats_entry_t *e = reg->targets; e; e = e->next)
        tprintf(t,
                "remora_route_target_retries_total{router=\"%s\",route=\"%s\",target=\"%s\"} "
                "%" PRIu64 "\n",
                e->router, e->route, e->target, stat_get(&e->stats.retries));
}

/* Every cluster's endpoints, in Envoy's /clusters text shape:
 * CLUSTER::ADDRESS::FIELD::VALUE. */
static int h_clusters(server_t *s, text_t *body)
{
    uint64_t now = now_ms();
    for (cluster_t *c = s->reg.clusters; c; c = c->next) {
        tprintf(body, "%s::membership_total::%u\n", c->name, cluster_size(c));
        tprintf(body, "%s::membership_healthy::%u\n", c->name, cluster_healthy(c, now));
        const endpoint_set_t *set = atomic_load(&c->set);
        for (unsigned i = 0; set && i < set->n; i++) {
            const endpoint_t *e = &set->eps[i];
            endpoint_state_t *st = e->state;
            uint64_t until = atomic_load(&st->ejected_until_ms);
            const char *health = atomic_load(&st->unhealthy) ? "/failed_active_hc"
                                 : until > now               ? "/failed_outlier_check"
                                                             : "healthy";
            tprintf(body, "%s::%s::health_flags::%s\n", c->name, e->name, health);
            tprintf(body, "%s::%s::priority::%u\n%s::%s::weight::%u\n", c->name, e->name,
                    e->priority, c->name, e->name, e->weight);
            tprintf(body, "%s::%s::rq_active::%u\n%s::%s::rq_total::%" PRIu64 "\n", c->name,
                    e->name, atomic_load(&st->active_requests), c->name, e->name,
                    atomic_load(&st->requests));
            tprintf(body, "%s::%s::rq_error::%" PRIu64 "\n%s::%s::times_ejected::%u\n", c->name,
                    e->name, atomic_load(&st->errors), c->name, e->name,
                    atomic_load(&st->times_ejected));
        }
    }
    return 200;
}

static int h_config_dump(server_t *s, text_t *body)
{
    const config_t *c = route_table_config(s->routes);
    tprintf(body, "{\"source\": \"%s\", \"node\": \"%s\", \"config\": %s}\n", c->source,
            s->set.node, c->raw);
    return 200;
}

static int h_prometheus(server_t *s, text_t *body)
{
    static const char *const prefixes[] = {"ingress", "egress"};
    http_stats_t *hs[] = {&s->ingress_stats, &s->egress_stats};
    int typed;
#define HTTP_LINE(name, gauge)                                                                     \
    typed = !strstr(#name, "_1xx") && strstr(#name, "xx") ? 1 : 0;                                 \
    for (int i = 0; i < 2; i++)                                                                    \
        prom_series(body, "http", #name, gauge, "envoy_http_conn_manager_prefix", prefixes[i],     \
                    stat_get(&hs[i]->name), &typed);
    HTTP_STATS(HTTP_LINE)
#undef HTTP_LINE
#define CLUSTER_LINE(stat, gauge)                                                                  \
    typed = !strstr(#stat, "_1xx") && strstr(#stat, "xx") ? 1 : 0;                                 \
    for (cluster_t *c = s->reg.clusters; c; c = c->next)                                           \
        prom_series(body, "cluster", #stat, gauge, "envoy_cluster_name", c->name,                  \
                    stat_get(&c->stats.stat), &typed);
    CLUSTER_STATS(CLUSTER_LINE)
#undef CLUSTER_LINE
    char listener[64];
    listener_name(s, listener, sizeof listener);
#define SSL_LINE(stat, gauge)                                                                      \
    typed = 0;                                                                                     \
    prom_series(body, "listener", "ssl_" #stat, gauge, "envoy_listener_address", listener,         \
                stat_get(&s->ingress_ssl.stat), &typed);                                           \
    typed = 0;                                                                                     \
    for (cluster_t *c = s->reg.clusters; c; c = c->next)                                           \
        prom_series(body, "cluster", "ssl_" #stat, gauge, "envoy_cluster_name", c->name,           \
                    stat_get(&c->ssl.stat), &typed);
    SSL_STATS(SSL_LINE)
#undef SSL_LINE
    tprintf(body, "# TYPE envoy_cluster_membership_total gauge\n");
    for (cluster_t *c = s->reg.clusters; c; c = c->next)
        tprintf(body, "envoy_cluster_membership_total{envoy_cluster_name=\"%s\"} %u\n", c->name,
                cluster_size(c));
    tprintf(body, "# TYPE envoy_cluster_membership_healthy gauge\n");
    for (cluster_t *c = s->reg.clusters; c; c = c->next)
        tprintf(body, "envoy_cluster_membership_healthy{envoy_cluster_name=\"%s\"} %u\n", c->name,
                cluster_healthy(c, now_ms()));
    tprintf(body, "# TYPE remora_dns_answers_total counter\n");
    for (cluster_t *c = s->reg.clusters; c; c = c->next)
        for (int r = 0; r < DNS_CANCELLED; r++)
            tprintf(body,
                    "remora_dns_answers_total{envoy_cluster_name=\"%s\",result=\"%s\"} %" PRIu64
                    "\n",
                    c->name, dns_result_name((enum dns_result)r), stat_get(&c->dns_answers[r]));
    prom_targets(body, &s->reg);
    tprintf(body,
            "# TYPE remora_config_reloads_total counter\n"
            "remora_config_reloads_total{result=\"success\"} %" PRIu64 "\n"
            "remora_config_reloads_total{result=\"failure\"} %" PRIu64 "\n"
            "# TYPE remora_tls_reloads_total counter\n"
            "remora_tls_reloads_total{result=\"success\"} %" PRIu64 "\n"
            "remora_tls_reloads_total{result=\"failure\"} %" PRIu64 "\n",
            stat_get(&s->reg.reloads_ok), stat_get(&s->reg.reloads_failed),
            stat_get(&s->tls_reloads_ok), stat_get(&s->tls_reloads_failed));
    if (s->xray) {
        xray_stats_t *x = xray_stats(s->xray);
        tprintf(body,
                "# TYPE remora_xray_documents_total counter\n"
                "remora_xray_documents_total{result=\"sent\"} %" PRIu64 "\n"
                "remora_xray_documents_total{result=\"failed\"} %" PRIu64 "\n"
                "# TYPE remora_xray_requests_total counter\n"
                "remora_xray_requests_total{sampled=\"true\"} %" PRIu64 "\n"
                "remora_xray_requests_total{sampled=\"false\"} %" PRIu64 "\n",
                stat_get(&x->sent), stat_get(&x->send_failed), stat_get(&x->sampled),
                stat_get(&x->unsampled));
    }
    tprintf(body, "# TYPE envoy_server_live gauge\nenvoy_server_live %d\n",
            server_state(s) == SERVER_LIVE);
    tprintf(body, "# TYPE envoy_server_uptime gauge\nenvoy_server_uptime %" PRIu64 "\n",
            uptime_s(s));
    return 200;
}

static int h_certs(server_t *s, text_t *body)
{
    char *json = tls_certs_json(&s->reg.tls);
    if (!json)
        return 503;
    tprintf(body, "%s", json);
    free(json);
    return 200;
}

static int h_quit(server_t *s, text_t *body)
{
    tprintf(body, "OK\n");
    server_drain(s);
    return 200;
}

static int h_hc_fail(server_t *s, text_t *body)
{
    atomic_store(&s->healthcheck_failed, 1);
    tprintf(body, "OK\n");
    return 200;
}

static int h_hc_ok(server_t *s, text_t *body)
{
    atomic_store(&s->healthcheck_failed, 0);
    tprintf(body, "OK\n");
    return 200;
}

typedef struct route_entry {
    const char *path;
    int post; /* changes state: POST only, as in Envoy */
    int (*handler)(server_t *s, text_t *body);
    const char *content_type;
} route_entry_t;

static const route_entry_t routes[] = {
    {"/ready", 0, h_ready, "text/plain"},
    {"/server_info", 0, h_server_info, "application/json"},
    {"/stats", 0, h_stats, "text/plain"},
    {"/stats/prometheus", 0, h_prometheus, "text/plain; version=0.0.4"},
    {"/config_dump", 0, h_config_dump, "application/json"},
    {"/clusters", 0, h_clusters, "text/plain"},
    {"/certs", 0, h_certs, "application/json"},
    {"/quitquitquit", 1, h_quit, "text/plain"},
    {"/healthcheck/fail", 1, h_hc_fail, "text/plain"},
    {"/healthcheck/ok", 1, h_hc_ok, "text/plain"},
};

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
    tprintf(&w->out,
            "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
            "Connection: close\r\n\r\n",
            status, reason, ctype, body->len);
    if (!head && body->len)
        tprintf(&w->out, "%.*s", (int)body->len, body->p);
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
    c->url[plen] = '\0';
    int status = 404;
    const char *ctype = "text/plain";
    for (size_t i = 0; i < sizeof routes / sizeof *routes; i++) {
        if (strcmp(c->url, routes[i].path) != 0)
            continue;
        if (routes[i].post && method != HTTP_POST) {
            status = 405;
            tprintf(&body, "%s requires a POST\n", routes[i].path);
        } else {
            status = routes[i].handler(c->srv, &body);
            ctype = routes[i].content_type;
        }
        break;
    }
    if (status == 404)
        tprintf(&body, "unknown admin path %s\n", c->url);
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
        tprintf(&body, "bad request\n");
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
