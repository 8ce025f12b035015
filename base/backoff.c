#include "base/backoff.h"

uint64_t backoff_ms(uint64_t first, unsigned failures, uint64_t max)
{
    uint64_t ms = first;
    for (unsigned i = 1; i < failures && ms < max; i++)
        ms *= 2;
    return ms < max ? ms : max;
}

uint64_t jitter_tenth(uint64_t *rng, uint64_t ms)
{
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    uint64_t span = ms / 5;
    return span ? ms - span / 2 + *rng % (span + 1) : ms;
}
