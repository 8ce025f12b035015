/* aws/sigv4.c: the Cloud Map vector of the reference notes (§1.6), then each canonicalisation
 * rule against signatures botocore 1.43.11 produced for the same request (clock pinned, via
 * tests/integration/sigv4_botocore.py), equivalences that must hold whatever the signature
 * (case, whitespace, order, never-signed headers, dot segments, percent escapes), the S3 GET
 * form, the output cap and refused input. test_sigv4.py compares a wider table live. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>
#include <uv.h>

#include "aws/sigv4.h"
#include "base/err.h"

#define T2026 ((time_t)1767225600) /* 2026-01-01T00:00:00Z */
#define BODY                                                                                       \
    "{\"NamespaceName\":\"mesh.local\",\"ServiceName\":\"backend\",\"HealthStatus\":\"HEALTHY\"}"
#define CM_HOST          "data-servicediscovery.us-east-1.amazonaws.com"
#define CM_SCOPE         "Credential=AKIDEXAMPLE/20260101/us-east-1/servicediscovery/aws4_request"
#define CM_SIGNED        "content-type;host;x-amz-date;x-amz-target"
#define VECTOR_SIG       "c30cd3b5707de2db58ed805a3e0726f06e8c8fb494a55bf9891605d0fd5fe1ee"
#define VECTOR_TOKEN_SIG "a1207219d847f05c2efc1026cfa0c55bf5f789a6b2b779213c1f2e7560a93518"
#define EMPTY_SHA256     "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

