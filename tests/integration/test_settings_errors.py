"""Bad environment settings refuse start-up (SPEC §3): exit code 1 and one line naming the variable
and the value, before anything is built on the config; and container credentials that cannot sign
(a CR or LF inside) count as a failed fetch, which is retried until good ones come."""
import datetime
import http.server
import json
import os
import signal
import subprocess
import threading

import pytest

from conftest import REMORA, free_ports, mesh_config, wait_until

SANITIZER = os.environ.get("REMORA_SANITIZER", "")


def clean_env(extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("APPMESH_", "ENVOY_", "REMORA_", "AWS_", "XRAY_", "STATSD_",
                                "ENABLE_ENVOY_"))}
    env.update(extra)
    return env


def run_to_exit(tmp_path, env, timeout=15):
    """Starts remora on a good config with `env`; returns (exit code, output). A remora still
    running after `timeout` (it accepted the settings) is stopped and the test fails."""
    cfg = tmp_path / "mesh.json"
    cfg.write_text(json.dumps(mesh_config(*free_ports(2))))
    ingress, egress, admin = free_ports(3)
    proc = subprocess.Popen(
        [REMORA, "--config", str(cfg), "--ingress-port", str(ingress), "--egress-port",
         str(egress), "--admin", f"127.0.0.1:{admin}", "--workers", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=clean_env(env))
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=25)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        raise AssertionError(f"remora started with {env}:\n{out}")
    return proc.returncode, out


BAD = [
    # 99999 would go to UDP port 34463 (getaddrinfo wraps it)
    ({"ENABLE_ENVOY_XRAY_TRACING": "1", "AWS_XRAY_DAEMON_ADDRESS": "127.0.0.1:99999"},
     "AWS_XRAY_DAEMON_ADDRESS: expected HOST:PORT with a port of 1..65535, got \"127.0.0.1:99999\""),
    ({"ENABLE_ENVOY_XRAY_TRACING": "1", "AWS_XRAY_DAEMON_ADDRESS": "tcp:127.0.0.1:2000 udp:127.0.0.1:0"},
     "AWS_XRAY_DAEMON_ADDRESS: expected HOST:PORT with a port of 1..65535"),
    # c-ares wraps it the same way
    ({"REMORA_DNS_SERVERS": "1.2.3.4:99999"},
     "REMORA_DNS_SERVERS: expected IP[:PORT][,IP[:PORT]] (IPv6 as [IP]:PORT) with ports 1..65535, "
     "got \"1.2.3.4:99999\""),
    # failed after the config was built on, leaking it (LeakSanitizer)
    ({"REMORA_DNS_SERVERS": "garbage"}, "REMORA_DNS_SERVERS: expected IP[:PORT]"),
    ({"XRAY_SAMPLING_RATE": "nan"}, "XRAY_SAMPLING_RATE: must be a decimal number 0..1, got \"nan\""),
    ({"XRAY_SAMPLING_RATE": "0x0.1"},
     "XRAY_SAMPLING_RATE: must be a decimal number 0..1, got \"0x0.1\""),
    # logged, and remora ran without the sink
    ({"ENABLE_ENVOY_DOG_STATSD": "1", "STATSD_PORT": "x"},
     "STATSD_PORT: must be 1..65535, got \"x\""),
    ({"ENABLE_ENVOY_DOG_STATSD": "1", "STATSD_PORT": "99999"},
     "STATSD_PORT: must be 1..65535, got \"99999\""),
    ({"ENABLE_ENVOY_DOG_STATSD": "1", "STATSD_ADDRESS": "garbage"},
     "STATSD_ADDRESS: must be an IPv4 or IPv6 address, got \"garbage\""),
]


@pytest.mark.parametrize("env,message", BAD, ids=[";".join(f"{k}={v}" for k, v in e.items())
                                                  for e, _ in BAD])
def test_bad_variable_refuses_to_start(tmp_path, env, message):
    code, out = run_to_exit(tmp_path, env)
    assert code == 1, out
    assert f"settings: {message}" in out, out
    assert "Sanitizer" not in out, out  # nothing leaks on the way out
    lines = [l for l in out.splitlines() if l.startswith("settings: ")]
    assert len(lines) == 1, out


GOOD = [
    {"ENABLE_ENVOY_XRAY_TRACING": "1", "AWS_XRAY_DAEMON_ADDRESS": "127.0.0.1:2000",
     "XRAY_SAMPLING_RATE": ".5", "REMORA_DNS_SERVERS": "127.0.0.1:53,[::1]:53",
     "ENABLE_ENVOY_DOG_STATSD": "1", "STATSD_ADDRESS": "::1", "STATSD_PORT": "8125"},
    # strtod's exponent form was always taken; with tracing off the daemon address is not
    # remora's (a task-wide value for the app's X-Ray SDK, here one remora could not use)
    {"XRAY_SAMPLING_RATE": "5e-2", "AWS_XRAY_DAEMON_ADDRESS": "xray-daemon"},
]


