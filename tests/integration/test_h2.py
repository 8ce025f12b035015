"""HTTP/2 on remora's listeners (proxy/h2_server.c, docs/http2.md), through the real binary and
real clients: curl (--http2-prior-knowledge, --http2 over TLS by ALPN), nghttp, python3-h2,
and raw frames for what a polite client never sends.

The upstreams speak HTTP/1.1 (upstream.py, and h2_upstream.py for trailers and slow reads):
every request here crosses the h2 -> neutral head -> h1 translation. The conformance cases
follow h2spec's published list (RFC 9113 sections 3-8 and HPACK) where nghttp2 or remora
decides; each abuse budget has a test that checks the GOAWAY code the offender gets, that
another connection is served meanwhile, and remora's memory."""
import hashlib
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time

import pytest

from conftest import free_port, mesh_config, port_open, wait_until
from h2_wire import (ACK, CANCEL, COMPRESSION_ERROR, CONTINUATION, DATA, END_HEADERS,
                     END_STREAM, ENABLE_PUSH, ENHANCE_YOUR_CALM, FLOW_CONTROL_ERROR,
                     FRAME_SIZE_ERROR, GOAWAY, HEADERS, INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE,
                     NO_ERROR, PADDED, PING, PREFACE, PRIORITY, PRIORITY_FLAG, PROTOCOL_ERROR,
                     PUSH_PROMISE, REFUSED_STREAM, RST_STREAM, SETTINGS, STREAM_CLOSED,
                     H2Client, RawH2, data, frame, goaway, ping, request_fields, rst, settings,
                     window_update)
from rawhttp import Conn, request

HERE = os.path.dirname(os.path.abspath(__file__))
SANITIZER = os.environ.get("REMORA_SANITIZER", "")
# RSS bounds are about remora's own buffers; a sanitizer's shadow memory and quarantine are
# larger than the bounds themselves (test_streaming.py does the same).
CHECK_RSS = SANITIZER == ""
BODY_GROWTH_KIB = 4 * 1024    # what streaming a body of any size may add to the peak RSS
ABUSE_GROWTH_KIB = 16 * 1024  # what one abusive connection may add to RSS, at most
NO_PROXY_ENV = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}


# ---- peers and set-ups ----

class H2Upstream:
    """h2_upstream.py: trailers both ways and slow reads (see its docstring)."""

    def __init__(self):
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, os.path.join(HERE, "h2_upstream.py"),
                                      "--port", str(self.port)])
        wait_until(lambda: port_open(self.port), what="h2_upstream")

    def stats(self):
        c = Conn(self.port)
        c.send(request("GET", "/_stats", host="x"))
        return json.loads(c.read_response().body)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def h2_upstream():
    started = []

    def start():
        u = H2Upstream()
        started.append(u)
        return u

    yield start
    for u in started:
        u.stop()


def tls_mesh(app_port, backend_port, pki, mode="STRICT"):
    cfg = mesh_config(app_port, backend_port)
    cfg["virtualNodes"][0]["spec"]["listeners"][0]["tls"] = {
        "mode": mode,
        "certificate": {"file": {"certificateChain": pki.b.cert, "privateKey": pki.b.key}}}
    return cfg


def tls_ctx(pki, alpn=("h2", "http/1.1")):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(pki.ca.cert)
    ctx.set_alpn_protocols(list(alpn))
    return ctx


def curl(*args, timeout=30):
    """curl's body, status and HTTP version ("2", "1.1")."""
    out = subprocess.run(["curl", "-sS", "--noproxy", "*", "--max-time", str(timeout), "-o", "-",
                          "-w", "\n%{http_code} %{http_version}", *args],
                         capture_output=True, timeout=timeout + 10, env=NO_PROXY_ENV)
    body, _, tail = out.stdout.rpartition(b"\n")
    code, _, version = tail.decode().partition(" ")
    return body, int(code or 0), version, out.stderr.decode(errors="replace")


def h2c(port, path="/echo", host=None, extra=()):
    args = ["--http2-prior-knowledge", *extra]
    if host:
        args += ["-H", f"Host: {host}"]
    return curl(*args, f"http://127.0.0.1:{port}{path}")


def conn(r, **kw):
    """A raw HTTP/2 connection to ingress, past the server's SETTINGS."""
    c = RawH2(r.ingress, **kw)
    f = c.until(lambda f: f.type == SETTINGS and not f.flags & ACK)
    assert f is not None, "no SETTINGS from the server"
    return c


def seen(body):
    """What the echo upstream received: (method, target, headers as a list of pairs)."""
    doc = json.loads(body)
    return doc["method"], doc["target"], [(k.lower(), v) for k, v in doc["headers"]]


def served(r):
    """Another client is answered: a new HTTP/2 connection and an HTTP/1.1 one."""
    body, code, version, err = h2c(r.ingress)
    assert (code, version) == (200, "2"), err
    c = Conn(r.ingress)
    c.send(request("GET", "/echo", host="web", headers=[("Connection", "close")]))
    assert c.read_response().status == 200


class Bystander:
    """A polite HTTP/2 client on its own connection asking for /echo in a loop while an abuse
    runs: every one of its requests must be answered."""

    def __init__(self, r):
        self.r, self.ok, self.failed, self.stop = r, 0, [], threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        try:
            c = H2Client(self.r.ingress)
            while not self.stop.is_set():
                st = c.request("/echo", timeout=10)
                if st.status == 200:
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
        self.thread.join(20)
        assert not self.failed, f"the other connection was not served: {self.failed}"
        assert self.ok > 0


def rss_guard(r):
    start = r.rss_kib()

    def check():
        grown = r.rss_kib() - start
        print(f"remora RSS grew {grown} KiB")
        if CHECK_RSS:
            assert grown < ABUSE_GROWTH_KIB, f"RSS grew {grown} KiB"
    return check


def stat(r, name):
    return r.stats().get(name, 0)


# ---- clients that speak it ----

