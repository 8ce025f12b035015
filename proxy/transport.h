/* The transport seam: how a connection's bytes reach the socket. Plain TCP today; TLS (OpenSSL
 * over memory BIOs) plugs in here with the same table, beneath conn.c and unseen above it.
 *
 * A transport delivers what it reads to conn_on_read() and reports every queued write's end
 * to conn_on_written(), exactly once. */
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
} transport_t;

extern const transport_t transport_tcp;

#endif
