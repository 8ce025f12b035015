/* Error codes: 0 is success, negative values are libuv's UV_E* codes or remora's own below.
 * One table, one strerror: err_str() covers both. */
#ifndef REMORA_ERR_H
#define REMORA_ERR_H

enum {
    ERR_BASE = -10000,
    ERR_CONFIG,          /* configuration is invalid (details are in the diagnostics) */
    ERR_NO_ENDPOINT,     /* the cluster has no endpoint to send to */
    ERR_BAD_RESPONSE,    /* the upstream's reply is not valid HTTP/1.1 */
    ERR_UPSTREAM_CLOSED, /* the upstream closed before the response was complete */
    ERR_TOO_LARGE,       /* a capped buffer would overflow */
    ERR_BAD_REQUEST,     /* the client's request is not valid HTTP (framing) */
    ERR_CLIENT_GONE,     /* the client closed or reset before the exchange ended */
    ERR_TLS,             /* a TLS handshake or certificate check failed */
    ERR_BAD_URL,         /* a URL that is not http(s)://host[:port][/path] */
    ERR_REFUSED,         /* HTTP/2: the stream was refused, or left unprocessed by GOAWAY */
};

const char *err_str(int err);

#endif
