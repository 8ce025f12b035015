#include "discovery/resolve_once.h"

#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "proxy/log.h"

int resolve_once(const cfg_node_t *node, uint16_t port, endpoint_t **out, unsigned *n)
{
    char name[512], service[8];
    *out = NULL;
    *n = 0;
    if (node->discovery == DISCOVERY_DNS)
        snprintf(name, sizeof name, "%s", node->hostname);
    else if (node->discovery == DISCOVERY_CLOUD_MAP)
        snprintf(name, sizeof name, "%s.%s", node->service_name, node->namespace_name);
    else
        return 0;
    snprintf(service, sizeof service, "%u", port);
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(name, service, &hints, &res);
    if (rc != 0) {
        log_warn("discovery: %s for node %s: %s", name, node->name, gai_strerror(rc));
        return 0;
    }
    unsigned count = 0;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next)
        count++;
    endpoint_t *eps = calloc(count ? count : 1, sizeof *eps);
    if (!eps) {
        freeaddrinfo(res);
        return UV_ENOMEM;
    }
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        endpoint_t ep;
        if (endpoint_set(&ep, ai->ai_addr) != 0)
            continue;
        int dup = 0;
        for (unsigned i = 0; i < *n && !dup; i++)
            dup = strcmp(eps[i].name, ep.name) == 0;
        if (!dup)
            eps[(*n)++] = ep;
    }
    freeaddrinfo(res);
    *out = eps;
    log_info("discovery: %s resolved to %u endpoint(s) for node %s", name, *n, node->name);
    return 0;
}
