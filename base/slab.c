#include "base/slab.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#if defined(__SANITIZE_ADDRESS__)
#define SLAB_MALLOC 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SLAB_MALLOC 1
#endif
#endif

/* At the start of each page, which is SLAB_PAGE-aligned so that an object finds its page. */
struct slab_page {
    slab_page_t *prev, *next; /* in the slab's pages with room, while it has some */
    void *free;               /* freed objects, linked through their first word */
    unsigned used;            /* objects handed out */
    unsigned carved;          /* objects ever carved from the page (the rest is untouched) */
    unsigned listed : 1;
};

#define FIRST ((sizeof(slab_page_t) + 15) & ~(size_t)15)

void slab_init(slab_t *s, size_t size)
{
    memset(s, 0, sizeof *s);
    s->size = (size + 7) & ~(size_t)7;
}

#ifdef SLAB_MALLOC

void *slab_alloc(slab_t *s)
{
    void *p = calloc(1, s->size);
    if (p)
        s->live++;
    return p;
}

void *slab_alloc_raw(slab_t *s)
{
    void *p = malloc(s->size);
    if (p)
        s->live++;
    return p;
}

void slab_free(slab_t *s, void *p)
{
    if (!p)
        return;
    s->live--;
    free(p);
}

void slab_destroy(slab_t *s)
{
    s->size = 0;
}

#else

static unsigned per_page(const slab_t *s)
{
    return (unsigned)((SLAB_PAGE - FIRST) / s->size);
}

/* SLAB_PAGE bytes at a SLAB_PAGE boundary: map twice that, unmap what is around. */
static slab_page_t *map_page(void)
{
    char *m = mmap(NULL, 2 * SLAB_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED)
        return NULL;
    uintptr_t start = ((uintptr_t)m + SLAB_PAGE - 1) & ~(uintptr_t)(SLAB_PAGE - 1);
    size_t head = start - (uintptr_t)m;
    if (head)
        munmap(m, head);
    munmap((char *)start + SLAB_PAGE, SLAB_PAGE - head);
    slab_page_t *pg = (slab_page_t *)start; /* fresh anonymous memory: already zero */
    return pg;
}

static void link_page(slab_t *s, slab_page_t *pg)
{
    pg->prev = NULL;
    pg->next = s->pages;
    if (s->pages)
        s->pages->prev = pg;
    s->pages = pg;
    pg->listed = 1;
}

static void unlink_page(slab_t *s, slab_page_t *pg)
{
    if (pg->prev)
        pg->prev->next = pg->next;
    else
        s->pages = pg->next;
    if (pg->next)
        pg->next->prev = pg->prev;
    pg->prev = pg->next = NULL;
    pg->listed = 0;
}

void *slab_alloc_raw(slab_t *s)
{
    slab_page_t *pg = s->pages;
    if (!pg) {
        pg = s->spare ? s->spare : map_page();
        if (!pg)
            return NULL;
        s->spare = NULL;
        link_page(s, pg);
    }
    void *p;
    if (pg->free) {
        p = pg->free;
        memcpy(&pg->free, p, sizeof pg->free);
    } else {
        p = (char *)pg + FIRST + (size_t)pg->carved++ * s->size;
    }
    if (++pg->used == per_page(s))
        unlink_page(s, pg); /* full */
    s->live++;
    return p;
}

void *slab_alloc(slab_t *s)
{
    void *p = slab_alloc_raw(s);
    if (p)
        memset(p, 0, s->size);
    return p;
}

void slab_free(slab_t *s, void *p)
{
    if (!p)
        return;
    slab_page_t *pg = (slab_page_t *)((uintptr_t)p & ~(uintptr_t)(SLAB_PAGE - 1));
    memcpy(p, &pg->free, sizeof pg->free);
    pg->free = p;
    s->live--;
    if (--pg->used > 0) {
        if (!pg->listed)
            link_page(s, pg); /* was full */
        return;
    }
    if (pg->listed)
        unlink_page(s, pg);
    if (s->spare) {
        munmap(pg, SLAB_PAGE);
        return;
    }
    pg->free = NULL; /* kept empty: carved afresh */
    pg->carved = 0;
    s->spare = pg;
}

void slab_destroy(slab_t *s)
{
    while (s->pages) {
        slab_page_t *pg = s->pages;
        unlink_page(s, pg);
        munmap(pg, SLAB_PAGE);
    }
    if (s->spare)
        munmap(s->spare, SLAB_PAGE);
    s->spare = NULL;
    s->size = 0;
}

#endif
