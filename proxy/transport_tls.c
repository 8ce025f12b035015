/* TLS over libuv with OpenSSL: ciphertext moves between the socket and the SSL through a
 * BIO of our own, plaintext goes up to conn_on_read and comes down through write.
 *
 * The BIO reads straight from the buffers the socket filled and writes records into pooled
 * buffers that go to the socket as they are (uv_try_write first, then one queued write), so
 * no memory BIO grows and stays grown: with SSL_MODE_RELEASE_BUFFERS an idle connection holds
 * only its SSL object. What a queued write pins is its ciphertext buffers, and that is what
 * the conn's watermarks count.
 *
 * States: SNIFF (PERMISSIVE: the first byte tells TLS, 0x16, from plaintext, which hands the
 * connection to plain TCP) -> HANDSHAKE -> OPEN, or FAILED. The write BIO is drained after
 * every SSL call, reads included (tickets, alerts, key updates). A client reports the
 * connection ready once the handshake is done; a server holds what is written before that. */
#include <openssl/err.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "proxy/conn.h"
#include "proxy/transport_tls.h"

#define IN_MAX      4     /* socket reads queued for OpenSSL */
#define OUT_BUFS    8     /* ciphertext buffers per socket write */
#define RECORD_SIZE 16384 /* plaintext per SSL_write: one full record */

enum tls_state { TS_SNIFF, TS_HANDSHAKE, TS_OPEN, TS_FAILED };

typedef struct tls_conn {
    conn_t *c;
    SSL *ssl;
    tls_ctx_t *ctx;
    ssl_stats_t *stats;
    enum tls_state state;
    buf_t *in[IN_MAX]; /* ciphertext received, not yet read by OpenSSL */
    unsigned nin;
    uint32_t in_off;
    buf_t *out[OUT_BUFS]; /* ciphertext made, not yet handed to the socket */
    unsigned nout;
    size_t loose_pinned;            /* ciphertext queued for no write of conn's (handshakes, alerts,
                                     * close_notify, records made mid-write): conn counts it too */
    wreq_t *pending, *pending_tail; /* plaintext written before the handshake was done */
    deferred_t resume;              /* deliver what is buffered once reading starts again */
    int read_err;                   /* the socket failed (not EOF) */
    int end_owed;         /* the end of the stream (UV_EOF or an error), found and not yet told */
    unsigned deliver : 1; /* the owner wants plaintext */
    unsigned raw_reading : 1;
    unsigned eof : 1;       /* the socket said EOF */
    unsigned read_done : 1; /* the end of the plaintext was told */
    unsigned client : 1;
    unsigned got_bytes : 1; /* the peer sent something (else a failure is no TLS error) */
    unsigned shut_owed : 1; /* shutdown asked for before the handshake was done */
} tls_conn_t;

typedef struct cipher_write {
    uv_write_t req;
    conn_t *c;
    wreq_t *plain; /* the plaintext write this completes, or NULL */
    size_t pinned; /* its buffers' capacity (in loose_pinned when plain is NULL) */
    unsigned n;
    buf_t *bufs[OUT_BUFS];
} cipher_write_t;

static void on_raw_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *ub);
static int send_out(tls_conn_t *t, wreq_t *plain);

/* OpenSSL's error queue must be empty before an SSL call for SSL_get_error to be right;
 * clearing it costs more than many a call, so it is cleared only when something is in it. */
static void clear_errors(void)
{
    if (ERR_peek_error())
        ERR_clear_error();
}

/* ---- the BIO ---- */

static int bio_write(BIO *bio, const char *p, int n)
{
    tls_conn_t *t = BIO_get_data(bio);
    size_t left = (size_t)n;
    while (left > 0) {
        buf_t *o = t->nout ? t->out[t->nout - 1] : NULL;
        if (!o || o->len == o->cap) {
            if (t->nout == OUT_BUFS && send_out(t, NULL) < 0)
                return -1;
            if (!(o = buf_new(&t->c->loop->bufs, BUF_READ_SIZE)))
                return -1;
            t->out[t->nout++] = o;
        }
        size_t k = o->cap - o->len < left ? o->cap - o->len : left;
        memcpy(o->data + o->len, p, k);
        o->len += (uint32_t)k;
        p += k;
        left -= k;
    }
    return n;
}

