/* Service discovery on the main loop: each cluster's endpoints from DNS, refreshed at their TTL,
 * or from the Cloud Map API, polled (shared/reference/discovery.md and
 * cloudmap-gateways-rollouts.md §1; SPEC §5 Discovery; docs/cloudmap.md).
 *
 * - awsCloudMap through the API (nodes with `attributes`, or all of them by proxy.cloudMap):
 *   DiscoverInstances with the attributes as QueryParameters, then DiscoverInstancesRevision
 *   every poll interval and DiscoverInstances again only when the revision moves or the
 *   refresh interval has passed (health changes do not move it). Each instance's
 *   AWS_INSTANCE_IPV4/IPV6 (per ipPreference) on the node's listener port, as App Mesh did.
 *   Errors, throttling and timeouts count as failures; NamespaceNotFound, ServiceNotFound and
 *   an empty list as NXDOMAIN.
 * - awsCloudMap through DNS: SRV at SERVICE.NAMESPACE, targets' addresses from the Additional
 * section or follow-up A/AAAA queries; NODATA falls back to A/AAAA at the same name with the
 * listener port. SRV priority and weight follow RFC 2782 (cluster_pick).
 * - dns: A/AAAA of the hostname with the listener port; ENDPOINTS uses every address,
 *   LOADBALANCER the first. An IP literal (or localhost) needs no query.
 * - Outcomes: records replace the set; SERVFAIL, timeout, refusal and garbage keep the last good
 *   set (retried with backoff); NXDOMAIN/NODATA empty it once `hold` has passed since the last
 *   good answer. An answer of exactly 8 records (Route 53's MULTIVALUE cap, so possibly a
 *   subset) keeps the instances it omits for the hold; any other answer is taken as complete.
 * - Sets are published by pointer swap; the old one is retired through QSBR. */
#ifndef REMORA_DISCOVERY_H
#define REMORA_DISCOVERY_H

#include <uv.h>

#include "config/config.h"
#include "discovery/cluster.h"
#include "base/qsbr.h"

#define DISCOVERY_DEFAULT_HOLD_MS 30000
#define DISCOVERY_MIN_REFRESH_MS  1000
#define DISCOVERY_MAX_BACKOFF_MS  10000
#define ROUTE53_MULTIVALUE_CAP    8

typedef struct discovery discovery_t;
/* Something changed: a set was published or a cluster answered for the first time. */
typedef void (*discovery_event_cb)(void *arg);

typedef struct discovery_settings {
    const char *dns_servers; /* NULL: /etc/resolv.conf */
    uint64_t hold_ms;
    int cloudmap_use;    /* enum cloudmap_use */
    int cloudmap_health; /* enum cloudmap_health */
    uint64_t cloudmap_poll_ms, cloudmap_refresh_ms;
    stat_t *creds_ok, *creds_failed; /* where the credentials provider counts */
} discovery_settings_t;

int discovery_open(discovery_t **out, uv_loop_t *loop, const discovery_settings_t *set,
                   qsbr_t *qsbr, discovery_event_cb cb, void *arg);
/* Start, reconfigure or keep resolving every cluster of the list (after each config load). */
void discovery_sync(discovery_t *d, cluster_t *clusters, const config_t *cfg);
void discovery_close(discovery_t *d);

#endif
