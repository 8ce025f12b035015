"""What an attacker or a misbehaving peer can do to remora, and what they must see.

Malformed and ambiguous requests (RFC 9112 sections 2.2, 3, 5, 6, 7) are refused with one
response and a closed connection, and not one byte of them reaches the upstream, which is a
raw socket that records everything it receives. Connect failures that happen at once,
clients that never read, upstreams that dribble, idle and half-closed tunnels, and reloads at
bad moments must leave remora alive, bounded in memory and correct.
"""
import copy
import json
import os
import re
import select
import socket
import time

import pytest

from conftest import free_port, mesh_config, wait_until
from hostile_peers import RawUpstream, fast_fail_address, parse_requests, recv_until_closed, settle
from rawhttp import Conn, Response, request
from test_tracing import Collector, check_well_formed

MIB = 1024  # in KiB, the unit of Remora.rss_kib
# AddressSanitizer's shadow memory and quarantine inflate RSS; memory bounds are about remora's
# own buffers, so they are checked in the plain and UBSan builds (as in test_streaming.py).
CHECK_RSS = os.environ.get("REMORA_SANITIZER", "") != "address"

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: cart.shop.local\r\n\r\n"
VALID = b"GET /second HTTP/1.1\r\nHost: cart.shop.local\r\n\r\n"
CHUNKED_POST = b"POST /upload HTTP/1.1\r\nHost: cart.shop.local\r\nTransfer-Encoding: chunked\r\n\r\n"


# ---- fixtures and helpers ----

@pytest.fixture
def raw_upstream():
    started = []

    def start(handler=None):
        u = RawUpstream(handler)
        started.append(u)
        return u

    yield start
    for u in started:
        u.stop()


@pytest.fixture
def raw_mesh(raw_upstream, remora):
    """mesh_config with both the ingress app and the egress backend as recording upstreams."""

    def start(app_handler=None, backend_handler=None, listener_timeout=None, **kw):
        app, backend = raw_upstream(app_handler), raw_upstream(backend_handler)
        r = remora(mesh_config(app.port, backend.port, listener_timeout=listener_timeout), **kw)
        return r, app, backend

    return start


@pytest.fixture
def collector():
    c = Collector()
    yield c
    c.stop()


def answer(c, timeout=5.0):
    """The next response on `c`, or a sentence saying what came instead."""
    c.sock.settimeout(timeout)
    try:
        return c.read_response()
    except EOFError:
        return f"connection closed with no response (bytes: {c.buf[:200]!r})"
    except ConnectionResetError:
        return "connection reset with no response"
    except socket.timeout:
        return f"no response within {timeout} s (bytes: {c.buf[:200]!r})"


def describe(got):
    if isinstance(got, Response):
        return f"{got.status} {got.reason} {got.body[:200]!r}"
    return got


def refused(r, ups, data, status=400, within=None):
    """Sends `data` to the egress listener on a new connection and checks the contract for a
    refused request: exactly one response with `status`, then remora closes the connection,
    (once remora has stopped) the upstreams never saw a connection or a byte, and
    http.egress.downstream_cx_protocol_error rose by exactly 1."""
    stat = "http.egress.downstream_cx_protocol_error"
    before = r.stats()[stat]
    c = Conn(r.egress, timeout=5)
    try:
        start = time.monotonic()
        c.send(data)
        got = answer(c)
        elapsed = time.monotonic() - start
        assert isinstance(got, Response) and got.status == status, \
            f"expected {status} for {data!r}, saw: {describe(got)}"
        if within is not None:
            assert elapsed < within, f"the {status} took {elapsed:.2f} s"
        assert c.closed_by_peer(timeout=3), f"connection left open after the {status}"
        assert c.buf == b"", f"bytes after the {status}: {c.buf[:300]!r}"
    finally:
        c.close()
    try:
        wait_until(lambda: r.stats()[stat] > before, timeout=2, what=stat)
    except AssertionError:
        pass
    counted = r.stats()[stat] - before
    settle(r, *ups)
    for u in ups:
        assert u.connections() == 0 and u.received() == b"", \
            f"the upstream received {u.received()[:300]!r}"
    assert counted == 1, f"{stat} rose by {counted}, not 1"


