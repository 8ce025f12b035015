"""A rollout's cost on the request path (issue 15: "the analysis costs nothing measurable"):
small-GET throughput through remora's egress to a router route split between two versions
(both the bench's nginx upstream), without and with a rollout driving that route, analysed
every second, in the same run, rounds interleaved. The rollout's decisions during the rounds
are reported, so a run where the analysis did not run cannot pass for a free one."""
import json
import os
import statistics
import time
import urllib.request


def egress_remora(b, bench, with_rollout):
    port, admin, ingress = bench.free_ports(3)
    node = lambda name: {"virtualNodeName": name, "spec": {
        "listeners": [{"portMapping": {"port": b.up_port, "protocol": "http"}}],
        "serviceDiscovery": {"dns": {"hostname": "127.0.0.1"}}}}
    cfg = {"mesh": {"meshName": "bench"},
           "virtualNodes": [{"virtualNodeName": "app", "spec": {
               "listeners": [{"portMapping": {"port": 1, "protocol": "http"}}],
               "backends": [{"virtualService": {"virtualServiceName": "cart.bench.local"}}]}},
               node("cart-v1"), node("cart-v2")],
           "virtualServices": [{"virtualServiceName": "cart.bench.local", "spec": {
               "provider": {"virtualRouter": {"virtualRouterName": "cart"}}}}],
           "virtualRouters": [{"virtualRouterName": "cart", "spec": {
               "listeners": [{"portMapping": {"port": 80, "protocol": "http"}}]}}],
           "routes": [{"virtualRouterName": "cart", "routeName": "canary", "spec": {"httpRoute": {
               "match": {"prefix": "/"}, "timeout": {"perRequest": {"unit": "s", "value": 0}},
               "action": {"weightedTargets": [{"virtualNode": "cart-v1", "weight": 90},
                                              {"virtualNode": "cart-v2", "weight": 10}]}}}}]}
    if with_rollout:  # holds at 10 % for the whole run: every interval is judged, none moves it
        cfg["rollouts"] = [{"rolloutName": "cart-v2", "virtualRouterName": "cart",
                            "routeName": "canary", "baseline": "cart-v1", "canary": "cart-v2",
                            "steps": [{"weight": 10, "hold": {"unit": "s", "value": 86400}},
                                      {"weight": 100}],
                            "analysis": {"interval": {"unit": "s", "value": 1}, "minRequests": 1,
                                         "maxErrorRate": 0.01, "confidence": 0.95,
                                         "failureLimit": 3}}]
    path = os.path.join(b.dir, f"remora-rollout-{port}.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    argv = [bench.REMORA, "--config", path, "--node", "app", "--egress-port", str(port),
            "--ingress-port", str(ingress), "--admin", f"127.0.0.1:{admin}", "--workers", "1",
            "--log-level", "error"]
    return bench.Proc(argv, port, env={"PATH": os.environ["PATH"]}, admin=admin)


def decisions(p):
    with urllib.request.urlopen(f"http://127.0.0.1:{p.admin}/rollouts", timeout=5) as r:
        return sum(x.get("decisions", 0) for x in json.loads(r.read()))


def rollout_section(b, rounds, secs):
    import bench  # the running bench's helpers (imported here: bench.py imports this file)
    started = []
    try:
        plain, ruled = egress_remora(b, bench, False), egress_remora(b, bench, True)
        started = [plain, ruled]
        targets = {"remora": plain, "remora + a rollout analysed every second": ruled}
        got = {name: [] for name in targets}
        before, t0 = decisions(ruled), time.monotonic()
        for _ in range(rounds):
            for name, p in targets.items():
                r = b.wrk_run(p.port, "/small", secs, headers=("Host: cart.bench.local",))
                got[name].append(r["rps"])
                if r["errors"]:
                    print(f"  warning: {name}: {r['errors']}")
        made = decisions(ruled) - before
        spent = time.monotonic() - t0
        med = {name: bench.Spread(v) for name, v in got.items()}
        b.results["throughput small GET through a canary route, 1 worker (req/s)"] = med
        b.notes.append(f"rollout analysis: {made} decisions during the throughput rounds "
                       f"({spent:.0f} s); with/without {statistics.median(got[list(got)[1]]) / max(statistics.median(got['remora']), 1):.3f}")
        print(med)
    finally:
        for p in started:
            p.stop()