static int bio_read(BIO *bio, char *p, int n)
{
    tls_conn_t *t = BIO_get_data(bio);
    BIO_clear_retry_flags(bio);
    if (t->nin == 0) {
        if (t->eof || t->read_err)
            return 0;
        BIO_set_retry_read(bio);
        return -1;
    }
    buf_t *in = t->in[0];
    size_t k = in->len - t->in_off < (size_t)n ? in->len - t->in_off : (size_t)n;
    memcpy(p, in->data + t->in_off, k);
    t->in_off += (uint32_t)k;
    if (t->in_off == in->len) {
        buf_unref(in);
        memmove(t->in, t->in + 1, --t->nin * sizeof *t->in);
        t->in_off = 0;
    }
    return (int)k;
}

static long bio_ctrl(BIO *bio, int cmd, long num, void *ptr)
{
    (void)bio;
    (void)num;
    (void)ptr;
    return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static int bio_create(BIO *bio)
{
    BIO_set_init(bio, 1);
    return 1;
}

static BIO_METHOD *bio_method;

static void make_bio_method(void)
{
    bio_method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "remora");
    BIO_meth_set_write(bio_method, bio_write);
    BIO_meth_set_read(bio_method, bio_read);
    BIO_meth_set_ctrl(bio_method, bio_ctrl);
    BIO_meth_set_create(bio_method, bio_create);
}

/* ---- the socket ---- */

static void raw_start(tls_conn_t *t)
{
    if (t->raw_reading || t->eof || t->read_err || t->nin == IN_MAX)
        return;
    if (uv_read_start((uv_stream_t *)&t->c->tcp, conn_alloc_cb, on_raw_read) == 0)
        t->raw_reading = 1;
}

static void raw_stop(tls_conn_t *t)
{
    if (!t->raw_reading)
        return;
    uv_read_stop((uv_stream_t *)&t->c->tcp);
    t->raw_reading = 0;
}

static void drop_out(tls_conn_t *t)
{
    for (unsigned i = 0; i < t->nout; i++)
        buf_unref(t->out[i]);
    t->nout = 0;
}

static void on_cipher_written(uv_write_t *req, int status)
{
    cipher_write_t *w = (cipher_write_t *)req;
    conn_t *c = w->c;
    for (unsigned i = 0; i < w->n; i++)
        buf_unref(w->bufs[i]);
    if (w->plain) {
        conn_on_written(w->plain, status);
    } else if (c->tls) {
        c->tls->loose_pinned -= w->pinned;
        conn_on_progress(c); /* a drain may be owed now: a close_notify out before the close */
    }
    free(w);
}

/* Hand the ciphertext made so far to the socket: 1 when it all went at once, 0 when the rest
 * is queued (conn_on_written(plain) follows, if plain), or a UV_E* code. */