def request_head(conn):
    """For handlers: reads until the end of a request head; False if the peer closed first."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = conn.recv()
        if not data:
            return False
        buf += data
    return True


def exchange(port, data, timeout=5.0):
    """Sends `data` on a new connection; returns the first answer (see answer())."""
    c = Conn(port, timeout=timeout)
    try:
        c.send(data)
        return answer(c, timeout)
    finally:
        c.close()


def write_atomically(path, cfg):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(cfg, f)
    os.rename(tmp, path)


def parsed(collector):
    """Every datagram received as a document; a datagram that is not the header line and one
    JSON document fails the test, showing its bytes."""
    docs = []
    for d in list(collector.datagrams):
        try:
            head, _, body = d.partition(b"\n")
            assert json.loads(head) == {"format": "json", "version": 1}
            docs.append(json.loads(body))
        except (ValueError, AssertionError):
            raise AssertionError(f"malformed datagram: {d[:600]!r}") from None
    return docs


def chunk(data):
    return b"%x\r\n" % len(data) + data + b"\r\n"


# ---- 1. a CR not followed by LF ----

@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\rX\r\nHost: cart.shop.local\r\n\r\n",
    b"GET /a\rb HTTP/1.1\r\nHost: cart.shop.local\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: cart.shop.local\rX: b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: cart.shop.local\r\nX-A: 1\r" + SMUGGLED,
], ids=["request-line", "target", "host-field", "field-then-smuggled"])
def test_bare_cr_in_request_head_is_400_and_closed(raw_mesh, data):
    """A lone CR is no line ending (RFC 9112 section 2.2): a peer that splits on it would see
    lines remora did not, the root of request smuggling."""
    r, app, backend = raw_mesh()
    refused(r, [app, backend], data)


@pytest.mark.parametrize("body", [
    b"5\rX\r\nhello\r\n0\r\n\r\n",
    b"5\r\nhello\rX0\r\n\r\n",
    b"5\r\nhello\r\n0\r\nX-T: a\rb\r\n\r\n",
], ids=["chunk-size-line", "after-chunk-data", "trailer-line"])
def test_bare_cr_in_chunked_body_never_completes_a_request_upstream(raw_mesh, body):
    """A bare CR inside chunked framing: the head may already be on its way upstream, but the
    body is never completed there and the request smuggled after it never leaves remora. As
    the upstream has not answered, the client gets a 400; then the connection is closed."""
    r, app, backend = raw_mesh()
    c = Conn(r.egress, timeout=5)
    try:
        c.send(CHUNKED_POST + body + SMUGGLED)
        got = answer(c)
        assert isinstance(got, Response) and got.status == 400, f"saw: {describe(got)}"
        assert c.closed_by_peer(timeout=3), "connection left open after the framing error"
        assert c.buf == b"", f"bytes after the 400: {c.buf[:300]!r}"
    finally:
        c.close()
    settle(r, app, backend)
    seen = backend.received()
    assert b"/smuggled" not in seen, seen
    complete, _ = parse_requests(seen)
    assert complete == [], f"the upstream got a complete request: {complete}"


# ---- 2. field names that are not tokens, obs-fold ----

@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\nHost: cart.shop.local\r\nHo st: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: cart.shop.local\r\nX-\x01: y\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost : cart.shop.local\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: cart.shop.local\r\nX-Forwarded-For : 10.0.0.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: cart.shop.local\r\nX-A: b\r\n c\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: cart.shop.local\r\nX-A: b\r\n\tTransfer-Encoding: chunked\r\n\r\n",
], ids=["space-in-name", "ctl-in-name", "space-before-colon-host", "space-before-colon",
        "obs-fold", "obs-fold-tab"])
def test_field_name_not_a_token_or_obs_fold_is_400_and_closed(raw_mesh, data):
    """Field names are tokens; whitespace before the colon and obs-fold must be rejected
    (RFC 9112 sections 5.1, 5.2), or a downstream parser reads a different header."""
    r, app, backend = raw_mesh()
    refused(r, [app, backend], data)


# ---- 3. Host ----

@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: cart.shop.local\r\nHost: cart.shop.local\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a@b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: cart.shop.local@evil\r\n\r\n",
], ids=["missing", "twice", "space", "slash", "at", "userinfo"])
def test_missing_duplicate_or_invalid_host_is_400_and_closed(raw_mesh, data):
    """HTTP/1.1 needs exactly one valid Host (RFC 9112 section 3.2): without it remora
    cannot route, and a lax reading lets one request be routed as another."""
    r, app, backend = raw_mesh()
    refused(r, [app, backend], data)


def test_valid_hosts_with_ports_and_ip_literals_are_routed(raw_mesh):
    """The strict Host check must not refuse valid forms: name:port reaches the backend, an
    IPv6 literal (with or without a port) is parsed and, being no backend, is a 404."""
    r, app, backend = raw_mesh()
    cases = [("cart.shop.local:8081", 200), ("[::1]:8080", 404), ("[::1]", 404),
             ("127.0.0.1:9", 404), ("billing.shop.local:80", 404)]
    seen = {h: describe(exchange(r.egress, request("GET", "/x", host=h))) for h, _ in cases}
    assert {h: s.split(" ")[0] for h, s in seen.items()} == {h: str(s) for h, s in cases}, seen
    assert backend.connections() >= 1
    assert len(parse_requests(backend.received())[0]) == 1


# ---- 4. Connection naming framing fields ----

def test_connection_naming_content_length_does_not_unframe_the_body(raw_mesh):
    """`Connection: Content-Length` must not strip the body's framing: forwarding the body
    without its length would make it the upstream's next request."""
    r, app, backend = raw_mesh()
    got = exchange(r.egress, b"POST /upload HTTP/1.1\r\nHost: cart.shop.local\r\n"
                             b"Connection: Content-Length\r\nContent-Length: %d\r\n\r\n"
                   % len(SMUGGLED) + SMUGGLED)
    assert isinstance(got, Response) and got.status == 200, describe(got)
    settle(r, app, backend)
    reqs, rest = parse_requests(backend.received())
    assert [q.target for q in reqs] == ["/upload"], reqs
    assert reqs[0].header_all("content-length") == [str(len(SMUGGLED))], reqs[0].headers
    assert reqs[0].body == SMUGGLED and rest == b""


