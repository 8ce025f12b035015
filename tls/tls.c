#include "tls/tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/text.h"

/* TLS 1.2 suites: ECDHE with AEAD only (Mozilla intermediate; passes RFC 9113's block list).
 * TLS 1.3 keeps OpenSSL's default suites. */
#define TLS12_CIPHERS                                                                              \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"     \
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
#define TLS_GROUPS "X25519:P-256:P-384"

/* What the server selects by ALPN, in its order of preference: HTTP/2 first (h2_server.c picks
 * the codec from the result); clients still offer HTTP/1.1 only, until an HTTP/2 client codec. */
static const unsigned char alpn_server[] = "\x02h2\x08http/1.1";
static const unsigned char alpn_client[] = "\x08http/1.1";

/* ---- files ---- */

typedef struct pem {
    char *data;
    size_t len;
} pem_t;

static int read_file(const char *path, pem_t *out, const char **why)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        *why = strerror(errno);
        return -1;
    }
    out->data = malloc(TLS_FILE_MAX + 1);
    out->len = out->data ? fread(out->data, 1, TLS_FILE_MAX + 1, f) : 0;
    int bad = ferror(f);
    fclose(f);
    *why = !out->data                ? "out of memory"
           : bad                     ? "read error"
           : out->len > TLS_FILE_MAX ? "larger than 1 MiB"
           : out->len == 0           ? "empty"
                                     : NULL;
    if (*why) {
        free(out->data);
        out->data = NULL;
        return -1;
    }
    return 0;
}

/* Every certificate in a PEM buffer, in order; NULL when there is none or one is broken. */
static STACK_OF(X509) * read_certs(const pem_t *p)
{
    BIO *b = BIO_new_mem_buf(p->data, (int)p->len);
    STACK_OF(X509) *certs = sk_X509_new_null();
    X509 *x;
    while (b && certs && (x = PEM_read_bio_X509(b, NULL, NULL, NULL)))
        if (!sk_X509_push(certs, x))
            X509_free(x);
    unsigned long err = ERR_peek_last_error();
    if (ERR_GET_REASON(err) == PEM_R_NO_START_LINE && sk_X509_num(certs) > 0)
        ERR_clear_error(); /* the normal end of the list */
    BIO_free(b);
    if (!certs || sk_X509_num(certs) == 0 || ERR_peek_error()) {
        sk_X509_pop_free(certs, X509_free);
        return NULL;
    }
    return certs;
}

static EVP_PKEY *read_key(const pem_t *p)
{
    BIO *b = BIO_new_mem_buf(p->data, (int)p->len);
    EVP_PKEY *k = b ? PEM_read_bio_PrivateKey(b, NULL, NULL, NULL) : NULL;
    BIO_free(b);
    return k;
}

/* ---- building a context ---- */

typedef struct build {
    const char *source, *path;
    diag_t *d;
    int failed;
} build_t;

static void fail(build_t *b, const char *field, const char *file, const char *why)
{
    char err[160] = "";
    unsigned long e = ERR_peek_last_error();
    if (e)
        ERR_error_string_n(e, err, sizeof err);
    ERR_clear_error();
    char path[512];
    snprintf(path, sizeof path, "%s.%s", b->path, field);
    diag_add(b->d, b->source, path, "cannot use %s: %s%s%s", file, why, err[0] ? ": " : "", err);
    b->failed = 1;
}

static SSL_CTX *new_ssl_ctx(int server)
{
    SSL_CTX *s = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
    if (!s)
        return NULL;
    SSL_CTX_set_min_proto_version(s, TLS1_2_VERSION);
    SSL_CTX_set_options(s, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION |
                               SSL_OP_CIPHER_SERVER_PREFERENCE);
    SSL_CTX_set_mode(s, SSL_MODE_RELEASE_BUFFERS); /* an idle connection holds no records */
    SSL_CTX_set_read_ahead(s, 1);
    if (!SSL_CTX_set_cipher_list(s, TLS12_CIPHERS) || !SSL_CTX_set1_groups_list(s, TLS_GROUPS)) {
        SSL_CTX_free(s);
        return NULL;
    }
    return s;
}

