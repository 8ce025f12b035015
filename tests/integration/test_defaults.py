"""App Mesh's behaviours that no field of the API shows, end to end with real upstreams: the
default retry policy (and the setting that turns it off), route matches without a prefix or a
path, the mesh-level ipPreference, HTTP/2 and gRPC refused where a node meets them, and a whole
fleet's mesh (10,000 routes) loaded by one sidecar, which keeps only what its node reaches."""
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import REMORA, free_port, port_open, wait_until
from rawhttp import Conn, request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "bench"))
import bigmesh  # noqa: E402  (tests/bench: the generator the bench measures with)


# ---- a real upstream that fails on purpose, N times per key ----

class Flaky:
    """HTTP/1.1 server on 127.0.0.1: /flaky/KEY/N/WHAT answers WHAT (a status, or "reset": the
    connection closes unanswered) to the first N requests for KEY, then 200 with JSON {"key",
    "attempt"}. Anything else is 200. Counts every request per key. Every answer closes its
    connection, so that each attempt is on a fresh one: a reset is then the retry policy's
    business, never remora's resend of an idempotent request on a stale pooled connection."""

    def __init__(self):
        self.counts, self.lock = {}, threading.Lock()
        flaky = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                parts = self.path.strip("/").split("/")
                key = parts[1] if len(parts) > 1 else self.path
                with flaky.lock:
                    n = flaky.counts[key] = flaky.counts.get(key, 0) + 1
                if parts[0] == "flaky" and len(parts) == 4 and n <= int(parts[2]):
                    if parts[3] == "reset":
                        self.close_connection = True
                        return
                    body, status = b"failing on purpose\n", int(parts[3])
                else:
                    body, status = json.dumps({"key": key, "attempt": n}).encode(), 200
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.close_connection = True
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def seen(self, key):
        with self.lock:
            return self.counts.get(key, 0)

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def flaky():
    started = []

    def start():
        f = Flaky()
        started.append(f)
        return f

    yield start
    for f in started:
        f.stop()


def shop(port, route=None, provider="router", proxy=None, target_port=None):
    """web -> cart.shop.local -> router cart (one route, `route`'s httpRoute extras) or node
    cart-v1 -> cart-v1 on 127.0.0.1:port."""
    http = {"match": {"prefix": "/"},
            "action": {"weightedTargets": [{"virtualNode": "cart-v1", "weight": 1}]}}
    http.update(route or {})
    cfg = {
        "mesh": {"meshName": "shop"},
        "virtualNodes": [
            {"virtualNodeName": "web", "spec": {
                "listeners": [{"portMapping": {"port": 1, "protocol": "http"}}],
                "backends": [{"virtualService": {"virtualServiceName": "cart.shop.local"}}]}},
            {"virtualNodeName": "cart-v1", "spec": {
                "listeners": [{"portMapping": {"port": target_port or port, "protocol": "http"}}],
                "serviceDiscovery": {"dns": {"hostname": "127.0.0.1"}}}}],
        "virtualServices": [{"virtualServiceName": "cart.shop.local", "spec": {"provider": (
            {"virtualRouter": {"virtualRouterName": "cart"}} if provider == "router"
            else {"virtualNode": {"virtualNodeName": "cart-v1"}})}}],
        "virtualRouters": [{"virtualRouterName": "cart", "spec": {
            "listeners": [{"portMapping": {"port": 80, "protocol": "http"}}]}}],
        "routes": [{"virtualRouterName": "cart", "routeName": "r", "spec": {"httpRoute": http}}],
        "proxy": dict({"node": "web"}, **(proxy or {})),
    }
    return cfg


def get(port, path, host="cart.shop.local", headers=()):
    c = Conn(port)
    try:
        c.send(request("GET", path, host=host, headers=headers))
        return c.read_response()
    finally:
        c.close()


def cluster(r, name, stat):
    return r.stats().get(f"cluster.{name}.{stat}", 0)


def check(path, node="web", env=None):
    full = {k: v for k, v in os.environ.items() if not k.startswith(("APPMESH_", "REMORA_"))}
    full.update(env or {})
    return subprocess.run([REMORA, "check", "--config", str(path), "--node", node],
                          capture_output=True, text=True, timeout=30, env=full)


# ---- A: the default retry policy ----

