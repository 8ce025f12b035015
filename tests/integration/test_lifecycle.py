"""Start-up, settings, the admin API, concurrency and graceful shutdown."""
import asyncio
import json
import os
import signal
import subprocess
import threading
import time

from cloudmap_peers import MOTO_PYTHON
from conftest import HERE, REMORA, free_port, free_ports, mesh_config, port_open, wait_until
from rawhttp import Conn, request


def test_admin_endpoints(mesh):
    r, _, _ = mesh()
    assert r.admin("/ready") == (200, "LIVE\n")
    status, body = r.admin("/server_info")
    info = json.loads(body)
    assert status == 200 and info["state"] == "LIVE"
    assert '"state": "LIVE"' in body  # what the stock ECS health check greps for
    status, text = r.admin("/stats/prometheus")
    assert status == 200
    assert 'envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix="ingress"} 0' in text
    assert "# TYPE envoy_cluster_upstream_rq_xx counter" in text
    assert r.admin("/nope")[0] == 404
    assert r.admin("/quitquitquit")[0] == 405, "state-changing endpoints need POST"


def test_stats_count_requests_by_class(mesh):
    r, _, backend = mesh(extra_proxy={"defaultRetryPolicy": False})  # one upstream try each
    c = Conn(r.egress)
    for path in ("/status/200", "/status/404", "/status/503", "/echo"):
        c.send(request("GET", path))
        c.read_response()
    st = r.stats()
    port = backend.port
    assert st["http.egress.downstream_rq_total"] == 4
    assert st["http.egress.downstream_rq_2xx"] == 2
    assert st["http.egress.downstream_rq_4xx"] == 1
    assert st["http.egress.downstream_rq_5xx"] == 1
    assert st[f"cluster.cds_egress_shop_cart-v1_http_{port}.upstream_rq_total"] == 4
    assert st[f"cluster.cds_egress_shop_cart-v1_http_{port}.upstream_rq_5xx"] == 1
    _, prom = r.admin("/stats/prometheus")
    assert ('envoy_cluster_upstream_rq_xx{envoy_response_code_class="2",envoy_cluster_name='
            f'"cds_egress_shop_cart-v1_http_{port}"}} 2') in prom


def test_healthcheck_fail_and_ok(mesh):
    r, _, _ = mesh()
    assert r.admin("/healthcheck/fail", "POST")[0] == 200
    assert r.admin("/ready")[0] == 503
    assert json.loads(r.admin("/server_info")[1])["health_check_failed"] is True
    assert r.admin("/healthcheck/ok", "POST")[0] == 200
    assert r.admin("/ready")[0] == 200


def test_sigterm_drains_in_flight_requests_then_exits_0(mesh):
    r, _, backend = mesh()
    idle = Conn(r.egress)
    idle.send(request("GET", "/echo"))
    assert idle.read_response().status == 200
    busy = Conn(r.egress)
    sent = time.monotonic()
    busy.send(request("GET", "/sleep/1000"))  # the upstream answers 1 s after it gets this
    answer_due = sent + 1.0  # no answer can exist before this
    wait_until(lambda: backend.stats()["requests"] == 2, what="the slow request at the upstream")
    exited = {}

    def wait_exit():
        exited["code"] = r.proc.wait(30)
        exited["at"] = time.monotonic()

    waiter = threading.Thread(target=wait_exit)
    waiter.start()
    try:
        r.proc.send_signal(signal.SIGTERM)
        # At once, while the slow request is still in flight: the idle keep-alive connection
        # is closed and the listener refuses new connections.
        assert idle.closed_by_peer(timeout=1)
        idle.close()  # as a client does on EOF (remora lingers up to 5 s for one that does not)
        wait_until(lambda: not port_open(r.egress), timeout=1, what="listener closed")
        assert time.monotonic() < answer_due, "drain started only after the in-flight request"
        assert "at" not in exited, "remora exited with a request in flight"
        # The in-flight request completes, told the connection closes after it.
        resp = busy.read_response()
        done = time.monotonic()
        assert resp.status == 200 and resp.body == b"slept\n" and resp.complete
        assert resp.header("connection") == "close"
        assert busy.closed_by_peer(timeout=2)
        busy.close()
    finally:
        waiter.join(30)
    assert exited["code"] == 0
    # remora waited for the answer (lower bound), and then no longer than it had to: the last
    # connection gone, it exits, well before the 20 s drain deadline (upper bound).
    assert exited["at"] >= answer_due, (exited["at"] - sent)
    assert exited["at"] - done < 2.0, (exited["at"] - done)


