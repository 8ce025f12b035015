#include "proxy/config_url.h"

#include <openssl/sha.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "aws/aws.h"
#include "base/backoff.h"
#include "base/err.h"
#include "base/log.h"
#include "http/client.h"

#define VALIDATOR_MAX         512
#define FIRST_BACKOFF_MS      1000
#define LOADER_MAX_BACKOFF_MS 16000 /* start-up: 1, 2, 4, 8, then 16 s */

/* Where the document is: a plain URL, or an S3 object (s3://BUCKET/KEY) fetched from its
 * virtual-hosted URL with a SigV4 signature made with the task's credentials. */
typedef struct source {
    char url[2048]; /* what is fetched */
    int s3;
    char region[64];
    http_url_t where;
    aws_credentials_t *creds;
} source_t;

static int source_open(source_t *src, uv_loop_t *loop, http_client_t *http, const char *url,
                       aws_credentials_stats_t stats, char *why, size_t whylen)
{
    memset(src, 0, sizeof *src);
    if (strncmp(url, "s3://", 5) != 0) {
        snprintf(src->url, sizeof src->url, "%s", url);
        return 0;
    }
    const char *bucket = url + 5, *key = strchr(bucket, '/');
    if (!key || key == bucket || !key[1]) {
        snprintf(why, whylen, "%s: an S3 URL is s3://BUCKET/KEY", url);
        return ERR_BAD_URL;
    }
    int err = aws_region(src->region, sizeof src->region, why, whylen);
    if (err)
        return err;
    char base[2048];
    int n, china = !strncmp(src->region, "cn-", 3);
    if (aws_endpoint_override("S3", base, sizeof base)) { /* path style, as the SDKs do then */
        size_t blen = strlen(base);
        while (blen && base[blen - 1] == '/')
            base[--blen] = '\0';
        n = snprintf(src->url, sizeof src->url, "%s/%.*s%s", base, (int)(key - bucket), bucket,
                     key);
    } else {
        n = snprintf(src->url, sizeof src->url, "https://%.*s.s3.%s.amazonaws.com%s%s",
                     (int)(key - bucket), bucket, src->region, china ? ".cn" : "", key);
    }
    if (n < 0 || (size_t)n >= sizeof src->url) {
        snprintf(why, whylen, "%s: the object's URL is too long", url);
        return ERR_BAD_URL;
    }
    if (http_url_parse(src->url, &src->where) != 0) {
        snprintf(why, whylen, "%s: not a usable S3 object name", url);
        return ERR_BAD_URL;
    }
    src->s3 = 1;
    return aws_credentials_open(&src->creds, loop, http, stats, why, whylen);
}

/* The request's extra header lines: `conditional` and, for S3, the signature. Returns 0,
 * UV_EAGAIN while the credentials are still being fetched, or another error. */
static int source_headers(const source_t *src, const char *conditional, char *out, size_t n)
{
    int len = snprintf(out, n, "%s", conditional);
    if (!src->s3)
        return 0;
    const aws_creds_t *c = aws_credentials_get(src->creds);
    if (!c)
        return UV_EAGAIN;
    char path[sizeof src->where.path];
    snprintf(path, sizeof path, "%s", src->where.path);
    char *q = strchr(path, '?');
    if (q)
        *q++ = '\0';
    sigv4_request_t r = {
        .method = "GET", .host = src->where.authority, .path = path, .query = q, .flags = SIGV4_S3};
    int signed_len = sigv4_sign(&r, c, src->region, "s3", time(NULL), out + len, n - (size_t)len);
    return signed_len < 0 ? signed_len : 0;
}

static void source_close(source_t *src)
{
    aws_credentials_close(src->creds);
    src->creds = NULL;
}

struct config_url {
    uv_loop_t *loop;
    http_client_t *http;
    source_t src;
    char url[2048];
    uint64_t poll_ms;
    stat_t *counters;
    config_url_apply_cb apply;
    void *arg;
    config_url_validators_t seen; /* of the document in force */
    uv_timer_t timer;
    http_call_t *call;
    unsigned failures;
    uint64_t rng;
};

/* A field's value copied into `out` when present and short enough; else `out` is emptied. */
static void keep_field(const http_response_t *r, const char *name, char *out)
{
    const char *v = http_field(r, name);
    if (v && strlen(v) < VALIDATOR_MAX && !strpbrk(v, "\r\n"))
        snprintf(out, VALIDATOR_MAX, "%s", v);
    else
        out[0] = '\0';
}

static void poll_url(config_url_t *u);

static void on_timer(uv_timer_t *t)
{
    poll_url(t->data);
}

static void schedule(config_url_t *u, int failed)
{
    uint64_t ms = u->poll_ms;
    if (failed) {
        uint64_t back = backoff_ms(FIRST_BACKOFF_MS, u->failures, CONFIG_URL_MAX_BACKOFF_MS);
        if (back > ms)
            ms = back;
    }
    uv_timer_start(&u->timer, on_timer, jitter_tenth(&u->rng, ms), 0);
}

