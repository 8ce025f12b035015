"""HTTP/2 toward upstreams (docs/http2.md, "the client side"), through the real binary: a node
whose listener protocol is http2 (or grpc) is spoken to in h2c with prior knowledge, or h2 by
ALPN over TLS, whatever the client spoke; streams are multiplexed over few connections up to
the peer's SETTINGS_MAX_CONCURRENT_STREAMS; REFUSED_STREAM and streams a GOAWAY left
unprocessed are retried; a hostile upstream costs its own connection and nothing else.

The upstream is h2_peer_upstream.py (python3-h2), which counts connections, streams and
concurrency, and misbehaves by path; the clients are curl, nghttp, h2load, python3-h2
(h2_wire.H2Client) and raw HTTP/1.1 sockets (rawhttp)."""
import hashlib
import json
import os
import subprocess
import threading
import time

import pytest

from conftest import free_port, port_open, wait_until
from h2_wire import H2Client
from rawhttp import Conn, request

SANITIZER = os.environ.get("REMORA_SANITIZER", "")
CHECK_RSS = SANITIZER == ""
BODY_GROWTH_KIB = 4 * 1024    # what streaming a body of any size may add to the peak RSS
ABUSE_GROWTH_KIB = 16 * 1024  # what one hostile upstream may add to RSS, at most
NO_PROXY_ENV = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
CART = "cart.shop.local"      # provided by node cart: an http2 listener on the h2 peer
LEGACY = "legacy.shop.local"  # provided by node legacy: an http listener on upstream.py


# ---- fixtures and set-ups ----

def mesh(cart_port, legacy_port=1, app_port=1, app_protocol="http", app_tls=None,
         cart_tls=None, cart_policy=None):
    """web (this sidecar; its app on app_port) with backends cart (http2, on cart_port) and
    legacy (http, on legacy_port)."""
    app_listener = {"portMapping": {"port": app_port, "protocol": app_protocol}}
    if app_tls:
        app_listener["tls"] = app_tls
    cart_listener = {"portMapping": {"port": cart_port, "protocol": "http2"}}
    if cart_tls:
        cart_listener["tls"] = cart_tls
    web = {"virtualNodeName": "web", "spec": {
        "listeners": [app_listener],
        "serviceDiscovery": {"dns": {"hostname": "127.0.0.1"}},
        "backends": [{"virtualService": {"virtualServiceName": CART}},
                     {"virtualService": {"virtualServiceName": LEGACY}}]}}
    if cart_policy:
        web["spec"]["backendDefaults"] = {"clientPolicy": {"tls": cart_policy}}
    return {
        "mesh": {"meshName": "shop", "spec": {"egressFilter": {"type": "DROP_ALL"}}},
        "virtualNodes": [
            web,
            {"virtualNodeName": "cart", "spec": {
                "listeners": [cart_listener],
                "serviceDiscovery": {"dns": {"hostname": "127.0.0.1"}}}},
            {"virtualNodeName": "legacy", "spec": {
                "listeners": [{"portMapping": {"port": legacy_port, "protocol": "http"}}],
                "serviceDiscovery": {"dns": {"hostname": "127.0.0.1"}}}},
        ],
        "virtualServices": [
            {"virtualServiceName": CART, "spec": {"provider": {"virtualNode": {"virtualNodeName": "cart"}}}},
            {"virtualServiceName": LEGACY, "spec": {"provider": {"virtualNode": {"virtualNodeName": "legacy"}}}},
        ],
        "proxy": {"node": "web"},
    }


def b_tls(pki):
    return {"mode": "STRICT", "certificate": {"file": {
        "certificateChain": pki.b.cert, "privateKey": pki.b.key}}}


def cluster(r, port, proto="http2"):
    return f"cluster.cds_egress_shop_cart_{proto}_{port}"


def curl(*args, timeout=30, stdin=None):
    """curl's body, status, HTTP version ("2", "1.1") and stderr."""
    out = subprocess.run(["curl", "-sS", "--noproxy", "*", "--max-time", str(timeout), "-o", "-",
                          "-w", "\n%{http_code} %{http_version}", *args],
                         capture_output=True, timeout=timeout + 10, env=NO_PROXY_ENV, stdin=stdin)
    body, _, tail = out.stdout.rpartition(b"\n")
    code, _, version = tail.decode().partition(" ")
    return body, int(code or 0), version, out.stderr.decode(errors="replace")


