#include "discovery/health.h"

#include <openssl/err.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "discovery/health_h2.h"

#define PROBE_BUF 512  /* an http check's status line */
#define PROBE_RAW 4096 /* bytes read at once (ciphertext, when the target's listener has TLS) */

enum probe_kind { PROBE_TCP, PROBE_HTTP, PROBE_HTTP2, PROBE_GRPC };

typedef struct probe probe_t;

/* What a probe says once connected (and through TLS, if any) and how it hears the answer:
 * one per protocol. `alpn`, if set, is the one protocol offered over TLS, and must be chosen
 * (RFC 9113 §3.2: h2 over TLS only by ALPN). */
typedef struct probe_exchange {
    const char *alpn;
    int (*start)(probe_t *p);
    void (*recv)(probe_t *p, const char *data, size_t n); /* plaintext from the target */
    const char *closed;                                   /* why, when the target hangs up */
} probe_exchange_t;

struct health {
    uv_loop_t *loop;
    cluster_t *c;
    uv_timer_t tick;
    enum probe_kind kind;
    char path[1024];
    uint32_t interval_ms, timeout_ms;
    unsigned healthy_threshold, unhealthy_threshold;
    unsigned cursor;
    unsigned probes; /* in flight; the checker is freed after the last */
    int stopping;
};

struct probe {
    health_t *h;
    endpoint_t ep; /* holds a reference on the endpoint's state */
    enum probe_kind kind;
    const probe_exchange_t *x; /* NULL for tcp: the connect is the check */
    uv_tcp_t tcp;
    uv_connect_t connect;
    uv_timer_t timer;
    char buf[PROBE_BUF]; /* http: the response so far */
    size_t got;
    health_h2_t *h2; /* http2, grpc: the session (owned) */
    unsigned open_handles;
    int finished;
    /* Over TLS, as the cluster's requests go (memory BIOs: a probe is one short exchange). */
    tls_ctx_t *tls;
    SSL *ssl;
    int started;
    char raw[PROBE_RAW];
};

typedef struct probe_write {
    uv_write_t req;
    probe_t *p;
    char data[];
} probe_write_t;

static void maybe_free(health_t *h)
{
    if (h->stopping && h->probes == 0 && uv_is_closing((uv_handle_t *)&h->tick))
        free(h);
}

static void on_probe_closed(uv_handle_t *hd)
{
    probe_t *p = hd->data;
    if (--p->open_handles)
        return;
    health_t *h = p->h;
    endpoint_state_unref(p->ep.state);
    health_h2_free(p->h2);
    SSL_free(p->ssl);
    tls_ctx_unref(p->tls);
    free(p);
    h->probes--;
    maybe_free(h);
}

/* Counts the result against the thresholds and closes the probe. */
static void finish(probe_t *p, int ok, const char *why)
{
    if (p->finished)
        return;
    p->finished = 1;
    health_t *h = p->h;
    endpoint_state_t *st = p->ep.state;
    if (!h->stopping && st) {
        stat_inc(&h->c->stats.health_check_attempt);
        if (ok) {
            st->hc_failures = 0;
            if (++st->hc_successes >= h->healthy_threshold && atomic_load(&st->unhealthy)) {
                atomic_store(&st->unhealthy, 0);
                log_info("health: %s %s is healthy again", h->c->name, p->ep.name);
            }
        } else {
            stat_inc(&h->c->stats.health_check_failure);
            st->hc_successes = 0;
            if (++st->hc_failures >= h->unhealthy_threshold && !atomic_load(&st->unhealthy)) {
                atomic_store(&st->unhealthy, 1);
                log_warn("health: %s %s is unhealthy: %s", h->c->name, p->ep.name, why);
            }
        }
    }
    uv_timer_stop(&p->timer);
    uv_close((uv_handle_t *)&p->timer, on_probe_closed);
    uv_close((uv_handle_t *)&p->tcp, on_probe_closed);
}

static void on_probe_timeout(uv_timer_t *t)
{
    finish(t->data, 0, "timed out");
}

static void on_alloc(uv_handle_t *hd, size_t suggested, uv_buf_t *b)
{
    (void)suggested;
    probe_t *p = hd->data;
    *b = uv_buf_init(p->raw, sizeof p->raw);
}

static void on_written(uv_write_t *w, int status)
{
    probe_write_t *pw = (probe_write_t *)w;
    if (status < 0)
        finish(pw->p, 0, "write failed");
    free(pw);
}

static int send_bytes(probe_t *p, const char *data, size_t n)
{
    probe_write_t *pw = malloc(sizeof *pw + n);
    if (!pw)
        return UV_ENOMEM;
    pw->p = p;
    memcpy(pw->data, data, n);
    uv_buf_t b = uv_buf_init(pw->data, (unsigned)n);
    int err = uv_write(&pw->req, (uv_stream_t *)&p->tcp, &b, 1, on_written);
    if (err)
        free(pw);
    return err;
}

