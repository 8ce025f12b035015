"""Observability as the consumers built for App Mesh's Envoy see it: promtool on the scrape, a
real Prometheus running Flagger's canary queries and the ECS/EKS pipelines' selectors, exact
families, labels and histogram buckets, /stats in text and JSON with filter and usedonly,
DogStatsD over UDP and a unix datagram socket, and every admin endpoint remora serves.

Contract checks inside a test are collected (`expect`) and reported together at its end, so one
missing family does not hide the state of the others."""
import asyncio
import collections
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
import urllib.parse

import pytest

from conftest import port_open, wait_until
from metrics_peers import DogStatsDAgent, PrometheusServer, Scrape
from rawhttp import Conn, request
from upstream import response as app_response

TAGS = {"ENABLE_ENVOY_STATS_TAGS": "1"}
APPMESH = [("appmesh_mesh", "shop"), ("appmesh_virtual_node", "web")]
LE = ["0.5", "1", "5", "10", "25", "50", "100", "250", "500", "1000", "2500", "5000", "10000",
      "30000", "60000", "300000", "600000", "1800000", "3600000", "+Inf"]
QUANTILES = ["P0", "P25", "P50", "P75", "P90", "P95", "P99", "P99.5", "P99.9", "P100"]
REMORA_FAMILIES = {"remora_route_target_picks_total", "remora_route_target_responses_total",
                   "remora_route_target_retries_total", "remora_dns_answers_total",
                   "remora_config_reloads_total", "remora_tls_reloads_total"}
# Under AddressSanitizer glibc's allocator is not the one in use: mallinfo2() reports zeros.
GLIBC_MALLOC = os.environ.get("REMORA_SANITIZER", "") != "address"
NO_PROMETHEUS = ("Debian's prometheus package is not installed (apt-get install -y prometheus; "
                 "it belongs in the Makefile's DEB_PKGS)")


# ---- set-up ----

def metrics_mesh(app_port, backend_port, pool=None):
    """Node `web` (this sidecar; its app on app_port) with backend cart.shop.local behind
    router `cart`, route `r1` -> cart-v1 on backend_port: every family has a series, remora's
    per-target ones too."""
    listener = {"portMapping": {"port": app_port, "protocol": "http"}}
    if pool:
        listener["connectionPool"] = {"http": pool}
    return {
        "mesh": {"meshName": "shop", "spec": {"egressFilter": {"type": "DROP_ALL"}}},
        "virtualNodes": [
            {"virtualNodeName": "web", "spec": {
                "listeners": [listener],
                "serviceDiscovery": {"dns": {"hostname": "127.0.0.1"}},
                "backends": [{"virtualService": {"virtualServiceName": "cart.shop.local"}}]}},
            {"virtualNodeName": "cart-v1", "spec": {
                "listeners": [{"portMapping": {"port": backend_port, "protocol": "http"}}],
                "serviceDiscovery": {"dns": {"hostname": "127.0.0.1"}}}}],
        "virtualServices": [{"virtualServiceName": "cart.shop.local", "spec": {
            "provider": {"virtualRouter": {"virtualRouterName": "cart"}}}}],
        "virtualRouters": [{"virtualRouterName": "cart", "spec": {
            "listeners": [{"portMapping": {"port": 80, "protocol": "http"}}]}}],
        "routes": [{"routeName": "r1", "virtualRouterName": "cart", "spec": {"httpRoute": {
            "match": {"prefix": "/"},
            "action": {"weightedTargets": [{"virtualNode": "cart-v1", "weight": 1}]}}}}],
        "proxy": {"node": "web"},
    }


class Proxy:
    """A started remora with its app and backend, and the names its stats carry."""

    def __init__(self, r, app, backend):
        self.r, self.app, self.backend = r, app, backend
        self.ing = f"cds_ingress_shop_web_http_{app.port}"
        self.egr = f"cds_egress_shop_cart-v1_http_{backend.port}"
        self.ing_addr = f"0.0.0.0_{r.ingress}"
        self.egr_addr = f"0.0.0.0_{r.egress}"

    def scrape(self, query=""):
        status, text = self.r.admin("/stats/prometheus" + query)
        assert status == 200, text
        return Scrape(text)

    def json(self, path, method="GET"):
        status, body = self.r.admin(path, method)
        assert status == 200, body
        return json.loads(body)


@pytest.fixture
def proxy(upstream, remora):
    def start(env=None, pool=None, workers=1):
        app, backend = upstream("app"), upstream("cart-v1")
        return Proxy(remora(metrics_mesh(app.port, backend.port, pool), workers=workers, env=env),
                     app, backend)
    return start


@pytest.fixture
def conns(remora):
    """Client connections, closed before remora stops (an open one would hold its drain)."""
    opened = []

    def open_(port):
        c = Conn(port)
        opened.append(c)
        return c

    yield open_
    for c in opened:
        c.close()


@pytest.fixture
def prometheus(tmp_path):
    binary = shutil.which("prometheus")
    if not binary:
        pytest.skip(NO_PROMETHEUS)
    started = []

    def start(target_port):
        p = PrometheusServer(binary, str(tmp_path / f"prometheus{len(started)}"), target_port)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


@pytest.fixture
def dogstatsd():
    agents, dirs = [], []

    def start(unix=False):
        path = None
        if unix:  # a short directory: sun_path holds 107 bytes
            dirs.append(tempfile.mkdtemp(prefix="remora-dsd-", dir="/tmp"))
            path = os.path.join(dirs[-1], "dsd.sock")
        agent = DogStatsDAgent(path)
        agents.append(agent)
        return agent

    yield start
    for a in agents:
        a.stop()
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)


class Expect:
    """Collects failed expectations; check() reports them all at once."""

    def __init__(self):
        self.failures = []

    def __call__(self, ok, message):
        if not ok and message not in self.failures:
            self.failures.append(message)
        return bool(ok)

    def eq(self, got, want, what):
        return self(got == want, f"{what}: got {got!r}, want {want!r}")

    def check(self):
        if self.failures:
            pytest.fail(f"{len(self.failures)} expectation(s) failed:\n- "
                        + "\n- ".join(self.failures), pytrace=False)


@pytest.fixture
def expect():
    return Expect()


# ---- traffic ----

def get(c, path, host="web"):
    c.send(request("GET", path, host=host))
    return c.read_response()


def q(regex):
    """A regex as a query parameter value (admin `filter=`)."""
    return urllib.parse.quote(regex, safe="")


async def _client(port, paths, host):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    statuses = []
    try:
        for path in paths:
            writer.write(request("GET", path, host=host))
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            statuses.append(int(head[9:12]))
    finally:
        writer.close()
        await writer.wait_closed()
    return statuses


def run_requests(port, paths, conns=10, host="web"):
    """The requests over `conns` keep-alive connections at once; a Counter of the statuses."""
    slices = [s for s in (paths[i::conns] for i in range(conns)) if s]

    async def main():
        return await asyncio.gather(*(_client(port, s, host) for s in slices))

    return collections.Counter(st for done in asyncio.run(main()) for st in done)


def canary_workload():
    """1,000 requests to the app: every 50th answered 500 by it (20, 2 %), every 25th of the
    others delayed 120 ms (40), so that p99 falls in the (100, 250] ms bucket."""
    paths = []
    for i in range(1000):
        paths.append("/status/500" if i % 50 == 49 else "/sleep/120" if i % 25 == 12 else
                     "/status/200")
    return paths


