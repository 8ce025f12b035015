/* Run-time settings, resolved once at start-up with the precedence of SPEC §2:
 * command-line flag > environment > the config file's `proxy` object > default. */
#ifndef REMORA_SETTINGS_H
#define REMORA_SETTINGS_H

#include <stdint.h>

#include "config/config.h"
#include "config/diag.h"
#include "base/log.h"
#include "proxy/statsd.h"
#include "tracing/xray.h"

#define DEFAULT_CONFIG_PATH         "/etc/remora/mesh.json"
#define DEFAULT_INGRESS_PORT        15000
#define DEFAULT_EGRESS_PORT         15001
#define DEFAULT_ADMIN_PORT          9901
#define DEFAULT_HEADER_TIMEOUT_MS   10000
#define DEFAULT_DRAIN_TIMEOUT_MS    20000
#define DEFAULT_CLOUDMAP_POLL_MS    5000  /* DiscoverInstancesRevision */
#define DEFAULT_CLOUDMAP_REFRESH_MS 30000 /* DiscoverInstances even if the revision stands */
#define DEFAULT_CONFIG_POLL_MS      10000
#define MIN_POLL_MS                 100

/* What the command line said; unset fields are NULL / -1. */
typedef struct cli_opts {
    const char *config;
    const char *node;
    const char *admin;
    const char *log_level;
    int ingress_port, egress_port, workers;
    int wait_for_config; /* REMORA_CONFIG_URL: retry until a valid document (run, not check) */
    struct config_url_validators *url_seen; /* where the document's validators go, or NULL */
} cli_opts_t;

typedef struct settings {
    char node[256];       /* the virtual node, or the virtual gateway, this proxy serves */
    char table_name[300]; /* what route_table_build takes: node, or "virtualGateway/NAME" */
    int gateway;          /* serving a virtual gateway: its listeners, no egress */
    uint16_t gateway_ports[GATEWAY_MAX_LISTENERS];
    unsigned ngateway_ports;
    uint16_t ingress_port, egress_port;
    char admin_host[64];
    uint16_t admin_port;
    unsigned workers;
    enum log_level log_level;
    uint64_t header_timeout_ms;
    uint64_t drain_timeout_ms;
    char dns_servers[512]; /* "" = /etc/resolv.conf */
    uint64_t dns_hold_ms;
    int xray;       /* tracing on */
    int stats_tags; /* ENABLE_ENVOY_STATS_TAGS=1: appmesh_mesh and appmesh_virtual_node on every
                       series */
    xray_settings_t xray_set;
    statsd_settings_t statsd; /* ENABLE_ENVOY_DOG_STATSD and the sink's address */
    /* Cloud Map API discovery (docs/cloudmap.md) */
    int cloudmap_use;    /* enum cloudmap_use */
    int cloudmap_health; /* enum cloudmap_health */
    uint64_t cloudmap_poll_ms, cloudmap_refresh_ms;
    /* REMORA_CONFIG_URL: the config is polled from here ("" = a file or REMORA_CONFIG_JSON) */
    char config_url[2048];
    uint64_t config_poll_ms;
} settings_t;

/* Where the config comes from: --config, else REMORA_CONFIG_URL (fetched: see
 * proxy/config_url.h), REMORA_CONFIG_JSON inline, REMORA_CONFIG, the default path. Returns the
 * loaded config or NULL with diagnostics. */
config_t *settings_load_config(const cli_opts_t *cli, diag_t *d);
/* Resolve every setting; problems go to `d` (source "settings"). Returns 0 or ERR_CONFIG. */
int settings_resolve(settings_t *s, const cli_opts_t *cli, const config_t *cfg, diag_t *d);
/* A sampling rate as XRAY_SAMPLING_RATE takes it: a plain decimal ("0.05", "1", ".5") in [0, 1];
 * no sign, exponent, hex ("0x0.1"), "nan" or "inf". Returns 0 with `*out` set, or -1. */
int settings_parse_rate(const char *v, double *out);
/* The node name inside an App Mesh ARN (…:mesh/M/virtualNode/N) or the older
 * "mesh/M/virtualNode/N" form; NULL when `v` is neither. Points into `v`. */
const char *settings_node_from_arn(const char *v);
/* The same for a virtual gateway (…:mesh/M/virtualGateway/G or "mesh/M/virtualGateway/G"). */
const char *settings_gateway_from_arn(const char *v);
/* CPUs this process may use: the cgroup CPU quota (v2 cpu.max or v1 cfs) rounded up, bounded by
 * the affinity mask. `cpu_max` is the text of cpu.max (or NULL to read the system's). */
unsigned settings_cpu_limit(const char *cpu_max, unsigned affinity);

#endif
