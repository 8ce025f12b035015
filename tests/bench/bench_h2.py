"""HTTP/2 and gRPC through the proxies (issue: the HTTP/2 upstream client), rounds interleaved
as in bench.py, 1 worker each, all h2c (prior knowledge) so that TLS costs stay out:

  h2load, small GET, many streams per connection (-c 8 -m 32):
    remora                  ingress, the node's listener `http2`: HTTP/2 to the upstream
    remora, h1 upstream     the same with an `http` listener: HTTP/1.1 to the bench's nginx
    haproxy                 `bind ... proto h2`, `server ... proto h2`: HTTP/2 both sides
    nginx                   `listen ... http2`, proxy_pass with keep-alive to the bench's nginx
                            over HTTP/1.1 (nginx cannot proxy_pass in HTTP/2): compare it with
                            "remora, h1 upstream"
    direct                  the HTTP/2 upstream itself
  gRPC unary calls per second (h2load POST, content-type application/grpc, te: trailers, one
  5-byte-prefixed message; the upstream echoes it with grpc-status 0 in trailers):
    remora (`grpc` listener), haproxy (proto h2 both sides), nginx (grpc_pass), direct
  each with the proxy's CPU time per 100,000 requests (user + system, all its processes)
  memory per idle HTTP/2 connection: N connections, each with its preface, SETTINGS and one
    GET answered, then idle; (RSS held - RSS before) / N, on fresh processes

The HTTP/2 (and gRPC) upstream is tests/bench/h2_upstream.c on nghttp2 (h2load cannot serve;
Debian's nghttpd cannot send trailers), built as build/bench/h2_upstream."""
import asyncio
import json
import os
import re
import shutil
import struct
import subprocess
import sys

H2_TITLE = "HTTP/2 small GET, h2load -c 8 -m 32 (h2c both sides unless noted), 1 worker (req/s)"
H2_CPU_TITLE = "HTTP/2 small GET: CPU time of the proxy per 100,000 requests (ms, user + system)"
GRPC_TITLE = "gRPC unary calls per second (h2load -c 8 -m 32, 5-byte message echoed), 1 worker"
GRPC_CPU_TITLE = "gRPC unary: CPU time of the proxy per 100,000 calls (ms, user + system)"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
GRPC_PATH = "/bench.Echo/Unary"
GRPC_MESSAGE = b"\x00\x00\x00\x00\x0bhello, grpc"


def upstream_bin(bench):
    return os.path.join(bench.BUILD, "bench", "h2_upstream")


def h2_upstream(b, bench):
    port = bench.free_port()
    return bench.Proc([upstream_bin(bench), str(port)], port)


def remora_h2(b, bench, app_port, protocol):
    """remora's ingress with the node's listener `protocol` on app_port (no per-request timer)."""
    port, admin, egress = bench.free_ports(3)
    cfg = {"mesh": {"meshName": "bench"}, "virtualNodes": [{"virtualNodeName": "app", "spec": {
        "listeners": [{"portMapping": {"port": app_port, "protocol": protocol},
                       "timeout": {protocol: {"perRequest": {"unit": "s", "value": 0}}}}]}}]}
    path = os.path.join(b.dir, f"remora-h2-{port}.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    argv = [bench.REMORA, "--config", path, "--node", "app", "--ingress-port", str(port),
            "--egress-port", str(egress), "--admin", f"127.0.0.1:{admin}", "--workers", "1",
            "--log-level", "error"]
    return bench.Proc(argv, port, env={"PATH": os.environ["PATH"]}, quiet=True, admin=admin)


def haproxy_h2(b, bench, up_port):
    port = bench.free_port()
    conf = os.path.join(b.dir, f"haproxy-h2-{port}.cfg")
    with open(conf, "w") as f:
        f.write(f"""global
  nbthread 1
  maxconn 9900
  ulimit-n 19990
defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  option http-keep-alive
  http-reuse always
frontend fe
  bind 127.0.0.1:{port} proto h2
  default_backend be
backend be
  server s1 127.0.0.1:{up_port} proto h2
""")
    return bench.Proc(["haproxy", "-f", conf, "-db"], port, quiet=True)


def nginx_h2(b, bench, up_port, grpc):
    """nginx terminating h2c: grpc_pass to the HTTP/2 upstream, or proxy_pass over HTTP/1.1 to
    the bench's nginx upstream."""
    port = bench.free_port()
    if grpc:
        where = "grpc_pass grpc://h2up;"
        upstream = f"upstream h2up {{ server 127.0.0.1:{up_port}; keepalive 64; }}"
    else:
        where = 'proxy_pass http://h1up; proxy_http_version 1.1; proxy_set_header Connection "";'
        upstream = f"upstream h1up {{ server 127.0.0.1:{b.up_port}; keepalive 64; }}"
    conf = b.nginx_conf(f"proxy-h2-{port}", f"""
  {upstream}
  server {{
    listen 127.0.0.1:{port} http2 reuseport backlog=4096;
    http2_max_concurrent_streams 128;
    keepalive_requests 10000000;
    client_max_body_size 1m;
    location / {{ {where} }}
  }}""")
    return bench.Proc(["nginx", "-c", conf], port, quiet=True)


