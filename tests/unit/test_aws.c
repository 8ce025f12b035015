/* aws/aws.c and http/client.c's URL parsing: Regions, endpoints, credential time stamps, and the
 * URLs the control-plane client accepts (an endpoint override or a config URL comes from the
 * environment, so bad ones must be refused, not half-used). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "aws/aws.h"
#include "base/err.h"
#include "http/client.h"

static void clear_env(void)
{
    static const char *const vars[] = {"AWS_REGION",
                                       "AWS_DEFAULT_REGION",
                                       "APPMESH_RESOURCE_ARN",
                                       "AWS_ENDPOINT_URL",
                                       "AWS_ENDPOINT_URL_SERVICEDISCOVERY",
                                       "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
                                       NULL};
    for (int i = 0; vars[i]; i++)
        unsetenv(vars[i]);
}

static void test_region_precedence(void **state)
{
    (void)state;
    char r[64], why[256];
    clear_env();
    assert_int_equal(aws_region(r, sizeof r, why, sizeof why), ERR_CONFIG);
    assert_non_null(strstr(why, "AWS_REGION"));
    setenv("APPMESH_RESOURCE_ARN",
           "arn:aws:appmesh:eu-west-1:111122223333:mesh/shop/virtualNode/web", 1);
    assert_int_equal(aws_region(r, sizeof r, why, sizeof why), 0);
    assert_string_equal(r, "eu-west-1");
    setenv("AWS_DEFAULT_REGION", "us-west-2", 1);
    assert_int_equal(aws_region(r, sizeof r, why, sizeof why), 0);
    assert_string_equal(r, "us-west-2");
    setenv("AWS_REGION", "ap-south-1", 1);
    assert_int_equal(aws_region(r, sizeof r, why, sizeof why), 0);
    assert_string_equal(r, "ap-south-1");
    clear_env();
    setenv("APPMESH_RESOURCE_ARN", "mesh/shop/virtualNode/web", 1); /* the older form: no Region */
    assert_int_equal(aws_region(r, sizeof r, why, sizeof why), ERR_CONFIG);
    clear_env();
}

static void test_endpoint(void **state)
{
    (void)state;
    char url[256];
    clear_env();
    aws_endpoint("SERVICEDISCOVERY", "data-servicediscovery", "us-east-1", url, sizeof url);
    assert_string_equal(url, "https://data-servicediscovery.us-east-1.amazonaws.com/");
    aws_endpoint("SERVICEDISCOVERY", "data-servicediscovery", "cn-north-1", url, sizeof url);
    assert_string_equal(url, "https://data-servicediscovery.cn-north-1.amazonaws.com.cn/");
    setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:4566", 1);
    aws_endpoint("SERVICEDISCOVERY", "data-servicediscovery", "us-east-1", url, sizeof url);
    assert_string_equal(url, "http://127.0.0.1:4566");
    setenv("AWS_ENDPOINT_URL_SERVICEDISCOVERY", "http://127.0.0.1:5055", 1);
    aws_endpoint("SERVICEDISCOVERY", "data-servicediscovery", "us-east-1", url, sizeof url);
    assert_string_equal(url, "http://127.0.0.1:5055"); /* the service's own wins */
    setenv("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true", 1);
    aws_endpoint("SERVICEDISCOVERY", "data-servicediscovery", "us-east-1", url, sizeof url);
    assert_string_equal(url, "https://data-servicediscovery.us-east-1.amazonaws.com/");
    clear_env();
}

static void test_parse_time(void **state)
{
    (void)state;
    assert_int_equal(aws_parse_time("2016-02-25T06:03:31Z"), 1456380211LL);
    assert_int_equal(aws_parse_time("2016-02-25T06:03:31.123Z"), 1456380211LL);
    assert_int_equal(aws_parse_time("2016-02-25T06:03:31+00:00"), 1456380211LL);
    assert_int_equal(aws_parse_time("1970-01-01T00:00:00Z"), 0);
    assert_int_equal(aws_parse_time("2016-02-25T06:03:31+02:00"), -1); /* not UTC */
    assert_int_equal(aws_parse_time("2016-02-25 06:03:31Z"), -1);
    assert_int_equal(aws_parse_time("2016-13-25T06:03:31Z"), -1);
    assert_int_equal(aws_parse_time("2016-02-25T06:03:31"), -1);
    assert_int_equal(aws_parse_time("2016-9-02T02:59:59Z"), -1); /* found by fuzz_control */
    assert_int_equal(aws_parse_time(" 2016-09-02T02:59:59Z"), -1);
    assert_int_equal(aws_parse_time("2016-02-30T00:00:00Z"), -1);
    assert_int_equal(aws_parse_time("2015-02-29T00:00:00Z"), -1);
    assert_int_equal(aws_parse_time("2016-02-29T00:00:00Z"), 1456704000LL);
    assert_int_equal(aws_parse_time(""), -1);
    assert_int_equal(aws_parse_time(NULL), -1);
}

