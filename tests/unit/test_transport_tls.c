/* proxy/transport_tls.c over real sockets: a conn_t on one end of a socketpair (a loopback TCP
 * connection for the client side, which needs conn_connect), and on the other end a peer the
 * test drives itself with OpenSSL over memory BIOs, pumped by hand against the descriptor
 * (non-blocking). Certificates are made in-process (EC P-256, self-signed, a DNS SAN) and
 * written to a temporary directory; the contexts come from tls.c. The loop turns with
 * UV_RUN_NOWAIT plus loop_pass, a bounded number of times, until what a case waits for holds:
 * nothing sleeps. Every case ends with its connection closed and every buffer back. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "config/diag.h"
#include "proxy/conn.h"
#include "proxy/loop.h"
#include "proxy/transport_tls.h"
#include "tls/tls.h"

#define SPIN_MAX 20000 /* loop turns a condition may take; far more than any case needs */
#define MIB      (1024 * 1024)

/* ---- a growable byte string ---- */

typedef struct bytes {
    char *p;
    size_t n, cap;
} bytes_t;

static void put(bytes_t *b, const void *p, size_t n)
{
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        while (cap < b->n + n)
            cap *= 2;
        b->p = realloc(b->p, cap);
        assert_non_null(b->p);
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->n, p, n);
    b->n += n;
}

static void bytes_free(bytes_t *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

static int has(const bytes_t *b, const char *s)
{
    return b->n == strlen(s) && memcmp(b->p, s, b->n) == 0;
}

/* b holds exactly n bytes at want; else what it holds is printed (escaped) and the case fails. */
static void expect_bytes(const bytes_t *b, const char *want, size_t n, const char *what)
{
    if (b->n == n && memcmp(b->p, want, n) == 0)
        return;
    fprintf(stderr, "%s: got %zu bytes \"", what, b->n);
    for (size_t i = 0; i < b->n && i < 200; i++)
        fprintf(stderr, b->p[i] >= 0x20 && b->p[i] < 0x7f ? "%c" : "\\x%02x",
                (unsigned char)b->p[i]);
    fprintf(stderr, "\", want %zu bytes \"%.*s\"\n", n, (int)n, want);
    fail();
}

/* A pattern no shifted or repeated piece of which equals another: byte i of the stream. */
static char pattern_at(size_t i)
{
    return (char)((i * 7 + (i >> 8) * 13 + (i >> 16)) & 0xff);
}

static void fill_pattern(char *p, size_t off, size_t n)
{
    for (size_t i = 0; i < n; i++)
        p[i] = pattern_at(off + i);
}

/* ---- certificates, made once for the whole group ---- */

typedef struct cert {
    EVP_PKEY *key;
    X509 *x;
    char chain[256], keyfile[256];
} cert_t;

static char tmpdir[] = "/tmp/remora-tls-test-XXXXXX";
static cert_t srv, cli, rogue;
static char both[256]; /* cli and srv in one trust file */

static void add_ext(X509 *x, int nid, const char *value)
{
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
    X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, &v3, nid, value);
    assert_non_null(e);
    assert_int_equal(X509_add_ext(x, e, -1), 1);
    X509_EXTENSION_free(e);
}

static void make_cert(cert_t *c, const char *file, const char *dns, long serial)
{
    c->key = EVP_EC_gen("P-256");
    assert_non_null(c->key);
    c->x = X509_new();
    X509_set_version(c->x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(c->x), serial);
    X509_gmtime_adj(X509_getm_notBefore(c->x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(c->x), 86400);
    X509_NAME *name = X509_get_subject_name(c->x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)dns, -1, -1, 0);
    X509_set_issuer_name(c->x, name);
    X509_set_pubkey(c->x, c->key);
    char san[128];
    snprintf(san, sizeof san, "DNS:%s", dns);
    add_ext(c->x, NID_basic_constraints, "critical,CA:TRUE");
    add_ext(c->x, NID_subject_alt_name, san);
    assert_true(X509_sign(c->x, c->key, EVP_sha256()) > 0);

    snprintf(c->chain, sizeof c->chain, "%s/%s.pem", tmpdir, file);
    snprintf(c->keyfile, sizeof c->keyfile, "%s/%s.key", tmpdir, file);
    FILE *f = fopen(c->chain, "w");
    assert_non_null(f);
    PEM_write_X509(f, c->x);
    fclose(f);
    f = fopen(c->keyfile, "w");
    assert_non_null(f);
    PEM_write_PrivateKey(f, c->key, NULL, NULL, 0, NULL, NULL);
    fclose(f);
}

static void cert_free(cert_t *c)
{
    unlink(c->chain);
    unlink(c->keyfile);
    X509_free(c->x);
    EVP_PKEY_free(c->key);
}

/* ---- contexts ---- */

static tls_cache_t cache;
static tls_ctx_t *sctx;      /* the listener: srv's certificate, no client certificates */
static tls_ctx_t *sctx_mtls; /* the listener with validation: trust cli and srv, SAN client.test */
static SSL_CTX *peer_client_ctx, *peer_server_ctx;
static unsigned char alpn_offered[64]; /* what a client offered the peer server */
static unsigned alpn_offered_len;

static tls_ctx_t *server_ctx(int validate)
{
    static char *sans[] = {"client.test"};
    cfg_listener_tls_t cfg = {
        .mode = TLS_STRICT,
        .path = "listeners[0].tls",
        .cert_chain = srv.chain,
        .private_key = srv.keyfile,
    };
    if (validate) {
        cfg.has_validation = 1;
        cfg.validation.trust_file = both;
        cfg.validation.sans = sans;
        cfg.validation.nsans = 1;
    }
    diag_t d = {0};
    tls_ctx_t *t = tls_server_ctx(&cache, &cfg, "test", &d);
    for (size_t i = 0; i < d.n; i++)
        fprintf(stderr, "%s\n", d.lines[i]);
    diag_free(&d);
    assert_non_null(t);
    return t;
}

/* A client policy trusting `trust`, with `san` listed (NULL: none, the name is checked). */
static tls_ctx_t *client_ctx(const char *trust, const char *name, const char *san)
{
    char *sans[] = {(char *)san};
    cfg_client_tls_t cfg = {
        .present = 1,
        .path = "backendDefaults.clientPolicy.tls",
        .enforce = 1,
        .validation = {.trust_file = (char *)trust, .sans = san ? sans : NULL, .nsans = !!san},
    };
    diag_t d = {0};
    tls_ctx_t *t = tls_client_ctx(&cache, &cfg, name, "test", &d);
    for (size_t i = 0; i < d.n; i++)
        fprintf(stderr, "%s\n", d.lines[i]);
    diag_free(&d);
    assert_non_null(t);
    return t;
}

