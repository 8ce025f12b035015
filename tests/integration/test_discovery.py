"""Cloud Map-style discovery against a real DNS server (Knot on loopback) whose records change
at run time: registration and deregistration at TTL pace, every DNS failure mode, truncated
answers, SRV priority and weight, health checks and outlier detection with real upstreams."""
import json
import signal
import threading
import time

import pytest

from conftest import wait_until
from rawhttp import Conn, request


def srv(instance, port, ttl=1, prio=1, weight=1):
    return f"backend {ttl} SRV {prio} {weight} {port} {instance}.backend.ns.local."


def addr(instance, ip="127.0.0.1", ttl=1):
    return f"{instance}.backend {ttl} A {ip}"


def mesh(knot, listener_port=9, health=None, outlier=None, retry=None, hold_ms=30000,
         discovery=None):
    listener = {"portMapping": {"port": listener_port, "protocol": "http"}}
    if health:
        listener["healthCheck"] = health
    if outlier:
        listener["outlierDetection"] = outlier
    http = {"match": {"prefix": "/"}, "action": {"weightedTargets": [{"virtualNode": "cart", "weight": 1}]}}
    if retry:
        http["retryPolicy"] = retry
    return {
        "mesh": {"meshName": "shop"},
        "virtualNodes": [
            {"virtualNodeName": "web", "spec": {
                "listeners": [{"portMapping": {"port": 1, "protocol": "http"}}],
                "backends": [{"virtualService": {"virtualServiceName": "cart.shop.local"}}]}},
            {"virtualNodeName": "cart", "spec": {
                "listeners": [listener],
                "serviceDiscovery": discovery or {"awsCloudMap": {"namespaceName": "ns.local",
                                                                  "serviceName": "backend"}}}},
        ],
        "virtualServices": [{"virtualServiceName": "cart.shop.local", "spec": {
            "provider": {"virtualRouter": {"virtualRouterName": "cart"}}}}],
        "virtualRouters": [{"virtualRouterName": "cart", "spec": {
            "listeners": [{"portMapping": {"port": 80, "protocol": "http"}}]}}],
        "routes": [{"virtualRouterName": "cart", "routeName": "all", "spec": {"httpRoute": http}}],
        "proxy": {"node": "web", "dns": {"servers": [knot.server],
                                          "hold": {"unit": "ms", "value": hold_ms}}},
    }


def served_by(r, n=1, path="/echo"):
    """Which upstreams answered n sequential requests (name -> count; "503" etc. for errors)."""
    c = Conn(r.egress)
    out = {}
    for _ in range(n):
        c.send(request("GET", path))
        resp = c.read_response()
        key = json.loads(resp.body)["server"] if resp.status == 200 else str(resp.status)
        out[key] = out.get(key, 0) + 1
    return out


def cluster_stat(r, suffix, port=9):
    return r.stats()[f"cluster.cds_egress_shop_cart_http_{port}.{suffix}"]


def test_register_and_deregister_at_ttl_pace(knot, upstream, remora):
    i1, i2 = upstream("i-1"), upstream("i-2")
    k = knot([srv("i-1", i1.port), addr("i-1")])
    r = remora(mesh(k))
    assert served_by(r, 4) == {"i-1": 4}
    # Register i-2: it receives traffic within TTL (1 s) + 1 s.
    k.change(add=[addr("i-2"), srv("i-2", i2.port)])
    t0 = time.monotonic()
    wait_until(lambda: "i-2" in served_by(r, 4), timeout=5, what="i-2 registered")
    assert time.monotonic() - t0 < 2.5
    # Two slow requests in flight, one on each instance (round-robin); i-2 is deregistered
    # meanwhile, and both complete.
    statuses = []

    def slow():
        c = Conn(r.egress)
        c.send(request("GET", "/sleep/1500"))  # slow on purpose: in flight across the removal
        statuses.append(c.read_response().status)

    before = i2.stats()["requests"]
    threads = [threading.Thread(target=slow) for _ in range(2)]
    for t in threads:
        t.start()
    wait_until(lambda: i2.stats()["requests"] > before, timeout=5, what="slow request on i-2")
    k.change(remove=[srv("i-2", i2.port), addr("i-2")])
    t0 = time.monotonic()
    wait_until(lambda: cluster_stat(r, "membership_total") == 1, timeout=5, what="i-2 removed")
    assert time.monotonic() - t0 < 2.5
    assert served_by(r, 6) == {"i-1": 6}
    for t in threads:
        t.join(10)
    assert statuses == [200, 200], "in-flight requests to the removed instance finished"


