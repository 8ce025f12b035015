"""gRPC through remora as a user sees it: real grpcio clients and servers (grpc_peers.py, raw
bytes, no protoc), the python3-h2 upstream (h2_peer_upstream.py) where the test must see the
wire (grpc-timeout as sent, RST_STREAM codes), and raw HTTP/2 clients (h2_wire.H2Client) where
the test must see the exact shape of remora's own answers (Trailers-Only).

Set-ups:
  - chain: the test as node a's app -> remora A's egress -> remora B's ingress -> B's app (a
    grpcio server), h2c or TLS (ALPN h2) between the remoras; B's node has a `grpc` listener, so
    both hops are HTTP/2. A's view of node b has B's ingress port as its listener port (the
    tracing chain does the same), so no DNS server is needed.
  - router: one remora's egress, a router with grpcRoutes to versions (grpcio servers), each a
    node with a `grpc` listener on its server's port.
  - retries: one node with two endpoints (Cloud Map SRV records served by Knot), v1 and v2.

The contract: grpcRoute matching (serviceName, methodName, metadata), exact weighted splits,
grpcRetryEvents on a Trailers-Only status only, App Mesh's default policy, deadline = min(route
perRequest, grpc-timeout) with the time left forwarded, Trailers-Only local replies (no route
12, no upstream 14, timeout 4), and Envoy's counters."""
import hashlib
import os
import threading
import time

import grpc
import pytest

from conftest import free_port, wait_until
from grpc_peers import bidi, channel, client_stream, grpc_frame, server_stream, unary
from h2_wire import H2Client

GRPC_HEADERS = [("content-type", "application/grpc"), ("te", "trailers")]


# ---- fixtures ----

@pytest.fixture
def channels():
    opened = []

    def open_(port, authority):
        ch = channel(port, authority)
        opened.append(ch)
        return ch

    yield open_
    for ch in opened:
        ch.close()


# ---- configs ----

def listener(port, protocol="grpc", tls=None, **extra):
    lst = {"portMapping": {"port": port, "protocol": protocol}}
    if tls:
        lst["tls"] = tls
    lst.update(extra)
    return lst


def node(name, port, protocol="grpc", tls=None, discovery=None, **extra):
    return {"virtualNodeName": name, "spec": {
        "listeners": [listener(port, protocol, tls, **extra)],
        "serviceDiscovery": discovery or {"dns": {"hostname": "127.0.0.1"}}}}


def server_tls(pki):
    return {"mode": "STRICT", "certificate": {"file": {
        "certificateChain": pki.b.cert, "privateKey": pki.b.key}}}


def client_policy(pki):
    return {"tls": {"validation": {"trust": {"file": {"certificateChain": pki.ca.cert}},
                                   "subjectAlternativeNames": {"match": {"exact": ["b.apps.local"]}}}}}


def chain(remora, app_port, pki=None, b_listener_extra=None, a_proxy=None):
    """(A, B): B serves node b (a grpc listener on app_port, TLS on it with `pki`), A is node
    a whose backend b.shop.local is node b, reached at B's ingress (with `pki`: over TLS,
    verified by a client policy naming B's SAN)."""
    tls = server_tls(pki) if pki else None
    b = remora({"mesh": {"meshName": "shop"},
                "virtualNodes": [node("b", app_port, tls=tls, **(b_listener_extra or {}))],
                "proxy": {"node": "b"}})
    a_node = {"virtualNodeName": "a", "spec": {
        "listeners": [listener(1, "http")],
        "backends": [{"virtualService": {"virtualServiceName": "b.shop.local"}}]}}
    if pki:
        a_node["spec"]["backendDefaults"] = {"clientPolicy": client_policy(pki)}
    a = remora({"mesh": {"meshName": "shop"},
                "virtualNodes": [a_node, node("b", b.ingress, tls=tls)],
                "virtualServices": [{"virtualServiceName": "b.shop.local", "spec": {
                    "provider": {"virtualNode": {"virtualNodeName": "b"}}}}],
                "proxy": dict({"node": "a"}, **(a_proxy or {}))})
    return a, b


