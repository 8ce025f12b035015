#include "routing/path.h"

#include <string.h>

/* Drops the last segment of out[0..*len) (back to and including its leading slash). */
static void pop_segment(char *out, size_t *len)
{
    while (*len > 0 && out[*len - 1] != '/')
        (*len)--;
    if (*len > 0)
        (*len)--;
}

size_t path_normalize(const char *in, size_t n, char *out)
{
    size_t len = 0, i = 0;
    while (i < n) {
        while (i < n && in[i] == '/')
            i++; /* merge slashes */
        size_t start = i;
        while (i < n && in[i] != '/')
            i++;
        size_t seg = i - start;
        int trailing = i == n ? (seg == 0 ? 1 : 0) : 0;
        if (seg == 1 && in[start] == '.') {
            if (i == n)
                out[len++] = '/'; /* "/a/." is "/a/" */
            continue;
        }
        if (seg == 2 && in[start] == '.' && in[start + 1] == '.') {
            pop_segment(out, &len);
            if (i == n)
                out[len++] = '/';
            continue;
        }
        if (trailing) {
            if (len == 0 || out[len - 1] != '/')
                out[len++] = '/';
            continue;
        }
        out[len++] = '/';
        memcpy(out + len, in + start, seg);
        len += seg;
    }
    if (len == 0)
        out[len++] = '/';
    out[len] = '\0';
    return len;
}