static int peer_select_alpn(SSL *s, const unsigned char **out, unsigned char *outlen,
                            const unsigned char *in, unsigned inlen, void *arg)
{
    (void)s;
    (void)arg;
    alpn_offered_len = inlen < sizeof alpn_offered ? inlen : sizeof alpn_offered;
    memcpy(alpn_offered, in, alpn_offered_len);
    unsigned char *o;
    if (SSL_select_next_proto(&o, outlen, (const unsigned char *)"\x08http/1.1", 9, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;
    *out = o;
    return SSL_TLSEXT_ERR_OK;
}

static int group_setup(void **state)
{
    (void)state;
    signal(SIGPIPE, SIG_IGN); /* a peer gone is a write error, not a signal */
    assert_non_null(mkdtemp(tmpdir));
    make_cert(&srv, "srv", "server.test", 1);
    make_cert(&cli, "cli", "client.test", 2);
    make_cert(&rogue, "rogue", "server.test", 3);
    snprintf(both, sizeof both, "%s/both.pem", tmpdir);
    FILE *f = fopen(both, "w");
    assert_non_null(f);
    PEM_write_X509(f, cli.x);
    PEM_write_X509(f, srv.x);
    fclose(f);
    sctx = server_ctx(0);
    sctx_mtls = server_ctx(1);

    /* The test's own client checks the listener's certificate as a careful client would. */
    peer_client_ctx = SSL_CTX_new(TLS_client_method());
    assert_non_null(peer_client_ctx);
    SSL_CTX_set_min_proto_version(peer_client_ctx, TLS1_2_VERSION);
    X509_STORE_add_cert(SSL_CTX_get_cert_store(peer_client_ctx), srv.x);
    SSL_CTX_set_verify(peer_client_ctx, SSL_VERIFY_PEER, NULL);

    peer_server_ctx = SSL_CTX_new(TLS_server_method());
    assert_non_null(peer_server_ctx);
    assert_int_equal(SSL_CTX_use_certificate(peer_server_ctx, srv.x), 1);
    assert_int_equal(SSL_CTX_use_PrivateKey(peer_server_ctx, srv.key), 1);
    SSL_CTX_set_alpn_select_cb(peer_server_ctx, peer_select_alpn, NULL);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    tls_ctx_unref(sctx);
    tls_ctx_unref(sctx_mtls);
    tls_cache_free(&cache);
    SSL_CTX_free(peer_client_ctx);
    SSL_CTX_free(peer_server_ctx);
    cert_free(&srv);
    cert_free(&cli);
    cert_free(&rogue);
    unlink(both);
    rmdir(tmpdir);
    return 0;
}

/* ---- the peer: OpenSSL (or plaintext) on the other end, pumped by hand ---- */

typedef struct peer {
    int fd;
    SSL *ssl; /* NULL: plaintext */
    BIO *wire_in, *wire_out;
    bytes_t out; /* for the socket, not yet taken by it */
    size_t out_off;
    bytes_t got;  /* what arrived (plaintext) */
    size_t wrote; /* bytes the socket took */
    unsigned active : 1, reading : 1;
    unsigned hs_done : 1, hs_failed : 1, zero_return : 1, eof : 1;
    int ssl_failed; /* SSL_get_error of a failed read */
    unsigned key_updates;
} peer_t;

static void peer_take_output(peer_t *p)
{
    char buf[16384];
    int n;
    while (p->ssl && (n = BIO_read(p->wire_out, buf, sizeof buf)) > 0)
        put(&p->out, buf, (size_t)n);
}

static void peer_ssl(peer_t *p)
{
    if (!p->hs_done && !p->hs_failed) {
        ERR_clear_error();
        int rc = SSL_do_handshake(p->ssl);
        if (rc == 1)
            p->hs_done = 1;
        else if (SSL_get_error(p->ssl, rc) != SSL_ERROR_WANT_READ)
            p->hs_failed = 1;
    }
    while (p->hs_done && !p->zero_return && !p->ssl_failed) {
        char buf[16384];
        size_t n;
        ERR_clear_error();
        if (SSL_read_ex(p->ssl, buf, sizeof buf, &n) == 1) {
            put(&p->got, buf, n);
            continue;
        }
        int e = SSL_get_error(p->ssl, 0);
        if (e == SSL_ERROR_ZERO_RETURN)
            p->zero_return = 1;
        else if (e != SSL_ERROR_WANT_READ)
            p->ssl_failed = e;
        break;
    }
}

static void peer_io(peer_t *p)
{
    if (!p->active || p->fd < 0)
        return;
    for (int round = 0; round < 2; round++) {
        peer_take_output(p);
        while (p->out_off < p->out.n) {
            ssize_t k = send(p->fd, p->out.p + p->out_off, p->out.n - p->out_off, MSG_NOSIGNAL);
            if (k <= 0)
                break;
            p->out_off += (size_t)k;
            p->wrote += (size_t)k;
        }
        if (p->out_off == p->out.n)
            p->out.n = p->out_off = 0;
        while (p->reading && !p->eof) {
            char buf[65536];
            ssize_t k = recv(p->fd, buf, sizeof buf, 0);
            if (k > 0 && p->ssl)
                BIO_write(p->wire_in, buf, (int)k);
            else if (k > 0)
                put(&p->got, buf, (size_t)k);
            else
                p->eof = k == 0 || (errno != EAGAIN && errno != EWOULDBLOCK);
            if (k <= 0)
                break;
        }
        if (p->ssl)
            peer_ssl(p);
    }
}

static void count_key_updates(int write_p, int version, int type, const void *buf, size_t len,
                              SSL *ssl, void *arg)
{
    (void)version;
    (void)ssl;
    if (!write_p && type == SSL3_RT_HANDSHAKE && len > 0 &&
        ((const unsigned char *)buf)[0] == SSL3_MT_KEY_UPDATE)
        ((peer_t *)arg)->key_updates++;
}

/* The peer on `fd`: TLS from `ctx` (client or server side), or plaintext with ctx NULL. */
static void peer_start(peer_t *p, int fd, SSL_CTX *ctx, int client, int max_version)
{
    p->fd = fd;
    assert_int_equal(fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK), 0);
    p->active = p->reading = 1;
    if (!ctx)
        return;
    p->ssl = SSL_new(ctx);
    assert_non_null(p->ssl);
    p->wire_in = BIO_new(BIO_s_mem());
    p->wire_out = BIO_new(BIO_s_mem());
    SSL_set_bio(p->ssl, p->wire_in, p->wire_out);
    if (max_version)
        SSL_set_max_proto_version(p->ssl, max_version);
    SSL_set_msg_callback(p->ssl, count_key_updates);
    SSL_set_msg_callback_arg(p->ssl, p);
    if (client) {
        SSL_set_connect_state(p->ssl);
        SSL_set_tlsext_host_name(p->ssl, "server.test");
        SSL_set1_host(p->ssl, "server.test");
    } else {
        SSL_set_accept_state(p->ssl);
    }
}

static void peer_send(peer_t *p, const void *data, size_t n)
{
    if (!p->ssl) {
        put(&p->out, data, n);
        return;
    }
    size_t done;
    ERR_clear_error();
    assert_int_equal(SSL_write_ex(p->ssl, data, n, &done), 1);
    assert_int_equal(done, n);
}

static void peer_free(peer_t *p)
{
    SSL_free(p->ssl); /* and its BIOs */
    if (p->fd >= 0)
        close(p->fd);
    bytes_free(&p->out);
    bytes_free(&p->got);
}

/* ---- the owner: what conn.c tells the codec above it ---- */

typedef struct owner {
    bytes_t got;
    unsigned reads, eofs, drains, connects, closed, write_errors, reads_after_eof;
    int eof_err, connect_status, write_err;
    uint64_t handshakes_at_connect;
    size_t peer_wrote_at_connect;
    unsigned pause_on_read : 1; /* conn_read(c, 0) after each delivery */
    unsigned echo : 1;          /* write back what is read */
    unsigned end_when_done : 1; /* at on_eof(UV_EOF): shut down, close once all is out */
    unsigned ending : 1;
    void (*hook)(conn_t *c); /* after each delivery */
} owner_t;

static struct fixture {
    loop_t l;
    conn_t *c;
    owner_t o;
    peer_t p;
    ssl_stats_t st;
    int fds[2];
    int listen_fd;              /* client cases: the loopback listener the peer accepts from */
    int fd0_owned;              /* fds[0] belongs to the conn's handle */
    int accept_version;         /* the peer server's highest version (0: OpenSSL's) */
    unsigned accept_paused : 1; /* the peer server does nothing until told */
    size_t live_max;
} F;

static void ev_read(void *owner, buf_t *b)
{
    owner_t *o = owner;
    if (o->eofs)
        o->reads_after_eof++;
    put(&o->got, b->data, b->len);
    o->reads++;
    if (o->echo)
        conn_write(F.c, b, b->data, b->len);
    if (o->pause_on_read)
        conn_read(F.c, 0);
    if (o->hook)
        o->hook(F.c);
}

static void ev_eof(void *owner, int err)
{
    owner_t *o = owner;
    o->eofs++;
    o->eof_err = err;
    if (o->end_when_done && err == UV_EOF) {
        /* As h1_server does after a client's half-close: the answer, FIN, then close. */
        o->ending = 1;
        conn_shutdown(F.c);
        conn_notify_empty(F.c);
    }
}

static void ev_drain(void *owner)
{
    owner_t *o = owner;
    o->drains++;
    if (o->ending)
        conn_close(F.c);
}

static void ev_write_error(void *owner, int err)
{
    owner_t *o = owner;
    o->write_errors++;
    o->write_err = err;
}

static void ev_connect(void *owner, int status)
{
    owner_t *o = owner;
    o->connects++;
    o->connect_status = status;
    o->handshakes_at_connect = stat_get(&F.st.handshake);
    o->peer_wrote_at_connect = F.p.wrote;
}

static void ev_closed(void *owner)
{
    ((owner_t *)owner)->closed++;
}

static const conn_events_t events = {
    .on_read = ev_read,
    .on_eof = ev_eof,
    .on_drain = ev_drain,
    .on_write_error = ev_write_error,
    .on_connect = ev_connect,
    .on_closed = ev_closed,
};

/* ---- driving the loop ---- */

static void step(void)
{
    uv_run(&F.l.uv, UV_RUN_NOWAIT);
    loop_pass(&F.l);
    if (F.listen_fd >= 0 && F.p.fd < 0) {
        int fd = accept(F.listen_fd, NULL, NULL);
        if (fd >= 0) {
            int one = 1; /* else Nagle holds a small write until a delayed ACK */
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            peer_start(&F.p, fd, peer_server_ctx, 0, F.accept_version);
            F.p.active = !F.accept_paused;
        }
    }
    peer_io(&F.p);
    if (F.l.bufs.live > F.live_max)
        F.live_max = F.l.bufs.live;
}

/* What a case that times out saw. */
static void dump(void)
{
    fprintf(stderr,
            "owner: reads %u (%zu bytes) eofs %u (%d) write_errors %u connects %u (%d) "
            "closed %u; peer: wrote %zu, got %zu, pending %zu, hs_done %u hs_failed %u "
            "zero_return %u eof %u ssl_failed %d; live %zu; handshakes %lu\n",
            F.o.reads, F.o.got.n, F.o.eofs, F.o.eof_err, F.o.write_errors, F.o.connects,
            F.o.connect_status, F.o.closed, F.p.wrote, F.p.got.n, F.p.out.n - F.p.out_off,
            F.p.hs_done, F.p.hs_failed, F.p.zero_return, F.p.eof, F.p.ssl_failed, F.l.bufs.live,
            (unsigned long)stat_get(&F.st.handshake));
}

#define RUN_UNTIL(cond)                                                                            \
    do {                                                                                           \
        int ok_ = (cond);                                                                          \
        for (int i_ = 0; i_ < SPIN_MAX && !ok_; i_++) {                                            \
            step();                                                                                \
            ok_ = (cond);                                                                          \
        }                                                                                          \
        if (!ok_) {                                                                                \
            dump();                                                                                \
            fail_msg("never came: %s", #cond);                                                     \
        }                                                                                          \
    } while (0)

static void spin(int turns)
{
    for (int i = 0; i < turns; i++)
        step();
}

static int setup(void **state)
{
    (void)state;
    memset(&F, 0, sizeof F);
    F.fds[0] = F.fds[1] = F.listen_fd = F.p.fd = -1;
    assert_int_equal(loop_init(&F.l, NULL), 0);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    if (F.c && !F.o.closed && !F.c->closing)
        conn_close(F.c);
    for (int i = 0; i < 1000 && uv_loop_alive(&F.l.uv); i++)
        step();
    if (!F.fd0_owned && F.fds[0] >= 0)
        close(F.fds[0]);
    if (F.p.fd < 0 && F.fds[1] >= 0)
        close(F.fds[1]);
    if (F.listen_fd >= 0)
        close(F.listen_fd);
    peer_free(&F.p);
    bytes_free(&F.o.got);
    loop_free(&F.l);
    return 0;
}

/* The server side: a conn on one end of a socketpair, TLS, owned by F.o and reading. */
static void server_conn(int permissive)
{
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, F.fds), 0);
    F.c = conn_new(&F.l);
    assert_non_null(F.c);
    /* libuv takes a Unix-domain stream socket for a uv_tcp_t: the stream calls are the same. */
    assert_int_equal(uv_tcp_open(&F.c->tcp, F.fds[0]), 0);
    F.fd0_owned = 1;
    F.c->connected = 1; /* as conn_accept leaves it */
    assert_int_equal(transport_tls_server(F.c, sctx, &F.st, permissive), 0);
    conn_set_owner(F.c, &events, &F.o);
    conn_read(F.c, 1);
}

