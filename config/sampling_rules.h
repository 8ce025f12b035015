/* X-Ray local sampling rules, version 2 (XRAY_SAMPLING_RULE_MANIFEST):
 * {"version": 2, "default": {"fixed_target": N, "rate": R},
 *  "rules": [{"description"?, "host", "http_method", "url_path", "fixed_target", "rate"}]} */
#ifndef REMORA_SAMPLING_RULES_H
#define REMORA_SAMPLING_RULES_H

#include "config/diag.h"

typedef struct sampling_rule_cfg {
    char *host, *method, *path; /* globs: '*' any run, '?' one character */
    unsigned fixed_target;      /* traces per second before the rate applies */
    double rate;                /* 0..1 */
} sampling_rule_cfg_t;

typedef struct sampling_rules_cfg {
    sampling_rule_cfg_t dflt;
    sampling_rule_cfg_t *rules;
    unsigned n;
} sampling_rules_cfg_t;

/* Returns 0, or -1 with every problem in `d`. */
int sampling_rules_load(const char *path, sampling_rules_cfg_t *out, diag_t *d);
void sampling_rules_free(sampling_rules_cfg_t *r);

#endif