def test_connection_naming_transfer_encoding_does_not_unframe_the_body(raw_mesh):
    """`Connection: Transfer-Encoding` on a chunked request: the body stays one body."""
    r, app, backend = raw_mesh()
    got = exchange(r.egress, b"POST /upload HTTP/1.1\r\nHost: cart.shop.local\r\n"
                             b"Connection: Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n\r\n"
                   + chunk(SMUGGLED) + b"0\r\n\r\n")
    assert isinstance(got, Response) and got.status == 200, describe(got)
    settle(r, app, backend)
    reqs, rest = parse_requests(backend.received())
    assert [q.target for q in reqs] == ["/upload"], reqs
    assert reqs[0].body == SMUGGLED and rest == b""


def test_connection_naming_host_keeps_host(raw_mesh):
    """`Connection: Host` must not remove the Host the upstream needs."""
    r, app, backend = raw_mesh()
    got = exchange(r.egress, b"GET /echo HTTP/1.1\r\nHost: cart.shop.local\r\nConnection: Host\r\n\r\n")
    assert isinstance(got, Response) and got.status == 200, describe(got)
    settle(r, app, backend)
    reqs, rest = parse_requests(backend.received())
    assert len(reqs) == 1 and rest == b"", reqs
    assert reqs[0].header_all("host") == ["cart.shop.local"], reqs[0].headers


def head_lines(data):
    """The lines of the first head in `data` (split at CRLF only), and what follows it."""
    end = data.index(b"\r\n\r\n")
    return data[:end].split(b"\r\n"), data[end + 4:]


def test_field_lines_are_forwarded_as_name_colon_space_value_crlf(raw_mesh):
    """Whatever optional whitespace and line ends a field line came with (RFC 9112 section 5:
    HTAB or no space after the colon, trailing whitespace, a lone LF, an empty value), each
    field is sent on as exactly `name: value` CRLF, in order, hop-by-hop fields left out, both
    ways; remora's own fields follow the client's. (remora copies runs of received field lines
    at once and puts the separators back, so every kind of line is checked here at its byte
    positions, next to the others.)"""
    response = (b"HTTP/1.1 200 OK\r\nServer:\tup\r\nX-A:a\r\nConnection: keep-alive, X-Drop\r\n"
                b"X-Drop: d\r\nX-B: b \t \nContent-Length: 3\r\nX-Empty:\r\nX-C: c\r\n\r\nok\n")

    def handler(conn):
        if not request_head(conn):
            return
        conn.sendall(response)
        while conn.recv():
            pass

    r, app, backend = raw_mesh(backend_handler=handler)
    c = Conn(r.egress, timeout=5)
    c.send(b"GET /forms?q=1 HTTP/1.1\r\nHost: cart.shop.local\r\nX-Tab:\tv1\r\nX-None:v2\r\n"
           b"X-Trail: v3  \t\r\nX-Empty:\r\nX-Empty2: \r\nConnection: X-Hop\r\nX-Hop: gone\r\n"
           b"X-Lf: v4\nX-Forwarded-For: 10.0.0.9\r\nX-Last: v5\r\n\r\n")
    c.sock.settimeout(5)
    raw = b""
    while b"ok\n" not in raw:
        data = c.sock.recv(65536)
        assert data, f"closed before the whole response: {raw!r}"
        raw += data
    c.close()
    lines, body = head_lines(raw)
    assert body == b"ok\n"
    assert lines == [b"HTTP/1.1 200 OK", b"Server: up", b"X-A: a", b"X-B: b", b"X-Empty: ",
                     b"X-C: c", b"Content-Length: 3"], lines
    settle(r, app, backend)
    lines, rest = head_lines(backend.received())
    assert rest == b"", rest
    assert len(lines) == 12 and re.fullmatch(rb"X-Request-Id: [0-9a-f-]{36}", lines[11]), lines
    assert lines[:11] == [b"GET /forms?q=1 HTTP/1.1", b"Host: cart.shop.local", b"X-Tab: v1",
                          b"X-None: v2", b"X-Trail: v3", b"X-Empty: ", b"X-Empty2: ", b"X-Lf: v4",
                          b"X-Last: v5", b"X-Forwarded-For: 10.0.0.9, 127.0.0.1",
                          b"X-Forwarded-Proto: http"], lines


# ---- 5, 6. Transfer-Encoding and chunk extensions ----

def test_transfer_coding_before_chunked_is_forwarded_not_dropped(raw_mesh):
    """`gzip, chunked`: remora forwards the coding (it does not decode it) and re-frames the
    body; dropping the gzip would hand the app compressed bytes as if they were plain."""
    r, app, backend = raw_mesh()
    payload = b"\x1f\x8b\x08\x00" + bytes(range(256)) * 8
    got = exchange(r.egress, b"POST /upload HTTP/1.1\r\nHost: cart.shop.local\r\n"
                             b"Transfer-Encoding: gzip, chunked\r\n\r\n"
                   + chunk(payload[:1000]) + chunk(payload[1000:]) + b"0\r\n\r\n")
    assert isinstance(got, Response) and got.status == 200, describe(got)
    settle(r, app, backend)
    reqs, rest = parse_requests(backend.received())
    assert len(reqs) == 1 and rest == b"", (reqs, rest[:200])
    codings = ",".join(reqs[0].header_all("transfer-encoding"))
    assert [c.strip().lower() for c in codings.split(",")] == ["gzip", "chunked"], reqs[0].headers
    assert reqs[0].header("content-length") is None
    assert reqs[0].body == payload