def test_two_503s_then_200_is_a_200_under_the_default_policy(flaky, remora):
    f = flaky()
    r = remora(shop(f.port))
    resp = get(r.egress, "/flaky/a/2/503")
    assert resp.status == 200, resp.body
    assert json.loads(resp.body)["attempt"] == 3
    assert f.seen("a") == 3
    name = f"cds_egress_shop_cart-v1_http_{f.port}"
    assert cluster(r, name, "upstream_rq_retry") == 2
    assert cluster(r, name, "upstream_rq_retry_success") == 1
    assert r.stats()["remora.route.cart.r.cart-v1.retries"] == 2
    # Three 503s: two retries, then the third 503 is the answer.
    assert get(r.egress, "/flaky/b/3/503").status == 503
    assert f.seen("b") == 3
    # A reset before the response head is retried too.
    resp = get(r.egress, "/flaky/c/1/reset")
    assert resp.status == 200 and f.seen("c") == 2
    # Only 503: a 500 or a 502 is the answer at once.
    assert get(r.egress, "/flaky/d/1/500").status == 500
    assert get(r.egress, "/flaky/e/1/502").status == 502
    assert f.seen("d") == 1 and f.seen("e") == 1


@pytest.mark.parametrize("how", ["env", "config"])
def test_the_default_policy_turned_off_relays_the_503(flaky, remora, how):
    f = flaky()
    if how == "env":
        r = remora(shop(f.port), env={"REMORA_DEFAULT_RETRY_POLICY": "0"})
    else:
        r = remora(shop(f.port, proxy={"defaultRetryPolicy": False}))
    assert get(r.egress, "/flaky/a/2/503").status == 503
    assert f.seen("a") == 1
    assert get(r.egress, "/flaky/b/1/reset").status == 503
    assert f.seen("b") == 1
    assert cluster(r, f"cds_egress_shop_cart-v1_http_{f.port}", "upstream_rq_retry") == 0


def test_the_environment_wins_over_the_document(flaky, remora):
    f = flaky()
    r = remora(shop(f.port, proxy={"defaultRetryPolicy": False}),
               env={"REMORA_DEFAULT_RETRY_POLICY": "1"})
    assert get(r.egress, "/flaky/a/2/503").status == 200
    assert f.seen("a") == 3


def test_an_explicit_retry_policy_wins_whole(flaky, remora):
    """The route's own policy replaces the default: here it retries 409 alone, so a 503 is not
    retried, and a 409 is retried once."""
    f = flaky()
    policy = {"retryPolicy": {"maxRetries": 1, "perRetryTimeout": {"unit": "s", "value": 5},
                              "httpRetryEvents": ["client-error"]}}
    r = remora(shop(f.port, route=policy))
    assert get(r.egress, "/flaky/a/2/503").status == 503
    assert f.seen("a") == 1
    assert get(r.egress, "/flaky/b/1/409").status == 200
    assert f.seen("b") == 2


def test_a_virtual_node_provider_gets_the_default_too(flaky, remora):
    f = flaky()
    r = remora(shop(f.port, provider="node"))
    assert get(r.egress, "/flaky/a/2/503").status == 200
    assert f.seen("a") == 3


def test_connect_failures_are_retried_by_default(remora):
    dead = free_port()  # nothing listens: every attempt fails to connect
    r = remora(shop(dead))
    assert get(r.egress, "/x").status == 503
    name = f"cds_egress_shop_cart-v1_http_{dead}"
    assert cluster(r, name, "upstream_rq_retry") == 2
    assert cluster(r, name, "upstream_cx_connect_fail") == 3


def test_check_shows_the_effective_policy(tmp_path):
    path = tmp_path / "mesh.json"
    path.write_text(json.dumps(shop(8080)))
    out = check(path)
    assert out.returncode == 0, out.stdout
    assert ("route r: prefix / -> cart-v1:1, 2 retries (App Mesh's default: 503, reset, connect "
            "failure)") in out.stdout
    out = check(path, env={"REMORA_DEFAULT_RETRY_POLICY": "0"})
    assert "route r: prefix / -> cart-v1:1, no retries (the default policy is off)" in out.stdout
    out = check(path, env={"REMORA_DEFAULT_RETRY_POLICY": "maybe"})
    assert out.returncode == 1
    assert "settings: REMORA_DEFAULT_RETRY_POLICY: must be 0 or 1, got \"maybe\"" in out.stdout
    path.write_text(json.dumps(shop(8080, provider="node")))
    assert ("backend cart.shop.local -> virtual node cart-v1, 2 retries (App Mesh's default"
            in check(path).stdout)


