#include "base/number.h"

long decimal_parse(const char *s, size_t len, long lo, long hi)
{
    if (len == 0 || len > 10)
        return -1;
    long long v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v >= lo && v <= hi ? (long)v : -1;
}

int port_parse(const char *s, size_t len)
{
    return len <= 5 ? (int)decimal_parse(s, len, 1, 65535) : -1;
}
