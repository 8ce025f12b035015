"""The control plane's own HTTP client (http/client.c), as the config URL uses it, against real
and hostile servers: https checked against the trust store named by SSL_CERT_FILE (a trusted
certificate, one from another CA, one for another name), an S3 object read through moto with
signature verification on, a body past the cap, a reply that is not HTTP, a server that stops
answering mid-run. `remora check` fetches once and must say what went wrong; a running remora
must keep its config and count the failure."""
import http.server
import json
import os
import ssl
import subprocess
import threading
import urllib.request

import pytest

from certs import CA
from conftest import REMORA, free_port, free_ports, port_open, wait_until
from rawhttp import Conn, request
from test_config_url import mesh_doc as config_url_mesh

PY311 = "/root/.pyenv/shims/python3"


def mesh_doc(ports, weights):
    """test_config_url's two-version mesh, as the bytes a server sends."""
    return json.dumps(config_url_mesh(ports, weights)).encode()


class DocServer:
    """Serves `self.body` at any path; `mode` makes it misbehave: "ok", "garbage" (bytes that
    are not HTTP), "huge" (a 33 MiB body, past remora's 32 MiB cap)."""

    def __init__(self, tls_ctx=None):
        self.body, self.mode, self.requests = b"{}", "ok", 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                outer.requests += 1
                if outer.mode == "garbage":
                    self.wfile.write(b"SURPRISE\x00\x01\r\n\r\n")
                    self.close_connection = True
                    return
                body = outer.body if outer.mode == "ok" else b" " * (33 * 1024 * 1024)
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        if tls_ctx:
            self.httpd.socket = tls_ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def base_env(extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("APPMESH_", "ENVOY_", "REMORA_", "AWS_", "SSL_CERT"))}
    env.update(extra)
    return env


def check(env):
    """`remora check` with the config from a URL: (exit code, output)."""
    p = subprocess.run([REMORA, "check"], env=base_env(env), capture_output=True, text=True,
                       timeout=60)
    return p.returncode, p.stdout + p.stderr


class UrlRemora:
    def __init__(self, tmp_path, env):
        self.ingress, self.egress, self.admin_port = free_ports(3)
        self.log_path = os.path.join(tmp_path, "remora.log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [REMORA, "--ingress-port", str(self.ingress), "--egress-port", str(self.egress),
             "--admin", f"127.0.0.1:{self.admin_port}", "--workers", "1", "--log-level", "debug"],
            stdout=self.log, stderr=subprocess.STDOUT, env=base_env(env))
        wait_until(lambda: self.get("/ready")[0] == 200, timeout=15, what="remora /ready")

    def get(self, path):
        if self.proc.poll() is not None:
            raise AssertionError(f"remora exited {self.proc.returncode}:\n{open(self.log_path).read()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError:
            return 0, ""

    def stat(self, name):
        for line in self.get("/stats")[1].splitlines():
            k, _, v = line.rpartition(": ")
            if k == name and v.isdigit():
                return int(v)
        return 0

    def stop(self):
        self.proc.terminate()
        code = self.proc.wait(25)
        self.log.close()
        log = open(self.log_path).read()
        assert code == 0 and "Sanitizer" not in log and "runtime error:" not in log, log[-3000:]


def served_by(r, n):
    c, out = Conn(r.egress), {}
    for _ in range(n):
        c.send(request("GET", "/echo"))
        resp = c.read_response()
        key = json.loads(resp.body)["server"] if resp.status == 200 else str(resp.status)
        out[key] = out.get(key, 0) + 1
        if resp.header("connection") == "close":
            c = Conn(r.egress)
    return out


@pytest.fixture
def site(upstream, tmp_path):
    started = []

    class Site:
        ups = {n: upstream(n) for n in ("cart-v1", "cart-v2")}
        ports = {n: u.port for n, u in ups.items()}

        def remora(self, env):
            d = tmp_path / f"r{len(started)}"
            d.mkdir()
            r = UrlRemora(str(d), env)
            started.append(r)
            return r

    yield Site()
    for r in started:
        r.stop()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("pki"))
    ca, other = CA(os.path.join(d, "ca"), "config CA"), CA(os.path.join(d, "ca2"), "other CA")
    return {"ca": ca,
            "good": ca.issue(os.path.join(d, "leaves"), "good", [("IP", "127.0.0.1")]),
            "other_ca": other.issue(os.path.join(d, "leaves"), "other", [("IP", "127.0.0.1")]),
            "wrong_name": ca.issue(os.path.join(d, "leaves"), "wrong", [("DNS", "elsewhere.local")])}


