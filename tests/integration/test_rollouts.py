"""Rollouts (docs/rollouts.md) with a real workload through remora: two versions of cart
behind a weighted route (tests/integration/rollout_upstream.py: a version with a chosen error
rate and latency), a rollout that moves the canary's weight, and what /rollouts, the metrics and
the traffic itself show. Intervals are 1 s so that the file runs in well under a minute."""
import datetime
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import grpc
import pytest

from conftest import HERE, REMORA, free_port, port_open, wait_until
from grpc_peers import channel, unary


class Version:
    """rollout_upstream.py on a free port."""

    def __init__(self, name, fail_every=0, delay_ms=0):
        self.name, self.port = name, free_port()
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "rollout_upstream.py"), "--port", str(self.port),
             "--name", name, "--fail-every", str(fail_every), "--delay-ms", str(delay_ms)],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_until(lambda: port_open(self.port), what=f"{name} on {self.port}")

    def stats(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/_stats", timeout=5) as r:
            return json.loads(r.read())

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)


@pytest.fixture
def version():
    started = []

    def start(*a, **kw):
        v = Version(*a, **kw)
        started.append(v)
        return v

    yield start
    for v in started:
        v.stop()


def iso(ts):
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def mesh(v1, v2, rollout=None):
    nodes = [{"virtualNodeName": "web", "spec": {
        "listeners": [{"portMapping": {"port": 1, "protocol": "http"}}],
        "backends": [{"virtualService": {"virtualServiceName": "cart.shop.local"}}]}}]
    for v in (v1, v2):
        nodes.append({"virtualNodeName": v.name, "spec": {
            "listeners": [{"portMapping": {"port": v.port, "protocol": "http"}}],
            "serviceDiscovery": {"dns": {"hostname": "127.0.0.1"}}}})
    cfg = {
        "mesh": {"meshName": "shop", "spec": {"egressFilter": {"type": "DROP_ALL"}}},
        "virtualNodes": nodes,
        "virtualServices": [{"virtualServiceName": "cart.shop.local", "spec": {
            "provider": {"virtualRouter": {"virtualRouterName": "cart"}}}}],
        "virtualRouters": [{"virtualRouterName": "cart", "spec": {
            "listeners": [{"portMapping": {"port": 80, "protocol": "http"}}]}}],
        "routes": [{"virtualRouterName": "cart", "routeName": "canary", "spec": {"httpRoute": {
            "match": {"prefix": "/"},
            "action": {"weightedTargets": [{"virtualNode": v1.name, "weight": 100},
                                           {"virtualNode": v2.name, "weight": 0}]}}}}],
        "proxy": {"node": "web"},
    }
    if rollout:
        cfg["rollouts"] = [rollout]
    return cfg


def rollout(steps, start=None, **analysis):
    a = {"interval": {"unit": "s", "value": 1}, "minRequests": 20, "maxErrorRate": 0.01,
         "maxErrorRateIncrease": 0.005, "confidence": 0.95, "failureLimit": 2}
    a.update(analysis)
    r = {"rolloutName": "cart-v2", "virtualRouterName": "cart", "routeName": "canary",
         "baseline": "cart-v1", "canary": "cart-v2",
         "steps": [{"weight": w, "hold": {"unit": "ms", "value": h}} if h else {"weight": w}
                   for w, h in steps],
         "analysis": a}
    if start is not None:
        r["startTime"] = iso(start)
    return r