/* Plaintext to the target: through TLS when its listener has it. */
static int probe_write(void *ud, const uint8_t *data, size_t n)
{
    probe_t *p = ud;
    size_t done;
    if (!p->ssl)
        return send_bytes(p, (const char *)data, n);
    return SSL_write_ex(p->ssl, data, n, &done) == 1 ? 0 : UV_EPROTO;
}

/* The verdict once the status line is in (or the buffer is full without one). */
static void check_status(probe_t *p)
{
    p->buf[p->got] = '\0';
    char *eol = strstr(p->buf, "\r\n");
    if (!eol && p->got < PROBE_BUF - 1)
        return;
    int status = 0;
    if (sscanf(p->buf, "HTTP/1.%*1d %3d", &status) == 1 && status >= 200 && status <= 399) {
        finish(p, 1, NULL);
        return;
    }
    char why[64];
    snprintf(why, sizeof why, "status %d", status);
    finish(p, 0, why);
}

static int h1_start(probe_t *p)
{
    char req[1200];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: remora-health-check\r\n"
                     "Connection: close\r\n\r\n",
                     p->h->path, p->ep.name);
    return probe_write(p, (const uint8_t *)req, (size_t)n);
}

static void h1_recv(probe_t *p, const char *data, size_t n)
{
    size_t room = PROBE_BUF - 1 - p->got;
    n = n < room ? n : room;
    memcpy(p->buf + p->got, data, n);
    p->got += n;
    check_status(p);
}

static void h2_step(probe_t *p, const char *data, size_t n)
{
    enum health_verdict v = health_h2_step(p->h2, (const uint8_t *)data, n, probe_write, p);
    if (v != HEALTH_PENDING)
        finish(p, v == HEALTH_PASS, health_h2_why(p->h2));
}

static int h2_start(probe_t *p)
{
    enum health_h2_kind k = p->kind == PROBE_GRPC ? HEALTH_H2_GRPC : HEALTH_H2_GET;
    p->h2 = health_h2_new(k, p->ep.name, p->h->path, p->ssl != NULL);
    if (!p->h2)
        return UV_ENOMEM;
    h2_step(p, NULL, 0);
    return 0;
}

static const probe_exchange_t h1_exchange = {
    .start = h1_start, .recv = h1_recv, .closed = "closed before a status line"};
static const probe_exchange_t h2_exchange = {
    .alpn = "h2", .start = h2_start, .recv = h2_step, .closed = "closed before a response"};

/* Connected, and through TLS if any: the exchange begins. */
static void begin(probe_t *p)
{
    const unsigned char *alpn = NULL;
    unsigned len = 0;
    p->started = 1;
    if (p->ssl && p->x->alpn) {
        SSL_get0_alpn_selected(p->ssl, &alpn, &len);
        if (len != strlen(p->x->alpn) || memcmp(alpn, p->x->alpn, len) != 0) {
            finish(p, 0, "ALPN did not choose h2");
            return;
        }
    }
    int err = p->x->start(p);
    if (err)
        finish(p, 0, uv_strerror(err));
}

/* What OpenSSL has to send goes to the socket. */
static int tls_flush(probe_t *p)
{
    char *data;
    long n = BIO_get_mem_data(SSL_get_wbio(p->ssl), &data);
    int err = n > 0 ? send_bytes(p, data, (size_t)n) : 0;
    (void)BIO_reset(SSL_get_wbio(p->ssl));
    return err;
}

/* Handshake, begin the exchange once, hand it what plaintext there is. The ciphertext buffer
 * is free for plaintext: BIO_write has copied what was read. */
static void tls_step(probe_t *p)
{
    ERR_clear_error();
    int rc = SSL_do_handshake(p->ssl);
    if (rc != 1 && SSL_get_error(p->ssl, rc) != SSL_ERROR_WANT_READ) {
        tls_flush(p);
        finish(p, 0, "TLS handshake failed");
        return;
    }
    if (rc == 1 && !p->started)
        begin(p);
    size_t n;
    while (rc == 1 && !p->finished && SSL_read_ex(p->ssl, p->raw, sizeof p->raw, &n) == 1)
        p->x->recv(p, p->raw, n);
    ERR_clear_error();
    if (!p->finished && tls_flush(p) != 0)
        finish(p, 0, "write failed");
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    (void)b;
    probe_t *p = s->data;
    if (n < 0) {
        finish(p, 0, p->x->closed);
        return;
    }
    if (p->ssl) {
        BIO_write(SSL_get_rbio(p->ssl), p->raw, (int)n);
        tls_step(p);
        return;
    }
    p->x->recv(p, p->raw, (size_t)n);
}

