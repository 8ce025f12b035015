#include "tracing/xray.h"

#include <ctype.h>
#include <errno.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "base/number.h"

#define XRAY_HEADER "{\"format\":\"json\",\"version\":1}\n"

typedef struct reservoir {
    _Atomic uint64_t second;
    _Atomic unsigned used;
} reservoir_t;

typedef struct rule {
    char *host, *method, *path; /* NULL in the default rule: match anything */
    unsigned fixed_target;
    double rate;
    reservoir_t reservoir;
} rule_t;

struct xray {
    xray_settings_t set;
    struct sockaddr_storage daemon;
    socklen_t daemon_len;
    rule_t dflt;
    rule_t *rules;
    unsigned nrules;
    xray_stats_t stats;
};

/* ---- settings ---- */

/* Splits `spec` ("host:port", "[v6]:port", or "tcp:h:p udp:h:p" in either order) into `buf`:
 * `*host` and `*port` point into it. Returns NULL, or what is wrong with `spec`. */
static const char *split_daemon(const char *spec, char *buf, size_t cap, char **host, char **port)
{
    if (strlen(spec) >= cap)
        return "is too long";
    snprintf(buf, cap, "%s", spec);
    char *addr = buf, *udp = strstr(buf, "udp:");
    if (udp) {
        addr = udp + 4;
        char *space = strchr(addr, ' ');
        if (space)
            *space = '\0';
    } else if (strstr(buf, "tcp:")) {
        return "needs a udp:HOST:PORT part";
    }
    char *colon = strrchr(addr, ':');
    if (!colon || colon == addr)
        return "expected HOST:PORT";
    *colon = '\0';
    char *h = addr, *p = colon + 1;
    if (h[0] == '[' && colon[-1] == ']') {
        h++;
        colon[-1] = '\0';
    }
    /* getaddrinfo takes "99999" and sends to port 99999 % 65536: only 1..65535, digits only. */
    if (!*h || port_parse(p, strlen(p)) < 0)
        return "expected HOST:PORT with a port of 1..65535";
    *host = h;
    *port = p;
    return NULL;
}

const char *xray_daemon_check(const char *spec)
{
    char buf[sizeof((xray_settings_t *)0)->daemon], *host, *port;
    return split_daemon(spec, buf, sizeof buf, &host, &port);
}

/* The UDP address of the daemon, resolved now. */
static int resolve_daemon(xray_t *x, const char *spec, diag_t *d)
{
    char buf[sizeof x->set.daemon], *host, *port;
    const char *bad = split_daemon(spec, buf, sizeof buf, &host, &port);
    if (bad) {
        diag_add(d, "settings", "AWS_XRAY_DAEMON_ADDRESS", "%s, got \"%s\"", bad, spec);
        return -1;
    }
    struct addrinfo hints = {.ai_socktype = SOCK_DGRAM}, *res = NULL;
    int rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0) {
        diag_add(d, "settings", "AWS_XRAY_DAEMON_ADDRESS", "cannot resolve \"%s\": %s", spec,
                 gai_strerror(rc));
        return -1;
    }
    memcpy(&x->daemon, res->ai_addr, res->ai_addrlen);
    x->daemon_len = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

static char *dup_or_null(const char *s)
{
    return s && *s ? strdup(s) : NULL;
}

xray_t *xray_new(const xray_settings_t *s, diag_t *d)
{
    xray_t *x = calloc(1, sizeof *x);
    if (!x)
        return NULL;
    x->set = *s;
    x->dflt = (rule_t){.fixed_target = 1, .rate = s->rate};
    if (resolve_daemon(x, s->daemon, d) != 0) {
        xray_free(x);
        return NULL;
    }
    if (s->manifest[0]) {
        sampling_rules_cfg_t cfg;
        if (sampling_rules_load(s->manifest, &cfg, d) != 0) {
            xray_free(x);
            return NULL;
        }
        x->dflt = (rule_t){.fixed_target = cfg.dflt.fixed_target, .rate = cfg.dflt.rate};
        x->rules = calloc(cfg.n ? cfg.n : 1, sizeof *x->rules);
        for (unsigned i = 0; x->rules && i < cfg.n; i++) {
            const sampling_rule_cfg_t *r = &cfg.rules[i];
            x->rules[x->nrules++] = (rule_t){dup_or_null(r->host),
                                             dup_or_null(r->method),
                                             dup_or_null(r->path),
                                             r->fixed_target,
                                             r->rate,
                                             {0, 0}};
        }
        sampling_rules_free(&cfg);
    }
    return x;
}

