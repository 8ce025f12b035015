"""Fixtures that start real processes: the remora binary, upstream servers, and helpers to
talk to them. Every process a test starts is stopped when the test ends."""
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from certs import make_pki

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
REMORA = os.environ.get("REMORA_BIN", os.path.join(ROOT, "build", "remora"))

try:
    import resource

    _soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (_hard, _hard))
except (ImportError, ValueError, OSError):
    pass


def free_ports(n):
    """n distinct free ports (the probe sockets stay bound until all are chosen)."""
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def free_port():
    return free_ports(1)[0]


def wait_until(predicate, timeout=10.0, interval=0.02, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except (OSError, ValueError):
            pass
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class Upstream:
    def __init__(self, name="upstream"):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "upstream.py"), "--port", str(self.port), "--name", name],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        wait_until(lambda: port_open(self.port), what=f"upstream {name} on {self.port}")

    def stats(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/_stats", timeout=5) as r:
            return json.loads(r.read())

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def mesh_config(app_port, backend_port, node="web", extra_proxy=None, listener_timeout=None):
    """A two-node mesh: `web` (this sidecar's node, app on app_port) with one backend
    cart.shop.local served by node cart-v1 on 127.0.0.1:backend_port."""
    listener = {"portMapping": {"port": app_port, "protocol": "http"}}
    if listener_timeout:
        listener["timeout"] = {"http": listener_timeout}
    proxy = {"node": node}
    proxy.update(extra_proxy or {})
    return {
        "mesh": {"meshName": "shop", "spec": {"egressFilter": {"type": "DROP_ALL"}}},
        "virtualNodes": [
            {"virtualNodeName": "web", "spec": {
                "listeners": [listener],
                "serviceDiscovery": {"dns": {"hostname": "127.0.0.1"}},
                "backends": [{"virtualService": {"virtualServiceName": "cart.shop.local"}}]}},
            {"virtualNodeName": "cart-v1", "spec": {
                "listeners": [{"portMapping": {"port": backend_port, "protocol": "http"}}],
                "serviceDiscovery": {"dns": {"hostname": "127.0.0.1"}}}},
        ],
        "virtualServices": [
            {"virtualServiceName": "cart.shop.local",
             "spec": {"provider": {"virtualNode": {"virtualNodeName": "cart-v1"}}}}],
        "proxy": proxy,
    }


class Remora:
    def __init__(self, tmp_path, config, workers=1, env=None, args=()):
        self.ingress, self.egress, self.admin_port = free_ports(3)
        self.config_path = os.path.join(tmp_path, "mesh.json")
        with open(self.config_path, "w") as f:
            json.dump(config, f)
        self.log_path = os.path.join(tmp_path, "remora.log")
        self.log = open(self.log_path, "w")
        full_env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("APPMESH_", "ENVOY_", "REMORA_"))}
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [REMORA, "--config", self.config_path, "--ingress-port", str(self.ingress),
             "--egress-port", str(self.egress), "--admin", f"127.0.0.1:{self.admin_port}",
             "--workers", str(workers), "--log-level", "debug", *args],
            stdout=self.log, stderr=subprocess.STDOUT, env=full_env)
        wait_until(self.ready, what="remora /ready")

    def ready(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"remora exited with {self.proc.returncode}:\n{self.read_log()}")
        status, _ = self.admin("/ready")
        return status == 200

    def admin(self, path, method="GET"):
        req = urllib.request.Request(f"http://127.0.0.1:{self.admin_port}{path}", method=method)
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def stats(self):
        _, text = self.admin("/stats")
        out = {}
        for line in text.splitlines():
            name, _, value = line.rpartition(": ")
            if value.isdigit():  # histograms print quantiles, or "No recorded values"
                out[name] = int(value)
        return out

    def rss_kib(self, field="VmRSS"):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise AssertionError(f"no {field}")

    def read_log(self):
        self.log.flush()
        with open(self.log_path) as f:
            return f.read()

    def stop(self, timeout=25):
        """SIGTERM and wait; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("remora did not exit after SIGTERM")
        self.log.close()
        return self.proc.returncode


@contextlib.contextmanager
def stopped_after(make):
    """A fixture's `start`: each call makes one (make(*args, **kw)); every one made is stopped
    when the test is over, whatever its outcome."""
    made = []

    def start(*args, **kw):
        thing = make(*args, **kw)
        made.append(thing)
        return thing

    try:
        yield start
    finally:
        for thing in made:
            thing.stop()


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    """A CA, a second CA and certificates for the test nodes (certs.make_pki); read only."""
    return make_pki(str(tmp_path_factory.mktemp("pki")))


@pytest.fixture
def grpc_server():
    """Starts grpcio servers (grpc_peers.py), stopped after the test."""
    from grpc_peers import GrpcServer  # here: only the gRPC tests need grpcio

    with stopped_after(GrpcServer) as start:
        yield start


@pytest.fixture
def h2_peer():
    """Starts H2Peer upstreams (h2_peer_upstream.py), stopped after the test."""
    from h2_peer_upstream import H2Peer  # here: only the HTTP/2 tests need the h2 package

    with stopped_after(lambda name="h2-peer", **kw: H2Peer(name, **kw)) as start:
        yield start


@pytest.fixture
def upstream():
    with stopped_after(lambda name="upstream": Upstream(name)) as start:
        yield start


@pytest.fixture
def remora(tmp_path):
    started = []

    def start(config, **kw):
        d = tmp_path / f"r{len(started)}"
        d.mkdir()
        r = Remora(str(d), config, **kw)
        started.append(r)
        return r

    yield start
    failures = []
    for r in started:
        code = r.stop()
        log = r.read_log() if not r.log.closed else open(r.log_path).read()
        if code != 0 or "Sanitizer" in log or "runtime error:" in log:
            failures.append(f"remora exit {code}; log tail:\n{log[-3000:]}")
    assert not failures, "\n".join(failures)


@pytest.fixture
def mesh(upstream, remora):
    """The common set-up: one app upstream behind ingress, one backend behind egress."""

    def start(workers=1, listener_timeout=None, extra_proxy=None, env=None):
        app = upstream("app")
        backend = upstream("cart-v1")
        cfg = mesh_config(app.port, backend.port, listener_timeout=listener_timeout,
                          extra_proxy=extra_proxy)
        r = remora(cfg, workers=workers, env=env)
        return r, app, backend

    return start


class Knot:
    """A real authoritative DNS server (Knot) on 127.0.0.1 with zone ns.local, changed at run
    time through knotc transactions, as Cloud Map registrations would change Route 53."""

    ZONE = "ns.local"

    def __init__(self, tmp_path, records, ttl=1, zones=None):
        """`zones`: more zones the same server is authoritative for, {name: records}."""
        self.dir = os.path.join(tmp_path, "knot")
        for sub in ("run", "db", "zones"):
            os.makedirs(os.path.join(self.dir, sub), exist_ok=True)
        self.port = free_port()
        self.conf = os.path.join(self.dir, "knot.conf")
        with open(self.conf, "w") as f:
            f.write(f"""server:
    rundir: "{self.dir}/run"
    listen: 127.0.0.1@{self.port}
