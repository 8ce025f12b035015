"""Transparent interception as in an ECS task with App Mesh: the real binary in a network
namespace of its own behind the aws-appmesh CNI plugin's exact nat rules, an unmodified app
(curl, Python's http.client, redis-cli) running as another uid beside it, and backends in
other namespaces found through Cloud Map SRV records served by Knot (netns.py draws the map).

  egress   the app connects to any non-local address; OUTPUT REDIRECT sends it to remora's
           15001, which routes by Host (HTTP) or by original destination port (TCP routes:
           redis, a server-first protocol, half-close, idle timeout, weighted splits, connect
           retries), or passes it through (ALLOW_ALL); CONNECT through 15001 is routed the same
  ingress  a peer connects to the task's app port; PREROUTING REDIRECT sends it to 15000, which
           picks the node's listener by original destination port and forwards to 127.0.0.1
  bypass   EgressIgnoredPorts / EgressIgnoredIPs and remora's own uid are never redirected

Everything a test asserts is what the app or the peer sees, plus remora's /stats counting
every connection (proof that nothing went around it). One topology serves the module; each
test starts its own remora, so counters start at zero.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings

import pytest

from conftest import REMORA, Knot, wait_until
from netns import (ADDR, B1_IGNORED, CLEAN_ENV, VIRTUAL_IP, Topology, can_connect, cni_rules,
                   connect_in, in_ns, sh, unsupported)

REASON = unsupported()
if REASON:
    # One line in the run's summary saying why (skips alone print no reason under -q).
    warnings.warn(f"test_interception.py: every test skipped: {REASON}")
    pytestmark = pytest.mark.skip(reason=f"network namespaces unavailable: {REASON}")

PROXY_UID, APP_UID = 1337, 1000
INGRESS, EGRESS, ADMIN = 15000, 15001, 9901
APP_HTTP, APP_TCP = 8080, 7000
TASK4 = ADDR["task"][0]
B1, B1_6 = ADDR["b1"]
B2 = ADDR["b2"][0]
KNOT_IP = ADDR["net"][0]
# The task definition's proxyConfiguration (reference/appmesh.md §2.4) for this task.
PROXY_CONFIGURATION = dict(ignored_uid=PROXY_UID, ingress_port=INGRESS, egress_port=EGRESS,
                           app_ports=(APP_HTTP, APP_TCP), ignored_ports=(22, 2222))
IGNORED_IPS = ("169.254.170.2", "169.254.169.254", B1_IGNORED, "fd00:200::21")


def split_ips(ips):
    """EgressIgnoredIPs split by family, as the plugin's separateIPs does."""
    return [ip for ip in ips if ":" not in ip], [ip for ip in ips if ":" in ip]


# ---- the world: namespaces, rules, backends, Knot ----

def srv(service, port, ip, instance="i-1"):
    """Cloud Map's records for one instance of service.apps.local at ip:port."""
    return [f"{service} 5 SRV 1 1 {port} {instance}.{service}.apps.local.",
            f"{instance}.{service} 5 A {ip}"]


RECORDS = (srv("cart-v1", 8080, B1) + srv("cart-v2", 8080, B2)
           + srv("redis-v1", 6379, B1) + srv("redis-v2", 6379, B2)
           + srv("greet", 2525, B1) + srv("closer", 2526, B1)
           # two instances, the second refusing (nothing listens on b2:7100)
           + srv("flaky", 7100, B1, "i-1") + srv("flaky", 7100, B2, "i-2"))


class NetnsKnot(Knot):
    """conftest's Knot, run inside the net namespace on the bridge address, port 53."""
    ZONE = "apps.local"

    def __init__(self, workdir, records, topo):
        self.topo = topo
        super().__init__(workdir, records, ttl=5)

    @property
    def server(self):
        return f"{KNOT_IP}:53"

    def start(self):
        with open(self.conf) as f:
            text = re.sub(r"listen: 127\.0\.0\.1@\d+", f"listen: {KNOT_IP}@53", f.read())
        with open(self.conf, "w") as f:
            f.write(text)
        self.proc = self.topo.spawn("net", ["knotd", "-c", self.conf], log="knotd.log")
        wait_until(lambda: self.topo.run("net", ["kdig", f"@{KNOT_IP}", "+short", "+timeout=1",
                                                 "+retry=0", "ns1." + self.ZONE, "A"]
                                          ).stdout.strip() == "127.0.0.1",
                   what="knotd answering on the bridge")