@pytest.mark.parametrize("data", [
    b"POST / HTTP/1.1\r\nHost: cart.shop.local\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"
    b"5\r\nhello\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: cart.shop.local\r\nTransfer-Encoding: \r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: cart.shop.local\r\nTransfer-Encoding: chunked\r\n"
    b"Content-Length: 5\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: cart.shop.local\r\nTransfer-Encoding: chunked\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
], ids=["chunked-not-last", "empty", "with-content-length", "twice"])
def test_ambiguous_transfer_encoding_is_400_and_closed(raw_mesh, data):
    """A request whose body length cannot be known for certain (RFC 9112 section 6.3) is
    refused before anything is forwarded."""
    r, app, backend = raw_mesh()
    refused(r, [app, backend], data)


def test_chunk_extensions_are_accepted(raw_mesh):
    """Valid chunk extensions (RFC 9112 section 7.1.1) are legal and must not be refused."""
    r, app, backend = raw_mesh()
    got = exchange(r.egress, CHUNKED_POST + b"5;a=b;c=d\r\nhello\r\n0\r\n\r\n")
    assert isinstance(got, Response) and got.status == 200, describe(got)
    settle(r, app, backend)
    reqs, rest = parse_requests(backend.received())
    assert len(reqs) == 1 and rest == b"" and reqs[0].body == b"hello", reqs


# ---- 7. versions ----

def test_http09_request_line_is_400_at_once(raw_mesh):
    """`GET /` with no version is HTTP/0.9, which remora does not speak: answered at once,
    not after the 10 s header timeout a parser waiting for more would take."""
    r, app, backend = raw_mesh()
    refused(r, [app, backend], b"GET /\r\n", within=2.0)


def test_http2_version_in_an_http1_request_line_is_505(raw_mesh):
    """An HTTP/1.x-shaped request line naming version 2.0 is a version remora does not serve
    over this framing: 505 (RFC 9110 section 15.6.6), never forwarded."""
    r, app, backend = raw_mesh()
    got = exchange(r.egress, b"GET / HTTP/2.0\r\nHost: cart.shop.local\r\n\r\n")
    assert isinstance(got, Response) and got.status == 505, describe(got)
    settle(r, app, backend)
    assert backend.received() == b"" and app.received() == b""


# ---- 8. nothing after a framing error ----

@pytest.mark.parametrize("bad", [
    b"GET / HTTP/1.1\r\nHost: cart.shop.local\r\nX-A: 1\rX\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost : cart.shop.local\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: cart.shop.local\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: cart.shop.local\r\nContent-Length: 5\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: cart.shop.local\r\nContent-Length: 1x\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",
], ids=["bare-cr", "space-before-colon", "chunked-not-last", "cl-and-te", "bad-length",
        "no-host"])
def test_pipelined_request_after_a_framing_error_is_never_served(raw_mesh, bad):
    """After a framing error remora no longer knows where the next request starts: the valid
    request pipelined behind the bad one (same write) gets no answer and goes nowhere."""
    r, app, backend = raw_mesh()
    refused(r, [app, backend], bad + VALID)


# ---- 9, 15. connect failures that happen at once ----

RETRY = {"maxRetries": 2, "perRetryTimeout": {"unit": "ms", "value": 1000},
         "httpRetryEvents": ["server-error"], "tcpRetryEvents": ["connection-error"]}


def routed_mesh(hostname, port, retry=None, outlier=None, dns_servers=None):
    """web -> cart.shop.local -> router cart -> one route -> node cart-v1, whose endpoints
    are `hostname` (an IP literal or a name with one A record per endpoint) at `port`."""
    listener = {"portMapping": {"port": port, "protocol": "http"}}
    if outlier:
        listener["outlierDetection"] = outlier
    http = {"match": {"prefix": "/"},
            "action": {"weightedTargets": [{"virtualNode": "cart-v1", "weight": 1}]}}
    if retry:
        http["retryPolicy"] = retry
    proxy = {"node": "web"}
    if dns_servers:
        proxy["dns"] = {"servers": dns_servers}
    return {
        "mesh": {"meshName": "shop", "spec": {"egressFilter": {"type": "DROP_ALL"}}},
        "virtualNodes": [
            {"virtualNodeName": "web", "spec": {
                "listeners": [{"portMapping": {"port": 1, "protocol": "http"}}],
                "backends": [{"virtualService": {"virtualServiceName": "cart.shop.local"}}]}},
            {"virtualNodeName": "cart-v1", "spec": {
                "listeners": [listener],
                "serviceDiscovery": {"dns": {"hostname": hostname, "responseType": "ENDPOINTS"}}}},
        ],
        "virtualServices": [{"virtualServiceName": "cart.shop.local", "spec": {
            "provider": {"virtualRouter": {"virtualRouterName": "cart"}}}}],
        "virtualRouters": [{"virtualRouterName": "cart", "spec": {
            "listeners": [{"portMapping": {"port": 80, "protocol": "http"}}]}}],
        "routes": [{"virtualRouterName": "cart", "routeName": "all", "spec": {"httpRoute": http}}],
        "proxy": proxy,
    }