def egress(r, path, *extra, host=CART, proto="--http2-prior-knowledge", timeout=30, stdin=None):
    return curl(proto, "-H", f"Host: {host}", *extra, f"http://127.0.0.1:{r.egress}{path}",
                timeout=timeout, stdin=stdin)


def header(doc, name):
    return [v for k, v in doc["headers"] if k.lower() == name]


# ---- h2c and TLS toward the upstream, from either client protocol ----

def test_h2c_client_to_an_h2c_upstream(h2_peer, remora):
    peer = h2_peer()
    r = remora(mesh(peer.port))
    body, code, version, err = egress(r, "/echo?q=1")
    assert (code, version) == (200, "2"), err
    doc = json.loads(body)
    assert (doc["method"], doc["path"], doc["authority"], doc["scheme"]) == (
        "GET", "/echo?q=1", CART, "http")
    assert header(doc, "x-forwarded-proto") == ["http"]
    assert not header(doc, "host") or header(doc, "host") == [CART]
    payload = os.urandom(300000)
    out = subprocess.run(["curl", "-sS", "--noproxy", "*", "--http2-prior-knowledge", "-H",
                          f"Host: {CART}", "--data-binary", "@-", f"http://127.0.0.1:{r.egress}/echo"],
                         input=payload, capture_output=True, timeout=30, env=NO_PROXY_ENV)
    doc = json.loads(out.stdout)
    assert (doc["length"], doc["sha256"]) == (len(payload), hashlib.sha256(payload).hexdigest())
    st, ps = r.stats(), peer.stats()
    assert ps["connections"] == 1 and ps["answered"] == 2
    assert st[f"{cluster(r, peer.port)}.upstream_cx_http2_total"] == 1
    assert st[f"{cluster(r, peer.port)}.upstream_cx_total"] == 1
    assert st[f"{cluster(r, peer.port)}.upstream_rq_total"] == 2
    assert st[f"{cluster(r, peer.port)}.upstream_rq_2xx"] == 2


def test_tls_listener_with_h2_by_alpn_to_an_h2c_app(pki, h2_peer, remora):
    """curl --http2 over TLS to ingress (a STRICT listener, ALPN h2) -> the local app, an http2
    listener: plaintext h2c to 127.0.0.1:PORT. An HTTP/1.1 client over TLS gets the same app."""
    app = h2_peer("app")
    r = remora(mesh(1, app_port=app.port, app_protocol="http2", app_tls=b_tls(pki)))
    base = ["--cacert", pki.ca.cert, "--resolve", f"b.apps.local:{r.ingress}:127.0.0.1"]
    url = f"https://b.apps.local:{r.ingress}/echo"
    body, code, version, err = curl("--http2", *base, url)
    assert (code, version) == (200, "2"), err
    doc = json.loads(body)
    assert header(doc, "x-forwarded-proto") == ["https"] and doc["alpn"] is None
    body, code, version, err = curl("--http1.1", *base, url)
    assert (code, version) == (200, "1.1"), err
    assert json.loads(body)["scheme"] in ("http", "https")
    ps = app.stats()
    assert ps["answered"] == 2 and ps["tls"] == 0
    st = r.stats()
    assert st[f"cluster.cds_ingress_shop_web_http2_{app.port}.upstream_cx_http2_total"] >= 1
    assert st[f"cluster.cds_ingress_shop_web_http2_{app.port}.upstream_rq_total"] == 2


