#include "config/config.h"

#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <uv.h>

#include "base/http.h"
#include "config/config_impl.h"
#include "config/config_tls.h"
#include "config/index.h"
#include "config/json.h"
#include "base/err.h"

#define NAME_MAX_LEN 255

/* ---- virtual nodes ---- */

static void parse_health_check(jctx_t *j, const cJSON *o, const char *path, cfg_health_check_t *h)
{
    static const char *const fields[] = {
        "protocol",           "path", "port", "intervalMillis", "timeoutMillis", "healthyThreshold",
        "unhealthyThreshold", NULL};
    static const char *const protocols[] = {"http", "tcp", "http2", "grpc", NULL};
    static const char *const names[] = {"http", "tcp", "http2", "grpc"};
    j_only(j, o, path, fields);
    h->present = 1;
    int proto = j_enum(j, o, path, "protocol", protocols, J_REQUIRED, 0);
    h->protocol = strdup(names[proto]);
    h->path = j_string(j, o, path, "path", J_OPTIONAL, 1, 1024);
    h->port = (uint16_t)j_int(j, o, path, "port", 1, 65535, 0, J_OPTIONAL);
    h->interval_ms = (uint32_t)j_int(j, o, path, "intervalMillis", 5000, 300000, 5000, J_REQUIRED);
    h->timeout_ms = (uint32_t)j_int(j, o, path, "timeoutMillis", 2000, 60000, 2000, J_REQUIRED);
    h->healthy_threshold = (unsigned)j_int(j, o, path, "healthyThreshold", 2, 10, 2, J_REQUIRED);
    h->unhealthy_threshold =
        (unsigned)j_int(j, o, path, "unhealthyThreshold", 2, 10, 2, J_REQUIRED);
    if ((proto == 0 || proto == 2) && !h->path)
        jerr(j, path, "path", "is required for %s health checks", names[proto]);
}

static void parse_outlier(jctx_t *j, const cJSON *o, const char *path, cfg_outlier_t *od)
{
    static const char *const fields[] = {"maxServerErrors", "interval", "baseEjectionDuration",
                                         "maxEjectionPercent", NULL};
    j_only(j, o, path, fields);
    od->present = 1;
    od->max_server_errors =
        (uint64_t)j_int(j, o, path, "maxServerErrors", 1, INT64_MAX, 1, J_REQUIRED);
    od->interval_ms = j_duration(j, o, path, "interval", J_REQUIRED);
    od->base_ejection_ms = j_duration(j, o, path, "baseEjectionDuration", J_REQUIRED);
    od->max_ejection_percent =
        (unsigned)j_int(j, o, path, "maxEjectionPercent", 0, 100, 10, J_REQUIRED);
}

static const char *const listener_protocols[] = {"http", "tcp", "http2", "grpc", NULL};

/* connectionPool and timeout are unions keyed by protocol; the member must match the
 * listener's protocol. */
static const cJSON *protocol_member(jctx_t *j, const cJSON *o, const char *path,
                                    const char *protocol, char *member_path)
{
    const cJSON *v = NULL;
    int which = j_union(j, o, path, listener_protocols, J_REQUIRED, &v);
    if (which < 0 || !protocol) /* no listener protocol: its portMapping error is reported */
        return NULL;
    jpath(member_path, path, listener_protocols[which]);
    if (protocol && strcmp(listener_protocols[which], protocol) != 0) {
        jerr(j, path, listener_protocols[which], "does not match the listener protocol %s",
             protocol);
        return NULL;
    }
    return v;
}

static void parse_pool(jctx_t *j, const cJSON *o, const char *path, cfg_listener_t *l)
{
    char p[JPATH_MAX];
    const cJSON *m = protocol_member(j, o, path, l->protocol, p);
    if (!m)
        return;
    if (strcmp(l->protocol, "http") == 0 || strcmp(l->protocol, "tcp") == 0) {
        static const char *const http_fields[] = {"maxConnections", "maxPendingRequests", NULL};
        static const char *const tcp_fields[] = {"maxConnections", NULL};
        j_only(j, m, p, strcmp(l->protocol, "http") == 0 ? http_fields : tcp_fields);
        l->max_connections =
            (uint32_t)j_int(j, m, p, "maxConnections", 1, 2147483647, 0, J_REQUIRED);
        l->max_pending =
            (uint32_t)j_int(j, m, p, "maxPendingRequests", 1, 2147483647, 0, J_OPTIONAL);
    } else {
        static const char *const fields[] = {"maxRequests", NULL};
        j_only(j, m, p, fields);
        l->max_connections = (uint32_t)j_int(j, m, p, "maxRequests", 1, 2147483647, 0, J_REQUIRED);
    }
}

static void parse_timeout(jctx_t *j, const cJSON *o, const char *path, cfg_listener_t *l)
{
    static const char *const fields[] = {"perRequest", "idle", NULL};
    static const char *const tcp_fields[] = {"idle", NULL};
    char p[JPATH_MAX];
    const cJSON *m = protocol_member(j, o, path, l->protocol, p);
    if (!m)
        return;
    int tcp = strcmp(l->protocol, "tcp") == 0;
    j_only(j, m, p, tcp ? tcp_fields : fields);
    if (!tcp)
        l->per_request_ms = j_duration(j, m, p, "perRequest", J_OPTIONAL);
    l->idle_ms = j_duration(j, m, p, "idle", J_OPTIONAL);
}

void cfg_parse_listener(jctx_t *j, const cJSON *o, const char *path, cfg_listener_t *l, int gateway)
{
    static const char *const fields[] = {
        "portMapping", "healthCheck", "outlierDetection", "connectionPool", "timeout", "tls", NULL};
    static const char *const gw_fields[] = {"portMapping", "healthCheck", "connectionPool", "tls",
                                            NULL};
    static const char *const gw_protocols[] = {"http", "http2", "grpc", NULL};
    static const char *const pm_fields[] = {"port", "protocol", NULL};
    char p[JPATH_MAX];
    j_only(j, o, path, gateway ? gw_fields : fields);
    l->per_request_ms = l->idle_ms = DURATION_UNSET;
    const cJSON *pm = j_object(j, o, path, "portMapping", J_REQUIRED);
    jpath(p, path, "portMapping");
    j_only(j, pm, p, pm_fields);
    l->port = (uint16_t)j_int(j, pm, p, "port", 1, 65535, 0, J_REQUIRED);
    const char *const *protocols = gateway ? gw_protocols : listener_protocols;
    int proto = j_enum(j, pm, p, "protocol", protocols, J_REQUIRED, -1);
    l->protocol = proto >= 0 ? strdup(protocols[proto]) : NULL;
    const cJSON *v;
    if ((v = j_object(j, o, path, "healthCheck", J_OPTIONAL))) {
        jpath(p, path, "healthCheck");
        parse_health_check(j, v, p, &l->health);
    }
    if ((v = j_object(j, o, path, "outlierDetection", J_OPTIONAL))) {
        jpath(p, path, "outlierDetection");
        parse_outlier(j, v, p, &l->outlier);
    }
    if ((v = j_object(j, o, path, "connectionPool", J_OPTIONAL))) {
        jpath(p, path, "connectionPool");
        parse_pool(j, v, p, l);
    }
    if ((v = j_object(j, o, path, "timeout", J_OPTIONAL))) {
        jpath(p, path, "timeout");
        parse_timeout(j, v, p, l);
    }
    if ((v = j_object(j, o, path, "tls", J_OPTIONAL))) {
        jpath(p, path, "tls");
        config_parse_listener_tls(j, v, p, &l->tls);
    }
}

