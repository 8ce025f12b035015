#include "proxy/server.h"

#include <stdlib.h>
#include <string.h>

#include "proxy/admin.h"
#include "proxy/rollouts.h"
#include "proxy/statsd.h"
#include "base/err.h"
#include "base/log.h"

const char *server_state_name(enum server_state st)
{
    switch (st) {
    case SERVER_PRE_INITIALIZING:
        return "PRE_INITIALIZING";
    case SERVER_LIVE:
        return "LIVE";
    case SERVER_DRAINING:
        return "DRAINING";
    case SERVER_STOPPED:
        return "DRAINING";
    }
    return "UNKNOWN";
}

static void set_state(server_t *s, enum server_state st)
{
    atomic_store_explicit(&s->state, st, memory_order_release);
    for (unsigned i = 0; i < s->nworkers; i++)
        worker_notify(&s->workers[i]);
}

/* The access log a snapshot's node asks for: the one in force when path and format are the
 * same (nothing is reopened, no line is lost), else a new one; *out NULL for none. Returns 0,
 * or ERR_CONFIG with the problem in `d` (an unknown operator, a path that cannot be opened). A
 * bad format is refused here, where the snapshot is built, as a bad regex is by the route
 * table: compiling is the access log's job, and config/ stays below proxy/. */
static int build_access_log(server_t *s, const route_table_t *rt, access_log_t **out, diag_t *d)
{
    const cfg_access_log_t *cfg = &route_table_node(rt)->access_log;
    *out = NULL;
    if (!cfg->path)
        return 0;
    if (s->alog && access_log_same(s->alog, cfg)) {
        *out = access_log_ref(s->alog);
        return 0;
    }
    *out = access_log_build(cfg, route_table_config(rt)->source, s->set.workers, &s->alog_stats, d);
    return *out ? 0 : ERR_CONFIG;
}

/* A sidecar's ingress and egress, or a gateway's listeners: what the workers open. */
static void name_listeners(server_t *s)
{
    const settings_t *set = &s->set;
    if (set->gateway) {
        for (unsigned i = 0; i < set->ngateway_ports; i++)
            s->listeners[i] =
                (listener_slot_t){.kind = LISTENER_GATEWAY, .port = set->gateway_ports[i]};
        s->nlisteners = set->ngateway_ports;
        return;
    }
    s->listeners[WORKER_INGRESS] =
        (listener_slot_t){.kind = LISTENER_INGRESS, .port = set->ingress_port};
    s->listeners[WORKER_EGRESS] =
        (listener_slot_t){.kind = LISTENER_EGRESS, .port = set->egress_port};
    s->nlisteners = 2;
}

static void on_signal(uv_signal_t *h, int signum)
{
    server_t *s = h->data;
    log_info("received %s", signum == SIGTERM ? "SIGTERM" : "SIGINT");
    server_drain(s);
}

int server_init(server_t *s, const settings_t *set, const cli_opts_t *cli, config_t *cfg,
                uv_loop_t *loop)
{
    memset(s, 0, sizeof *s);
    s->set = *set;
    s->cli = *cli;
    s->loop = loop;
    s->started_ms = uv_hrtime() / 1000000;
    diag_t d = {0};
    s->rollouts = rollouts_new(s);
    if (recent_init(&s->recent) != 0)
        return UV_ENOMEM;
    rollouts_prepare(s->rollouts, cfg);
    s->routes = route_table_build(cfg, set->table_name, &s->reg, &d);
    if (s->routes)
        rollouts_adopt(s->rollouts, route_table_config(s->routes));
    if (!s->routes || build_access_log(s, s->routes, &s->alog, &d) != 0) {
        for (size_t i = 0; i < d.n; i++)
            log_error("%s", d.lines[i]);
        diag_free(&d);
        return ERR_CONFIG;
    }
    if (set->xray && !(s->xray = xray_new(&set->xray_set, &d))) {
        for (size_t i = 0; i < d.n; i++)
            log_error("%s", d.lines[i]);
        diag_free(&d);
        return ERR_CONFIG;
    }
    name_listeners(s);
    host_addrs_learn(&s->host_addrs);
    /* Caught before a listener opens: a SIGTERM the moment the ports answer is a drain, not
     * the default action (the callback runs once server_run runs the loop). */
    uv_signal_init(s->loop, &s->sigterm);
    uv_signal_init(s->loop, &s->sigint);
    s->sigterm.data = s->sigint.data = s;
    uv_signal_start(&s->sigterm, on_signal, SIGTERM);
    uv_signal_start(&s->sigint, on_signal, SIGINT);
    s->workers = calloc(set->workers, sizeof *s->workers);
    if (!s->workers || qsbr_init(&s->qsbr, set->workers) != 0)
        return UV_ENOMEM;
    for (unsigned i = 0; i < set->workers; i++) {
        int err = worker_init(&s->workers[i], s, i);
        s->nworkers = i + 1;
        if (err < 0) {
            log_error("cannot listen on ingress %u / egress %u: %s", set->ingress_port,
                      set->egress_port, uv_strerror(err));
            return err;
        }
    }
    return 0;
}

