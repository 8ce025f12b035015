/* proxy/conn.c over a transport of the test's own (the seam TLS will use): the watermarks count
 * the buffer memory queued output pins, not its payload; pieces of 1 KiB or less are copied so
 * no read buffer is pinned for them; a drain owed after a write that went out at once is told
 * within the same loop pass (the loop must never block with it pending). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "proxy/conn.h"

/* The transport: every write goes out at once (as uv_try_write does on a fast socket), or is
 * held until the test completes it. */
static int hold_writes;
static wreq_t *held;
static size_t written;

static int t_read_start(conn_t *c)
{
    (void)c;
    return 0;
}
static void t_read_stop(conn_t *c)
{
    (void)c;
}
static int t_write(conn_t *c, wreq_t *r)
{
    (void)c;
    for (unsigned i = 0; i < r->n; i++)
        written += r->iov[i].len;
    if (!hold_writes)
        return 1;
    held = r;
    return 0;
}
static int t_shutdown(conn_t *c)
{
    (void)c;
    return 0;
}
static const transport_t test_transport = {.name = "test",
                                           .read_start = t_read_start,
                                           .read_stop = t_read_stop,
                                           .write = t_write,
                                           .shutdown = t_shutdown};

static int drains;
static void on_drain(void *owner)
{
    (void)owner;
    drains++;
}
static const conn_events_t events = {.on_drain = on_drain};

static conn_t *test_conn(loop_t *l)
{
    conn_t *c = conn_new(l);
    assert_non_null(c);
    c->tp = &test_transport;
    c->connected = 1;
    conn_set_owner(c, &events, NULL);
    return c;
}

static void finish(loop_t *l, conn_t *c)
{
    conn_close(c);
    uv_run(&l->uv, UV_RUN_DEFAULT);
    assert_int_equal(l->bufs.live, 0);
    loop_free(l);
}

static void test_pinned_memory_not_payload(void **state)
{
    (void)state;
    loop_t l;
    assert_int_equal(loop_init(&l, NULL), 0);
    conn_t *c = test_conn(&l);
    hold_writes = 1;
    /* Four 1,100-byte pieces of four read buffers: 4.3 KB of payload pins 256 KiB. */
    for (int i = 0; i < 4; i++) {
        buf_t *b = buf_new(&l.bufs, BUF_READ_SIZE);
        memset(b->data, 'x', 1100);
        conn_write(c, b, b->data, 1100);
        buf_unref(b);
    }
    assert_int_equal(conn_pinned(c), 4 * BUF_READ_SIZE);
    /* The same buffer referenced twice in a row is counted once. */
    buf_t *b = buf_new(&l.bufs, BUF_READ_SIZE);
    conn_write(c, b, b->data, 2000);
    conn_write(c, b, b->data + 2000, 2000);
    /* A small piece is copied: it pins only itself, and its buffer is free at once. */
    conn_write(c, b, b->data + 4000, 100);
    buf_unref(b);
    assert_int_equal(conn_pinned(c), 5 * BUF_READ_SIZE + 100);
    assert_true(conn_over_high_water(c));
    loop_pass(&l);
    assert_non_null(held);
    assert_int_equal(written, 4 * 1100 + 4000 + 100);
    assert_int_equal(drains, 0);
    conn_on_written(held, 0); /* the kernel took it all */
    held = NULL;
    assert_int_equal(conn_pinned(c), 0);
    assert_int_equal(drains, 1);
    finish(&l, c);
}

static void test_drain_after_a_write_that_went_out_at_once(void **state)
{
    (void)state;
    loop_t l;
    assert_int_equal(loop_init(&l, NULL), 0);
    conn_t *c = test_conn(&l);
    hold_writes = 0;
    drains = 0;
    for (int i = 0; i < 5; i++) {
        buf_t *b = buf_new(&l.bufs, BUF_READ_SIZE);
        conn_write(c, b, b->data, 60000);
        buf_unref(b);
    }
    assert_true(conn_over_high_water(c)); /* the owner stops its source */
    /* One pass flushes, the write goes out whole, and the drain owed is told in that same
     * pass: nothing else would wake the loop to tell it. */
    loop_pass(&l);
    assert_int_equal(drains, 1);
    assert_int_equal(conn_pinned(c), 0);
    finish(&l, c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pinned_memory_not_payload),
        cmocka_unit_test(test_drain_after_a_write_that_went_out_at_once),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