class World:
    def __init__(self, topo, knot, workdir):
        self.topo, self.knot, self.workdir = topo, knot, workdir
        self.serial = 0

    def app(self, argv, timeout=10):
        """The app: argv run in the task as uid 1000."""
        return subprocess.run(in_ns(self.topo.task, argv, APP_UID), capture_output=True,
                              text=True, timeout=timeout, env=CLEAN_ENV)

    def app_python(self, code, timeout=15):
        return self.topo.python("task", code, uid=APP_UID, timeout=timeout)


def install_cni_rules(topo):
    v4, v6 = split_ips(IGNORED_IPS)
    for ips, is_v6 in ((v4, False), (v6, True)):  # the plugin's enableIPv6 variant too
        for rule in cni_rules(ignored_ips=ips, **PROXY_CONFIGURATION):
            topo.iptables("task", *rule, v6=is_v6)


def start_backends(topo, workdir):
    upstream = os.path.join(os.path.dirname(os.path.abspath(__file__)), "upstream.py")
    py = sys.executable
    for role, name in (("b1", "cart-v1"), ("b2", "cart-v2")):
        # host "" : every address of the namespace, IPv4 and IPv6
        topo.spawn(role, [py, upstream, "--port", "8080", "--host", "", "--name", name],
                   log=f"{name}.log")
        wait_until(lambda: can_connect(topo.net, ADDR[role][0], 8080), what=f"{name} up")
    for role in ("b1", "b2"):
        topo.spawn(role, ["redis-server", "--port", "6379", "--bind", "0.0.0.0", "::",
                          "--protected-mode", "no", "--save", "", "--appendonly", "no",
                          "--dir", workdir], log=f"redis-{role}.log")
        wait_until(lambda: topo.run(role, ["redis-cli", "-p", "6379", "PING"]).stdout.strip() == "PONG",
                   what=f"redis on {role}")
        assert topo.run(role, ["redis-cli", "-p", "6379", "SET", "who", role]).stdout.strip() == "OK"
    topo.serve("b1", "echo", 9999, name="echo-b1")   # a non-backend port (ALLOW_ALL, bypass)
    topo.serve("b1", "echo", 2222, name="ssh-ish")   # an EgressIgnoredPort
    topo.serve("b1", "greet", 2525, name="greet-b1")
    topo.serve("b1", "shut", 2526, name="closer-b1", log=os.path.join(workdir, "closer.log"))
    topo.serve("b1", "echo", 7100, name="flaky-b1")
    # The app itself, beside remora in the task, as uid 1000 on loopback only.
    topo.spawn("task", [py, upstream, "--port", str(APP_HTTP), "--host", "127.0.0.1",
                        "--name", "app"], uid=APP_UID, log="app.log")
    wait_until(lambda: can_connect(topo.task, "127.0.0.1", APP_HTTP), what="app up")
    topo.serve("task", "echo", APP_TCP, name="app-tcp", host="127.0.0.1", uid=APP_UID)


@pytest.fixture(scope="module")
def world():
    workdir = tempfile.mkdtemp(prefix="remora-netns-")
    os.chmod(workdir, 0o755)  # remora (uid 1337) reads its config from here
    topo = knot = None
    try:
        topo = Topology(workdir)
        install_cni_rules(topo)
        start_backends(topo, workdir)
        knot = NetnsKnot(workdir, RECORDS, topo)
        yield World(topo, knot, workdir)
    finally:
        if knot:
            knot.stop()
        if topo:
            topo.close()
        shutil.rmtree(workdir, ignore_errors=True)


# ---- remora in the task ----