/* ---- certificate files ---- */

typedef struct tls_watch {
    struct tls_watch *next;
    file_watch_t *file;
    int seen; /* still in use after the latest build */
    char path[];
} tls_watch_t;

static void on_tls_debounced(uv_timer_t *t)
{
    server_t *s = t->data;
    if (server_state(s) >= SERVER_DRAINING)
        return;
    log_info("tls: a certificate, key or trust file changed; reloading");
    stat_inc(server_reload(s) == 0 ? &s->tls_reloads_ok : &s->tls_reloads_failed);
}

static void on_tls_file_changed(void *data)
{
    server_t *s = data;
    uv_timer_start(&s->tls_debounce, on_tls_debounced, TLS_DEBOUNCE_MS, 0);
}

static void watch_tls_file(void *arg, const char *path)
{
    server_t *s = arg;
    for (tls_watch_t *w = s->tls_watches; w; w = w->next)
        if (strcmp(w->path, path) == 0) {
            w->seen = 1;
            return;
        }
    tls_watch_t *w = calloc(1, sizeof *w + strlen(path) + 1);
    if (!w)
        return;
    memcpy(w->path, path, strlen(path) + 1);
    w->seen = 1;
    w->file = file_watch_add(&s->files, path, on_tls_file_changed, s);
    if (!w->file) {
        free(w);
        return;
    }
    w->next = s->tls_watches;
    s->tls_watches = w;
}

/* Watch exactly the files the snapshot in force was loaded from. */
static void sync_tls_watches(server_t *s)
{
    for (tls_watch_t *w = s->tls_watches; w; w = w->next)
        w->seen = 0;
    route_table_tls_files(s->routes, watch_tls_file, s);
    for (tls_watch_t **pp = &s->tls_watches; *pp;) {
        tls_watch_t *w = *pp;
        if (w->seen) {
            pp = &w->next;
            continue;
        }
        *pp = w->next;
        file_watch_remove(w->file);
        free(w);
    }
}

static void close_tls_watches(server_t *s)
{
    while (s->tls_watches) {
        tls_watch_t *w = s->tls_watches;
        s->tls_watches = w->next;
        file_watch_remove(w->file);
        free(w);
    }
    uv_close((uv_handle_t *)&s->tls_debounce, NULL);
}

/* Put `cfg` (owned from here; NULL: loading failed, `d` says why) in force, or reject it. */
static int apply(server_t *s, config_t *cfg, diag_t *d);

int server_reload(server_t *s)
{
    diag_t d = {0};
    if (!s->config_url)
        return apply(s, settings_load_config(&s->cli, &d), &d);
    /* From a URL: the document in force is parsed again (its certificate files may have
     * changed), and the URL is polled at once. */
    const config_t *now = route_table_config(s->routes);
    config_url_poll_now(s->config_url);
    return apply(s, config_parse(now->raw, strlen(now->raw), now->source, &d), &d);
}

int server_rebuild(server_t *s)
{
    diag_t d = {0};
    const config_t *now = route_table_config(s->routes);
    return apply(s, config_parse(now->raw, strlen(now->raw), now->source, &d), &d);
}

static enum config_url_result apply_url_document(void *arg, const char *doc, size_t len)
{
    server_t *s = arg;
    diag_t d = {0};
    config_t *cfg = config_parse(doc, len, s->set.config_url, &d);
    return apply(s, cfg, &d) == 0 ? CONFIG_URL_CHANGED : CONFIG_URL_INVALID;
}

