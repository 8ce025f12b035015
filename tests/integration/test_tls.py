"""TLS with App Mesh semantics, through the real binary and real TLS peers (curl, openssl
s_client, Python's ssl), with certificates made by the openssl CLI (certs.py).

Ingress: a node's listener `tls` (STRICT, PERMISSIVE, DISABLED; `validation` for mTLS with
exact SAN lists) terminates TLS and forwards plaintext to the local app. Egress: a client
policy (`backendDefaults` or the backend's own) originates TLS with the target's discovery
name as SNI and verifies the server; without one that applies, a STRICT or PERMISSIVE target
is still spoken to in TLS, unverified. The chain tests run two remoras, A (caller) and B
(callee), with B found through Cloud Map SRV records served by Knot. Also: certificate
rotation under load, session resumption on both sides, ALPN, /certs, `remora check`, and
hostile TLS bytes.
"""
import datetime
import json
import os
import random
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
import types

import pytest

from certs import A_SANS, B_SANS
from conftest import REMORA, Knot, wait_until
from rawhttp import Conn, request

NS = "apps.local"                 # the Cloud Map namespace (Knot's zone in these tests)
B_NAME = "b.apps.local"           # node b's discovery name: serviceName.namespaceName = the SNI
B_SERVICE = "b.mesh.local"        # the virtual service node b provides: what A's app asks for
SPIFFE_A, SPIFFE_B = A_SANS[0][1], B_SANS[1][1]
SSL_COUNTERS = ("handshake", "session_reused", "no_certificate", "fail_verify_no_cert",
                "fail_verify_error", "fail_verify_san", "connection_error")
NO_PROXY_ENV = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}


# ---- certificates, DNS, a recording TLS server ----

class AppsKnot(Knot):
    """Knot serving the apps.local zone, so that node b's Cloud Map name is b.apps.local and
    the wildcard certificate *.apps.local covers it."""
    ZONE = NS


@pytest.fixture
def apps_knot(tmp_path):
    started = []

    def start(records):
        k = AppsKnot(str(tmp_path), records)
        started.append(k)
        return k

    yield start
    for k in started:
        k.stop()


def srv_records(port):
    """Cloud Map's records for one instance of b.apps.local at 127.0.0.1:port."""
    return [f"b 1 SRV 1 1 {port} i-b.b.{NS}.", "i-b.b 1 A 127.0.0.1"]


class TLSRecorder:
    """A TLS HTTP/1.1 server (Python ssl) that records the SNI of every handshake and answers
    every request 200 "peer\\n" with Connection: close."""

    def __init__(self, cert):
        self.names = []
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert.cert, cert.key)
        self.ctx.sni_callback = lambda sslsock, name, ctx: self.names.append(name)
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.lsock.settimeout(0.1)
        self.port = self.lsock.getsockname()[1]
        self.stopping = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.stopping:
            try:
                raw, _ = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw):
        raw.settimeout(5)
        try:
            with self.ctx.wrap_socket(raw, server_side=True) as s:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = s.recv(4096)
                    if not chunk:
                        return
                    data += chunk
                s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\n"
                          b"peer\n")
        except OSError:  # handshake refused by the client, or reset
            pass

    def stop(self):
        self.stopping = True
        self.thread.join(5)
        self.lsock.close()


@pytest.fixture
def tls_recorder():
    started = []

    def start(cert):
        t = TLSRecorder(cert)
        started.append(t)
        return t

    yield start
    for t in started:
        t.stop()


# ---- config ----

def file_cert(cert):
    return {"file": {"certificateChain": cert.cert, "privateKey": cert.key}}


def validation(trust, sans=None):
    v = {"trust": {"file": {"certificateChain": trust}}}
    if sans:
        v["subjectAlternativeNames"] = {"match": {"exact": list(sans)}}
    return v


def listener_tls(mode, cert, trust=None, sans=None):
    t = {"mode": mode, "certificate": file_cert(cert)}
    if trust:
        t["validation"] = validation(trust, sans)
    return t


def client_tls(trust, sans=None, cert=None, **extra):
    t = {"validation": validation(trust, sans)}
    if cert:
        t["certificate"] = file_cert(cert)
    t.update(extra)
    return t


def b_node(port, tls=None, health=False):
    listener = {"portMapping": {"port": port, "protocol": "http"}}
    if tls:
        listener["tls"] = tls
    if health:
        listener["healthCheck"] = {"protocol": "http", "path": "/health", "port": port,
                                   "intervalMillis": 5000, "timeoutMillis": 2000,
                                   "healthyThreshold": 2, "unhealthyThreshold": 2}
    return {"virtualNodeName": "b", "spec": {
        "listeners": [listener],
        "serviceDiscovery": {"awsCloudMap": {"namespaceName": NS, "serviceName": "b"}}}}


def a_node(policy=None, where="defaults"):
    backend = {"virtualService": {"virtualServiceName": B_SERVICE}}
    spec = {"listeners": [{"portMapping": {"port": 1, "protocol": "http"}}],
            "backends": [backend]}
    if policy and where == "defaults":
        spec["backendDefaults"] = {"clientPolicy": {"tls": policy}}
    elif policy:
        backend["virtualService"]["clientPolicy"] = {"tls": policy}
    return {"virtualNodeName": "a", "spec": spec}