static const char *const ip_preferences[] = {"",          "IPv4_PREFERRED", "IPv6_PREFERRED",
                                             "IPv4_ONLY", "IPv6_ONLY",      NULL};

/* awsCloudMap.attributes: [{"key", "value"}], keys distinct (DiscoverInstances takes a map). */
static void parse_attributes(jctx_t *j, const cJSON *cm, const char *path, cfg_node_t *n)
{
    static const char *const fields[] = {"key", "value", NULL};
    const cJSON *attrs = j_array(j, cm, path, "attributes", J_OPTIONAL, 0, 50);
    unsigned count = (unsigned)cJSON_GetArraySize(attrs);
    n->attributes = count ? calloc(count, sizeof *n->attributes) : NULL;
    if (count && !n->attributes)
        return;
    for (unsigned i = 0; i < count; i++) {
        char p[JPATH_MAX];
        jpath_index(p, path, "attributes", (int)i);
        const cJSON *a = cJSON_GetArrayItem(attrs, (int)i);
        cfg_attribute_t *at = &n->attributes[n->nattributes++];
        if (!cJSON_IsObject(a)) {
            jerr(j, p, NULL, "must be an object");
            continue;
        }
        j_only(j, a, p, fields);
        at->key = j_string(j, a, p, "key", J_REQUIRED, 1, 255);
        at->value = j_string(j, a, p, "value", J_REQUIRED, 1, 1024);
        for (unsigned k = 0; at->key && k + 1 < n->nattributes; k++)
            if (n->attributes[k].key && !strcmp(n->attributes[k].key, at->key))
                jerr(j, p, "key", "repeats \"%s\" (each key may appear once)", at->key);
    }
}

static void parse_discovery(jctx_t *j, const cJSON *o, const char *path, cfg_node_t *n)
{
    static const char *const kinds[] = {"dns", "awsCloudMap", NULL};
    static const char *const dns_fields[] = {"hostname", "responseType", "ipPreference", NULL};
    static const char *const cm_fields[] = {"namespaceName", "serviceName", "attributes",
                                            "ipPreference", NULL};
    static const char *const responses[] = {"LOADBALANCER", "ENDPOINTS", NULL};
    const cJSON *m = NULL;
    int which = j_union(j, o, path, kinds, J_REQUIRED, &m);
    if (which < 0)
        return;
    char p[JPATH_MAX];
    jpath(p, path, kinds[which]);
    if (which == 0) {
        j_only(j, m, p, dns_fields);
        n->discovery = DISCOVERY_DNS;
        n->hostname = j_string(j, m, p, "hostname", J_REQUIRED, 1, NAME_MAX_LEN);
        n->response_type = (enum dns_response)j_enum(j, m, p, "responseType", responses, J_OPTIONAL,
                                                     DNS_LOADBALANCER);
    } else {
        j_only(j, m, p, cm_fields);
        n->discovery = DISCOVERY_CLOUD_MAP;
        n->namespace_name = j_string(j, m, p, "namespaceName", J_REQUIRED, 1, 1024);
        n->service_name = j_string(j, m, p, "serviceName", J_REQUIRED, 1, 1024);
        parse_attributes(j, m, p, n);
    }
    n->ip_preference =
        (enum ip_preference)j_enum(j, m, p, "ipPreference", ip_preferences, J_OPTIONAL, IP_DEFAULT);
}

static void parse_backends(jctx_t *j, const cJSON *spec, const char *path, cfg_node_t *n)
{
    static const char *const backend_fields[] = {"virtualService", NULL};
    static const char *const vs_fields[] = {"virtualServiceName", "clientPolicy", NULL};
    static const char *const defaults_fields[] = {"clientPolicy", NULL};
    const cJSON *bs = j_array(j, spec, path, "backends", J_OPTIONAL, 0, 50);
    n->nbackends = (unsigned)cJSON_GetArraySize(bs);
    n->backends = calloc(n->nbackends ? n->nbackends : 1, sizeof *n->backends);
    n->backend_tls = calloc(n->nbackends ? n->nbackends : 1, sizeof *n->backend_tls);
    for (unsigned i = 0; i < n->nbackends; i++) {
        char p[JPATH_MAX];
        const cJSON *b = cJSON_GetArrayItem(bs, (int)i);
        jpath_index(p, path, "backends", (int)i);
        j_only(j, b, p, backend_fields);
        const cJSON *vs = j_object(j, b, p, "virtualService", J_REQUIRED);
        jpath(p, p, "virtualService");
        j_only(j, vs, p, vs_fields);
        n->backends[i] = j_string(j, vs, p, "virtualServiceName", J_REQUIRED, 1, NAME_MAX_LEN);
        config_parse_client_policy(j, vs, p, &n->backend_tls[i]);
    }
    char p[JPATH_MAX];
    const cJSON *defaults = j_object(j, spec, path, "backendDefaults", J_OPTIONAL);
    jpath(p, path, "backendDefaults");
    j_only(j, defaults, p, defaults_fields);
    config_parse_client_policy(j, defaults, p, &n->default_tls);
}

/* A format.json pair list: keys distinct (a JSON object cannot say one twice), kept in order. */
static void parse_json_format(jctx_t *j, const cJSON *fmt, const char *path, cfg_access_log_t *al)
{
    static const char *const pair_fields[] = {"key", "value", NULL};
    const cJSON *arr = j_array(j, fmt, path, "json", J_REQUIRED, 1, 100);
    unsigned n = (unsigned)cJSON_GetArraySize(arr);
    al->json = calloc(n ? n : 1, sizeof *al->json);
    al->njson = al->json ? n : 0;
    for (unsigned i = 0; i < al->njson; i++) {
        char p[JPATH_MAX];
        const cJSON *pair = cJSON_GetArrayItem(arr, (int)i);
        jpath_index(p, path, "json", (int)i);
        if (!cJSON_IsObject(pair)) {
            jerr(j, p, NULL, "must be an object");
            continue;
        }
        j_only(j, pair, p, pair_fields);
        al->json[i].key = j_string(j, pair, p, "key", J_REQUIRED, 1, 100);
        al->json[i].value = j_string(j, pair, p, "value", J_REQUIRED, 1, 100);
        for (unsigned k = 0; k < i && al->json[i].key; k++)
            if (al->json[k].key && strcmp(al->json[k].key, al->json[i].key) == 0)
                jerr(j, p, "key", "\"%s\" is already the key of json[%u]", al->json[i].key, k);
    }
}