# ---- B: matches with neither prefix nor path ----

def multi_listener_mesh(ports):
    """App Mesh's howto-multiple-listeners: router cart listens on 80 and 81; its routes match
    by port alone, and a header route on 80 comes first by priority."""
    def route(name, match, target, priority=None):
        spec = {"httpRoute": {"match": match, "action": {"weightedTargets": [
            {"virtualNode": target, "weight": 1, "port": ports[target]}]}}}
        if priority is not None:
            spec["priority"] = priority
        return {"virtualRouterName": "cart", "routeName": name, "spec": spec}

    cfg = shop(1)
    cfg["virtualNodes"] = cfg["virtualNodes"][:1] + [
        {"virtualNodeName": n, "spec": {
            "listeners": [{"portMapping": {"port": p, "protocol": "http"}}],
            "serviceDiscovery": {"dns": {"hostname": "127.0.0.1"}}}} for n, p in ports.items()]
    cfg["virtualRouters"][0]["spec"]["listeners"] = [
        {"portMapping": {"port": 80, "protocol": "http"}},
        {"portMapping": {"port": 81, "protocol": "http"}}]
    cfg["routes"] = [
        route("on-80", {"port": 80}, "v80"),
        route("on-81", {"port": 81}, "v81"),
        route("canary", {"port": 80, "headers": [{"name": "x-canary", "match": {"exact": "yes"}}]},
              "canary", priority=0),
    ]
    return cfg


def test_prefixless_matches_route_by_port_and_header(upstream, remora, tmp_path):
    ups = {n: upstream(n) for n in ("v80", "v81", "canary")}
    cfg = multi_listener_mesh({n: u.port for n, u in ups.items()})
    r = remora(cfg)

    def server(host, path, headers=()):
        resp = get(r.egress, path, host=host, headers=headers)
        return json.loads(resp.body)["server"] if resp.status == 200 else resp.status

    assert server("cart.shop.local:80", "/any/path") == "v80"
    assert server("cart.shop.local:81", "/another?q=1") == "v81"
    assert server("cart.shop.local:80", "/", [("x-canary", "yes")]) == "canary"
    assert server("cart.shop.local:81", "/", [("x-canary", "yes")]) == "v81"
    assert server("cart.shop.local:82", "/") == 404  # two listeners: the port decides
    path = tmp_path / "multi.json"
    path.write_text(json.dumps(cfg))
    out = check(path)
    assert out.returncode == 0, out.stdout
    assert "route on-81: any path, port 81 -> v81:1" in out.stdout
    assert "route canary (priority 0): any path, port 80, 1 header matcher -> canary:1" in out.stdout


# ---- C: the mesh's ipPreference ----

def v6_available():
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


