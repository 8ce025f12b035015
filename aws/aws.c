#include "aws/aws.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "base/backoff.h"
#include "base/err.h"
#include "base/iso8601.h"
#include "base/log.h"

#define RETRY_MIN_MS   1000
#define RETRY_MAX_MS   60000
#define REFRESH_MIN_MS 1000
#define CREDS_MAX_BODY (64 * 1024)
#define TOKEN_MAX      4096

enum source { SRC_ENV, SRC_CONTAINER };

struct aws_credentials {
    uv_loop_t *loop;
    http_client_t *http;
    aws_credentials_stats_t stats;
    enum source source;
    char url[2048];
    const char *token_file, *token_env;
    aws_creds_t creds;
    int have;
    unsigned failures;
    uv_timer_t timer;
    http_call_t *call;
};

static const char *env(const char *name)
{
    const char *v = getenv(name);
    return v && *v ? v : NULL;
}

int aws_region(char *out, size_t n, char *why, size_t whylen)
{
    const char *r = env("AWS_REGION");
    if (!r)
        r = env("AWS_DEFAULT_REGION");
    if (r) {
        snprintf(out, n, "%s", r);
        return 0;
    }
    /* arn:aws:appmesh:REGION:ACCOUNT:mesh/... */
    const char *arn = env("APPMESH_RESOURCE_ARN");
    const char *p = arn && !strncmp(arn, "arn:", 4) ? strchr(arn + 4, ':') : NULL;
    p = p ? strchr(p + 1, ':') : NULL;
    const char *end = p ? strchr(p + 1, ':') : NULL;
    if (end && end > p + 1) {
        snprintf(out, n, "%.*s", (int)(end - p - 1), p + 1);
        return 0;
    }
    snprintf(why, whylen, "no AWS Region: set AWS_REGION (ECS sets it in every task)");
    return ERR_CONFIG;
}

int aws_endpoint_override(const char *env_name, char *out, size_t n)
{
    const char *ignore = env("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS");
    if (ignore && strcasecmp(ignore, "true") == 0)
        return 0;
    char var[128];
    snprintf(var, sizeof var, "AWS_ENDPOINT_URL_%s", env_name);
    const char *url = env(var);
    if (!url)
        url = env("AWS_ENDPOINT_URL");
    if (url)
        snprintf(out, n, "%s", url);
    return url != NULL;
}

void aws_endpoint(const char *env_name, const char *host, const char *region, char *out, size_t n)
{
    if (aws_endpoint_override(env_name, out, n))
        return;
    int china = !strncmp(region, "cn-", 3);
    snprintf(out, n, "https://%s.%s.amazonaws.com%s/", host, region, china ? ".cn" : "");
}

long long aws_parse_time(const char *s)
{
    int64_t ms = iso8601_ms(s);
    return ms < 0 ? -1 : (long long)(ms / 1000);
}

/* Plain http is allowed only to the addresses a container's credentials can come from. */
static int allowed_plain_host(const char *host)
{
    static const char *const fixed[] = {"localhost",    "169.254.170.2", "169.254.170.23",
                                        "fd00:ec2::23", "::1",           NULL};
    for (int i = 0; fixed[i]; i++)
        if (!strcasecmp(host, fixed[i]))
            return 1;
    struct in_addr a;
    return inet_pton(AF_INET, host, &a) == 1 && (ntohl(a.s_addr) >> 24) == 127;
}

static int container_source(aws_credentials_t *p, char *why, size_t whylen)
{
    const char *rel = env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI");
    const char *full = env("AWS_CONTAINER_CREDENTIALS_FULL_URI");
    if (rel)
        snprintf(p->url, sizeof p->url, "%s%s%s", AWS_ECS_CREDS_HOST, rel[0] == '/' ? "" : "/",
                 rel);
    else if (full)
        snprintf(p->url, sizeof p->url, "%s", full);
    else {
        snprintf(why, whylen,
                 "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or give "
                 "the task a role (AWS_CONTAINER_CREDENTIALS_RELATIVE_URI)");
        return ERR_CONFIG;
    }
    http_url_t u;
    if (http_url_parse(p->url, &u)) {
        snprintf(why, whylen, "container credentials URL \"%s\" is not an http(s) URL", p->url);
        return ERR_CONFIG;
    }
    if (!u.tls && !rel && !allowed_plain_host(u.host)) {
        snprintf(why, whylen,
                 "AWS_CONTAINER_CREDENTIALS_FULL_URI: plain http is allowed only to loopback, "
                 "169.254.170.2, 169.254.170.23 or fd00:ec2::23, not %s",
                 u.host);
        return ERR_CONFIG;
    }
    p->token_file = env("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE");
    p->token_env = env("AWS_CONTAINER_AUTHORIZATION_TOKEN");
    p->source = SRC_CONTAINER;
    return 0;
}