/* logging: {accessLog: {file: {path, format?: {text} | {json}}}}; both unions have to name one
 * member. The format's operators are checked when the access log is built (access_log.c). */
void cfg_parse_logging(jctx_t *j, const cJSON *o, const char *path, cfg_access_log_t *al)
{
    static const char *const fields[] = {"accessLog", NULL};
    static const char *const sinks[] = {"file", NULL};
    static const char *const file_fields[] = {"path", "format", NULL};
    static const char *const formats[] = {"json", "text", NULL};
    char p[JPATH_MAX];
    j_only(j, o, path, fields);
    const cJSON *acc = j_object(j, o, path, "accessLog", J_OPTIONAL), *file = NULL, *v = NULL;
    if (!acc)
        return;
    jpath(p, path, "accessLog");
    j_only(j, acc, p, sinks);
    if (j_union(j, acc, p, sinks, J_REQUIRED, &file) < 0 ||
        !(file = j_object(j, acc, p, "file", J_REQUIRED)))
        return;
    jpath(p, p, "file");
    j_only(j, file, p, file_fields);
    al->path = j_string(j, file, p, "path", J_REQUIRED, 1, 255);
    al->where = strdup(p);
    const cJSON *fmt = j_object(j, file, p, "format", J_OPTIONAL);
    if (!fmt)
        return; /* Envoy's default format */
    jpath(p, p, "format");
    j_only(j, fmt, p, formats);
    int which = j_union(j, fmt, p, formats, J_REQUIRED, &v);
    if (which == 1) {
        al->format = ACCESS_LOG_TEXT;
        al->text = j_string(j, fmt, p, "text", J_REQUIRED, 1, 1000);
    } else if (which == 0) {
        al->format = ACCESS_LOG_JSON;
        parse_json_format(j, fmt, p, al);
    }
}

cfg_listener_t *cfg_parse_listeners(jctx_t *j, const cJSON *spec, const char *path, int gateway,
                                    unsigned *n)
{
    char p[JPATH_MAX];
    const cJSON *ls =
        j_array(j, spec, path, "listeners", gateway ? J_REQUIRED : J_OPTIONAL, gateway ? 1 : 0, 50);
    *n = (unsigned)cJSON_GetArraySize(ls);
    cfg_listener_t *out = calloc(*n ? *n : 1, sizeof *out);
    if (!out)
        *n = 0;
    for (unsigned i = 0; i < *n; i++) {
        jpath_index(p, path, "listeners", (int)i);
        cfg_parse_listener(j, cJSON_GetArrayItem(ls, (int)i), p, &out[i], gateway);
    }
    return out;
}

static void parse_node(jctx_t *j, const cJSON *o, const char *path, void *out)
{
    static const char *const fields[] = {"listeners",       "serviceDiscovery", "backends",
                                         "backendDefaults", "logging",          NULL};
    cfg_node_t *n = out;
    char p[JPATH_MAX], q[JPATH_MAX];
    n->name = j_string(j, o, path, "virtualNodeName", J_REQUIRED, 1, NAME_MAX_LEN);
    const cJSON *spec = j_object(j, o, path, "spec", J_REQUIRED);
    jpath(p, path, "spec");
    j_only(j, spec, p, fields);
    n->listeners = cfg_parse_listeners(j, spec, p, 0, &n->nlisteners);
    const cJSON *sd = j_object(j, spec, p, "serviceDiscovery", J_OPTIONAL);
    jpath(q, p, "serviceDiscovery");
    if (sd)
        parse_discovery(j, sd, q, n);
    parse_backends(j, spec, p, n);
    const cJSON *lg = j_object(j, spec, p, "logging", J_OPTIONAL);
    jpath(q, p, "logging");
    if (lg)
        cfg_parse_logging(j, lg, q, &n->access_log);
}

/* ---- services and routers ---- */

static void parse_service(jctx_t *j, const cJSON *o, const char *path, void *out)
{
    static const char *const fields[] = {"provider", NULL};
    static const char *const kinds[] = {"virtualNode", "virtualRouter", NULL};
    static const char *const keys[] = {"virtualNodeName", "virtualRouterName"};
    cfg_service_t *s = out;
    char p[JPATH_MAX];
    s->name = j_string(j, o, path, "virtualServiceName", J_REQUIRED, 1, NAME_MAX_LEN);
    const cJSON *spec = j_object(j, o, path, "spec", J_REQUIRED);
    jpath(p, path, "spec");
    j_only(j, spec, p, fields);
    const cJSON *prov = j_object(j, spec, p, "provider", J_OPTIONAL);
    if (!prov)
        return;
    jpath(p, p, "provider");
    const cJSON *m = NULL;
    int which = j_union(j, prov, p, kinds, J_REQUIRED, &m);
    if (which < 0)
        return;
    jpath(p, p, kinds[which]);
    const char *const only[] = {keys[which], NULL};
    j_only(j, m, p, only);
    s->provider = which == 0 ? PROVIDER_NODE : PROVIDER_ROUTER;
    s->provider_name = j_string(j, m, p, keys[which], J_REQUIRED, 1, NAME_MAX_LEN);
}

static void parse_router(jctx_t *j, const cJSON *o, const char *path, void *out)
{
    static const char *const fields[] = {"listeners", NULL};
    static const char *const l_fields[] = {"portMapping", NULL};
    static const char *const pm_fields[] = {"port", "protocol", NULL};
    cfg_router_t *r = out;
    char p[JPATH_MAX], q[JPATH_MAX];
    r->name = j_string(j, o, path, "virtualRouterName", J_REQUIRED, 1, NAME_MAX_LEN);
    const cJSON *spec = j_object(j, o, path, "spec", J_REQUIRED);
    jpath(p, path, "spec");
    j_only(j, spec, p, fields);
    const cJSON *ls = j_array(j, spec, p, "listeners", J_REQUIRED, 1, 50);
    r->nports = (unsigned)cJSON_GetArraySize(ls);
    r->ports = calloc(r->nports ? r->nports : 1, sizeof *r->ports);
    r->tcp = calloc(r->nports ? r->nports : 1, sizeof *r->tcp);
    r->protocol = calloc(r->nports ? r->nports : 1, sizeof *r->protocol);
    for (unsigned i = 0; i < r->nports && r->tcp && r->protocol; i++) {
        jpath_index(q, p, "listeners", (int)i);
        const cJSON *l = cJSON_GetArrayItem(ls, (int)i);
        j_only(j, l, q, l_fields);
        const cJSON *pm = j_object(j, l, q, "portMapping", J_REQUIRED);
        jpath(q, q, "portMapping");
        j_only(j, pm, q, pm_fields);
        r->ports[i] = (uint16_t)j_int(j, pm, q, "port", 1, 65535, 0, J_REQUIRED);
        r->protocol[i] = (uint8_t)j_enum(j, pm, q, "protocol", listener_protocols, J_REQUIRED, 0);
        r->tcp[i] = r->protocol[i] == PROTO_TCP;
    }
}

