/* base/slab.c: objects carved from pages of their own, zeroed, reused, and pages given back
 * once empty (one kept); under AddressSanitizer the slab is calloc/free, and the same
 * contracts hold where they can be seen from outside. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "base/slab.h"

#define N 5000 /* objects of 352 bytes: 27 pages */

static void *objs[N];

static void test_objects_are_zeroed_aligned_and_distinct(void **state)
{
    (void)state;
    slab_t s;
    slab_init(&s, 346);
    assert_int_equal(s.size, 352);
    for (int i = 0; i < N; i++) {
        objs[i] = slab_alloc(&s);
        assert_non_null(objs[i]);
        assert_int_equal((uintptr_t)objs[i] % 8, 0);
        const unsigned char *p = objs[i];
        for (size_t k = 0; k < s.size; k++)
            assert_int_equal(p[k], 0);
        memset(objs[i], 0xa5, s.size); /* overlapping objects would clobber each other */
        memcpy(objs[i], &i, sizeof i);
    }
    for (int i = 0; i < N; i++) {
        int v;
        memcpy(&v, objs[i], sizeof v);
        assert_int_equal(v, i);
    }
    assert_int_equal(s.live, N);
    for (int i = 0; i < N; i++)
        slab_free(&s, objs[i]);
    assert_int_equal(s.live, 0);
    slab_destroy(&s);
}

static void test_freed_objects_are_reused_zeroed(void **state)
{
    (void)state;
    slab_t s;
    slab_init(&s, 216);
    for (int i = 0; i < N; i++)
        objs[i] = slab_alloc(&s);
    /* Every other one freed, in an order unlike the allocation's, then taken again. */
    for (int i = N - 2; i >= 0; i -= 2) {
        slab_free(&s, objs[i]);
        objs[i] = NULL;
    }
    assert_int_equal(s.live, N / 2);
    for (int i = 0; i < N; i += 2) {
        objs[i] = slab_alloc(&s);
        assert_non_null(objs[i]);
        const unsigned char *p = objs[i];
        for (size_t k = 0; k < s.size; k++)
            assert_int_equal(p[k], 0);
    }
    for (int i = 0; i < N; i++)
        for (int j = i + 1; j < i + 4 && j < N; j++)
            assert_true(objs[i] != objs[j]);
    for (int i = 0; i < N; i++)
        slab_free(&s, objs[i]);
    assert_int_equal(s.live, 0);
    slab_free(&s, NULL); /* as free(NULL) */
    slab_destroy(&s);
}

#if !defined(__SANITIZE_ADDRESS__)
/* Pages: once every object of a burst is freed, at most the one spare page is kept. */
static void test_empty_pages_go_back(void **state)
{
    (void)state;
    slab_t s;
    slab_init(&s, 352);
    for (int i = 0; i < N; i++)
        objs[i] = slab_alloc(&s);
    for (int i = 0; i < N; i++)
        slab_free(&s, objs[i]);
    assert_null(s.pages);
    assert_non_null(s.spare);
    void *again = slab_alloc(&s); /* from the spare page */
    assert_null(s.spare);
    assert_non_null(s.pages);
    slab_free(&s, again);
    slab_destroy(&s);
    assert_null(s.pages);
    assert_null(s.spare);
}
#endif

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_objects_are_zeroed_aligned_and_distinct),
        cmocka_unit_test(test_freed_objects_are_reused_zeroed),
#if !defined(__SANITIZE_ADDRESS__)
        cmocka_unit_test(test_empty_pages_go_back),
#endif
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
