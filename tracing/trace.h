/* The X-Amzn-Trace-Id header (shared/reference/xray.md §3): parsed leniently (any field order,
 * any key case, whitespace, unknown fields kept, Self dropped, Sampled=?) and written back as
 * Root=…;Parent=…;Sampled=… followed by the fields we did not know. */
#ifndef REMORA_TRACE_H
#define REMORA_TRACE_H

#include <stddef.h>

#define TRACE_ID_LEN    35 /* 1-xxxxxxxx-xxxxxxxxxxxxxxxxxxxxxxxx */
#define SPAN_ID_LEN     16
#define TRACE_EXTRA_MAX 256

enum sampled { SAMPLED_UNKNOWN = -1, SAMPLED_NO = 0, SAMPLED_YES = 1, SAMPLED_REQUESTED = 2 };

typedef struct trace_header {
    char root[TRACE_ID_LEN + 1];  /* "" when absent or not a valid trace id */
    char parent[SPAN_ID_LEN + 1]; /* "" when absent or not 16 hex digits */
    enum sampled sampled;
    char extra[TRACE_EXTRA_MAX]; /* unknown "k=v" fields, ';'-joined, as received */
} trace_header_t;

void trace_header_parse(const char *v, size_t n, trace_header_t *out);
/* Root=<root>;Parent=<parent>;Sampled=<0|1>[;extra] into out (NUL-terminated); returns length. */
size_t trace_header_format(const char *root, const char *parent, int sampled, const char *extra,
                           char *out, size_t cap);

#endif
