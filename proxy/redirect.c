/* remora redirect: the ECS aws-appmesh CNI plugin's nat rules, installed by exec'ing iptables.
 * The contract is in proxy/redirect.h; what operators see is in docs/redirect.md.
 *
 * This is a one-shot command, not the proxy: it blocks on its children and is done. */
#include "proxy/redirect.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#include "base/number.h"
#include "base/err.h"

extern char **environ;

#define SRC               "remora redirect"
#define CAP_NET_ADMIN_BIT 12
#define SSH_PORT          22
#define LIST_MAX          256          /* ports read from one list; the rules take 15 */
#define ID_MAX            2147483647LL /* the EC2 guide's range for the proxy's uid */
#define UNJUMP_MAX        16           /* duplicate jumps deleted per chain, a bound on the loop */
#define DEFAULT_INGRESS   "15000"
#define DEFAULT_EGRESS    "15001"

static const char egress[] = "APPMESH_EGRESS";
static const char ingress[] = "APPMESH_INGRESS";

/* The jumps, word for word as the plugin appends them: only TCP, only to non-local
 * destinations (egress) and from non-local sources (ingress). */
#define OUTPUT_JUMP     "-p", "tcp", "-m", "addrtype", "!", "--dst-type", "LOCAL", "-j", egress
#define PREROUTING_JUMP "-p", "tcp", "-m", "addrtype", "!", "--src-type", "LOCAL", "-j", ingress

static const char usage[] =
    "usage: remora redirect install|remove [--dry-run] [--ignored-uid UID] [--ignored-gid GID]\n"
    "           [--proxy-ingress-port PORT] [--proxy-egress-port PORT] [--app-ports LIST]\n"
    "           [--egress-ignored-ports LIST] [--egress-ignored-ips LIST] [--enable-ipv6[=BOOL]]\n"
    "Installs (or removes) the nat rules the ECS aws-appmesh CNI plugin installs. Each flag may\n"
    "come from the environment instead, under its ECS proxyConfiguration name: IgnoredUID,\n"
    "IgnoredGID, ProxyIngressPort, ProxyEgressPort, AppPorts, EgressIgnoredPorts,\n"
    "EgressIgnoredIPs, EnableIPv6 (or IPv6). A flag wins over the environment. --dry-run prints\n"
    "the iptables commands and runs nothing. See docs/redirect.md.\n";

/* ---- parsing: strings in, validated words out ---- */

static int is_blank(char ch)
{
    return ch == ' ' || ch == '\t';
}

/* The value without surrounding blanks (its length in *len); NULL stays NULL. */
static const char *trim(const char *v, size_t *len)
{
    if (!v)
        return NULL;
    while (is_blank(*v))
        v++;
    size_t n = strlen(v);
    while (n && is_blank(v[n - 1]))
        n--;
    *len = n;
    return v;
}

/* Steps *s over one `sep`-separated item, trimmed of blanks; returns 0 after the last. */
static int next_item(const char **s, char sep, const char **item, size_t *len)
{
    const char *p = *s;
    if (!p)
        return 0;
    const char *comma = strchr(p, sep);
    const char *end = comma ? comma : p + strlen(p);
    while (p < end && is_blank(*p))
        p++;
    while (end > p && is_blank(end[-1]))
        end--;
    *item = p;
    *len = (size_t)(end - p);
    *s = comma ? comma + 1 : NULL;
    return 1;
}

static int parse_port(const char *s, size_t len)
{
    return (int)decimal_parse(s, len, 1, 65535);
}

/* IgnoredUID / IgnoredGID into out (11 bytes). Returns 1 when set, 0 when absent or empty,
 * -1 after an error. */
static int parse_id(const char *name, const char *raw, char *out, diag_t *errors)
{
    size_t len = 0;
    const char *v = trim(raw, &len);
    if (!v || !len)
        return 0;
    long long id = decimal_parse(v, len, 0, ID_MAX);
    if (id < 0) {
        diag_add(errors, SRC, name, "must be a numeric id 0..2147483647, got \"%.*s\"", (int)len,
                 v);
        return -1;
    }
    snprintf(out, 11, "%u", (unsigned)id); /* at most 10 digits */
    return 1;
}

