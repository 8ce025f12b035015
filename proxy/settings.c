#include "proxy/settings.h"

#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "discovery/discovery.h"
#include "discovery/dns.h"
#include "base/err.h"
#include "proxy/config_url.h"
#include "routing/route.h"

config_t *settings_load_config(const cli_opts_t *cli, diag_t *d)
{
    const char *url = getenv("REMORA_CONFIG_URL");
    if (url && *url && !cli->config)
        return config_url_load(url, cli->wait_for_config, cli->url_seen, d);
    const char *inline_json = getenv("REMORA_CONFIG_JSON");
    if (inline_json && *inline_json && !cli->config)
        return config_parse(inline_json, strlen(inline_json), "REMORA_CONFIG_JSON", d);
    const char *path = cli->config ? cli->config : getenv("REMORA_CONFIG");
    int dflt = !path || !*path;
    size_t before = d->n;
    config_t *c = config_load_file(dflt ? DEFAULT_CONFIG_PATH : path, d);
    if (!c && dflt && d->n > before && access(DEFAULT_CONFIG_PATH, F_OK) != 0)
        diag_add(d, DEFAULT_CONFIG_PATH, "$",
                 "no config given: mount the config file at %s, or set REMORA_CONFIG to its "
                 "path, or REMORA_CONFIG_JSON to the whole document%s",
                 DEFAULT_CONFIG_PATH, inline_json ? " (REMORA_CONFIG_JSON is set but empty)" : "");
    return c;
}

const char *settings_gateway_from_arn(const char *v)
{
    const char *m = strstr(v, "mesh/");
    if (!m || (m != v && m[-1] != ':'))
        return NULL;
    const char *gw = strstr(m + 5, "/virtualGateway/");
    if (!gw || gw == m + 5)
        return NULL;
    const char *name = gw + strlen("/virtualGateway/");
    return *name && !strchr(name, '/') ? name : NULL;
}

const char *settings_node_from_arn(const char *v)
{
    const char *m = strstr(v, "mesh/");
    if (!m || (m != v && m[-1] != ':'))
        return NULL;
    const char *vn = strstr(m + 5, "/virtualNode/");
    if (!vn || vn == m + 5)
        return NULL;
    const char *node = vn + strlen("/virtualNode/");
    return *node && !strchr(node, '/') ? node : NULL;
}

/* A decimal in [lo, hi] from a whole string; -1 when it is not one. */
static long parse_long(const char *s, long lo, long hi)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return -1;
    return v;
}

static char *read_small_file(const char *path, char *buf, size_t cap)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    size_t n = fread(buf, 1, cap - 1, f);
    fclose(f);
    buf[n] = '\0';
    return buf;
}

unsigned settings_cpu_limit(const char *cpu_max, unsigned affinity)
{
    char buf[128];
    long quota = -1, period = -1;
    if (!cpu_max)
        cpu_max = read_small_file("/sys/fs/cgroup/cpu.max", buf, sizeof buf);
    if (cpu_max) {
        char q[32];
        if (sscanf(cpu_max, "%31s %ld", q, &period) == 2 && strcmp(q, "max") != 0)
            quota = parse_long(q, 1, 1L << 40);
    } else {
        char qb[64], pb[64];
        if (read_small_file("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", qb, sizeof qb) &&
            read_small_file("/sys/fs/cgroup/cpu/cpu.cfs_period_us", pb, sizeof pb)) {
            quota = strtol(qb, NULL, 10);
            period = strtol(pb, NULL, 10);
        }
    }
    unsigned n = affinity ? affinity : 1;
    if (quota > 0 && period > 0) {
        unsigned by_quota = (unsigned)((quota + period - 1) / period);
        if (by_quota < n)
            n = by_quota;
    }
    return n ? n : 1;
}

static unsigned affinity_cpus(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) != 0)
        return 1;
    return (unsigned)CPU_COUNT(&set);
}

