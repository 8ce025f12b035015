"""remora's SigV4 signer (aws/sigv4.c, through tests/tools/sigv4_cli) against botocore's, the
reference implementation, on a table of the requests remora sends: Cloud Map DiscoverInstances
and DiscoverInstancesRevision JSON POSTs (with and without a session token, several Regions and
partitions, hosts with ports, IPv6, unicode and empty bodies) and S3 GETs of the config
(If-None-Match, version and other query parameters). The headers each adds must be
byte-identical.

botocore lives in another interpreter (BOTOCORE_PYTHON, /root/.pyenv/shims/python3 by default),
which runs sigv4_botocore.py; without it the test is skipped, never passed."""
import json
import os
import subprocess

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
TOOLS = os.environ.get("REMORA_TOOLS", os.path.join(ROOT, "build", "tests"))
BOTOCORE_PYTHON = os.environ.get("BOTOCORE_PYTHON", "/root/.pyenv/shims/python3")

AK, SK = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
T2026 = 1767225600  # 2026-01-01T00:00:00Z, the reference vector's time
# Shaped like an STS session token: long, base64 with '+', '/' and '='.
LONG_TOKEN = ("IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJHMEUCIQD+" * 12) + "Zz=="
TARGET = "Route53AutoNaming_v20170314."
JSON_11 = ("Content-Type", "application/x-amz-json-1.1")
VECTOR_BODY = '{"NamespaceName":"mesh.local","ServiceName":"backend","HealthStatus":"HEALTHY"}'


def cloudmap(op, body, region="us-east-1", host=None, scheme="https", token="", time=T2026,
             extra=()):
    host = host or f"data-servicediscovery.{region}.amazonaws.com"
    return {"method": "POST", "scheme": scheme, "host": host, "path": "/",
            "headers": [list(JSON_11), ["X-Amz-Target", TARGET + op], *map(list, extra)],
            "body": body, "access_key": AK, "secret_key": SK, "token": token,
            "region": region, "service": "servicediscovery", "time": time}


def s3_get(bucket_host, path, region, query=None, scheme="https", token="", extra=(),
           time=T2026):
    return {"method": "GET", "scheme": scheme, "host": bucket_host, "path": path,
            "query": query, "headers": [list(h) for h in extra], "body": "", "s3": True,
            "access_key": AK, "secret_key": SK, "token": token, "region": region,
            "service": "s3", "time": time}


def revision_body(ns, svc):
    return json.dumps({"NamespaceName": ns, "ServiceName": svc}, separators=(",", ":"))


CASES = {
    "vector": cloudmap("DiscoverInstances", VECTOR_BODY),
    "vector-token": cloudmap("DiscoverInstances", VECTOR_BODY, token="SESSIONTOKEN"),
    "revision-eu-sts-token": cloudmap("DiscoverInstancesRevision",
                                      revision_body("mesh.local", "backend"),
                                      region="eu-west-1", token=LONG_TOKEN),
    "moto-loopback-port": cloudmap("DiscoverInstances", VECTOR_BODY, region="ap-southeast-2",
                                   host="127.0.0.1:5055", scheme="http"),
    "localhost-empty-body": cloudmap("DiscoverInstancesRevision", "", region="us-west-2",
                                     host="localhost:4566", scheme="http", token="tok"),
    "ipv6-host": cloudmap("DiscoverInstancesRevision", revision_body("a", "b"),
                          host="[::1]:8080", scheme="http"),
    "unicode-body": cloudmap("DiscoverInstances", json.dumps(
        {"NamespaceName": "méshé.local", "ServiceName": "服务-backend",
         "QueryParameters": {"zone": "Zürich 🚀"}, "HealthStatus": "HEALTHY_OR_ELSE_ALL"},
        ensure_ascii=False), region="eu-central-2"),
    "china-partition": cloudmap("DiscoverInstances", VECTOR_BODY, region="cn-north-1",
                                host="data-servicediscovery.cn-north-1.amazonaws.com.cn",
                                token="SESSIONTOKEN"),
    "fips-leap-day": cloudmap("DiscoverInstancesRevision", revision_body("x", "y"),
                              region="us-gov-west-1",
                              host="data-servicediscovery-fips.us-gov-west-1.amazonaws.com",
                              time=1835395199),  # 2028-02-29T23:59:59Z
    "odd-whitespace": cloudmap("DiscoverInstances", VECTOR_BODY, extra=[
        ("X-Custom", "  a   b\t\tc  "), ("X-Empty", ""), ("x-tabs", "\t x \t"),
        ("X-Repeat", "one"), ("x-REPEAT", "  two  three "), ("X-Amz-Meta-City", "Zürich")]),
    "never-signed-headers": cloudmap("DiscoverInstances", VECTOR_BODY, token="SESSIONTOKEN",
                                     extra=[("User-Agent", "remora/1.0"),
                                            ("X-Amzn-Trace-Id", "Root=1-5759e988-bd862e3fe1be46a994272793"),
                                            ("Connection", "keep-alive"), ("Keep-Alive", "timeout=5"),
                                            ("Expect", "100-continue"), ("TE", "trailers"),
                                            ("Transfer-Encoding", "chunked"), ("Upgrade", "h2c"),
                                            ("Proxy-Authorization", "Basic Zm9v"), ("Accept", "*/*")]),
    "old-date": cloudmap("DiscoverInstances", VECTOR_BODY, time=946684799),  # 1999-12-31T23:59:59Z
    "s3-if-none-match": s3_get("config-bucket.s3.us-west-2.amazonaws.com", "/mesh/config.json",
                               "us-west-2", extra=[("If-None-Match", '"9b2cf535f27731c974343645a3985328"'),
                                                   ("x-amz-checksum-mode", "ENABLED")]),
    "s3-version-query-token": s3_get("config-bucket.s3.eu-west-1.amazonaws.com",
                                     "/mesh/app%20mesh~v2.json", "eu-west-1",
                                     query="versionId=3HL4kqtJlcpXroDTDmJ.rmSpXd3dIbrHY&partNumber=1",
                                     token=LONG_TOKEN,
                                     extra=[("If-None-Match", 'W/"abc"')]),
    "s3-path-style-encoded-query": s3_get("127.0.0.1:9000", "/bucket//conf/a%2Bb.json", "us-east-1",
                                          scheme="http",
                                          query="response-content-type=application%2Fjson&prefix=a%20b"
                                                "&a=2&a=1&acl&list-type=2",
                                          extra=[("If-None-Match", "*")]),
    "post-path-normalized": {**cloudmap("DiscoverInstances", VECTOR_BODY),
                             "path": "/a/./b/../c//d%20e/", "service": "execute-api",
                             "query": "b=2&a=~1&a=0"},
}