/* ---- routes ---- */

static void parse_header_match(jctx_t *j, const cJSON *o, const char *path, cfg_header_match_t *h)
{
    static const char *const fields[] = {"name", "invert", "match", NULL};
    static const char *const kinds[] = {"exact", "prefix", "suffix", "regex", "range", NULL};
    static const char *const range_fields[] = {"start", "end", NULL};
    j_only(j, o, path, fields);
    h->name = j_string(j, o, path, "name", J_REQUIRED, 1, 50);
    h->invert = j_bool(j, o, path, "invert", 0);
    h->kind = HM_PRESENT;
    const cJSON *m = j_object(j, o, path, "match", J_OPTIONAL);
    if (!m)
        return;
    char p[JPATH_MAX];
    jpath(p, path, "match");
    const cJSON *v = NULL;
    int which = j_union(j, m, p, kinds, J_REQUIRED, &v);
    if (which < 0)
        return;
    h->kind = (enum header_match)(HM_EXACT + which);
    if (which < 4) {
        h->value = j_string(j, m, p, kinds[which], J_REQUIRED, 1, 255);
        return;
    }
    jpath(p, p, "range");
    j_only(j, v, p, range_fields);
    h->start = j_int(j, v, p, "start", INT64_MIN, INT64_MAX, 0, J_REQUIRED);
    h->end = j_int(j, v, p, "end", INT64_MIN, INT64_MAX, 0, J_REQUIRED);
    if (h->end <= h->start)
        jerr(j, p, NULL, "end must be greater than start (the range is [start, end))");
}

static void parse_query_match(jctx_t *j, const cJSON *o, const char *path, cfg_query_match_t *q)
{
    static const char *const fields[] = {"name", "match", NULL};
    static const char *const m_fields[] = {"exact", NULL};
    j_only(j, o, path, fields);
    q->name = j_string(j, o, path, "name", J_REQUIRED, 1, 255);
    const cJSON *m = j_object(j, o, path, "match", J_OPTIONAL);
    if (!m)
        return;
    char p[JPATH_MAX];
    jpath(p, path, "match");
    j_only(j, m, p, m_fields);
    q->exact = j_string(j, m, p, "exact", J_REQUIRED, 0, 255);
}

static const char *const methods[] = {"GET",     "HEAD",    "POST",  "PUT",   "DELETE",
                                      "CONNECT", "OPTIONS", "TRACE", "PATCH", NULL};
static const int method_ids[] = {HTTP_GET,     HTTP_HEAD,    HTTP_POST,  HTTP_PUT,  HTTP_DELETE,
                                 HTTP_CONNECT, HTTP_OPTIONS, HTTP_TRACE, HTTP_PATCH};

/* Header and gRPC metadata matchers: `key` is "headers" or "metadata". */
void cfg_parse_header_list(jctx_t *j, const cJSON *o, const char *path, const char *key,
                           cfg_route_t *r)
{
    char p[JPATH_MAX];
    const cJSON *hs = j_array(j, o, path, key, J_OPTIONAL, 1, 10);
    r->nheaders = (unsigned)cJSON_GetArraySize(hs);
    r->headers = calloc(r->nheaders ? r->nheaders : 1, sizeof *r->headers);
    for (unsigned i = 0; i < r->nheaders && r->headers; i++) {
        jpath_index(p, path, key, (int)i);
        parse_header_match(j, cJSON_GetArrayItem(hs, (int)i), p, &r->headers[i]);
    }
}

/* httpRoute and http2Route match. Every member is optional, as in the API: a match with
 * neither prefix nor path (port, headers, method only: App Mesh's howto-multiple-listeners)
 * takes every path. `scheme` exists for http2Route alone. */
void cfg_parse_match(jctx_t *j, const cJSON *o, const char *path, cfg_route_t *r, int gateway)
{
    static const char *const fields[] = {"prefix",          "path", "method", "port", "headers",
                                         "queryParameters", NULL};
    static const char *const gw_fields[] = {
        "prefix", "path", "method", "port", "headers", "queryParameters", "hostname", NULL};
    static const char *const h2_fields[] = {
        "prefix", "path", "method", "port", "headers", "queryParameters", "scheme", NULL};
    static const char *const path_kinds[] = {"exact", "regex", NULL};
    static const char *const schemes[] = {"http", "https", NULL};
    char p[JPATH_MAX];
    j_only(j, o, path, gateway ? gw_fields : r->kind == ROUTE_HTTP2 ? h2_fields : fields);
    r->scheme = r->kind == ROUTE_HTTP2 && !gateway
                    ? j_enum(j, o, path, "scheme", schemes, J_OPTIONAL, -1)
                    : -1;
    static const char *const where[] = {"prefix", "path", NULL};
    const cJSON *v = NULL;
    int which = j_union(j, o, path, where, J_OPTIONAL, &v);
    if (which == 0) {
        r->path_kind = PATH_PREFIX;
        r->path = j_string(j, o, path, "prefix", J_REQUIRED, 1, 255);
        if (r->path && r->path[0] != '/')
            jerr(j, path, "prefix", "must start with /, got \"%s\"", r->path);
    } else if (which == 1) {
        jpath(p, path, "path");
        const cJSON *m = NULL;
        int kind = j_union(j, v, p, path_kinds, J_REQUIRED, &m);
        if (kind >= 0) {
            r->path_kind = kind == 0 ? PATH_EXACT : PATH_REGEX;
            r->path = j_string(j, v, p, path_kinds[kind], J_REQUIRED, 1, 255);
        }
    }
    int m = j_enum(j, o, path, "method", methods, J_OPTIONAL, -1);
    r->method = m >= 0 ? method_ids[m] : -1;
    r->port = (uint16_t)j_int(j, o, path, "port", 1, 65535, 0, J_OPTIONAL);
    cfg_parse_header_list(j, o, path, "headers", r);
    const cJSON *qs = j_array(j, o, path, "queryParameters", J_OPTIONAL, 1, 10);
    r->nquery = (unsigned)cJSON_GetArraySize(qs);
    r->query = r->nquery ? calloc(r->nquery, sizeof *r->query) : NULL;
    if (!r->query)
        r->nquery = 0;
    for (unsigned i = 0; i < r->nquery; i++) {
        jpath_index(p, path, "queryParameters", (int)i);
        parse_query_match(j, cJSON_GetArrayItem(qs, (int)i), p, &r->query[i]);
    }
}

