/* proxy/h1.c: header collection across split reads, caps, hop-by-hop rules. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "base/err.h"
#include "proxy/h1.h"

static void add(h1_head_t *h, const char *name, const char *value)
{
    assert_int_equal(h1_append_name(h, name, strlen(name)), 0);
    if (*value)
        assert_int_equal(h1_append_value(h, value, strlen(value)), 0);
    h1_field_done(h);
}

static void test_pieces_are_joined(void **state)
{
    (void)state;
    h1_head_t h;
    h1_head_init(&h);
    assert_int_equal(h1_append_start(&h, "/pa", 3), 0);
    assert_int_equal(h1_append_start(&h, "th", 2), 0);
    assert_int_equal(h1_append_name(&h, "Con", 3), 0);
    assert_int_equal(h1_append_name(&h, "tent-Type", 9), 0);
    assert_int_equal(h1_append_value(&h, "text/", 5), 0);
    assert_int_equal(h1_append_value(&h, "plain", 5), 0);
    h1_field_done(&h);
    add(&h, "X-Empty", "");
    add(&h, "Host", "a");
    assert_int_equal(h.nfields, 3);
    assert_string_equal(h1_start(&h), "/path");
    assert_int_equal(h.start_len, 5);
    assert_string_equal(h1_name(&h, 0), "Content-Type");
    assert_string_equal(h1_value(&h, 0), "text/plain");
    assert_string_equal(h1_name(&h, 1), "X-Empty");
    assert_string_equal(h1_value(&h, 1), "");
    assert_int_equal(h.fields[1].value_len, 0);
    assert_string_equal(h1_value(&h, 2), "a");
    assert_int_equal(h1_find(&h, "content-type"), 0);
    assert_int_equal(h1_find(&h, "HOST"), 2);
    assert_int_equal(h1_find(&h, "missing"), -1);
    h1_head_free(&h);
}

static void test_field_count_cap(void **state)
{
    (void)state;
    h1_head_t h;
    h1_head_init(&h);
    for (int i = 0; i < H1_MAX_FIELDS; i++)
        add(&h, "X", "v");
    assert_int_equal(h1_append_name(&h, "Y", 1), ERR_TOO_LARGE);
    assert_int_equal(h.nfields, H1_MAX_FIELDS);
    h1_head_free(&h);
}

static void test_byte_cap_counts_wire_size(void **state)
{
    (void)state;
    static char big[H1_MAX_HEAD_BYTES];
    memset(big, 'a', sizeof big);
    h1_head_t h;
    h1_head_init(&h);
    assert_int_equal(h1_append_name(&h, "X", 1), 0);
    /* name (1) + ": " + CRLF (4) + value must stay within the cap */
    assert_int_equal(h1_append_value(&h, big, H1_MAX_HEAD_BYTES - 5), 0);
    assert_int_equal(h1_append_value(&h, "b", 1), ERR_TOO_LARGE);
    h1_head_free(&h);
}

static void test_hop_by_hop(void **state)
{
    (void)state;
    h1_head_t h;
    h1_head_init(&h);
    add(&h, "Connection", "keep-alive, X-Private , Upgrade");
    add(&h, "X-Private", "1");
    add(&h, "Keep-Alive", "timeout=5");
    add(&h, "Transfer-Encoding", "chunked");
    add(&h, "X-Public", "2");
    add(&h, "Content-Length", "3");
    h1_classify(&h);
    int expect[] = {1, 1, 1, 1, 0, 0};
    for (unsigned i = 0; i < h.nfields; i++)
        assert_int_equal(h1_is_hop_by_hop(&h, i), expect[i]);
    h1_head_free(&h);
}

static void test_list_has(void **state)
{
    (void)state;
    const char *v = " gzip ,100-continue,, x";
    assert_true(h1_list_has(v, strlen(v), "100-CONTINUE", 12));
    assert_true(h1_list_has(v, strlen(v), "x", 1));
    assert_false(h1_list_has(v, strlen(v), "100", 3));
    size_t n = 5;
    assert_memory_equal(h1_trim("  ab ", &n), "ab", 2);
    assert_int_equal(n, 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pieces_are_joined), cmocka_unit_test(test_field_count_cap),
        cmocka_unit_test(test_byte_cap_counts_wire_size), cmocka_unit_test(test_hop_by_hop),
        cmocka_unit_test(test_list_has),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