/* A single port property into out (6 bytes). Returns 1 when set, 0 when absent (the default
 * is the caller's), 2 when set empty (unset: the caller decides whether that is an error), -1
 * after an error. */
static int parse_port_prop(const char *name, const char *raw, char *out, diag_t *errors)
{
    size_t len = 0;
    const char *v = trim(raw, &len);
    if (!v)
        return 0;
    if (!len)
        return 2;
    int port = parse_port(v, len);
    if (port < 0) {
        diag_add(errors, SRC, name, "must be a port 1..65535, got \"%.*s\"", (int)len, v);
        return -1;
    }
    snprintf(out, 6, "%hu", (unsigned short)port); /* at most 5 digits */
    return 1;
}

/* A comma list of ports into ports[] (empty items skipped, as the plugin skips them).
 * Returns the count, or -1 after an error naming the property. */
static int parse_ports(const char *name, const char *raw, int *ports, diag_t *errors)
{
    const char *s = raw, *item;
    size_t len;
    int n = 0, bad = 0;
    while (next_item(&s, ',', &item, &len)) {
        if (!len)
            continue;
        int port = parse_port(item, len);
        if (port < 0) {
            diag_add(errors, SRC, name, "\"%.*s\" is not a port 1..65535", (int)len, item);
            bad = 1;
        } else if (n == LIST_MAX) {
            diag_add(errors, SRC, name, "more than %d ports (one rule takes %d)", LIST_MAX,
                     REDIRECT_MULTIPORT_MAX);
            return -1;
        } else {
            ports[n++] = port;
        }
    }
    return bad ? -1 : n;
}

/* "a,b,c" into buf; when it does not fit, as many as do and ",...". */
static void join_ports(const int *ports, int n, char *buf, size_t cap)
{
    size_t used = 0;
    buf[0] = '\0';
    for (int i = 0; i < n; i++) {
        int w = snprintf(buf + used, cap - used, "%s%d", i ? "," : "", ports[i]);
        if (w < 0 || (size_t)w >= cap - used - 4) {
            snprintf(buf + used, cap - used, ",...");
            return;
        }
        used += (size_t)w;
    }
}

static void cap_warning(diag_t *warnings, const char *name, int total, const int *dropped,
                        int ndropped, const char *why)
{
    char list[256];
    join_ports(dropped, ndropped, list, sizeof list);
    diag_add(warnings, SRC, name,
             "%d ports%s, but one iptables multiport rule takes at most %d: ignoring %s (the "
             "CNI plugin also ignores ports past the 15th); list at most %d",
             total, why, REDIRECT_MULTIPORT_MAX, list,
             *why ? REDIRECT_MULTIPORT_MAX - 1 : REDIRECT_MULTIPORT_MAX);
}

/* EgressIgnoredPorts plus 22, which is always ignored (the EC2 guide's envoy-networking.sh
 * appends it; ECS: "even if you list no ports, port 22 is ignored"). When the list is over the
 * cap, 22 is the port kept: SSH must not be redirected into the proxy. */
static int ignored_ports(const redirect_input_t *in, redirect_conf_t *c, diag_t *errors,
                         diag_t *warnings)
{
    int ports[LIST_MAX], keep[REDIRECT_MULTIPORT_MAX], dropped[LIST_MAX];
    int n = parse_ports("EgressIgnoredPorts", in->egress_ignored_ports, ports, errors);
    if (n < 0)
        return -1;
    int ssh_at = -1;
    for (int i = 0; i < n && ssh_at < 0; i++)
        if (ports[i] == SSH_PORT)
            ssh_at = i;
    int nkeep = 0, ndropped = 0;
    if (ssh_at >= 0 && ssh_at < REDIRECT_MULTIPORT_MAX) {
        for (int i = 0; i < n; i++) {
            if (i < REDIRECT_MULTIPORT_MAX)
                keep[nkeep++] = ports[i];
            else
                dropped[ndropped++] = ports[i];
        }
        if (ndropped)
            cap_warning(warnings, "EgressIgnoredPorts", n, dropped, ndropped, "");
    } else {
        int others = 0;
        for (int i = 0; i < n; i++) {
            if (ports[i] == SSH_PORT)
                continue;
            others++;
            if (nkeep < REDIRECT_MULTIPORT_MAX - 1)
                keep[nkeep++] = ports[i];
            else
                dropped[ndropped++] = ports[i];
        }
        keep[nkeep++] = SSH_PORT;
        if (ndropped)
            cap_warning(warnings, "EgressIgnoredPorts", others + 1, dropped, ndropped,
                        " with 22 (always ignored, for SSH; kept)");
    }
    join_ports(keep, nkeep, c->ignored_ports, sizeof c->ignored_ports);
    return 0;
}

