#include "discovery/cloudmap.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/err.h"
#include "base/log.h"
#include "http/client.h"

#define TARGET_PREFIX "Route53AutoNaming_v20170314."

struct cloudmap {
    http_client_t *http;
    aws_credentials_t *creds;
    char region[64];
    char url[2048];
    http_url_t where;
};

struct cm_call {
    cloudmap_t *cm;
    http_call_t *http;
    enum cm_op op;
    cloudmap_cb cb;
    void *arg;
};

static const char *const op_names[CM_OPS] = {"DiscoverInstances", "DiscoverInstancesRevision"};
static const char *const result_names[CM_RESULTS] = {"ok", "error", "throttled", "not_found",
                                                     "timeout"};
static const char *const health_names[] = {"HEALTHY_OR_ELSE_ALL", "HEALTHY", "UNHEALTHY", "ALL"};

const char *cloudmap_op_name(enum cm_op op)
{
    return op_names[op];
}

const char *cloudmap_result_name(enum cm_result r)
{
    return result_names[r];
}

int cloudmap_waiting(const cloudmap_t *cm)
{
    return aws_credentials_pending(cm->creds);
}

const char *cloudmap_endpoint(const cloudmap_t *cm)
{
    return cm->url;
}

int cloudmap_open(cloudmap_t **out, uv_loop_t *loop, aws_credentials_stats_t stats, char *why,
                  size_t whylen)
{
    cloudmap_t *cm = calloc(1, sizeof *cm);
    if (!cm)
        return UV_ENOMEM;
    int err = aws_region(cm->region, sizeof cm->region, why, whylen);
    if (!err) {
        aws_endpoint("SERVICEDISCOVERY", "data-servicediscovery", cm->region, cm->url,
                     sizeof cm->url);
        if (http_url_parse(cm->url, &cm->where)) {
            snprintf(why, whylen, "the Cloud Map endpoint \"%s\" is not an http(s) URL", cm->url);
            err = ERR_CONFIG;
        }
    }
    if (!err)
        err = http_client_open(&cm->http, loop);
    if (!err)
        err = aws_credentials_open(&cm->creds, loop, cm->http, stats, why, whylen);
    if (err) {
        http_client_close(cm->http);
        free(cm);
        return err;
    }
    *out = cm;
    return 0;
}

void cloudmap_close(cloudmap_t *cm)
{
    if (!cm)
        return;
    aws_credentials_close(cm->creds);
    http_client_close(cm->http); /* cancels the calls; their cm_call_t are freed below */
    free(cm);
}

/* ---- requests ---- */

static char *request_body(enum cm_op op, const cm_query_t *q)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "NamespaceName", q->namespace_name);
    cJSON_AddStringToObject(o, "ServiceName", q->service_name);
    if (op == CM_DISCOVER) {
        cJSON_AddNumberToObject(o, "MaxResults", CLOUDMAP_MAX_RESULTS);
        cJSON_AddStringToObject(o, "HealthStatus", health_names[q->health]);
        if (q->nattributes) {
            cJSON *params = cJSON_AddObjectToObject(o, "QueryParameters");
            for (unsigned i = 0; params && i < q->nattributes; i++)
                cJSON_AddStringToObject(params, q->attributes[i].key, q->attributes[i].value);
        }
    }
    char *body = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return body;
}

/* ---- answers ---- */

static void take_instance(const cJSON *inst, cm_instance_t *out)
{
    const cJSON *attrs = cJSON_GetObjectItemCaseSensitive(inst, "Attributes");
    const cJSON *v4 = cJSON_GetObjectItemCaseSensitive(attrs, "AWS_INSTANCE_IPV4");
    const cJSON *v6 = cJSON_GetObjectItemCaseSensitive(attrs, "AWS_INSTANCE_IPV6");
    *out = (cm_instance_t){0};
    out->has4 = cJSON_IsString(v4) && inet_pton(AF_INET, v4->valuestring, &out->v4) == 1;
    out->has6 = cJSON_IsString(v6) && inet_pton(AF_INET6, v6->valuestring, &out->v6) == 1;
}

static void answer_ok(cm_call_t *call, const char *body, size_t len)
{
    cm_answer_t a = {.result = CM_ERROR, .message = "the reply is not the API's JSON"};
    cJSON *o = cJSON_ParseWithLength(body, len);
    const cJSON *rev = cJSON_GetObjectItemCaseSensitive(o, "InstancesRevision");
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(o, "Instances");
    cm_instance_t *insts = NULL;
    /* A revision past what a long long holds (a hostile or broken reply) is no revision. */
    int ok = cJSON_IsNumber(rev) && rev->valuedouble > -9.2e18 && rev->valuedouble < 9.2e18 &&
             (call->op == CM_REVISION || cJSON_IsArray(list));
    int count = ok && call->op == CM_DISCOVER ? cJSON_GetArraySize(list) : 0;
    if (count > CLOUDMAP_MAX_RESULTS)
        count = CLOUDMAP_MAX_RESULTS;
    if (count && !(insts = calloc((size_t)count, sizeof *insts))) {
        ok = 0;
        a.message = "out of memory";
    }
    if (ok) {
        a = (cm_answer_t){.result = CM_OK, .revision = (long long)rev->valuedouble};
        const cJSON *inst;
        cJSON_ArrayForEach(inst, list)
        {
            if ((int)(a.n + a.unaddressed) == count)
                break;
            take_instance(inst, &insts[a.n]);
            if (insts[a.n].has4 || insts[a.n].has6)
                a.n++;
            else
                a.unaddressed++;
        }
        a.instances = insts;
    }
    call->cb(call->arg, call->op, &a);
    free(insts);
    cJSON_Delete(o);
}