static void client_peer(int max_version)
{
    peer_start(&F.p, F.fds[1], peer_client_ctx, 1, max_version);
}

static void plain_peer(void)
{
    peer_start(&F.p, F.fds[1], NULL, 1, 0);
}

static void assert_stats(unsigned handshake, unsigned no_cert, unsigned conn_error)
{
    assert_int_equal(stat_get(&F.st.handshake), handshake);
    assert_int_equal(stat_get(&F.st.no_certificate), no_cert);
    assert_int_equal(stat_get(&F.st.connection_error), conn_error);
    assert_int_equal(stat_get(&F.st.session_reused), 0);
    assert_int_equal(stat_get(&F.st.fail_verify_no_cert), 0);
    assert_int_equal(stat_get(&F.st.fail_verify_error), 0);
    assert_int_equal(stat_get(&F.st.fail_verify_san), 0);
}

/* Close, wait for on_closed and for the handle to be gone: every buffer must be back. */
static void finish(void)
{
    if (!F.o.closed && !F.c->closing)
        conn_close(F.c);
    RUN_UNTIL(F.o.closed == 1);
    RUN_UNTIL(!uv_loop_alive(&F.l.uv));
    F.c = NULL;
    assert_int_equal(F.o.closed, 1);
    assert_null(F.l.deferred);
    assert_int_equal(F.l.bufs.live, 0);
}

static const int v13 = TLS1_3_VERSION, v12 = TLS1_2_VERSION;

/* ---- a. handshake and echo ---- */

static void test_server_handshake_and_echo(void **state)
{
    int version = **(const int **)state;
    server_conn(0);
    client_peer(version);
    assert_int_equal(SSL_set_alpn_protos(F.p.ssl, (const unsigned char *)"\x02h2\x08http/1.1", 12),
                     0);
    RUN_UNTIL(F.p.hs_done);
    assert_int_equal(SSL_version(F.p.ssl), version);
    assert_int_equal(SSL_get_verify_result(F.p.ssl), X509_V_OK);
    peer_send(&F.p, "hello", 5);
    RUN_UNTIL(F.o.got.n >= 5);
    spin(20);
    assert_true(has(&F.o.got, "hello"));
    assert_int_equal(F.o.reads, 1);
    assert_int_equal(F.o.eofs, 0);
    assert_int_equal(conn_is_tls(F.c), 1);
    assert_stats(1, 1, 0);
    /* ALPN: the listener prefers h2 among what is offered, and tells the codec so. */
    const unsigned char *alpn;
    unsigned alpn_len;
    SSL_get0_alpn_selected(F.p.ssl, &alpn, &alpn_len);
    assert_int_equal(alpn_len, 2);
    assert_memory_equal(alpn, "h2", 2);
    alpn = transport_tls_alpn(F.c, &alpn_len);
    assert_non_null(alpn);
    assert_int_equal(alpn_len, 2);
    assert_memory_equal(alpn, "h2", 2);

    conn_write_copy(F.c, "world!", 6);
    RUN_UNTIL(F.p.got.n >= 6);
    spin(20);
    assert_true(has(&F.p.got, "world!"));
    assert_int_equal(conn_pinned(F.c), 0);
    assert_int_equal(F.o.write_errors, 0);
    finish();
    /* conn_close said close_notify. */
    RUN_UNTIL(F.p.zero_return);
}

