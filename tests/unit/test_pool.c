/* proxy/pool.c over a real loop and real sockets: failures reach the stream's owner on a later
 * loop pass, never from inside the call (a connect refused, and one that fails at once); an
 * entry whose last connection is gone is freed; admission under the limits a request carries
 * answers later too, in order, and overflow is refused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <cmocka.h>
#include <sys/socket.h>
#include <unistd.h>

#include "base/err.h"
#include "proxy/pool.h"

typedef struct probe {
    int errors, last_error;
} probe_t;

static void on_head(void *ctx, head_t *h, unsigned msg)
{
    (void)ctx, (void)h, (void)msg;
    fail_msg("no response can come from a failed connect");
}
static void on_data(void *ctx, buf_t *b, const char *p, size_t n)
{
    (void)ctx, (void)b, (void)p, (void)n;
}
static void on_end(void *ctx, head_t *t)
{
    (void)ctx, (void)t;
}
static void on_error(void *ctx, int err)
{
    probe_t *p = ctx;
    p->errors++;
    p->last_error = err;
}
static void on_drain(void *ctx)
{
    (void)ctx;
}

static const stream_events_t events = {on_head, on_data, on_end, on_error, on_drain};

/* A loopback port nobody listens on: bound and closed again. */
static uint16_t closed_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

static endpoint_t endpoint(const char *ip, uint16_t port)
{
    endpoint_t e;
    struct sockaddr_in in = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, ip, &in.sin_addr);
    endpoint_set(&e, (struct sockaddr *)&in);
    return e;
}

/* One loop iteration as a worker runs it: deferred work, I/O, close callbacks. */
static void turn(loop_t *l)
{
    loop_pass(l);
    uv_run(&l->uv, UV_RUN_NOWAIT);
    loop_pass(l);
}

static void run_until(loop_t *l, const int *flag)
{
    for (int i = 0; i < 2000 && !*flag; i++) {
        loop_pass(l);
        uv_run(&l->uv, UV_RUN_ONCE);
    }
    assert_true(*flag);
}

static void connect_fails_later_and_the_entry_is_freed(const char *ip, uint16_t port)
{
    loop_t l;
    assert_int_equal(loop_init(&l, NULL), 0);
    pool_table_t t;
    pool_table_init(&t, &l);
    cluster_t *c = cluster_new("c", NULL, port);
    endpoint_t ep = endpoint(ip, port);
    probe_t p = {0};
    client_stream_t *s = pool_stream(&t, c, &ep, NULL, 0, 0, &events, &p);
    assert_non_null(s);
    assert_int_equal(p.errors, 0); /* never from inside the call */
    assert_int_equal(t.npools, 1);
    run_until(&l, &p.errors);
    assert_int_equal(p.errors, 1);
    assert_true(p.last_error < 0);
    s->ops->release(s, 0);
    for (int i = 0; i < 10; i++)
        turn(&l);
    assert_int_equal(t.npools, 0); /* the entry went with its last connection */
    assert_int_equal(stat_get(&c->stats.upstream_cx_active), 0);
    assert_int_equal(stat_get(&c->stats.upstream_cx_connect_fail), 1);
    pool_table_close(&t);
    head_pool_free(&l);
    uv_run(&l.uv, UV_RUN_DEFAULT);
    loop_free(&l);
    cluster_free(c);
}

static void test_refused_connect(void **state)
{
    (void)state;
    connect_fails_later_and_the_entry_is_freed("127.0.0.1", closed_port());
}

static void test_connect_failing_at_once(void **state)
{
    (void)state;
    /* A TCP connect to a multicast address fails inside connect() itself (ENETUNREACH or
     * EINVAL): the case that crashed the landed engine's retry. */
    connect_fails_later_and_the_entry_is_freed("224.0.0.1", 80);
}

typedef struct waiter {
    pool_wait_t w;
    int answers, result;
} waiter_t;

static void on_admitted(pool_wait_t *w, int result)
{
    waiter_t *x = (waiter_t *)w;
    x->answers++;
    x->result = result;
}

static void test_admission(void **state)
{
    (void)state;
    loop_t l;
    assert_int_equal(loop_init(&l, NULL), 0);
    pool_table_t t;
    pool_table_init(&t, &l);
    cluster_t *c = cluster_new("c", NULL, 80);
    waiter_t a = {.w = {.cluster = c, .max_requests = 1, .max_pending = 1, .cb = on_admitted}};
    waiter_t b = a, d = a;
    assert_int_equal(pool_admit(&t, &a.w), 1); /* a slot at once */
    assert_int_equal(pool_admit(&t, &b.w), 0); /* queued */
    assert_int_equal(pool_admit(&t, &d.w), 0); /* overflow: refused, but later */
    assert_int_equal(d.answers, 0);
    turn(&l);
    assert_int_equal(d.answers, 1);
    assert_int_equal(d.result, POOL_FULL);
    assert_int_equal(b.answers, 0);
    pool_done(&t, &a.w); /* a ends: b may go */
    pool_admit_waiting(&t);
    assert_int_equal(b.answers, 0);
    turn(&l);
    assert_int_equal(b.answers, 1);
    assert_int_equal(b.result, POOL_GO);
    assert_int_equal(c->active_requests, 1);
    pool_done(&t, &b.w);
    pool_done(&t, &b.w); /* idempotent */
    assert_int_equal(c->active_requests, 0);
    assert_int_equal(c->pending_requests, 0);
    assert_int_equal(stat_get(&c->stats.upstream_rq_pending_overflow), 1);
    pool_table_close(&t);
    uv_run(&l.uv, UV_RUN_DEFAULT);
    loop_free(&l);
    cluster_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_refused_connect),
        cmocka_unit_test(test_connect_failing_at_once),
        cmocka_unit_test(test_admission),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