def test_a_sigterm_the_moment_the_ports_answer_is_a_clean_drain(tmp_path, upstream):
    """An orchestrator may stop a task the instant it comes up. remora's ports answer before
    its admin and its discovery do (and with 8 workers, well before the last one is set up):
    a SIGTERM then is still a drain that exits 0, never the signal's default action (the build
    before this test died of SIGTERM in about half of these starts)."""
    app, backend = upstream("app"), upstream("cart-v1")
    path = tmp_path / "mesh.json"
    path.write_text(json.dumps(mesh_config(app.port, backend.port)))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APPMESH_", "ENVOY_", "REMORA_"))}
    for _ in range(20):
        ingress, egress, admin = free_ports(3)
        proc = subprocess.Popen([REMORA, "--config", str(path), "--ingress-port", str(ingress),
                                 "--egress-port", str(egress), "--admin", f"127.0.0.1:{admin}",
                                 "--workers", "8"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        deadline = time.monotonic() + 10
        try:
            while proc.poll() is None and not port_open(ingress):  # no pause: the instant it answers
                assert time.monotonic() < deadline, "ingress never answered"
        finally:
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
        assert "received SIGTERM" in out and "stopped" in out, out


def test_quitquitquit_drains_and_exits(mesh):
    r, _, backend = mesh()
    busy = Conn(r.egress)
    busy.send(request("GET", "/sleep/500"))
    wait_until(lambda: backend.stats()["requests"] == 1, what="the slow request at the upstream")
    assert r.admin("/quitquitquit", "POST")[0] == 200
    resp = busy.read_response()
    assert resp.status == 200 and resp.body == b"slept\n"
    assert resp.header("connection") == "close"
    assert r.proc.wait(10) == 0


def test_drain_deadline_closes_stuck_requests(mesh):
    r, _, backend = mesh(env={"LISTENER_DRAIN_WAIT_TIME_S": "1"})
    stuck = Conn(r.egress)
    stuck.send(request("GET", "/sleep/30000"))
    wait_until(lambda: backend.stats()["requests"] == 1, what="the stuck request at the upstream")
    start = time.monotonic()
    r.proc.send_signal(signal.SIGTERM)
    assert r.proc.wait(10) == 0
    elapsed = time.monotonic() - start
    # It waited the whole drain time for the stuck request, then no more than it had to.
    assert 1.0 <= elapsed < 3.0, elapsed
    assert stuck.closed_by_peer(timeout=2)
    assert stuck.buf == b"", "closed, with no response made up for it"


async def _client(port, n, all_open):
    """n requests on one keep-alive connection; after the first, waits (all_open) until every
    client has had its first answer, so that all the connections are open at the same time."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    ok = 0
    for i in range(n):
        writer.write(request("GET", f"/echo?i={i}"))
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        length = int([h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")][0]
                     .split(b":")[1])
        await reader.readexactly(length)
        ok += head.startswith(b"HTTP/1.1 200 ")
        if i == 0:
            await all_open()
    writer.close()
    return ok


def test_1000_concurrent_keep_alive_clients(mesh):
    r, _, backend = mesh(workers=2)
    seen = {}

    async def run():
        first_answers, everyone = [0], asyncio.Event()

        async def all_open():
            first_answers[0] += 1
            if first_answers[0] == 1000:
                # Every client holds its connection open here: remora has all 1000 at once.
                seen["active"] = (await asyncio.to_thread(r.stats))["http.egress.downstream_cx_active"]
                everyone.set()
            await asyncio.wait_for(everyone.wait(), 60)

        return await asyncio.gather(*(_client(r.egress, 3, all_open) for _ in range(1000)))

    results = asyncio.run(run())
    assert seen["active"] == 1000
    assert sum(results) == 3000
    st = r.stats()
    assert st["http.egress.downstream_cx_total"] == 1000
    assert st["http.egress.downstream_rq_2xx"] == 3000
    assert st["http.egress.downstream_rq_5xx"] == 0
    assert backend.stats()["requests"] == 3000


def test_workers_from_envoy_concurrency(upstream, remora):
    app, cart = upstream("app"), upstream("cart")
    cfg = mesh_config(app.port, cart.port)
    r = remora(cfg, workers=1)
    assert json.loads(r.admin("/server_info")[1])["command_line_options"]["concurrency"] == 1
    proc_cfg = os.path.join(os.path.dirname(r.config_path), "mesh.json")
    ports = free_ports(3)
    p = subprocess.Popen([REMORA, "--config", proc_cfg, "--ingress-port", str(ports[0]),
                          "--egress-port", str(ports[1])],
                         env={"ENVOY_CONCURRENCY": "3", "ENVOY_ADMIN_ACCESS_PORT": str(ports[2]),
                              "PATH": os.environ["PATH"]},
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        import urllib.request

        def info():
            with urllib.request.urlopen(f"http://127.0.0.1:{ports[2]}/server_info", timeout=2) as f:
                return json.loads(f.read())

        assert wait_until(info)["command_line_options"]["concurrency"] == 3
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(10) == 0


def test_node_from_appmesh_resource_arn_and_inline_config(tmp_path, upstream):
    app, cart = upstream("app"), upstream("cart")
    cfg = mesh_config(app.port, cart.port)
    del cfg["proxy"]
    cfg["virtualNodes"].append({"virtualNodeName": "other", "spec": {}})
    ports = free_ports(3)
    env = {"PATH": os.environ["PATH"], "REMORA_CONFIG_JSON": json.dumps(cfg),
           "APPMESH_RESOURCE_ARN": "arn:aws:appmesh:us-east-1:123456789012:mesh/shop/virtualNode/web",
           "ENVOY_ADMIN_ACCESS_PORT": str(ports[2])}
    p = subprocess.Popen([REMORA, "--ingress-port", str(ports[0]), "--egress-port", str(ports[1]),
                          "--workers", "1"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: port_open(ports[0]), what="listener")
        c = Conn(ports[0])
        c.send(request("GET", "/echo", host="web"))
        assert json.loads(c.read_response().body)["server"] == "app"
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(10) == 0


def test_bad_settings_and_config_refuse_to_start(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"virtualNodes": [{"virtualNodeName": "web", "spec": {"listeners": '
                   '[{"portMapping": {"port": 70000, "protocol": "http"}}]}}]}')
    out = subprocess.run([REMORA, "--config", str(bad)], capture_output=True, text=True, timeout=10)
    assert out.returncode == 1
    assert "virtualNodes[0].spec.listeners[0].portMapping.port: must be 1..65535, got 70000" in out.stderr
    out = subprocess.run([REMORA, "check", "--config", str(bad)], capture_output=True, text=True,
                         timeout=10)
    assert out.returncode == 1 and "must be 1..65535" in out.stdout
    broken = tmp_path / "broken.json"
    broken.write_text("{ not json")
    out = subprocess.run([REMORA, "--config", str(broken)], capture_output=True, text=True, timeout=10)
    assert out.returncode == 1 and "broken.json" in out.stderr
    out = subprocess.run([REMORA, "--workers", "0"], capture_output=True, text=True, timeout=10)
    assert out.returncode == 2 and "--workers" in out.stderr
    out = subprocess.run([REMORA, "--config", "/nonexistent/mesh.json"], capture_output=True,
                         text=True, timeout=10)
    assert out.returncode == 1 and "cannot open" in out.stderr
    if not os.path.exists("/etc/remora/mesh.json"):  # no config at all: say how to give one
        env = {k: v for k, v in os.environ.items() if k not in ("REMORA_CONFIG", "REMORA_CONFIG_JSON")}
        out = subprocess.run([REMORA], capture_output=True, text=True, timeout=10, env=env)
        assert out.returncode == 1
        assert ("/etc/remora/mesh.json: $: no config given: mount the config file at "
                "/etc/remora/mesh.json, or set REMORA_CONFIG to its path, or REMORA_CONFIG_JSON "
                "to the whole document") in out.stderr, out.stderr


def test_check_and_version(tmp_path, upstream):
    cfg = tmp_path / "mesh.json"
    cfg.write_text(json.dumps(mesh_config(8080, 8081)))
    out = subprocess.run([REMORA, "check", "--config", str(cfg)], capture_output=True, text=True,
                         timeout=10)
    assert out.returncode == 0, out.stdout
    assert "node web" in out.stdout and "backend cart.shop.local" in out.stdout
    out = subprocess.run([REMORA, "version"], capture_output=True, text=True, timeout=10)
    assert out.returncode == 0 and out.stdout.startswith("remora ")


def test_describe_output_pastes_whole(upstream, remora):
    """Each list element as `aws appmesh describe-*` prints it, wrapper, metadata and status
    included (moto's App Mesh makes them): remora reads the mesh and routes by it."""
    app, v1 = upstream("app"), upstream("cart-v1")
    node = lambda port, backends=(): {
        "listeners": [{"portMapping": {"port": port, "protocol": "http"}}],
        "serviceDiscovery": {"dns": {"hostname": "127.0.0.1"}},
        "backends": [{"virtualService": {"virtualServiceName": b}} for b in backends]}
    want = {"mesh": "shop",
            "virtualNodes": {"web": node(app.port, ["cart.shop.local"]), "cart-v1": node(v1.port)},
            "virtualRouters": {"cart": {"listeners": [{"portMapping": {"port": 80, "protocol": "http"}}]}},
            "routes": [["cart", "all", {"httpRoute": {"match": {"prefix": "/"}, "action": {
                "weightedTargets": [{"virtualNode": "cart-v1", "weight": 1}]}}}]],
            "virtualServices": {"cart.shop.local": {"provider": {
                "virtualRouter": {"virtualRouterName": "cart"}}}}}
    out = subprocess.run([MOTO_PYTHON, os.path.join(HERE, "appmesh_describe.py")],
                         input=json.dumps(want), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert set(doc["virtualNodes"][0]) == {"virtualNode"}
    assert doc["virtualNodes"][0]["virtualNode"]["status"] == {"status": "ACTIVE"}
    doc["proxy"] = {"node": "web"}
    r = remora(doc)
    c = Conn(r.egress)
    c.send(request("GET", "/x", host="cart.shop.local"))
    resp = c.read_response()
    assert resp.status == 200 and json.loads(resp.body)["server"] == "cart-v1"
    # A problem inside a pasted element is named by the path it has in the file.
    doc["routes"][0]["route"]["spec"]["httpRoute"]["action"]["weightedTargets"][0]["weight"] = 140
    bad = os.path.join(os.path.dirname(r.config_path), "bad.json")
    with open(bad, "w") as f:
        json.dump(doc, f)
    out = subprocess.run([REMORA, "check", "--config", bad], capture_output=True, text=True,
                         timeout=10)
    assert out.returncode == 1
    assert (f"{bad}: routes[0].route.spec.httpRoute.action.weightedTargets[0].weight: "
            "must be 0..100, got 140") in out.stdout + out.stderr


def test_bind_conflict_is_reported(mesh, tmp_path):
    r, _, _ = mesh()
    out = subprocess.run([REMORA, "--config", r.config_path, "--admin", f"127.0.0.1:{r.admin_port}",
                          "--ingress-port", str(free_port()), "--egress-port", str(free_port())],
                         capture_output=True, text=True, timeout=10)
    assert out.returncode == 1
    assert "admin: cannot listen" in out.stderr