void xray_free(xray_t *x)
{
    if (!x)
        return;
    for (unsigned i = 0; i < x->nrules; i++) {
        free(x->rules[i].host);
        free(x->rules[i].method);
        free(x->rules[i].path);
    }
    free(x->rules);
    free(x);
}

xray_stats_t *xray_stats(xray_t *x)
{
    return &x->stats;
}

/* ---- per worker: socket, buffer, randomness ---- */

int xray_emitter_open(xray_t *x, xray_emitter_t *e)
{
    memset(e, 0, sizeof *e);
    e->rnd_used = sizeof e->rnd;
    e->buf = malloc(XRAY_DOC_MAX + 256);
    e->fd = socket(x->daemon.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (!e->buf || e->fd < 0 || connect(e->fd, (struct sockaddr *)&x->daemon, x->daemon_len) != 0) {
        int err = -errno;
        xray_emitter_close(e);
        return err ? err : -ENOMEM;
    }
    return 0;
}

void xray_emitter_close(xray_emitter_t *e)
{
    if (e->fd > 0)
        close(e->fd);
    e->fd = -1;
    free(e->buf);
    e->buf = NULL;
}

/* Ids are visible to clients (and trace ids end up in logs): they come from getrandom. */
static void random_bytes(xray_emitter_t *e, unsigned char *out, size_t n)
{
    if (e->rnd_used + n > sizeof e->rnd) {
        if (getrandom(e->rnd, sizeof e->rnd, 0) != (ssize_t)sizeof e->rnd) {
            for (size_t i = 0; i < sizeof e->rnd; i++) /* never expected; still not constant */
                e->rnd[i] ^= (unsigned char)(clock() + (clock_t)i * 131);
        }
        e->rnd_used = 0;
    }
    memcpy(out, e->rnd + e->rnd_used, n);
    e->rnd_used += (unsigned)n;
}

static void hex(const unsigned char *in, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
    out[2 * n] = '\0';
}

static void new_span_id(xray_emitter_t *e, char out[SPAN_ID_LEN + 1])
{
    unsigned char b[8];
    random_bytes(e, b, sizeof b);
    hex(b, sizeof b, out);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)(ts.tv_nsec / 1000) / 1e6;
}

static void new_trace_id(xray_emitter_t *e, char out[TRACE_ID_LEN + 1])
{
    unsigned char b[12];
    random_bytes(e, b, sizeof b);
    snprintf(out, 12, "1-%08x-", (unsigned)time(NULL));
    hex(b, sizeof b, out + 11);
}

/* ---- sampling ---- */

/* Glob with '*' and '?', case-insensitive (as the SDKs' wildcardMatch). */
static int glob(const char *pat, const char *s, size_t n)
{
    const char *star = NULL;
    size_t i = 0, mark = 0;
    while (i < n) {
        if (*pat == '*') {
            star = pat++;
            mark = i;
        } else if (*pat &&
                   (*pat == '?' || tolower((unsigned char)*pat) == tolower((unsigned char)s[i]))) {
            pat++;
            i++;
        } else if (star) {
            pat = star + 1;
            i = ++mark;
        } else {
            return 0;
        }
    }
    while (*pat == '*')
        pat++;
    return *pat == '\0';
}

static int take(reservoir_t *r, unsigned target, uint64_t second)
{
    if (!target)
        return 0;
    uint64_t seen = atomic_load(&r->second);
    if (seen != second && atomic_compare_exchange_strong(&r->second, &seen, second))
        atomic_store(&r->used, 0);
    return atomic_fetch_add(&r->used, 1) < target;
}

static rule_t *match_rule(xray_t *x, const char *host, size_t host_len, const char *method,
                          const char *path, size_t path_len)
{
    for (unsigned i = 0; i < x->nrules; i++) {
        rule_t *r = &x->rules[i];
        if ((!r->host || glob(r->host, host, host_len)) &&
            (!r->method || glob(r->method, method, strlen(method))) &&
            (!r->path || glob(r->path, path, path_len)))
            return r;
    }
    return &x->dflt;
}

int xray_sample(xray_t *x, const char *host, size_t host_len, const char *method, const char *path,
                size_t path_len, uint64_t now_s_, double u)
{
    rule_t *r = match_rule(x, host, host_len, method, path, path_len);
    return take(&r->reservoir, r->fixed_target, now_s_) || u < r->rate;
}

/* ---- the request's life ---- */

