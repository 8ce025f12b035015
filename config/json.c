#include "config/json.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"

char *j_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 64 * 1024, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap)
            break;
        char *more = cap < CONFIG_FILE_MAX ? realloc(buf, cap * 2) : NULL;
        if (!more) {
            errno = cap < CONFIG_FILE_MAX ? ENOMEM : EFBIG;
            free(buf);
            buf = NULL;
            break;
        }
        buf = more;
        cap *= 2;
    }
    if (buf && ferror(f)) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    *len = n;
    return buf;
}

void jpath(char *out, const char *base, const char *key)
{
    char tmp[JPATH_MAX];
    snprintf(tmp, sizeof tmp, "%s%s%s", base, *base ? "." : "", key);
    memcpy(out, tmp, sizeof tmp);
}

void jpath_index(char *out, const char *base, const char *key, int i)
{
    char tmp[JPATH_MAX];
    snprintf(tmp, sizeof tmp, "%s%s%s[%d]", base, *base && *key ? "." : "", key, i);
    memcpy(out, tmp, sizeof tmp);
}

void jerr(jctx_t *j, const char *base, const char *key, const char *fmt, ...)
{
    char path[JPATH_MAX], msg[400];
    if (key)
        jpath(path, base, key);
    else
        snprintf(path, sizeof path, "%s", *base ? base : "$");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    diag_add(j->d, j->source, path, "%s", msg);
}

/* Where a value sits, as a chain of frames back to the root on the scan's stack: a path is
 * written out only when a duplicate is reported, not kept in a buffer for each of cJSON's up to
 * CJSON_NESTING_LIMIT levels. */
typedef struct where {
    const struct where *up;
    const char *key; /* the member's name, or NULL for element `index` of an array */
    int index;
} where_t;

typedef struct dupscan {
    jctx_t *j;
    const char **names; /* scratch for one object's member names, grown to the widest object */
    size_t cap;
    int nomem;
} dupscan_t;

static void where_path(char *out, const where_t *w)
{
    if (!w->up) {
        out[0] = '\0';
        return;
    }
    where_path(out, w->up);
    if (w->key)
        jpath(out, out, w->key);
    else
        jpath_index(out, out, "", w->index);
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static void report_dup(dupscan_t *s, const where_t *w, const char *name, size_t times)
{
    char path[JPATH_MAX];
    where_path(path, w);
    jerr(s->j, path, name, "duplicate key \"%s\" (%zu times); keep only one", name, times);
}

/* Reports each name that `obj` holds more than once, once. Sorting the names keeps an object of
 * 100,000 members at n log n, where comparing each with each would be quadratic; the objects of
 * a mesh spec have a handful of members, and those are compared directly (qsort's set-up for
 * each of the 80,000 small objects of a 10,000-route document cost more than comparing). */
static void object_dups(dupscan_t *s, const cJSON *obj, const where_t *w)
{
    enum { SMALL = 8 };
    size_t n = 0;
    for (const cJSON *m = obj->child; m; m = m->next)
        n++;
    if (n < 2 || s->nomem)
        return;
    if (n <= SMALL) {
        for (const cJSON *m = obj->child; m; m = m->next) {
            size_t times = 1;
            int seen = 0;
            for (const cJSON *e = obj->child; e != m && !seen; e = e->next)
                seen = strcmp(e->string, m->string) == 0;
            for (const cJSON *l = m->next; l && !seen; l = l->next)
                times += strcmp(l->string, m->string) == 0;
            if (!seen && times > 1)
                report_dup(s, w, m->string, times);
        }
        return;
    }
    if (n > s->cap) {
        const char **more = realloc(s->names, n * sizeof *more);
        if (!more) {
            s->nomem = 1;
            jerr(s->j, "", NULL, "out of memory checking for duplicate keys");
            return;
        }
        s->names = more;
        s->cap = n;
    }
    n = 0;
    for (const cJSON *m = obj->child; m; m = m->next)
        s->names[n++] = m->string;
    qsort(s->names, n, sizeof *s->names, by_name);
    for (size_t i = 0, k; i < n; i = k) {
        for (k = i + 1; k < n && strcmp(s->names[k], s->names[i]) == 0; k++)
            ;
        if (k - i > 1)
            report_dup(s, w, s->names[i], k - i);
    }
}

/* Recursion depth is bounded by cJSON's nesting limit; a frame is a where_t and a few words. */
static void scan_dups(dupscan_t *s, const cJSON *v, const where_t *w)
{
    if (cJSON_IsObject(v))
        object_dups(s, v, w);
    int i = 0;
    for (const cJSON *c = v->child; c; c = c->next, i++)
        if (c->child) { /* only a non-empty object or array holds anything to check */
            where_t at = {w, cJSON_IsObject(v) ? c->string : NULL, i};
            scan_dups(s, c, &at);
        }
}

cJSON *j_parse(jctx_t *j, const char *json, size_t len)
{
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json, len, &end, 0);
    size_t off = end && end >= json && end <= json + len ? (size_t)(end - json) : len;
    if (!root) {
        if (end && end >= json && end <= json + len)
            jerr(j, "", NULL, "not valid JSON (near byte %zu)", off);
        else
            jerr(j, "", NULL, "not valid JSON");
        return NULL;
    }
    /* RFC 8259 section 2: insignificant whitespace is space, tab, LF and CR, and nothing else. */
    while (off < len &&
           (json[off] == ' ' || json[off] == '\t' || json[off] == '\n' || json[off] == '\r'))
        off++;
    if (off < len) {
        size_t line = 1;
        for (size_t i = 0; i < off; i++)
            line += json[i] == '\n';
        jerr(j, "", NULL,
             "unexpected content after the JSON document at byte %zu (line %zu); a config is "
             "one document",
             off, line);
        cJSON_Delete(root);
        return NULL;
    }
    dupscan_t s = {.j = j};
    where_t top = {0};
    if (root->child)
        scan_dups(&s, root, &top);
    free(s.names);
    return root;
}

