/* The HTTP/2 exchange of an `http2` or `grpc` health check (internal to health.c), as bytes in
 * and bytes out: the probe owns the socket and TLS, hands every plaintext byte it reads to
 * health_h2_step and sends what the step writes. One request on stream 1, with prior
 * knowledge: the client preface goes first, in plaintext (h2c) or once ALPN chose "h2".
 *
 *   http2  GET path; the verdict is the final :status, 200..399 healthy (as the http check)
 *   grpc   the gRPC Health Checking Protocol (shared/reference/tls-h2-grpc.md §3.4): POST
 *          /grpc.health.v1.Health/Check with an empty HealthCheckRequest; healthy only with
 *          grpc-status 0 and the message `08 01` (SERVING)
 *
 * Bounded whatever the target sends: the bytes read, the response's header fields (counted
 * as RFC 9113 §6.5.2 does) and the gRPC message have caps, and the stream window is never
 * reopened, so a probe's session never holds more than a few tens of KiB. */
#ifndef REMORA_HEALTH_H2_H
#define REMORA_HEALTH_H2_H

#include <stddef.h>
#include <stdint.h>

typedef struct health_h2 health_h2_t;

enum health_h2_kind { HEALTH_H2_GET, HEALTH_H2_GRPC };
enum health_verdict { HEALTH_PENDING, HEALTH_PASS, HEALTH_FAIL };

/* Gets `n` bytes to send, valid only during the call; 0 or a negative UV_E* code. */
typedef int (*health_h2_write_cb)(void *ud, const uint8_t *data, size_t n);

/* A client session with its request queued. `authority` is the endpoint ("ip:port"), `path`
 * the http2 check's path (ignored for grpc), `tls` picks :scheme. NULL when memory is
 * exhausted. The caller owns it (health_h2_free, in every path). */
health_h2_t *health_h2_new(enum health_h2_kind kind, const char *authority, const char *path,
                           int tls);

/* Feeds `n` received bytes (none for the first step, which sends the preface and the request),
 * then writes whatever the session has to send. Returns the verdict so far; once it is not
 * HEALTH_PENDING, further input is ignored and health_h2_why says why a check failed. */
enum health_verdict health_h2_step(health_h2_t *x, const uint8_t *data, size_t n,
                                   health_h2_write_cb write, void *ud);
const char *health_h2_why(const health_h2_t *x);

void health_h2_free(health_h2_t *x);

#endif
