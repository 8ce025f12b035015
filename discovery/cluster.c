#include "discovery/cluster.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

cluster_t *cluster_new(const char *name, endpoint_t *endpoints, unsigned n)
{
    cluster_t *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->name = strdup(name);
    if (!c->name) {
        free(c);
        return NULL;
    }
    c->endpoints = endpoints;
    c->nendpoints = n;
    return c;
}

void cluster_free(cluster_t *c)
{
    if (!c)
        return;
    free(c->endpoints);
    free(c->name);
    free(c);
}

const endpoint_t *cluster_pick(cluster_t *c)
{
    if (c->nendpoints == 0)
        return NULL;
    unsigned i = atomic_fetch_add_explicit(&c->cursor, 1, memory_order_relaxed);
    return &c->endpoints[i % c->nendpoints];
}

const endpoint_t *cluster_pick_other(cluster_t *c, const endpoint_t *avoid)
{
    for (unsigned tries = 0; tries < c->nendpoints; tries++) {
        const endpoint_t *ep = cluster_pick(c);
        if (!avoid || ep->addrlen != avoid->addrlen ||
            memcmp(&ep->addr, &avoid->addr, ep->addrlen) != 0)
            return ep;
    }
    return cluster_pick(c);
}

int cluster_slot_take(cluster_t *c)
{
    if (!c->max_requests)
        return 1;
    unsigned n = atomic_load_explicit(&c->active_requests, memory_order_relaxed);
    while (n < c->max_requests)
        if (atomic_compare_exchange_weak(&c->active_requests, &n, n + 1))
            return 1;
    return 0;
}

void cluster_slot_release(cluster_t *c)
{
    if (c->max_requests)
        atomic_fetch_sub(&c->active_requests, 1);
}

uint16_t endpoint_port(const endpoint_t *ep)
{
    if (ep->addr.ss_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)(const void *)&ep->addr)->sin_port);
    if (ep->addr.ss_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)(const void *)&ep->addr)->sin6_port);
    return 0;
}

int endpoint_is_local(const endpoint_t *ep)
{
    if (ep->addr.ss_family == AF_INET) {
        uint32_t a = ntohl(((const struct sockaddr_in *)(const void *)&ep->addr)->sin_addr.s_addr);
        return (a >> 24) == 127 || a == 0;
    }
    if (ep->addr.ss_family == AF_INET6) {
        const struct in6_addr *a =
            &((const struct sockaddr_in6 *)(const void *)&ep->addr)->sin6_addr;
        return IN6_IS_ADDR_LOOPBACK(a) || IN6_IS_ADDR_UNSPECIFIED(a);
    }
    return 0;
}

int endpoint_set(endpoint_t *ep, const struct sockaddr *sa)
{
    char ip[INET6_ADDRSTRLEN];
    memset(ep, 0, sizeof *ep);
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
