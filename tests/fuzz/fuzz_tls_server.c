/* proxy/transport_tls.c, server side, over a real socket: a conn_t on one end of a socketpair
 * (uv_tcp_open takes a Unix-domain stream socket), under an owner that echoes the plaintext it
 * reads, and on the other end a client of the harness's own: OpenSSL over memory BIOs that
 * really handshakes (so coverage reaches past the ClientHello), or raw bytes. The loop is
 * turned by hand (UV_RUN_NOWAIT, then loop_pass as the worker's prepare and check passes do),
 * one client socket write per turn, so that the cuts below are the reads the server sees.
 *
 * Input: eight knob bytes, then the payload (the plaintext the client sends after its
 * handshake, or its raw bytes).
 *   byte 0  bit 0 PERMISSIVE (else STRICT); bit 1 no handshake: the payload is written raw;
 *           bit 2 one byte of the client's stream is corrupted (bytes 2-4); bit 3 the owner
 *           pauses reading (byte 5); bit 4 the owner shuts down (byte 6); bit 5 the owner
 *           writes a greeting before the first byte; bit 6 the client speaks TLS 1.2 (else
 *           1.3); bit 7 the client asks for a KeyUpdate half way (TLS 1.3).
 *   byte 1  bits 0-1 how the client's bytes are cut into socket writes (fuzz_glue.h
 *           next_slice); bits 2-3 how the client ends: close_notify then FIN, FIN only,
 *           close_notify only (FIN once nothing moves any more), the socket closed at once
 *           (what came back left unread, so that the server's read fails);
 *           bit 4 the owner flushes from inside on_read; bit 5 small socket buffers (writes
 *           back up, partial writes, watermarks); bit 6 close_notify goes right behind the
 *           last plaintext, in the same socket write; bit 7 the greeting is two writes, from
 *           two loop passes (two writes held).
 *   bytes 2-3  the offset of the corrupted byte in the client's stream (little endian);
 *   byte 4  what it is XORed with (0: 0x80).
 *   byte 5  bits 0-2 the delivery after which the owner pauses (0: before the first byte),
 *           bits 3-7 for how many turns (times 4).
 *   byte 6  bits 0-3 the delivery after which the owner shuts down (0: at once, before the
 *           handshake); bits 4-7 seed of the generator (cuts, record sizes).
 *   byte 7  bits 0-1 how the plaintext is cut into SSL_write calls (whole, 1..16, 1..512,
 *           1..4096 bytes); bits 2-4 the payload repeated (5: x16, 6: x128, 7: x1024, capped
 *           at 256 KiB) for reads and writes past one buffer and the watermarks.
 *
 * The owner echoes each read (a reference on the read buffer, or a copy for small pieces),
 * stops reading above the high-water mark until on_drain, and at on_eof(UV_EOF) shuts down and
 * closes once nothing is queued, as h1_server does after a half-close; an error closes at once.
 *
 * Invariants (abort() on a violation): no on_read while the owner has reading off, or after
 * on_eof; in STRICT mode no plaintext before a completed handshake (and none at all from raw
 * bytes); what the owner receives is a prefix of what the client sent (its plaintext over TLS,
 * its raw bytes over a PERMISSIVE connection that turned plain), all of it when nothing was
 * corrupted and the owner read to the end (on_eof(UV_EOF)); what the client receives is a
 * prefix of the greeting and the echo, all of it followed by close_notify (or FIN) when
 * nothing was corrupted; at most one on_eof, on_closed once; an honest TLS client always
 * completes its handshake and ends with UV_EOF, with no failure counted; at most one of the
 * ssl stats per connection; the owner hears the end once the client has ended (a close_notify
 * alone must be enough); and at the end every handle, buffer and deferred entry is gone.
 * FUZZ_SKIP_KNOWN=1 steers around the bugs in regressions/tls_server/ (each named where). */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "config/diag.h"
