"""Active health checks with `protocol: http2` and `protocol: grpc`, against real peers: a gRPC
server (python3-grpcio) serving grpc.health.v1.Health/Check, and HTTP/2 servers (python3-h2)
that answer, or misbehave, as a test says (h2_health_peer.py). Each target is its own
virtual node, so one remora checks many of them at once; health is read from /clusters, the
log and the cluster's health_check_* counters.

App Mesh's minimum timings apply: a check every 5 s, 2 s timeout, thresholds 2, so a verdict
changes about 5-10 s after the target does; tests wait for it with a deadline."""
import re

import grpc
import pytest

from conftest import Upstream, wait_until
from h2_health_peer import NOT_SERVING, SERVING, UNKNOWN, GrpcHealth, H2Peer

TRANSITION = 16  # seconds: two checks 5 s apart, a 2 s timeout, and slack


# ---- config and readings ----

def target(name, port, protocol, path=None, tls=None):
    """A virtual node served at 127.0.0.1:port whose listener is checked with `protocol`."""
    check = {"protocol": protocol, "port": port, "intervalMillis": 5000, "timeoutMillis": 2000,
             "healthyThreshold": 2, "unhealthyThreshold": 2}
    if path:
        check["path"] = path
    listener = {"portMapping": {"port": port, "protocol": "grpc" if protocol == "grpc" else "http2"},
                "healthCheck": check}
    if tls:
        listener["tls"] = tls
    return {"virtualNodeName": name, "spec": {
        "listeners": [listener], "serviceDiscovery": {"dns": {"hostname": "127.0.0.1"}}}}


def mesh(targets):
    names = [t["virtualNodeName"] for t in targets]
    web = {"virtualNodeName": "web", "spec": {
        "listeners": [{"portMapping": {"port": 1, "protocol": "http"}}],
        "backends": [{"virtualService": {"virtualServiceName": f"{n}.mesh.local"}} for n in names]}}
    return {
        "mesh": {"meshName": "hc", "spec": {"egressFilter": {"type": "DROP_ALL"}}},
        "virtualNodes": [web] + targets,
        "virtualServices": [{"virtualServiceName": f"{n}.mesh.local", "spec": {
            "provider": {"virtualNode": {"virtualNodeName": n}}}} for n in names],
        "proxy": {"node": "web"},
    }


def endpoints(r):
    """{port: (cluster, health_flags)} from /clusters."""
    _, text = r.admin("/clusters")
    out = {}
    for line in text.splitlines():
        parts = line.split("::")
        if len(parts) == 4 and parts[2] == "health_flags":
            out[int(parts[1].rsplit(":", 1)[1])] = (parts[0], parts[3])
    return out


def healthy(r, port):
    return endpoints(r)[port][1] == "healthy"


def checks(r, port):
    """(attempts, failures) counted for the cluster of the endpoint on `port`."""
    cluster = endpoints(r)[port][0]
    stats = r.stats()
    return (stats.get(f"cluster.{cluster}.health_check_attempt", 0),
            stats.get(f"cluster.{cluster}.health_check_failure", 0))


def unhealthy_reason(r, port):
    """Why the log says the endpoint on `port` went unhealthy (the latest time), or None."""
    found = re.findall(rf"127\.0\.0\.1:{port} is unhealthy: (.*)", r.read_log())
    return found[-1].strip() if found else None


def wait_verdict(r, port, want_healthy, what):
    wait_until(lambda: healthy(r, port) == want_healthy, timeout=TRANSITION, interval=0.1,
               what=what)


# ---- peers ----

@pytest.fixture
def peers():
    started = []

    def start(peer):
        started.append(peer)
        return peer

    yield start
    for p in started:
        p.stop()


# ---- tests ----

def test_verdicts_follow_serving_and_status(peers, remora):
    """A gRPC target flips SERVING -> NOT_SERVING -> SERVING and an HTTP/2 one 200 -> 503 ->
    302, at the same time: each flip is seen after two checks, logged, and counted."""
    g = peers(GrpcHealth(SERVING))
    h = peers(H2Peer("ok", status=200))
    r = remora(mesh([target("g", g.port, "grpc"), target("h", h.port, "http2", path="/healthz")]))
    for port in (g.port, h.port):
        wait_until(lambda: checks(r, port)[0] >= 2, timeout=TRANSITION, interval=0.1,
                   what=f"two checks of {port}")
        assert checks(r, port)[1] == 0 and healthy(r, port)
    assert g.calls >= 2
    req = h.requests[0]
    assert (req[":method"], req[":scheme"], req[":path"], req[":authority"]) == \
        ("GET", "http", "/healthz", f"127.0.0.1:{h.port}")

    g.reply, h.status = NOT_SERVING, 503
    wait_verdict(r, g.port, False, "grpc NOT_SERVING marks it unhealthy")
    wait_verdict(r, h.port, False, "http2 503 marks it unhealthy")
    assert unhealthy_reason(r, g.port) == "NOT_SERVING"
    assert unhealthy_reason(r, h.port) == "status 503"
    assert checks(r, g.port)[1] >= 2 and checks(r, h.port)[1] >= 2

    g.reply, h.status = SERVING, 302
    wait_verdict(r, g.port, True, "grpc SERVING again")
    wait_verdict(r, h.port, True, "http2 302 again")
    log = r.read_log()
    for port in (g.port, h.port):
        assert re.search(rf"127\.0\.0\.1:{port} is healthy again", log), port


