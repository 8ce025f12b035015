#define PCRE2_CODE_UNIT_WIDTH 8
#include "proxy/stats_filter.h"

#include <pcre2.h>
#include <stdio.h>
#include <string.h>

/* Steps PCRE2 may take on one name (its match limit), and how deep its backtracking may go
 * (depth limit): a stat name is at most a few hundred bytes, and ordinary filters take tens of
 * steps; at these limits one /stats over a few thousand stats stays within milliseconds. */
#define MATCH_LIMIT 10000
#define DEPTH_LIMIT 1000

int stats_filter_compile(stats_filter_t *f, const char *re, char *err, size_t errlen)
{
    memset(f, 0, sizeof *f);
    int code;
    PCRE2_SIZE at;
    f->re = pcre2_compile((PCRE2_SPTR)re, PCRE2_ZERO_TERMINATED, PCRE2_NO_AUTO_CAPTURE, &code, &at,
                          NULL);
    if (!f->re) {
        PCRE2_UCHAR why[120];
        pcre2_get_error_message(code, why, sizeof why);
        snprintf(err, errlen, "invalid regex at byte %zu: %s", (size_t)at, (const char *)why);
        return -1;
    }
    f->md = pcre2_match_data_create(1, NULL);
    f->mc = pcre2_match_context_create(NULL);
    if (!f->md || !f->mc) {
        stats_filter_free(f);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    pcre2_set_match_limit(f->mc, MATCH_LIMIT);
    pcre2_set_depth_limit(f->mc, DEPTH_LIMIT);
    return 0;
}

int stats_filter_match(stats_filter_t *f, const char *name)
{
    if (!f->re)
        return 1;
    int rc = pcre2_match(f->re, (PCRE2_SPTR)name, strlen(name), 0, 0, f->md, f->mc);
    if (rc >= 0)
        return 1;
    if (rc != PCRE2_ERROR_NOMATCH)
        f->over = 1; /* the match or depth limit, or no memory for its frames */
    return 0;
}

void stats_filter_free(stats_filter_t *f)
{
    pcre2_match_context_free(f->mc);
    pcre2_match_data_free(f->md);
    pcre2_code_free(f->re);
    memset(f, 0, sizeof *f);
}