static const cJSON *member(jctx_t *j, const cJSON *obj, const char *base, const char *key,
                           int required)
{
    const cJSON *v = cJSON_IsObject(obj) ? cJSON_GetObjectItemCaseSensitive(obj, key) : NULL;
    if (!v && required)
        jerr(j, base, key, "is required");
    return v;
}

char *j_string(jctx_t *j, const cJSON *obj, const char *base, const char *key, int required,
               size_t minlen, size_t maxlen)
{
    const cJSON *v = member(j, obj, base, key, required);
    if (!v)
        return NULL;
    if (!cJSON_IsString(v)) {
        jerr(j, base, key, "must be a string");
        return NULL;
    }
    size_t n = strlen(v->valuestring);
    if (n < minlen || n > maxlen) {
        jerr(j, base, key, "must be %zu..%zu characters, got %zu", minlen, maxlen, n);
        return NULL;
    }
    return strdup(v->valuestring);
}

long long j_int(jctx_t *j, const cJSON *obj, const char *base, const char *key, long long lo,
                long long hi, long long dflt, int required)
{
    const cJSON *v = member(j, obj, base, key, required);
    if (!v)
        return dflt;
    double d = cJSON_IsNumber(v) ? v->valuedouble : 0.5;
    int huge = d > 9e18 || d < -9e18; /* converting it to an integer would be undefined */
    if (huge) {
        jerr(j, base, key, "must be %lld..%lld", lo, hi);
        return dflt;
    }
    if (d != (double)(long long)d) {
        jerr(j, base, key, "must be an integer");
        return dflt;
    }
    long long n = (long long)d;
    if (n < lo || n > hi) {
        jerr(j, base, key, "must be %lld..%lld, got %lld", lo, hi, n);
        return dflt;
    }
    return n;
}

int j_bool(jctx_t *j, const cJSON *obj, const char *base, const char *key, int dflt)
{
    const cJSON *v = member(j, obj, base, key, 0);
    if (!v)
        return dflt;
    if (!cJSON_IsBool(v)) {
        jerr(j, base, key, "must be true or false");
        return dflt;
    }
    return cJSON_IsTrue(v);
}