static int apply(server_t *s, config_t *cfg, diag_t *dp)
{
    diag_t d = *dp;
    if (cfg)
        rollouts_prepare(s->rollouts, cfg);
    route_table_t *rt = cfg ? route_table_build(cfg, s->set.table_name, &s->reg, &d) : NULL;
    access_log_t *alog = NULL;
    if (rt && build_access_log(s, rt, &alog, &d) != 0) {
        route_table_unref(rt);
        rt = NULL;
    }
    if (!rt) {
        stat_inc(&s->reg.reloads_failed);
        log_error("reload rejected; the config in force is unchanged:");
        for (size_t i = 0; i < d.n; i++)
            log_error("  %s", d.lines[i]);
        diag_free(&d);
        return ERR_CONFIG;
    }
    diag_free(&d);
    for (unsigned i = 0; i < s->nworkers; i++) {
        worker_publish_log(&s->workers[i], alog); /* first: adopted with the routes */
        worker_publish(&s->workers[i], rt);
    }
    route_table_unref(s->routes);
    s->routes = rt;
    rollouts_adopt(s->rollouts, route_table_config(rt));
    access_log_unref(s->alog);
    s->alog = alog;
    route_table_set_health_tls(rt);
    sync_tls_watches(s);
    tls_cache_prune(&s->reg.tls);
    discovery_sync(s->discovery, s->reg.clusters, route_table_config(rt));
    stat_inc(&s->reg.reloads_ok);
    log_info("reloaded %s", route_table_config(rt)->source);
    return 0;
}

/* Every cluster has had its first answer (or failure): the server is LIVE. */
static void check_ready(server_t *s)
{
    if (server_state(s) != SERVER_PRE_INITIALIZING)
        return;
    for (cluster_t *c = s->reg.clusters; c; c = c->next)
        if (!atomic_load(&c->answered))
            return;
    atomic_store_explicit(&s->state, SERVER_LIVE, memory_order_release);
    s->ready_ms = uv_hrtime() / 1000000;
    log_info("ready: every cluster has its first discovery answer (%llu ms after start)",
             (unsigned long long)(s->ready_ms - s->started_ms));
}

static void on_reclaim(uv_timer_t *t)
{
    server_t *s = t->data;
    if (qsbr_reclaim(&s->qsbr) == 0)
        uv_timer_stop(t);
    else
        server_wake_workers(s); /* an idle worker reaches its quiescent point when woken */
}

/* Discovery published a set or answered for the first time. */
static void on_discovery(void *arg)
{
    server_t *s = arg;
    check_ready(s);
    server_wake_workers(s); /* to drain pools of endpoints that left, and pass a quiescent point */
    if (!uv_is_active((uv_handle_t *)&s->reclaim_timer))
        uv_timer_start(&s->reclaim_timer, on_reclaim, 100, 100);
}

static void on_sighup(uv_signal_t *h, int signum)
{
    (void)signum;
    server_reload(h->data);
}

/* logrotate moved the access log: open the path again (every worker writes to the new file
 * from its next write; the old fd closes when the writes in flight are done). */
static void on_sigusr1(uv_signal_t *h, int signum)
{
    (void)signum;
    server_t *s = h->data;
    if (!s->alog)
        return;
    log_info("SIGUSR1: reopening the access log %s", access_log_path(s->alog));
    access_log_reopen(s->alog);
}

static void on_config_changed(void *data)
{
    server_reload(data);
}

/* The config file is watched (proxy/file_watch.h) so that a write in place, an editor's
 * rename-over and a mounted ConfigMap's symlink swap are all seen once they are whole. */
static void watch_config(server_t *s)
{
    if (s->set.config_url[0]) {
        aws_credentials_stats_t creds = {&s->aws_creds_ok, &s->aws_creds_failed};
        if (config_url_open(&s->config_url, s->loop, s->set.config_url, s->set.config_poll_ms,
                            s->cli.url_seen, s->config_url_fetches, creds, apply_url_document,
                            s) != 0)
            log_error("config: cannot poll %s; the config in force stays", s->set.config_url);
        return;
    }
    const char *path = s->cli.config ? s->cli.config : getenv("REMORA_CONFIG");
    const char *inline_json = getenv("REMORA_CONFIG_JSON");
    if (!s->cli.config && inline_json && *inline_json)
        return;
    if (!path || !*path)
        path = DEFAULT_CONFIG_PATH;
    if (!file_watch_add(&s->files, path, on_config_changed, s))
        log_error("config: out of memory; %s is not watched (SIGHUP reloads it)", path);
}

static void on_drain_deadline(uv_timer_t *t)
{
    server_t *s = t->data;
    log_warn("drain: %llu ms passed, closing the connections that remain",
             (unsigned long long)s->set.drain_timeout_ms);
    set_state(s, SERVER_STOPPED);
}

void server_drain(server_t *s)
{
    if (server_state(s) >= SERVER_DRAINING)
        return;
    log_info("draining: listeners closed, finishing in-flight requests (up to %llu ms)",
             (unsigned long long)s->set.drain_timeout_ms);
    set_state(s, SERVER_DRAINING);
    uv_timer_start(&s->drain_timer, on_drain_deadline, s->set.drain_timeout_ms, 0);
}