static int send_out(tls_conn_t *t, wreq_t *plain)
{
    if (t->nout == 0)
        return 1;
    uv_stream_t *s = (uv_stream_t *)&t->c->tcp;
    uv_buf_t iov[OUT_BUFS];
    for (unsigned i = 0; i < t->nout; i++)
        iov[i] = uv_buf_init(t->out[i]->data, t->out[i]->len);
    int n = t->c->closing ? UV_ECANCELED : uv_try_write(s, iov, t->nout);
    if (n == UV_EAGAIN)
        n = 0;
    if (n < 0) {
        drop_out(t);
        return n;
    }
    unsigned i = 0;
    size_t sent = (size_t)n;
    while (i < t->nout && sent >= iov[i].len)
        sent -= iov[i++].len;
    cipher_write_t *w = i < t->nout ? malloc(sizeof *w) : NULL;
    if (i < t->nout && !w) {
        drop_out(t);
        return UV_ENOMEM;
    }
    for (unsigned k = 0; k < i; k++)
        buf_unref(t->out[k]);
    if (!w) {
        t->nout = 0;
        return 1;
    }
    iov[i].base += sent;
    iov[i].len -= sent;
    w->c = t->c;
    w->plain = plain;
    w->n = t->nout - i;
    size_t pinned = 0;
    for (unsigned k = 0; k < w->n; k++) {
        w->bufs[k] = t->out[i + k];
        pinned += w->bufs[k]->cap;
    }
    t->nout = 0;
    w->pinned = pinned;
    if (plain)
        plain->pinned = pinned; /* conn counts it until conn_on_written(plain) */
    else
        t->loose_pinned += pinned;
    int err = uv_write(&w->req, s, iov + i, w->n, on_cipher_written);
    if (err < 0) {
        if (plain)
            plain->pinned = 0;
        else
            t->loose_pinned -= pinned;
        for (unsigned k = 0; k < w->n; k++)
            buf_unref(w->bufs[k]);
        free(w);
        return err;
    }
    return 0;
}

/* ---- writing ---- */

static int ssl_write(tls_conn_t *t, const char *p, size_t n)
{
    size_t done;
    clear_errors();
    return SSL_write_ex(t->ssl, p, n, &done) == 1 ? 0 : UV_EPROTO;
}

/* Encrypt r's bytes in full records; its buffers are let go at once (the bytes are copied
 * into records). With `own`, the ciphertext's write completes r (returns as send_out does, for
 * r); without, the ciphertext is the transport's own and r is the caller's to complete. */
static int encrypt(tls_conn_t *t, wreq_t *r, int own)
{
    char stage[RECORD_SIZE];
    size_t staged = 0;
    int err = 0;
    for (unsigned i = 0; i < r->n && !err; i++) {
        const char *p = r->iov[i].base;
        size_t left = r->iov[i].len;
        while (left > 0 && !err) {
            if (staged == 0 && left >= RECORD_SIZE) {
                err = ssl_write(t, p, RECORD_SIZE);
                p += RECORD_SIZE;
                left -= RECORD_SIZE;
                continue;
            }
            size_t k = RECORD_SIZE - staged < left ? RECORD_SIZE - staged : left;
            memcpy(stage + staged, p, k);
            staged += k;
            p += k;
            left -= k;
            if (staged == RECORD_SIZE) {
                err = ssl_write(t, stage, staged);
                staged = 0;
            }
        }
        if (r->ref[i]) {
            buf_unref(r->ref[i]);
            r->ref[i] = NULL;
        }
    }
    if (!err && staged)
        err = ssl_write(t, stage, staged);
    if (err) {
        drop_out(t);
        return err;
    }
    return send_out(t, own ? r : NULL);
}

static int write_(conn_t *c, wreq_t *r)
{
    tls_conn_t *t = c->tls;
    if (t->state == TS_SNIFF || t->state == TS_HANDSHAKE) {
        r->next_free = NULL; /* held: sent once the handshake is done */
        if (t->pending_tail)
            t->pending_tail->next_free = r;
        else
            t->pending = r;
        t->pending_tail = r;
        return 0;
    }
    return t->state == TS_OPEN ? encrypt(t, r, 1) : UV_EPIPE;
}

/* Writes held during the handshake: sent now, in order (status < 0: failed with it). conn
 * counted them as queued, so each is told through conn_on_written; their ciphertext is the
 * transport's to count until it is out. */
static void flush_pending(tls_conn_t *t, int status)
{
    while (t->pending) {
        wreq_t *r = t->pending;
        t->pending = r->next_free;
        int rc = status < 0 ? status : encrypt(t, r, 0);
        conn_on_written(r, rc < 0 ? rc : 0);
    }
    t->pending_tail = NULL;
}

