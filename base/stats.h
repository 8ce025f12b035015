/* Counters and gauges shared by all workers: relaxed atomics, summed by nobody, read by the admin
 * thread. The lists below are the single source of stat names for /stats and
 * /stats/prometheus; a new stat is one line here. */
#ifndef REMORA_STATS_H
#define REMORA_STATS_H

#include <stdatomic.h>
#include <stdint.h>

typedef _Atomic uint64_t stat_t;

static inline void stat_inc(stat_t *s)
{
    atomic_fetch_add_explicit(s, 1, memory_order_relaxed);
}
static inline void stat_dec(stat_t *s)
{
    atomic_fetch_sub_explicit(s, 1, memory_order_relaxed);
}
static inline void stat_add(stat_t *s, uint64_t n)
{
    atomic_fetch_add_explicit(s, n, memory_order_relaxed);
}
static inline uint64_t stat_get(stat_t *s)
{
    return atomic_load_explicit(s, memory_order_relaxed);
}

/* Envoy's default histogram bounds, 0.5 ms to 1 h, here in half-milliseconds so that they are
 * integers. A sample counts toward every bound strictly above it, as Envoy counts: 50 ms is not
 * in le="50". */
#define HIST_BOUNDS 19
static const uint32_t hist_bounds[HIST_BOUNDS] = {
    1,    2,     10,    20,    50,     100,    200,     500,     1000,   2000,
    5000, 10000, 20000, 60000, 120000, 600000, 1200000, 3600000, 7200000};

typedef struct histogram {
    stat_t buckets[HIST_BOUNDS]; /* samples below each bound, not cumulative */
    stat_t count;
    stat_t sum_us; /* microseconds, for _sum in ms */
} histogram_t;

static inline void hist_record_us(histogram_t *h, uint64_t us)
{
    uint64_t half_ms = us / 500;
    unsigned i = 0;
    while (i < HIST_BOUNDS && half_ms >= hist_bounds[i])
        i++;
    if (i < HIST_BOUNDS)
        stat_inc(&h->buckets[i]);
    stat_inc(&h->count);
    stat_add(&h->sum_us, us);
}

/* X(name, is_gauge) */
#define HTTP_STATS(X)                                                                              \
    X(downstream_cx_total, 0)                                                                      \
    X(downstream_cx_active, 1)                                                                     \
    X(downstream_cx_protocol_error, 0)                                                             \
    X(downstream_cx_header_timeout, 0)                                                             \
    X(downstream_cx_idle_timeout, 0)                                                               \
    X(downstream_cx_drain_close, 0)                                                                \
    X(downstream_cx_upgrades_total, 0)                                                             \
    X(downstream_rq_total, 0)                                                                      \
    X(downstream_rq_active, 1)                                                                     \
    X(downstream_rq_1xx, 0)                                                                        \
    X(downstream_rq_2xx, 0)                                                                        \
    X(downstream_rq_3xx, 0)                                                                        \
    X(downstream_rq_4xx, 0)                                                                        \
    X(downstream_rq_5xx, 0)                                                                        \
    X(downstream_rq_timeout, 0)                                                                    \
    X(downstream_rq_rx_reset, 0)                                                                   \
    X(downstream_rq_header_too_large, 0)                                                           \
    X(downstream_cx_http2_total, 0)                                                                \
    X(downstream_cx_http2_active, 1)                                                               \
    X(downstream_rq_too_many_premature_resets, 0)                                                  \
    X(downstream_rq_tx_reset, 0)                                                                   \
    X(downstream_cx_destroy, 0)                                                                    \
    X(downstream_cx_destroy_remote, 0)                                                             \
    X(downstream_cx_destroy_local, 0)                                                              \
    X(downstream_cx_destroy_active_rq, 0)                                                          \
    X(downstream_cx_destroy_remote_active_rq, 0)                                                   \
    X(downstream_cx_destroy_local_active_rq, 0)

/* The HTTP/2 codec's own, Envoy's `http2.` names (h2_server.c, docs/http2.md): kept per
 * listener beside its HTTP stats. */
#define H2_STATS(X)                                                                                \
    X(header_overflow, 0)                                                                          \
    X(too_many_headers, 0)                                                                         \
    X(inbound_empty_frames_flood, 0)                                                               \
    X(inbound_priority_frames_flood, 0)                                                            \
    X(inbound_window_update_frames_flood, 0)                                                       \
    X(outbound_control_flood, 0)                                                                   \
    X(outbound_flood, 0)                                                                           \
    X(rx_messaging_error, 0)                                                                       \
    X(rx_reset, 0)                                                                                 \
    X(tx_reset, 0)                                                                                 \
    X(goaway_sent, 0)                                                                              \
    X(trailers, 0)                                                                                 \
    X(streams_active, 1)