#include "proxy/conn.h"
#include "proxy/loop.h"
#include "proxy/transport_tls.h"
#include "tests/fuzz/fuzz_glue.h"
#include "tls/tls.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define KNOBS      8
#define REPEAT_MAX (256 * 1024)
#define QUIET      8      /* turns without progress that mean nothing more will happen */
#define TURNS_MAX  400000 /* a run that takes more is a livelock */

static const char greeting[] = "220 remora\r\n";

/* ---- set up once: a certificate, the listener's context, the client's ---- */

static tls_cache_t cache;
static tls_ctx_t *sctx;
static SSL_CTX *client_ctx;
static char dir[] = "/tmp/fuzz-tls-server-XXXXXX";
static char chain_path[128], key_path[128];

static void remove_files(void)
{
    unlink(chain_path);
    unlink(key_path);
    rmdir(dir);
}

static void make_cert(void)
{
    check(mkdtemp(dir) != NULL);
    snprintf(chain_path, sizeof chain_path, "%s/chain.pem", dir);
    snprintf(key_path, sizeof key_path, "%s/key.pem", dir);
    atexit(remove_files);
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    check(key != NULL && x != NULL);
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 10L * 365 * 86400);
    X509_NAME *name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"server.test", -1,
                               -1, 0);
    X509_set_issuer_name(x, name);
    X509_set_pubkey(x, key);
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
    X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, &v3, NID_subject_alt_name, "DNS:server.test");
    check(e != NULL);
    X509_add_ext(x, e, -1);
    X509_EXTENSION_free(e);
    check(X509_sign(x, key, EVP_sha256()) > 0);
    FILE *f = fopen(chain_path, "w");
    check(f != NULL);
    PEM_write_X509(f, x);
    fclose(f);
    f = fopen(key_path, "w");
    check(f != NULL);
    PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL);
    fclose(f);
    X509_free(x);
    EVP_PKEY_free(key);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    signal(SIGPIPE, SIG_IGN); /* a client gone is a write error */
    make_cert();
    cfg_listener_tls_t cfg = {
        .mode = TLS_STRICT,
        .path = "listeners[0].tls",
        .cert_chain = chain_path,
        .private_key = key_path,
    };
    diag_t d = {0};
    sctx = tls_server_ctx(&cache, &cfg, "fuzz", &d);
    for (size_t i = 0; i < d.n; i++)
        fprintf(stderr, "%s\n", d.lines[i]);
    diag_free(&d);
    check(sctx != NULL);
    client_ctx = SSL_CTX_new(TLS_client_method());
    check(client_ctx != NULL);
    SSL_CTX_set_min_proto_version(client_ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(client_ctx, SSL_VERIFY_NONE, NULL);
    return 0;
}

/* ---- the client ---- */

enum end { END_NOTIFY_FIN, END_FIN, END_NOTIFY, END_CLOSE };

typedef struct client {
    int fd;
    SSL *ssl; /* NULL: raw bytes */
    BIO *bio_in, *bio_out;
    sink_t wire; /* for the socket, from wire_off on */
    size_t wire_off;
    size_t made;  /* bytes of the stream made so far (the corruption's clock) */
    sink_t sent;  /* bytes the socket took, as they were sent */
    sink_t plain; /* plaintext handed to SSL_write */
    sink_t got;   /* what came back (decrypted, or raw) */
    size_t payload_pos;
    unsigned hs_done : 1, failed : 1, zero_return : 1, eof : 1;
    unsigned notify_sent : 1, fin_sent : 1, closed : 1, ended : 1, key_updated : 1;
    unsigned deaf : 1; /* reads nothing more */
    unsigned close_in; /* END_CLOSE: turns left before the close */
    size_t dropped;    /* bytes made that never went: the close came first */
} client_t;

/* ---- the owner: echoes what it reads ---- */