class Load:
    """Requests to cart.shop.local through egress at about `rate` per second, from `threads`
    keep-alive connections; every answer is recorded (time, status, version)."""

    def __init__(self, port, rate=400, threads=4):
        self.port, self.rate, self.threads = port, rate, threads
        self.lock = threading.Lock()
        self.answers = []  # (monotonic time, status, body)
        self.stopping = threading.Event()
        self.workers = [threading.Thread(target=self.run, daemon=True) for _ in range(threads)]
        for w in self.workers:
            w.start()

    def run(self):
        gap = self.threads / self.rate
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        due = time.monotonic()
        while not self.stopping.is_set():
            try:
                conn.request("GET", "/item", headers={"Host": "cart.shop.local"})
                resp = conn.getresponse()
                body = resp.read().decode().strip()
                with self.lock:
                    self.answers.append((time.monotonic(), resp.status, body))
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            due += gap
            pause = due - time.monotonic()
            if pause > 0:
                self.stopping.wait(pause)
            else:
                due = time.monotonic()
        conn.close()

    def count(self, since=0.0, status=None, body=None):
        with self.lock:
            return sum(1 for t, s, b in self.answers
                       if t >= since and (status is None or s == status)
                       and (body is None or b == body))

    def total(self):
        with self.lock:
            return len(self.answers)

    def stop(self):
        self.stopping.set()
        for w in self.workers:
            w.join(15)


@pytest.fixture
def load():
    started = []

    def start(*a, **kw):
        l = Load(*a, **kw)
        started.append(l)
        return l

    yield start
    for l in started:
        l.stop()


def state(r):
    status, body = r.admin("/rollouts")
    assert status == 200, body
    (one,) = json.loads(body)
    return one


def weights(r):
    _, body = r.admin("/ui/state")
    (route,) = json.loads(body)["routes"]
    return {t["node"]: t["weight"] for t in route["targets"]}


def reload(r, cfg):
    with open(r.config_path, "w") as f:
        json.dump(cfg, f)
    before = r.stats().get("remora.config.reload_ok", 0)
    r.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: r.stats().get("remora.config.reload_ok", 0) > before, what="reload")


def prometheus(r):
    _, text = r.admin("/stats/prometheus")
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line.startswith("remora_rollout")}


def test_healthy_canary_advances_through_every_step_and_promotes(version, remora, load):
    v1, v2 = version("cart-v1"), version("cart-v2")
    cfg = mesh(v1, v2, rollout([(10, 1500), (50, 1500), (100, 0)]))
    r = remora(cfg)
    first = state(r)
    assert (first["state"], first["step"], first["canaryWeight"]) == ("progressing", 0, 10)
    assert weights(r) == {"cart-v1": 90, "cart-v2": 10}
    l = load(r.egress, rate=300)
    seen = []

    def promoted():
        s = state(r)
        if not seen or seen[-1] != s["step"]:
            seen.append(s["step"])
        return s["state"] == "promoted" and s

    s = wait_until(promoted, timeout=20, what="promotion")
    assert seen == [0, 1, 2]
    assert s["canaryWeight"] == 100
    assert s["decisionCounts"]["fail"] == 0
    assert s["decisionCounts"]["pass"] >= 2  # at least one passed interval per step
    assert weights(r) == {"cart-v1": 0, "cart-v2": 100}
    # Promotion is in force: new requests all go to v2.
    mark = time.monotonic()
    wait_until(lambda: l.count(since=mark) >= 200, what="traffic after promotion")
    time_in_force = time.monotonic()
    wait_until(lambda: l.count(since=time_in_force) >= 200, what="more traffic")
    assert l.count(since=time_in_force, body="cart-v1") == 0
    assert l.count(since=time_in_force, status=500) == 0
    m = prometheus(r)
    assert m['remora_rollout_canary_weight{rollout="cart-v2"}'] == 100
    assert m['remora_rollout_state{rollout="cart-v2",state="promoted"}'] == 1
    assert m['remora_rollout_state{rollout="cart-v2",state="progressing"}'] == 0
    assert m['remora_rollout_decisions_total{rollout="cart-v2",result="fail"}'] == 0
    assert r.stats()["remora.rollout.cart-v2.canary_weight"] == 100
    log = r.read_log()
    assert "rollout cart-v2: promoted: canary cart-v2 at weight 100" in log
    # A reload of the same spec keeps the state.
    reload(r, cfg)
    assert state(r)["state"] == "promoted"