def router_mesh(versions, routes, proxy=None, extra_nodes=()):
    """web -> cart.shop.local -> router cart (a grpc listener) -> `routes`; versions:
    {name: port} of grpc nodes."""
    nodes = [{"virtualNodeName": "web", "spec": {
        "listeners": [listener(1, "http")],
        "backends": [{"virtualService": {"virtualServiceName": "cart.shop.local"}}]}}]
    nodes += [node(n, p) for n, p in versions.items()]
    nodes += list(extra_nodes)
    return {
        "mesh": {"meshName": "shop", "spec": {"egressFilter": {"type": "DROP_ALL"}}},
        "virtualNodes": nodes,
        "virtualServices": [{"virtualServiceName": "cart.shop.local", "spec": {
            "provider": {"virtualRouter": {"virtualRouterName": "cart"}}}}],
        "virtualRouters": [{"virtualRouterName": "cart", "spec": {
            "listeners": [{"portMapping": {"port": 80, "protocol": "grpc"}}]}}],
        "routes": [dict(r, virtualRouterName="cart") for r in routes],
        "proxy": dict({"node": "web"}, **(proxy or {})),
    }


def grpc_route(name, weights, match=None, priority=None, retry=None, timeout=None):
    g = {"match": match if match is not None else {},
         "action": {"weightedTargets": [{"virtualNode": n, "weight": w} for n, w in weights]}}
    if retry:
        g["retryPolicy"] = retry
    if timeout:
        g["timeout"] = timeout
    spec = {"grpcRoute": g}
    if priority is not None:
        spec["priority"] = priority
    return {"routeName": name, "spec": spec}


def seconds(v):
    return {"unit": "s", "value": v}


def parse_grpc_timeout(value):
    """grpc-timeout (up to 8 digits and a unit) in seconds."""
    units = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
    assert value and value[-1] in units and value[:-1].isdigit() and len(value) <= 9, value
    return int(value[:-1]) * units[value[-1]]


def raw_grpc(port, path, authority="cart.shop.local", extra=(), msg=b"raw", timeout=10):
    """One gRPC call on a raw HTTP/2 connection (no client-side deadline): the stream as read,
    and the seconds it took."""
    c = H2Client(port)
    t = time.monotonic()
    try:
        st = c.request(path, "POST", body=grpc_frame(msg), headers=GRPC_HEADERS + list(extra),
                       authority=authority, timeout=timeout)
        return st, time.monotonic() - t
    finally:
        c.close()


def assert_trailers_only(st, code):
    """remora's local reply: one HEADERS with END_STREAM holding :status 200, content-type
    application/grpc, grpc-status and a percent-encoded grpc-message."""
    assert st.done and st.reset is None, (st.status, st.reset)
    h = dict(st.headers)
    assert st.status == 200, st.headers
    assert h.get("content-type", "").startswith("application/grpc"), st.headers
    assert h.get("grpc-status") == str(code), st.headers
    assert st.trailers is None and not st.body, (st.trailers, bytes(st.body))
    message = h.get("grpc-message", "")
    assert message, "a local reply says why"
    assert all(0x20 <= ord(ch) <= 0x7E for ch in message), message
    return message


def code_of(fn):
    try:
        fn()
    except grpc.RpcError as e:
        return e.code(), e.details()
    return grpc.StatusCode.OK, None


# ---- the four kinds of call through two remoras ----

