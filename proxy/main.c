/* remora: command line, start-up and exit codes (SPEC §2). */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "config/config.h"
#include "base/err.h"
#include "base/log.h"
#include "proxy/access_log.h"
#include "proxy/redirect.h"
#include "proxy/server.h"
#include "proxy/settings.h"
#include "base/version.h"
#include "routing/route.h"

static const char usage[] =
    "usage: remora [--config FILE] [--node NAME] [--ingress-port N] [--egress-port N]\n"
    "              [--admin ADDR:PORT] [--workers N] [--log-level LEVEL]\n"
    "       remora check --config FILE [--node NAME]\n"
    "       remora redirect install|remove [--dry-run] [PROPERTY FLAGS]\n"
    "       remora version\n";

static int parse_port(const char *s)
{
    char *end;
    long v = strtol(s, &end, 10);
    return *s && !*end && v >= 1 && v <= 65535 ? (int)v : -1;
}

/* Returns 0, or 2 after printing what is wrong with the command line. */
static int parse_args(int argc, char **argv, cli_opts_t *cli)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"node", required_argument, NULL, 'n'},
        {"ingress-port", required_argument, NULL, 'i'},
        {"egress-port", required_argument, NULL, 'e'},
        {"admin", required_argument, NULL, 'a'},
        {"workers", required_argument, NULL, 'w'},
        {"log-level", required_argument, NULL, 'l'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    *cli = (cli_opts_t){.ingress_port = -1, .egress_port = -1, .workers = -1};
    int c;
    while ((c = getopt_long(argc, argv, "c:n:h", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            cli->config = optarg;
            break;
        case 'n':
            cli->node = optarg;
            break;
        case 'a':
            cli->admin = optarg;
            break;
        case 'l':
            cli->log_level = optarg;
            break;
        case 'i':
        case 'e': {
            int port = parse_port(optarg);
            if (port < 0) {
                fprintf(stderr, "remora: --%s must be 1..65535, got \"%s\"\n",
                        c == 'i' ? "ingress-port" : "egress-port", optarg);
                return 2;
            }
            *(c == 'i' ? &cli->ingress_port : &cli->egress_port) = port;
            break;
        }
        case 'w': {
            char *end;
            long n = strtol(optarg, &end, 10);
            if (!*optarg || *end || n < 1 || n > 256) {
                fprintf(stderr, "remora: --workers must be 1..256, got \"%s\"\n", optarg);
                return 2;
            }
            cli->workers = (int)n;
            break;
        }
        case 'h':
            fputs(usage, stdout);
            exit(0);
        default:
            fputs(usage, stderr);
            return 2;
        }
    }
    return 0;
}

static void print_diag(const diag_t *d, FILE *out)
{
    for (size_t i = 0; i < d->n; i++)
        fprintf(out, "%s\n", d->lines[i]);
}

static config_t *load(const cli_opts_t *cli, settings_t *set, diag_t *d)
{
    config_t *cfg = settings_load_config(cli, d);
    if (cfg && settings_resolve(set, cli, cfg, d) != 0) {
        config_free(cfg);
        return NULL;
    }
    return cfg;
}

static const char *provider_kind(enum provider_kind k)
{
    return k == PROVIDER_NODE ? "virtual node" : k == PROVIDER_ROUTER ? "virtual router" : "none";
}

static const char *ip_preference_name(enum ip_preference p)
{
    static const char *const names[] = {"", "IPv4_PREFERRED", "IPv6_PREFERRED", "IPv4_ONLY",
                                        "IPv6_ONLY"};
    return names[p];
}

/* How the node's endpoints are found: `use` is proxy.cloudMap.discovery (enum cloudmap_use). */
static void print_discovery(const cfg_node_t *n, int use)
{
    int api = n->discovery == DISCOVERY_CLOUD_MAP &&
              (use == CLOUDMAP_API_ALWAYS || (use == CLOUDMAP_API_ATTRIBUTES && n->nattributes));
    if (n->discovery == DISCOVERY_DNS)
        printf("dns %s", n->hostname);
    else if (api)
        printf("cloud map API %s/%s", n->namespace_name, n->service_name);
    else if (n->discovery == DISCOVERY_CLOUD_MAP)
        printf("cloud map DNS %s.%s", n->service_name, n->namespace_name);
    else
        printf("none");
    if (n->discovery != DISCOVERY_NONE && n->ip_preference != IP_DEFAULT)
        printf(", %s", ip_preference_name(n->ip_preference)); /* its own, or the mesh's */
    for (unsigned i = 0; api && i < n->nattributes; i++)
        printf("%s%s=%s", i ? ", " : " where ", n->attributes[i].key, n->attributes[i].value);
    printf("\n");
    if (n->nattributes && !api)
        printf("    note: proxy.cloudMap.discovery is \"dns\": %u attribute filter(s) cannot be "
               "applied through DNS; every instance of the service is used\n",
               n->nattributes);
}

/* The retry policy in force for an HTTP route (or, `rt` NULL, a virtual node provider): its
 * own, else App Mesh's default unless turned off. */
static void print_retry(const config_t *cfg, const cfg_route_t *rt)
{
    static const char *const events[] = {"server-error", "gateway-error", "client-error",
                                         "stream-error", "connection-error"};
    static const char *const grpc_events[] = {"cancelled", "deadline-exceeded", "internal",
                                              "resource-exhausted", "unavailable"};
    if (rt && rt->has_retry) {
        printf(", %u retries (", rt->max_retries);
        unsigned n = 0;
        for (unsigned e = 0; e < 5; e++)
            if (rt->retry_events & (1u << e))
                printf("%s%s", n++ ? ", " : "", events[e]);
        for (unsigned e = 0; e < 5; e++)
            if (rt->grpc_retry_events & (1u << e))
                printf("%s%s", n++ ? ", " : "", grpc_events[e]);
        if (rt->per_retry_ms != DURATION_UNSET)
            printf("; %llu ms per try", (unsigned long long)rt->per_retry_ms);
        printf(")");
    } else if (cfg->proxy.default_retry_policy) {
        printf(", %u retries (App Mesh's default: 503, reset, connect failure%s)",
               DEFAULT_RETRY_MAX, rt && rt->kind == ROUTE_GRPC ? ", unavailable" : "");
    } else {
        printf(", no retries (the default policy is off)");
    }
}

static void print_routes(const config_t *cfg, const char *router)
{
    static const char *const methods[] = {
        [HTTP_GET] = "GET",         [HTTP_HEAD] = "HEAD",     [HTTP_POST] = "POST",
        [HTTP_PUT] = "PUT",         [HTTP_DELETE] = "DELETE", [HTTP_CONNECT] = "CONNECT",
        [HTTP_OPTIONS] = "OPTIONS", [HTTP_TRACE] = "TRACE",   [HTTP_PATCH] = "PATCH"};
    for (unsigned r = 0; r < cfg->nroutes; r++) {
        const cfg_route_t *rt = &cfg->routes[r];
        if (strcmp(rt->router, router) != 0)
            continue;
        printf("      route %s", rt->name);
        if (rt->priority >= 0)
            printf(" (priority %d)", rt->priority);
        if (rt->tcp)
            printf(": tcp");
        else if (rt->kind == ROUTE_GRPC)
            printf(": grpc %s/%s", rt->grpc_service ? rt->grpc_service : "any service",
                   rt->grpc_method ? rt->grpc_method : "any method");
        else if (rt->path)
            printf(": %s %s",
                   rt->path_kind == PATH_PREFIX  ? "prefix"
                   : rt->path_kind == PATH_EXACT ? "path"
                                                 : "regex",
                   rt->path);
        else
            printf(": any path");
        if (!rt->tcp && rt->port)
            printf(", port %u", rt->port);
        if (rt->method >= 0 && (size_t)rt->method < sizeof methods / sizeof *methods &&
            methods[rt->method])
            printf(", %s", methods[rt->method]);
        if (rt->nheaders)
            printf(", %u %s matcher%s", rt->nheaders,
                   rt->kind == ROUTE_GRPC ? "metadata" : "header", rt->nheaders > 1 ? "s" : "");
        if (rt->nquery)
            printf(", %u query matcher%s", rt->nquery, rt->nquery > 1 ? "s" : "");
        printf(" ->");
        for (unsigned t = 0; t < rt->ntargets; t++)
            printf(" %s:%u", rt->targets[t].node, rt->targets[t].weight);
        if (!rt->tcp)
            print_retry(cfg, rt);
        printf("\n");
    }
}

/* "a, b, c (+2 more)": enough SANs to recognise the list on one line. */
static void print_sans(const cfg_tls_validation_t *v)
{
    for (unsigned i = 0; i < v->nsans && i < 3; i++)
        printf("%s%s", i ? ", " : "", v->sans[i]);
    if (v->nsans > 3)
        printf(" (+%u more)", v->nsans - 3);
}

/* A listener with a `tls` object (its path is set) gets one line about it. */
static void print_listener_tls(const cfg_listener_tls_t *t)
{
    static const char *const modes[] = {"DISABLED", "STRICT", "PERMISSIVE"}; /* tls_mode */
    if (!t->path)
        return;
    printf("    tls %s, certificate %s, ", modes[t->mode], t->cert_chain);
    if (!t->has_validation) {
        printf("no client certificates\n");
        return;
    }
    printf("mTLS: trust %s, client SANs ", t->validation.trust_file);
    if (t->validation.nsans)
        print_sans(&t->validation);
    else
        printf("not checked");
    printf("\n");
}

/* A backend's client policy: its own, or backendDefaults' (`from_defaults`). */
static void print_client_tls(const cfg_client_tls_t *t, int from_defaults)
{
    printf("    client TLS (%s, ", t->enforce ? "enforce" : "not enforced");
    for (unsigned i = 0; i < t->nports; i++)
        printf("%s%u", i ? ", " : "ports ", t->ports[i]);
    printf("%s%s), trust %s, ", t->nports ? "" : "all ports",
           from_defaults ? "; backendDefaults" : "", t->validation.trust_file);
    if (t->validation.nsans) {
        printf("SANs ");
        print_sans(&t->validation);
    } else {
        printf("SANs: the target's discovery name");
    }
    if (t->cert_chain)
        printf(", client certificate %s", t->cert_chain);
    printf("\n");
}

/* The one-screen summary of what this node's sidecar will do. */
/* One gateway route: its match, where it sends, how it rewrites. */
static void print_gateway_route(const cfg_gateway_route_t *r)
{
    static const char *const kinds[] = {"prefix", "path", "regex"};
    const cfg_route_t *m = &r->match;
    printf("  gateway route %s", r->name);
    if (m->priority >= 0)
        printf(" (priority %d)", m->priority);
    printf(": %s %s", m->path ? kinds[m->path_kind] : "any path", m->path ? m->path : "");
    if (r->host_kind != GW_HOST_ANY)
        printf(", host %s%s", r->host_kind == GW_HOST_SUFFIX ? "*" : "", r->host);
    if (m->method >= 0)
        printf(", method %s", http_method_name((enum http_method)m->method));
    if (m->nheaders || m->nquery)
        printf(", %u header and %u query matcher(s)", m->nheaders, m->nquery);
    printf(" -> %s", r->service);
    if (r->service_port)
        printf(":%u", r->service_port);
    if (r->path_exact)
        printf(", path becomes %s", r->path_exact);
    else if (m->path && m->path_kind == PATH_PREFIX)
        printf(", prefix becomes %s", !r->rewrite_prefix ? "itself (kept)"
                                      : r->prefix_value  ? r->prefix_value
                                                         : "/");
    printf(", Host %s\n", r->rewrite_host ? "the virtual service's name" : "kept");
}

/* A virtual gateway's listeners and routes, in match order as they are written. */
static void print_gateway(const config_t *cfg, const cfg_gateway_t *g)
{
    printf("gateway %s (no egress listener)\n", g->name);
    for (unsigned i = 0; i < g->nlisteners; i++) {
        printf("  listener %s:%u -> gateway routes\n", g->listeners[i].protocol,
               g->listeners[i].port);
        print_listener_tls(&g->listeners[i].tls);
    }
    unsigned n = 0;
    for (unsigned i = 0; i < cfg->ngateway_routes; i++)
        if (!strcmp(cfg->gateway_routes[i].gateway, g->name)) {
            print_gateway_route(&cfg->gateway_routes[i]);
            n++;
        }
    if (!n)
        printf("  no gateway routes: every request is answered 404\n");
}

/* Each rollout's schedule, as the sidecar will follow it (docs/rollouts.md). */
static void print_rollouts(const config_t *cfg)
{
    for (unsigned i = 0; i < cfg->nrollouts; i++) {
        const cfg_rollout_t *r = &cfg->rollouts[i];
        printf("  rollout %s: route %s/%s, %s -> %s, from ", r->name, r->router, r->route,
               r->baseline, r->canary);
        if (r->start_ms < 0) {
            printf("when first loaded");
        } else {
            char when[40];
            time_t t = (time_t)(r->start_ms / 1000);
            struct tm tm;
            gmtime_r(&t, &tm);
            strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
            printf("%s", when);
        }
        printf(":");
        uint64_t at = 0;
        for (unsigned k = 0; k < r->nsteps; k++) {
            if (r->steps[k].hold_ms == DURATION_UNSET) {
                printf(" then %u%% (promotion, at +%llu s at the earliest)\n", r->steps[k].weight,
                       (unsigned long long)(at / 1000));
                break;
            }
            printf(" %u%% for %llu s,", r->steps[k].weight,
                   (unsigned long long)(r->steps[k].hold_ms / 1000));
            at += r->steps[k].hold_ms;
        }
        printf("    analysis every %llu ms: at least %u canary requests, error rate not above "
               "%g, nor above the baseline's by %g, at %g confidence",
               (unsigned long long)r->interval_ms, r->min_requests, r->max_error_rate,
               r->max_error_rate_increase, r->confidence);
        if (r->max_p99_ms != DURATION_UNSET)
            printf(", p99 not above %llu ms", (unsigned long long)r->max_p99_ms);
        printf("; %u failed in a row roll back\n", r->failure_limit);
    }
}

static void print_summary(const config_t *cfg, const cfg_node_t *node, int cloudmap_use)
{
    printf("%s: ok\nmesh %s, %s %s, egress filter %s\n", cfg->source, cfg->mesh_name,
           cfg->serving_gateway ? "virtual gateway" : "node", node->name,
           cfg->egress_filter == EGRESS_ALLOW_ALL ? "ALLOW_ALL" : "DROP_ALL");
    if (cfg->serving_gateway)
        print_gateway(cfg, cfg->serving_gateway);
    for (unsigned i = 0; i < node->nlisteners; i++) {
        printf("  listener %s:%u -> local app 127.0.0.1:%u\n", node->listeners[i].protocol,
               node->listeners[i].port, node->listeners[i].port);
        print_listener_tls(&node->listeners[i].tls);
    }
    for (unsigned i = 0; i < node->nbackends; i++) {
        const cfg_service_t *s = config_service(cfg, node->backends[i]);
        printf("  backend %s -> %s %s", s->name, provider_kind(s->provider),
               s->provider_name ? s->provider_name : "");
        if (s->provider == PROVIDER_NODE)
            print_retry(cfg, NULL);
        printf("\n");
        if (node->backend_tls[i].present)
            print_client_tls(&node->backend_tls[i], 0);
        else if (node->default_tls.present)
            print_client_tls(&node->default_tls, 1);
        if (s->provider == PROVIDER_ROUTER)
            print_routes(cfg, s->provider_name);
    }
    for (unsigned i = 0; i < cfg->nnodes; i++) {
        const cfg_node_t *n = &cfg->nodes[i];
        if (cfg->serving_gateway && n == node)
            continue; /* the node that stands for the gateway */
        printf("  node %s: discovery ", n->name);
        print_discovery(n, cloudmap_use);
    }
    print_rollouts(cfg);
    const cfg_counts_t *doc = &cfg->document;
    printf("%u virtual nodes, %u virtual services, %u routers, %u routes", doc->nodes,
           doc->services, doc->routers, doc->routes);
    if (cfg->nnodes != doc->nodes || cfg->nservices != doc->services ||
        cfg->nrouters != doc->routers || cfg->nroutes != doc->routes)
        printf("; %s %s reaches %u, %u, %u and %u of them (the proxy holds only those)",
               cfg->serving_gateway ? "gateway" : "node", node->name,
               cfg->nnodes - (cfg->serving_gateway != NULL), cfg->nservices, cfg->nrouters,
               cfg->nroutes);
    printf("\n");
}

static int cmd_check(const cli_opts_t *cli)
{
    diag_t d = {0};
    settings_t set;
    config_t *cfg = load(cli, &set, &d);
    registry_t reg = {0};
    route_table_t *rt = cfg ? route_table_build(cfg, set.table_name, &reg, &d) : NULL;
    const cfg_access_log_t *alog = rt ? &route_table_node(rt)->access_log : NULL;
    if (rt && alog->path && access_log_check(alog, route_table_config(rt)->source, &d) != 0) {
        route_table_unref(rt);
        rt = NULL;
    }
    if (!rt) {
        print_diag(&d, stdout);
        diag_free(&d);
        registry_free(&reg);
        return 1;
    }
    print_summary(route_table_config(rt), route_table_node(rt), set.cloudmap_use);
    route_table_unref(rt);
    registry_free(&reg);
    diag_free(&d);
    return 0;
}

/* Thousands of client connections each need a descriptor, plus one upstream: lift the soft
 * limit to the hard one, as nginx's worker_rlimit_nofile would. */
static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static int cmd_run(const cli_opts_t *given)
{
    diag_t d = {0};
    settings_t set;
    cli_opts_t run = *given, *cli = &run;
    config_url_validators_t seen = {0};
    run.wait_for_config = 1;
    run.url_seen = &seen;
    config_t *cfg = load(cli, &set, &d);
    if (!cfg) {
        int stopped = d.n == 0; /* SIGTERM while waiting for REMORA_CONFIG_URL: a clean stop */
        print_diag(&d, stderr);
        diag_free(&d);
        return stopped ? 0 : 1;
    }
    diag_free(&d);
    log_set_level(set.log_level);
    signal(SIGPIPE, SIG_IGN);
    raise_fd_limit();
    server_t srv;
    int err = server_init(&srv, &set, cli, cfg, uv_default_loop());
    if (err == 0)
        err = server_run(&srv);
    server_free(&srv);
    uv_loop_close(uv_default_loop());
    return err == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
    const char *cmd = argc > 1 && argv[1][0] != '-' ? argv[1] : NULL;
    if (cmd && strcmp(cmd, "version") == 0) {
        printf("remora %s\n", REMORA_VERSION);
        return 0;
    }
    if (cmd && strcmp(cmd, "redirect") == 0)
        return redirect_main(argc - 1, argv + 1);
    if (cmd && strcmp(cmd, "check") != 0) {
        fprintf(stderr, "remora: unknown command \"%s\"\n%s", cmd, usage);
        return 2;
    }
    cli_opts_t cli;
    int rc = parse_args(cmd ? argc - 1 : argc, cmd ? argv + 1 : argv, &cli);
    if (rc)
        return rc;
    return cmd ? cmd_check(&cli) : cmd_run(&cli);
}