def test_canary_with_5_percent_errors_rolls_back_within_two_intervals(version, remora, load):
    v1, v2 = version("cart-v1"), version("cart-v2", fail_every=20)  # exactly 5 %
    cfg = mesh(v1, v2)
    r = remora(cfg)
    l = load(r.egress, rate=400)
    wait_until(lambda: l.total() >= 100, what="traffic before the rollout")
    # The rollout starts while traffic flows: 20 % to the canary, then it would hold 30 s.
    started = time.monotonic()
    reload(r, mesh(v1, v2, rollout([(20, 30000), (100, 0)])))
    s = wait_until(lambda: (lambda s: s["state"] == "rolled_back" and s)(state(r)), timeout=10,
                   what="rollback")
    took = time.monotonic() - started
    assert s["canaryWeight"] == 0 and s["step"] == 0
    assert s["decisions"] == 2, s  # two failed intervals, the failureLimit
    assert [d["result"] for d in s["recentDecisions"]] == ["fail", "fail"]
    assert took < 2 * 1 + 1.5, took  # two 1 s intervals, and the time to see it
    assert weights(r) == {"cart-v1": 100, "cart-v2": 0}
    # What the canary cost: its 500s reached clients only while it had weight.
    # A 500 is not retried: each one reaches a client (the last may still be on its way back).
    wait_until(lambda: l.count(since=started, status=500) == v2.stats()["failed"], timeout=5,
               what="every 500 the canary sent back at a client")
    failed = l.count(since=started, status=500)
    canary_requests = sum(d["canary"]["requests"] for d in s["recentDecisions"])
    print(f"\n5% canary: rolled back after {took:.2f} s; {failed} failed requests out of "
          f"{canary_requests} canary requests judged ({l.count(since=started)} in all)")
    judged = sum(d["canary"]["errors"] for d in s["recentDecisions"])
    assert judged <= failed <= judged + 2  # and the weight change took effect at once
    assert failed <= 2 * 400 * 0.2 * 0.05 * 2, failed  # 2 intervals x rate x weight x 5 %, x2
    # Rolled back is in force and sticky: v2 gets nothing more, even over a reload.
    after = time.monotonic()
    wait_until(lambda: l.count(since=after) >= 400, what="traffic after the rollback")
    assert l.count(since=after, body="cart-v2") == 0
    assert l.count(since=after, status=500) == 0
    reload(r, mesh(v1, v2, rollout([(20, 30000), (100, 0)])))
    assert state(r)["state"] == "rolled_back"
    assert weights(r) == {"cart-v1": 100, "cart-v2": 0}
    m = prometheus(r)
    assert m['remora_rollout_decisions_total{rollout="cart-v2",result="fail"}'] == 2
    assert m['remora_rollout_state{rollout="cart-v2",state="rolled_back"}'] == 1
    assert m['remora_rollout_canary_weight{rollout="cart-v2"}'] == 0
    assert "rollout cart-v2: rolled back after 2 failed intervals in a row" in r.read_log()
    # A changed spec starts it over.
    reload(r, mesh(v1, v2, rollout([(5, 30000), (100, 0)])))
    s = state(r)
    assert (s["state"], s["canaryWeight"], s["decisions"]) == ("progressing", 5, 0)


def grpc_mesh(v1, v2, rollout_spec):
    """mesh() with gRPC versions: grpc listeners, a grpcRoute whose grpcRetryEvents say which
    statuses are failures (so the rollout's errors), and the rollout on it."""
    cfg = mesh(v1, v2, rollout_spec)
    for n in cfg["virtualNodes"][1:]:
        n["spec"]["listeners"][0]["portMapping"]["protocol"] = "grpc"
    cfg["virtualRouters"][0]["spec"]["listeners"][0]["portMapping"]["protocol"] = "grpc"
    http = cfg["routes"][0]["spec"].pop("httpRoute")
    cfg["routes"][0]["spec"]["grpcRoute"] = {"match": {}, "action": http["action"], "retryPolicy": {
        "grpcRetryEvents": ["unavailable"], "maxRetries": 1,
        "perRetryTimeout": {"unit": "s", "value": 5}}}
    return cfg