# Where botocore signs a query as it is written and AWS (and remora) decode and encode each
# name and value again: remora's signature for the left form must be botocore's for the right.
RECODED = [
    ("x=%7e&y=a%2fb&z=p=q", "x=~&y=a%2Fb&z=p%3Dq"),
    ("list-type=2&prefix=%41%2D%5f&&start-after=", "list-type=2&prefix=A-_&start-after="),
]


def run(argv, table):
    text = "".join(json.dumps(c) + "\n" for c in table)
    p = subprocess.run(argv, input=text, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    rows = [json.loads(line) for line in p.stdout.splitlines()]
    assert len(rows) == len(table), p.stdout + p.stderr
    return rows


@pytest.fixture(scope="module")
def botocore():
    if not os.access(BOTOCORE_PYTHON, os.X_OK):
        pytest.skip(f"{BOTOCORE_PYTHON} (the interpreter with botocore) is missing")
    probe = subprocess.run([BOTOCORE_PYTHON, "-c", "import botocore; print(botocore.__version__)"],
                           capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"{BOTOCORE_PYTHON} cannot import botocore: {probe.stderr.strip()[-200:]}")
    names = list(CASES)
    rows = run([BOTOCORE_PYTHON, os.path.join(HERE, "sigv4_botocore.py")],
               [CASES[n] for n in names])
    return dict(zip(names, rows))


@pytest.fixture(scope="module")
def remora():
    names = list(CASES)
    return dict(zip(names, run([os.path.join(TOOLS, "sigv4_cli")], [CASES[n] for n in names])))


def test_query_is_recoded_the_sigv4_way(botocore):
    table = []
    for i, (ours, canonical) in enumerate(RECODED):
        table.append(s3_get("b.s3.us-east-1.amazonaws.com", "/k", "us-east-1", query=ours,
                            time=T2026 + i))
        table.append({**table[-1], "query": canonical})
    rem = run([os.path.join(TOOLS, "sigv4_cli")], table[0::2])
    ref = run([BOTOCORE_PYTHON, os.path.join(HERE, "sigv4_botocore.py")], table[1::2])
    for (ours, _), r, b in zip(RECODED, rem, ref):
        assert r["headers"] == b["headers"], (ours, b["canonical_request"])


def test_helper_reproduces_the_reference_vector(botocore):
    """Guards the helper itself: botocore, clock pinned, gives the §1.6 signatures."""
    assert botocore["vector"]["headers"][-1][1].endswith(
        "Signature=c30cd3b5707de2db58ed805a3e0726f06e8c8fb494a55bf9891605d0fd5fe1ee")
    assert botocore["vector-token"]["headers"][-1][1].endswith(
        "Signature=a1207219d847f05c2efc1026cfa0c55bf5f789a6b2b779213c1f2e7560a93518")


@pytest.mark.parametrize("name", list(CASES))
def test_headers_match_botocore(name, botocore, remora):
    ref, ours = botocore[name], remora[name]
    assert "error" not in ours, ours
    assert ours["headers"] == ref["headers"], (
        f"botocore's canonical request:\n{ref['canonical_request']}\n"
        f"string to sign:\n{ref['string_to_sign']}")
    names = [h[0] for h in ours["headers"]]
    assert ("X-Amz-Security-Token" in names) == bool(CASES[name]["token"])
    assert ("X-Amz-Content-SHA256" in names) == bool(CASES[name].get("s3"))