static void use_chain(build_t *b, SSL_CTX *s, char *const files[3], const pem_t *chain,
                      const pem_t *key)
{
    const char *file = files[0];
    STACK_OF(X509) *certs = read_certs(chain);
    EVP_PKEY *k = read_key(key);
    if (!certs)
        fail(b, "certificate.file.certificateChain", file, "no PEM certificate in it");
    else if (!k)
        fail(b, "certificate.file.privateKey", files[1], "no PEM private key in it");
    else if (SSL_CTX_use_certificate(s, sk_X509_value(certs, 0)) != 1)
        fail(b, "certificate.file.certificateChain", file, "certificate refused");
    else if (SSL_CTX_use_PrivateKey(s, k) != 1 || SSL_CTX_check_private_key(s) != 1)
        fail(b, "certificate.file.privateKey", files[1], "the key does not match the certificate");
    for (int i = 1; !b->failed && certs && i < sk_X509_num(certs); i++)
        if (SSL_CTX_add1_chain_cert(s, sk_X509_value(certs, i)) != 1)
            fail(b, "certificate.file.certificateChain", file, "chain certificate refused");
    sk_X509_pop_free(certs, X509_free);
    EVP_PKEY_free(k);
}

static void use_trust(build_t *b, SSL_CTX *s, const char *file, const pem_t *trust, int server)
{
    STACK_OF(X509) *certs = read_certs(trust);
    if (!certs) {
        fail(b, "validation.trust.file.certificateChain", file, "no PEM certificate in it");
        return;
    }
    X509_STORE *store = SSL_CTX_get_cert_store(s);
    STACK_OF(X509_NAME) *names = server ? sk_X509_NAME_new_null() : NULL;
    for (int i = 0; i < sk_X509_num(certs); i++) {
        X509 *x = sk_X509_value(certs, i);
        X509_STORE_add_cert(store, x);
        X509_NAME *n = names ? X509_NAME_dup(X509_get_subject_name(x)) : NULL;
        if (n && !sk_X509_NAME_push(names, n))
            X509_NAME_free(n);
    }
    if (names)
        SSL_CTX_set_client_CA_list(s, names); /* tells clients which certificate to send */
    sk_X509_pop_free(certs, X509_free);
}

/* ---- SAN checks ---- */

int tls_cert_has_san(X509 *cert, const char *name, size_t len)
{
    GENERAL_NAMES *g = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    int found = 0;
    for (int i = 0; g && !found && i < sk_GENERAL_NAME_num(g); i++) {
        const GENERAL_NAME *n = sk_GENERAL_NAME_value(g, i);
        const ASN1_IA5STRING *s = n->type == GEN_DNS   ? n->d.dNSName
                                  : n->type == GEN_URI ? n->d.uniformResourceIdentifier
                                                       : NULL;
        found = s && (size_t)s->length == len && memcmp(s->data, name, len) == 0;
    }
    GENERAL_NAMES_free(g);
    return found;
}

/* At depth 0, after the chain itself passed: the leaf must carry one of the SANs. A miss is
 * reported as a host mismatch, which is what tls_failure_stat counts as fail_verify_san. */
static int verify_cb(int ok, X509_STORE_CTX *x)
{
    if (!ok || X509_STORE_CTX_get_error_depth(x) != 0)
        return ok;
    SSL *s = X509_STORE_CTX_get_ex_data(x, SSL_get_ex_data_X509_STORE_CTX_idx());
    const tls_ctx_t *t = SSL_CTX_get_app_data(SSL_get_SSL_CTX(s));
    if (!t || t->nsans == 0)
        return 1;
    X509 *leaf = X509_STORE_CTX_get_current_cert(x);
    for (unsigned i = 0; i < t->nsans; i++)
        if (tls_cert_has_san(leaf, t->sans[i], strlen(t->sans[i])))
            return 1;
    X509_STORE_CTX_set_error(x, X509_V_ERR_HOSTNAME_MISMATCH);
    return 0;
}

/* ---- the server side ---- */