@pytest.mark.parametrize("transport", ["h2c", "tls"])
def test_chain_carries_every_kind_of_call(pki, remora, grpc_server, channels, transport):
    app = grpc_server("b-app")
    a, b = chain(remora, app.port, pki if transport == "tls" else None)
    ch = channels(a.egress, "b.shop.local")
    # unary
    resp, md = unary(ch, "/test.Echo/Unary", b"hello", timeout=10)
    assert resp == b"b-app:Unary:hello" and md.get("x-server") == "b-app"
    # server streaming: 50 messages
    got = [m for m in server_stream(ch, "/test.Echo/ServerStream", b"50", timeout=10)]
    assert got == [f"b-app:{i}".encode() for i in range(50)]
    # client streaming: 40 messages of 64 KiB (2.5 MiB in all, past every window)
    msgs = [os.urandom(65536) for _ in range(40)]
    digest = hashlib.sha256(b"".join(msgs)).hexdigest()
    resp, md = client_stream(ch, "/test.Echo/ClientStream", msgs, timeout=20)
    assert resp == f"b-app:40:{digest}".encode()
    # bidirectional: each answer comes before the next message is sent (a real ping-pong)
    answers, sent = [], threading.Semaphore(0)

    def requests():
        for i in range(20):
            yield f"m{i}".encode()
            assert sent.acquire(timeout=10), "no answer to the previous message"

    call = bidi(ch, "/test.Echo/Bidi", requests(), timeout=20)
    for m in call:
        answers.append(m)
        sent.release()
    assert answers == [f"b-app:m{i}".encode() for i in range(20)]
    assert app.count() == 4
    a_cluster = f"cluster.cds_egress_shop_b_grpc_{b.ingress}"
    sa, sb = a.stats(), b.stats()
    assert sa[f"{a_cluster}.upstream_rq_total"] == 4
    assert sa[f"{a_cluster}.upstream_cx_http2_total"] >= 1
    assert sb["http.ingress.downstream_cx_http2_total"] >= 1, "A spoke HTTP/2 to B"
    assert sb["http.ingress.downstream_rq_2xx"] == 4
    assert sb[f"cluster.cds_ingress_shop_b_grpc_{app.port}.upstream_cx_http2_total"] >= 1
    if transport == "tls":
        assert sb[f"listener.0.0.0.0_{b.ingress}.ssl.handshake"] >= 1
        assert sa[f"{a_cluster}.ssl.handshake"] >= 1


# ---- grpcRoute matching ----

def test_grpc_route_by_service_and_method(remora, grpc_server, channels):
    v1, v2, v3 = grpc_server("v1"), grpc_server("v2"), grpc_server("v3")
    r = remora(router_mesh({"v1": v1.port, "v2": v2.port, "v3": v3.port}, [
        grpc_route("special", [("v3", 1)], priority=0,
                   match={"serviceName": "shop.Cart", "methodName": "Special"}),
        grpc_route("cart", [("v1", 1)], priority=1, match={"serviceName": "shop.Cart"}),
        grpc_route("orders", [("v2", 1)], priority=2, match={"serviceName": "shop.Orders"}),
    ]))
    ch = channels(r.egress, "cart.shop.local")
    for path, server in (("/shop.Cart/Get", "v1"), ("/shop.Cart/Put", "v1"),
                         ("/shop.Cart/Special", "v3"), ("/shop.Orders/Get", "v2"),
                         ("/shop.Orders/Special", "v2")):
        resp, md = unary(ch, path, timeout=10)
        assert md.get("x-server") == server, (path, md)
        assert resp.startswith(server.encode() + b":"), (path, resp)
    # The service name is the whole first segment, case-sensitive: no prefix matching.
    for path in ("/shop.CartX/Get", "/shop.cart/Get", "/shop/Cart/Get"):
        code, details = code_of(lambda: unary(ch, path, timeout=10))
        assert code == grpc.StatusCode.UNIMPLEMENTED, (path, code, details)
    assert (v1.count(), v2.count(), v3.count()) == (2, 2, 1)


METADATA_CASES = [
    # (metadata sent, the version that must answer)
    ([("x-tier", "gold")], "v2"),          # exact
    ([("x-tier", "silver")], "v1"),
    ([("x-user", "beta-42")], "v2"),       # prefix beta-
    ([("x-user", "alpha-42")], "v1"),
    ([("x-file", "report.pdf")], "v2"),    # suffix .pdf
    ([("x-file", "report.pdfx")], "v1"),
    ([("x-code", "123-ok")], "v2"),        # regex ^[0-9]{3}-ok$
    ([("x-code", "12-ok")], "v1"),
    ([("x-build", "150")], "v2"),          # range [100, 200)
    ([("x-build", "100")], "v2"),
    ([("x-build", "200")], "v1"),
    ([("x-build", "99")], "v1"),
    ([("x-region", "us")], "v2"),          # exact eu, inverted
    ([("x-region", "eu")], "v1"),
    ([("x-a", "1"), ("x-b", "2")], "v2"),  # two matchers: both must match
    ([("x-a", "1")], "v1"),
    ([("x-b", "2")], "v1"),
    ([], "v1"),
]