typedef struct owner {
    conn_t *c;
    sink_t got;    /* plaintext delivered */
    sink_t echoed; /* written back, greeting first */
    unsigned reads, eofs, closed;
    int eof_err;
    unsigned want_read : 1; /* what the owner last asked conn_read for */
    unsigned water : 1;     /* paused above the high-water mark until on_drain */
    unsigned shut : 1, ending : 1, write_failed : 1;
    unsigned pause_at, pause_turns, paused_turns_left; /* pause_at: delivery, ~0u: never */
    unsigned shut_at;                                  /* delivery, ~0u: never */
    unsigned flush_in_read : 1;
    unsigned shut_later : 1; /* steering around a known bug: shut down on the next turn */
} owner_t;

typedef struct run {
    loop_t loop;
    conn_t *c;
    owner_t o;
    client_t cl;
    ssl_stats_t st;
    rng_t rng;
    int permissive, raw, tls12, key_update, small_bufs, eager_notify;
    unsigned cut, chunk;
    enum end end;
    int corrupt;
    size_t corrupt_at;
    uint8_t corrupt_xor;
    const uint8_t *payload;
    size_t npayload;
} run_t;

static run_t *R; /* the owner's callbacks get only their owner; each run is one connection */

static void owner_read(owner_t *o, int on)
{
    o->want_read = on ? 1 : 0;
    conn_read(o->c, on);
}

static int prefix_of(const sink_t *a, const sink_t *b)
{
    return a->n <= b->n && (a->n == 0 || memcmp(a->p, b->p, a->n) == 0);
}

static const sink_t *reference(run_t *r)
{
    return conn_is_tls(r->c) ? &r->cl.plain : &r->cl.sent;
}

static void owner_shutdown(owner_t *o)
{
    if (o->shut)
        return;
    o->shut = 1;
    conn_shutdown(o->c);
}

/* Known bugs (regressions/tls_server/permissive-held-write-overtaken-by-a-flush and
 * permissive-held-write-lost-after-a-shutdown-from-on-read): what the owner flushes from inside
 * the first on_read of a PERMISSIVE connection that turned plain, itself or through
 * conn_shutdown, overtakes the writes held before the first byte, which a shutdown then fails.
 * With FUZZ_SKIP_KNOWN the owner flushes and shuts down only later there. */
static int first_plain(const owner_t *o)
{
    return skip_known() && !conn_is_tls(o->c) && o->reads == 1;
}

static void ev_read(void *owner, buf_t *b)
{
    owner_t *o = owner;
    run_t *r = R;
    conn_t *c = o->c;
    check(o->eofs == 0);
    check(!c->closing);
    check(b->len > 0);
    /* Known bug (regressions/tls_server/permissive-plaintext-delivered-while-paused): the
     * first plaintext bytes of a PERMISSIVE connection are delivered whatever conn_read said. */
    check(o->want_read || (skip_known() && !conn_is_tls(c) && o->reads == 0));
    if (!r->permissive)
        check(conn_is_tls(c));
    if (conn_is_tls(c))
        check(stat_get(&r->st.handshake) == 1);
    else
        check(r->cl.sent.n > 0 && (uint8_t)r->cl.sent.p[0] != 0x16);
    if (r->raw && !r->permissive)
        glue_fail(__FILE__, __LINE__, "plaintext from raw bytes in STRICT mode");
    const sink_t *ref = reference(r); /* the new bytes continue it */
    check(o->got.n + b->len <= ref->n && memcmp(ref->p + o->got.n, b->data, b->len) == 0);
    sink_put(&o->got, b->data, b->len);
    o->reads++;
    if (!o->shut) {
        conn_write(c, b, b->data, b->len);
        sink_put(&o->echoed, b->data, b->len);
        if (o->flush_in_read && !first_plain(o))
            conn_flush(c);
        if (conn_over_high_water(c)) {
            o->water = 1;
            owner_read(o, 0);
        }
    }
    if (o->reads == o->shut_at && first_plain(o))
        o->shut_later = 1;
    else if (o->reads == o->shut_at)
        owner_shutdown(o);
    if (o->reads == o->pause_at && o->want_read) {
        owner_read(o, 0);
        o->paused_turns_left = o->pause_turns;
    }
}