def test_prior_knowledge_to_egress_reaches_an_http1_backend(mesh):
    r, _, backend = mesh()
    body, code, version, err = h2c(r.egress, "/echo?q=1", host="cart.shop.local")
    assert (code, version) == (200, "2"), err
    method, target, headers = seen(body)
    assert (method, target) == ("GET", "/echo?q=1")
    assert ("host", "cart.shop.local") in headers
    assert ("x-forwarded-proto", "http") in headers
    assert json.loads(body)["version"] == "HTTP/1.1" and json.loads(body)["server"] == "cart-v1"
    st = r.stats()
    assert st["http.egress.downstream_cx_http2_total"] == 1
    assert st["http.egress.downstream_rq_2xx"] == 1
    wait_until(lambda: stat(r, "http.egress.downstream_cx_http2_active") == 0,
               what="the h2 connection counted out")


def test_prior_knowledge_to_ingress_with_bodies_and_head(mesh):
    r, app, _ = mesh()
    payload = os.urandom(300000)
    out = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "--data-binary", "@-",
                          "-w", "\n%{http_version}", f"http://127.0.0.1:{r.ingress}/upload"],
                         input=payload, capture_output=True, timeout=30)
    doc, _, version = out.stdout.rpartition(b"\n")
    assert version == b"2", out.stderr
    doc = json.loads(doc)
    assert doc["length"] == len(payload)
    assert doc["sha256"] == hashlib.sha256(payload).hexdigest()
    assert ("Content-Length", str(len(payload))) in [tuple(h) for h in doc["headers"]]
    # A response body of 5 MB, and a HEAD: its Content-Length, no body.
    body, code, version, err = h2c(r.ingress, "/bytes/5000000")
    assert (code, version, len(body)) == (200, "2", 5000000), err
    out = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-I",
                          f"http://127.0.0.1:{r.ingress}/bytes/1234"], capture_output=True,
                         text=True, timeout=10)
    assert out.stdout.startswith("HTTP/2 200"), out.stdout
    assert "content-length: 1234" in out.stdout.lower()
    # A chunked upstream response is framed by DATA frames alone.
    body, code, version, _ = h2c(r.ingress, "/bytes/70000?chunked=1")
    assert (code, version, len(body)) == (200, "2", 70000)
    assert app.stats()["requests"] == 4


def test_http11_is_served_as_before_on_the_same_ports(mesh):
    r, app, backend = mesh()
    for port, host in ((r.ingress, "web"), (r.egress, "cart.shop.local")):
        c = Conn(port)
        c.send(request("GET", "/echo", host=host))  # 'G': not the preface at the first byte
        assert c.read_response().status == 200
        c.send(request("POST", "/upload", host=host, body=b"abc"))  # 'P', then 'O'
        assert json.loads(c.read_response().body)["length"] == 3
    # Bytes that start like the preface and then differ are HTTP/1.1's to refuse (505 for a
    # 2.0 version in an HTTP/1.1-shaped request line), split in two reads.
    c = Conn(r.egress)
    c.send(b"PRI * HTTP/2.0\r\n")
    time.sleep(0.1)
    c.send(b"\r\nXX\r\n\r\n")
    assert c.read_response().status == 505
    st = r.stats()
    assert st["http.egress.downstream_cx_http2_total"] == 0
    assert st["http.ingress.downstream_cx_http2_total"] == 0


def test_the_preface_split_byte_by_byte_is_still_http2(mesh):
    r, _, _ = mesh()
    c = RawH2(r.ingress, preface=False, ack=False)
    for b in PREFACE:
        c.send(bytes([b]))
    c.send(settings())
    c.request(1)
    resp = c.response(1)
    assert (resp.end, resp.status) == ("end", 200)


def test_h2_over_tls_is_chosen_by_alpn(pki, upstream, remora):
    app, backend = upstream("app"), upstream("cart-v1")
    r = remora(tls_mesh(app.port, backend.port, pki))
    base = ["--cacert", pki.ca.cert, "--resolve", f"b.apps.local:{r.ingress}:127.0.0.1"]
    url = f"https://b.apps.local:{r.ingress}/echo"
    body, code, version, err = curl("--http2", *base, url)
    assert (code, version) == (200, "2"), err
    assert ("x-forwarded-proto", "https") in seen(body)[2]
    body, code, version, err = curl("--http1.1", *base, url)
    assert (code, version) == (200, "1.1"), err
    out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{r.ingress}",
                          "-servername", "b.apps.local", "-alpn", "h2,http/1.1", "-CAfile",
                          pki.ca.cert], input=b"", capture_output=True, timeout=15)
    assert b"ALPN protocol: h2" in out.stdout, out.stdout[-2000:]
    # Over TLS the preface alone does not make HTTP/2: without ALPN h2 it is HTTP/1.1's.
    s = tls_ctx(pki, alpn=("http/1.1",)).wrap_socket(
        socket.create_connection(("127.0.0.1", r.ingress), timeout=5),
        server_hostname="b.apps.local")
    assert s.selected_alpn_protocol() == "http/1.1"
    s.sendall(PREFACE)
    assert s.recv(100).startswith(b"HTTP/1.1 505")
    s.close()
    # Raw frames over TLS: a bad preface after ALPN h2 is a connection error.
    c = RawH2(r.ingress, tls=tls_ctx(pki), server_hostname="b.apps.local", preface=False)
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert c.closed()
    st = r.stats()
    assert st["http.ingress.downstream_cx_http2_total"] == 2
    assert st[f"listener.0.0.0.0_{r.ingress}.ssl.handshake"] == 5


def test_permissive_listener_takes_h2_over_tls_and_h2c(pki, upstream, remora):
    app, backend = upstream("app"), upstream("cart-v1")
    r = remora(tls_mesh(app.port, backend.port, pki, mode="PERMISSIVE"))
    body, code, version, err = curl("--http2", "--cacert", pki.ca.cert, "--resolve",
                                    f"b.apps.local:{r.ingress}:127.0.0.1",
                                    f"https://b.apps.local:{r.ingress}/echo")
    assert (code, version) == (200, "2"), err
    body, code, version, err = h2c(r.ingress)
    assert (code, version) == (200, "2"), err
    assert ("x-forwarded-proto", "http") in seen(body)[2]


