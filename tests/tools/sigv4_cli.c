/* Signs each request on stdin with sigv4_sign (aws/sigv4.c) and prints the header lines it
 * produced, for the comparison with botocore in test_sigv4.py. One JSON object per line:
 *   {"method", "host", "path", "query", "headers": [[name, value], ...], "body", "s3": bool,
 *    "access_key", "secret_key", "token", "region", "service", "time": epoch seconds}
 * ("scheme" is botocore's business and ignored here). Prints one line per request:
 *   {"headers": [[name, value], ...]}  or  {"error": <code>, "message": "..."} */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "aws/sigv4.h"
#include "base/err.h"

static const char *str(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static void copy(char *dst, size_t n, const char *src)
{
    snprintf(dst, n, "%s", src ? src : "");
}

/* The "headers" pairs; they point into `o`. Returns the count, or -1 if malformed. */
static int headers(const cJSON *o, sigv4_header_t *h, int max)
{
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(o, "headers"), *pair;
    int n = 0;
    cJSON_ArrayForEach(pair, list)
    {
        if (n == max || cJSON_GetArraySize(pair) != 2)
            return -1;
        h[n].name = cJSON_GetStringValue(cJSON_GetArrayItem(pair, 0));
        h[n].value = cJSON_GetStringValue(cJSON_GetArrayItem(pair, 1));
        if (!h[n].name || !h[n].value)
            return -1;
        n++;
    }
    return n;
}

/* "Name: value\r\n" lines into [[name, value], ...]. */
static cJSON *parse_lines(char *out)
{
    cJSON *list = cJSON_CreateArray();
    for (char *line = out; *line;) {
        char *crlf = strstr(line, "\r\n"), *colon = strstr(line, ": ");
        if (!crlf || !colon || colon > crlf)
            break;
        *crlf = *colon = '\0';
        cJSON *pair = cJSON_CreateArray();
        cJSON_AddItemToArray(pair, cJSON_CreateString(line));
        cJSON_AddItemToArray(pair, cJSON_CreateString(colon + 2));
        cJSON_AddItemToArray(list, pair);
        line = crlf + 2;
    }
    return list;
}

static cJSON *sign(const cJSON *o)
{
    aws_creds_t c;
    copy(c.access_key, sizeof c.access_key, str(o, "access_key"));
    copy(c.secret_key, sizeof c.secret_key, str(o, "secret_key"));
    copy(c.token, sizeof c.token, str(o, "token"));
    sigv4_header_t h[SIGV4_MAX_HEADERS + 1];
    const char *body = str(o, "body");
    sigv4_request_t r = {.method = str(o, "method"),
                         .host = str(o, "host"),
                         .path = str(o, "path"),
                         .query = str(o, "query"),
                         .headers = h,
                         .body = body,
                         .body_len = body ? strlen(body) : 0,
                         .flags = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "s3")) ? SIGV4_S3
                                                                                          : 0};
    int n = headers(o, h, SIGV4_MAX_HEADERS + 1);
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "time");
    char out[8192];
    int err = n < 0 || !cJSON_IsNumber(t) ? -1 : 0;
    if (!err) {
        r.nheaders = (unsigned)n;
        err = sigv4_sign(&r, &c, str(o, "region"), str(o, "service"), (time_t)t->valuedouble, out,
                         sizeof out);
    }
    cJSON *res = cJSON_CreateObject();
    if (err < 0) {
        cJSON_AddNumberToObject(res, "error", err);
        cJSON_AddStringToObject(res, "message", err == -1 ? "bad input line" : err_str(err));
    } else {
        cJSON_AddItemToObject(res, "headers", parse_lines(out));
    }
    return res;
}

int main(void)
{
    char *line = NULL;
    size_t cap = 0;
    while (getline(&line, &cap, stdin) > 0) {
        cJSON *o = cJSON_Parse(line), *res;
        if (!cJSON_IsObject(o)) {
            res = cJSON_CreateObject();
            cJSON_AddNumberToObject(res, "error", -1);
            cJSON_AddStringToObject(res, "message", "not a JSON object");
        } else {
            res = sign(o);
        }
        char *text = cJSON_PrintUnformatted(res);
        printf("%s\n", text ? text : "{\"error\": -1}");
        fflush(stdout);
        cJSON_free(text);
        cJSON_Delete(res);
        cJSON_Delete(o);
    }
    free(line);
    return 0;
}
