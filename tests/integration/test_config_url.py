"""Config from a URL (REMORA_CONFIG_URL, polled every REMORA_CONFIG_POLL_MS = 200 ms) served by a
real HTTP server (cloudmap_peers.ConfigServer) that records every request's headers: start-up
waits for the first valid document, changes reach traffic within a poll, conditional requests
(If-None-Match with the ETag, else If-Modified-Since with Last-Modified) and 304s cause no
reload, a same Configuration-Version is no change, and broken documents or failing servers
change nothing. Upstreams are static (a virtual node's DNS hostname is the IP 127.0.0.1)."""
import json
import time

import pytest

from cloudmap_peers import config_server, no_aws_env, url_remora  # noqa: F401
from conftest import port_open, wait_until
from rawhttp import Conn, request


def mesh_doc(ports, weights):
    """web -> cart.shop.local -> router cart -> cart-v1 / cart-v2 with `weights` (v1, v2)."""
    nodes = [{"virtualNodeName": "web", "spec": {
        "listeners": [{"portMapping": {"port": 1, "protocol": "http"}}],
        "backends": [{"virtualService": {"virtualServiceName": "cart.shop.local"}}]}}]
    for name, port in ports.items():
        nodes.append({"virtualNodeName": name, "spec": {
            "listeners": [{"portMapping": {"port": port, "protocol": "http"}}],
            "serviceDiscovery": {"dns": {"hostname": "127.0.0.1"}}}})
    return {
        "mesh": {"meshName": "shop"},
        "virtualNodes": nodes,
        "virtualServices": [{"virtualServiceName": "cart.shop.local", "spec": {
            "provider": {"virtualRouter": {"virtualRouterName": "cart"}}}}],
        "virtualRouters": [{"virtualRouterName": "cart", "spec": {
            "listeners": [{"portMapping": {"port": 80, "protocol": "http"}}]}}],
        "routes": [{"virtualRouterName": "cart", "routeName": "split", "spec": {"httpRoute": {
            "match": {"prefix": "/"},
            "action": {"weightedTargets": [{"virtualNode": n, "weight": w}
                                           for n, w in zip(ports, weights)]}}}}],
        "proxy": {"node": "web"},
    }


def served_by(r, n):
    c = Conn(r.egress)
    out = {}
    for _ in range(n):
        c.send(request("GET", "/echo"))
        resp = c.read_response()
        key = json.loads(resp.body)["server"] if resp.status == 200 else str(resp.status)
        out[key] = out.get(key, 0) + 1
        if resp.header("connection") == "close":
            c = Conn(r.egress)
    return out


def stat(r, name):
    return r.stats().get(name, 0)


@pytest.fixture
def site(upstream, config_server, url_remora):  # noqa: F811
    """Two upstreams and a config server; start() starts remora against it."""

    class Site:
        def __init__(self):
            self.ups = {n: upstream(n) for n in ("cart-v1", "cart-v2")}
            self.ports = {n: u.port for n, u in self.ups.items()}
            self.server = None

        def doc(self, w1, w2):
            return mesh_doc(self.ports, (w1, w2))

        def start(self, weights=(100, 0), validators="etag", version=None, wait=True, status=200):
            self.server = config_server(None, validators=validators)
            self.server.set(self.doc(*weights), version=version)
            self.server.status = status
            self.r = url_remora({"REMORA_CONFIG_URL": self.server.url + "/mesh.json",
                                 "REMORA_CONFIG_POLL_MS": "200"}, wait=wait)
            return self.r

    return Site()


