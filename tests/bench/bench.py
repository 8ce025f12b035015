#!/usr/bin/python3
"""remora against HAProxy, nginx and a direct connection, measured in the same run on the same
machine, interleaved (A B C D, A B C D, ...) so drift on a shared machine cancels, and reported
as ratios. `make bench` runs it in full; `make bench-smoke` runs a short pass that keeps the
harness working and never fails on timing.

Measures, for each target (direct = the upstream nginx itself):
  throughput at saturation (wrk), small GET, 16 KiB POST, 1 MiB GET; 1 and 2 workers
  latency p50/p99/p99.9 at a fixed rate below saturation (openloop, open loop)
  instructions per proxied request (callgrind; slope between two request counts)
  system calls per proxied request (strace -c attached while a fixed count passes)
  CPU time (user + system) per 100,000 proxied requests, from /proc/PID/stat
  RSS idle, RSS with many idle keep-alive client connections, time from exec to /ready
  RSS growth per stalled client (pipelining 16 KiB GETs, never reading), capped at 1 GiB
  remora with X-Ray on (sampled 5%, daemon absent) and off
  TLS (remora's ingress, HAProxy and nginx terminating TLS 1.3 with one EC P-256 certificate, one
  cipher and one group, to the same plaintext upstream): full handshakes per second with a new
  connection per GET (ab) and the proxy's CPU time per handshake, keep-alive throughput over TLS
  (wrk), and RSS per idle TLS connection
  TCP relaying (remora's ingress with a `tcp` listener, HAProxy `mode tcp`, nginx `stream`, each in
  front of the same HTTP upstream, whose bytes they relay without parsing; checked first with raw
  non-HTTP bytes through an echo): keep-alive throughput of 1 MiB and 64 KiB GETs (MiB/s, wrk) with
  the proxy's CPU time per GiB, and new connections per second (wrk, `Connection: close`) with the
  proxy's CPU time per 1,000 connections
  config scale: a whole mesh in one document (tests/bench/bigmesh.py; App Mesh's quotas are 200
  nodes, 200 routers of 50 routes, 50 backends per node): time from exec to /ready, RSS once
  ready, and `remora check` time, for 50 and 10,000 routes (reported, never a pass/fail)
Every timed figure is the median of its rounds, printed with the smallest and largest round.
"""
import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import signal
import socket
import socketserver
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.path.join(ROOT, "build")
REMORA = os.path.join(BUILD, "remora")
OPENLOOP = os.path.join(BUILD, "bench", "openloop")
CLK_TCK = os.sysconf("SC_CLK_TCK")
RSS_CAP_KIB = 1 << 20  # the stalled-client run stops a proxy that passes 1 GiB
NGINX_STREAM = "/usr/lib/nginx/modules/ngx_stream_module.so"  # libnginx-mod-stream
TCP_PROBE = b"PING\r\n"  # not HTTP: a proxy that parses HTTP answers it with an error, or waits


class Spread:
    """A figure measured once per round: the median, shown with the smallest and largest round
    (only the median when the rounds agree, or when there was one)."""

    def __init__(self, values, digits=0):
        self.values = list(values)
        self.median = statistics.median(self.values)
        self.lo, self.hi = min(self.values), max(self.values)
        self.digits = digits

    def __float__(self):
        return float(self.median)

    def __str__(self):
        f = f"{{:,.{self.digits}f}}"
        if self.lo == self.hi:
            return f.format(self.median)
        return f"{f.format(self.median)} ({f.format(self.lo)}–{f.format(self.hi)})"

    __repr__ = __str__


def free_ports(n):
    """n distinct free ports: the sockets stay bound until all are chosen."""
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def free_port():
    return free_ports(1)[0]


def wait_for(probe, timeout, proc, what):
    """Until probe() is true (an OSError counts as false); SystemExit if proc exits first or
    the deadline passes."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"bench: exited with status {proc.returncode} before {what}")
        try:
            if probe():
                return
        except OSError:
            pass
        time.sleep(0.005)
    raise SystemExit(f"bench: not {what} within {timeout} s")


def wait_port(port, timeout=10, proc=None):
    wait_for(lambda: socket.create_connection(("127.0.0.1", port), 0.2).close() or True,
             timeout, proc, f"listening on {port}")


def wait_ready(admin, timeout=30, proc=None):
    """Until remora's /ready on the admin port answers 200."""
    def ready():
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=1) as r:
            return r.status == 200
    wait_for(ready, timeout, proc, f"/ready on {admin} answering 200")


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except FileNotFoundError:  # exited between listing and reading
        pass
    return 0