def test_retrying_a_connect_that_fails_at_once_answers_503_and_survives(remora):
    """uv_tcp_connect failing synchronously (ENETUNREACH) under a retry policy: a connect
    failure is one whatever its timing, so each request is tried three times, every try is
    counted, and the answer is 503 from a remora that stays up."""
    ip, port = fast_fail_address(), free_port()
    r = remora(routed_mesh(ip, port, retry=RETRY))
    statuses = []
    for _ in range(5):
        got = exchange(r.egress, request("GET", "/echo"))
        statuses.append(got.status if isinstance(got, Response) else got)
    assert statuses == [503] * 5, statuses
    assert r.ready(), "remora is still serving"
    st = r.stats()
    name = f"cluster.cds_egress_shop_cart-v1_http_{port}"
    assert st[f"{name}.upstream_rq_retry"] == 10
    assert st[f"{name}.upstream_cx_connect_fail"] == 15


def two_endpoints(knot, upstream, ip):
    """A healthy upstream and an address that fails at once, as two A records of one name."""
    good = upstream("good")
    k = knot(["cart 1 A 127.0.0.1", f"cart 1 A {ip}"], ttl=30)
    return good, k


def test_connect_failing_at_once_is_retried_on_the_healthy_endpoint(knot, upstream, remora):
    """With one endpoint failing at once and one healthy, every request succeeds: the failed
    attempt is retried on the other endpoint."""
    ip = fast_fail_address()
    good, k = two_endpoints(knot, upstream, ip)
    r = remora(routed_mesh("cart.ns.local", good.port, retry=RETRY, dns_servers=[k.server]))
    name = f"cluster.cds_egress_shop_cart-v1_http_{good.port}"
    assert r.stats()[f"{name}.membership_total"] == 2
    c = Conn(r.egress)
    statuses = []
    for _ in range(10):
        c.send(request("GET", "/echo"))
        got = answer(c)
        statuses.append(got.status if isinstance(got, Response) else got)
        if not isinstance(got, Response):
            break
    c.close()
    assert statuses == [200] * 10, statuses
    st = r.stats()
    assert st[f"{name}.upstream_cx_connect_fail"] >= 1, "the failing endpoint was never tried"
    assert st[f"{name}.upstream_rq_retry"] == st[f"{name}.upstream_cx_connect_fail"]


def test_retry_landing_on_a_connect_that_fails_at_once_does_not_crash(knot, upstream, remora):
    """The first attempt gets a 503 from the healthy endpoint and the retry goes to the other
    one, whose connect fails synchronously inside the retry: remora must answer (503) and
    live on."""
    ip = fast_fail_address()
    good, k = two_endpoints(knot, upstream, ip)
    r = remora(routed_mesh("cart.ns.local", good.port, retry=RETRY, dns_servers=[k.server]))
    statuses = []
    for _ in range(4):
        got = exchange(r.egress, request("GET", "/status/503"))
        statuses.append(got.status if isinstance(got, Response) else got)
        if r.proc.poll() is not None:
            break
    assert r.proc.poll() is None, f"remora died ({r.proc.returncode}) after {statuses}"
    assert statuses == [503] * 4, statuses
    assert r.ready()


def test_outlier_detection_counts_a_connect_that_fails_at_once(knot, upstream, remora):
    """An endpoint whose connect fails synchronously is a connect failure for outlier
    detection like any other, and gets ejected."""
    ip = fast_fail_address()
    good, k = two_endpoints(knot, upstream, ip)
    outlier = {"maxServerErrors": 1, "interval": {"unit": "ms", "value": 500},
               "baseEjectionDuration": {"unit": "s", "value": 30}, "maxEjectionPercent": 50}
    r = remora(routed_mesh("cart.ns.local", good.port, outlier=outlier, dns_servers=[k.server]))
    flag = f"{ip}:{good.port}::health_flags::/failed_outlier_check"
    c = Conn(r.egress)
    statuses, clusters = [], ""
    deadline = time.monotonic() + 3
    try:
        while flag not in clusters and len(statuses) < 20 and time.monotonic() < deadline:
            c.send(request("GET", "/echo"))
            got = answer(c)
            statuses.append(got.status if isinstance(got, Response) else got)
            assert isinstance(got, Response), statuses
            _, clusters = r.admin("/clusters")
    finally:
        c.close()
    assert flag in clusters, f"not ejected after {statuses}:\n{clusters}"
    assert f"127.0.0.1:{good.port}::health_flags::healthy" in clusters, clusters
    assert set(statuses) <= {200, 503}, statuses
    name = f"cluster.cds_egress_shop_cart-v1_http_{good.port}"
    assert r.stats()[f"{name}.outlier_detection_ejections_enforced_total"] == 1