def test_discovery_during_a_drain_wakes_no_finished_worker(knot, upstream, remora):
    """Two workers; one carries a slow request through a SIGTERM, the other has nothing to
    finish and is done at once. A DNS change published meanwhile wakes the workers: the one
    still serving adopts it, the finished one is left alone (the build before this test
    aborted here, writing to the finished worker's closed loop), and the slow request gets
    its answer."""
    i1, i2 = upstream("i-1"), upstream("i-2")
    k = knot([srv("i-1", i1.port), addr("i-1")])
    r = remora(mesh(k), workers=2)
    assert served_by(r, 2) == {"i-1": 2}
    slow = Conn(r.egress)
    before = i1.stats()["requests"]
    slow.send(request("GET", "/sleep/2500"))
    wait_until(lambda: i1.stats()["requests"] > before, what="the slow request at i-1")
    r.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: "draining" in r.read_log(), what="the drain begun")
    k.change(add=[addr("i-2"), srv("i-2", i2.port)])
    wait_until(lambda: r.proc.poll() is not None or cluster_stat(r, "membership_total") == 2,
               timeout=5, what="i-2 published during the drain")
    resp = slow.read_response()
    assert resp.status == 200 and resp.body == b"slept\n"
    slow.close()
    assert r.proc.wait(30) == 0, r.read_log()[-3000:]


@pytest.mark.parametrize("fault", ["servfail", "timeout", "stopped"])
def test_dns_failures_keep_the_last_good_set(knot, upstream, remora, fault):
    i1 = upstream("i-1")
    k = knot([srv("i-1", i1.port), addr("i-1")])
    r = remora(mesh(k))
    assert served_by(r, 2) == {"i-1": 2}
    {"servfail": k.servfail, "timeout": k.pause, "stopped": k.stop}[fault]()
    result = {"servfail": "servfail", "timeout": "timeout", "stopped": "unreachable"}[fault]
    wait_until(lambda: r.stats()[f"remora.dns.cds_egress_shop_cart_http_9.{result}"] >= 2,
               timeout=15, what=f"two {result} answers")
    assert served_by(r, 10) == {"i-1": 10}
    assert cluster_stat(r, "membership_total") == 1
    if fault == "timeout":
        k.resume()


def test_nxdomain_empties_the_set_after_the_hold(knot, upstream, remora):
    i1 = upstream("i-1")
    k = knot([srv("i-1", i1.port), addr("i-1")])
    r = remora(mesh(k, hold_ms=2000))
    assert served_by(r, 2) == {"i-1": 2}
    k.change(remove=[srv("i-1", i1.port), addr("i-1")])  # backend.ns.local: NXDOMAIN now
    wait_until(lambda: r.stats()["remora.dns.cds_egress_shop_cart_http_9.nxdomain"] >= 1,
               timeout=5, what="NXDOMAIN seen")
    assert served_by(r, 2) == {"i-1": 2}, "held for 2 s"
    wait_until(lambda: cluster_stat(r, "membership_total") == 0, timeout=6, what="emptied")
    c = Conn(r.egress)
    c.send(request("GET", "/echo"))
    resp = c.read_response()
    assert resp.status == 503 and b"no healthy upstream" in resp.body


def test_40_record_answer_over_tcp(knot, upstream, remora):
    records = []
    for i in range(40):
        records += [srv(f"i-{i}", 20000 + i), addr(f"i-{i}", f"127.0.1.{i + 1}")]
    k = knot(records)
    r = remora(mesh(k))
    wait_until(lambda: cluster_stat(r, "membership_total") == 40, timeout=5, what="40 endpoints")
    _, clusters = r.admin("/clusters")
    assert "127.0.1.40:20039::health_flags::healthy" in clusters


