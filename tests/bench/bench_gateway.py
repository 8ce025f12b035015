"""A virtual gateway's throughput (issue 16): remora serving a virtual gateway with 50 gateway
routes (prefixes /svc0/ .. /svc49/, each to its own virtual service, the default prefix
rewrite) against HAProxy with the equivalent 50 ACLs (`path_beg`, `use_backend`, and
`replace-path` for the same rewrite), in the same run, rounds interleaved. wrk asks for
/svc49/small, the route both proxies try last: the cost of matching all 50 is in the figure.
Both send to the bench's nginx upstream, which serves /small."""
import json
import os

ROUTES = 50


def gateway_remora(b, bench):
    port, admin = bench.free_ports(2)
    nodes, services, routes = [], [], []
    for i in range(ROUTES):
        nodes.append({"virtualNodeName": f"svc{i}", "spec": {
            "listeners": [{"portMapping": {"port": b.up_port, "protocol": "http"},
                           "timeout": {"http": {"perRequest": {"unit": "s", "value": 0}}}}],
            "serviceDiscovery": {"dns": {"hostname": "127.0.0.1"}}}})
        services.append({"virtualServiceName": f"svc{i}.bench.local", "spec": {
            "provider": {"virtualNode": {"virtualNodeName": f"svc{i}"}}}})
        routes.append({"virtualGatewayName": "edge", "gatewayRouteName": f"r{i}", "spec": {
            "httpRoute": {"match": {"prefix": f"/svc{i}/"}, "action": {"target": {
                "virtualService": {"virtualServiceName": f"svc{i}.bench.local"}}}}}})
    cfg = {"mesh": {"meshName": "bench"}, "virtualNodes": nodes, "virtualServices": services,
           "virtualGateways": [{"virtualGatewayName": "edge", "spec": {
               "listeners": [{"portMapping": {"port": port, "protocol": "http"}}]}}],
           "gatewayRoutes": routes, "proxy": {"gateway": "edge"}}
    path = os.path.join(b.dir, f"remora-gateway-{port}.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    argv = [bench.REMORA, "--config", path, "--admin", f"127.0.0.1:{admin}", "--workers", "1",
            "--log-level", "error"]
    return bench.Proc(argv, port, env={"PATH": os.environ["PATH"]}, admin=admin)


def gateway_haproxy(b, bench):
    port = bench.free_port()
    acls = "".join(f"  acl r{i} path_beg /svc{i}/\n  use_backend b{i} if r{i}\n"
                   for i in range(ROUTES))
    backends = "".join(f"backend b{i}\n  http-request replace-path /svc{i}(/.*) \\1\n"
                       f"  server s1 127.0.0.1:{b.up_port}\n" for i in range(ROUTES))
    conf = os.path.join(b.dir, f"haproxy-gateway-{port}.cfg")
    with open(conf, "w") as f:
        f.write(f"""global
  nbthread 1
  maxconn 9900
defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  option http-keep-alive
  http-reuse always
frontend fe
  bind 127.0.0.1:{port}
{acls}  default_backend b0
{backends}""")
    return bench.Proc(["haproxy", "-f", conf, "-db"], port)


def gateway_section(b, rounds, secs):
    import bench  # the running bench's helpers (imported here: bench.py imports this file)
    started = []
    try:
        started = [gateway_remora(b, bench), gateway_haproxy(b, bench)]
        print(b.throughput(f"small GET through a gateway of {ROUTES} routes (the last one), 1 worker",
                           {"remora": started[0], "haproxy": started[1]}, f"/svc{ROUTES - 1}/small",
                           rounds, secs))
    finally:
        for p in started:
            p.stop()
