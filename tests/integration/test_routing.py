"""Routing like App Mesh's Envoy, with real upstreams (one per version): weighted canary splits,
header routing by priority, every answer for what matches nothing, retries and timeouts."""
import asyncio
import json
import os
import subprocess
import time

import pytest

from conftest import REMORA, wait_until
from rawhttp import Conn, request


def canary_mesh(versions, routes, egress_filter="DROP_ALL"):
    """web -> cart.shop.local -> router cart (port 80) -> `routes`; versions: {name: port}."""
    nodes = [{"virtualNodeName": "web", "spec": {
        "listeners": [{"portMapping": {"port": 1, "protocol": "http"}}],
        "backends": [{"virtualService": {"virtualServiceName": "cart.shop.local"}}]}}]
    for name, port in versions.items():
        nodes.append({"virtualNodeName": name, "spec": {
            "listeners": [{"portMapping": {"port": port, "protocol": "http"}}],
            "serviceDiscovery": {"dns": {"hostname": "127.0.0.1"}}}})
    return {
        "mesh": {"meshName": "shop", "spec": {"egressFilter": {"type": egress_filter}}},
        "virtualNodes": nodes,
        "virtualServices": [{"virtualServiceName": "cart.shop.local", "spec": {
            "provider": {"virtualRouter": {"virtualRouterName": "cart"}}}}],
        "virtualRouters": [{"virtualRouterName": "cart", "spec": {
            "listeners": [{"portMapping": {"port": 80, "protocol": "http"}}]}}],
        "routes": [dict(r, virtualRouterName="cart") for r in routes],
        "proxy": {"node": "web"},
    }


def weighted(name, weights, priority=None, match=None, retry=None, timeout=None):
    http = {"match": match or {"prefix": "/"},
            "action": {"weightedTargets": [{"virtualNode": n, "weight": w} for n, w in weights]}}
    if retry:
        http["retryPolicy"] = retry
    if timeout:
        http["timeout"] = timeout
    spec = {"httpRoute": http}
    if priority is not None:
        spec["priority"] = priority
    return {"routeName": name, "spec": spec}


@pytest.fixture
def versions(upstream):
    def start(*names):
        return {n: upstream(n) for n in names}
    return start


