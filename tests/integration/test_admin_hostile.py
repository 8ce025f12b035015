"""The admin API against hostile local clients (SPEC §6): filters that would take the main
loop, slow and idle connections, and request targets and filters past the caps. Every test
asserts what a client sees and that /ready keeps answering."""
import os
import socket
import time
import urllib.parse

from conftest import wait_until
from rawhttp import Conn

ADMIN_MAX_CONNS = 64
NO_BACK_REFERENCE = (b"filter: invalid regex at byte 21: reference to non-existent subpattern\n")
TOO_COSTLY = b"filter: too costly to match (PCRE2's match limit); simplify it\n"


def get(port, target, timeout=3.0):
    """One admin request on its own connection; the response (the connection then closes)."""
    c = Conn(port, timeout=timeout)
    try:
        c.send(f"GET {target} HTTP/1.1\r\nHost: admin\r\n\r\n".encode())
        return c.read_response()
    finally:
        c.close()


def stats(port, regex, path="/stats", timeout=3.0):
    return get(port, f"{path}?filter={urllib.parse.quote(regex, safe='')}", timeout)


def ready_in(port, seconds):
    """/ready answers 200 within `seconds`."""
    start = time.monotonic()
    r = get(port, "/ready", timeout=seconds)
    assert (r.status, r.body) == (200, b"LIVE\n")
    assert time.monotonic() - start < seconds


def settle(port):
    """Waits until the admin API has closed its side of a request: afterwards every earlier
    admin connection (the fixture's readiness polls) is gone from its count."""
    c = Conn(port)
    c.send(b"GET /ready HTTP/1.1\r\nHost: admin\r\n\r\n")
    assert c.read_response().status == 200
    assert c.closed_by_peer(timeout=3)
    c.close()


def test_filters_that_would_freeze_the_loop_are_refused(mesh):
    """Filters run through PCRE2 under match limits. Groups do not capture, so a back-reference
    is refused as RE2 refuses it (glibc's regexec ran this one for minutes); a pattern that
    backtracks without end runs into the limits and is refused whole, never answered with a
    list cut short; bounded repeats that took glibc 13 s answer at once."""
    r, _, _ = mesh()
    port = r.admin_port
    for path in ("/stats", "/stats/prometheus", "/stats?format=json&x="):
        sep = "&" if "?" in path else "?"
        target = f"{path}{sep}filter=" + urllib.parse.quote(r"(.*)(.*)(.*)(.*)(.*)\5\4\3\2\1z", safe="")
        resp = get(port, target)
        assert (resp.status, resp.body) == (400, NO_BACK_REFERENCE), path
        resp = get(port, f"{path}{sep}filter=" + urllib.parse.quote("(.*)*(.*)*(.*)*x$", safe=""))
        assert (resp.status, resp.body) == (400, TOO_COSTLY), path
    for ok in ("(.{1,255}){1,255}z", r"(.{1,40}){1,25}z", r"cluster\.[a-z_]{1,100}", r"\d+xx"):
        assert stats(port, ok).status == 200, ok
    lines = stats(port, r"^http\.ingress\.downstream_rq_\dxx$").body.decode().splitlines()
    assert [line.split(":")[0] for line in lines] == [
        f"http.ingress.downstream_rq_{c}xx" for c in range(1, 6)], lines
    ready_in(port, 1.0)
    assert r.stop() == 0


def test_filter_is_never_cut(mesh):
    r, _, _ = mesh()
    port = r.admin_port
    # 272 bytes; cut at 255 it would end in '|' and match every metric.
    regex = "zzzz|" * 51 + "upstream_cx_total"
    resp = stats(port, regex)
    lines = resp.body.decode().splitlines()
    assert resp.status == 200 and lines
    assert all("upstream_cx_total" in line for line in lines), lines
    at_cap = "(" + "z" * 1000 + ")|upstream_cx_total"  # 1020 bytes: still in
    assert 1000 < len(at_cap) <= 1024
    assert stats(port, at_cap).body.decode().splitlines() == lines
    over = stats(port, "z" * 1025)
    assert (over.status, over.body) == (400, b"filter longer than 1024 bytes\n")
    assert r.stop() == 0


def test_long_request_target(mesh):
    r, _, _ = mesh()
    port = r.admin_port
    # A 700-byte target (over the old 512) is routed: an exact filter on one metric.
    names = "|".join(f"server\\.nosuch_{i:03d}" for i in range(40))
    target = "/stats?filter=" + urllib.parse.quote(f"^({names}|server\\.live)$", safe="")
    assert len(target) > 700
    resp = get(port, target)
    assert (resp.status, resp.body) == (200, b"server.live: 1\n")
    too_long = "/" + "a" * 4999
    resp = get(port, too_long)
    assert resp.status == 414 and resp.reason == "URI Too Long"
    assert resp.body == b"request target of 5000 bytes: the admin API takes at most 4096\n"
    assert r.stop() == 0


def test_slow_and_silent_connections_time_out(mesh):
    r, _, _ = mesh(extra_proxy={"requestHeaderTimeout": {"unit": "ms", "value": 500}})
    port = r.admin_port
    slow = Conn(port)
    slow.send(b"GET /ready HTTP/1.1\r\nHost: admin\r\n")  # the head never ends
    silent = Conn(port)
    ready_in(port, 1.0)
    start = time.monotonic()
    resp = slow.read_response()
    assert (resp.status, resp.body) == (408, b"request timeout\n")
    assert slow.closed_by_peer(timeout=3)
    assert silent.closed_by_peer(timeout=3)
    assert silent.buf == b"", "nothing was asked: closed without an answer"
    assert time.monotonic() - start < 3
    slow.close()
    silent.close()
    ready_in(port, 1.0)
    assert r.stop() == 0


def test_connection_cap(mesh):
    r, _, _ = mesh()
    port = r.admin_port
    settle(port)
    fds_before = len(os.listdir(f"/proc/{r.proc.pid}/fd"))
    slow = Conn(port)
    slow.send(b"GET /ready HTTP/1.1\r\n")
    held = [Conn(port) for _ in range(ADMIN_MAX_CONNS - 2)]
    ready_in(port, 1.0)  # one place left: /ready takes it and gives it back
    settle(port)
    held.append(Conn(port))  # the cap is reached
    for _ in range(200):  # turned away at once: the backlog and descriptors stay free
        extra = Conn(port)
        resp = extra.read_response()
        assert (resp.status, resp.body) == (503, b"too many admin connections open\n")
        assert extra.closed_by_peer(timeout=3)
        extra.close()
    for c in [slow] + held:  # none of the held ones was answered or closed
        c.sock.settimeout(0)
        try:
            assert c.sock.recv(1) == b"", "held connection got data"
            raise AssertionError("held connection was closed")
        except BlockingIOError:
            pass
    fds_now = len(os.listdir(f"/proc/{r.proc.pid}/fd"))
    assert fds_now <= fds_before + ADMIN_MAX_CONNS + 2
    for c in [slow] + held:
        c.close()
    wait_until(lambda: get(port, "/ready").status == 200, timeout=5, what="/ready after")
    ready_in(port, 1.0)
    assert r.stop() == 0
