#!/usr/bin/python3
"""A whole mesh in one config document, as a fleet's config URL serves it to every sidecar:
`nodes` virtual nodes, `routers` virtual routers (each the provider of one virtual service) of
`routes` routes each, and a caller node with `backends` backends. At App Mesh's quotas (200
nodes, 200 routers of 50 routes, 50 backends per node) that is 10,000 routes in about 2.9 MB.

Deterministic: the same arguments always give the same document, byte for byte.

Resources, as `aws appmesh describe-*` prints them (nodes, services and routers with their
metadata and status, which remora ignores; routes with their spec alone, as a generator of a
fleet's document would keep 10,000 of them):
  virtual node `svcI` (I < nodes): one http listener on ports[I % len(ports)], DNS discovery of
    `hostname` (127.0.0.1 by default, so that a sidecar is ready without a DNS server), five
    backends among the services (a mesh's nodes call each other)
  virtual service `svcI.big.local` (I < routers): provider router `svcI-router`
  router `svcI-router`: an http listener on port 8080; routes `rK` (K < routes): route K matches
    prefix /pK/ (every fifth also a header, every seventh a method), priority K on even K, and
    sends 90 to node svcI and 10 to node svc(I+1) (a canary); the last route is the catch-all
    prefix /, and every tenth route has a retry policy
  node `caller`: the sidecar under test, backends svc0.big.local .. svc(backends-1).big.local

So the caller reaches `backends` routers, backends x routes routes and backends + 1 nodes (each
router's two targets overlap with the next one's).

    bigmesh.py [--nodes 200] [--routers 200] [--routes 50] [--backends 50] [--ports 8080,...]
               [--hostname 127.0.0.1] [-o FILE]
"""
import argparse
import json
import sys

DOMAIN = "big.local"
MESH = "big"
ROUTER_PORT = 8080


def metadata(kind, name, version=1):
    """What describe-* adds around a spec (the ARN's account and the dates are fixed)."""
    arn = f"arn:aws:appmesh:us-east-1:111122223333:mesh/{MESH}/{kind}/{name}"
    return {"arn": arn, "createdAt": "2024-05-01T12:00:00+00:00",
            "lastUpdatedAt": "2024-05-01T12:00:00+00:00", "meshOwner": "111122223333",
            "resourceOwner": "111122223333", "uid": f"{abs(hash_name(name)):032x}"[:32],
            "version": version}


def hash_name(name):
    """A stable 64-bit hash (Python's hash() is salted per process)."""
    h = 1469598103934665603
    for c in name.encode():
        h = ((h ^ c) * 1099511628211) & ((1 << 64) - 1)
    return h


def node(name, port, hostname, backends):
    spec = {"listeners": [{"portMapping": {"port": port, "protocol": "http"}}],
            "serviceDiscovery": {"dns": {"hostname": hostname}},
            "backends": [{"virtualService": {"virtualServiceName": b}} for b in backends]}
    return {"meshName": MESH, "virtualNodeName": name, "metadata": metadata("virtualNode", name),
            "spec": spec, "status": {"status": "ACTIVE"}}


def route(router, k, routes, nodes, i):
    last = k == routes - 1
    match = {"prefix": "/" if last else f"/p{k}/"}
    if not last and k % 5 == 4:
        match["headers"] = [{"name": "x-canary", "match": {"exact": "true"}}]
    if not last and k % 7 == 6:
        match["method"] = "GET"
    http = {"match": match,
            "action": {"weightedTargets": [{"virtualNode": f"svc{i}", "weight": 90},
                                           {"virtualNode": f"svc{(i + 1) % nodes}", "weight": 10}]}}
    if k % 10 == 9:
        http["retryPolicy"] = {"maxRetries": 3, "perRetryTimeout": {"unit": "ms", "value": 2000},
                               "httpRetryEvents": ["gateway-error"]}
    spec = {"httpRoute": http}
    if k % 2 == 0 and not last:
        spec["priority"] = k
    name = f"r{k}"
    return {"meshName": MESH, "virtualRouterName": router, "routeName": name, "spec": spec}


def mesh(nodes=200, routers=200, routes=50, backends=50, ports=(ROUTER_PORT,), hostname="127.0.0.1"):
    """The document as a dict. routers <= nodes; backends <= routers."""
    if not (1 <= routers <= nodes and 1 <= backends <= routers and routes >= 1):
        raise ValueError("need 1 <= routers <= nodes, 1 <= backends <= routers, routes >= 1")
    services = [f"svc{i}.{DOMAIN}" for i in range(routers)]
    doc = {"mesh": {"meshName": MESH, "spec": {"egressFilter": {"type": "DROP_ALL"}}},
           "virtualNodes": [], "virtualServices": [], "virtualRouters": [], "routes": []}
    for i in range(nodes):
        calls = [services[(i + 1 + j) % routers] for j in range(min(5, routers))]
        doc["virtualNodes"].append(node(f"svc{i}", ports[i % len(ports)], hostname, calls))
    doc["virtualNodes"].append(node("caller", ports[0], hostname, services[:backends]))
    for i in range(routers):
        r = f"svc{i}-router"
        doc["virtualServices"].append({
            "meshName": MESH, "virtualServiceName": services[i],
            "metadata": metadata("virtualService", services[i]),
            "spec": {"provider": {"virtualRouter": {"virtualRouterName": r}}},
            "status": {"status": "ACTIVE"}})
        doc["virtualRouters"].append({
            "meshName": MESH, "virtualRouterName": r, "metadata": metadata("virtualRouter", r),
            "spec": {"listeners": [{"portMapping": {"port": ROUTER_PORT, "protocol": "http"}}]},
            "status": {"status": "ACTIVE"}})
        for k in range(routes):
            doc["routes"].append(route(r, k, routes, nodes, i))
    doc["proxy"] = {"node": "caller"}
    return doc


def text(**kw):
    return json.dumps(mesh(**kw), separators=(",", ":"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=200)
    ap.add_argument("--routers", type=int, default=200)
    ap.add_argument("--routes", type=int, default=50, help="routes per router")
    ap.add_argument("--backends", type=int, default=50, help="the caller's backends")
    ap.add_argument("--ports", default=str(ROUTER_PORT), help="node listener ports, comma-separated")
    ap.add_argument("--hostname", default="127.0.0.1", help="every node's DNS hostname")
    ap.add_argument("-o", "--output", help="file (default: standard output)")
    a = ap.parse_args()
    out = text(nodes=a.nodes, routers=a.routers, routes=a.routes, backends=a.backends,
               ports=tuple(int(p) for p in a.ports.split(",")), hostname=a.hostname)
    if a.output:
        with open(a.output, "w") as f:
            f.write(out)
    else:
        sys.stdout.write(out)


if __name__ == "__main__":
    main()
