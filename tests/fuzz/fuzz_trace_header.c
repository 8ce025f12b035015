/* tracing/trace.c: the X-Amzn-Trace-Id parser on arbitrary header values, and the round trip
 * through trace_header_format.
 *
 * Checked for every input:
 *   - what the parser keeps is well-formed: root "" or 1-<8 hex>-<24 hex> in lower case,
 *     parent "" or 16 lower-case hex digits, sampled one of the enum's values, extra
 *     NUL-terminated inside its array;
 *   - the header written back from what was parsed parses to the same root, parent, sampled
 *     (0 or 1: format writes only those) and extra fields (for values without a NUL);
 *   - the header remora sends upstream (its own root and span id, the incoming extra fields,
 *     as xray_outgoing does) parses back to those ids: no incoming field can override them. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tracing/trace.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A broken invariant: say which, then abort() so that libFuzzer keeps the input. */
static void fail(const char *what, int line)
{
    fprintf(stderr, "%s:%d: invariant broken: %s\n", __FILE__, line, what);
    abort();
}
#define check(ok) ((ok) ? (void)0 : fail(#ok, __LINE__))

static int lower_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return 0;
    return 1;
}

static void check_well_formed(const trace_header_t *h)
{
    size_t rn = strnlen(h->root, sizeof h->root);
    check(rn == 0 ||
          (rn == TRACE_ID_LEN && h->root[0] == '1' && h->root[1] == '-' && h->root[10] == '-' &&
           lower_hex(h->root + 2, 8) && lower_hex(h->root + 11, 24)));
    size_t pn = strnlen(h->parent, sizeof h->parent);
    check(pn == 0 || (pn == SPAN_ID_LEN && lower_hex(h->parent, pn)));
    check(h->sampled == SAMPLED_UNKNOWN || h->sampled == SAMPLED_NO || h->sampled == SAMPLED_YES ||
          h->sampled == SAMPLED_REQUESTED);
    check(memchr(h->extra, '\0', sizeof h->extra) != NULL);
}

/* Formats (root, parent, sampled, extra), parses the result and checks that it says the same. */
static void round_trip(const char *root, const char *parent, int sampled, const char *extra)
{
    /* Large enough for every field at its maximum, so nothing is cut. */
    char out[16 + TRACE_ID_LEN + SPAN_ID_LEN + 16 + TRACE_EXTRA_MAX];
    size_t len = trace_header_format(root, parent, sampled, extra, out, sizeof out);
    check(len < sizeof out && strlen(out) == len);
    trace_header_t again;
    trace_header_parse(out, len, &again);
    check_well_formed(&again);
    check(strcmp(again.root, root) == 0);
    check(strcmp(again.parent, parent) == 0);
    check(again.sampled == (sampled ? SAMPLED_YES : SAMPLED_NO));
    check(strcmp(again.extra, extra) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* An exact-size copy: a read past the header value is a read past the allocation. */
    char *v = malloc(size ? size : 1);
    if (!v)
        return 0;
    memcpy(v, data, size);
    trace_header_t h;
    trace_header_parse(v, size, &h);
    free(v);
    check_well_formed(&h);
    /* A NUL cuts the extra fields short as C strings; no header value has one (the HTTP parser
     * refuses CTLs in values), so the round trip is checked only without. */
    if (memchr(data, '\0', size))
        return 0;
    round_trip(h.root, h.parent, h.sampled == SAMPLED_YES, h.extra);
    round_trip("1-5759e988-bd862e3fe1be46a994272793", "53995c3f42cd8ad8", 1, h.extra);
    return 0;
}
