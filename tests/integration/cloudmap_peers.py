"""Peers for test_cloudmap.py and test_config_url.py.

Moto is the real moto server (moto 5.2.1, run with the interpreter that has it, MOTO_PYTHON)
standing in for Cloud Map's HTTP API, on a free loopback port; it can be stopped, restarted (on
the same port) and paused. Admin drives it through cloudmap_admin.py (boto3, signed requests).
CloudMapProxy sits between remora and moto: it records every request remora makes (operation,
body, headers) and can answer instead of moto (500, 503, throttling, a hang) while moto keeps
its state. CredentialsServer is a stand-in for ECS's container credentials endpoint.
ConfigServer serves remora's config document with ETag / Last-Modified validators.
LoopbackUpstream is upstream.py bound to one loopback address (127.0.0.2, ...) on a given port,
since Cloud Map instances are dialled on the virtual node's listener port.
"""
import datetime
import email.utils
import hashlib
import http.client
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from conftest import HERE, REMORA, Remora, free_port, free_ports, wait_until

MOTO_PYTHON = os.environ.get("MOTO_PYTHON", "/root/.pyenv/shims/python3")
REGION = "us-east-1"


def _stop(proc, timeout=5):
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _HTTPPeer:
    """A ThreadingHTTPServer on 127.0.0.1 (free port) in a thread; `handler` is a
    BaseHTTPRequestHandler subclass whose instances reach the peer as self.server.peer."""

    def _serve(self, handler):
        self.httpd = _Server(("127.0.0.1", 0), handler)
        self.httpd.peer = self
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def stop(self):
        if self.httpd:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def reply(self, status, body=b"", headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        if status >= 200 and status not in (204, 304):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and status not in (204, 304):
            self.wfile.write(body)

    def drop(self):
        """Close the connection without answering."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


# ---- moto ----

class Moto:
    """The moto server on 127.0.0.1:port. Signature verification is off until reset_auth(0)."""

    def __init__(self, log_dir, port=None, env=None):
        self.port = port or free_port()
        self.log_path = os.path.join(log_dir, f"moto-{self.port}.log")
        self.env = dict(os.environ, **(env or {}))
        self.proc = None
        self.start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen(
            [MOTO_PYTHON, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=log, stderr=subprocess.STDOUT, env=self.env)
        log.close()

        def answers():
            if self.proc.poll() is not None:
                raise AssertionError(f"moto exited with {self.proc.returncode}:\n"
                                     + open(self.log_path).read()[-2000:])
            with urllib.request.urlopen(self.url + "/moto-api/data.json", timeout=1) as r:
                return r.status == 200

        wait_until(answers, timeout=20, interval=0.05, what=f"moto on {self.port}")

    def stop(self):
        _stop(self.proc)

    def pause(self):
        """SIGSTOP: connections are accepted (the kernel's backlog) but never answered."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self):
        self.proc.send_signal(signal.SIGCONT)

    def reset(self):
        """Forget every resource (POST /moto-api/reset) and stop verifying signatures."""
        if self.proc.poll() is not None:
            self.start()
        self.resume()
        req = urllib.request.Request(self.url + "/moto-api/reset", method="POST", data=b"")
        urllib.request.urlopen(req, timeout=5).close()
        self.reset_auth("inf")

    def reset_auth(self, free_requests=0):
        """From now on, the first `free_requests` requests pass unchecked; every later one must
        carry a valid SigV4 signature by a known key whose policies allow the action."""
        req = urllib.request.Request(self.url + "/moto-api/reset-auth", method="POST",
                                     data=str(free_requests).encode(),
                                     headers={"Content-Type": "text/plain"})  # not a form
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())


class Admin:
    """cloudmap_admin.py in MOTO_PYTHON: one JSON command per line (see its docstring)."""

    def __init__(self, endpoint, log_dir):
        self.stderr = open(os.path.join(log_dir, f"admin-{id(self)}.log"), "w")
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self.proc = subprocess.Popen(
            [MOTO_PYTHON, os.path.join(HERE, "cloudmap_admin.py"), "--endpoint", endpoint,
             "--region", REGION],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True, env=env)
        first = self.proc.stdout.readline()
        assert first and json.loads(first)["ok"], f"cloudmap_admin.py did not start: {first!r}"

    def try_call(self, op, **kw):
        """(ok, result or error text)."""
        self.proc.stdin.write(json.dumps(dict(kw, op=op)) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"cloudmap_admin.py exited ({self.proc.poll()})"
        reply = json.loads(line)
        return reply["ok"], reply.get("result", reply.get("error"))

    def call(self, op, **kw):
        ok, out = self.try_call(op, **kw)
        assert ok, f"{op} {kw}: {out}"
        return out

    def service(self, namespace, name):
        return self.call("service", namespace=namespace, name=name)

    def register(self, service, instance_id, **attributes):
        return self.call("register", service=service, id=instance_id, attributes=attributes)

    def deregister(self, service, instance_id):
        return self.call("deregister", service=service, id=instance_id)

    def discover(self, namespace, service, query=None, health=None):
        return self.call("discover", namespace=namespace, service=service, query=query,
                         health=health)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()


class Call:
    """One request remora made to the Cloud Map API, as the proxy saw it."""

    def __init__(self, op, body, headers, t):
        self.op, self.body, self.headers, self.t = op, body, headers, t
        self.status = None  # the HTTP status answered, or "refused" / "close" / "hang"
        self.reply = None  # the answer's JSON, or its text

    @property
    def access_key(self):
        """The access key id in the Authorization header's Credential=."""
        auth = self.headers.get("authorization", "")
        return auth.partition("Credential=")[2].partition("/")[0]

    def __repr__(self):
        return f"Call({self.op} {self.body} -> {self.status} {str(self.reply)[:200]})"


class CloudMapProxy(_HTTPPeer):
    """Forwards every request to moto unchanged (Host included: it is signed) and records it
    as a Call. `mode` answers instead: "pass", an HTTP status (500, 503), "throttle" (400
    RequestLimitExceeded as AWS sends it), "hang" (never answers) or "close" (closes)."""

    THROTTLE = json.dumps({"__type": "com.amazonaws.servicediscovery#RequestLimitExceeded",
                           "Message": "Rate exceeded"}).encode()

    def __init__(self, upstream_port):
        self.upstream_port = upstream_port
        self.mode = "pass"
        self.calls = []
        self.lock = threading.Lock()
        self.release = threading.Event()
        self._serve(_ProxyHandler)

    def seen(self, op=None, since=0):
        """The Calls answered so far (all, or those of operation `op`), from index `since`."""
        with self.lock:
            return [c for c in self.calls[since:] if c.status is not None
                    and (op is None or c.op == op)]

    def count(self, op=None):
        return len(self.seen(op))

    def stop(self):
        self.release.set()
        super().stop()


class _ProxyHandler(_Handler):
    def do_POST(self):
        peer = self.server.peer
        body = self.body()
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = body
        call = Call(headers.get("x-amz-target", "").rpartition(".")[2], parsed, headers,
                    time.monotonic())
        with peer.lock:
            peer.calls.append(call)
        mode = peer.mode
        status, reply = None, None
        try:
            if mode == "pass":
                c = http.client.HTTPConnection("127.0.0.1", peer.upstream_port, timeout=10)
                c.request("POST", self.path, body=body, headers=dict(self.headers.items()))
                resp = c.getresponse()
                data = resp.read()
                status = resp.status
                keep = [(k, v) for k, v in resp.getheaders()
                        if k.lower() not in ("content-length", "transfer-encoding", "connection",
                                             "date", "server")]
                c.close()
                try:
                    reply = json.loads(data)
                except ValueError:
                    reply = data.decode("utf-8", "replace")
                self.reply(status, data, keep)
            elif mode == "hang":
                status = "hang"
                peer.release.wait(30)
                self.drop()
            elif mode == "close":
                status = "close"
                self.drop()
            elif mode == "throttle":
                status = 400
                self.reply(400, peer.THROTTLE, [("Content-Type", "application/x-amz-json-1.1"),
                                                ("x-amzn-ErrorType", "RequestLimitExceeded:")])
            else:
                status = int(mode)
                self.reply(status, json.dumps({"__type": "InternalFailure",
                                               "message": "injected"}).encode(),
                           [("Content-Type", "application/x-amz-json-1.1")])
        except OSError:  # moto down: the client sees the connection close
            status = "refused"
            self.drop()
        finally:
            with peer.lock:
                call.reply = reply
                call.status = status if status is not None else "error"


# ---- ECS's container credentials endpoint (a stand-in) ----

class CredentialsServer(_HTTPPeer):
    """A stand-in for ECS's container credentials endpoint (the agent at 169.254.170.2, or the
    EKS Pod Identity agent behind AWS_CONTAINER_CREDENTIALS_FULL_URI): GET with the header
    `Authorization: <token>` answers {AccessKeyId, SecretAccessKey, Token, Expiration}; a
    missing or wrong token answers 401 (counted in `rejected`). `hand_out` is the list of
    credentials to give, one per fetch, the last repeated; every answer expires
    `lifetime` seconds after it is given (ECS refreshes 15 minutes before: lifetime 15 min +
    3 s makes a client that follows the rule fetch again about 3 s later)."""

    def __init__(self, token, hand_out, lifetime=15 * 60 + 3, path="/v2/credentials/task"):
        self.token, self.path, self.lifetime = token, path, lifetime
        self.hand_out = list(hand_out)
        self.fetches = []  # (monotonic time, AccessKeyId given) of each good fetch
        self.rejected = 0
        self.requests = []  # (path, headers) of every request
        self.status = 200  # set to 500 to make fetches fail
        self.lock = threading.Lock()
        self._serve(_CredentialsHandler)

    @property
    def full_uri(self):
        return self.url + self.path

    def count(self):
        with self.lock:
            return len(self.fetches)


class _CredentialsHandler(_Handler):
    def do_GET(self):
        peer = self.server.peer
        with peer.lock:
            peer.requests.append((self.path, dict(self.headers.items())))
            if self.path != peer.path:
                return self.reply(404, b'{"code":"NotFound","message":"no such path"}')
            if self.headers.get("Authorization") != peer.token:
                peer.rejected += 1
                return self.reply(401, b'{"code":"AccessDenied","message":"bad token"}')
            if peer.status != 200:
                return self.reply(peer.status, b'{"code":"InternalError","message":"injected"}')
            creds = peer.hand_out[min(len(peer.fetches), len(peer.hand_out) - 1)]
            peer.fetches.append((time.monotonic(), creds["AccessKeyId"]))
        expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(
            seconds=peer.lifetime)
        body = json.dumps({
            "RoleArn": "arn:aws:iam::123456789012:role/remora-task",
            "AccessKeyId": creds["AccessKeyId"], "SecretAccessKey": creds["SecretAccessKey"],
            "Token": creds["SessionToken"], "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }).encode()
        self.reply(200, body, [("Content-Type", "application/json")])


# ---- the config document server ----

class ConfigServer(_HTTPPeer):
    """Serves the config document at any path. Validators by `validators`:
    "etag" (a strong ETag, "sha256-prefix" of the body; If-None-Match equal -> 304),
    "last-modified" (no ETag; Last-Modified = when the document was set; If-Modified-Since not
    older -> 304), "none". `status` answers that status instead (503, 500) and "close" closes
    the connection unanswered. `version` adds a Configuration-Version header (AppConfig agent).
    Every request's headers are recorded in `requests` with what was answered."""

    def __init__(self, document=None, validators="etag"):
        self.validators = validators
        self.status = 200
        self.lock = threading.Lock()
        self.requests = []  # (monotonic time, path, {lower header: value}, status answered)
        self.version = None
        self.modified = 0.0
        self.body, self.etag = b"{}", self.etag_of(b"{}")
        if document is not None:
            self.set(document)
        self._serve(_ConfigHandler)

    @staticmethod
    def etag_of(body):
        return '"' + hashlib.sha256(body).hexdigest()[:16] + '"'

    def set(self, document, version=None, modified=None):
        """Swap the document (a dict is dumped as JSON; bytes are served as they are)."""
        body = document if isinstance(document, bytes) else json.dumps(document).encode()
        with self.lock:
            self.body = body
            self.etag = self.etag_of(body)
            # HTTP dates have 1 s resolution: a swap within the same second as the previous one
            # must still look newer.
            stamp = modified or max(time.time(), self.modified + 1)
            self.modified = float(int(stamp))
            self.version = version
        return self.etag

    def last_modified(self):
        return email.utils.formatdate(self.modified, usegmt=True)

    def seen(self, since=0):
        with self.lock:
            return self.requests[since:]

    def count(self):
        with self.lock:
            return len(self.requests)


class _ConfigHandler(_Handler):
    def do_GET(self):
        peer = self.server.peer
        headers = {k.lower(): v for k, v in self.headers.items()}
        with peer.lock:
            status, body, etag, modified = peer.status, peer.body, peer.etag, peer.modified
            version, validators = peer.version, peer.validators
        out = []
        if status == 200:
            if validators == "etag":
                out.append(("ETag", etag))
                if headers.get("if-none-match") == etag:
                    status = 304
            elif validators == "last-modified":
                out.append(("Last-Modified", email.utils.formatdate(modified, usegmt=True)))
                ims = headers.get("if-modified-since")
                if ims and "if-none-match" not in headers:
                    try:
                        if email.utils.parsedate_to_datetime(ims).timestamp() >= modified:
                            status = 304
                    except (TypeError, ValueError):
                        pass
            if version is not None:
                out.append(("Configuration-Version", version))
            out.append(("Content-Type", "application/json"))
        with peer.lock:
            peer.requests.append((time.monotonic(), self.path, headers, status))
        if status == "close":
            return self.drop()
        if status == 200:
            return self.reply(200, body, out)
        if status == 304:
            return self.reply(304, b"", [h for h in out if h[0] != "Content-Type"])
        self.reply(status, b'{"message":"injected failure"}', [("Content-Type", "application/json")])


# ---- upstreams on loopback addresses ----

class LoopbackUpstream:
    """upstream.py on ip:port (ip in 127.0.0.0/8), answering with its own name."""

    def __init__(self, ip, port, name):
        self.ip, self.port, self.name = ip, port, name
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "upstream.py"), "--host", ip, "--port", str(port),
             "--name", name], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

        def up():
            if self.proc.poll() is not None:
                raise AssertionError(f"upstream {name} on {ip}:{port} exited")
            with socket.create_connection((ip, port), timeout=0.2):
                return True

        wait_until(up, what=f"upstream {name} on {ip}:{port}")

    def stats(self):
        with urllib.request.urlopen(f"http://{self.ip}:{self.port}/_stats", timeout=5) as r:
            return json.loads(r.read())

    def stop(self):
        _stop(self.proc)


def shared_free_port(ips):
    """A port free on every address in `ips` (checked by binding each)."""
    for _ in range(50):
        port = free_port()
        socks = []
        try:
            for ip in ips:
                s = socket.socket()
                s.bind((ip, port))
                socks.append(s)
            return port
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError("no port free on all of " + ", ".join(ips))


# ---- remora without --config ----

class UrlRemora(Remora):
    """remora started with REMORA_CONFIG_URL and no --config (otherwise as conftest's Remora);
    the constructor returns at once, before remora is ready."""

    def __init__(self, tmp_path, env, workers=1):
        self.ingress, self.egress, self.admin_port = free_ports(3)
        self.config_path = None
        self.log_path = os.path.join(tmp_path, "remora.log")
        self.log = open(self.log_path, "w")
        full_env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("APPMESH_", "ENVOY_", "REMORA_", "AWS_"))}
        full_env.update(env)
        self.proc = subprocess.Popen(
            [REMORA, "--ingress-port", str(self.ingress), "--egress-port", str(self.egress),
             "--admin", f"127.0.0.1:{self.admin_port}", "--workers", str(workers),
             "--log-level", "debug"],
            stdout=self.log, stderr=subprocess.STDOUT, env=full_env)


