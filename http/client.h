/* A small HTTP/1.1 client for the control plane: the Cloud Map API, the container credentials
 * endpoint, the config URL. Main loop only; not on the request path.
 *
 * One request at a time per connection, connections kept alive and reused per origin (scheme,
 * host, port) up to HTTP_IDLE_MAX idle ones in all for HTTP_IDLE_MS, so a poller pays one TCP and
 * TLS handshake, not one per poll. A reused connection that fails before any byte of the response
 * (the server closed it while idle) is retried once on a new one; the requests made here are
 * all safe to repeat.
 *
 * https: the system trust store (OpenSSL's default paths, so SSL_CERT_FILE and SSL_CERT_DIR
 * apply; AWS_CA_BUNDLE adds a bundle, as the AWS SDKs read it), the host name checked against
 * the certificate, SNI sent, TLS 1.2 or later.
 *
 * Bounded: the response head by the parser's caps, the body by the request's max_body, the
 * whole exchange (name lookup, connect, handshake, response) by timeout_ms. */
#ifndef REMORA_HTTP_CLIENT_H
#define REMORA_HTTP_CLIENT_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "http/head.h"

#define HTTP_IDLE_MAX 32 /* Cloud Map clusters polling at once */
#define HTTP_IDLE_MS  30000

typedef struct http_url {
    int tls;
    char host[256]; /* a name, or an address without brackets */
    uint16_t port;
    char authority[300]; /* what Host carries: host, [v6] and :port unless the scheme's default */
    char path[2048];     /* "/..." with the query; "/" when the URL has none */
} http_url_t;

/* Split an http:// or https:// URL. Returns 0 or ERR_BAD_URL (userinfo, fragments and
 * anything but those two schemes are refused). */
int http_url_parse(const char *url, http_url_t *u);

typedef struct http_request {
    const char *method; /* "GET", "POST" */
    const char *url;
    const char *headers; /* extra "Name: value\r\n" lines, or NULL; Host, Content-Length and
                          * User-Agent are added here */
    const void *body;
    size_t body_len;
    size_t max_body;     /* a longer response body fails the call with ERR_TOO_LARGE */
    uint64_t timeout_ms; /* the whole exchange */
} http_request_t;

typedef struct http_response {
    int err;    /* 0: a response arrived; otherwise why not (UV_ETIMEDOUT, UV_ECONNREFUSED,
                 * UV_EAI_*, ERR_TLS, ERR_TOO_LARGE, ERR_BAD_RESPONSE, ERR_BAD_URL, ...) */
    int status; /* the final status, 0 when err */
    const head_t *head;
    const char *body;
    size_t body_len;
} http_response_t;

/* The response is valid only during the callback. */
typedef void (*http_done_cb)(void *arg, const http_response_t *r);

typedef struct http_client http_client_t;
typedef struct http_call http_call_t;

int http_client_open(http_client_t **out, uv_loop_t *loop);
/* Cancels every call in flight (their callbacks never run) and closes the connections. */
void http_client_close(http_client_t *c);

/* Start a request. `cb` runs exactly once, always from a later loop iteration, unless the call
 * is cancelled first. The request's strings are copied. NULL only when memory runs out. */
http_call_t *http_fetch(http_client_t *c, const http_request_t *rq, http_done_cb cb, void *arg);
/* The callback will not run; the call's memory is released. */
void http_cancel(http_call_t *call);

/* A field of the response (case-insensitive name): its value, NUL-terminated, or NULL. */
const char *http_field(const http_response_t *r, const char *name);

#endif