static void parse_targets(jctx_t *j, const cJSON *action, const char *path, cfg_route_t *r)
{
    static const char *const fields[] = {"weightedTargets", NULL};
    static const char *const t_fields[] = {"virtualNode", "weight", "port", NULL};
    j_only(j, action, path, fields);
    const cJSON *wt = j_array(j, action, path, "weightedTargets", J_REQUIRED, 1, 10);
    r->ntargets = (unsigned)cJSON_GetArraySize(wt);
    r->targets = calloc(r->ntargets ? r->ntargets : 1, sizeof *r->targets);
    for (unsigned i = 0; i < r->ntargets; i++) {
        char p[JPATH_MAX];
        const cJSON *t = cJSON_GetArrayItem(wt, (int)i);
        jpath_index(p, path, "weightedTargets", (int)i);
        j_only(j, t, p, t_fields);
        r->targets[i].node = j_string(j, t, p, "virtualNode", J_REQUIRED, 1, NAME_MAX_LEN);
        r->targets[i].weight = (unsigned)j_int(j, t, p, "weight", 0, 100, 0, J_REQUIRED);
        r->targets[i].port = (uint16_t)j_int(j, t, p, "port", 1, 65535, 0, J_OPTIONAL);
    }
}

static void parse_retry(jctx_t *j, const cJSON *o, const char *path, cfg_route_t *r)
{
    static const char *const fields[] = {"maxRetries", "perRetryTimeout", "httpRetryEvents",
                                         "tcpRetryEvents", NULL};
    static const char *const grpc_fields[] = {"maxRetries",      "perRetryTimeout",
                                              "httpRetryEvents", "tcpRetryEvents",
                                              "grpcRetryEvents", NULL};
    static const char *const grpc_events[] = {"cancelled",          "deadline-exceeded", "internal",
                                              "resource-exhausted", "unavailable",       NULL};
    static const char *const http_events[] = {"server-error", "gateway-error", "client-error",
                                              "stream-error", NULL};
    static const char *const tcp_events[] = {"connection-error", NULL};
    char p[JPATH_MAX];
    int grpc = r->kind == ROUTE_GRPC;
    j_only(j, o, path, grpc ? grpc_fields : fields);
    r->has_retry = 1;
    r->max_retries = (unsigned)j_int(j, o, path, "maxRetries", 0, 1000, 0, J_REQUIRED);
    r->per_retry_ms = j_duration(j, o, path, "perRetryTimeout", J_REQUIRED);
    const cJSON *he = j_array(j, o, path, "httpRetryEvents", J_OPTIONAL, 1, 25);
    const cJSON *te = j_array(j, o, path, "tcpRetryEvents", J_OPTIONAL, 1, 1);
    for (int i = 0; i < cJSON_GetArraySize(he); i++) {
        jpath_index(p, path, "httpRetryEvents", i);
        int e = j_enum_value(j, cJSON_GetArrayItem(he, i), p, http_events, -1);
        if (e >= 0)
            r->retry_events |= 1u << e;
    }
    if (cJSON_GetArraySize(te) == 1) {
        const cJSON *e = cJSON_GetArrayItem(te, 0);
        jpath_index(p, path, "tcpRetryEvents", 0);
        if (cJSON_IsString(e) && strcmp(e->valuestring, tcp_events[0]) == 0)
            r->retry_events |= RETRY_CONNECTION_ERROR;
        else
            jerr(j, p, NULL, "must be \"connection-error\"");
    }
    const cJSON *ge = grpc ? j_array(j, o, path, "grpcRetryEvents", J_OPTIONAL, 1, 5) : NULL;
    for (int i = 0; i < cJSON_GetArraySize(ge); i++) {
        jpath_index(p, path, "grpcRetryEvents", i);
        int e = j_enum_value(j, cJSON_GetArrayItem(ge, i), p, grpc_events, -1);
        if (e >= 0)
            r->grpc_retry_events |= 1u << e;
    }
    if (!he && !te && !ge)
        jerr(j, path, NULL, "needs httpRetryEvents or tcpRetryEvents%s",
             grpc ? " or grpcRetryEvents" : "");
}

/* tcpRoute {action, match {port}, timeout {idle}}: targets per connection, no retry policy
 * (connect failures are retried as App Mesh's default policy does, see routing/). */
static void parse_tcp_route(jctx_t *j, const cJSON *tcp, const char *path, cfg_route_t *r)
{
    static const char *const fields[] = {"action", "match", "timeout", NULL};
    static const char *const match_fields[] = {"port", NULL};
    static const char *const timeout_fields[] = {"idle", NULL};
    char q[JPATH_MAX];
    r->tcp = 1;
    j_only(j, tcp, path, fields);
    const cJSON *v;
    if ((v = j_object(j, tcp, path, "action", J_REQUIRED))) {
        jpath(q, path, "action");
        parse_targets(j, v, q, r);
    }
    if ((v = j_object(j, tcp, path, "match", J_OPTIONAL))) {
        jpath(q, path, "match");
        j_only(j, v, q, match_fields);
        r->port = (uint16_t)j_int(j, v, q, "port", 1, 65535, 0, J_OPTIONAL);
    }
    if ((v = j_object(j, tcp, path, "timeout", J_OPTIONAL))) {
        jpath(q, path, "timeout");
        j_only(j, v, q, timeout_fields);
        r->idle_ms = j_duration(j, v, q, "idle", J_OPTIONAL);
    }
}

/* The retryPolicy and timeout {perRequest, idle} of an http, http2 or grpc route. */
static void parse_policies(jctx_t *j, const cJSON *o, const char *p, cfg_route_t *r)
{
    static const char *const timeout_fields[] = {"perRequest", "idle", NULL};
    char q[JPATH_MAX];
    const cJSON *v;
    if ((v = j_object(j, o, p, "retryPolicy", J_OPTIONAL))) {
        jpath(q, p, "retryPolicy");
        parse_retry(j, v, q, r);
    }
    if ((v = j_object(j, o, p, "timeout", J_OPTIONAL))) {
        jpath(q, p, "timeout");
        j_only(j, v, q, timeout_fields);
        r->per_request_ms = j_duration(j, v, q, "perRequest", J_OPTIONAL);
        r->idle_ms = j_duration(j, v, q, "idle", J_OPTIONAL);
    }
}

/* grpcRoute {match {serviceName, methodName, metadata, port}, action, retryPolicy, timeout};
 * the metadata matchers are kept as `headers` (routing matches both alike). */
static void parse_grpc_route(jctx_t *j, const cJSON *g, const char *p, cfg_route_t *r)
{
    static const char *const fields[] = {"match", "action", "retryPolicy", "timeout", NULL};
    static const char *const match_fields[] = {"serviceName", "methodName", "metadata", "port",
                                               NULL};
    char q[JPATH_MAX];
    j_only(j, g, p, fields);
    const cJSON *v;
    if ((v = j_object(j, g, p, "match", J_REQUIRED))) {
        jpath(q, p, "match");
        j_only(j, v, q, match_fields);
        r->grpc_service = j_string(j, v, q, "serviceName", J_OPTIONAL, 1, 1024);
        r->grpc_method = j_string(j, v, q, "methodName", J_OPTIONAL, 1, 50);
        if (r->grpc_method && !r->grpc_service)
            jerr(j, q, "methodName", "needs serviceName");
        r->port = (uint16_t)j_int(j, v, q, "port", 1, 65535, 0, J_OPTIONAL);
        cfg_parse_header_list(j, v, q, "metadata", r);
    }
    if ((v = j_object(j, g, p, "action", J_REQUIRED))) {
        jpath(q, p, "action");
        parse_targets(j, v, q, r);
    }
    parse_policies(j, g, p, r);
}