def test_srv_priority_and_weight(knot, upstream, remora):
    a, b, c = upstream("a"), upstream("b"), upstream("c")
    k = knot([srv("a", a.port, prio=1, weight=3), addr("a"),
              srv("b", b.port, prio=1, weight=1), addr("b"),
              srv("c", c.port, prio=2, weight=100), addr("c")])
    r = remora(mesh(k))
    counts = served_by(r, 400)
    assert "c" not in counts, "priority 2 is a fallback only"
    assert 250 <= counts["a"] <= 350 and 50 <= counts["b"] <= 150, counts
    # Priority 1 gone: the fallback takes over.
    k.change(remove=[srv("a", a.port, prio=1, weight=3), srv("b", b.port, prio=1, weight=1)])
    wait_until(lambda: served_by(r, 3) == {"c": 3}, timeout=5, what="fallback to priority 2")


def test_cloud_map_nodata_falls_back_to_a_records(knot, upstream, remora):
    app = upstream("plain")
    k = knot(["backend 1 A 127.0.0.1"])
    r = remora(mesh(k, listener_port=app.port))
    assert served_by(r, 2) == {"plain": 2}


def test_dns_discovery_of_a_hostname(knot, upstream, remora):
    app = upstream("by-name")
    k = knot(["cart 1 A 127.0.0.1"])
    r = remora(mesh(k, listener_port=app.port,
                    discovery={"dns": {"hostname": "cart.ns.local", "responseType": "ENDPOINTS"}}))
    assert served_by(r, 2) == {"by-name": 2}
    _, prom = r.admin("/stats/prometheus")
    assert f'envoy_cluster_membership_total{{envoy_cluster_name="cds_egress_shop_cart_http_{app.port}"}} 1' in prom
    assert f'remora_dns_answers_total{{envoy_cluster_name="cds_egress_shop_cart_http_{app.port}",result="ok"}}' in prom