static void digest(const http_response_t *r, unsigned char out[32])
{
    SHA256((const unsigned char *)(r->body ? r->body : ""), r->body_len, out);
}

/* The validators of the response; its digest too when its body is what is now in force. */
static void keep_validators(const http_response_t *r, config_url_validators_t *v, int applied)
{
    keep_field(r, "etag", v->etag);
    keep_field(r, "last-modified", v->last_modified);
    keep_field(r, "configuration-version", v->version);
    if (applied) {
        digest(r, v->digest);
        v->has_digest = 1;
    }
}

static enum config_url_result take_document(config_url_t *u, const http_response_t *r)
{
    const char *version = http_field(r, "configuration-version");
    unsigned char d[32];
    digest(r, d);
    enum config_url_result res;
    if ((version && !strcmp(version, u->seen.version)) ||
        (u->seen.has_digest && memcmp(d, u->seen.digest, sizeof d) == 0))
        res = CONFIG_URL_NOT_MODIFIED;
    else
        res = u->apply(u->arg, r->body ? r->body : "", r->body_len);
    if (res != CONFIG_URL_INVALID)
        keep_validators(r, &u->seen, res == CONFIG_URL_CHANGED);
    return res;
}

static void on_reply(void *arg, const http_response_t *r)
{
    config_url_t *u = arg;
    u->call = NULL;
    enum config_url_result res;
    if (r->err) {
        log_warn("config: %s: %s; keeping the config in force", u->url, err_str(r->err));
        res = CONFIG_URL_ERROR;
    } else if (r->status == 304) {
        if (http_field(r, "etag"))
            keep_field(r, "etag", u->seen.etag); /* RFC 9110 §15.4.5: a 304 carries the ETag */
        res = CONFIG_URL_NOT_MODIFIED;
    } else if (r->status == 200) {
        res = take_document(u, r);
    } else {
        log_warn("config: %s: HTTP %d; keeping the config in force", u->url, r->status);
        res = CONFIG_URL_ERROR;
    }
    stat_inc(&u->counters[res]);
    /* A server that fails is given time; a bad document is asked for again at the interval,
     * since the fix is one upload away. */
    int failed = res == CONFIG_URL_ERROR;
    u->failures = failed ? u->failures + 1 : 0;
    schedule(u, failed);
}

static void poll_url(config_url_t *u)
{
    if (u->call)
        return;
    char conditional[VALIDATOR_MAX + 64] = "", headers[8192];
    if (u->seen.etag[0])
        snprintf(conditional, sizeof conditional, "If-None-Match: %s\r\n", u->seen.etag);
    else if (u->seen.last_modified[0])
        snprintf(conditional, sizeof conditional, "If-Modified-Since: %s\r\n",
                 u->seen.last_modified);
    int err = source_headers(&u->src, conditional, headers, sizeof headers);
    if (err) {
        if (err != UV_EAGAIN)
            log_warn("config: %s: cannot sign the request: %s", u->url, err_str(err));
        stat_inc(&u->counters[CONFIG_URL_ERROR]);
        u->failures++;
        schedule(u, 1);
        return;
    }
    http_request_t rq = {.method = "GET",
                         .url = u->src.url,
                         .headers = headers,
                         .max_body = CONFIG_URL_MAX_BODY,
                         .timeout_ms = CONFIG_URL_TIMEOUT_MS};
    u->call = http_fetch(u->http, &rq, on_reply, u);
    if (!u->call) {
        stat_inc(&u->counters[CONFIG_URL_ERROR]);
        u->failures++;
        schedule(u, 1);
    }
}

int config_url_open(config_url_t **out, uv_loop_t *loop, const char *url, uint64_t poll_ms,
                    const config_url_validators_t *seen, stat_t *counters,
                    aws_credentials_stats_t creds_stats, config_url_apply_cb apply, void *arg)
{
    config_url_t *u = calloc(1, sizeof *u);
    if (!u)
        return UV_ENOMEM;
    char why[512];
    int err = http_client_open(&u->http, loop);
    if (!err && (err = source_open(&u->src, loop, u->http, url, creds_stats, why, sizeof why)))
        log_error("config: %s", why);
    if (err) {
        http_client_close(u->http);
        free(u);
        return err;
    }
    u->loop = loop;
    if (seen)
        u->seen = *seen;
    snprintf(u->url, sizeof u->url, "%s", url);
    u->poll_ms = poll_ms;
    u->counters = counters;
    u->apply = apply;
    u->arg = arg;
    u->rng = uv_hrtime() | 1;
    uv_timer_init(loop, &u->timer);
    u->timer.data = u;
    uv_timer_start(&u->timer, on_timer, jitter_tenth(&u->rng, poll_ms), 0);
    *out = u;
    return 0;
}

void config_url_poll_now(config_url_t *u)
{
    if (u && !u->call)
        uv_timer_start(&u->timer, on_timer, 0, 0);
}

static void on_closed(uv_handle_t *h)
{
    free(h->data);
}