def test_grpc_canary_failing_with_a_status_rolls_back(grpc_server, remora):
    """A grpcRoute's canary that answers UNAVAILABLE (HTTP 200, Trailers-Only) to every call:
    its statuses are errors because the route's grpcRetryEvents name them; rolled back after
    two failed intervals, and the baseline's calls all succeed throughout."""
    v1, v2 = grpc_server("cart-v1"), grpc_server("cart-v2")
    stop, results = threading.Event(), []
    try:
        r = remora(grpc_mesh(v1, v2, rollout([(50, 30000), (100, 0)], minRequests=10)))
        ch = channel(r.egress, "cart.shop.local")

        def calls():
            while not stop.is_set():
                try:
                    _, md = unary(ch, "/shop.Cart/Get", metadata=[("x-fail", "cart-v2")], timeout=5)
                    results.append(md.get("x-server"))
                except grpc.RpcError as e:
                    results.append(e.code())
        t = threading.Thread(target=calls)
        t.start()
        s = wait_until(lambda: (lambda s: s["state"] == "rolled_back" and s)(state(r)), timeout=15,
                       what="rollback")
        stop.set()
        t.join()
        ch.close()
        assert [d["result"] for d in s["recentDecisions"]] == ["fail", "fail"]
        assert s["canaryWeight"] == 0 and weights(r) == {"cart-v1": 100, "cart-v2": 0}
        assert set(results) <= {"cart-v1", grpc.StatusCode.UNAVAILABLE}, set(results)
        failed = results.count(grpc.StatusCode.UNAVAILABLE)
        assert failed >= 20 and results.count("cart-v1") >= 20
        _, text = r.admin("/stats/prometheus")
        m = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
             for line in text.splitlines() if line.startswith("remora_route_target")}
        labels = 'router="cart",route="canary",target="%s"'
        assert m["remora_route_target_grpc_errors_total{%s}" % labels % "cart-v2"] == failed
        assert m["remora_route_target_grpc_errors_total{%s}" % labels % "cart-v1"] == 0
        assert m['remora_route_target_responses_total{response_code_class="5",%s}'
                 % labels % "cart-v2"] == 0  # HTTP 200s: only the status says they failed
    finally:
        stop.set()


def test_too_little_traffic_holds(version, remora, load):
    v1, v2 = version("cart-v1"), version("cart-v2")
    r = remora(mesh(v1, v2, rollout([(10, 1000), (100, 0)], minRequests=50)))
    load(r.egress, rate=20, threads=1)  # about 2 canary requests a second
    s = wait_until(lambda: (lambda s: s["decisions"] >= 3 and s)(state(r)), timeout=10,
                   what="three intervals")
    assert (s["state"], s["step"], s["canaryWeight"]) == ("holding", 0, 10)
    assert s["decisionCounts"] == {"pass": 0, "fail": 0, "insufficient": s["decisions"]}
    assert s["lastDecision"]["result"] == "insufficient"
    assert "fewer than minRequests 50" in s["lastDecision"]["reason"]
    assert weights(r) == {"cart-v1": 90, "cart-v2": 10}


def test_slow_canary_rolls_back(version, remora, load):
    v1, v2 = version("cart-v1"), version("cart-v2", delay_ms=300)
    r = remora(mesh(v1, v2, rollout([(30, 30000), (100, 0)],
                                    maxP99Latency={"unit": "ms", "value": 200})))
    load(r.egress, rate=200, threads=16)
    s = wait_until(lambda: (lambda s: s["state"] == "rolled_back" and s)(state(r)), timeout=10,
                   what="rollback")
    fails = [d for d in s["recentDecisions"] if d["result"] == "fail"]
    assert len(fails) == 2
    for d in fails:
        assert d["canary"]["p99Ms"] > 200, d
        assert "above maxP99Latency 200 ms" in d["reason"]
    assert weights(r) == {"cart-v1": 100, "cart-v2": 0}


