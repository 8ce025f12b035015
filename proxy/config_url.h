/* The config from a URL (REMORA_CONFIG_URL): one document for a whole fleet, in S3, behind AWS
 * AppConfig's agent (localhost:2772) or on any HTTP server, polled so that a change of that
 * one object reaches every sidecar within the poll interval (docs/config.md, "Config from a
 * URL"; shared/reference/cloudmap-gateways-rollouts.md §2).
 *
 * Polls are conditional: If-None-Match with the stored ETag, else If-Modified-Since with the
 * stored Last-Modified (RFC 9110 §13.1). 304, a 200 whose Configuration-Version (AppConfig)
 * is the one applied, or a body identical to the document in force (by SHA-256) change
 * nothing. Any other
 * 200 is parsed and validated like a file reload; only once it is applied are its validators
 * stored, so a broken document is fetched again at the next poll and the last good config
 * stays. Errors back off (doubling up to CONFIG_URL_MAX_BACKOFF_MS); intervals are jittered by
 * up to a tenth so a fleet does not poll in step.
 *
 * s3://BUCKET/KEY is fetched from https://BUCKET.s3.REGION.amazonaws.com/KEY, signed (SigV4,
 * service s3) with the credentials the Cloud Map API uses (aws/aws.h): a private object read
 * with the task role. Other URLs are fetched as they are (a public or presigned object, the
 * AppConfig agent, any server). */
#ifndef REMORA_CONFIG_URL_H
#define REMORA_CONFIG_URL_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "aws/aws.h"
#include "base/stats.h"
#include "config/config.h"
#include "config/diag.h"

#define CONFIG_URL_TIMEOUT_MS     10000
#define CONFIG_URL_MAX_BODY       (32 * 1024 * 1024) /* App Mesh's quotas come to about 3 MB */
#define CONFIG_URL_MAX_BACKOFF_MS 60000

enum config_url_result {
    CONFIG_URL_CHANGED,      /* a new document was applied */
    CONFIG_URL_NOT_MODIFIED, /* 304, the same version, or the same bytes */
    CONFIG_URL_INVALID,      /* a document that failed validation: the old config stays */
    CONFIG_URL_ERROR, /* no document: connection, timeout, TLS, a status other than 200/304 */
    CONFIG_URL_RESULTS
};

/* What the owner does with a fetched document: CONFIG_URL_CHANGED, CONFIG_URL_NOT_MODIFIED
 * (it is the config in force) or CONFIG_URL_INVALID (it logged why). */
typedef enum config_url_result (*config_url_apply_cb)(void *arg, const char *doc, size_t len);

typedef struct config_url config_url_t;

#define CONFIG_URL_VALIDATOR_MAX 512

/* What identifies the document in force, so the next poll can ask "changed since?". */
typedef struct config_url_validators {
    char etag[CONFIG_URL_VALIDATOR_MAX];
    char last_modified[CONFIG_URL_VALIDATOR_MAX];
    char version[CONFIG_URL_VALIDATOR_MAX]; /* AppConfig's Configuration-Version */
    /* The SHA-256 of its bytes: a 200 with the same ones changes nothing (computed here, so
     * that a sidecar configured from a file never loads OpenSSL's digests for it) */
    unsigned char digest[32];
    int has_digest;
} config_url_validators_t;

/* Start polling `url` every `poll_ms`, the document in force being the one `seen` describes
 * (NULL: unknown). Counts each poll's outcome in counters[enum config_url_result]. */
int config_url_open(config_url_t **out, uv_loop_t *loop, const char *url, uint64_t poll_ms,
                    const config_url_validators_t *seen, stat_t *counters,
                    aws_credentials_stats_t creds_stats, config_url_apply_cb apply, void *arg);
/* Poll now (SIGHUP). */
void config_url_poll_now(config_url_t *u);
void config_url_close(config_url_t *u);

/* Start-up: fetch and parse the document. With `retry`, failures (fetch or validation) are
 * logged and tried again with backoff until one succeeds or SIGTERM/SIGINT arrives; without,
 * the first failure is returned in `d` (`remora check`). `seen` (may be NULL) receives the
 * document's validators. NULL with nothing in `d`: a signal
 * asked to stop first. */
config_t *config_url_load(const char *url, int retry, config_url_validators_t *seen, diag_t *d);

#endif
