/* The admin API on 127.0.0.1:9901 (SPEC §6), served by the main thread's loop: readiness,
 * server info, stats in Envoy's text and Prometheus forms, and the lifecycle endpoints. One
 * request per connection; answers close the connection. Bounded against local clients: at
 * most 64 connections (more: 503 and closed), proxy.requestHeaderTimeout (10 s if 0) for the
 * request to arrive (408), 30 s for the answer to leave, targets up to 4096 bytes (414), stats
 * filters up to 1024 bytes, without back-references or bounds past RE2's 1000 (400). */
#ifndef REMORA_ADMIN_H
#define REMORA_ADMIN_H

#include "proxy/server.h"

int admin_start(server_t *s);
void admin_stop(server_t *s);

#endif
