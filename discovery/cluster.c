#include "discovery/cluster.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

cluster_t *cluster_new(const char *name, const char *node, uint16_t port)
{
    cluster_t *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->name = strdup(name);
    c->node = node ? strdup(node) : NULL;
    c->port = port;
    c->set = calloc(1, sizeof(endpoint_set_t));
    if (!c->name || (node && !c->node) || !c->set) {
        cluster_free(c);
        return NULL;
    }
    return c;
}

void endpoint_state_unref(endpoint_state_t *st)
{
    if (st && atomic_fetch_sub(&st->refs, 1) == 1)
        free(st);
}

void endpoint_set_free(endpoint_set_t *s)
{
    if (!s)
        return;
    for (unsigned i = 0; i < s->n; i++)
        endpoint_state_unref(s->eps[i].state);
    free(s);
}

void cluster_free(cluster_t *c)
{
    if (!c)
        return;
    endpoint_set_free(c->set);
    tls_ctx_unref(c->health_tls);
    free(c->node);
    free(c->name);
    free(c);
}

int endpoint_same_addr(const endpoint_t *a, const endpoint_t *b)
{
    return a->addrlen == b->addrlen && memcmp(&a->addr, &b->addr, a->addrlen) == 0;
}

endpoint_set_t *cluster_publish(cluster_t *c, const endpoint_t *eps, unsigned n)
{
    endpoint_set_t *old = atomic_load(&c->set);
    endpoint_set_t *s = calloc(1, sizeof *s + n * sizeof *eps);
    if (!s)
        return NULL;
    for (unsigned i = 0; i < n; i++) {
        endpoint_t *e = &s->eps[s->n];
        *e = eps[i];
        e->state = NULL;
        for (unsigned k = 0; old && k < old->n && !e->state; k++)
            if (endpoint_same_addr(&old->eps[k], e))
                e->state = old->eps[k].state;
        if (e->state) {
            atomic_fetch_add(&e->state->refs, 1);
        } else if (!(e->state = calloc(1, sizeof *e->state))) {
            continue;
        } else {
            atomic_init(&e->state->refs, 1);
        }
        s->n++;
    }
    atomic_store_explicit(&c->set, s, memory_order_release);
    return old;
}

static int usable(const endpoint_t *e, uint64_t now)
{
    return !atomic_load_explicit(&e->state->unhealthy, memory_order_relaxed) &&
           atomic_load_explicit(&e->state->ejected_until_ms, memory_order_relaxed) <= now;
}

/* RFC 2782: the lowest priority with a usable endpoint; within it, weighted. Equal weights
 * (Cloud Map's are always 1) take turns; unequal ones are chosen in proportion. */
static const endpoint_t *choose(cluster_t *c, const endpoint_set_t *s, const endpoint_t *avoid,
                                uint64_t now, int any)
{
    unsigned lowest = 65536, count = 0, total = 0, first_w = 0;
    int equal = 1;
    for (unsigned i = 0; i < s->n; i++) {
        const endpoint_t *e = &s->eps[i];
        if ((!any && !usable(e, now)) || (avoid && endpoint_same_addr(e, avoid)))
            continue;
        if (e->priority < lowest) {
            lowest = e->priority;
            count = total = 0;
            equal = 1;
        }
        if (e->priority == lowest) {
            if (count == 0)
                first_w = e->weight;
            equal &= e->weight == first_w;
            count++;
            total += e->weight;
        }
    }
    if (count == 0)
        return NULL;
    unsigned k = atomic_fetch_add_explicit(&c->cursor, 1, memory_order_relaxed);
    /* Equal weights take turns; otherwise a well-mixed draw in [0, total). */
    unsigned target = equal || total == 0 ? k % count : (unsigned)((k * 2654435761u) % total);
    for (unsigned i = 0; i < s->n; i++) {
        const endpoint_t *e = &s->eps[i];
        if ((!any && !usable(e, now)) || (avoid && endpoint_same_addr(e, avoid)) ||
            e->priority != lowest)
            continue;
        unsigned step = equal || total == 0 ? 1 : e->weight;
        if (target < step)
            return e;
        target -= step;
    }
    return NULL;
}

int cluster_pick(cluster_t *c, const endpoint_t *avoid, uint64_t now_ms, endpoint_t *out)
{
    const endpoint_set_t *s = atomic_load_explicit(&c->set, memory_order_acquire);
    if (!s || s->n == 0)
        return -1;
    const endpoint_t *e = choose(c, s, avoid, now_ms, 0);
    if (!e)
        e = choose(c, s, NULL, now_ms, 0);
    if (!e) { /* panic: nothing is healthy, so everything is eligible rather than nothing */
        stat_inc(&c->stats.lb_healthy_panic);
        e = choose(c, s, avoid, now_ms, 1);
        if (!e)
            e = choose(c, s, NULL, now_ms, 1);
    }
    *out = *e;
    atomic_fetch_add(&e->state->refs, 1);
    atomic_fetch_add(&e->state->active_requests, 1);
    atomic_fetch_add(&e->state->requests, 1);
    return 0;
}

void endpoint_release(endpoint_t *ep)
{
    if (!ep->state)
        return;
    atomic_fetch_sub(&ep->state->active_requests, 1);
    endpoint_state_unref(ep->state);
    ep->state = NULL;
}