static int shutdown_(conn_t *c)
{
    tls_conn_t *t = c->tls;
    if (t->state == TS_HANDSHAKE || t->state == TS_SNIFF) {
        t->shut_owed = 1;
        return 0;
    }
    if (t->state == TS_OPEN) {
        clear_errors();
        SSL_shutdown(t->ssl); /* close_notify */
        send_out(t, NULL);
    }
    return transport_tcp.shutdown(c);
}

static void close_(conn_t *c)
{
    tls_conn_t *t = c->tls;
    if (t->state != TS_OPEN || (SSL_get_shutdown(t->ssl) & SSL_SENT_SHUTDOWN))
        return;
    clear_errors();
    SSL_shutdown(t->ssl);
    send_out(t, NULL);
}

/* ---- reading ---- */

static void end_of_plaintext(tls_conn_t *t, int err)
{
    t->read_done = 1;
    raw_stop(t);
    conn_on_read(t->c, err, NULL);
}

/* What an SSL_read failure means for the owner: close_notify, or the socket ended without one,
 * is the end of the stream (HTTP framing tells a truncated message); anything else is a broken
 * connection. Read before the error queue changes. */
static int end_code(tls_conn_t *t, int e)
{
    unsigned long why = ERR_peek_error();
    int eof =
        e == SSL_ERROR_ZERO_RETURN ||
        (t->eof && !t->read_err &&
         (e == SSL_ERROR_SYSCALL || ERR_GET_REASON(why) == SSL_R_UNEXPECTED_EOF_WHILE_READING));
    ERR_clear_error();
    return eof ? UV_EOF : t->read_err ? t->read_err : UV_EPROTO;
}

/* Plaintext up to the owner while it wants it and there is some; the end is told once the
 * owner reads again if it paused in between. */
static void read_plain(tls_conn_t *t)
{
    conn_t *c = t->c;
    while (t->deliver && !c->closing && !t->read_done && !t->end_owed) {
        if (!t->nin && !SSL_has_pending(t->ssl) && !t->eof && !t->read_err)
            break;
        buf_t *b = buf_new(&c->loop->bufs, BUF_READ_SIZE);
        if (!b) {
            end_of_plaintext(t, UV_ENOMEM);
            return;
        }
        size_t got = 0, cap = b->cap, n;
        int e = SSL_ERROR_NONE;
        for (;;) {
            clear_errors();
            if (got == cap || SSL_read_ex(t->ssl, b->data + got, cap - got, &n) != 1)
                break;
            got += n;
            if (!t->nin && !SSL_has_pending(t->ssl) && !t->eof && !t->read_err) {
                e = SSL_ERROR_WANT_READ; /* nothing left to read: spare the call that says so */
                break;
            }
        }
        if (got < cap && e == SSL_ERROR_NONE)
            e = SSL_get_error(t->ssl, 0);
        if (e != SSL_ERROR_NONE && e != SSL_ERROR_WANT_READ)
            t->end_owed = end_code(t, e);
        if (got)
            conn_on_read(c, (ssize_t)got, b);
        else
            buf_unref(b);
        if (e == SSL_ERROR_WANT_READ)
            break;
    }
    if (t->end_owed && t->deliver && !c->closing && !t->read_done)
        end_of_plaintext(t, t->end_owed);
}

static void handshake_failed(tls_conn_t *t)
{
    conn_t *c = t->c;
    send_out(t, NULL); /* the alert */
    if (t->got_bytes) {
        const char *why;
        char peer[64];
        stat_inc(tls_failure_stat(t->ssl, t->stats, &why));
        conn_peer_name(c, peer, sizeof peer);
        if (t->client)
            log_info("tls: handshake with upstream %s failed: %s", peer, why);
        else
            log_debug("tls: handshake with client %s failed: %s", peer, why);
    }
    ERR_clear_error();
    t->state = TS_FAILED;
    raw_stop(t);
    /* A peer that closed before sending a byte (a port check) just ended; anything else failed. */
    int err = t->read_err ? t->read_err : !t->got_bytes && t->eof ? UV_EOF : UV_EPROTO;
    if (t->client) {
        conn_on_ready(c, err);
        return;
    }
    t->read_done = 1;
    conn_on_read(c, err, NULL);
    flush_pending(t, err);
}

