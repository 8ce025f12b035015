/* config/: config_parse (parse, then the cross-resource checks of validate.c) on arbitrary
 * documents. Beyond "no crash, no leak" (LeakSanitizer runs after every input) it checks what
 * config.h promises:
 *   - NULL comes with at least one diagnostic and a config with none, each a
 *     "SOURCE: path: message" line;
 *   - in a config, every name and required string is present, and every reference resolves:
 *     backends to services, providers to nodes or routers, routes to routers, targets to nodes
 *     (the rest of remora looks them up without checking). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define SOURCE "fuzz.json"

/* A broken invariant: say which, then abort() so that libFuzzer keeps the input. */
static void fail(const char *what, int line)
{
    fprintf(stderr, "%s:%d: invariant broken: %s\n", __FILE__, line, what);
    abort();
}
#define check(ok) ((ok) ? (void)0 : fail(#ok, __LINE__))

static void check_config(const config_t *c)
{
    check(c->source && strcmp(c->source, SOURCE) == 0 && c->raw && c->mesh_name);
    for (unsigned i = 0; i < c->nnodes; i++) {
        const cfg_node_t *n = &c->nodes[i];
        check(n->name != NULL && config_node(c, n->name) == n);
        for (unsigned l = 0; l < n->nlisteners; l++) {
            check(n->listeners[l].protocol != NULL && n->listeners[l].port != 0);
            check(!n->listeners[l].health.present || n->listeners[l].health.protocol);
        }
        check(n->discovery != DISCOVERY_DNS || n->hostname);
        check(n->discovery != DISCOVERY_CLOUD_MAP || (n->namespace_name && n->service_name));
        for (unsigned b = 0; b < n->nbackends; b++)
            check(n->backends[b] && config_service(c, n->backends[b]));
    }
    for (unsigned i = 0; i < c->nservices; i++) {
        const cfg_service_t *s = &c->services[i];
        check(s->name != NULL);
        check(s->provider != PROVIDER_NODE || config_node(c, s->provider_name));
        check(s->provider != PROVIDER_ROUTER || config_router(c, s->provider_name));
    }
    for (unsigned i = 0; i < c->nrouters; i++)
        check(c->routers[i].name && c->routers[i].nports >= 1);
    for (unsigned i = 0; i < c->nroutes; i++) {
        const cfg_route_t *r = &c->routes[i];
        check(r->name && r->router && config_router(c, r->router));
        check(r->ntargets >= 1); /* no path: a tcpRoute, a gRPC route or a match on the rest */
        for (unsigned t = 0; t < r->ntargets; t++)
            check(r->targets[t].node && config_node(c, r->targets[t].node));
        for (unsigned h = 0; h < r->nheaders; h++)
            check(r->headers[h].name && (r->headers[h].kind == HM_PRESENT ||
                                         r->headers[h].kind == HM_RANGE || r->headers[h].value));
        for (unsigned q = 0; q < r->nquery; q++)
            check(r->query[q].name != NULL);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    diag_t d = {0};
    config_t *c = config_parse((const char *)data, size, SOURCE, &d);
    if (c) {
        check(d.n == 0);
        check_config(c);
        config_free(c);
    } else {
        check(d.n > 0);
    }
    for (size_t i = 0; i < d.n; i++)
        check(strncmp(d.lines[i], SOURCE ": ", sizeof SOURCE + 1) == 0);
    diag_free(&d);
    return 0;
}
