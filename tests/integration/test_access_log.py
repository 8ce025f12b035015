"""Access logs (App Mesh `logging.accessLog.file`) from the real binary: every line parsed field
by field, for successes, retries, timeouts, resets, connect failures, local replies, on ingress
and egress; the default format; JSON; SIGUSR1 reopen; /dev/stdout; a full pipe that drops and
counts while traffic goes on; reloads that change the format or are refused."""
import json
import os
import re
import select
import signal
import socket
import subprocess
import time

import pytest

from conftest import REMORA, free_ports, mesh_config, wait_until
from rawhttp import Conn, request

FIELDS = [
    ("start", "%START_TIME%"), ("method", "%REQ(:METHOD)%"),
    ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"), ("protocol", "%PROTOCOL%"),
    ("code", "%RESPONSE_CODE%"), ("flags", "%RESPONSE_FLAGS%"),
    ("details", "%RESPONSE_CODE_DETAILS%"), ("received", "%BYTES_RECEIVED%"),
    ("sent", "%BYTES_SENT%"), ("duration", "%DURATION%"), ("authority", "%REQ(:AUTHORITY)%"),
    ("request_id", "%REQ(X-REQUEST-ID)%"), ("ua", "%REQ(USER-AGENT)%"),
    ("upstream", "%UPSTREAM_HOST%"), ("cluster", "%UPSTREAM_CLUSTER%"),
    ("attempts", "%UPSTREAM_REQUEST_ATTEMPT_COUNT%"),
    ("failure", "%UPSTREAM_TRANSPORT_FAILURE_REASON%"), ("client", "%DOWNSTREAM_REMOTE_ADDRESS%"),
    ("response_duration", "%RESPONSE_DURATION%"), ("request_duration", "%REQUEST_DURATION%"),
]
TEXT = "|".join(op for _, op in FIELDS) + "\n"
START_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
# App Mesh's CloudWatch Logs Insights `parse` of the default format (15 fields).
DEFAULT_RE = re.compile(
    r'^\[(?P<start>[^\]]+)\] "(?P<method>\S+) (?P<path>\S+) (?P<protocol>\S+)" (?P<code>\d+) '
    r'(?P<flags>\S+) (?P<received>\d+) (?P<sent>\d+) (?P<duration>\d+) (?P<service_time>\S+) '
    r'"(?P<xff>[^"]*)" "(?P<ua>[^"]*)" "(?P<request_id>[^"]*)" "(?P<authority>[^"]*)" '
    r'"(?P<upstream>[^"]*)"$')

NO_DEFAULT_RETRIES = {"defaultRetryPolicy": False}  # App Mesh's default policy off


def with_log(cfg, path, text=None, json_format=None):
    """The sidecar's node (web, the first) logs to `path`."""
    f = {"path": path}
    if text is not None:
        f["format"] = {"text": text}
    if json_format is not None:
        f["format"] = {"json": [{"key": k, "value": v} for k, v in json_format]}
    cfg["virtualNodes"][0]["spec"]["logging"] = {"accessLog": {"file": f}}
    return cfg


def lines_of(path, n, timeout=10.0):
    """The first n lines of the file, once it has them."""
    def ready():
        if not os.path.exists(path):
            return None
        with open(path) as f:
            lines = f.read().splitlines()
        return lines if len(lines) >= n else None
    return wait_until(ready, timeout=timeout, what=f"{n} access log lines in {path}")


def parsed(path, n):
    out = []
    for line in lines_of(path, n):
        values = line.split("|")
        assert len(values) == len(FIELDS), line
        out.append(dict(zip((k for k, _ in FIELDS), values)))
    return out