def tls_server(cert):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert.cert, cert.key)
    return DocServer(ctx)


def test_https_config_url_is_verified_against_the_trust_store(site, pki):
    srv = tls_server(pki["good"])
    try:
        srv.body = mesh_doc(site.ports, (0, 100))
        url = f"https://127.0.0.1:{srv.port}/mesh.json"
        env = {"REMORA_CONFIG_URL": url, "SSL_CERT_FILE": pki["ca"].cert}
        code, out = check(env)
        assert code == 0, out
        assert "cart-v2" in out
        r = site.remora(dict(env, REMORA_CONFIG_POLL_MS="200"))
        assert served_by(r, 20) == {"cart-v2": 20}
        srv.body = mesh_doc(site.ports, (100, 0))
        wait_until(lambda: served_by(r, 5) == {"cart-v1": 5}, timeout=5,
                   what="the new weights over https")
        assert r.stat("remora.config_url.changed") == 1
        # Without the CA the same server is refused: the config in force stays.
        code, out = check({"REMORA_CONFIG_URL": url, "SSL_CERT_FILE": "/dev/null"})
        assert code == 1 and "TLS handshake or certificate verification failed" in out, out
    finally:
        srv.stop()


@pytest.mark.parametrize("cert", ["other_ca", "wrong_name"])
def test_an_untrusted_or_misnamed_certificate_is_refused(pki, cert):
    srv = tls_server(pki[cert])
    try:
        srv.body = b"{}"
        code, out = check({"REMORA_CONFIG_URL": f"https://127.0.0.1:{srv.port}/m.json",
                           "SSL_CERT_FILE": pki["ca"].cert})
        assert code == 1, out
        assert "TLS handshake or certificate verification failed" in out, out
        assert srv.requests == 0  # the request never reached the server
    finally:
        srv.stop()


@pytest.mark.parametrize("mode,message", [("huge", "buffer limit exceeded"),
                                          ("garbage", "malformed upstream response")])
def test_hostile_replies_are_refused_with_a_reason(mode, message):
    srv = DocServer()
    srv.mode = mode
    try:
        code, out = check({"REMORA_CONFIG_URL": f"http://127.0.0.1:{srv.port}/m.json"})
        assert code == 1, out
        assert f"http://127.0.0.1:{srv.port}/m.json: $: cannot fetch: {message}" in out, out
    finally:
        srv.stop()


def test_a_running_sidecar_keeps_its_config_through_hostile_replies(site):
    srv = DocServer()
    try:
        srv.body = mesh_doc(site.ports, (100, 0))
        r = site.remora({"REMORA_CONFIG_URL": f"http://127.0.0.1:{srv.port}/m.json",
                         "REMORA_CONFIG_POLL_MS": "100"})
        for mode in ("garbage", "huge"):
            srv.mode = mode
            before = r.stat("remora.config_url.error")
            wait_until(lambda: r.stat("remora.config_url.error") >= before + 1, timeout=10,
                       what=f"a {mode} reply counted as an error")
            assert served_by(r, 10) == {"cart-v1": 10}
        assert r.stat("remora.config.reload_failed") == 0  # nothing was parsed
        srv.mode = "ok"
        srv.body = mesh_doc(site.ports, (0, 100))
        wait_until(lambda: served_by(r, 5) == {"cart-v2": 5}, timeout=70,
                   what="recovery after the backoff")
    finally:
        srv.stop()


