"""Every failure the engine turns into a client-visible answer: bad requests, ambiguous
framing, dead or misbehaving upstreams, timeouts, clients that go away."""
import socket
import subprocess
import time

from conftest import mesh_config, wait_until
from rawhttp import Conn, request


def test_malformed_request_is_400_and_closed(mesh):
    r, _, backend = mesh()
    # A major version other than 1 is 505 (RFC 9110 §15.6.6); the rest is malformed: 400.
    for garbage, status in ((b"GARBAGE\r\n\r\n", 400), (b"GET / HTTP/9.9\r\nHost: a\r\n\r\n", 505),
                            (b"GET / HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n", 400),
                            (b"\x00\x01\x02\r\n\r\n", 400)):
        c = Conn(r.egress)
        c.send(garbage)
        resp = c.read_response()
        assert resp.status == status, garbage
        assert c.closed_by_peer(), garbage
    assert backend.stats()["requests"] == 0
    assert r.stats()["http.egress.downstream_cx_protocol_error"] == 4


def test_header_section_over_64k_is_431(mesh):
    r, _, backend = mesh()
    c = Conn(r.egress)
    c.send(request("GET", "/echo", headers=[("X-Big", "a" * 70000)]))
    resp = c.read_response()
    assert resp.status == 431
    assert c.closed_by_peer()
    # Just under the cap is fine.
    c = Conn(r.egress)
    c.send(request("GET", "/echo", headers=[("X-Big", "a" * 60000)]))
    assert c.read_response().status == 200
    assert backend.stats()["requests"] == 1


def test_more_than_100_header_fields_is_431(mesh):
    r, _, backend = mesh()
    c = Conn(r.egress)
    c.send(request("GET", "/echo", headers=[(f"X-H{i}", "v") for i in range(100)]))
    assert c.read_response().status == 431
    c = Conn(r.egress)
    c.send(request("GET", "/echo", headers=[(f"X-H{i}", "v") for i in range(99)]))
    assert c.read_response().status == 200  # 99 + Host = 100 fields
    assert backend.stats()["requests"] == 1


def test_content_length_with_transfer_encoding_is_400_never_forwarded(mesh):
    r, _, backend = mesh()
    c = Conn(r.egress)
    c.send(b"POST /upload HTTP/1.1\r\nHost: cart.shop.local\r\nContent-Length: 5\r\n"
           b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n")
    assert c.read_response().status == 400
    assert c.closed_by_peer()
    assert backend.stats()["requests"] == 0


def test_two_differing_content_lengths_is_400_never_forwarded(mesh):
    r, _, backend = mesh()
    c = Conn(r.egress)
    c.send(b"POST /upload HTTP/1.1\r\nHost: cart.shop.local\r\nContent-Length: 5\r\n"
           b"Content-Length: 6\r\n\r\nhello!")
    assert c.read_response().status == 400
    assert c.closed_by_peer()
    assert backend.stats()["requests"] == 0


def test_upstream_connect_failure_is_503(upstream, remora):
    app = upstream("app")
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    dead.close()  # nothing listens there now
    # Without App Mesh's default retries: one connect attempt per request.
    r = remora(mesh_config(app.port, dead_port, extra_proxy={"defaultRetryPolicy": False}))
    c = Conn(r.egress)
    c.send(request("GET", "/echo"))
    resp = c.read_response()
    assert resp.status == 503
    # The client connection stays usable after a local reply.
    c.send(request("GET", "/echo"))
    assert c.read_response().status == 503
    assert r.stats()["cluster.cds_egress_shop_cart-v1_http_%d.upstream_cx_connect_fail" % dead_port] == 2


def test_malformed_upstream_response_is_502(mesh):
    r, _, _ = mesh()
    c = Conn(r.egress)
    c.send(request("GET", "/malformed"))
    assert c.read_response().status == 502


def test_upstream_closing_before_response_is_503(mesh):
    r, _, _ = mesh()
    c = Conn(r.egress)
    c.send(request("GET", "/die-before-response"))
    assert c.read_response().status == 503


def test_upstream_timeout_is_504_at_the_right_time(mesh):
    r, _, _ = mesh(listener_timeout={"perRequest": {"unit": "ms", "value": 700}})
    c = Conn(r.ingress)
    start = time.monotonic()
    c.send(request("GET", "/sleep/5000", host="web"))
    resp = c.read_response()
    elapsed = time.monotonic() - start
    assert resp.status == 504
    assert 0.6 < elapsed < 3.0, elapsed
    assert r.stats()["http.ingress.downstream_rq_timeout"] == 1
    # A fast request on the same connection is unaffected.
    c.send(request("GET", "/sleep/10", host="web"))
    assert c.read_response().status == 200


def test_slow_client_headers_closed_after_header_timeout(mesh):
    r, _, backend = mesh(extra_proxy={"requestHeaderTimeout": {"unit": "ms", "value": 500}})
    c = Conn(r.egress)
    c.send(b"GET /echo HTTP/1.1\r\nHost: cart.sh")  # and then nothing more
    start = time.monotonic()
    resp = c.read_response()
    assert resp.status == 408
    assert c.closed_by_peer()
    assert 0.4 < time.monotonic() - start < 3.0
    # A connection that never sends a byte is closed too.
    idle = Conn(r.egress)
    assert idle.closed_by_peer(timeout=3.0)
    assert r.stats()["http.egress.downstream_cx_header_timeout"] == 2
    assert backend.stats()["requests"] == 0


def test_client_disconnect_mid_body_aborts_upstream_request(mesh):
    r, _, backend = mesh()
    c = Conn(r.egress)
    c.send(request("POST", "/upload", headers=[("Content-Length", "1000000")]) + b"x" * 20000)
    wait_until(lambda: backend.stats()["receiving"] == 1, what="upstream to see the request")
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    c.close()
    wait_until(lambda: backend.stats()["aborted_uploads"] == 1, what="upstream request aborted")
    assert backend.stats()["receiving"] == 0
    assert backend.stats()["completed_uploads"] == 0


def test_upstream_dying_mid_response_is_never_a_complete_response(mesh):
    r, _, _ = mesh()
    c = Conn(r.egress)
    c.send(request("GET", "/die-mid-response"))
    resp = c.read_response()
    assert resp.status == 200
    assert not resp.complete, "the client must see a truncated body"
    # What arrived is what the upstream sent (a reset may lose some of it), nothing more.
    assert len(resp.body) <= 1000 and resp.body == b"x" * len(resp.body), resp.body[:100]
    # curl agrees: transfer closed with outstanding data (exit 18).
    out = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-H", "Host: cart.shop.local",
                          f"http://127.0.0.1:{r.egress}/die-mid-response"],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 18, out.stderr
    assert r.stats()["cluster.cds_egress_shop_cart-v1_http_%d.upstream_rq_rx_reset" % _backend_port(r)] == 2