/* 4 or 6 for an IPv4 or IPv6 address or CIDR block, 0 otherwise. */
static int ip_family(const char *s, size_t len)
{
    char addr[INET6_ADDRSTRLEN];
    unsigned char bin[16];
    const char *slash = memchr(s, '/', len);
    size_t alen = slash ? (size_t)(slash - s) : len;
    if (alen == 0 || alen >= sizeof addr)
        return 0;
    memcpy(addr, s, alen);
    addr[alen] = '\0';
    int fam = inet_pton(AF_INET, addr, bin) == 1 ? 4 : inet_pton(AF_INET6, addr, bin) == 1 ? 6 : 0;
    if (fam && slash && decimal_parse(slash + 1, len - alen - 1, 0, fam == 4 ? 32 : 128) < 0)
        return 0;
    return fam;
}

/* Appends ",item" (or "item" first) to buf; ERR_TOO_LARGE when it does not fit. */
static int append_item(char *buf, size_t cap, const char *item, size_t len)
{
    size_t used = strlen(buf);
    if (used + (used ? 1 : 0) + len + 1 > cap)
        return ERR_TOO_LARGE;
    if (used)
        buf[used++] = ',';
    memcpy(buf + used, item, len);
    buf[used + len] = '\0';
    return 0;
}

/* EgressIgnoredIPs split by family, as the plugin's separateIPs does: v4 ones for iptables,
 * v6 ones for ip6tables. */
static int ignored_ips(const redirect_input_t *in, redirect_conf_t *c, diag_t *errors,
                       diag_t *warnings)
{
    const char *s = in->egress_ignored_ips, *item;
    size_t len;
    int bad = 0;
    while (next_item(&s, ',', &item, &len)) {
        if (!len)
            continue;
        int fam = ip_family(item, len);
        if (!fam) {
            diag_add(errors, SRC, "EgressIgnoredIPs",
                     "\"%.*s\" is not an IPv4 or IPv6 address or CIDR block", (int)len, item);
            bad = 1;
            continue;
        }
        char *buf = fam == 4 ? c->ignored_v4 : c->ignored_v6;
        if (append_item(buf, REDIRECT_IPS_LEN, item, len) != 0) {
            diag_add(errors, SRC, "EgressIgnoredIPs",
                     "the IPv%d addresses are longer than %d bytes", fam, REDIRECT_IPS_LEN - 1);
            return -1;
        }
    }
    if (!bad && *c->ignored_v6 && !c->ipv6)
        diag_add(warnings, SRC, "EgressIgnoredIPs",
                 "IPv6 addresses %s ignored: IPv6 is not enabled, so no ip6tables rules are "
                 "installed (set IPv6=true for them)",
                 c->ignored_v6);
    return bad ? -1 : 0;
}

static int parse_ipv6(const char *raw, int *out, diag_t *errors)
{
    static const char *const yes[] = {"1", "true", "yes", "on"};
    static const char *const no[] = {"0", "false", "no", "off"};
    size_t len = 0;
    const char *v = trim(raw, &len);
    *out = 0;
    if (!v || !len)
        return 0;
    for (size_t i = 0; i < sizeof yes / sizeof *yes; i++) {
        if (strlen(yes[i]) == len && strncasecmp(v, yes[i], len) == 0)
            return *out = 1, 0;
        if (strlen(no[i]) == len && strncasecmp(v, no[i], len) == 0)
            return 0;
    }
    diag_add(errors, SRC, "IPv6", "must be true or false (1/0, yes/no, on/off), got \"%.*s\"",
             (int)len, v);
    return -1;
}

