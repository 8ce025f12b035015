#include "config/index.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <uv.h>

/* FNV-1a over the key (folded to lower case when nocase) and key2, with a separator. */
static uint32_t hash_of(const char *key, const char *key2, int nocase)
{
    uint32_t h = 2166136261u;
    for (const unsigned char *p = (const unsigned char *)key; *p; p++)
        h = (h ^ (nocase ? (unsigned char)tolower(*p) : *p)) * 16777619u;
    h = (h ^ 0xffu) * 16777619u;
    for (const unsigned char *p = (const unsigned char *)key2; p && *p; p++)
        h = (h ^ *p) * 16777619u;
    return h;
}

static int same(const name_index_t *ix, const name_slot_t *s, uint32_t h, const char *key,
                const char *key2)
{
    if (s->hash != h || (ix->nocase ? strcasecmp(s->key, key) : strcmp(s->key, key)) != 0)
        return 0;
    return (!s->key2 && !key2) || (s->key2 && key2 && strcmp(s->key2, key2) == 0);
}

int name_index_init(name_index_t *ix, unsigned n, int nocase)
{
    unsigned cap = 16;
    while (cap < 2 * (size_t)n + 2)
        cap *= 2;
    ix->slots = calloc(cap, sizeof *ix->slots);
    ix->mask = cap - 1;
    ix->nocase = nocase;
    ix->used = 0;
    return ix->slots ? 0 : UV_ENOMEM;
}

long name_index_add(name_index_t *ix, const char *key, const char *key2, unsigned pos)
{
    if (!key || !ix->slots)
        return -1;
    uint32_t h = hash_of(key, key2, ix->nocase);
    for (unsigned i = h & ix->mask;; i = (i + 1) & ix->mask) {
        name_slot_t *s = &ix->slots[i];
        if (!s->key) {
            if (2 * (ix->used + 1) > ix->mask) /* full for what it was made: never loops */
                return -1;
            *s = (name_slot_t){key, key2, pos, h};
            ix->used++;
            return -1;
        }
        if (same(ix, s, h, key, key2))
            return s->pos;
    }
}

long name_index_find(const name_index_t *ix, const char *key, const char *key2)
{
    if (!key || !ix->slots)
        return -1;
    uint32_t h = hash_of(key, key2, ix->nocase);
    for (unsigned i = h & ix->mask;; i = (i + 1) & ix->mask) {
        const name_slot_t *s = &ix->slots[i];
        if (!s->key)
            return -1;
        if (same(ix, s, h, key, key2))
            return s->pos;
    }
}

void name_index_free(name_index_t *ix)
{
    free(ix->slots);
    ix->slots = NULL;
}