def _backend_port(r):
    import json
    with open(r.config_path) as f:
        return json.load(f)["virtualNodes"][1]["spec"]["listeners"][0]["portMapping"]["port"]


def test_pooled_connection_closed_as_reused_is_retried_for_idempotent_requests(mesh):
    # The replay on a fresh connection is remora's own, not a retry policy's: with App Mesh's
    # default policy the POST would be retried on the reset too.
    r, _, backend = mesh(extra_proxy={"defaultRetryPolicy": False})
    c = Conn(r.egress)
    c.send(request("GET", "/stale-on-reuse"))
    assert c.read_response().body == b"fresh\n"
    c.send(request("GET", "/stale-on-reuse"))  # the pooled connection dies under it
    resp = c.read_response()
    assert resp.status == 200 and resp.body == b"fresh\n"
    assert backend.stats()["stale_closes"] == 1
    # A POST is not idempotent: on the (again pooled) connection it is not sent twice, and the
    # client sees the 503.
    c.send(request("POST", "/stale-on-reuse", body=b""))
    assert c.read_response().status == 503
    assert backend.stats()["stale_closes"] == 2


def test_idle_connection_closed_by_upstream_is_not_reused(mesh):
    r, _, backend = mesh()
    c = Conn(r.egress)
    c.send(request("GET", "/echo"))
    assert c.read_response().status == 200
    # The upstream restarts: every pooled connection to it is closed under remora.
    port = _backend_port(r)
    backend.stop()
    from conftest import Upstream
    restarted = Upstream.__new__(Upstream)
    restarted.port = port
    restarted.proc = subprocess.Popen(["/usr/bin/python3", __file__.replace("test_errors.py", "upstream.py"),
                                       "--port", str(port), "--name", "cart-v1"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        from conftest import port_open
        wait_until(lambda: port_open(port), what="restarted upstream")
        wait_until(lambda: r.stats()[f"cluster.cds_egress_shop_cart-v1_http_{port}.upstream_cx_active"] == 0,
                   what="remora to notice the pooled connection closed")
        for _ in range(5):
            c.send(request("GET", "/echo"))
            assert c.read_response().status == 200
    finally:
        restarted.stop()