static void parse_http_route(jctx_t *j, const cJSON *http, const char *p, cfg_route_t *r)
{
    static const char *const http_fields[] = {"match", "action", "retryPolicy", "timeout", NULL};
    char q[JPATH_MAX];
    j_only(j, http, p, http_fields);
    const cJSON *v;
    if ((v = j_object(j, http, p, "match", J_REQUIRED))) {
        jpath(q, p, "match");
        cfg_parse_match(j, v, q, r, 0);
    }
    if ((v = j_object(j, http, p, "action", J_REQUIRED))) {
        jpath(q, p, "action");
        parse_targets(j, v, q, r);
    }
    parse_policies(j, http, p, r);
}

static void parse_route(jctx_t *j, const cJSON *o, const char *path, void *out)
{
    static const char *const fields[] = {"priority",  "httpRoute", "http2Route",
                                         "grpcRoute", "tcpRoute",  NULL};
    static const char *const kinds[] = {"httpRoute", "http2Route", "grpcRoute", "tcpRoute", NULL};
    cfg_route_t *r = out;
    char p[JPATH_MAX];
    r->per_request_ms = r->idle_ms = DURATION_UNSET;
    r->method = r->scheme = -1;
    r->router = j_string(j, o, path, "virtualRouterName", J_REQUIRED, 1, NAME_MAX_LEN);
    r->name = j_string(j, o, path, "routeName", J_REQUIRED, 1, NAME_MAX_LEN);
    const cJSON *spec = j_object(j, o, path, "spec", J_REQUIRED);
    jpath(p, path, "spec");
    j_only(j, spec, p, fields);
    r->priority = (int)j_int(j, spec, p, "priority", 0, 1000, -1, J_OPTIONAL);
    const cJSON *m = NULL;
    int which = spec ? j_union(j, spec, p, kinds, J_REQUIRED, &m) : -1;
    if (which < 0)
        return;
    static const enum route_kind route_kinds[] = {ROUTE_HTTP, ROUTE_HTTP2, ROUTE_GRPC, ROUTE_TCP};
    r->kind = route_kinds[which];
    jpath(p, p, kinds[which]);
    if (r->kind == ROUTE_TCP)
        parse_tcp_route(j, m, p, r);
    else if (r->kind == ROUTE_GRPC)
        parse_grpc_route(j, m, p, r);
    else
        parse_http_route(j, m, p, r);
}

/* ---- the document ---- */

/* proxy.dns: {"servers": ["ip:port", ...], "hold": Duration}. */
static void parse_dns(jctx_t *j, const cJSON *proxy, cfg_proxy_t *px)
{
    static const char *const fields[] = {"servers", "hold", NULL};
    const cJSON *dns = j_object(j, proxy, "proxy", "dns", J_OPTIONAL);
    if (!dns)
        return;
    j_only(j, dns, "proxy.dns", fields);
    px->dns_hold_ms = j_duration(j, dns, "proxy.dns", "hold", J_OPTIONAL);
    const cJSON *servers = j_array(j, dns, "proxy.dns", "servers", J_OPTIONAL, 1, 16);
    char csv[512] = "";
    for (int i = 0; i < cJSON_GetArraySize(servers); i++) {
        const cJSON *s = cJSON_GetArrayItem(servers, i);
        char path[JPATH_MAX];
        jpath_index(path, "proxy.dns", "servers", i);
        if (!cJSON_IsString(s) || strlen(s->valuestring) > 60) {
            jerr(j, path, NULL, "must be \"ip:port\" or \"ip\"");
            continue;
        }
        snprintf(csv + strlen(csv), sizeof csv - strlen(csv), "%s%s", i ? "," : "", s->valuestring);
    }
    if (csv[0])
        px->dns_servers = strdup(csv);
}

/* proxy.xray: {"enabled", "daemonAddress", "samplingRate", "samplingRuleManifest",
 * "segmentName"}; the App Mesh environment variables override each. */
static void parse_xray(jctx_t *j, const cJSON *proxy, cfg_proxy_t *px)
{
    static const char *const fields[] = {
        "enabled", "daemonAddress", "samplingRate", "samplingRuleManifest", "segmentName", NULL};
    px->xray_rate = -1;
    const cJSON *x = j_object(j, proxy, "proxy", "xray", J_OPTIONAL);
    if (!x)
        return;
    j_only(j, x, "proxy.xray", fields);
    px->xray_enabled = j_bool(j, x, "proxy.xray", "enabled", 1);
    px->xray_daemon = j_string(j, x, "proxy.xray", "daemonAddress", J_OPTIONAL, 3, 255);
    px->xray_manifest = j_string(j, x, "proxy.xray", "samplingRuleManifest", J_OPTIONAL, 1, 500);
    px->xray_segment_name = j_string(j, x, "proxy.xray", "segmentName", J_OPTIONAL, 1, 255);
    const cJSON *rate = cJSON_GetObjectItemCaseSensitive(x, "samplingRate");
    if (rate && (!cJSON_IsNumber(rate) || rate->valuedouble < 0 || rate->valuedouble > 1))
        jerr(j, "proxy.xray", "samplingRate", "must be a number from 0 to 1");
    else if (rate)
        px->xray_rate = rate->valuedouble;
}

/* proxy.cloudMap: {"discovery": "attributes" | "api" | "dns", "healthStatus",
 * "pollInterval", "refreshInterval"}. */
static void parse_cloudmap(jctx_t *j, const cJSON *proxy, cfg_proxy_t *px)
{
    static const char *const fields[] = {"discovery", "healthStatus", "pollInterval",
                                         "refreshInterval", NULL};
    static const char *const uses[] = {"attributes", "api", "dns", NULL};
    static const char *const health[] = {"HEALTHY_OR_ELSE_ALL", "HEALTHY", "UNHEALTHY", "ALL",
                                         NULL};
    const cJSON *o = j_object(j, proxy, "proxy", "cloudMap", J_OPTIONAL);
    if (!o)
        return;
    j_only(j, o, "proxy.cloudMap", fields);
    px->cloudmap_use = j_enum(j, o, "proxy.cloudMap", "discovery", uses, J_OPTIONAL, -1);
    px->cloudmap_health = j_enum(j, o, "proxy.cloudMap", "healthStatus", health, J_OPTIONAL, -1);
    px->cloudmap_poll_ms = j_duration(j, o, "proxy.cloudMap", "pollInterval", J_OPTIONAL);
    px->cloudmap_refresh_ms = j_duration(j, o, "proxy.cloudMap", "refreshInterval", J_OPTIONAL);
}