/* ---- b. backpressure ---- */

static void test_server_backpressure(void **state)
{
    (void)state;
    server_conn(0);
    client_peer(0);
    RUN_UNTIL(F.p.hs_done);
    char *data = malloc(MIB);
    assert_non_null(data);
    fill_pattern(data, 0, MIB);
    F.o.pause_on_read = 1;
    peer_send(&F.p, data, MIB);
    RUN_UNTIL(F.o.reads == 1);
    size_t first = F.o.got.n;
    assert_true(first > 0 && first <= BUF_READ_SIZE);
    F.live_max = F.l.bufs.live;
    spin(3000);
    /* Paused: nothing more delivered, and the socket is no longer read, so what the client
     * sends waits on its side (the kernel's buffers are far smaller than 1 MiB). */
    assert_int_equal(F.o.reads, 1);
    assert_int_equal(F.o.got.n, first);
    assert_true(F.p.out.n - F.p.out_off > MIB / 2);
    size_t wrote = F.p.wrote;
    spin(100);
    assert_int_equal(F.p.wrote, wrote);
    /* What the transport holds is bounded: at most IN_MAX (4) socket reads queued for OpenSSL
     * (OpenSSL keeps the partial record it read ahead in its own buffer). */
    assert_true(F.live_max <= 4);

    F.o.pause_on_read = 0;
    conn_read(F.c, 1);
    RUN_UNTIL(F.o.got.n >= MIB);
    spin(20);
    assert_int_equal(F.o.got.n, MIB);
    assert_memory_equal(F.o.got.p, data, MIB);
    assert_true(F.live_max <= 4);
    assert_int_equal(F.o.eofs, 0);
    free(data);
    finish();
}

/* ---- c. writes before the handshake ---- */

static void test_server_writes_before_the_handshake(void **state)
{
    (void)state;
    server_conn(0);
    conn_write_copy(F.c, "early", 5);
    buf_t *b = buf_new(&F.l.bufs, BUF_READ_SIZE);
    fill_pattern(b->data, 0, 3000);
    conn_write(F.c, b, b->data, 3000); /* pins the whole 64 KiB buffer */
    buf_unref(b);
    assert_int_equal(conn_pinned(F.c), 5 + BUF_READ_SIZE);
    spin(50); /* flushed into the transport, which holds it: no client yet */
    assert_int_equal(conn_pinned(F.c), 5 + BUF_READ_SIZE);
    assert_int_equal(F.l.bufs.live, 1);
    char c;
    assert_int_equal(recv(F.fds[1], &c, 1, MSG_DONTWAIT | MSG_PEEK), -1);

    client_peer(0);
    RUN_UNTIL(F.p.got.n >= 3005);
    spin(20);
    assert_int_equal(F.p.got.n, 3005);
    assert_memory_equal(F.p.got.p, "early", 5);
    char want[3000];
    fill_pattern(want, 0, sizeof want);
    assert_memory_equal(F.p.got.p + 5, want, sizeof want);
    assert_int_equal(conn_pinned(F.c), 0);
    assert_int_equal(F.l.bufs.live, 0);

    peer_send(&F.p, "x", 1);
    RUN_UNTIL(F.o.got.n == 1);
    conn_write_copy(F.c, "reply", 5);
    RUN_UNTIL(F.p.got.n >= 3010);
    assert_memory_equal(F.p.got.p + 3005, "reply", 5);
    assert_int_equal(conn_pinned(F.c), 0);
    assert_int_equal(F.o.write_errors, 0);
    assert_stats(1, 1, 0);
    finish();
}

/* Two writes held (from two loop passes), over TLS and over a PERMISSIVE connection that turns
 * plain: they go out in order once the transport knows what it carries. */
static void held_writes_in_order(int tls)
{
    server_conn(!tls);
    conn_write_copy(F.c, "one,", 4);
    spin(2);
    conn_write_copy(F.c, "two,", 4);
    spin(2);
    assert_int_equal(conn_pinned(F.c), 8);
    if (tls) {
        client_peer(0);
        RUN_UNTIL(F.p.hs_done);
        peer_send(&F.p, "x", 1);
    } else {
        plain_peer();
        peer_send(&F.p, "x", 1);
    }
    RUN_UNTIL(F.o.got.n == 1);
    conn_write_copy(F.c, "three", 5);
    RUN_UNTIL(F.p.got.n >= 13);
    spin(20);
    expect_bytes(&F.p.got, "one,two,three", 13, "client");
    assert_int_equal(conn_is_tls(F.c), tls);
    assert_int_equal(conn_pinned(F.c), 0);
    finish();
}

static void test_server_two_writes_held_in_order(void **state)
{
    (void)state;
    held_writes_in_order(1);
}

static void test_permissive_plaintext_two_writes_held_in_order(void **state)
{
    (void)state;
    held_writes_in_order(0);
}

/* ---- d. PERMISSIVE, plaintext ---- */

static const char request[] = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
static const char response[] = "HTTP/1.1 204 No Content\r\n\r\n";

static void test_permissive_plaintext(void **state)
{
    (void)state;
    server_conn(1);
    plain_peer();
    peer_send(&F.p, request, strlen(request));
    RUN_UNTIL(F.o.got.n >= strlen(request));
    spin(20);
    assert_true(has(&F.o.got, request));
    assert_int_equal(F.o.reads, 1);
    assert_int_equal(conn_is_tls(F.c), 0);
    conn_write_copy(F.c, response, strlen(response));
    RUN_UNTIL(F.p.got.n >= strlen(response));
    spin(20);
    assert_true(has(&F.p.got, response));
    assert_stats(0, 0, 0);
    /* Plain TCP from now on: the client's FIN is an EOF. */
    shutdown(F.fds[1], SHUT_WR);
    RUN_UNTIL(F.o.eofs == 1);
    assert_int_equal(F.o.eof_err, UV_EOF);
    finish();
}

static void test_permissive_plaintext_write_before_first_byte(void **state)
{
    (void)state;
    server_conn(1);
    conn_write_copy(F.c, "early;", 6);
    spin(20);
    assert_int_equal(conn_pinned(F.c), 6);
    plain_peer();
    spin(20);
    assert_int_equal(F.p.got.n, 0); /* held: TLS or not is not known yet */
    peer_send(&F.p, request, strlen(request));
    RUN_UNTIL(F.o.got.n >= strlen(request));
    assert_true(has(&F.o.got, request));
    assert_int_equal(conn_is_tls(F.c), 0);
    conn_write_copy(F.c, response, strlen(response));
    RUN_UNTIL(F.p.got.n >= 6 + strlen(response));
    spin(20);
    bytes_t want = {0};
    put(&want, "early;", 6);
    put(&want, response, strlen(response));
    assert_int_equal(F.p.got.n, want.n);
    assert_memory_equal(F.p.got.p, want.p, want.n);
    bytes_free(&want);
    assert_int_equal(conn_pinned(F.c), 0);
    assert_stats(0, 0, 0);
    finish();
}

