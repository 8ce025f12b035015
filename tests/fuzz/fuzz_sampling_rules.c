/* config/sampling_rules.c on arbitrary manifests. sampling_rules_load reads a file, so the
 * input goes into one memfd made at start-up and the loader is given /proc/self/fd/N: no disk
 * I/O, nothing left behind. Checked beyond "no crash, no leak":
 *   - -1 comes with at least one diagnostic and an empty result, 0 with none;
 *   - a loaded manifest holds what sampling_rules.h says: rates in 0..1, every rule's host,
 *     method and path present and within their caps. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sys/mman.h>
#include <unistd.h>

#include "config/sampling_rules.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A broken invariant: say which, then abort() so that libFuzzer keeps the input. */
static void fail(const char *what, int line)
{
    fprintf(stderr, "%s:%d: invariant broken: %s\n", __FILE__, line, what);
    abort();
}
#define check(ok) ((ok) ? (void)0 : fail(#ok, __LINE__))

static void check_rule(const sampling_rule_cfg_t *r, int is_default)
{
    check(r->rate >= 0 && r->rate <= 1 && r->fixed_target <= 1000000);
    if (is_default)
        return;
    check(r->host && strlen(r->host) <= 255);
    check(r->method && strlen(r->method) <= 16);
    check(r->path && strlen(r->path) <= 1024);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int fd = -1;
    static char path[64];
    if (fd < 0) {
        fd = memfd_create("manifest", 0);
        check(fd >= 0);
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    }
    check(ftruncate(fd, 0) == 0);
    check(size == 0 || pwrite(fd, data, size, 0) == (ssize_t)size);

    diag_t d = {0};
    sampling_rules_cfg_t r;
    int rc = sampling_rules_load(path, &r, &d);
    check(rc == 0 || rc == -1);
    if (rc == 0) {
        check(d.n == 0 && r.n <= 1000 && (r.n == 0 || r.rules));
        check_rule(&r.dflt, 1);
        for (unsigned i = 0; i < r.n; i++)
            check_rule(&r.rules[i], 0);
        sampling_rules_free(&r);
    } else {
        check(d.n > 0 && r.rules == NULL && r.n == 0);
    }
    diag_free(&d);
    return 0;
}