/* An error reply: {"__type": "...#Code", "message": "..."} or X-Amzn-ErrorType. */
static void answer_error(cm_call_t *call, const http_response_t *r)
{
    cJSON *o = cJSON_ParseWithLength(r->body ? r->body : "", r->body_len);
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(o, "__type");
    const cJSON *msg = cJSON_GetObjectItemCaseSensitive(o, "message");
    if (!cJSON_IsString(msg))
        msg = cJSON_GetObjectItemCaseSensitive(o, "Message");
    const char *code = cJSON_IsString(type) ? type->valuestring : http_field(r, "x-amzn-errortype");
    char name[128] = "";
    if (code) {
        const char *hash = strrchr(code, '#');
        snprintf(name, sizeof name, "%s", hash ? hash + 1 : code);
        name[strcspn(name, ":")] = '\0';
    }
    enum cm_result res = CM_ERROR;
    if (!strcmp(name, "NamespaceNotFound") || !strcmp(name, "ServiceNotFound"))
        res = CM_NOT_FOUND;
    else if (!strcmp(name, "RequestLimitExceeded") || !strcmp(name, "ThrottlingException") ||
             r->status == 429)
        res = CM_THROTTLED;
    char why[400];
    snprintf(why, sizeof why, "HTTP %d%s%s%s%.200s", r->status, name[0] ? " " : "", name,
             cJSON_IsString(msg) ? ": " : "", cJSON_IsString(msg) ? msg->valuestring : "");
    cm_answer_t a = {.result = res, .message = why};
    call->cb(call->arg, call->op, &a);
    cJSON_Delete(o);
}

static void on_reply(void *arg, const http_response_t *r)
{
    cm_call_t *call = arg;
    if (r->err) {
        cm_answer_t a = {
            r->err == UV_ETIMEDOUT ? CM_TIMEOUT : CM_ERROR, 0, NULL, 0, 0, err_str(r->err)};
        call->cb(call->arg, call->op, &a);
    } else if (r->status == 200) {
        answer_ok(call, r->body, r->body_len);
    } else {
        answer_error(call, r);
    }
    free(call);
}

cm_call_t *cloudmap_call(cloudmap_t *cm, enum cm_op op, const cm_query_t *q, cloudmap_cb cb,
                         void *arg, const char **why)
{
    const aws_creds_t *creds = aws_credentials_get(cm->creds);
    if (!creds) {
        *why = "no AWS credentials yet";
        return NULL;
    }
    *why = "out of memory";
    cm_call_t *call = calloc(1, sizeof *call);
    char *body = request_body(op, q);
    char target[64], headers[6144];
    snprintf(target, sizeof target, TARGET_PREFIX "%s", op_names[op]);
    sigv4_header_t signed_headers[] = {{"Content-Type", "application/x-amz-json-1.1"},
                                       {"X-Amz-Target", target}};
    sigv4_request_t sr = {.method = "POST",
                          .host = cm->where.authority,
                          .path = cm->where.path,
                          .headers = signed_headers,
                          .nheaders = 2,
                          .body = body,
                          .body_len = body ? strlen(body) : 0};
    int n = snprintf(headers, sizeof headers,
                     "Content-Type: application/x-amz-json-1.1\r\nX-Amz-Target: %s\r\n", target);
    int signed_len = body ? sigv4_sign(&sr, creds, cm->region, "servicediscovery", time(NULL),
                                       headers + n, sizeof headers - (size_t)n)
                          : -1;
    if (call && signed_len >= 0) {
        *call = (cm_call_t){cm, NULL, op, cb, arg};
        http_request_t rq = {.method = "POST",
                             .url = cm->url,
                             .headers = headers,
                             .body = body,
                             .body_len = sr.body_len,
                             .max_body = CLOUDMAP_MAX_BODY,
                             .timeout_ms = CLOUDMAP_TIMEOUT_MS};
        call->http = http_fetch(cm->http, &rq, on_reply, call);
    } else if (signed_len < 0 && body) {
        *why = "the request cannot be signed";
    }
    cJSON_free(body);
    if (call && !call->http) {
        free(call);
        return NULL;
    }
    return call;
}

void cloudmap_cancel(cm_call_t *call)
{
    if (!call)
        return;
    http_cancel(call->http);
    free(call);
}