static void handshake_done(tls_conn_t *t)
{
    conn_t *c = t->c;
    t->state = TS_OPEN;
    stat_inc(&t->stats->handshake);
    if (SSL_session_reused(t->ssl))
        stat_inc(&t->stats->session_reused);
    if (!t->client && !SSL_get0_peer_certificate(t->ssl))
        stat_inc(&t->stats->no_certificate);
    if (!t->deliver)
        raw_stop(t);
    if (t->client) {
        conn_on_ready(c, 0);
        return;
    }
    flush_pending(t, 0);
    if (t->shut_owed && !c->closing)
        shutdown_(c);
    if (!c->closing && c->ev && c->ev->on_connect) /* an owner that waits for it (tcp_proxy.c) */
        c->ev->on_connect(c->owner, 0);
}

/* 1 while the handshake goes on or has failed, 0 once it is done. */
static int handshake_step(tls_conn_t *t)
{
    clear_errors();
    int rc = SSL_do_handshake(t->ssl);
    if (rc == 1) {
        send_out(t, NULL);
        handshake_done(t);
        return 0;
    }
    if (SSL_get_error(t->ssl, rc) == SSL_ERROR_WANT_READ && !t->eof && !t->read_err) {
        send_out(t, NULL);
        return 1;
    }
    handshake_failed(t);
    return 1;
}

static void pump(tls_conn_t *t)
{
    if (t->state == TS_HANDSHAKE && handshake_step(t) != 0)
        return;
    if (t->state != TS_OPEN || t->c->closing)
        return;
    read_plain(t);
    if (!t->c->closing && t->state == TS_OPEN)
        send_out(t, NULL); /* what reading made: key updates, alerts */
}

/* PERMISSIVE: the first bytes are not a TLS record. The connection goes on as plain TCP:
 * what was written before goes out first, in order, then a shutdown asked for meanwhile,
 * then the bytes read are delivered (the owner may answer them at once). */
static void to_plain(tls_conn_t *t, buf_t *b, size_t n)
{
    conn_t *c = t->c;
    wreq_t *held = t->pending;
    int shut = t->shut_owed;
    t->pending = t->pending_tail = NULL;
    raw_stop(t);
    c->tp->free(c);
    c->tp = &transport_tcp;
    while (held) {
        wreq_t *r = held;
        held = r->next_free;
        int rc = c->closing ? UV_ECANCELED : transport_tcp.write(c, r);
        if (rc != 0)
            conn_on_written(r, rc == 1 ? 0 : rc);
    }
    if (shut && !c->closing)
        transport_tcp.shutdown(c);
    if (c->reading && !c->closing)
        transport_tcp.read_start(c);
    conn_on_read(c, (ssize_t)n, b);
}

static void on_raw_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *ub)
{
    conn_t *c = s->data;
    tls_conn_t *t = c->tls;
    buf_t *b = ub->base ? (buf_t *)(void *)(ub->base - offsetof(buf_t, data)) : NULL;
    if (nread > 0 && t->state == TS_SNIFF && (unsigned char)b->data[0] != 0x16) {
        to_plain(t, b, (size_t)nread);
        return;
    }
    if (nread > 0) {
        b->len = (uint32_t)nread;
        t->in[t->nin++] = b;
        t->got_bytes = 1;
        if (t->state == TS_SNIFF)
            t->state = TS_HANDSHAKE;
        if (t->nin == IN_MAX)
            raw_stop(t);
    } else {
        if (b)
            buf_unref(b);
        if (nread == 0)
            return;
        if (nread == UV_EOF)
            t->eof = 1;
        else
            t->read_err = (int)nread;
        raw_stop(t);
        if (t->state == TS_SNIFF)
            t->state = TS_HANDSHAKE;
    }
    pump(t);
}

static void on_resume(deferred_t *d)
{
    tls_conn_t *t = (tls_conn_t *)(void *)((char *)d - offsetof(tls_conn_t, resume));
    if (!t->c->closing)
        pump(t);
}

