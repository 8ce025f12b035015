/* The codec a new connection is given (h2_server.h, h2_server_accept; docs/http2.md): a TLS
 * connection by the protocol ALPN selected, a plaintext one by the HTTP/2 client preface sent
 * with prior knowledge, compared as it arrives. Until then the connection is a small sniffer
 * in the listener's sniff queue (the header timeout). */
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/h2_server.h"
#include "proxy/transport_tls.h"

#define PREFACE     "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#define PREFACE_LEN 24

struct h2_sniff {
    tq_node_t timeout; /* in cfg->sniff_q */
    h2_server_config_t *cfg;
    conn_t *c;
    h2_sniff_t *next, *prev;
    deferred_t free_d;
    struct sockaddr_storage dst;
    unsigned has_dst : 1, listed : 1;
    unsigned n; /* preface bytes matched so far */
    char got[PREFACE_LEN];
};

static void sniff_unlink(h2_sniff_t *sn)
{
    if (!sn->listed)
        return;
    sn->listed = 0;
    h2_server_config_t *cfg = sn->cfg;
    if (sn->prev)
        sn->prev->next = sn->next;
    else
        cfg->sniffs = sn->next;
    if (sn->next)
        sn->next->prev = sn->prev;
    cfg->nconns--;
    tq_del(&sn->timeout);
}

static void sniff_free(deferred_t *d)
{
    free((char *)d - offsetof(h2_sniff_t, free_d));
}

/* The protocol is known: the connection and every byte read go to its codec. */
static void decide(h2_sniff_t *sn, int h2, buf_t *bytes)
{
    h2_server_config_t *cfg = sn->cfg;
    conn_t *c = sn->c;
    const struct sockaddr *dst = sn->has_dst ? (const struct sockaddr *)&sn->dst : NULL;
    sniff_unlink(sn);
    if (h2) {
        h2_server_start(cfg, c, dst, bytes);
    } else {
        h1_server_start(cfg->h1, c, dst);
        if (c->owner != sn && !c->closing && bytes && bytes->len)
            c->ev->on_read(c->owner, bytes);
    }
    if (c->owner == sn) /* the codec could not start and closed it: our on_closed follows */
        return;
    sn->c = NULL;
    sn->free_d.fn = sniff_free;
    loop_defer(cfg->loop, &sn->free_d); /* not inside the read that is still running */
}

static int alpn_h2(conn_t *c)
{
    unsigned len;
    const unsigned char *p = transport_tls_alpn(c, &len);
    return p && len == 2 && p[0] == 'h' && p[1] == '2';
}

static void sniff_read(void *owner, buf_t *b)
{
    h2_sniff_t *sn = owner;
    int h2;
    if (conn_is_tls(sn->c)) {
        h2 = alpn_h2(sn->c); /* RFC 9113 §3.2: over TLS, only by ALPN */
    } else {
        size_t m = PREFACE_LEN - sn->n < b->len ? PREFACE_LEN - sn->n : b->len;
        h2 = memcmp(b->data, &PREFACE[sn->n], m) == 0;
        if (h2 && sn->n + m < PREFACE_LEN) {
            memcpy(sn->got + sn->n, b->data, m); /* a prefix of the preface so far */
            sn->n += (unsigned)m;
            return;
        }
    }
    buf_t *all = buf_ref(b);
    if (sn->n > 0) { /* the bytes kept, then these */
        buf_unref(all);
        all = buf_new(&sn->c->loop->bufs, sn->n + b->len);
        if (!all) {
            conn_close(sn->c);
            return;
        }
        memcpy(all->data, sn->got, sn->n);
        memcpy(all->data + sn->n, b->data, b->len);
        all->len = sn->n + b->len;
    }
    decide(sn, h2, all);
    buf_unref(all);
}

static void sniff_eof(void *owner, int err)
{
    (void)err;
    h2_sniff_t *sn = owner;
    conn_close(sn->c); /* nothing complete arrived: nothing to answer */
}

static void sniff_closed(void *owner)
{
    h2_sniff_t *sn = owner;
    h2_server_config_t *cfg = sn->cfg;
    sniff_unlink(sn);
    free(sn);
    if (cfg->on_closed)
        cfg->on_closed(cfg->owner);
}

static const conn_events_t sniff_events = {
    .on_read = sniff_read,
    .on_eof = sniff_eof,
    .on_closed = sniff_closed,
};

void h2_server_accept(h2_server_config_t *cfg, conn_t *c, const struct sockaddr *orig_dst)
{
    h2_sniff_t *sn = calloc(1, sizeof *sn);
    if (!sn) {
        conn_close(c);
        return;
    }
    sn->cfg = cfg;
    sn->c = c;
    if (orig_dst) {
        memcpy(&sn->dst, orig_dst,
               orig_dst->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                               : sizeof(struct sockaddr_in));
        sn->has_dst = 1;
    }
    sn->listed = 1;
    sn->next = cfg->sniffs;
    if (cfg->sniffs)
        cfg->sniffs->prev = sn;
    cfg->sniffs = sn;
    cfg->nconns++;
    conn_set_owner(c, &sniff_events, sn);
    tq_add(&cfg->sniff_q, &sn->timeout); /* as h1: the first request from accept */
    conn_read(c, 1);
}

static void on_expired(tq_node_t *n)
{
    h2_sniff_t *sn = (h2_sniff_t *)(void *)((char *)n - offsetof(h2_sniff_t, timeout));
    stat_inc(&sn->cfg->stats->downstream_cx_header_timeout);
    conn_close(sn->c);
}

void h2_sniff_init(h2_server_config_t *cfg, uint64_t header_timeout_ms)
{
    tq_init(&cfg->sniff_q, cfg->loop, header_timeout_ms, on_expired);
}

void h2_sniff_close_all(h2_server_config_t *cfg)
{
    h2_sniff_t *next;
    for (h2_sniff_t *sn = cfg->sniffs; sn; sn = next) {
        next = sn->next;
        if (!sn->c->closing)
            conn_close(sn->c);
    }
}