/* The Authorization value, or "" for none; -1 when it is unusable (unreadable, CR or LF). */
static int read_token(const aws_credentials_t *p, char *out, size_t n)
{
    out[0] = '\0';
    if (p->token_file) {
        FILE *f = fopen(p->token_file, "r");
        if (!f)
            return -1;
        size_t got = fread(out, 1, n - 1, f);
        fclose(f);
        out[got] = '\0';
        while (got && (out[got - 1] == '\n' || out[got - 1] == '\r'))
            out[--got] = '\0'; /* a trailing newline from `echo` */
    } else if (p->token_env) {
        snprintf(out, n, "%s", p->token_env);
    }
    return strpbrk(out, "\r\n") ? -1 : 0;
}

static void fetch(aws_credentials_t *p);

static void on_timer(uv_timer_t *t)
{
    fetch(t->data);
}

static void retry_later(aws_credentials_t *p, const char *why)
{
    stat_inc(p->stats.failure);
    p->failures++;
    uint64_t ms = backoff_ms(RETRY_MIN_MS, p->failures, RETRY_MAX_MS);
    log_warn("aws: credentials from %s: %s; %s, trying again in %llu ms", p->url, why,
             p->have ? "keeping the current ones" : "none yet", (unsigned long long)ms);
    uv_timer_start(&p->timer, on_timer, ms, 0);
}

static int copy_field(const cJSON *o, const char *name, char *out, size_t n, int required)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    if (!cJSON_IsString(v))
        return required ? -1 : 0;
    if (strlen(v->valuestring) >= n)
        return -1;
    snprintf(out, n, "%s", v->valuestring);
    return 0;
}

/* Every byte of `s` a visible ASCII character and none of `extra`; "" only when `empty_ok`. */
static int visible(const char *s, const char *extra, int empty_ok)
{
    if (!*s)
        return empty_ok;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c <= ' ' || c >= 0x7f || strchr(extra, c))
            return 0;
    }
    return 1;
}

int aws_creds_check(const aws_creds_t *c)
{
    /* What sigv4's check_inputs refuses at every signing, refused once here instead. */
    return visible(c->access_key, "/,", 0) && visible(c->secret_key, "", 0) &&
                   visible(c->token, "", 1)
               ? 0
               : UV_EINVAL;
}

/* A 200 reply: {"AccessKeyId", "SecretAccessKey", "Token", "Expiration"}. Returns the ms until
 * the next fetch, or -1 with `why` set. */
static long long take_reply(aws_credentials_t *p, const char *body, size_t len, const char **why)
{
    cJSON *o = cJSON_ParseWithLength(body, len);
    aws_creds_t c = {0};
    char expiration[64] = "";
    long long next = -1;
    *why = "the reply is not the credentials JSON";
    if (cJSON_IsObject(o) && !copy_field(o, "AccessKeyId", c.access_key, sizeof c.access_key, 1) &&
        !copy_field(o, "SecretAccessKey", c.secret_key, sizeof c.secret_key, 1) &&
        !copy_field(o, "Token", c.token, sizeof c.token, 0) &&
        !copy_field(o, "Expiration", expiration, sizeof expiration, 0)) {
        long long exp = expiration[0] ? aws_parse_time(expiration) : 0;
        long long left_ms = (exp - (long long)time(NULL)) * 1000;
        if (aws_creds_check(&c) != 0)
            *why = "AccessKeyId, SecretAccessKey or Token is empty or holds a control byte, a "
                   "space or non-ASCII";
        else if (exp < 0)
            *why = "Expiration is not an ISO-8601 UTC time";
        else if (exp && left_ms <= 0)
            *why = "the credentials have already expired";
        else {
            p->creds = c;
            p->have = 1;
            /* No Expiration: long-lived; look again hourly all the same. */
            next = exp ? left_ms - AWS_REFRESH_BEFORE_MS : 3600 * 1000LL;
            if (next < REFRESH_MIN_MS)
                next = REFRESH_MIN_MS;
        }
    }
    cJSON_Delete(o);
    return next;
}

