/* A connection, whatever the transport: the libuv handle, the worker it lives on, reading on
 * demand, an output queue that gathers what is written during one loop iteration into a single
 * write, and watermarks.
 *
 * Watermarks count the memory the queued output pins, not its payload: a 1-byte piece that
 * references a 64 KiB read buffer costs 64 KiB (each distinct buffer is charged its capacity
 * once per write request; copied bytes cost what they are). Above CONN_HIGH_WATER the owner
 * should stop its source; on_drain tells it to start again below CONN_LOW_WATER.
 *
 * Ownership: conn_new() allocates; the owner named by conn_set_owner() receives the events
 * below and may hand the connection to another owner (a codec to a relay). conn_close()
 * frees the connection from its uv_close callback, after telling the owner (on_closed). No
 * event is delivered after conn_close(), except on_closed. */
#ifndef REMORA_CONN_H
#define REMORA_CONN_H

#include <stddef.h>
#include <sys/socket.h>
#include <uv.h>

#include "base/buf.h"
#include "base/stats.h"
#include "proxy/loop.h"
#include "proxy/transport.h"

#define WREQ_IOV_MAX    32
#define WREQ_SCRATCH    2048
#define SMALL_COPY      1024 /* pieces this small are copied, so the read buffer is freed at once */
#define CONN_HIGH_WATER (256 * 1024) /* stop the source above this much pinned memory */
#define CONN_LOW_WATER  (64 * 1024)  /* and start it again below this */

typedef struct conn conn_t;

typedef struct wreq {
    uv_write_t req;
    struct wreq *next_free;
    conn_t *c;
    /* While it is its connection's `out`, the loop's list of connections with output to flush
     * (kept here, not in every idle connection). */
    conn_t *dirty_prev, *dirty_next;
    unsigned n;
    unsigned scratch_used;
    size_t pinned;
    uv_buf_t iov[WREQ_IOV_MAX];
    buf_t *ref[WREQ_IOV_MAX];
    char scratch[WREQ_SCRATCH];
} wreq_t;

typedef struct conn_events {
    /* Bytes arrived: b->data[0..b->len). The owner takes a reference if it keeps them. */
    void (*on_read)(void *owner, buf_t *b);
    /* The peer closed its side (UV_EOF) or the connection failed (another UV_E* code).
     * Reading has stopped. */
    void (*on_eof)(void *owner, int err);
    /* Queued output fell below CONN_LOW_WATER after having been above CONN_HIGH_WATER. */
    void (*on_drain)(void *owner);
    /* A write failed (peer gone); at most once, from a later loop pass than the write. The
     * connection is not closed yet. */
    void (*on_write_error)(void *owner, int err);
    /* Client side: the connect finished (0) or failed. Server side over TLS: the handshake
     * finished (0; a failed one is on_eof). */
    void (*on_connect)(void *owner, int status);
    /* The handle is closed; the connection is freed right after this returns. */
    void (*on_closed)(void *owner);
} conn_events_t;

/* Every accepted connection carries this, idle or not (docs/performance.md): what only a client
 * connection or one still connecting needs shares room with what only an accepted one does. */
struct conn {
    uv_tcp_t tcp; /* tcp.data points back at the conn */
    loop_t *loop;
    const transport_t *tp;
    struct tls_conn *tls; /* the TLS transport's state, NULL on plain TCP */
    union {
        listener_stats_t *accepted_by;   /* accepted: counted out when it closes */
        struct {                         /* client side (never accepted): */
            stat_t *rx_bytes, *tx_bytes; /* where bytes read and written are counted, or NULL */
            struct wreq *backlog;        /* gathered while connecting, sent once connected */
        };
    };
    const conn_events_t *ev;
    void *owner;
    wreq_t *out;            /* the write being gathered, NULL when nothing is queued */
    size_t pinned_inflight; /* pinned by writes handed to the transport */
    deferred_t told;        /* a write error or a drain owed, told from the next pass */
    int write_error;
    unsigned accepted : 1; /* by conn_accept: accepted_by is the union's member */
    unsigned closing : 1;
    unsigned reading : 1;
    unsigned want_read : 1;
    unsigned above_high : 1; /* on_drain is owed once the queue shrinks */
    unsigned write_failed : 1;
    unsigned error_told : 1;
    unsigned want_empty : 1; /* on_drain is owed once nothing is queued */
    unsigned shut : 1;       /* our side is shut down (or will be, once the queue is out) */
    unsigned connected : 1;
};

conn_t *conn_new(loop_t *l);
/* Server side: take the connection waiting on `server`; 0 or a UV_E* code (then close it). */
int conn_accept(conn_t *c, uv_stream_t *server);
void conn_set_owner(conn_t *c, const conn_events_t *ev, void *owner);
/* Client side: start connecting; events->on_connect reports the outcome, always later (an
 * immediate failure is reported from the next loop iteration). */
void conn_connect(conn_t *c, const struct sockaddr *addr);
/* Reading is wanted (1) or not (0); idempotent. */
void conn_read(conn_t *c, int on);
/* Queue n bytes at p, which live in b (a reference is taken) or in static storage (b NULL). */
void conn_write(conn_t *c, buf_t *b, const char *p, size_t n);
/* Queue a copy of n bytes (n <= 256): chunk-size lines, CRLFs, short literals. */
void conn_write_copy(conn_t *c, const void *p, size_t n);
void conn_flush(conn_t *c);
/* Memory the queued output pins (see above). */
size_t conn_pinned(const conn_t *c);
int conn_over_high_water(conn_t *c);
/* on_drain once nothing is queued any more (from a later pass, even if that is already so). */
void conn_notify_empty(conn_t *c);
/* Send what is queued, then FIN. Reading goes on as the owner set it. */
void conn_shutdown(conn_t *c);
/* Drop queued bytes and close; the owner hears on_closed, then the connection is freed. */
void conn_close(conn_t *c);
/* Close with a TCP reset, so the peer cannot take what it got for a complete message. */
void conn_reset(conn_t *c);
/* Whether the connection carries TLS (a PERMISSIVE one that turned out plain does not). */
static inline int conn_is_tls(const conn_t *c)
{
    return c->tls != NULL;
}
/* The peer's address as text ("" when unknown). */
void conn_peer_name(conn_t *c, char *out, size_t n);
/* The peer's address in 16 bytes, IPv4 as IPv4-mapped IPv6 (all zeros when unknown), for
 * objects that keep it per connection; conn_peer_format makes it text (into
 * CONN_PEER_TEXT bytes, "" when unknown) without a system call. */
#define CONN_PEER_TEXT 48
void conn_peer_addr(conn_t *c, uint8_t out[16]);
void conn_peer_format(const uint8_t a[16], char *out, size_t n);

/* Called by transports. */
void conn_on_read(conn_t *c, ssize_t nread, buf_t *b);
/* Client side: the transport is up (0: what was written while connecting goes out) or failed. */
void conn_on_ready(conn_t *c, int status);
void conn_on_written(wreq_t *r, int status);
/* The transport's own writes moved (tp->pinned fell): a drain may be owed. */
void conn_on_progress(conn_t *c);
void conn_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *out);

/* Loop-side: flush every connection that has bytes queued. */
void conn_flush_dirty(loop_t *l);

#endif