/* Replaces the context's offer (http/1.1) with `proto` alone. */
static int offer_alpn(SSL *ssl, const char *proto)
{
    unsigned char wire[16];
    size_t n = strlen(proto);
    wire[0] = (unsigned char)n;
    memcpy(wire + 1, proto, n);
    return SSL_set_alpn_protos(ssl, wire, (unsigned)n + 1) == 0 ? 0 : UV_ENOMEM;
}

static int start_tls(probe_t *p)
{
    BIO *r = BIO_new(BIO_s_mem()), *w = BIO_new(BIO_s_mem());
    p->ssl = r && w ? tls_session_client(p->tls, (const struct sockaddr *)&p->ep.addr) : NULL;
    if (!p->ssl) {
        BIO_free(r);
        BIO_free(w);
        return UV_ENOMEM;
    }
    SSL_set_bio(p->ssl, r, w);
    if (p->x->alpn && offer_alpn(p->ssl, p->x->alpn) != 0)
        return UV_ENOMEM;
    tls_step(p);
    return 0;
}

static void on_connect(uv_connect_t *c, int status)
{
    probe_t *p = c->data;
    if (p->finished)
        return;
    if (status < 0) {
        finish(p, 0, uv_strerror(status));
        return;
    }
    if (!p->x) {
        finish(p, 1, NULL);
        return;
    }
    if (uv_read_start((uv_stream_t *)&p->tcp, on_alloc, on_read) != 0) {
        finish(p, 0, "cannot read");
        return;
    }
    if (!p->tls)
        begin(p);
    else if (start_tls(p) != 0)
        finish(p, 0, "out of memory");
}

static void probe(health_t *h, const endpoint_t *ep)
{
    probe_t *p = calloc(1, sizeof *p);
    if (!p)
        return;
    p->h = h;
    p->ep = *ep;
    p->kind = h->kind;
    p->x = h->kind == PROBE_TCP ? NULL : h->kind == PROBE_HTTP ? &h1_exchange : &h2_exchange;
    p->tls = h->c->health_tls ? tls_ctx_ref(h->c->health_tls) : NULL;
    atomic_fetch_add(&ep->state->refs, 1);
    h->probes++;
    uv_tcp_init(h->loop, &p->tcp);
    uv_timer_init(h->loop, &p->timer);
    p->tcp.data = p->timer.data = p->connect.data = p;
    p->open_handles = 2;
    uv_timer_start(&p->timer, on_probe_timeout, h->timeout_ms, 0);
    if (uv_tcp_connect(&p->connect, &p->tcp, (struct sockaddr *)&p->ep.addr, on_connect) != 0)
        finish(p, 0, "cannot connect");
}

/* One endpoint per tick, so that a cluster's checks are spread over the interval. */
static void on_tick(uv_timer_t *t)
{
    health_t *h = t->data;
    const endpoint_set_t *s = atomic_load(&h->c->set);
    unsigned n = s ? s->n : 0;
    if (n) {
        h->cursor %= n;
        probe(h, &s->eps[h->cursor++]);
    }
    uint64_t next = n > 1 ? h->interval_ms / n : h->interval_ms;
    uv_timer_start(&h->tick, on_tick, next ? next : 1, 0);
}

static enum probe_kind probe_kind(const char *protocol)
{
    static const char *const names[] = {"tcp", "http", "http2", "grpc"}; /* enum probe_kind */
    for (unsigned i = 0; i < sizeof names / sizeof *names; i++)
        if (strcmp(protocol, names[i]) == 0)
            return (enum probe_kind)i;
    return PROBE_TCP;
}

health_t *health_sync(health_t *h, uv_loop_t *loop, cluster_t *c, const cfg_health_check_t *cfg)
{
    if (!cfg) {
        health_stop(h);
        return NULL;
    }
    if (!h) {
        h = calloc(1, sizeof *h);
        if (!h)
            return NULL;
        h->loop = loop;
        h->c = c;
        uv_timer_init(loop, &h->tick);
        h->tick.data = h;
        uv_timer_start(&h->tick, on_tick, 0, 0);
    }
    h->kind = probe_kind(cfg->protocol);
    snprintf(h->path, sizeof h->path, "%s", cfg->path ? cfg->path : "/");
    h->interval_ms = cfg->interval_ms;
    h->timeout_ms = cfg->timeout_ms;
    h->healthy_threshold = cfg->healthy_threshold;
    h->unhealthy_threshold = cfg->unhealthy_threshold;
    return h;
}

static void on_tick_closed(uv_handle_t *hd)
{
    maybe_free(hd->data);
}

void health_stop(health_t *h)
{
    if (!h || h->stopping)
        return;
    h->stopping = 1;
    uv_close((uv_handle_t *)&h->tick, on_tick_closed);
}
