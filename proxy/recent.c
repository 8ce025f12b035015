#include "proxy/recent.h"

#include <string.h>

int recent_init(recent_traces_t *r)
{
    memset(r, 0, sizeof *r);
    return uv_mutex_init(&r->lock);
}

void recent_add(recent_traces_t *r, const recent_trace_t *t)
{
    uv_mutex_lock(&r->lock);
    r->ring[r->added++ % RECENT_TRACES] = *t;
    uv_mutex_unlock(&r->lock);
}

void recent_json(recent_traces_t *r, text_t *out)
{
    uv_mutex_lock(&r->lock);
    unsigned n = r->added < RECENT_TRACES ? r->added : RECENT_TRACES;
    text_printf(out, "[");
    for (unsigned i = 0; i < n; i++) {
        const recent_trace_t *t = &r->ring[(r->added - 1 - i) % RECENT_TRACES];
        text_printf(out, "%s{\"traceId\": ", i ? ", " : "");
        text_json_string(out, t->trace_id);
        text_printf(out, ", \"timeMs\": %llu, \"method\": ", (unsigned long long)t->time_ms);
        text_json_string(out, t->method);
        text_printf(out, ", \"host\": ");
        text_json_string(out, t->host);
        text_printf(out, ", \"path\": ");
        text_json_string(out, t->path);
        text_printf(out, ", \"service\": ");
        text_json_string(out, t->service);
        text_printf(out, ", \"status\": %d, \"durationMs\": %u, \"direction\": \"%s\"}", t->status,
                    t->duration_ms, t->egress ? "egress" : "ingress");
    }
    text_printf(out, "]");
    uv_mutex_unlock(&r->lock);
}

void recent_free(recent_traces_t *r)
{
    uv_mutex_destroy(&r->lock);
}