class TaskRemora:
    """build/remora in the task namespace as uid 1337 on 15000/15001/127.0.0.1:9901."""

    def __init__(self, world, config):
        world.serial += 1
        self.topo = world.topo
        self.config_path = os.path.join(world.workdir, f"mesh-{world.serial}.json")
        with open(self.config_path, "w") as f:
            json.dump(config, f)
        os.chmod(self.config_path, 0o644)
        self.proc = self.topo.spawn(
            "task", [REMORA, "--config", self.config_path, "--ingress-port", str(INGRESS),
                     "--egress-port", str(EGRESS), "--admin", f"127.0.0.1:{ADMIN}",
                     "--workers", "1", "--log-level", "debug"],
            uid=PROXY_UID, log=f"remora-{world.serial}.log")
        wait_until(self.ready, what="remora /ready in the task")

    def ready(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"remora exited with {self.proc.returncode}:\n{self.read_log()}")
        return self.admin("/ready")[0] == 200

    def admin(self, path):
        """GET path on the admin port, from inside the task (loopback: never redirected)."""
        s = connect_in(self.topo.task, "127.0.0.1", ADMIN)
        try:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        finally:
            s.close()
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1]), body.decode()

    def stats(self):
        out = {}
        for line in self.admin("/stats")[1].splitlines():
            name, _, value = line.rpartition(": ")
            if name and value.isdigit():  # histograms print quantiles
                out[name] = int(value)
        return out

    def read_log(self):
        with open(self.proc.log_path) as f:
            return f.read()

    def stop(self):
        return self.topo.stop(self.proc, timeout=25)


@pytest.fixture
def task_remora(world):
    started = []

    def start(config):
        r = TaskRemora(world, config)
        started.append(r)
        return r

    yield start
    failures = []
    for r in started:
        code = r.stop()
        log = r.read_log()
        if code != 0 or "Sanitizer" in log or "runtime error:" in log:
            failures.append(f"remora exit {code}; log tail:\n{log[-3000:]}")
    assert not failures, "\n".join(failures)


def cluster(stats, node, proto, port, stat, direction="egress"):
    """cds_egress_shop_NODE_PROTO_PORT's stat (no proto/port: cds_egress_shop_NODE)."""
    name = "_".join(str(p) for p in (f"cds_{direction}_shop_{node}", proto, port) if p != "")
    return stats[f"cluster.{name}.{stat}"]


def egress_connections(stats):
    """Connections accepted on the egress listener: Envoy's listener counter when remora has
    it, else the egress connection managers' (http, and tcp if it names one)."""
    for name, value in stats.items():
        if re.fullmatch(r"listener\.[^ ]*_15001\.downstream_cx_total", name):
            return value
    return sum(v for k, v in stats.items()
               if re.fullmatch(r"(http|tcp)\.egress[^ ]*\.downstream_cx_total", k))


def egress_traffic(stats):
    """Everything remora's egress side counted: connections accepted plus connections made
    to egress clusters (TCP routes and pass-through count only the latter today)."""
    return egress_connections(stats) + sum(
        v for k, v in stats.items()
        if re.fullmatch(r"cluster\.cds_egress_[^ ]*\.upstream_cx_total", k))


# ---- the mesh ----

def tcp_node(name, port):
    return {"virtualNodeName": name, "spec": {
        "listeners": [{"portMapping": {"port": port, "protocol": "tcp"}}],
        "serviceDiscovery": {"awsCloudMap": {"namespaceName": "apps.local", "serviceName": name}}}}


def tcp_route(router, targets, idle_s=None):
    spec = {"action": {"weightedTargets": [{"virtualNode": n, "weight": w} for n, w in targets]}}
    if idle_s:
        spec["timeout"] = {"idle": {"unit": "s", "value": idle_s}}
    return {"virtualRouterName": router, "routeName": "all", "spec": {"tcpRoute": spec}}