database:
    storage: "{self.dir}/db"
control:
    listen: "{self.dir}/run/knot.sock"
log:
  - target: stderr
    any: warning
template:
  - id: default
    storage: "{self.dir}/zones"
    file: "%s.zone"
    zonefile-sync: -1
    zonefile-load: difference-no-serial
    journal-content: all
    semantic-checks: off
zone:
""" + "".join(f"  - domain: {z}\n" for z in [self.ZONE, *(zones or {})]))
        for zone, rs in {self.ZONE: records, **(zones or {})}.items():
            with open(os.path.join(self.dir, "zones", zone + ".zone"), "w") as f:
                f.write(f"$ORIGIN {zone}.\n$TTL {ttl}\n"
                        f"@ IN SOA ns1 hostmaster 1 60 60 3600 {ttl}\n@ IN NS ns1\nns1 IN A 127.0.0.1\n")
                for r in rs:
                    f.write(r + "\n")
        self.log = open(os.path.join(self.dir, "knotd.log"), "w")
        self.proc = None
        try:
            self.start()
        except BaseException:
            self.stop()
            raise

    @property
    def server(self):
        return f"127.0.0.1:{self.port}"

    def start(self):
        self.proc = subprocess.Popen(["knotd", "-c", self.conf], stdout=self.log, stderr=subprocess.STDOUT)
        wait_until(lambda: subprocess.run(
            ["kdig", "@127.0.0.1", "-p", str(self.port), "+short", "+timeout=1", "+retry=0",
             "ns1." + self.ZONE, "A"], capture_output=True, text=True).stdout.strip() == "127.0.0.1",
            what="knotd answering")

    def knotc(self, *args):
        out = subprocess.run(["knotc", "-c", self.conf, *args], capture_output=True, text=True, timeout=10)
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout

    def change(self, add=(), remove=()):
        """One atomic zone change; records are "owner TTL TYPE DATA" relative to the zone."""
        self.knotc("zone-begin", self.ZONE)
        for r in remove:
            owner, _ttl, rtype, *data = r.split()
            self.knotc("zone-unset", self.ZONE, owner, rtype, *data)
        for r in add:
            owner, ttl, rtype, *data = r.split()
            self.knotc("zone-set", self.ZONE, owner, ttl, rtype, *data)
        self.knotc("zone-commit", self.ZONE)

    def servfail(self, zone=ZONE):
        """The zone stops loading: every name in it answers SERVFAIL."""
        self.knotc("conf-begin")
        self.knotc("conf-unset", f"zone[{zone}]")
        self.knotc("conf-commit")
        self.knotc("conf-begin")
        self.knotc("conf-set", f"zone[{zone}]")
        self.knotc("conf-set", f"zone[{zone}].file", os.path.join(self.dir, "missing.zone"))
        self.knotc("conf-commit")

    def pause(self):
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self):
        self.proc.send_signal(signal.SIGCONT)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def knot(tmp_path):
    def make(records, ttl=1, zones=None):
        return Knot(str(tmp_path), records, ttl, zones)

    with stopped_after(make) as start:
        yield start
