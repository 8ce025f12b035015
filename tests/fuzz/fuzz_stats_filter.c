/* proxy/stats_filter.c: the admin API's /stats filter= on arbitrary patterns.
 *
 * The main loop runs a filter over every stat name, and a local client chooses it. For every
 * input, compiled by PCRE2 (or refused) and run over names shaped like remora's:
 *   - a match answers 0 or 1, and `over` is set only by a run past the limits;
 *   - no pattern costs more than the match limits allow: libFuzzer's per-input timeout
 *     (run.sh: 10 s) makes one that does a failure, and keeps it. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/stats_filter.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const names[] = {
    "cluster.cds_egress_shop_cart-v1_http_8080.upstream_rq_503",
    "cluster.cds_egress_shop_cart-v1_http_8080.upstream_cx_destroy_remote_with_active_rq",
    "cluster.cds_ingress_shop_web_http_9080.outlier_detection.ejections_enforced_consecutive_5xx",
    "http.ingress.downstream_rq_2xx",
    "http.egress.downstream_cx_destroy_local_active_rq",
    "listener.0.0.0.0_15000.downstream_cx_total",
    "server.memory_heap_size",
    "remora.route.cart.r1.cart-v2.rq_5xx",
    "remora.dns.cds_egress_shop_cart-v1_http_8080.servfail",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char re[STATS_FILTER_MAX + 1], why[200];
    size_t n = strnlen((const char *)data, size < STATS_FILTER_MAX ? size : STATS_FILTER_MAX);
    memcpy(re, data, n);
    re[n] = '\0';
    stats_filter_t f;
    if (stats_filter_compile(&f, re, why, sizeof why) != 0) {
        if (!why[0] || strchr(why, '\n'))
            abort(); /* the reason is one line */
        return 0;
    }
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        int m = stats_filter_match(&f, names[i]);
        if (m != 0 && m != 1)
            abort();
    }
    stats_filter_free(&f);
    return 0;
}