def app_bytes(paths):
    """The bytes the app sends for these paths (upstream.py's own responses)."""
    sizes = {"/status/200": len(app_response(200, b"status body\n")),
             "/status/500": len(app_response(500, b"status body\n")),
             "/sleep/120": len(app_response(200, b"slept\n"))}
    return sum(sizes[p] for p in paths)


def some_traffic(p, conns):
    """Ingress: 200s, a 500 and a 120 ms request; egress through the router: 200s and a 503."""
    c = conns(p.r.ingress)
    for path in ("/status/200", "/status/200", "/status/500", "/sleep/120"):
        get(c, path)
    e = conns(p.r.egress)
    for path in ("/status/200", "/status/200", "/status/503"):
        get(e, path, host="cart.shop.local")


def check_histogram(expect, scrape, family, labels, count=None):
    """Envoy's bounds in order, cumulative counts that never fall, +Inf == _count."""
    h = scrape.histogram(family, **labels)
    if not expect(h is not None, f"{family}{labels}: no histogram"):
        return None
    expect.eq([le for le, _ in h["le"]], LE, f"{family}{labels} le bounds")
    values = [v for _, v in h["le"]]
    expect(values == sorted(values), f"{family}{labels} buckets not cumulative: {values}")
    expect.eq(values[-1], h["count"], f"{family}{labels} le=+Inf vs _count")
    if count is not None:
        expect.eq(h["count"], count, f"{family}{labels} _count")
    return h


# ---- 1. promtool ----

@pytest.mark.parametrize("tags", [False, True], ids=["plain", "stats_tags"])
def test_promtool_check_metrics_finds_no_error_and_lints_only_envoy_names(proxy, conns, tags):
    promtool = shutil.which("promtool")
    if not promtool:
        pytest.skip(NO_PROMETHEUS)
    p = proxy(env=TAGS if tags else None)
    some_traffic(p, conns)
    status, text = p.r.admin("/stats/prometheus")
    assert status == 200
    out = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                         text=True, timeout=30)
    report = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    assert out.returncode in (0, 3) and not any("error while linting" in l for l in report), \
        "\n".join(report)
    # What dashboards need as Envoy spells it: counters without _total, `_ms` in names, the
    # membership_total gauge. Nothing else, and nothing about remora's own families.
    envoy_names = {'counter metrics should have "_total" suffix',
                   'non-counter metrics should not have "_total" suffix',
                   "metric names should not contain abbreviated units"}
    assert not [l for l in report if l.startswith("remora_")], report
    other = [l for l in report
             if not (l.startswith("envoy_") and l.split(" ", 1)[1] in envoy_names)]
    assert not other, other
    families = set(Scrape(text).types)
    assert REMORA_FAMILIES <= families, REMORA_FAMILIES - families


# ---- 2. a real Prometheus: Flagger's gates, the ECS and EKS pipelines ----

def test_canary_gates_on_a_real_prometheus(proxy, prometheus, expect):
    p = proxy(env=TAGS)
    prom = prometheus(p.r.admin_port)
    total = f'envoy_cluster_upstream_rq_total{{envoy_cluster_name="{p.ing}"}}'
    wait_until(lambda: prom.scalar(total) == 0, timeout=15, what="prometheus's first scrape")
    paths = canary_workload()
    # A 500 and a 200 first, scraped before the rest: both per-code series then have a sample
    # before the bulk, as on a sidecar that has served traffic before the canary analysis.
    first = [paths.pop(paths.index("/status/500")), paths.pop(paths.index("/status/200"))]
    assert run_requests(p.r.ingress, first, conns=1) == {500: 1, 200: 1}
    wait_until(lambda: prom.scalar(total) == 2, timeout=10, what="the first two requests scraped")
    assert run_requests(p.r.ingress, paths) == collections.Counter(
        500 if x == "/status/500" else 200 for x in paths)
    wait_until(lambda: prom.scalar(total) == 1000, timeout=10, what="all 1000 requests scraped")

    targets = prom.api("targets")["activeTargets"]
    expect(len(targets) == 1 and targets[0]["health"] == "up" and not targets[0]["lastError"],
           f"prometheus scrapes remora without error: {targets}")
    # Flagger request-success-rate, exact from the counters, then as Flagger runs it (rate()
    # extrapolates each series on its own, so it is close, not exact).
    exact = prom.scalar('sum(envoy_cluster_upstream_rq{envoy_response_code!~"5.*"}) / '
                        'sum(envoy_cluster_upstream_rq) * 100')
    expect(exact is not None and abs(exact - 98.0) <= 0.01,
           f"success rate from the per-code counters = {exact}, want 98.0 "
           "(None: no envoy_cluster_upstream_rq series, Flagger halts: no values found)")
    rate = prom.scalar('sum(rate(envoy_cluster_upstream_rq{envoy_response_code!~"5.*"}[1m])) / '
                       'sum(rate(envoy_cluster_upstream_rq[1m])) * 100')
    expect(rate is not None and 97 <= rate <= 99, f"Flagger request-success-rate = {rate}")
    codes = {d.get("envoy_response_code"): v for d, v in
             prom.query(f'envoy_cluster_upstream_rq{{envoy_cluster_name="{p.ing}"}}')}
    expect.eq(codes, {"200": 980.0, "500": 20.0}, "envoy_cluster_upstream_rq by code")
    # Flagger request-duration: 40 of 1000 took >= 120 ms, so p99 is in (100, 250].
    p99 = prom.scalar("histogram_quantile(0.99, sum by (le) "
                      "(rate(envoy_cluster_upstream_rq_time_bucket[1m])))")
    expect(p99 is not None and 100 < p99 <= 250,
           f"Flagger request-duration p99 = {p99} ms, want in (100, 250] (NaN: no samples)")
    # The ECS pipeline's selector, and what the EKS pipeline's metric filters read.
    ecs = prom.query('envoy_http_downstream_rq_xx{envoy_http_conn_manager_prefix="ingress",'
                     'envoy_response_code_class="5",appmesh_virtual_node="web"}')
    expect(len(ecs) == 1 and ecs[0][1] == 20 and ecs[0][0].get("appmesh_mesh") == "shop",
           f"ECS selector gives {ecs}, want one series = 20")
    eks = {d.get("envoy_listener_address"): (d.get("envoy_http_conn_manager_prefix"), v)
           for d, v in prom.query('envoy_listener_http_downstream_rq_xx'
                                  '{envoy_response_code_class="5"}')}
    expect.eq(eks, {p.ing_addr: ("ingress", 20.0), p.egr_addr: ("egress", 0.0)},
              "envoy_listener_http_downstream_rq_xx class 5")
    ok = prom.scalar('sum(envoy_listener_http_downstream_rq_xx{envoy_response_code_class="2"})')
    expect.eq(ok, 980.0, "envoy_listener_http_downstream_rq_xx class 2")
    # The CloudWatch agent sends counters as deltas and drops what is not a counter.
    meta = prom.api("metadata")
    for family, kind in (("envoy_http_downstream_rq_xx", "counter"),
                         ("envoy_listener_http_downstream_rq_xx", "counter"),
                         ("envoy_cluster_upstream_rq", "counter"),
                         ("envoy_cluster_upstream_rq_time", "histogram")):
        got = meta.get(family, [{}])[0].get("type")
        expect.eq(got, kind, f"prometheus metadata type of {family}")
    expect.check()


# ---- 3. exact families and values ----

