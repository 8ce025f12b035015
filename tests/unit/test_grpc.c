/* http/grpc.c: telling a gRPC request, its deadline, a Trailers-Only status, remora's answers
 * (grpc/grpc doc/PROTOCOL-HTTP2.md, doc/http-grpc-status-mapping.md). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "http/grpc.h"

static head_t *with(head_t *h, const char *name, const char *value)
{
    assert_int_equal(head_add_field(h, name, strlen(name), value, strlen(value)), 0);
    return h;
}

static const char *value(const head_t *h, const char *name)
{
    static char out[1024];
    for (unsigned i = 0; i < h->nfields; i++) {
        if (h->fields[i].hop || h->fields[i].name_len != strlen(name) ||
            memcmp(field_name(h, i), name, strlen(name)) != 0)
            continue;
        memcpy(out, field_value(h, i), h->fields[i].value_len);
        out[h->fields[i].value_len] = 0;
        return out;
    }
    return NULL;
}

static void test_content_types(void **state)
{
    (void)state;
    static const struct {
        const char *ct;
        int grpc;
    } rows[] = {
        {"application/grpc", 1},     {"application/grpc+proto", 1},
        {"Application/GRPC;x=1", 1}, {"application/grpc-web", 0},
        {"application/grpcx", 0},    {"application/json", 0},
        {"application/gr", 0},       {"text/plain", 0},
    };
    for (size_t i = 0; i < sizeof rows / sizeof *rows; i++) {
        head_t h;
        head_init(&h);
        assert_int_equal(grpc_is_request(with(&h, "content-type", rows[i].ct)), rows[i].grpc);
        head_free(&h);
    }
    head_t none;
    head_init(&none);
    assert_int_equal(grpc_is_request(&none), 0);
    head_free(&none);
}

static void test_timeouts(void **state)
{
    (void)state;
    static const struct {
        const char *v;
        int ok;
        uint64_t ms;
    } rows[] = {
        {"1H", 1, 3600000},   {"2M", 1, 120000}, {"3S", 1, 3000},
        {"250m", 1, 250},     {"1500u", 1, 2},   {"1n", 1, 1},
        {"999999n", 1, 1},    {"0m", 1, 0},      {"99999999S", 1, 99999999000ull},
        {"123456789m", 0, 0}, /* nine digits */
        {"m", 0, 0},          {"10x", 0, 0},     {"1.5S", 0, 0},
        {"-1S", 0, 0},        {"", 0, 0},
    };
    for (size_t i = 0; i < sizeof rows / sizeof *rows; i++) {
        head_t h;
        head_init(&h);
        uint64_t ms = 77;
        assert_int_equal(grpc_timeout_ms(with(&h, "grpc-timeout", rows[i].v), &ms), rows[i].ok);
        if (rows[i].ok)
            assert_int_equal(ms, rows[i].ms);
        head_free(&h);
    }
}

static void test_timeout_is_replaced(void **state)
{
    (void)state;
    head_t h;
    head_init(&h);
    with(&h, "grpc-timeout", "5S");
    assert_int_equal(grpc_set_timeout(&h, 4321), 0);
    assert_string_equal(value(&h, "grpc-timeout"), "4321m");
    assert_int_equal(grpc_set_timeout(&h, 200000000), 0); /* past eight digits: seconds */
    assert_string_equal(value(&h, "grpc-timeout"), "200000S");
    unsigned visible = 0;
    for (unsigned i = 0; i < h.nfields; i++)
        visible += !h.fields[i].hop;
    assert_int_equal(visible, 1);
    head_free(&h);
}

static void test_status_of_a_response(void **state)
{
    (void)state;
    static const struct {
        const char *v;
        int status;
    } rows[] = {{"0", 0}, {"14", 14}, {"16", 16}, {"", -1}, {"1x", -1}, {"1000", -1}};
    for (size_t i = 0; i < sizeof rows / sizeof *rows; i++) {
        head_t h;
        head_init(&h);
        assert_int_equal(grpc_status_of(with(&h, "grpc-status", rows[i].v)), rows[i].status);
        head_free(&h);
    }
}

static void test_http_statuses_map(void **state)
{
    (void)state;
    static const int rows[][2] = {
        {400, GRPC_INTERNAL},          {431, GRPC_INTERNAL},      {401, GRPC_UNAUTHENTICATED},
        {403, GRPC_PERMISSION_DENIED}, {404, GRPC_UNIMPLEMENTED}, {429, GRPC_UNAVAILABLE},
        {502, GRPC_UNAVAILABLE},       {503, GRPC_UNAVAILABLE},   {504, GRPC_DEADLINE_EXCEEDED},
        {408, GRPC_DEADLINE_EXCEEDED}, {500, GRPC_UNKNOWN},       {200, GRPC_UNKNOWN},
    };
    for (size_t i = 0; i < sizeof rows / sizeof *rows; i++)
        assert_int_equal(grpc_status_for_http(rows[i][0]), rows[i][1]);
}

static void test_reply_is_trailers_only(void **state)
{
    (void)state;
    head_t h;
    head_init(&h);
    assert_int_equal(grpc_reply_head(&h, GRPC_UNAVAILABLE, "no healthy upstream 100%\n"), 0);
    assert_int_equal(h.status, 200);
    assert_int_equal(h.nfields, 3);
    assert_string_equal(value(&h, "content-type"), "application/grpc");
    assert_string_equal(value(&h, "grpc-status"), "14");
    assert_string_equal(value(&h, "grpc-message"), "no healthy upstream 100%25");
    head_free(&h);
    head_init(&h);
    assert_int_equal(grpc_reply_head(&h, GRPC_UNIMPLEMENTED, "caf\xc3\xa9\t"), 0);
    assert_string_equal(value(&h, "grpc-message"), "caf%C3%A9%09");
    head_free(&h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_content_types),       cmocka_unit_test(test_timeouts),
        cmocka_unit_test(test_timeout_is_replaced), cmocka_unit_test(test_status_of_a_response),
        cmocka_unit_test(test_http_statuses_map),   cmocka_unit_test(test_reply_is_trailers_only),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