def test_restart_mid_rollout_resumes_at_the_step_the_clock_says(version, remora, tmp_path):
    v1, v2 = version("cart-v1"), version("cart-v2")
    start = time.time() - 1
    cfg = mesh(v1, v2, rollout([(10, 4000), (30, 4000), (60, 600000), (100, 0)], start=start))
    r = remora(cfg)
    s = state(r)
    assert (s["step"], s["canaryWeight"]) == (0, 10)
    assert s["startTime"] == iso(start)
    r.stop()
    # No traffic at all: this sidecar held at step 0. The fleet's clock has moved on.
    wait_until(lambda: time.time() >= start + 4.5, timeout=10, what="the second step's time")
    r2 = remora(cfg)
    s = state(r2)
    assert (s["state"], s["step"], s["canaryWeight"]) == ("progressing", 1, 30)
    assert weights(r2) == {"cart-v1": 70, "cart-v2": 30}
    # A sidecar that starts after every hold has passed starts promoted.
    late = mesh(v1, v2, rollout([(10, 1000), (100, 0)], start=time.time() - 60))
    r3 = remora(late)
    s = state(r3)
    assert (s["state"], s["step"], s["canaryWeight"]) == ("promoted", 1, 100)


def test_check_shows_the_schedule(version, tmp_path):
    v1, v2 = version("cart-v1"), version("cart-v2")
    path = tmp_path / "mesh.json"
    path.write_text(json.dumps(mesh(v1, v2, rollout(
        [(5, 60000), (25, 60000), (100, 0)], start=1796119200,
        maxP99Latency={"unit": "ms", "value": 500}))))
    out = subprocess.run([REMORA, "check", "--config", str(path)], capture_output=True,
                         text=True, timeout=10)
    assert out.returncode == 0, out.stderr
    assert ("  rollout cart-v2: route cart/canary, cart-v1 -> cart-v2, from 2026-12-01T10:00:00Z:"
            " 5% for 60 s, 25% for 60 s, then 100% (promotion, at +120 s at the earliest)\n"
            "    analysis every 1000 ms: at least 20 canary requests, error rate not above 0.01,"
            " nor above the baseline's by 0.005, at 0.95 confidence, p99 not above 500 ms;"
            " 2 failed in a row roll back\n") in out.stdout
    bad = mesh(v1, v2, rollout([(5, 60000), (100, 0)]))
    bad["rollouts"][0]["canary"] = "cart-v3"
    path.write_text(json.dumps(bad))
    out = subprocess.run([REMORA, "check", "--config", str(path)], capture_output=True,
                         text=True, timeout=10)
    assert out.returncode == 1
    assert (f"{path}: rollouts[0].canary: \"cart-v3\" is not a weighted target of route "
            "cart/canary") in out.stdout + out.stderr


PAGE = """(() => {
  const row = n => document.querySelector('tr.target[data-target="' + n + '"]');
  const cell = (n, c) => row(n) && row(n).querySelector('.' + c).textContent;
  const ro = document.querySelector('.rollout[data-rollout="cart-v2"]');
  const st = document.getElementById('status');
  if (!st) return null;  // not loaded yet
  return {polls: Number(st.dataset.polls || 0), status: st.textContent,
          weights: {'cart-v1': cell('cart-v1', 'weight'), 'cart-v2': cell('cart-v2', 'weight')},
          requests: {'cart-v1': cell('cart-v1', 'requests'),
                     'cart-v2': cell('cart-v2', 'requests')},
          health: cell('cart-v2', 'health'),
          rollout: ro && {state: ro.querySelector('.state').textContent,
                          step: ro.querySelector('.step').textContent,
                          weight: ro.querySelector('.canary-weight').textContent,
                          decisions: Number(ro.querySelector('.decisions').textContent)}};
})()"""


