#!/usr/bin/python3
"""`make run`: a complete local demo mesh with examples/mesh.json.

Starts, all on 127.0.0.1:
  - Knot DNS on :5353 serving Cloud Map-shaped records (SRV + A) for cart-v1 and cart-v2;
  - the app behind the `web` node (:8080) and both cart versions (:8081, :8082), real HTTP
    servers;
  - an X-Ray daemon stand-in on UDP :2000 that counts the segments it receives;
  - remora in front: ingress :15000, egress :15001 (a 90/10 canary route plus a header route
    to v2, retries), admin :9901, and the rollout `cart-v2` of examples/mesh.json, which moves
    v2 from 10 % to 100 % in steps while its analysis passes.
Then it sends a steady stream of requests and shows, live, the requests per version, each
endpoint's health, the rollout and the traces received, until Ctrl-C, which stops everything
it started. The page http://127.0.0.1:9901/ui shows the same live. `touch FAIL_FILE`
(/tmp/remora-demo/fail-v2) makes v2 answer 500 to one request in five: the rollout rolls back
by itself within two analysis intervals."""
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
UPSTREAM = os.path.join(ROOT, "tests", "integration", "upstream.py")
# A version with a switchable error rate (the cart versions).
VERSION = os.path.join(ROOT, "tests", "integration", "rollout_upstream.py")
DEMO_DIR = "/tmp/remora-demo"
FAIL_FILE = os.path.join(DEMO_DIR, "fail-v2")
DNS_PORT = 5353


def wait_http(url, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                return r.status
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"demo: {url} did not answer")


