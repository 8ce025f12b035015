/* ISO-8601 times in UTC, as AWS writes them (credentials' Expiration) and as rollouts take
 * their startTime: YYYY-MM-DDTHH:MM:SS, optional fraction, then Z, +00:00 or +0000. */
#ifndef REMORA_ISO8601_H
#define REMORA_ISO8601_H

#include <stdint.h>

/* Unix milliseconds (a fraction's first three digits count), or -1 when `s` is not such a
 * time: every field its exact width in digits, a real calendar date. */
int64_t iso8601_ms(const char *s);

#endif