def h2load(port, path, seconds, conns=8, streams=32, grpc_file=None, n=None):
    """One h2load run: {"rps", "done", "failed", "2xx", "out"}."""
    argv = ["h2load", "-t", "1", "-c", str(conns), "-m", str(streams)]
    argv += ["-n", str(n)] if n else ["-D", str(seconds)]
    if grpc_file:
        argv += ["-d", grpc_file, "-H", "content-type: application/grpc", "-H", "te: trailers"]
    out = subprocess.run(argv + [f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True,
                         timeout=(seconds or 10) + 60).stdout
    rps = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out)
    req = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed", out)
    codes = re.search(r"status codes: (\d+) 2xx", out)
    return {"rps": float(rps.group(1)) if rps else 0.0,
            "done": int(req.group(2)) if req else 0, "failed": int(req.group(4)) if req else -1,
            "2xx": int(codes.group(1)) if codes else 0, "out": out}


def grpc_check(port):
    """One unary call through `port` with grpcio (Debian's python3-grpcio), or why not (a str)."""
    code = ("import grpc, sys\n"
            f"ch = grpc.insecure_channel('127.0.0.1:{port}', options=[('grpc.enable_http_proxy', 0)])\n"
            f"f = ch.unary_unary('{GRPC_PATH}', request_serializer=None, response_deserializer=None)\n"
            "r, call = f.with_call(b'hello, grpc', timeout=5)\n"
            "assert r == b'hello, grpc', r\n"
            "print('ok', call.code())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    if out.returncode == 0:
        return None
    lines = [x for x in (out.stderr or out.stdout).splitlines() if x.strip()]
    return lines[-1][:200] if lines else f"exit {out.returncode}"


def run_rounds(b, bench, targets, path, rounds, secs, grpc_file=None):
    """rps and CPU ms per 100k requests per target, interleaved rounds; a target that fails its
    check first (a str) is reported as that."""
    rps = {n: [] for n in targets}
    cpu = {n: [] for n in targets}
    for _ in range(rounds):
        for name, proc in bench.live(targets).items():
            t0 = proc.cpu_ticks()
            r = h2load(proc.port, path, secs, grpc_file=grpc_file)
            ticks = proc.cpu_ticks() - t0
            if r["failed"] or not r["done"] or r["2xx"] < r["done"]:
                tail = [x for x in r["out"].splitlines() if x.startswith(("requests:", "status codes:"))]
                print(f"  warning: {name} {path}: {' / '.join(tail) or r['out'][-300:]}", file=sys.stderr)
            if r["2xx"]:
                rps[name].append(r["rps"])
                cpu[name].append(ticks * 1000 / bench.CLK_TCK * 100000 / r["2xx"])
    shown = lambda got, digits: {n: bench.Spread(v, digits) if v else (
        targets[n] if isinstance(targets[n], str) else "n/a") for n, v in got.items()}
    return shown(rps, 0), shown(cpu, 1)


async def hold_h2(port, n, measure):
    """n HTTP/2 connections: preface, SETTINGS (and the ACK of the server's), one GET /small
    answered on each; then idle while `measure` runs."""
    import hpack
    enc = hpack.Encoder()
    block = enc.encode([(":method", "GET"), (":scheme", "http"), (":authority", "bench"),
                        (":path", "/small")])
    frame = lambda t, fl, sid, p=b"": struct.pack(">I", len(p))[1:] + bytes([t, fl]) + \
        struct.pack(">I", sid) + p
    hello = PREFACE + frame(4, 0, 0) + frame(1, 0x5, 1, block)

    async def one():
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(hello)
        acked, done = False, False
        while not (acked and done):
            head = await r.readexactly(9)
            length, ftype, flags = int.from_bytes(head[:3], "big"), head[3], head[4]
            sid = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
            payload = await r.readexactly(length)
            if ftype == 4 and not flags & 1:
                w.write(frame(4, 1, 0))
                acked = True
            elif ftype == 6 and not flags & 1:
                w.write(frame(6, 1, 0, payload))
            elif ftype in (0, 1) and sid == 1 and flags & 1:
                done = True
            elif ftype == 7:
                raise SystemExit(f"GOAWAY from port {port}")
        return r, w

    conns = []
    for i in range(0, n, 100):
        conns += await asyncio.gather(*(one() for _ in range(min(100, n - i))))
    await asyncio.sleep(1.5)  # past remora's housekeeping tick, as bench.hold_connections waits
    held = measure()
    for _, w in conns:
        w.close()
    return held


def memory_h2(b, bench, makers, n):
    res = {}
    for name, make in makers.items():
        try:
            proc = make()
        except bench.NotUp as e:
            res[name] = {"idle_kib": f"not up ({bench.not_up_reason(e)})", "per_conn_bytes": "n/a"}
            continue
        try:
            asyncio.run(hold_h2(proc.port, 10, lambda: 0))  # warm-up: what the first one sets up
            idle = proc.rss()
            held = asyncio.run(hold_h2(proc.port, n, proc.rss))
            res[name] = {"idle_kib": idle, "per_conn_bytes": (held - idle) * 1024 / n}
        except (OSError, SystemExit, asyncio.IncompleteReadError) as e:
            res[name] = {"idle_kib": f"failed ({str(e)[:150]})", "per_conn_bytes": "n/a"}
        finally:
            proc.stop()
    b.results[f"memory with {n} idle HTTP/2 connections (preface, SETTINGS and one GET each)"] = res
    return res


def h2_section(b, rounds, secs):
    import bench  # the running bench's helpers (imported here: bench.py imports this file)
    if not os.path.exists(upstream_bin(bench)):
        b.notes.append(f"HTTP/2: not measured: {upstream_bin(bench)} is not built "
                       "(BENCH_BINS in the Makefile)")
        print(b.notes[-1])
        return
    if not shutil.which("h2load"):
        b.notes.append("HTTP/2: not measured: no h2load (Debian: nghttp2-client)")
        return
    grpc_file = os.path.join(b.dir, "grpc-message.bin")
    with open(grpc_file, "wb") as f:
        f.write(GRPC_MESSAGE)
    started = []
    up = h2_upstream(b, bench)
    try:
        def make(name, fn):
            try:
                p = fn()
                started.append(p)
                return p
            except bench.NotUp as e:
                return f"not up ({bench.not_up_reason(e)})"

        t = {"remora": make("remora", lambda: remora_h2(b, bench, up.port, "http2")),
             "remora, h1 upstream": make("remora h1", lambda: remora_h2(b, bench, b.up_port, "http")),
             "haproxy": make("haproxy", lambda: haproxy_h2(b, bench, up.port)),
             "nginx (h1 upstream)": make("nginx", lambda: nginx_h2(b, bench, up.port, grpc=False)),
             "direct": up}
        for name, proc in bench.live(t).items():  # each answers 100 GETs over HTTP/2 first
            r = h2load(proc.port, "/small", 0, n=100)
            if r["2xx"] != 100:
                t[name] = f"check failed: {r['2xx']} of 100 GETs answered 2xx"
                print(f"  warning: {name}: {t[name]}", file=sys.stderr)
        rps, cpu = run_rounds(b, bench, t, "/small", rounds, secs)
        cpu.pop("direct", None)
        b.results[H2_TITLE] = rps
        b.results[H2_CPU_TITLE] = cpu
        print(rps, cpu)
        for p in started:
            p.stop()
        started.clear()
        g = {"remora": make("remora", lambda: remora_h2(b, bench, up.port, "grpc")),
             "haproxy": make("haproxy", lambda: haproxy_h2(b, bench, up.port)),
             "nginx (grpc_pass)": make("nginx", lambda: nginx_h2(b, bench, up.port, grpc=True)),
             "direct": up}
        for name, proc in bench.live(g).items():  # a real gRPC client's call goes through first
            why = grpc_check(proc.port)
            if why:
                g[name] = f"gRPC check failed: {why}"
                print(f"  warning: {name}: {g[name]}", file=sys.stderr)
        rps, cpu = run_rounds(b, bench, g, GRPC_PATH, rounds, secs, grpc_file=grpc_file)
        cpu.pop("direct", None)
        b.results[GRPC_TITLE] = rps
        b.results[GRPC_CPU_TITLE] = cpu
        print(rps, cpu)
        for p in started:
            p.stop()
        started.clear()
        b.notes.append("HTTP/2: remora and HAProxy speak HTTP/2 to the upstream (tests/bench/h2_upstream.c, "
                       "nghttp2, one thread); nginx cannot proxy_pass in HTTP/2, so its small-GET row goes "
                       "to the bench's nginx upstream over HTTP/1.1 keep-alive (compare it with 'remora, h1 "
                       "upstream'), and its gRPC row uses grpc_pass to the same HTTP/2 upstream; every gRPC "
                       "target first passed one grpcio unary call")
        n = 100 if b.smoke else 2000
        print(memory_h2(b, bench, {
            "remora": lambda: remora_h2(b, bench, up.port, "http2"),
            "haproxy": lambda: haproxy_h2(b, bench, up.port),
            "nginx": lambda: nginx_h2(b, bench, up.port, grpc=False)}, n))
    finally:
        for p in started:
            p.stop()
        up.stop()