/* The owner answers from inside on_read and flushes at once (conn_flush is public, and
 * conn_write flushes by itself when a request fills up): the held bytes must still go first. */
static void answer_and_flush(conn_t *c)
{
    conn_write_copy(c, response, strlen(response));
    conn_flush(c);
}

static void test_permissive_plaintext_held_write_stays_first(void **state)
{
    (void)state;
    server_conn(1);
    conn_write_copy(F.c, "early;", 6);
    spin(5);
    plain_peer();
    F.o.hook = answer_and_flush;
    peer_send(&F.p, request, strlen(request));
    RUN_UNTIL(F.p.got.n >= 6 + strlen(response));
    spin(20);
    char want[128];
    snprintf(want, sizeof want, "early;%s", response);
    expect_bytes(&F.p.got, want, strlen(want), "client");
    finish();
}

/* The same, with the answer followed by conn_shutdown: held bytes, answer, FIN. */
static void answer_and_shut_down(conn_t *c)
{
    conn_write_copy(c, response, strlen(response));
    conn_shutdown(c);
}

static void test_permissive_plaintext_held_write_then_shutdown(void **state)
{
    (void)state;
    server_conn(1);
    conn_write_copy(F.c, "early;", 6);
    spin(5);
    plain_peer();
    F.o.hook = answer_and_shut_down;
    peer_send(&F.p, request, strlen(request));
    RUN_UNTIL(F.p.eof);
    spin(20);
    char want[128];
    snprintf(want, sizeof want, "early;%s", response);
    expect_bytes(&F.p.got, want, strlen(want), "client");
    assert_int_equal(F.o.write_errors, 0);
    finish();
}

/* conn_shutdown before the first byte: the held bytes, then FIN, once plaintext is seen. */
static void test_permissive_plaintext_shutdown_before_first_byte(void **state)
{
    (void)state;
    server_conn(1);
    conn_write_copy(F.c, "bye", 3);
    conn_shutdown(F.c);
    spin(5);
    plain_peer();
    peer_send(&F.p, request, strlen(request));
    RUN_UNTIL(F.o.got.n >= strlen(request));
    RUN_UNTIL(F.p.got.n >= 3);
    spin(200);
    assert_true(has(&F.p.got, "bye"));
    assert_true(F.p.eof); /* the FIN conn_shutdown promised */
    finish();
}

/* The owner paused before the first byte: nothing is delivered until it reads again. */
static void test_permissive_plaintext_paused_before_first_byte(void **state)
{
    (void)state;
    server_conn(1);
    conn_read(F.c, 0);
    plain_peer();
    peer_send(&F.p, request, strlen(request));
    spin(200);
    assert_int_equal(F.o.reads, 0); /* conn_read(c, 0): no on_read */
    conn_read(F.c, 1);
    RUN_UNTIL(F.o.got.n >= strlen(request));
    assert_true(has(&F.o.got, request));
    finish();
}

/* ---- e. PERMISSIVE, TLS ---- */

static void test_permissive_tls(void **state)
{
    (void)state;
    server_conn(1);
    conn_write_copy(F.c, "early", 5);
    client_peer(0);
    assert_int_equal(SSL_set_alpn_protos(F.p.ssl, (const unsigned char *)"\x06spdy/3", 7), 0);
    RUN_UNTIL(F.p.hs_done);
    const unsigned char *alpn;
    unsigned alpn_len;
    SSL_get0_alpn_selected(F.p.ssl, &alpn, &alpn_len);
    assert_int_equal(alpn_len, 0); /* nothing in common: no ALPN, HTTP/1.1 */
    assert_null(transport_tls_alpn(F.c, &alpn_len));
    peer_send(&F.p, "hello", 5);
    RUN_UNTIL(F.o.got.n >= 5);
    assert_true(has(&F.o.got, "hello"));
    assert_int_equal(conn_is_tls(F.c), 1);
    assert_stats(1, 1, 0);
    RUN_UNTIL(F.p.got.n >= 5);
    assert_true(has(&F.p.got, "early"));
    conn_write_copy(F.c, "world", 5);
    RUN_UNTIL(F.p.got.n >= 10);
    assert_memory_equal(F.p.got.p, "earlyworld", 10);
    assert_int_equal(conn_pinned(F.c), 0);
    finish();
}

/* ---- f. STRICT, plaintext ---- */

static void test_strict_refuses_plaintext(void **state)
{
    (void)state;
    server_conn(0);
    conn_write_copy(F.c, "never", 5);
    plain_peer();
    peer_send(&F.p, request, strlen(request));
    RUN_UNTIL(F.o.eofs == 1);
    spin(50);
    assert_int_equal(F.o.eofs, 1);
    assert_int_equal(F.o.eof_err, UV_EPROTO);
    assert_int_equal(F.o.reads, 0);
    assert_int_equal(F.o.got.n, 0);
    assert_int_equal(conn_is_tls(F.c), 1);
    assert_stats(0, 0, 1);
    /* The held write failed with the handshake; nothing of it reached the client. */
    assert_int_equal(conn_pinned(F.c), 0);
    assert_int_equal(F.o.write_errors, 1);
    assert_null(memmem(F.p.got.p ? F.p.got.p : "", F.p.got.n, "never", 5));
    finish();
}

/* ---- g. close_notify ---- */

static void test_shutdown_sends_close_notify(void **state)
{
    int version = **(const int **)state;
    server_conn(0);
    client_peer(version);
    RUN_UNTIL(F.p.hs_done);
    peer_send(&F.p, "ping", 4);
    RUN_UNTIL(F.o.got.n == 4);
    conn_write_copy(F.c, "pong", 4);
    conn_shutdown(F.c);
    RUN_UNTIL(F.p.zero_return);
    assert_true(has(&F.p.got, "pong"));
    assert_int_equal(SSL_get_error(F.p.ssl, 0), SSL_ERROR_ZERO_RETURN);
    RUN_UNTIL(F.p.eof); /* then the TCP FIN */
    /* Reading goes on after our shutdown. */
    peer_send(&F.p, "more", 4);
    RUN_UNTIL(F.o.got.n == 8);
    assert_memory_equal(F.o.got.p, "pingmore", 8);
    assert_int_equal(F.o.eofs, 0);
    finish();
}

static void test_client_close_notify_is_eof(void **state)
{
    int version = **(const int **)state;
    server_conn(0);
    client_peer(version);
    RUN_UNTIL(F.p.hs_done);
    peer_send(&F.p, "last words", 10);
    ERR_clear_error();
    SSL_shutdown(F.p.ssl);
    RUN_UNTIL(F.o.eofs == 1);
    spin(20);
    assert_true(has(&F.o.got, "last words"));
    assert_int_equal(F.o.eofs, 1);
    assert_int_equal(F.o.eof_err, UV_EOF);
    assert_int_equal(F.o.reads_after_eof, 0);
    /* The write side is still ours. */
    conn_write_copy(F.c, "answer", 6);
    RUN_UNTIL(F.p.got.n == 6);
    assert_true(has(&F.p.got, "answer"));
    finish();
}

/* The end found while the owner is paused is told once it reads again, after the data. */
static void test_close_notify_while_paused(void **state)
{
    (void)state;
    server_conn(0);
    client_peer(0);
    RUN_UNTIL(F.p.hs_done);
    F.o.pause_on_read = 1;
    /* In one socket read: the records of both, then close_notify. */
    peer_send(&F.p, "one", 3);
    peer_send(&F.p, "two", 3);
    ERR_clear_error();
    SSL_shutdown(F.p.ssl);
    RUN_UNTIL(F.o.reads == 1);
    spin(200);
    assert_true(has(&F.o.got, "onetwo"));
    assert_int_equal(F.o.reads, 1);
    assert_int_equal(F.o.eofs, 0);
    F.o.pause_on_read = 0;
    conn_read(F.c, 1);
    RUN_UNTIL(F.o.eofs == 1);
    assert_true(has(&F.o.got, "onetwo"));
    assert_int_equal(F.o.eof_err, UV_EOF);
    assert_int_equal(F.o.reads_after_eof, 0);
    finish();
}

