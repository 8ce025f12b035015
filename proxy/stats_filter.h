#ifndef REMORA_STATS_FILTER_H
#define REMORA_STATS_FILTER_H

#include <stddef.h>

/* The admin API's /stats filter=: a regex found anywhere in a stat's name, as Envoy's (RE2)
 * filters are. PCRE2 runs it, under match limits: the main loop runs it once per stat, and a
 * local client chooses it, so no pattern may cost more than a bounded number of steps per
 * name (glibc's regexec has no such bound: a back-reference or a nested repeat took minutes). */

/* The longest filter, in bytes after percent-decoding. */
#define STATS_FILTER_MAX 1024

typedef struct stats_filter {
    struct pcre2_real_code_8 *re;
    struct pcre2_real_match_data_8 *md;
    struct pcre2_real_match_context_8 *mc;
    int over; /* a name ran into the limits: the answer is a refusal, not a partial list */
} stats_filter_t;

/* 0, or -1 with a one-line reason (no newline) in err. A zeroed filter is none. */
int stats_filter_compile(stats_filter_t *f, const char *re, char *err, size_t errlen);
/* 1 when the filter matches somewhere in name (none matches every name), else 0 (also past
 * the limits: f->over). */
int stats_filter_match(stats_filter_t *f, const char *name);
/* Frees what compile made; a zeroed filter too. */
void stats_filter_free(stats_filter_t *f);

#endif