void server_drain_listeners(server_t *s)
{
    if (atomic_exchange(&s->listeners_drained, 1))
        return;
    log_info("drain_listeners: no new connections from now on");
    server_wake_workers(s);
}

void server_wake_workers(server_t *s)
{
    for (unsigned i = 0; i < s->nworkers; i++)
        worker_notify(&s->workers[i]);
}

void server_worker_exited(server_t *s)
{
    atomic_fetch_add(&s->nexited, 1);
    uv_async_send(&s->worker_exited);
}

static void on_worker_exited(uv_async_t *h)
{
    server_t *s = h->data;
    if (atomic_load(&s->nexited) < s->nworkers)
        return;
    /* Every worker is done: close the main loop's handles so that uv_run returns. */
    admin_stop(s);
    rollouts_stop(s->rollouts);
    uv_close((uv_handle_t *)&s->sigterm, NULL);
    uv_close((uv_handle_t *)&s->sigint, NULL);
    uv_close((uv_handle_t *)&s->sighup, NULL);
    uv_close((uv_handle_t *)&s->sigusr1, NULL);
    uv_close((uv_handle_t *)&s->drain_timer, NULL);
    uv_close((uv_handle_t *)&s->worker_exited, NULL);
    uv_close((uv_handle_t *)&s->reclaim_timer, NULL);
    close_tls_watches(s);
    file_watcher_close(&s->files);
    statsd_stop(s->statsd);
    s->statsd = NULL;
    discovery_close(s->discovery);
    s->discovery = NULL;
    config_url_close(s->config_url);
    s->config_url = NULL;
}

int server_run(server_t *s)
{
    uv_timer_init(s->loop, &s->reclaim_timer);
    s->reclaim_timer.data = s;
    discovery_settings_t ds = {s->set.dns_servers[0] ? s->set.dns_servers : NULL,
                               s->set.dns_hold_ms,
                               s->set.cloudmap_use,
                               s->set.cloudmap_health,
                               s->set.cloudmap_poll_ms,
                               s->set.cloudmap_refresh_ms,
                               &s->aws_creds_ok,
                               &s->aws_creds_failed};
    int derr = discovery_open(&s->discovery, s->loop, &ds, &s->qsbr, on_discovery, s);
    if (derr) {
        log_error("discovery: cannot use DNS servers \"%s\"", s->set.dns_servers);
        return derr;
    }
    uv_signal_init(s->loop, &s->sighup);
    s->sighup.data = s;
    uv_signal_start(&s->sighup, on_sighup, SIGHUP);
    uv_signal_init(s->loop, &s->sigusr1);
    s->sigusr1.data = s;
    uv_signal_start(&s->sigusr1, on_sigusr1, SIGUSR1);
    file_watcher_init(&s->files, s->loop);
    watch_config(s);
    uv_timer_init(s->loop, &s->tls_debounce);
    s->tls_debounce.data = s;
    route_table_set_health_tls(s->routes);
    sync_tls_watches(s);
    uv_timer_init(s->loop, &s->drain_timer);
    s->drain_timer.data = s;
    uv_async_init(s->loop, &s->worker_exited, on_worker_exited);
    s->worker_exited.data = s;
    int err = admin_start(s);
    if (err < 0)
        return err;
    rollouts_start(s->rollouts);
    s->statsd = statsd_start(s, s->loop);
    for (unsigned i = 0; i < s->nworkers; i++) {
        err = worker_start(&s->workers[i]);
        if (err < 0) {
            log_error("cannot start worker %u: %s", i, uv_strerror(err));
            return err;
        }
    }
    discovery_sync(s->discovery, s->reg.clusters, route_table_config(s->routes));
    check_ready(s);
    log_info("remora live: node %s/%s, ingress :%u, egress :%u, admin %s:%u, %u worker(s)",
             route_table_config(s->routes)->mesh_name, s->set.node, s->set.ingress_port,
             s->set.egress_port, s->set.admin_host, s->set.admin_port, s->nworkers);
    /* The loop ends once a drain completes: admin_stop closes the last handles. */
    uv_run(s->loop, UV_RUN_DEFAULT);
    for (unsigned i = 0; i < s->nworkers; i++)
        worker_join(&s->workers[i]);
    log_info("stopped");
    return 0;
}

void server_free(server_t *s)
{
    if (s->qsbr.seen)
        qsbr_destroy(&s->qsbr);
    free(s->workers);
    xray_free(s->xray);
    route_table_unref(s->routes);
    access_log_unref(s->alog);
    rollouts_free(s->rollouts);
    recent_free(&s->recent);
    registry_free(&s->reg);
}