/* The same for a broken record behind the data: the failure is told once it reads again (the
 * client, having had an alert, sends nothing more to wake the connection). */
static void test_bad_record_while_paused(void **state)
{
    (void)state;
    server_conn(0);
    client_peer(0);
    RUN_UNTIL(F.p.hs_done);
    F.o.pause_on_read = 1;
    peer_send(&F.p, "one", 3);
    peer_send(&F.p, "two", 3);
    peer_take_output(&F.p);
    F.p.out.p[F.p.out.n - 1] ^= 0x55; /* the last record's tag */
    RUN_UNTIL(F.o.reads == 1);
    spin(200);
    assert_true(has(&F.o.got, "one"));
    assert_int_equal(F.o.eofs, 0);
    F.o.pause_on_read = 0;
    conn_read(F.c, 1);
    RUN_UNTIL(F.o.eofs == 1);
    assert_int_equal(F.o.eof_err, UV_EPROTO);
    assert_true(has(&F.o.got, "one"));
    finish();
}

/* The same, woken by the client's FIN: the broken record is still a failure, not an end. */
static void test_bad_record_while_paused_then_fin(void **state)
{
    (void)state;
    server_conn(0);
    client_peer(0);
    RUN_UNTIL(F.p.hs_done);
    F.o.pause_on_read = 1;
    peer_send(&F.p, "one", 3);
    peer_send(&F.p, "two", 3);
    peer_take_output(&F.p);
    F.p.out.p[F.p.out.n - 1] ^= 0x55;
    RUN_UNTIL(F.o.reads == 1);
    spin(50);
    shutdown(F.fds[1], SHUT_WR);
    F.o.pause_on_read = 0;
    conn_read(F.c, 1);
    RUN_UNTIL(F.o.eofs == 1);
    assert_int_equal(F.o.eof_err, UV_EPROTO);
    assert_true(has(&F.o.got, "one"));
    finish();
}

/* A FIN without close_notify ends the plaintext too (HTTP framing tells a truncation). */
static void test_fin_without_close_notify_is_eof(void **state)
{
    (void)state;
    server_conn(0);
    client_peer(0);
    RUN_UNTIL(F.p.hs_done);
    peer_send(&F.p, "cut", 3);
    RUN_UNTIL(F.o.got.n == 3);
    shutdown(F.fds[1], SHUT_WR);
    RUN_UNTIL(F.o.eofs == 1);
    assert_int_equal(F.o.eof_err, UV_EOF);
    finish();
}

/* conn_shutdown before the handshake is done: after it, the held bytes, then close_notify. */
static void test_shutdown_before_the_handshake(void **state)
{
    (void)state;
    server_conn(0);
    conn_write_copy(F.c, "held", 4);
    conn_shutdown(F.c);
    spin(5);
    client_peer(0);
    RUN_UNTIL(F.p.zero_return);
    assert_true(has(&F.p.got, "held"));
    RUN_UNTIL(F.p.eof);
    assert_stats(1, 1, 0);
    assert_int_equal(conn_pinned(F.c), 0);
    finish();
}

/* The owner ends as h1_server does after a client's half-close (conn_shutdown, then
 * conn_close from on_drain once nothing is queued) while the socket is backed up: the
 * close_notify conn_shutdown sent must still reach the client before the connection goes. */
