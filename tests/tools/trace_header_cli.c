/* Prints what remora's X-Amzn-Trace-Id parser (tracing/trace.c) makes of each line on stdin,
 * as JSON, for the comparison with the X-Ray SDK's parser in test_tracing.py. */
#include <stdio.h>
#include <string.h>

#include "tracing/trace.h"

int main(void)
{
    char line[4096];
    while (fgets(line, sizeof line, stdin)) {
        size_t n = strcspn(line, "\n");
        trace_header_t h;
        trace_header_parse(line, n, &h);
        const char *sampled = h.sampled == SAMPLED_YES         ? "1"
                              : h.sampled == SAMPLED_NO        ? "0"
                              : h.sampled == SAMPLED_REQUESTED ? "?"
                                                               : "";
        printf("{\"root\": \"%s\", \"parent\": \"%s\", \"sampled\": \"%s\"}\n", h.root, h.parent,
               sampled);
    }
    return 0;
}
