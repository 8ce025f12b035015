/* Case-insensitive comparison of bytes with a lower-case literal, a word at a time: what the
 * parser (methods, framing tokens) and the name classifier (field_classify) share. */
#ifndef REMORA_ASCII_H
#define REMORA_ASCII_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* Nonzero unless the bytes at p are those at lit in any case, lit being lower-case letters and
 * '-': OR-ing 0x20 into a letter lowers it, and the mask has that bit only where lit has a
 * letter (bit 6 set), so a '-' must be exact (a CR OR 0x20 would pass for one). */
static inline uint64_t differ8(const char *p, const char *lit)
{
    uint64_t a, b;
    memcpy(&a, p, 8);
    memcpy(&b, lit, 8);
    return (a | (b & UINT64_C(0x4040404040404040)) >> 1) ^ b;
}

static inline uint32_t differ4(const char *p, const char *lit)
{
    uint32_t a, b;
    memcpy(&a, p, 4);
    memcpy(&b, lit, 4);
    return (a | (b & 0x40404040u) >> 1) ^ b;
}

static inline uint16_t differ2(const char *p, const char *lit)
{
    uint16_t a, b;
    memcpy(&a, p, 2);
    memcpy(&b, lit, 2);
    return (uint16_t)((a | (b & 0x4040u) >> 1) ^ b);
}

/* Whether the n bytes at p are `lit` in any case (lit as above). */
static inline int same(const char *p, const char *lit, size_t n)
{
    /* Overlapping loads of 8, 4 or 2 bytes, so that with a constant n every load is one
     * instruction and every literal word a constant. */
    uint64_t diff = 0;
    if (n >= 8) {
        for (size_t i = 0; i + 8 <= n; i += 8)
            diff |= differ8(p + i, lit + i);
        diff |= differ8(p + n - 8, lit + n - 8);
    } else if (n >= 4) {
        diff = differ4(p, lit) | differ4(p + n - 4, lit + n - 4);
    } else if (n >= 2) {
        diff = differ2(p, lit) | differ2(p + n - 2, lit + n - 2);
    } else if (n == 1) {
        diff = ((unsigned char)p[0] | ((unsigned char)lit[0] & 0x40) >> 1) ^ (unsigned char)lit[0];
    }
    return diff == 0;
}

#endif
