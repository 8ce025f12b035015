#include "config/diag.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

void diag_add(diag_t *d, const char *source, const char *path, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 8;
        char **lines = realloc(d->lines, cap * sizeof *lines);
        if (!lines)
            return;
        d->lines = lines;
        d->cap = cap;
    }
    size_t len = snprintf(NULL, 0, "%s: %s: %s", source, path, msg) + 1;
    char *line = malloc(len);
    if (!line)
        return;
    snprintf(line, len, "%s: %s: %s", source, path, msg);
    d->lines[d->n++] = line;
}

void diag_free(diag_t *d)
{
    for (size_t i = 0; i < d->n; i++)
        free(d->lines[i]);
    free(d->lines);
    d->lines = NULL;
    d->n = d->cap = 0;
}
