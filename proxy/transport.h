/* The transport seam: how a connection's bytes reach the socket. Plain TCP, or TLS (OpenSSL
 * over in-memory BIOs, transport_tls.c), beneath conn.c and unseen above it: the codec reads
 * and writes plaintext either way.
 *
 * A transport delivers what it reads to conn_on_read() and reports every queued write's end
 * to conn_on_written(), exactly once. A client-side transport with a handshake reports the
 * connection ready (conn_on_ready) once it is done. */
#ifndef REMORA_TRANSPORT_H
#define REMORA_TRANSPORT_H

struct conn;
struct wreq;

typedef struct transport {
    const char *name;
    int (*read_start)(struct conn *c);
    void (*read_stop)(struct conn *c);
    /* Send r->iov[0..r->n): 1 when every byte went out at once (no callback comes), 0 when
     * the rest is queued (conn_on_written follows), or a UV_E* code (no callback comes). */
    int (*write)(struct conn *c, struct wreq *r);
    /* No more bytes from us once the queued ones are out (TCP FIN). 0 or a UV_E* code. */
    int (*shutdown)(struct conn *c);
    /* Client side, once TCP is connected: start the handshake; conn_on_ready follows, from a
     * later callback. NULL: ready at once. */
    void (*handshake)(struct conn *c);
    /* The connection is about to close: say so to the peer if the protocol has a way
     * (close_notify), best effort. May be NULL. */
    void (*close)(struct conn *c);
    /* The handle is closed: free the transport's state. May be NULL. */
    void (*free)(struct conn *c);
    /* Memory its own queued writes pin (what it sends for no write of conn's: handshakes,
     * alerts, close_notify); conn counts it in its watermarks and drains. May be NULL. */
    size_t (*pinned)(const struct conn *c);
} transport_t;

extern const transport_t transport_tcp;
extern const transport_t transport_tls;

#endif