static aws_creds_t creds(const char *token)
{
    aws_creds_t c = {.access_key = "AKIDEXAMPLE",
                     .secret_key = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"};
    snprintf(c.token, sizeof c.token, "%s", token);
    return c;
}

/* The vector's request, with `extra` headers after its two. */
static sigv4_request_t cloudmap(sigv4_header_t *h, const sigv4_header_t *extra, unsigned nextra)
{
    h[0] = (sigv4_header_t){"Content-Type", "application/x-amz-json-1.1"};
    h[1] = (sigv4_header_t){"X-Amz-Target", "Route53AutoNaming_v20170314.DiscoverInstances"};
    for (unsigned i = 0; i < nextra; i++)
        h[2 + i] = extra[i];
    return (sigv4_request_t){.method = "POST",
                             .host = CM_HOST,
                             .path = "/",
                             .headers = h,
                             .nheaders = 2 + nextra,
                             .body = BODY,
                             .body_len = strlen(BODY)};
}

static char out[8192];

static int sign_as(const sigv4_request_t *r, const char *token, const char *region,
                   const char *service)
{
    aws_creds_t c = creds(token);
    return sigv4_sign(r, &c, region, service, T2026, out, sizeof out);
}

/* Signs r as a Cloud Map call without a token and returns the Signature= value. */
static const char *signature(const sigv4_request_t *r)
{
    static char sig[65];
    int n = sign_as(r, "", "us-east-1", "servicediscovery");
    assert_true(n > 0);
    assert_int_equal(n, (int)strlen(out));
    const char *s = strstr(out, "Signature=");
    assert_non_null(s);
    snprintf(sig, sizeof sig, "%.64s", s + 10);
    return sig;
}

static void expect_signed(const sigv4_request_t *r, const char *signed_headers, const char *sig)
{
    signature(r);
    char want[512];
    snprintf(want, sizeof want, "SignedHeaders=%s, Signature=%s\r\n", signed_headers, sig);
    assert_non_null(strstr(out, want));
}

static void test_reference_vector(void **state)
{
    (void)state;
    sigv4_header_t h[2];
    sigv4_request_t r = cloudmap(h, NULL, 0);
    const char *want = "X-Amz-Date: 20260101T000000Z\r\n"
                       "Authorization: AWS4-HMAC-SHA256 " CM_SCOPE ", SignedHeaders=" CM_SIGNED
                       ", Signature=" VECTOR_SIG "\r\n";
    assert_int_equal(sign_as(&r, "", "us-east-1", "servicediscovery"), (int)strlen(want));
    assert_string_equal(out, want);
}

static void test_reference_vector_with_token(void **state)
{
    (void)state;
    sigv4_header_t h[2];
    sigv4_request_t r = cloudmap(h, NULL, 0);
    const char *want = "X-Amz-Date: 20260101T000000Z\r\n"
                       "X-Amz-Security-Token: SESSIONTOKEN\r\n"
                       "Authorization: AWS4-HMAC-SHA256 " CM_SCOPE
                       ", SignedHeaders=content-type;host;x-amz-date;x-amz-security-token;"
                       "x-amz-target, Signature=" VECTOR_TOKEN_SIG "\r\n";
    assert_true(sign_as(&r, "SESSIONTOKEN", "us-east-1", "servicediscovery") > 0);
    assert_string_equal(out, want);
}

/* The vector's payload hash, shown by asking for the header S3 wants. */
static void test_payload_hash_header(void **state)
{
    (void)state;
    sigv4_header_t h[2];
    sigv4_request_t r = cloudmap(h, NULL, 0);
    r.flags = SIGV4_CONTENT_SHA256;
    assert_true(sign_as(&r, "", "us-east-1", "servicediscovery") > 0);
    assert_non_null(strstr(out, "\r\nX-Amz-Content-SHA256: "
                                "9613a0eefba2b4db377093a3e27e78fc9c412777ece16daeaa17231ad20cb8ae"
                                "\r\nAuthorization: "));
    expect_signed(&r, "content-type;host;x-amz-content-sha256;x-amz-date;x-amz-target",
                  "4f09670b12cf4d49ebba5dc6b68b00ddf3f8f99e4ebae2f3f5ff5e7f40d79a01");
}

/* Name case, surrounding and inner whitespace, and the order of distinct names do not count. */
static void test_header_case_whitespace_and_order(void **state)
{
    (void)state;
    sigv4_header_t h[3];
    sigv4_request_t r = {.method = "POST",
                         .host = CM_HOST,
                         .path = "/",
                         .headers = h,
                         .nheaders = 2,
                         .body = BODY,
                         .body_len = strlen(BODY)};
    h[0] = (sigv4_header_t){"x-amz-TARGET", " \t Route53AutoNaming_v20170314.DiscoverInstances\t"};
    h[1] = (sigv4_header_t){"CONTENT-TYPE", "application/x-amz-json-1.1   "};
    expect_signed(&r, CM_SIGNED, VECTOR_SIG);

    sigv4_header_t x = {"X-Custom", "  a \t  b\t\tc  "};
    r = cloudmap(h, &x, 1);
    const char *collapsed = "da8f35240aa0be8537b6fb5fef2c7dc154b1f2c10e1acef8cbedd58b8839cbd2";
    expect_signed(&r, CM_SIGNED ";x-custom", collapsed);
    h[2].value = "a b c";
    expect_signed(&r, CM_SIGNED ";x-custom", collapsed);
    h[2].value = "a bc"; /* collapsing, not removing */
    assert_string_not_equal(signature(&r), collapsed);
}

/* Repeats of a name, in any case, are joined with ',' in the order sent: the same as one
 * header holding "a,b", different from "b,a". */
static void test_repeated_headers(void **state)
{
    (void)state;
    const char *joined = "95e50daa42603f8a83681955657c90312ce00ef7ccf51754feafe87847e88e32";
    sigv4_header_t h[5], x[2] = {{"X-Foo", "a"}, {"x-FOO", " b "}};
    sigv4_request_t r = cloudmap(h, x, 2);
    expect_signed(&r, CM_SIGNED ";x-foo", joined);
    sigv4_header_t one = {"x-foo", "a,b"};
    r = cloudmap(h, &one, 1);
    expect_signed(&r, CM_SIGNED ";x-foo", joined);
    sigv4_header_t swapped[2] = {{"X-Foo", "b"}, {"X-Foo", "a"}};
    r = cloudmap(h, swapped, 2);
    assert_string_not_equal(signature(&r), joined);
    /* A repeat apart from its first copy (another name between) is still joined. */
    sigv4_header_t apart[3] = {{"X-Foo", "a"}, {"X-Bar", "z"}, {"x-foo", "b"}};
    r = cloudmap(h, apart, 3);
    signature(&r);
    assert_non_null(strstr(out, "SignedHeaders=" CM_SIGNED ";x-bar;x-foo, "));
}

/* Headers an intermediary may change are sent but never signed: the vector's signature. */
static void test_never_signed_headers(void **state)
{
    (void)state;
    sigv4_header_t h[16], x[] = {
                              {"User-Agent", "remora/1.0"},
                              {"X-Amzn-Trace-Id", "Root=1-5759e988-bd862e3fe1be46a994272793"},
                              {"Connection", "keep-alive"},
                              {"keep-alive", "timeout=5"},
                              {"Expect", "100-continue"},
                              {"TE", "trailers"},
                              {"Trailer", "x-checksum"},
                              {"Transfer-Encoding", "chunked"},
                              {"Upgrade", "h2c"},
                              {"Proxy-Authorization", "Basic Zm9v"},
                              {"Proxy-Connection", "close"}, /* botocore would sign this one */
                          };
    sigv4_request_t r = cloudmap(h, x, sizeof x / sizeof x[0]);
    expect_signed(&r, CM_SIGNED, VECTOR_SIG);
}

static void test_host_keeps_its_port(void **state)
{
    (void)state;
    sigv4_header_t h[2];
    sigv4_request_t r = cloudmap(h, NULL, 0);
    r.host = "127.0.0.1:5055";
    expect_signed(&r, CM_SIGNED,
                  "c4dd5063ae7b4cefa09a264a9fc3572c493be15c7b8b55226c0dfb256a1d21ae");
    r.host = "127.0.0.1";
    assert_string_not_equal(signature(&r),
                            "c4dd5063ae7b4cefa09a264a9fc3572c493be15c7b8b55226c0dfb256a1d21ae");
}

/* Sorted by name then value; a name without '=' has an empty value; escapes are decoded and
 * written again the SigV4 way (%7e is '~', '=' inside a value is %3D); empty pairs dropped. */
static void test_query_string(void **state)
{
    (void)state;
    const char *sig = "c91ee3936f2a76106bf858e0f229f828b43fb95156e0ff61ac19a0c7cb13d1ca";
    sigv4_header_t h[2];
    sigv4_request_t r = cloudmap(h, NULL, 0);
    r.method = "GET";
    r.body = NULL;
    r.body_len = 0;
    const char *same[] = {"b=2&a=~1&a=0&c", "c&a=0&b=2&a=~1", "a=%7e1&&c=&b=%32&a=0&"};
    for (size_t i = 0; i < sizeof same / sizeof same[0]; i++) {
        r.query = same[i];
        expect_signed(&r, CM_SIGNED, sig);
    }
    const char *other[] = {"b=2&a=~1&a=0", "b=2&a=%257e1&a=0&c", "b=2&a=~1&a=0&c=1", ""};
    for (size_t i = 0; i < sizeof other / sizeof other[0]; i++) {
        r.query = other[i];
        assert_string_not_equal(signature(&r), sig);
    }
    /* Names sharing a prefix: the shorter first, then by value ("1" before "10"). */
    const char *prefixes[] = {"x=10&pre=a&list=1&x=1&prefix=b&list-type=2",
                              "list=1&list-type=2&pre=a&prefix=b&x=1&x=10",
                              "prefix=b&x=1&list-type=2&x=10&list=1&pre=a"};
    for (size_t i = 0; i < sizeof prefixes / sizeof prefixes[0]; i++) {
        r.query = prefixes[i];
        expect_signed(&r, CM_SIGNED,
                      "9941653e13084b1d93d48e2da6de37085416e4b2008d59bbb67b3dea3a30a4df");
    }
    /* '=' in a value, encoded or not, is one thing; and '+' is a plus, not a space. */
    r.query = "z=p=q";
    char a[65];
    snprintf(a, sizeof a, "%s", signature(&r));
    r.query = "z=p%3Dq";
    assert_string_equal(signature(&r), a);
    r.query = "q=a+b";
    snprintf(a, sizeof a, "%s", signature(&r));
    r.query = "q=a%2Bb";
    assert_string_equal(signature(&r), a);
    r.query = "q=a%20b";
    assert_string_not_equal(signature(&r), a);
}

/* S3: the path is signed as sent, the payload hash is sent and signed. */
static void test_s3_get(void **state)
{
    (void)state;
    sigv4_header_t h = {"If-None-Match", "\"9b2cf535f27731c974343645a3985328\""};
    sigv4_request_t r = {.method = "GET",
                         .host = "config-bucket.s3.us-west-2.amazonaws.com",
                         .path = "/mesh/config.json",
                         .headers = &h,
                         .nheaders = 1,
                         .flags = SIGV4_S3};
    assert_true(sign_as(&r, "", "us-west-2", "s3") > 0);
    const char *want =
        "X-Amz-Date: 20260101T000000Z\r\n"
        "X-Amz-Content-SHA256: " EMPTY_SHA256 "\r\n"
        "Authorization: AWS4-HMAC-SHA256 "
        "Credential=AKIDEXAMPLE/20260101/us-west-2/s3/aws4_request, "
        "SignedHeaders=host;if-none-match;x-amz-content-sha256;x-amz-date, "
        "Signature=8bdc405668ae0d8117485d51049478ed8343736d3401f3fbf3f8274d5a22a773\r\n";
    assert_string_equal(out, want);
    /* With a token, it comes between the date and the payload hash, and is signed. */
    assert_true(sign_as(&r, "FwoGZXIvYXdzEJr//+tok==", "us-west-2", "s3") > 0);
    assert_non_null(strstr(out, "Z\r\nX-Amz-Security-Token: FwoGZXIvYXdzEJr//+tok==\r\n"
                                "X-Amz-Content-SHA256: "));
    assert_non_null(
        strstr(out, "host;if-none-match;x-amz-content-sha256;x-amz-date;x-amz-security-token,"));
}

/* Other services: dot and empty segments removed, then encoded again; S3: as sent. */
static void test_paths(void **state)
{
    (void)state;
    const char *sig = "88c75ad5a858923b6a02ae8d92186e9c8a4797df968eab9acdbca5c15b08222d";
    sigv4_header_t h[2];
    sigv4_request_t r = cloudmap(h, NULL, 0);
    aws_creds_t c = creds("");
    const char *same[] = {"/a/c/d%20e/", "/a/./b/../c//d%20e/", "/../x/../a/c/d%20e/",
                          "//a/b/./../c/./d%20e/"};
    for (size_t i = 0; i < sizeof same / sizeof same[0]; i++) {
        r.path = same[i];
        assert_true(sigv4_sign(&r, &c, "us-east-1", "execute-api", T2026, out, sizeof out) > 0);
        assert_non_null(strstr(out, sig));
    }
    const char *other[] = {"/a/c/d%20e", "/a/c/d e/", "/a/c/d%2520e/"};
    for (size_t i = 0; i < sizeof other / sizeof other[0]; i++) {
        r.path = other[i];
        int n = sigv4_sign(&r, &c, "us-east-1", "execute-api", T2026, out, sizeof out);
        assert_true(n == UV_EINVAL || (n > 0 && !strstr(out, sig)));
    }
    /* The root, however spelled, is "/"; as-is, "//" is not "/". */
    r.path = "";
    char root[65];
    snprintf(root, sizeof root, "%s", signature(&r));
    assert_string_equal(root, VECTOR_SIG);
    const char *roots[] = {"/", "//", "/./", "/a/..", NULL};
    for (size_t i = 0; i < sizeof roots / sizeof roots[0]; i++) {
        r.path = roots[i];
        assert_string_equal(signature(&r), root);
    }
    r.flags = SIGV4_PATH_AS_IS;
    r.path = "/";
    assert_string_equal(signature(&r), root);
    r.path = "//";
    assert_string_not_equal(signature(&r), root);
}

/* The exact length fits (with its NUL); one byte less is ERR_TOO_LARGE, never a cut header. */
static void test_output_too_small(void **state)
{
    (void)state;
    sigv4_header_t h[2];
    sigv4_request_t r = cloudmap(h, NULL, 0);
    aws_creds_t c = creds("SESSIONTOKEN");
    char big[1024], small[1024];
    int n = sigv4_sign(&r, &c, "us-east-1", "servicediscovery", T2026, big, sizeof big);
    assert_true(n > 0);
    assert_int_equal(
        sigv4_sign(&r, &c, "us-east-1", "servicediscovery", T2026, small, (size_t)n + 1), n);
    assert_string_equal(small, big);
    for (size_t len = 0; len <= (size_t)n; len += len < 40 ? 1 : 37) {
        memset(small, 'x', sizeof small);
        assert_int_equal(sigv4_sign(&r, &c, "us-east-1", "servicediscovery", T2026, small, len),
                         ERR_TOO_LARGE);
        assert_true(len == 0 || small[0] == '\0');
    }
    assert_int_equal(sigv4_sign(&r, &c, "us-east-1", "servicediscovery", T2026, small, (size_t)n),
                     ERR_TOO_LARGE);
}

static void test_refused_input(void **state)
{
    (void)state;
    sigv4_header_t h[SIGV4_MAX_HEADERS + 3], x = {"X-Ok", "fine"};
    sigv4_request_t r = cloudmap(h, &x, 1);
    assert_true(sign_as(&r, "", "us-east-1", "servicediscovery") > 0);

    const char *bad_values[] = {"a\r\nX-Injected: 1", "a\nb", "a\rb", "nul\x01", "del\x7f"};
    for (size_t i = 0; i < sizeof bad_values / sizeof bad_values[0]; i++) {
        x.value = bad_values[i];
        r = cloudmap(h, &x, 1);
        assert_int_equal(sign_as(&r, "", "us-east-1", "servicediscovery"), UV_EINVAL);
    }
    x.value = "fine";
    const char *bad_names[] = {"",
                               "X Bad",
                               "X-Bad:",
                               "Host",
                               "authorization",
                               "X-AMZ-DATE",
                               "x-amz-security-token",
                               "X-Amz-Content-Sha256",
                               "caf\xc3\xa9"};
    for (size_t i = 0; i < sizeof bad_names / sizeof bad_names[0]; i++) {
        x.name = bad_names[i];
        r = cloudmap(h, &x, 1);
        assert_int_equal(sign_as(&r, "", "us-east-1", "servicediscovery"), UV_EINVAL);
    }
    r = cloudmap(h, NULL, 0);
    assert_int_equal(sign_as(&r, "tok\r\nX-Injected: 1", "us-east-1", "servicediscovery"),
                     UV_EINVAL);
    assert_int_equal(sign_as(&r, "", "us/east", "servicediscovery"), UV_EINVAL);
    assert_int_equal(sign_as(&r, "", NULL, "servicediscovery"), UV_EINVAL);
    assert_int_equal(sign_as(&r, "", "us-east-1", ""), UV_EINVAL);
    const char *bad_queries[] = {"a=%4g", "a=%4", "a=b c", "a=b#c", "a=caf\xc3\xa9"};
    for (size_t i = 0; i < sizeof bad_queries / sizeof bad_queries[0]; i++) {
        r.query = bad_queries[i];
        assert_int_equal(sign_as(&r, "", "us-east-1", "servicediscovery"), UV_EINVAL);
    }
    r.query = NULL;
    const char *bad_paths[] = {"relative", "/a b", "/a%zz", "/a\r\n"};
    for (size_t i = 0; i < sizeof bad_paths / sizeof bad_paths[0]; i++) {
        r.path = bad_paths[i];
        assert_int_equal(sign_as(&r, "", "us-east-1", "servicediscovery"), UV_EINVAL);
    }
    r.path = "/";
    r.host = "evil.example\r\nX-Injected: 1";
    assert_int_equal(sign_as(&r, "", "us-east-1", "servicediscovery"), UV_EINVAL);
    r.host = CM_HOST;
    r.method = "PO ST";
    assert_int_equal(sign_as(&r, "", "us-east-1", "servicediscovery"), UV_EINVAL);
}

/* The sort arrays are capped: one past either cap is ERR_TOO_LARGE. */
static void test_caps(void **state)
{
    (void)state;
    sigv4_header_t h[SIGV4_MAX_HEADERS + 3], x[SIGV4_MAX_HEADERS + 1];
    for (unsigned i = 0; i < SIGV4_MAX_HEADERS + 1; i++)
        x[i] = (sigv4_header_t){"X-Many", "v"};
    sigv4_request_t r = cloudmap(h, x, SIGV4_MAX_HEADERS - 2);
    assert_true(sign_as(&r, "", "us-east-1", "servicediscovery") > 0);
    r = cloudmap(h, x, SIGV4_MAX_HEADERS - 1);
    assert_int_equal(sign_as(&r, "", "us-east-1", "servicediscovery"), ERR_TOO_LARGE);

    char q[4 * (SIGV4_MAX_PARAMS + 1) + 1] = "";
    for (size_t i = 0, used = 0; i < SIGV4_MAX_PARAMS; i++)
        used += (size_t)snprintf(q + used, sizeof q - used, "%sa=%zu", i ? "&" : "", i % 10);
    r = cloudmap(h, NULL, 0);
    r.query = q;
    assert_true(sign_as(&r, "", "us-east-1", "servicediscovery") > 0);
    size_t len = strlen(q);
    snprintf(q + len, sizeof q - len, "&b");
    assert_int_equal(sign_as(&r, "", "us-east-1", "servicediscovery"), ERR_TOO_LARGE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reference_vector),
        cmocka_unit_test(test_reference_vector_with_token),
        cmocka_unit_test(test_payload_hash_header),
        cmocka_unit_test(test_header_case_whitespace_and_order),
        cmocka_unit_test(test_repeated_headers),
        cmocka_unit_test(test_never_signed_headers),
        cmocka_unit_test(test_host_keeps_its_port),
        cmocka_unit_test(test_query_string),
        cmocka_unit_test(test_s3_get),
        cmocka_unit_test(test_paths),
        cmocka_unit_test(test_output_too_small),
        cmocka_unit_test(test_refused_input),
        cmocka_unit_test(test_caps),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