/* Outlier detection: eject after max_errors consecutive failures, for base × times ejected,
 * unless that would eject more than max_ejection_percent of the cluster (at least one may
 * always be ejected). */
static void maybe_eject(cluster_t *c, endpoint_state_t *st, uint64_t now)
{
    const endpoint_set_t *s = atomic_load_explicit(&c->set, memory_order_acquire);
    unsigned ejected = 0;
    for (unsigned i = 0; i < s->n; i++)
        ejected += atomic_load(&s->eps[i].state->ejected_until_ms) > now;
    unsigned allowed = s->n * c->outlier.max_ejection_percent / 100;
    if (allowed < 1)
        allowed = 1;
    if (atomic_load(&st->ejected_until_ms) > now)
        return;
    stat_inc(&c->stats.outlier_detection_ejections_detected_consecutive_5xx);
    if (ejected >= allowed) {
        stat_inc(&c->stats.outlier_detection_ejections_overflow);
        return;
    }
    unsigned times = atomic_fetch_add(&st->times_ejected, 1) + 1;
    atomic_store(&st->ejected_until_ms, now + c->outlier.base_ejection_ms * times);
    atomic_store(&st->consecutive_errors, 0);
    stat_inc(&c->stats.outlier_detection_ejections_enforced_total);
}

void cluster_done(cluster_t *c, endpoint_t *ep, int status, uint64_t now_ms)
{
    endpoint_state_t *st = ep->state;
    if (!st)
        return;
    int failed = status == 0 || status >= 500;
    if (failed)
        atomic_fetch_add(&st->errors, 1);
    if (c->outlier.max_errors) {
        if (!failed)
            atomic_store(&st->consecutive_errors, 0);
        else if (atomic_fetch_add(&st->consecutive_errors, 1) + 1 >= c->outlier.max_errors)
            maybe_eject(c, st, now_ms);
    }
    endpoint_release(ep);
}

unsigned cluster_size(cluster_t *c)
{
    const endpoint_set_t *s = atomic_load_explicit(&c->set, memory_order_acquire);
    return s ? s->n : 0;
}

unsigned cluster_healthy(cluster_t *c, uint64_t now_ms)
{
    const endpoint_set_t *s = atomic_load_explicit(&c->set, memory_order_acquire);
    unsigned n = 0;
    for (unsigned i = 0; s && i < s->n; i++)
        n += usable(&s->eps[i], now_ms);
    return n;
}

int cluster_slot_take(cluster_t *c, uint32_t max)
{
    if (!max) {
        atomic_fetch_add_explicit(&c->active_requests, 1, memory_order_relaxed);
        return 1;
    }
    unsigned n = atomic_load_explicit(&c->active_requests, memory_order_relaxed);
    while (n < max)
        if (atomic_compare_exchange_weak(&c->active_requests, &n, n + 1))
            return 1;
    return 0;
}

void cluster_slot_release(cluster_t *c)
{
    atomic_fetch_sub_explicit(&c->active_requests, 1, memory_order_relaxed);
}

uint16_t endpoint_port(const endpoint_t *ep)
{
    if (ep->addr.ss_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)(const void *)&ep->addr)->sin_port);
    if (ep->addr.ss_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)(const void *)&ep->addr)->sin6_port);
    return 0;
}

static int ipv4_is_local(uint32_t a)
{
    return (a >> 24) == 127 || a == 0;
}

/* Loopback or unspecified, however written: [::ffff:127.0.0.1] and [::127.0.0.1] reach an
 * IPv4 listener on 0.0.0.0 as 127.0.0.1 does. */
int endpoint_is_local(const endpoint_t *ep)
{
    if (ep->addr.ss_family == AF_INET)
        return ipv4_is_local(
            ntohl(((const struct sockaddr_in *)(const void *)&ep->addr)->sin_addr.s_addr));
    if (ep->addr.ss_family == AF_INET6) {
        const struct in6_addr *a =
            &((const struct sockaddr_in6 *)(const void *)&ep->addr)->sin6_addr;
        if (IN6_IS_ADDR_V4MAPPED(a) || IN6_IS_ADDR_V4COMPAT(a)) {
            uint32_t v4;
            memcpy(&v4, &a->s6_addr[12], sizeof v4);
            return ipv4_is_local(ntohl(v4));
        }
        return IN6_IS_ADDR_LOOPBACK(a) || IN6_IS_ADDR_UNSPECIFIED(a);
    }
    return 0;
}

int endpoint_set(endpoint_t *ep, const struct sockaddr *sa)
{
    char ip[INET6_ADDRSTRLEN];
    memset(ep, 0, sizeof *ep);
    ep->weight = 1;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)(const void *)sa;
        memcpy(&ep->addr, in, sizeof *in);
        ep->addrlen = sizeof *in;
        inet_ntop(AF_INET, &in->sin_addr, ip, sizeof ip);
        snprintf(ep->name, sizeof ep->name, "%s:%u", ip, ntohs(in->sin_port));
        return 0;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)(const void *)sa;
        memcpy(&ep->addr, in6, sizeof *in6);
        ep->addrlen = sizeof *in6;
        inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof ip);
        snprintf(ep->name, sizeof ep->name, "[%s]:%u", ip, ntohs(in6->sin6_port));
        return 0;
    }
    return UV_EINVAL;
}
