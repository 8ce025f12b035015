/* Inside discovery: the per-cluster state and what the sources share. Not for other modules.
 *
 * A round asks a source for the cluster's instances and ends in disc_finish_round, which turns
 * what the round learnt (records, a failure, a name that does not exist) into the published
 * set and the time of the next round. Sources: discovery_dns.c (SRV, A/AAAA) and
 * discovery_api.c (the Cloud Map API). */
#ifndef REMORA_DISCOVERY_IMPL_H
#define REMORA_DISCOVERY_IMPL_H

#include "discovery/cloudmap.h"
#include "discovery/discovery.h"
#include "discovery/dns.h"
#include "discovery/health.h"

enum source { SRC_STATIC, SRC_DNS, SRC_SRV, SRC_API };

typedef struct seen {
    endpoint_t ep;
    uint64_t last_ms;
} seen_t;

/* The Cloud Map API's query for a cluster, owned (a reload frees the config it came from). */
typedef struct api_query {
    char *namespace_name, *service_name;
    cfg_attribute_t *attributes;
    unsigned nattributes;
} api_query_t;

/* What one cluster resolves, and what it has learnt. Main thread only. */
typedef struct disc {
    struct disc *next;
    discovery_t *d;
    cluster_t *c;
    enum source kind;
    char name[DNS_NAME_MAX]; /* what is resolved: a DNS name, or NAMESPACE/SERVICE */
    enum dns_response rtype;
    enum ip_preference ip;
    uv_timer_t timer;
    /* the round in progress */
    unsigned outstanding;
    endpoint_t *acc;
    unsigned nacc, capacc;
    unsigned largest_answer; /* records in the round's largest DNS answer (SRV, A or AAAA) */
    uint32_t ttl;
    int got_records, saw_failure, saw_nxdomain;
    /* memory across rounds */
    seen_t *seen;
    unsigned nseen;
    uint64_t last_good_ms;
    int have_good;
    unsigned failures;
    health_t *health;
    /* SRC_API */
    api_query_t query;
    cm_call_t *call;
    long long revision;      /* InstancesRevision of the last DiscoverInstances */
    long long poll_revision; /* the revision polls compare with; -1: none yet */
    int have_revision;
    uint64_t last_full_ms;
} disc_t;

struct discovery {
    uv_loop_t *loop;
    dns_t *dns;
    qsbr_t *qsbr;
    discovery_settings_t set;
    discovery_event_cb cb;
    void *arg;
    disc_t *all;
    cloudmap_t *cloudmap; /* made for the first SRC_API cluster */
    uint64_t rng;         /* for jitter */
    char why[512];        /* why the API client could not be made, for the rounds' logs */
};

/* Whether ipPreference lets addresses of `family` in. */
int disc_family_wanted(const disc_t *dc, int family);
/* Add an address to the round's accumulator (duplicates dropped). */
void disc_add_endpoint(disc_t *dc, int family, const void *addr, uint16_t port, uint16_t prio,
                       uint16_t weight, uint32_t ttl);
/* The round is over: publish, remember, schedule the next (see discovery.h for the rules). */
void disc_finish_round(disc_t *dc);
/* Run the next round in `ms` (at least the source's minimum). */
void disc_schedule(disc_t *dc, uint64_t ms);
/* Start this round again in `ms`, whatever the minimum: it could not start yet. */
void disc_retry(disc_t *dc, uint64_t ms);

/* DNS: start a round of SRV or A/AAAA queries (dc->outstanding counts them). */
void disc_dns_round(disc_t *dc);

/* Cloud Map API: start a round (a revision poll, or DiscoverInstances when the revision moved
 * or the refresh is due); stop one in flight; free the query. */
void disc_api_round(disc_t *dc);
void disc_api_stop(disc_t *dc);
/* Take the node's query; returns whether it differs from the one held. */
int disc_api_configure(disc_t *dc, const cfg_node_t *n);
/* The query changed: forget the revision and the call in flight, so the next round asks anew. */
void disc_api_restart(disc_t *dc);

#endif