static void test_url_parse(void **state)
{
    (void)state;
    http_url_t u;
    assert_int_equal(http_url_parse("http://127.0.0.1:5055", &u), 0);
    assert_int_equal(u.tls, 0);
    assert_string_equal(u.host, "127.0.0.1");
    assert_int_equal(u.port, 5055);
    assert_string_equal(u.authority, "127.0.0.1:5055");
    assert_string_equal(u.path, "/");

    assert_int_equal(
        http_url_parse("https://bucket.s3.us-east-1.amazonaws.com/mesh/fleet.json?x=1", &u), 0);
    assert_int_equal(u.tls, 1);
    assert_int_equal(u.port, 443);
    assert_string_equal(u.authority,
                        "bucket.s3.us-east-1.amazonaws.com"); /* default port dropped */
    assert_string_equal(u.path, "/mesh/fleet.json?x=1");

    assert_int_equal(http_url_parse("http://[::1]:2772/applications/a", &u), 0);
    assert_string_equal(u.host, "::1");
    assert_string_equal(u.authority, "[::1]:2772");
    assert_int_equal(http_url_parse("HTTP://localhost:80?q", &u), 0);
    assert_string_equal(u.authority, "localhost");
    assert_string_equal(u.path, "/?q");

    static const char *const bad[] = {
        "ftp://h/",
        "http://",
        "http://:80/",
        "http://h:0/",
        "http://h:65536/",
        "http://h:8x/",
        "http://u:p@h/",
        "http://h/a#frag",
        "http://h/a b",
        "http://h/\r\nX: 1",
        "https://[::1/",
        "http://[::1]x/",
        "h:80/",
        "",
        /* found by fuzz_control: a '[' inside a name, escapes and brackets in a name */
        "https://[[d3]:42251",
        "http://a%2eb/",
        "http://h[1]/",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        assert_int_equal(http_url_parse(bad[i], &u), ERR_BAD_URL);
}

/* Container credentials that cannot sign (a CR or LF would split the signed call's header lines)
 * are refused when fetched, as garbage JSON is. */
static void test_creds_check(void **state)
{
    (void)state;
    aws_creds_t c = {0};
    snprintf(c.access_key, sizeof c.access_key, "ASIAEXAMPLE");
    snprintf(c.secret_key, sizeof c.secret_key, "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY");
    assert_int_equal(aws_creds_check(&c), 0); /* no token: long-term credentials */
    snprintf(c.token, sizeof c.token, "IQoJb3JpZ2luX2VjEJr//////////wEaCXVz+ZWFzdC0x==");
    assert_int_equal(aws_creds_check(&c), 0);
    static const char *const bad[] = {"a\r\nX-Evil: 1", "a\n",   "a\r",     "a\tb", "a b",
                                      "a\x7f",          "a\x01", "\xc3\xa9"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        aws_creds_t t = c;
        snprintf(t.access_key, sizeof t.access_key, "%s", bad[i]);
        assert_int_equal(aws_creds_check(&t), UV_EINVAL);
        t = c;
        snprintf(t.secret_key, sizeof t.secret_key, "%s", bad[i]);
        assert_int_equal(aws_creds_check(&t), UV_EINVAL);
        t = c;
        snprintf(t.token, sizeof t.token, "%s", bad[i]);
        assert_int_equal(aws_creds_check(&t), UV_EINVAL);
    }
    aws_creds_t t = c;
    t.access_key[0] = '\0';
    assert_int_equal(aws_creds_check(&t), UV_EINVAL);
    t = c;
    t.secret_key[0] = '\0';
    assert_int_equal(aws_creds_check(&t), UV_EINVAL);
    t = c;
    snprintf(t.access_key, sizeof t.access_key, "AKID/x"); /* inside Credential=ID/scope */
    assert_int_equal(aws_creds_check(&t), UV_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_region_precedence), cmocka_unit_test(test_endpoint),
        cmocka_unit_test(test_parse_time),        cmocka_unit_test(test_url_parse),
        cmocka_unit_test(test_creds_check),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
