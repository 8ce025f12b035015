"""Fixtures that start real processes: the remora binary, upstream servers, and helpers to
talk to them. Every process a test starts is stopped when the test ends."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
REMORA = os.environ.get("REMORA_BIN", os.path.join(ROOT, "build", "remora"))

try:
    import resource

    _soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (_hard, _hard))
except (ImportError, ValueError, OSError):
    pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
        self.ingress = free_port()
        self.egress = free_port()
        self.admin_port = free_port()
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


@pytest.fixture
def upstream():
    started = []

    def start(name="upstream"):
        u = Upstream(name)
        started.append(u)
        return u

    yield start
    for u in started:
        u.stop()


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