/* A virtual gateway to serve: its listeners, no egress (SPEC §3). */
static int resolve_gateway(settings_t *s, const config_t *cfg, const char *gw, diag_t *d)
{
    const cfg_gateway_t *g = config_gateway(cfg, gw);
    if (!g) {
        diag_add(d, "settings", "gateway", "virtual gateway \"%s\" is not in the config", gw);
        return ERR_CONFIG;
    }
    snprintf(s->node, sizeof s->node, "%s", gw);
    snprintf(s->table_name, sizeof s->table_name, ROUTE_GATEWAY_PREFIX "%s", gw);
    s->gateway = 1;
    s->ingress_port = g->nlisteners ? g->listeners[0].port : 0; /* what stats are named by */
    for (unsigned i = 0; i < g->nlisteners && i < GATEWAY_MAX_LISTENERS; i++)
        s->gateway_ports[s->ngateway_ports++] = g->listeners[i].port;
    return 0;
}

/* A variable's value; NULL when it is unset or empty. */
static const char *env(const char *name)
{
    const char *v = getenv(name);
    return v && *v ? v : NULL;
}

static int resolve_node(settings_t *s, const cli_opts_t *cli, const config_t *cfg, diag_t *d)
{
    const char *node = cli->node, *gw = NULL;
    const char *arn = env("APPMESH_RESOURCE_ARN");
    const char *old = env("APPMESH_VIRTUAL_NODE_NAME");
    if (!node && arn) {
        node = settings_node_from_arn(arn);
        gw = node ? NULL : settings_gateway_from_arn(arn);
        if (!node && !gw)
            diag_add(d, "settings", "APPMESH_RESOURCE_ARN",
                     "expected arn:aws:appmesh:REGION:ACCOUNT:mesh/MESH/virtualNode/NODE (or "
                     "virtualGateway/NAME), got \"%s\"",
                     arn);
    }
    if (!node && !gw && old) {
        node = settings_node_from_arn(old);
        if (!node)
            diag_add(d, "settings", "APPMESH_VIRTUAL_NODE_NAME",
                     "expected mesh/MESH/virtualNode/NODE, got \"%s\"", old);
    }
    /* The file's proxy.gateway or proxy.node only when no flag or variable named one. */
    if (!node && !gw && !arn && !old)
        gw = cfg->proxy.gateway;
    if (gw)
        return resolve_gateway(s, cfg, gw, d);
    if (!node)
        node = cfg->proxy.node;
    if (!node && cfg->nnodes == 1)
        node = cfg->nodes[0].name;
    if (!node) {
        diag_add(d, "settings", "node",
                 "which virtual node is this? set --node, APPMESH_RESOURCE_ARN or proxy.node");
        return ERR_CONFIG;
    }
    if (!config_node(cfg, node)) {
        diag_add(d, "settings", "node", "virtual node \"%s\" is not in the config", node);
        return ERR_CONFIG;
    }
    snprintf(s->node, sizeof s->node, "%s", node);
    snprintf(s->table_name, sizeof s->table_name, "%s", node);
    return 0;
}

/* "host:port", ":port" or "port" for the admin listener. */
static int parse_admin(settings_t *s, const char *v)
{
    const char *colon = strrchr(v, ':');
    const char *port = colon ? colon + 1 : v;
    long p = parse_long(port, 1, 65535);
    if (p < 0)
        return -1;
    s->admin_port = (uint16_t)p;
    if (colon && colon > v)
        snprintf(s->admin_host, sizeof s->admin_host, "%.*s", (int)(colon - v), v);
    return 0;
}

static void resolve_admin(settings_t *s, const cli_opts_t *cli, const config_t *cfg, diag_t *d)
{
    snprintf(s->admin_host, sizeof s->admin_host, "127.0.0.1");
    s->admin_port = DEFAULT_ADMIN_PORT;
    const char *env = getenv("ENVOY_ADMIN_ACCESS_PORT");
    const char *v = cli->admin ? cli->admin : env && *env ? env : cfg->proxy.admin;
    if (v && parse_admin(s, v) != 0)
        diag_add(d, "settings", "admin", "expected ADDR:PORT or PORT, got \"%s\"", v);
}