static int read_start(conn_t *c)
{
    tls_conn_t *t = c->tls;
    t->deliver = 1;
    if (t->state == TS_OPEN && !t->read_done) {
        /* What came while paused (records, or a close_notify or error OpenSSL has already
         * taken in) is looked at again, never from inside the owner's own call. */
        t->resume.fn = on_resume;
        loop_defer(c->loop, &t->resume);
    }
    raw_start(t);
    return 0;
}

static void read_stop(conn_t *c)
{
    tls_conn_t *t = c->tls;
    t->deliver = 0;
    if (t->state == TS_OPEN || t->state == TS_SNIFF) /* a handshake goes on regardless */
        raw_stop(t);
}

/* ---- life ---- */

static void handshake(conn_t *c)
{
    tls_conn_t *t = c->tls;
    raw_start(t);
    handshake_step(t);
}

static void free_(conn_t *c)
{
    tls_conn_t *t = c->tls;
    if (!t)
        return;
    loop_cancel(c->loop, &t->resume);
    flush_pending(t, UV_ECANCELED);
    for (unsigned i = 0; i < t->nin; i++)
        buf_unref(t->in[i]);
    drop_out(t);
    SSL_free(t->ssl);
    tls_ctx_unref(t->ctx);
    free(t);
    c->tls = NULL;
}

static size_t pinned_(const conn_t *c)
{
    return c->tls ? c->tls->loose_pinned : 0;
}

const transport_t transport_tls = {
    .name = "tls",
    .read_start = read_start,
    .read_stop = read_stop,
    .write = write_,
    .shutdown = shutdown_,
    .handshake = handshake,
    .close = close_,
    .free = free_,
    .pinned = pinned_,
};

static int attach(conn_t *c, tls_ctx_t *ctx, SSL *ssl, ssl_stats_t *stats)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, make_bio_method);
    tls_conn_t *t = calloc(1, sizeof *t);
    BIO *bio = t && ssl && bio_method ? BIO_new(bio_method) : NULL;
    if (!bio) {
        free(t);
        SSL_free(ssl);
        return UV_ENOMEM;
    }
    BIO_set_data(bio, t);
    SSL_set_bio(ssl, bio, bio); /* one reference, owned by the SSL */
    t->c = c;
    t->ssl = ssl;
    t->ctx = tls_ctx_ref(ctx);
    t->stats = stats;
    c->tls = t;
    c->tp = &transport_tls;
    return 0;
}

int transport_tls_server(conn_t *c, tls_ctx_t *ctx, ssl_stats_t *stats, int permissive)
{
    int err = attach(c, ctx, tls_session_server(ctx), stats);
    if (err == 0)
        c->tls->state = permissive ? TS_SNIFF : TS_HANDSHAKE;
    return err;
}

int transport_tls_client(conn_t *c, tls_ctx_t *ctx, ssl_stats_t *stats, const struct sockaddr *peer)
{
    int err = attach(c, ctx, tls_session_client(ctx, peer), stats);
    if (err == 0) {
        c->tls->client = 1;
        c->tls->state = TS_HANDSHAKE;
    }
    return err;
}

int transport_tls_offer_alpn(conn_t *c, const char *protocol)
{
    unsigned char wire[32];
    size_t n = strlen(protocol);
    if (!c->tls || n == 0 || n >= sizeof wire)
        return UV_EINVAL;
    wire[0] = (unsigned char)n;
    memcpy(wire + 1, protocol, n);
    return SSL_set_alpn_protos(c->tls->ssl, wire, (unsigned)n + 1) == 0 ? 0 : UV_ENOMEM;
}

const unsigned char *transport_tls_alpn(const conn_t *c, unsigned *len)
{
    const unsigned char *p = NULL;
    *len = 0;
    if (c->tls && c->tls->state == TS_OPEN)
        SSL_get0_alpn_selected(c->tls->ssl, &p, len);
    return *len ? p : NULL;
}