@pytest.mark.parametrize("given", GOOD, ids=["all-set", "tracing-off"])
def test_good_values_still_start(tmp_path, given):
    """Good values: remora runs (then stops cleanly on SIGTERM)."""
    cfg = tmp_path / "mesh.json"
    cfg.write_text(json.dumps(mesh_config(*free_ports(2))))
    ingress, egress, admin = free_ports(3)
    env = clean_env(given)
    log = open(tmp_path / "remora.log", "w")
    proc = subprocess.Popen(
        [REMORA, "--config", str(cfg), "--ingress-port", str(ingress), "--egress-port",
         str(egress), "--admin", f"127.0.0.1:{admin}", "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_until(lambda: "remora live" in (tmp_path / "remora.log").read_text()
                   or proc.poll() is not None, timeout=15, what="remora live")
        assert proc.poll() is None, (tmp_path / "remora.log").read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(25)
        log.close()
    assert proc.returncode == 0, (tmp_path / "remora.log").read_text()


# ---- container credentials with a line break ----

class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class Peer:
    """An HTTP server on 127.0.0.1 in a thread; `handle(handler)` answers each request and
    every request's (path, headers with lower-case names) is kept in `requests`."""

    def __init__(self, handle):
        peer = self
        self.requests, self.lock = [], threading.Lock()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _any(self):
                n = int(self.headers.get("Content-Length") or 0)
                if n:
                    self.rfile.read(n)
                with peer.lock:
                    peer.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                    status, body = handle(self, len(peer.requests))
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _any

        self.httpd = _Server(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()

    def seen(self):
        with self.lock:
            return list(self.requests)

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_credentials_with_line_breaks_are_refused_and_fetched_again(tmp_path):
    expires = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=6)
               ).strftime("%Y-%m-%dT%H:%M:%SZ")
    bad = {"AccessKeyId": "ASIABAD\r\nX-Evil: 1", "SecretAccessKey": "s" * 40,
           "Token": "tok\r\nX-Evil: 1", "Expiration": expires}
    good = {"AccessKeyId": "ASIAGOOD", "SecretAccessKey": "s" * 40, "Token": "tok",
            "Expiration": expires}
    creds = Peer(lambda h, n: (200, json.dumps(bad if n == 1 else good).encode()))

    def cloudmap(h, n):
        if "DiscoverInstancesRevision" in h.headers.get("X-Amz-Target", ""):
            return 200, b'{"InstancesRevision": 1}'
        return 200, json.dumps({"InstancesRevision": 1, "Instances": [{
            "InstanceId": "i-1", "NamespaceName": "shop.local", "ServiceName": "cart",
            "HealthStatus": "HEALTHY", "Attributes": {"AWS_INSTANCE_IPV4": "127.0.0.2"}}]}).encode()
    cm = Peer(cloudmap)
    app, cart = free_ports(2)
    config = mesh_config(app, cart)
    config["virtualNodes"][1]["spec"]["serviceDiscovery"] = {
        "awsCloudMap": {"namespaceName": "shop.local", "serviceName": "cart"}}
    cfg = tmp_path / "mesh.json"
    cfg.write_text(json.dumps(config))
    ingress, egress, admin = free_ports(3)
    env = clean_env({"AWS_REGION": "us-east-1",
                     "AWS_ENDPOINT_URL_SERVICEDISCOVERY": f"http://127.0.0.1:{cm.port}",
                     "AWS_CONTAINER_CREDENTIALS_FULL_URI": f"http://127.0.0.1:{creds.port}/creds",
                     "REMORA_CLOUDMAP_DISCOVERY": "api", "REMORA_CLOUDMAP_POLL_MS": "200"})
    log_path = tmp_path / "remora.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [REMORA, "--config", str(cfg), "--ingress-port", str(ingress), "--egress-port",
         str(egress), "--admin", f"127.0.0.1:{admin}", "--workers", "1", "--log-level", "debug"],
        stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        # The bad answer is a failed fetch: retried with backoff (1 s first), not kept for hours.
        wait_until(lambda: len(creds.seen()) >= 2 or proc.poll() is not None, timeout=10,
                   what="a second credentials fetch")
        assert proc.poll() is None, log_path.read_text()
        assert len(creds.seen()) >= 2, log_path.read_text()
        # Cloud Map calls are then signed with the good credentials, and only with them.
        wait_until(lambda: any("Credential=ASIAGOOD/" in h.get("authorization", "")
                               for _, h in cm.seen()), timeout=10,
                   what="a Cloud Map call signed with the good credentials")
        for _, h in cm.seen():
            assert "Credential=ASIAGOOD/" in h.get("authorization", ""), h
            assert h.get("x-amz-security-token") == "tok", h
            assert "x-evil" not in h, h
        assert "holds a control byte" in log_path.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(25)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        creds.stop()
        cm.stop()
    out = log_path.read_text()
    assert proc.returncode == 0, out
    assert "Sanitizer" not in out, out
