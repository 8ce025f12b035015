/* Every statistic remora keeps, named once the way Envoy names it (dotted:
 * `cluster.NAME.upstream_rq_503`, `http.ingress.downstream_rq_2xx`,
 * `listener.0.0.0.0_15000.ssl.handshake`), and rendered from that one list for /stats (text
 * and JSON), /stats/prometheus (Envoy's tag extraction: the cluster, listener address, HTTP
 * prefix and response code become labels) and the DogStatsD sink. A new stat is one entry in
 * metrics.c, and every output has it.
 *
 * Main thread only: it reads the registry and the workers' atomic counters. */
#ifndef REMORA_METRICS_H
#define REMORA_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "base/stats.h"

struct server;

enum metric_kind { METRIC_COUNTER, METRIC_GAUGE, METRIC_HISTOGRAM };

typedef struct metric {
    const char *name; /* dotted */
    enum metric_kind kind;
    uint64_t value;          /* counters and gauges */
    const histogram_t *hist; /* histograms */
    stat_t *counter;         /* the counter itself (reset_counters), NULL when computed */
    /* remora's own series: the Prometheus family and labels (`k="v",...`) as they are, with no
     * tag extraction; NULL for Envoy's. */
    const char *family, *labels;
} metric_t;

typedef void (*metric_fn)(void *ctx, const metric_t *m);

/* Every statistic, in a stable order. */
void metrics_each(struct server *s, metric_fn fn, void *ctx);

/* Output options: `filter` a POSIX extended regex on the dotted name (partial match) or NULL;
 * `used_only` drops what was never written (zero, here). */
typedef struct metrics_query {
    const char *filter;
    int used_only;
} metrics_query_t;

/* The renderers write into a malloc'd string (*out) and return 0, or an HTTP status (400 for
 * a bad filter) with a message in *out. */
int metrics_text(struct server *s, const metrics_query_t *q, char **out);
int metrics_json(struct server *s, const metrics_query_t *q, char **out);
int metrics_prometheus(struct server *s, const metrics_query_t *q, char **out);

/* Envoy's name for a stat as Prometheus sees it: the family (`envoy_cluster_upstream_rq`) and
 * the labels extracted from the dotted name (`envoy_response_code="503",envoy_cluster_name=
 * "X"`), without the fixed App Mesh tags. Also what the DogStatsD sink uses, with dots. */
void metrics_extract(const char *name, char *family, size_t fcap, char *labels, size_t lcap,
                     int dotted);

/* Zero every counter (gauges and histograms keep their values, as in Envoy). */
void metrics_reset_counters(struct server *s);

#endif