def test_ready_waits_for_the_first_answer(knot, upstream, tmp_path):
    import subprocess
    import urllib.request
    from conftest import REMORA, free_ports
    i1 = upstream("i-1")
    k = knot([srv("i-1", i1.port), addr("i-1")])
    k.pause()  # the first query times out (2 tries: 500 ms, then 1 s) before remora is ready
    cfg = tmp_path / "m.json"
    cfg.write_text(json.dumps(mesh(k)))
    ports = free_ports(3)
    t0 = time.monotonic()
    p = subprocess.Popen([REMORA, "--config", str(cfg), "--ingress-port", str(ports[0]),
                          "--egress-port", str(ports[1]), "--admin", f"127.0.0.1:{ports[2]}",
                          "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def ready():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{ports[2]}/ready", timeout=1) as f:
                return f.status
        except urllib.error.HTTPError as e:
            return e.code

    try:
        wait_until(lambda: ready() in (200, 503), what="admin up")
        assert ready() == 503
        with urllib.request.urlopen(f"http://127.0.0.1:{ports[2]}/server_info", timeout=1) as f:
            assert json.loads(f.read())["state"] == "PRE_INITIALIZING"
        wait_until(lambda: ready() == 200, timeout=5, what="ready after the DNS timeout")
        assert time.monotonic() - t0 > 1.0
    finally:
        k.resume()
        p.terminate()
        assert p.wait(10) == 0


RETRY = {"maxRetries": 2, "perRetryTimeout": {"unit": "ms", "value": 1000},
         "httpRetryEvents": ["gateway-error", "stream-error"], "tcpRetryEvents": ["connection-error"]}


def three_instances(knot, upstream):
    ups = [upstream(f"i-{n}") for n in range(3)]
    records = []
    for n, u in enumerate(ups):
        records += [srv(f"i-{n}", u.port), addr(f"i-{n}")]
    return ups, knot(records, ttl=30)


def steady_load(r, seconds):
    """Sequential requests for `seconds`; returns the list of (time, status) seen."""
    c = Conn(r.egress)
    seen, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        c.send(request("GET", "/echo"))
        resp = c.read_response()
        seen.append((time.monotonic(), resp.status))
        if resp.header("connection") == "close":
            c = Conn(r.egress)
    return seen


def test_killing_an_instance_with_retries_loses_no_request(knot, upstream, remora):
    ups, k = three_instances(knot, upstream)
    r = remora(mesh(k, retry=RETRY))
    threading.Timer(0.5, ups[1].stop).start()  # the fault, injected mid-load
    seen = steady_load(r, 3)
    assert len(seen) > 100
    assert [s for _, s in seen if s != 200] == []
    assert cluster_stat(r, "upstream_rq_retry") >= 1


def three_behind_outlier_detection(knot, upstream, remora):
    """Three instances; two failures in a row eject one for 30 s, at most half of them at once;
    no retries, so that the client sees every failure."""
    ups, k = three_instances(knot, upstream)
    outlier = {"maxServerErrors": 2, "interval": {"unit": "s", "value": 1},
               "baseEjectionDuration": {"unit": "s", "value": 30}, "maxEjectionPercent": 50}
    cfg = mesh(k, outlier=outlier)
    cfg["proxy"]["defaultRetryPolicy"] = False
    return ups, remora(cfg)


def test_outlier_detection_ejects_a_dead_instance(knot, upstream, remora):
    ups, r = three_behind_outlier_detection(knot, upstream, remora)
    ups[1].stop()
    seen = steady_load(r, 2)
    failures = [t for t, s in seen if s != 200]
    # Sequential requests take turns over the three instances; the dead one's first two
    # requests fail (connection refused, 503), and the second consecutive failure ejects it
    # at once (discovery/cluster.c), so the client sees exactly two failures.
    assert [s for _, s in seen if s != 200] == [503, 503], seen
    assert all(s == 200 for t, s in seen if t > failures[-1])
    assert cluster_stat(r, "outlier_detection_ejections_enforced_total") == 1
    # Envoy's name by reason: remora ejects on consecutive 5xx and connect failures only.
    assert cluster_stat(r, "outlier_detection.ejections_enforced_consecutive_5xx") == 1
    assert cluster_stat(r, "outlier_detection_ejections_detected_consecutive_5xx") == 1
    assert cluster_stat(r, "outlier_detection_ejections_overflow") == 0
    # Both failed requests waited on a connection that was refused.
    assert cluster_stat(r, "upstream_rq_pending_failure_eject") == 2
    assert cluster_stat(r, "upstream_cx_connect_fail") == 2
    _, clusters = r.admin("/clusters")
    assert f"127.0.0.1:{ups[1].port}::health_flags::/failed_outlier_check" in clusters
    assert cluster_stat(r, "membership_healthy") == 2


def test_an_ejection_past_max_ejection_percent_is_detected_not_enforced(knot, upstream, remora):
    """Two of three instances die and maxEjectionPercent (50) allows one ejection: the first to
    fail twice in a row is ejected; the other keeps its traffic, and each failure of its streak
    from the second on is an ejection detected and not enforced (ejections_overflow)."""
    ups, r = three_behind_outlier_detection(knot, upstream, remora)
    ups[1].stop()
    ups[2].stop()
    failures = sum(s != 200 for _, s in steady_load(r, 1))
    assert failures >= 4, failures  # two each before the detector acts on both
    assert cluster_stat(r, "outlier_detection_ejections_enforced_total") == 1
    assert cluster_stat(r, "outlier_detection_ejections_detected_consecutive_5xx") == failures - 2
    assert cluster_stat(r, "outlier_detection_ejections_overflow") == failures - 3
    assert cluster_stat(r, "membership_healthy") == 2


def test_health_checks_take_a_dead_instance_out_and_bring_it_back(knot, upstream, remora):
    ups, k = three_instances(knot, upstream)
    health = {"protocol": "http", "path": "/status/200", "intervalMillis": 5000,
              "timeoutMillis": 2000, "healthyThreshold": 2, "unhealthyThreshold": 2}
    r = remora(mesh(k, health=health))
    port = ups[1].port
    ups[1].stop()
    wait_until(lambda: cluster_stat(r, "membership_healthy") == 2, timeout=15,
               what="health check marks it down")
    counts = served_by(r, 30)
    assert counts.get("503", 0) == 0 and "i-1" not in counts, counts
    # It comes back on the same port: up again after healthyThreshold (2) good checks.
    import os
    import subprocess
    import sys
    back = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(__file__), "upstream.py"),
                             "--port", str(port), "--name", "i-1"], stdout=subprocess.DEVNULL)
    try:
        wait_until(lambda: cluster_stat(r, "membership_healthy") == 3, timeout=20,
                   what="health check brings it back")
        assert "i-1" in served_by(r, 9)
    finally:
        back.terminate()
        back.wait(5)