def mesh(egress_filter="DROP_ALL", tcp=True):
    """Node web (this task): http 8080 (+ tcp 7000), backends cart.shop.local (http router on
    80, 90/10 cart-v1/cart-v2) and, with tcp, TCP services on routers of their own ports:
    redis 6379 (redis-v1, idle 2 s), redis-canary 6380 (50/50 redis-v1/redis-v2), greet 2525
    (server-first), closer 2526 (server half-closes), flaky 7100 (one endpoint refuses)."""
    listeners = [{"portMapping": {"port": APP_HTTP, "protocol": "http"}}]
    services = ["cart.shop.local"]
    nodes = [{"virtualNodeName": f"cart-{v}", "spec": {
        "listeners": [{"portMapping": {"port": 8080, "protocol": "http"}}],
        "serviceDiscovery": {"awsCloudMap": {"namespaceName": "apps.local",
                                             "serviceName": f"cart-{v}"}}}} for v in ("v1", "v2")]
    routers = [{"virtualRouterName": "cart", "spec": {
        "listeners": [{"portMapping": {"port": 80, "protocol": "http"}}]}}]
    routes = [{"virtualRouterName": "cart", "routeName": "canary", "spec": {"httpRoute": {
        "match": {"prefix": "/"},
        "action": {"weightedTargets": [{"virtualNode": "cart-v1", "weight": 90},
                                       {"virtualNode": "cart-v2", "weight": 10}]}}}}]
    if tcp:
        listeners.append({"portMapping": {"port": APP_TCP, "protocol": "tcp"}})
        tcp_services = {  # router (= service prefix) -> (port, targets, idle)
            "redis": (6379, [("redis-v1", 100)], 2),
            "redis-canary": (6380, [("redis-v1", 50), ("redis-v2", 50)], None),
            "greet": (2525, [("greet", 100)], None),
            "closer": (2526, [("closer", 100)], None),
            "flaky": (7100, [("flaky", 100)], None),
        }
        nodes += [tcp_node("redis-v1", 6379), tcp_node("redis-v2", 6379), tcp_node("greet", 2525),
                  tcp_node("closer", 2526), tcp_node("flaky", 7100)]
        for router, (port, targets, idle) in tcp_services.items():
            services.append(f"{router}.shop.local")
            routers.append({"virtualRouterName": router, "spec": {
                "listeners": [{"portMapping": {"port": port, "protocol": "tcp"}}]}})
            routes.append(tcp_route(router, targets, idle))
    web = {"virtualNodeName": "web", "spec": {
        "listeners": listeners,
        "backends": [{"virtualService": {"virtualServiceName": s}} for s in services]}}
    return {
        "mesh": {"meshName": "shop", "spec": {"egressFilter": {"type": egress_filter}}},
        "virtualNodes": [web] + nodes,
        "virtualServices": [{"virtualServiceName": s, "spec": {"provider": {"virtualRouter": {
            "virtualRouterName": s.split(".")[0]}}}} for s in services],
        "virtualRouters": routers,
        "routes": routes,
        "proxy": {"node": "web", "dns": {"servers": [f"{KNOT_IP}:53"]}},
    }


# ---- helpers for the app's side ----

def curl_json(world, url, *extra):
    """The app runs curl; returns (status, parsed JSON body or the raw text)."""
    out = world.app(["curl", "-sS", "--max-time", "5", "-o", "-", "-w", "\n%{http_code}", *extra, url])
    assert out.returncode == 0, out.stderr
    body, _, status = out.stdout.rpartition("\n")
    try:
        return int(status), json.loads(body)
    except ValueError:
        return int(status), body


def served_by(world, n, url, *extra):
    """Which upstream answered each of n requests, one curl (one connection) each."""
    names = []
    for _ in range(n):
        status, body = curl_json(world, url, *extra)
        names.append(body["server"] if status == 200 else status)
    return names


TCP_EXCHANGE = """
s = socket.create_connection(({host!r}, {port}), timeout=5)
s.sendall({payload!r})
s.shutdown(socket.SHUT_WR)
try:
    got = read_until_close(s)
    print(json.dumps({{"got": got.decode("latin-1")}}))
except OSError as e:
    print(json.dumps({{"error": str(e)}}))
"""


def tcp_exchange(world, host, port, payload=b"hello over raw tcp\n"):
    """The app sends payload over a fresh connection, half-closes, reads to the end."""
    return world.app_python(TCP_EXCHANGE.format(host=host, port=port, payload=payload))


# ---- 1. egress HTTP, intercepted ----

def test_curl_to_a_service_name_is_intercepted_and_split_exactly(world, task_remora):
    r = task_remora(mesh(tcp=False))
    names = served_by(world, 20, "http://cart.shop.local/echo",
                      "--resolve", f"cart.shop.local:80:{B1}")
    assert names.count("cart-v1") == 18 and names.count("cart-v2") == 2, names
    # smooth weighted round-robin: v2 exactly once in every 10 picks
    assert names[:10].count("cart-v2") == 1 and names[10:].count("cart-v2") == 1, names
    st = r.stats()
    assert cluster(st, "cart-v1", "http", 8080, "upstream_rq_total") == 18
    assert cluster(st, "cart-v2", "http", 8080, "upstream_rq_total") == 2
    assert st["remora.route.cart.canary.cart-v1.picks"] == 18
    assert st["remora.route.cart.canary.cart-v2.picks"] == 2
    assert st["http.egress.downstream_rq_total"] == 20
    # Twenty curls, twenty connections: remora's own 20 upstream connections (uid 1337)
    # were not redirected back into it.
    assert egress_connections(st) == 20