int redirect_parse(const redirect_input_t *in, enum redirect_action act, redirect_conf_t *c,
                   diag_t *errors, diag_t *warnings)
{
    size_t first = errors->n;
    memset(c, 0, sizeof *c);
    parse_ipv6(in->enable_ipv6, &c->ipv6, errors);
    if (act == REDIRECT_REMOVE)
        return errors->n > first ? ERR_CONFIG : 0;

    /* The plugin's validateConfig, in its order. */
    int uid = parse_id("IgnoredUID", in->ignored_uid, c->ignored_uid, errors);
    int gid = parse_id("IgnoredGID", in->ignored_gid, c->ignored_gid, errors);
    if (uid == 0 && gid == 0)
        diag_add(errors, SRC, "IgnoredUID",
                 "one of IgnoredUID or IgnoredGID is required: the user (or group) id the proxy "
                 "runs as, whose own connections are not redirected (1337 in the ECS examples)");

    int eg = parse_port_prop("ProxyEgressPort", in->proxy_egress_port, c->egress_port, errors);
    if (eg == 0)
        snprintf(c->egress_port, sizeof c->egress_port, DEFAULT_EGRESS);
    else if (eg == 2)
        diag_add(errors, SRC, "ProxyEgressPort",
                 "is required but set empty: the port the proxy takes redirected outbound "
                 "connections on (leave it out for remora's " DEFAULT_EGRESS ")");

    int app[LIST_MAX];
    int napp = parse_ports("AppPorts", in->app_ports, app, errors);
    int ig = parse_port_prop("ProxyIngressPort", in->proxy_ingress_port, c->ingress_port, errors);
    if (ig == 1 && napp == 0)
        diag_add(errors, SRC, "ProxyIngressPort",
                 "is set but AppPorts is not: set both (the app's ports, whose inbound "
                 "connections go to ProxyIngressPort) or neither (no inbound redirect)");
    else if (ig == 2 && napp > 0)
        diag_add(errors, SRC, "AppPorts",
                 "is set but ProxyIngressPort is empty: set both or neither (leave "
                 "ProxyIngressPort out for remora's " DEFAULT_INGRESS ")");
    else if (ig == 0 && napp > 0)
        snprintf(c->ingress_port, sizeof c->ingress_port, DEFAULT_INGRESS);
    if (napp > REDIRECT_MULTIPORT_MAX)
        cap_warning(warnings, "AppPorts", napp, app + REDIRECT_MULTIPORT_MAX,
                    napp - REDIRECT_MULTIPORT_MAX, "");
    if (napp > 0)
        join_ports(app, napp < REDIRECT_MULTIPORT_MAX ? napp : REDIRECT_MULTIPORT_MAX, c->app_ports,
                   sizeof c->app_ports);

    ignored_ports(in, c, errors, warnings);
    ignored_ips(in, c, errors, warnings);
    return errors->n > first ? ERR_CONFIG : 0;
}

/* ---- planning: validated words into argv vectors ---- */

/* Appends "BIN -w -t nat WORDS..." (NULL-terminated words). The plans are fixed in size by
 * construction (REDIRECT_CMDS_MAX, REDIRECT_ARGS_MAX); going over is a bug, hence abort. */
static void add(redirect_plan_t *p, enum redirect_when when, const char *bin, ...)
{
    if (p->n == REDIRECT_CMDS_MAX)
        abort();
    redirect_cmd_t *cmd = &p->cmds[p->n++];
    cmd->when = when;
    unsigned i = 0;
    cmd->argv[i++] = bin;
    cmd->argv[i++] = "-w"; /* wait for the xtables lock rather than fail on it */
    cmd->argv[i++] = "-t";
    cmd->argv[i++] = "nat";
    va_list ap;
    va_start(ap, bin);
    const char *w;
    while ((w = va_arg(ap, const char *)) != NULL) {
        if (i == REDIRECT_ARGS_MAX)
            abort();
        cmd->argv[i++] = w;
    }
    va_end(ap);
    cmd->argv[i] = NULL;
}

