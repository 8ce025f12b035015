/* AWS Signature Version 4, header form, for the requests remora makes itself: Cloud Map's
 * JSON POSTs (DiscoverInstances, DiscoverInstancesRevision) and the S3 GET of the config.
 * Pure computation: no I/O, no allocation but one OpenSSL digest context, no globals; any
 * thread may call it. botocore's SigV4Auth/S3SigV4Auth is the reference it is tested with
 * (tests/integration/test_sigv4.py); where the two differ, the header comment says so. */
#ifndef REMORA_SIGV4_H
#define REMORA_SIGV4_H

#include <stddef.h>
#include <time.h>

/* One set of credentials, copied whole when refreshed (so a signer never sees half of a new
 * set). Each field is NUL-terminated. STS documents no maximum token size; 4 KiB holds every
 * token seen from ECS, EKS Pod Identity and AssumeRole with headroom. */
typedef struct aws_creds {
    char access_key[128];
    char secret_key[128];
    char token[4096]; /* session token, "" for long-term credentials */
} aws_creds_t;

typedef struct sigv4_header {
    const char *name, *value; /* as sent; NUL-terminated */
} sigv4_header_t;

enum {
    /* Send and sign X-Amz-Content-SHA256 with the body's hash (S3 requires it). */
    SIGV4_CONTENT_SHA256 = 1 << 0,
    /* The canonical URI is the path exactly as sent (S3). Without it, as every other service
     * expects, dot segments and empty segments are removed and the path is percent-encoded a
     * second time ("%20" is signed as "%2520"). */
    SIGV4_PATH_AS_IS = 1 << 1,
    SIGV4_S3 = SIGV4_CONTENT_SHA256 | SIGV4_PATH_AS_IS,
};

#define SIGV4_MAX_HEADERS 32 /* extra headers per request */
#define SIGV4_MAX_PARAMS  64 /* query parameters per request */

/* What is sent, byte for byte: the signature covers these exact values, so the caller must
 * send what it passes here. */
typedef struct sigv4_request {
    const char *method; /* "POST", "GET": signed as given (methods are case-sensitive) */
    /* The Host header's value as sent, signed verbatim: "127.0.0.1:5055" keeps its port.
     * Dropping a default port (:80 for http, :443 for https) is the caller's job, as only it
     * knows the scheme; SDKs also send the host in lower case. */
    const char *host;
    /* Absolute path, percent-encoded as sent; NULL or "" is "/". */
    const char *path;
    /* The query as sent, without '?', percent-encoded (spaces as %20: a '+' is a literal
     * plus); NULL or "" for none. Each name and value is decoded and encoded again the SigV4
     * way, then sorted; empty pairs ("a=1&&b=2") are skipped. */
    const char *query;
    /* Further headers to sign (content-type, x-amz-target, if-none-match, ...), in the order
     * sent: repeats of a name (in any case) are joined with ',' in that order. Headers that
     * must not be signed because something on the way may change them (user-agent,
     * x-amzn-trace-id, hop-by-hop: connection, expect, keep-alive, te, trailer,
     * transfer-encoding, upgrade, proxy-*) may be passed and are skipped. Host, Authorization
     * and the X-Amz-* headers this signer writes are refused. A Date header is signed like
     * any other; X-Amz-Date stays the request's time (botocore would switch to Date). */
    const sigv4_header_t *headers;
    unsigned nheaders;
    const void *body; /* the exact body bytes; NULL when body_len is 0 */
    size_t body_len;
    unsigned flags; /* SIGV4_* above; SIGV4_S3 for S3 */
} sigv4_request_t;

/* Signs `r` for `region` and `service` ("servicediscovery", "s3") at `now` (UTC seconds; a
 * parameter so tests can pin it; sign every request afresh, AWS rejects a signature older than
 * about 5 minutes). Writes the header lines to add to the request, each "Name: value\r\n", in
 * this order: X-Amz-Date, X-Amz-Security-Token (when c->token is not ""),
 * X-Amz-Content-SHA256 (with SIGV4_CONTENT_SHA256), Authorization; then a NUL.
 * Returns the length written (without the NUL), ERR_TOO_LARGE if `out` is too small or there
 * are more than SIGV4_MAX_HEADERS headers or SIGV4_MAX_PARAMS parameters, UV_EINVAL for
 * input that cannot be sent as given (a CR, LF or other control byte in a value, a name that
 * is not a token, a malformed percent escape, a refused header), UV_ENOMEM if OpenSSL fails.
 * 1 KiB plus the token's length is enough for `out` unless the request signs many headers. */
int sigv4_sign(const sigv4_request_t *r, const aws_creds_t *c, const char *region,
               const char *service, time_t now, char *out, size_t outlen);

#endif
