#!/usr/bin/python3
"""`make run`: a local demo of remora with examples/mesh.json.

Starts the app behind the `web` node (ingress) and both versions of the cart backend (egress,
a 90/10 canary route plus a header route to v2) as real HTTP servers, starts remora in front,
sends requests through both listeners, then keeps sending a trickle and prints per-version
counts until Ctrl-C, which stops everything it started."""
import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
UPSTREAM = os.path.join(ROOT, "tests", "integration", "upstream.py")


def wait_http(url, timeout=10):
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--remora", default=os.path.join(ROOT, "build", "remora"))
    ap.add_argument("--config", default=os.path.join(HERE, "mesh.json"))
    args = ap.parse_args()
    with open(args.config) as f:
        mesh = json.load(f)
    ports = {n["virtualNodeName"]: n["spec"]["listeners"][0]["portMapping"]["port"]
             for n in mesh["virtualNodes"]}
    procs = []
    try:
        for name, port in ports.items():
            procs.append(subprocess.Popen([sys.executable, UPSTREAM, "--port", str(port),
                                           "--name", name], stdout=subprocess.DEVNULL))
        for port in ports.values():
            wait_http(f"http://127.0.0.1:{port}/_stats")
        procs.append(subprocess.Popen([args.remora, "--config", args.config]))
        wait_http("http://127.0.0.1:9901/ready")
        print("\nremora is up: ingress :15000 -> web app, egress :15001 -> cart.shop.local\n")
        for listener, port, host, headers in (("ingress", 15000, "web.shop.local", {}),
                                              ("egress", 15001, "cart.shop.local", {}),
                                              ("egress", 15001, "cart.shop.local", {"x-canary": "true"}),
                                              ("egress", 15001, "unknown.shop.local", {})):
            status, body = get(f"http://127.0.0.1:{port}/echo", host, headers)
            try:
                who = "served by " + json.loads(body)["server"]
            except ValueError:
                who = body.decode().strip()
            extra = " x-canary: true" if headers else ""
            print(f"  {listener:7} Host: {host:20}{extra:16} -> {status} {who}")
        print("\ntry: curl -H 'Host: cart.shop.local' localhost:15001/echo   |   "
              "curl localhost:9901/stats/prometheus\nedit examples/mesh.json's weights and watch "
              "the split follow. Ctrl-C stops the demo.\n")
        while True:
            for _ in range(100):
                get("http://127.0.0.1:15001/echo", "cart.shop.local")
            time.sleep(2)
            with urllib.request.urlopen("http://127.0.0.1:9901/stats", timeout=2) as r:
                stats = dict(line.rsplit(": ", 1) for line in r.read().decode().splitlines())
            picks = {k.split(".")[4]: v for k, v in stats.items()
                     if k.startswith("remora.route.cart.canary.") and k.endswith(".picks")}
            print("canary route picks: %s | egress 2xx %s, 5xx %s | reloads %s" % (
                ", ".join(f"{k} {v}" for k, v in sorted(picks.items())),
                stats["http.egress.downstream_rq_2xx"], stats["http.egress.downstream_rq_5xx"],
                stats["remora.config.reload_ok"]), flush=True)
    except KeyboardInterrupt:
        print("\nstopping")
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(25)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()
