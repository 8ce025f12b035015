/* A byte pump between two connections: Upgrade tunnels now, TCP routes next.
 *
 * Each direction is relayed as it arrives, with backpressure (reading one side stops while
 * the other is above its high-water mark). A half-close travels: EOF from one side shuts down
 * the other's write side, and the opposite direction goes on until it ends too (RFC 9293
 * §3.6). Both closed, a reset or error on either, or no byte either way for `idle_ms`: both
 * connections close. The relay owns both connections once started and frees itself after. */
#ifndef REMORA_RELAY_H
#define REMORA_RELAY_H

#include <stdint.h>

#include "proxy/conn.h"

typedef struct relay relay_t;

/* Where a relay reports its end (the worker counts relays for draining). */
typedef struct relay_owner {
    void (*on_closed)(void *ctx);
    void *ctx;
} relay_owner_t;

/* Start relaying between a and b. `a_pending` (a reference, may be NULL) holds bytes a sent
 * that b must get first; likewise b_pending. Returns NULL (both connections closed) when
 * memory is exhausted. */
relay_t *relay_start(conn_t *a, buf_t *a_pending, const char *ap, size_t an, conn_t *b,
                     buf_t *b_pending, const char *bp, size_t bn, uint64_t idle_ms,
                     const relay_owner_t *owner);
/* Close both sides now (drain deadline). */
void relay_abort(relay_t *r);

#endif