def canary_mesh(versions, route_spec, node_port=1):
    """web -> cart.shop.local -> router cart -> one route whose httpRoute is `route_spec` plus a
    weighted target per version ({name: port})."""
    nodes = [{"virtualNodeName": "web", "spec": {
        "listeners": [{"portMapping": {"port": node_port, "protocol": "http"}}],
        "backends": [{"virtualService": {"virtualServiceName": "cart.shop.local"}}]}}]
    for name, port in versions.items():
        nodes.append({"virtualNodeName": name, "spec": {
            "listeners": [{"portMapping": {"port": port, "protocol": "http"}}],
            "serviceDiscovery": {"dns": {"hostname": "127.0.0.1"}}}})
    http = {"match": {"prefix": "/"},
            "action": {"weightedTargets": [{"virtualNode": n, "weight": 1} for n in versions]}}
    http.update(route_spec)
    return {
        "mesh": {"meshName": "shop"},
        "virtualNodes": nodes,
        "virtualServices": [{"virtualServiceName": "cart.shop.local", "spec": {
            "provider": {"virtualRouter": {"virtualRouterName": "cart"}}}}],
        "virtualRouters": [{"virtualRouterName": "cart", "spec": {
            "listeners": [{"portMapping": {"port": 80, "protocol": "http"}}]}}],
        "routes": [{"virtualRouterName": "cart", "routeName": "r", "spec": {"httpRoute": http}}],
        "proxy": {"node": "web"},
    }


def dead_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    return port


def get(port, path, host="cart.shop.local", headers=(), body=None, method=None):
    c = Conn(port)
    c.send(request(method or ("POST" if body is not None else "GET"), path, host=host,
                   headers=list(headers), body=body))
    resp = c.read_response()
    c.sock.close()
    return resp


RETRY = {"maxRetries": 2, "perRetryTimeout": {"unit": "ms", "value": 2000},
         "httpRetryEvents": ["server-error"], "tcpRetryEvents": ["connection-error"]}


# ---- successes, ingress and egress ----

