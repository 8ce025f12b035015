/* Diagnostics: a list of "SOURCE: json.path: message" lines, kept apart from error codes so that
 * every problem in a config is reported at once, not just the first. */
#ifndef REMORA_DIAG_H
#define REMORA_DIAG_H

#include <stddef.h>

typedef struct diag {
    char **lines;
    size_t n, cap;
} diag_t;

void diag_add(diag_t *d, const char *source, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void diag_free(diag_t *d);

#endif
