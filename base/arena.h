/* A per-request bump allocator: a first block inside the owner, further blocks from malloc,
 * all freed (the first kept) by one arena_reset. */
#ifndef REMORA_ARENA_H
#define REMORA_ARENA_H

#include <stddef.h>

#define ARENA_FIRST 512

typedef struct arena_block {
    struct arena_block *next;
    char data[];
} arena_block_t;

typedef struct arena {
    char *cur, *end;
    arena_block_t *blocks; /* beyond the first */
    char first[ARENA_FIRST];
} arena_t;

void arena_init(arena_t *a);
/* n bytes aligned for any type, or NULL when memory is exhausted. */
void *arena_alloc(arena_t *a, size_t n);
/* A NUL-terminated copy. */
char *arena_strndup(arena_t *a, const char *s, size_t n);
void arena_reset(arena_t *a);

#endif
