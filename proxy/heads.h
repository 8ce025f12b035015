/* The heads remora writes: the request head toward the upstream (hop-by-hop fields dropped,
 * X-Forwarded-For/-Proto and X-Request-Id set, framing re-stated), the response head toward the
 * client, and remora's own short text replies. Each is sized exactly and queued as one
 * buffer. */
#ifndef REMORA_HEADS_H
#define REMORA_HEADS_H

#include <stddef.h>

#include "proxy/conn.h"
#include "proxy/forward.h"

struct worker;

int heads_send_request(conn_t *c, const exchange_t *ex);
int heads_send_response(conn_t *c, const exchange_t *ex);
/* `status` with a text/plain `body` (omitted for HEAD), Connection: close unless keep_alive. */
void heads_send_local(conn_t *c, const exchange_t *ex, int status, const char *body);
/* The authority of an absolute-form request-target (RFC 9112 §3.2.2), or NULL. */
const char *heads_authority(const exchange_t *ex, size_t *n);
/* A fresh X-Request-Id (UUID version 4). */
void heads_request_id(struct worker *w, char out[37]);

#endif
