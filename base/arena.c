#include "base/arena.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define ALIGN 16

void arena_init(arena_t *a)
{
    a->blocks = NULL;
    a->cur = a->first;
    a->end = a->first + sizeof a->first;
}

void *arena_alloc(arena_t *a, size_t n)
{
    uintptr_t at = ((uintptr_t)a->cur + ALIGN - 1) & ~(uintptr_t)(ALIGN - 1);
    if (at + n <= (uintptr_t)a->end) {
        a->cur = (char *)(at + n);
        return (void *)at;
    }
    size_t size = n + ALIGN > 4096 ? n + ALIGN : 4096;
    arena_block_t *b = malloc(sizeof *b + size);
    if (!b)
        return NULL;
    b->next = a->blocks;
    a->blocks = b;
    at = ((uintptr_t)b->data + ALIGN - 1) & ~(uintptr_t)(ALIGN - 1);
    a->cur = (char *)(at + n);
    a->end = b->data + size;
    return (void *)at;
}

char *arena_strndup(arena_t *a, const char *s, size_t n)
{
    char *p = arena_alloc(a, n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

void arena_reset(arena_t *a)
{
    while (a->blocks) {
        arena_block_t *b = a->blocks;
        a->blocks = b->next;
        free(b);
    }
    a->cur = a->first;
    a->end = a->first + sizeof a->first;
}
