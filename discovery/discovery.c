#include "discovery/discovery.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "base/backoff.h"
#include "base/log.h"
#include "discovery/discovery_impl.h"

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

void disc_add_endpoint(disc_t *dc, int family, const void *addr, uint16_t port, uint16_t prio,
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

int disc_family_wanted(const disc_t *dc, int family)
{
    if (dc->ip == IP_V4_ONLY)
        return family == AF_INET;
    if (dc->ip == IP_V6_ONLY)
        return family == AF_INET6;
    return 1;
}

/* ---- the round's outcome ---- */

static void on_timer(uv_timer_t *t);

/* The shortest wait between rounds: a second for DNS (TTLs are in seconds), the poll interval
 * for the API. */
static uint64_t min_wait(const disc_t *dc)
{
    return dc->kind == SRC_API ? dc->d->set.cloudmap_poll_ms : DISCOVERY_MIN_REFRESH_MS;
}

void disc_schedule(disc_t *dc, uint64_t ms)
{
    uint64_t floor = min_wait(dc);
    ms = ms < floor ? floor : ms;
    /* Clusters configured together do not poll the API in step. */
    uv_timer_start(&dc->timer, on_timer, dc->kind == SRC_API ? jitter_tenth(&dc->d->rng, ms) : ms,
                   0);
}

void disc_retry(disc_t *dc, uint64_t ms)
{
    uv_timer_start(&dc->timer, on_timer, ms, 0);
}

static void remember(disc_t *dc, uint64_t now, int partial)
{
    /* Keep what this answer listed; keep what it left out only when it may be a subset. */
    unsigned kept = 0;
    for (unsigned i = 0; i < dc->nseen; i++) {
        int listed = 0;
        for (unsigned k = 0; k < dc->nacc && !listed; k++)
            listed = endpoint_same_addr(&dc->acc[k], &dc->seen[i].ep);
        if (!listed && (!partial || now - dc->seen[i].last_ms >= dc->d->set.hold_ms))
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

/* Publish what is remembered; returns 0 when that is what the cluster already holds. */
static int publish_seen(disc_t *dc)
{
    endpoint_t *eps = malloc((dc->nseen + 1) * sizeof *eps);
    if (!eps)
        return 0;
    for (unsigned i = 0; i < dc->nseen; i++)
        eps[i] = dc->seen[i].ep;
    unsigned n = dc->nseen;
    if (dc->kind == SRC_DNS && dc->rtype == DNS_LOADBALANCER && n > 1)
        n = 1; /* LOADBALANCER: the name stands for one endpoint, as Envoy's LOGICAL_DNS */
    int changed = !unchanged(dc->c, eps, n);
    if (changed)
        publish(dc, eps, n);
    free(eps);
    return changed;
}

void disc_finish_round(disc_t *dc)
{
    uint64_t now = uv_now(dc->d->loop);
    cluster_stats_t *st = &dc->c->stats;
    if (dc->got_records) {
        /* Route 53 answers at most 8 of many; the API answers all (up to 1,000). A round in
         * which a query failed (a target's address lookup) did not see everything either. */
        remember(dc, now,
                 (dc->kind != SRC_API && dc->largest_answer == ROUTE53_MULTIVALUE_CAP) ||
                     dc->saw_failure);
        stat_inc(&st->update_success);
        if (!publish_seen(dc))
            stat_inc(&st->update_no_rebuild);
        dc->have_good = 1;
        dc->last_good_ms = now;
        dc->failures = 0;
        disc_schedule(dc, dc->kind == SRC_API ? min_wait(dc) : (uint64_t)dc->ttl * 1000);
    } else if (dc->saw_failure) {
        stat_inc(&st->update_failure);
        /* SERVFAIL, timeout, refusal, garbage: keep serving the last good set. */
        dc->failures++;
        log_warn("discovery: %s: lookup failed (%u in a row); keeping %u endpoint(s)", dc->name,
                 dc->failures, cluster_size(dc->c));
        disc_schedule(dc,
                      backoff_ms(DISCOVERY_MIN_REFRESH_MS, dc->failures, DISCOVERY_MAX_BACKOFF_MS));
    } else {
        /* NXDOMAIN, NODATA, no such service, no instances: empty, once the hold has passed. */
        stat_inc(&st->update_empty);
        uint64_t since = now - dc->last_good_ms;
        if (!dc->have_good || since >= dc->d->set.hold_ms) {
            if (dc->nseen || cluster_size(dc->c)) {
                log_warn("discovery: %s: %s; no endpoints", dc->name,
                         dc->saw_nxdomain ? "NXDOMAIN" : "no records");
                dc->nseen = 0;
                publish(dc, NULL, 0);
            }
            dc->have_good = 0;
            disc_schedule(dc, min_wait(dc));
        } else {
            uint64_t left = dc->d->set.hold_ms - since;
            disc_schedule(dc, left < min_wait(dc) ? left : min_wait(dc));
        }
    }
    mark_answered(dc);
}

static void start_round(disc_t *dc)
{
    if (dc->outstanding || dc->call)
        return;
    dc->nacc = dc->largest_answer = 0;
    dc->ttl = UINT32_MAX;
    dc->got_records = dc->saw_failure = dc->saw_nxdomain = 0;
    stat_inc(&dc->c->stats.update_attempt);
    if (dc->kind == SRC_API)
        disc_api_round(dc);
    else
        disc_dns_round(dc);
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
        if (disc_family_wanted(dc, AF_INET) &&
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

/* Cloud Map nodes go to the API when they filter by attributes (DNS cannot), or always, or
 * never, as proxy.cloudMap.discovery says. */
static enum source source_of(const discovery_t *d, const cfg_node_t *n)
{
    if (n->discovery == DISCOVERY_DNS)
        return SRC_DNS;
    if (n->discovery != DISCOVERY_CLOUD_MAP)
        return SRC_STATIC;
    int use = d->set.cloudmap_use;
    int api = use == CLOUDMAP_API_ALWAYS || (use == CLOUDMAP_API_ATTRIBUTES && n->nattributes);
    return api ? SRC_API : SRC_SRV;
}

/* What /clusters shows as the cluster's source. */
static void show_source(cluster_t *c, enum source kind, const char *name)
{
    static const char *const names[] = {"static", "dns", "dns_srv", "cloudmap_api"};
    c->discovery_source = names[kind];
    snprintf(c->discovery_name, sizeof c->discovery_name, "%s", name);
}

static void configure(disc_t *dc, const cfg_node_t *n)
{
    char name[DNS_NAME_MAX] = "";
    enum source kind = source_of(dc->d, n);
    if (kind == SRC_DNS)
        snprintf(name, sizeof name, "%s", n->hostname);
    else if (kind == SRC_SRV)
        snprintf(name, sizeof name, "%s.%s", n->service_name, n->namespace_name);
    else if (kind == SRC_API)
        snprintf(name, sizeof name, "%s/%s", n->namespace_name, n->service_name);
    int changed = kind != dc->kind || strcmp(name, dc->name) != 0 || n->ip_preference != dc->ip ||
                  n->response_type != dc->rtype;
    if (kind == SRC_API)
        changed |= disc_api_configure(dc, n);
    else if (dc->kind == SRC_API)
        disc_api_stop(dc);
    if (changed && kind == SRC_API)
        disc_api_restart(dc);
    show_source(dc->c, kind, name);
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

int discovery_open(discovery_t **out, uv_loop_t *loop, const discovery_settings_t *set,
                   qsbr_t *qsbr, discovery_event_cb cb, void *arg)
{
    discovery_t *d = calloc(1, sizeof *d);
    if (!d)
        return UV_ENOMEM;
    int err = dns_open(&d->dns, loop, set->dns_servers);
    if (err) {
        free(d);
        return err;
    }
    *d = (discovery_t){.loop = loop,
                       .dns = d->dns,
                       .qsbr = qsbr,
                       .set = *set,
                       .cb = cb,
                       .arg = arg,
                       .rng = uv_hrtime() | 1};
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
    disc_api_stop(dc);
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
        disc_api_stop(dc); /* before the API client goes */
        uv_close((uv_handle_t *)&dc->timer, on_disc_timer_closed);
    }
    cloudmap_close(d->cloudmap);
    free(d);
}