static void test_close_notify_survives_a_close_once_drained(void **state)
{
    int version = **(const int **)state;
    server_conn(0);
    int small = 4096;
    for (int i = 0; i < 2; i++) {
        setsockopt(F.fds[i], SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
        setsockopt(F.fds[i], SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    }
    client_peer(version);
    RUN_UNTIL(F.p.hs_done);
    F.o.echo = 1;
    F.o.end_when_done = 1;
    char *data = malloc(16384);
    assert_non_null(data);
    fill_pattern(data, 0, 16384);
    peer_send(&F.p, data, 16384);
    ERR_clear_error();
    SSL_shutdown(F.p.ssl);
    RUN_UNTIL(F.o.closed == 1);
    RUN_UNTIL(F.p.eof);
    spin(20);
    assert_int_equal(F.o.got.n, 16384);
    assert_int_equal(F.o.eof_err, UV_EOF);
    assert_int_equal(F.p.got.n, 16384);
    assert_memory_equal(F.p.got.p, data, 16384);
    free(data);
    assert_int_equal(F.p.ssl_failed, 0);
    if (!F.p.zero_return)
        fail_msg("the client saw the FIN without close_notify");
    finish();
}

/* ---- a client's TLS 1.3 KeyUpdate asking for ours: answered before our next record ---- */

static void test_key_update_is_answered(void **state)
{
    (void)state;
    server_conn(0);
    client_peer(TLS1_3_VERSION);
    RUN_UNTIL(F.p.hs_done);
    assert_int_equal(SSL_key_update(F.p.ssl, SSL_KEY_UPDATE_REQUESTED), 1);
    peer_send(&F.p, "after", 5);
    RUN_UNTIL(F.o.got.n == 5);
    /* OpenSSL sends the KeyUpdate owed before its next record (RFC 8446 §4.6.3 allows it). */
    conn_write_copy(F.c, "fine", 4);
    RUN_UNTIL(F.p.got.n == 4);
    assert_int_equal(F.p.key_updates, 1);
    assert_true(has(&F.p.got, "fine"));
    assert_int_equal(F.p.ssl_failed, 0);
    finish();
}

/* ---- large writes: what the watermarks count is the ciphertext queued ---- */

static void test_large_write_watermarks(void **state)
{
    (void)state;
    server_conn(0);
    client_peer(0);
    RUN_UNTIL(F.p.hs_done);
    F.p.reading = 0; /* the client does not read for now */
    for (int i = 0; i < 16; i++) {
        buf_t *b = buf_new(&F.l.bufs, BUF_READ_SIZE);
        fill_pattern(b->data, (size_t)i * BUF_READ_SIZE, BUF_READ_SIZE);
        conn_write(F.c, b, b->data, BUF_READ_SIZE);
        buf_unref(b);
    }
    assert_int_equal(conn_pinned(F.c), MIB);
    loop_pass(&F.l);
    /* The plaintext buffers are let go once encrypted; the ciphertext the socket did not take
     * is what stays pinned, in whole 64 KiB buffers. */
    size_t pinned = conn_pinned(F.c);
    assert_true(pinned > CONN_HIGH_WATER);
    assert_int_equal(pinned % BUF_READ_SIZE, 0);
    assert_true(pinned <= MIB + 2 * BUF_READ_SIZE);
    assert_true(conn_over_high_water(F.c));
    assert_true(F.l.bufs.live <= pinned / BUF_READ_SIZE + 1);
    spin(50);
    assert_int_equal(F.o.drains, 0);
    F.p.reading = 1;
    RUN_UNTIL(F.p.got.n >= MIB);
    spin(20);
    assert_int_equal(F.p.got.n, MIB);
    for (size_t i = 0; i < MIB; i++)
        if (F.p.got.p[i] != pattern_at(i))
            fail_msg("byte %zu differs", i);
    assert_int_equal(F.o.drains, 1);
    assert_int_equal(conn_pinned(F.c), 0);
    assert_int_equal(F.l.bufs.live, 0);
    finish();
}

/* ---- h. the client side ---- */

/* A conn_connect to a loopback listener whose connection the peer (an OpenSSL server) takes. */
static void client_conn(tls_ctx_t *ctx, struct sockaddr_in *addr)
{
    F.listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    assert_true(F.listen_fd >= 0);
    memset(addr, 0, sizeof *addr);
    addr->sin_family = AF_INET;
    addr->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(F.listen_fd, (struct sockaddr *)addr, sizeof *addr), 0);
    assert_int_equal(listen(F.listen_fd, 1), 0);
    socklen_t len = sizeof *addr;
    assert_int_equal(getsockname(F.listen_fd, (struct sockaddr *)addr, &len), 0);
    F.c = conn_new(&F.l);
    assert_non_null(F.c);
    assert_int_equal(transport_tls_client(F.c, ctx, &F.st, (struct sockaddr *)addr), 0);
    conn_set_owner(F.c, &events, &F.o);
    conn_read(F.c, 1);
    conn_write_copy(F.c, "early", 5); /* while connecting */
    conn_connect(F.c, (struct sockaddr *)addr);
}

static void test_client_handshake(void **state)
{
    int version = **(const int **)state;
    tls_ctx_t *ctx = client_ctx(srv.chain, "server.test", NULL);
    struct sockaddr_in addr;
    F.accept_version = version;
    F.accept_paused = 1;
    client_conn(ctx, &addr);
    tls_ctx_unref(ctx); /* the connection holds its own reference */
    RUN_UNTIL(F.p.fd >= 0);
    /* TCP is up, the ClientHello is out, the server has not answered: not connected. */
    spin(200);
    char hello;
    assert_int_equal(recv(F.p.fd, &hello, 1, MSG_PEEK), 1);
    assert_int_equal(hello, 0x16);
    assert_int_equal(F.o.connects, 0);
    F.p.active = 1;
    RUN_UNTIL(F.o.connects == 1);
    assert_int_equal(F.o.connect_status, 0);
    assert_int_equal(F.o.handshakes_at_connect, 1);
    assert_true(F.o.peer_wrote_at_connect > 0); /* the server's flight came first */
    RUN_UNTIL(F.p.got.n >= 5);
    spin(20);
    assert_true(has(&F.p.got, "early"));
    assert_int_equal(SSL_version(F.p.ssl), version);
    /* ALPN: the client offers http/1.1 (only). */
    assert_int_equal(alpn_offered_len, 9);
    assert_memory_equal(alpn_offered, "\x08http/1.1", 9);
    peer_send(&F.p, "pong", 4);
    RUN_UNTIL(F.o.got.n == 4);
    assert_true(has(&F.o.got, "pong"));
    assert_int_equal(stat_get(&F.st.handshake), 1);
    assert_int_equal(stat_get(&F.st.no_certificate), 0); /* a listener's stat */
    assert_int_equal(stat_get(&F.st.connection_error), 0);
    assert_int_equal(conn_pinned(F.c), 0);
    finish();
}

/* A server certificate that fails verification: on_connect(<0), the stat, nothing sent. */
static void client_refused(const char *trust, const char *name, const char *san, stat_t *want)
{
    tls_ctx_t *ctx = client_ctx(trust, name, san);
    struct sockaddr_in addr;
    client_conn(ctx, &addr);
    tls_ctx_unref(ctx);
    RUN_UNTIL(F.o.connects == 1);
    assert_int_equal(F.o.connect_status, UV_EPROTO);
    assert_int_equal(stat_get(want), 1);
    uint64_t total = stat_get(&F.st.fail_verify_error) + stat_get(&F.st.fail_verify_san) +
                     stat_get(&F.st.fail_verify_no_cert) + stat_get(&F.st.connection_error) +
                     stat_get(&F.st.handshake);
    assert_int_equal(total, 1);
    RUN_UNTIL(F.p.hs_failed || F.p.ssl_failed || F.p.eof);
    assert_int_equal(F.p.got.n, 0); /* "early" never left */
    assert_int_equal(conn_pinned(F.c), 0);
    finish();
}

static void test_client_wrong_name(void **state)
{
    (void)state;
    client_refused(srv.chain, "other.test", NULL, &F.st.fail_verify_san);
}

static void test_client_san_not_listed(void **state)
{
    (void)state;
    client_refused(srv.chain, "server.test", "spiffe://mesh.local/cart", &F.st.fail_verify_san);
}

static void test_client_untrusted(void **state)
{
    (void)state;
    client_refused(rogue.chain, "server.test", NULL, &F.st.fail_verify_error);
}

/* conn_shutdown while connecting: once up, what was written, then close_notify. */
static void test_client_shutdown_while_connecting(void **state)
{
    (void)state;
    tls_ctx_t *ctx = client_ctx(srv.chain, "server.test", NULL);
    struct sockaddr_in addr;
    client_conn(ctx, &addr);
    tls_ctx_unref(ctx);
    conn_shutdown(F.c);
    RUN_UNTIL(F.p.zero_return);
    assert_int_equal(F.o.connects, 1);
    assert_int_equal(F.o.connect_status, 0);
    assert_true(has(&F.p.got, "early"));
    RUN_UNTIL(F.p.eof);
    finish();
}

/* The server takes the connection and closes it without a byte: a failed connect, no stat. */
static void test_client_server_closes_at_once(void **state)
{
    (void)state;
    tls_ctx_t *ctx = client_ctx(srv.chain, "server.test", NULL);
    struct sockaddr_in addr;
    F.accept_paused = 1;
    client_conn(ctx, &addr);
    tls_ctx_unref(ctx);
    RUN_UNTIL(F.p.fd >= 0);
    close(F.p.fd);
    F.p.fd = -1;
    close(F.listen_fd);
    F.listen_fd = -1;
    RUN_UNTIL(F.o.connects == 1);
    assert_true(F.o.connect_status < 0);
    assert_int_equal(stat_get(&F.st.handshake), 0);
    assert_int_equal(stat_get(&F.st.connection_error), 0);
    assert_int_equal(conn_pinned(F.c), 0);
    finish();
}

/* ---- i. the peer goes mid-handshake ---- */

static void test_peer_closes_mid_handshake(void **state)
{
    int full_close = **(const int **)state == 1;
    server_conn(0);
    conn_write_copy(F.c, "held", 4);
    client_peer(0);
    F.p.active = 0;
    ERR_clear_error();
    assert_int_equal(SSL_do_handshake(F.p.ssl), -1);
    peer_take_output(&F.p);
    assert_true(F.p.out.n > 40);
    F.p.out.n = 40; /* a partial ClientHello */
    F.p.active = 1;
    RUN_UNTIL(F.p.out.n == 0);
    spin(20);
    assert_int_equal(F.o.eofs, 0);
    if (full_close) {
        close(F.fds[1]);
        F.fds[1] = F.p.fd = -1;
    } else {
        shutdown(F.fds[1], SHUT_WR);
    }
    RUN_UNTIL(F.o.eofs == 1);
    assert_int_equal(F.o.eof_err, UV_EPROTO);
    assert_int_equal(F.o.reads, 0);
    assert_stats(0, 0, 1);
    spin(20);
    assert_int_equal(conn_pinned(F.c), 0);
    finish();
}

/* Closed by its owner mid-handshake with writes held: they are dropped, their buffers back. */
static void test_close_mid_handshake_drops_held_writes(void **state)
{
    (void)state;
    server_conn(0);
    buf_t *b = buf_new(&F.l.bufs, BUF_READ_SIZE);
    fill_pattern(b->data, 0, 4000);
    conn_write(F.c, b, b->data, 4000);
    buf_unref(b);
    client_peer(0);
    RUN_UNTIL(F.p.wrote > 0); /* the ClientHello is out */
    F.p.active = 0;           /* and nothing more: the server answers and waits */
    spin(20);
    char c;
    assert_int_equal(recv(F.fds[1], &c, 1, MSG_PEEK | MSG_DONTWAIT), 1); /* its flight */
    assert_int_equal(c, 0x16);
    assert_int_equal(conn_pinned(F.c), BUF_READ_SIZE);
    conn_close(F.c);
    RUN_UNTIL(F.o.closed == 1);
    assert_int_equal(F.l.bufs.live, 0);
    assert_int_equal(F.o.reads, 0);
    assert_int_equal(F.o.eofs, 0); /* no event after conn_close but on_closed */
    assert_int_equal(F.o.write_errors, 0);
    finish();
}

/* A client that connects and goes without a byte (a port check) is no TLS error: it ended. */
static void test_peer_closes_before_a_byte(void **state)
{
    int permissive = **(const int **)state == 1;
    server_conn(permissive);
    close(F.fds[1]);
    F.fds[1] = -1;
    RUN_UNTIL(F.o.eofs == 1);
    assert_int_equal(F.o.eof_err, UV_EOF);
    assert_int_equal(F.o.reads, 0);
    assert_stats(0, 0, 0);
    finish();
}

/* ---- mutual TLS (listener with validation) ---- */

static void mtls_client(cert_t *cert)
{
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, F.fds), 0);
    F.c = conn_new(&F.l);
    assert_non_null(F.c);
    assert_int_equal(uv_tcp_open(&F.c->tcp, F.fds[0]), 0);
    F.fd0_owned = 1;
    F.c->connected = 1;
    assert_int_equal(transport_tls_server(F.c, sctx_mtls, &F.st, 0), 0);
    conn_set_owner(F.c, &events, &F.o);
    conn_read(F.c, 1);
    client_peer(0);
    if (cert) {
        assert_int_equal(SSL_use_certificate(F.p.ssl, cert->x), 1);
        assert_int_equal(SSL_use_PrivateKey(F.p.ssl, cert->key), 1);
    }
}