def mesh(nodes, node, proxy=None):
    return {
        "mesh": {"meshName": "tls", "spec": {"egressFilter": {"type": "DROP_ALL"}}},
        "virtualNodes": nodes,
        "virtualServices": [{"virtualServiceName": B_SERVICE, "spec": {
            "provider": {"virtualNode": {"virtualNodeName": "b"}}}}],
        "proxy": dict({"node": node}, **(proxy or {})),
    }


# ---- clients and readings ----

def curl(port, path="/echo", ca=None, cert=None, host=B_NAME, extra=()):
    """One HTTPS request with curl, a new connection; status 0 when no response came."""
    cmd = ["curl", "-sS", "--noproxy", "*", "--max-time", "5", "--resolve",
           f"{host}:{port}:127.0.0.1", "-o", "-", "-w", "\n%{http_code}"]
    if ca:
        cmd += ["--cacert", ca]
    if cert:
        cmd += ["--cert", cert.cert, "--key", cert.key]
    cmd += [*extra, f"https://{host}:{port}{path}"]
    out = subprocess.run(cmd, capture_output=True, timeout=15, env=NO_PROXY_ENV)
    body, _, code = out.stdout.rpartition(b"\n")
    return types.SimpleNamespace(rc=out.returncode, status=int(code or b"0"), body=body,
                                 err=out.stderr.decode(errors="replace"))


def s_client(port, *args, stdin=None, host=B_NAME):
    """openssl s_client's output for one connection; `stdin` is sent, then the connection is
    read until the server closes it (-ign_eof)."""
    out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}",
                          "-servername", host, "-ign_eof", *args],
                         input=stdin or b"", capture_output=True, timeout=15)
    return out.stdout.decode(errors="replace") + out.stderr.decode(errors="replace")


CLOSE_REQUEST = request("GET", "/echo", host=B_NAME, headers=[("Connection", "close")])