def test_start_up_waits_for_the_first_valid_document(site):
    """The server answers 503, then a document that does not parse, then a valid one: remora
    keeps fetching, listens on nothing and is not ready until the valid one. (How fast it
    retries at start-up is its own business: the deadlines allow a backoff.)"""
    site.start(wait=False, status=503)
    srv, r = site.server, site.r
    wait_until(lambda: srv.count() >= 2, timeout=6, what="remora retrying while the server answers 503")
    assert all(q[3] == 503 for q in srv.seen())
    assert r.proc.poll() is None, "remora keeps waiting"
    assert not port_open(r.egress), "no listener before a valid document"
    assert not _ready(r)
    srv.set(b'{"mesh": ')
    srv.status = 200
    n = srv.count()
    wait_until(lambda: srv.count() >= n + 1, timeout=10, what="a fetch of the broken document")
    assert srv.seen(n)[0][3] == 200
    assert r.proc.poll() is None and not port_open(r.egress) and not _ready(r)
    srv.set(site.doc(100, 0))
    wait_until(r.ready, timeout=12, what="ready after the first valid document")
    assert served_by(r, 4) == {"cart-v1": 4}


def _ready(r):
    try:
        status, _ = r.admin("/ready")
    except OSError:  # admin not listening yet either
        return False
    return status == 200


def test_a_weight_change_reaches_traffic_within_the_poll_interval(site):
    r = site.start((100, 0))
    assert served_by(r, 10) == {"cart-v1": 10}
    ok0, changed0 = stat(r, "remora.config.reload_ok"), stat(r, "remora.config_url.changed")
    site.server.set(site.doc(0, 100))
    t0 = time.monotonic()
    wait_until(lambda: served_by(r, 2) == {"cart-v2": 2}, timeout=3, what="the new weights")
    assert time.monotonic() - t0 < 1.0, "one 200 ms poll, then the swap"
    assert served_by(r, 10) == {"cart-v2": 10}
    assert stat(r, "remora.config.reload_ok") == ok0 + 1
    assert stat(r, "remora.config_url.changed") == changed0 + 1


def test_polls_are_conditional_and_304_is_not_a_reload(site):
    r = site.start()
    srv = site.server
    first = srv.seen()[0]
    assert first[3] == 200 and "if-none-match" not in first[2], "nothing stored at start-up"
    ok0, nm0 = stat(r, "remora.config.reload_ok"), stat(r, "remora.config_url.not_modified")
    n = srv.count()
    wait_until(lambda: srv.count() >= n + 5, timeout=3, what="five more polls")
    polls = srv.seen(n)
    for t, path, headers, status in polls:
        assert path == "/mesh.json"
        assert headers.get("if-none-match") == srv.etag, headers
        assert "if-modified-since" not in headers
        assert status == 304
    answered = len([q for q in srv.seen(n) if q[3] == 304])
    wait_until(lambda: stat(r, "remora.config_url.not_modified") >= nm0 + answered, timeout=2,
               what="every 304 counted")
    assert stat(r, "remora.config_url.not_modified") <= nm0 + len(srv.seen(n))
    assert stat(r, "remora.config.reload_ok") == ok0
    assert stat(r, "remora.config.reload_failed") == 0
    gaps = [b[0] - a[0] for a, b in zip(polls, polls[1:])]
    assert min(gaps) >= 0.08 and max(gaps) < 1.0, f"polled every ~200 ms: {gaps}"
    assert served_by(r, 4) == {"cart-v1": 4}