HTTP_CLIENT = """
import http.client
names = []
for i in range(10):  # ten connections to an address nobody has
    c = http.client.HTTPConnection({vip!r}, 80, timeout=5)
    c.request("GET", "/echo", headers={{"Host": "cart.shop.local"}})
    r = c.getresponse()
    names.append(json.loads(r.read())["server"] if r.status == 200 else r.status)
    c.close()
c = http.client.HTTPConnection({b1!r}, 80, timeout=5)  # ten requests on one keep-alive connection
for i in range(10):
    c.request("GET", "/echo?i=%d" % i, headers={{"Host": "cart.shop.local:80"}})
    r = c.getresponse()
    names.append(json.loads(r.read())["server"] if r.status == 200 else r.status)
c.close()
print(json.dumps(names))
"""


def test_python_http_client_is_intercepted_on_any_address(world, task_remora):
    r = task_remora(mesh(tcp=False))
    names = world.app_python(HTTP_CLIENT.format(vip=VIRTUAL_IP, b1=B1))
    assert names.count("cart-v1") == 18 and names.count("cart-v2") == 2, names
    st = r.stats()
    assert st["http.egress.downstream_rq_total"] == 20
    assert egress_connections(st) == 11
    assert (cluster(st, "cart-v1", "http", 8080, "upstream_rq_total")
            + cluster(st, "cart-v2", "http", 8080, "upstream_rq_total")) == 20


# ---- 2. egress TCP routes ----

def test_redis_ping_through_the_tcp_route(world, task_remora):
    r = task_remora(mesh())
    out = world.app(["redis-cli", "-h", B1, "-p", "6379", "PING"])
    assert out.stdout.strip() == "PONG", out.stdout + out.stderr
    # Any address on the route's port reaches the route's target (redis-v1 = b1).
    out = world.app(["redis-cli", "-h", VIRTUAL_IP, "-p", "6379", "GET", "who"])
    assert out.stdout.strip() == "b1", out.stdout + out.stderr
    st = r.stats()
    assert cluster(st, "redis-v1", "tcp", 6379, "upstream_cx_total") == 2
    assert cluster(st, "redis-v2", "tcp", 6379, "upstream_cx_total") == 0


SERVER_FIRST = """
s = socket.create_connection(({b1!r}, 2525), timeout=5)
greeting = read_line(s)          # nothing sent yet: the server speaks first
payload = bytes(range(256)) * 400
s.sendall(payload)
s.shutdown(socket.SHUT_WR)       # our half closed; the answer must still come
rest = read_until_close(s)
print(json.dumps({{"greeting": greeting.decode(), "rest": rest.decode(), "want": "got %d %s" % (len(payload), digest(payload))}}))
"""


def test_server_first_protocol_and_client_half_close(world, task_remora):
    r = task_remora(mesh())
    out = world.app_python(SERVER_FIRST.format(b1=B1))
    assert out["greeting"] == "220 greet-b1 ready\r\n"
    assert out["rest"] == out["want"] + "\r\n"
    assert cluster(r.stats(), "greet", "tcp", 2525, "upstream_cx_total") == 1


SERVER_HALF_CLOSE = """
s = socket.create_connection(({b1!r}, 2526), timeout=5)
first = read_until_close(s)      # the server's FIN: it has nothing more to say
late = b"written after the server's FIN\\n" * 100
s.sendall(late)                  # but it still reads
s.shutdown(socket.SHUT_WR)
tail = read_until_close(s)
print(json.dumps({{"first": first.decode(), "tail": tail.decode(), "want": "%d %s" % (len(late), digest(late))}}))
"""


