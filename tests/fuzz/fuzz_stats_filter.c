/* proxy/stats_filter.c: the admin API's check of a /stats filter= regex, on arbitrary filters.
 *
 * The check runs on the main loop before glibc's regcomp and regexec, which would otherwise
 * run any pattern a local client sends over every metric name. So for every input:
 *   - the check itself returns (no overrun of its group stack, whatever the nesting);
 *   - a pattern it accepts that compiles is run over a set of metric names shaped like
 *     remora's, as metrics.c runs it. libFuzzer's per-input timeout (run.sh: 10 s) makes an
 *     accepted pattern that makes glibc backtrack or explode a failure: the input is kept. */
#include <regex.h>
#include <stdint.h>
#include <stdio.h>
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
    char re[STATS_FILTER_MAX + 1];
    size_t n = strnlen((const char *)data, size < STATS_FILTER_MAX ? size : STATS_FILTER_MAX);
    memcpy(re, data, n);
    re[n] = '\0';
    if (stats_filter_refusal(re))
        return 0;
    regex_t compiled;
    if (regcomp(&compiled, re, REG_EXTENDED | REG_NOSUB) != 0)
        return 0;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        (void)regexec(&compiled, names[i], 0, NULL, 0);
    regfree(&compiled);
    return 0;
}
