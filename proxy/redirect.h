/* `remora redirect install|remove`: the nat rules the ECS aws-appmesh CNI plugin installs
 * (APPMESH_EGRESS, APPMESH_INGRESS and the jumps from OUTPUT and PREROUTING), for EC2 hosts and
 * init containers where no plugin does it. docs/redirect.md is the operator's page.
 *
 * Three steps, the first two pure so the unit test can check them without a kernel:
 * redirect_parse turns the ECS proxyConfiguration properties (strings, as the environment or
 * the flags give them) into a validated redirect_conf_t; redirect_plan_install/remove turn that
 * into argv vectors; redirect_main does the rest (capability and binary checks, exec). */
#ifndef REMORA_REDIRECT_H
#define REMORA_REDIRECT_H

#include <stddef.h>

#include "config/diag.h"

#define REDIRECT_MULTIPORT_MAX                                                                     \
    15                          /* ports one iptables multiport match takes (the plugin's cap)     \
                                 */
#define REDIRECT_PORTS_LEN 96   /* 15 ports of up to 5 digits, commas, NUL */
#define REDIRECT_IPS_LEN   2048 /* one family's comma-joined EgressIgnoredIPs */
#define REDIRECT_ARGS_MAX  18   /* the longest rule has 16 words */
#define REDIRECT_CMDS_MAX  24   /* install: 10 per family; remove: 6 per family */
#define REDIRECT_VERB      4    /* argv index of -N/-A/-D/-F/-X, after "iptables -w -t nat" */

/* The properties as given, under their ECS names. NULL means absent (a default may apply);
 * "" means set to nothing, which ECS uses for "unset" (IgnoredGID "" next to an IgnoredUID). */
typedef struct redirect_input {
    const char *ignored_uid;          /* IgnoredUID */
    const char *ignored_gid;          /* IgnoredGID */
    const char *proxy_ingress_port;   /* ProxyIngressPort, 15000 when absent and AppPorts set */
    const char *proxy_egress_port;    /* ProxyEgressPort, 15001 when absent */
    const char *app_ports;            /* AppPorts, comma list */
    const char *egress_ignored_ports; /* EgressIgnoredPorts, comma list; 22 is always added */
    const char *egress_ignored_ips;   /* EgressIgnoredIPs, comma list of v4/v6 addresses/CIDRs */
    const char *enable_ipv6;          /* IPv6 / EnableIPv6: true/false, 1/0, yes/no, on/off */
} redirect_input_t;

/* Validated properties, already in the words iptables is given ("" when not set). */
typedef struct redirect_conf {
    char ignored_uid[11], ignored_gid[11];
    char ingress_port[6]; /* "" : no APPMESH_INGRESS chain */
    char egress_port[6];
    char app_ports[REDIRECT_PORTS_LEN];
    char ignored_ports[REDIRECT_PORTS_LEN]; /* never empty: 22 is in it */
    char ignored_v4[REDIRECT_IPS_LEN];      /* for iptables */
    char ignored_v6[REDIRECT_IPS_LEN];      /* for ip6tables, used only when ipv6 */
    int ipv6;
} redirect_conf_t;

enum redirect_action { REDIRECT_INSTALL, REDIRECT_REMOVE };

/* How the runner treats a command. Removal must succeed when nothing is installed, so its
 * steps are conditional; the conditions are checked with `-S CHAIN` and `-C`. */
enum redirect_when {
    REDIRECT_ALWAYS,   /* -N, -A: run it; a failure fails the install */
    REDIRECT_UNJUMP,   /* -D of a jump: while `-C` finds it (and its chain exists), delete it */
    REDIRECT_IF_CHAIN, /* -F, -X: run when the chain (the word after the verb) exists */
};

typedef struct redirect_cmd {
    enum redirect_when when;
    const char *argv[REDIRECT_ARGS_MAX + 1]; /* NULL-terminated; argv[0] iptables or ip6tables */
} redirect_cmd_t;

/* The words point into the redirect_conf_t it was planned from and into static strings: the
 * plan is valid while that conf is. */
typedef struct redirect_plan {
    redirect_cmd_t cmds[REDIRECT_CMDS_MAX];
    unsigned n;
} redirect_plan_t;

/* Validates every property `act` reads (remove reads only IPv6) into *c. Returns 0, or
 * ERR_CONFIG with one "remora redirect: Property: message" line per problem in `errors`.
 * Inputs that the plugin accepts but partly ignores (more than 15 ports in a multiport list,
 * IPv6 addresses without IPv6) add a line to `warnings` and still return 0. */
int redirect_parse(const redirect_input_t *in, enum redirect_action act, redirect_conf_t *c,
                   diag_t *errors, diag_t *warnings);

/* The plugin's rules in its match order: for iptables and, when c->ipv6, ip6tables, the egress
 * chain and its OUTPUT jump, then (when AppPorts are set) the ingress chain and its PREROUTING
 * jump. */
void redirect_plan_install(const redirect_conf_t *c, redirect_plan_t *p);
/* For each family: the OUTPUT jump, flush and delete APPMESH_EGRESS; the same for
 * PREROUTING and APPMESH_INGRESS. Needs only c->ipv6. */
void redirect_plan_remove(const redirect_conf_t *c, redirect_plan_t *p);

/* The command as one line of words separated by spaces (what --dry-run prints), NUL-terminated.
 * Returns its length, or ERR_TOO_LARGE when it does not fit in cap bytes. */
int redirect_cmd_format(const redirect_cmd_t *cmd, char *buf, size_t cap);

/* From the text of /proc/self/status: 1 when CapEff has CAP_NET_ADMIN (bit 12), 0 when it does
 * not, UV_EINVAL when there is no readable CapEff line. */
int redirect_has_net_admin(const char *proc_status);

/* `remora redirect ...` (argv[0] is "redirect"). Returns the exit code: 0 done, 1 could not
 * (no capability, no iptables, a command failed: what was installed is removed again), 2 the
 * command line or a property is invalid (nothing was run). */
int redirect_main(int argc, char **argv);

#endif