static void parse_proxy(jctx_t *j, const cJSON *root, cfg_proxy_t *px)
{
    static const char *const fields[] = {
        "node",     "ingressPort",          "egressPort",   "workers", "admin",
        "logLevel", "requestHeaderTimeout", "drainTimeout", "dns",     "xray",
        "cloudMap", "defaultRetryPolicy",   "gateway",      NULL};
    px->ingress_port = px->egress_port = px->workers = -1;
    px->cloudmap_use = px->cloudmap_health = -1;
    px->request_header_timeout_ms = px->drain_timeout_ms = px->dns_hold_ms = DURATION_UNSET;
    px->cloudmap_poll_ms = px->cloudmap_refresh_ms = DURATION_UNSET;
    px->default_retry_policy = -1;
    const cJSON *o = j_object(j, root, "", "proxy", J_OPTIONAL);
    if (!o)
        return;
    j_only(j, o, "proxy", fields);
    px->node = j_string(j, o, "proxy", "node", J_OPTIONAL, 1, NAME_MAX_LEN);
    px->gateway = j_string(j, o, "proxy", "gateway", J_OPTIONAL, 1, NAME_MAX_LEN);
    px->ingress_port = (int)j_int(j, o, "proxy", "ingressPort", 1, 65535, -1, J_OPTIONAL);
    px->egress_port = (int)j_int(j, o, "proxy", "egressPort", 1, 65535, -1, J_OPTIONAL);
    px->workers = (int)j_int(j, o, "proxy", "workers", 1, 256, -1, J_OPTIONAL);
    px->admin = j_string(j, o, "proxy", "admin", J_OPTIONAL, 1, 64);
    px->log_level = j_string(j, o, "proxy", "logLevel", J_OPTIONAL, 1, 16);
    px->request_header_timeout_ms = j_duration(j, o, "proxy", "requestHeaderTimeout", J_OPTIONAL);
    px->drain_timeout_ms = j_duration(j, o, "proxy", "drainTimeout", J_OPTIONAL);
    parse_dns(j, o, px);
    parse_xray(j, o, px);
    parse_cloudmap(j, o, px);
    px->default_retry_policy = j_bool(j, o, "proxy", "defaultRetryPolicy", -1);
}

/* mesh.spec: egressFilter, and serviceDiscovery.ipPreference, which every node that does not
 * set its own takes (MeshServiceDiscovery; the node's "only overrides the IP preference set
 * for the mesh on this specific node"). */
static void parse_mesh(jctx_t *j, const cJSON *root, config_t *c)
{
    static const char *const spec_fields[] = {"egressFilter", "serviceDiscovery", NULL};
    static const char *const sd_fields[] = {"ipPreference", NULL};
    static const char *const filters[] = {"DROP_ALL", "ALLOW_ALL", NULL};
    c->egress_filter = EGRESS_DROP_ALL; /* App Mesh's default */
    const cJSON *mesh = j_object(j, root, "", "mesh", J_OPTIONAL);
    c->mesh_name =
        mesh ? j_string(j, mesh, "mesh", "meshName", J_REQUIRED, 1, NAME_MAX_LEN) : strdup("mesh");
    const cJSON *spec = mesh ? j_object(j, mesh, "mesh", "spec", J_OPTIONAL) : NULL;
    j_only(j, spec, "mesh.spec", spec_fields);
    const cJSON *ef = spec ? j_object(j, spec, "mesh.spec", "egressFilter", J_OPTIONAL) : NULL;
    if (ef)
        c->egress_filter = (enum egress_filter)j_enum(j, ef, "mesh.spec.egressFilter", "type",
                                                      filters, J_REQUIRED, EGRESS_DROP_ALL);
    const cJSON *sd = spec ? j_object(j, spec, "mesh.spec", "serviceDiscovery", J_OPTIONAL) : NULL;
    j_only(j, sd, "mesh.spec.serviceDiscovery", sd_fields);
    if (sd)
        c->ip_preference =
            (enum ip_preference)j_enum(j, sd, "mesh.spec.serviceDiscovery", "ipPreference",
                                       ip_preferences, J_OPTIONAL, IP_DEFAULT);
}

const cJSON *cfg_list_item(jctx_t *j, const cJSON *item, const char *key, char *path)
{
    if (!cJSON_IsObject(item)) {
        jerr(j, path, NULL, "must be an object");
        return NULL;
    }
    size_t n = strlen(key) - 1; /* "virtualNodes" holds what describe-* calls "virtualNode" */
    const cJSON *only = item->child;
    if (!only || only->next || !cJSON_IsObject(only) || strlen(only->string) != n ||
        strncmp(only->string, key, n) != 0)
        return item;
    jpath(path, path, only->string);
    return only;
}

/* Parses root[key] as an array of `size`-byte elements with `each`, and stores each one's
 * position at byte `index_at` of it; returns the count. The array is walked as the list it is
 * (cJSON_GetArrayItem would walk it from the start for every element). */
static unsigned parse_list(jctx_t *j, const cJSON *root, const char *key, size_t size,
                           size_t index_at, void **out,
                           void (*each)(jctx_t *, const cJSON *, const char *, void *))
{
    const cJSON *arr = j_array(j, root, "", key, J_OPTIONAL, 0, 10000);
    unsigned n = (unsigned)cJSON_GetArraySize(arr);
    char *items = calloc(n ? n : 1, size);
    *out = items;
    unsigned i = 0;
    for (const cJSON *item = arr ? arr->child : NULL; item && items; item = item->next, i++) {
        char path[JPATH_MAX];
        jpath_index(path, "", key, (int)i);
        memcpy(items + i * size + index_at, &i, sizeof i);
        const cJSON *o = cfg_list_item(j, item, key, path);
        if (o)
            each(j, o, path, items + i * size);
    }
    return n;
}

