/* How pollers wait: delays that double after each failure up to a cap, and jitter so that
 * pollers started together (a cluster's rounds, a fleet's sidecars) do not ask in step. Used by
 * discovery, the credentials provider and the config URL. */
#ifndef REMORA_BACKOFF_H
#define REMORA_BACKOFF_H

#include <stdint.h>

/* `first` after the first failure, doubled after each further one, never above `max`. */
uint64_t backoff_ms(uint64_t first, unsigned failures, uint64_t max);
/* `ms` moved by up to a tenth either way; *rng is the caller's xorshift state (never 0). */
uint64_t jitter_tenth(uint64_t *rng, uint64_t ms);

#endif
