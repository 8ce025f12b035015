#include "discovery/dns_parse.h"

#include <ares.h>
#include <ares_nameser.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

/* Big-endian reads without alignment assumptions. */
static unsigned rd16(const unsigned char *p)
{
    return (unsigned)p[0] << 8 | p[1];
}

static uint32_t rd32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Reads the (possibly compressed) name at p into out; advances *p. 0 or -1. */
static int read_name(const unsigned char *buf, int len, const unsigned char **p, char *out)
{
    char *name = NULL;
    long used = 0;
    if (*p >= buf + len || ares_expand_name(*p, buf, len, &name, &used) != ARES_SUCCESS)
        return -1;
    size_t n = strlen(name);
    int ok = n < DNS_NAME_MAX;
    if (ok)
        memcpy(out, name, n + 1);
    ares_free_string(name);
    *p += used;
    return ok ? 0 : -1;
}

static int add_srv(dns_answer_t *a, const unsigned char *buf, int len, const unsigned char *rd,
                   unsigned rdlen, uint32_t ttl)
{
    if (rdlen < 7 || a->nsrv >= DNS_MAX_RECORDS)
        return -1;
    dns_srv_t *grown = realloc(a->srv, (a->nsrv + 1) * sizeof *grown);
    if (!grown)
        return -1;
    a->srv = grown;
    dns_srv_t *s = &a->srv[a->nsrv];
    s->priority = (uint16_t)rd16(rd);
    s->weight = (uint16_t)rd16(rd + 2);
    s->port = (uint16_t)rd16(rd + 4);
    s->ttl = ttl;
    const unsigned char *t = rd + 6;
    if (read_name(buf, len, &t, s->target) != 0 || t > rd + rdlen)
        return -1;
    a->nsrv++;
    return 0;
}

static int add_addr(dns_answer_t *a, const char *owner, int type, const unsigned char *rd,
                    unsigned rdlen, uint32_t ttl)
{
    if ((type == T_A && rdlen != 4) || (type == T_AAAA && rdlen != 16) ||
        a->naddrs >= DNS_MAX_RECORDS)
        return -1;
    dns_addr_t *grown = realloc(a->addrs, (a->naddrs + 1) * sizeof *grown);
    if (!grown)
        return -1;
    a->addrs = grown;
    dns_addr_t *d = &a->addrs[a->naddrs++];
    d->family = type == T_A ? AF_INET : AF_INET6;
    memcpy(&d->addr, rd, rdlen);
    d->ttl = ttl;
    memcpy(d->name, owner, strlen(owner) + 1);
    return 0;
}

int dns_parse(const unsigned char *buf, int len, dns_answer_t *out)
{
    memset(out, 0, sizeof *out);
    if (len < HFIXEDSZ)
        return UV_EINVAL;
    out->rcode = buf[3] & 0xf;
    unsigned qd = rd16(buf + 4), an = rd16(buf + 6), ns = rd16(buf + 8), ar = rd16(buf + 10);
    const unsigned char *p = buf + HFIXEDSZ, *end = buf + len;
    char name[DNS_NAME_MAX];
    for (unsigned i = 0; i < qd; i++) {
        if (read_name(buf, len, &p, name) != 0 || p + QFIXEDSZ > end)
            goto bad;
        p += QFIXEDSZ;
    }
    for (unsigned i = 0; i < an + ns + ar; i++) {
        if (read_name(buf, len, &p, name) != 0 || p + RRFIXEDSZ > end)
            goto bad;
        int type = (int)rd16(p), cls = (int)rd16(p + 2);
        uint32_t ttl = dns_ttl(rd32(p + 4));
        unsigned rdlen = rd16(p + 8);
        p += RRFIXEDSZ;
        if (p + rdlen > end)
            goto bad;
        int section_answer = i < an, section_additional = i >= an + ns;
        if (cls == C_IN && type == T_SRV && section_answer) {
            if (add_srv(out, buf, len, p, rdlen, ttl) != 0)
                goto bad;
        } else if (cls == C_IN && (type == T_A || type == T_AAAA) &&
                   (section_answer || section_additional)) {
            if (add_addr(out, name, type, p, rdlen, ttl) != 0)
                goto bad;
        }
        p += rdlen;
    }
    return 0;
bad:
    dns_answer_free(out);
    return UV_EINVAL;
}

void dns_answer_free(dns_answer_t *a)
{
    free(a->srv);
    free(a->addrs);
    a->srv = NULL;
    a->addrs = NULL;
    a->nsrv = a->naddrs = 0;
}