def test_families_labels_and_values_after_the_canary_workload(proxy, expect):
    p = proxy(env=TAGS)
    before = p.scrape()
    expect("envoy_cluster_upstream_rq" not in before.types,
           "per-code counters exist before any response (Envoy makes them at the first one)")
    for cls in "12345":
        got = before.value("envoy_cluster_upstream_rq_xx", envoy_response_code_class=cls,
                           envoy_cluster_name=p.ing)
        expect.eq(got, 0.0, f"upstream_rq_{cls}xx before traffic")
    paths = canary_workload()
    assert run_requests(p.r.ingress, paths) == {200: 980, 500: 20}
    s = p.scrape()

    expect.eq(s.layout, [], "families laid out as # HELP, # TYPE, then their series")
    expect.eq(set(s.helps), set(s.types), "families with # HELP vs with # TYPE")
    unlabelled = [(n, ls) for n, ls, _ in s.samples if ls[:2] != APPMESH]
    expect.eq(unlabelled[:3], [], "series not starting with appmesh_mesh, appmesh_virtual_node")
    expect(REMORA_FAMILIES <= set(s.types),
           f"remora families: {sorted(f for f in s.types if f.startswith('remora_'))}")

    # Per code (dynamic), per class, per HTTP prefix, per listener.
    expect.eq(s.types.get("envoy_cluster_upstream_rq"), "counter", "TYPE envoy_cluster_upstream_rq")
    by_code = {d.get("envoy_response_code"): v for d, v in
               s.series("envoy_cluster_upstream_rq", envoy_cluster_name=p.ing)}
    expect.eq(by_code, {"200": 980.0, "500": 20.0}, "envoy_cluster_upstream_rq by code")
    expect.eq(s.series("envoy_cluster_upstream_rq", envoy_cluster_name=p.egr), [],
              "per-code series of the unused egress cluster")
    want = {"1": 0.0, "2": 980.0, "3": 0.0, "4": 0.0, "5": 20.0}
    for family, labels in (
            ("envoy_cluster_upstream_rq_xx", {"envoy_cluster_name": p.ing}),
            ("envoy_http_downstream_rq_xx", {"envoy_http_conn_manager_prefix": "ingress"}),
            ("envoy_listener_http_downstream_rq_xx", {"envoy_http_conn_manager_prefix": "ingress",
                                                      "envoy_listener_address": p.ing_addr})):
        got = {d["envoy_response_code_class"]: v for d, v in s.series(family, **labels)}
        expect.eq(got, want, f"{family}{labels}")
        expect.eq(s.types.get(family), "counter", f"TYPE {family}")
    expect.eq(s.value("envoy_cluster_upstream_rq_total", envoy_cluster_name=p.ing), 1000.0,
              "upstream_rq_total")
    expect.eq(s.value("envoy_http_downstream_rq_total", envoy_http_conn_manager_prefix="ingress"),
              1000.0, "http.ingress.downstream_rq_total")
    expect.eq(s.value("envoy_listener_downstream_cx_total", envoy_listener_address=p.ing_addr),
              10.0, "listener.0.0.0.0_PORT.downstream_cx_total")
    expect.eq(s.value("envoy_http_downstream_cx_total", envoy_http_conn_manager_prefix="ingress"),
              10.0, "http.ingress.downstream_cx_total")
    expect.eq(s.value("envoy_cluster_upstream_cx_rx_bytes_total", envoy_cluster_name=p.ing),
              float(app_bytes(paths)), "upstream_cx_rx_bytes_total = the app's response bytes")
    tx = s.value("envoy_cluster_upstream_cx_tx_bytes_total", envoy_cluster_name=p.ing) or 0
    expect(tx >= sum(len(f"GET {x} HTTP/1.1\r\n") for x in paths), f"tx_bytes_total {tx}")

    # Histograms: 40 samples of >= 120 ms, 960 fast ones.
    for family, labels in (("envoy_cluster_upstream_rq_time", {"envoy_cluster_name": p.ing}),
                           ("envoy_http_downstream_rq_time",
                            {"envoy_http_conn_manager_prefix": "ingress"})):
        expect.eq(s.types.get(family), "histogram", f"TYPE {family}")
        h = check_histogram(expect, s, family, labels, count=1000)
        if h:
            expect(Scrape.bucket(h, 100) <= 960, f"{family} le=100 holds a 120 ms sample: {h}")
            expect.eq(Scrape.bucket(h, 250), 1000, f"{family} le=250")
            expect((h["sum"] or 0) >= 40 * 120, f"{family}_sum {h['sum']} < 40 x 120 ms")
    cx_total = s.value("envoy_cluster_upstream_cx_total", envoy_cluster_name=p.ing)
    check_histogram(expect, s, "envoy_cluster_upstream_cx_connect_ms",
                    {"envoy_cluster_name": p.ing}, count=cx_total)
    expect.check()


def test_a_120_ms_request_is_above_le_100_and_within_le_250(proxy, conns, expect):
    """The bucket rule (a sample counts toward every bound strictly above it) on a sample
    that cannot sit on a bound: 5 fast answers and one after 120 ms."""
    p = proxy()
    c = conns(p.r.ingress)
    for path in ["/status/200"] * 5 + ["/sleep/120"]:
        assert get(c, path).status == 200
    s = p.scrape()
    for family, labels in (("envoy_cluster_upstream_rq_time", {"envoy_cluster_name": p.ing}),
                           ("envoy_http_downstream_rq_time",
                            {"envoy_http_conn_manager_prefix": "ingress"})):
        h = check_histogram(expect, s, family, labels, count=6)
        if h:
            expect.eq(Scrape.bucket(h, 100), 5, f"{family} le=100")
            expect.eq(Scrape.bucket(h, 250), 6, f"{family} le=250")
            expect(120 <= (h["sum"] or 0) < 6 * 250, f"{family}_sum {h['sum']}")
    # The same histogram in /stats: P100 lies in the bucket of the slow sample.
    _, text = p.r.admin("/stats?filter=" + q(rf"^cluster\.{p.ing}\.upstream_rq_time$"))
    m = re.fullmatch(rf"cluster\.{re.escape(p.ing)}\.upstream_rq_time: (.*)\n", text)
    quantiles = dict(re.findall(r"(P[0-9.]+)\(nan,([^)]+)\)", m.group(1))) if m else {}
    expect(list(quantiles) == QUANTILES and 100 < float(quantiles["P100"]) <= 250,
           f"/stats upstream_rq_time: {text!r}")
    expect.check()


