"""TCP listeners and tcpRoutes through the real binary, on loopback: ingress relays bytes to the
app port (server-first greetings, half-close both ways, idle timeout, connectionPool.tcp
maxConnections), and egress TCP routes reached by CONNECT (explicit proxy clients) with an
exact weighted split per connection and connect-error retry across Cloud Map endpoints (Knot).
CONNECT under ALLOW_ALL goes to host:port itself; under DROP_ALL it is refused. The same paths
reached by iptables REDIRECT are proven in test_interception.py, inside network namespaces."""
import socket
import threading
import time

import pytest

from conftest import free_port, wait_until


class TcpServer:
    """A TCP server on 127.0.0.1: greets with `name`, then echoes; after the client half-closes
    it sends "bye" and half-closes too. Counts connections."""

    def __init__(self, name):
        self.name = name.encode()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stopped:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        try:
            c.sendall(b"hello from " + self.name + b"\n")
            while data := c.recv(65536):
                c.sendall(data)
            c.sendall(b"bye\n")
            c.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            c.close()

    def stop(self):
        self.stopped = True
        self.sock.close()


@pytest.fixture
def tcp_server():
    started = []

    def start(name):
        s = TcpServer(name)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


def recv_line(s, timeout=5):
    s.settimeout(timeout)
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(1)
        if not chunk:
            break
        buf += chunk
    return buf


def recv_all(s, timeout=5):
    s.settimeout(timeout)
    buf = b""
    while chunk := s.recv(65536):
        buf += chunk
    return buf


def tcp_node(name, port, discovery=None, timeout=None, pool=None):
    listener = {"portMapping": {"port": port, "protocol": "tcp"}}
    if timeout:
        listener["timeout"] = {"tcp": {"idle": timeout}}
    if pool:
        listener["connectionPool"] = {"tcp": {"maxConnections": pool}}
    return {"virtualNodeName": name, "spec": {
        "listeners": [listener],
        "serviceDiscovery": discovery or {"dns": {"hostname": "127.0.0.1"}}}}


def mesh(nodes, node, egress="DROP_ALL", routers=(), routes=(), services=(), backends=(),
         proxy=None):
    nodes = list(nodes)
    for n in nodes:
        if n["virtualNodeName"] == node and backends:
            n["spec"]["backends"] = [{"virtualService": {"virtualServiceName": b}} for b in backends]
    return {
        "mesh": {"meshName": "shop", "spec": {"egressFilter": {"type": egress}}},
        "virtualNodes": nodes, "virtualServices": list(services),
        "virtualRouters": list(routers), "routes": list(routes),
        "proxy": dict({"node": node}, **(proxy or {})),
    }


def stats(r, prefix):
    return {k[len(prefix):]: v for k, v in r.stats().items() if k.startswith(prefix)}


# ---- ingress: a tcp listener ----

def test_ingress_tcp_listener_relays_bytes_server_first_and_half_closed(remora, tcp_server):
    app = tcp_server("app")
    r = remora(mesh([tcp_node("db", app.port)], "db"))
    s = socket.create_connection(("127.0.0.1", r.ingress))
    try:
        assert recv_line(s) == b"hello from app\n", "the app speaks first: nothing waits for us"
        s.sendall(b"PING\r\n")
        assert recv_line(s) == b"PING\r\n"
        s.shutdown(socket.SHUT_WR)  # our half-close reaches the app, its answer still comes
        assert recv_all(s) == b"bye\n"
    finally:
        s.close()
    cluster = f"cluster.cds_ingress_shop_db_tcp_{app.port}."
    wait_until(lambda: stats(r, cluster)["upstream_cx_active"] == 0, what="the relay's end")
    st = stats(r, cluster)
    assert (st["upstream_cx_total"], st["upstream_cx_connect_fail"]) == (1, 0)
    assert app.connections == 1


def test_ingress_tcp_idle_timeout_closes_both_sides(remora, tcp_server):
    app = tcp_server("app")
    r = remora(mesh([tcp_node("db", app.port, timeout={"unit": "ms", "value": 600})], "db"))
    s = socket.create_connection(("127.0.0.1", r.ingress))
    try:
        assert recv_line(s) == b"hello from app\n"
        started = time.monotonic()
        s.settimeout(5)
        assert s.recv(100) == b"", "closed by the idle timeout"
        idle = time.monotonic() - started
        assert 0.5 <= idle < 3.0, idle
    finally:
        s.close()