def test_tls_to_an_h2_upstream_by_alpn(pki, h2_peer, remora):
    """A node whose listener has TLS is spoken to over TLS; ALPN selects h2; the client policy
    verifies the peer's certificate (trust and SAN)."""
    peer = h2_peer(tls=pki.b)
    policy = {"validation": {"trust": {"file": {"certificateChain": pki.ca.cert}},
                             "subjectAlternativeNames": {"match": {"exact": ["b.apps.local"]}}}}
    r = remora(mesh(peer.port, cart_tls=b_tls(pki), cart_policy=policy))
    for proto in ("--http2-prior-knowledge", "--http1.1"):
        body, code, version, err = egress(r, "/echo", proto=proto)
        assert code == 200, err
        assert json.loads(body)["alpn"] == "h2"
    ps = peer.stats()
    assert ps["tls"] == ps["connections"] >= 1 and set(ps["alpn"]) == {"h2"}
    assert ps["answered"] == 2
    st = r.stats()
    assert st[f"{cluster(r, peer.port)}.upstream_cx_http2_total"] == ps["connections"]
    assert st[f"{cluster(r, peer.port)}.ssl.handshake"] >= 1


def test_a_tls_upstream_that_does_not_select_h2_is_a_connect_failure(pki, h2_peer, remora):
    """ALPN offers h2 alone; a peer that selects nothing fails the connect (docs/http2.md): no
    HTTP/1.1 request is sent to a peer that agreed to nothing."""
    peer = h2_peer(tls=pki.b, alpn="http/1.1")
    r = remora(mesh(peer.port, cart_tls=b_tls(pki)))
    _, code, _, err = egress(r, "/echo")
    assert code == 503, err
    ps = peer.stats()
    assert ps["streams"] == 0 and ps["bytes_received"] == 0, (ps["alpn"], ps["streams"])
    st = r.stats()
    assert st[f"{cluster(r, peer.port)}.upstream_cx_connect_fail"] >= 1
    # each failed connect had the one request waiting on it (Envoy's pending_failure_eject)
    assert st[f"{cluster(r, peer.port)}.upstream_rq_pending_failure_eject"] == \
        st[f"{cluster(r, peer.port)}.upstream_cx_connect_fail"]


# ---- multiplexing ----

