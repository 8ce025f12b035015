/* HTTP vocabulary every layer may use: request methods and the reason phrases of the statuses
 * remora answers with itself (RFC 9110 §9, §15). */
#ifndef REMORA_HTTP_H
#define REMORA_HTTP_H

#include <stddef.h>

/* Methods remora acts on; any other token is HTTP_OTHER, its text kept in the head. */
enum http_method {
    HTTP_OTHER,
    HTTP_GET,
    HTTP_HEAD,
    HTTP_POST,
    HTTP_PUT,
    HTTP_DELETE,
    HTTP_CONNECT,
    HTTP_OPTIONS,
    HTTP_TRACE,
    HTTP_PATCH,
};

/* The method named by the n bytes at p (case-sensitive, RFC 9110 §9.1), or HTTP_OTHER. */
enum http_method http_method_of(const char *p, size_t n);
/* "GET", ...; "" for HTTP_OTHER. */
const char *http_method_name(enum http_method m);
/* RFC 9110 §9.2.2: the request may be repeated without changing what it means. */
int http_method_idempotent(enum http_method m);
/* The reason phrase of `status`, or "" for one remora does not answer with. */
const char *http_reason(int status);

#endif
