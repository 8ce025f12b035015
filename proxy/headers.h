/* The neutral header policy: what crosses remora and what it adds, whatever the codecs.
 *
 * Hop-by-hop (RFC 9110 §7.6.1): the fixed set, plus every field a Connection header names,
 * except that Connection can never make Content-Length, Transfer-Encoding or Host hop-by-hop
 * (framing and routing are not the peer's to remove; smuggling starts there). Framing fields
 * are restated by the codecs, never copied.
 *
 * Toward the upstream: X-Forwarded-For gets the client's address appended to the chain,
 * X-Forwarded-Proto is set when absent, X-Request-Id kept or created, the trace header
 * replaced when tracing. */
#ifndef REMORA_HEADERS_H
#define REMORA_HEADERS_H

#include <stddef.h>

#include "http/head.h"

/* Mark the fields a Connection header names hop-by-hop (the fixed set is marked already). */
void headers_mark_hop(head_t *h);

typedef struct request_edit {
    const char *target; /* the path (and ?query) to send */
    size_t target_len;
    const char *authority; /* absolute-form authority: becomes Host; NULL keeps the Host */
    size_t authority_len;
    const char *default_host; /* when the request has no Host (HTTP/1.0) */
    const char *client_ip;
    const char *request_id;
    const char *trace; /* X-Amzn-Trace-Id to send, NULL: the client's passes through */
    size_t trace_len;
    int drop_expect; /* remora answered Expect itself */
    int secure;      /* the client came over TLS: X-Forwarded-Proto https */
} request_edit_t;

/* Turn the client's request head (hop flags set) into the one to send upstream, in place: the
 * fields remora replaces are marked not to be forwarded, its own are appended, the target is
 * replaced. Nothing is copied but what is added. 0 or ERR_TOO_LARGE / UV_ENOMEM. */
int headers_edit_request(head_t *h, const request_edit_t *e);

#endif