def cpu_ticks(pid):
    """utime + stime of a whole process (all its threads, live and exited), in clock ticks."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # after "pid (comm)": field 3 onwards
    except FileNotFoundError:
        return 0
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


class NotUp(SystemExit):
    """A target that exited, or never listened; `log` is the tail of what it printed."""

    def __init__(self, message, log):
        super().__init__(message)
        self.log = log


class Proc:
    def __init__(self, argv, port, env=None, ready=None, quiet=False, stdout=None, admin=None):
        """stdout: a file for the process's standard output alone (HAProxy's `log stdout`);
        without it stdout and stderr both go to the log that a failure to come up shows.
        admin: remora's admin port, whose /ready answering 200 is what up means (remora listens
        on its ingress before its admin does, and is ready only after its first discovery)."""
        self.argv, self.port, self.admin = argv, port, admin
        self.log = tempfile.NamedTemporaryFile(prefix="remora-bench-log-", delete=False)
        self.p = subprocess.Popen(argv, stdout=self.log if stdout is None else stdout,
                                  stderr=subprocess.STDOUT if stdout is None else self.log, env=env,
                                  start_new_session=True)
        try:
            (ready or (lambda prt: wait_port(prt, proc=self.p)))(port)
            if admin is not None:
                wait_ready(admin, proc=self.p)
        except SystemExit as e:
            with open(self.log.name) as f:
                log = f.read()[-2000:]
            if not quiet:
                print(f"bench: {' '.join(argv)} did not come up:\n{log}", file=sys.stderr)
            self.stop()
            raise NotUp(str(e), log) from None

    def pids(self):
        """The process and its children (nginx's worker)."""
        out = subprocess.run(["pgrep", "-s", str(self.p.pid)], capture_output=True, text=True).stdout
        return [int(x) for x in out.split()] or [self.p.pid]

    def workers(self):
        """The processes that serve requests: nginx's workers, else the process itself."""
        return [p for p in self.pids() if p != self.p.pid] or [self.p.pid]

    def rss(self):
        return sum(rss_kib(p) for p in self.pids())

    def cpu_ticks(self):
        return sum(cpu_ticks(p) for p in self.pids())

    def kill(self):
        """At once, without a graceful exit (one that holds a gigabyte can take a while)."""
        try:
            os.killpg(self.p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.stop()

    def stop(self):
        try:
            os.killpg(self.p.pid, signal.SIGTERM)
            self.p.wait(10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.log.close()
        os.unlink(self.log.name) if os.path.exists(self.log.name) else None


class Bench:
    def __init__(self, smoke):
        self.smoke = smoke
        self.dir = tempfile.mkdtemp(prefix="remora-bench-")
        os.chmod(self.dir, 0o755)  # nginx's workers run as nobody
        for name, size in (("big", 1 << 20), ("64k", 64 << 10), ("16k", 16 << 10)):
            with open(os.path.join(self.dir, name), "wb") as f:
                f.write(os.urandom(size))
            os.chmod(os.path.join(self.dir, name), 0o644)
        self.up_port = free_port()
        self.upstream = self.nginx_upstream()
        self.results = {}
        self.notes = []  # lines for the report's header
        self.tls_setup()

    def tls_setup(self):
        """An EC P-256 CA and a server certificate it signs (CN and SAN localhost, SAN 127.0.0.1),
        made here for this run; every TLS target serves the same certificate and key. The clients
        (ab, wrk, openssl s_client, the child that holds idle connections) are pinned to TLS 1.3,
        TLS_AES_128_GCM_SHA256 and X25519 by an OpenSSL configuration of their own (OPENSSL_CONF in
        their environment only), so that a target whose TLS settings the bench does not write
        (remora) negotiates what HAProxy and nginx are configured to accept."""
        d = self.dir
        self.ca, ca_key = os.path.join(d, "ca.pem"), os.path.join(d, "ca.key")
        self.cert, self.key = os.path.join(d, "server.pem"), os.path.join(d, "server.key")
        self.cert_key = os.path.join(d, "server-combined.pem")  # HAProxy's crt: chain, then key
        ext = os.path.join(d, "server.ext")
        with open(ext, "w") as f:
            f.write("subjectAltName = DNS:localhost, IP:127.0.0.1\nbasicConstraints = CA:FALSE\n"
                    "keyUsage = digitalSignature\nextendedKeyUsage = serverAuth\n")
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
        for argv in (["openssl", "req", "-x509", *ec, "-keyout", ca_key, "-out", self.ca, "-days", "7",
                      "-subj", "/CN=remora bench CA"],
                     ["openssl", "req", *ec, "-keyout", self.key, "-out", self.cert + ".csr",
                      "-subj", "/CN=localhost"],
                     ["openssl", "x509", "-req", "-in", self.cert + ".csr", "-CA", self.ca, "-CAkey", ca_key,
                      "-CAcreateserial", "-days", "7", "-extfile", ext, "-out", self.cert]):
            r = subprocess.run(argv, capture_output=True, text=True)
            if r.returncode:
                raise SystemExit(f"bench: {' '.join(argv)} failed:\n{r.stderr}")
        with open(self.cert_key, "w") as f:
            f.write(open(self.cert).read() + open(self.key).read())
        for path in (self.cert, self.key, self.cert_key):
            os.chmod(path, 0o644)  # a throwaway key in the run's own directory
        conf = os.path.join(d, "client-openssl.cnf")
        with open(conf, "w") as f:
            f.write("openssl_conf = openssl_init\n[openssl_init]\nssl_conf = ssl_sect\n"
                    "[ssl_sect]\nsystem_default = system_default_sect\n[system_default_sect]\n"
                    "MinProtocol = TLSv1.3\nCiphersuites = TLS_AES_128_GCM_SHA256\nGroups = X25519\n")
        self.tls_env = dict(os.environ, OPENSSL_CONF=conf)

    # ---- the targets ----

    def nginx_conf(self, name, body, workers=1, master=True):
        path = os.path.join(self.dir, name + ".conf")
        with open(path, "w") as f:
            f.write(f"""worker_processes {workers};
master_process {"on" if master else "off"};
daemon off;
pid {self.dir}/{name}.pid;
error_log {self.dir}/{name}.err warn;
events {{ worker_connections 20000; }}
http {{
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  client_body_temp_path {self.dir}/{name}-body;
  proxy_temp_path {self.dir}/{name}-proxy;
  {body}
}}
""")
        return path

    def nginx_upstream(self):
        conf = self.nginx_conf("upstream", f"""
  server {{
    listen 127.0.0.1:{self.up_port} reuseport backlog=4096;
    location = /small {{ return 200 "hello, world\\n"; }}
    location = /post {{ client_max_body_size 1m; client_body_buffer_size 64k; return 200 "ok\\n"; }}
    location = /big {{ alias {self.dir}/big; }}
    location = /64k {{ alias {self.dir}/64k; }}
    location = /16k {{ alias {self.dir}/16k; }}
    location = /status {{ stub_status; }}
  }}""", workers=1)
        return Proc(["nginx", "-c", conf], self.up_port)

    def remora(self, workers=1, xray=None, routes=0, tls=False, quiet=False, protocol="http", app=None,
               access_log=None):
        """remora with the upstream (or the port `app`) as its local app: the bench drives the
        ingress port, which the node's listener governs (and with `tls`, terminates TLS on; with
        protocol "tcp", relays bytes to the app without parsing them). access_log: a path for the
        node's `logging.accessLog.file` (Envoy's default format)."""
        port, admin, egress, xray_port = free_ports(4)
        listener = {"portMapping": {"port": self.up_port if app is None else app, "protocol": protocol}}
        if protocol == "http":
            listener["timeout"] = {"http": {"perRequest": {"unit": "s", "value": 0}}}
        if tls:
            listener["tls"] = {"mode": "STRICT", "certificate": {"file": {
                "certificateChain": self.cert, "privateKey": self.key}}}
        cfg = {"mesh": {"meshName": "bench"}, "virtualNodes": [{"virtualNodeName": "app", "spec": {
            "listeners": [listener]}}]}
        if access_log:
            cfg["virtualNodes"][0]["spec"]["logging"] = {"accessLog": {"file": {"path": access_log}}}
        if routes:
            add_routes(cfg, routes, self.up_port)
        path = os.path.join(self.dir, f"remora-{port}.json")
        with open(path, "w") as f:
            json.dump(cfg, f)
        env = {"PATH": os.environ["PATH"]}
        if xray is not None:
            env.update({"ENABLE_ENVOY_XRAY_TRACING": "1", "XRAY_DAEMON_PORT": str(xray_port),
                        "XRAY_SAMPLING_RATE": str(xray)})
        argv = [REMORA, "--config", path, "--node", "app", "--ingress-port", str(port),
                "--egress-port", str(egress), "--admin", f"127.0.0.1:{admin}",
                "--workers", str(workers), "--log-level", "error"]
        return Proc(argv, port, env=env, quiet=quiet, admin=admin), argv, env

    def remora_tls(self, workers=1):
        """remora terminating TLS on its ingress, or, if it will not, why not (a str)."""
        try:
            p = self.remora(workers, tls=True, quiet=True)[0]
        except NotUp as e:
            return f"TLS not available ({not_up_reason(e)})"
        got = self.tls_negotiated(p.port)
        if "error" in got:
            p.stop()
            return f"TLS not available (handshake: {got['error'][:200]})"
        return p

    def haproxy(self, threads=1, maxconn=9900, tls=False, log_file=None):
        """log_file: HTTP logging (`option httplog`) to HAProxy's stdout (`log stdout format raw
        local0`; there is no syslog here), which is redirected to that file."""
        port = free_port()
        conf = os.path.join(self.dir, f"haproxy-{port}.cfg")
        # TLS: the one certificate, TLS 1.3 only, one cipher, one group; a stats socket whose
        # counters tell how many TLS sessions were resumed.
        bind = (f"bind 127.0.0.1:{port} ssl crt {self.cert_key} ssl-min-ver TLSv1.3 "
                f"ciphersuites TLS_AES_128_GCM_SHA256 curves X25519" if tls else f"bind 127.0.0.1:{port}")
        stats = f"\n  stats socket {self.dir}/haproxy-{port}.sock" if tls else ""
        log_global = "\n  log stdout format raw local0" if log_file else ""
        log_defaults = "\n  option httplog\n  log global" if log_file else ""
        with open(conf, "w") as f:
            f.write(f"""global
  nbthread {threads}
  maxconn {maxconn}
  ulimit-n {min(19990, 2 * maxconn + 100)}{stats}{log_global}
defaults
  mode http{log_defaults}
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  option http-keep-alive
  http-reuse always
frontend fe
  {bind}
  default_backend be
backend be
  server s1 127.0.0.1:{self.up_port}
""")
        out = open(log_file, "ab") if log_file else None
        try:
            p = Proc(["haproxy", "-f", conf, "-db"], port, stdout=out)
        finally:
            if out:
                out.close()  # the child has its own descriptor
        p.stats = f"{self.dir}/haproxy-{port}.sock" if tls else None
        return p, ["haproxy", "-f", conf, "-db"]

    def nginx_proxy(self, workers=1, master=True, tls=False):
        port = free_port()
        ssl_conf = f"""
    ssl_certificate {self.cert};
    ssl_certificate_key {self.key};
    ssl_protocols TLSv1.3;
    ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256;
    ssl_ecdh_curve X25519;""" if tls else ""
        ssl_listen = " ssl" if tls else ""
        conf = self.nginx_conf(f"proxy-{port}", f"""
  upstream up {{ server 127.0.0.1:{self.up_port}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port} reuseport backlog=4096{ssl_listen};{ssl_conf}
    client_max_body_size 1m;
    client_body_buffer_size 1m;  # bodies in memory, as the other proxies keep them
    location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection "";
                 proxy_buffering off; }}
  }}""", workers=workers, master=master)
        return Proc(["nginx", "-c", conf], port), ["nginx", "-c", conf]

    def targets(self, workers=1):
        """name -> running Proc (the upstream itself is 'direct')."""
        remora, _, _ = self.remora(workers)
        haproxy, _ = self.haproxy(workers)
        nginx, _ = self.nginx_proxy(workers)
        return {"direct": self.upstream, "remora": remora, "haproxy": haproxy, "nginx": nginx}

    def tls_targets(self, workers=1):
        """name -> running Proc terminating TLS, or for remora a str saying why it does not."""
        return {"remora": self.remora_tls(workers), "haproxy": self.haproxy(workers, tls=True)[0],
                "nginx": self.nginx_proxy(workers, tls=True)[0]}

    def tls_negotiated(self, port, pinned=True):
        """What openssl s_client negotiates with a target, the certificate checked against the
        bench's CA for localhost: {"protocol", "cipher", "group"}, or {"error"}. `pinned`: with
        the bench clients' configuration; else OpenSSL's defaults (the server's own choice)."""
        r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
                            "-CAfile", self.ca, "-verify_hostname", "localhost", "-verify_return_error"],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
                           env=self.tls_env if pinned else None)
        new = re.search(r"^New, (\S+), Cipher is (\S+)", r.stdout, re.M)
        group = re.search(r"^Server Temp Key: ([^,\n]+)", r.stdout, re.M)
        if not new or new.group(2) == "(NONE)":
            err = [x for x in (r.stderr + r.stdout).splitlines() if "error" in x.lower() or "errno" in x]
            return {"error": (err[0] if err else "no TLS session").strip()}
        return {"protocol": new.group(1), "cipher": new.group(2), "group": group.group(1) if group else "?"}

    def tls_check(self, targets):
        """Once per run: what each TLS target negotiates, into the report's header."""
        for name, proc in targets.items():
            if isinstance(proc, str):
                self.notes.append(f"TLS, {name}: {proc}")
                continue
            got = [self.tls_negotiated(proc.port, pinned) for pinned in (True, False)]
            if "error" in got[0]:
                raise SystemExit(f"bench: {name}: no TLS session: {got[0]['error']}")
            show = [", ".join(g.values()) if "error" not in g else g["error"] for g in got]
            self.notes.append(f"TLS, {name}: {show[0]} with the bench's clients (certificate verified "
                              f"against the run's CA); {show[1]} with a client offering OpenSSL's defaults")

    def haproxy_tcp(self, up, threads=1, maxconn=9900):
        """HAProxy in `mode tcp` in front of 127.0.0.1:up: bytes relayed, nothing parsed (its
        defaults otherwise: 16 KiB buffers, no splicing)."""
        port = free_port()
        conf = os.path.join(self.dir, f"haproxy-tcp-{port}.cfg")
        with open(conf, "w") as f:
            f.write(f"""global
  nbthread {threads}
  maxconn {maxconn}
  ulimit-n {min(19990, 2 * maxconn + 100)}
defaults
  mode tcp
  timeout connect 5s
  timeout client 300s
  timeout server 300s
frontend fe
  bind 127.0.0.1:{port}
  default_backend be
backend be
  server s1 127.0.0.1:{up}
""")
        return Proc(["haproxy", "-f", conf, "-db"], port, quiet=True)

    def nginx_stream(self, up, workers=1):
        """nginx's `stream` module (loaded from libnginx-mod-stream) in front of 127.0.0.1:up:
        bytes relayed, nothing parsed (its defaults otherwise: proxy_buffer_size 16k)."""
        if not os.path.exists(NGINX_STREAM):
            raise NotUp("no stream module", f"no {NGINX_STREAM} (Debian: libnginx-mod-stream)")
        port = free_port()
        name = f"stream-{port}"
        path = os.path.join(self.dir, name + ".conf")
        with open(path, "w") as f:
            f.write(f"""load_module {NGINX_STREAM};
worker_processes {workers};
daemon off;
pid {self.dir}/{name}.pid;
error_log {self.dir}/{name}.err warn;
events {{ worker_connections 20000; }}
stream {{
  server {{
    listen 127.0.0.1:{port} reuseport backlog=4096;
    proxy_pass 127.0.0.1:{up};
  }}
}}
""")
        return Proc(["nginx", "-c", path], port, quiet=True)

    def tcp_proxy(self, make, echo_port):
        """A TCP proxy made by make(port of its upstream): first in front of the echo, sent raw
        bytes that are not HTTP (TCP_PROBE), which must come back unchanged; then, on a fresh
        process, in front of the HTTP upstream for the measurements. Returns the running Proc, or
        a str saying why the target does not relay TCP."""
        try:
            probe = make(echo_port)
        except NotUp as e:
            return f"TCP not available ({not_up_reason(e)})"
        try:
            got = tcp_probe(probe.port)
        finally:
            probe.stop()
        if got != TCP_PROBE:
            if isinstance(got, bytes):  # its first line, as an HTTP error's status line
                first = got.split(b"\n")[0][:40]
                got = "nothing" if not got else repr(first + b"\n..." if len(first) < len(got) else first)
            return f"TCP not available (raw probe: sent {TCP_PROBE!r} to an echo through it, got back {got})"
        try:
            return make(self.up_port)
        except NotUp as e:
            return f"TCP not available ({not_up_reason(e)})"

    def tcp_targets(self, echo_port, workers=1):
        """name -> a running TCP proxy in front of the upstream ('direct' is the upstream itself),
        or a str saying why that target does not relay TCP."""
        makers = {"remora": lambda up: self.remora(workers, protocol="tcp", app=up, quiet=True)[0],
                  "haproxy": lambda up: self.haproxy_tcp(up, workers),
                  "nginx": lambda up: self.nginx_stream(up, workers)}
        t = {"direct": self.upstream}
        t.update({name: self.tcp_proxy(make, echo_port) for name, make in makers.items()})
        for name, proc in t.items():
            if name == "direct":
                continue
            self.notes.append(f"TCP, {name}: " + (proc if isinstance(proc, str) else
                              f"raw probe {TCP_PROBE!r} came back unchanged through it from an echo"))
        return t

    # ---- measurements ----

    def wrk(self, port, path, seconds, conns=32, script=None, tls=False):
        argv = ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency"]
        if script:
            argv += ["-s", script]
        url = f"{'https' if tls else 'http'}://127.0.0.1:{port}{path}"
        out = subprocess.run(argv + [url], capture_output=True, text=True, timeout=seconds + 30,
                             env=self.tls_env if tls else None).stdout
        m = re.search(r"Requests/sec:\s+([\d.]+)", out)
        errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
        return float(m.group(1)) if m else 0.0, bool(errors)

    def throughput(self, label, targets, path, rounds, seconds, script=None, tls=False):
        """A target that is a str (why it cannot run) is reported as that."""
        got = {name: [] for name in targets}
        for _ in range(rounds):
            for name, proc in live(targets).items():
                rps, errors = self.wrk(proc.port, path, seconds, script=script, tls=tls)
                got[name].append(rps)
                if errors:
                    print(f"  warning: {name} {label}: errors reported by wrk", file=sys.stderr)
        med = {name: Spread(v) if v else targets[name] for name, v in got.items()}
        self.results[f"throughput {label} (req/s)"] = med
        return med

    def handshakes(self, targets, rounds, seconds, conns=32):
        """A new TLS connection for every GET /small (`Connection: close`, the server closes):
        ab, which makes a new SSL object for each connection and offers no session, so every
        handshake is a full one. wrk would resume: it keeps one SSL object per connection slot
        and SSL_clear keeps its session (with -H "Connection: close", nginx's $ssl_session_reused
        counted 8 full handshakes in 11,596, one per slot). HAProxy's own counters of resumed
        sessions go into the report's header as a check. Handshakes per second summed over
        the ab processes, and the target's CPU time (user + system, all its processes) per 1,000
        handshakes, which does not depend on how fast the client is."""
        clients = min(4, max(1, (os.cpu_count() or 1) - 2))  # a handshake costs ab more than the server
        argv = ["ab", "-q", "-r", "-f", "TLS1.3", "-t", str(seconds), "-n", str(50000 * seconds),
                "-c", str(max(1, conns // clients)), "-H", "Connection: close"]
        rate = {name: [] for name in targets}
        cpu = {name: [] for name in targets}
        for _ in range(rounds):
            for name, proc in live(targets).items():
                t0 = proc.cpu_ticks()
                runs = [subprocess.Popen(argv + [f"https://127.0.0.1:{proc.port}/small"], stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, text=True, env=self.tls_env)
                        for _ in range(clients)]
                outs = [r.communicate(timeout=seconds + 60)[0] for r in runs]
                ticks = proc.cpu_ticks() - t0
                per_s = done = failed = 0
                for out in outs:
                    m = re.search(r"Requests per second:\s+([\d.]+)", out)
                    c = re.search(r"Complete requests:\s+(\d+)", out)
                    per_s += float(m.group(1)) if m else 0.0
                    done += int(c.group(1)) if c else 0
                    failed += sum(int(x) for x in re.findall(r"(?:Failed requests|Non-2xx responses):\s+(\d+)", out))
                if failed or not done:
                    tail = outs[0].strip().splitlines()[-1:] if outs[0].strip() else ["no output"]
                    print(f"  warning: {name} TLS handshakes: {done} answered, {failed} failed or not 2xx "
                          f"({tail[0]})", file=sys.stderr)
                if done:
                    rate[name].append(per_s)
                    cpu[name].append(ticks * 1000 / CLK_TCK * 1000 / done)
        shown = lambda got, digits: {n: Spread(v, digits) if v else (targets[n] if isinstance(targets[n], str)
                                                                      else "n/a") for n, v in got.items()}
        what = (f"new connection per GET /small, Connection: close; {clients} ab process(es), {conns} "
                f"connections in all; TLS 1.3, TLS_AES_128_GCM_SHA256, X25519, EC P-256 certificate")
        res = {"per second": shown(rate, 0), "cpu": shown(cpu, 1)}
        self.results[f"TLS full handshakes per second ({what})"] = res["per second"]
        self.results[f"CPU time of the proxy per 1,000 new TLS connections (a full handshake and one GET "
                     f"each; the same runs), ms, user + system (clock tick {1000 // CLK_TCK} ms)"] = res["cpu"]
        for name, proc in live(targets).items():
            if getattr(proc, "stats", None):
                fe = haproxy_frontend_stats(proc.stats)
                self.notes.append(f"TLS, {name}: {fe.get('ssl_sess', '?')} TLS sessions in all, "
                                  f"{fe.get('ssl_reused_sess', '?')} of them resumed (its own counters, after "
                                  f"the handshake runs)")
        return res

    def wrk_run(self, port, path, seconds, conns=32, headers=(), latency=False):
        """One plain-HTTP wrk run: {"rps", "requests" (completed), "errors" (wrk's line, or None),
        "client_cpu_s" (wrk's user + system time)}. latency: with --latency, as Bench.wrk runs it."""
        argv = ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s"] + (["--latency"] if latency else []) + \
            [a for h in headers for a in ("-H", h)]
        c0 = os.times()
        out = subprocess.run(argv + [f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True,
                             timeout=seconds + 30).stdout
        c1 = os.times()
        rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
        done = re.search(r"(\d+) requests in", out)
        errors = re.search(r"Non-2xx or 3xx responses: \d+|Socket errors: .*", out)
        return {"rps": float(rps.group(1)) if rps else 0.0, "requests": int(done.group(1)) if done else 0,
                "errors": errors.group(0) if errors else None,
                "client_cpu_s": c1.children_user + c1.children_system - c0.children_user - c0.children_system}

    def upstream_counts(self):
        """The upstream's (connections accepted, requests answered), nginx stub_status; each
        reading counts itself once in both."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.up_port}/status", timeout=5) as r:
            accepts, _, requests = r.read().decode().splitlines()[2].split()
        return int(accepts), int(requests)

    def tcp_throughput(self, label, targets, path, size, rounds, seconds, conns=32):
        """Keep-alive GETs of a `size`-byte file relayed by each TCP proxy (wrk, one thread, `conns`
        connections, each relayed over one upstream connection of its own): MiB/s of response body,
        requests per second, the target's CPU time (user + system, all its processes) per GiB of
        body, and the upstream's and wrk's CPU use meanwhile (100% is its one worker, or wrk's one
        thread, saturated: then the upstream or the client, not the proxy, would be the limit), and
        the machine's idle share (near 0: every CPU busy, kernel loopback work included, which no
        process is charged for)."""
        keys = ("MiB/s", "req/s", "remora / this", "CPU ms per GiB", "upstream CPU %", "wrk CPU %",
                "machine idle %")
        got = {name: {k: [] for k in keys} for name in targets}
        for _ in range(rounds):
            for name, proc in live(targets).items():
                t0, u0, w0, m0 = proc.cpu_ticks(), self.upstream.cpu_ticks(), time.monotonic(), machine_ticks()
                r = self.wrk_run(proc.port, path, seconds, conns)
                ticks, up_ticks = proc.cpu_ticks() - t0, self.upstream.cpu_ticks() - u0
                wall, idle = time.monotonic() - w0, idle_since(m0)
                if r["errors"] or not r["requests"]:
                    print(f"  warning: {name} TCP {label}: {r['requests']} answered, {r['errors'] or 'no errors'}",
                          file=sys.stderr)
                if not r["requests"]:
                    continue
                g = got[name]
                g["MiB/s"].append(r["rps"] * size / (1 << 20))
                g["req/s"].append(r["rps"])
                g["CPU ms per GiB"].append(ticks * 1000 / CLK_TCK / (r["requests"] * size / (1 << 30)))
                g["upstream CPU %"].append(up_ticks * 100 / CLK_TCK / wall)
                g["wrk CPU %"].append(r["client_cpu_s"] * 100 / wall)
                g["machine idle %"].append(idle)
        med = {name: {k: Spread(v) if v else None for k, v in g.items()} for name, g in got.items()}
        res = {}
        for name, m in med.items():
            if m["MiB/s"] is None:
                why = targets[name] if isinstance(targets[name], str) else "n/a"
                res[name] = {k: (why if k == "MiB/s" else "n/a") for k in keys}
                continue
            res[name] = dict(m, **{"remora / this": ratio(med["remora"]["MiB/s"] or "n/a", m["MiB/s"])})
            if name == "direct":  # its CPU is the upstream's own, already in the last column
                res[name]["CPU ms per GiB"] = f"{m['CPU ms per GiB']} (the upstream)"
        self.results[f"TCP relay throughput, {label} (keep-alive, wrk, {conns} connections, 1 worker; "
                     f"MiB/s of response body; CPU ms per GiB: the proxy's, user + system; upstream CPU % "
                     f"and wrk CPU %: of one CPU, meanwhile; machine idle %: of all {os.cpu_count()} CPUs)"] = res
        return res

    def tcp_connections(self, targets, rounds, seconds, conns=32):
        """A new TCP connection for every GET /small: wrk sends `Connection: close`, the upstream
        closes after its answer, the proxy (relaying bytes, parsing none) passes the close on and
        wrk connects again. Connections per second (= requests per second) and the target's CPU
        time per 1,000 connections; as a check, the connections the upstream accepted per request
        it answered (1.00: a new upstream connection for each, nothing kept or reused)."""
        rate = {name: [] for name in targets}
        cpu = {name: [] for name in targets}
        accepted = {name: [0, 0] for name in targets}
        busy = {name: [[], [], []] for name in targets}  # upstream's, wrk's CPU %, machine idle %
        for _ in range(rounds):
            for name, proc in live(targets).items():
                a0, q0 = self.upstream_counts()
                t0, u0, w0, m0 = proc.cpu_ticks(), self.upstream.cpu_ticks(), time.monotonic(), machine_ticks()
                r = self.wrk_run(proc.port, "/small", seconds, conns, headers=("Connection: close",))
                ticks, wall = proc.cpu_ticks() - t0, time.monotonic() - w0
                busy[name][2].append(idle_since(m0))
                busy[name][0].append((self.upstream.cpu_ticks() - u0) * 100 / CLK_TCK / wall)
                busy[name][1].append(r["client_cpu_s"] * 100 / wall)
                time.sleep(0.1)  # the last answers in flight reach the upstream's counters
                a1, q1 = self.upstream_counts()
                accepted[name][0] += a1 - a0 - 1
                accepted[name][1] += q1 - q0 - 1
                if r["errors"] or not r["requests"]:
                    print(f"  warning: {name} TCP connections: {r['requests']} answered, "
                          f"{r['errors'] or 'no errors'}", file=sys.stderr)
                if r["requests"]:
                    rate[name].append(r["rps"])
                    cpu[name].append(ticks * 1000 / CLK_TCK * 1000 / r["requests"])
        shown = lambda got, digits: {n: Spread(v, digits) if v else (targets[n] if isinstance(targets[n], str)
                                                                      else "n/a") for n, v in got.items()}
        what = (f"a new connection per GET /small, Connection: close; wrk, one thread, {conns} connections "
                f"at a time; 1 worker")
        res = {"per second": shown(rate, 0), "cpu": shown(cpu, 1)}
        self.results[f"TCP new connections per second through the proxy ({what})"] = res["per second"]
        self.results[f"CPU time of the target per 1,000 new TCP connections (one GET each; the same runs), ms, "
                     f"user + system (clock tick {1000 // CLK_TCK} ms)"] = res["cpu"]
        self.notes.append("TCP connections, check: connections the upstream accepted per request it answered: " +
                          ", ".join(f"{n} {a / q:.2f}" for n, (a, q) in accepted.items() if q) +
                          "; CPU % of one CPU, the upstream's / wrk's, and the machine's idle % (medians): " +
                          ", ".join(f"{n} {statistics.median(u):.0f} / {statistics.median(w):.0f}, "
                                    f"idle {statistics.median(i):.0f}" for n, (u, w, i) in busy.items() if u))
        return res

    def latency(self, targets, rate, seconds, rounds):
        got = {name: [] for name in targets}
        for _ in range(rounds):
            for name, proc in targets.items():
                out = subprocess.run([OPENLOOP, str(proc.port), str(rate), str(seconds), "16", "/small"],
                                     capture_output=True, text=True, timeout=seconds + 30).stdout
                vals = dict(kv.split("=") for kv in out.split())
                got[name].append(vals)
        med = {}
        for name, runs in got.items():
            med[name] = {k: Spread(int(r[k]) for r in runs) for k in ("p50_us", "p99_us", "p999_us")}
            med[name]["errors"] = sum(int(r["errors"]) for r in runs)
        self.results[f"latency at {rate} req/s"] = med
        return med

    def instructions(self, name, argv, port, env=None, n1=2000, n2=6000):
        """Instructions per request: two runs under callgrind, of n1 and of n2 requests after
        the same warm-up, each stopped gracefully so that callgrind writes its totals; the
        difference over n2 - n1 leaves start-up, warm-up and shutdown out."""
        totals = []
        for n in (n1, n2):
            out = os.path.join(self.dir, f"cg-{name}-{n}")
            os.makedirs(out, exist_ok=True)
            vg = ["valgrind", "--tool=callgrind", "--trace-children=yes", "--dump-instr=no",
                  f"--callgrind-out-file={out}/cg.%p"]
            p = Proc(vg + argv, port, env=env, ready=lambda prt: wait_port(prt, 60))
            keepalive_requests(port, 200)  # warm-up: connections and pools made
            keepalive_requests(port, n)
            os.killpg(p.p.pid, signal.SIGTERM)  # a graceful exit: every process writes its totals
            p.p.wait(120)
            time.sleep(0.5)  # children (nginx's worker) finish writing
            totals.append(sum_callgrind(out))
            p.stop()
            shutil.rmtree(out, ignore_errors=True)
        return (totals[1] - totals[0]) / (n2 - n1)

    def memory(self, targets, conns):
        res = {}
        for name, proc in targets.items():
            idle = proc.rss()
            held = asyncio.run(hold_connections(proc.port, conns, lambda: proc.rss()))
            res[name] = {"idle_kib": idle, "per_conn_bytes": (held - idle) * 1024 / conns}
        self.results[f"memory with {conns} idle keep-alive connections"] = res
        return res

    def memory_tls(self, targets, conns):
        """As memory(), over TLS: each connection completes its handshake and one keep-alive GET,
        then stays idle. A warm-up of a few TLS connections first (closed, then the same pause as
        after the burst), so that what the first handshake sets up once is in the idle figure."""
        res, seen = {}, set()
        for name, proc in targets.items():
            if isinstance(proc, str):
                res[name] = {"idle_kib": proc, "per_conn_bytes": "n/a"}
                continue
            try:
                seen |= self.hold_tls(proc, 10)[1]
                idle = proc.rss()
                held, got = self.hold_tls(proc, conns)
            except SystemExit as e:  # reported in its row; the other targets still run
                print(f"  warning: {name}: {e}", file=sys.stderr)
                res[name] = {"idle_kib": f"failed ({str(e)[-200:]})", "per_conn_bytes": "n/a"}
                continue
            seen |= got
            res[name] = {"idle_kib": idle, "per_conn_bytes": (held - idle) * 1024 / conns}
        if seen and seen != {("TLSv1.3", "TLS_AES_128_GCM_SHA256")}:
            print(f"  warning: idle TLS connections negotiated {sorted(seen)}", file=sys.stderr)
        self.results[f"memory with {conns} idle TLS connections (handshake and one keep-alive GET each)"] = res
        return res

    def hold_tls(self, proc, n):
        """n idle TLS connections to proc held by a child process (this script, --hold-tls), whose
        OpenSSL reads the bench clients' configuration at its start, as ab's and wrk's do (this
        process's OpenSSL read its own when `ssl` was imported). Returns (proc's RSS in KiB while
        they are held, {(protocol, cipher)} they negotiated)."""
        errors = tempfile.TemporaryFile("w+")
        child = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--hold-tls", str(proc.port),
                                  str(n), self.ca], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=errors, text=True, env=self.tls_env)
        try:
            line = child.stdout.readline()
            if not line.startswith("held "):
                child.wait(30)
                errors.seek(0)
                err = [x for x in errors.read().splitlines() if x.strip()]
                raise SystemExit(f"holding {n} TLS connections to port {proc.port} failed: "
                                 f"{err[-1] if err else 'no reason given'}")
            rss = proc.rss()
            child.stdin.write("done\n")
            child.stdin.flush()
            child.wait(60)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            errors.close()
        return rss, {tuple(x) for x in json.loads(line[5:])}

    # ---- what a fixed number of requests costs, counted by the upstream ----

    def upstream_requests(self):
        """The upstream's request counter (nginx stub_status). Each reading counts itself."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.up_port}/status", timeout=5) as r:
            return int(r.read().decode().splitlines()[2].split()[2])

    def served_since(self, before):
        """Requests the upstream answered since the reading `before`, once the count has settled
        (two readings in a row that differ only by themselves); the readings are left out."""
        last, readings = self.upstream_requests(), 1
        for _ in range(50):
            time.sleep(0.02)
            now = self.upstream_requests()
            readings += 1
            if now == last + 1:
                break
            last = now
        return now - before - readings

    def closed_loop(self, port, n, conns=32, path="/small"):
        """n keep-alive GETs over `conns` connections, each sending its next request as soon as
        its answer is in (openloop -n)."""
        out = subprocess.run([OPENLOOP, "-n", str(n), str(port), str(conns), path],
                             capture_output=True, text=True, timeout=600).stdout
        vals = dict(kv.split("=") for kv in out.split())
        if int(vals.get("errors", 1)) or int(vals.get("ok", 0)) != n:
            print(f"  warning: port {port}: {out.strip()}", file=sys.stderr)

    def traced(self, name, proc, n):
        """strace -c on every thread of the processes that serve requests while n requests pass
        from an untraced client. The client starts only once every thread is traced, and the
        tracer detaches only after the last answer, so strace's attach and detach fall outside
        the requests; the count is what the upstream answered meanwhile, not n.
        Returns ({syscall: calls}, requests)."""
        pids = proc.workers()
        summary = os.path.join(self.dir, f"strace-{name}.txt")
        argv = ["strace", "-c", "-f", "-o", summary] + [a for pid in pids for a in ("-p", str(pid))]
        with open(summary + ".log", "w") as log:
            st = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_traced(pids, st, summary + ".log")
            before = self.upstream_requests()
            self.closed_loop(proc.port, n)
            served = self.served_since(before)
        finally:
            st.send_signal(signal.SIGINT)  # detach, then write the summary
            try:
                st.wait(30)
            except subprocess.TimeoutExpired:
                st.kill()
                st.wait()
        return parse_strace_summary(summary), served

    def syscalls(self, targets, n, rounds):
        per_req = {name: [] for name in targets}
        calls = {name: {} for name in targets}
        served = {name: 0 for name in targets}
        for _ in range(rounds):
            for name, proc in targets.items():
                got, count = self.traced(name, proc, n)
                if not count:
                    print(f"  warning: {name}: no requests answered under strace", file=sys.stderr)
                    continue
                per_req[name].append(sum(got.values()) / count)
                served[name] += count
                for call, c in got.items():
                    calls[name][call] = calls[name].get(call, 0) + c
        res = {}
        for name in targets:
            top = sorted(calls[name].items(), key=lambda kv: -kv[1])[:3]
            res[name] = {
                "syscalls per request": Spread(per_req[name], 2) if per_req[name] else "n/a",
                "top 3 per request": ", ".join(f"{c} {k / served[name]:.2f}" for c, k in top) or "n/a",
                "requests traced, all rounds": served[name]}
        self.results[f"system calls per proxied small GET (strace -c; {n:,} requests a round, "
                     f"{rounds} round(s), 32 connections)"] = res
        return res

    def cpu_time(self, targets, n, rounds):
        """utime + stime of every process of a target (all threads) before and after n requests,
        per 100,000 requests answered."""
        got = {name: [] for name in targets}
        for _ in range(rounds):
            for name, proc in targets.items():
                before, t0 = self.upstream_requests(), proc.cpu_ticks()
                self.closed_loop(proc.port, n)
                served = self.served_since(before)
                ms = (proc.cpu_ticks() - t0) * 1000 / CLK_TCK
                if served:
                    got[name].append(ms * 100000 / served)
                else:
                    print(f"  warning: {name}: no requests answered", file=sys.stderr)
        res = {name: {"ms per 100k requests": Spread(v) if v else "n/a",
                      "rounds": ", ".join(f"{x:,.0f}" for x in v)} for name, v in got.items()}
        self.results[f"CPU time, user + system, per 100,000 proxied small GETs ({n:,} requests "
                     f"a round, 32 connections; clock tick {1000 // CLK_TCK} ms)"] = res
        return res

    def stalled(self, makers, clients, seconds, settle):
        """For each target, a fresh process; then `clients` connections that pipeline GET /16k
        without ever reading (stall_clients). RSS growth over the process's own idle RSS, per
        client, at half time and at the end; a process that passes RSS_CAP_KIB is killed."""
        res = {}
        half_key, end_key = f"KiB per client at {seconds / 2:g} s", f"KiB per client at {seconds:g} s"
        for name, make in makers.items():
            proc = make()
            capped = None
            try:
                keepalive_requests(proc.port, 20, conns=2)  # pools made: growth is the stall's
                time.sleep(settle)
                base = proc.rss()
                half, end, capped, sent = stall_clients(proc, clients, seconds, RSS_CAP_KIB)
            finally:
                proc.kill() if capped is not None else proc.stop()
            over = f"> 1 GiB in all after {capped:.1f} s" if capped is not None else None
            res[name] = {
                "idle KiB": base,
                half_key: (half - base) / clients if half is not None else over,
                end_key: (end - base) / clients if end is not None else over,
                "request KiB sent per client": sent / 1024}
        self.results[f"memory per stalled client ({clients} clients pipelining GET /16k without "
                     f"reading, {seconds:g} s; RSS growth)"] = res
        return res

    def ready_time(self, routes):
        times = []
        for _ in range(3 if self.smoke else 9):
            t0 = time.monotonic()
            p, _, _ = self.remora(routes=routes)  # back once /ready answers 200
            times.append((time.monotonic() - t0) * 1000)
            p.stop()
        self.results[f"time to /ready, {routes} routes"] = {"remora": {"ms": Spread(times, 1)}}


def add_routes(cfg, n, port):
    """n routes on one router, so start-up parses and builds them all."""
    nodes = cfg["virtualNodes"]
    nodes[0]["spec"]["backends"] = [{"virtualService": {"virtualServiceName": "svc.bench"}}]
    nodes.append({"virtualNodeName": "svc", "spec": {
        "listeners": [{"portMapping": {"port": port, "protocol": "http"}}],
        "serviceDiscovery": {"dns": {"hostname": "127.0.0.1"}}}})
    cfg["virtualServices"] = [{"virtualServiceName": "svc.bench",
                               "spec": {"provider": {"virtualRouter": {"virtualRouterName": "r"}}}}]
    cfg["virtualRouters"] = [{"virtualRouterName": "r", "spec": {
        "listeners": [{"portMapping": {"port": 80, "protocol": "http"}}]}}]
    cfg["routes"] = [{"virtualRouterName": "r", "routeName": f"r{i}", "spec": {
        "priority": i, "httpRoute": {
            "match": {"prefix": f"/p{i}/", "headers": [{"name": "x-v", "match": {"regex": f"v{i}[0-9]*"}}]},
            "action": {"weightedTargets": [{"virtualNode": "svc", "weight": 1}]}}}} for i in range(n)]


def keepalive_requests(port, n, conns=10):
    """n small GETs over `conns` keep-alive connections."""
    async def one(count):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(count):
            w.write(b"GET /small HTTP/1.1\r\nHost: bench\r\n\r\n")
            await w.drain()
            head = await r.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))
            await r.readexactly(length)
        w.close()

    async def main():
        await asyncio.gather(*(one(n // conns) for _ in range(conns)))
    asyncio.run(main())


def wait_traced(pids, tracer, log, timeout=10):
    """Until every thread of `pids` has `tracer` as its tracer."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if tracer.poll() is not None:
            break
        tids = [(pid, t) for pid in pids for t in os.listdir(f"/proc/{pid}/task")]
        if all(tracer_of(pid, t) == tracer.pid for pid, t in tids):
            return
        time.sleep(0.01)
    with open(log) as f:
        raise SystemExit(f"bench: strace did not attach to {pids}:\n{f.read()[-2000:]}")


def tracer_of(pid, tid):
    try:
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            for line in f:
                if line.startswith("TracerPid:"):
                    return int(line.split()[1])
    except FileNotFoundError:  # a thread that has just exited
        return None
    return 0


def parse_strace_summary(path):
    """{syscall: calls} from strace -c's table: "% time, seconds, usecs/call, calls, [errors],
    syscall" rows between two dashed rules, then the total row (left out)."""
    calls = {}
    with open(path) as f:
        for line in f:
            fields = line.split()
            if len(fields) < 5 or not re.match(r"[\d.]+$", fields[0]) or fields[-1] == "total":
                continue
            calls[fields[-1]] = calls.get(fields[-1], 0) + int(fields[3])
    return calls


def stall_clients(proc, clients, seconds, cap_kib):
    """`clients` connections that each pipeline GET /16k for `seconds`, sending whenever the
    socket takes more and never reading an answer; the proxy's RSS is sampled as they go, and
    the run stops early if it passes cap_kib.
    Returns (RSS at half time or None, RSS at the end or None, seconds to the cap or None,
    request bytes sent per client)."""
    req = b"GET /16k HTTP/1.1\r\nHost: bench\r\n\r\n"
    stream = memoryview(req * 4096)
    socks = []
    for _ in range(clients):
        s = socket.create_connection(("127.0.0.1", proc.port))
        s.setblocking(False)
        socks.append(s)
    sent, alive = [0] * clients, [True] * clients
    half = end = capped = None
    t0 = time.monotonic()
    try:
        while (t := time.monotonic() - t0) < seconds:
            for i, s in enumerate(socks):
                for _ in range(16):  # at most ~2 MiB a pass, so that the clock and the cap are read
                    if not alive[i]:
                        break
                    try:
                        sent[i] += s.send(stream[sent[i] % len(req):])
                    except BlockingIOError:
                        break
                    except OSError:  # the proxy closed it
                        alive[i] = False
            rss = proc.rss()
            if rss > cap_kib:
                capped = t
                break
            if half is None and t >= seconds / 2:
                half = rss
            time.sleep(0.02)
        if capped is None:
            end = proc.rss()
    finally:
        for s in socks:
            s.close()
    return half, end, capped, sum(sent) / clients


def sum_callgrind(directory):
    total = 0
    for name in os.listdir(directory):
        with open(os.path.join(directory, name)) as f:
            for line in f:
                if line.startswith("summary:") or line.startswith("totals:"):
                    total += int(line.split()[1])
                    break
    return total


async def hold_connections(port, n, measure, tls=None, seen=None):
    """n keep-alive connections, one GET each, then idle while `measure` runs. `tls`: an
    SSLContext to connect with (server name localhost); what each negotiated goes into `seen`."""
    conns = []
    for _ in range(n):
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=tls,
                                             server_hostname="localhost" if tls else None)
        if tls is not None and seen is not None:
            tls_obj = w.get_extra_info("ssl_object")
            seen.add((tls_obj.version(), tls_obj.cipher()[0]))
        w.write(b"GET /small HTTP/1.1\r\nHost: bench\r\n\r\n")
        conns.append((r, w))
    for r, w in conns:
        head = await r.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))
        await r.readexactly(length)
    await asyncio.sleep(1.5)  # past remora's housekeeping tick, which returns the burst's memory
    held = measure()
    for _, w in conns:
        w.close()
    return held


def not_up_reason(e):
    """The last line a target that did not come up printed (remora: without its config's path)."""
    lines = [x.strip() for x in e.log.splitlines() if x.strip()]
    reason = lines[-1] if lines else str(e)
    return re.sub(r"\S*remora-\d+\.json: ", "", reason)[:200]  # the config's path


def tcp_probe(port, payload=TCP_PROBE, timeout=3):
    """`payload` sent on a new connection to port: the bytes that came back before as many had,
    the peer closed or `timeout` passed; or, if the connection failed, why (a str)."""
    got = b""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout) as s:
            s.settimeout(timeout)
            s.sendall(payload)
            while len(got) < len(payload):
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
    except socket.timeout:
        pass
    except OSError as e:
        return got or f"{type(e).__name__}: {e}"
    return got