#define CLUSTER_STATS(X)                                                                           \
    X(upstream_cx_total, 0)                                                                        \
    X(upstream_cx_http2_total, 0)                                                                  \
    X(upstream_cx_active, 1)                                                                       \
    X(upstream_cx_connect_fail, 0)                                                                 \
    X(upstream_cx_connect_timeout, 0)                                                              \
    X(upstream_cx_overflow, 0)                                                                     \
    X(upstream_cx_destroy_remote, 0)                                                               \
    X(upstream_cx_protocol_error, 0)                                                               \
    X(upstream_cx_idle_timeout, 0)                                                                 \
    X(upstream_cx_pool_reuse, 0)                                                                   \
    X(upstream_rq_total, 0)                                                                        \
    X(upstream_rq_active, 1)                                                                       \
    X(upstream_rq_1xx, 0)                                                                          \
    X(upstream_rq_2xx, 0)                                                                          \
    X(upstream_rq_3xx, 0)                                                                          \
    X(upstream_rq_4xx, 0)                                                                          \
    X(upstream_rq_5xx, 0)                                                                          \
    X(upstream_rq_timeout, 0)                                                                      \
    X(upstream_rq_rx_reset, 0)                                                                     \
    X(upstream_rq_tx_reset, 0)                                                                     \
    X(upstream_rq_retry, 0)                                                                        \
    X(upstream_rq_retry_success, 0)                                                                \
    X(upstream_rq_per_try_timeout, 0)                                                              \
    X(upstream_rq_pending_total, 0)                                                                \
    X(upstream_rq_pending_active, 1)                                                               \
    X(upstream_rq_pending_overflow, 0)                                                             \
    X(upstream_rq_retry_overflow, 0)                                                               \
    X(upstream_rq_retry_limit_exceeded, 0)                                                         \
    X(upstream_cx_rx_bytes_total, 0)                                                               \
    X(upstream_cx_tx_bytes_total, 0)                                                               \
    X(upstream_cx_destroy, 0)                                                                      \
    X(upstream_cx_destroy_local, 0)                                                                \
    X(upstream_cx_destroy_with_active_rq, 0)                                                       \
    X(upstream_cx_destroy_local_with_active_rq, 0)                                                 \
    X(upstream_cx_destroy_remote_with_active_rq, 0)                                                \
    X(upstream_rq_pending_failure_eject, 0)                                                        \
    X(upstream_flow_control_paused_reading_total, 0)                                               \
    X(upstream_flow_control_resumed_reading_total, 0)                                              \
    X(upstream_flow_control_backed_up_total, 0)                                                    \
    X(upstream_flow_control_drained_total, 0)                                                      \
    X(lb_healthy_panic, 0)                                                                         \
    X(outlier_detection_ejections_enforced_total, 0)                                               \
    X(outlier_detection_ejections_detected_consecutive_5xx, 0)                                     \
    X(outlier_detection_ejections_overflow, 0)                                                     \
    X(health_check_attempt, 0)                                                                     \
    X(health_check_failure, 0)                                                                     \
    X(update_attempt, 0)                                                                           \
    X(update_success, 0)                                                                           \
    X(update_failure, 0)                                                                           \
    X(update_empty, 0)                                                                             \
    X(update_no_rebuild, 0)

/* TLS, under a listener's or a cluster's `ssl.` scope, as Envoy names them. */
#define SSL_STATS(X)                                                                               \
    X(handshake, 0)                                                                                \
    X(session_reused, 0)                                                                           \
    X(no_certificate, 0)                                                                           \
    X(fail_verify_no_cert, 0)                                                                      \
    X(fail_verify_error, 0)                                                                        \
    X(fail_verify_san, 0)                                                                          \
    X(connection_error, 0)

#define STAT_FIELD(name, gauge) stat_t name;
/* A listener's connections, whatever they carry (HTTP or TCP). */
typedef struct listener_stats {
    stat_t downstream_cx_total, downstream_cx_active, downstream_cx_destroy;
    stat_t rx_bytes, tx_bytes; /* every byte its connections read and wrote (conn.c) */
} listener_stats_t;
typedef struct ssl_stats {
    SSL_STATS(STAT_FIELD)
} ssl_stats_t;
typedef struct h2_stats {
    H2_STATS(STAT_FIELD)
} h2_stats_t;
typedef struct http_stats {
    HTTP_STATS(STAT_FIELD)
    histogram_t rq_time; /* the request's first byte to the response's last */
    h2_stats_t http2;
} http_stats_t;
typedef struct cluster_stats {
    CLUSTER_STATS(STAT_FIELD)
    histogram_t rq_time;       /* the end of the request to the end of the response */
    histogram_t cx_connect_ms; /* connect (and TLS handshake) times */
} cluster_stats_t;
#undef STAT_FIELD

/* A client connection is gone: `remote` when the client closed it (EOF or reset), else remora
 * did; `active_rq` when a request on it had not had its whole response. */
static inline void http_count_cx_destroy(http_stats_t *st, int remote, int active_rq)
{
    stat_inc(&st->downstream_cx_destroy);
    stat_inc(remote ? &st->downstream_cx_destroy_remote : &st->downstream_cx_destroy_local);
    if (!active_rq)
        return;
    stat_inc(&st->downstream_cx_destroy_active_rq);
    stat_inc(remote ? &st->downstream_cx_destroy_remote_active_rq
                    : &st->downstream_cx_destroy_local_active_rq);
}

/* The same for an upstream connection: `remote` when the upstream closed it. */
static inline void cluster_count_cx_destroy(cluster_stats_t *st, int remote, int active_rq)
{
    stat_inc(&st->upstream_cx_destroy);
    stat_inc(remote ? &st->upstream_cx_destroy_remote : &st->upstream_cx_destroy_local);
    if (!active_rq)
        return;
    stat_inc(&st->upstream_cx_destroy_with_active_rq);
    stat_inc(remote ? &st->upstream_cx_destroy_remote_with_active_rq
                    : &st->upstream_cx_destroy_local_with_active_rq);
}

/* The 1xx..5xx counter of a status code within a stats block, by class. */
static inline stat_t *stat_class(stat_t *first_1xx, int status)
{
    int cls = status / 100;
    return first_1xx + (cls < 1 ? 4 : cls > 5 ? 4 : cls - 1);
}

#endif
