/* GET /ui: one self-contained page (no external assets) that polls GET /ui/state every second
 * and shows the routes with their weights in force, per-target request and error rates,
 * p50/p99, endpoint health, and each rollout's progress and decisions. */
#ifndef REMORA_UI_PAGE_H
#define REMORA_UI_PAGE_H

#include "base/text.h"

struct server;

extern const char ui_page_html[];

/* GET /ui/state: counters as they are (the page turns them into rates between two polls):
 * {"node", "timeMs", "boundsMs": [...], "routes": [{"router", "route", "targets": [{"node",
 * "weight", "responses": [1xx..5xx], "cluster"}]}], "clusters": [{"name", "node", "healthy",
 * "endpoints", "rqTime": [bucket counts]}], "rollouts": GET /rollouts}. Main thread. */
void ui_state_json(struct server *s, text_t *out);

#endif