def test_loadbalancer_response_type_is_one_endpoint(knot, upstream, remora):
    app = upstream("lb")
    k = knot(["cart 1 A 127.0.0.1", "cart 1 A 127.0.0.2"])
    r = remora(mesh(k, listener_port=app.port,
                    discovery={"dns": {"hostname": "cart.ns.local", "responseType": "LOADBALANCER"}}))
    assert cluster_stat(r, "membership_total", app.port) == 1
    assert served_by(r, 3) == {"lb": 3}


@pytest.mark.parametrize("dual_stack", [False, True], ids=["ipv4", "dual-stack"])
def test_an_answer_of_exactly_8_may_be_a_route53_subset(dual_stack, knot, upstream, remora):
    """Route 53 MULTIVALUE returns at most 8 of many instances: who is missing from an answer of
    8 is held; from any other answer, gone at once. Dual-stack instances have an A and an AAAA
    each: 8 SRV records are 16 endpoints, and still a possible subset. (Knot's answer of 9 such
    targets has no room for all 18 Additional records: a target missing its AAAA there while
    others have theirs is asked for it.)"""
    records, per = [], 2 if dual_stack else 1
    for i in range(9):
        records += [srv(f"i-{i}", 21000 + i), addr(f"i-{i}", f"127.0.2.{i + 1}")]
        if dual_stack:
            records.append(f"i-{i}.backend 1 AAAA fd00::{i + 1}")
    k = knot(records)
    r = remora(mesh(k, hold_ms=5000))
    assert cluster_stat(r, "membership_total") == 9 * per
    k.change(remove=[srv("i-8", 21008)])  # 8 left: possibly a subset, i-8 held
    ok = "remora.dns.cds_egress_shop_cart_http_9.ok"
    seen = r.stats()[ok]
    wait_until(lambda: r.stats()[ok] >= seen + 2, timeout=5, what="two answers of 8")
    assert cluster_stat(r, "membership_total") == 9 * per
    wait_until(lambda: cluster_stat(r, "membership_total") == 8 * per, timeout=8, what="held, then dropped")
    k.change(remove=[srv("i-7", 21007)])  # 7: a complete answer, i-7 goes at once
    wait_until(lambda: cluster_stat(r, "membership_total") == 7 * per, timeout=2.5, what="dropped at once")


def test_a_failed_address_lookup_keeps_its_endpoint_for_the_hold(knot, upstream, remora):
    """An SRV target in another zone is looked up after the SRV answer; when that lookup fails
    (SERVFAIL) while the SRV answer is fine, the endpoint it had found stays for the hold, as a
    failed round keeps the last good set, then goes."""
    i0, t = upstream("i-0"), upstream("t")
    k = knot([srv("i-0", i0.port), addr("i-0"), f"backend 1 SRV 1 1 {t.port} t.other.local."],
             zones={"other.local": ["t 1 A 127.0.0.1"]})
    r = remora(mesh(k, hold_ms=4000))
    wait_until(lambda: cluster_stat(r, "membership_total") == 2, timeout=5, what="both targets")
    k.servfail("other.local")
    servfail = "remora.dns.cds_egress_shop_cart_http_9.servfail"
    wait_until(lambda: r.stats().get(servfail, 0) >= 2, timeout=6, what="two failed lookups of t")
    assert cluster_stat(r, "membership_total") == 2, "t held"
    wait_until(lambda: cluster_stat(r, "membership_total") == 1, timeout=6, what="t dropped after the hold")