def client_ctx(ca, cert=None, alpn=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(ca)
    if cert:
        ctx.load_cert_chain(cert.cert, cert.key)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


class TLSConn(Conn):
    """rawhttp.Conn over Python's ssl: the handshake is done when the constructor returns."""

    def __init__(self, port, ctx, server_hostname=B_NAME, timeout=5.0):
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        try:
            self.sock = ctx.wrap_socket(raw, server_hostname=server_hostname)
        except BaseException:
            raw.close()
            raise
        self.buf = bytearray()

    def peer_serial(self):
        return int(self.sock.getpeercert()["serialNumber"], 16)


def get(conn, path="/echo", host=B_NAME, close=False):
    conn.send(request("GET", path, host=host, headers=[("Connection", "close")] if close else ()))
    return conn.read_response()


def seen_header(resp, name):
    """Values of header `name` that the echo upstream received."""
    return [v for k, v in json.loads(resp.body)["headers"] if k.lower() == name]


def listener_prefix(r):
    return f"listener.0.0.0.0_{r.ingress}"


def ssl_stats(r, prefix):
    """The seven ssl counters under `prefix` (None for a counter remora does not show)."""
    st = r.stats()
    return {k: st.get(f"{prefix}.ssl.{k}") for k in SSL_COUNTERS}


def expect_ssl(**values):
    """All seven counters: zero except the ones given."""
    return dict(dict.fromkeys(SSL_COUNTERS, 0), **values)


def wait_ssl(r, prefix, **values):
    """Polls until the named ssl counters under `prefix` have these values; returns all seven."""
    try:
        wait_until(lambda: all(ssl_stats(r, prefix)[k] == v for k, v in values.items()),
                   timeout=5, what=f"{prefix} ssl counters {values}")
    except AssertionError:
        raise AssertionError(f"{prefix}: ssl counters {ssl_stats(r, prefix)}, waited for {values}")
    return ssl_stats(r, prefix)


def closed_without_response(conn, timeout=3.0):
    """The peer closes within `timeout` and sent no HTTP response (TLS alerts are fine)."""
    assert conn.closed_by_peer(timeout=timeout), "connection still open"
    assert not conn.buf.startswith(b"HTTP/"), conn.buf[:80]


def start_b(remora, upstream, tls, proxy=None):
    """A single remora for node b, its listener on the app's port with `tls`."""
    app = upstream("app")
    return remora(mesh([b_node(app.port, tls)], "b", proxy)), app


# ---- ingress: listener modes ----

def test_strict_listener_terminates_tls(pki, remora, upstream):
    r, app = start_b(remora, upstream, listener_tls("STRICT", pki.b))
    for _ in range(3):
        res = curl(r.ingress, ca=pki.ca.cert)
        assert (res.rc, res.status) == (0, 200), res.err
        seen = json.loads(res.body)
        assert seen["server"] == "app"
        assert [v for k, v in seen["headers"] if k.lower() == "x-forwarded-proto"] == ["https"]
    assert app.stats()["requests"] == 3
    # Plaintext HTTP to a STRICT port: closed without an HTTP answer, nothing forwarded.
    c = Conn(r.ingress)
    c.send(request("GET", "/echo", host="b"))
    closed_without_response(c)
    assert wait_ssl(r, listener_prefix(r), connection_error=1) == expect_ssl(
        handshake=3, no_certificate=3, connection_error=1)
    assert app.stats()["requests"] == 3
    _, prom = r.admin("/stats/prometheus")
    assert f'envoy_listener_ssl_handshake{{envoy_listener_address="0.0.0.0_{r.ingress}"}} 3' \
        in prom.splitlines()


def test_permissive_listener_takes_tls_and_plaintext_on_one_port(pki, remora, upstream):
    r, app = start_b(remora, upstream, listener_tls("PERMISSIVE", pki.b))
    plain = Conn(r.ingress)
    resp = get(plain)
    assert resp.status == 200 and seen_header(resp, "x-forwarded-proto") == ["http"]
    tls = TLSConn(r.ingress, client_ctx(pki.ca.cert))
    resp = get(tls)
    assert resp.status == 200 and seen_header(resp, "x-forwarded-proto") == ["https"]
    # Both connections stay usable (keep-alive on each side of the split).
    assert get(plain).status == 200 and get(tls).status == 200
    assert app.stats()["requests"] == 4
    assert ssl_stats(r, listener_prefix(r)) == expect_ssl(handshake=1, no_certificate=1)


def test_disabled_listener_speaks_no_tls(pki, remora, upstream):
    r, app = start_b(remora, upstream, listener_tls("DISABLED", pki.b))
    res = curl(r.ingress, ca=pki.ca.cert)
    assert res.rc != 0 and res.status == 0, (res.rc, res.status, res.err)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        get(TLSConn(r.ingress, client_ctx(pki.ca.cert)))
    assert app.stats()["requests"] == 0, "a ClientHello is not an HTTP request"
    resp = get(Conn(r.ingress))
    assert resp.status == 200 and seen_header(resp, "x-forwarded-proto") == ["http"]
    assert app.stats()["requests"] == 1


def test_xray_segment_of_a_tls_request_has_an_https_url(pki, remora, upstream):
    from test_tracing import Collector
    collector = Collector()
    try:
        app = upstream("app")
        env = {"ENABLE_ENVOY_XRAY_TRACING": "1", "XRAY_DAEMON_PORT": str(collector.port),
               "XRAY_SAMPLING_RATE": "1"}
        r = remora(mesh([b_node(app.port, listener_tls("STRICT", pki.b))], "b"), env=env)
        res = curl(r.ingress, "/echo?x=1", ca=pki.ca.cert)
        assert (res.rc, res.status) == (0, 200), res.err
        wait_until(lambda: collector.documents(), what="a segment")
        (doc,) = collector.documents()
        assert doc["http"]["request"]["url"] == f"https://{B_NAME}:{r.ingress}/echo?x=1"
        assert doc["http"]["response"]["status"] == 200
    finally:
        collector.stop()


# ---- ingress: mTLS ----

def test_mtls_listener_verifies_client_certificates(pki, remora, upstream):
    tls = listener_tls("STRICT", pki.b, trust=pki.ca.cert, sans=[SPIFFE_A, "b.apps.local"])
    r, app = start_b(remora, upstream, tls)
    lp = listener_prefix(r)
    refused = [
        (None, "fail_verify_no_cert"),           # no client certificate
        (pki.a_other_ca, "fail_verify_error"),   # the right name, from the other CA
        (pki.x, "fail_verify_san"),              # trusted, spiffe://mesh.local/x not listed
        (pki.wildcard, "fail_verify_san"),       # *.apps.local: lists match exactly, no wildcards
    ]
    counts = {}
    for cert, counter in refused:
        res = curl(r.ingress, ca=pki.ca.cert, cert=cert)
        assert res.rc != 0 and res.status == 0, (counter, res.rc, res.status)
        counts[counter] = counts.get(counter, 0) + 1
        wait_ssl(r, lp, **{counter: counts[counter]})
    assert app.stats()["requests"] == 0
    for cert in (pki.a, pki.b):  # a by its URI SAN, b by its DNS SAN
        res = curl(r.ingress, ca=pki.ca.cert, cert=cert)
        assert (res.rc, res.status) == (0, 200), res.err
    assert app.stats()["requests"] == 2
    assert ssl_stats(r, lp) == expect_ssl(handshake=2, fail_verify_no_cert=1,
                                          fail_verify_error=1, fail_verify_san=2)


def test_mtls_without_san_list_takes_any_certificate_of_the_trust(pki, remora, upstream):
    r, app = start_b(remora, upstream, listener_tls("STRICT", pki.b, trust=pki.ca.cert))
    for cert in (pki.a, pki.x, pki.wildcard):
        res = curl(r.ingress, ca=pki.ca.cert, cert=cert)
        assert (res.rc, res.status) == (0, 200), res.err
    res = curl(r.ingress, ca=pki.ca.cert, cert=pki.a_other_ca)
    assert res.status == 0
    assert wait_ssl(r, listener_prefix(r), fail_verify_error=1) == expect_ssl(
        handshake=3, fail_verify_error=1)
    assert app.stats()["requests"] == 3


# ---- egress: the A -> B chain ----

class Chain(types.SimpleNamespace):
    """a, b: the two remoras; app: B's local app; cluster: A's stats prefix for node b."""

    def get(self, path="/echo"):
        c = Conn(self.a.egress)
        try:
            return get(c, path, host=B_SERVICE)
        finally:
            c.close()

    def a_ssl(self):
        return ssl_stats(self.a, self.cluster)

    def b_ssl(self):
        return ssl_stats(self.b, listener_prefix(self.b))


@pytest.fixture
def chain(remora, upstream, apps_knot):
    """app <- B ingress (b_tls) <- A egress (policy) <- the test as A's app. A finds B through
    SRV records for b.apps.local pointing at B's ingress port; b's listener port is the app's."""

    def start(b_tls, policy=None, where="defaults", health=False):
        app = upstream("app")

        def config(node, proxy):
            return mesh([a_node(policy, where), b_node(app.port, b_tls, health)], node, proxy)

        b = remora(config("b", None))
        k = apps_knot(srv_records(b.ingress))
        a = remora(config("a", {"dns": {"servers": [k.server]}}))
        return Chain(a=a, b=b, app=app, knot=k, cluster=f"cluster.cds_egress_tls_b_http_{app.port}")

    return start


def mtls_pair(pki, b_cert=None):
    """B: STRICT, client certificates from ca naming spiffe://mesh.local/a. A: client cert a,
    B must be from ca and name spiffe://mesh.local/b."""
    return (listener_tls("STRICT", b_cert or pki.b, trust=pki.ca.cert, sans=[SPIFFE_A]),
            client_tls(pki.ca.cert, sans=[SPIFFE_B], cert=pki.a))


@pytest.mark.parametrize("where", ["defaults", "backend"])
def test_chain_mtls_verified_at_both_ends(pki, chain, where):
    b_tls, policy = mtls_pair(pki)
    ch = chain(b_tls, policy, where)
    for _ in range(2):  # the second rides A's pooled TLS connection to B
        resp = ch.get()
        assert resp.status == 200 and json.loads(resp.body)["server"] == "app"
    assert ch.a_ssl() == expect_ssl(handshake=1)
    assert ch.b_ssl() == expect_ssl(handshake=1)
    assert ch.app.stats()["requests"] == 2
    _, prom = ch.a.admin("/stats/prometheus")
    assert f'envoy_cluster_ssl_handshake{{envoy_cluster_name="{ch.cluster[len("cluster."):]}"}} 1' \
        in prom.splitlines()
    _, prom = ch.b.admin("/stats/prometheus")
    assert f'envoy_listener_ssl_handshake{{envoy_listener_address="0.0.0.0_{ch.b.ingress}"}} 1' \
        in prom.splitlines()


@pytest.mark.parametrize("mtls", [True, False])
def test_chain_health_checks_go_over_tls(pki, chain, mtls):
    """A health-checks B's endpoint as its requests reach it: over TLS with the same context,
    client certificate included (a plaintext probe to a STRICT listener would fail)."""
    b_tls, policy = mtls_pair(pki) if mtls else (listener_tls("STRICT", pki.b), None)
    ch = chain(b_tls, policy, health=True)
    cluster = ch.cluster + "."
    wait_until(lambda: ch.a.stats().get(cluster + "health_check_attempt", 0) >= 1,
               what="a first health check")
    stats = ch.a.stats()
    assert stats[cluster + "health_check_failure"] == 0
    assert stats[cluster + "membership_healthy"] == 1
    assert ch.b_ssl()["handshake"] >= 1 and ch.b_ssl()["connection_error"] == 0
    assert ch.app.stats()["requests"] >= 1, "the probe reached the app through B"
    assert ch.get().status == 200


@pytest.mark.parametrize("b_cert,counter", [
    ("c", "fail_verify_san"),             # trusted, but names spiffe://mesh.local/c
    ("b_other_ca", "fail_verify_error"),  # the right names from an untrusted CA
    ("b_expired", "fail_verify_error"),   # trusted, right names, expired in 2020
])
def test_chain_refuses_a_bad_server_certificate_with_503(pki, chain, b_cert, counter):
    b_tls, policy = mtls_pair(pki, getattr(pki, b_cert))
    ch = chain(b_tls, policy)
    assert ch.get().status == 503
    # The failed handshake is a connect failure: App Mesh's default policy tries twice more.
    assert wait_ssl(ch.a, ch.cluster, **{counter: 3}) == expect_ssl(**{counter: 3})
    assert ch.b_ssl()["handshake"] == 0
    assert ch.app.stats()["requests"] == 0


@pytest.mark.parametrize("b_mode,policy", [
    ("STRICT", None),
    ("PERMISSIVE", None),
    ("STRICT", "other-port"),     # enforced, but its ports do not include b's
    ("STRICT", "not-enforced"),   # enforce: false
])
def test_chain_speaks_unverified_tls_when_no_policy_applies(pki, chain, b_mode, policy):
    # B presents a certificate from the other CA: any verification would refuse it.
    b_tls = listener_tls(b_mode, pki.b_other_ca)
    pol = None
    if policy == "other-port":
        pol = client_tls(pki.ca.cert, sans=[SPIFFE_B], ports=[2])
    elif policy == "not-enforced":
        pol = client_tls(pki.ca.cert, sans=[SPIFFE_B], enforce=False)
    ch = chain(b_tls, pol)
    resp = ch.get()
    assert resp.status == 200 and json.loads(resp.body)["server"] == "app"
    assert ch.a_ssl() == expect_ssl(handshake=1)
    assert ch.b_ssl() == expect_ssl(handshake=1, no_certificate=1)


@pytest.mark.parametrize("server_cert,status", [
    ("wildcard", 200),  # *.apps.local covers b.apps.local
    ("b", 200),         # DNS:b.apps.local
    ("c", 503),         # DNS:c.apps.local only
])
def test_chain_without_san_list_checks_the_discovery_name(pki, remora, apps_knot, tls_recorder,
                                                          server_cert, status):
    peer = tls_recorder(getattr(pki, server_cert))
    k = apps_knot(srv_records(peer.port))
    a = remora(mesh([a_node(client_tls(pki.ca.cert)), b_node(8443)], "a",
                    {"dns": {"servers": [k.server]}}))
    c = Conn(a.egress)
    resp = get(c, host=B_SERVICE)
    assert resp.status == status
    # A failed handshake is a connect failure: App Mesh's default policy tries twice more.
    tries = 1 if status == 200 else 3
    assert peer.names == [B_NAME] * tries, "SNI is serviceName.namespaceName"
    cluster = "cluster.cds_egress_tls_b_http_8443"
    if status == 200:
        assert resp.body == b"peer\n"
        assert ssl_stats(a, cluster) == expect_ssl(handshake=1)
    else:
        wait_until(lambda: sum(ssl_stats(a, cluster)[n] for n in SSL_COUNTERS) == tries,
                   what="the failed upstream handshakes counted")
        st = ssl_stats(a, cluster)
        assert st["fail_verify_san"] + st["fail_verify_error"] == tries, st


def test_chain_resumes_sessions_on_a_second_upstream_connection(pki, chain):
    ch = chain(*mtls_pair(pki))
    assert ch.get().status == 200  # connection 1; its session tickets reach A with the answer
    results = []

    def slow():
        results.append(ch.get("/sleep/400").status)

    threads = [threading.Thread(target=slow) for _ in range(2)]
    for t in threads:  # two at once: one on the pooled connection, one on a new, resumed one
        t.start()
    for t in threads:
        t.join(10)
    assert results == [200, 200]
    assert ch.b_ssl() == expect_ssl(handshake=2, session_reused=1)
    assert ch.a_ssl() == expect_ssl(handshake=2, session_reused=1)


# ---- certificate rotation ----

def overwrite(path, data):
    """Truncate and rewrite in place, as spiffe-helper (Go os.WriteFile) does: same inode."""
    with open(path, "wb") as f:
        f.write(data)


def test_rotation_under_load_and_a_broken_file_keeps_the_last_good(pki, remora, upstream,
                                                                   tmp_path):
    live = tmp_path / "svid"
    live.mkdir()
    cert, key = str(live / "svid.pem"), str(live / "svid_key.pem")
    shutil.copyfile(pki.b.cert, cert)
    shutil.copyfile(pki.b.key, key)
    rotated = pki.ca.issue(str(tmp_path / "next"), "b-rotated", B_SANS)
    mismatched = pki.ca.issue(str(tmp_path / "next"), "b-mismatched", B_SANS)
    assert rotated.serial != pki.b.serial
    tls = {"mode": "STRICT", "certificate": {"file": {"certificateChain": cert, "privateKey": key}}}
    r, app = start_b(remora, upstream, tls)
    ctx = client_ctx(pki.ca.cert)

    def fresh_serial():
        c = TLSConn(r.ingress, ctx)
        try:
            assert get(c, close=True).status == 200
            return c.peer_serial()
        finally:
            c.close()

    serials, failures, stop = [], [], threading.Event()

    def load():  # sequential requests, each on a new connection (a new handshake)
        for _ in range(3000):
            if stop.is_set():
                return
            try:
                serials.append(fresh_serial())
            except Exception as e:  # noqa: BLE001 - every failure is one to report
                failures.append(repr(e))

    held = TLSConn(r.ingress, ctx)  # open before the rotation, used after it
    assert get(held).status == 200 and held.peer_serial() == pki.b.serial
    worker = threading.Thread(target=load)
    worker.start()
    try:
        wait_until(lambda: len(serials) >= 20, what="load running")
        overwrite(cert, rotated.pem())
        overwrite(key, rotated.key_pem())
        wait_until(lambda: fresh_serial() == rotated.serial, timeout=5, what="new cert served")
        wait_until(lambda: r.stats()["remora.tls.reload_ok"] >= 1, what="reload counted")
        assert get(held).status == 200, "an open connection keeps its context"
        # A broken certificate file: the last good context stays, the failure is counted.
        good = st = r.stats()
        overwrite(cert, b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n"
                        b"-----END CERTIFICATE-----\n")
        wait_until(lambda: r.stats()["remora.tls.reload_failed"] > st["remora.tls.reload_failed"],
                   timeout=5, what="garbage PEM refused")
        wait_until(lambda: r.stats()["remora.config.reload_failed"]
                   > st["remora.config.reload_failed"], what="counted as a failed reload")
        n = len(serials)
        wait_until(lambda: len(serials) >= n + 20, what="load continuing after the bad file")
        assert fresh_serial() == rotated.serial
        # A valid certificate whose key is not the key file's: refused the same way.
        st = r.stats()
        overwrite(cert, mismatched.pem())
        wait_until(lambda: r.stats()["remora.tls.reload_failed"] > st["remora.tls.reload_failed"],
                   timeout=5, what="key mismatch refused")
        n = len(serials)
        wait_until(lambda: len(serials) >= n + 20, what="load continuing after the mismatch")
        assert fresh_serial() == rotated.serial
    finally:
        stop.set()
        worker.join(30)
        held.close()
    assert failures == []
    order = [s for i, s in enumerate(serials) if i == 0 or serials[i - 1] != s]
    assert order == [pki.b.serial, rotated.serial], "old, then new, never back"
    assert r.stats()["remora.tls.reload_ok"] == good["remora.tls.reload_ok"]


def test_trust_file_rotation_changes_which_clients_pass(pki, remora, upstream, tmp_path):
    trust = str(tmp_path / "bundle.pem")
    shutil.copyfile(pki.ca.cert, trust)
    r, app = start_b(remora, upstream, listener_tls("STRICT", pki.b, trust=trust))
    assert curl(r.ingress, ca=pki.ca.cert, cert=pki.a).status == 200
    assert curl(r.ingress, ca=pki.ca.cert, cert=pki.a_other_ca).status == 0
    with open(pki.ca2.cert, "rb") as f:
        overwrite(trust, f.read())
    wait_until(lambda: curl(r.ingress, ca=pki.ca.cert, cert=pki.a_other_ca).status == 200,
               timeout=5, what="the new trust bundle in force")
    assert curl(r.ingress, ca=pki.ca.cert, cert=pki.a).status == 0, "the old CA no longer trusted"
    assert r.stats()["remora.tls.reload_ok"] >= 1


# ---- session resumption, ALPN ----

@pytest.mark.parametrize("version", ["-tls1_3", "-tls1_2"])
@pytest.mark.parametrize("mtls", [False, True], ids=["tls", "mtls"])
def test_server_side_session_resumption(pki, remora, upstream, tmp_path, version, mtls):
    tls = listener_tls("STRICT", pki.b, trust=pki.ca.cert if mtls else None)
    r, app = start_b(remora, upstream, tls)
    sess = str(tmp_path / "session.pem")
    args = [version, "-CAfile", pki.ca.cert, "-verify_return_error"]
    if mtls:
        args += ["-cert", pki.a.cert, "-key", pki.a.key]
    name = {"-tls1_3": "TLSv1.3", "-tls1_2": "TLSv1.2"}[version]
    first = s_client(r.ingress, *args, "-sess_out", sess, stdin=CLOSE_REQUEST)
    assert f"New, {name}, Cipher is" in first and "HTTP/1.1 200" in first, first
    second = s_client(r.ingress, *args, "-sess_in", sess, stdin=CLOSE_REQUEST)
    assert f"Reused, {name}, Cipher is" in second and "HTTP/1.1 200" in second, second
    assert app.stats()["requests"] == 2
    assert ssl_stats(r, listener_prefix(r)) == expect_ssl(
        handshake=2, session_reused=1, no_certificate=0 if mtls else 2)


def test_alpn_selects_h2_else_http11(pki, remora, upstream):
    """The listener prefers h2 (served by the HTTP/2 codec, test_h2.py), else http/1.1."""
    r, app = start_b(remora, upstream, listener_tls("STRICT", pki.b))
    out = s_client(r.ingress, "-alpn", "h2,http/1.1", "-CAfile", pki.ca.cert)
    assert "ALPN protocol: h2" in out, out
    out = s_client(r.ingress, "-alpn", "http/1.1", "-CAfile", pki.ca.cert, stdin=CLOSE_REQUEST)
    assert "ALPN protocol: http/1.1" in out and "HTTP/1.1 200" in out, out
    out = s_client(r.ingress, "-CAfile", pki.ca.cert, stdin=CLOSE_REQUEST)
    assert "No ALPN negotiated" in out and "HTTP/1.1 200" in out, out
    c = TLSConn(r.ingress, client_ctx(pki.ca.cert, alpn=["http/1.1"]))
    assert c.sock.selected_alpn_protocol() == "http/1.1"
    assert get(c).status == 200
    assert app.stats()["requests"] == 3


# ---- /certs ----

def days_left(when):
    return int((when - datetime.datetime.now(datetime.timezone.utc)).total_seconds() // 86400)


def check_cert_entry(entry, path, cert, sans, days):
    assert entry["path"] == path
    assert re.fullmatch(r"[0-9a-f]+", entry["serial_number"]), entry["serial_number"]
    assert int(entry["serial_number"], 16) == cert.serial
    assert entry["subject_alt_names"] == sans
    assert int(entry["days_until_expiration"]) in days
    parse = lambda s: datetime.datetime.fromisoformat(s.replace("Z", "+00:00"))
    assert parse(entry["valid_from"]) == cert.not_before
    assert parse(entry["expiration_time"]) == cert.not_after


def test_certs_endpoint(pki, remora, upstream):
    leaf = pki.certs_view  # valid until now + 30 days 6 hours: 30 whole days left
    r, _ = start_b(remora, upstream, listener_tls("STRICT", leaf, trust=pki.ca.cert))
    before = days_left(pki.ca.not_after)
    status, body = r.admin("/certs")
    after = days_left(pki.ca.not_after)
    assert status == 200
    certs = json.loads(body)
    assert list(certs) == ["certificates"] and len(certs["certificates"]) == 1
    entry = certs["certificates"][0]
    assert len(entry["ca_cert"]) == 1 and len(entry["cert_chain"]) == 1
    check_cert_entry(entry["ca_cert"][0], pki.ca.cert, pki.ca, [], {before, after})
    check_cert_entry(entry["cert_chain"][0], leaf.cert, leaf,
                     [{"dns": "b.apps.local"}, {"uri": "spiffe://mesh.local/b"}], {30})


def test_certs_endpoint_without_tls(remora, upstream):
    r, _ = start_b(remora, upstream, None)
    status, body = r.admin("/certs")
    assert status == 200 and json.loads(body) == {"certificates": []}


# ---- remora check ----

def check(tmp_path, cfg):
    path = tmp_path / "check.json"
    path.write_text(json.dumps(cfg))
    out = subprocess.run([REMORA, "check", "--config", str(path)], capture_output=True, text=True,
                         timeout=10)
    return out.returncode, out.stdout + out.stderr


@pytest.mark.parametrize("node", ["a", "b"])
def test_check_accepts_a_file_tls_config(pki, tmp_path, node):
    b_tls, policy = mtls_pair(pki)
    rc, out = check(tmp_path, mesh([a_node(policy), b_node(8080, b_tls)], node))
    assert rc == 0, out


@pytest.mark.parametrize("case", ["listener-acm", "listener-sds", "trust-sds", "client-acm"])
def test_check_refuses_acm_and_sds_sources_naming_the_path(pki, tmp_path, case):
    b_tls, policy = mtls_pair(pki)
    if case == "listener-acm":
        b_tls["certificate"] = {"acm": {"certificateArn": "arn:aws:acm:us-east-1:1:certificate/x"}}
        where, word = "virtualNodes[1].spec.listeners[0].tls.certificate", "acm"
    elif case == "listener-sds":
        b_tls["certificate"] = {"sds": {"secretName": "svid"}}
        where, word = "virtualNodes[1].spec.listeners[0].tls.certificate", "sds"
    elif case == "trust-sds":
        b_tls["validation"]["trust"] = {"sds": {"secretName": "bundle"}}
        where, word = "virtualNodes[1].spec.listeners[0].tls.validation.trust", "sds"
    else:
        policy["validation"]["trust"] = {"acm": {"certificateAuthorityArns": [
            "arn:aws:acm-pca:us-east-1:1:certificate-authority/x"]}}
        where = "virtualNodes[0].spec.backendDefaults.clientPolicy.tls.validation.trust"
        word = "acm"
    rc, out = check(tmp_path, mesh([a_node(policy), b_node(8080, b_tls)], "a"))
    assert rc == 1, out
    assert any(where in line and word in line for line in out.splitlines()), out


@pytest.mark.parametrize("case", ["missing-cert", "garbage-cert", "missing-key", "missing-trust",
                                  "key-mismatch", "client-missing-cert", "client-missing-trust"])
def test_check_refuses_unloadable_files_naming_them(pki, tmp_path, case):
    """The checked node's own files: b's listener files for node b, a's client policy for a."""
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    missing = str(tmp_path / "nonexistent" / "file.pem")
    b_tls, policy = mtls_pair(pki)
    listener, client = b_tls["certificate"]["file"], policy["certificate"]["file"]
    node, named = {
        "missing-cert": lambda: ("b", listener.update(certificateChain=missing) or [missing]),
        "garbage-cert": lambda: ("b", listener.update(certificateChain=str(garbage))
                                 or [str(garbage)]),
        "missing-key": lambda: ("b", listener.update(privateKey=missing) or [missing]),
        "missing-trust": lambda: ("b", b_tls["validation"]["trust"]["file"].update(
            certificateChain=missing) or [missing]),
        "key-mismatch": lambda: ("b", listener.update(privateKey=pki.a.key)
                                 or [pki.a.key, pki.b.cert]),
        "client-missing-cert": lambda: ("a", client.update(certificateChain=missing) or [missing]),
        "client-missing-trust": lambda: ("a", policy["validation"]["trust"]["file"].update(
            certificateChain=missing) or [missing]),
    }[case]()
    rc, out = check(tmp_path, mesh([a_node(policy), b_node(8080, b_tls)], node))
    assert rc == 1, out
    assert any(p in out for p in named), out


# ---- hostile TLS input ----

def client_hello():
    """The bytes of a real TLS ClientHello (Python ssl on memory BIOs): nothing more follows."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname=B_NAME)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


@pytest.mark.parametrize("mode", ["STRICT", "PERMISSIVE"])
def test_hostile_tls_bytes_are_closed_and_remora_stays_up(pki, remora, upstream, mode):
    r, app = start_b(remora, upstream, listener_tls(mode, pki.b),
                     {"requestHeaderTimeout": {"unit": "ms", "value": 500}})
    rnd = random.Random(1234)
    # A handshake record whose body is garbage, then random bytes after a 0x16: refused at once
    # or at the header timeout, either way closed without an HTTP answer.
    for junk in (b"\x16\x03\x01\x00\x40" + rnd.randbytes(64), b"\x16" + rnd.randbytes(3000)):
        c = Conn(r.ingress)
        c.send(junk)
        closed_without_response(c)
    # A ClientHello, then silence; and three bytes of a record header, then silence.
    hello = client_hello()
    assert hello[0] == 0x16
    for partial in (hello, hello[:3]):
        c = Conn(r.ingress)
        c.send(partial)
        start = time.monotonic()
        closed_without_response(c)
        assert 0.4 < time.monotonic() - start < 3.0
    res = curl(r.ingress, ca=pki.ca.cert)
    assert (res.rc, res.status) == (0, 200), res.err
    assert app.stats()["requests"] == 1
    assert ssl_stats(r, listener_prefix(r))["handshake"] == 1


# ---- a STRICT TLS listener of protocol tcp ----

class GreetingApp:
    """A server-first TCP app (as SMTP or MySQL): greets each connection, then echoes lines.
    Counts the connections it accepted."""

    def __init__(self):
        self.accepted = 0
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.port = self.lsock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    @staticmethod
    def _serve(c):
        with c:
            try:
                c.sendall(b"220 greeting\r\n")
                while data := c.recv(4096):
                    c.sendall(data)
            except OSError:
                pass

    def stop(self):
        self.lsock.close()


def test_a_strict_tcp_listener_reaches_the_app_only_after_a_handshake(pki, remora):
    """Two clients send a byte of a ClientHello and go silent, with maxConnections 2. Before
    its handshake a client holds no slot and opens nothing to the app (the build before this
    test connected to the app at accept: the two held both slots for the 300 s idle timeout,
    and an authenticated client was refused); the handshake timeout (the request header
    timeout, 500 ms here) closes them. A client with its certificate gets the app's greeting
    with nothing sent first, then its echo."""
    app = GreetingApp()
    listener = {"portMapping": {"port": app.port, "protocol": "tcp"},
                "connectionPool": {"tcp": {"maxConnections": 2}},
                "tls": {"mode": "STRICT",
                        "certificate": {"file": {"certificateChain": pki.b.cert,
                                                 "privateKey": pki.b.key}},
                        "validation": {"trust": {"file": {"certificateChain": pki.ca.cert}},
                                       "subjectAlternativeNames": {"match": {"exact": [SPIFFE_A]}}}}}
    cfg = {"mesh": {"meshName": "tls"},
           "virtualNodes": [{"virtualNodeName": "b", "spec": {
               "listeners": [listener], "serviceDiscovery": {"dns": {"hostname": "127.0.0.1"}}}}],
           "proxy": {"node": "b", "requestHeaderTimeout": {"unit": "ms", "value": 500}}}
    r = remora(cfg)
    try:
        stalled = [socket.create_connection(("127.0.0.1", r.ingress), timeout=5) for _ in range(2)]
        for s in stalled:
            s.sendall(b"\x16")
        ctx = client_ctx(pki.ca.cert, pki.a)
        with ctx.wrap_socket(socket.create_connection(("127.0.0.1", r.ingress), timeout=5),
                             server_hostname=B_NAME) as t:
            assert t.recv(100) == b"220 greeting\r\n"  # server first: the client sent nothing
            t.sendall(b"abc\r\n")
            assert t.recv(100) == b"abc\r\n"
        assert app.accepted == 1, "only the authenticated client reached the app"
        for s in stalled:  # closed by the handshake timeout, with nothing relayed
            s.settimeout(3)
            assert s.recv(100) == b""
            s.close()
        assert app.accepted == 1
        cluster = f"cluster.cds_ingress_tls_b_tcp_{app.port}."
        st = r.stats()
        assert st[cluster + "upstream_cx_overflow"] == 0
        assert st[cluster + "upstream_cx_total"] == 1
    finally:
        app.stop()
