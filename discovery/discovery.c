#include "discovery/discovery.h"

#include <arpa/inet.h>
#include <ares_nameser.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "discovery/dns.h"
#include "discovery/health.h"
#include "base/log.h"

enum source { SRC_STATIC, SRC_DNS, SRC_SRV };

typedef struct seen {
    endpoint_t ep;
    uint64_t last_ms;
} seen_t;

/* What one cluster resolves, and what it has learnt. Main thread only. */
typedef struct disc {
    struct disc *next;
    discovery_t *d;
    cluster_t *c;
    enum source kind;
    char name[DNS_NAME_MAX];
    enum dns_response rtype;
    enum ip_preference ip;
    uv_timer_t timer;
    /* the round in progress */
    unsigned outstanding;
    endpoint_t *acc;
    unsigned nacc, capacc, records;
    uint32_t ttl;
    int got_records, saw_failure, saw_nxdomain;
    /* memory across rounds */
    seen_t *seen;
    unsigned nseen;
    uint64_t last_good_ms;
    int have_good;
    unsigned failures;
    health_t *health;
} disc_t;

struct discovery {
    uv_loop_t *loop;
    dns_t *dns;
    qsbr_t *qsbr;
    uint64_t hold_ms;
    discovery_event_cb cb;
    void *arg;
    disc_t *all;
};

typedef struct query_ctx {
    disc_t *dc;
    uint16_t port, priority, weight;
    char owner[DNS_NAME_MAX];
} query_ctx_t;

/* ---- publishing ---- */

static void publish(disc_t *dc, const endpoint_t *eps, unsigned n)
{
    endpoint_set_t *old = cluster_publish(dc->c, eps, n);
    if (old)
        qsbr_retire(dc->d->qsbr, old, (void (*)(void *))endpoint_set_free);
    dc->d->cb(dc->d->arg);
}

static void mark_answered(disc_t *dc)
{
    if (!atomic_exchange(&dc->c->answered, 1))
        dc->d->cb(dc->d->arg);
}

/* ---- accumulating a round ---- */

static void add_endpoint(disc_t *dc, int family, const void *addr, uint16_t port, uint16_t prio,
                         uint16_t weight, uint32_t ttl)
{
    struct sockaddr_storage ss = {0};
    if (family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)&ss;
        in->sin_family = AF_INET;
        in->sin_port = htons(port);
        memcpy(&in->sin_addr, addr, 4);
    } else {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons(port);
        memcpy(&in6->sin6_addr, addr, 16);
    }
    endpoint_t ep;
    endpoint_set(&ep, (struct sockaddr *)&ss);
    ep.priority = prio;
    ep.weight = weight;
    dc->records++;
    if (ttl < dc->ttl)
        dc->ttl = ttl;
    dc->got_records = 1;
    for (unsigned i = 0; i < dc->nacc; i++)
        if (endpoint_same_addr(&dc->acc[i], &ep))
            return;
    if (dc->nacc == dc->capacc) {
        unsigned cap = dc->capacc ? dc->capacc * 2 : 16;
        endpoint_t *grown = realloc(dc->acc, cap * sizeof *grown);
        if (!grown)
            return;
        dc->acc = grown;
        dc->capacc = cap;
    }
    dc->acc[dc->nacc++] = ep;
}

static int family_wanted(const disc_t *dc, int family)
{
    if (dc->ip == IP_V4_ONLY)
        return family == AF_INET;
    if (dc->ip == IP_V6_ONLY)
        return family == AF_INET6;
    return 1;
}

static void note_result(disc_t *dc, enum dns_result r)
{
    if (r == DNS_CANCELLED)
        return;
    stat_inc(&dc->c->dns_answers[r]);
    if (r == DNS_NXDOMAIN)
        dc->saw_nxdomain = 1;
    else if (r != DNS_OK && r != DNS_NODATA)
        dc->saw_failure = 1;
}

static void finish_round(disc_t *dc);
static void on_address(void *arg, enum dns_result r, const dns_answer_t *a);

static void query(disc_t *dc, const char *name, int type, dns_cb cb, uint16_t port, uint16_t prio,
                  uint16_t weight)
{
    query_ctx_t *q = malloc(sizeof *q);
    if (!q)
        return;
    *q = (query_ctx_t){dc, port, prio, weight, ""};
    snprintf(q->owner, sizeof q->owner, "%s", name);
    dc->outstanding++;
    dns_query(dc->d->dns, name, type, cb, q);
}

