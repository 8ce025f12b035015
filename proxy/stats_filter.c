/* The admin API's stats filters, held to what RE2 (Envoy's regex engine) accepts before glibc's
 * regcomp sees them. */
#include "proxy/stats_filter.h"

#include <stdlib.h>
#include <string.h>

#define STATS_FILTER_MAX_REPEAT 1000 /* RE2's cap on nested {n,m} counts multiplied */

/* The end of the bracket expression opening at p: its closing ']', or the last character when
 * there is none (regcomp then refuses the pattern). Inside one, POSIX gives '\', '(' and '{'
 * no meaning; a ']' first (after an optional '^') is literal, and [:class:], [.sym.] and
 * [=eq=] end at their own ":]", ".]" and "=]". */
static const char *bracket_end(const char *p)
{
    const char *q = p + 1;
    if (*q == '^')
        q++;
    if (*q == ']')
        q++;
    for (; *q && *q != ']'; q++) {
        if (*q == '[' && (q[1] == ':' || q[1] == '.' || q[1] == '=')) {
            const char close[] = {q[1], ']', '\0'};
            const char *e = strstr(q + 2, close);
            if (!e)
                break;
            q = e + 1;
        }
    }
    return *q ? q : q - 1;
}

/* The largest count of the bound {n}, {n,} or {n,m} at p (n for {n,}: glibc copies the atom
 * n times), at most STATS_FILTER_MAX_REPEAT + 1, setting *end to its '}'; -1 when p opens none. */
static long bound_count(const char *p, const char **end)
{
    if (p[0] != '{' || p[1] < '0' || p[1] > '9')
        return -1;
    char *q;
    unsigned long n = strtoul(p + 1, &q, 10), m = n;
    if (q[0] == ',' && q[1] >= '0' && q[1] <= '9')
        m = strtoul(q + 1, &q, 10);
    else if (q[0] == ',')
        q++;
    if (*q != '}')
        return -1;
    *end = q;
    unsigned long most = m > n ? m : n;
    return most > STATS_FILTER_MAX_REPEAT ? STATS_FILTER_MAX_REPEAT + 1 : (long)most;
}

/* metrics.c runs a filter through regexec once per metric, on the main loop. Envoy's filters are
 * RE2: linear in time, no back-references, and nested bounds whose counts multiply past 1000
 * refused. glibc backtracks on a back-reference (a 30-byte pattern ran for minutes), and it expands
 * a bound by copying its atom:
 * (.{1,255}){1,255} took 13 s over 300 metrics. Both are refused, at RE2's limit. */
const char *stats_filter_refusal(const char *re)
{
    long inside[STATS_FILTER_MAX + 1]; /* per open group: the largest bound product in it */
    size_t depth = 0;
    long last = 1; /* the bound product of the atom just read (of a group: its inside's) */
    inside[0] = 1;
    for (const char *p = re; *p; p++) {
        const char *end;
        long count;
        switch (*p) {
        case '\\':
            if (p[1] >= '1' && p[1] <= '9')
                return "filter has a back-reference (\\1-\\9): not supported, as in RE2";
            p += p[1] != '\0'; /* the escaped character, a backslash included */
            last = 1;
            break;
        case '[':
            p = bracket_end(p);
            last = 1;
            break;
        case '(':
            inside[++depth] = 1; /* depth < strlen(re) <= STATS_FILTER_MAX */
            last = 1;
            break;
        case ')':
            last = depth ? inside[depth--] : 1;
            break;
        case '{':
            count = bound_count(p, &end);
            if (count < 0) {
                last = 1;
                break;
            }
            last *= count; /* both at most STATS_FILTER_MAX_REPEAT + 1 */
            if (last > STATS_FILTER_MAX_REPEAT)
                return "filter repeats more than 1000 times ({n,m} counts, nested ones "
                       "multiplied): not supported, as in RE2";
            p = end;
            break;
        default:
            last = 1;
        }
        if (last > inside[depth])
            inside[depth] = last;
    }
    return NULL;
}