static void ev_eof(void *owner, int err)
{
    owner_t *o = owner;
    check(o->eofs == 0);
    check(err < 0);
    o->eofs++;
    o->eof_err = err;
    o->want_read = 0;
    if (err != UV_EOF) {
        conn_close(o->c);
        return;
    }
    /* The client is done: answer what is queued, then close. */
    owner_shutdown(o);
    o->ending = 1;
    conn_notify_empty(o->c);
}

static void ev_drain(void *owner)
{
    owner_t *o = owner;
    if (o->ending) {
        conn_close(o->c);
        return;
    }
    if (o->water) {
        o->water = 0;
        if (!o->paused_turns_left && o->eofs == 0)
            owner_read(o, 1);
    }
}

static void ev_write_error(void *owner, int err)
{
    owner_t *o = owner;
    check(err < 0);
    o->write_failed = 1;
    conn_close(o->c);
}

static void ev_closed(void *owner)
{
    owner_t *o = owner;
    check(o->closed == 0);
    o->closed++;
}

static const conn_events_t events = {
    .on_read = ev_read,
    .on_eof = ev_eof,
    .on_drain = ev_drain,
    .on_write_error = ev_write_error,
    .on_closed = ev_closed,
};

/* An owner's turn: a pause ends. Returns whether anything is still counting down. */
static int owner_turn(owner_t *o)
{
    if (o->shut_later && !o->closed && !o->c->closing) {
        o->shut_later = 0;
        owner_shutdown(o);
        return 1;
    }
    if (!o->paused_turns_left)
        return 0;
    if (--o->paused_turns_left == 0 && !o->closed && !o->c->closing && o->eofs == 0 && !o->water)
        owner_read(o, 1);
    return 1;
}

/* ---- the client's side of the socket ---- */

/* New bytes of the client's stream, corrupted where the knob says. */
static void client_emit(run_t *r, const char *p, size_t n)
{
    client_t *cl = &r->cl;
    size_t at = cl->wire.n;
    sink_put(&cl->wire, p, n);
    if (r->corrupt && r->corrupt_at >= cl->made && r->corrupt_at < cl->made + n)
        cl->wire.p[at + (r->corrupt_at - cl->made)] ^= r->corrupt_xor;
    cl->made += n;
}

static void client_take_output(run_t *r)
{
    client_t *cl = &r->cl;
    char buf[16384];
    int n;
    while (cl->ssl && (n = BIO_read(cl->bio_out, buf, sizeof buf)) > 0)
        client_emit(r, buf, (size_t)n);
}

static size_t wire_left(const client_t *cl)
{
    return cl->wire.n - cl->wire_off;
}

