/* TLS contexts: what a listener's `tls` or a client policy needs to make sessions, built once
 * per distinct setting and shared by every worker (an SSL_CTX is safe to share; sessions are
 * not). shared/reference/tls-h2-grpc.md §1 has the OpenSSL facts and App Mesh's rules.
 *
 * A tls_ctx_t is immutable once built and reference-counted: route tables hold one for each
 * listener or (client policy, target) they use, connections hold one for their lifetime.
 * Files are read into memory once, so what is checked is what is loaded; the SHA-256 of
 * their contents tells a reload whether anything changed. A tls_cache_t (long-lived, in the
 * registry) hands the same context to a reload that finds the same settings and files, so
 * session tickets and cached client sessions survive reloads that do not touch TLS.
 *
 * Peer checks: a server with `validation` requires a client certificate chaining to the
 * trust and, if SANs are listed, one DNS or URI SAN equal to one of them. A client with a
 * policy requires the server's chain to the trust and a SAN equal to one listed, or (none
 * listed) a certificate for the name it sends as SNI (the target's discovery name). A
 * client without a policy encrypts and checks nothing, as App Mesh does toward a node whose
 * listener has TLS. */
#ifndef REMORA_TLS_H
#define REMORA_TLS_H

#include <openssl/ssl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>

#include "base/stats.h"
#include "config/config.h"
#include "config/diag.h"

#define TLS_FILE_MAX     (1024 * 1024) /* a PEM file larger than this is refused */
#define TLS_SESSIONS_MAX 16            /* client sessions kept per context, by endpoint */

typedef struct tls_session_slot {
    unsigned char peer[28]; /* the endpoint's sockaddr, zero padded */
    SSL_SESSION *session;
} tls_session_slot_t;

typedef struct tls_ctx {
    _Atomic unsigned refs;
    struct tls_ctx *next; /* the cache's list */
    SSL_CTX *ssl;
    int server;
    int verify;     /* check the peer's certificate */
    char **sans;    /* one must be among the peer's DNS or URI SANs; none: no SAN check */
    unsigned nsans; /* (a client with none checks `name` instead) */
    char *name;     /* client: SNI and the expected host; NULL for an IP or no name */
    char *key;      /* the settings, for the cache */
    unsigned char digest[32];
    char *files[3]; /* chain, key, trust: what a rotation is watched on (NULL: unused) */
    pthread_mutex_t lock;
    tls_session_slot_t sessions[TLS_SESSIONS_MAX];
    unsigned next_slot;
} tls_ctx_t;

typedef struct tls_cache {
    tls_ctx_t *head;
} tls_cache_t;

/* The context for a listener's `tls` (mode not DISABLED): from the cache, or built. NULL
 * with a diagnostic naming the setting's path and the file when a file cannot be used. */
tls_ctx_t *tls_server_ctx(tls_cache_t *cache, const cfg_listener_tls_t *cfg, const char *source,
                          diag_t *d);
/* The context to reach a target named `name` (SNI and host check; may be NULL) under a client
 * policy, or with `cfg` NULL: encrypt without checking. */
tls_ctx_t *tls_client_ctx(tls_cache_t *cache, const cfg_client_tls_t *cfg, const char *name,
                          const char *source, diag_t *d);
tls_ctx_t *tls_ctx_ref(tls_ctx_t *t);
void tls_ctx_unref(tls_ctx_t *t);

/* Drop cached contexts nothing else holds (after a reload). */
void tls_cache_prune(tls_cache_t *cache);
void tls_cache_free(tls_cache_t *cache);

/* A session per connection; the caller owns it (SSL_free). NULL when memory is exhausted.
 * A client session carries SNI, the host check and a cached session for `peer` if any. */
SSL *tls_session_server(tls_ctx_t *t);
SSL *tls_session_client(tls_ctx_t *t, const struct sockaddr *peer);

/* Why a handshake failed, as the counter it goes to (a field of ssl_stats_t), and a phrase
 * for the log. Call right after the failing SSL_do_handshake. */
stat_t *tls_failure_stat(SSL *s, ssl_stats_t *st, const char **why);

/* The loaded certificates in Envoy's /certs shape (one entry per distinct set of files), as
 * a malloc'd JSON document; NULL when memory is exhausted. The caller must keep the cache
 * from changing meanwhile (the main thread owns it). */
char *tls_certs_json(tls_cache_t *cache);

/* Whether `name` (len bytes) equals one of the certificate's DNS or URI SANs. */
int tls_cert_has_san(X509 *cert, const char *name, size_t len);

#endif
