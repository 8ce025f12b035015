/* The admin API on 127.0.0.1:9901 (SPEC §6), served by the main thread's loop: readiness,
 * server info, stats in Envoy's text and Prometheus forms, and the lifecycle endpoints. One
 * request per connection; answers close the connection. */
#ifndef REMORA_ADMIN_H
#define REMORA_ADMIN_H

#include "proxy/server.h"

int admin_start(server_t *s);
void admin_stop(server_t *s);

#endif
