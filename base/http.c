#include "base/http.h"

#include <string.h>

static const char *const names[] = {
    [HTTP_OTHER] = "",          [HTTP_GET] = "GET",         [HTTP_HEAD] = "HEAD",
    [HTTP_POST] = "POST",       [HTTP_PUT] = "PUT",         [HTTP_DELETE] = "DELETE",
    [HTTP_CONNECT] = "CONNECT", [HTTP_OPTIONS] = "OPTIONS", [HTTP_TRACE] = "TRACE",
    [HTTP_PATCH] = "PATCH",
};

enum http_method http_method_of(const char *p, size_t n)
{
    for (unsigned m = HTTP_GET; m < sizeof names / sizeof *names; m++)
        if (strlen(names[m]) == n && memcmp(names[m], p, n) == 0)
            return (enum http_method)m;
    return HTTP_OTHER;
}

const char *http_method_name(enum http_method m)
{
    return (unsigned)m < sizeof names / sizeof *names ? names[m] : "";
}

int http_method_idempotent(enum http_method m)
{
    switch (m) {
    case HTTP_GET:
    case HTTP_HEAD:
    case HTTP_OPTIONS:
    case HTTP_TRACE:
    case HTTP_PUT:
    case HTTP_DELETE:
        return 1;
    default:
        return 0;
    }
}

const char *http_reason(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 413:
        return "Content Too Large";
    case 414:
        return "URI Too Long";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 505:
        return "HTTP Version Not Supported";
    case 508:
        return "Loop Detected";
    default:
        return "";
    }
}
