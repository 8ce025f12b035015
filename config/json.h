/* Typed access to cJSON objects with path-qualified diagnostics; internal to config/.
 *
 * Every getter takes the object, the JSON path of that object (for messages) and a key. A
 * missing optional member returns the default silently; a missing required member, a wrong
 * type or a value out of range adds one diagnostic and returns the default, so parsing goes on
 * and every problem is reported. */
#ifndef REMORA_CONFIG_JSON_H
#define REMORA_CONFIG_JSON_H

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>

#include "config/diag.h"

#define JPATH_MAX 256

typedef struct jctx {
    diag_t *d;
    const char *source;
} jctx_t;

enum { J_OPTIONAL = 0, J_REQUIRED = 1 };

#define CONFIG_FILE_MAX (16u << 20) /* no config or manifest legitimately comes near this */

/* The whole file (malloc'd, *len bytes), or NULL with errno set when it cannot be read or
 * exceeds CONFIG_FILE_MAX (EFBIG). */
char *j_read_file(const char *path, size_t *len);

/* Parses json[0..len) as one JSON document, the way every config input is read (the config
 * file, REMORA_CONFIG_JSON, a config URL's body, the sampling rule manifest). Stricter than
 * cJSON alone: anything but whitespace after the value is an error (cJSON stops at the value's
 * end), and so is an object naming a member twice (cJSON keeps both and every lookup finds the
 * first, while jq, Python and Go take the last: an operator's appended override would be
 * dropped without a word). Returns the tree, which the caller deletes, or NULL; either way
 * every problem found is a diagnostic, and a tree with duplicates comes back so that the rest
 * of the document is still checked: callers refuse it when diagnostics were added. Linear in
 * the document but for sorting each object's member names (n log n). */
cJSON *j_parse(jctx_t *j, const char *json, size_t len);

/* out = base.key (or base[i]); `out` may be `base`. */
void jpath(char *out, const char *base, const char *key);
void jpath_index(char *out, const char *base, const char *key, int i);
void jerr(jctx_t *j, const char *base, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* A string of minlen..maxlen characters, strdup'd; NULL when absent or invalid. */
char *j_string(jctx_t *j, const cJSON *obj, const char *base, const char *key, int required,
               size_t minlen, size_t maxlen);
long long j_int(jctx_t *j, const cJSON *obj, const char *base, const char *key, long long lo,
                long long hi, long long dflt, int required);
int j_bool(jctx_t *j, const cJSON *obj, const char *base, const char *key, int dflt);
/* An App Mesh Duration {"unit": "s"|"ms", "value": n} in milliseconds, or DURATION_UNSET. */
uint64_t j_duration(jctx_t *j, const cJSON *obj, const char *base, const char *key, int required);
const cJSON *j_object(jctx_t *j, const cJSON *obj, const char *base, const char *key, int required);
/* An array of min..max elements; NULL when absent or invalid. */
const cJSON *j_array(jctx_t *j, const cJSON *obj, const char *base, const char *key, int required,
                     int min, int max);
/* The index of the member's string value in `names` (NULL-terminated), or dflt. */
int j_enum(jctx_t *j, const cJSON *obj, const char *base, const char *key, const char *const *names,
           int required, int dflt);
/* The same for a value already in hand (an array item) at `path`. */
int j_enum_value(jctx_t *j, const cJSON *v, const char *path, const char *const *names, int dflt);
/* Reports every member of `obj` not in `allowed` (NULL-terminated) as unknown. */
void j_only(jctx_t *j, const cJSON *obj, const char *path, const char *const *allowed);
/* A union: exactly one of `members` present. Returns its index (and *out the value), or -1
 * (with a diagnostic when none is present and `required`, or when several are). */
int j_union(jctx_t *j, const cJSON *obj, const char *path, const char *const *members, int required,
            const cJSON **out);

#endif