@pytest.mark.parametrize("broken", ["syntax", "semantic"])
def test_a_broken_document_changes_nothing(site, broken):
    r = site.start((100, 0))
    srv = site.server
    good_etag = srv.etag
    ok0 = stat(r, "remora.config.reload_ok")
    if broken == "syntax":
        bad = b'{"mesh": {"meshName": "shop"}, "virtualNodes": ['
    else:  # valid JSON, but a route to a virtual node that does not exist
        doc = site.doc(100, 0)
        doc["routes"][0]["spec"]["httpRoute"]["action"]["weightedTargets"][0]["virtualNode"] = "cart-v9"
        bad = json.dumps(doc).encode()
    n = srv.count()
    bad_etag = srv.set(bad)
    wait_until(lambda: stat(r, "remora.config.reload_failed") >= 1, timeout=3,
               what="the broken document rejected")
    assert stat(r, "remora.config_url.invalid") >= 1
    assert stat(r, "remora.config.reload_ok") == ok0
    assert served_by(r, 6) == {"cart-v1": 6}
    # Not stored: later polls never claim to have the broken document.
    m = srv.count()
    wait_until(lambda: srv.count() >= m + 3, timeout=3, what="three more polls")
    later = srv.seen(n)
    first_bad = next(q for q in later if q[3] == 200)
    assert first_bad[2].get("if-none-match") == good_etag, first_bad
    for t, path, headers, status in later:
        assert headers.get("if-none-match") != bad_etag, headers
    # A fixed document is applied.
    srv.set(site.doc(0, 100))
    wait_until(lambda: served_by(r, 2) == {"cart-v2": 2}, timeout=3, what="the fixed document")
    assert stat(r, "remora.config.reload_ok") == ok0 + 1


def test_last_modified_when_the_server_sends_no_etag(site):
    r = site.start(validators="last-modified")
    srv = site.server
    ok0 = stat(r, "remora.config.reload_ok")
    n = srv.count()
    wait_until(lambda: srv.count() >= n + 3, timeout=3, what="three more polls")
    for t, path, headers, status in srv.seen(n):
        assert headers.get("if-modified-since") == srv.last_modified(), headers
        assert "if-none-match" not in headers
        assert status == 304
    assert stat(r, "remora.config.reload_ok") == ok0
    srv.set(site.doc(0, 100))  # Last-Modified moves on
    wait_until(lambda: served_by(r, 2) == {"cart-v2": 2}, timeout=3, what="the new document")
    assert stat(r, "remora.config.reload_ok") == ok0 + 1
    n = srv.count()
    wait_until(lambda: srv.count() >= n + 2, timeout=3, what="two more polls")
    assert all(q[2].get("if-modified-since") == srv.last_modified() for q in srv.seen(n))


def test_the_same_configuration_version_is_no_change(site):
    """The AWS AppConfig agent sends no validators, only Configuration-Version; a 200 with the
    version already applied changes nothing, even if the body differs."""
    r = site.start((100, 0), validators="none", version="1")
    srv = site.server
    ok0 = stat(r, "remora.config.reload_ok")
    srv.set(site.doc(0, 100), version="1")
    n = srv.count()
    wait_until(lambda: srv.count() >= n + 4, timeout=3, what="four more polls")
    assert all(q[3] == 200 for q in srv.seen(n))
    assert served_by(r, 6) == {"cart-v1": 6}
    assert stat(r, "remora.config.reload_ok") == ok0
    assert stat(r, "remora.config.reload_failed") == 0
    srv.set(site.doc(0, 100), version="2")
    wait_until(lambda: served_by(r, 2) == {"cart-v2": 2}, timeout=3, what="version 2")
    assert stat(r, "remora.config.reload_ok") == ok0 + 1


@pytest.mark.parametrize("failure", [500, "close"])
def test_a_failing_server_keeps_the_config(site, failure):
    r = site.start((100, 0))
    srv = site.server
    ok0, failed0 = stat(r, "remora.config.reload_ok"), stat(r, "remora.config.reload_failed")
    err0 = stat(r, "remora.config_url.error")
    srv.status = failure
    wait_until(lambda: stat(r, "remora.config_url.error") >= err0 + 2, timeout=5,
               what="two failed fetches counted")
    assert served_by(r, 6) == {"cart-v1": 6}
    assert r.proc.poll() is None
    assert stat(r, "remora.config.reload_ok") == ok0
    assert stat(r, "remora.config.reload_failed") == failed0
    # Back, with a change: applied.
    srv.set(site.doc(0, 100))
    srv.status = 200
    wait_until(lambda: served_by(r, 2) == {"cart-v2": 2}, timeout=5, what="the server back")
    assert stat(r, "remora.config.reload_ok") == ok0 + 1