async def _count(port, total, conns, path="/echo", headers=()):
    counts, failures = {}, 0

    async def client(n):
        nonlocal failures
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(n):
            writer.write(request("GET", path, headers=headers))
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            length = int([h for h in head.split(b"\r\n")
                          if h.lower().startswith(b"content-length")][0].split(b":")[1])
            body = await reader.readexactly(length)
            if not head.startswith(b"HTTP/1.1 200"):
                failures += 1
                continue
            server = json.loads(body)["server"]
            counts[server] = counts.get(server, 0) + 1
        writer.close()

    await asyncio.gather(*(client(total // conns) for _ in range(conns)))
    return counts, failures


def split(port, total=2000, conns=20, **kw):
    return asyncio.run(_count(port, total, conns, **kw))


@pytest.mark.parametrize("weights", [
    {"cart-v1": 90, "cart-v2": 10},
    {"cart-v1": 50, "cart-v2": 50},
    {"cart-v1": 0, "cart-v2": 100},
    {"cart-v1": 60, "cart-v2": 30, "cart-v3": 10},
])
def test_weighted_split_is_exact_on_every_worker(versions, remora, weights):
    """The schedule is smooth weighted round-robin over sum(weights) picks (100 here), walked
    by one atomic cursor per route that every worker shares (routing/route.c: pick()), and the
    cursor starts at 0 with the table. 2,000 requests are 20 whole schedules, so the counts are
    exact whichever worker or connection each request lands on."""
    ups = versions(*weights)
    cfg = canary_mesh({n: u.port for n, u in ups.items()},
                      [weighted("canary", list(weights.items()))])
    r = remora(cfg, workers=2)
    counts, failures = split(r.egress)
    assert failures == 0
    total = sum(weights.values())
    assert 2000 % total == 0
    expected = {name: 2000 * w // total for name, w in weights.items() if w}
    assert counts == expected, counts
    st = r.stats()
    for name in weights:
        assert st[f"remora.route.cart.canary.{name}.picks"] == expected.get(name, 0), name
        assert st[f"remora.route.cart.canary.{name}.rq_2xx"] == expected.get(name, 0), name
    _, prom = r.admin("/stats/prometheus")
    for name in weights:
        assert (f'remora_route_target_picks_total{{router="cart",route="canary",target="{name}"}} '
                f'{expected.get(name, 0)}') in prom, name


def test_header_canary_beats_catch_all_by_priority(versions, remora):
    ups = versions("cart-v1", "cart-v2")
    cfg = canary_mesh({n: u.port for n, u in ups.items()}, [
        weighted("catch-all", [("cart-v1", 100)], priority=100),
        weighted("canary-header", [("cart-v2", 100)], priority=1,
                 match={"prefix": "/", "headers": [{"name": "x-canary", "match": {"exact": "true"}}]}),
    ])
    r = remora(cfg)
    counts, _ = split(r.egress, total=100, conns=2, headers=[("x-canary", "true")])
    assert counts == {"cart-v2": 100}
    counts, _ = split(r.egress, total=100, conns=2)
    assert counts == {"cart-v1": 100}


def test_path_normalized_before_matching_and_forwarded(versions, remora):
    ups = versions("cart-v1", "cart-v2")
    cfg = canary_mesh({n: u.port for n, u in ups.items()}, [
        weighted("api", [("cart-v2", 1)], priority=0, match={"prefix": "/api/"}),
        weighted("rest", [("cart-v1", 1)], priority=1),
    ])
    r = remora(cfg)
    c = Conn(r.egress)
    c.send(request("GET", "/static/..//api/./x?y=1"))
    seen = json.loads(c.read_response().body)
    assert seen["server"] == "cart-v2"
    assert seen["target"] == "/api/x?y=1"


def test_unmatched_requests_get_clear_answers(versions, remora):
    ups = versions("cart-v1", "cart-v2")
    cfg = canary_mesh({n: u.port for n, u in ups.items()}, [
        weighted("only-get", [("cart-v1", 1)], match={"prefix": "/", "method": "GET"}),
        weighted("zero", [("cart-v1", 0), ("cart-v2", 0)], match={"prefix": "/zero"}, priority=0),
    ])
    r = remora(cfg)
    c = Conn(r.egress)
    c.send(request("POST", "/x", body=b""))
    resp = c.read_response()
    assert resp.status == 404 and b"no route matches" in resp.body
    c.send(request("GET", "/zero"))
    resp = c.read_response()
    assert resp.status == 503 and b"weight 0" in resp.body
    c.send(request("GET", "/x", host="elsewhere.example"))
    resp = c.read_response()
    assert resp.status == 404 and b"elsewhere.example" in resp.body


def test_allow_all_passes_unknown_hosts_to_their_destination(versions, remora, upstream):
    ups = versions("cart-v1")
    outside = upstream("outside")
    cfg = canary_mesh({"cart-v1": ups["cart-v1"].port}, [weighted("r", [("cart-v1", 1)])],
                      egress_filter="ALLOW_ALL")
    r = remora(cfg)
    c = Conn(r.egress)
    c.send(request("GET", "/echo", host=f"127.0.0.1:{outside.port}"))
    assert json.loads(c.read_response().body)["server"] == "outside"
    c.send(request("GET", "/echo", host="cart.shop.local"))
    assert json.loads(c.read_response().body)["server"] == "cart-v1"
    for me in ("127.0.0.1", "[::ffff:127.0.0.1]"):
        c.send(request("GET", "/echo", host=f"{me}:{r.egress}"))
        assert c.read_response().status == 508, f"a request to remora itself ({me}) is a loop"
    assert r.stats()["http.egress.downstream_rq_total"] == 4, "each looked at once, not relayed"
    c.send(request("GET", "/echo", host="unresolvable.example"))
    assert c.read_response().status == 502


RETRY = {"maxRetries": 2, "perRetryTimeout": {"unit": "ms", "value": 400},
         "httpRetryEvents": ["server-error", "stream-error"],
         "tcpRetryEvents": ["connection-error"]}


def test_retry_turns_a_failed_first_attempt_into_200(versions, remora):
    ups = versions("cart-v1")
    cfg = canary_mesh({"cart-v1": ups["cart-v1"].port}, [weighted("r", [("cart-v1", 1)], retry=RETRY)])
    r = remora(cfg)
    c = Conn(r.egress)
    # First, on a fresh upstream connection (on a pooled one a close would be a stale-connection
    # retry, which is not the policy's): the upstream closes without answering.
    c.send(request("GET", "/fail-once/b/reset"))
    assert c.read_response().status == 200
    c.send(request("GET", "/fail-once/a/503"))
    resp = c.read_response()
    assert resp.status == 200, resp.body
    body = b"x" * 5000
    c.send(request("POST", "/fail-once/c/500", body=body))
    resp = c.read_response()
    assert resp.status == 200 and json.loads(resp.body)["length"] == 5000
    st = r.stats()
    port = ups["cart-v1"].port
    assert st[f"cluster.cds_egress_shop_cart-v1_http_{port}.upstream_rq_retry"] == 3
    assert st[f"cluster.cds_egress_shop_cart-v1_http_{port}.upstream_rq_retry_success"] == 3
    assert st["remora.route.cart.r.cart-v1.retries"] == 3
    _, prom = r.admin("/stats/prometheus")
    assert f'envoy_cluster_upstream_rq_retry{{envoy_cluster_name="cds_egress_shop_cart-v1_http_{port}"}} 3' in prom


def test_no_retry_without_policy_or_beyond_max(versions, remora):
    ups = versions("cart-v1")
    one = dict(RETRY, maxRetries=1)
    cfg = canary_mesh({"cart-v1": ups["cart-v1"].port}, [
        weighted("none", [("cart-v1", 1)], match={"prefix": "/none"}, priority=0),
        weighted("r", [("cart-v1", 1)], retry=one, priority=1),
    ])
    r = remora(cfg)
    c = Conn(r.egress)
    c.send(request("GET", "/none/../fail-once/k/503"))  # normalizes to /fail-once: route r
    assert c.read_response().status == 200
    c.send(request("GET", "/none/x"))
    assert c.read_response().status == 200
    c.send(request("GET", "/status/503"))  # always 503: one retry, then the 503 is relayed
    assert c.read_response().status == 503
    assert ups["cart-v1"].stats()["requests"] == 2 + 1 + 2


def test_large_bodies_are_not_replayed(versions, remora):
    ups = versions("cart-v1")
    cfg = canary_mesh({"cart-v1": ups["cart-v1"].port}, [weighted("r", [("cart-v1", 1)], retry=RETRY)])
    r = remora(cfg)
    c = Conn(r.egress)
    c.send(request("POST", "/fail-once/big/503", body=b"y" * (200 * 1024)))
    assert c.read_response().status == 503, "a body past the replay buffer is not sent twice"


def test_per_try_timeout_retries_then_succeeds(versions, remora):
    ups = versions("cart-v1")
    cfg = canary_mesh({"cart-v1": ups["cart-v1"].port}, [weighted("r", [("cart-v1", 1)], retry=RETRY)])
    r = remora(cfg)
    c = Conn(r.egress)
    start = time.monotonic()
    c.send(request("GET", "/slow-once/t/3000"))
    resp = c.read_response()
    elapsed = time.monotonic() - start
    assert resp.status == 200 and resp.body != b"slow\n"
    assert 0.35 < elapsed < 2.0, elapsed
    port = ups["cart-v1"].port
    st = r.stats()
    cluster = f"cluster.cds_egress_shop_cart-v1_http_{port}"
    assert st[f"{cluster}.upstream_rq_per_try_timeout"] == 1
    assert st[f"{cluster}.upstream_rq_retry"] == 1
    assert st[f"{cluster}.upstream_rq_retry_success"] == 1
    assert ups["cart-v1"].stats()["requests"] == 2


def test_per_try_timeouts_exhausted_give_504(versions, remora):
    ups = versions("cart-v1")
    cfg = canary_mesh({"cart-v1": ups["cart-v1"].port}, [weighted("r", [("cart-v1", 1)], retry=RETRY)])
    r = remora(cfg)
    c = Conn(r.egress)
    start = time.monotonic()
    c.send(request("GET", "/sleep/3000"))
    resp = c.read_response()
    elapsed = time.monotonic() - start
    assert resp.status == 504
    assert 1.1 < elapsed < 2.5, elapsed  # three tries of 400 ms
    port = ups["cart-v1"].port
    st = r.stats()
    cluster = f"cluster.cds_egress_shop_cart-v1_http_{port}"
    assert st[f"{cluster}.upstream_rq_per_try_timeout"] == 3
    assert st[f"{cluster}.upstream_rq_retry"] == 2
    assert st[f"{cluster}.upstream_rq_retry_success"] == 0
    assert st[f"{cluster}.upstream_rq_retry_limit_exceeded"] == 1
    assert st["http.egress.downstream_rq_timeout"] == 1
    assert ups["cart-v1"].stats()["requests"] == 3


def test_route_per_request_timeout_gives_504_on_time(versions, remora):
    ups = versions("cart-v1")
    cfg = canary_mesh({"cart-v1": ups["cart-v1"].port}, [
        weighted("r", [("cart-v1", 1)], timeout={"perRequest": {"unit": "ms", "value": 600}})])
    r = remora(cfg)
    c = Conn(r.egress)
    start = time.monotonic()
    c.send(request("GET", "/sleep/3000"))
    assert c.read_response().status == 504
    assert 0.5 < time.monotonic() - start < 2.0


def test_route_idle_timeout_ends_a_stalled_upload(versions, remora):
    ups = versions("cart-v1")
    cfg = canary_mesh({"cart-v1": ups["cart-v1"].port}, [
        weighted("r", [("cart-v1", 1)], timeout={"idle": {"unit": "ms", "value": 500}})])
    r = remora(cfg)
    c = Conn(r.egress)
    start = time.monotonic()
    c.send(request("POST", "/upload", headers=[("Content-Length", "1000")]) + b"x" * 10)
    resp = c.read_response()
    assert resp.status == 408
    assert 0.4 < time.monotonic() - start < 3.0
    assert c.closed_by_peer()
    wait_until(lambda: ups["cart-v1"].stats()["aborted_uploads"] == 1, what="upstream aborted")


def test_ingress_connection_pool_overflow_is_503(upstream, remora):
    from conftest import mesh_config
    app, cart = upstream("app"), upstream("cart")
    cfg = mesh_config(app.port, cart.port)
    cfg["virtualNodes"][0]["spec"]["listeners"][0]["connectionPool"] = {
        "http": {"maxConnections": 1, "maxPendingRequests": 1}}
    r = remora(cfg)
    name = f"cds_ingress_shop_web_http_{app.port}"
    first, second, third = (Conn(r.ingress) for _ in range(3))
    # The first takes the one connection (the app has it), the second waits in the queue,
    # the third finds the queue full.
    first.send(request("GET", "/sleep/800", host="web"))
    wait_until(lambda: app.stats()["requests"] == 1, what="first request at the app")
    second.send(request("GET", "/sleep/800", host="web"))
    wait_until(lambda: r.stats()[f"cluster.{name}.upstream_rq_pending_active"] == 1,
               what="second request queued")
    start = time.monotonic()
    third.send(request("GET", "/sleep/800", host="web"))
    assert third.read_response().status == 503
    assert time.monotonic() - start < 0.5, "an overflow is answered at once, not after a wait"
    assert first.read_response().status == 200
    assert second.read_response().status == 200
    st = r.stats()
    assert st[f"cluster.{name}.upstream_rq_pending_overflow"] == 1
    assert st[f"cluster.{name}.upstream_rq_pending_total"] == 1
    assert app.stats()["requests"] == 2


def write_atomically(path, cfg):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(cfg, f)
    os.rename(tmp, path)


def test_reload_under_load_zero_failures_and_prompt_splits(versions, remora):
    ups = versions("cart-v1", "cart-v2")
    ports = {n: u.port for n, u in ups.items()}
    cfg_for = [canary_mesh(ports, [weighted("canary", [("cart-v1", 100), ("cart-v2", 0)])]),
               canary_mesh(ports, [weighted("canary", [("cart-v1", 0), ("cart-v2", 100)])])]
    r = remora(cfg_for[0], workers=2)
    state = {"last": None, "failures": 0, "requests": 0, "stop": False}

    async def load():
        reader, writer = await asyncio.open_connection("127.0.0.1", r.egress)
        while not state["stop"]:
            writer.write(request("GET", "/echo"))
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            length = int([h for h in head.split(b"\r\n")
                          if h.lower().startswith(b"content-length")][0].split(b":")[1])
            body = await reader.readexactly(length)
            state["requests"] += 1
            if head.startswith(b"HTTP/1.1 200"):
                state["last"] = json.loads(body)["server"]
            else:
                state["failures"] += 1
            # Pacing, not synchronisation: a steady client rather than a flood, so that the
            # delay measured below is remora's and not a queue's.
            await asyncio.sleep(0.002)

    async def until(predicate, what, timeout=5.0):
        deadline = time.monotonic() + timeout
        while not await predicate():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.005)

    async def answered_by(want):
        return state["last"] == want

    async def reloads_ok(n):
        return (await asyncio.to_thread(r.stats))["remora.config.reload_ok"] == n

    async def reloads():
        delays = []
        for i in range(20):
            want = "cart-v2" if i % 2 == 0 else "cart-v1"
            write_atomically(r.config_path, cfg_for[(i + 1) % 2])
            t0 = time.monotonic()
            await until(lambda: answered_by(want), f"reload {i} in force")
            delays.append(time.monotonic() - t0)
            # Exactly one reload per save, counted before the next save.
            await until(lambda: reloads_ok(i + 1), f"reload {i} counted")
        state["stop"] = True
        return delays

    async def main():
        tasks = [asyncio.create_task(load()) for _ in range(4)]
        delays = await reloads()
        await asyncio.gather(*tasks)
        return delays

    delays = asyncio.run(main())
    print(f"reload delays: max {max(delays):.3f}s, mean {sum(delays) / len(delays):.3f}s; "
          f"{state['requests']} requests")
    assert state["failures"] == 0
    assert max(delays) < 1.0, delays
    st = r.stats()
    assert st["remora.config.reload_ok"] == 20
    assert st["remora.config.reload_failed"] == 0


def test_invalid_reload_is_rejected_and_counted(versions, remora):
    ups = versions("cart-v1", "cart-v2")
    ports = {n: u.port for n, u in ups.items()}
    cfg = canary_mesh(ports, [weighted("r", [("cart-v1", 90), ("cart-v2", 10)])])
    r = remora(cfg, workers=2)
    before = r.stats()
    ok0, failed0 = before["remora.config.reload_ok"], before["remora.config.reload_failed"]
    # The bad config changes the split (a valid change) and adds a route with an invalid
    # weight: none of it may apply, not even the valid part.
    bad = canary_mesh(ports, [weighted("r", [("cart-v1", 10), ("cart-v2", 90)]),
                              weighted("broken", [("cart-v1", 140)], match={"prefix": "/b"})])
    write_atomically(r.config_path, bad)
    wait_until(lambda: r.stats()["remora.config.reload_failed"] == failed0 + 1,
               what="reload rejected")
    assert "weight: must be 0..100, got 140" in r.read_log()
    # 200 requests over 4 connections (and 2 workers) follow the old 90/10 exactly: two whole
    # schedules of the old table, whose cursor no request had moved before.
    counts, failures = split(r.egress, total=200, conns=4)
    assert failures == 0
    assert counts == {"cart-v1": 180, "cart-v2": 20}, counts
    st = r.stats()
    assert st["remora.route.cart.r.cart-v1.picks"] == 180
    assert st["remora.route.cart.r.cart-v2.picks"] == 20
    assert "remora.route.cart.broken.cart-v1.picks" not in st
    assert st["remora.config.reload_failed"] == failed0 + 1
    assert st["remora.config.reload_ok"] == ok0
    _, prom = r.admin("/stats/prometheus")
    assert f'remora_config_reloads_total{{result="failure"}} {failed0 + 1}' in prom
    assert f'remora_config_reloads_total{{result="success"}} {ok0}' in prom
    status, dump = r.admin("/config_dump")
    assert status == 200 and json.loads(dump)["config"]["routes"] == cfg["routes"]
    # Fixing the file reloads it; SIGHUP reloads too.
    write_atomically(r.config_path, cfg)
    wait_until(lambda: r.stats()["remora.config.reload_ok"] == ok0 + 1, what="reload after fix")
    r.proc.send_signal(__import__("signal").SIGHUP)
    wait_until(lambda: r.stats()["remora.config.reload_ok"] == ok0 + 2, what="SIGHUP reload")
    assert r.stats()["remora.config.reload_failed"] == failed0 + 1
    status, dump = r.admin("/config_dump")
    assert status == 200 and json.loads(dump)["config"]["routes"] == cfg["routes"]


def test_check_exit_codes_and_summary(tmp_path):
    cfg = canary_mesh({"cart-v1": 9001, "cart-v2": 9002},
                      [weighted("canary", [("cart-v1", 90), ("cart-v2", 10)])])
    good = tmp_path / "good.json"
    good.write_text(json.dumps(cfg))
    out = subprocess.run([REMORA, "check", "--config", str(good)], capture_output=True, text=True,
                         timeout=10)
    assert out.returncode == 0, out.stdout
    assert "backend cart.shop.local -> virtual router cart" in out.stdout
    assert "route canary: prefix / -> cart-v1:90 cart-v2:10" in out.stdout
    cfg["routes"][0]["spec"]["httpRoute"]["match"] = {"path": {"regex": "(unclosed"}}
    cfg["routes"][0]["spec"]["httpRoute"]["action"]["weightedTargets"][0]["weight"] = 140
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(cfg))
    out = subprocess.run([REMORA, "check", "--config", str(bad)], capture_output=True, text=True,
                         timeout=10)
    assert out.returncode == 1
    assert (f"{bad}: routes[0].spec.httpRoute.action.weightedTargets[0].weight: must be 0..100, "
            "got 140") in out.stdout