static void plan_family(const redirect_conf_t *c, const char *bin, const char *ips,
                        redirect_plan_t *p)
{
    add(p, REDIRECT_ALWAYS, bin, "-N", egress, NULL);
    if (*c->ignored_uid)
        add(p, REDIRECT_ALWAYS, bin, "-A", egress, "-m", "owner", "--uid-owner", c->ignored_uid,
            "-j", "RETURN", NULL);
    if (*c->ignored_gid)
        add(p, REDIRECT_ALWAYS, bin, "-A", egress, "-m", "owner", "--gid-owner", c->ignored_gid,
            "-j", "RETURN", NULL);
    add(p, REDIRECT_ALWAYS, bin, "-A", egress, "-p", "tcp", "-m", "multiport", "--dports",
        c->ignored_ports, "-j", "RETURN", NULL);
    if (*ips)
        add(p, REDIRECT_ALWAYS, bin, "-A", egress, "-p", "tcp", "-d", ips, "-j", "RETURN", NULL);
    add(p, REDIRECT_ALWAYS, bin, "-A", egress, "-p", "tcp", "-j", "REDIRECT", "--to",
        c->egress_port, NULL);
    add(p, REDIRECT_ALWAYS, bin, "-A", "OUTPUT", OUTPUT_JUMP, NULL);
    if (!*c->ingress_port)
        return;
    add(p, REDIRECT_ALWAYS, bin, "-N", ingress, NULL);
    add(p, REDIRECT_ALWAYS, bin, "-A", ingress, "-p", "tcp", "-m", "multiport", "--dports",
        c->app_ports, "-j", "REDIRECT", "--to-port", c->ingress_port, NULL);
    add(p, REDIRECT_ALWAYS, bin, "-A", "PREROUTING", PREROUTING_JUMP, NULL);
}

void redirect_plan_install(const redirect_conf_t *c, redirect_plan_t *p)
{
    p->n = 0;
    plan_family(c, "iptables", c->ignored_v4, p);
    if (c->ipv6)
        plan_family(c, "ip6tables", c->ignored_v6, p);
}

void redirect_plan_remove(const redirect_conf_t *c, redirect_plan_t *p)
{
    p->n = 0;
    for (int v6 = 0; v6 <= c->ipv6; v6++) {
        const char *bin = v6 ? "ip6tables" : "iptables";
        add(p, REDIRECT_UNJUMP, bin, "-D", "OUTPUT", OUTPUT_JUMP, NULL);
        add(p, REDIRECT_IF_CHAIN, bin, "-F", egress, NULL);
        add(p, REDIRECT_IF_CHAIN, bin, "-X", egress, NULL);
        add(p, REDIRECT_UNJUMP, bin, "-D", "PREROUTING", PREROUTING_JUMP, NULL);
        add(p, REDIRECT_IF_CHAIN, bin, "-F", ingress, NULL);
        add(p, REDIRECT_IF_CHAIN, bin, "-X", ingress, NULL);
    }
}

static int format_words(const char *const *argv, char *buf, size_t cap)
{
    size_t used = 0;
    if (cap)
        buf[0] = '\0';
    for (unsigned i = 0; argv[i]; i++) {
        int w = snprintf(buf + used, cap - used, "%s%s", i ? " " : "", argv[i]);
        if (w < 0 || (size_t)w >= cap - used)
            return ERR_TOO_LARGE;
        used += (size_t)w;
    }
    return (int)used;
}

int redirect_cmd_format(const redirect_cmd_t *cmd, char *buf, size_t cap)
{
    return format_words(cmd->argv, buf, cap);
}

int redirect_has_net_admin(const char *status)
{
    const char *line = status;
    while (line && strncmp(line, "CapEff:", 7) != 0) {
        line = strchr(line, '\n');
        if (line)
            line++;
    }
    if (!line)
        return UV_EINVAL;
    char *end;
    errno = 0;
    unsigned long long caps = strtoull(line + 7, &end, 16);
    if (errno || end == line + 7)
        return UV_EINVAL;
    return (caps >> CAP_NET_ADMIN_BIT) & 1;
}

