/* DNS answers parsed by hand, because c-ares 1.18 keeps SRV TTLs to itself and reads only the
 * answer section (shared/reference/discovery.md §2.4-2.5). Every read is bounds-checked; a
 * malformed packet is an error, never a crash or a partial guess. */
#ifndef REMORA_DNS_PARSE_H
#define REMORA_DNS_PARSE_H

#include <netinet/in.h>
#include <stdint.h>

#define DNS_NAME_MAX    256
#define DNS_MAX_RECORDS 1024

typedef struct dns_srv {
    uint16_t priority, weight, port;
    uint32_t ttl;
    char target[DNS_NAME_MAX];
} dns_srv_t;

typedef struct dns_addr {
    int family; /* AF_INET or AF_INET6 */
    union {
        struct in_addr v4;
        struct in6_addr v6;
    } addr;
    uint32_t ttl;
    char name[DNS_NAME_MAX]; /* the owner: whose address this is */
} dns_addr_t;

typedef struct dns_answer {
    int rcode;
    dns_srv_t *srv; /* SRV records of the answer section */
    unsigned nsrv;
    dns_addr_t *addrs; /* A and AAAA records of the answer and additional sections */
    unsigned naddrs;
} dns_answer_t;

/* Returns 0, or UV_EINVAL for a malformed packet (out is then empty). */
int dns_parse(const unsigned char *buf, int len, dns_answer_t *out);
void dns_answer_free(dns_answer_t *a);
/* RFC 2181 §8: a TTL with the high bit set means 0. */
static inline uint32_t dns_ttl(uint32_t raw)
{
    return raw & 0x80000000u ? 0 : raw;
}

#endif
