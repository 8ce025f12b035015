/* The TLS transport (transport_tls.c): a connection becomes TLS by one of these calls before
 * its first byte moves; from then on conn.c and the codec above it see plaintext only. The
 * connection takes a reference on `ctx`; `stats` must outlive it (a listener's or a
 * cluster's). */
#ifndef REMORA_TRANSPORT_TLS_H
#define REMORA_TRANSPORT_TLS_H

#include "base/stats.h"
#include "proxy/conn.h"
#include "tls/tls.h"

/* Just accepted. `permissive`: plaintext is accepted too, told apart by the first byte. */
int transport_tls_server(conn_t *c, tls_ctx_t *ctx, ssl_stats_t *stats, int permissive);
/* Before conn_connect: the handshake runs once TCP is up, and the connection is reported
 * connected only when it is done. */
int transport_tls_client(conn_t *c, tls_ctx_t *ctx, ssl_stats_t *stats,
                         const struct sockaddr *peer);
/* After transport_tls_client: offer `protocol` alone by ALPN ("h2"). */
int transport_tls_offer_alpn(conn_t *c, const char *protocol);
/* The protocol ALPN selected once the handshake is done ("h2", "http/1.1"; not NUL-terminated,
 * *len bytes), or NULL: none, not done, or not TLS. What the codec is chosen by. */
const unsigned char *transport_tls_alpn(const conn_t *c, unsigned *len);

#endif
