"""The Cloud Map API's cost on the request path (issue 14: "discovery and config polling cost
nothing on the request path"): small-GET throughput through remora's ingress with and without
50 Cloud Map API clusters polled every second, in the same run, rounds interleaved.

The clusters are real: moto's server (the machine's Python 3.11 has it) holds 50 services with
two instances each, told apart by a `version` attribute, and remora's node has 50 backends whose
nodes filter by it, so every cluster polls DiscoverInstancesRevision once a second over the
control-plane client on the main thread while wrk drives the worker. The report also gives the
API calls remora made during the runs, so a run where polling did not happen cannot pass for a
free one."""
import json
import os
import subprocess
import sys
import time
import urllib.request

MOTO_PYTHON = os.environ.get("MOTO_PYTHON", "/root/.pyenv/shims/python3")
CLUSTERS = 50

REGISTER = r"""
import sys, boto3
ep, n = sys.argv[1], int(sys.argv[2])
c = boto3.client("servicediscovery", endpoint_url=ep, region_name="us-east-1",
                 aws_access_key_id="bench", aws_secret_access_key="bench")
ns = c.create_http_namespace(Name="bench.local")
ns_id = c.list_namespaces()["Namespaces"][0]["Id"]
for i in range(n):
    svc = c.create_service(Name=f"svc{i}", NamespaceId=ns_id)["Service"]["Id"]
    for v in ("v1", "v2"):
        c.register_instance(ServiceId=svc, InstanceId=f"{v}-{i}",
                            Attributes={"AWS_INSTANCE_IPV4": "127.0.0.1", "version": v})
"""


def moto(b, port):
    log = open(os.path.join(b.dir, "moto.log"), "w")
    proc = subprocess.Popen([MOTO_PYTHON, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/data.json", timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"moto exited: {open(log.name).read()[-500:]}")
            time.sleep(0.1)
    subprocess.run([MOTO_PYTHON, "-c", REGISTER, f"http://127.0.0.1:{port}", str(CLUSTERS)],
                   check=True, timeout=120)
    return proc


def remora_with_clusters(b, bench, moto_port):
    """remora as b.remora(1) configures it, plus 50 backends on Cloud Map API nodes."""
    port, admin, egress = bench.free_ports(3)
    nodes = [{"virtualNodeName": "app", "spec": {
        "listeners": [{"portMapping": {"port": b.up_port, "protocol": "http"},
                       "timeout": {"http": {"perRequest": {"unit": "s", "value": 0}}}}],
        "backends": [{"virtualService": {"virtualServiceName": f"svc{i}.bench.local"}}
                     for i in range(CLUSTERS)]}}]
    services = []
    for i in range(CLUSTERS):
        nodes.append({"virtualNodeName": f"svc{i}-v1", "spec": {
            "listeners": [{"portMapping": {"port": 8080, "protocol": "http"}}],
            "serviceDiscovery": {"awsCloudMap": {
                "namespaceName": "bench.local", "serviceName": f"svc{i}",
                "attributes": [{"key": "version", "value": "v1"}]}}}})
        services.append({"virtualServiceName": f"svc{i}.bench.local", "spec": {
            "provider": {"virtualNode": {"virtualNodeName": f"svc{i}-v1"}}}})
    cfg = {"mesh": {"meshName": "bench"}, "virtualNodes": nodes, "virtualServices": services}
    path = os.path.join(b.dir, f"remora-cloudmap-{port}.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    env = {"PATH": os.environ["PATH"], "AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "bench",
           "AWS_SECRET_ACCESS_KEY": "bench",
           "AWS_ENDPOINT_URL_SERVICEDISCOVERY": f"http://127.0.0.1:{moto_port}",
           "REMORA_CLOUDMAP_POLL_MS": "1000", "REMORA_CLOUDMAP_REFRESH_MS": "30000"}
    argv = [bench.REMORA, "--config", path, "--node", "app", "--ingress-port", str(port),
            "--egress-port", str(egress), "--admin", f"127.0.0.1:{admin}", "--workers", "1",
            "--log-level", "error"]
    return bench.Proc(argv, port, env=env, admin=admin)


def api_calls(p):
    with urllib.request.urlopen(f"http://127.0.0.1:{p.admin}/stats", timeout=5) as r:
        text = r.read().decode()
    total = 0
    for line in text.splitlines():
        name, _, value = line.rpartition(": ")
        if name.startswith("remora.cloudmap.") and not name.endswith(".revision") and value.isdigit():
            total += int(value)
    return total


def discovery_section(b, rounds, secs):
    import bench  # the running bench's helpers (imported here: bench.py imports this file)
    if not os.path.exists(MOTO_PYTHON):
        b.notes.append(f"Cloud Map polling cost not measured: {MOTO_PYTHON} (moto) is missing")
        return
    moto_port = bench.free_port()
    server = moto(b, moto_port)
    started = []
    try:
        plain = b.remora(1)[0]
        polled = remora_with_clusters(b, bench, moto_port)
        started += [plain, polled]
        label = f"{CLUSTERS} Cloud Map API clusters polled every second"
        before, t0 = api_calls(polled), time.monotonic()
        med = b.throughput(f"small GET, 1 worker, {label}",
                           {"remora": plain, "remora + " + label: polled}, "/small", rounds, secs)
        calls, spent = api_calls(polled) - before, time.monotonic() - t0
        b.notes.append(f"Cloud Map polling: {calls} API calls during the throughput rounds "
                       f"({calls / spent:.0f}/s over {spent:.0f} s, {CLUSTERS} clusters)")
        print(med)
        if calls == 0:
            print("  warning: no Cloud Map API calls were made: polling did not run", file=sys.stderr)
    finally:
        for p in started:
            p.stop()
        server.terminate()
        server.wait(10)