config_t *config_parse(const char *json, size_t len, const char *source, diag_t *d)
{
    static const char *const top[] = {"mesh",
                                      "virtualNodes",
                                      "virtualServices",
                                      "virtualRouters",
                                      "routes",
                                      "virtualGateways",
                                      "gatewayRoutes",
                                      "proxy",
                                      "rollouts",
                                      NULL};
    config_t *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->source = strdup(source);
    c->raw = strndup(json, len);
    c->raw_len = c->raw ? strlen(c->raw) : 0;
    jctx_t j = {.d = d, .source = source};
    size_t before = d->n;
    cJSON *root = j_parse(&j, json, len); /* one document, no duplicate keys */
    if (!cJSON_IsObject(root)) {
        if (root)
            diag_add(d, source, "$", "must be a JSON object");
        cJSON_Delete(root);
        config_free(c);
        return NULL;
    }
    j_only(&j, root, "", top);
    parse_mesh(&j, root, c);
    c->nnodes = parse_list(&j, root, "virtualNodes", sizeof(cfg_node_t),
                           offsetof(cfg_node_t, index), (void **)&c->nodes, parse_node);
    c->nservices = parse_list(&j, root, "virtualServices", sizeof(cfg_service_t),
                              offsetof(cfg_service_t, index), (void **)&c->services, parse_service);
    c->nrouters = parse_list(&j, root, "virtualRouters", sizeof(cfg_router_t),
                             offsetof(cfg_router_t, index), (void **)&c->routers, parse_router);
    c->nroutes = parse_list(&j, root, "routes", sizeof(cfg_route_t), offsetof(cfg_route_t, index),
                            (void **)&c->routes, parse_route);
    config_parse_gateways(&j, root, c);
    config_parse_rollouts(&j, root, c);
    parse_proxy(&j, root, &c->proxy);
    cJSON_Delete(root);
    c->document = (cfg_counts_t){c->nnodes, c->nservices, c->nrouters, c->nroutes};
    for (unsigned i = 0; i < c->nnodes; i++)
        if (c->nodes[i].ip_preference == IP_DEFAULT)
            c->nodes[i].ip_preference = c->ip_preference;
    if (config_index_build(c) != 0)
        diag_add(d, source, "$", "out of memory indexing the config");
    if (d->n == before)
        config_validate(c, d);
    if (d->n > before) {
        config_free(c);
        return NULL;
    }
    return c;
}

config_t *config_load_file(const char *path, diag_t *d)
{
    size_t len;
    char *data = j_read_file(path, &len);
    if (!data) {
        diag_add(d, path, "$", "cannot open: %s", strerror(errno));
        return NULL;
    }
    config_t *c = config_parse(data, len, path, d);
    free(data);
    return c;
}

static void free_strings(char **v, unsigned n)
{
    for (unsigned i = 0; i < n && v; i++)
        free(v[i]);
    free(v);
}

void cfg_free_listener(cfg_listener_t *l)
{
    free(l->protocol);
    free(l->health.protocol);
    free(l->health.path);
    config_free_listener_tls(&l->tls);
}

void cfg_free_access_log(cfg_access_log_t *al)
{
    for (unsigned k = 0; k < al->njson; k++) {
        free(al->json[k].key);
        free(al->json[k].value);
    }
    free(al->json);
    free(al->path);
    free(al->where);
    free(al->text);
}

void cfg_free_node(cfg_node_t *n)
{
    for (unsigned k = 0; k < n->nlisteners; k++)
        cfg_free_listener(&n->listeners[k]);
    free(n->listeners);
    free(n->name);
    free(n->hostname);
    free(n->namespace_name);
    free(n->service_name);
    for (unsigned k = 0; k < n->nattributes; k++) {
        free(n->attributes[k].key);
        free(n->attributes[k].value);
    }
    free(n->attributes);
    free_strings(n->backends, n->nbackends);
    for (unsigned k = 0; k < n->nbackends && n->backend_tls; k++)
        config_free_client_tls(&n->backend_tls[k]);
    free(n->backend_tls);
    config_free_client_tls(&n->default_tls);
    cfg_free_access_log(&n->access_log);
}

void cfg_free_service(cfg_service_t *s)
{
    free(s->name);
    free(s->provider_name);
}

void cfg_free_router(cfg_router_t *r)
{
    free(r->name);
    free(r->ports);
    free(r->tcp);
    free(r->protocol);
}

void cfg_free_route(cfg_route_t *r)
{
    for (unsigned k = 0; k < r->ntargets && !r->shared_names; k++)
        free(r->targets[k].node);
    for (unsigned k = 0; k < r->nheaders; k++) {
        free(r->headers[k].name);
        free(r->headers[k].value);
    }
    for (unsigned k = 0; k < r->nquery; k++) {
        free(r->query[k].name);
        free(r->query[k].exact);
    }
    free(r->headers);
    free(r->query);
    free(r->targets);
    if (!r->shared_names)
        free(r->router);
    free(r->name);
    free(r->path);
    free(r->grpc_service);
    free(r->grpc_method);
}

void config_free(config_t *c)
{
    if (!c)
        return;
    for (unsigned i = 0; i < c->nnodes; i++)
        cfg_free_node(&c->nodes[i]);
    for (unsigned i = 0; i < c->nservices; i++)
        cfg_free_service(&c->services[i]);
    for (unsigned i = 0; i < c->nrouters; i++)
        cfg_free_router(&c->routers[i]);
    for (unsigned i = 0; i < c->nroutes; i++)
        cfg_free_route(&c->routes[i]);
    config_index_free(c);
    config_free_gateways(c);
    config_free_rollouts(c);
    free(c->nodes);
    free(c->services);
    free(c->routers);
    free(c->routes);
    free(c->proxy.node);
    free(c->proxy.gateway);
    free(c->proxy.admin);
    free(c->proxy.log_level);
    free(c->proxy.dns_servers);
    free(c->proxy.xray_daemon);
    free(c->proxy.xray_manifest);
    free(c->proxy.xray_segment_name);
    free(c->mesh_name);
    free(c->source);
    free(c->raw);
    free(c->pruned_for);
    free(c);
}

/* ---- lookups by name ---- */

struct config_index {
    name_index_t nodes, services, routers;
};

void config_index_free(config_t *c)
{
    if (!c->index)
        return;
    name_index_free(&c->index->nodes);
    name_index_free(&c->index->services);
    name_index_free(&c->index->routers);
    free(c->index);
    c->index = NULL;
}

/* Names that repeat keep their first position, as a scan from the start would find. */
int config_index_build(config_t *c)
{
    config_index_free(c);
    struct config_index *ix = calloc(1, sizeof *ix);
    if (!ix || name_index_init(&ix->nodes, c->nnodes, 0) != 0 ||
        name_index_init(&ix->services, c->nservices, 1) != 0 ||
        name_index_init(&ix->routers, c->nrouters, 0) != 0) {
        c->index = ix;
        config_index_free(c);
        return UV_ENOMEM;
    }
    for (unsigned i = 0; i < c->nnodes; i++)
        name_index_add(&ix->nodes, c->nodes[i].name, NULL, i);
    for (unsigned i = 0; i < c->nservices; i++)
        name_index_add(&ix->services, c->services[i].name, NULL, i);
    for (unsigned i = 0; i < c->nrouters; i++)
        name_index_add(&ix->routers, c->routers[i].name, NULL, i);
    c->index = ix;
    return 0;
}

const cfg_node_t *config_node(const config_t *c, const char *name)
{
    long i = c->index && name ? name_index_find(&c->index->nodes, name, NULL) : -1;
    return i >= 0 ? &c->nodes[i] : NULL;
}

const cfg_service_t *config_service(const config_t *c, const char *name)
{
    long i = c->index && name ? name_index_find(&c->index->services, name, NULL) : -1;
    return i >= 0 ? &c->services[i] : NULL;
}

const cfg_router_t *config_router(const config_t *c, const char *name)
{
    long i = c->index && name ? name_index_find(&c->index->routers, name, NULL) : -1;
    return i >= 0 ? &c->routers[i] : NULL;
}