def check_clean_exit(started):
    failures = []
    for r in started:
        code = r.stop()
        log = open(r.log_path).read()
        if code != 0 or "Sanitizer" in log or "runtime error:" in log:
            failures.append(f"remora exit {code}; log tail:\n{log[-3000:]}")
    assert not failures, "\n".join(failures)


# ---- fixtures ----

@pytest.fixture
def no_aws_env(monkeypatch):
    """The conftest Remora passes AWS_* through from the environment: none may leak in."""
    for k in list(os.environ):
        if k.startswith("AWS_"):
            monkeypatch.delenv(k)


@pytest.fixture(scope="module")
def moto_session(tmp_path_factory):
    """One moto server and admin process per test module (moto takes ~0.5 s to start); the
    `cloudmap` fixture resets both before each test."""
    d = str(tmp_path_factory.mktemp("moto"))
    moto = Moto(d)
    try:
        admin = Admin(moto.url, d)
    except BaseException:
        moto.stop()
        raise
    yield moto, admin
    admin.stop()
    moto.stop()


class CloudMap:
    """What a Cloud Map test talks to: .moto, .proxy (in front of moto, recording), .admin,
    and .env, remora's environment for them (endpoint = the proxy, Region, 200 ms polls)."""

    def __init__(self, moto, admin):
        self.moto, self.admin = moto, admin
        self.proxy = CloudMapProxy(moto.port)
        self.env = {"AWS_ENDPOINT_URL_SERVICEDISCOVERY": self.proxy.url, "AWS_REGION": REGION,
                    "REMORA_CLOUDMAP_POLL_MS": "200"}

    def secure(self, roles=()):
        """Turns moto's signature verification on after creating, unchecked, an IAM user
        "remora" allowed DiscoverInstances*, plus the roles named; returns the environment
        that gives remora that user's key."""
        out = self.admin.call("auth_setup", roles=list(roles), users=["remora"])
        self.moto.reset_auth(0)
        key = out["users"]["remora"]
        return {"AWS_ACCESS_KEY_ID": key["AccessKeyId"],
                "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}


@pytest.fixture
def cloudmap(moto_session, no_aws_env):
    """A fresh moto (state wiped, no signature checks), a new recording proxy and the admin."""
    moto, admin = moto_session
    moto.reset()
    admin.call("reset")
    cm = CloudMap(moto, admin)
    yield cm
    cm.proxy.stop()


@pytest.fixture
def loopback_upstreams():
    started = []

    def start(ip, port, name):
        u = LoopbackUpstream(ip, port, name)
        started.append(u)
        return u

    yield start
    for u in started:
        u.stop()


@pytest.fixture
def credentials_server():
    started = []

    def start(*args, **kw):
        s = CredentialsServer(*args, **kw)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


@pytest.fixture
def config_server():
    started = []

    def start(*args, **kw):
        s = ConfigServer(*args, **kw)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


@pytest.fixture
def url_remora(tmp_path, no_aws_env):
    started = []

    def start(env, wait=True, **kw):
        d = tmp_path / f"u{len(started)}"
        d.mkdir()
        r = UrlRemora(str(d), env, **kw)
        started.append(r)
        if wait:
            wait_until(r.ready, what="remora /ready")
        return r

    yield start
    check_clean_exit(started)