def test_upstream_connection_counters(proxy, conns, expect):
    """One connection reused, one the app closes (a close-delimited body), then a new one."""
    p = proxy()
    c = conns(p.r.ingress)
    for path in ("/status/200", "/bytes/10?close=1", "/status/200"):
        assert get(c, path).status == 200
    labels = {"envoy_cluster_name": p.ing}
    wait_until(lambda: p.scrape().value("envoy_cluster_upstream_cx_destroy", **labels) == 1,
               timeout=5, what="the closed upstream connection destroyed")
    s = p.scrape()
    closed = len(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n") + 10
    for name, want in (("envoy_cluster_upstream_cx_total", 2),
                       ("envoy_cluster_upstream_cx_active", 1),
                       ("envoy_cluster_upstream_cx_destroy", 1),
                       ("envoy_cluster_upstream_cx_destroy_remote", 1),
                       ("envoy_cluster_upstream_cx_destroy_local", 0),
                       ("envoy_cluster_upstream_cx_destroy_with_active_rq", 0),
                       ("envoy_cluster_upstream_cx_connect_ms_count", 2),
                       ("envoy_cluster_upstream_cx_rx_bytes_total",
                        2 * len(app_response(200, b"status body\n")) + closed)):
        expect.eq(s.value(name, **labels), float(want), name)
    expect.eq(s.types.get("envoy_cluster_upstream_cx_active"), "gauge", "TYPE upstream_cx_active")
    expect.eq(s.value("envoy_listener_downstream_cx_active", envoy_listener_address=p.ing_addr),
              1.0, "listener downstream_cx_active")
    c.close()
    wait_until(lambda: p.scrape().value("envoy_listener_downstream_cx_destroy",
                                        envoy_listener_address=p.ing_addr) == 1,
               timeout=5, what="listener downstream_cx_destroy")
    expect.eq(p.scrape().value("envoy_listener_downstream_cx_active",
                               envoy_listener_address=p.ing_addr), 0.0, "cx_active after close")
    expect.check()


# The CloudWatch agent's quick-start config for App Mesh on ECS (awsvpc) keeps these families
# and drops the rest (aws/amazon-cloudwatch-agent, k8s-deployment-manifest-templates/
# deployment-mode/service/cwagent-prometheus/cloudformation-quickstart/
# cwagent-ecs-prometheus-metric-for-awsvpc.yaml, metric_selectors); its App Mesh dashboard and
# Container Insights read them. Each must have a series, with the labels the dashboard groups by.
CLOUDWATCH_ECS = {
    "envoy_http_downstream_rq_total": "envoy_http_conn_manager_prefix",
    "envoy_http_downstream_rq_xx": "envoy_http_conn_manager_prefix",
    "envoy_http_downstream_cx_destroy_remote_active_rq": "envoy_http_conn_manager_prefix",
    "envoy_cluster_upstream_cx_rx_bytes_total": "envoy_cluster_name",
    "envoy_cluster_upstream_cx_tx_bytes_total": "envoy_cluster_name",
    "envoy_cluster_membership_healthy": "envoy_cluster_name",
    "envoy_cluster_membership_total": "envoy_cluster_name",
    "envoy_cluster_upstream_cx_connect_timeout": "envoy_cluster_name",
    "envoy_cluster_upstream_cx_destroy_local_with_active_rq": "envoy_cluster_name",
    "envoy_cluster_upstream_rq_pending_failure_eject": "envoy_cluster_name",
    "envoy_cluster_upstream_rq_pending_overflow": "envoy_cluster_name",
    "envoy_cluster_upstream_rq_timeout": "envoy_cluster_name",
    "envoy_cluster_upstream_rq_per_try_timeout": "envoy_cluster_name",
    "envoy_cluster_upstream_rq_rx_reset": "envoy_cluster_name",
    "envoy_cluster_upstream_rq_maintenance_mode": "envoy_cluster_name",
    "envoy_cluster_upstream_flow_control_paused_reading_total": "envoy_cluster_name",
    "envoy_cluster_upstream_flow_control_resumed_reading_total": "envoy_cluster_name",
    "envoy_cluster_upstream_flow_control_backed_up_total": "envoy_cluster_name",
    "envoy_cluster_upstream_flow_control_drained_total": "envoy_cluster_name",
    "envoy_cluster_upstream_rq_retry": "envoy_cluster_name",
    "envoy_cluster_upstream_rq_retry_success": "envoy_cluster_name",
    "envoy_cluster_upstream_rq_retry_overflow": "envoy_cluster_name",
    "envoy_server_memory_allocated": None,
    "envoy_server_memory_heap_size": None,
    "envoy_server_version": None,
    "envoy_server_uptime": None,
    "envoy_server_live": None,
}


def test_the_cloudwatch_agents_app_mesh_families_all_have_series(proxy, conns, expect):
    p = proxy(env=TAGS)
    c = conns(p.r.egress)
    assert get(c, "/status/200", host="cart.shop.local").status == 200
    s = p.scrape()
    for family, label in CLOUDWATCH_ECS.items():
        series = [labels for name, labels, _ in s.samples if name == family]
        expect(series, f"{family}: no series")
        if label and series:
            expect(all(label in dict(labels) for labels in series), f"{family}: no {label} label")
    expect.check()


def test_connection_destroys_by_side_and_active_request(proxy, conns, expect):
    """Envoy's downstream_cx_destroy family, per HTTP prefix, and the cluster's by side: a
    client that closes an idle connection; one that leaves with its request in flight; and an
    app that dies mid-response, whose answer remora cuts off (a reset remora sends)."""
    p = proxy()
    ing = {"envoy_http_conn_manager_prefix": "ingress"}
    cluster = {"envoy_cluster_name": p.ing}

    def value(name, labels):
        return p.scrape().value(name, **labels)

    idle = Conn(p.r.ingress)
    assert get(idle, "/status/200").status == 200
    idle.close()
    wait_until(lambda: value("envoy_http_downstream_cx_destroy", ing) == 1, timeout=5,
               what="the idle connection destroyed")
    busy = Conn(p.r.ingress)
    busy.send(request("GET", "/sleep/3000"))  # slow on purpose: in flight when the client goes
    wait_until(lambda: value("envoy_cluster_upstream_rq_active", cluster) == 1, timeout=5,
               what="the slow request upstream")
    # A reset, not a FIN: a client's half-close after a whole request still gets its answer.
    busy.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    busy.close()
    wait_until(lambda: value("envoy_http_downstream_cx_destroy", ing) == 2, timeout=5,
               what="the busy connection destroyed")
    # The upstream request the client left is no longer active (it was counted there for good).
    wait_until(lambda: value("envoy_cluster_upstream_rq_active", cluster) == 0, timeout=5,
               what="upstream_rq_active back to 0 after the client left")
    cut = Conn(p.r.ingress)
    cut.send(request("GET", "/die-mid-response"))
    resp = cut.read_response()
    assert resp.status == 200 and not resp.complete
    assert cut.closed_by_peer()  # remora's FIN: the answer ends short
    cut.close()  # after remora's close: remora's doing, not the client's
    wait_until(lambda: value("envoy_http_downstream_cx_destroy", ing) == 3, timeout=5,
               what="the cut connection destroyed")
    s = p.scrape()
    for name, want in (("envoy_http_downstream_cx_destroy_remote", 2),
                       ("envoy_http_downstream_cx_destroy_local", 1),
                       ("envoy_http_downstream_cx_destroy_active_rq", 2),
                       ("envoy_http_downstream_cx_destroy_remote_active_rq", 1),
                       ("envoy_http_downstream_cx_destroy_local_active_rq", 1),
                       ("envoy_http_downstream_rq_rx_reset", 1),
                       ("envoy_http_downstream_rq_tx_reset", 1)):
        expect.eq(s.value(name, **ing), float(want), name)
    # Upstream: the connection the client's departure released is closed by remora with its
    # request in flight; the app's death mid-response is a remote close with one in flight.
    for name, want in (("envoy_cluster_upstream_cx_destroy_local_with_active_rq", 1),
                       ("envoy_cluster_upstream_cx_destroy_remote_with_active_rq", 1),
                       ("envoy_cluster_upstream_cx_destroy_with_active_rq", 2),
                       ("envoy_cluster_upstream_rq_active", 0)):
        expect.eq(s.value(name, **cluster), float(want), name)
    expect.check()


def test_flow_control_pauses_and_resumes_both_ways(proxy, conns, expect):
    """A 32 MiB answer to a client that reads nothing: remora stops reading the app
    (paused_reading) and starts again once the client reads (resumed_reading), as often as it
    stopped. An upload to an app that reads slowly backs the upstream up, and it drains."""
    p = proxy()
    cluster = {"envoy_cluster_name": p.ing}
    c = conns(p.r.ingress)
    c.send(request("GET", "/bytes/33554432"))
    wait_until(lambda: p.scrape().value("envoy_cluster_upstream_flow_control_paused_reading_total",
                                        **cluster) >= 1, timeout=10, what="reading the app paused")
    resp = c.read_response()
    assert resp.status == 200 and len(resp.body) == 33554432
    s = p.scrape()
    paused = s.value("envoy_cluster_upstream_flow_control_paused_reading_total", **cluster)
    expect.eq(s.value("envoy_cluster_upstream_flow_control_resumed_reading_total", **cluster),
              paused, "resumed as often as paused")
    up = conns(p.r.ingress)
    body = b"x" * (32 << 20)
    sender = threading.Thread(target=up.send, args=(request("POST", "/slow-upload/1000", body=body),))
    sender.start()
    wait_until(lambda: p.scrape().value("envoy_cluster_upstream_flow_control_backed_up_total",
                                        **cluster) >= 1, timeout=10, what="the upload backed up")
    sender.join(30)
    resp = up.read_response()
    assert resp.status == 200 and json.loads(resp.body) == {"length": len(body)}
    s = p.scrape()
    backed = s.value("envoy_cluster_upstream_flow_control_backed_up_total", **cluster)
    expect(backed >= 1, f"backed_up_total {backed}")
    expect.eq(s.value("envoy_cluster_upstream_flow_control_drained_total", **cluster), backed,
              "drained as often as backed up")
    expect.check()


def test_circuit_breaker_gauges_open_and_close(proxy, conns, expect):
    p = proxy(pool={"maxConnections": 1, "maxPendingRequests": 1})
    labels = {"envoy_cluster_name": p.ing}
    names = [f"envoy_cluster_circuit_breakers_default_{g}"
             for g in ("cx_open", "rq_open", "rq_pending_open", "rq_retry_open")]

    def gauges():
        s = p.scrape()
        return [s.value(n, **labels) for n in names]

    s = p.scrape()
    for n in names:
        expect.eq(s.types.get(n), "gauge", f"TYPE {n}")
    expect.eq(gauges(), [0.0] * 4, "circuit breakers idle")
    first, second = conns(p.r.ingress), conns(p.r.ingress)
    first.send(request("GET", "/sleep/800", host="web"))
    wait_until(lambda: p.app.stats()["requests"] == 1, what="the first request at the app")
    second.send(request("GET", "/status/200", host="web"))
    try:
        wait_until(lambda: gauges() == [1.0, 1.0, 1.0, 0.0], timeout=0.7,
                   what="cx_open, rq_open, rq_pending_open at the limits")
    except AssertionError:
        expect(False, f"at the limits (1 active, 1 pending): {dict(zip(names, gauges()))}")
    assert first.read_response().status == 200
    assert second.read_response().status == 200
    wait_until(lambda: gauges() == [0.0] * 4, timeout=5, what="circuit breakers closed again")
    expect.check()


def test_server_gauges(proxy, conns, expect):
    p = proxy(workers=2)
    s = p.scrape()
    for n in ("envoy_server_live", "envoy_server_state", "envoy_server_uptime",
              "envoy_server_concurrency", "envoy_server_memory_allocated",
              "envoy_server_memory_heap_size", "envoy_server_total_connections"):
        expect.eq(s.types.get(n), "gauge", f"TYPE {n}")
    expect("envoy_server_live{} 1\n" in s.text, "envoy_server_live{} 1 (no tags still prints {})")
    expect.eq(s.value("envoy_server_state"), 0.0, "server_state LIVE")
    expect.eq(s.value("envoy_server_concurrency"), 2.0, "server_concurrency = --workers")
    expect.eq(s.value("envoy_server_version"), 100.0, "server_version: 0.1.0 as 0*10000+1*100+0")
    allocated = s.value("envoy_server_memory_allocated")
    heap = s.value("envoy_server_memory_heap_size")
    expect((0 < allocated or not GLIBC_MALLOC) and allocated <= heap,
           f"memory_allocated {allocated}, heap_size {heap}")
    cs = [conns(p.r.ingress) for _ in range(3)]
    for c in cs:
        assert get(c, "/status/200").status == 200
    wait_until(lambda: p.scrape().value("envoy_server_total_connections") == 3, timeout=5,
               what="server_total_connections = 3 open connections")
    wait_until(lambda: p.scrape().value("envoy_server_uptime") >= 1, timeout=3,
               what="server_uptime counting seconds")
    expect.check()


# ---- /stats text and JSON, filter, usedonly ----

COUNTER_LINE = re.compile(r"^([^\s:]+): (\d+)$")
HIST_LINE = re.compile(r"^([^\s:]+): " + " ".join(rf"{re.escape(q)}\(nan,([^)\s]+)\)"
                                                  for q in QUANTILES) + "$")
EMPTY_HIST_LINE = re.compile(r"^([^\s:]+): No recorded values$")


def parse_stats_text(expect, text):
    """{name: int}, {histogram name: [10 floats] or None}; bad lines become failures."""
    values, hists = {}, {}
    for line in text.splitlines():
        if m := COUNTER_LINE.match(line):
            values[m.group(1)] = int(m.group(2))
        elif m := HIST_LINE.match(line):
            hists[m.group(1)] = [float(x) for x in m.groups()[1:]]
        elif m := EMPTY_HIST_LINE.match(line):
            hists[m.group(1)] = None
        else:
            expect(False, f"/stats line does not parse: {line!r}")
    return values, hists


def test_stats_text_and_json(proxy, conns, expect):
    p = proxy()
    _, text = p.r.admin("/stats")
    _, hists = parse_stats_text(expect, text)
    expect.eq(hists.get(f"cluster.{p.ing}.upstream_rq_time", "absent"), None,
              "upstream_rq_time before traffic")
    c = conns(p.r.ingress)
    for path in ("/status/200", "/status/200", "/status/200", "/sleep/120"):
        get(c, path)
    status, text = p.r.admin("/stats")
    assert status == 200
    values, hists = parse_stats_text(expect, text)
    for name, want in ((f"cluster.{p.ing}.upstream_rq_total", 4),
                       (f"cluster.{p.ing}.upstream_rq_2xx", 4),
                       ("http.ingress.downstream_rq_2xx", 4),
                       (f"listener.{p.ing_addr}.http.ingress.downstream_rq_2xx", 4),
                       (f"listener.{p.ing_addr}.downstream_cx_total", 1),
                       ("server.live", 1), ("server.concurrency", 1)):
        expect.eq(values.get(name), want, f"/stats {name}")
    for name in (f"cluster.{p.ing}.upstream_cx_connect_ms", f"cluster.{p.ing}.upstream_rq_time",
                 "http.ingress.downstream_rq_time"):
        q = hists.get(name)
        expect(q is not None and q == sorted(q), f"/stats {name}: quantiles {q}")

    status, body = p.r.admin("/stats?format=json")
    assert status == 200
    doc = json.loads(body)
    expect.eq(list(doc), ["stats"], "/stats?format=json top level")
    stats = doc["stats"]
    plain, last = stats[:-1], stats[-1]
    expect(all(set(x) == {"name", "value"} and isinstance(x["value"], int) for x in plain),
           "every stat is {name, value:int}")
    steady = {k: v for k, v in values.items() if not k.startswith("server.")}
    expect.eq({x["name"]: x["value"] for x in plain if not x["name"].startswith("server.")},
              steady, "JSON stats vs text stats")
    expect.eq(list(last), ["histograms"], "the last element holds the histograms")
    h = last.get("histograms", {})
    expect.eq(h.get("supported_quantiles"), [0, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 100],
              "supported_quantiles")
    computed = {x["name"]: x["values"] for x in h.get("computed_quantiles", [])}
    expect.eq(set(computed), set(hists), "computed_quantiles names vs /stats histograms")
    for name, vals in computed.items():
        expect(len(vals) == 10 and all(set(v) == {"interval", "cumulative"} and
                                       v["interval"] is None for v in vals),
               f"{name}: values {vals}")
        cum = [v["cumulative"] for v in vals]
        if hists.get(name) is not None:
            expect.eq(cum, hists[name], f"{name}: JSON cumulative vs text quantiles")
    expect.check()


def test_stats_filter_and_usedonly(proxy, conns, expect):
    p = proxy()
    c = conns(p.r.ingress)
    get(c, "/status/200")
    get(c, "/status/200")

    _, text = p.r.admin("/stats?filter=" + q(r"^http\.ingress\.downstream_rq_[0-9]xx$"))
    expect.eq([l.split(":")[0] for l in text.splitlines()],
              [f"http.ingress.downstream_rq_{d}xx" for d in "12345"], "filter, anchored ERE")
    _, text = p.r.admin("/stats?filter=upstream_rq_total")
    names = [l.split(":")[0] for l in text.splitlines()]
    expect.eq(sorted(names), sorted([f"cluster.{p.egr}.upstream_rq_total",
                                     f"cluster.{p.ing}.upstream_rq_total"]), "filter, partial")

    _, text = p.r.admin("/stats?usedonly")
    values, hists = parse_stats_text(expect, text)
    expect(values and all(v != 0 for v in values.values()), "usedonly keeps only non-zero stats")
    expect(all(v is not None for v in hists.values()), "usedonly drops empty histograms")
    expect.eq(values.get("http.ingress.downstream_rq_2xx"), 2, "usedonly http.ingress 2xx")
    expect("http.egress.downstream_rq_total" not in values, "usedonly dropped egress rq_total")
    doc = p.json("/stats?format=json&usedonly&filter=" + q(r"^http\.ingress\."))
    plain = {x["name"]: x["value"] for x in doc["stats"][:-1]}
    expect(plain and all(k.startswith("http.ingress.") and v for k, v in plain.items()),
           f"JSON usedonly + filter: {plain}")

    s = p.scrape("?filter=" + q(rf"^cluster\.{p.ing}\."))
    expect(s.samples and all(dict(ls).get("envoy_cluster_name") == p.ing for _, ls, _ in s.samples),
           "prometheus filter on the dotted name")
    s = p.scrape("?usedonly")
    zero = [(n, ls) for n, ls, v in s.samples if v == 0 and s.types.get(n) != "histogram"
            and s.family_of(n) == n]
    expect.eq(zero, [], "prometheus usedonly series at 0")
    expect.eq(s.value("envoy_http_downstream_rq_xx", envoy_http_conn_manager_prefix="ingress",
                      envoy_response_code_class="2"), 2.0, "usedonly ingress 2xx")
    expect.eq(s.series("envoy_http_downstream_rq_total", envoy_http_conn_manager_prefix="egress"),
              [], "usedonly dropped egress rq_total")
    cluster_only = "filter=" + q(r"^cluster\.")
    expect.eq(p.r.admin("/stats?format=prometheus&" + cluster_only),
              p.r.admin("/stats/prometheus?" + cluster_only), "/stats?format=prometheus")

    for path in ("/stats?filter=" + q("("), "/stats?format=json&filter=" + q("[a"),
                 "/stats/prometheus?filter=" + q("(")):
        expect.eq(p.r.admin(path)[0], 400, f"bad regex {path}")
    expect.eq(p.r.admin("/stats?format=xml")[0], 400, "unknown format")
    expect.check()


# ---- 4. DogStatsD ----

LINE = re.compile(r"^(?P<name>[A-Za-z0-9_.\-]+):(?P<value>[0-9.e+\-]+)\|(?P<type>c|g|ms)"
                  r"(?:\|@(?P<rate>[0-9.e+\-]+))?(?:\|#(?P<tags>\S+))?$")


def parse_flush(expect, flush):
    """[(name, value, type, rate, tags)] of one flush; malformed lines become failures."""
    out = []
    for gram in flush[1]:
        expect(len(gram) <= 1432, f"datagram of {len(gram)} bytes")
        for line in gram.decode().split("\n"):
            m = LINE.match(line)
            if not expect(m, f"DogStatsD line does not parse: {line!r}"):
                continue
            out.append((m["name"], float(m["value"]), m["type"],
                        float(m["rate"]) if m["rate"] else None, m["tags"] or ""))
    return out


@pytest.mark.parametrize("transport", ["udp", "unix"])
def test_dogstatsd_names_tags_deltas_and_timers(proxy, conns, dogstatsd, expect, transport):
    env = {"ENABLE_ENVOY_DOG_STATSD": "1", "REMORA_STATSD_FLUSH_MS": "300"}
    decoy = None
    if transport == "udp":
        agent = dogstatsd()
        env.update(STATSD_ADDRESS="127.0.0.1", STATSD_PORT=str(agent.port), **TAGS)
        fixed = ["appmesh.mesh:shop", "appmesh.virtual_node:web"]
    else:  # STATSD_SOCKET_PATH wins over STATSD_ADDRESS/STATSD_PORT; no stats tags here
        agent, decoy = dogstatsd(unix=True), dogstatsd()
        env.update(STATSD_SOCKET_PATH=agent.path, STATSD_ADDRESS="127.0.0.1",
                   STATSD_PORT=str(decoy.port))
        fixed = []
    start = time.monotonic()
    p = proxy(env=env)

    def tags(*extracted):
        return ",".join(fixed + list(extracted))

    ing = tags(f"envoy.cluster_name:{p.ing}")
    cls2 = tags("envoy.response_code_class:2", f"envoy.cluster_name:{p.ing}")
    cls5 = tags("envoy.response_code_class:5", f"envoy.cluster_name:{p.ing}")
    code200 = tags("envoy.response_code:200", f"envoy.cluster_name:{p.ing}")
    http2 = tags("envoy.response_code_class:2", "envoy.http_conn_manager_prefix:ingress")
    lst2 = tags("envoy.response_code_class:2", "envoy.http_conn_manager_prefix:ingress",
                f"envoy.listener_address:{p.ing_addr}")
    prefix = tags("envoy.http_conn_manager_prefix:ingress")

    def find(lines, name, kind, tag):
        return [v for n, v, k, _, t in lines if (n, k, t) == (name, kind, tag)]

    def since(t):
        return [line for f in agent.flushes() if f[0] > t for line in parse_flush(expect, f)]

    # Before traffic: gauges, and no counter that was never written.
    lines = parse_flush(expect, agent.next_flush(start))
    expect.eq(find(lines, "envoy.server.live", "g", tags()), [1.0], "envoy.server.live gauge")
    expect.eq(find(lines, "envoy.cluster.membership_total", "g", ing), [1.0], "membership_total")
    expect.eq(find(lines, "envoy.cluster.upstream_rq_xx", "c", cls2), [],
              "an unused counter is not sent")

    # First use: the whole count arrives, over however many flushes it spans.
    t1 = time.monotonic()
    c = conns(p.r.ingress)
    for path in ("/status/200", "/status/200", "/status/500"):
        get(c, path)
    wait_until(lambda: sum(find(since(t1), "envoy.cluster.upstream_rq_xx", "c", cls5)) == 1,
               timeout=5, what="the 5xx delta sent")
    wait_until(lambda: sum(find(since(t1), "envoy.cluster.upstream_rq_xx", "c", cls2)) == 2,
               timeout=5, what="the 2xx deltas sent")

    # N more requests right after a flush: the next flush carries exactly N, the one after 0.
    n = 5
    aligned = agent.next_flush(time.monotonic())
    for _ in range(n):
        get(c, "/status/200")
    done = time.monotonic()
    nxt = agent.next_flush(aligned[0])
    expect(done < nxt[0], f"the {n} requests took until {done - aligned[0]:.3f} s after a flush")
    after = parse_flush(expect, agent.next_flush(nxt[0]))
    nxt = parse_flush(expect, nxt)
    for name, tag in (("envoy.cluster.upstream_rq_xx", cls2),
                      ("envoy.cluster.upstream_rq_total", ing),
                      ("envoy.http.downstream_rq_xx", http2),
                      ("envoy.listener.http.downstream_rq_xx", lst2),
                      ("envoy.cluster.upstream_rq", code200)):
        expect.eq(find(nxt, name, "c", tag), [float(n)], f"{name}|#{tag} delta after {n} more")
        expect.eq(find(after, name, "c", tag), [0.0], f"{name}|#{tag} zero delta once used")
    expect.eq(find(after, "envoy.cluster.upstream_rq_xx", "c", cls5), [0.0], "5xx zero delta")
    expect.eq(find(after, "envoy.cluster.upstream_cx_active", "g", ing), [1.0], "cx_active gauge")

    # Timers: one line per bucket that gained samples, at its middle, rate = 1/samples.
    t3 = time.monotonic()
    get(c, "/sleep/120")
    wait_until(lambda: sum(find(since(t3), "envoy.cluster.upstream_rq_total", "c", ing)) == 1,
               timeout=5, what="the slow request flushed")
    slow = since(t3)
    expect.eq(find(slow, "envoy.cluster.upstream_rq_time", "ms", ing), [175.0],
              "rq_time timer of the 120 ms request (bucket 100-250 ms)")
    expect.eq(find(slow, "envoy.http.downstream_rq_time", "ms", prefix), [175.0],
              "downstream_rq_time timer of the 120 ms request")
    everything = since(start)
    mids = {0.25, 0.75, 3.0, 7.5, 17.5, 37.5, 75.0, 175.0, 375.0, 750.0}
    for name, tag, want in (("envoy.cluster.upstream_rq_time", ing, 9),
                            ("envoy.http.downstream_rq_time", prefix, 9),
                            ("envoy.cluster.upstream_cx_connect_ms", ing, 1)):
        timers = [(v, r) for nm, v, k, r, t in everything if (nm, k, t) == (name, "ms", tag)]
        expect(all(v in mids and r and 0 < r <= 1 for v, r in timers), f"{name} lines {timers}")
        expect.eq(round(sum(1 / r for _, r in timers if r)), want,
                  f"{name} samples (sum of 1/rate)")
    if decoy:
        expect.eq(decoy.flushes(), [], "nothing at STATSD_PORT when STATSD_SOCKET_PATH is set")
    expect.check()


# ---- 5. admin ----

def test_admin_listeners(proxy, expect):
    p = proxy()
    i, e = p.r.ingress, p.r.egress
    expect.eq(p.r.admin("/listeners"),
              (200, f"lds_ingress_0.0.0.0_{i}::0.0.0.0:{i}\nlds_egress_0.0.0.0_{e}::0.0.0.0:{e}\n"),
              "/listeners")
    expect.eq(p.json("/listeners?format=json"), {"listener_statuses": [
        {"name": f"lds_{n}_0.0.0.0_{port}",
         "local_address": {"socket_address": {"address": "0.0.0.0", "port_value": port}}}
        for n, port in (("ingress", i), ("egress", e))]}, "/listeners?format=json")
    expect.check()


def test_admin_clusters(proxy, conns, expect):
    p = proxy()
    c = conns(p.r.ingress)
    for path in ("/status/200", "/status/500", "/status/200"):
        get(c, path)
    doc = p.json("/clusters?format=json")
    clusters = {x["name"]: x for x in doc["cluster_statuses"]}
    expect.eq(set(clusters), {p.ing, p.egr}, "cluster_statuses names")
    for name, port, total, errors in ((p.ing, p.app.port, "3", "1"),
                                      (p.egr, p.backend.port, "0", "0")):
        cl = clusters.get(name, {})
        expect.eq(cl.get("observability_name"), name, f"{name} observability_name")
        hosts = cl.get("host_statuses", [])
        if not expect(len(hosts) == 1, f"{name} host_statuses {hosts}"):
            continue
        h = hosts[0]
        expect.eq(h.get("address"),
                  {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                  f"{name} host address")
        stats = {x["name"]: (x["value"], x["type"]) for x in h.get("stats", [])}
        expect.eq(stats.get("rq_total"), (total, "COUNTER"), f"{name} rq_total")
        expect.eq(stats.get("rq_error"), (errors, "COUNTER"), f"{name} rq_error (5xx)")
        expect.eq(stats.get("rq_active"), ("0", "GAUGE"), f"{name} rq_active")
        expect.eq(h.get("health_status"), {"eds_health_status": "HEALTHY"}, f"{name} health")
    status, text = p.r.admin("/clusters")
    lines = set(text.splitlines())
    for line in (f"{p.ing}::observability_name::{p.ing}",
                 f"{p.ing}::127.0.0.1:{p.app.port}::rq_total::3",
                 f"{p.ing}::127.0.0.1:{p.app.port}::rq_error::1",
                 f"{p.ing}::127.0.0.1:{p.app.port}::health_flags::healthy"):
        expect(line in lines, f"/clusters has {line!r}")
    expect.check()


def test_admin_logging(proxy, expect):
    p = proxy()  # the fixture starts remora at debug

    def level():
        return p.json("/server_info")["command_line_options"]["log_level"]

    expect.eq(p.r.admin("/logging", "POST"), (200, "active loggers:\n  remora: debug\n"), "list")
    for name in ("trace", "info", "warning", "error", "critical", "off", "debug"):
        expect.eq(p.r.admin(f"/logging?level={name}", "POST"),
                  (200, f"active loggers:\n  remora: {name}\n"), f"level={name}")
        expect.eq(level(), name, f"/server_info log_level after level={name}")
    expect.eq(p.r.admin("/logging?level=loud", "POST")[0], 400, "bad level")
    expect.eq(p.r.admin("/logging?verbose=1", "POST")[0], 400, "unknown parameter")
    expect.eq(p.r.admin("/logging?level=info")[0], 405, "GET /logging")
    expect.eq(level(), "debug", "level unchanged by the refused requests")
    expect.check()


def test_downstream_bytes_are_what_clients_sent_and_got(proxy, expect):
    """envoy_http_downstream_cx_{rx,tx}_bytes_total, per prefix: exactly the bytes clients sent
    and got on their connections (each closed by remora after its response: all was written)."""
    p = proxy()
    for prefix, port, host in (("ingress", p.r.ingress, "web"),
                               ("egress", p.r.egress, "cart.shop.local")):
        sent = got = 0
        for path in ("/status/200", "/status/500", "/nope" * 300):
            data = request("GET", path, host=host, headers=[("Connection", "close")])
            with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
                c.sendall(data)
                while chunk := c.recv(65536):
                    got += len(chunk)
            sent += len(data)
        s = p.scrape()
        labels = {"envoy_http_conn_manager_prefix": prefix}
        expect.eq(s.value("envoy_http_downstream_cx_rx_bytes_total", **labels), float(sent),
                  f"{prefix} rx bytes")
        expect.eq(s.value("envoy_http_downstream_cx_tx_bytes_total", **labels), float(got),
                  f"{prefix} tx bytes")
        expect.eq(s.types.get("envoy_http_downstream_cx_rx_bytes_total"), "counter", "TYPE")
    expect.check()


def test_admin_reset_counters_zeroes_counters_keeps_gauges(proxy, conns, expect):
    p = proxy(env=TAGS)
    c = conns(p.r.ingress)
    for path in ("/status/200", "/status/500", "/status/200"):
        get(c, path)
    before = p.scrape()
    expect.eq(p.r.admin("/reset_counters", "POST"), (200, "OK\n"), "POST /reset_counters")
    after = p.scrape()
    left = [(n, dict(ls), v) for n, ls, v in after.samples if after.types.get(n) == "counter" and v]
    expect.eq(left, [], "counters after reset")
    ing, addr = {"envoy_cluster_name": p.ing}, {"envoy_listener_address": p.ing_addr}
    for name, labels in (("envoy_http_downstream_cx_active",
                          {"envoy_http_conn_manager_prefix": "ingress"}),
                         ("envoy_listener_downstream_cx_active", addr),
                         ("envoy_cluster_upstream_cx_active", ing),
                         ("envoy_cluster_membership_total", ing),
                         ("envoy_server_concurrency", {}), ("envoy_server_live", {}),
                         ("envoy_cluster_upstream_cx_connect_ms_count", ing)):
        expect.eq(after.value(name, **labels), before.value(name, **labels), f"{name} kept")
    expect.eq(after.value("envoy_cluster_upstream_rq", envoy_response_code="500",
                          envoy_cluster_name=p.ing), 0.0,
              "a per-code counter made by traffic stays, at 0, after a reset")
    get(c, "/status/200")
    again = p.scrape()
    expect.eq(again.value("envoy_http_downstream_rq_xx", envoy_http_conn_manager_prefix="ingress",
                          envoy_response_code_class="2"), 1.0, "counting resumes from 0")
    expect.eq(again.value("envoy_cluster_upstream_rq", envoy_response_code="200",
                          envoy_cluster_name=p.ing), 1.0, "per-code counting resumes from 0")
    expect.check()


def test_admin_drain_listeners(proxy, conns, expect):
    p = proxy()
    c = conns(p.r.ingress)
    assert get(c, "/status/200").status == 200
    expect.eq(p.r.admin("/drain_listeners", "POST"), (200, "OK\n"), "POST /drain_listeners")
    wait_until(lambda: not port_open(p.r.ingress) and not port_open(p.r.egress), timeout=5,
               what="listeners closed to new connections")
    expect.eq(get(c, "/status/200").status, 200, "an open keep-alive connection is still served")
    expect.eq(p.json("/server_info")["state"], "DRAINING", "/server_info state")
    expect.eq(p.r.admin("/ready"), (503, "DRAINING\n"), "/ready")
    expect.eq(p.scrape().value("envoy_server_state"), 1.0,
              "envoy_server_state agrees with /server_info (1 = DRAINING)")
    expect.check()


def test_admin_healthcheck_fail_fails_the_stock_ecs_check(proxy, conns, expect):
    p = proxy()
    ecs = ["sh", "-c", f"curl -s http://127.0.0.1:{p.r.admin_port}/server_info | grep state | "
                       "grep -q LIVE"]

    def ecs_check():
        return subprocess.run(ecs, timeout=10).returncode

    expect.eq(ecs_check(), 0, "ECS health check while LIVE")
    expect.eq(p.r.admin("/healthcheck/fail", "POST"), (200, "OK\n"), "POST /healthcheck/fail")
    expect(ecs_check() != 0, "ECS health check passes after /healthcheck/fail")
    info = p.json("/server_info")
    expect.eq((info["state"], info["health_check_failed"]), ("DRAINING", True), "/server_info")
    expect.eq(p.r.admin("/ready"), (503, "DRAINING\n"), "/ready")
    s = p.scrape()
    expect.eq((s.value("envoy_server_live"), s.value("envoy_server_state")), (0.0, 1.0),
              "envoy_server_live, envoy_server_state")
    expect.eq(get(conns(p.r.ingress), "/status/200").status, 200, "traffic still served")
    expect.eq(p.r.admin("/healthcheck/ok", "POST"), (200, "OK\n"), "POST /healthcheck/ok")
    expect.eq(ecs_check(), 0, "ECS health check after /healthcheck/ok")
    s = p.scrape()
    expect.eq((s.value("envoy_server_live"), s.value("envoy_server_state")), (1.0, 0.0),
              "live again")
    expect.check()


def test_admin_memory_help_runtime(proxy, expect):
    p = proxy()
    mem = p.json("/memory")
    keys = {"allocated", "heap_size", "total_thread_cache", "pageheap_unmapped", "pageheap_free",
            "total_physical_bytes"}
    expect(keys <= set(mem), f"/memory keys {sorted(mem)}")
    expect(all(isinstance(mem.get(k), str) and mem[k].isdigit() for k in keys),
           f"/memory values are uint64 strings: {mem}")
    if all(str(mem.get(k, "")).isdigit() for k in ("allocated", "heap_size")):
        expect((0 < int(mem["allocated"]) or not GLIBC_MALLOC) and
               int(mem["allocated"]) <= int(mem["heap_size"]), f"/memory {mem}")
    status, text = p.r.admin("/help")
    expect.eq(status, 200, "/help")
    listed = dict(re.findall(r"^  (/\S+?)( \(POST\))?:", text, re.M))
    for path in ("/ready", "/server_info", "/stats", "/stats/prometheus", "/clusters",
                 "/listeners", "/config_dump", "/certs", "/memory", "/runtime", "/help"):
        expect.eq(listed.get(path), "", f"/help lists {path} (GET)")
    for path in ("/logging", "/reset_counters", "/drain_listeners", "/healthcheck/fail",
                 "/healthcheck/ok", "/quitquitquit"):
        expect.eq(listed.get(path), " (POST)", f"/help lists {path} (POST)")
    expect.eq(p.json("/runtime"), {"layers": [], "entries": {}}, "/runtime")
    expect.check()


def test_admin_mutations_need_post(proxy, conns, expect):
    p = proxy()
    get(conns(p.r.ingress), "/status/200")
    for path in ("/logging?level=info", "/reset_counters", "/drain_listeners",
                 "/healthcheck/fail", "/healthcheck/ok", "/quitquitquit"):
        expect.eq(p.r.admin(path)[0], 405, f"GET {path}")
    # and none of them did anything
    expect.eq(p.json("/server_info")["command_line_options"]["log_level"], "debug", "log level")
    expect.eq(p.r.admin("/ready"), (200, "LIVE\n"), "/ready")
    expect(port_open(p.r.ingress), "listener still open")
    expect.eq(p.scrape().value("envoy_http_downstream_rq_total",
                               envoy_http_conn_manager_prefix="ingress"), 1.0, "counters kept")
    expect(p.r.proc.poll() is None, "remora still running")
    expect.check()