static void resolve_level(settings_t *s, const cli_opts_t *cli, const config_t *cfg, diag_t *d)
{
    const char *env = getenv("ENVOY_LOG_LEVEL");
    const char *v = cli->log_level ? cli->log_level : env && *env ? env : cfg->proxy.log_level;
    s->log_level = LOG_INFO;
    if (v && log_parse_level(v, &s->log_level) != 0)
        diag_add(d, "settings", "log-level",
                 "must be trace, debug, info, warning, error, critical or off, got \"%s\"", v);
}

static void resolve_workers(settings_t *s, const cli_opts_t *cli, const config_t *cfg, diag_t *d)
{
    const char *env = getenv("ENVOY_CONCURRENCY");
    long n = cli->workers;
    if (n < 0 && env && *env) {
        n = parse_long(env, 1, 256);
        if (n < 0)
            diag_add(d, "settings", "ENVOY_CONCURRENCY", "must be 1..256, got \"%s\"", env);
    }
    if (n < 0)
        n = cfg->proxy.workers;
    s->workers = n > 0 ? (unsigned)n : settings_cpu_limit(NULL, affinity_cpus());
}

int settings_parse_rate(const char *v, double *out)
{
    /* strtod alone would take "nan" (which no range check catches), "0x0.1" and " 0.1": only
     * digits, a point and an exponent ("5e-2", which strtod always took) pass. */
    size_t whole = strspn(v, "0123456789"), frac = 0;
    if (v[whole] == '.')
        frac = strspn(v + whole + 1, "0123456789");
    size_t len = whole + (v[whole] == '.' ? 1 + frac : 0);
    if (whole == 0 && frac == 0)
        return -1;
    if (v[len] == 'e' || v[len] == 'E') {
        size_t sign = v[len + 1] == '-' || v[len + 1] == '+';
        size_t digits = strspn(v + len + 1 + sign, "0123456789");
        if (digits == 0)
            return -1;
        len += 1 + sign + digits;
    }
    if (v[len] != '\0')
        return -1;
    errno = 0;
    double r = strtod(v, NULL);
    if (errno || !(r >= 0 && r <= 1))
        return -1;
    *out = r;
    return 0;
}

/* X-Ray as the App Mesh Envoy image reads it: ENABLE_ENVOY_XRAY_TRACING, XRAY_DAEMON_PORT,
 * AWS_XRAY_DAEMON_ADDRESS (wins over the port), XRAY_SAMPLING_RATE, XRAY_SAMPLING_RULE_MANIFEST,
 * XRAY_SEGMENT_NAME; then the config's proxy.xray. */