# ---- 10, 11. memory under clients that do not read ----

def test_pipelining_client_that_never_reads_is_bounded(upstream, remora):
    """A client pipelining requests as fast as remora takes them and never reading the
    answers: remora must stop reading it (the client's sends then block), not buffer every
    16 KiB response."""
    backend = upstream("cart-v1")
    app = upstream("app")
    r = remora(mesh_config(app.port, backend.port))
    assert exchange(r.egress, request("GET", "/bytes/16384")).status == 200  # warm
    base = r.rss_kib()
    batch = request("GET", "/bytes/16384") * 64
    s = socket.create_connection(("127.0.0.1", r.egress))
    s.setblocking(False)
    pending, sent, peak, blown, blocked = b"", 0, base, False, False
    start = last_probe = time.monotonic()
    try:
        # For 3 s: send while remora takes the bytes; once a send has waited 1 s in vain
        # (remora stopped reading us, which is what bounded looks like) only watch RSS.
        while time.monotonic() - start < 3.0:
            if blocked:
                time.sleep(0.02)
            else:
                if not pending:
                    pending = batch
                try:
                    n = s.send(pending)
                    sent += n
                    pending = pending[n:]
                except BlockingIOError:
                    _, writable, _ = select.select([], [s], [], 1.0)
                    blocked = not writable
            now = time.monotonic()
            if blocked or now - last_probe > 0.02:
                last_probe = now
                peak = max(peak, r.rss_kib())
                if peak - base > 200 * MIB:
                    blown = True
                    break
    finally:
        if blown:
            r.proc.kill()
            r.proc.wait()
        s.close()
    print(f"sent {sent // len(request('GET', '/bytes/16384'))} requests, blocked={blocked}, "
          f"RSS {base} -> peak {peak} KiB")
    assert not blown, f"RSS grew past 200 MiB ({peak - base} KiB) in {time.monotonic() - start:.1f} s"
    if CHECK_RSS:
        assert peak - base < 32 * MIB, f"RSS grew by {peak - base} KiB"


def dribble(total, piece, gap=0.0001, fast=1 << 20):
    """Handler: answers the first request with `total` bytes: the first `fast` in 64 KiB writes
    (what the kernel buffers toward the stalled client take anyway), the rest as `piece`-byte
    writes, each flushed on its own (TCP_NODELAY, a short gap between them) so that each
    arrives in a read of its own at remora."""

    def handler(conn):
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if not request_head(conn):
            return
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        conn.sendall(b"x" * fast)
        block, left = b"x" * piece, total - fast
        while left:
            conn.sendall(block[:min(piece, left)])
            left -= min(piece, left)
            time.sleep(gap)

    return handler


def test_small_upstream_writes_do_not_pin_read_buffers(raw_upstream, upstream, remora):
    """An upstream sending 40 MiB as 1,100-byte writes to a client that does not read: what
    remora holds for the client is bounded by the memory its buffers pin, not by the byte
    count of the data in them."""
    app = upstream("app")
    backend = raw_upstream(dribble(40 << 20, 1100))
    r = remora(mesh_config(app.port, backend.port))
    base = r.rss_kib()
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", r.egress))
    peak, blown = base, False
    try:
        s.sendall(request("GET", "/big"))
        end = time.monotonic() + 3.0
        while time.monotonic() < end:  # the client does not read for 3 s
            peak = max(peak, r.rss_kib())
            if peak - base > 200 * MIB:
                blown = True
                break
            time.sleep(0.02)
    finally:
        if blown:
            r.proc.kill()
            r.proc.wait()
        s.close()
    print(f"dribbling upstream: RSS {base} -> peak {peak} KiB")
    assert not blown, f"RSS grew past 200 MiB ({peak - base} KiB)"
    if CHECK_RSS:
        assert peak - base < 16 * MIB, f"RSS grew by {peak - base} KiB"


def test_small_writes_to_many_stalled_clients_pin_bounded_memory(raw_upstream, upstream, remora):
    """Eight stalled clients, each fed 1,100-byte pieces: every piece that lands alone in a
    64 KiB read buffer must not keep the whole buffer allocated, or eight connections hold
    over 100 MiB. VmData (allocated, touched or not) shows the buffers pinned; RSS only the
    pages the pieces touched."""
    app = upstream("app")
    backend = raw_upstream(dribble(40 << 20, 1100))
    r = remora(mesh_config(app.port, backend.port))
    base, vbase = r.rss_kib(), r.rss_kib("VmData")
    peak, vpeak, blown, socks = base, vbase, False, []
    try:
        for _ in range(8):
            s = socket.socket()
            socks.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", r.egress))
            s.sendall(request("GET", "/big"))
        end = time.monotonic() + 3.0
        while time.monotonic() < end:  # no client reads for 3 s
            peak, vpeak = max(peak, r.rss_kib()), max(vpeak, r.rss_kib("VmData"))
            if peak - base > 200 * MIB or vpeak - vbase > 1024 * MIB:
                blown = True
                break
            time.sleep(0.02)
    finally:
        if blown:
            r.proc.kill()
            r.proc.wait()
        for s in socks:
            s.close()
    print(f"8 stalled clients: RSS {base} -> {peak} KiB, VmData {vbase} -> {vpeak} KiB")
    assert not blown, f"RSS +{peak - base} KiB, VmData +{vpeak - vbase} KiB"
    if CHECK_RSS:
        assert peak - base < 16 * MIB, f"RSS grew by {peak - base} KiB"
        assert vpeak - vbase < 24 * MIB, f"VmData grew by {vpeak - vbase} KiB"


