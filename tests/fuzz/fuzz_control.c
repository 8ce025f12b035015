/* The control plane's parsers on arbitrary input: Cloud Map API replies (discovery/cloudmap.c),
 * container credentials replies (aws/aws.c), URLs (http/client.c) and ISO-8601 times. These
 * read what a remote server or the environment says, so a hostile one must get nothing past
 * them. The first byte picks the parser; the rest is its input.
 *
 * Checked for every input:
 *   - a DiscoverInstances answer lists at most CLOUDMAP_MAX_RESULTS instances, each with an
 *     address; any result but CM_OK carries a message;
 *   - credentials taken from a reply are NUL-terminated within their fields and the next fetch
 *     is at least REFRESH_MIN_MS away;
 *   - a URL that parses has a port, a host without NUL or '/', a path starting with '/', and
 *     parses to the same pieces again from its scheme, authority and path;
 *   - a time that parses formats back (gmtime) to the same date and time of day. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* The parsers are static: the sources are included whole. */
#include "aws/aws.c"
#include "discovery/cloudmap.c"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fail(const char *what, int line)
{
    fprintf(stderr, "%s:%d: invariant broken: %s\n", __FILE__, line, what);
    abort();
}
#define check(ok) ((ok) ? (void)0 : fail(#ok, __LINE__))

static void on_answer(void *arg, enum cm_op op, const cm_answer_t *a)
{
    (void)arg;
    (void)op;
    check(a->result < CM_RESULTS);
    check(a->result == CM_OK || a->message != NULL);
    check(a->n + a->unaddressed <= CLOUDMAP_MAX_RESULTS);
    for (unsigned i = 0; i < a->n; i++)
        check(a->instances[i].has4 || a->instances[i].has6);
}

static void fuzz_cloudmap(const char *p, size_t n, enum cm_op op, int status)
{
    cm_call_t call = {.op = op, .cb = on_answer};
    if (status == 200) {
        answer_ok(&call, p, n);
        return;
    }
    head_t head;
    head_init(&head);
    http_response_t r = {.status = status, .head = &head, .body = p, .body_len = n};
    answer_error(&call, &r);
    head_free(&head);
}

static void fuzz_credentials(const char *p, size_t n)
{
    aws_credentials_t prov = {0};
    const char *why = NULL;
    long long next = take_reply(&prov, p, n, &why);
    if (next < 0) {
        check(why != NULL);
        return;
    }
    check(next >= REFRESH_MIN_MS);
    check(prov.have);
    check(memchr(prov.creds.access_key, 0, sizeof prov.creds.access_key) != NULL);
    check(memchr(prov.creds.secret_key, 0, sizeof prov.creds.secret_key) != NULL);
    check(memchr(prov.creds.token, 0, sizeof prov.creds.token) != NULL);
}

static void fuzz_url(const char *s)
{
    http_url_t u, again;
    if (http_url_parse(s, &u) != 0)
        return;
    check(u.port != 0);
    check(u.host[0] && !strchr(u.host, '/'));
    check(u.path[0] == '/');
    char rebuilt[2600];
    snprintf(rebuilt, sizeof rebuilt, "%s://%s%s", u.tls ? "https" : "http", u.authority, u.path);
    check(http_url_parse(rebuilt, &again) == 0);
    check(again.tls == u.tls && again.port == u.port);
    check(!strcmp(again.host, u.host) && !strcmp(again.path, u.path));
}

static void fuzz_time(const char *s)
{
    long long t = aws_parse_time(s);
    if (t < 0)
        return;
    time_t tt = (time_t)t;
    struct tm tm;
    check(gmtime_r(&tt, &tm) != NULL);
    char text[32];
    snprintf(text, sizeof text, "%04d-%02d-%02dT%02d:%02d:%02d", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
    if (strncmp(s + 17, "60", 2) != 0) /* a leap second normalises to the next minute */
        check(!strncmp(s, text, 19));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 1 << 20)
        return 0;
    char *s = malloc(size);
    if (!s)
        return 0;
    memcpy(s, data + 1, size - 1);
    s[size - 1] = '\0';
    const char *p = s;
    size_t n = size - 1;
    switch (data[0] % 6) {
    case 0:
        fuzz_cloudmap(p, n, CM_DISCOVER, 200);
        break;
    case 1:
        fuzz_cloudmap(p, n, CM_REVISION, 200);
        break;
    case 2:
        fuzz_cloudmap(p, n, CM_DISCOVER, 400 + data[0] % 100);
        break;
    case 3:
        fuzz_credentials(p, n);
        break;
    case 4:
        fuzz_url(s); /* up to the first NUL */
        break;
    default:
        fuzz_time(s);
        break;
    }
    free(s);
    return 0;
}