def test_server_half_close_keeps_the_client_to_server_direction(world, task_remora):
    r = task_remora(mesh())
    log = os.path.join(world.workdir, "closer.log")
    before = open(log).read() if os.path.exists(log) else ""
    out = world.app_python(SERVER_HALF_CLOSE.format(b1=B1))
    assert out["first"] == "bye from closer-b1\r\n" and out["tail"] == ""
    wait_until(lambda: open(log).read()[len(before):] == out["want"] + "\n", timeout=5,
               what="the server received the bytes sent after its FIN")
    assert cluster(r.stats(), "closer", "tcp", 2526, "upstream_cx_total") == 1


IDLE = """
s = socket.create_connection(({b1!r}, 6379), timeout=10)
for i in range(5):               # busy for ~2.4 s: activity keeps it open past the 2 s idle
    s.sendall(b"PING\\r\\n")
    assert read_line(s) == b"+PONG\\r\\n"
    time.sleep(0.6)              # pacing the activity, not waiting for something
s.sendall(b"PING\\r\\n")
assert read_line(s) == b"+PONG\\r\\n"
t0 = time.monotonic()
try:
    end = s.recv(1)              # now idle: remora closes it (redis never would)
except OSError as e:
    end = str(e).encode()
print(json.dumps({{"idle_closed_after": time.monotonic() - t0, "end": end.decode()}}))
"""


def test_tcp_idle_timeout_closes_an_idle_connection_only(world, task_remora):
    r = task_remora(mesh())
    out = world.app_python(IDLE.format(b1=B1), timeout=20)
    assert out["end"] == "", out
    assert 1.5 <= out["idle_closed_after"] <= 4.0, out
    assert cluster(r.stats(), "redis-v1", "tcp", 6379, "upstream_cx_total") == 1


def test_weighted_tcp_split_per_connection(world, task_remora):
    r = task_remora(mesh())
    who = []
    for _ in range(10):
        out = world.app(["redis-cli", "-h", B2, "-p", "6380", "GET", "who"])
        who.append(out.stdout.strip() or out.stderr.strip())
    assert sorted(set(who)) == ["b1", "b2"] and who.count("b1") == 5, who
    assert all(a != b for a, b in zip(who, who[1:])), f"50/50 alternates exactly: {who}"
    st = r.stats()
    assert cluster(st, "redis-v1", "tcp", 6379, "upstream_cx_total") == 5
    assert cluster(st, "redis-v2", "tcp", 6379, "upstream_cx_total") == 5
    assert st["remora.route.redis-canary.all.redis-v1.picks"] == 5


def test_tcp_connect_failure_is_retried_on_another_endpoint(world, task_remora):
    r = task_remora(mesh())
    wait_until(lambda: cluster(r.stats(), "flaky", "tcp", 7100, "membership_total") == 2,
               timeout=5, what="both flaky endpoints discovered")
    results = [tcp_exchange(world, B1, 7100, f"conn {i}\n".encode()) for i in range(6)]
    assert results == [{"got": f"conn {i}\n"} for i in range(6)]
    st = r.stats()
    assert cluster(st, "flaky", "tcp", 7100, "upstream_cx_connect_fail") >= 1, \
        "the refusing endpoint was tried (and the connection retried on the other)"
    assert cluster(st, "flaky", "tcp", 7100, "upstream_cx_total") >= 6


# ---- 3. ingress ----

def test_ingress_http_reaches_the_app_with_x_forwarded_for(world, task_remora):
    r = task_remora(mesh(tcp=False))
    out = world.topo.run("b1", ["curl", "-sS", "--max-time", "5", f"http://{TASK4}:{APP_HTTP}/echo"])
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    assert seen["server"] == "app"
    headers = {k.lower(): v for k, v in seen["headers"]}
    assert headers["x-forwarded-for"] == B1, headers
    st = r.stats()
    assert st["http.ingress.downstream_rq_total"] == 1
    assert cluster(st, "web", "http", APP_HTTP, "upstream_rq_total", "ingress") == 1
    assert egress_connections(st) == 0


INGRESS_TCP = """
s = socket.create_connection(({task!r}, {port}), timeout=5)
payload = b"raw bytes for the app\\n" * 1000
s.sendall(payload)
s.shutdown(socket.SHUT_WR)
print(json.dumps({{"echoed": read_until_close(s) == payload}}))
"""


