/* One request/response exchange: route -> pick -> pool stream -> relay, with the route's
 * retries and timeouts; the one place where failures become the client's 4xx/5xx.
 *
 * Ownership (docs/engine.md): a server codec creates the exchange through the worker's stream
 * handler and the exchange holds that server stream until it releases it, exactly once. The
 * exchange holds at most one client stream at a time (a retry releases the old one first). It
 * owns its heads, its timer (the per-request, per-try and body-idle deadlines), its replay
 * buffer and a reference on the route table snapshot it was routed with, so a reload changes
 * nothing for it and frees nothing it uses. It is freed through the worker's deferred list,
 * never inside a callback chain: exchange_end() marks it over and queues it. */
#ifndef REMORA_EXCHANGE_H
#define REMORA_EXCHANGE_H

#include "proxy/stream.h"

struct worker;
struct listener;
typedef struct exchange exchange_t;

/* The stream handler the worker gives its server codecs (owner: the listener). */
extern const stream_handler_t exchange_handler;

/* The worker is ending: free the kept exchanges (from their timers' close callbacks). */
void exchange_close_kept(struct worker *w);

#endif