/* ---- running: checks, then iptables ---- */

typedef struct tools {
    char iptables[PATH_MAX], ip6tables[PATH_MAX];
} tools_t;

/* The first executable `name` in PATH, then in the sbin directories a non-root PATH tends to
 * lack. Returns 0, or UV_ENOENT. */
static int find_tool(const char *name, char *out, size_t cap)
{
    const char *path = getenv("PATH");
    char dirs[4096];
    snprintf(dirs, sizeof dirs, "%s:/usr/sbin:/sbin:/usr/local/sbin", path ? path : "");
    const char *s = dirs, *dir;
    size_t len;
    while (next_item(&s, ':', &dir, &len)) {
        if (!len || dir[0] != '/') /* "" and relative entries: never the current directory */
            continue;
        int w = snprintf(out, cap, "%.*s/%s", (int)len, dir, name);
        if (w > 0 && (size_t)w < cap && access(out, X_OK) == 0)
            return 0;
    }
    return UV_ENOENT;
}

static const char *tool_path(const tools_t *t, const char *bin)
{
    return strcmp(bin, "ip6tables") == 0 ? t->ip6tables : t->iptables;
}

/* Runs argv from `path` and waits. With err, it is a check: its stdout goes to /dev/null and
 * its stderr into err (up to errcap - 1 bytes, NUL-terminated), because "no such rule" is an
 * expected answer there, not something to show. Returns the exit status, 128 + the signal
 * that ended it, or a negative UV_E* code when it could not be started or waited for. */