def test_ui_page_in_headless_chromium(version, remora, load, tmp_path):
    from rollout_browser import CHROMIUM, Browser
    if not CHROMIUM:
        pytest.skip("Debian's chromium is not installed (make deps installs it)")
    v1, v2 = version("cart-v1"), version("cart-v2")
    r = remora(mesh(v1, v2, rollout([(10, 2000), (50, 60000), (100, 0)], minRequests=20)))
    status, page = r.admin("/ui")
    assert status == 200 and "<script>" in page
    assert "http://" not in page and "https://" not in page  # self-contained: no assets
    # A fixed number of requests first, so that the counts stand still while they are compared.
    for _ in range(50):
        conn = http.client.HTTPConnection("127.0.0.1", r.egress, timeout=5)
        conn.request("GET", "/item", headers={"Host": "cart.shop.local"})
        assert conn.getresponse().status == 200
        conn.close()
    _, body = r.admin("/ui/state")
    (route,) = json.loads(body)["routes"]
    api = {t["node"]: str(sum(t["responses"])) for t in route["targets"]}
    assert sum(int(v) for v in api.values()) == 50
    b = Browser(str(tmp_path / "chromium"))
    try:
        b.open(f"http://127.0.0.1:{r.admin_port}/ui")
        shown = wait_until(lambda: (lambda p: p and p["polls"] >= 2 and p["requests"] == api and p)(
            b.eval(PAGE)), timeout=15, what="the page showing the admin API's counts")
        assert shown["weights"] == {"cart-v1": "90", "cart-v2": "10"}
        assert shown["health"] == "1 / 1"
        s = state(r)
        assert shown["rollout"]["step"] == str(s["step"]) == "0"
        assert shown["rollout"]["weight"] == str(s["canaryWeight"]) == "10"
        assert shown["rollout"]["decisions"] <= s["decisions"]
        # Traffic lets the rollout pass its first step: the page follows the weight change.
        load(r.egress, rate=300)
        moved = wait_until(lambda: (lambda p: p and p["weights"]["cart-v2"] == "50" and p)(
            b.eval(PAGE)), timeout=15, what="the page following the weight change")
        assert moved["weights"] == {"cart-v1": "50", "cart-v2": "50"}
        assert moved["rollout"]["step"] == "1" and moved["rollout"]["weight"] == "50"
        assert weights(r) == {"cart-v1": 50, "cart-v2": 50}
        assert moved["status"].startswith("updated ")
        assert b.errors == [], b.errors
    finally:
        b.close()


def test_traces_of_affected_requests_name_the_rollout(version, remora, tmp_path):
    """The egress subsegment of a request routed by a route under a rollout carries the
    rollout's name and the canary weight it was routed with (X-Ray annotations)."""
    from rawhttp import Conn, request
    from test_tracing import Collector
    v1, v2 = version("cart-v1"), version("cart-v2")
    col = Collector()
    try:
        cfg = mesh(v1, v2, rollout([(25, 600000), (100, 0)], start=time.time() - 1))
        r = remora(cfg, env={"ENABLE_ENVOY_XRAY_TRACING": "1", "XRAY_SAMPLING_RATE": "1",
                             "XRAY_DAEMON_PORT": str(col.port)})
        c = Conn(r.egress)
        c.send(request("GET", "/x"))
        assert c.read_response().status == 200

        def egress():  # (trace id, subsegment): sent alone, or inside the segment of a new trace
            docs = [(d["trace_id"], d) for d in col.documents()]
            docs += [(t, sub) for t, d in docs for sub in d.get("subsegments", [])]
            return [(t, d) for t, d in docs
                    if d.get("annotations", {}).get("direction") == "egress"]
        wait_until(lambda: egress(), timeout=5, what="the egress subsegment")
        trace_id, sub = egress()[0]
        ann = sub["annotations"]
        assert ann["rollout"] == "cart-v2" and ann["rollout_canary_weight"] == 25
        # /ui lists it among the recent traces, by the id the daemon got.
        _, body = r.admin("/ui/state")
        (t,) = json.loads(body)["traces"]
        assert (t["traceId"], t["method"], t["path"], t["status"], t["service"],
                t["direction"]) == (trace_id, "GET", "/x", 200, "cart.shop.local", "egress")
        from rollout_browser import CHROMIUM, Browser
        if CHROMIUM:
            b = Browser(str(tmp_path / "chromium"))
            try:
                b.open(f"http://127.0.0.1:{r.admin_port}/ui")
                shown = wait_until(lambda: b.eval(
                    "Array.from(document.querySelectorAll('#traces .trace-id'))"
                    ".map(e => e.textContent).join(',')") or None, timeout=15,
                    what="the page's recent traces")
                assert shown == trace_id
                assert b.errors == [], b.errors
            finally:
                b.close()
    finally:
        col.stop()