static void resolve_xray(settings_t *s, const config_t *cfg, diag_t *d)
{
    const cfg_proxy_t *px = &cfg->proxy;
    xray_settings_t *x = &s->xray_set;
    const char *on = env("ENABLE_ENVOY_XRAY_TRACING"); /* set, it decides: "1" on, else off */
    s->xray = on ? strcmp(on, "1") == 0 : px->xray_enabled;
    const char *addr = env("AWS_XRAY_DAEMON_ADDRESS"), *port = env("XRAY_DAEMON_PORT");
    if (port && parse_long(port, 1, 65535) < 0)
        diag_add(d, "settings", "XRAY_DAEMON_PORT", "must be 1..65535, got \"%s\"", port);
    if (addr)
        snprintf(x->daemon, sizeof x->daemon, "%s", addr);
    else if (port)
        snprintf(x->daemon, sizeof x->daemon, "127.0.0.1:%s", port);
    else
        snprintf(x->daemon, sizeof x->daemon, "%s",
                 px->xray_daemon ? px->xray_daemon : "127.0.0.1:2000");
    /* Checked here, not when tracing starts: a bad address refuses start-up like a bad port.
     * Only when tracing is on: with it off the value is not remora's to judge (a task-wide
     * setting for the app's X-Ray SDK, say). */
    const char *spec = addr ? addr : port ? NULL : px->xray_daemon;
    const char *bad = s->xray && spec ? xray_daemon_check(spec) : NULL;
    if (bad)
        diag_add(d, "settings", addr ? "AWS_XRAY_DAEMON_ADDRESS" : "proxy.xray.daemonAddress",
                 "%s, got \"%s\"", bad, spec);
    const char *rate = env("XRAY_SAMPLING_RATE");
    x->rate = px->xray_rate >= 0 ? px->xray_rate : 0.05;
    if (rate && settings_parse_rate(rate, &x->rate) != 0)
        diag_add(d, "settings", "XRAY_SAMPLING_RATE", "must be a decimal number 0..1, got \"%s\"",
                 rate);
    const char *manifest = env("XRAY_SAMPLING_RULE_MANIFEST");
    snprintf(x->manifest, sizeof x->manifest, "%s",
             manifest            ? manifest
             : px->xray_manifest ? px->xray_manifest
                                 : "");
    snprintf(x->mesh, sizeof x->mesh, "%s", cfg->mesh_name);
    snprintf(x->node, sizeof x->node, "%s", s->node);
    const char *name = env("XRAY_SEGMENT_NAME");
    if (name || px->xray_segment_name)
        snprintf(x->segment_name, sizeof x->segment_name, "%s",
                 name ? name : px->xray_segment_name);
    else
        snprintf(x->segment_name, sizeof x->segment_name, "%.120s/%.120s", cfg->mesh_name, s->node);
}

/* REMORA_DNS_SERVERS, else proxy.dns.servers, else "" (/etc/resolv.conf). Checked here, so that
 * a bad list refuses start-up before anything is built on the config. */
static void resolve_dns(settings_t *s, const config_t *cfg, diag_t *d)
{
    const char *v = env("REMORA_DNS_SERVERS");
    const char *name = v ? "REMORA_DNS_SERVERS" : "proxy.dns.servers";
    if (!v)
        v = cfg->proxy.dns_servers;
    if (!v)
        return;
    if (strlen(v) >= sizeof s->dns_servers)
        diag_add(d, "settings", name, "longer than %zu bytes", sizeof s->dns_servers - 1);
    else if (dns_servers_check(v) != 0)
        diag_add(d, "settings", name,
                 "expected IP[:PORT][,IP[:PORT]] (IPv6 as [IP]:PORT) with ports 1..65535, got "
                 "\"%s\"",
                 v);
    else
        snprintf(s->dns_servers, sizeof s->dns_servers, "%s", v);
}

/* An interval from `var` (milliseconds), else the config's, else `dflt`; at least MIN_POLL_MS. */
static uint64_t interval(const char *var, uint64_t cfg_ms, uint64_t dflt, diag_t *d)
{
    const char *v = env(var);
    long ms = v ? parse_long(v, MIN_POLL_MS, 86400000L) : -1;
    if (v && ms < 0)
        diag_add(d, "settings", var, "must be %d..86400000 (milliseconds), got \"%s\"", MIN_POLL_MS,
                 v);
    if (ms >= 0)
        return (uint64_t)ms;
    if (cfg_ms != DURATION_UNSET)
        return cfg_ms < MIN_POLL_MS ? MIN_POLL_MS : cfg_ms;
    return dflt;
}

/* Cloud Map API discovery: REMORA_CLOUDMAP_DISCOVERY (attributes | api | dns),
 * REMORA_CLOUDMAP_POLL_MS, REMORA_CLOUDMAP_REFRESH_MS; then proxy.cloudMap. The config URL:
 * REMORA_CONFIG_URL and REMORA_CONFIG_POLL_MS. */
