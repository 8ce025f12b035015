"""X-Ray: every datagram remora sends, collected by a UDP listener in place of the daemon and
checked field by field; a two-proxy chain with a retry read as a service map would read it;
header parsing against the X-Ray SDK's own parser; sampling by rate and by rules."""
import json
import os
import re
import socket
import subprocess
import threading
import time

import pytest

from conftest import HERE, ROOT, mesh_config, wait_until
from rawhttp import Conn, request

HEADER_LINE = b'{"format": "json", "version": 1}'
TRACE_ID = re.compile(r"^1-[0-9a-f]{8}-[0-9a-f]{24}$")
SPAN_ID = re.compile(r"^[0-9a-f]{16}$")
NAME_OK = re.compile(r"^[\w\s.:/%&#=+\\\-@]{1,200}$")


class Collector:
    """A UDP listener in place of the X-Ray daemon: keeps every datagram."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.sock.settimeout(0.2)
        self.datagrams = []
        self.stopped = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stopped:
            try:
                data, _ = self.sock.recvfrom(70000)
                self.datagrams.append(data)
            except socket.timeout:
                pass

    def documents(self):
        """Every document, after checking the header line and the JSON."""
        docs = []
        for d in list(self.datagrams):
            head, _, body = d.partition(b"\n")
            assert json.loads(head) == json.loads(HEADER_LINE), head
            docs.append(json.loads(body))
        return docs

    def stop(self):
        self.stopped = True
        self.thread.join(2)
        self.sock.close()


@pytest.fixture
def collector():
    c = Collector()
    yield c
    c.stop()


def traced(collector, extra=None):
    env = {"ENABLE_ENVOY_XRAY_TRACING": "1", "XRAY_DAEMON_PORT": str(collector.port)}
    env.update(extra or {})
    return env


def flags_match(doc, status):
    assert doc.get("error", False) == (400 <= status < 500), doc
    assert doc.get("throttle", False) == (status == 429), doc
    assert doc.get("fault", False) == (status >= 500 or status == 0), doc


def check_times(doc):
    assert isinstance(doc["start_time"], float) and isinstance(doc["end_time"], float)
    assert doc["start_time"] <= doc["end_time"]
    assert abs(doc["start_time"] - time.time()) < 300


def check_well_formed(doc, standalone=True):
    assert SPAN_ID.match(doc["id"]), doc["id"]
    assert NAME_OK.match(doc["name"]), doc["name"]
    check_times(doc)
    if standalone:
        assert TRACE_ID.match(doc["trace_id"]), doc["trace_id"]
    if doc.get("type") == "subsegment":
        assert SPAN_ID.match(doc["parent_id"])
    if "parent_id" in doc:
        assert SPAN_ID.match(doc["parent_id"])
    for sub in doc.get("subsegments", []):
        check_well_formed(sub, standalone=False)
    if "http" in doc and "response" in doc["http"]:
        flags_match(doc, doc["http"]["response"]["status"])


def all_ids(doc):
    ids = {doc["id"]}
    for sub in doc.get("subsegments", []):
        ids |= all_ids(sub)
    return ids


def test_ingress_segments_are_complete_and_well_formed(mesh, collector):
    r, app, _ = mesh(env=traced(collector, {"XRAY_SAMPLING_RATE": "1"}))
    c = Conn(r.ingress)
    for status in (200, 404, 429, 503):
        c.send(request("GET", f"/status/{status}?q=1", host="web.shop.local",
                       headers=[("User-Agent", "tester/1.0"), ("X-Forwarded-For", "10.9.8.7")]))
        assert c.read_response().status == status
    docs = wait_until(lambda: len(collector.documents()) >= 4 and collector.documents(), what="4 segments")
    assert len(docs) == 4, docs
    by_status = {d["http"]["response"]["status"]: d for d in docs}
    assert sorted(by_status) == [200, 404, 429, 503]
    for status, d in by_status.items():
        check_well_formed(d)
        flags_match(d, status)
        assert d["name"] == "shop/web"
        assert d["origin"] == "AWS::AppMesh::Proxy"
        assert d["aws"]["app_mesh"] == {"mesh_name": "shop", "virtual_node_name": "web"}
        req = d["http"]["request"]
        assert req["method"] == "GET"
        assert req["url"] == f"http://web.shop.local/status/{status}?q=1"
        assert req["user_agent"] == "tester/1.0"
        assert req["client_ip"] == "10.9.8.7" and req["x_forwarded_for"] is True
        assert "parent_id" not in d, "no incoming Parent: a root segment"


def test_app_receives_our_segment_as_parent(mesh, collector):
    r, app, _ = mesh(env=traced(collector))
    root, parent = "1-5759e988-bd862e3fe1be46a994272793", "53995c3f42cd8ad8"
    c = Conn(r.ingress)
    c.send(request("GET", "/echo", host="web", headers=[
        ("X-Amzn-Trace-Id", f"Self=1-abc-def;Root={root};Parent={parent};Sampled=1;Lineage=a:1")]))
    seen = {k.lower(): v for k, v in json.loads(c.read_response().body)["headers"]}
    docs = wait_until(lambda: collector.documents(), what="the segment")
    assert len(docs) == 1, docs
    doc = docs[0]
    assert doc["trace_id"] == root and doc["parent_id"] == parent
    assert seen["x-amzn-trace-id"] == f"Root={root};Parent={doc['id']};Sampled=1;Lineage=a:1"


def test_unsampled_requests_forward_the_root_and_send_nothing(mesh, collector):
    r, app, _ = mesh(env=traced(collector))
    root = "1-5759e988-bd862e3fe1be46a994272793"
    c = Conn(r.ingress)
    c.send(request("GET", "/echo", host="web", headers=[("X-Amzn-Trace-Id", f"Root={root};Sampled=0")]))
    seen = {k.lower(): v for k, v in json.loads(c.read_response().body)["headers"]}
    assert re.match(rf"^Root={root};Parent=[0-9a-f]{{16}};Sampled=0$", seen["x-amzn-trace-id"])
    # Rather than waiting a while for nothing: a sampled request made afterwards on the same
    # connection (one worker) sends its segment after any the first would have sent.
    doc = send_marker(c, collector)
    assert [d["trace_id"] for d in collector.documents()] == [doc["trace_id"]]
    st = r.stats()
    assert st["remora.xray.unsampled"] == 1 and st["remora.xray.sampled"] == 1


MARKER_ROOT = "1-5759e988-0123456789abcdef01234567"


def send_marker(conn, collector, host="web"):
    """A request forced sampled (Sampled=1) on `conn`; returns its segment once it has come.
    Every segment of an earlier request on the same connection was sent before it."""
    conn.send(request("GET", "/echo", host=host,
                      headers=[("X-Amzn-Trace-Id", f"Root={MARKER_ROOT};Sampled=1")]))
    assert conn.read_response().status == 200
    return wait_until(lambda: [d for d in collector.documents() if d["trace_id"] == MARKER_ROOT],
                      what="the marker's segment")[0]


def chain(upstream, remora, collector, retry=True):
    """client -> remora A (egress) -> remora B (ingress) -> app."""
    app = upstream("app")
    b_cfg = mesh_config(app.port, 9, node="b")
    b_cfg["virtualNodes"][0]["virtualNodeName"] = "b"
    b_cfg["proxy"]["node"] = "b"
    b_cfg["proxy"]["xray"] = {"enabled": True, "daemonAddress": f"127.0.0.1:{collector.port}",
                              "samplingRate": 1.0}
    b = remora(b_cfg)
    b_ingress = b.ingress
    route = {"match": {"prefix": "/"}, "action": {"weightedTargets": [{"virtualNode": "b", "weight": 1}]}}
    if retry:
        route["retryPolicy"] = {"maxRetries": 2, "perRetryTimeout": {"unit": "s", "value": 5},
                                "httpRetryEvents": ["server-error"]}
    a_cfg = {
        "mesh": {"meshName": "shop"},
        "virtualNodes": [
            {"virtualNodeName": "a", "spec": {
                "listeners": [{"portMapping": {"port": 1, "protocol": "http"}}],
                "backends": [{"virtualService": {"virtualServiceName": "b.shop.local"}}]}},
            {"virtualNodeName": "b", "spec": {
                "listeners": [{"portMapping": {"port": b_ingress, "protocol": "http"}}],
                "serviceDiscovery": {"dns": {"hostname": "127.0.0.1"}}}}],
        "virtualServices": [{"virtualServiceName": "b.shop.local", "spec": {
            "provider": {"virtualRouter": {"virtualRouterName": "b"}}}}],
        "virtualRouters": [{"virtualRouterName": "b", "spec": {
            "listeners": [{"portMapping": {"port": 80, "protocol": "http"}}]}}],
        "routes": [{"virtualRouterName": "b", "routeName": "to-b", "spec": {"httpRoute": route}}],
        "proxy": {"node": "a", "xray": {"enabled": True,
                                        "daemonAddress": f"127.0.0.1:{collector.port}",
                                        "samplingRate": 1.0}},
    }
    a = remora(a_cfg)
    return a, b, app


def test_chain_with_a_retry_links_every_document(upstream, remora, collector):
    a, b, app = chain(upstream, remora, collector)
    c = Conn(a.egress)
    c.send(request("GET", "/fail-once/k/503", host="b.shop.local"))
    resp = c.read_response()
    assert resp.status == 200
    docs = wait_until(lambda: len(collector.documents()) >= 3 and collector.documents(),
                      what="A's segment and B's two segments")
    assert len(docs) == 3
    for d in docs:
        check_well_formed(d)
    trace = {d["trace_id"] for d in docs}
    assert len(trace) == 1, "one trace id across both proxies"
    a_doc = [d for d in docs if d["name"] == "shop/a"][0]
    b_docs = [d for d in docs if d["name"] == "shop/b"]
    assert len(b_docs) == 2, "B saw two requests: the failed try and the retry"
    ids = set()
    for d in docs:
        ids |= all_ids(d)
    for d in b_docs:
        assert d["parent_id"] in ids, "every parent id points at a document of the trace"
    sub = a_doc["subsegments"][0]
    assert sub["namespace"] == "remote" and sub["name"] == "b.shop.local"
    assert sub["http"]["request"]["traced"] is True
    attempts = sub["subsegments"]
    assert [x["http"]["response"]["status"] for x in attempts] == [503, 200]
    assert attempts[0]["fault"] is True and "fault" not in attempts[1]
    assert [x["annotations"]["attempt"] for x in attempts] == [1, 2]
    assert {d["parent_id"] for d in b_docs} == {sub["id"]}, "B's parent is A's egress subsegment"
    assert sorted(d["http"]["response"]["status"] for d in b_docs) == [200, 503]


def test_continuing_a_trace_sends_an_independent_subsegment(upstream, remora, collector):
    a, b, app = chain(upstream, remora, collector, retry=False)
    root, parent = "1-6b02b700-5a7fd9218046e718f6b8a9f2", "a05e2e5032ce4b7d"
    c = Conn(a.egress)
    c.send(request("GET", "/echo", host="b.shop.local",
                   headers=[("X-Amzn-Trace-Id", f"Root={root};Parent={parent};Sampled=1")]))
    assert c.read_response().status == 200
    docs = wait_until(lambda: len(collector.documents()) >= 2 and collector.documents(), what="2 docs")
    sub = [d for d in docs if d.get("type") == "subsegment"][0]
    assert sub["trace_id"] == root and sub["parent_id"] == parent
    assert sub["namespace"] == "remote"
    seg_b = [d for d in docs if d["name"] == "shop/b"][0]
    assert seg_b["trace_id"] == root and seg_b["parent_id"] == sub["id"]


HEADERS = [
    "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1",
    "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=0",
    "Sampled=1;Parent=53995c3f42cd8ad8;Root=1-5759e988-bd862e3fe1be46a994272793",
    " root=1-5759e988-bd862e3fe1be46a994272793; Parent=53995c3f42cd8ad8 ;SAMPLED=?;Lineage=a87bd80c:1|68fd508a:5;Self=1-abc-def",
    "Self=1-67891234-12456789abcdef012345678;Root=1-67891233-abcdef012345678912345678;CalledFrom=app",
    "Root=1-5759E988-BD862E3FE1BE46A994272793",
    "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=?",
    "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8",
    "Root=1-5759e988-bd862e3fe1be46a994272793;;;Parent=53995c3f42cd8ad8;",
    "Parent=53995c3f42cd8ad8;Sampled=1",
    "Root=1-abc-def;Sampled=1",
    "Root=1-5759e988-bd862e3fe1be46a99427279;Sampled=1",
    "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad;Sampled=1",
    "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8adz",
    "Root = 1-5759e988-bd862e3fe1be46a994272793 ; Sampled = 1",
    "garbage",
    "",
    "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=yes",
    "Root=1-5759e988-bd862e3fe1be46a994272793;Foo=bar=baz;Sampled=1",
]


def well_formed_root(v):
    return bool(re.match(r"^1-[0-9a-fA-F]{8}-[0-9a-fA-F]{24}$", v))


def test_header_parsing_agrees_with_the_xray_sdk():
    table = "\n".join(HEADERS) + "\n"
    node = subprocess.run(["node", os.path.join(ROOT, "tests", "xray", "parse.js")], input=table,
                          capture_output=True, text=True, timeout=30)
    assert node.returncode == 0, node.stderr
    ours = subprocess.run([os.path.join(os.environ["REMORA_TOOLS"], "trace_header_cli")],
                          input=table, capture_output=True, text=True, timeout=30)
    sdk = [json.loads(line) for line in node.stdout.splitlines()]
    rem = [json.loads(line) for line in ours.stdout.splitlines()]
    assert len(sdk) == len(rem) == len(HEADERS)
    for header, s, r in zip(HEADERS, sdk, rem):
        # Where the SDK's value is well formed, remora reads the same; where the SDK passes
        # a malformed Root or Parent through, remora drops it (a new trace id is made).
        root = s["root"].lower() if well_formed_root(s["root"]) else ""
        parent = s["parent"].lower() if re.match(r"^[0-9a-fA-F]{16}$", s["parent"]) else ""
        sampled = s["sampled"] if s["sampled"] in ("0", "1", "?") else ""
        assert (r["root"], r["parent"], r["sampled"]) == (root, parent, sampled), header


def test_sampling_reservoir_then_rate_over_10_seconds(mesh, collector):
    r, app, _ = mesh(workers=2, env=traced(collector, {"XRAY_SAMPLING_RATE": "0.05"}))
    conns = [Conn(r.ingress) for _ in range(4)]
    n, end = 0, time.monotonic() + 10
    while time.monotonic() < end:
        for c in conns:
            c.send(request("GET", "/echo", host="web"))
        for c in conns:
            assert c.read_response().status == 200
        n += len(conns)
    st = r.stats()
    sampled = st["remora.xray.sampled"]
    assert st["remora.xray.sampled"] + st["remora.xray.unsampled"] == n
    # 1 per second from the reservoir (10 or 11 seconds touched), then 5% of the rest.
    expect = 10.5 + 0.05 * (n - 10.5)
    sigma = (0.05 * 0.95 * n) ** 0.5
    print(f"{n} requests, {sampled} sampled, expected {expect:.1f} +- {4 * sigma:.1f}")
    assert abs(sampled - expect) <= 4 * sigma + 1
    wait_until(lambda: len(collector.documents()) == sampled, what="one document per sampled request")


def test_sampling_rules_manifest(mesh, collector, tmp_path):
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({
        "version": 2,
        "default": {"fixed_target": 0, "rate": 0.0},
        "rules": [
            {"description": "all", "host": "*", "http_method": "GET", "url_path": "/always/*",
             "fixed_target": 0, "rate": 1.0},
            {"description": "one", "host": "WEB*", "http_method": "*", "url_path": "/once?",
             "fixed_target": 1, "rate": 0.0},
        ]}))
    r, app, _ = mesh(env=traced(collector, {"XRAY_SAMPLING_RULE_MANIFEST": str(rules)}))
    c = Conn(r.ingress)
    for path in ["/always/a", "/always/b", "/never", "/never"]:
        c.send(request("GET", path, host="web.local"))
        assert c.read_response().status == 200
    # The "one" rule's reservoir is 1 per wall-clock second: /once1 and /once2 in the same
    # second give exactly one segment; across a second boundary, each may be sampled.
    t0 = int(time.time())
    for path in ["/once1", "/once2"]:
        c.send(request("GET", path, host="web.local"))
        assert c.read_response().status == 200
    same_second = int(time.time()) == t0
    send_marker(c, collector, host="web.local")
    urls = sorted(d["http"]["request"]["url"] for d in collector.documents()
                  if d["trace_id"] != MARKER_ROOT)
    assert urls[:2] == ["http://web.local/always/a", "http://web.local/always/b"], urls
    once = urls[2:]
    assert all(u in ("http://web.local/once1", "http://web.local/once2") for u in once), urls
    if same_second:
        assert once == ["http://web.local/once1"], urls
    else:
        assert 1 <= len(once) <= 2, urls


def test_a_missing_daemon_costs_only_a_counter(mesh):
    from conftest import free_port
    dead = free_port()
    r, app, _ = mesh(env={"ENABLE_ENVOY_XRAY_TRACING": "1", "XRAY_DAEMON_PORT": str(dead),
                          "XRAY_SAMPLING_RATE": "1"})
    c = Conn(r.ingress)
    for _ in range(20):
        c.send(request("GET", "/echo", host="web"))
        assert c.read_response().status == 200
    st = r.stats()
    assert st["remora.xray.sent"] + st["remora.xray.send_failed"] == 20
    assert st["remora.xray.send_failed"] >= 1


def test_tracing_off_passes_the_header_through_untouched(mesh, collector):
    r, app, _ = mesh()
    c = Conn(r.ingress)
    header = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
    c.send(request("GET", "/echo", host="web", headers=[("X-Amzn-Trace-Id", header)]))
    seen = {k.lower(): v for k, v in json.loads(c.read_response().body)["headers"]}
    assert seen["x-amzn-trace-id"] == header
    assert "remora.xray.sent" not in r.stats()


def test_bad_tracing_settings_refuse_to_start(tmp_path):
    from conftest import REMORA
    cfg = tmp_path / "m.json"
    cfg.write_text(json.dumps(mesh_config(8080, 8081)))
    out = subprocess.run([REMORA, "--config", str(cfg)], capture_output=True, text=True, timeout=10,
                         env={"PATH": os.environ["PATH"], "ENABLE_ENVOY_XRAY_TRACING": "1",
                              "XRAY_SAMPLING_RULE_MANIFEST": str(tmp_path / "none.json")})
    assert out.returncode == 1 and "cannot read the sampling rule manifest" in out.stderr