# ---- S3 through moto, with signature verification ----

S3_ADMIN = r"""
import json, sys, boto3
ep, cmd = sys.argv[1], json.loads(sys.argv[2])
kw = dict(endpoint_url=ep, region_name="us-east-1")
if cmd["op"] == "setup":
    iam = boto3.client("iam", aws_access_key_id="AKIAADMIN", aws_secret_access_key="x", **kw)
    iam.create_user(UserName="admin")
    iam.put_user_policy(UserName="admin", PolicyName="all", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    admin = iam.create_access_key(UserName="admin")["AccessKey"]
    iam.create_user(UserName="sidecar")
    iam.put_user_policy(UserName="sidecar", PolicyName="read", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}]}))
    side = iam.create_access_key(UserName="sidecar")["AccessKey"]
    s3 = boto3.client("s3", aws_access_key_id=admin["AccessKeyId"],
                      aws_secret_access_key=admin["SecretAccessKey"], **kw)
    s3.create_bucket(Bucket="fleet")
    print(json.dumps({"admin": [admin["AccessKeyId"], admin["SecretAccessKey"]],
                      "sidecar": [side["AccessKeyId"], side["SecretAccessKey"]]}))
else:
    s3 = boto3.client("s3", aws_access_key_id=cmd["key"][0], aws_secret_access_key=cmd["key"][1], **kw)
    s3.put_object(Bucket="fleet", Key="mesh/shop.json", Body=cmd["body"].encode())
    print("{}")
"""


@pytest.fixture
def moto_s3(tmp_path):
    if not os.path.exists(PY311):
        pytest.skip(f"{PY311} (with moto and boto3) is not installed")
    port = free_port()
    log = open(tmp_path / "moto.log", "w")
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="6")  # the set-up's calls, then verified
    proc = subprocess.Popen([PY311, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    wait_until(lambda: port_open(port), timeout=30, what="moto")
    endpoint = f"http://127.0.0.1:{port}"

    def admin(cmd):
        p = subprocess.run([PY311, "-c", S3_ADMIN, endpoint, json.dumps(cmd)], capture_output=True,
                           text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)

    keys = admin({"op": "setup"})
    yield endpoint, keys, admin
    proc.terminate()
    proc.wait(10)
    log.close()


def test_a_private_s3_object_is_read_with_a_signature(site, moto_s3):
    endpoint, keys, admin = moto_s3
    put = lambda w: admin({"op": "put", "key": keys["admin"],
                           "body": mesh_doc(site.ports, w).decode()})
    put((100, 0))
    env = {"REMORA_CONFIG_URL": "s3://fleet/mesh/shop.json", "AWS_ENDPOINT_URL_S3": endpoint,
           "AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": keys["sidecar"][0],
           "AWS_SECRET_ACCESS_KEY": keys["sidecar"][1]}
    # A wrong secret: moto recomputes the signature and refuses it.
    code, out = check(dict(env, AWS_SECRET_ACCESS_KEY="not-the-secret"))
    assert code == 1 and "cannot fetch: HTTP 403" in out, out
    code, out = check(env)
    assert code == 0, out
    r = site.remora(dict(env, REMORA_CONFIG_POLL_MS="200"))
    assert served_by(r, 10) == {"cart-v1": 10}
    wait_until(lambda: r.stat("remora.config_url.not_modified") >= 2, timeout=5,
               what="conditional polls answered 304")
    put((0, 100))
    wait_until(lambda: served_by(r, 5) == {"cart-v2": 5}, timeout=5,
               what="the new object's weights")
    assert r.stat("remora.config_url.changed") == 1
    assert r.stat("remora.config_url.error") == 0