def test_ingress_tcp_max_connections_refuses_the_one_over(remora, tcp_server):
    app = tcp_server("app")
    r = remora(mesh([tcp_node("db", app.port, pool=2)], "db"))
    held = [socket.create_connection(("127.0.0.1", r.ingress)) for _ in range(2)]
    try:
        for s in held:
            assert recv_line(s) == b"hello from app\n"
        extra = socket.create_connection(("127.0.0.1", r.ingress))
        assert recv_all(extra) == b"", "the third connection is closed unanswered"
        extra.close()
        cluster = f"cluster.cds_ingress_shop_db_tcp_{app.port}."
        assert stats(r, cluster)["upstream_cx_overflow"] == 1
        assert app.connections == 2
    finally:
        for s in held:
            s.close()
    wait_until(lambda: stats(r, f"cluster.cds_ingress_shop_db_tcp_{app.port}.")[
        "upstream_cx_active"] == 0, what="slots given back")
    again = socket.create_connection(("127.0.0.1", r.ingress))
    assert recv_line(again) == b"hello from app\n", "a slot freed is used again"
    again.close()


def test_ingress_tcp_to_a_dead_app_closes_the_client(remora):
    dead = free_port()
    r = remora(mesh([tcp_node("db", dead)], "db"))
    s = socket.create_connection(("127.0.0.1", r.ingress))
    assert recv_all(s) == b""
    s.close()
    assert stats(r, f"cluster.cds_ingress_shop_db_tcp_{dead}.")["upstream_cx_connect_fail"] == 1


# ---- egress: tcpRoutes, reached by CONNECT ----

def connect_via(r, target):
    """A CONNECT tunnel through remora's egress; returns (status line, socket)."""
    s = socket.create_connection(("127.0.0.1", r.egress))
    s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    s.settimeout(5)
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)
        if not chunk:
            break
        head += chunk
    return head.split(b"\r\n")[0].decode(), s


def db_mesh(v1, v2, w1=50, w2=50, egress="DROP_ALL"):
    router = {"virtualRouterName": "db", "spec": {
        "listeners": [{"portMapping": {"port": 6379, "protocol": "tcp"}}]}}
    route = {"virtualRouterName": "db", "routeName": "split", "spec": {"tcpRoute": {
        "action": {"weightedTargets": [{"virtualNode": "db-v1", "weight": w1},
                                       {"virtualNode": "db-v2", "weight": w2}]}}}}
    service = {"virtualServiceName": "db.shop.local", "spec": {
        "provider": {"virtualRouter": {"virtualRouterName": "db"}}}}
    web = {"virtualNodeName": "web", "spec": {
        "listeners": [{"portMapping": {"port": 1, "protocol": "http"}}]}}
    return mesh([web, tcp_node("db-v1", v1), tcp_node("db-v2", v2)], "web", egress=egress,
                routers=[router], routes=[route], services=[service], backends=["db.shop.local"])


def test_tcp_route_splits_connections_exactly_by_weight(remora, tcp_server):
    v1, v2 = tcp_server("v1"), tcp_server("v2")
    r = remora(db_mesh(v1.port, v2.port, 50, 50))
    seen = []
    for _ in range(10):
        status, s = connect_via(r, "db.shop.local:6379")
        assert status == "HTTP/1.1 200 OK", status
        seen.append(recv_line(s).decode().strip())
        s.sendall(b"x\n")
        assert recv_line(s) == b"x\n"
        s.close()
    assert seen == ["hello from v1", "hello from v2"] * 5  # the smooth weighted schedule
    assert (v1.connections, v2.connections) == (5, 5)
    picks = {k: v for k, v in r.stats().items() if k.startswith("remora.route.db.split.")
             and k.endswith(".picks")}
    assert picks == {"remora.route.db.split.db-v1.picks": 5, "remora.route.db.split.db-v2.picks": 5}


def test_tcp_route_retries_a_refused_connect_on_another_endpoint(remora, tcp_server, knot):
    live = tcp_server("live")
    dead = free_port()
    k = knot([f"db 1 SRV 1 1 {dead} i-dead.db.ns.local.", f"db 1 SRV 1 1 {live.port} i-live.db.ns.local.",
              "i-dead.db 1 A 127.0.0.1", "i-live.db 1 A 127.0.0.1"])
    cm = {"awsCloudMap": {"namespaceName": "ns.local", "serviceName": "db"}}
    web = {"virtualNodeName": "web", "spec": {
        "listeners": [{"portMapping": {"port": 1, "protocol": "http"}}]}}
    service = {"virtualServiceName": "db.shop.local", "spec": {
        "provider": {"virtualNode": {"virtualNodeName": "db-v1"}}}}
    r = remora(mesh([web, tcp_node("db-v1", 6379, discovery=cm)], "web", services=[service],
                    backends=["db.shop.local"], proxy={"dns": {"servers": [k.server]}}))
    cluster = "cluster.cds_egress_shop_db-v1_tcp_6379."
    wait_until(lambda: r.stats().get(cluster + "membership_total") == 2, what="two endpoints")
    for _ in range(6):
        status, s = connect_via(r, "db.shop.local:6379")
        assert status == "HTTP/1.1 200 OK", status
        assert recv_line(s) == b"hello from live\n"
        s.close()
    st = stats(r, cluster)
    assert live.connections == 6
    assert st["upstream_cx_connect_fail"] >= 1 and st["upstream_cx_connect_fail"] == st[
        "upstream_rq_retry"], st