def test_streams_share_connections_up_to_the_peer_limit(h2_peer, remora):
    """nghttp, 300 streams on one connection (remora lets 100 run at once): a peer allowing 100
    gets them over one connection (two at most: one may be opened before the first one's
    SETTINGS are known). h2load, 3 connections of 100 streams each to a peer allowing 10: all
    300 run at once, so remora needs at least 30 upstream connections (it may not put an 11th
    stream on one), and opens a new one only when all are full: at most 45 (50% of slack for
    connections opened while others were still handshaking)."""
    wide = h2_peer("wide")
    r = remora(mesh(wide.port))
    out = subprocess.run(["nghttp", "-n", "-m", "300", "-H", f":authority: {CART}",
                          f"http://127.0.0.1:{r.egress}/sleep/300"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    ps = wide.stats()
    assert ps["answered"] == 300
    assert 1 <= ps["connections"] <= 2, ps["connections"]
    assert ps["max_active_per_conn"] >= 50, "the streams did not run side by side"
    narrow = h2_peer("narrow", max_streams=10)
    r = remora(mesh(narrow.port))
    out = subprocess.run(["h2load", "-n", "300", "-c", "3", "-m", "100", "-H", f":authority: {CART}",
                          f"http://127.0.0.1:{r.egress}/sleep/1000"],
                         capture_output=True, text=True, timeout=90)
    assert "300 succeeded" in out.stdout and "300 2xx" in out.stdout, out.stdout + out.stderr
    ps = narrow.stats()
    print(f"narrow peer: {ps['connections']} connections, max {ps['max_active_per_conn']} active "
          f"on one, {ps['over_limit']} streams past the limit refused")
    assert ps["answered"] == 300
    assert ps["max_active_per_conn"] == 10, "streams were not multiplexed up to the limit"
    assert 30 <= ps["connections"] <= 45, ps["connections"]
    st = r.stats()
    assert st[f"{cluster(r, narrow.port)}.upstream_cx_http2_total"] == ps["connections"]
    assert st["http.egress.downstream_rq_2xx"] == 300


# ---- HTTP/1.1 clients to an HTTP/2 upstream, and the other way ----

def read_chunked(c):
    """A chunked response on rawhttp.Conn c: (status, headers, body, trailers as pairs)."""
    status = int(c._line().split(b" ")[1])
    headers = []
    while True:
        line = c._line()
        if not line:
            break
        k, _, v = line.decode("latin-1").partition(":")
        headers.append((k.strip().lower(), v.strip()))
    assert ("transfer-encoding", "chunked") in headers, headers
    body = b""
    while True:
        size = int(c._line().split(b";")[0], 16)
        if size == 0:
            break
        body += c._exact(size)
        c._exact(2)
    trailers = []
    while True:
        line = c._line()
        if not line:
            break
        k, _, v = line.decode("latin-1").partition(":")
        trailers.append((k.strip().lower(), v.strip()))
    return status, headers, body, trailers


def test_http11_clients_to_an_h2_upstream(h2_peer, remora):
    peer = h2_peer()
    r = remora(mesh(peer.port))
    # GET: Host becomes :authority.
    body, code, version, err = egress(r, "/echo", proto="--http1.1")
    assert (code, version) == (200, "1.1"), err
    doc = json.loads(body)
    assert doc["authority"] == CART and doc["method"] == "GET"
    # POST with a length: the body arrives whole, with its Content-Length.
    payload = os.urandom(1 << 20)
    out = subprocess.run(["curl", "-sS", "--noproxy", "*", "--http1.1", "-H", f"Host: {CART}",
                          "--data-binary", "@-", f"http://127.0.0.1:{r.egress}/echo"],
                         input=payload, capture_output=True, timeout=30, env=NO_PROXY_ENV)
    doc = json.loads(out.stdout)
    assert (doc["length"], doc["sha256"]) == (len(payload), hashlib.sha256(payload).hexdigest())
    assert header(doc, "content-length") in ([], [str(len(payload))])
    # A chunked upload (and request trailers) on a raw keep-alive connection: DATA frames, no
    # transfer-encoding upstream; the trailers become a trailing HEADERS.
    c = Conn(r.egress)
    parts = [b"a" * 1000, b"b" * 70000, b"c"]
    chunked = b"".join(b"%x\r\n" % len(p) + p + b"\r\n" for p in parts)
    c.send(request("POST", "/trailers", host=CART, headers=[
        ("Transfer-Encoding", "chunked"), ("TE", "trailers")]) + chunked +
        b"0\r\nx-checksum: abc123\r\n\r\n")
    status, headers, body, trailers = read_chunked(c)
    assert status == 200
    doc = json.loads(body)
    whole = b"".join(parts)
    assert (doc["length"], doc["sha256"]) == (len(whole), hashlib.sha256(whole).hexdigest())
    assert not header(doc, "transfer-encoding") and header(doc, "te") in ([], ["trailers"])
    assert [tuple(t) for t in doc["trailers"]] == [("x-checksum", "abc123")]
    # The upstream's trailers reach the HTTP/1.1 client as a chunked trailer section.
    assert ("x-upstream-trailer", "done") in trailers, trailers
    assert ("x-echo-x-checksum", "abc123") in trailers, trailers
    # The same connection goes on.
    c.send(request("GET", "/bytes/5000", host=CART))
    resp = c.read_response()
    assert resp.status == 200 and resp.body == b"x" * 5000
    c.close()
    assert peer.stats()["answered"] == 4


def test_h2_client_to_an_http11_upstream_still_works(h2_peer, upstream, remora):
    peer, legacy = h2_peer(), upstream("legacy")
    r = remora(mesh(peer.port, legacy_port=legacy.port))
    body, code, version, err = egress(r, "/echo", host=LEGACY)
    assert (code, version) == (200, "2"), err
    doc = json.loads(body)
    assert doc["version"] == "HTTP/1.1" and doc["server"] == "legacy"
    body, code, version, err = egress(r, "/echo")  # and the h2 backend beside it
    assert (code, version) == (200, "2") and json.loads(body)["authority"] == CART
    st = r.stats()
    assert st.get(f"cluster.cds_egress_shop_legacy_http_{legacy.port}.upstream_cx_http2_total", 0) == 0
    assert st[f"{cluster(r, peer.port)}.upstream_cx_http2_total"] == 1


# ---- GOAWAY, REFUSED_STREAM, resets ----

def test_streams_a_goaway_left_unprocessed_are_retried(h2_peer, remora):
    """The peer's first connection sends GOAWAY at its 10th stream with the last stream id of
    its 5th: the 5 below are answered there, the rest are retried on a new connection."""
    peer = h2_peer(goaway_once=10)
    r = remora(mesh(peer.port))
    out = subprocess.run(["nghttp", "-n", "-m", "20", "-H", f":authority: {CART}",
                          f"http://127.0.0.1:{r.egress}/sleep/300"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    ps = peer.stats()
    assert ps["goaway_sent"] == 1 and ps["unprocessed"] >= 5, ps
    assert ps["answered"] == 20 and ps["connections"] >= 2
    st, cl = r.stats(), cluster(r, peer.port)
    assert st["http.egress.downstream_rq_2xx"] == 20
    print({k: v for k, v in st.items() if k.startswith(cl) and v})
    # Every stream sent is counted, the unprocessed ones too; 20 answered.
    assert st[f"{cl}.upstream_rq_total"] == ps["streams"]
    assert st[f"{cl}.upstream_rq_2xx"] == 20
    assert st[f"{cl}.upstream_cx_http2_total"] == ps["connections"]


def test_refused_streams_are_retried(h2_peer, remora):
    peer = h2_peer()
    r = remora(mesh(peer.port))
    urls = [f"http://127.0.0.1:{r.egress}/refuse-once/k{i}" for i in range(10)]
    out = subprocess.run(["nghttp", "-n", "-H", f":authority: {CART}", *urls],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    ps = peer.stats()
    assert (ps["refused"], ps["answered"]) == (10, 10), ps
    st, cl = r.stats(), cluster(r, peer.port)
    assert st["http.egress.downstream_rq_2xx"] == 10
    print({k: v for k, v in st.items() if k.startswith(cl) and v})
    assert st[f"{cl}.upstream_rq_total"] == ps["streams"] == 20  # the refused ones and their retries
    assert st[f"{cl}.upstream_rq_2xx"] == 10


def test_a_reset_mid_response_is_never_a_complete_response(h2_peer, remora):
    peer = h2_peer()
    r = remora(mesh(peer.port))
    c = H2Client(r.egress)
    st = c.request("/reset-mid/200000", authority=CART)
    assert st.status == 200 and st.done
    assert st.reset is not None, "an HTTP/2 client must see RST_STREAM, not END_STREAM"
    assert len(st.body) < 200000
    c.close()
    c = Conn(r.egress)
    c.send(request("GET", "/reset-mid/200000", host=CART))
    resp = c.read_response()
    assert resp.status == 200 and not resp.complete and len(resp.body) < 200000
    c.close()
    assert len([x for x in peer.stats()["records"] if x["path"] == "/reset-mid/200000"]) == 2, \
        "a reset after the response head is not retried"
    body, code, _, err = egress(r, "/echo")
    assert code == 200, err


# ---- flow control ----

@pytest.mark.parametrize("client", ["h1", "h2"])
def test_upload_to_a_slow_reading_h2_upstream_in_bounded_memory(h2_peer, remora, client):
    """64 MiB up to a peer that credits no window for a second, then reads: remora holds what
    the stream's window lets it, not the body (peak RSS)."""
    peer = h2_peer()
    r = remora(mesh(peer.port))
    size = 64 << 20
    egress(r, "/echo")  # the connection and pools exist: growth is the upload's
    idle = r.rss_kib("VmHWM")
    gen = subprocess.Popen(["head", "-c", str(size), "/dev/zero"], stdout=subprocess.PIPE)
    proto = "--http1.1" if client == "h1" else "--http2-prior-knowledge"
    out = subprocess.run(["curl", "-sS", "--noproxy", "*", proto, "-T", "-", "-H", f"Host: {CART}",
                          f"http://127.0.0.1:{r.egress}/slow-upload/1000"],
                         stdin=gen.stdout, capture_output=True, text=True, timeout=120,
                         env=NO_PROXY_ENV)
    gen.wait()
    doc = json.loads(out.stdout)
    digest, zeros = hashlib.sha256(), bytes(1 << 20)
    for _ in range(size >> 20):
        digest.update(zeros)
    assert (doc["length"], doc["sha256"]) == (size, digest.hexdigest()), out.stderr
    grown = r.rss_kib("VmHWM") - idle
    print(f"{size} bytes up ({client} client) to a slow h2 upstream: peak RSS grew {grown} KiB")
    if CHECK_RSS:
        assert grown < BODY_GROWTH_KIB
    # And down: 64 MiB from the h2 upstream to a client.
    idle = r.rss_kib("VmHWM")
    _, code, _, err = egress(r, f"/bytes/{size}", "-o", "/dev/null", proto=proto, timeout=120)
    assert code == 200, err
    grown = r.rss_kib("VmHWM") - idle
    print(f"{size} bytes down ({client} client) from an h2 upstream: peak RSS grew {grown} KiB")
    if CHECK_RSS:
        assert grown < BODY_GROWTH_KIB


def test_a_response_header_list_past_the_limit_is_502_on_that_stream_alone(h2_peer, remora):
    """150 fields (past the 100-field cap, below what counts as a flood): that stream is reset
    and answered 502; the connection goes on (docs/http2.md, "Translation")."""
    peer = h2_peer()
    r = remora(mesh(peer.port))
    c = H2Client(r.egress)
    assert c.request("/echo", authority=CART).status == 200
    st = c.request("/header-flood/150", authority=CART)
    assert st.status == 502, (st.status, st.reset)
    assert c.request("/echo", authority=CART).status == 200
    c.close()
    ps = peer.stats()
    assert ps["connections"] == 1 and ps["answered"] == 2
    assert [x["reset"] for x in ps["records"] if x["path"] == "/header-flood/150"] != [None]


# ---- a hostile upstream ----

class Bystander:
    """A polite HTTP/2 client asking for /echo on the same backend in a loop while the abuse
    runs: every request must be answered 200 (a stream that shared the hostile connection is
    retried, as a reset before the response head is)."""

    def __init__(self, r):
        self.r, self.ok, self.failed, self.stop = r, 0, [], threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        try:
            c = H2Client(self.r.egress)
            while not self.stop.is_set():
                st = c.request("/echo", authority=CART, timeout=20)
                if st.status == 200 and st.reset is None:
                    self.ok += 1
                else:
                    self.failed.append((st.status, st.reset))
                    return
                time.sleep(0.01)
            c.close()
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.failed.append(repr(e))

    def __enter__(self):
        self.thread.start()
        wait_until(lambda: self.ok > 0 or self.failed, what="the bystander's first answer")
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(30)
        assert not self.failed, f"the other requests were not served: {self.failed}"
        assert self.ok > 0


@pytest.mark.parametrize("abuse", ["hpack-bomb", "header-flood", "continuation-flood", "ping-flood"])
def test_a_hostile_upstream_costs_only_its_connection(h2_peer, remora, abuse):
    peer = h2_peer()
    r = remora(mesh(peer.port))
    egress(r, "/echo")
    start = r.rss_kib()
    with Bystander(r):
        # A request in flight on the connection the hostile answer will come on (remora puts
        # streams on the open connection): it must still be answered, on another connection.
        inflight = {}
        t = threading.Thread(target=lambda: inflight.update(
            zip(("body", "code", "version", "err"), egress(r, "/sleep/700"))), daemon=True)
        t.start()
        wait_until(lambda: [x for x in peer.stats()["records"] if x["path"] == "/sleep/700"],
                   what="the request in flight at the peer")
        t0 = time.monotonic()
        _, code, _, err = egress(r, f"/{abuse}", proto="--http1.1", timeout=30)
        took = time.monotonic() - t0
        assert code in (502, 503), (code, err)
        t.join(30)
        assert inflight.get("code") == 200, \
            f"a request that shared the hostile connection failed: {inflight}"
        _, code, version, err = egress(r, f"/{abuse}", timeout=30)
        assert code in (502, 503) and version == "2", (code, err)
    grown = r.rss_kib() - start
    print(f"{abuse}: answered in {took:.1f} s; remora's RSS grew {grown} KiB")
    if CHECK_RSS:
        assert grown < ABUSE_GROWTH_KIB
    assert [x for x in peer.stats()["records"] if x["path"] == f"/{abuse}"], "never reached the peer"
    # Every connection that carried a hostile answer is closed (others may stay pooled).
    hostile = lambda ps: {x["conn"] for x in ps["records"] if x["path"] == f"/{abuse}"}
    try:
        wait_until(lambda: not hostile(peer.stats()) & set(peer.stats()["open"]), timeout=5,
                   what="the hostile connections closed by remora")
    except AssertionError:
        ps = peer.stats()
        odd = [(x["path"], x["conn"], x["reset"], x["answered"]) for x in ps["records"]
               if x["path"] != "/echo"]
        raise AssertionError(f"connections {sorted(hostile(ps) & set(ps['open']))} carried {abuse} "
                             f"and are still open (open: {ps['open']}); (path, connection, reset, "
                             f"answered): {odd}")
    st = r.stats()
    cl = cluster(r, peer.port)
    print({k: v for k, v in st.items() if k.startswith(cl) and v})
    assert st.get(f"{cl}.upstream_cx_protocol_error", 0) >= 1, "not counted as Envoy counts it"
    body, code, _, err = egress(r, "/echo")
    assert code == 200, err


# ---- :authority and connection accounting ----

def test_authority_is_the_host_forwarded_not_the_clients(h2_peer, remora):
    """The header policy replaces Host for an absolute-form target and for a gateway's hostname
    rewrite; :authority must be the Host that is forwarded, as an HTTP/1.1 upstream gets it."""
    peer = h2_peer()
    r = remora(mesh(peer.port))
    c = Conn(r.egress)
    c.send(f"GET http://{CART}/echo HTTP/1.1\r\nHost: legacy.shop.local\r\n\r\n".encode())
    resp = c.read_response()
    c.close()
    assert resp.status == 200
    assert json.loads(resp.body)["authority"] == CART
    # A virtual gateway rewrites Host to the target service's name (its default).
    gw_port = free_port()
    cfg = {"mesh": {"meshName": "shop"},
           "virtualNodes": [{"virtualNodeName": "cart", "spec": {
               "listeners": [{"portMapping": {"port": peer.port, "protocol": "http2"}}],
               "serviceDiscovery": {"dns": {"hostname": "127.0.0.1"}}}}],
           "virtualServices": [{"virtualServiceName": CART, "spec": {
               "provider": {"virtualNode": {"virtualNodeName": "cart"}}}}],
           "virtualGateways": [{"virtualGatewayName": "edge", "spec": {
               "listeners": [{"portMapping": {"port": gw_port, "protocol": "http"}}]}}],
           "gatewayRoutes": [{"virtualGatewayName": "edge", "gatewayRouteName": "c", "spec": {
               "httpRoute": {"match": {"prefix": "/"}, "action": {
                   "target": {"virtualService": {"virtualServiceName": CART}}}}}}],
           "proxy": {"gateway": "edge"}}
    remora(cfg)
    wait_until(lambda: port_open(gw_port), what="the gateway listener")
    c = Conn(gw_port)
    c.send(request("GET", "/echo", host="shop.example.com"))
    resp = c.read_response()
    c.close()
    assert resp.status == 200
    assert json.loads(resp.body)["authority"] == CART


def test_an_upstream_that_drops_its_connection_mid_stream_is_a_remote_destroy(h2_peer, remora):
    peer = h2_peer()
    r = remora(mesh(peer.port))
    cl = cluster(r, peer.port)
    # The upstream closes the connection under the stream; the retry, on a new one, is answered.
    body, code, _, err = egress(r, "/drop-once/a")
    assert code == 200, err
    assert json.loads(body)["conn"] == 2
    st = r.stats()
    assert st[f"{cl}.upstream_cx_total"] == 2
    assert st[f"{cl}.upstream_cx_destroy"] == 1
    assert st[f"{cl}.upstream_cx_destroy_remote"] == 1
    assert st[f"{cl}.upstream_cx_destroy_local"] == 0
    assert st[f"{cl}.upstream_cx_destroy_with_active_rq"] == 1
    assert st[f"{cl}.upstream_cx_destroy_remote_with_active_rq"] == 1
    assert st[f"{cl}.upstream_cx_destroy_local_with_active_rq"] == 0