def echo_server():
    """A TCP echo on a free loopback port, served by threads of this process; only the raw probe
    goes through it (untimed). Stop it with .shutdown() and .server_close()."""
    class Echo(socketserver.BaseRequestHandler):
        def handle(self):
            try:
                while data := self.request.recv(65536):
                    self.request.sendall(data)
            except OSError:
                pass

    srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Echo)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def live(targets):
    """The targets that run (a str in place of one says why it does not)."""
    return {name: proc for name, proc in targets.items() if not isinstance(proc, str)}


def haproxy_frontend_stats(sock_path):
    """The FRONTEND row of HAProxy's `show stat` (its TLS counters: ssl_sess, ssl_reused_sess)."""
    try:
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(5)
        s.connect(sock_path)
        s.sendall(b"show stat\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        s.close()
    except OSError as e:
        return {"error": str(e)}
    lines = data.decode().splitlines()
    head = lines[0].lstrip("# ").split(",") if lines else []
    for line in lines[1:]:
        row = dict(zip(head, line.split(",")))
        if row.get("svname") == "FRONTEND":
            return row
    return {}


def machine_ticks():
    """(idle, all) clock ticks of the whole machine, all CPUs (/proc/stat)."""
    with open("/proc/stat") as f:
        t = [int(x) for x in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
    return t[3] + t[4], sum(t)


def idle_since(before):
    """The machine's idle share, in %, since machine_ticks() read `before`."""
    now = machine_ticks()
    return 100 * (now[0] - before[0]) / max(1, now[1] - before[1])


def ratio(a, b):
    try:
        a, b = float(a), float(b)
    except (TypeError, ValueError):  # a target that did not run
        return "n/a"
    return f"{a / b:.2f}x" if b else "n/a"


def cell(v):
    if isinstance(v, float):
        return f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def report(b, rounds):
    lines = ["# remora benchmark", "",
             f"One run on {os.cpu_count()} CPUs; targets interleaved, {rounds} round(s). Ratios are "
             "remora's. Timed figures: median of the rounds (smallest–largest round).", ""]
    lines += [f"- {note}" for note in b.notes] + ([""] if b.notes else [])
    for title, rows in b.results.items():
        lines.append(f"## {title}")
        text = getattr(b, "texts", {}).get(title)
        if text:
            lines += text + [""]
        first = next(iter(rows.values()))
        if isinstance(first, dict):
            keys = list(first)
            lines.append("| target | " + " | ".join(keys) + " |")
            lines.append("|---|" + "---|" * len(keys))
            for name, v in rows.items():
                lines.append(f"| {name} | " + " | ".join(cell(v[k]) for k in keys) + " |")
        else:
            lines.append("| target | value | remora / this |")
            lines.append("|---|---|---|")
            for name, v in rows.items():
                lines.append(f"| {name} | {cell(v)} | {ratio(rows.get('remora', 0), v)} |")
        lines.append("")
    return "\n".join(lines)


def hold_tls_child(port, n, ca):
    """The client side of Bench.hold_tls: once the connections are held and have gone quiet, says
    "held" and what they negotiated, then keeps them until told on stdin."""
    ctx = ssl.create_default_context(cafile=ca)  # verifies the chain and the name localhost
    seen = set()

    def measure():
        print("held " + json.dumps(sorted(seen)), flush=True)
        sys.stdin.readline()
    asyncio.run(hold_connections(port, n, measure, ctx, seen))


def tls_section(b, rounds, secs):
    """TLS on remora's ingress, HAProxy and nginx (1 worker each): the negotiated parameters once,
    full handshakes per second, keep-alive throughput, then RSS per idle TLS connection on fresh
    processes. A remora that does not terminate TLS yet is reported as such, not run."""
    started = []
    try:
        t = b.tls_targets(1)
        started += list(live(t).values())
        for name, proc in t.items():
            if isinstance(proc, str):
                print(f"{name}: {proc}")
        b.tls_check(t)
        print(b.handshakes(t, rounds, secs))
        print(b.throughput("small GET over TLS, keep-alive, 32 connections, 1 worker", t, "/small",
                           rounds, secs, tls=True))
        for p in started:
            p.stop()
        started = []
        fresh = b.tls_targets(1)
        started += list(live(fresh).values())
        print(b.memory_tls(fresh, 100 if b.smoke else 2000))
    finally:
        for p in started:
            p.stop()


def tcp_section(b, rounds, secs):
    """TCP relaying, 1 worker each: remora's ingress with a `tcp` listener, HAProxy `mode tcp` and
    nginx `stream`, each checked first with raw bytes through an echo, then in front of the HTTP
    upstream (direct: the upstream itself): keep-alive throughput of 1 MiB and 64 KiB GETs, then
    new connections per second. A target that does not relay TCP is reported as such, not run."""
    echo = echo_server()
    started = []
    try:
        b.notes.append("TCP: the proxies are in front of the HTTP upstream and relay wrk's requests and "
                       "the answers as bytes (HAProxy `mode tcp`, nginx `stream` proxy_pass, remora a `tcp` "
                       "listener on its ingress; each one worker, its own defaults otherwise)")
        t = b.tcp_targets(echo.server_address[1], 1)
        started += [p for n, p in live(t).items() if n != "direct"]
        for name, proc in t.items():
            if isinstance(proc, str):
                print(f"{name}: {proc}")
                if name != "remora":
                    print(f"  warning: {name} does not relay TCP here: {proc}", file=sys.stderr)
        print(b.tcp_throughput("1 MiB GET", t, "/big", 1 << 20, rounds, secs))
        print(b.tcp_throughput("64 KiB GET", t, "/64k", 64 << 10, rounds, secs))
        print(b.tcp_connections(t, rounds, secs))
    finally:
        for p in started:
            p.stop()
        echo.shutdown()
        echo.server_close()


def count_lines(path):
    try:
        with open(path, "rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    except FileNotFoundError:
        return 0


OBS_TITLE = "observability cost: small GET, keep-alive, 32 connections, 1 worker (req/s)"


def obs_section(b, rounds, secs, instructions=True):
    """What observability costs: small-GET throughput (wrk, as the small GET above, 1 worker)
    through remora's ingress as the bench configures it, remora with an access log to a file
    (the node's logging.accessLog.file, Envoy's default format, written from a per-worker
    buffer), HAProxy as configured, and HAProxy with `option httplog` to its stdout (`log stdout
    format raw local0`; no syslog here) redirected to a file; interleaved rounds. Then the lines
    each log holds against the requests wrk completed (a log that wrote nothing is no cost), and
    callgrind instructions per request for remora without and with the access log."""
    rlog, hlog = os.path.join(b.dir, "access.log"), os.path.join(b.dir, "haproxy-access.log")
    makers = {"remora": lambda: b.remora(1),
              "remora, access log": lambda: b.remora(1, access_log=rlog),
              "haproxy": lambda: b.haproxy(1),
              "haproxy, httplog to file": lambda: b.haproxy(1, log_file=hlog)}
    logs = {"remora, access log": rlog, "haproxy, httplog to file": hlog}
    started, t = [], {}
    try:
        for name, make in makers.items():
            t[name] = make()[0]
            started.append(t[name])
        got = {name: [] for name in t}
        done = {name: 0 for name in t}
        for _ in range(rounds):
            for name, proc in t.items():
                r = b.wrk_run(proc.port, "/small", secs, latency=True)
                got[name].append(r["rps"])
                done[name] += r["requests"]
                if r["errors"]:
                    print(f"  warning: {name} observability: wrk reported {r['errors']}", file=sys.stderr)
        for p in started:  # a graceful exit: remora writes what its buffers still hold
            p.stop()
        started = []
    finally:
        for p in started:
            p.stop()
    lines = {name: count_lines(path) for name, path in logs.items()}
    med = {name: Spread(v) for name, v in got.items()}

    def per_round(a, b_):
        rs = [x / y for x, y in zip(got[a], got[b_]) if y]
        return f"{float(med[a]) / float(med[b_]):.3f}x" + \
            (f" (rounds {min(rs):.3f}–{max(rs):.3f})" if len(rs) > 1 else "") if rs else "n/a"
    base = {"remora, access log": "remora", "haproxy, httplog to file": "haproxy"}
    rows = {}
    for name in t:
        rows[name] = {"req/s": med[name],
                      "logged / not logged": per_round(name, base[name]) if name in base else "",
                      "log lines": f"{lines[name]:,}" if name in lines else "",
                      "requests completed (wrk)": done[name]}
    ins = {}
    if instructions:
        n1, n2 = (500, 1000) if b.smoke else (2000, 6000)
        for name, kw in (("remora", {}), ("remora, access log",
                                          {"access_log": os.path.join(b.dir, "access-callgrind.log")})):
            p, argv, env = b.remora(1, **kw)
            p.stop()
            ins[name] = b.instructions("obs-" + name.replace(", ", "-").replace(" ", "-"), argv, p.port,
                                       env=env, n1=n1, n2=n2)
            rows[name]["instructions per request (callgrind)"] = f"{ins[name]:,.0f}"
        for name in rows:
            rows[name].setdefault("instructions per request (callgrind)", "")
        cg_lines = count_lines(os.path.join(b.dir, "access-callgrind.log"))
    for name, path in logs.items():
        if not lines[name]:
            print(f"  warning: {name}: the log {path} holds no lines", file=sys.stderr)
    ab = per_round("remora, access log", "remora")
    text = [
        "Histograms are always on in remora (they cannot be turned off), so `remora` here already "
        "carries them. `remora, access log`: the node's `logging.accessLog.file` to a file "
        "in the run's directory (Envoy's default format, written from a per-worker buffer). "
        "`haproxy, httplog to file`: `log stdout format raw local0`, `option httplog`, `log global`, "
        "its stdout redirected to a file. Log lines are counted after each proxy exits gracefully, "
        "against the requests wrk completed in all rounds.",
        "",
        f"- remora, access log / remora: {ab} — goal: at least 0.95",
        f"- haproxy, httplog to file / haproxy: {per_round('haproxy, httplog to file', 'haproxy')}",
        f"- remora, access log / haproxy, httplog to file: "
        f"{per_round('remora, access log', 'haproxy, httplog to file')}",
    ]
    if ins:
        text.append(f"- instructions per request: remora {ins['remora']:,.0f} (histograms on), "
                    f"with the access log "
                    f"{ins['remora, access log']:,.0f} ({ins['remora, access log'] - ins['remora']:+,.0f}); "
                    f"the callgrind runs' access log holds {cg_lines:,} lines")
    if not hasattr(b, "texts"):
        b.texts = {}
    b.texts[OBS_TITLE] = text
    b.results[OBS_TITLE] = rows
    print("\n".join(text))
    print(rows)
    return rows


SCALE_TITLE = "config scale: one document for the whole mesh, the caller with 50 backends"
SCALE_MESHES = (  # name, bigmesh.mesh() arguments
    ("50 routes", dict(nodes=2, routers=1, routes=50, backends=1)),
    ("10,000 routes", dict(nodes=200, routers=200, routes=50, backends=50)),
)


def scale_ready(path, admin_timeout=30):
    """remora for node `caller` of the document at `path`: (ms from exec to /ready 200, VmRSS
    KiB once ready). Its nodes' DNS hostname is 127.0.0.1, so discovery answers at once: the
    time is loading, validating and building."""
    port, egress, admin = free_ports(3)
    argv = [REMORA, "--config", path, "--node", "caller", "--ingress-port", str(port),
            "--egress-port", str(egress), "--admin", f"127.0.0.1:{admin}", "--workers", "1",
            "--log-level", "error"]
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         env={"PATH": os.environ["PATH"]}, start_new_session=True)
    try:
        wait_ready(admin, admin_timeout, p)
        ms = (time.monotonic() - t0) * 1000
        time.sleep(0.2)  # what it holds once settled, not mid-build
        return ms, rss_kib(p.pid)
    finally:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def scale_check(path):
    t0 = time.monotonic()
    r = subprocess.run([REMORA, "check", "--config", path, "--node", "caller"], capture_output=True,
                       text=True, env={"PATH": os.environ["PATH"]})
    if r.returncode:
        raise SystemExit(f"bench: remora check refused {path}:\n{r.stdout[-2000:]}")
    return (time.monotonic() - t0) * 1000


def scale_section(b, rounds):
    """Time to /ready, RSS once ready and `check` time for each mesh of SCALE_MESHES, interleaved
    round by round (at least 3 rounds: the figures are medians). Reported only."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bigmesh
    paths, sizes = {}, {}
    for name, kw in SCALE_MESHES:
        text = bigmesh.text(**kw)
        paths[name] = os.path.join(b.dir, f"bigmesh-{kw['routers'] * kw['routes']}.json")
        sizes[name] = len(text)
        with open(paths[name], "w") as f:
            f.write(text)
    got = {name: {"ready": [], "rss": [], "check": []} for name in paths}
    for _ in range(max(3, rounds)):
        for name, path in paths.items():
            ms, kib = scale_ready(path)
            got[name]["ready"].append(ms)
            got[name]["rss"].append(kib / 1024)
            got[name]["check"].append(scale_check(path))
    rows = {name: {"document KB": sizes[name] / 1000, "time to /ready ms": Spread(g["ready"], 0),
                   "RSS MiB": Spread(g["rss"], 1), "check ms": Spread(g["check"], 0)}
            for name, g in got.items()}
    b.results[SCALE_TITLE] = rows
    b.notes.append("config scale: tests/bench/bigmesh.py documents (the 10,000-route one ~2.9 MB); "
                   "the sidecar is node `caller`, 1 worker; RSS is VmRSS 0.2 s after /ready")
    print(rows)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="a short pass that never fails on timing")
    ap.add_argument("--tls-only", action="store_true", help="only the TLS measurements")
    ap.add_argument("--tcp-only", action="store_true", help="only the TCP relaying measurements")
    ap.add_argument("--obs-only", action="store_true", help="only the observability-cost measurements")
    ap.add_argument("--scale-only", action="store_true", help="only the config scale measurements")
    ap.add_argument("--h2-only", action="store_true", help="only the HTTP/2 and gRPC measurements")
    ap.add_argument("--hold-tls", nargs=3, metavar=("PORT", "N", "CA"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.hold_tls:
        return hold_tls_child(int(args.hold_tls[0]), int(args.hold_tls[1]), args.hold_tls[2])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:  # as root the hard limit can be raised: 10,000 connections need 20,000+ descriptors
        resource.setrlimit(resource.RLIMIT_NOFILE, (65536, 65536))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    t_start = time.monotonic()
    b = Bench(args.smoke)
    rounds, secs = (1, 1) if args.smoke else (3, 5)
    b.rounds, b.t_start = rounds, t_start
    started = []
    if args.tls_only:
        try:
            tls_section(b, rounds, secs)
        finally:
            b.upstream.stop()
        return finish(b, args)
    if args.tcp_only:
        try:
            tcp_section(b, rounds, secs)
        finally:
            b.upstream.stop()
        return finish(b, args)
    if args.obs_only:
        try:
            obs_section(b, rounds, secs)
        finally:
            b.upstream.stop()
        return finish(b, args)
    if args.scale_only:
        try:
            scale_section(b, rounds)
        finally:
            b.upstream.stop()
        return finish(b, args)
    if args.h2_only:
        import bench_h2  # here: it imports this file for its helpers
        try:
            bench_h2.h2_section(b, rounds, secs)
        finally:
            b.upstream.stop()
        return finish(b, args)
    try:
        t = b.targets(1)
        started += [p for n, p in t.items() if n != "direct"]
        post = os.path.join(b.dir, "post.lua")
        with open(post, "w") as f:
            f.write('wrk.method = "POST"\nwrk.body = string.rep("x", 16384)\n'
                    'wrk.headers["Content-Type"] = "application/octet-stream"\n')
        print(b.throughput("small GET, 1 worker", t, "/small", rounds, secs))
        print(b.throughput("16 KiB POST, 1 worker", t, "/post", rounds, secs, script=post))
        print(b.throughput("1 MiB GET, 1 worker", t, "/big", rounds, secs))
        print(b.latency(t, 2000 if not args.smoke else 500, secs, rounds))
        proxies = {n: p for n, p in t.items() if n != "direct"}
        print(b.syscalls(proxies, 2000 if args.smoke else 20000, rounds))
        print(b.cpu_time(proxies, 20000 if args.smoke else 200000, rounds))
        # Fresh processes, so that idle RSS is not what the throughput runs left behind.
        # HAProxy budgets two descriptors per connection and this machine allows 20,000 per
        # process, so the comparison holds 9,000; remora alone is also measured at 10,000.
        fresh = {"remora": b.remora(1)[0], "haproxy": b.haproxy(1)[0], "nginx": b.nginx_proxy(1)[0]}
        started += list(fresh.values())
        print(b.memory(fresh, 1000 if args.smoke else 9000))
        if not args.smoke:
            again = b.remora(1)[0]
            started.append(again)
            print(b.memory({"remora": again}, 10000))
        for p in fresh.values():  # done with: not left holding memory through the TLS runs
            p.stop()
        started = [p for p in started if p not in fresh.values()]
        tls_section(b, rounds, secs)
        tcp_section(b, rounds, secs)
        obs_section(b, rounds, secs)
        x_on, _, _ = b.remora(1, xray=0.05)
        x_full, _, _ = b.remora(1, xray=1.0)
        started += [x_on, x_full]
        print(b.throughput("small GET, tracing", {"remora": t["remora"], "remora xray 5% (no daemon)": x_on,
                                                  "remora xray 100% (no daemon)": x_full},
                           "/small", rounds, secs))
        for p in started:
            p.stop()
        started = []
        # Each on a fresh process of its own, killed after: nothing else sees what it grew to.
        print(b.stalled({"remora": lambda: b.remora(1)[0], "haproxy": lambda: b.haproxy(1)[0],
                         "nginx": lambda: b.nginx_proxy(1)[0]},
                        10 if args.smoke else 50, 2 if args.smoke else 6, 0.5 if args.smoke else 1.5))
        t2 = b.targets(2)
        started += [p for n, p in t2.items() if n != "direct"]
        print(b.throughput("small GET, 2 workers", t2, "/small", rounds, secs))
        for p in started:
            p.stop()
        started = []
        b.ready_time(50)
        scale_section(b, rounds)
        import bench_cloudmap  # here: it imports this file for its helpers
        bench_cloudmap.discovery_section(b, rounds, secs)
        import bench_gateway
        bench_gateway.gateway_section(b, rounds, secs)
        import bench_rollout
        bench_rollout.rollout_section(b, rounds, secs)
        import bench_h2
        bench_h2.h2_section(b, rounds, secs)
        n1, n2 = (500, 1000) if args.smoke else (2000, 6000)
        ins = {}
        rp, rargv, renv = b.remora(1)
        rp.stop()
        ins["remora"] = b.instructions("remora", rargv, rp.port, env=renv, n1=n1, n2=n2)
        if args.smoke:  # the comparison runs take minutes under valgrind; the smoke pass skips them
            b.results["instructions per proxied small GET (callgrind)"] = ins
            return finish(b, args)
        hp, hargv = b.haproxy(1, maxconn=1000)  # valgrind keeps some descriptors for itself
        hp.stop()
        ins["haproxy"] = b.instructions("haproxy", hargv, hp.port, n1=n1, n2=n2)
        # One process under callgrind (the worker's request path is the same): with a master,
        # callgrind's per-process output of the forked worker is lost.
        np_, nargv = b.nginx_proxy(1, master=False)
        np_.stop()
        ins["nginx"] = b.instructions("nginx", nargv, np_.port, n1=n1, n2=n2)
        b.results["instructions per proxied small GET (callgrind)"] = ins
        print(ins)
    finally:
        for p in started:
            p.stop()
        b.upstream.stop()
    finish(b, args)


def finish(b, args):
    b.upstream.stop()
    text = report(b, b.rounds)
    os.makedirs(os.path.join(BUILD, "bench"), exist_ok=True)
    name = ("results-tls" if args.tls_only else "results-tcp" if args.tcp_only else
            "results-obs" if args.obs_only else "results-scale" if args.scale_only else
            "results-h2" if args.h2_only else "results") + \
        ("-smoke" if args.smoke else "")
    out = os.path.join(BUILD, "bench", name + ".md")
    with open(out, "w") as f:
        f.write(text + "\n")
    print(text)
    print(f"\nwritten to {out} ({time.monotonic() - b.t_start:.0f} s in all)")
    shutil.rmtree(b.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
