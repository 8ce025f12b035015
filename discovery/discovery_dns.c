/* DNS rounds: SRV at SERVICE.NAMESPACE (targets' addresses from the Additional section, else
 * follow-up A/AAAA queries; NODATA falls back to A/AAAA at the name), or A/AAAA of a hostname.
 * Every query of a round counts in dc->outstanding; the last one to answer ends the round. */
#include <ares_nameser.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "discovery/discovery_impl.h"

typedef struct query_ctx {
    disc_t *dc;
    uint16_t port, priority, weight;
    char owner[DNS_NAME_MAX];
} query_ctx_t;

static void on_address(void *arg, enum dns_result r, const dns_answer_t *a);

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

#define HAVE_V4 1u
#define HAVE_V6 2u

static unsigned family_bit(int family)
{
    return family == AF_INET ? HAVE_V4 : HAVE_V6;
}

/* A and/or AAAA for `name`, per ipPreference, but for the families in `have`. */
static void query_missing(disc_t *dc, const char *name, unsigned have, uint16_t port, uint16_t prio,
                          uint16_t weight)
{
    if (disc_family_wanted(dc, AF_INET) && !(have & HAVE_V4))
        query(dc, name, T_A, on_address, port, prio, weight);
    if (disc_family_wanted(dc, AF_INET6) && !(have & HAVE_V6))
        query(dc, name, T_AAAA, on_address, port, prio, weight);
}

static void query_addresses(disc_t *dc, const char *name, uint16_t port, uint16_t prio,
                            uint16_t weight)
{
    query_missing(dc, name, 0, port, prio, weight);
}

static void query_done(disc_t *dc, query_ctx_t *q)
{
    free(q);
    if (--dc->outstanding == 0)
        disc_finish_round(dc);
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

/* Route 53 caps each answer (one record set: SRV, A or AAAA) at 8, not the endpoints a round
 * makes of them: 8 SRV targets with an A and an AAAA each are 16 endpoints of a capped answer. */
static void note_size(disc_t *dc, enum dns_result r, const dns_answer_t *a, int srv)
{
    unsigned n = r != DNS_OK ? 0 : srv ? a->nsrv : a->naddrs;
    if (n > dc->largest_answer)
        dc->largest_answer = n;
}

static void on_address(void *arg, enum dns_result r, const dns_answer_t *a)
{
    query_ctx_t *q = arg;
    disc_t *dc = answered(q, r);
    if (!dc)
        return;
    note_size(dc, r, a, 0);
    for (unsigned i = 0; r == DNS_OK && i < a->naddrs; i++)
        if (disc_family_wanted(dc, a->addrs[i].family))
            disc_add_endpoint(dc, a->addrs[i].family, &a->addrs[i].addr, q->port, q->priority,
                              q->weight, a->addrs[i].ttl);
    query_done(dc, q);
}

static void on_srv(void *arg, enum dns_result r, const dns_answer_t *a)
{
    query_ctx_t *q = arg;
    disc_t *dc = answered(q, r);
    if (!dc)
        return;
    note_size(dc, r, a, 1);
    if ((r == DNS_OK && a->nsrv == 0) || r == DNS_NODATA) {
        /* No SRV records at the name: its A/AAAA with the listener port. */
        query_addresses(dc, dc->name, dc->c->port, 0, 1);
    }
    /* A server drops Additional records that do not fit, without saying so (RFC 2181 §9): a
     * target without a family some other target has there is asked for it. */
    unsigned answer_has = 0;
    for (unsigned k = 0; r == DNS_OK && k < a->naddrs; k++)
        answer_has |= family_bit(a->addrs[k].family);
    for (unsigned i = 0; r == DNS_OK && i < a->nsrv; i++) {
        const dns_srv_t *s = &a->srv[i];
        if (!s->target[0] || strcmp(s->target, ".") == 0)
            continue; /* RFC 2782: "." means the service is not available */
        unsigned found = 0;
        for (unsigned k = 0; k < a->naddrs; k++) {
            if (strcasecmp(a->addrs[k].name, s->target) != 0 ||
                !disc_family_wanted(dc, a->addrs[k].family))
                continue;
            uint32_t ttl = a->addrs[k].ttl < s->ttl ? a->addrs[k].ttl : s->ttl;
            disc_add_endpoint(dc, a->addrs[k].family, &a->addrs[k].addr, s->port, s->priority,
                              s->weight, ttl);
            found |= family_bit(a->addrs[k].family);
        }
        if (found && s->ttl < dc->ttl)
            dc->ttl = s->ttl;
        query_missing(dc, s->target, found ? found | ~answer_has : 0, s->port, s->priority,
                      s->weight);
    }
    query_done(dc, q);
}

void disc_dns_round(disc_t *dc)
{
    if (dc->kind == SRC_SRV)
        query(dc, dc->name, T_SRV, on_srv, 0, 0, 1);
    else
        query_addresses(dc, dc->name, dc->c->port, 0, 1);
}