uint64_t j_duration(jctx_t *j, const cJSON *obj, const char *base, const char *key, int required)
{
    static const char *const units[] = {"s", "ms", NULL};
    static const char *const fields[] = {"unit", "value", NULL};
    const cJSON *v = j_object(j, obj, base, key, required);
    if (!v)
        return DURATION_UNSET;
    char path[JPATH_MAX];
    jpath(path, base, key);
    j_only(j, v, path, fields);
    int unit = j_enum(j, v, path, "unit", units, J_REQUIRED, -1);
    long long value = j_int(j, v, path, "value", 0, INT64_MAX / 1000, -1, J_REQUIRED);
    if (unit < 0 || value < 0)
        return DURATION_UNSET;
    return unit == 0 ? (uint64_t)value * 1000 : (uint64_t)value;
}

const cJSON *j_object(jctx_t *j, const cJSON *obj, const char *base, const char *key, int required)
{
    const cJSON *v = member(j, obj, base, key, required);
    if (v && !cJSON_IsObject(v)) {
        jerr(j, base, key, "must be an object");
        return NULL;
    }
    return v;
}

const cJSON *j_array(jctx_t *j, const cJSON *obj, const char *base, const char *key, int required,
                     int min, int max)
{
    const cJSON *v = member(j, obj, base, key, required);
    if (!v)
        return NULL;
    if (!cJSON_IsArray(v)) {
        jerr(j, base, key, "must be an array");
        return NULL;
    }
    int n = cJSON_GetArraySize(v);
    if (n < min || n > max) {
        jerr(j, base, key, "must have %d..%d items, got %d", min, max, n);
        return NULL;
    }
    return v;
}

int j_enum_value(jctx_t *j, const cJSON *v, const char *path, const char *const *names, int dflt)
{
    if (cJSON_IsString(v))
        for (int i = 0; names[i]; i++)
            if (strcmp(v->valuestring, names[i]) == 0)
                return i;
    char allowed[200] = "";
    for (int i = 0; names[i]; i++)
        snprintf(allowed + strlen(allowed), sizeof allowed - strlen(allowed), "%s%s", i ? ", " : "",
                 names[i]);
    if (cJSON_IsString(v))
        jerr(j, path, NULL, "must be one of %s, got \"%s\"", allowed, v->valuestring);
    else
        jerr(j, path, NULL, "must be one of %s", allowed);
    return dflt;
}

int j_enum(jctx_t *j, const cJSON *obj, const char *base, const char *key, const char *const *names,
           int required, int dflt)
{
    const cJSON *v = member(j, obj, base, key, required);
    if (!v)
        return dflt;
    char path[JPATH_MAX];
    jpath(path, base, key);
    return j_enum_value(j, v, path, names, dflt);
}

void j_only(jctx_t *j, const cJSON *obj, const char *path, const char *const *allowed)
{
    if (!cJSON_IsObject(obj))
        return;
    for (const cJSON *m = obj->child; m; m = m->next) {
        int known = 0;
        for (int i = 0; allowed[i] && !known; i++)
            known = strcmp(m->string, allowed[i]) == 0;
        if (!known)
            jerr(j, path, m->string, "unknown field");
    }
}

int j_union(jctx_t *j, const cJSON *obj, const char *path, const char *const *members, int required,
            const cJSON **out)
{
    int found = -1, count = 0;
    char names[200] = "";
    for (int i = 0; members[i]; i++) {
        snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s", i ? ", " : "",
                 members[i]);
        const cJSON *v =
            cJSON_IsObject(obj) ? cJSON_GetObjectItemCaseSensitive(obj, members[i]) : NULL;
        if (v) {
            count++;
            if (found < 0) {
                found = i;
                *out = v;
            }
        }
    }
    if (count > 1 || (count == 0 && required)) {
        jerr(j, path, NULL, "must have exactly one of %s", names);
        return -1;
    }
    return found;
}