static int select_alpn(SSL *s, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned inlen, void *arg)
{
    (void)s;
    (void)arg;
    unsigned char *o;
    if (SSL_select_next_proto(&o, outlen, alpn_server, sizeof alpn_server - 1, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK; /* nothing in common: no ALPN, HTTP/1.1 */
    *out = o;
    return SSL_TLSEXT_ERR_OK;
}

static void setup_server(tls_ctx_t *t, build_t *b, const pem_t *f, int validate)
{
    SSL_CTX *s = t->ssl;
    use_chain(b, s, t->files, &f[0], &f[1]);
    SSL_CTX_set_alpn_select_cb(s, select_alpn, NULL);
    /* Sessions resumed across this context's connections only (required with client certs). */
    SSL_CTX_set_session_id_context(s, t->digest, SSL_MAX_SID_CTX_LENGTH);
    if (!validate)
        return;
    use_trust(b, s, t->files[2], &f[2], 1);
    SSL_CTX_set_verify(s, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, verify_cb);
}

/* ---- the client side ---- */

static int peer_key(const struct sockaddr *sa, unsigned char out[28])
{
    memset(out, 0, 28);
    if (!sa)
        return 0;
    size_t n = sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    memcpy(out, sa, n < 28 ? n : 28);
    return 1;
}

static void free_peer_key(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
                          void *argp)
{
    (void)parent;
    (void)ad;
    (void)idx;
    (void)argl;
    (void)argp;
    free(ptr);
}

/* Where a client session keeps its endpoint's key (freed with the session). */
static int session_index(void)
{
    static _Atomic int idx = -1;
    int i = atomic_load(&idx);
    if (i < 0) {
        int fresh = SSL_get_ex_new_index(0, NULL, NULL, NULL, free_peer_key);
        int expected = -1;
        i = atomic_compare_exchange_strong(&idx, &expected, fresh) ? fresh : expected;
    }
    return i;
}

/* A new session ticket from the server: kept for the next connection to the same endpoint. */
static int on_new_session(SSL *s, SSL_SESSION *sess)
{
    tls_ctx_t *t = SSL_CTX_get_app_data(SSL_get_SSL_CTX(s));
    const unsigned char *peer = SSL_get_ex_data(s, session_index());
    if (!t || !peer)
        return 0;
    pthread_mutex_lock(&t->lock);
    tls_session_slot_t *slot = NULL;
    for (unsigned i = 0; i < TLS_SESSIONS_MAX && !slot; i++)
        if (t->sessions[i].session && memcmp(t->sessions[i].peer, peer, 28) == 0)
            slot = &t->sessions[i];
    if (!slot)
        slot = &t->sessions[t->next_slot++ % TLS_SESSIONS_MAX];
    SSL_SESSION_free(slot->session);
    memcpy(slot->peer, peer, 28);
    slot->session = sess;
    pthread_mutex_unlock(&t->lock);
    return 1; /* the reference is ours */
}

/* A cached session for `peer`, taken out: each is used once (RFC 8446 §C.4). */
static SSL_SESSION *take_session(tls_ctx_t *t, const unsigned char *peer)
{
    SSL_SESSION *s = NULL;
    pthread_mutex_lock(&t->lock);
    for (unsigned i = 0; i < TLS_SESSIONS_MAX && !s; i++)
        if (t->sessions[i].session && memcmp(t->sessions[i].peer, peer, 28) == 0) {
            s = t->sessions[i].session;
            t->sessions[i].session = NULL;
        }
    pthread_mutex_unlock(&t->lock);
    return s;
}

static void setup_client(tls_ctx_t *t, build_t *b, const pem_t *f)
{
    SSL_CTX *s = t->ssl;
    SSL_CTX_set_session_cache_mode(s, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(s, on_new_session);
    if (t->files[0])
        use_chain(b, s, t->files, &f[0], &f[1]);
    if (!t->verify)
        return;
    use_trust(b, s, t->files[2], &f[2], 0);
    SSL_CTX_set_verify(s, SSL_VERIFY_PEER, verify_cb);
}

/* ---- the cache ---- */

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

static void ctx_free(tls_ctx_t *t)
{
    for (unsigned i = 0; i < TLS_SESSIONS_MAX; i++)
        SSL_SESSION_free(t->sessions[i].session);
    SSL_CTX_free(t->ssl);
    for (unsigned i = 0; i < t->nsans; i++)
        free(t->sans[i]);
    free(t->sans);
    for (unsigned i = 0; i < 3; i++)
        free(t->files[i]);
    free(t->name);
    free(t->key);
    pthread_mutex_destroy(&t->lock);
    free(t);
}

tls_ctx_t *tls_ctx_ref(tls_ctx_t *t)
{
    atomic_fetch_add(&t->refs, 1);
    return t;
}

void tls_ctx_unref(tls_ctx_t *t)
{
    if (t && atomic_fetch_sub(&t->refs, 1) == 1)
        ctx_free(t);
}

/* The settings as one string: equal strings, equal contexts (given equal files). */
static char *settings_key(int server, int verify, const char *name, char *const files[3],
                          char *const *sans, unsigned nsans)
{
    size_t n = 64 + (name ? strlen(name) : 0);
    for (unsigned i = 0; i < 3; i++)
        n += files[i] ? strlen(files[i]) + 1 : 1;
    for (unsigned i = 0; i < nsans; i++)
        n += strlen(sans[i]) + 1;
    char *k = malloc(n);
    if (!k)
        return NULL;
    int off = snprintf(k, n, "%c%d|%s|", server ? 'S' : 'C', verify, name ? name : "");
    for (unsigned i = 0; i < 3; i++)
        off += snprintf(k + off, n - (size_t)off, "%s|", files[i] ? files[i] : "");
    for (unsigned i = 0; i < nsans; i++)
        off += snprintf(k + off, n - (size_t)off, "%s,", sans[i]);
    return k;
}

/* Read the files in use and hash them; 0, or -1 with a diagnostic. */
static int load_files(tls_ctx_t *t, build_t *b, pem_t f[3])
{
    static const char *const fields[] = {"certificate.file.certificateChain",
                                         "certificate.file.privateKey",
                                         "validation.trust.file.certificateChain"};
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    EVP_DigestInit_ex(md, EVP_sha256(), NULL);
    EVP_DigestUpdate(md, t->key, strlen(t->key));
    for (unsigned i = 0; i < 3; i++) {
        const char *why;
        if (!t->files[i])
            continue;
        if (read_file(t->files[i], &f[i], &why) != 0) {
            fail(b, fields[i], t->files[i], why);
            continue;
        }
        EVP_DigestUpdate(md, f[i].data, f[i].len);
    }
    EVP_DigestFinal_ex(md, t->digest, NULL);
    EVP_MD_CTX_free(md);
    return b->failed ? -1 : 0;
}

static tls_ctx_t *cached(tls_cache_t *cache, const tls_ctx_t *want)
{
    for (tls_ctx_t *t = cache->head; t; t = t->next)
        if (strcmp(t->key, want->key) == 0 && memcmp(t->digest, want->digest, 32) == 0)
            return tls_ctx_ref(t);
    return NULL;
}

/* Build (or find) the context described by `t`'s settings; takes ownership of `t`. */
static tls_ctx_t *finish(tls_cache_t *cache, tls_ctx_t *t, build_t *b, int validate)
{
    pem_t f[3] = {{0}};
    tls_ctx_t *out = NULL;
    if (t->key && load_files(t, b, f) == 0 && !(out = cached(cache, t))) {
        t->ssl = new_ssl_ctx(t->server);
        if (!t->ssl)
            fail(b, "mode", "OpenSSL", "cannot make a context");
        else if (t->server)
            setup_server(t, b, f, validate);
        else
            setup_client(t, b, f);
        if (!b->failed) {
            SSL_CTX_set_app_data(t->ssl, t);
            atomic_store(&t->refs, 2); /* the caller's and the cache's */
            t->next = cache->head;
            cache->head = t;
            out = t;
            t = NULL;
        }
    }
    for (unsigned i = 0; i < 3; i++) {
        if (f[i].data)
            OPENSSL_cleanse(f[i].data, f[i].len); /* keys do not linger in freed memory */
        free(f[i].data);
    }
    if (t)
        ctx_free(t);
    return out;
}

static tls_ctx_t *ctx_new(int server, int verify, const char *name, const cfg_tls_validation_t *v)
{
    tls_ctx_t *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    pthread_mutex_init(&t->lock, NULL);
    t->server = server;
    t->verify = verify;
    t->name = dup_or_null(name);
    if (v && v->nsans) {
        t->sans = calloc(v->nsans, sizeof *t->sans);
        for (unsigned i = 0; t->sans && i < v->nsans; i++)
            t->sans[t->nsans++] = strdup(v->sans[i]);
    }
    return t;
}

tls_ctx_t *tls_server_ctx(tls_cache_t *cache, const cfg_listener_tls_t *cfg, const char *source,
                          diag_t *d)
{
    build_t b = {.source = source, .path = cfg->path, .d = d};
    tls_ctx_t *t =
        ctx_new(1, cfg->has_validation, NULL, cfg->has_validation ? &cfg->validation : NULL);
    if (!t)
        return NULL;
    t->files[0] = dup_or_null(cfg->cert_chain);
    t->files[1] = dup_or_null(cfg->private_key);
    t->files[2] = cfg->has_validation ? dup_or_null(cfg->validation.trust_file) : NULL;
    t->key = settings_key(1, t->verify, NULL, t->files, t->sans, t->nsans);
    return finish(cache, t, &b, cfg->has_validation);
}

tls_ctx_t *tls_client_ctx(tls_cache_t *cache, const cfg_client_tls_t *cfg, const char *name,
                          const char *source, diag_t *d)
{
    build_t b = {.source = source, .path = cfg ? cfg->path : "clientPolicy", .d = d};
    tls_ctx_t *t = ctx_new(0, cfg != NULL, name, cfg ? &cfg->validation : NULL);
    if (!t)
        return NULL;
    if (cfg) {
        t->files[0] = dup_or_null(cfg->cert_chain);
        t->files[1] = dup_or_null(cfg->private_key);
        t->files[2] = dup_or_null(cfg->validation.trust_file);
    }
    t->key = settings_key(0, t->verify, name, t->files, t->sans, t->nsans);
    return finish(cache, t, &b, 0);
}

void tls_cache_prune(tls_cache_t *cache)
{
    for (tls_ctx_t **pp = &cache->head; *pp;) {
        tls_ctx_t *t = *pp;
        if (atomic_load(&t->refs) == 1) {
            *pp = t->next;
            tls_ctx_unref(t);
        } else {
            pp = &t->next;
        }
    }
}

void tls_cache_free(tls_cache_t *cache)
{
    while (cache->head) {
        tls_ctx_t *t = cache->head;
        cache->head = t->next;
        tls_ctx_unref(t);
    }
}

/* ---- sessions ---- */

SSL *tls_session_server(tls_ctx_t *t)
{
    SSL *s = SSL_new(t->ssl);
    if (s)
        SSL_set_accept_state(s);
    return s;
}

static int is_ip_literal(const char *name)
{
    unsigned char buf[16];
    return inet_pton(AF_INET, name, buf) == 1 || inet_pton(AF_INET6, name, buf) == 1;
}

SSL *tls_session_client(tls_ctx_t *t, const struct sockaddr *peer)
{
    SSL *s = SSL_new(t->ssl);
    unsigned char *key = malloc(28);
    if (!s || !key) {
        SSL_free(s);
        free(key);
        return NULL;
    }
    SSL_set_connect_state(s);
    SSL_set_alpn_protos(s, alpn_client, sizeof alpn_client - 1);
    if (t->name && !is_ip_literal(t->name)) /* RFC 6066 §3: no IP literals in SNI */
        SSL_set_tlsext_host_name(s, t->name);
    if (t->verify && t->nsans == 0 && t->name) {
        SSL_set_hostflags(s, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        SSL_set1_host(s, t->name);
    }
    peer_key(peer, key);
    SSL_set_ex_data(s, session_index(), key);
    SSL_SESSION *sess = take_session(t, key);
    if (sess) {
        SSL_set_session(s, sess);
        SSL_SESSION_free(sess);
    }
    return s;
}

/* ---- failures ---- */

stat_t *tls_failure_stat(SSL *s, ssl_stats_t *st, const char **why)
{
    unsigned long e = ERR_peek_error();
    long v = SSL_get_verify_result(s);
    if (ERR_GET_REASON(e) == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE) {
        *why = "no client certificate";
        return &st->fail_verify_no_cert;
    }
    if (v == X509_V_ERR_HOSTNAME_MISMATCH) {
        *why = "no subject alternative name matched";
        return &st->fail_verify_san;
    }
    if (v != X509_V_OK && ERR_GET_REASON(e) == SSL_R_CERTIFICATE_VERIFY_FAILED) {
        *why = X509_verify_cert_error_string(v);
        return &st->fail_verify_error;
    }
    *why = e ? ERR_reason_error_string(e) : "handshake failed";
    if (!*why)
        *why = "handshake failed";
    return &st->connection_error;
}

/* ---- /certs ---- */

/* A JSON string of bytes from a certificate (printable ASCII kept, the rest escaped). */
static void jstring(text_t *j, const unsigned char *s, size_t n)
{
    text_printf(j, "\"");
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '"' || s[i] == '\\')
            text_printf(j, "\\%c", s[i]);
        else if (s[i] < 0x20 || s[i] > 0x7e)
            text_printf(j, "\\u%04x", s[i]);
        else
            text_printf(j, "%c", s[i]);
    }
    text_printf(j, "\"");
}

static void jtime(text_t *j, const ASN1_TIME *t)
{
    struct tm tm;
    if (ASN1_TIME_to_tm(t, &tm) != 1) {
        text_printf(j, "null");
        return;
    }
    text_printf(j, "\"%04d-%02d-%02dT%02d:%02d:%02dZ\"", tm.tm_year + 1900, tm.tm_mon + 1,
                tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

static void jsans(text_t *j, X509 *x)
{
    GENERAL_NAMES *g = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    text_printf(j, "[");
    for (int i = 0, n = 0; g && i < sk_GENERAL_NAME_num(g); i++) {
        const GENERAL_NAME *gn = sk_GENERAL_NAME_value(g, i);
        const char *kind = gn->type == GEN_DNS     ? "dns"
                           : gn->type == GEN_URI   ? "uri"
                           : gn->type == GEN_IPADD ? "ip_address"
                                                   : NULL;
        if (!kind)
            continue;
        text_printf(j, "%s{\"%s\": ", n++ ? ", " : "", kind);
        if (gn->type == GEN_IPADD) {
            char ip[INET6_ADDRSTRLEN] = "";
            int af = gn->d.iPAddress->length == 16 ? AF_INET6 : AF_INET;
            inet_ntop(af, gn->d.iPAddress->data, ip, sizeof ip);
            jstring(j, (const unsigned char *)ip, strlen(ip));
        } else {
            const ASN1_IA5STRING *s =
                gn->type == GEN_DNS ? gn->d.dNSName : gn->d.uniformResourceIdentifier;
            jstring(j, s->data, (size_t)s->length);
        }
        text_printf(j, "}");
    }
    text_printf(j, "]");
    GENERAL_NAMES_free(g);
}

static void jcert(text_t *j, X509 *x, const char *path, int first)
{
    int days = 0, secs = 0;
    ASN1_TIME_diff(&days, &secs, NULL, X509_get0_notAfter(x));
    char *serial = NULL;
    BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
    if (bn)
        serial = BN_bn2hex(bn);
    BN_free(bn);
    for (char *c = serial; c && *c; c++) /* Envoy prints it in lower case */
        *c = (char)(*c >= 'A' && *c <= 'F' ? *c - 'A' + 'a' : *c);
    text_printf(j, "%s{\"path\": ", first ? "" : ", ");
    jstring(j, (const unsigned char *)path, strlen(path));
    text_printf(j, ", \"serial_number\": \"%s\", \"subject_alt_names\": ", serial ? serial : "");
    jsans(j, x);
    text_printf(j, ", \"days_until_expiration\": \"%d\", \"valid_from\": ", days);
    jtime(j, X509_get0_notBefore(x));
    text_printf(j, ", \"expiration_time\": ");
    jtime(j, X509_get0_notAfter(x));
    text_printf(j, "}");
    OPENSSL_free(serial);
}

static int same_files(const tls_ctx_t *a, const tls_ctx_t *b)
{
    for (unsigned i = 0; i < 3; i++)
        if ((a->files[i] || b->files[i]) &&
            (!a->files[i] || !b->files[i] || strcmp(a->files[i], b->files[i]) != 0))
            return 0;
    return 1;
}

static void jctx(text_t *j, const tls_ctx_t *t)
{
    text_printf(j, "{\"ca_cert\": [");
    STACK_OF(X509_OBJECT) *objs = X509_STORE_get0_objects(SSL_CTX_get_cert_store(t->ssl));
    for (int i = 0, n = 0; t->files[2] && i < sk_X509_OBJECT_num(objs); i++) {
        X509 *x = X509_OBJECT_get0_X509(sk_X509_OBJECT_value(objs, i));
        if (x)
            jcert(j, x, t->files[2], n++ == 0);
    }
    text_printf(j, "], \"cert_chain\": [");
    X509 *leaf = SSL_CTX_get0_certificate(t->ssl);
    STACK_OF(X509) *chain = NULL;
    SSL_CTX_get0_chain_certs(t->ssl, &chain);
    if (leaf)
        jcert(j, leaf, t->files[0], 1);
    for (int i = 0; leaf && i < sk_X509_num(chain); i++)
        jcert(j, sk_X509_value(chain, i), t->files[0], 0);
    text_printf(j, "]}");
}

char *tls_certs_json(tls_cache_t *cache)
{
    text_t j = {0};
    text_printf(&j, "{\"certificates\": [");
    int n = 0;
    for (tls_ctx_t *t = cache->head; t; t = t->next) {
        int seen = !t->files[0] && !t->files[2]; /* unchecked client TLS: nothing loaded */
        for (tls_ctx_t *u = cache->head; u != t && !seen; u = u->next)
            seen = same_files(u, t);
        if (seen)
            continue;
        text_printf(&j, "%s", n++ ? ", " : "");
        jctx(&j, t);
    }
    text_printf(&j, "]}\n");
    if (j.failed) {
        free(j.p);
        return NULL;
    }
    return j.p;
}
