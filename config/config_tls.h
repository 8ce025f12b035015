/* Inside config/: parsing and freeing the TLS settings (config_tls.c). */
#ifndef REMORA_CONFIG_TLS_H
#define REMORA_CONFIG_TLS_H

#include "config/config.h"
#include "config/json.h"

void config_parse_listener_tls(jctx_t *j, const cJSON *o, const char *path, cfg_listener_tls_t *t);
/* owner.clientPolicy {tls?}, on a backend's virtualService or on backendDefaults. */
void config_parse_client_policy(jctx_t *j, const cJSON *owner, const char *path,
                                cfg_client_tls_t *t);
void config_free_listener_tls(cfg_listener_tls_t *t);
void config_free_client_tls(cfg_client_tls_t *t);

#endif
