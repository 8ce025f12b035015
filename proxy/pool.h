/* Keep-alive pools of upstream connections: one pool per (cluster, endpoint) per worker.
 *
 * An idle connection keeps reading, so an upstream that closes it (or sends stray bytes) is
 * noticed at once and the connection leaves the pool; a request is never written to a
 * connection known to be closed. Idle connections are reused most-recent first (warm sockets,
 * and the cold ones age out through the idle timeout). */
#ifndef REMORA_POOL_H
#define REMORA_POOL_H

#include <netinet/in.h>
#include <stdint.h>

#define POOL_IDLE_MAX     256   /* idle connections kept per endpoint per worker */
#define POOL_IDLE_TIMEOUT 60000 /* ms an idle upstream connection is kept */
#define POOL_BUCKETS      64

struct cluster;
struct endpoint;
struct upstream;
struct worker;

typedef struct pool {
    struct pool *next; /* hash chain */
    struct worker *worker;
    struct cluster *cluster;
    struct sockaddr_storage addr;
    unsigned addrlen;
    char name[64];
    struct upstream *idle; /* most recently released first */
    unsigned nidle;
    unsigned nactive;
} pool_t;

typedef struct pool_table {
    pool_t *buckets[POOL_BUCKETS];
} pool_table_t;

/* The pool for an endpoint of a cluster, created on first use. NULL only on allocation failure. */
pool_t *pool_get(struct worker *w, struct cluster *cl, const struct endpoint *ep);
/* An upstream connection from the pool: an idle one (*reused = 1) unless `fresh`, or a new one
 * that is connecting (writes queue until it is up). NULL only on allocation or socket failure,
 * with *err set. The caller owns the connection until pool_release() or upstream_abort(). */
struct upstream *pool_acquire(pool_t *p, int fresh, int *reused, int *err);
/* Return a connection whose exchange finished cleanly; it is kept idle or closed. */
void pool_release(struct upstream *up);
/* Take an idle connection out of the idle list (it is closing). */
void pool_unlink_idle(struct upstream *up);
/* Close idle connections to endpoints no longer in their cluster's set (discovery removed
 * them); busy ones finish their exchange and are not pooled again. */
void pool_close_departed(pool_table_t *t);
/* Close every idle connection (drain, shutdown). */
void pool_close_idle(pool_table_t *t);
void pool_table_free(pool_table_t *t);

#endif
