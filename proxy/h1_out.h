/* Writing HTTP/1.1 framing shared by both codecs: heads (fields of a neutral head, restated
 * framing), chunk lines and the last chunk with trailers (RFC 9112 §7.1). */
#ifndef REMORA_H1_OUT_H
#define REMORA_H1_OUT_H

#include <stddef.h>
#include <stdint.h>

#include "proxy/conn.h"
#include "http/head.h"

/* Framing fields the codec writes itself; the head's own are skipped unless `keep_length`. */
typedef struct h1_framing {
    int64_t length; /* >= 0: Content-Length; < 0: none */
    int chunked;    /* Transfer-Encoding (the head's coding list if any, ending in chunked) */
    const char *connection; /* "close", "keep-alive", "upgrade" or NULL */
    int keep_length;        /* keep the head's Content-Length fields (HEAD, 304) */
} h1_framing_t;

/* Queue `start` (the start line, CRLF included), the fields of h and the framing, as one
 * buffer. Returns 0 or UV_ENOMEM. */
int h1_write_head(conn_t *c, const char *start, size_t start_len, const head_t *h,
                  const h1_framing_t *f);
/* A body piece, framed as a chunk when `chunked`. */
void h1_write_data(conn_t *c, int chunked, buf_t *b, const char *p, size_t n);
/* The last chunk, the trailer fields (may be NULL) and the final CRLF. */
void h1_write_last_chunk(conn_t *c, const head_t *trailers);
/* "<size in hex>\r\n"; returns its length. */
size_t h1_chunk_line(size_t n, char out[24]);

#endif