# ---- 12. tunnels ----

UPGRADE = [("Connection", "Upgrade"), ("Upgrade", "websocket"),
           ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), ("Sec-WebSocket-Version", "13")]


def test_idle_tunnel_is_closed_after_the_idle_timeout(mesh):
    """An upgraded connection that carries nothing is closed after the listener's idle timeout,
    or a client can hold an upstream connection for ever."""
    r, _, _ = mesh(listener_timeout={"idle": {"unit": "s", "value": 1}})
    c = Conn(r.ingress)
    try:
        c.send(request("GET", "/ws", host="web", headers=UPGRADE))
        got = answer(c)
        assert isinstance(got, Response) and got.status == 101, describe(got)
        c.send(b"ping")
        while len(c.buf) < 4:
            c.buf += c.sock.recv(64)
        assert c.buf == b"ping"
        c.buf = bytearray()
        start = time.monotonic()
        closed = c.closed_by_peer(timeout=5)
        elapsed = time.monotonic() - start
    finally:
        c.close()
    assert closed, "the idle tunnel was still open after 5 s"
    assert 0.8 <= elapsed <= 4.0, elapsed


def half_close_tunnel(conn):
    """Handler: 101, then read until EOF, then answer `after-eof` and close."""
    if not request_head(conn):
        return
    conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
    while conn.recv():
        pass
    conn.sendall(b"after-eof")


def test_tunnel_half_close_is_relayed_not_turned_into_an_abort(raw_mesh):
    """A client that shuts down its sending side on a tunnel: the upstream sees EOF and can
    still answer, and the client receives that answer before both sides close."""
    r, app, backend = raw_mesh(app_handler=half_close_tunnel)
    c = Conn(r.ingress)
    try:
        c.send(request("GET", "/ws", host="web", headers=UPGRADE))
        got = answer(c)
        assert isinstance(got, Response) and got.status == 101, describe(got)
        c.send(b"ping")
        c.sock.shutdown(socket.SHUT_WR)
        data, closed = recv_until_closed(c.sock, 5)
        data = c.buf + data
    finally:
        c.close()
    rec = app.records[0]
    wait_until(lambda: rec.closed, timeout=3, what="the upstream side to finish")
    assert rec.data.endswith(b"\r\n\r\nping") and rec.eof, rec.data[-100:]
    assert data == b"after-eof" and closed, (data, closed)


# ---- 13, 14. reloads at bad moments ----

def test_reload_during_a_traced_request_keeps_it_whole(upstream, remora, collector):
    """A config reload while traced requests are in flight (ingress and egress): both finish
    with 200 and their X-Ray documents are complete (this was a heap-use-after-free)."""
    app, backend = upstream("app"), upstream("cart-v1")
    cfg = mesh_config(app.port, backend.port)
    r = remora(cfg, env={"ENABLE_ENVOY_XRAY_TRACING": "1", "XRAY_DAEMON_PORT": str(collector.port),
                         "XRAY_SAMPLING_RATE": "1"})
    ingress, egress = Conn(r.ingress), Conn(r.egress)
    try:
        ingress.send(request("GET", "/sleep/1000", host="web.shop.local"))
        egress.send(request("GET", "/sleep/1000"))
        wait_until(lambda: app.stats()["requests"] == 1 and backend.stats()["requests"] == 1,
                   timeout=3, what="both requests at their upstreams")
        changed = copy.deepcopy(cfg)
        changed["virtualNodes"][0]["spec"]["backends"].append(
            {"virtualService": {"virtualServiceName": "cart2.shop.local"}})
        changed["virtualServices"].append({"virtualServiceName": "cart2.shop.local", "spec": {
            "provider": {"virtualNode": {"virtualNodeName": "cart-v1"}}}})
        write_atomically(r.config_path, changed)
        wait_until(lambda: r.stats()["remora.config.reload_ok"] == 1, timeout=3, what="the reload")
        got_in, got_eg = answer(ingress), answer(egress)
    finally:
        ingress.close()
        egress.close()
    assert isinstance(got_in, Response) and got_in.status == 200, describe(got_in)
    assert isinstance(got_eg, Response) and got_eg.status == 200, describe(got_eg)
    try:
        wait_until(lambda: len(collector.datagrams) >= 2, timeout=3, what="two datagrams")
    except AssertionError:
        pass
    docs = parsed(collector)
    assert len(docs) == 2, f"{r.stats()['remora.xray.sent']} sent, received: {docs}"
    for d in docs:
        check_well_formed(d)
    urls = [d["http"]["request"]["url"] for d in docs if "http" in d]
    assert "http://web.shop.local/sleep/1000" in urls, docs
    subs = [s for d in docs for s in d.get("subsegments", []) if s["name"] == "cart.shop.local"]
    assert [s["http"]["response"]["status"] for s in subs] == [200], docs
    assert r.ready()


