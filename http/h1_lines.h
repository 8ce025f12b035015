/* A head's fields written as HTTP/1 field lines: shared by the HTTP/1 writer (proxy/h1_out.c)
 * and the parser's fuzz target, which checks it against writing each field piece by piece. */
#ifndef REMORA_H1_LINES_H
#define REMORA_H1_LINES_H

#include <stddef.h>
#include <string.h>

#include "http/head.h"

/* Writes the fields keep(f, arg) accepts, in order, each as name ": " value CRLF, from out + at;
 * returns where they end. Fields in line form (head.h) that follow one another in storage go
 * as one copy, with the separators put back. Room for h->wire bytes is enough. Inlined, so
 * that `keep` is too. */
__attribute__((always_inline)) static inline size_t
h1_put_lines(char *out, size_t at, const head_t *h, int (*keep)(const field_t *f, const void *arg),
             const void *arg)
{
    const field_t *f = h->fields, *end = f + h->nfields;
    while (f < end) {
        if (!keep(f, arg)) {
            f++;
        } else if (!field_in_line_form(f)) {
            memcpy(out + at, h->bytes + f->name, f->name_len);
            memcpy(out + at + f->name_len, ": ", 2);
            at += f->name_len + 2;
            memcpy(out + at, h->bytes + f->value, f->value_len);
            memcpy(out + at + f->value_len, "\r\n", 2);
            at += f->value_len + 2;
            f++;
        } else {
            const field_t *last = f;
            while (last + 1 < end && last[1].name == field_line_end(last) &&
                   field_in_line_form(last + 1) && keep(last + 1, arg))
                last++;
            size_t from = f->name, len = field_line_end(last) - from;
            memcpy(out + at, h->bytes + from, len);
            for (; f <= last; f++) { /* storage offset x was copied to at + x - from */
                memcpy(out + at + (f->name + f->name_len - from), ": ", 2);
                memcpy(out + at + (f->value + f->value_len - from), "\r\n", 2);
            }
            at += len;
        }
    }
    return at;
}

#endif