/* One socket write, of the size the cut says. Returns whether bytes went. */
static int client_write_piece(run_t *r)
{
    client_t *cl = &r->cl;
    if (cl->closed || cl->fin_sent || !wire_left(cl))
        return 0;
    size_t scale = r->npayload > 4096 ? 64 : 1;
    size_t n = next_slice(&r->rng, r->cut, scale, wire_left(cl));
    ssize_t k = send(cl->fd, cl->wire.p + cl->wire_off, n, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (k <= 0) {
        if (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
            cl->failed = 1; /* the server is gone: what is left never goes */
            cl->wire_off = cl->wire.n;
        }
        return 0;
    }
    sink_put(&cl->sent, cl->wire.p + cl->wire_off, (size_t)k);
    cl->wire_off += (size_t)k;
    if (cl->wire_off == cl->wire.n)
        cl->wire.n = cl->wire_off = 0;
    return 1;
}

static void client_tls(run_t *r)
{
    client_t *cl = &r->cl;
    if (!cl->hs_done && !cl->failed) {
        ERR_clear_error();
        int rc = SSL_do_handshake(cl->ssl);
        if (rc == 1)
            cl->hs_done = 1;
        else if (SSL_get_error(cl->ssl, rc) != SSL_ERROR_WANT_READ)
            cl->failed = 1;
    }
    while (cl->hs_done && !cl->failed && !cl->zero_return) {
        char buf[16384];
        size_t n;
        ERR_clear_error();
        if (SSL_read_ex(cl->ssl, buf, sizeof buf, &n) == 1) {
            sink_put(&cl->got, buf, n);
            continue;
        }
        int e = SSL_get_error(cl->ssl, 0);
        if (e == SSL_ERROR_ZERO_RETURN)
            cl->zero_return = 1;
        else if (e != SSL_ERROR_WANT_READ)
            cl->failed = 1;
        break;
    }
    ERR_clear_error();
}

/* Everything the socket has for the client. Returns whether bytes came. */
static int client_read(run_t *r)
{
    client_t *cl = &r->cl;
    int did = 0;
    static char buf[65536]; /* not on the stack: ASan would poison and unpoison it every call */
    while (!cl->closed && !cl->eof && !cl->deaf) {
        ssize_t k = recv(cl->fd, buf, sizeof buf, MSG_DONTWAIT);
        if (k > 0) {
            did = 1;
            if (cl->ssl)
                BIO_write(cl->bio_in, buf, (int)k);
            else
                sink_put(&cl->got, buf, (size_t)k);
            continue;
        }
        if (k == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) {
            cl->eof = 1;
            did = 1;
        }
        break;
    }
    if (cl->ssl)
        client_tls(r);
    return did;
}

/* The next plaintext (one SSL_write a turn), the raw bytes (all at once), or the end: once
 * everything made has gone to the socket, or for END_CLOSE a few turns after the last of it
 * was made, whether it has all gone or not. */
static void client_produce(run_t *r)
{
    client_t *cl = &r->cl;
    if (cl->ended || cl->closed)
        return;
    size_t total = r->npayload;
    int healthy = cl->ssl && cl->hs_done && !cl->failed;
    if (healthy && cl->payload_pos < total && !cl->notify_sent) {
        static const size_t max[] = {0, 16, 512, 4096};
        size_t n = total - cl->payload_pos;
        if (r->chunk && n > 1)
            n = rng_upto(&r->rng, max[r->chunk] < n ? max[r->chunk] : n);
        if (r->key_update && !cl->key_updated && cl->payload_pos >= total / 2 &&
            SSL_version(cl->ssl) == TLS1_3_VERSION) {
            cl->key_updated = 1;
            check(SSL_key_update(cl->ssl, SSL_KEY_UPDATE_REQUESTED) == 1);
        }
        size_t done = 0;
        ERR_clear_error();
        if (SSL_write_ex(cl->ssl, r->payload + cl->payload_pos, n, &done) == 1) {
            sink_put(&cl->plain, r->payload + cl->payload_pos, done);
            cl->payload_pos += done;
        } else {
            cl->failed = 1;
        }
        if (cl->payload_pos == total && r->eager_notify && !cl->failed &&
            (r->end == END_NOTIFY_FIN || r->end == END_NOTIFY)) {
            cl->notify_sent = 1; /* right behind the last record, in the same write */
            SSL_shutdown(cl->ssl);
        }
        ERR_clear_error();
    } else if (!cl->ssl && cl->payload_pos < total) {
        client_emit(r, (const char *)r->payload, total);
        cl->payload_pos = total;
    }
    client_take_output(r);
    int handed = cl->payload_pos == total && (!cl->ssl || cl->hs_done);
    if (r->end == END_CLOSE && !cl->deaf && (handed || cl->failed)) {
        /* From now on what comes back stays unread, and in a few turns the socket is closed,
         * sent or not: a close with unread bytes resets, and the server's read fails. */
        cl->deaf = 1;
        cl->close_in = 3;
    }
    if (cl->deaf) {
        if (--cl->close_in == 0) {
            close(cl->fd);
            cl->closed = cl->ended = 1;
            cl->dropped = wire_left(cl);
            cl->wire.n = cl->wire_off = 0;
        }
        return;
    }
    if (wire_left(cl))
        return;
    if (cl->ssl && !cl->hs_done && !cl->failed)
        return; /* the handshake goes on */
    healthy = cl->ssl && cl->hs_done && !cl->failed;
    if (healthy && cl->payload_pos < total)
        return; /* more next turn */
    if (healthy && !cl->notify_sent && (r->end == END_NOTIFY_FIN || r->end == END_NOTIFY)) {
        cl->notify_sent = 1;
        ERR_clear_error();
        SSL_shutdown(cl->ssl);
        ERR_clear_error();
        client_take_output(r);
        return;
    }
    cl->ended = 1;
    if (r->end != END_NOTIFY || !healthy) {
        shutdown(cl->fd, SHUT_WR);
        cl->fin_sent = 1;
    }
}

/* ---- one run ---- */

static void small_buffers(int fd)
{
    int n = 4096;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &n, sizeof n);
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &n, sizeof n);
}