def test_grpc_route_by_metadata(remora, grpc_server, channels):
    v1, v2 = grpc_server("v1"), grpc_server("v2")
    md = lambda *ms: {"serviceName": "shop.Cart", "metadata": list(ms)}
    m = lambda name, match, invert=None: dict({"name": name, "match": match},
                                              **({"invert": invert} if invert is not None else {}))
    routes = [
        grpc_route("exact", [("v2", 1)], priority=1, match=md(m("x-tier", {"exact": "gold"}))),
        grpc_route("prefix", [("v2", 1)], priority=2, match=md(m("x-user", {"prefix": "beta-"}))),
        grpc_route("suffix", [("v2", 1)], priority=3, match=md(m("x-file", {"suffix": ".pdf"}))),
        grpc_route("regex", [("v2", 1)], priority=4,
                   match=md(m("x-code", {"regex": "^[0-9]{3}-ok$"}))),
        grpc_route("range", [("v2", 1)], priority=5,
                   match=md(m("x-build", {"range": {"start": 100, "end": 200}}))),
        grpc_route("invert", [("v2", 1)], priority=6,
                   match=md(m("x-region", {"exact": "eu"}, invert=True))),
        grpc_route("both", [("v2", 1)], priority=7,
                   match=md(m("x-a", {"exact": "1"}), m("x-b", {"exact": "2"}))),
        grpc_route("rest", [("v1", 1)], priority=100, match={"serviceName": "shop.Cart"}),
    ]
    r = remora(router_mesh({"v1": v1.port, "v2": v2.port}, routes))
    ch = channels(r.egress, "cart.shop.local")
    wrong = []
    for metadata, want in METADATA_CASES:
        # x-region is absent from every other case: the inverted matcher takes those, unless
        # the request carries x-region; so each case other than the x-region ones sends
        # x-region: eu, which the inverted matcher refuses.
        sent = list(metadata) if any(k == "x-region" for k, _ in metadata) else \
            list(metadata) + [("x-region", "eu")]
        _, got = unary(ch, "/shop.Cart/Get", metadata=sent, timeout=10)
        if got.get("x-server") != want:
            wrong.append((sent, want, got.get("x-server")))
    assert not wrong, wrong
    # An inverted matcher takes a request that lacks the field (docs/routing.md).
    _, got = unary(ch, "/shop.Cart/Get", timeout=10)
    assert got.get("x-server") == "v2"


def test_weighted_canary_is_exact(remora, grpc_server, channels):
    v1, v2 = grpc_server("v1"), grpc_server("v2")
    r = remora(router_mesh({"v1": v1.port, "v2": v2.port}, [
        grpc_route("canary", [("v1", 90), ("v2", 10)], match={"serviceName": "shop.Cart"})]))
    ch = channels(r.egress, "cart.shop.local")
    seen = []
    for i in range(100):
        resp, md = unary(ch, "/shop.Cart/Get", f"{i}".encode(), timeout=10)
        seen.append(md["x-server"])
        assert resp == f"{md['x-server']}:Get:{i}".encode()
    # Smooth weighted round-robin: 9/1 after the gcd, exactly one v2 in every 10 in a row.
    assert seen.count("v1") == 90 and seen.count("v2") == 10
    for start in range(0, 100, 10):
        assert seen[start:start + 10].count("v2") == 1, seen
    st = r.stats()
    assert st["remora.route.cart.canary.v1.picks"] == 90
    assert st["remora.route.cart.canary.v2.picks"] == 10
    assert (v1.count(), v2.count()) == (90, 10)


# ---- retries ----

RETRY_UNAVAILABLE = {"maxRetries": 2, "perRetryTimeout": seconds(5),
                     "grpcRetryEvents": ["unavailable"]}


def two_endpoints(knot, grpc_server, remora, retry, proxy=None):
    """Node cart with two endpoints (SRV records): v1 and v2, both grpcio servers."""
    v1, v2 = grpc_server("v1"), grpc_server("v2")
    k = knot([f"cart 1 SRV 1 1 {v1.port} i-1.cart.ns.local.", "i-1.cart 1 A 127.0.0.1",
              f"cart 1 SRV 1 1 {v2.port} i-2.cart.ns.local.", "i-2.cart 1 A 127.0.0.1"])
    cart = node("cart", 8080, discovery={"awsCloudMap": {"namespaceName": "ns.local",
                                                         "serviceName": "cart"}})
    cfg = router_mesh({}, [grpc_route("r", [("cart", 1)], match={"serviceName": "shop.Cart"},
                                      retry=retry)],
                      proxy=dict({"dns": {"servers": [k.server]}}, **(proxy or {})),
                      extra_nodes=[cart])
    r = remora(cfg)
    wait_until(lambda: r.stats().get("cluster.cds_egress_shop_cart_grpc_8080.membership_total") == 2,
               what="both endpoints discovered")
    return r, v1, v2


