/* Cloud Map API rounds for one cluster. A round is one call: DiscoverInstancesRevision while
 * the revision is known and the refresh is not due, DiscoverInstances otherwise (and at once
 * when a revision poll finds the revision moved). Health changes do not move the revision,
 * hence the slower full refresh. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "discovery/discovery_impl.h"

#define CREDENTIALS_WAIT_MS 50

static void free_query(api_query_t *q)
{
    for (unsigned i = 0; i < q->nattributes; i++) {
        free(q->attributes[i].key);
        free(q->attributes[i].value);
    }
    free(q->attributes);
    free(q->namespace_name);
    free(q->service_name);
    *q = (api_query_t){0};
}

static int same_query(const api_query_t *q, const cfg_node_t *n)
{
    if (!q->namespace_name || strcmp(q->namespace_name, n->namespace_name) != 0 ||
        strcmp(q->service_name, n->service_name) != 0 || q->nattributes != n->nattributes)
        return 0;
    for (unsigned i = 0; i < n->nattributes; i++)
        if (strcmp(q->attributes[i].key, n->attributes[i].key) != 0 ||
            strcmp(q->attributes[i].value, n->attributes[i].value) != 0)
            return 0;
    return 1;
}

int disc_api_configure(disc_t *dc, const cfg_node_t *n)
{
    if (same_query(&dc->query, n))
        return 0;
    free_query(&dc->query);
    api_query_t q = {strdup(n->namespace_name), strdup(n->service_name),
                     calloc(n->nattributes + 1, sizeof *q.attributes), 0};
    for (unsigned i = 0; q.attributes && i < n->nattributes; i++, q.nattributes++)
        q.attributes[i] =
            (cfg_attribute_t){strdup(n->attributes[i].key), strdup(n->attributes[i].value)};
    dc->query = q;
    return 1;
}

void disc_api_restart(disc_t *dc)
{
    cloudmap_cancel(dc->call);
    dc->call = NULL;
    dc->have_revision = 0;
    dc->poll_revision = -1;
}

void disc_api_stop(disc_t *dc)
{
    disc_api_restart(dc);
    free_query(&dc->query);
}

/* The API client, made at the first use. NULL with `why` when the environment lacks a Region or
 * credentials; tried again at the next round. */
static cloudmap_t *client(discovery_t *d, const char **why)
{
    if (d->cloudmap)
        return d->cloudmap;
    aws_credentials_stats_t stats = {d->set.creds_ok, d->set.creds_failed};
    if (cloudmap_open(&d->cloudmap, d->loop, stats, d->why, sizeof d->why) != 0) {
        d->cloudmap = NULL;
        *why = d->why;
        return NULL;
    }
    log_info("discovery: Cloud Map API at %s", cloudmap_endpoint(d->cloudmap));
    return d->cloudmap;
}

static void failed(disc_t *dc, const char *why)
{
    if (dc->failures == 0)
        log_warn("discovery: %s: Cloud Map API: %s", dc->name, why);
    dc->saw_failure = 1;
    disc_finish_round(dc);
}

/* The instance's address per ipPreference (shared/reference/cloudmap-gateways-rollouts.md §1.5). */
static void add_instance(disc_t *dc, const cm_instance_t *in)
{
    int v6_first = dc->ip == IP_V6_PREFERRED || dc->ip == IP_V6_ONLY;
    int use6 = v6_first ? in->has6 : !in->has4;
    if (use6 && in->has6 && disc_family_wanted(dc, AF_INET6))
        disc_add_endpoint(dc, AF_INET6, &in->v6, dc->c->port, 0, 1, UINT32_MAX);
    else if (in->has4 && disc_family_wanted(dc, AF_INET))
        disc_add_endpoint(dc, AF_INET, &in->v4, dc->c->port, 0, 1, UINT32_MAX);
}

/* The revision stands: the set stays as it is, and nothing is rebuilt. */
static void revision_stands(disc_t *dc)
{
    stat_inc(&dc->c->stats.update_success);
    stat_inc(&dc->c->stats.update_no_rebuild);
    dc->failures = 0;
    dc->last_good_ms = uv_now(dc->d->loop);
    disc_schedule(dc, dc->d->set.cloudmap_poll_ms);
}

static void on_answer(void *arg, enum cm_op op, const cm_answer_t *a)
{
    disc_t *dc = arg;
    dc->call = NULL;
    stat_inc(&dc->c->cloudmap_calls[op][a->result]);
    if (a->result == CM_OK)
        atomic_store(&dc->c->cloudmap_revision, a->revision);
    if (a->result == CM_NOT_FOUND) {
        log_warn("discovery: %s: %s", dc->name, a->message);
        dc->have_revision = 0;
        dc->saw_nxdomain = 1;
        disc_finish_round(dc);
    } else if (a->result != CM_OK) {
        failed(dc, a->message);
    } else if (op == CM_REVISION && a->revision == dc->poll_revision) {
        revision_stands(dc);
    } else if (op == CM_REVISION) {
        /* Moved: fetch the instances now. */
        dc->poll_revision = a->revision;
        dc->have_revision = 0;
        disc_api_round(dc);
    } else {
        for (unsigned i = 0; i < a->n; i++)
            add_instance(dc, &a->instances[i]);
        if (a->unaddressed)
            log_debug("discovery: %s: %u instance(s) without AWS_INSTANCE_IPV4/IPV6 skipped",
                      dc->name, a->unaddressed);
        /* The service's revision, until a poll says otherwise: AWS's is the same for both
         * calls; moto (the test server) counts only the instances a call returns, so there the
         * first poll differs and costs one more fetch. */
        dc->revision = a->revision;
        if (dc->poll_revision == -1)
            dc->poll_revision = a->revision;
        /* An empty answer is asked again in full, so the hold can run out. */
        dc->have_revision = dc->nacc > 0;
        dc->last_full_ms = uv_now(dc->d->loop);
        disc_finish_round(dc);
    }
}

void disc_api_round(disc_t *dc)
{
    const char *why = NULL;
    cloudmap_t *cm = client(dc->d, &why);
    if (!cm) {
        failed(dc, why);
        return;
    }
    uint64_t now = uv_now(dc->d->loop);
    int full = !dc->have_revision || now - dc->last_full_ms >= dc->d->set.cloudmap_refresh_ms;
    const api_query_t *q = &dc->query;
    cm_query_t cq = {q->namespace_name, q->service_name, q->attributes, q->nattributes,
                     (enum cloudmap_health)dc->d->set.cloudmap_health};
    dc->call = cloudmap_call(cm, full ? CM_DISCOVER : CM_REVISION, &cq, on_answer, dc, &why);
    if (!dc->call && cloudmap_waiting(cm))
        disc_retry(dc, CREDENTIALS_WAIT_MS); /* not a failure: the first credentials are coming */
    else if (!dc->call)
        failed(dc, why);
}