void xray_begin(xray_t *x, xray_emitter_t *e, xray_ctx_t *ctx, int egress, const char *header,
                size_t header_len, const char *host, size_t host_len, const char *method,
                const char *path, size_t path_len)
{
    trace_header_t in;
    trace_header_parse(header ? header : "", header ? header_len : 0, &in);
    /* Only what every request needs; attempts are recorded only for sampled requests. */
    ctx->nattempts = 0;
    ctx->attempts = NULL;
    ctx->egress = egress;
    ctx->start = now_s();
    if (in.root[0])
        memcpy(ctx->trace_id, in.root, sizeof ctx->trace_id);
    else
        new_trace_id(e, ctx->trace_id);
    memcpy(ctx->parent, in.parent, sizeof ctx->parent);
    memcpy(ctx->extra, in.extra, sizeof ctx->extra);
    ctx->continued = in.root[0] && in.parent[0];
    new_span_id(e, ctx->id);
    if (in.sampled == SAMPLED_YES || in.sampled == SAMPLED_NO) {
        ctx->sampled = in.sampled == SAMPLED_YES;
    } else {
        unsigned char b[4];
        random_bytes(e, b, sizeof b);
        double u =
            (double)((uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3]) /
            4294967296.0;
        ctx->sampled =
            xray_sample(x, host, host_len, method, path, path_len, (uint64_t)time(NULL), u);
    }
    if (ctx->sampled && !(ctx->attempts = malloc(XRAY_MAX_ATTEMPTS * sizeof *ctx->attempts)))
        ctx->sampled = 0; /* no memory to record it: the request still goes, untraced */
    stat_inc(ctx->sampled ? &x->stats.sampled : &x->stats.unsampled);
}

size_t xray_outgoing(const xray_ctx_t *ctx, char *out, size_t cap)
{
    return trace_header_format(ctx->trace_id, ctx->id, ctx->sampled, ctx->extra, out, cap);
}

void xray_attempt_start(xray_emitter_t *e, xray_ctx_t *ctx, const char *endpoint)
{
    if (!ctx->sampled || ctx->nattempts == XRAY_MAX_ATTEMPTS)
        return;
    xray_attempt_t *a = &ctx->attempts[ctx->nattempts++];
    memset(a, 0, sizeof *a);
    new_span_id(e, a->id);
    a->start = now_s();
    snprintf(a->endpoint, sizeof a->endpoint, "%s", endpoint);
}

void xray_attempt_end(xray_ctx_t *ctx, int status)
{
    if (!ctx->sampled || ctx->nattempts == 0)
        return;
    xray_attempt_t *a = &ctx->attempts[ctx->nattempts - 1];
    if (a->end == 0) {
        a->end = now_s();
        a->status = status;
    }
}

/* ---- documents ---- */

/* Appends a string literal (its length known at compile time). */
#define JW(w, lit) jw_raw((w), (lit), sizeof(lit) - 1)

typedef struct jw {
    char *buf;
    size_t len, cap;
} jw_t;

static void jw_raw(jw_t *w, const char *s, size_t n)
{
    if (w->len + n < w->cap)
        memcpy(w->buf + w->len, s, n);
    w->len += n;
}