/* A and/or AAAA for `name`, per ipPreference. */
static void query_addresses(disc_t *dc, const char *name, uint16_t port, uint16_t prio,
                            uint16_t weight)
{
    if (family_wanted(dc, AF_INET))
        query(dc, name, T_A, on_address, port, prio, weight);
    if (family_wanted(dc, AF_INET6))
        query(dc, name, T_AAAA, on_address, port, prio, weight);
}

static void query_done(disc_t *dc, query_ctx_t *q)
{
    free(q);
    if (--dc->outstanding == 0)
        finish_round(dc);
}

/* The query's cluster, with the result counted; NULL (and the query freed) when the channel
 * was closed under it. */
static disc_t *answered(query_ctx_t *q, enum dns_result r)
{
    if (r == DNS_CANCELLED) {
        free(q);
        return NULL;
    }
    note_result(q->dc, r);
    return q->dc;
}

static void on_address(void *arg, enum dns_result r, const dns_answer_t *a)
{
    query_ctx_t *q = arg;
    disc_t *dc = answered(q, r);
    if (!dc)
        return;
    for (unsigned i = 0; r == DNS_OK && i < a->naddrs; i++)
        if (family_wanted(dc, a->addrs[i].family))
            add_endpoint(dc, a->addrs[i].family, &a->addrs[i].addr, q->port, q->priority, q->weight,
                         a->addrs[i].ttl);
    query_done(dc, q);
}

static void on_srv(void *arg, enum dns_result r, const dns_answer_t *a)
{
    query_ctx_t *q = arg;
    disc_t *dc = answered(q, r);
    if (!dc)
        return;
    if ((r == DNS_OK && a->nsrv == 0) || r == DNS_NODATA) {
        /* No SRV records at the name: its A/AAAA with the listener port. */
        query_addresses(dc, dc->name, dc->c->port, 0, 1);
    }
    for (unsigned i = 0; r == DNS_OK && i < a->nsrv; i++) {
        const dns_srv_t *s = &a->srv[i];
        if (!s->target[0] || strcmp(s->target, ".") == 0)
            continue; /* RFC 2782: "." means the service is not available */
        int found = 0;
        for (unsigned k = 0; k < a->naddrs; k++) {
            if (strcasecmp(a->addrs[k].name, s->target) != 0 ||
                !family_wanted(dc, a->addrs[k].family))
                continue;
            uint32_t ttl = a->addrs[k].ttl < s->ttl ? a->addrs[k].ttl : s->ttl;
            add_endpoint(dc, a->addrs[k].family, &a->addrs[k].addr, s->port, s->priority, s->weight,
                         ttl);
            found = 1;
        }
        if (!found)
            query_addresses(dc, s->target, s->port, s->priority, s->weight);
        else if (s->ttl < dc->ttl)
            dc->ttl = s->ttl;
    }
    query_done(dc, q);
}

/* ---- the round's outcome ---- */

static void on_timer(uv_timer_t *t);

static void schedule(disc_t *dc, uint64_t ms)
{
    uv_timer_start(&dc->timer, on_timer,
                   ms < DISCOVERY_MIN_REFRESH_MS ? DISCOVERY_MIN_REFRESH_MS : ms, 0);
}

static void remember(disc_t *dc, uint64_t now, int partial)
{
    /* Keep what this answer listed; keep what it left out only when it may be a subset. */
    unsigned kept = 0;
    for (unsigned i = 0; i < dc->nseen; i++) {
        int listed = 0;
        for (unsigned k = 0; k < dc->nacc && !listed; k++)
            listed = endpoint_same_addr(&dc->acc[k], &dc->seen[i].ep);
        if (!listed && (!partial || now - dc->seen[i].last_ms >= dc->d->hold_ms))
            continue;
        dc->seen[kept++] = dc->seen[i];
    }
    dc->nseen = kept;
    seen_t *grown = realloc(dc->seen, (dc->nseen + dc->nacc + 1) * sizeof *grown);
    if (!grown)
        return;
    dc->seen = grown;
    for (unsigned k = 0; k < dc->nacc; k++) {
        unsigned i = 0;
        while (i < dc->nseen && !endpoint_same_addr(&dc->seen[i].ep, &dc->acc[k]))
            i++;
        if (i == dc->nseen)
            dc->nseen++;
        dc->seen[i] = (seen_t){dc->acc[k], now};
    }
}