static int spawn_wait(const char *path, const char *const *argv, char *err, size_t errcap)
{
    int fds[2] = {-1, -1};
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    if (err) {
        err[0] = '\0';
        if (pipe2(fds, O_CLOEXEC) != 0) {
            posix_spawn_file_actions_destroy(&fa);
            return -errno;
        }
        posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
        posix_spawn_file_actions_adddup2(&fa, fds[1], STDERR_FILENO);
    }
    fflush(stdout); /* our lines before the child's */
    fflush(stderr);
    pid_t pid;
    int rc = posix_spawn(&pid, path, &fa, NULL, (char *const *)argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (err)
        close(fds[1]);
    if (rc != 0) {
        if (err)
            close(fds[0]);
        return -rc;
    }
    if (err) {
        size_t used = 0;
        for (;;) {
            char chunk[512];
            ssize_t r = read(fds[0], chunk, sizeof chunk);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0)
                break;
            size_t take = (size_t)r < errcap - 1 - used ? (size_t)r : errcap - 1 - used;
            memcpy(err + used, chunk, take);
            used += take;
        }
        err[used] = '\0';
        close(fds[0]);
    }
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            return -errno;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* What a failed command printed (checks only; a command's own stderr is already shown) and
 * why it failed. */
static void report(const tools_t *t, const char *const *argv, int st, const char *err)
{
    char line[REDIRECT_IPS_LEN + 256];
    format_words(argv, line, sizeof line);
    if (st < 0)
        fprintf(stderr, SRC ": could not run %s: %s\n", tool_path(t, argv[0]), uv_strerror(st));
    else
        fprintf(stderr, SRC ": failed (exit %d): %s\n%s", st, line, err);
}

/* Prints the command (the line --dry-run prints) and runs it, its output shown. Returns 0,
 * or -1 after saying what failed. */
static int run_cmd(const tools_t *t, const redirect_cmd_t *cmd)
{
    char line[REDIRECT_IPS_LEN + 256];
    format_words(cmd->argv, line, sizeof line);
    printf("%s\n", line);
    int st = spawn_wait(tool_path(t, cmd->argv[0]), cmd->argv, NULL, 0);
    if (st != 0)
        report(t, cmd->argv, st, "");
    return st == 0 ? 0 : -1;
}

/* A check: 1 when it exits 0, 0 when it exits 1 (iptables' "no such rule/chain"), -1 after
 * reporting anything else, with what the check printed. */
static int check(const tools_t *t, const char *const *argv)
{
    char err[1024];
    int st = spawn_wait(tool_path(t, argv[0]), argv, err, sizeof err);
    if (st == 0 || st == 1)
        return st == 0;
    report(t, argv, st, err);
    return -1;
}

static int chain_exists(const tools_t *t, const char *bin, const char *chain)
{
    const char *argv[] = {bin, "-w", "-t", "nat", "-S", chain, NULL};
    return check(t, argv);
}

/* One step of a removal: nothing to do is success. Returns 0 or -1 (reported). */
static int run_conditional(const tools_t *t, const redirect_cmd_t *cmd)
{
    if (cmd->when == REDIRECT_ALWAYS)
        return run_cmd(t, cmd);
    const char *chain = cmd->argv[REDIRECT_VERB + 1];
    if (cmd->when == REDIRECT_UNJUMP) {
        unsigned last = 0;
        while (cmd->argv[last + 1])
            last++;
        chain = cmd->argv[last]; /* the jump's target: without it there is no jump */
    }
    int exists = chain_exists(t, cmd->argv[0], chain);
    if (exists <= 0)
        return exists;
    if (cmd->when == REDIRECT_IF_CHAIN)
        return run_cmd(t, cmd);
    /* -C the same rule; -D it while it is there (an older install may have left two). */
    redirect_cmd_t probe = *cmd;
    probe.argv[REDIRECT_VERB] = "-C";
    for (int i = 0; i < UNJUMP_MAX; i++) {
        int found = check(t, probe.argv);
        if (found <= 0)
            return found;
        if (run_cmd(t, cmd) != 0)
            return -1;
    }
    return 0;
}

/* Every step, even after one failed (removal is best effort). Returns 0 or -1. */
static int run_removal(const tools_t *t, const redirect_conf_t *c)
{
    redirect_plan_t p;
    redirect_plan_remove(c, &p);
    int rc = 0;
    for (unsigned i = 0; i < p.n; i++)
        if (run_conditional(t, &p.cmds[i]) != 0)
            rc = -1;
    return rc;
}

/* Removes what an earlier install left (so that installing twice leaves one set of rules,
 * and changed properties replace the old ones), then adds the rules; when one fails, removes
 * them again so that nothing is left half-installed. */
static int run_install(const tools_t *t, const redirect_conf_t *c)
{
    if (run_removal(t, c) != 0) {
        fprintf(stderr, SRC ": could not remove the rules already installed; nothing added\n");
        return 1;
    }
    redirect_plan_t p;
    redirect_plan_install(c, &p);
    for (unsigned i = 0; i < p.n; i++) {
        if (run_cmd(t, &p.cmds[i]) != 0) {
            fprintf(stderr, SRC ": removing the rules added so far\n");
            run_removal(t, c);
            return 1;
        }
    }
    return 0;
}

/* 0 when this process may change the nat table, or 1 after saying how to let it. An unreadable
 * /proc/self/status proves nothing: iptables then answers for itself. */
static int check_capability(void)
{
    char buf[8192];
    FILE *f = fopen("/proc/self/status", "r");
    if (!f)
        return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    if (redirect_has_net_admin(buf) != 0)
        return 0;
    fprintf(stderr,
            SRC ": missing CAP_NET_ADMIN: it is not in this process's effective capabilities "
                "(CapEff in /proc/self/status), and iptables needs it to change the nat table.\n"
                "Run it as root on the host (uid %u now), in a container given the capability "
                "(docker/podman run --cap-add NET_ADMIN; ECS: linuxParameters.capabilities.add "
                "[\"NET_ADMIN\"] with \"user\": \"0\"), or in an init container that has "
                "NET_ADMIN and shares the app's network namespace.\n",
            (unsigned)geteuid());
    return 1;
}

/* 0, or 1 after saying which binary is missing. */
static int find_tools(const redirect_conf_t *c, tools_t *t)
{
    static const char *const names[] = {"iptables", "ip6tables"};
    for (int v6 = 0; v6 <= c->ipv6; v6++) {
        char *out = v6 ? t->ip6tables : t->iptables;
        if (find_tool(names[v6], out, PATH_MAX) == 0)
            continue;
        fprintf(stderr,
                SRC ": %s not found in PATH or /usr/sbin, /sbin: install it (Debian/Ubuntu: "
                    "apt-get install iptables; Amazon Linux, RHEL: dnf install iptables-nft)%s\n",
                names[v6], v6 ? "; or leave IPv6 unset for IPv4 rules only" : "");
        return 1;
    }
    return 0;
}

static const char *env_or(const char *name, const char *alt)
{
    const char *v = getenv(name);
    return v || !alt ? v : getenv(alt);
}

int redirect_main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"ignored-uid", required_argument, NULL, 'u'},
        {"ignored-gid", required_argument, NULL, 'g'},
        {"proxy-ingress-port", required_argument, NULL, 'i'},
        {"proxy-egress-port", required_argument, NULL, 'e'},
        {"app-ports", required_argument, NULL, 'a'},
        {"egress-ignored-ports", required_argument, NULL, 'p'},
        {"egress-ignored-ips", required_argument, NULL, 'd'},
        {"enable-ipv6", optional_argument, NULL, '6'},
        {"ipv6", optional_argument, NULL, '6'},
        {"dry-run", no_argument, NULL, 'n'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    redirect_input_t in = {
        .ignored_uid = getenv("IgnoredUID"),
        .ignored_gid = getenv("IgnoredGID"),
        .proxy_ingress_port = getenv("ProxyIngressPort"),
        .proxy_egress_port = getenv("ProxyEgressPort"),
        .app_ports = getenv("AppPorts"),
        .egress_ignored_ports = getenv("EgressIgnoredPorts"),
        .egress_ignored_ips = getenv("EgressIgnoredIPs"),
        .enable_ipv6 = env_or("EnableIPv6", "IPv6"),
    };
    int dry_run = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'u':
            in.ignored_uid = optarg;
            break;
        case 'g':
            in.ignored_gid = optarg;
            break;
        case 'i':
            in.proxy_ingress_port = optarg;
            break;
        case 'e':
            in.proxy_egress_port = optarg;
            break;
        case 'a':
            in.app_ports = optarg;
            break;
        case 'p':
            in.egress_ignored_ports = optarg;
            break;
        case 'd':
            in.egress_ignored_ips = optarg;
            break;
        case '6':
            in.enable_ipv6 = optarg ? optarg : "true";
            break;
        case 'n':
            dry_run = 1;
            break;
        case 'h':
            fputs(usage, stdout);
            return 0;
        default:
            fputs(usage, stderr);
            return 2;
        }
    }
    enum redirect_action act;
    if (optind + 1 == argc && strcmp(argv[optind], "install") == 0)
        act = REDIRECT_INSTALL;
    else if (optind + 1 == argc && strcmp(argv[optind], "remove") == 0)
        act = REDIRECT_REMOVE;
    else {
        fprintf(stderr, SRC ": say install or remove, once\n%s", usage);
        return 2;
    }

    diag_t errors = {0}, warnings = {0};
    redirect_conf_t conf;
    int err = redirect_parse(&in, act, &conf, &errors, &warnings);
    for (size_t i = 0; i < warnings.n; i++)
        fprintf(stderr, "%s\n", warnings.lines[i]);
    for (size_t i = 0; i < errors.n; i++)
        fprintf(stderr, "%s\n", errors.lines[i]);
    diag_free(&warnings);
    diag_free(&errors);
    if (err != 0) {
        fprintf(stderr, SRC ": nothing was %s\n",
                act == REDIRECT_INSTALL ? "installed" : "removed");
        return 2;
    }

    if (dry_run) {
        redirect_plan_t p;
        if (act == REDIRECT_INSTALL)
            redirect_plan_install(&conf, &p);
        else
            redirect_plan_remove(&conf, &p);
        char line[REDIRECT_IPS_LEN + 256];
        for (unsigned i = 0; i < p.n; i++)
            if (format_words(p.cmds[i].argv, line, sizeof line) >= 0)
                printf("%s\n", line);
        return 0;
    }
    tools_t tools;
    if (check_capability() != 0 || find_tools(&conf, &tools) != 0)
        return 1;
    if (act == REDIRECT_INSTALL)
        return run_install(&tools, &conf);
    return run_removal(&tools, &conf) == 0 ? 0 : 1;
}
