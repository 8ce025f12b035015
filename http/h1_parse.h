/* Strict, incremental HTTP/1.1 message parser (RFC 9112), written for remora because the
 * llhttp Debian ships (8.1.0) accepts a bare CR as a line end, non-token field names, HTTP/0.9
 * request lines, and refuses valid chunk extensions.
 *
 * Pull style: the caller feeds bytes and gets one event at a time, so it may stop after any
 * event (a pipelined request waits, a retry starts) without callbacks or pausing; nothing is
 * called back, nothing is allocated but the head's own storage.
 *
 *   size_t used = h1_parse(p, data, n, &ev);   // consumes data[0..used), reports ev
 *
 * Events, in order for one message: H1_HEAD once (the head is complete in *p->head; for a
 * response, any number of interim 1xx heads come first, each as its own H1_HEAD), then H1_DATA
 * zero or more times (ev.p/ev.n point into the caller's data: body bytes, chunk framing
 * removed), then H1_END (trailers, if any, are in *p->trailers). H1_NEED_MORE: every byte was
 * consumed and more are needed. After H1_END the parser expects the next message; after a 101
 * response, or a 2xx to CONNECT, it reports H1_END and consumes nothing more (the bytes that
 * follow belong to the tunnel). H1_ERROR is final: ev.status says what to answer a request
 * with (400, 414, 431, 501, 505; 503 if memory runs out) and p->reason why; the connection
 * must not carry another byte.
 *
 * Strictness, each a 400 (RFC 9112 section in brackets):
 *   - a CR not followed by LF anywhere in a start line, field line, chunk line or trailer
 *     (a lone LF is accepted as a line end, §2.2); NUL or other CTLs in values (§5);
 *   - field names that are not tokens, whitespace before the colon (§5.1), obs-fold (§5.2);
 *   - a request line that is not `token SP target SP HTTP/d.d` (HTTP/0.9 included, §3);
 *     a major version other than 1 is 505;
 *   - requests: not exactly one Host in HTTP/1.1 (at most one in 1.0), or a Host value that is
 *     not a valid authority (§3.2, RFC 3986 §3.2);
 *   - Content-Length that is not 1*DIGIT, repeated, or a list (RFC 9110 §8.6); Content-Length
 *     with Transfer-Encoding in a request (§6.1); Transfer-Encoding in an HTTP/1.0 request;
 *     an empty Transfer-Encoding field or list element; a request Transfer-Encoding whose last
 *     coding is not chunked, or with chunked twice (§6.3);
 *   - chunk sizes that are not hex or overflow 2^63, invalid chunk extensions (§7.1.1), a
 *     chunk not followed by CRLF, trailer lines broken as field lines are.
 * Caps: the head (request line included) at HEAD_MAX_BYTES (431, or 414 when the request line
 * alone is too long), HEAD_MAX_FIELDS fields (431), a chunk line at H1_MAX_CHUNK_LINE (400),
 * trailers at the same caps as heads.
 *
 * Responses (the caller set p->request_method before the head arrives): no body after HEAD,
 * 1xx, 204 or 304 (§6.3); Transfer-Encoding wins over Content-Length and then the connection
 * must close (p->flags & H1F_CLOSE); a Transfer-Encoding not ending in chunked, or neither
 * header, means the body runs until the connection closes (call h1_parse_eof). */
#ifndef REMORA_H1_PARSE_H
#define REMORA_H1_PARSE_H

#include <stddef.h>
#include <stdint.h>

#include "http/head.h"

#define H1_MAX_CHUNK_LINE 4096

enum h1_kind { H1_REQUEST, H1_RESPONSE };
enum h1_event { H1_NEED_MORE, H1_HEAD, H1_DATA, H1_END, H1_ERROR };
/* How the current message's body is framed on the wire. */
enum h1_body { H1_BODY_NONE, H1_BODY_LENGTH, H1_BODY_CHUNKED, H1_BODY_UNTIL_CLOSE };

/* Facts about the current message, set when its head is complete. H1F_CLOSE: the connection
 * ends after this message (Connection: close, 1.0 without keep-alive, or framing that forces
 * it). */
#define H1F_CLOSE    0x01
#define H1F_UPGRADE  0x02 /* request: Connection names upgrade and Upgrade is present */
#define H1F_CONTINUE 0x04 /* request: HTTP/1.1 with Expect: 100-continue */
#define H1F_CODINGS  0x08 /* Transfer-Encoding has codings besides chunked (kept in the head) */
#define H1F_TRAILERS 0x10 /* a chunked message ended with trailer fields */

typedef struct h1_ev {
    enum h1_event type;
    const char *p; /* H1_DATA: the body bytes, inside the caller's input */
    size_t n;
    int status; /* H1_ERROR: the status to answer a request with */
} h1_ev_t;

/* Every idle client connection carries one: small fields are bytes, in one run at the end. */
typedef struct h1_parser {
    head_t *head;            /* where the head goes; the caller owns it (and may swap it out) */
    head_t *trailers;        /* where trailers go; NULL drops them */
    uint64_t content_length; /* H1_BODY_LENGTH: as declared */
    const char *reason;      /* H1_ERROR: a short, static description */
    /* Private: the parser's state (with `state` below). */
    uint64_t remaining;     /* body bytes left: of the Content-Length, or of the current chunk */
    uint32_t line_len;      /* bytes of the current chunk line or head so far, for the caps */
    uint32_t scan;          /* head bytes already searched for the end of the head */
    uint8_t kind;           /* enum h1_kind */
    uint8_t request_method; /* responses: the method of the request being answered */
    uint8_t body;           /* enum h1_body: how the current message's body is framed */
    uint8_t flags;          /* H1F_* of the current message */
    uint8_t state;
    uint8_t saw_cr;      /* the last byte consumed was a CR (its LF is still to come) */
    uint8_t empty_lines; /* before a request line (at most MAX_EMPTY_LINES) */
} h1_parser_t;

/* `head` (and `trailers`, may be NULL) stay owned by the caller and must outlive the parser. */
void h1_parser_init(h1_parser_t *p, enum h1_kind kind, head_t *head, head_t *trailers);
/* Consume from data[0..n) up to and including the next event; returns the bytes consumed. */
size_t h1_parse(h1_parser_t *p, const char *data, size_t n, h1_ev_t *ev);
/* The peer closed: H1_END for a body delimited by the close, H1_ERROR (truncated message)
 * when a message was under way, H1_NEED_MORE when between messages. */
void h1_parse_eof(h1_parser_t *p, h1_ev_t *ev);
/* Whether a message is under way (some of it consumed, H1_END not yet reported). */
int h1_parser_busy(const h1_parser_t *p);

#endif
