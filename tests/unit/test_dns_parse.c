/* discovery/dns_parse.c: real answer shapes (SRV with targets' addresses in Additional, as
 * Cloud Map and Knot send them), TTL edge cases, and malformed packets of every kind. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <cmocka.h>
#include <uv.h>

#include "discovery/dns_parse.h"

typedef struct pkt {
    unsigned char b[4096];
    int n;
} pkt_t;

static void u16(pkt_t *p, unsigned v)
{
    p->b[p->n++] = (unsigned char)(v >> 8);
    p->b[p->n++] = (unsigned char)v;
}

static void u32(pkt_t *p, uint32_t v)
{
    u16(p, v >> 16);
    u16(p, v & 0xffff);
}

static void name(pkt_t *p, const char *dotted)
{
    while (*dotted) {
        const char *dot = strchr(dotted, '.');
        size_t len = dot ? (size_t)(dot - dotted) : strlen(dotted);
        p->b[p->n++] = (unsigned char)len;
        memcpy(p->b + p->n, dotted, len);
        p->n += (int)len;
        dotted += len + (dot ? 1 : 0);
    }
    p->b[p->n++] = 0;
}

static void header(pkt_t *p, int rcode, unsigned an, unsigned ns, unsigned ar)
{
    p->n = 0;
    u16(p, 0x1234);
    u16(p, 0x8400 | (unsigned)rcode);
    u16(p, 1);
    u16(p, an);
    u16(p, ns);
    u16(p, ar);
    name(p, "backend.ns.local");
    u16(p, 33);
    u16(p, 1);
}

static void rr_head(pkt_t *p, const char *owner, unsigned type, uint32_t ttl, unsigned rdlen)
{
    name(p, owner);
    u16(p, type);
    u16(p, 1);
    u32(p, ttl);
    u16(p, rdlen);
}

static void srv(pkt_t *p, uint32_t ttl, unsigned prio, unsigned weight, unsigned port,
                const char *target)
{
    pkt_t t = {.n = 0};
    name(&t, target);
    rr_head(p, "backend.ns.local", 33, ttl, 6 + (unsigned)t.n);
    u16(p, prio);
    u16(p, weight);
    u16(p, port);
    memcpy(p->b + p->n, t.b, (size_t)t.n);
    p->n += t.n;
}

static void a(pkt_t *p, const char *owner, uint32_t ttl, const char *ip)
{
    rr_head(p, owner, 1, ttl, 4);
    inet_pton(AF_INET, ip, p->b + p->n);
    p->n += 4;
}

static void test_srv_with_additional_addresses(void **state)
{
    (void)state;
    pkt_t p;
    header(&p, 0, 2, 0, 3);
    srv(&p, 10, 1, 1, 8081, "i-1.backend.ns.local");
    srv(&p, 7, 2, 5, 8082, "i-2.backend.ns.local");
    a(&p, "i-1.backend.ns.local", 10, "127.0.0.1");
    a(&p, "i-2.backend.ns.local", 0x80000001u, "127.0.0.2"); /* high bit: TTL 0 */
    rr_head(&p, "i-2.backend.ns.local", 28, 9, 16);
    inet_pton(AF_INET6, "::1", p.b + p.n);
    p.n += 16;
    dns_answer_t ans;
    assert_int_equal(dns_parse(p.b, p.n, &ans), 0);
    assert_int_equal(ans.rcode, 0);
    assert_int_equal(ans.nsrv, 2);
    assert_int_equal(ans.srv[0].port, 8081);
    assert_int_equal(ans.srv[0].ttl, 10);
    assert_string_equal(ans.srv[0].target, "i-1.backend.ns.local");
    assert_int_equal(ans.srv[1].priority, 2);
    assert_int_equal(ans.srv[1].weight, 5);
    assert_int_equal(ans.srv[1].ttl, 7);
    assert_int_equal(ans.naddrs, 3);
    assert_string_equal(ans.addrs[1].name, "i-2.backend.ns.local");
    assert_int_equal(ans.addrs[1].ttl, 0);
    assert_int_equal(ans.addrs[2].family, AF_INET6);
    dns_answer_free(&ans);
}

static void test_rcode_and_empty_answers(void **state)
{
    (void)state;
    pkt_t p;
    header(&p, 3, 0, 0, 0); /* NXDOMAIN */
    dns_answer_t ans;
    assert_int_equal(dns_parse(p.b, p.n, &ans), 0);
    assert_int_equal(ans.rcode, 3);
    assert_int_equal(ans.nsrv + ans.naddrs, 0);
    dns_answer_free(&ans);
}

static void test_malformed_packets_are_rejected(void **state)
{
    (void)state;
    dns_answer_t ans;
    pkt_t p;
    header(&p, 0, 1, 0, 0);
    srv(&p, 10, 1, 1, 8081, "i-1.backend.ns.local");
    for (int cut = 0; cut < p.n; cut++) /* every truncation */
        assert_int_equal(dns_parse(p.b, cut, &ans), UV_EINVAL);
    header(&p, 0, 2, 0, 0); /* claims two answers, has one */
    srv(&p, 10, 1, 1, 8081, "i-1.backend.ns.local");
    assert_int_equal(dns_parse(p.b, p.n, &ans), UV_EINVAL);
    header(&p, 0, 1, 0, 0); /* A record with a 3-byte address */
    rr_head(&p, "x", 1, 5, 3);
    p.n += 3;
    assert_int_equal(dns_parse(p.b, p.n, &ans), UV_EINVAL);
    header(&p, 0, 1, 0, 0); /* a name that points at itself */
    int at = p.n;
    p.b[p.n++] = 0xc0;
    p.b[p.n++] = (unsigned char)at;
    u16(&p, 1);
    u16(&p, 1);
    u32(&p, 5);
    u16(&p, 4);
    p.n += 4;
    assert_int_equal(dns_parse(p.b, p.n, &ans), UV_EINVAL);
    /* Random garbage never crashes and never yields records past the packet. */
    srand(7);
    for (int i = 0; i < 20000; i++) {
        unsigned char junk[200];
        int n = rand() % (int)sizeof junk;
        for (int k = 0; k < n; k++)
            junk[k] = (unsigned char)rand();
        if (dns_parse(junk, n, &ans) == 0)
            dns_answer_free(&ans);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_srv_with_additional_addresses),
        cmocka_unit_test(test_rcode_and_empty_answers),
        cmocka_unit_test(test_malformed_packets_are_rejected),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
