/* Service discovery on the main loop: each cluster's endpoints from DNS, refreshed at their TTL
 * (shared/reference/discovery.md; SPEC §5 Discovery).
 *
 * - awsCloudMap: SRV at SERVICE.NAMESPACE, targets' addresses from the Additional section or
 *   follow-up A/AAAA queries; NODATA falls back to A/AAAA at the same name with the listener
 *   port. SRV priority and weight follow RFC 2782 (cluster_pick).
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

int discovery_open(discovery_t **out, uv_loop_t *loop, const char *dns_servers, uint64_t hold_ms,
                   qsbr_t *qsbr, discovery_event_cb cb, void *arg);
/* Start, reconfigure or keep resolving every cluster of the list (after each config load). */
void discovery_sync(discovery_t *d, cluster_t *clusters, const config_t *cfg);
void discovery_close(discovery_t *d);

#endif