static void jw_fmt(jw_t *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void jw_fmt(jw_t *w, const char *fmt, ...)
{
    char tmp[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    jw_raw(w, tmp, n < 0 ? 0 : (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* A JSON string, escaped, at most `max` bytes of the value (X-Ray's 250-character fields). */
static void jw_str(jw_t *w, const char *s, size_t n, size_t max)
{
    if (n > max)
        n = max;
    JW(w, "\"");
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            char esc[2] = {'\\', (char)c};
            jw_raw(w, esc, 2);
        } else if (c < 0x20 || c == 0x7f) {
            jw_fmt(w, "\\u%04x", c);
        } else {
            jw_raw(w, (const char *)&c, 1);
        }
    }
    JW(w, "\"");
}

static void jw_cstr(jw_t *w, const char *s)
{
    jw_str(w, s, strlen(s), 250);
}

/* X-Ray names: letters, digits, whitespace and _ . : / % & # = + \ - @, at most 200 characters;
 * anything else becomes '_'. Bytes of UTF-8 sequences pass (they encode letters). */
static void jw_name(jw_t *w, const char *s, size_t n)
{
    char clean[XRAY_NAME_MAX + 1];
    size_t len = 0;
    for (size_t i = 0; i < n && len < XRAY_NAME_MAX; i++) {
        unsigned char c = (unsigned char)s[i];
        int ok = isalnum(c) || c == ' ' || c >= 0x80 || strchr("_.:/%&#=+\\-@", c);
        clean[len++] = ok && c ? (char)c : '_';
    }
    if (len == 0)
        clean[len++] = '_';
    jw_str(w, clean, len, XRAY_NAME_MAX);
}

static void jw_flags(jw_t *w, int status)
{
    if (status >= 400 && status < 500)
        JW(w, ",\"error\":true");
    if (status == 429)
        JW(w, ",\"throttle\":true");
    if (status >= 500 || status == 0)
        JW(w, ",\"fault\":true");
}

static void jw_times(jw_t *w, double start, double end)
{
    jw_fmt(w, ",\"start_time\":%.6f,\"end_time\":%.6f", start, end < start ? start : end);
}

static void jw_url(jw_t *w, const xray_request_t *r)
{
    char url[512];
    int n = snprintf(url, sizeof url, "%s://%.*s%.*s%s%.*s", r->secure ? "https" : "http",
                     (int)(r->host_len > 200 ? 200 : r->host_len), r->host ? r->host : "",
                     (int)(r->path_len > 250 ? 250 : r->path_len), r->path ? r->path : "",
                     r->query ? "?" : "", (int)(r->query_len > 50 ? 50 : r->query_len),
                     r->query ? r->query : "");
    JW(w, "\"url\":");
    jw_str(w, url, n < 0 ? 0 : (size_t)n, 250);
}

static void jw_response(jw_t *w, const xray_request_t *r)
{
    if (!r->status)
        return;
    jw_fmt(w, ",\"response\":{\"status\":%d", r->status);
    if (r->content_length >= 0)
        jw_fmt(w, ",\"content_length\":%lld", (long long)r->content_length);
    JW(w, "}");
}

/* The parts every segment (not subsegment) carries: origin and the App Mesh names. */
static void jw_segment_fields(jw_t *w, xray_t *x)
{
    JW(w, ",\"origin\":\"AWS::AppMesh::Proxy\",\"aws\":{\"app_mesh\":{\"mesh_name\":");
    jw_cstr(w, x->set.mesh);
    JW(w, ",\"virtual_node_name\":");
    jw_cstr(w, x->set.node);
    JW(w, "},\"xray\":{\"sdk\":\"remora\"}}");
}

static void send_doc(xray_t *x, xray_emitter_t *e, const jw_t *w)
{
    if (w->len >= w->cap) {
        stat_inc(&x->stats.send_failed); /* larger than one datagram even after splitting */
        return;
    }
    if (send(e->fd, w->buf, w->len, MSG_DONTWAIT | MSG_NOSIGNAL) < 0)
        stat_inc(&x->stats.send_failed);
    else
        stat_inc(&x->stats.sent);
}

static void begin_doc(jw_t *w, xray_emitter_t *e)
{
    *w = (jw_t){e->buf, 0, XRAY_DOC_MAX};
    jw_raw(w, XRAY_HEADER, sizeof XRAY_HEADER - 1);
}

static void ingress_segment(xray_t *x, xray_emitter_t *e, xray_ctx_t *c, const xray_request_t *r)
{
    jw_t w;
    begin_doc(&w, e);
    JW(&w, "{\"name\":");
    jw_name(&w, x->set.segment_name, strlen(x->set.segment_name));
    jw_fmt(&w, ",\"id\":\"%s\",\"trace_id\":\"%s\"", c->id, c->trace_id);
    if (c->parent[0])
        jw_fmt(&w, ",\"parent_id\":\"%s\"", c->parent);
    jw_times(&w, c->start, now_s());
    jw_segment_fields(&w, x);
    JW(&w, ",\"http\":{\"request\":{\"method\":");
    jw_cstr(&w, r->method);
    JW(&w, ",");
    jw_url(&w, r);
    if (r->user_agent) {
        JW(&w, ",\"user_agent\":");
        jw_str(&w, r->user_agent, r->user_agent_len, 250);
    }
    JW(&w, ",\"client_ip\":");
    jw_cstr(&w, r->client_ip);
    if (r->client_ip_from_xff)
        JW(&w, ",\"x_forwarded_for\":true");
    JW(&w, "}");
    jw_response(&w, r);
    JW(&w, "}");
    jw_flags(&w, r->status);
    JW(&w, ",\"annotations\":{\"direction\":\"ingress\"}}");
    send_doc(x, e, &w);
}

static void attempt_json(jw_t *w, const xray_ctx_t *c, const xray_attempt_t *a, unsigned n,
                         const xray_request_t *r, int standalone)
{
    JW(w, "{\"name\":");
    jw_name(w, r->service, strlen(r->service));
    jw_fmt(w, ",\"id\":\"%s\"", a->id);
    if (standalone)
        jw_fmt(w, ",\"type\":\"subsegment\",\"trace_id\":\"%s\",\"parent_id\":\"%s\"", c->trace_id,
               c->id);
    jw_times(w, a->start, a->end ? a->end : now_s());
    JW(w, ",\"namespace\":\"remote\"");
    if (a->status)
        jw_fmt(w, ",\"http\":{\"response\":{\"status\":%d}}", a->status);
    jw_flags(w, a->status);
    jw_fmt(w, ",\"annotations\":{\"attempt\":%u,\"endpoint\":", n);
    jw_cstr(w, a->endpoint);
    JW(w, "}}");
}

/* The egress subsegment; with its attempts embedded unless `children` is 0. */
static void egress_subsegment(jw_t *w, xray_ctx_t *c, const xray_request_t *r, int standalone,
                              int children)
{
    JW(w, "{\"name\":");
    jw_name(w, r->service, strlen(r->service));
    jw_fmt(w, ",\"id\":\"%s\"", c->id);
    if (standalone)
        jw_fmt(w, ",\"type\":\"subsegment\",\"trace_id\":\"%s\",\"parent_id\":\"%s\"", c->trace_id,
               c->parent);
    jw_times(w, c->start, now_s());
    JW(w, ",\"namespace\":\"remote\",\"http\":{\"request\":{\"method\":");
    jw_cstr(w, r->method);
    JW(w, ",");
    jw_url(w, r);
    JW(w, ",\"traced\":true}");
    jw_response(w, r);
    JW(w, "}");
    jw_flags(w, r->status);
    jw_fmt(w, ",\"annotations\":{\"direction\":\"egress\",\"attempts\":%u", c->nattempts);
    if (r->rollout) { /* X-Ray annotation values: strings, numbers, booleans */
        JW(w, ",\"rollout\":");
        jw_cstr(w, r->rollout);
        jw_fmt(w, ",\"rollout_canary_weight\":%u", r->rollout_weight);
    }
    JW(w, "}");
    if (children && c->nattempts) {
        JW(w, ",\"subsegments\":[");
        for (unsigned i = 0; i < c->nattempts; i++) {
            if (i)
                JW(w, ",");
            attempt_json(w, c, &c->attempts[i], i + 1, r, 0);
        }
        JW(w, "]");
    }
    JW(w, "}");
}

static void egress_docs(xray_t *x, xray_emitter_t *e, xray_ctx_t *c, const xray_request_t *r,
                        int children)
{
    jw_t w;
    begin_doc(&w, e);
    if (c->continued) {
        egress_subsegment(&w, c, r, 1, children);
    } else {
        char seg_id[SPAN_ID_LEN + 1];
        new_span_id(e, seg_id);
        /* A new trace: the subsegment lives in a segment of ours, which it names as parent. */
        memcpy(c->parent, seg_id, sizeof c->parent);
        JW(&w, "{\"name\":");
        jw_name(&w, x->set.segment_name, strlen(x->set.segment_name));
        jw_fmt(&w, ",\"id\":\"%s\",\"trace_id\":\"%s\"", seg_id, c->trace_id);
        jw_times(&w, c->start, now_s());
        jw_segment_fields(&w, x);
        jw_flags(&w, r->status);
        JW(&w, ",\"subsegments\":[");
        egress_subsegment(&w, c, r, 0, children);
        JW(&w, "]}");
    }
    if (w.len >= w.cap && children) {
        /* Too big for one datagram: the attempts go as documents of their own. */
        stat_inc(&x->stats.split);
        egress_docs(x, e, c, r, 0);
        for (unsigned i = 0; i < c->nattempts; i++) {
            begin_doc(&w, e);
            attempt_json(&w, c, &c->attempts[i], i + 1, r, 1);
            send_doc(x, e, &w);
        }
        return;
    }
    send_doc(x, e, &w);
}

void xray_finish(xray_t *x, xray_emitter_t *e, xray_ctx_t *ctx, const xray_request_t *req)
{
    if (ctx->sampled && e->fd >= 0) {
        xray_attempt_end(ctx, 0);
        if (ctx->egress)
            egress_docs(x, e, ctx, req, 1);
        else
            ingress_segment(x, e, ctx, req);
    }
    free(ctx->attempts);
    ctx->attempts = NULL;
}
