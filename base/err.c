#include "base/err.h"

#include <uv.h>

const char *err_str(int err)
{
    switch (err) {
    case 0:
        return "ok";
    case ERR_CONFIG:
        return "invalid configuration";
    case ERR_NO_ENDPOINT:
        return "no healthy upstream";
    case ERR_BAD_RESPONSE:
        return "malformed upstream response";
    case ERR_UPSTREAM_CLOSED:
        return "upstream connection closed before the response completed";
    case ERR_TOO_LARGE:
        return "buffer limit exceeded";
    case ERR_BAD_REQUEST:
        return "malformed request";
    case ERR_CLIENT_GONE:
        return "client went away";
    case ERR_TLS:
        return "TLS handshake or certificate verification failed";
    case ERR_BAD_URL:
        return "not an http:// or https:// URL";
    case ERR_REFUSED:
        return "stream refused by the upstream (not processed)";
    default:
        return err < ERR_BASE ? "unknown error" : uv_strerror(err);
    }
}