/* Whether the cluster's set already holds exactly these endpoints (addresses, priorities and
 * weights, in order): then a refresh changes nothing and wakes nobody. */
static int unchanged(const cluster_t *c, const endpoint_t *eps, unsigned n)
{
    const endpoint_set_t *s = atomic_load(&c->set);
    if (!s || s->n != n)
        return 0;
    for (unsigned i = 0; i < n; i++)
        if (!endpoint_same_addr(&s->eps[i], &eps[i]) || s->eps[i].priority != eps[i].priority ||
            s->eps[i].weight != eps[i].weight)
            return 0;
    return 1;
}

static void publish_seen(disc_t *dc)
{
    endpoint_t *eps = malloc((dc->nseen + 1) * sizeof *eps);
    if (!eps)
        return;
    for (unsigned i = 0; i < dc->nseen; i++)
        eps[i] = dc->seen[i].ep;
    unsigned n = dc->nseen;
    if (dc->kind == SRC_DNS && dc->rtype == DNS_LOADBALANCER && n > 1)
        n = 1; /* LOADBALANCER: the name stands for one endpoint, as Envoy's LOGICAL_DNS */
    if (!unchanged(dc->c, eps, n))
        publish(dc, eps, n);
    free(eps);
}

static void finish_round(disc_t *dc)
{
    uint64_t now = uv_now(dc->d->loop);
    if (dc->got_records) {
        remember(dc, now, dc->records == ROUTE53_MULTIVALUE_CAP);
        publish_seen(dc);
        dc->have_good = 1;
        dc->last_good_ms = now;
        dc->failures = 0;
        schedule(dc, (uint64_t)dc->ttl * 1000);
    } else if (dc->saw_failure) {
        /* SERVFAIL, timeout, refusal, garbage: keep serving the last good set. */
        dc->failures++;
        uint64_t backoff = (uint64_t)DISCOVERY_MIN_REFRESH_MS
                           << (dc->failures < 5 ? dc->failures - 1 : 4);
        log_warn("discovery: %s: lookup failed (%u in a row); keeping %u endpoint(s)", dc->name,
                 dc->failures, cluster_size(dc->c));
        schedule(dc, backoff < DISCOVERY_MAX_BACKOFF_MS ? backoff : DISCOVERY_MAX_BACKOFF_MS);
    } else {
        /* NXDOMAIN or NODATA: no instances, once the hold has passed. */
        uint64_t since = now - dc->last_good_ms;
        if (!dc->have_good || since >= dc->d->hold_ms) {
            if (dc->nseen || cluster_size(dc->c)) {
                log_warn("discovery: %s: %s; no endpoints", dc->name,
                         dc->saw_nxdomain ? "NXDOMAIN" : "no records");
                dc->nseen = 0;
                publish(dc, NULL, 0);
            }
            dc->have_good = 0;
            schedule(dc, DISCOVERY_MIN_REFRESH_MS);
        } else {
            schedule(dc, dc->d->hold_ms - since < DISCOVERY_MIN_REFRESH_MS
                             ? dc->d->hold_ms - since
                             : DISCOVERY_MIN_REFRESH_MS);
        }
    }
    mark_answered(dc);
}

static void start_round(disc_t *dc)
{
    if (dc->outstanding)
        return;
    dc->nacc = dc->records = 0;
    dc->ttl = UINT32_MAX;
    dc->got_records = dc->saw_failure = dc->saw_nxdomain = 0;
    if (dc->kind == SRC_SRV)
        query(dc, dc->name, T_SRV, on_srv, 0, 0, 1);
    else
        query_addresses(dc, dc->name, dc->c->port, 0, 1);
}

static void on_timer(uv_timer_t *t)
{
    start_round(t->data);
}

/* ---- configuration ---- */

/* An IP literal or localhost: endpoints without DNS. Returns the number found (0: a name). */
static unsigned literal(disc_t *dc, endpoint_t out[2])
{
    const char *name = dc->name;
    unsigned n = 0;
    struct sockaddr_storage ss;
    if (strcasecmp(name, "localhost") == 0) {
        if (family_wanted(dc, AF_INET) &&
            uv_ip4_addr("127.0.0.1", dc->c->port, (struct sockaddr_in *)&ss) == 0)
            endpoint_set(&out[n++], (struct sockaddr *)&ss);
        return n;
    }
    if (uv_ip4_addr(name, dc->c->port, (struct sockaddr_in *)&ss) == 0 ||
        uv_ip6_addr(name, dc->c->port, (struct sockaddr_in6 *)&ss) == 0)
        endpoint_set(&out[n++], (struct sockaddr *)&ss);
    return n;
}