def test_text_format_field_by_field_on_ingress_and_egress(upstream, remora, tmp_path):
    app, backend = upstream("app"), upstream("cart-v1")
    path = str(tmp_path / "access.log")
    r = remora(with_log(mesh_config(app.port, backend.port), path, text=TEXT))
    before = time.time()
    ok = get(r.egress, "/echo?x=1", headers=[("User-Agent", "probe/1"),
                                             ("X-Request-Id", "req-egress-1")])
    assert ok.status == 200
    up = get(r.egress, "/upload", body=b"hello")
    assert up.status == 200
    seen_id = dict((k.lower(), v) for k, v in json.loads(up.body)["headers"])["x-request-id"]
    ing = get(r.ingress, "/echo", host="web")
    assert ing.status == 200
    after = time.time()
    echo, upload, ingress = parsed(path, 3)

    assert START_RE.match(echo["start"]), echo["start"]
    started = time.mktime(time.strptime(echo["start"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    assert before - 1 <= started <= after + 1
    assert echo["method"] == "GET" and echo["path"] == "/echo?x=1"
    assert echo["protocol"] == "HTTP/1.1"
    assert (echo["code"], echo["flags"], echo["details"]) == ("200", "-", "via_upstream")
    assert echo["received"] == "0" and echo["sent"] == str(len(ok.body))
    assert echo["authority"] == "cart.shop.local"
    assert echo["request_id"] == "req-egress-1" and echo["ua"] == "probe/1"
    assert echo["upstream"] == f"127.0.0.1:{backend.port}"
    assert echo["cluster"] == f"cds_egress_shop_cart-v1_http_{backend.port}"
    assert echo["attempts"] == "1" and echo["failure"] == "-" and echo["client"] == "127.0.0.1"
    assert 0 <= int(echo["request_duration"]) <= int(echo["response_duration"]) \
        <= int(echo["duration"]) < 5000

    assert upload["method"] == "POST" and upload["path"] == "/upload"
    assert upload["received"] == "5" and upload["sent"] == str(len(up.body))
    assert upload["ua"] == "-"
    assert UUID_RE.match(upload["request_id"]) and upload["request_id"] == seen_id

    assert ingress["authority"] == "web" and ingress["code"] == "200"
    assert ingress["upstream"] == f"127.0.0.1:{app.port}"
    assert ingress["cluster"].startswith("cds_ingress_shop_web_http_"), ingress["cluster"]
    assert ingress["sent"] == str(len(ing.body))


def test_json_format_types_order_and_escaping(upstream, remora, tmp_path):
    app, backend = upstream("app"), upstream("cart-v1")
    path = str(tmp_path / "access.json")
    keys = [("start", "%START_TIME%"), ("method", "%REQ(:METHOD)%"),
            ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"), ("code", "%RESPONSE_CODE%"),
            ("flags", "%RESPONSE_FLAGS%"), ("bytes_in", "%BYTES_RECEIVED%"),
            ("bytes_out", "%BYTES_SENT%"), ("duration", "%DURATION%"),
            ("upstream_duration", "%RESPONSE_DURATION%"), ("ua", "%REQ(USER-AGENT)%"),
            ("missing", "%REQ(X-NOT-SENT)%"), ("took", "%DURATION%ms"),
            ("protocol", "%PROTOCOL%"), ("id", "%REQ(X-REQUEST-ID)%")]
    r = remora(with_log(mesh_config(app.port, backend.port), path, json_format=keys))
    ua = 'say "hi" \\ now'
    ok = get(r.egress, "/echo", headers=[("User-Agent", ua), ("X-Request-Id", "j-1")],
             body=b"abc", method="PUT")
    assert ok.status == 200
    assert get(r.egress, "/x", host="nope.local").status == 404
    objs = [json.loads(line) for line in lines_of(path, 2)]
    for o in objs:
        assert list(o) == [k for k, _ in keys]  # in the given order
        assert START_RE.match(o["start"])
    a, b = objs
    assert (a["method"], a["path"], a["code"], a["flags"]) == ("PUT", "/echo", 200, "-")
    assert (a["bytes_in"], a["bytes_out"]) == (3, len(ok.body))
    assert isinstance(a["duration"], int) and isinstance(a["upstream_duration"], int)
    assert a["ua"] == ua and a["missing"] is None and a["id"] == "j-1"
    assert a["took"] == f"{a['duration']}ms" and a["protocol"] == "HTTP/1.1"
    assert (b["code"], b["flags"], b["upstream_duration"], b["ua"]) == (404, "NR", None, None)


def test_default_format_is_envoys(upstream, remora, tmp_path):
    app, backend = upstream("app"), upstream("cart-v1")
    path = str(tmp_path / "access.log")
    r = remora(with_log(mesh_config(app.port, backend.port), path))
    ok = get(r.egress, "/echo?q=2", headers=[("User-Agent", "ELB-HealthChecker/2.0"),
                                             ("X-Request-Id", "d-1")])
    assert get(r.egress, "/", host="nope.local").status == 404
    first, second = (DEFAULT_RE.match(line) for line in lines_of(path, 2))
    assert first and second
    f = first.groupdict()
    assert START_RE.match(f["start"])
    assert (f["method"], f["path"], f["protocol"], f["code"], f["flags"]) == \
        ("GET", "/echo?q=2", "HTTP/1.1", "200", "-")
    assert (f["received"], f["sent"]) == ("0", str(len(ok.body)))
    assert f["service_time"] == "-"  # remora sends no x-envoy-upstream-service-time
    assert (f["xff"], f["ua"], f["request_id"], f["authority"], f["upstream"]) == \
        ("127.0.0.1", "ELB-HealthChecker/2.0", "d-1", "cart.shop.local",
         f"127.0.0.1:{backend.port}")
    s = second.groupdict()
    assert (s["code"], s["flags"], s["upstream"], s["authority"]) == \
        ("404", "NR", "-", "nope.local")
    assert UUID_RE.match(s["request_id"])  # made up, as Envoy does


# ---- retries ----

def test_retry_503_then_200_has_no_flags(upstream, remora, tmp_path):
    v1 = upstream("cart-v1")
    path = str(tmp_path / "access.log")
    r = remora(with_log(canary_mesh({"cart-v1": v1.port}, {"retryPolicy": RETRY}), path,
                        text=TEXT))
    assert get(r.egress, "/fail-once/k/503").status == 200
    assert get(r.egress, "/status/503").status == 503  # three tries, all 503
    retried, exhausted = parsed(path, 2)
    assert (retried["code"], retried["flags"], retried["details"]) == ("200", "-", "via_upstream")
    assert retried["attempts"] == "2" and retried["upstream"] == f"127.0.0.1:{v1.port}"
    assert (exhausted["code"], exhausted["flags"], exhausted["attempts"]) == ("503", "URX", "3")
    assert exhausted["details"] == "via_upstream"


def test_retry_after_connect_failure_logs_the_host_that_answered(knot, upstream, remora,
                                                                 tmp_path):
    live, dead = upstream("i-2"), dead_port()
    k = knot([f"backend 1 SRV 1 1 {dead} i-1.backend.ns.local.",
              f"backend 1 SRV 1 1 {live.port} i-2.backend.ns.local.",
              "i-1.backend 1 A 127.0.0.1", "i-2.backend 1 A 127.0.0.1"])
    cfg = canary_mesh({"cart": 9}, {"retryPolicy": RETRY})
    cfg["virtualNodes"][1]["spec"]["serviceDiscovery"] = {
        "awsCloudMap": {"namespaceName": "ns.local", "serviceName": "backend"}}
    cfg["proxy"]["dns"] = {"servers": [k.server]}
    path = str(tmp_path / "access.log")
    r = remora(with_log(cfg, path, text=TEXT))
    for _ in range(4):  # round-robin: some of them try the dead instance first
        assert get(r.egress, "/echo").status == 200
    lines = parsed(path, 4)
    assert {(x["code"], x["flags"], x["upstream"]) for x in lines} == \
        {("200", "-", f"127.0.0.1:{live.port}")}
    retried = [x for x in lines if x["attempts"] == "2"]
    assert retried and all(x["failure"] == "connection refused" for x in retried)
    assert all(x["failure"] == "-" for x in lines if x["attempts"] == "1")


# ---- failures remora answers ----

def test_upstream_timeouts_are_UT(upstream, remora, tmp_path):
    v1 = upstream("cart-v1")
    path = str(tmp_path / "access.log")
    cfg = canary_mesh({"cart-v1": v1.port}, {"timeout": {"perRequest": {"unit": "ms", "value": 500}}})
    r = remora(with_log(cfg, path, text=TEXT))
    resp = get(r.egress, "/sleep/3000")
    assert resp.status == 504
    (line,) = parsed(path, 1)
    assert (line["code"], line["flags"], line["details"]) == \
        ("504", "UT", "upstream_response_timeout")
    assert line["sent"] == str(len(resp.body)) and 450 <= int(line["duration"]) < 3000
    assert line["response_duration"] == "-" and line["upstream"] == f"127.0.0.1:{v1.port}"


def test_per_try_timeouts_exhausted_are_UT_URX(upstream, remora, tmp_path):
    v1 = upstream("cart-v1")
    path = str(tmp_path / "access.log")
    retry = {"maxRetries": 1, "perRetryTimeout": {"unit": "ms", "value": 300},
             "httpRetryEvents": ["server-error"]}
    r = remora(with_log(canary_mesh({"cart-v1": v1.port}, {"retryPolicy": retry}), path,
                        text=TEXT))
    assert get(r.egress, "/sleep/3000").status == 504
    (line,) = parsed(path, 1)
    assert (line["code"], line["flags"], line["details"], line["attempts"]) == \
        ("504", "UT,URX", "upstream_per_try_timeout", "2")


def test_upstream_resets_are_UC_and_bad_responses_UPE(upstream, remora, tmp_path):
    app, backend = upstream("app"), upstream("cart-v1")
    path = str(tmp_path / "access.log")
    # One attempt each, so each line shows one failure's flags (App Mesh's default policy
    # would retry the reset: UC,URX).
    r = remora(with_log(mesh_config(app.port, backend.port, extra_proxy=NO_DEFAULT_RETRIES), path,
                        text=TEXT))
    assert get(r.egress, "/die-before-response").status == 503
    c = Conn(r.egress)
    c.send(request("GET", "/die-mid-response"))
    cut = c.read_response()
    assert cut.status == 200 and not cut.complete
    assert get(r.egress, "/malformed").status == 502
    before, mid, bad = parsed(path, 3)
    assert (before["code"], before["flags"], before["details"]) == \
        ("503", "UC", "upstream_reset_before_response_started{connection_termination}")
    assert before["upstream"] == f"127.0.0.1:{backend.port}" and before["response_duration"] == "-"
    assert (mid["code"], mid["flags"], mid["details"]) == \
        ("200", "UC", "upstream_reset_after_response_started{connection_termination}")
    assert int(mid["sent"]) <= 1000 and mid["response_duration"] != "-"
    assert (bad["code"], bad["flags"]) == ("502", "UPE")


def test_connect_failures_are_UF_and_URX_once_retries_are_spent(upstream, remora, tmp_path):
    app, gone = upstream("app"), dead_port()
    path = str(tmp_path / "plain.log")
    r = remora(with_log(mesh_config(app.port, gone, extra_proxy=NO_DEFAULT_RETRIES), path,
                        text=TEXT))
    assert get(r.egress, "/echo").status == 503
    (line,) = parsed(path, 1)
    assert (line["code"], line["flags"], line["attempts"]) == ("503", "UF", "1")
    assert line["details"] == "upstream_reset_before_response_started{connection_failure}"
    assert line["failure"] == "connection refused" and line["upstream"] == f"127.0.0.1:{gone}"

    path = str(tmp_path / "retried.log")
    r2 = remora(with_log(canary_mesh({"cart-v1": gone}, {"retryPolicy": RETRY}), path, text=TEXT))
    assert get(r2.egress, "/echo").status == 503
    (line,) = parsed(path, 1)
    assert (line["code"], line["flags"], line["attempts"]) == ("503", "UF,URX", "3")


def test_no_route_is_NR(upstream, remora, tmp_path):
    app, backend = upstream("app"), upstream("cart-v1")
    path = str(tmp_path / "access.log")
    r = remora(with_log(mesh_config(app.port, backend.port), path, text=TEXT))
    resp = get(r.egress, "/a/b?c", host="nope.local:8080",
               headers=[("X-Request-Id", "nr-1"), ("User-Agent", "ua")])
    assert resp.status == 404
    (line,) = parsed(path, 1)
    assert (line["method"], line["path"], line["code"], line["flags"]) == \
        ("GET", "/a/b?c", "404", "NR")
    assert (line["details"], line["authority"], line["request_id"]) == \
        ("route_not_found", "nope.local:8080", "nr-1")
    assert (line["upstream"], line["cluster"], line["attempts"]) == ("-", "-", "0")
    assert line["sent"] == str(len(resp.body)) and line["response_duration"] == "-"


def test_connection_pool_overflow_is_UO(upstream, remora, tmp_path):
    app, cart = upstream("app"), upstream("cart")
    cfg = mesh_config(app.port, cart.port)
    cfg["virtualNodes"][0]["spec"]["listeners"][0]["connectionPool"] = {
        "http": {"maxConnections": 1, "maxPendingRequests": 1}}
    path = str(tmp_path / "access.log")
    r = remora(with_log(cfg, path, text=TEXT))
    name = f"cds_ingress_shop_web_http_{app.port}"
    first, second, third = (Conn(r.ingress) for _ in range(3))
    first.send(request("GET", "/sleep/500", host="web"))
    wait_until(lambda: app.stats()["requests"] == 1, what="first request at the app")
    second.send(request("GET", "/sleep/10", host="web"))
    wait_until(lambda: r.stats()[f"cluster.{name}.upstream_rq_pending_active"] == 1,
               what="second request queued")
    third.send(request("GET", "/over", host="web"))
    assert third.read_response().status == 503
    assert first.read_response().status == 200 and second.read_response().status == 200
    lines = {x["path"]: x for x in parsed(path, 3)}
    over = lines["/over"]
    assert (over["code"], over["flags"], over["upstream"], over["cluster"]) == \
        ("503", "UO", "-", name)
    assert over["details"] == "upstream_reset_before_response_started{overflow}"
    assert (lines["/sleep/500"]["flags"], lines["/sleep/10"]["flags"]) == ("-", "-")


def test_no_healthy_upstream_is_UH(knot, remora, tmp_path):
    k = knot([])  # Cloud Map knows no instance of the service
    cfg = canary_mesh({"cart": 9}, {})
    cfg["virtualNodes"][1]["spec"]["serviceDiscovery"] = {
        "awsCloudMap": {"namespaceName": "ns.local", "serviceName": "backend"}}
    cfg["proxy"]["dns"] = {"servers": [k.server]}
    path = str(tmp_path / "access.log")
    r = remora(with_log(cfg, path, text=TEXT))
    assert get(r.egress, "/echo").status == 503
    (line,) = parsed(path, 1)
    assert (line["code"], line["flags"], line["details"], line["upstream"]) == \
        ("503", "UH", "no_healthy_upstream", "-")
    assert line["cluster"] == "cds_egress_shop_cart_http_9"


def test_client_gone_mid_body_is_DC(upstream, remora, tmp_path):
    app, backend = upstream("app"), upstream("cart-v1")
    path = str(tmp_path / "access.log")
    r = remora(with_log(mesh_config(app.port, backend.port), path, text=TEXT))
    c = Conn(r.egress)
    c.send(request("POST", "/upload", headers=[("Content-Length", "1000000")]) + b"x" * 20000)
    wait_until(lambda: backend.stats()["receiving"] == 1, what="upstream to see the request")
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    c.sock.close()
    (line,) = parsed(path, 1)
    assert (line["code"], line["flags"], line["details"]) == \
        ("0", "DC", "downstream_remote_disconnect")
    assert 0 < int(line["received"]) <= 20000 and line["sent"] == "0"


# ---- files ----

def test_sigusr1_reopens_after_logrotate_moved_the_file(upstream, remora, tmp_path):
    app, backend = upstream("app"), upstream("cart-v1")
    path = str(tmp_path / "access.log")
    r = remora(with_log(mesh_config(app.port, backend.port), path, text="%REQ(:PATH)%\n"),
               workers=2)
    assert get(r.egress, "/before").status == 200
    assert lines_of(path, 1) == ["/before"]
    os.rename(path, path + ".1")
    r.proc.send_signal(signal.SIGUSR1)
    wait_until(lambda: os.path.exists(path), what="the access log reopened")
    for i in range(4):  # over both workers
        assert get(r.egress, f"/after/{i}").status == 200
    assert sorted(lines_of(path, 4)) == [f"/after/{i}" for i in range(4)]
    with open(path + ".1") as f:
        assert f.read() == "/before\n"
    assert "SIGUSR1: reopening the access log" in r.read_log()


def test_dev_stdout_when_stdout_is_a_file(upstream, remora, tmp_path):
    app, backend = upstream("app"), upstream("cart-v1")
    r = remora(with_log(mesh_config(app.port, backend.port), "/dev/stdout",
                        text="ACCESS %REQ(:PATH)% %RESPONSE_CODE%\n"))
    assert get(r.egress, "/to-stdout").status == 200
    wait_until(lambda: "ACCESS /to-stdout 200\n" in r.read_log(), what="the line on stdout")


def test_dev_stdout_when_stdout_is_a_pipe(upstream, tmp_path):
    app, backend = upstream("app"), upstream("cart-v1")
    cfg = with_log(mesh_config(app.port, backend.port), "/dev/stdout",
                   text="ACCESS %REQ(:PATH)% %RESPONSE_CODE%\n")
    cfg_path = str(tmp_path / "mesh.json")
    with open(cfg_path, "w") as f:
        json.dump(cfg, f)
    ingress, egress, admin = free_ports(3)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APPMESH_", "ENVOY_", "REMORA_"))}
    with open(tmp_path / "stderr.log", "w") as err:
        p = subprocess.Popen([REMORA, "--config", cfg_path, "--ingress-port", str(ingress),
                              "--egress-port", str(egress), "--admin", f"127.0.0.1:{admin}",
                              "--workers", "1"], stdout=subprocess.PIPE, stderr=err, env=env)
        try:
            wait_until(lambda: get(admin, "/ready", host="x").status == 200, what="remora ready")
            assert get(egress, "/piped").status == 200
            got = b""
            deadline = time.monotonic() + 10
            while b"\n" not in got and time.monotonic() < deadline:
                if select.select([p.stdout], [], [], 0.2)[0]:
                    got += os.read(p.stdout.fileno(), 4096)
            assert got == b"ACCESS /piped 200\n"
        finally:
            p.send_signal(signal.SIGTERM)
            p.wait(20)
            p.stdout.close()
    assert p.returncode == 0


def test_full_pipe_drops_and_counts_and_traffic_goes_on(upstream, remora, tmp_path):
    app, backend = upstream("app"), upstream("cart-v1")
    fifo = str(tmp_path / "access.fifo")
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # open, but nobody reads for now
    try:
        r = remora(with_log(mesh_config(app.port, backend.port), fifo,
                            text="%REQ(X-PAD)% %REQ(:PATH)%\n"), workers=1)
        pad = "p" * 900
        c = Conn(r.egress)
        start = time.monotonic()
        total = 600  # ~540 KB of lines: far more than the pipe (64 KiB) and the buffer (256 KiB)
        for i in range(total):
            c.send(request("GET", f"/n/{i}", headers=[("X-Pad", pad)]))
            assert c.read_response().status == 200
        assert time.monotonic() - start < 60
        wait_until(lambda: "dropping lines on worker 0" in r.read_log(), what="the drop warning")
        # The reader wakes up. Pokes wake the worker too, so that it writes again once the pipe
        # has room; the first poke that arrives comes after everything buffered before it.
        got, poke = b"", 0
        deadline = time.monotonic() + 20
        while b"/poke/" not in got and time.monotonic() < deadline:
            if select.select([reader], [], [], 0.2)[0]:
                got += os.read(reader, 65536)
            else:
                c.send(request("GET", f"/poke/{poke}"))
                assert c.read_response().status == 200
                poke += 1
        before_poke = got[:got.index(b"/poke/")].decode().splitlines()[:-1]
        assert got.endswith(b"\n") or b"\n" in got[got.index(b"/poke/"):]
        assert 100 < len(before_poke) < total, len(before_poke)
        assert all(line.startswith(pad + " /n/") for line in before_poke)  # whole lines only
        seen = [int(line.rsplit("/", 1)[1]) for line in before_poke]
        assert seen == sorted(seen) and len(set(seen)) == len(seen)
    finally:
        os.close(reader)


# ---- config ----

def test_reload_changes_the_format_and_a_bad_one_is_refused(upstream, remora, tmp_path):
    app, backend = upstream("app"), upstream("cart-v1")
    path = str(tmp_path / "access.log")
    cfg = with_log(mesh_config(app.port, backend.port), path, text="A %REQ(:PATH)%\n")
    r = remora(cfg)
    assert get(r.egress, "/one").status == 200
    assert lines_of(path, 1) == ["A /one"]
    ok0 = r.stats()["remora.config.reload_ok"]
    with_log(cfg, path, text="B %REQ(:PATH)% %RESPONSE_CODE%\n")
    tmp = r.config_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(cfg, f)
    os.rename(tmp, r.config_path)
    wait_until(lambda: r.stats()["remora.config.reload_ok"] == ok0 + 1, what="reload")
    assert get(r.egress, "/two").status == 200
    assert lines_of(path, 2) == ["A /one", "B /two 200"]
    failed0 = r.stats()["remora.config.reload_failed"]
    with_log(cfg, path, text="C %NOPE%\n")
    with open(tmp, "w") as f:
        json.dump(cfg, f)
    os.rename(tmp, r.config_path)
    wait_until(lambda: r.stats()["remora.config.reload_failed"] == failed0 + 1,
               what="reload refused")
    assert ("virtualNodes[0].spec.logging.accessLog.file.format.text: unknown command operator "
            "%NOPE% at position 2") in r.read_log()
    assert get(r.egress, "/three").status == 200
    assert lines_of(path, 3) == ["A /one", "B /two 200", "B /three 200"]


@pytest.mark.parametrize("logging,message", [
    ({"path": "/dev/null", "format": {"text": "%START_TIME% %NOPE%\n"}},
     "virtualNodes[0].spec.logging.accessLog.file.format.text: unknown command operator %NOPE% "
     "at position 13"),
    ({"path": "/dev/null", "format": {"json": [{"key": "a", "value": "%GRPC_STATUS%"}]}},
     "virtualNodes[0].spec.logging.accessLog.file.format.json[0].value: %GRPC_STATUS% at "
     "position 0 is an Envoy operator remora does not support"),
    ({"path": "/nonexistent-dir/access.log"},
     "virtualNodes[0].spec.logging.accessLog.file.path: cannot open "
     "\"/nonexistent-dir/access.log\": no such file or directory"),
])
def test_bad_access_log_refuses_to_start(tmp_path, logging, message):
    cfg = mesh_config(1, 2)
    cfg["virtualNodes"][0]["spec"]["logging"] = {"accessLog": {"file": logging}}
    cfg_path = str(tmp_path / "mesh.json")
    with open(cfg_path, "w") as f:
        json.dump(cfg, f)
    ingress, egress, admin = free_ports(3)
    out = subprocess.run([REMORA, "--config", cfg_path, "--ingress-port", str(ingress),
                          "--egress-port", str(egress), "--admin", f"127.0.0.1:{admin}"],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 1
    assert f"{cfg_path}: {message}" in out.stdout + out.stderr
    if "cannot open" not in message:  # check compiles the format, and creates no file
        out = subprocess.run([REMORA, "check", "--config", cfg_path], capture_output=True,
                             text=True, timeout=20)
        assert out.returncode == 1 and f"{cfg_path}: {message}" in out.stdout, out.stdout


def test_drops_are_exported(upstream, remora, tmp_path):
    """The full-pipe test's drops, as the metrics see them (remora_access_log_*_total)."""
    app, backend = upstream("app"), upstream("cart-v1")
    path = str(tmp_path / "access.log")
    r = remora(with_log(mesh_config(app.port, backend.port), path, text="%REQ(:PATH)%\n"))
    assert get(r.egress, "/one").status == 200
    assert lines_of(path, 1) == ["/one"]
    wait_until(lambda: r.stats()["remora.access_log.bytes_written"] == 5, what="bytes counted")
    _, prom = r.admin("/stats/prometheus")
    assert "remora_access_log_written_bytes_total{} 5" in prom.splitlines()
    assert "remora_access_log_dropped_total{} 0" in prom.splitlines()