void config_url_close(config_url_t *u)
{
    if (!u)
        return;
    source_close(&u->src);
    http_client_close(u->http); /* cancels the poll in flight */
    uv_close((uv_handle_t *)&u->timer, on_closed);
}

/* ---- start-up ---- */

typedef struct loader {
    uv_loop_t loop;
    http_client_t *http;
    source_t src;
    stat_t creds_ok, creds_failed;
    uv_timer_t timer;
    uv_signal_t term, intr;
    const char *url;
    int retry, done;
    unsigned failures;
    diag_t *d;
    config_t *cfg;
    config_url_validators_t *seen;
} loader_t;

static void loader_fetch(loader_t *l);

static void loader_finish(loader_t *l)
{
    l->done = 1;
    source_close(&l->src);
    uv_close((uv_handle_t *)&l->timer, NULL);
    uv_close((uv_handle_t *)&l->term, NULL);
    uv_close((uv_handle_t *)&l->intr, NULL);
    http_client_close(l->http);
}

static void on_loader_timer(uv_timer_t *t)
{
    loader_fetch(t->data);
}

/* A failed attempt: the end (no retry: `d` is the caller's), or logged and tried again (`d`
 * is the attempt's own). */
static void loader_failed(loader_t *l, diag_t *d)
{
    if (!l->retry) {
        loader_finish(l); /* `d` is the caller's */
        return;
    }
    l->failures++;
    uint64_t ms = backoff_ms(FIRST_BACKOFF_MS, l->failures, LOADER_MAX_BACKOFF_MS);
    for (size_t i = 0; i < d->n; i++)
        log_warn("%s", d->lines[i]);
    log_warn("config: no valid document from %s yet; trying again in %llu ms", l->url,
             (unsigned long long)ms);
    diag_free(d);
    uv_timer_start(&l->timer, on_loader_timer, ms, 0);
}

static void on_loader_reply(void *arg, const http_response_t *r)
{
    loader_t *l = arg;
    diag_t own = {0}, *d = l->retry ? &own : l->d;
    if (r->err)
        diag_add(d, l->url, "$", "cannot fetch: %s", err_str(r->err));
    else if (r->status != 200)
        diag_add(d, l->url, "$", "cannot fetch: HTTP %d", r->status);
    else if ((l->cfg = config_parse(r->body ? r->body : "", r->body_len, l->url, d)) != NULL) {
        if (l->seen)
            keep_validators(r, l->seen, 1);
        loader_finish(l);
        return;
    }
    loader_failed(l, d);
}

static void loader_fetch(loader_t *l)
{
    char headers[8192];
    int err = source_headers(&l->src, "", headers, sizeof headers);
    if (err == UV_EAGAIN && stat_get(&l->creds_failed) == 0) {
        uv_timer_start(&l->timer, on_loader_timer, 50, 0); /* credentials on their way */
        return;
    }
    if (err) {
        diag_t own = {0}, *d = l->retry ? &own : l->d;
        diag_add(d, l->url, "$", "cannot sign the request: %s",
                 err == UV_EAGAIN ? "no credentials from the container endpoint" : err_str(err));
        loader_failed(l, d);
        return;
    }
    http_request_t rq = {.method = "GET",
                         .url = l->src.url,
                         .headers = headers,
                         .max_body = CONFIG_URL_MAX_BODY,
                         .timeout_ms = CONFIG_URL_TIMEOUT_MS};
    if (!http_fetch(l->http, &rq, on_loader_reply, l)) {
        diag_t own = {0}, *d = l->retry ? &own : l->d;
        diag_add(d, l->url, "$", "cannot fetch: out of memory");
        loader_failed(l, d);
    }
}

static void on_loader_signal(uv_signal_t *h, int signum)
{
    loader_t *l = h->data;
    log_info("config: stopped by signal %d before a valid document arrived from %s", signum,
             l->url);
    loader_finish(l);
}

config_t *config_url_load(const char *url, int retry, config_url_validators_t *seen, diag_t *d)
{
    loader_t l = {.url = url, .retry = retry, .d = d, .seen = seen};
    if (uv_loop_init(&l.loop) != 0 || http_client_open(&l.http, &l.loop) != 0) {
        diag_add(d, url, "$", "cannot fetch: out of memory");
        return NULL;
    }
    uv_timer_init(&l.loop, &l.timer);
    uv_signal_init(&l.loop, &l.term);
    uv_signal_init(&l.loop, &l.intr);
    l.timer.data = l.term.data = l.intr.data = &l;
    uv_signal_start(&l.term, on_loader_signal, SIGTERM);
    uv_signal_start(&l.intr, on_loader_signal, SIGINT);
    char why[512];
    aws_credentials_stats_t stats = {&l.creds_ok, &l.creds_failed};
    if (source_open(&l.src, &l.loop, l.http, url, stats, why, sizeof why) != 0) {
        diag_add(d, url, "$", "%s", why);
        loader_finish(&l);
    } else {
        loader_fetch(&l);
    }
    uv_run(&l.loop, UV_RUN_DEFAULT);
    uv_loop_close(&l.loop);
    return l.cfg;
}