def test_ingress_tcp_listener_is_picked_by_original_destination_port(world, task_remora):
    r = task_remora(mesh())
    out = world.topo.python("b1", INGRESS_TCP.format(task=TASK4, port=APP_TCP))
    assert out == {"echoed": True}
    out = world.topo.run("b2", ["curl", "-sS", "--max-time", "5", f"http://{TASK4}:{APP_HTTP}/echo"])
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    assert seen["server"] == "app", "the http listener on 8080 still speaks HTTP"
    st = r.stats()
    assert cluster(st, "web", "tcp", APP_TCP, "upstream_cx_total", "ingress") == 1
    assert cluster(st, "web", "http", APP_HTTP, "upstream_rq_total", "ingress") == 1


# ---- 4. bypass ----

def test_ignored_ports_and_ips_bypass_remora(world, task_remora):
    r = task_remora(mesh())
    before = r.stats()
    assert tcp_exchange(world, B1, 2222) == {"got": "hello over raw tcp\n"}, "EgressIgnoredPorts"
    assert tcp_exchange(world, B1_IGNORED, 9999) == {"got": "hello over raw tcp\n"}, "EgressIgnoredIPs"
    after = r.stats()
    assert egress_traffic(after) == egress_traffic(before) == 0
    # The same echo on b1's own address and a port that is no backend: redirected (DROP_ALL
    # gives it nowhere to go, so the echo does not come back).
    out = tcp_exchange(world, B1, 9999)
    assert out != {"got": "hello over raw tcp\n"}
    assert egress_traffic(r.stats()) >= 1


# ---- 5. egress filter ----

def test_allow_all_passes_raw_tcp_to_the_original_destination(world, task_remora):
    r = task_remora(mesh(egress_filter="ALLOW_ALL"))
    assert tcp_exchange(world, B1, 9999, b"\x00\x01 not http at all\n") == {"got": "\x00\x01 not http at all\n"}
    assert cluster(r.stats(), "passthrough", "", "", "upstream_cx_total") == 1, \
        "intercepted, then passed through"


def test_allow_all_http_with_an_unknown_host_goes_to_the_original_destination(world, task_remora):
    r = task_remora(mesh(egress_filter="ALLOW_ALL", tcp=False))
    status, body = curl_json(world, f"http://{B1}:8080/echo", "-H", "Host: unknown.example")
    assert status == 200 and body["server"] == "cart-v1", body
    assert cluster(r.stats(), "passthrough", "", "", "upstream_cx_total") == 1


def test_drop_all_answers_404_naming_an_unknown_host(world, task_remora):
    r = task_remora(mesh(tcp=False))
    status, body = curl_json(world, f"http://{B1}:80/x", "-H", "Host: unknown.example")
    assert status == 404 and "unknown.example" in body, body
    assert r.stats()["http.egress.downstream_rq_4xx"] == 1


# ---- 6. IPv6 ----

def test_ipv6_egress_through_ip6tables(world, task_remora):
    r = task_remora(mesh(tcp=False))
    names = served_by(world, 10, f"http://[{B1_6}]:80/echo", "-g", "-H", "Host: cart.shop.local")
    assert names.count("cart-v1") == 9 and names.count("cart-v2") == 1, names
    st = r.stats()
    assert st["http.egress.downstream_rq_total"] == 10
    assert egress_connections(st) == 10


# ---- 7. CONNECT ----

CONNECT = """
s = socket.create_connection(("127.0.0.1", {egress}), timeout=5)  # local: not redirected
s.sendall(b"CONNECT redis.shop.local:6379 HTTP/1.1\\r\\nHost: redis.shop.local:6379\\r\\n\\r\\n")
head = b""
while b"\\r\\n\\r\\n" not in head:
    chunk = s.recv(1)
    if not chunk:
        break
    head += chunk
s.sendall(b"*1\\r\\n$4\\r\\nPING\\r\\n")
print(json.dumps({{"head": head.decode("latin-1"), "reply": read_line(s).decode()}}))
"""


def test_connect_tunnels_to_a_tcp_backend_and_refuses_others(world, task_remora):
    r = task_remora(mesh())
    out = world.app_python(CONNECT.format(egress=EGRESS))
    assert out["head"].startswith("HTTP/1.1 200"), out
    assert out["reply"] == "+PONG\r\n", out
    assert cluster(r.stats(), "redis-v1", "tcp", 6379, "upstream_cx_total") == 1
    # curl as an explicit-proxy client, to a host:port that is no backend: 403.
    out = world.app(["curl", "-sS", "--max-time", "5", "-p", "-x", f"http://127.0.0.1:{EGRESS}",
                     "-o", "/dev/null", "-w", "%{http_connect}", "http://unknown.example:9999/"])
    assert out.stdout == "403", out.stdout + out.stderr


