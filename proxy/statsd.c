#include "proxy/statsd.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "base/err.h"
#include "base/log.h"
#include "base/number.h"
#include "proxy/metrics.h"
#include "proxy/server.h"

/* What was last sent of one stat, by name: counters go out as deltas. */
typedef struct seen {
    char *name;
    uint64_t value;
    uint64_t buckets[HIST_BOUNDS];
    int used; /* written at some point: sent from then on */
} seen_t;

struct statsd {
    server_t *srv;
    uv_timer_t timer;
    int fd;
    struct sockaddr_storage to;
    socklen_t tolen;
    seen_t *seen; /* open addressing by name */
    size_t nseen, cap;
    char fixed[300]; /* appmesh tags, or "" */
    char dgram[STATSD_DATAGRAM];
    size_t len;
    uint64_t sent, dropped;
};

static uint64_t hash(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    while (*s)
        h = (h ^ (unsigned char)*s++) * 1099511628211ull;
    return h;
}

static int grow(statsd_t *d)
{
    size_t cap = d->cap ? d->cap * 2 : 512;
    seen_t *v = calloc(cap, sizeof *v);
    if (!v)
        return -1;
    for (size_t i = 0; i < d->cap; i++) {
        if (!d->seen[i].name)
            continue;
        size_t k = hash(d->seen[i].name) & (cap - 1);
        while (v[k].name)
            k = (k + 1) & (cap - 1);
        v[k] = d->seen[i];
    }
    free(d->seen);
    d->seen = v;
    d->cap = cap;
    return 0;
}

/* The record of `name`, made (zeroed) on first sight; NULL when memory is exhausted. */
static seen_t *lookup(statsd_t *d, const char *name)
{
    if ((d->nseen + 1) * 2 > d->cap && grow(d) != 0)
        return NULL;
    size_t k = hash(name) & (d->cap - 1);
    while (d->seen[k].name && strcmp(d->seen[k].name, name) != 0)
        k = (k + 1) & (d->cap - 1);
    if (!d->seen[k].name) {
        if (!(d->seen[k].name = strdup(name)))
            return NULL;
        d->nseen++;
    }
    return &d->seen[k];
}

static void send_dgram(statsd_t *d)
{
    if (!d->len)
        return;
    ssize_t n = sendto(d->fd, d->dgram, d->len, MSG_DONTWAIT, (struct sockaddr *)&d->to, d->tolen);
    if (n < 0)
        d->dropped++;
    else
        d->sent++;
    d->len = 0;
}

static void line(statsd_t *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void line(statsd_t *d, const char *fmt, ...)
{
    char buf[STATSD_DATAGRAM];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n <= 0 || (size_t)n >= sizeof buf)
        return; /* a line that cannot fit a datagram is not sent */
    if (d->len && d->len + 1 + (size_t)n > sizeof d->dgram)
        send_dgram(d);
    if (d->len)
        d->dgram[d->len++] = '\n';
    memcpy(d->dgram + d->len, buf, (size_t)n);
    d->len += (size_t)n;
}

static void tags_of(statsd_t *d, const char *extracted, char *out, size_t cap)
{
    const char *sep = d->fixed[0] && extracted[0] ? "," : "";
    if (d->fixed[0] || extracted[0])
        snprintf(out, cap, "|#%s%s%s", d->fixed, sep, extracted);
    else
        out[0] = '\0';
}

static void flush_hist(statsd_t *d, seen_t *s, const char *family, const char *tags,
                       const histogram_t *h)
{
    for (unsigned i = 0; i < HIST_BOUNDS; i++) {
        uint64_t now = stat_get((stat_t *)&h->buckets[i]), k = now - s->buckets[i];
        s->buckets[i] = now;
        if (!k)
            continue;
        double lo = i ? hist_bounds[i - 1] / 2.0 : 0, hi = hist_bounds[i] / 2.0;
        line(d, "%s:%g|ms|@%g%s", family, (lo + hi) / 2, 1.0 / (double)k, tags);
    }
}

static void flush_one(void *ctx, const metric_t *m)
{
    statsd_t *d = ctx;
    char family[512], extracted[600], tags[1000];
    if (m->family) { /* remora's own: its dotted name, no tags but the fixed ones */
        snprintf(family, sizeof family, "%s", m->name);
        extracted[0] = '\0';
    } else {
        metrics_extract(m->name, family, sizeof family, extracted, sizeof extracted, 1);
    }
    tags_of(d, extracted, tags, sizeof tags);
    seen_t *s = lookup(d, m->name);
    if (!s)
        return;
    if (m->kind == METRIC_HISTOGRAM) {
        flush_hist(d, s, family, tags, m->hist);
    } else if (m->kind == METRIC_GAUGE) {
        if (m->value || s->used)
            line(d, "%s:%" PRIu64 "|g%s", family, m->value, tags);
        s->used |= m->value != 0;
    } else if (m->value || s->used) { /* zero deltas too, once used */
        uint64_t delta = m->value >= s->value ? m->value - s->value : m->value; /* after a reset */
        line(d, "%s:%" PRIu64 "|c%s", family, delta, tags);
        s->value = m->value;
        s->used = 1;
    }
}