@pytest.mark.parametrize("policy", ["explicit", "app-mesh-default", "none"])
def test_unavailable_is_retried_on_the_other_endpoint(knot, grpc_server, remora, channels, policy):
    """v1 answers UNAVAILABLE (Trailers-Only), v2 answers. With grpcRetryEvents unavailable,
    or App Mesh's default policy on a route without one, every call that tried v1 first is
    retried on v2; with the default policy turned off it fails."""
    r, v1, v2 = two_endpoints(knot, grpc_server, remora,
                              RETRY_UNAVAILABLE if policy == "explicit" else None,
                              proxy={"defaultRetryPolicy": False} if policy == "none" else None)
    ch = channels(r.egress, "cart.shop.local")
    n, failed = 10, 0
    for i in range(n):
        code, _ = code_of(lambda: unary(ch, "/shop.Cart/Get", metadata=[("x-fail", "v1")],
                                        timeout=10))
        if policy == "none":
            assert code in (grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE)
            failed += code != grpc.StatusCode.OK
        else:
            assert code == grpc.StatusCode.OK, code
    st = r.stats()
    cl = "cluster.cds_egress_shop_cart_grpc_8080"
    assert v1.count() >= 1, "v1 was never tried first: the test proves nothing"
    if policy == "none":
        assert failed == v1.count()
        assert v2.count() == n - failed
        assert st.get(f"{cl}.upstream_rq_retry", 0) == 0
    else:
        assert v2.count() == n
        assert st[f"{cl}.upstream_rq_retry"] == v1.count()
        assert st[f"{cl}.upstream_rq_total"] == n + v1.count()


def test_status_in_trailers_after_a_message_is_not_retried(knot, grpc_server, remora, channels):
    r, v1, v2 = two_endpoints(knot, grpc_server, remora, RETRY_UNAVAILABLE)
    ch = channels(r.egress, "cart.shop.local")
    for i in range(4):
        got, code = [], None
        try:
            for m in server_stream(ch, "/shop.Cart/ServerStream", b"5",
                                   metadata=[("x-fail-after-first", "*")], timeout=10):
                got.append(m)
        except grpc.RpcError as e:
            code = e.code()
        assert code == grpc.StatusCode.UNAVAILABLE and len(got) == 1, (code, got)
        assert v1.count() + v2.count() == i + 1, "the call was tried exactly once"
    st = r.stats()
    assert st.get("cluster.cds_egress_shop_cart_grpc_8080.upstream_rq_retry", 0) == 0


# ---- deadlines ----

def test_client_deadline_shorter_than_the_route_timeout(remora, h2_peer):
    """grpc-timeout 1 s, route timeout 10 s: the client gets Trailers-Only DEADLINE_EXCEEDED
    from remora at about 1 s; the upstream was told the time left and saw RST_STREAM(CANCEL)."""
    peer = h2_peer("slow")
    r = remora(router_mesh({"slow": peer.port}, [
        grpc_route("slow", [("slow", 1)], match={"serviceName": "test.Slow"},
                   timeout={"perRequest": seconds(10)})]))
    st, took = raw_grpc(r.egress, "/test.Slow/Hold",
                        extra=[("grpc-timeout", "1000m"), ("x-hold-ms", "8000")], timeout=12)
    assert_trailers_only(st, 4)
    assert took < 5, f"DEADLINE_EXCEEDED after {took:.1f} s: not the client's deadline"
    rec = wait_until(lambda: [x for x in peer.stats()["records"] if x["path"] == "/test.Slow/Hold"
                              and x["reset"] is not None], timeout=5,
                     what="the upstream stream reset")[0]
    assert rec["reset"] == 8, f"the upstream stream ended with {rec['reset']}, not CANCEL"
    sent = dict((k, v) for k, v in rec["headers"]).get("grpc-timeout")
    assert sent is not None, "the upstream was not told the deadline"
    assert 0 < parse_grpc_timeout(sent) <= 1.0, sent
    assert r.stats().get("cluster.cds_egress_shop_slow_grpc_%d.upstream_rq_timeout" % peer.port, 0) == 1