/* A fingerprint of everything that can move: equal for QUIET turns means nothing will. */
static uint64_t progress(run_t *r)
{
    const client_t *cl = &r->cl;
    const owner_t *o = &r->o;
    uint64_t h = cl->sent.n;
    h = h * 31 + cl->got.n;
    h = h * 31 + cl->made;
    h = h * 31 + (cl->eof | cl->zero_return << 1 | cl->failed << 2 | cl->ended << 3);
    h = h * 31 + cl->close_in;
    h = h * 31 + o->got.n;
    h = h * 31 + o->eofs + 2 * o->closed;
    h = h * 31 + r->loop.bufs.live;
    h = h * 31 + (r->loop.deferred != NULL);
    return h;
}

static void turn(run_t *r)
{
    client_produce(r);
    client_write_piece(r);
    uv_run(&r->loop.uv, UV_RUN_NOWAIT);
    loop_pass(&r->loop);
    client_read(r);
}

/* Turn until nothing moves any more. */
static void settle(run_t *r, unsigned *turns)
{
    uint64_t last = progress(r);
    unsigned still = 0;
    while (still < QUIET) {
        check(++*turns < TURNS_MAX);
        turn(r);
        int counting = owner_turn(&r->o);
        uint64_t now = progress(r);
        still = now == last && !counting && !wire_left(&r->cl) ? still + 1 : 0;
        last = now;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < KNOBS)
        return 0;
    run_t *r = calloc(1, sizeof *r);
    check(r != NULL);
    R = r;
    uint8_t k0 = data[0], k1 = data[1];
    r->permissive = k0 & 1;
    r->raw = (k0 >> 1) & 1;
    r->corrupt = (k0 >> 2) & 1;
    r->tls12 = (k0 >> 6) & 1;
    r->key_update = (k0 >> 7) & 1;
    r->cut = k1 & 3;
    r->end = (enum end)((k1 >> 2) & 3);
    r->small_bufs = (k1 >> 5) & 1;
    r->eager_notify = (k1 >> 6) & 1;
    r->corrupt_at = (size_t)data[2] | (size_t)data[3] << 8;
    r->corrupt_xor = data[4] ? data[4] : 0x80;
    r->chunk = data[7] & 3;
    r->rng.s = (uint64_t)(data[6] >> 4) << 40 | (uint64_t)data[7] << 32 | 0x7150;

    /* The payload, repeated for the large runs. */
    size_t n = size - KNOBS;
    unsigned rep = (data[7] >> 2) & 7;
    size_t times = rep == 5 ? 16 : rep == 6 ? 128 : rep == 7 ? 1024 : 1;
    size_t total = n * times > REPEAT_MAX ? REPEAT_MAX : n * times;
    uint8_t *payload = malloc(total ? total : 1);
    check(payload != NULL);
    for (size_t at = 0; at < total; at += n)
        memcpy(payload + at, data + KNOBS, total - at < n ? total - at : n);
    r->payload = payload;
    r->npayload = total;

    check(loop_init(&r->loop, NULL) == 0);
    int fds[2];
    check(socketpair(AF_UNIX, SOCK_STREAM, 0, fds) == 0);
    if (r->small_bufs) {
        small_buffers(fds[0]);
        small_buffers(fds[1]);
    }
    conn_t *c = conn_new(&r->loop);
    check(c != NULL);
    check(uv_tcp_open(&c->tcp, fds[0]) == 0);
    r->c = c;
    c->connected = 1; /* as conn_accept leaves it */
    check(transport_tls_server(c, sctx, &r->st, r->permissive) == 0);

    owner_t *o = &r->o;
    o->c = c;
    o->pause_at = (k0 & 8) ? data[5] & 7 : ~0u;
    o->pause_turns = 1 + 4 * (data[5] >> 3);
    o->shut_at = (k0 & 16) ? data[6] & 15 : ~0u;
    o->flush_in_read = (k1 >> 4) & 1;
    conn_set_owner(c, &events, o);
    owner_read(o, 1);
    if ((k0 & 32) && (k1 & 0x80)) { /* two writes held: the transport keeps them in order */
        conn_write_copy(c, greeting, 4);
        loop_pass(&r->loop);
        conn_write_copy(c, greeting + 4, sizeof greeting - 5);
        sink_put(&o->echoed, greeting, sizeof greeting - 1);
    } else if (k0 & 32) {
        conn_write_copy(c, greeting, sizeof greeting - 1);
        sink_put(&o->echoed, greeting, sizeof greeting - 1);
    }
    if (o->shut_at == 0)
        owner_shutdown(o);
    if (o->pause_at == 0) {
        owner_read(o, 0);
        o->paused_turns_left = o->pause_turns;
    }

    client_t *cl = &r->cl;
    cl->fd = fds[1];
    check(fcntl(cl->fd, F_SETFL, fcntl(cl->fd, F_GETFL) | O_NONBLOCK) == 0);
    if (!r->raw) {
        cl->ssl = SSL_new(client_ctx);
        check(cl->ssl != NULL);
        cl->bio_in = BIO_new(BIO_s_mem());
        cl->bio_out = BIO_new(BIO_s_mem());
        check(cl->bio_in && cl->bio_out);
        SSL_set_bio(cl->ssl, cl->bio_in, cl->bio_out);
        SSL_set_connect_state(cl->ssl);
        SSL_set_max_proto_version(cl->ssl, r->tls12 ? TLS1_2_VERSION : TLS1_3_VERSION);
        SSL_set_tlsext_host_name(cl->ssl, "server.test");
        SSL_set_alpn_protos(cl->ssl, (const unsigned char *)"\x02h2\x08http/1.1", 12);
        client_tls(r); /* the ClientHello */
    }

    loop_pass(&r->loop); /* as the worker's check pass does after the accept: the greeting
                          * is in the transport before the client's first byte */
    unsigned turns = 0;
    settle(r, &turns);
    int clean = !r->corrupt || r->corrupt_at >= cl->made;
    /* A client that sent close_notify and waits for ours: the owner must have heard the end.
     * Known bug (regressions/tls_server/close-notify-found-while-paused-never-told): a
     * close_notify read while the owner is paused (by itself or by the watermarks) is told only
     * if more bytes come. */
    if (r->end == END_NOTIFY && clean && !r->raw && !skip_known())
        check(o->eofs == 1);
    if (!cl->fin_sent && !cl->closed) {
        shutdown(cl->fd, SHUT_WR); /* nothing moves any more: end it */
        cl->fin_sent = 1;
        settle(r, &turns);
    }
    /* The client has ended: the owner heard it (or a write failed first) and closed. */
    check(o->closed == 1);
    check(o->eofs == 1 || o->write_failed);
    clean = !r->corrupt || r->corrupt_at >= cl->made;
    int honest_tls = clean && !r->raw && !cl->dropped; /* all it made went, unchanged */
    int plain = r->permissive && cl->sent.n > 0 && (uint8_t)cl->sent.p[0] != 0x16;

    if (getenv("FUZZ_VERBOSE")) /* what a run did, to write seeds with */
        fprintf(stderr,
                "turns %u, client stream %zu bytes (plaintext %zu), handshake %d, tls %d, "
                "owner got %zu in %u reads, eof %d, write failed %d, echoed %zu, client got %zu, "
                "close_notify %d, client failed %d, stats: handshake %lu connection_error %lu\n",
                turns, cl->made, cl->plain.n, cl->hs_done, !r->raw, o->got.n, o->reads, o->eof_err,
                o->write_failed, o->echoed.n, cl->got.n, cl->zero_return, cl->failed,
                (unsigned long)stat_get(&r->st.handshake),
                (unsigned long)stat_get(&r->st.connection_error));
    if (getenv("FUZZ_VERBOSE")) { /* where the client's records begin, for corruption seeds */
        fprintf(stderr, "client records (offset type length):");
        for (size_t at = 0; at + 5 <= cl->sent.n;) {
            const uint8_t *h = (const uint8_t *)cl->sent.p + at;
            fprintf(stderr, " %zu:%u:%u", at, h[0], h[3] << 8 | h[4]);
            at += 5 + (size_t)(h[3] << 8 | h[4]);
        }
        fprintf(stderr, "\n");
    }
    uint64_t failures = stat_get(&r->st.fail_verify_no_cert) + stat_get(&r->st.fail_verify_error) +
                        stat_get(&r->st.fail_verify_san) + stat_get(&r->st.connection_error);
    check(stat_get(&r->st.handshake) + failures <= 1);
    check(stat_get(&r->st.session_reused) == 0);
    check(stat_get(&r->st.fail_verify_no_cert) + stat_get(&r->st.fail_verify_error) +
              stat_get(&r->st.fail_verify_san) ==
          0); /* no client certificates asked for */
    if (r->raw && !r->permissive) {
        check(o->got.n == 0);
        check(stat_get(&r->st.handshake) == 0);
    }
    if (plain)
        check(stat_get(&r->st.handshake) + failures == 0);
    if (honest_tls) {
        check(stat_get(&r->st.handshake) == 1 && failures == 0);
        check(cl->hs_done);
    }
    if (r->end != END_CLOSE && (!r->raw || plain)) /* raw to TLS: the client reads alerts */
        check(prefix_of(&cl->got, &o->echoed));
    if ((honest_tls || (clean && r->raw && plain)) && r->end != END_CLOSE) {
        /* Nothing broken: all of it there and all of it back, then the server's end. */
        check(o->eof_err == UV_EOF);
        check(!o->write_failed);
        check(o->got.n == (honest_tls ? cl->plain.n : cl->sent.n));
        check(cl->got.n == o->echoed.n);
        /* Known bug (regressions/tls_server/close-notify-cancelled-by-a-close-once-drained):
         * close_notify is a write of the transport's own that conn.c does not count, so an
         * owner that closes once its queue is empty cancels it when the socket is backed up. */
        check(honest_tls ? (cl->zero_return || (skip_known() && cl->eof)) && !cl->failed : cl->eof);
    }

    /* Every handle closed, every buffer back, nothing left deferred. */
    for (unsigned i = 0; i < 1000 && uv_loop_alive(&r->loop.uv); i++)
        uv_run(&r->loop.uv, UV_RUN_NOWAIT);
    check(!uv_loop_alive(&r->loop.uv));
    unsigned handles = 0;
    uv_walk(&r->loop.uv, count_handle, &handles);
    check(handles == 0);
    check(r->loop.deferred == NULL && r->loop.dirty == NULL);
    check(r->loop.bufs.live == 0);
    loop_free(&r->loop);

    if (!cl->closed)
        close(cl->fd);
    SSL_free(cl->ssl);
    ERR_clear_error();
    sink_free(&cl->wire);
    sink_free(&cl->sent);
    sink_free(&cl->plain);
    sink_free(&cl->got);
    sink_free(&o->got);
    sink_free(&o->echoed);
    free(payload);
    free(r);
    R = NULL;
    return 0;
}