static void resolve_polling(settings_t *s, const char *cli_config, const config_t *cfg, diag_t *d)
{
    static const char *const uses[] = {"attributes", "api", "dns"};
    const cfg_proxy_t *px = &cfg->proxy;
    s->cloudmap_use = px->cloudmap_use >= 0 ? px->cloudmap_use : CLOUDMAP_API_ATTRIBUTES;
    const char *use = env("REMORA_CLOUDMAP_DISCOVERY");
    if (use) {
        int found = -1;
        for (int i = 0; i < 3; i++)
            if (!strcmp(use, uses[i]))
                found = i;
        if (found < 0)
            diag_add(d, "settings", "REMORA_CLOUDMAP_DISCOVERY",
                     "must be attributes, api or dns, got \"%s\"", use);
        else
            s->cloudmap_use = found;
    }
    s->cloudmap_health = px->cloudmap_health >= 0 ? px->cloudmap_health : CM_HEALTHY_OR_ELSE_ALL;
    s->cloudmap_poll_ms =
        interval("REMORA_CLOUDMAP_POLL_MS", px->cloudmap_poll_ms, DEFAULT_CLOUDMAP_POLL_MS, d);
    s->cloudmap_refresh_ms = interval("REMORA_CLOUDMAP_REFRESH_MS", px->cloudmap_refresh_ms,
                                      DEFAULT_CLOUDMAP_REFRESH_MS, d);
    const char *url = cli_config ? NULL : env("REMORA_CONFIG_URL");
    if (url && strlen(url) >= sizeof s->config_url)
        diag_add(d, "settings", "REMORA_CONFIG_URL", "longer than %zu bytes",
                 sizeof s->config_url - 1);
    else if (url)
        snprintf(s->config_url, sizeof s->config_url, "%s", url);
    s->config_poll_ms =
        interval("REMORA_CONFIG_POLL_MS", DURATION_UNSET, DEFAULT_CONFIG_POLL_MS, d);
}

int settings_resolve(settings_t *s, const cli_opts_t *cli, const config_t *cfg, diag_t *d)
{
    size_t before = d->n;
    memset(s, 0, sizeof *s);
    resolve_node(s, cli, cfg, d);
    resolve_admin(s, cli, cfg, d);
    resolve_level(s, cli, cfg, d);
    resolve_workers(s, cli, cfg, d);
    int in = cli->ingress_port > 0 ? cli->ingress_port : cfg->proxy.ingress_port;
    int eg = cli->egress_port > 0 ? cli->egress_port : cfg->proxy.egress_port;
    if (s->gateway) { /* the gateway's listeners are its ports; there is no egress */
        s->egress_port = 0;
    } else {
        s->ingress_port = (uint16_t)(in > 0 ? in : DEFAULT_INGRESS_PORT);
        s->egress_port = (uint16_t)(eg > 0 ? eg : DEFAULT_EGRESS_PORT);
    }
    s->header_timeout_ms = cfg->proxy.request_header_timeout_ms != DURATION_UNSET
                               ? cfg->proxy.request_header_timeout_ms
                               : DEFAULT_HEADER_TIMEOUT_MS;
    const char *drain = getenv("LISTENER_DRAIN_WAIT_TIME_S");
    long drain_s = drain && *drain ? parse_long(drain, 0, 3600) : -1;
    if (drain && *drain && drain_s < 0)
        diag_add(d, "settings", "LISTENER_DRAIN_WAIT_TIME_S", "must be 0..3600, got \"%s\"", drain);
    s->drain_timeout_ms = drain_s >= 0 ? (uint64_t)drain_s * 1000
                          : cfg->proxy.drain_timeout_ms != DURATION_UNSET
                              ? cfg->proxy.drain_timeout_ms
                              : DEFAULT_DRAIN_TIMEOUT_MS;
    resolve_xray(s, cfg, d);
    const char *tags = env("ENABLE_ENVOY_STATS_TAGS");
    s->stats_tags = tags && strcmp(tags, "1") == 0;
    resolve_dns(s, cfg, d);
    s->dns_hold_ms = cfg->proxy.dns_hold_ms != DURATION_UNSET ? cfg->proxy.dns_hold_ms
                                                              : DISCOVERY_DEFAULT_HOLD_MS;
    resolve_polling(s, cli->config, cfg, d);
    statsd_settings_resolve(&s->statsd, d);
    return d->n > before ? ERR_CONFIG : 0;
}
