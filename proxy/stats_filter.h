#ifndef REMORA_STATS_FILTER_H
#define REMORA_STATS_FILTER_H

/* The longest /stats filter= value, in bytes after percent-decoding. */
#define STATS_FILTER_MAX 1024

/* Why this filter (a POSIX extended regex of at most STATS_FILTER_MAX bytes) must not run, as
 * a one-line reason, or NULL: a back-reference, or bounds that repeat past RE2's limit. */
const char *stats_filter_refusal(const char *re);

#endif