def test_the_tasks_own_address_is_remora_itself(world, task_remora):
    """remora listens on 0.0.0.0: the task's own address (not only loopback) on one of its
    ports is remora, so a request or CONNECT there is a loop, refused once (the build before
    this test relayed one such GET into itself 188 times, and a CONNECT without end)."""
    r = task_remora(mesh(egress_filter="ALLOW_ALL", tcp=False))
    out = world.app(["curl", "-sS", "--max-time", "5", "-x", f"http://127.0.0.1:{EGRESS}",
                     "-o", "/dev/null", "-w", "%{http_code}", f"http://{TASK4}:{EGRESS}/x"])
    assert out.stdout == "508", out.stdout + out.stderr
    assert r.stats()["http.egress.downstream_rq_total"] == 1
    out = world.app(["curl", "-sS", "--max-time", "5", "-p", "-x", f"http://127.0.0.1:{EGRESS}",
                     "-o", "/dev/null", "-w", "%{http_connect}", f"http://{TASK4}:{ADMIN}/"])
    assert out.stdout == "508", out.stdout + out.stderr


# ---- the redirect subcommand makes the plugin's rules ----

def redirect_supported():
    try:
        return subprocess.run([REMORA, "redirect", "--help"], capture_output=True,
                              timeout=5).returncode == 0
    except OSError:
        return False


def by_chain(lines):
    """`iptables -S` lines as {chain: [rules in order]}: chain creation order aside, the
    same rules in the same order within each chain."""
    out = {}
    for line in lines:
        words = line.split()
        out.setdefault(words[1], []).append(line)
    return out


def test_redirect_install_matches_the_cni_plugin_rules(world):
    if not redirect_supported():
        pytest.skip("build/remora has no `redirect` subcommand yet")
    ns = f"{world.topo.task}-rd"
    sh("ip", "netns", "add", ns)
    try:
        ips4, ips6 = split_ips(IGNORED_IPS)
        cmd = [REMORA, "redirect", "install", "--ignored-uid", str(PROXY_UID),
               "--proxy-ingress-port", str(INGRESS), "--proxy-egress-port", str(EGRESS),
               "--app-ports", f"{APP_HTTP},{APP_TCP}", "--egress-ignored-ports", "22,2222",
               "--egress-ignored-ips", ",".join(IGNORED_IPS), "--enable-ipv6"]
        out = subprocess.run(in_ns(ns, cmd), capture_output=True, text=True, timeout=15)
        assert out.returncode == 0, out.stderr
        made = {v6: sh(*in_ns(ns, ["ip6tables" if v6 else "iptables", "-t", "nat", "-S"])).stdout
                for v6 in (False, True)}
        out = subprocess.run(in_ns(ns, [REMORA, "redirect", "remove", "--enable-ipv6"]),
                             capture_output=True, text=True, timeout=15)
        assert out.returncode == 0, out.stderr
        for v6 in (False, True):
            left = sh(*in_ns(ns, ["ip6tables" if v6 else "iptables", "-t", "nat", "-S"])).stdout
            assert [l for l in left.splitlines() if not l.startswith("-P ")] == [], left
        for ips, v6 in ((ips4, False), (ips6, True)):
            for rule in cni_rules(ignored_ips=ips, **PROXY_CONFIGURATION):
                sh(*in_ns(ns, ["ip6tables" if v6 else "iptables", *rule]))
            by_hand = sh(*in_ns(ns, ["ip6tables" if v6 else "iptables", "-t", "nat", "-S"])).stdout
            assert by_chain(made[v6].splitlines()) == by_chain(by_hand.splitlines()), \
                f"{'ip6tables' if v6 else 'iptables'}:\nremora:\n{made[v6]}\nplugin:\n{by_hand}"
        # and what the task namespace was given by hand is the same thing
        assert by_chain(world.topo.nat_rules("task")) == by_chain(
            [l for l in made[False].splitlines() if not l.startswith("-P ")])
    finally:
        sh("ip", "netns", "del", ns, check=False)