static void test_mtls_accepts_a_listed_client(void **state)
{
    (void)state;
    mtls_client(&cli);
    RUN_UNTIL(F.p.hs_done);
    peer_send(&F.p, "hi", 2);
    RUN_UNTIL(F.o.got.n == 2);
    assert_int_equal(stat_get(&F.st.handshake), 1);
    assert_int_equal(stat_get(&F.st.no_certificate), 0);
    finish();
}

static void mtls_refused(cert_t *cert, stat_t *want)
{
    mtls_client(cert);
    RUN_UNTIL(F.o.eofs == 1);
    assert_int_equal(F.o.eof_err, UV_EPROTO);
    assert_int_equal(F.o.reads, 0);
    assert_int_equal(stat_get(want), 1);
    assert_int_equal(stat_get(&F.st.handshake), 0);
    uint64_t total = stat_get(&F.st.fail_verify_error) + stat_get(&F.st.fail_verify_san) +
                     stat_get(&F.st.fail_verify_no_cert) + stat_get(&F.st.connection_error);
    assert_int_equal(total, 1);
    finish();
}

static void test_mtls_no_certificate(void **state)
{
    (void)state;
    mtls_refused(NULL, &F.st.fail_verify_no_cert);
}

static void test_mtls_san_not_listed(void **state)
{
    (void)state;
    mtls_refused(&srv, &F.st.fail_verify_san); /* trusted, but server.test is not listed */
}

static void test_mtls_untrusted(void **state)
{
    (void)state;
    mtls_refused(&rogue, &F.st.fail_verify_error);
}

/* ---- resumption ---- */

static void test_session_resumed(void **state)
{
    int version = **(const int **)state;
    server_conn(0);
    client_peer(version);
    RUN_UNTIL(F.p.hs_done);
    peer_send(&F.p, "a", 1);
    RUN_UNTIL(F.o.got.n == 1);
    conn_write_copy(F.c, "b", 1);
    RUN_UNTIL(F.p.got.n == 1); /* TLS 1.3: the tickets came before it */
    SSL_SESSION *sess = SSL_get1_session(F.p.ssl);
    assert_non_null(sess);
    assert_true(SSL_SESSION_is_resumable(sess));
    finish();
    RUN_UNTIL(F.p.zero_return);
    SSL_shutdown(F.p.ssl); /* freed without it, OpenSSL marks the session not resumable */
    peer_free(&F.p);
    memset(&F.p, 0, sizeof F.p);
    F.p.fd = -1;
    bytes_free(&F.o.got);
    memset(&F.o, 0, sizeof F.o);

    server_conn(0);
    client_peer(version);
    SSL_set_session(F.p.ssl, sess);
    SSL_SESSION_free(sess);
    RUN_UNTIL(F.p.hs_done);
    peer_send(&F.p, "c", 1);
    RUN_UNTIL(F.o.got.n == 1);
    assert_true(SSL_session_reused(F.p.ssl));
    assert_int_equal(stat_get(&F.st.handshake), 2);
    assert_int_equal(stat_get(&F.st.session_reused), 1);
    finish();
}

int main(void)
{
    static const int full_close = 1, half_close = 0, permissive = 1, strict = 0;
#define T(f)       cmocka_unit_test_setup_teardown(f, setup, teardown)
#define TP(f, arg) cmocka_unit_test_prestate_setup_teardown(f, setup, teardown, (void *)&(arg))
    const struct CMUnitTest tests[] = {
        TP(test_server_handshake_and_echo, v13),
        TP(test_server_handshake_and_echo, v12),
        T(test_server_backpressure),
        T(test_server_writes_before_the_handshake),
        T(test_server_two_writes_held_in_order),
        T(test_permissive_plaintext_two_writes_held_in_order),
        T(test_permissive_plaintext),
        T(test_permissive_plaintext_write_before_first_byte),
        T(test_permissive_plaintext_held_write_stays_first),
        T(test_permissive_plaintext_held_write_then_shutdown),
        T(test_permissive_plaintext_shutdown_before_first_byte),
        T(test_permissive_plaintext_paused_before_first_byte),
        T(test_permissive_tls),
        T(test_strict_refuses_plaintext),
        TP(test_shutdown_sends_close_notify, v13),
        TP(test_shutdown_sends_close_notify, v12),
        TP(test_client_close_notify_is_eof, v13),
        TP(test_client_close_notify_is_eof, v12),
        T(test_close_notify_while_paused),
        T(test_bad_record_while_paused),
        T(test_bad_record_while_paused_then_fin),
        T(test_fin_without_close_notify_is_eof),
        T(test_shutdown_before_the_handshake),
        TP(test_close_notify_survives_a_close_once_drained, v13),
        TP(test_close_notify_survives_a_close_once_drained, v12),
        T(test_key_update_is_answered),
        T(test_large_write_watermarks),
        TP(test_client_handshake, v13),
        TP(test_client_handshake, v12),
        T(test_client_wrong_name),
        T(test_client_san_not_listed),
        T(test_client_untrusted),
        T(test_client_shutdown_while_connecting),
        T(test_client_server_closes_at_once),
        TP(test_peer_closes_mid_handshake, half_close),
        TP(test_peer_closes_mid_handshake, full_close),
        T(test_close_mid_handshake_drops_held_writes),
        TP(test_peer_closes_before_a_byte, strict),
        TP(test_peer_closes_before_a_byte, permissive),
        T(test_mtls_accepts_a_listed_client),
        T(test_mtls_no_certificate),
        T(test_mtls_san_not_listed),
        T(test_mtls_untrusted),
        TP(test_session_resumed, v13),
        TP(test_session_resumed, v12),
    };
#undef T
#undef TP
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
