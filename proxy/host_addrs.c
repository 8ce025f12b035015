#include "proxy/host_addrs.h"

#include <ifaddrs.h>
#include <netinet/in.h>
#include <string.h>

#include "base/log.h"

/* The address bytes of sa (4 or 16) and its family; IPv4-mapped IPv6 as IPv4. 0: neither. */
static int address_of(const struct sockaddr *sa, const uint8_t **bytes)
{
    if (sa->sa_family == AF_INET) {
        *bytes = (const uint8_t *)&((const struct sockaddr_in *)(const void *)sa)->sin_addr;
        return AF_INET;
    }
    if (sa->sa_family != AF_INET6)
        return 0;
    const struct in6_addr *a6 = &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr;
    if (IN6_IS_ADDR_V4MAPPED(a6)) {
        *bytes = &a6->s6_addr[12];
        return AF_INET;
    }
    *bytes = a6->s6_addr;
    return AF_INET6;
}

static size_t length_of(int family)
{
    return family == AF_INET ? 4 : 16;
}

void host_addrs_learn(host_addrs_t *h)
{
    h->n = 0;
    struct ifaddrs *list;
    if (getifaddrs(&list) != 0) {
        log_warn("cannot list the host's addresses: a request to remora by one of them is not "
                 "known for a loop");
        return;
    }
    for (struct ifaddrs *i = list; i && h->n < HOST_ADDRS_MAX; i = i->ifa_next) {
        const uint8_t *bytes;
        int family = i->ifa_addr ? address_of(i->ifa_addr, &bytes) : 0;
        if (!family)
            continue;
        h->addr[h->n].family = family;
        memcpy(h->addr[h->n].bytes, bytes, length_of(family));
        h->n++;
    }
    freeifaddrs(list);
}

int host_addrs_has(const host_addrs_t *h, const struct sockaddr_storage *ss)
{
    const uint8_t *bytes;
    int family = address_of((const struct sockaddr *)ss, &bytes);
    for (unsigned i = 0; family && i < h->n; i++)
        if (h->addr[i].family == family && !memcmp(h->addr[i].bytes, bytes, length_of(family)))
            return 1;
    return 0;
}
