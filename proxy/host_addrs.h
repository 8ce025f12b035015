/* The host's own addresses, as its interfaces had them at start-up: a connection to one of
 * them on a port remora listens on (0.0.0.0 and [::]) reaches remora itself. */
#ifndef REMORA_HOST_ADDRS_H
#define REMORA_HOST_ADDRS_H

#include <stdint.h>
#include <sys/socket.h>

#define HOST_ADDRS_MAX 64

typedef struct host_addrs {
    unsigned n;
    struct {
        int family; /* AF_INET or AF_INET6 */
        uint8_t bytes[16];
    } addr[HOST_ADDRS_MAX];
} host_addrs_t;

/* Every interface address there is (getifaddrs), up to HOST_ADDRS_MAX; none when it fails. */
void host_addrs_learn(host_addrs_t *h);
/* 1 when ss's address is one of them (an IPv4-mapped IPv6 address is compared as IPv4). */
int host_addrs_has(const host_addrs_t *h, const struct sockaddr_storage *ss);

#endif