def test_connect_under_allow_all_goes_to_host_port(remora, tcp_server):
    other = tcp_server("outside")
    web = {"virtualNodeName": "web", "spec": {
        "listeners": [{"portMapping": {"port": 1, "protocol": "http"}}]}}
    r = remora(mesh([web], "web", egress="ALLOW_ALL"))
    for host in ("127.0.0.1", "localhost"):  # an address, and a name looked up
        status, s = connect_via(r, f"{host}:{other.port}")
        assert status == "HTTP/1.1 200 OK", status
        assert recv_line(s) == b"hello from outside\n"
        s.sendall(b"abc\n")
        assert recv_line(s) == b"abc\n"
        s.close()
    # remora itself, however its address is written: an IPv4-mapped or -compatible IPv6 form
    # reaches the 0.0.0.0 listener too (each hop would carry the next CONNECT on: a loop that
    # took every descriptor)
    for me in ("127.0.0.1", "127.0.0.2", "[::1]", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]",
               "[::127.0.0.1]", "[::ffff:0.0.0.0]", "0.0.0.0"):
        status, s = connect_via(r, f"{me}:{r.egress}")
        assert status == "HTTP/1.1 508 Loop Detected", (me, status)
        s.close()
    status, s = connect_via(r, f"127.0.0.1:{free_port()}")
    assert status == "HTTP/1.1 503 Service Unavailable", status
    s.close()


def test_connect_carries_bytes_sent_with_the_request(remora, tcp_server):
    """What a client sends right after CONNECT (a TLS ClientHello, often) is not lost."""
    v1, v2 = tcp_server("v1"), tcp_server("v2")
    r = remora(db_mesh(v1.port, v2.port, 100, 0))
    s = socket.create_connection(("127.0.0.1", r.egress))
    s.sendall(b"CONNECT db.shop.local:6379 HTTP/1.1\r\nHost: db.shop.local:6379\r\n\r\nearly\n")
    got = b""
    s.settimeout(5)
    while got.count(b"\n") < 4:
        chunk = s.recv(1024)
        if not chunk:
            break
        got += chunk
    s.close()
    assert got == b"HTTP/1.1 200 OK\r\n\r\nhello from v1\nearly\n", got


def test_connect_under_drop_all_to_no_tcp_backend_is_403(remora, tcp_server):
    v1, v2 = tcp_server("v1"), tcp_server("v2")
    r = remora(db_mesh(v1.port, v2.port))
    status, s = connect_via(r, f"127.0.0.1:{v1.port}")
    assert status == "HTTP/1.1 403 Forbidden", status
    s.close()
    assert v1.connections == 0


def test_check_summarises_tcp_routes_and_refuses_a_shared_tcp_port(remora, tmp_path):
    import json
    import subprocess
    from conftest import REMORA
    cfg = db_mesh(1001, 1002)
    path = tmp_path / "m.json"
    path.write_text(json.dumps(cfg))
    out = subprocess.run([REMORA, "check", "--config", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    # A second TCP backend on the same port: TCP is routed by port alone.
    cfg["virtualServices"].append({"virtualServiceName": "db2.shop.local", "spec": {
        "provider": {"virtualNode": {"virtualNodeName": "db-v1"}}}})
    cfg["virtualNodes"][1]["spec"]["listeners"][0]["portMapping"]["port"] = 6379
    cfg["virtualNodes"][0]["spec"]["backends"].append(
        {"virtualService": {"virtualServiceName": "db2.shop.local"}})
    path.write_text(json.dumps(cfg))
    out = subprocess.run([REMORA, "check", "--config", str(path)], capture_output=True, text=True)
    assert out.returncode == 1
    assert "two backends cannot share a TCP port" in out.stdout, out.stdout


def test_listeners_take_ipv6_too(remora, tcp_server):
    """ip6tables REDIRECT sends IPv6 connections to [::]:15000/15001: remora listens there too."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this host")
    app = tcp_server("app")
    r = remora(mesh([tcp_node("db", app.port)], "db"))
    try:
        s = socket.create_connection(("::1", r.ingress), timeout=5)
    except OSError as e:
        pytest.skip(f"no IPv6 loopback here: {e}")
    assert recv_line(s) == b"hello from app\n"
    s.close()