static const cfg_listener_t *target_listener(const cfg_node_t *n, uint16_t port)
{
    for (unsigned i = 0; i < n->nlisteners; i++)
        if (n->listeners[i].port == port)
            return &n->listeners[i];
    return n->nlisteners ? &n->listeners[0] : NULL;
}

static void configure(disc_t *dc, const cfg_node_t *n)
{
    char name[DNS_NAME_MAX] = "";
    enum source kind = SRC_STATIC;
    if (n->discovery == DISCOVERY_DNS) {
        kind = SRC_DNS;
        snprintf(name, sizeof name, "%s", n->hostname);
    } else if (n->discovery == DISCOVERY_CLOUD_MAP) {
        kind = SRC_SRV;
        snprintf(name, sizeof name, "%s.%s", n->service_name, n->namespace_name);
    }
    int changed = kind != dc->kind || strcmp(name, dc->name) != 0 || n->ip_preference != dc->ip ||
                  n->response_type != dc->rtype;
    dc->kind = kind;
    memcpy(dc->name, name, sizeof name);
    dc->ip = n->ip_preference;
    dc->rtype = n->response_type;
    const cfg_listener_t *l = target_listener(n, dc->c->port);
    if (l && l->outlier.present)
        dc->c->outlier =
            (outlier_policy_t){l->outlier.max_server_errors, l->outlier.base_ejection_ms,
                               l->outlier.max_ejection_percent};
    else
        dc->c->outlier = (outlier_policy_t){0, 0, 0};
    dc->health =
        health_sync(dc->health, dc->d->loop, dc->c, l && l->health.present ? &l->health : NULL);
    if (!changed && atomic_load(&dc->c->answered))
        return;
    endpoint_t lit[2];
    unsigned nlit = kind == SRC_DNS ? literal(dc, lit) : 0;
    if (kind == SRC_STATIC || nlit) {
        uv_timer_stop(&dc->timer);
        dc->kind = SRC_STATIC;
        dc->nseen = 0;
        publish(dc, lit, nlit);
        mark_answered(dc);
        return;
    }
    start_round(dc);
}

int discovery_open(discovery_t **out, uv_loop_t *loop, const char *dns_servers, uint64_t hold_ms,
                   qsbr_t *qsbr, discovery_event_cb cb, void *arg)
{
    discovery_t *d = calloc(1, sizeof *d);
    if (!d)
        return UV_ENOMEM;
    int err = dns_open(&d->dns, loop, dns_servers);
    if (err) {
        free(d);
        return err;
    }
    *d = (discovery_t){loop, d->dns, qsbr, hold_ms, cb, arg, NULL};
    *out = d;
    return 0;
}

void discovery_sync(discovery_t *d, cluster_t *clusters, const config_t *cfg)
{
    for (cluster_t *c = clusters; c; c = c->next) {
        const cfg_node_t *n = c->node ? config_node(cfg, c->node) : NULL;
        if (!n)
            continue; /* the local app, passthrough, or a node no longer in the config */
        disc_t *dc = c->discovery;
        if (!dc) {
            dc = calloc(1, sizeof *dc);
            if (!dc)
                continue;
            dc->d = d;
            dc->c = c;
            dc->kind = SRC_STATIC;
            uv_timer_init(d->loop, &dc->timer);
            dc->timer.data = dc;
            dc->next = d->all;
            d->all = dc;
            c->discovery = dc;
        }
        configure(dc, n);
    }
}

static void on_disc_timer_closed(uv_handle_t *h)
{
    disc_t *dc = h->data;
    free(dc->acc);
    free(dc->seen);
    free(dc);
}

void discovery_close(discovery_t *d)
{
    if (!d)
        return;
    dns_close(d->dns); /* cancels outstanding queries */
    while (d->all) {
        disc_t *dc = d->all;
        d->all = dc->next;
        dc->c->discovery = NULL;
        health_stop(dc->health);
        uv_close((uv_handle_t *)&dc->timer, on_disc_timer_closed);
    }
    free(d);
}