def test_route_timeout_shorter_than_the_client_deadline(remora, grpc_server, channels):
    v1 = grpc_server("v1")
    r = remora(router_mesh({"v1": v1.port}, [
        grpc_route("r", [("v1", 1)], match={"serviceName": "shop.Cart"},
                   timeout={"perRequest": seconds(1)})]))
    ch = channels(r.egress, "cart.shop.local")
    t = time.monotonic()
    code, _ = code_of(lambda: unary(ch, "/shop.Cart/Sleep", b"8000", timeout=10))
    took = time.monotonic() - t
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED, code
    assert took < 5, f"{took:.1f} s: the route's 1 s timeout was not applied"
    rec = wait_until(lambda: [c for c in v1.calls if c["done"]], timeout=5,
                     what="the upstream call ended")[0]
    assert rec["cancelled"], "the upstream call went on after the deadline"
    assert rec["ended_at"] - rec["at"] < 5


def test_the_upstream_is_told_the_deadline_in_force(remora, grpc_server, channels):
    """The contract: deadline = min(route perRequest, grpc-timeout), and the upstream receives
    grpc-timeout with the time left. With a route timeout of 1 s and a client deadline of 10 s
    the deadline in force is 1 s: an upstream told 10 s would work on past remora's cancel."""
    v1 = grpc_server("v1")
    r = remora(router_mesh({"v1": v1.port}, [
        grpc_route("r", [("v1", 1)], match={"serviceName": "shop.Cart"},
                   timeout={"perRequest": seconds(1)})]))
    ch = channels(r.egress, "cart.shop.local")
    unary(ch, "/shop.Cart/Get", timeout=10)
    left = v1.calls[0]["time_remaining"]
    assert left is not None and left <= 1.5, \
        f"the upstream was told {left} s left, not the route's 1 s"


# ---- local replies ----

def test_unrouted_method_is_unimplemented(remora, grpc_server, channels):
    v1 = grpc_server("v1")
    r = remora(router_mesh({"v1": v1.port}, [
        grpc_route("cart", [("v1", 1)], match={"serviceName": "shop.Cart", "methodName": "Get"})]))
    st, _ = raw_grpc(r.egress, "/shop.Cart/Delete")
    message = assert_trailers_only(st, 12)
    print("grpc-message:", message)
    ch = channels(r.egress, "cart.shop.local")
    code, details = code_of(lambda: unary(ch, "/shop.Other/Get", timeout=10))
    assert code == grpc.StatusCode.UNIMPLEMENTED and details, (code, details)
    assert unary(ch, "/shop.Cart/Get", timeout=10)[1]["x-server"] == "v1"
    assert v1.count() == 1


def test_dead_upstream_is_unavailable(remora, channels):
    dead = free_port()
    r = remora(router_mesh({"dead": dead}, [
        grpc_route("dead", [("dead", 1)], match={"serviceName": "shop.Cart"})]))
    st, took = raw_grpc(r.egress, "/shop.Cart/Get")
    assert_trailers_only(st, 14)
    ch = channels(r.egress, "cart.shop.local")
    code, details = code_of(lambda: unary(ch, "/shop.Cart/Get", timeout=10))
    assert code == grpc.StatusCode.UNAVAILABLE and details, (code, details)
    st = r.stats()
    assert st[f"cluster.cds_egress_shop_dead_grpc_{dead}.upstream_cx_connect_fail"] >= 2


# ---- ingress limits ----