def test_nghttp_many_concurrent_streams_on_one_connection(mesh):
    r, app, _ = mesh()
    start = time.monotonic()
    out = subprocess.run(["nghttp", "-n", "-m", "100", f"http://127.0.0.1:{r.ingress}/sleep/300"],
                         capture_output=True, text=True, timeout=60)
    took = time.monotonic() - start
    assert out.returncode == 0, out.stdout + out.stderr
    st = r.stats()
    assert st["http.ingress.downstream_cx_http2_total"] == 1
    assert st["http.ingress.downstream_rq_2xx"] == 100
    assert app.stats()["requests"] == 100
    assert took < 10, f"100 requests of 300 ms took {took:.1f} s: not concurrent"
    # And 300 more over one connection than it has streams at once.
    out = subprocess.run(["nghttp", "-n", "-m", "300", f"http://127.0.0.1:{r.ingress}/echo"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert stat(r, "http.ingress.downstream_rq_2xx") == 400


def test_request_and_response_trailers(h2_upstream, upstream, remora):
    app, backend = h2_upstream(), upstream("cart-v1")
    r = remora(mesh_config(app.port, backend.port))
    c = H2Client(r.ingress)
    st = c.request("/trailers", "POST", body=b"x" * 100000,
                   headers=[("te", "trailers"), ("content-type", "text/plain")],
                   trailers=[("x-checksum", "abc123"), ("x-count", "7")])
    assert st.status == 200 and st.done and st.reset is None
    doc = json.loads(bytes(st.body))
    assert doc["length"] == 100000
    assert [tuple(t) for t in doc["trailers"]] == [("x-checksum", "abc123"), ("x-count", "7")]
    # TE is hop-by-hop: the HTTP/1.1 upstream does not see it; the body went chunked.
    names = [k.lower() for k, _ in doc["headers"]]
    assert "te" not in names and ("transfer-encoding", "chunked") in [
        (k.lower(), v) for k, v in doc["headers"]]
    trailers = dict(st.trailers)
    assert trailers["x-upstream-trailer"] == "done"
    assert trailers["x-echo-x-checksum"] == "abc123"
    assert "trailer" not in dict(st.headers)  # hop-by-hop in remora's policy
    assert stat(r, "http.ingress.downstream_rq_2xx") == 1
    c.close()


def test_slow_upstream_stalls_only_its_own_stream(h2_upstream, upstream, remora):
    """Backpressure per stream: an upload to an upstream that does not read closes that
    stream's window; another stream on the same connection is answered meanwhile; the upload
    completes once the upstream reads, and remora held at most a window of it."""
    app, backend = h2_upstream(), upstream("cart-v1")
    r = remora(mesh_config(app.port, backend.port))
    c = H2Client(r.ingress)
    payload = os.urandom(16 << 20)
    idle = r.rss_kib()
    sid = c.start("/slow-upload/5000", "POST", end=False)
    left = payload
    # The upstream reads nothing for 5 s; filling the kernel's loopback buffers on the way can
    # take seconds on a loaded machine.
    deadline = time.monotonic() + 4.5
    stalled, zero_since = False, None
    while time.monotonic() < deadline and not stalled:
        left = c.send_some(sid, left)
        c.pump(0.05)
        if c.conn.local_flow_control_window(sid) > 0:
            zero_since = None
        elif zero_since is None:
            zero_since = time.monotonic()
        stalled = zero_since is not None and time.monotonic() - zero_since > 0.5
    assert stalled and left, "the stream's window never stayed closed"
    assert app.stats()["reading"] == 0  # it is the upstream that does not read
    sent_at_stall = len(payload) - len(left)  # what remora, and the kernel's buffers, hold
    assert sent_at_stall > 65535  # the window was credited while the upstream took bytes
    assert c.conn.outbound_flow_control_window > 0  # the connection is not what stalled
    grown = r.rss_kib() - idle
    if CHECK_RSS:
        assert grown < 2048, f"remora grew {grown} KiB holding a stalled upload"
    other = c.start("/echo?other")  # a second stream on the same connection
    t = time.monotonic()
    st = c.wait(other, timeout=5)
    assert st.status == 200 and time.monotonic() - t < 2
    deadline = time.monotonic() + 60
    while left or not c.streams[sid].done:
        if left:
            left = c.send_some(sid, left)
            if not left:
                c.finish(sid)
        c.pump(0.05)
        assert time.monotonic() < deadline, "the upload never completed"
    doc = json.loads(bytes(c.streams[sid].body))
    assert doc == {"length": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    print(f"stalled after {sent_at_stall} bytes; remora's RSS grew {grown} KiB by then")
    c.close()


def test_large_bodies_stream_through_h2_in_bounded_memory(h2_upstream, upstream, remora):
    """1 GiB each way through one HTTP/2 stream (to an upstream that reads through a 16 KiB
    receive buffer, and from one that writes as fast as it can): remora's peak RSS grows by
    less than BODY_GROWTH_KIB over its idle peak."""
    app, backend = h2_upstream(), upstream("cart-v1")
    size = 1 << 30 if CHECK_RSS else 64 << 20
    r = remora(mesh_config(backend.port, app.port))  # egress -> h2_upstream
    idle = r.rss_kib("VmHWM")
    gen = subprocess.Popen(["head", "-c", str(size), "/dev/zero"], stdout=subprocess.PIPE)
    out = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-T", "-", "-H",
                          "Host: cart.shop.local",
                          f"http://127.0.0.1:{r.egress}/slow-upload/0/0"],
                         stdin=gen.stdout, capture_output=True, text=True, timeout=600)
    gen.wait()
    doc = json.loads(out.stdout)
    assert doc["length"] == size, out.stderr
    zeros, digest = bytes(1 << 20), hashlib.sha256()
    for _ in range(size >> 20):
        digest.update(zeros)
    assert doc["sha256"] == digest.hexdigest()
    grown = r.rss_kib("VmHWM") - idle
    print(f"{size} bytes up over HTTP/2: remora's peak RSS grew {grown} KiB")
    if CHECK_RSS:
        assert grown < BODY_GROWTH_KIB
    r = remora(mesh_config(backend.port, backend.port))
    idle = r.rss_kib("VmHWM")
    _, code, version, err = curl("--http2-prior-knowledge", "-o", "/dev/null", "-H",
                                 "Host: cart.shop.local",
                                 f"http://127.0.0.1:{r.egress}/bytes/{size}", timeout=300)
    assert (code, version) == (200, "2"), err
    grown = r.rss_kib("VmHWM") - idle
    print(f"{size} bytes down over HTTP/2: remora's peak RSS grew {grown} KiB")
    if CHECK_RSS:
        assert grown < BODY_GROWTH_KIB


def test_host_authority_cookies_and_te(mesh):
    r, app, _ = mesh()
    c = conn(r)
    # :authority becomes Host; a Host equal to it is kept once.
    c.request(1, extra=[("host", "web")])
    resp = c.response(1)
    assert resp.status == 200
    hosts = [v for k, v in seen(resp.body)[2] if k == "host"]
    assert hosts == ["web"]
    # Cookie crumbs are joined with "; " for HTTP/1.1 (RFC 9113 section 8.2.3).
    c.request(3, extra=[("cookie", "a=1"), ("x-mid", "m"), ("cookie", "b=2")])
    resp = c.response(3)
    assert ("cookie", "a=1; b=2") in seen(resp.body)[2]
    # TE: trailers is allowed (and not forwarded); anything else is malformed.
    c.request(5, extra=[("te", "trailers")])
    resp = c.response(5)
    assert resp.status == 200 and "te" not in [k for k, _ in seen(resp.body)[2]]
    # A Host that names another entity than :authority is malformed (RFC 9113 section 8.3.1).
    before = app.stats()["requests"]
    c.request(7, extra=[("host", "elsewhere")])
    assert c.response(7).code == PROTOCOL_ERROR
    c.request(9)
    assert c.response(9).status == 200
    assert app.stats()["requests"] == before + 1
    # Without :authority, Host is the authority.
    c.send(c.headers(11, [(":method", "GET"), (":scheme", "http"), (":path", "/echo"),
                          ("host", "web")]))
    resp = c.response(11)
    assert resp.status == 200 and ("host", "web") in seen(resp.body)[2]
    c.close()


def test_connect_is_answered_501_and_extended_connect_refused(mesh):
    r, app, _ = mesh()
    c = conn(r)
    c.send(c.headers(1, [(":method", "CONNECT"), (":authority", "example.com:443")],
                     end_stream=False))
    resp = c.response(1)
    assert resp.status == 501 and b"CONNECT" in resp.body
    c.send(c.headers(3, request_fields("/chat", "CONNECT", extra=[(":protocol", "websocket")]),
                     end_stream=False))
    assert c.stream_error(3).code == PROTOCOL_ERROR
    c.request(5)
    assert c.response(5).status == 200
    assert app.stats()["requests"] == 1


def test_expect_100_continue_is_answered_by_remora(mesh):
    r, app, _ = mesh()
    c = conn(r)
    c.send(c.headers(1, request_fields("/upload", "POST", extra=[("expect", "100-continue"),
                                                                 ("content-length", "3")]),
                     end_stream=False))
    f = c.until(lambda f: f.type == HEADERS and f.stream == 1)
    assert dict(f.fields)[":status"] == "100"
    c.send(data(1, b"abc"))
    resp = c.response(1)
    assert resp.status == 200 and json.loads(resp.body)["length"] == 3
    assert "expect" not in [k.lower() for k, _ in json.loads(resp.body)["headers"]]


def test_graceful_goaway_on_drain(mesh):
    r, app, _ = mesh()
    c = conn(r)
    c.request(1, "/sleep/1500")
    time.sleep(0.2)
    r.proc.send_signal(15)
    notice = c.goaway()
    assert notice is not None and notice.code == NO_ERROR and notice.last == (1 << 31) - 1
    final = c.goaway()
    assert final is not None and final.code == NO_ERROR and final.last == 1
    resp = c.response(1)
    assert (resp.end, resp.status) == ("end", 200)  # the stream in flight is finished
    assert c.closed(10)
    assert r.proc.wait(20) == 0


def test_idle_connection_gets_goaway_after_the_idle_timeout(mesh):
    r, _, _ = mesh(listener_timeout={"idle": {"unit": "ms", "value": 500}})
    c = conn(r)
    c.request(1)
    assert c.response(1).status == 200
    t = time.monotonic()
    g = c.goaway(5)
    assert g is not None and g.code == NO_ERROR and g.last == 1
    assert 0.3 < time.monotonic() - t < 3
    assert c.closed()
    assert stat(r, "http.ingress.downstream_cx_idle_timeout") == 1


def test_header_timeouts(mesh):
    r, app, _ = mesh(extra_proxy={"requestHeaderTimeout": {"unit": "ms", "value": 500}})
    c = RawH2(r.ingress, preface=False, ack=False)
    c.send(PREFACE)  # and no SETTINGS: the preface is not complete
    assert c.closed(3)
    c = conn(r)
    c.send(c.headers(1, request_fields(), end_headers=False))  # then no CONTINUATION
    g = c.goaway(3)
    assert g is not None and g.code == NO_ERROR
    assert c.closed()
    assert stat(r, "http.ingress.downstream_cx_header_timeout") == 2
    assert app.stats()["requests"] == 0


# ---- conformance: h2spec's cases, answered by nghttp2 or by remora ----

def open_stream(c, sid=1):
    """A request stream left open (no END_STREAM) to /upload."""
    c.send(c.headers(sid, request_fields("/upload", "POST"), end_stream=False))


def hdr_frame(c, sid, fields, flags):
    return frame(HEADERS, flags, sid, c.block(fields))


CONNECTION_ERRORS = {
    # RFC 9113 section 3.4, 4.2, 5.1, 5.1.1, 6.x: (what to send, the GOAWAY code)
    "settings-on-a-stream": (lambda c: c.send(settings(stream=1)), PROTOCOL_ERROR),
    "ping-on-a-stream": (lambda c: c.send(ping(stream=1)), PROTOCOL_ERROR),
    "ping-of-7-octets": (lambda c: c.send(frame(PING, 0, 0, b"1234567")), FRAME_SIZE_ERROR),
    "settings-of-5-octets": (lambda c: c.send(frame(SETTINGS, 0, 0, b"12345")), FRAME_SIZE_ERROR),
    "settings-ack-with-payload": (lambda c: c.send(frame(SETTINGS, ACK, 0, b"\0\x03\0\0\0\x01")),
                                  FRAME_SIZE_ERROR),
    "enable-push-2": (lambda c: c.send(settings((ENABLE_PUSH, 2))), PROTOCOL_ERROR),
    "initial-window-2^31": (lambda c: c.send(settings((INITIAL_WINDOW_SIZE, 1 << 31))),
                            FLOW_CONTROL_ERROR),
    "max-frame-size-below-2^14": (lambda c: c.send(settings((MAX_FRAME_SIZE, 16383))),
                                  PROTOCOL_ERROR),
    "max-frame-size-2^24": (lambda c: c.send(settings((MAX_FRAME_SIZE, 1 << 24))),
                            PROTOCOL_ERROR),
    "goaway-on-a-stream": (lambda c: c.send(goaway(stream=1)), PROTOCOL_ERROR),
    "window-update-0-on-the-connection": (lambda c: c.send(window_update(0, 0)),
                                          PROTOCOL_ERROR),
    "connection-window-past-2^31-1": (lambda c: c.send(window_update(0, (1 << 31) - 1)),
                                      FLOW_CONTROL_ERROR),
    "data-on-stream-0": (lambda c: c.send(data(0, b"x")), PROTOCOL_ERROR),
    "headers-on-stream-0": (lambda c: c.send(c.headers(0, request_fields())), PROTOCOL_ERROR),
    "data-on-an-idle-stream": (lambda c: c.send(data(1, b"x")), PROTOCOL_ERROR),
    "rst-stream-on-an-idle-stream": (lambda c: c.send(rst(1)), PROTOCOL_ERROR),
    "window-update-on-an-idle-stream": (lambda c: c.send(window_update(1, 1)), PROTOCOL_ERROR),
    "continuation-without-headers": (
        lambda c: c.send(frame(CONTINUATION, END_HEADERS, 1, c.block(request_fields()))),
        PROTOCOL_ERROR),
    "even-stream-id": (lambda c: c.send(c.headers(2, request_fields())), PROTOCOL_ERROR),
    "client-push-promise": (
        lambda c: (open_stream(c), c.send(frame(PUSH_PROMISE, END_HEADERS, 1,
                                                b"\0\0\0\x02" + c.block(request_fields())))),
        PROTOCOL_ERROR),
    "unknown-frame-inside-a-header-block": (
        lambda c: c.send(c.headers(1, request_fields(), end_headers=False),
                         frame(0x42, 0, 0, b"abc")), PROTOCOL_ERROR),
    "ping-inside-a-header-block": (
        lambda c: c.send(c.headers(1, request_fields(), end_headers=False), ping()),
        PROTOCOL_ERROR),
    "continuation-on-another-stream": (
        lambda c: c.send(c.headers(1, request_fields(), end_headers=False),
                         frame(CONTINUATION, END_HEADERS, 3, c.block([("x-a", "b")]))),
        PROTOCOL_ERROR),
    "data-frame-past-max-frame-size": (
        lambda c: (open_stream(c), c.send(data(1, b"x" * 16385, end=False))), FRAME_SIZE_ERROR),
    "headers-depending-on-itself": (
        lambda c: c.send(frame(HEADERS, END_HEADERS | END_STREAM | PRIORITY_FLAG, 1,
                               b"\0\0\0\x01\x10" + c.block(request_fields()))), PROTOCOL_ERROR),
    "priority-on-stream-0": (lambda c: c.send(frame(PRIORITY, 0, 0, b"\0\0\0\x01\x10")),
                             PROTOCOL_ERROR),
    "hpack-index-past-the-tables": (lambda c: c.send(c.headers(1, None, raw_block=b"\xff\x80\x01")),
                                    COMPRESSION_ERROR),
    "hpack-index-0": (lambda c: c.send(c.headers(1, None, raw_block=b"\x80")), COMPRESSION_ERROR),
    "hpack-table-size-update-past-the-setting": (
        lambda c: c.send(c.headers(1, None, raw_block=b"\x3f\xe9\x26\x82")), COMPRESSION_ERROR),
    "hpack-table-size-update-after-a-field": (
        lambda c: c.send(c.headers(1, None, raw_block=b"\x82\x20")), COMPRESSION_ERROR),
    "padding-longer-than-the-frame": (
        lambda c: (open_stream(c), c.send(frame(DATA, PADDED, 1, b"\x05abc"))), PROTOCOL_ERROR),
    "data-after-end-stream": (
        lambda c: (c.request(1, "/sleep/1000"), c.send(data(1, b"late"))), STREAM_CLOSED),
}


@pytest.mark.parametrize("case", sorted(CONNECTION_ERRORS))
def test_connection_errors_get_goaway(mesh, case):
    r, app, _ = mesh()
    c = conn(r)
    send, code = CONNECTION_ERRORS[case]
    send(c)
    g = c.until(lambda f: f.type in (GOAWAY, RST_STREAM))
    assert g is not None, "neither GOAWAY nor RST_STREAM"
    if case == "data-after-end-stream":  # RFC 9113 5.1: a stream or a connection error
        assert g.code == code
    else:
        assert g.type == GOAWAY and g.code == code, (g.type, g.code)
        assert c.closed()
    served(r)


STREAM_ERRORS = {
    # RFC 9113 section 8: malformed requests are stream errors of type PROTOCOL_ERROR.
    "unknown-pseudo-header": [(":foo", "bar")],
    "response-pseudo-header": [(":status", "200")],
    "pseudo-header-after-a-field": "after",
    "no-method": "drop :method",
    "no-scheme": "drop :scheme",
    "no-path": "drop :path",
    "empty-path": "empty :path",
    "two-paths": [(":path", "/again")],
    "uppercase-field-name": [("X-Upper", "1")],
    "connection-field": [("connection", "keep-alive")],
    "keep-alive-field": [("keep-alive", "timeout=5")],
    "proxy-connection-field": [("proxy-connection", "keep-alive")],
    "transfer-encoding-field": [("transfer-encoding", "chunked")],
    "upgrade-field": [("upgrade", "websocket")],
    "te-other-than-trailers": [("te", "gzip")],
    "field-value-with-leading-space": [("x-a", " b")],
    "field-value-with-a-newline": [("x-a", "b\nc")],
    "two-hosts": [("host", "web"), ("host", "web")],
}


@pytest.mark.parametrize("case", sorted(STREAM_ERRORS))
def test_malformed_requests_get_a_stream_error(mesh, case):
    r, app, _ = mesh()
    c = conn(r)
    change = STREAM_ERRORS[case]
    fields = request_fields()
    if change == "after":
        fields = [fields[0], ("x-a", "b"), *fields[1:]]
    elif isinstance(change, str) and change.startswith("drop "):
        fields = [f for f in fields if f[0] != change[5:]]
    elif isinstance(change, str) and change.startswith("empty "):
        fields = [(k, "" if k == change[6:] else v) for k, v in fields]
    else:
        fields = fields + change
    c.send(c.headers(1, fields))
    f = c.stream_error(1)
    assert f is not None and f.type == RST_STREAM and f.code == PROTOCOL_ERROR, (f and f.type,
                                                                                f and f.code)
    c.request(3)  # the connection goes on
    assert c.response(3).status == 200
    assert app.stats()["requests"] == 1


@pytest.mark.parametrize("case", ["length-above-data", "length-below-data",
                                  "pseudo-header-in-trailers", "trailers-without-end-stream"])
def test_body_framing_errors(mesh, case):
    r, app, _ = mesh()
    c = conn(r)
    length = [("content-length", "10")]
    if case == "length-above-data":
        c.send(c.headers(1, request_fields("/upload", "POST", extra=length), end_stream=False),
               data(1, b"12345"))
    elif case == "length-below-data":
        c.send(c.headers(1, request_fields("/upload", "POST", extra=length), end_stream=False),
               data(1, b"123456789012", end=False))
    elif case == "pseudo-header-in-trailers":
        c.send(c.headers(1, request_fields("/upload", "POST"), end_stream=False),
               data(1, b"abc", end=False), c.headers(1, [(":path", "/x")]))
    else:
        c.send(c.headers(1, request_fields("/upload", "POST"), end_stream=False),
               data(1, b"abc", end=False), c.headers(1, [("x-t", "1")], end_stream=False))
    f = c.stream_error(1)
    assert f is not None and f.code == PROTOCOL_ERROR, (f and f.type, f and f.code)
    if f.type == RST_STREAM:
        c.request(3)
        assert c.response(3).status == 200


def test_frames_that_are_ignored_or_answered(mesh):
    r, _, _ = mesh()
    c = conn(r)
    # Unknown frame types and settings are ignored; PING is echoed; a PING ACK is not answered.
    c.send(frame(0x42, 0xff, 0, b"whatever"), settings((0x99, 7)), ping(b"abcdefgh"))
    f = c.until(lambda f: f.type == PING)
    assert f.flags & ACK and f.payload == b"abcdefgh"
    c.send(ping(b"zzzzzzzz", flags=ACK), ping(b"second!!"))
    f = c.until(lambda f: f.type == PING)
    assert f.payload == b"second!!"
    # Our SETTINGS were acknowledged; the server's limits are what docs/http2.md says.
    assert c.server_settings[3] == 100 and c.server_settings[6] == 65536
    # A 2^14-octet DATA frame is accepted; padding is taken off; a window of 1 gives 1 octet.
    c.send(c.headers(1, request_fields("/upload", "POST"), end_stream=False),
           data(1, b"y" * 16384, end=False), frame(DATA, PADDED | END_STREAM, 1, b"\x03ab\0\0\0"))
    resp = c.response(1)
    assert resp.status == 200 and json.loads(resp.body)["length"] == 16386
    c.close()
    c = RawH2(r.ingress, client_settings=[(INITIAL_WINDOW_SIZE, 1)])
    c.request(1, "/bytes/10")
    f = c.until(lambda f: f.type == DATA)
    assert len(f.payload) == 1
    c.send(window_update(1, 100))
    resp = c.response(1, window=False)
    assert resp.end == "end" and len(resp.body) == 9
    # Unknown error codes in RST_STREAM and GOAWAY are nothing special.
    c.request(3, "/sleep/500")
    c.send(rst(3, code=0x99))
    c.request(5)
    assert c.response(5).status == 200
    c.send(goaway(5, code=0x77))
    assert c.closed()


# ---- abuse budgets ----

def test_rapid_reset_gets_enhance_your_calm(mesh):
    r, app, _ = mesh()
    guard = rss_guard(r)
    with Bystander(r):
        c = conn(r)
        burst = b"".join(c.headers(sid, request_fields()) + rst(sid, CANCEL)
                         for sid in range(1, 1201, 2))
        c.send(burst)
        g = c.goaway(10)
        assert g is not None and g.code == ENHANCE_YOUR_CALM
        assert c.closed()
    assert stat(r, "http.ingress.downstream_rq_too_many_premature_resets") == 1
    served(r)
    guard()


def test_server_provoked_resets_count_as_premature(mesh):
    """MadeYouReset (CVE-2025-8671): malformed requests make remora reset them itself, a
    batch per round trip (within nghttp2's concurrency limit)."""
    r, app, _ = mesh()
    c = conn(r)
    bad = [*request_fields(), ("connection", "close")]
    sid, g = 1, None
    for _ in range(20):
        c.send(b"".join(c.headers(sid + 2 * i, bad) for i in range(50)))
        last = sid + 98
        sid += 100
        g = c.until(lambda f: f.type == GOAWAY or (f.type == RST_STREAM and f.stream == last))
        if g is None or g.type == GOAWAY:
            break
    assert g is not None and g.type == GOAWAY and g.code == ENHANCE_YOUR_CALM
    assert stat(r, "http.ingress.downstream_rq_too_many_premature_resets") == 1
    assert app.stats()["requests"] == 0
    served(r)


def test_a_lower_stream_id_nghttp2_does_not_know_is_ignored(mesh):
    """nghttp2 cannot tell HEADERS on a skipped stream id from late trailers on a stream it
    reset (which RFC 9113 section 5.1 says to ignore), so it ignores both (docs/http2.md)."""
    r, app, _ = mesh()
    c = conn(r)
    c.request(5)
    assert c.response(5).status == 200
    c.request(3)
    c.request(7)
    resp = c.response(7)
    assert resp.status == 200
    assert not [f for f in c.frames if f.stream == 3]


def test_continuation_flood_gets_enhance_your_calm(mesh):
    r, app, _ = mesh()
    guard = rss_guard(r)
    with Bystander(r):
        c = conn(r)
        frames = [c.headers(1, request_fields(), end_headers=False)]
        frames += [frame(CONTINUATION, 0, 1, c.block([("x-c", f"{i}")])) for i in range(50)]
        c.send(*frames)
        g = c.goaway()
        assert g is not None and g.code == ENHANCE_YOUR_CALM
        c = conn(r)  # the same with empty CONTINUATION frames
        c.send(c.headers(1, request_fields(), end_headers=False),
               *[frame(CONTINUATION, 0, 1) for _ in range(5)])
        g = c.goaway()
        assert g is not None and g.code == ENHANCE_YOUR_CALM
    served(r)
    guard()


def test_hpack_bomb_gets_enhance_your_calm(mesh):
    r, app, _ = mesh()
    guard = rss_guard(r)
    with Bystander(r):
        c = conn(r)
        block = c.block(request_fields()) + c.block([("x-bomb", "a" * 4000)])
        block += b"\xbe" * 12000  # each octet: the 4000-octet entry again (dynamic index 62)
        c.send(c.headers(1, None, raw_block=block))
        g = c.goaway()
        assert g is not None and g.code == ENHANCE_YOUR_CALM
    served(r)
    guard()


def test_header_list_past_the_limit_is_431_and_the_connection_goes_on(mesh):
    r, app, _ = mesh()
    c = conn(r)
    big = [(f"x-h{i}", "v" * 1000) for i in range(70)]  # 70 KB decoded, in CONTINUATIONs
    block = c.enc.encode(request_fields() + big)
    first, rest = block[:16000], block[16000:]
    frames = [frame(HEADERS, END_STREAM, 1, first)]
    while rest:
        part, rest = rest[:16000], rest[16000:]
        frames.append(frame(CONTINUATION, 0 if rest else END_HEADERS, 1, part))
    c.send(*frames)
    resp = c.response(1)
    assert resp.status == 431
    many = [(f"x-f{i}", "1") for i in range(101)]
    c.send(c.headers(3, request_fields() + many))
    assert c.response(3).status == 431
    c.request(5)
    assert c.response(5).status == 200
    assert app.stats()["requests"] == 1
    assert stat(r, "http.ingress.downstream_rq_header_too_large") == 2


@pytest.mark.parametrize("kind", ["ping", "settings"])
def test_ack_flood_gets_enhance_your_calm(mesh, kind):
    """PING and SETTINGS floods (CVE-2019-9512, 9515) from a client that reads nothing."""
    r, _, _ = mesh()
    guard = rss_guard(r)
    with Bystander(r):
        c = conn(r, rcvbuf=4096)
        one = ping(b"floodfld") if kind == "ping" else settings()
        chunk = one * 4096
        try:
            for _ in range(100):  # up to 400k frames; the GOAWAY comes long before
                c.send(chunk)
        except OSError:
            pass  # remora closed it
        g = c.goaway(20)
        assert g is not None and g.code == ENHANCE_YOUR_CALM
    served(r)
    guard()


def test_settings_with_too_many_entries_gets_enhance_your_calm(mesh):
    r, _, _ = mesh()
    c = conn(r)
    c.send(settings(*[(0x100 + i, i) for i in range(40)]))
    g = c.goaway()
    assert g is not None and g.code == ENHANCE_YOUR_CALM
    served(r)


@pytest.mark.parametrize("kind", ["empty-data", "priority", "window-update"])
def test_frame_floods_get_enhance_your_calm(mesh, kind):
    r, _, _ = mesh()
    guard = rss_guard(r)
    with Bystander(r):
        c = conn(r)
        if kind == "empty-data":
            open_stream(c)
            c.send(*[data(1, b"", end=False) for _ in range(3)])
        elif kind == "priority":
            c.send(*[frame(PRIORITY, 0, 1 + 2 * (i % 50), b"\0\0\0\0\x10") for i in range(300)])
        else:
            c.send(*[window_update(0, 1) for _ in range(300)])
        g = c.goaway()
        assert g is not None and g.code == ENHANCE_YOUR_CALM
    served(r)
    guard()


def test_too_many_streams(mesh):
    """SETTINGS_MAX_CONCURRENT_STREAMS 100. Streams past it that a client opens before it has
    seen the setting are refused (REFUSED_STREAM, to be retried); past the acknowledged limit
    nghttp2 makes it a connection error (GOAWAY PROTOCOL_ERROR, docs/http2.md)."""
    r, app, _ = mesh()
    guard = rss_guard(r)
    with Bystander(r):
        c = RawH2(r.ingress, ack=False)  # 150 requests before the server's SETTINGS are read
        c.send(b"".join(c.headers(sid, request_fields("/sleep/500")) for sid in range(1, 301, 2)))
        refused, ok = 0, 0
        while refused + ok < 150:
            f = c.until(lambda f: f.type in (RST_STREAM, GOAWAY) or
                        (f.type == HEADERS and f.flags & END_STREAM) or
                        (f.type == DATA and f.flags & END_STREAM), timeout=10)
            assert f is not None and f.type != GOAWAY
            if f.type == RST_STREAM:
                assert f.code == REFUSED_STREAM
                refused += 1
            else:
                ok += 1
        assert (refused, ok) == (50, 100)
        c.close()
        c = conn(r)  # acknowledges the SETTINGS
        c.send(ping())
        c.until(lambda f: f.type == PING)
        c.send(b"".join(c.headers(sid, request_fields("/sleep/2000")) for sid in range(1, 204, 2)))
        g = c.goaway()
        assert g is not None and g.code == PROTOCOL_ERROR
    served(r)
    guard()


# ---- header blocks nghttp2 ignores, budgets inside one read, accounting ----

@pytest.mark.parametrize("kind", ["trailers-after-reset", "lower-stream-id"])
def test_an_ignored_header_block_does_not_start_the_header_timer(mesh, kind):
    """Trailers racing remora's reset of their stream, and HEADERS on a lower stream id, are
    ignored (RFC 9113 section 5.1); neither leaves the connection waiting for the end of a
    header block, so the header timeout never ends it under a healthy stream."""
    r, app, _ = mesh(extra_proxy={"requestHeaderTimeout": {"unit": "ms", "value": 500}})
    c = conn(r)
    if kind == "trailers-after-reset":
        c.request(1, "/sleep/2500")
        # A CONNECT is answered 501 at its head; the request not being ended, RST(NO_ERROR).
        c.send(c.headers(3, [(":method", "CONNECT"), (":authority", "example.com:443")],
                         end_stream=False))
        f = c.until(lambda f: f.type in (RST_STREAM, GOAWAY) and f.stream in (0, 3))
        assert (f.type, f.stream, f.code) == (RST_STREAM, 3, NO_ERROR)
        c.send(c.headers(3, [("x-trailer", "late")]))  # END_STREAM: the trailers
        long = 1
    else:
        c.request(3)
        assert c.response(3).status == 200
        c.request(5, "/sleep/2500")
        c.send(c.headers(1, request_fields()))  # a lower, never-opened id
        long = 5
    resp = c.response(long, timeout=10)
    assert (resp.end, resp.status) == ("end", 200)
    assert not [f for f in c.frames if f.type == GOAWAY]
    assert stat(r, "http.ingress.downstream_cx_header_timeout") == 0
    c.request(7)
    assert c.response(7).status == 200


def test_rapid_reset_in_one_write_stops_at_the_budget(mesh):
    """3000 streams opened and reset in one write: the budget (250 premature resets within the
    first 500 streams) ends the connection at the 250th, not after the whole read, with one
    GOAWAY naming that stream (RFC 9113 section 6.8: the last stream id never increases)."""
    r, app, _ = mesh()
    c = conn(r)
    fields = request_fields("/sleep/5000")
    c.send(b"".join(c.headers(sid, fields) + rst(sid, CANCEL) for sid in range(1, 6001, 2)))
    assert c.closed(10)
    goaways = [(f.code, f.last) for f in c.frames if f.type == GOAWAY]
    assert goaways == [(ENHANCE_YOUR_CALM, 499)]
    st = r.stats()
    assert st["http.ingress.downstream_rq_total"] == 250
    assert st["http.ingress.downstream_rq_too_many_premature_resets"] == 1
    assert st["http.ingress.http2.goaway_sent"] == 1
    served(r)


def test_codec_answers_count_as_requests_by_class(mesh):
    """431 and CONNECT's 501, answered by the codec itself, count as HTTP/1.1's do."""
    r, app, _ = mesh()
    c = conn(r)
    c.send(c.headers(1, [(":method", "CONNECT"), (":authority", "example.com:443")]))
    assert c.response(1).status == 501
    c.send(c.headers(3, request_fields() + [(f"x-f{i}", "1") for i in range(101)]))
    assert c.response(3).status == 431
    c.request(5)
    assert c.response(5).status == 200
    wait_until(lambda: stat(r, "http.ingress.downstream_rq_2xx") == 1, what="the 200 counted")
    st = r.stats()
    assert st["http.ingress.downstream_rq_total"] == 3
    assert st["http.ingress.downstream_rq_4xx"] == 1
    assert st["http.ingress.downstream_rq_5xx"] == 1
    assert st["http.ingress.downstream_rq_header_too_large"] == 1


def test_connection_destroy_counters(mesh):
    """Envoy's downstream_cx_destroy family and downstream_rq_tx_reset: a client that resets
    its connection under a stream, one that closes after its answer, and one remora closes
    (the header timeout) with a header block half sent."""
    r, app, _ = mesh(extra_proxy={"requestHeaderTimeout": {"unit": "ms", "value": 500}})
    p = "http.ingress."
    c = conn(r)
    c.request(1, "/sleep/5000")
    wait_until(lambda: stat(r, p + "downstream_rq_active") == 1, what="the stream in flight")
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    c.close()  # RST
    wait_until(lambda: stat(r, p + "downstream_cx_destroy") == 1, what="the reset connection")
    c = conn(r)
    c.request(1)
    assert c.response(1).status == 200
    c.close()
    wait_until(lambda: stat(r, p + "downstream_cx_destroy") == 2, what="the closed connection")
    c = conn(r)
    c.send(c.headers(1, request_fields(), end_headers=False))  # and no CONTINUATION
    g = c.goaway(5)
    assert g is not None and g.code == NO_ERROR
    assert c.closed()
    c.close()
    wait_until(lambda: stat(r, p + "downstream_cx_destroy") == 3, what="the timed-out one")
    st = r.stats()
    want = {"downstream_cx_destroy": 3, "downstream_cx_destroy_remote": 2,
            "downstream_cx_destroy_local": 1, "downstream_cx_destroy_active_rq": 2,
            "downstream_cx_destroy_remote_active_rq": 1,
            "downstream_cx_destroy_local_active_rq": 1, "downstream_rq_tx_reset": 1,
            "downstream_cx_header_timeout": 1}
    assert {k: st.get(p + k, 0) for k in want} == want
