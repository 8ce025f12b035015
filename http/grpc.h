/* What a proxy needs of gRPC over HTTP/2 (grpc/grpc doc/PROTOCOL-HTTP2.md): telling a gRPC
 * request, its deadline (grpc-timeout), the status of a Trailers-Only response, and remora's
 * own answers, which are Trailers-Only: `:status 200`, `content-type: application/grpc`,
 * `grpc-status`, a percent-encoded `grpc-message`, and no body. */
#ifndef REMORA_GRPC_H
#define REMORA_GRPC_H

#include <stdint.h>

#include "http/head.h"

enum grpc_status {
    GRPC_OK = 0,
    GRPC_CANCELLED = 1,
    GRPC_UNKNOWN = 2,
    GRPC_DEADLINE_EXCEEDED = 4,
    GRPC_PERMISSION_DENIED = 7,
    GRPC_RESOURCE_EXHAUSTED = 8,
    GRPC_UNIMPLEMENTED = 12,
    GRPC_INTERNAL = 13,
    GRPC_UNAVAILABLE = 14,
    GRPC_UNAUTHENTICATED = 16,
};

/* A gRPC request: its content-type is application/grpc, alone or with a +suffix or ;params. */
int grpc_is_request(const head_t *h);
/* The request's grpc-timeout in milliseconds (rounded up; at most 8 digits and one of the units
 * H M S m u n): 1 with *ms set, 0 when there is none or it is malformed (then ignored, as
 * gRPC servers do). */
int grpc_timeout_ms(const head_t *h, uint64_t *ms);
/* Replace the request's grpc-timeout with `ms` (the time left): the fields it had become
 * hop-by-hop, a new one is added. 0, or ERR_TOO_LARGE. */
int grpc_set_timeout(head_t *h, uint64_t ms);
/* The grpc-status of a response head, or -1 when it has none (or not a number). */
int grpc_status_of(const head_t *h);
/* The status remora answers a gRPC request with instead of an HTTP status (the mapping of
 * grpc doc/http-grpc-status-mapping.md, except 504 and 408, which are remora's timeouts:
 * DEADLINE_EXCEEDED). */
enum grpc_status grpc_status_for_http(int http_status);
/* Fill `h` (empty) as a Trailers-Only answer with `status` and `message` (UTF-8; a trailing
 * newline is dropped; percent-encoded as the protocol asks). 0, or ERR_TOO_LARGE. */
int grpc_reply_head(head_t *h, enum grpc_status status, const char *message);

#endif
