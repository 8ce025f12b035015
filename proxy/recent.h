/* The last RECENT_TRACES sampled requests, for /ui: remora sends traces to the X-Ray daemon and
 * keeps none, so the page would otherwise have nothing to link a rollout's numbers to. Workers
 * add under a mutex (sampled requests only: 1/s plus 5 % by default, so contention is
 * negligible); the admin reads under the same mutex. */
#ifndef REMORA_RECENT_H
#define REMORA_RECENT_H

#include <stdint.h>
#include <uv.h>

#include "base/text.h"

#define RECENT_TRACES 20

typedef struct recent_trace {
    uint64_t time_ms; /* Unix ms when it ended */
    char trace_id[40];
    char method[12];
    char host[96];
    char path[160];
    char service[96]; /* the virtual service (egress), "" on ingress */
    int status;
    unsigned duration_ms;
    int egress;
} recent_trace_t;

typedef struct recent_traces {
    uv_mutex_t lock;
    recent_trace_t ring[RECENT_TRACES];
    unsigned added; /* in all; the newest is ring[(added - 1) % RECENT_TRACES] */
} recent_traces_t;

int recent_init(recent_traces_t *r);
void recent_add(recent_traces_t *r, const recent_trace_t *t);
/* A JSON array, newest first: traceId, timeMs, method, host, path, service, status,
 * durationMs, direction. */
void recent_json(recent_traces_t *r, text_t *out);
void recent_free(recent_traces_t *r);

#endif