def pooled(app, cart, max_conn=None, max_pending=None, per_request_ms=None):
    cfg = mesh_config(app.port, cart.port, listener_timeout=per_request_ms and
                      {"perRequest": {"unit": "ms", "value": per_request_ms}})
    if max_conn:
        cfg["virtualNodes"][0]["spec"]["listeners"][0]["connectionPool"] = {
            "http": {"maxConnections": max_conn, "maxPendingRequests": max_pending}}
    return cfg


def sequential(port, n, path="/echo", host="web"):
    """n requests one after another on one connection; stops at the first that is not 200."""
    c = Conn(port)
    out = []
    try:
        for _ in range(n):
            c.send(request("GET", path, host=host))
            got = answer(c)
            out.append(got.status if isinstance(got, Response) else got)
            if out[-1] != 200:
                break
    finally:
        c.close()
    return out


def test_rejected_reload_changes_nothing(upstream, remora):
    """An invalid config that also changes the pool limits: it is refused, counted once, and
    the original limits (1 connection, 1 pending) still hold exactly."""
    app, cart = upstream("app"), upstream("cart")
    r = remora(pooled(app, cart, 1, 1))
    bad = pooled(app, cart, 10, 10)
    bad["virtualNodes"][1]["spec"]["listeners"][0]["portMapping"]["port"] = 70000
    write_atomically(r.config_path, bad)
    wait_until(lambda: r.stats()["remora.config.reload_failed"] >= 1, timeout=3, what="rejected")
    assert sequential(r.ingress, 20) == [200] * 20
    name = f"cluster.cds_ingress_shop_web_http_{app.port}"
    before = r.stats()[f"{name}.upstream_rq_pending_overflow"]
    conns = [Conn(r.ingress) for _ in range(4)]
    try:
        for c in conns:
            c.send(request("GET", "/sleep/800", host="web"))
        got = [answer(c) for c in conns]
    finally:
        for c in conns:
            c.close()
    statuses = sorted(g.status if isinstance(g, Response) else 0 for g in got)
    assert statuses == [200, 200, 503, 503], [describe(g) for g in got]
    st = r.stats()
    assert st[f"{name}.upstream_rq_pending_overflow"] == before + 2
    assert st["remora.config.reload_failed"] == 1 and st["remora.config.reload_ok"] == 0
    assert app.stats()["requests"] == 22


def test_reload_enabling_a_pool_during_a_request(upstream, remora):
    """A reload that turns on a connection pool while a request is in flight: that request
    completes, and the pool's accounting is not thrown off by it (later requests used to get
    504 for ever)."""
    app, cart = upstream("app"), upstream("cart")
    r = remora(pooled(app, cart, per_request_ms=2000))
    slow = Conn(r.ingress)
    try:
        slow.send(request("GET", "/sleep/1000", host="web"))
        wait_until(lambda: app.stats()["requests"] == 1, timeout=3, what="the slow request")
        write_atomically(r.config_path, pooled(app, cart, 1, 1, per_request_ms=2000))
        wait_until(lambda: r.stats()["remora.config.reload_ok"] == 1, timeout=3, what="the reload")
        got = answer(slow)
    finally:
        slow.close()
    assert isinstance(got, Response) and got.status == 200, describe(got)
    assert sequential(r.ingress, 20) == [200] * 20


# ---- found by the codec fuzzers (tests/fuzz/regressions/h1_server, h1_client) ----

def test_half_close_right_after_a_request_still_gets_the_answer(raw_mesh):
    """A client that sends its request and shuts down its write side at once (a common
    `printf ... | nc` pattern) must get the whole answer, even one remora gives immediately
    (here a 404 for an unknown host), before remora closes the connection."""
    r, app, backend = raw_mesh()
    for host in (b"nowhere.example", b"cart.shop.local"):
        s = socket.create_connection(("127.0.0.1", r.egress), timeout=5)
        try:
            s.sendall(b"GET /x HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
            s.shutdown(socket.SHUT_WR)
            got, closed = recv_until_closed(s, timeout=5)
        finally:
            s.close()
        assert closed, f"remora did not close after answering a half-closed client: {got!r}"
        status = 404 if host == b"nowhere.example" else 200
        assert got.startswith(b"HTTP/1.1 %d " % status), got[:200]
        head, _, body = got.partition(b"\r\n\r\n")
        length = int([l.split(b":")[1] for l in head.split(b"\r\n")
                      if l.lower().startswith(b"content-length:")][0])
        assert len(body) == length, f"the answer was cut: {got!r}"


def test_connect_to_no_tcp_backend_is_refused_under_drop_all(raw_mesh):
    """CONNECT is routed by port as a redirected connection is: no TCP backend has port 443 and
    the mesh is DROP_ALL, so 403, and the upstream never sees it (not even as HTTP)."""
    r, app, backend = raw_mesh()
    got = exchange(r.egress, b"CONNECT cart.shop.local:443 HTTP/1.1\r\nHost: cart.shop.local:443\r\n\r\n")
    assert isinstance(got, Response) and got.status == 403, describe(got)
    settle(r, app, backend)
    assert backend.connections() == 0 and backend.received() == b""
