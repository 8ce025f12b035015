#include "proxy/metrics.h"

#include <inttypes.h>
#include <malloc.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/text.h"
#include "base/version.h"
#include "discovery/cloudmap.h"
#include "discovery/dns.h"
#include "proxy/rollouts.h"
#include "proxy/server.h"
#include "proxy/stats_filter.h"

/* ---- the list ---- */

typedef struct walk {
    metric_fn fn;
    void *ctx;
    char name[512];
} walk_t;

/* Name `m` (dotted, from fmt) and hand it to the walk's visitor. */
static void visit(walk_t *w, metric_t *m, const char *fmt, va_list ap)
{
    vsnprintf(w->name, sizeof w->name, fmt, ap);
    m->name = w->name;
    w->fn(w->ctx, m);
}

static void emit(walk_t *w, enum metric_kind kind, uint64_t value, stat_t *counter, const char *fmt,
                 ...) __attribute__((format(printf, 5, 6)));
static void emit(walk_t *w, enum metric_kind kind, uint64_t value, stat_t *counter, const char *fmt,
                 ...)
{
    metric_t m = {.kind = kind, .value = value, .counter = counter};
    va_list ap;
    va_start(ap, fmt);
    visit(w, &m, fmt, ap);
    va_end(ap);
}

/* A metric the caller filled in (a gauge in its own family, say), named by fmt. */
static void visit_named(walk_t *w, metric_t *m, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void visit_named(walk_t *w, metric_t *m, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    visit(w, m, fmt, ap);
    va_end(ap);
}

static void emit_hist(walk_t *w, const histogram_t *h, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void emit_hist(walk_t *w, const histogram_t *h, const char *fmt, ...)
{
    metric_t m = {.kind = METRIC_HISTOGRAM, .hist = h};
    va_list ap;
    va_start(ap, fmt);
    visit(w, &m, fmt, ap);
    va_end(ap);
}

/* remora's own: a dotted name for /stats, a family and labels for Prometheus. */
static void emit_own(walk_t *w, stat_t *counter, const char *family, const char *labels,
                     const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static void emit_own(walk_t *w, stat_t *counter, const char *family, const char *labels,
                     const char *fmt, ...)
{
    metric_t m = {.kind = METRIC_COUNTER,
                  .value = stat_get(counter),
                  .counter = counter,
                  .family = family,
                  .labels = labels};
    va_list ap;
    va_start(ap, fmt);
    visit(w, &m, fmt, ap);
    va_end(ap);
}

static uint64_t now_ms(void)
{
    return uv_hrtime() / 1000000;
}

static unsigned ejected_now(cluster_t *c, uint64_t now)
{
    const endpoint_set_t *set = atomic_load(&c->set);
    unsigned n = 0;
    for (unsigned i = 0; set && i < set->n; i++)
        n += atomic_load(&set->eps[i].state->ejected_until_ms) > now;
    return n;
}

/* The limits the snapshot in force gives a cluster (ingress clusters have them). */
static void limits_of(server_t *s, const cluster_t *c, uint32_t *max_rq, uint32_t *max_pending)
{
    *max_rq = *max_pending = 0;
    const cfg_node_t *node = route_table_node(s->routes);
    for (unsigned i = 0; i < node->nlisteners; i++) {
        const route_listener_t *l = route_ingress(s->routes, node->listeners[i].port);
        if (l->r.cluster == c) {
            *max_rq = l->r.max_requests;
            *max_pending = l->r.max_pending;
        }
    }
}

/* The Cloud Map API's calls and revision, for the clusters that use it. */
static void walk_cloudmap(walk_t *w, cluster_t *c)
{
    const char *n = c->name;
    char labels[400];
    for (int op = 0; op < CM_OPS; op++)
        for (int r = 0; r < CM_RESULTS; r++) {
            const char *opn = cloudmap_op_name((enum cm_op)op);
            const char *res = cloudmap_result_name((enum cm_result)r);
            snprintf(labels, sizeof labels,
                     "envoy_cluster_name=\"%s\",operation=\"%s\",result=\"%s\"", n, opn, res);
            emit_own(w, &c->cloudmap_calls[op][r], "remora_cloudmap_requests_total", labels,
                     "remora.cloudmap.%s.%s.%s", n, opn, res);
        }
    snprintf(labels, sizeof labels, "envoy_cluster_name=\"%s\"", n);
    metric_t m = {.kind = METRIC_GAUGE,
                  .value = (uint64_t)atomic_load(&c->cloudmap_revision),
                  .family = "remora_cloudmap_revision",
                  .labels = labels};
    visit_named(w, &m, "remora.cloudmap.%s.revision", n);
}

static void walk_cluster(server_t *s, walk_t *w, cluster_t *c)
{
    const char *n = c->name;
#define STAT(stat, gauge)                                                                          \
    emit(w, gauge ? METRIC_GAUGE : METRIC_COUNTER, stat_get(&c->stats.stat),                       \
         gauge ? NULL : &c->stats.stat, "cluster.%s.%s", n, #stat);
    CLUSTER_STATS(STAT)
#undef STAT
    for (int code = 100; code < 600; code++) /* Envoy's are made at the first response */
        if (cluster_code_used(c, code))
            emit(w, METRIC_COUNTER, stat_get(&c->rq_code[code - 100]), &c->rq_code[code - 100],
                 "cluster.%s.upstream_rq_%d", n, code);
    uint64_t now = now_ms();
    emit(w, METRIC_GAUGE, cluster_size(c), NULL, "cluster.%s.membership_total", n);
    emit(w, METRIC_GAUGE, cluster_healthy(c, now), NULL, "cluster.%s.membership_healthy", n);
    emit(w, METRIC_GAUGE, ejected_now(c, now), NULL,
         "cluster.%s.outlier_detection.ejections_active", n);
    /* remora ejects on consecutive 5xx and connect failures only: Envoy's reason-named counter
     * is the same count. */
    emit(w, METRIC_COUNTER, stat_get(&c->stats.outlier_detection_ejections_enforced_total), NULL,
         "cluster.%s.outlier_detection.ejections_enforced_consecutive_5xx", n);
    uint32_t max_rq, max_pending;
    limits_of(s, c, &max_rq, &max_pending);
    unsigned active = atomic_load(&c->active_requests), pending = atomic_load(&c->pending_requests);
    int rq_open = max_rq && active >= max_rq;
    emit(w, METRIC_GAUGE, rq_open, NULL, "cluster.%s.circuit_breakers.default.cx_open", n);
    emit(w, METRIC_GAUGE, rq_open, NULL, "cluster.%s.circuit_breakers.default.rq_open", n);
    emit(w, METRIC_GAUGE, max_pending && pending >= max_pending, NULL,
         "cluster.%s.circuit_breakers.default.rq_pending_open", n);
    emit(w, METRIC_GAUGE, 0, NULL, "cluster.%s.circuit_breakers.default.rq_retry_open", n);
    /* Never anything but 0: remora caps no number of pools and has no maintenance mode (an
     * Envoy runtime key). Dashboards and the CloudWatch agent's selectors ask for both. */
    emit(w, METRIC_GAUGE, 0, NULL, "cluster.%s.circuit_breakers.default.cx_pool_open", n);
    emit(w, METRIC_COUNTER, 0, NULL, "cluster.%s.upstream_rq_maintenance_mode", n);
#define SSL(stat, gauge)                                                                           \
    emit(w, METRIC_COUNTER, stat_get(&c->ssl.stat), &c->ssl.stat, "cluster.%s.ssl.%s", n, #stat);
    SSL_STATS(SSL)
#undef SSL
    emit_hist(w, &c->stats.rq_time, "cluster.%s.upstream_rq_time", n);
    emit_hist(w, &c->stats.cx_connect_ms, "cluster.%s.upstream_cx_connect_ms", n);
    char labels[400];
    for (int r = 0; r < DNS_CANCELLED; r++) {
        const char *res = dns_result_name((enum dns_result)r);
        snprintf(labels, sizeof labels, "envoy_cluster_name=\"%s\",result=\"%s\"", n, res);
        emit_own(w, &c->dns_answers[r], "remora_dns_answers_total", labels, "remora.dns.%s.%s", n,
                 res);
    }
    if (c->discovery_source && !strcmp(c->discovery_source, "cloudmap_api"))
        walk_cloudmap(w, c);
}

static void walk_http(walk_t *w, const char *prefix, const char *listener, http_stats_t *st)
{
#define STAT(stat, gauge)                                                                          \
    emit(w, gauge ? METRIC_GAUGE : METRIC_COUNTER, stat_get(&st->stat), gauge ? NULL : &st->stat,  \
         "http.%s.%s", prefix, #stat);
    HTTP_STATS(STAT)
#undef STAT
#define H2(stat, gauge)                                                                            \
    emit(w, gauge ? METRIC_GAUGE : METRIC_COUNTER, stat_get(&st->http2.stat),                      \
         gauge ? NULL : &st->http2.stat, "http.%s.http2.%s", prefix, #stat);
    H2_STATS(H2)
#undef H2
    emit_hist(w, &st->rq_time, "http.%s.downstream_rq_time", prefix);
    stat_t *cls = &st->downstream_rq_1xx; /* the same counts under the listener's scope */
    for (int i = 0; i < 5; i++)
        emit(w, METRIC_COUNTER, stat_get(&cls[i]), NULL, "listener.%s.http.%s.downstream_rq_%dxx",
             listener, prefix, i + 1);
}

/* A listener's connections, and its TLS handshakes unless it is egress (never TLS). */
static void walk_listener(walk_t *w, listener_slot_t *l)
{
    char addr[40];
    snprintf(addr, sizeof addr, "0.0.0.0_%u", l->port);
    listener_stats_t *st = &l->cx;
    emit(w, METRIC_COUNTER, stat_get(&st->downstream_cx_total), &st->downstream_cx_total,
         "listener.%s.downstream_cx_total", addr);
    emit(w, METRIC_GAUGE, stat_get(&st->downstream_cx_active), NULL,
         "listener.%s.downstream_cx_active", addr);
    emit(w, METRIC_COUNTER, stat_get(&st->downstream_cx_destroy), &st->downstream_cx_destroy,
         "listener.%s.downstream_cx_destroy", addr);
    if (l->kind == LISTENER_EGRESS)
        return;
#define SSL(stat, gauge)                                                                           \
    emit(w, METRIC_COUNTER, stat_get(&l->ssl.stat), &l->ssl.stat, "listener.%s.ssl.%s", addr,      \
         #stat);
    SSL_STATS(SSL)
#undef SSL
}

/* Envoy's http.PREFIX.downstream_cx_{rx,tx}_bytes_total: the bytes of every listener of that
 * kind (a TCP route's connections included: remora has no tcp.* scope). */
static void walk_bytes(walk_t *w, server_t *s, int egress)
{
    const char *kind = egress ? "egress" : "ingress";
    uint64_t rx = 0, tx = 0;
    for (unsigned i = 0; i < s->nlisteners; i++) {
        if ((s->listeners[i].kind == LISTENER_EGRESS) == egress) {
            rx += stat_get(&s->listeners[i].cx.rx_bytes);
            tx += stat_get(&s->listeners[i].cx.tx_bytes);
        }
    }
    emit(w, METRIC_COUNTER, rx, NULL, "http.%s.downstream_cx_rx_bytes_total", kind);
    emit(w, METRIC_COUNTER, tx, NULL, "http.%s.downstream_cx_tx_bytes_total", kind);
}

static void walk_targets(walk_t *w, registry_t *reg)
{
    static const char *const classes = "12345";
    char labels[800];
    for (target_stats_entry_t *e = reg->targets; e; e = e->next) {
        snprintf(labels, sizeof labels, "router=\"%s\",route=\"%s\",target=\"%s\"", e->router,
                 e->route, e->target);
        emit_own(w, &e->stats.picks, "remora_route_target_picks_total", labels,
                 "remora.route.%s.%s.%s.picks", e->router, e->route, e->target);
        emit_own(w, &e->stats.retries, "remora_route_target_retries_total", labels,
                 "remora.route.%s.%s.%s.retries", e->router, e->route, e->target);
        emit_own(w, &e->stats.grpc_errors, "remora_route_target_grpc_errors_total", labels,
                 "remora.route.%s.%s.%s.grpc_errors", e->router, e->route, e->target);
        for (int c = 0; c < 5; c++) {
            char with_class[860];
            snprintf(with_class, sizeof with_class, "response_code_class=\"%c\",%s", classes[c],
                     labels);
            emit_own(w, &e->stats.rq_1xx + c, "remora_route_target_responses_total", with_class,
                     "remora.route.%s.%s.%s.rq_%cxx", e->router, e->route, e->target, classes[c]);
        }
    }
}

/* remora_rollout_*: the canary weight, a 1 for the current state (0 for the others), and the
 * decisions by result. */
static void walk_rollout(void *ctx, const rollout_view_t *v)
{
    walk_t *w = ctx;
    char labels[320];
    snprintf(labels, sizeof labels, "rollout=\"%s\"", v->name);
    metric_t m = {.kind = METRIC_GAUGE,
                  .value = v->run->weight,
                  .family = "remora_rollout_canary_weight",
                  .labels = labels};
    visit_named(w, &m, "remora.rollout.%s.canary_weight", v->name);
    for (int st = 0; st < ROLLOUT_STATES; st++) {
        char with[400];
        const char *name = rollout_state_name((enum rollout_state)st);
        snprintf(with, sizeof with, "%s,state=\"%s\"", labels, name);
        metric_t g = {.kind = METRIC_GAUGE,
                      .value = v->run->state == (enum rollout_state)st,
                      .family = "remora_rollout_state",
                      .labels = with};
        visit_named(w, &g, "remora.rollout.%s.state.%s", v->name, name);
    }
    for (int r = 0; r < ROLLOUT_RESULTS; r++) {
        char with[400];
        const char *name = rollout_result_name((enum rollout_result)r);
        snprintf(with, sizeof with, "%s,result=\"%s\"", labels, name);
        emit_own(w, &v->decisions[r], "remora_rollout_decisions_total", with,
                 "remora.rollout.%s.decisions.%s", v->name, name);
    }
    if (v->run->step < 0)
        return; /* before startTime: no step yet */
    metric_t st = {.kind = METRIC_GAUGE,
                   .value = (uint64_t)v->run->step,
                   .family = "remora_rollout_step",
                   .labels = labels};
    visit_named(w, &st, "remora.rollout.%s.step", v->name);
}

static void walk_own(server_t *s, walk_t *w)
{
    rollouts_each(s->rollouts, walk_rollout, w);
    emit_own(w, &s->reg.reloads_ok, "remora_config_reloads_total", "result=\"success\"",
             "remora.config.reload_ok");
    emit_own(w, &s->reg.reloads_failed, "remora_config_reloads_total", "result=\"failure\"",
             "remora.config.reload_failed");
    emit_own(w, &s->tls_reloads_ok, "remora_tls_reloads_total", "result=\"success\"",
             "remora.tls.reload_ok");
    emit_own(w, &s->tls_reloads_failed, "remora_tls_reloads_total", "result=\"failure\"",
             "remora.tls.reload_failed");
    emit_own(w, &s->aws_creds_ok, "remora_aws_credentials_total", "result=\"success\"",
             "remora.aws.credentials.success");
    emit_own(w, &s->aws_creds_failed, "remora_aws_credentials_total", "result=\"failure\"",
             "remora.aws.credentials.failure");
    static const char *const url_results[] = {"changed", "not_modified", "invalid", "error"};
    for (int i = 0; i < CONFIG_URL_RESULTS; i++) {
        char labels[64];
        snprintf(labels, sizeof labels, "result=\"%s\"", url_results[i]);
        emit_own(w, &s->config_url_fetches[i], "remora_config_url_fetches_total", labels,
                 "remora.config_url.%s", url_results[i]);
    }
    access_log_stats_t *al = &s->alog_stats;
    emit_own(w, &al->dropped, "remora_access_log_dropped_total", "", "remora.access_log.dropped");
    emit_own(w, &al->write_errors, "remora_access_log_write_errors_total", "",
             "remora.access_log.write_errors");
    emit_own(w, &al->open_failures, "remora_access_log_open_failures_total", "",
             "remora.access_log.open_failures");
    emit_own(w, &al->reopens, "remora_access_log_reopens_total", "", "remora.access_log.reopens");
    emit_own(w, &al->bytes_written, "remora_access_log_written_bytes_total", "",
             "remora.access_log.bytes_written");
    if (!s->xray)
        return;
    xray_stats_t *x = xray_stats(s->xray);
    emit_own(w, &x->sent, "remora_xray_documents_total", "result=\"sent\"", "remora.xray.sent");
    emit_own(w, &x->send_failed, "remora_xray_documents_total", "result=\"failed\"",
             "remora.xray.send_failed");
    emit_own(w, &x->sampled, "remora_xray_requests_total", "sampled=\"true\"",
             "remora.xray.sampled");
    emit_own(w, &x->unsampled, "remora_xray_requests_total", "sampled=\"false\"",
             "remora.xray.unsampled");
    emit_own(w, &x->split, "remora_xray_split_documents_total", "", "remora.xray.split");
}

/* Envoy's server.version is a number (from its source revision): remora's is its version,
 * major × 10,000 + minor × 100 + patch. */
static uint64_t version_number(void)
{
    unsigned major = 0, minor = 0, patch = 0;
    sscanf(REMORA_VERSION, "%u.%u.%u", &major, &minor, &patch);
    return (uint64_t)major * 10000 + minor * 100 + patch;
}

static void walk_server(server_t *s, walk_t *w)
{
    enum server_state st = server_state(s);
    int failed = atomic_load(&s->healthcheck_failed);
    /* Envoy's state enum: 0 LIVE, 1 DRAINING, 2 PRE_INITIALIZING. */
    int drained = failed || atomic_load(&s->listeners_drained);
    uint64_t state = st == SERVER_PRE_INITIALIZING ? 2 : (st != SERVER_LIVE || drained) ? 1 : 0;
    struct mallinfo2 mi = mallinfo2();
    uint64_t up = uv_hrtime() / 1000000000u - s->started_ms / 1000;
    emit(w, METRIC_GAUGE, st == SERVER_LIVE && !failed, NULL, "server.live");
    emit(w, METRIC_GAUGE, state, NULL, "server.state");
    emit(w, METRIC_GAUGE, up, NULL, "server.uptime");
    emit(w, METRIC_GAUGE, s->nworkers, NULL, "server.concurrency");
    emit(w, METRIC_GAUGE, version_number(), NULL, "server.version");
    emit(w, METRIC_GAUGE, mi.uordblks + mi.hblkhd, NULL, "server.memory_allocated");
    emit(w, METRIC_GAUGE, mi.arena + mi.hblkhd, NULL, "server.memory_heap_size");
    uint64_t cx = 0;
    for (unsigned i = 0; i < s->nlisteners; i++)
        cx += stat_get(&s->listeners[i].cx.downstream_cx_active);
    emit(w, METRIC_GAUGE, cx, NULL, "server.total_connections");
}

void metrics_each(server_t *s, metric_fn fn, void *ctx)
{
    walk_t w = {.fn = fn, .ctx = ctx};
    char in[40], eg[40];
    snprintf(in, sizeof in, "0.0.0.0_%u", s->listeners[WORKER_INGRESS].port);
    snprintf(eg, sizeof eg, "0.0.0.0_%u", s->listeners[WORKER_EGRESS].port);
    for (cluster_t *c = s->reg.clusters; c; c = c->next)
        walk_cluster(s, &w, c);
    if (!s->set.gateway) { /* a gateway has no egress */
        walk_http(&w, "egress", eg, &s->egress_stats);
        walk_bytes(&w, s, 1);
    }
    /* A gateway's listeners share these, counted under its first listener for the scope. */
    walk_http(&w, "ingress", in, &s->ingress_stats);
    walk_bytes(&w, s, 0);
    /* Envoy's root http2.* names: both listeners' counts. */
#define H2(stat, gauge)                                                                            \
    emit(&w, gauge ? METRIC_GAUGE : METRIC_COUNTER,                                                \
         stat_get(&s->ingress_stats.http2.stat) + stat_get(&s->egress_stats.http2.stat), NULL,     \
         "http2.%s", #stat);
    H2_STATS(H2)
#undef H2
    for (unsigned i = s->nlisteners; i-- > 0;)
        walk_listener(&w, &s->listeners[i]);
    walk_targets(&w, &s->reg);
    walk_own(s, &w);
    walk_server(s, &w);
}

/* ---- tag extraction (Envoy's default extractors, for the names remora has) ---- */

static int ends_with_code(const char *n, size_t len, int cls)
{
    /* "_rq_503" or "_rq_5xx" */
    if (len < 7 || memcmp(n + len - 7, "_rq_", 4) != 0)
        return 0;
    const char *d = n + len - 3;
    if (d[0] < '1' || d[0] > '5')
        return 0;
    if (cls)
        return d[1] == 'x' && d[2] == 'x';
    return d[1] >= '0' && d[1] <= '9' && d[2] >= '0' && d[2] <= '9';
}

typedef struct tags {
    char *p;
    size_t cap, len;
    int dotted;
} tags_t;

static void add_tag(tags_t *t, const char *key, const char *v, size_t vn)
{
    if (t->len >= t->cap)
        return;
    int n = t->dotted ? snprintf(t->p + t->len, t->cap - t->len, "%s%s:%.*s", t->len ? "," : "",
                                 key, (int)vn, v)
                      : snprintf(t->p + t->len, t->cap - t->len, "%s%s=\"%.*s\"", t->len ? "," : "",
                                 key, (int)vn, v);
    t->len += n > 0 ? (size_t)n : 0;
}

/* A scope whose second segment is a tag: "cluster.NAME.rest" -> NAME, rest. */
static const char *take_segment(const char *p, const char **seg, size_t *n)
{
    const char *dot = strchr(p, '.');
    if (!dot)
        return NULL;
    *seg = p;
    *n = (size_t)(dot - p);
    return dot + 1;
}

/* An address such as 0.0.0.0_15000: digits, dots and underscores up to the last dot of the run. */
static const char *take_address(const char *p, const char **seg, size_t *n)
{
    const char *end = p;
    while ((*end >= '0' && *end <= '9') || *end == '.' || *end == '_')
        end++;
    while (end > p && end[-1] != '.')
        end--;
    if (end == p)
        return NULL;
    *seg = p;
    *n = (size_t)(end - 1 - p);
    return end;
}

void metrics_extract(const char *name, char *family, size_t fcap, char *labels, size_t lcap,
                     int dotted)
{
    char rest[512];
    snprintf(rest, sizeof rest, "%s", name);
    size_t len = strlen(rest);
    tags_t t = {.p = labels, .cap = lcap, .dotted = dotted};
    labels[0] = '\0';
    if (ends_with_code(rest, len, 0)) {
        add_tag(&t, dotted ? "envoy.response_code" : "envoy_response_code", rest + len - 3, 3);
        rest[len - 4] = '\0';
    } else if (ends_with_code(rest, len, 1)) {
        add_tag(&t, dotted ? "envoy.response_code_class" : "envoy_response_code_class",
                rest + len - 3, 1);
        memmove(rest + len - 3, rest + len - 2, 3); /* _5xx -> _xx */
    }
    char scoped[512];
    const char *seg, *after;
    size_t sn;
    if (!strncmp(rest, "cluster.", 8) && (after = take_segment(rest + 8, &seg, &sn))) {
        add_tag(&t, dotted ? "envoy.cluster_name" : "envoy_cluster_name", seg, sn);
        snprintf(scoped, sizeof scoped, "cluster.%s", after);
    } else if (!strncmp(rest, "http.", 5) && (after = take_segment(rest + 5, &seg, &sn))) {
        add_tag(&t, dotted ? "envoy.http_conn_manager_prefix" : "envoy_http_conn_manager_prefix",
                seg, sn);
        snprintf(scoped, sizeof scoped, "http.%s", after);
    } else if (!strncmp(rest, "listener.", 9) && (after = take_address(rest + 9, &seg, &sn))) {
        const char *pseg, *pafter;
        size_t pn;
        if (!strncmp(after, "http.", 5) && (pafter = take_segment(after + 5, &pseg, &pn))) {
            add_tag(&t,
                    dotted ? "envoy.http_conn_manager_prefix" : "envoy_http_conn_manager_prefix",
                    pseg, pn);
            add_tag(&t, dotted ? "envoy.listener_address" : "envoy_listener_address", seg, sn);
            snprintf(scoped, sizeof scoped, "listener.http.%s", pafter);
        } else {
            add_tag(&t, dotted ? "envoy.listener_address" : "envoy_listener_address", seg, sn);
            snprintf(scoped, sizeof scoped, "listener.%s", after);
        }
    } else {
        snprintf(scoped, sizeof scoped, "%s", rest);
    }
    int n = snprintf(family, fcap, "envoy%c%s", dotted ? '.' : '_', scoped);
    for (int i = 6; !dotted && i < n && (size_t)i < fcap; i++) {
        char c = family[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')))
            family[i] = '_';
    }
}

/* ---- filters ---- */

typedef struct filter {
    stats_filter_t re; /* zeroed: none, every name passes */
    int used_only;
} filter_t;

static int filter_init(filter_t *f, const metrics_query_t *q, char **out)
{
    *f = (filter_t){.used_only = q->used_only};
    if (!q->filter || !*q->filter)
        return 0;
    char why[200];
    if (stats_filter_compile(&f->re, q->filter, why, sizeof why) != 0) {
        text_t o = {0};
        text_printf(&o, "filter: %s\n", why);
        *out = o.p;
        return 400;
    }
    return 0;
}

/* Done with the filter: 0, or (a name ran past its match limits) 400 with the reason in *out
 * and what was written in o dropped: a list cut by cost would pass for a whole one. */
static int filter_end(filter_t *f, text_t *o, char **out)
{
    int over = f->re.over;
    stats_filter_free(&f->re);
    if (!over)
        return 0;
    free(o->p);
    *o = (text_t){0};
    text_printf(o, "filter: too costly to match (PCRE2's match limit); simplify it\n");
    *out = o->p;
    return 400;
}

static int wanted(filter_t *f, const metric_t *m)
{
    if (f->used_only &&
        (m->kind == METRIC_HISTOGRAM ? stat_get((stat_t *)&m->hist->count) == 0 : m->value == 0))
        return 0;
    return stats_filter_match(&f->re, m->name);
}

/* ---- histograms ---- */

static double bound_ms(unsigned i)
{
    return hist_bounds[i] / 2.0;
}

/* The q-quantile (0..1), interpolated within the bucket that holds it. */
static double quantile(const histogram_t *h, double q)
{
    uint64_t count = stat_get((stat_t *)&h->count);
    double target = q * (double)count, seen = 0;
    for (unsigned i = 0; i < HIST_BOUNDS; i++) {
        double in = (double)stat_get((stat_t *)&h->buckets[i]);
        if (in > 0 && seen + in >= target) {
            double lo = i ? bound_ms(i - 1) : 0, hi = bound_ms(i);
            return lo + (hi - lo) * (target - seen) / in;
        }
        seen += in;
    }
    return bound_ms(HIST_BOUNDS - 1);
}

static const double quantiles[] = {0, .25, .5, .75, .9, .95, .99, .995, .999, 1};
static const char *const quantile_names[] = {"P0",  "P25", "P50",   "P75",   "P90",
                                             "P95", "P99", "P99.5", "P99.9", "P100"};

/* ---- /stats ---- */

typedef struct text_ctx {
    text_t o;
    filter_t f;
    int json, first;
} text_ctx_t;

static void text_one(void *ctx, const metric_t *m)
{
    text_ctx_t *t = ctx;
    if (!wanted(&t->f, m))
        return;
    if (m->kind != METRIC_HISTOGRAM) {
        if (t->json)
            text_printf(&t->o, "%s{\"name\":\"%s\",\"value\":%" PRIu64 "}", t->first ? "" : ",",
                        m->name, m->value);
        else
            text_printf(&t->o, "%s: %" PRIu64 "\n", m->name, m->value);
        t->first = 0;
        return;
    }
    if (t->json)
        return; /* histograms come last, in their own object */
    if (stat_get((stat_t *)&m->hist->count) == 0) {
        text_printf(&t->o, "%s: No recorded values\n", m->name);
        return;
    }
    text_printf(&t->o, "%s:", m->name);
    for (unsigned i = 0; i < sizeof quantiles / sizeof *quantiles; i++)
        text_printf(&t->o, " %s(nan,%g)", quantile_names[i], quantile(m->hist, quantiles[i]));
    text_printf(&t->o, "\n");
}

static void json_hist(void *ctx, const metric_t *m)
{
    text_ctx_t *t = ctx;
    if (m->kind != METRIC_HISTOGRAM || !wanted(&t->f, m))
        return;
    text_printf(&t->o, "%s{\"name\":\"%s\",\"values\":[", t->first ? "" : ",", m->name);
    int empty = stat_get((stat_t *)&m->hist->count) == 0;
    for (unsigned i = 0; i < sizeof quantiles / sizeof *quantiles; i++) {
        if (empty)
            text_printf(&t->o, "%s{\"interval\":null,\"cumulative\":null}", i ? "," : "");
        else
            text_printf(&t->o, "%s{\"interval\":null,\"cumulative\":%g}", i ? "," : "",
                        quantile(m->hist, quantiles[i]));
    }
    text_printf(&t->o, "]}");
    t->first = 0;
}

static int finish(text_t *o, char **out)
{
    if (o->failed) {
        free(o->p);
        *out = NULL;
        return 503;
    }
    if (!o->p)
        text_printf(o, "%s", "");
    *out = o->p;
    return 0;
}

int metrics_text(server_t *s, const metrics_query_t *q, char **out)
{
    text_ctx_t t = {.first = 1};
    int rc = filter_init(&t.f, q, out);
    if (rc)
        return rc;
    metrics_each(s, text_one, &t);
    if ((rc = filter_end(&t.f, &t.o, out)))
        return rc;
    return finish(&t.o, out);
}

int metrics_json(server_t *s, const metrics_query_t *q, char **out)
{
    text_ctx_t t = {.first = 1, .json = 1};
    int rc = filter_init(&t.f, q, out);
    if (rc)
        return rc;
    text_printf(&t.o, "{\"stats\":[");
    metrics_each(s, text_one, &t);
    text_printf(&t.o, "%s{\"histograms\":{\"supported_quantiles\":[", t.first ? "" : ",");
    for (unsigned i = 0; i < sizeof quantiles / sizeof *quantiles; i++)
        text_printf(&t.o, "%s%g", i ? "," : "", quantiles[i] * 100);
    text_printf(&t.o, "],\"computed_quantiles\":[");
    t.first = 1;
    metrics_each(s, json_hist, &t);
    text_printf(&t.o, "]}}]}\n");
    if ((rc = filter_end(&t.f, &t.o, out)))
        return rc;
    return finish(&t.o, out);
}

/* ---- /stats/prometheus ---- */

typedef struct series {
    char *family, *labels;
    enum metric_kind kind;
    uint64_t value;
    const histogram_t *hist;
} series_t;

typedef struct prom_ctx {
    series_t *v;
    size_t n, cap;
    filter_t f;
    int failed;
} prom_ctx_t;

static void prom_collect(void *ctx, const metric_t *m)
{
    prom_ctx_t *p = ctx;
    if (!wanted(&p->f, m) || p->failed)
        return;
    if (p->n == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 256;
        series_t *v = realloc(p->v, cap * sizeof *v);
        if (!v) {
            p->failed = 1;
            return;
        }
        p->v = v;
        p->cap = cap;
    }
    char family[512], labels[600];
    if (m->family) {
        snprintf(family, sizeof family, "%s", m->family);
        snprintf(labels, sizeof labels, "%s", m->labels);
    } else {
        metrics_extract(m->name, family, sizeof family, labels, sizeof labels, 0);
    }
    series_t *s = &p->v[p->n++];
    *s = (series_t){.family = strdup(family),
                    .labels = strdup(labels),
                    .kind = m->kind,
                    .value = m->value,
                    .hist = m->hist};
    if (!s->family || !s->labels)
        p->failed = 1;
}

static int by_family(const void *a, const void *b)
{
    const series_t *x = a, *y = b;
    int c = strcmp(x->family, y->family);
    return c ? c : strcmp(x->labels, y->labels);
}

/* What a family counts, for `# HELP`: the words of its Envoy name (Envoy prints none; the
 * Prometheus conventions and promtool want one). */
static void help(text_t *o, const char *family)
{
    text_printf(o, "# HELP %s %s\n", family,
                !strncmp(family, "remora_", 7)
                    ? "remora's own statistic (docs/metrics.md)"
                    : "Envoy's statistic of that name (docs/metrics.md)");
}

static void prom_hist(text_t *o, const series_t *s, const char *fixed)
{
    const char *sep = s->labels[0] || fixed[0] ? "," : "";
    uint64_t cum = 0;
    for (unsigned i = 0; i < HIST_BOUNDS; i++) {
        cum += stat_get((stat_t *)&s->hist->buckets[i]);
        text_printf(o, "%s_bucket{%s%s%s%sle=\"%.32g\"} %" PRIu64 "\n", s->family, fixed,
                    fixed[0] && s->labels[0] ? "," : "", s->labels, sep, bound_ms(i), cum);
    }
    uint64_t count = stat_get((stat_t *)&s->hist->count);
    text_printf(o, "%s_bucket{%s%s%s%sle=\"+Inf\"} %" PRIu64 "\n", s->family, fixed,
                fixed[0] && s->labels[0] ? "," : "", s->labels, sep, count);
    text_printf(o, "%s_sum{%s%s%s} %.17g\n", s->family, fixed, fixed[0] && s->labels[0] ? "," : "",
                s->labels, stat_get((stat_t *)&s->hist->sum_us) / 1000.0);
    text_printf(o, "%s_count{%s%s%s} %" PRIu64 "\n", s->family, fixed,
                fixed[0] && s->labels[0] ? "," : "", s->labels, count);
}

static void prom_render(text_t *o, series_t *v, size_t n, const char *fixed)
{
    for (size_t i = 0; i < n; i++) {
        const series_t *s = &v[i];
        if (i == 0 || strcmp(v[i - 1].family, s->family) != 0) {
            help(o, s->family);
            text_printf(o, "# TYPE %s %s\n", s->family,
                        s->kind == METRIC_HISTOGRAM ? "histogram"
                        : s->kind == METRIC_GAUGE   ? "gauge"
                                                    : "counter");
        }
        if (s->kind == METRIC_HISTOGRAM)
            prom_hist(o, s, fixed);
        else
            text_printf(o, "%s{%s%s%s} %" PRIu64 "\n", s->family, fixed,
                        fixed[0] && s->labels[0] ? "," : "", s->labels, s->value);
    }
}

int metrics_prometheus(server_t *s, const metrics_query_t *q, char **out)
{
    prom_ctx_t p = {0};
    int rc = filter_init(&p.f, q, out);
    if (rc)
        return rc;
    metrics_each(s, prom_collect, &p);
    text_t o = {0};
    int refused = filter_end(&p.f, &o, out);
    if (!refused && !p.failed) {
        qsort(p.v, p.n, sizeof *p.v, by_family);
        char fixed[600] = "";
        if (s->set.stats_tags)
            snprintf(fixed, sizeof fixed, "appmesh_mesh=\"%s\",appmesh_virtual_%s=\"%s\"",
                     route_table_config(s->routes)->mesh_name, s->set.gateway ? "gateway" : "node",
                     s->set.node);
        prom_render(&o, p.v, p.n, fixed);
    }
    for (size_t i = 0; i < p.n; i++) {
        free(p.v[i].family);
        free(p.v[i].labels);
    }
    free(p.v);
    if (refused)
        return refused;
    if (p.failed)
        o.failed = 1;
    return finish(&o, out);
}

/* ---- /reset_counters ---- */

static void reset_one(void *ctx, const metric_t *m)
{
    (void)ctx;
    if (m->kind == METRIC_COUNTER && m->counter)
        atomic_store_explicit(m->counter, 0, memory_order_relaxed);
}

void metrics_reset_counters(server_t *s)
{
    metrics_each(s, reset_one, NULL);
    for (unsigned i = 0; i < s->nlisteners; i++) { /* emitted as sums (walk_bytes) */
        atomic_store_explicit(&s->listeners[i].cx.rx_bytes, 0, memory_order_relaxed);
        atomic_store_explicit(&s->listeners[i].cx.tx_bytes, 0, memory_order_relaxed);
    }
}