static void flush(statsd_t *d)
{
    metrics_each(d->srv, flush_one, d);
    send_dgram(d);
}

static void on_timer(uv_timer_t *t)
{
    flush(t->data);
}

/* A variable's value; NULL when it is unset or empty. */
static const char *env(const char *name)
{
    const char *v = getenv(name);
    return v && *v ? v : NULL;
}

int statsd_settings_resolve(statsd_settings_t *st, diag_t *d)
{
    memset(st, 0, sizeof *st);
    const char *on = env("ENABLE_ENVOY_DOG_STATSD");
    if (!on || strcmp(on, "1") != 0)
        return 0;
    size_t before = d->n;
    st->on = 1;
    const char *path = env("STATSD_SOCKET_PATH"), *addr = env("STATSD_ADDRESS"),
               *port = env("STATSD_PORT"), *flush = env("REMORA_STATSD_FLUSH_MS");
    long ms = flush ? decimal_parse(flush, strlen(flush), 100, 3600000) : STATSD_FLUSH_MS;
    if (ms < 0)
        diag_add(d, "settings", "REMORA_STATSD_FLUSH_MS",
                 "must be 100..3600000 (milliseconds), got \"%s\"", flush);
    st->flush_ms = ms < 0 ? STATSD_FLUSH_MS : (uint64_t)ms;
    if (path) {
        struct sockaddr_un *un = (struct sockaddr_un *)&st->to;
        if (strlen(path) >= sizeof un->sun_path) {
            diag_add(d, "settings", "STATSD_SOCKET_PATH", "longer than %zu bytes, got \"%s\"",
                     sizeof un->sun_path - 1, path);
        } else {
            un->sun_family = AF_UNIX;
            memcpy(un->sun_path, path, strlen(path) + 1);
            st->tolen = sizeof *un;
            st->family = AF_UNIX;
        }
        return d->n > before ? ERR_CONFIG : 0;
    }
    long p = port ? decimal_parse(port, strlen(port), 1, 65535) : STATSD_DEFAULT_PORT;
    if (p < 0)
        diag_add(d, "settings", "STATSD_PORT", "must be 1..65535, got \"%s\"", port);
    const char *a = addr ? addr : STATSD_DEFAULT_ADDR;
    int pp = p < 0 ? STATSD_DEFAULT_PORT : (int)p;
    if (uv_ip4_addr(a, pp, (struct sockaddr_in *)&st->to) == 0) {
        st->tolen = sizeof(struct sockaddr_in);
        st->family = AF_INET;
    } else if (uv_ip6_addr(a, pp, (struct sockaddr_in6 *)&st->to) == 0) {
        st->tolen = sizeof(struct sockaddr_in6);
        st->family = AF_INET6;
    } else {
        diag_add(d, "settings", "STATSD_ADDRESS", "must be an IPv4 or IPv6 address, got \"%s\"", a);
    }
    return d->n > before ? ERR_CONFIG : 0;
}

statsd_t *statsd_start(server_t *s, uv_loop_t *loop)
{
    const statsd_settings_t *st = &s->set.statsd;
    if (!st->on)
        return NULL;
    statsd_t *d = calloc(1, sizeof *d);
    if (!d)
        return NULL;
    d->srv = s;
    d->to = st->to;
    d->tolen = st->tolen;
    d->fd = socket(st->family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (d->fd < 0) {
        log_error("statsd: no socket for the DogStatsD sink, running without it: %s",
                  strerror(errno));
        free(d);
        return NULL;
    }
    if (s->set.stats_tags)
        snprintf(d->fixed, sizeof d->fixed, "appmesh.mesh:%s,appmesh.virtual_%s:%s",
                 route_table_config(s->routes)->mesh_name, s->set.gateway ? "gateway" : "node",
                 s->set.node);
    uv_timer_init(loop, &d->timer);
    d->timer.data = d;
    uint64_t ms = st->flush_ms;
    uv_timer_start(&d->timer, on_timer, ms, ms);
    log_info("statsd: DogStatsD every %" PRIu64 " ms", ms);
    return d;
}

static void on_timer_closed(uv_handle_t *h)
{
    statsd_t *d = h->data;
    for (size_t i = 0; i < d->cap; i++)
        free(d->seen[i].name);
    free(d->seen);
    close(d->fd);
    free(d);
}

void statsd_stop(statsd_t *d)
{
    if (!d)
        return;
    flush(d);
    uv_close((uv_handle_t *)&d->timer, on_timer_closed);
}
