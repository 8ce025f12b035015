/* Where a sidecar's AWS calls go and with which credentials, found the way the AWS SDKs find
 * them in a container (shared/reference/cloudmap-gateways-rollouts.md §1.7).
 *
 * Region: AWS_REGION, then AWS_DEFAULT_REGION, then the Region inside APPMESH_RESOURCE_ARN.
 * Endpoint: AWS_ENDPOINT_URL_<SERVICE>, then AWS_ENDPOINT_URL (both ignored when
 * AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true), used as given; else https://<host>.<region>.
 * amazonaws.com (.com.cn in the China Regions).
 *
 * Credentials, first found wins:
 *   1. AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY (+ AWS_SESSION_TOKEN, or the older
 *      AWS_SECURITY_TOKEN): used as they are for the life of the process.
 *   2. The container credentials endpoint: http://169.254.170.2 + AWS_CONTAINER_CREDENTIALS_
 *      RELATIVE_URI (an ECS task role), else AWS_CONTAINER_CREDENTIALS_FULL_URI (https to any
 *      host, plain http only to loopback, 169.254.170.2, 169.254.170.23 or fd00:ec2::23),
 *      with `Authorization:` from AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE (read again for each
 *      fetch) or AWS_CONTAINER_AUTHORIZATION_TOKEN. Fetched at once, then again when less than
 *      AWS_REFRESH_BEFORE_MS are left before `Expiration`; a failed fetch keeps the current
 *      credentials and is retried with backoff. */
#ifndef REMORA_AWS_H
#define REMORA_AWS_H

#include <stddef.h>
#include <uv.h>

#include "aws/sigv4.h"
#include "base/stats.h"
#include "http/client.h"

#define AWS_REFRESH_BEFORE_MS (15 * 60 * 1000)
#define AWS_CREDS_TIMEOUT_MS  2000
#define AWS_ECS_CREDS_HOST    "http://169.254.170.2"

/* 0, or ERR_CONFIG with `why` saying what to set. */
int aws_region(char *out, size_t n, char *why, size_t whylen);
/* The endpoint URL of a service: `env_name` is the SDK's environment suffix
 * ("SERVICEDISCOVERY"), `host` its default host name before the Region
 * ("data-servicediscovery"). */
void aws_endpoint(const char *env_name, const char *host, const char *region, char *out, size_t n);
/* Only the environment's override: 1 with `out` set, or 0. */
int aws_endpoint_override(const char *env_name, char *out, size_t n);

typedef struct aws_credentials aws_credentials_t;

typedef struct aws_credentials_stats {
    stat_t *success, *failure; /* fetches from the container endpoint */
} aws_credentials_stats_t;

/* Find the credentials' source and, for the container endpoint, start fetching. Returns 0, or
 * ERR_CONFIG with `why` set when there is no usable source. `http` must outlive the provider. */
int aws_credentials_open(aws_credentials_t **out, uv_loop_t *loop, http_client_t *http,
                         aws_credentials_stats_t stats, char *why, size_t whylen);
/* The credentials in force, or NULL while the first fetch has not succeeded. */
const aws_creds_t *aws_credentials_get(const aws_credentials_t *p);
void aws_credentials_close(aws_credentials_t *p);
/* No credentials yet, and no fetch has failed: the first one is under way. */
int aws_credentials_pending(const aws_credentials_t *p);

/* 0 when `c` can sign: AccessKeyId visible ASCII without '/' or ',', SecretAccessKey visible
 * ASCII, Token "" or visible ASCII; else UV_EINVAL (a CR or LF would break every signed call's
 * header lines). Container credentials that fail it count as a failed fetch. */
int aws_creds_check(const aws_creds_t *c);
/* An ISO-8601 UTC time ("2026-02-25T06:03:31Z", fractions and "+00:00" accepted) as seconds
 * since the epoch; -1 when it is not one. */
long long aws_parse_time(const char *s);

#endif
