#include "config/sampling_rules.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/json.h"

static void parse_rule(jctx_t *j, const cJSON *o, const char *path, sampling_rule_cfg_t *r,
                       int is_default)
{
    static const char *const fields[] = {"description",  "host", "http_method",  "url_path",
                                         "fixed_target", "rate", "service_name", NULL};
    static const char *const default_fields[] = {"fixed_target", "rate", NULL};
    j_only(j, o, path, is_default ? default_fields : fields);
    r->fixed_target = (unsigned)j_int(j, o, path, "fixed_target", 0, 1000000, 0, J_REQUIRED);
    const cJSON *rate = cJSON_GetObjectItemCaseSensitive(o, "rate");
    if (!cJSON_IsNumber(rate) || rate->valuedouble < 0 || rate->valuedouble > 1)
        jerr(j, path, "rate", "must be a number from 0 to 1");
    else
        r->rate = rate->valuedouble;
    if (is_default)
        return;
    r->host = j_string(j, o, path, "host", J_REQUIRED, 0, 255);
    r->method = j_string(j, o, path, "http_method", J_REQUIRED, 0, 16);
    r->path = j_string(j, o, path, "url_path", J_REQUIRED, 0, 1024);
}

int sampling_rules_load(const char *path, sampling_rules_cfg_t *out, diag_t *d)
{
    memset(out, 0, sizeof *out);
    size_t len;
    char *text = j_read_file(path, &len);
    if (!text) {
        diag_add(d, path, "$", "cannot read the sampling rule manifest");
        return -1;
    }
    size_t before = d->n;
    jctx_t j = {.d = d, .source = path};
    cJSON *root = j_parse(&j, text, len);
    free(text);
    if (!cJSON_IsObject(root)) {
        if (root)
            diag_add(d, path, "$", "not a JSON object");
        cJSON_Delete(root);
        return -1;
    }
    if (j_int(&j, root, "", "version", 2, 2, 0, J_REQUIRED) != 2)
        jerr(&j, "", "version", "only version 2 manifests are supported");
    const cJSON *dflt = j_object(&j, root, "", "default", J_REQUIRED);
    if (dflt)
        parse_rule(&j, dflt, "default", &out->dflt, 1);
    const cJSON *rules = j_array(&j, root, "", "rules", J_OPTIONAL, 0, 1000);
    out->n = (unsigned)cJSON_GetArraySize(rules);
    out->rules = calloc(out->n ? out->n : 1, sizeof *out->rules);
    for (unsigned i = 0; i < out->n && out->rules; i++) {
        char p[JPATH_MAX];
        jpath_index(p, "", "rules", (int)i);
        parse_rule(&j, cJSON_GetArrayItem(rules, (int)i), p, &out->rules[i], 0);
    }
    cJSON_Delete(root);
    if (d->n > before) {
        sampling_rules_free(out);
        return -1;
    }
    return 0;
}

void sampling_rules_free(sampling_rules_cfg_t *r)
{
    for (unsigned i = 0; i < r->n && r->rules; i++) {
        free(r->rules[i].host);
        free(r->rules[i].method);
        free(r->rules[i].path);
    }
    free(r->rules);
    r->rules = NULL;
    r->n = 0;
}