def test_ingress_grpc_timeout_and_max_requests(remora, grpc_server, channels):
    """The node's listener timeout.grpc.perRequest and connectionPool.grpc.maxRequests apply on
    ingress: at most maxRequests calls in flight to the local app; with no pending limit for
    http2/grpc pools (docs/config.md), a call past it waits for a slot, then goes."""
    app = grpc_server("app")
    cfg = {"mesh": {"meshName": "shop"}, "virtualNodes": [node(
        "b", app.port, timeout={"grpc": {"perRequest": seconds(1)}},
        connectionPool={"grpc": {"maxRequests": 1}})], "proxy": {"node": "b"}}
    r = remora(cfg)
    ch = channels(r.ingress, "b.shop.local")
    sleep = ch.unary_unary("/t.S/Sleep", request_serializer=None, response_deserializer=None)
    first = sleep.future(b"500", timeout=10)
    wait_until(lambda: app.count("Sleep") == 1, what="the first call at the app")
    second = sleep.future(b"100", timeout=10)
    cl = f"cluster.cds_ingress_shop_b_grpc_{app.port}"
    wait_until(lambda: r.stats().get(f"{cl}.upstream_rq_pending_total", 0) == 1,
               what="the second call waiting for a slot")
    assert first.result(timeout=10) == b"app:slept"
    assert second.result(timeout=10) == b"app:slept"
    one, two = sorted(app.calls, key=lambda c: c["at"])
    assert two["at"] >= one["ended_at"], "two calls were in flight at the app at once"
    # The listener's 1 s, not the client's 10 s. The app is told the deadline in force too, so
    # either remora's timer or the app's own deadline answers first: no counter is asserted.
    t = time.monotonic()
    code, _ = code_of(lambda: unary(ch, "/t.S/Sleep", b"5000", timeout=10))
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() - t < 4, code
    assert app.calls[-1]["time_remaining"] is not None and app.calls[-1]["time_remaining"] <= 1.5
    assert r.stats().get(f"{cl}.upstream_rq_pending_overflow", 0) == 0


# ---- metrics ----

def test_metrics_count_exactly_the_calls_made(remora, grpc_server, channels):
    app = grpc_server("b-app")
    a, b = chain(remora, app.port)
    ch = channels(a.egress, "b.shop.local")
    n = 25
    for i in range(n):
        unary(ch, "/test.Echo/Unary", b"x", timeout=10)
    fails = 3
    for i in range(fails):
        code, _ = code_of(lambda: unary(ch, "/test.Echo/Unary", metadata=[("x-fail", "*"),
                                                                          ("x-fail-code", "NOT_FOUND")],
                                        timeout=10))
        assert code == grpc.StatusCode.NOT_FOUND
    total = n + fails
    a_cl = f"cds_egress_shop_b_grpc_{b.ingress}"
    b_cl = f"cds_ingress_shop_b_grpc_{app.port}"
    sa, sb = a.stats(), b.stats()
    # A gRPC error is an HTTP 200: the classes count HTTP statuses, as Envoy's do.
    assert sa[f"cluster.{a_cl}.upstream_rq_total"] == total
    assert sa[f"cluster.{a_cl}.upstream_rq_2xx"] == total
    assert 1 <= sa[f"cluster.{a_cl}.upstream_cx_http2_total"] <= 2
    assert sa[f"cluster.{a_cl}.upstream_cx_total"] == sa[f"cluster.{a_cl}.upstream_cx_http2_total"]
    assert sa["http.egress.downstream_rq_2xx"] == total
    assert sa["http.egress.downstream_cx_http2_total"] == 1
    assert sb[f"cluster.{b_cl}.upstream_rq_total"] == total
    assert sb[f"cluster.{b_cl}.upstream_rq_2xx"] == total
    assert 1 <= sb[f"cluster.{b_cl}.upstream_cx_http2_total"] <= 2
    assert sb["http.ingress.downstream_rq_2xx"] == total
    assert app.count() == total
    _, prom = a.admin("/stats/prometheus")
    lines = [ln for ln in prom.splitlines() if ln.startswith("envoy_cluster_upstream_cx_http2_total{")
             and f'envoy_cluster_name="{a_cl}"' in ln]
    assert len(lines) == 1, lines
    assert float(lines[0].rsplit(" ", 1)[1]) == sa[f"cluster.{a_cl}.upstream_cx_http2_total"]
    lines = [ln for ln in prom.splitlines() if ln.startswith("envoy_cluster_upstream_rq_total{")
             and f'envoy_cluster_name="{a_cl}"' in ln]
    assert len(lines) == 1 and float(lines[0].rsplit(" ", 1)[1]) == total, lines
