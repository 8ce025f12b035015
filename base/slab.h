/* Fixed-size objects carved from 64 KiB pages of their own (mmap), for what every open
 * connection carries (conn_t, the HTTP/1 server codec): no malloc header per object, and no
 * long-lived connection object in between the short-lived allocations of a burst, whose heap
 * pages can then go back to the system once it is over. A page whose last object is freed is
 * unmapped (one empty page is kept). One slab per loop and object size, never shared between
 * threads.
 *
 * Objects are 8-byte aligned (enough for pointers and 64-bit integers, all these hold).
 *
 * Under AddressSanitizer a slab is calloc and free, so that a use after free stays visible. */
#ifndef REMORA_SLAB_H
#define REMORA_SLAB_H

#include <stddef.h>

#define SLAB_PAGE (64 * 1024)

typedef struct slab_page slab_page_t;

typedef struct slab {
    size_t size;        /* object size (a multiple of 8); 0 until slab_init */
    slab_page_t *pages; /* pages with room, most recently used first */
    slab_page_t *spare; /* an empty page kept for the next object */
    size_t live;        /* objects handed out */
} slab_t;

void slab_init(slab_t *s, size_t size);
/* A zeroed object, or NULL when memory is exhausted. */
void *slab_alloc(slab_t *s);
/* The same, its contents undefined (for objects the caller initializes itself). */
void *slab_alloc_raw(slab_t *s);
/* p came from slab_alloc(s). */
void slab_free(slab_t *s, void *p);
/* Unmap what is left; every object must have been freed. */
void slab_destroy(slab_t *s);

#endif
