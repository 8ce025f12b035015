/* A growable text buffer: what admin answers, metrics renderings and /certs are built in.
 * Once an allocation fails the buffer is marked failed and takes nothing more, so a caller
 * checks once, at the end. */
#ifndef REMORA_TEXT_H
#define REMORA_TEXT_H

#include <stddef.h>

typedef struct text {
    char *p; /* NUL-terminated once anything was written; NULL before */
    size_t len, cap;
    int failed;
} text_t;

void text_printf(text_t *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* `s` as a JSON string, quotes included (RFC 8259 §7: ", \ and controls escaped). */
void text_json_string(text_t *t, const char *s);

#endif
