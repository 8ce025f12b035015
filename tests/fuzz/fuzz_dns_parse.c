/* discovery/dns_parse.c on arbitrary packets. Beyond "no crash, no leak" it checks the header's
 * contract: UV_EINVAL leaves the answer empty; a parsed answer holds at most DNS_MAX_RECORDS of
 * each kind, every name NUL-terminated inside its array, every TTL already through dns_ttl().
 *
 * The packet is copied to a buffer of exactly its size, so that ASan sees any read past it. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sys/socket.h>
#include <uv.h>

#include "discovery/dns_parse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A broken invariant: say which, then abort() so that libFuzzer keeps the input. */
static void fail(const char *what, int line)
{
    fprintf(stderr, "%s:%d: invariant broken: %s\n", __FILE__, line, what);
    abort();
}
#define check(ok) ((ok) ? (void)0 : fail(#ok, __LINE__))

static int name_ok(const char *name)
{
    return memchr(name, '\0', DNS_NAME_MAX) != NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 65535) /* a DNS message over TCP is at most 64 KB; UDP less */
        return 0;
    unsigned char *pkt = malloc(size ? size : 1);
    if (!pkt)
        return 0;
    memcpy(pkt, data, size);
    dns_answer_t ans;
    int rc = dns_parse(pkt, (int)size, &ans);
    check(rc == 0 || rc == UV_EINVAL);
    if (rc != 0) {
        check(ans.srv == NULL && ans.nsrv == 0 && ans.addrs == NULL && ans.naddrs == 0);
    } else {
        check(ans.rcode >= 0 && ans.rcode <= 15);
        check(ans.nsrv <= DNS_MAX_RECORDS && ans.naddrs <= DNS_MAX_RECORDS);
        check((ans.nsrv == 0 || ans.srv) && (ans.naddrs == 0 || ans.addrs));
        for (unsigned i = 0; i < ans.nsrv; i++)
            check(name_ok(ans.srv[i].target) && ans.srv[i].ttl == dns_ttl(ans.srv[i].ttl));
        for (unsigned i = 0; i < ans.naddrs; i++) {
            const dns_addr_t *a = &ans.addrs[i];
            check(a->family == AF_INET || a->family == AF_INET6);
            check(name_ok(a->name) && a->ttl == dns_ttl(a->ttl));
        }
    }
    dns_answer_free(&ans);
    check(ans.srv == NULL && ans.addrs == NULL && ans.nsrv == 0 && ans.naddrs == 0);
    free(pkt);
    return 0;
}