def test_failing_and_hostile_targets_are_unhealthy(peers, remora):
    """Every way a target can fail a check, each its own node in one remora; the caps on
    headers and DATA make a check fail at once rather than read on."""
    aborting = peers(GrpcHealth(SERVING))
    aborting.abort = grpc.StatusCode.UNAVAILABLE
    cases = {  # name: (peer, check protocol, the logged reason: a string or a pattern)
        "unavailable": (aborting, "grpc", "grpc-status 14"),
        "unknown": (peers(GrpcHealth(UNKNOWN)), "grpc", "UNKNOWN"),
        # grpcio answers a method it does not serve Trailers-Only, grpc-status 12.
        "unimplemented": (peers(GrpcHealth(SERVING, service="other.Service")), "grpc",
                          "grpc-status 12"),
        "silent": (peers(H2Peer("silent")), "grpc", "timed out"),
        "bigheaders": (peers(H2Peer("huge_headers")), "http2", "response headers over 16384 bytes"),
        "continuation": (peers(H2Peer("endless_headers")), "http2", r"HTTP/2: .*CONTINUATION.*"),
        "endless": (peers(H2Peer("endless_data")), "grpc", "response message over 64 bytes"),
        "goaway": (peers(H2Peer("goaway")), "grpc", "refused by GOAWAY"),
        "notgrpc": (peers(H2Peer("ok", status=200)), "grpc", "no valid grpc-status"),
        "h1only": (peers(Upstream("h1")), "http2", r"HTTP/2 .*|closed before a response"),
    }
    # The http2 check decides at the head, as the http check does at the status line: DATA
    # after a 200 head is never read, so this one stays healthy.
    pouring = peers(H2Peer("endless_data"))
    targets = [target(n, p.port, proto, path="/health") for n, (p, proto, _) in cases.items()]
    r = remora(mesh(targets + [target("pouring", pouring.port, "http2", path="/health")]))
    for name, (peer, _, reason) in cases.items():
        wait_verdict(r, peer.port, False, f"{name} unhealthy")
        got = unhealthy_reason(r, peer.port)
        assert got and re.fullmatch(reason, got), (name, got)
    wait_until(lambda: checks(r, pouring.port)[0] >= 2, timeout=TRANSITION, interval=0.1,
               what="two checks of the pouring target")
    assert checks(r, pouring.port)[1] == 0 and healthy(r, pouring.port)


def test_checks_over_tls_offer_h2_by_alpn(pki, peers, remora):
    """A target whose listener has TLS is checked in TLS, offering only h2 by ALPN: grpcio
    with server credentials and an h2 server answer; a server that will not choose h2 fails."""
    listener_tls = {"mode": "STRICT", "certificate": {"file": {
        "certificateChain": pki.b.cert, "privateKey": pki.b.key}}}
    serving = peers(GrpcHealth(SERVING, cert=pki.b))
    not_serving = peers(GrpcHealth(NOT_SERVING, cert=pki.b))
    h2tls = peers(H2Peer("ok", status=204, cert=pki.b))
    h1tls = peers(H2Peer("ok", status=200, cert=pki.b, alpn=("http/1.1",)))
    r = remora(mesh([
        target("gs", serving.port, "grpc", tls=listener_tls),
        target("gn", not_serving.port, "grpc", tls=listener_tls),
        target("hs", h2tls.port, "http2", path="/ready", tls=listener_tls),
        target("ha", h1tls.port, "http2", path="/ready", tls=listener_tls),
    ]))
    wait_verdict(r, not_serving.port, False, "NOT_SERVING over TLS")
    wait_verdict(r, h1tls.port, False, "no h2 by ALPN")
    assert unhealthy_reason(r, not_serving.port) == "NOT_SERVING"
    assert unhealthy_reason(r, h1tls.port) == "ALPN did not choose h2"
    assert h1tls.requests == []
    for port in (serving.port, h2tls.port):
        wait_until(lambda: checks(r, port)[0] >= 2, timeout=TRANSITION, interval=0.1,
                   what=f"two checks of {port}")
        assert checks(r, port)[1] == 0 and healthy(r, port)
    assert serving.calls >= 2
    assert h2tls.requests[0][":scheme"] == "https"
    assert h2tls.requests[0][":authority"] == f"127.0.0.1:{h2tls.port}"
