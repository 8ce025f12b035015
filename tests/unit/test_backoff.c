/* base/backoff.c: the delays every poller waits after failures, and their jitter. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "base/backoff.h"

static void test_doubles_up_to_the_cap(void **state)
{
    (void)state;
    const uint64_t dns[] = {1000, 1000, 2000, 4000, 8000, 10000, 10000}; /* failures 0..6 */
    for (unsigned f = 0; f < 7; f++)
        assert_int_equal(backoff_ms(1000, f, 10000), dns[f]);
    assert_int_equal(backoff_ms(1000, 7, 60000), 60000); /* 64 s capped */
    assert_int_equal(backoff_ms(1000, 6, 60000), 32000);
    assert_int_equal(backoff_ms(1000, 5, 16000), 16000);
    assert_int_equal(backoff_ms(1000, 4000000000u, 16000), 16000); /* no overflow */
}

static void test_jitter_stays_within_a_tenth(void **state)
{
    (void)state;
    uint64_t rng = 1;
    int below = 0, above = 0;
    for (int i = 0; i < 1000; i++) {
        uint64_t ms = jitter_tenth(&rng, 5000);
        assert_true(ms >= 4500 && ms <= 5500);
        below |= ms < 5000;
        above |= ms > 5000;
    }
    assert_true(below && above);
    assert_int_equal(jitter_tenth(&rng, 4), 4); /* too short to move */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_doubles_up_to_the_cap),
        cmocka_unit_test(test_jitter_stays_within_a_tenth),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
