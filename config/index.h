/* A name index, internal to config/: open addressing over the positions of resources, keyed by
 * one name or a pair (a route is named within its router). The keys are not copied: they point
 * at strings the config owns. Lookups cost the same for 10 resources or 10,000, which is what
 * keeps parsing and validating a whole mesh linear. */
#ifndef REMORA_CONFIG_INDEX_H
#define REMORA_CONFIG_INDEX_H

#include <stddef.h>
#include <stdint.h>

typedef struct name_slot {
    const char *key, *key2; /* key NULL: empty */
    unsigned pos;
    uint32_t hash;
} name_slot_t;

typedef struct name_index {
    name_slot_t *slots;
    unsigned mask; /* capacity - 1; capacity a power of two, at least twice the entries */
    unsigned used;
    int nocase; /* `key` compared without ASCII case (DNS names); `key2` always with */
} name_index_t;

/* Room for `n` entries. Returns 0 or UV_ENOMEM. */
int name_index_init(name_index_t *ix, unsigned n, int nocase);
/* Adds `pos` under (key, key2) (key2 may be NULL) unless that key is there already: returns
 * the position already under it, or -1 when added. A NULL key, or one past the `n` entries
 * the index was made for, is not added (-1). */
long name_index_add(name_index_t *ix, const char *key, const char *key2, unsigned pos);
/* The position under (key, key2), or -1. */
long name_index_find(const name_index_t *ix, const char *key, const char *key2);
void name_index_free(name_index_t *ix);

#endif