def get(url, host, headers=None):
    req = urllib.request.Request(url, headers=dict(headers or {}, Host=host))
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def start_knot(workdir, ports):
    """Knot with zone shop.local: one Cloud Map instance per cart version."""
    for sub in ("run", "db", "zones"):
        os.makedirs(os.path.join(workdir, sub), exist_ok=True)
    conf = os.path.join(workdir, "knot.conf")
    with open(conf, "w") as f:
        f.write(f"""server:
    rundir: "{workdir}/run"
    listen: 127.0.0.1@{DNS_PORT}
database:
    storage: "{workdir}/db"
control:
    listen: "{workdir}/run/knot.sock"
log:
  - target: stderr
    any: error
template:
  - id: default
    storage: "{workdir}/zones"
    file: "%s.zone"
    zonefile-sync: -1
zone:
  - domain: shop.local
""")
    with open(os.path.join(workdir, "zones", "shop.local.zone"), "w") as f:
        f.write("$ORIGIN shop.local.\n$TTL 5\n@ IN SOA ns1 hostmaster 1 60 60 3600 5\n@ IN NS ns1\n"
                "ns1 IN A 127.0.0.1\n")
        for name, port in ports.items():
            f.write(f"{name} 5 IN SRV 1 1 {port} i-1.{name}.shop.local.\n"
                    f"i-1.{name} 5 IN A 127.0.0.1\n")
    return subprocess.Popen(["knotd", "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class Traces:
    """Stands in for the X-Ray daemon on UDP 2000: counts documents, keeps the last one."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 2000))
        self.sock.settimeout(0.5)
        self.count, self.last, self.stop = 0, None, False
        threading.Thread(target=self.run, daemon=True).start()

    def run(self):
        while not self.stop:
            try:
                data, _ = self.sock.recvfrom(70000)
            except socket.timeout:
                continue
            self.count += 1
            self.last = json.loads(data.split(b"\n", 1)[1])


def health(admin):
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/clusters", timeout=2) as r:
        lines = r.read().decode().splitlines()
    out = []
    for line in lines:
        parts = line.split("::")
        if len(parts) == 4 and parts[2] == "health_flags" and "cart" in parts[0]:
            version = parts[0].split("_")[3]
            out.append(f"{version} {parts[1]} {parts[3]}")
    return ", ".join(out)


def rollout_line(admin):
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/rollouts", timeout=2) as r:
        out = []
        for ro in json.loads(r.read()):
            last = ro["lastDecision"]
            out.append(f"rollout {ro['rolloutName']}: {ro['state']} step {ro['step']} "
                       f"weight {ro['canaryWeight']}%" +
                       (f" (last interval: {last['result']}, canary "
                        f"{last['canary']['errors']}/{last['canary']['requests']} errors)"
                        if last else ""))
        return "; ".join(out) or "no rollout"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--remora", default=os.path.join(ROOT, "build", "remora"))
    ap.add_argument("--config", default=os.path.join(HERE, "mesh.json"))
    args = ap.parse_args()
    with open(args.config) as f:
        mesh = json.load(f)
    ports = {n["virtualNodeName"]: n["spec"]["listeners"][0]["portMapping"]["port"]
             for n in mesh["virtualNodes"]}
    workdir = tempfile.mkdtemp(prefix="remora-demo-")
    procs = []
    traces = None
    try:
        procs.append(start_knot(workdir, {n: p for n, p in ports.items() if n.startswith("cart")}))
        os.makedirs(DEMO_DIR, exist_ok=True)
        if os.path.exists(FAIL_FILE):
            os.unlink(FAIL_FILE)  # v2 starts healthy
        for name, port in ports.items():
            cmd = [sys.executable, UPSTREAM, "--port", str(port), "--name", name]
            if name.startswith("cart"):
                cmd = [sys.executable, VERSION, "--port", str(port), "--name", name]
                if name == "cart-v2":
                    cmd += ["--fail-every", "5", "--fail-file", FAIL_FILE]
            procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL))
        for port in ports.values():
            wait_http(f"http://127.0.0.1:{port}/_stats")
        traces = Traces()
        procs.append(subprocess.Popen([args.remora, "--config", args.config]))
        wait_http("http://127.0.0.1:9901/ready")
        print("\nremora is up: ingress :15000 -> web app, egress :15001 -> cart.shop.local "
              "(Cloud Map SRV via Knot on :5353), X-Ray segments to :2000\n")
        for listener, port, host, headers in (("ingress", 15000, "web.shop.local", {}),
                                              ("egress", 15001, "cart.shop.local", {}),
                                              ("egress", 15001, "cart.shop.local", {"x-canary": "true"}),
                                              ("egress", 15001, "unknown.shop.local", {})):
            status, body = get(f"http://127.0.0.1:{port}/echo", host, headers)
            try:
                who = "served by " + json.loads(body)["server"]
            except ValueError:
                who = body.decode().strip()
                who = "served by " + who if who.startswith("cart") else who
            extra = " x-canary: true" if headers else ""
            print(f"  {listener:7} Host: {host:20}{extra:16} -> {status} {who}")
        print("\ntry: curl -H 'Host: cart.shop.local' localhost:15001/echo   |   "
              "curl localhost:9901/clusters   |   curl localhost:9901/rollouts\n"
              "open http://127.0.0.1:9901/ui to watch the rollout of cart-v2 live.\n"
              f"touch {FAIL_FILE} makes v2 fail (1 request in 5): the rollout rolls back by "
              "itself.\nchange the rollout in examples/mesh.json (a weight, say) to start it "
              "over. Ctrl-C stops the demo.\n")
        while True:
            for _ in range(10):  # about 100 requests a second
                for _ in range(20):
                    get("http://127.0.0.1:15001/echo", "cart.shop.local")
                time.sleep(0.2)
            with urllib.request.urlopen("http://127.0.0.1:9901/stats", timeout=2) as r:
                stats = dict(line.rsplit(": ", 1) for line in r.read().decode().splitlines())
            picks = {k.split(".")[4]: v for k, v in stats.items()
                     if k.startswith("remora.route.cart.canary.") and k.endswith(".picks")}
            last = traces.last or {}
            sub = (last.get("subsegments") or [{}])[0]
            print("picks: %s | health: %s | traces: %d (last: %s -> %s, %d attempt(s))" % (
                ", ".join(f"{k} {v}" for k, v in sorted(picks.items())), health(9901), traces.count,
                last.get("name", "-"), sub.get("name", "-"), len(sub.get("subsegments", []))),
                flush=True)
            print("  " + rollout_line(9901) +
                  (" | v2 failing (rm " + FAIL_FILE + " to stop)" if os.path.exists(FAIL_FILE)
                   else ""), flush=True)
    except KeyboardInterrupt:
        print("\nstopping")
    finally:
        if traces:
            traces.stop = True
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(25)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