static void on_credentials(void *arg, const http_response_t *r)
{
    aws_credentials_t *p = arg;
    p->call = NULL;
    char why[160];
    if (r->err) {
        snprintf(why, sizeof why, "%s", err_str(r->err));
    } else if (r->status != 200) {
        snprintf(why, sizeof why, "HTTP %d", r->status);
    } else {
        const char *bad;
        long long next = take_reply(p, r->body, r->body_len, &bad);
        if (next >= 0) {
            stat_inc(p->stats.success);
            if (p->failures || !p->have)
                log_info("aws: credentials from %s", p->url);
            p->failures = 0;
            uv_timer_start(&p->timer, on_timer, (uint64_t)next, 0);
            return;
        }
        snprintf(why, sizeof why, "%s", bad);
    }
    retry_later(p, why);
}

static void fetch(aws_credentials_t *p)
{
    char token[TOKEN_MAX], headers[TOKEN_MAX + 64];
    if (read_token(p, token, sizeof token) < 0) {
        retry_later(p, "the authorization token is unreadable or holds a line break");
        return;
    }
    snprintf(headers, sizeof headers, "Accept: application/json\r\n%s%s%s",
             token[0] ? "Authorization: " : "", token, token[0] ? "\r\n" : "");
    http_request_t rq = {.method = "GET",
                         .url = p->url,
                         .headers = headers,
                         .max_body = CREDS_MAX_BODY,
                         .timeout_ms = AWS_CREDS_TIMEOUT_MS};
    p->call = http_fetch(p->http, &rq, on_credentials, p);
    if (!p->call)
        retry_later(p, "out of memory");
}

static int env_source(aws_credentials_t *p)
{
    const char *id = env("AWS_ACCESS_KEY_ID"), *secret = env("AWS_SECRET_ACCESS_KEY");
    if (!id || !secret)
        return 0;
    const char *token = env("AWS_SESSION_TOKEN");
    if (!token)
        token = env("AWS_SECURITY_TOKEN");
    aws_creds_t *c = &p->creds;
    if (strlen(id) >= sizeof c->access_key || strlen(secret) >= sizeof c->secret_key ||
        (token && strlen(token) >= sizeof c->token))
        return 0;
    snprintf(c->access_key, sizeof c->access_key, "%s", id);
    snprintf(c->secret_key, sizeof c->secret_key, "%s", secret);
    snprintf(c->token, sizeof c->token, "%s", token ? token : "");
    snprintf(p->url, sizeof p->url, "the environment");
    p->source = SRC_ENV;
    p->have = 1;
    return 1;
}

int aws_credentials_open(aws_credentials_t **out, uv_loop_t *loop, http_client_t *http,
                         aws_credentials_stats_t stats, char *why, size_t whylen)
{
    aws_credentials_t *p = calloc(1, sizeof *p);
    if (!p)
        return UV_ENOMEM;
    p->loop = loop;
    p->http = http;
    p->stats = stats;
    if (!env_source(p)) {
        int err = container_source(p, why, whylen);
        if (err) {
            free(p);
            return err;
        }
    }
    uv_timer_init(loop, &p->timer);
    p->timer.data = p;
    if (p->source == SRC_CONTAINER)
        fetch(p);
    *out = p;
    return 0;
}

const aws_creds_t *aws_credentials_get(const aws_credentials_t *p)
{
    return p && p->have ? &p->creds : NULL;
}

int aws_credentials_pending(const aws_credentials_t *p)
{
    return p && !p->have && p->failures == 0;
}

static void on_closed(uv_handle_t *h)
{
    free(h->data);
}

void aws_credentials_close(aws_credentials_t *p)
{
    if (!p)
        return;
    http_cancel(p->call);
    uv_close((uv_handle_t *)&p->timer, on_closed);
}