class Upstream6:
    """upstream.py on [::1]:port (the conftest one listens on 127.0.0.1)."""

    def __init__(self, port, name):
        self.proc = subprocess.Popen([sys.executable, os.path.join(HERE, "upstream.py"), "--port",
                                      str(port), "--host", "::1", "--name", name],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

        def up():
            try:
                socket.create_connection(("::1", port), 0.2).close()
                return True
            except OSError:
                return False
        wait_until(up, what=f"upstream {name} on [::1]:{port}")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(5)


@pytest.mark.skipif(not v6_available(), reason="no IPv6 loopback here")
def test_mesh_ip_preference_applies_where_the_node_sets_none(knot, remora):
    """Name both.ns.local has A 127.0.0.1 and AAAA ::1, with a real upstream on each address
    (same port). The mesh says IPv6_ONLY: node cart-v1 (no preference of its own) is reached
    over ::1 only; node cart-v2 says IPv4_ONLY, which wins for it."""
    port = free_port()
    v4 = subprocess.Popen([sys.executable, os.path.join(HERE, "upstream.py"), "--port", str(port),
                           "--name", "v4"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    v6 = None
    try:
        wait_until(lambda: port_open(port), what="upstream v4")
        v6 = Upstream6(port, "v6")
        k = knot(["both 1 A 127.0.0.1", "both 1 AAAA ::1"])
        cfg = shop(port)
        cfg["mesh"]["spec"] = {"serviceDiscovery": {"ipPreference": "IPv6_ONLY"}}
        cfg["virtualNodes"][1]["spec"]["serviceDiscovery"] = {"dns": {"hostname": "both.ns.local"}}
        cfg["virtualNodes"].append({"virtualNodeName": "cart-v2", "spec": {
            "listeners": [{"portMapping": {"port": port, "protocol": "http"}}],
            "serviceDiscovery": {"dns": {"hostname": "both.ns.local", "ipPreference": "IPv4_ONLY"}}}})
        cfg["virtualNodes"][0]["spec"]["backends"].append(
            {"virtualService": {"virtualServiceName": "v2.shop.local"}})
        cfg["virtualServices"].append({"virtualServiceName": "v2.shop.local", "spec": {
            "provider": {"virtualNode": {"virtualNodeName": "cart-v2"}}}})
        cfg["proxy"]["dns"] = {"servers": [k.server]}
        r = remora(cfg)
        _, clusters = r.admin("/clusters")
        v1 = f"cds_egress_shop_cart-v1_http_{port}"
        v2 = f"cds_egress_shop_cart-v2_http_{port}"
        lines = clusters.splitlines()
        assert any(line.startswith(f"{v1}::[::1]:{port}::") for line in lines), clusters
        assert not any(line.startswith(f"{v1}::127.0.0.1:{port}::") for line in lines), clusters
        assert any(line.startswith(f"{v2}::127.0.0.1:{port}::") for line in lines), clusters
        assert not any(line.startswith(f"{v2}::[::1]:{port}::") for line in lines), clusters
        for _ in range(4):
            assert json.loads(get(r.egress, "/echo").body)["server"] == "v6"
            assert json.loads(get(r.egress, "/echo", host="v2.shop.local").body)["server"] == "v4"
    finally:
        v4.terminate()
        v4.wait(5)
        if v6:
            v6.stop()


# ---- D: HTTP/2 and gRPC served where the node meets them ----

def grpc_mesh():
    """web calls cart.shop.local (http); the mesh also holds a gRPC service, pay.shop.local
    (router pay on a grpc listener, a grpcRoute to node pay on a grpc listener), which web does
    not call and node shipper does."""
    cfg = shop(8080)
    cfg["virtualNodes"] += [
        {"virtualNodeName": "pay", "spec": {
            "listeners": [{"portMapping": {"port": 50051, "protocol": "grpc"}}],
            "serviceDiscovery": {"dns": {"hostname": "pay.local"}}}},
        {"virtualNodeName": "shipper", "spec": {
            "listeners": [{"portMapping": {"port": 8080, "protocol": "http"}}],
            "backends": [{"virtualService": {"virtualServiceName": "pay.shop.local"}}]}},
        {"virtualNodeName": "h2", "spec": {
            "listeners": [{"portMapping": {"port": 8443, "protocol": "http2"}}]}}]
    cfg["virtualServices"].append({"virtualServiceName": "pay.shop.local", "spec": {
        "provider": {"virtualRouter": {"virtualRouterName": "pay"}}}})
    cfg["virtualRouters"].append({"virtualRouterName": "pay", "spec": {
        "listeners": [{"portMapping": {"port": 50051, "protocol": "grpc"}}]}})
    cfg["routes"].append({"virtualRouterName": "pay", "routeName": "charge", "spec": {
        "grpcRoute": {"match": {"serviceName": "pay.Payments", "methodName": "Charge"},
                      "action": {"weightedTargets": [{"virtualNode": "pay", "weight": 1}]},
                      "retryPolicy": {"maxRetries": 2, "perRetryTimeout": {"unit": "ms", "value": 500},
                                      "grpcRetryEvents": ["unavailable"]}}}})
    return cfg


def test_http2_and_grpc_are_accepted_where_reached(tmp_path):
    """Every node of a mesh with gRPC and HTTP/2 checks: the caller of the gRPC service (its
    router's grpc listener and grpcRoute), the nodes serving gRPC and HTTP/2 themselves, and a
    node that reaches none of it, with no note about unreached ones."""
    path = tmp_path / "mesh.json"
    path.write_text(json.dumps(grpc_mesh()))
    for node, listener in (("web", "http:1"), ("shipper", "http:8080"), ("h2", "http2:8443"),
                           ("pay", "grpc:50051")):
        out = check(path, node)
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"listener {listener} -> local app" in out.stdout, out.stdout
        assert "not supported yet" not in out.stdout + out.stderr
        assert "note:" not in out.stdout, out.stdout
    out = check(path, "shipper")
    assert "backend pay.shop.local -> virtual router pay" in out.stdout, out.stdout
    assert "route charge:" in out.stdout, out.stdout


def test_a_sidecar_starts_on_them(tmp_path):
    """shipper's sidecar starts with the gRPC route in its table and listens (sending gRPC
    through it is the HTTP/2 upstream client's: tests/integration/test_grpc.py)."""
    path = tmp_path / "mesh.json"
    path.write_text(json.dumps(grpc_mesh()))
    ingress, egress, admin = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APPMESH_", "REMORA_"))}
    proc = subprocess.Popen([REMORA, "--config", str(path), "--node", "shipper", "--ingress-port",
                             str(ingress), "--egress-port", str(egress), "--admin",
                             f"127.0.0.1:{admin}", "--workers", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        wait_until(lambda: proc.poll() is not None or port_open(egress), what="egress listening")
        assert proc.poll() is None, proc.stdout.read()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "not supported yet" not in out, out


# ---- E: a whole fleet's mesh in one document ----

def test_a_10000_route_mesh_loads_and_routes_for_the_caller(upstream, remora):
    """200 nodes, 200 routers of 50 routes and the caller with 50 backends (App Mesh's quotas):
    the sidecar keeps what the caller reaches, and routes it as the full document says. Node
    svcI listens on ports[I % 4], one upstream per port, so an answer names the node's group."""
    ups = [upstream(f"group{g}") for g in range(4)]
    ports = tuple(u.port for u in ups)
    doc = bigmesh.mesh(nodes=200, routers=200, routes=50, backends=50, ports=ports)
    assert len(doc["routes"]) == 10000
    r = remora(doc)

    def answer(i, path, headers=()):
        resp = get(r.egress, path, host=f"svc{i}.big.local", headers=headers)
        return json.loads(resp.body)["server"] if resp.status == 200 else resp.status

    # Route K of router I matches /pK/ and sends its first request to svcI (the 90 of 90/10).
    for i, k in ((0, 0), (7, 3), (23, 11), (49, 48)):
        assert answer(i, f"/p{k}/x") == f"group{i % 4}", (i, k)
        assert r.stats()[f"remora.route.svc{i}-router.r{k}.svc{i}.picks"] == 1
    # Route 4 needs its header; without it the request falls to the catch-all (route 49).
    assert answer(5, "/p4/x", [("x-canary", "true")]) == "group1"
    assert r.stats()["remora.route.svc5-router.r4.svc5.picks"] == 1
    answer(5, "/p4/x")
    assert r.stats()["remora.route.svc5-router.r49.svc5.picks"] == 1
    # The canary: ten requests on one route, exactly one to svc(I+1).
    seen = [answer(12, "/p2/") for _ in range(10)]
    assert seen.count("group1") == 1 and seen.count("group0") == 9, seen
    # A service the caller does not call is no backend (DROP_ALL: 404).
    assert answer(150, "/p0/") == 404
    # Only what the caller reaches was built: 51 target nodes' clusters, plus its ingress.
    _, clusters = r.admin("/clusters")
    names = {line.split("::")[0] for line in clusters.splitlines() if "::" in line}
    egress = {n for n in names if n.startswith("cds_egress_big_")}
    assert len(egress) == 51, sorted(egress)
    assert "cds_egress_big_svc51_http_%d" % ports[51 % 4] not in egress
    # The config in force is the document cut to those resources, itself a valid document.
    _, dump = r.admin("/config_dump")
    cfg = json.loads(dump)["config"]
    assert len(cfg["routes"]) == 2500 and len(cfg["virtualRouters"]) == 50
    assert len(cfg["virtualNodes"]) == 52
    caller = [n for n in cfg["virtualNodes"] if n["virtualNodeName"] == "caller"][0]
    assert len(caller["spec"]["backends"]) == 50
    assert cfg["routes"][:50] == doc["routes"][:50]
    # Reloads of the whole document (on the main thread; workers keep serving) fail nothing.
    ok0 = r.stats()["remora.config.reload_ok"]
    statuses = []
    for n in range(3):
        r.proc.send_signal(signal.SIGHUP)
        for i in range(10):
            statuses.append(get(r.egress, f"/p{i}/", host=f"svc{i + n}.big.local").status)
    wait_until(lambda: r.stats()["remora.config.reload_ok"] == ok0 + 3, what="three reloads")
    assert statuses == [200] * 30
