"""remora as the mesh's virtual gateway (issue 16): the gateway's listener, gateway routes in
front of two services (cart with a 90/10 canary, catalog), every match and rewrite rule with
App Mesh's defaults, priority order, TLS termination, a reload under load, and configs refused
with their JSON path. Real upstreams (upstream.py echoes the target and headers it got) and the
real binary; requests are raw HTTP/1.1 so that Host and paths are exactly what a client sends."""
import copy
import http.client
import json
import ssl
import subprocess
import threading

import pytest

from certs import CA
from conftest import REMORA, free_port, port_open, wait_until
from rawhttp import Conn, request

CART, CATALOG = "cart.shop.local", "catalog.shop.local"


def mesh(ports, gw_port, routes, listener=None, gateway_extra=None):
    """cart.shop.local -> router cart (90 cart-v1 / 10 cart-v2), catalog.shop.local -> node
    catalog; the gateway `edge` on gw_port with `routes` (gateway route specs by name)."""
    node = lambda name: {"virtualNodeName": name, "spec": {
        "listeners": [{"portMapping": {"port": ports[name], "protocol": "http"}}],
        "serviceDiscovery": {"dns": {"hostname": "127.0.0.1"}}}}
    gw = {"virtualGatewayName": "edge", "spec": {
        "listeners": [listener or {"portMapping": {"port": gw_port, "protocol": "http"}}]}}
    gw["spec"].update(gateway_extra or {})
    return {
        "mesh": {"meshName": "shop"},
        "virtualNodes": [node("cart-v1"), node("cart-v2"), node("catalog")],
        "virtualServices": [
            {"virtualServiceName": CART, "spec": {"provider": {"virtualRouter": {"virtualRouterName": "cart"}}}},
            {"virtualServiceName": CATALOG, "spec": {"provider": {"virtualNode": {"virtualNodeName": "catalog"}}}}],
        "virtualRouters": [{"virtualRouterName": "cart", "spec": {
            "listeners": [{"portMapping": {"port": 80, "protocol": "http"}}]}}],
        "routes": [{"virtualRouterName": "cart", "routeName": "canary", "spec": {"httpRoute": {
            "match": {"prefix": "/"},
            "action": {"weightedTargets": [{"virtualNode": "cart-v1", "weight": 90},
                                           {"virtualNode": "cart-v2", "weight": 10}]}}}}],
        "virtualGateways": [gw],
        "gatewayRoutes": [{"virtualGatewayName": "edge", "gatewayRouteName": name, "spec": spec}
                          for name, spec in routes.items()],
        "proxy": {"gateway": "edge"},
    }


def http_route(match, service=CART, rewrite=None, priority=None):
    action = {"target": {"virtualService": {"virtualServiceName": service}}}
    if rewrite:
        action["rewrite"] = rewrite
    spec = {"httpRoute": {"match": match, "action": action}}
    if priority is not None:
        spec["priority"] = priority
    return spec


class Gateway:
    def __init__(self, upstream, remora):
        self.ups = {n: upstream(n) for n in ("cart-v1", "cart-v2", "catalog")}
        self.ports = {n: u.port for n, u in self.ups.items()}
        self.port = free_port()
        self.remora = remora

    def start(self, routes, **kw):
        self.cfg = mesh(self.ports, self.port, routes, **kw)
        self.r = self.remora(self.cfg)
        return self.r

    def send(self, path, host="shop.example.com", headers=(), method="GET", conn=None):
        c = conn or Conn(self.port)
        c.send(request(method, path, host=host, headers=headers))
        resp = c.read_response()
        body = json.loads(resp.body) if resp.status == 200 else None
        return resp, body


def seen_host(body):
    return next(v for k, v in body["headers"] if k.lower() == "host")


@pytest.fixture
def gw(upstream, remora):
    return Gateway(upstream, remora)


def test_prefix_routes_to_the_service_with_app_meshs_default_rewrites(gw):
    gw.start({"cart": http_route({"prefix": "/cart"}),
              "catalog": http_route({"prefix": "/catalog/"}, service=CATALOG)})
    resp, body = gw.send("/catalog/items?page=2")
    assert resp.status == 200 and body["server"] == "catalog"
    assert body["target"] == "/items?page=2"          # the matched prefix becomes "/"
    assert seen_host(body) == CATALOG                   # Host: the target virtual service
    resp, body = gw.send("/cart")
    assert body["server"].startswith("cart-") and body["target"] == "/"
    resp, body = gw.send("/cart/checkout")
    assert body["target"] == "/checkout"                # no "//"
    resp, _ = gw.send("/cartoon")  # a prefix matches whole segments only? App Mesh: plain prefix
    assert resp.status == 200


def test_prefix_rewrite_disabled_and_value(gw):
    gw.start({"keep": http_route({"prefix": "/red/"}, rewrite={"prefix": {"defaultPrefix": "DISABLED"}}),
              "swap": http_route({"prefix": "/maroon/"}, rewrite={"prefix": {"value": "/red/"}})})
    _, body = gw.send("/red/tell")
    assert body["target"] == "/red/tell"
    _, body = gw.send("/maroon/tell")
    assert body["target"] == "/red/tell"


def test_exact_and_regex_paths_with_a_path_rewrite(gw):
    gw.start({"exact": http_route({"path": {"exact": "/old"}}, rewrite={"path": {"exact": "/new"}}),
              "regex": http_route({"path": {"regex": "/items/[0-9]+"}}, service=CATALOG)})
    _, body = gw.send("/old")
    assert body["target"] == "/new"
    resp, _ = gw.send("/old/more")
    assert resp.status == 404                           # exact means exact
    _, body = gw.send("/items/42")
    assert body["server"] == "catalog" and body["target"] == "/items/42"  # no default rewrite
    resp, _ = gw.send("/items/4x")
    assert resp.status == 404


def test_hostname_matches_and_the_hostname_rewrite(gw):
    gw.start({"exact": http_route({"prefix": "/", "hostname": {"exact": "cart.example.com"}}),
              "suffix": http_route({"prefix": "/", "hostname": {"suffix": ".catalog.example.com"}},
                                   service=CATALOG,
                                   rewrite={"hostname": {"defaultTargetHostname": "DISABLED"}})})
    _, body = gw.send("/x", host="cart.example.com:8443")   # the port is not part of the name
    assert body["server"].startswith("cart-") and seen_host(body) == CART
    _, body = gw.send("/x", host="eu.catalog.example.com")
    assert body["server"] == "catalog"
    assert seen_host(body) == "eu.catalog.example.com"     # DISABLED keeps the client's Host
    resp, body = gw.send("/x", host="other.example.com")
    assert resp.status == 404
    assert b"other.example.com" in resp.body and b"/x" in resp.body


def test_priority_first_then_the_longest_prefix(gw):
    gw.start({"broad": http_route({"prefix": "/"}, service=CATALOG),
              "narrow": http_route({"prefix": "/cart"}),
              "first": http_route({"prefix": "/cart/special"}, service=CATALOG, priority=0),
              "second": http_route({"prefix": "/cart/special"}, priority=5)})
    assert gw.send("/cart/x")[1]["server"].startswith("cart-")    # longer prefix than "/"
    assert gw.send("/elsewhere")[1]["server"] == "catalog"
    assert gw.send("/cart/special/1")[1]["server"] == "catalog"  # priority 0 before 5


def test_header_query_and_method_matches(gw):
    gw.start({"beta": http_route({"prefix": "/", "headers": [
                  {"name": "x-canary", "match": {"exact": "yes"}},
                  {"name": "x-debug", "invert": True, "match": {"prefix": "1"}}],
                  "queryParameters": [{"name": "beta"}]}, service=CATALOG, priority=1),
              "post": http_route({"prefix": "/", "method": "POST"}, service=CATALOG, priority=2),
              "rest": http_route({"prefix": "/"}, priority=3)})
    assert gw.send("/a?beta", headers=[("X-Canary", "yes")])[1]["server"] == "catalog"
    assert gw.send("/a?beta=1", headers=[("X-Canary", "yes"), ("X-Debug", "0")])[1]["server"] == "catalog"
    assert gw.send("/a?beta", headers=[("X-Canary", "yes"), ("X-Debug", "12")])[1]["server"].startswith("cart-")
    assert gw.send("/a", headers=[("X-Canary", "yes")])[1]["server"].startswith("cart-")
    assert gw.send("/a", method="POST")[1]["server"] == "catalog"


def test_the_target_service_keeps_its_canary_split(gw):
    gw.start({"cart": http_route({"prefix": "/"})})
    counts, c = {}, Conn(gw.port)
    for _ in range(100):
        _, body = gw.send("/", conn=c)
        counts[body["server"]] = counts.get(body["server"], 0) + 1
    assert counts == {"cart-v1": 90, "cart-v2": 10}
    stats = gw.r.stats()
    assert stats["cluster.cds_egress_shop_cart-v1_http_%d.upstream_rq_total" % gw.ports["cart-v1"]] == 90


def test_tls_is_terminated_at_the_gateway(gw, tmp_path):
    ca = CA(str(tmp_path / "ca"), "gateway CA")
    leaf = ca.issue(str(tmp_path / "leaves"), "edge", [("DNS", "shop.example.com")])
    listener = {"portMapping": {"port": gw.port, "protocol": "http"},
                "tls": {"mode": "STRICT", "certificate": {"file": {
                    "certificateChain": leaf.cert, "privateKey": leaf.key}}}}
    gw.start({"cart": http_route({"prefix": "/"})}, listener=listener)
    ctx = ssl.create_default_context(cafile=ca.cert)
    ctx.check_hostname = False  # the certificate names shop.example.com, we dial 127.0.0.1
    h = http.client.HTTPSConnection("127.0.0.1", gw.port, context=ctx, timeout=5)
    h.request("GET", "/over-tls", headers={"Host": "shop.example.com"})
    r = h.getresponse()
    body = json.loads(r.read())
    assert r.status == 200 and body["target"] == "/over-tls"
    assert ("X-Forwarded-Proto", "https") in [tuple(x) for x in body["headers"]]
    with pytest.raises((EOFError, ConnectionError)):  # plaintext to STRICT: no HTTP answer
        gw.send("/")


def test_a_reload_of_gateway_routes_under_load_fails_no_request(gw):
    r = gw.start({"cart": http_route({"prefix": "/"})})
    failures, stop = [], threading.Event()
    served = {"n": 0}

    def load():
        c = Conn(gw.port)
        while not stop.is_set():
            try:
                resp, _ = gw.send("/shop", conn=c)
                served["n"] += 1
                if resp.status != 200:
                    failures.append(resp.status)
            except Exception as e:  # a connection reset is a failed request too
                failures.append(repr(e))
                c = Conn(gw.port)

    t = threading.Thread(target=load)
    t.start()
    before = r.stats().get("remora.config.reload_ok", 0)
    try:
        for i in range(6):
            cfg = copy.deepcopy(gw.cfg)
            service = CATALOG if i % 2 == 0 else CART
            cfg["gatewayRoutes"][0]["spec"] = http_route({"prefix": "/"}, service=service)
            with open(r.config_path, "w") as f:
                json.dump(cfg, f)
            wait_until(lambda: r.stats().get("remora.config.reload_ok", 0) >= before + i + 1,
                       timeout=10, what=f"reload {i + 1}")
            want = "catalog" if service == CATALOG else "cart-"
            wait_until(lambda: gw.send("/probe")[1]["server"].startswith(want), timeout=5,
                       what=f"reload {i + 1} in force")
            # the load goes on over each reload: the next one waits for 20 more requests
            mark = served["n"]
            wait_until(lambda: served["n"] >= mark + 20 or failures, timeout=10,
                       what=f"20 requests after reload {i + 1}")
    finally:
        stop.set()
        t.join()
    assert failures == [] and served["n"] >= 6 * 20


def check(tmp_path, cfg):
    path = tmp_path / "gw.json"
    path.write_text(json.dumps(cfg))
    p = subprocess.run([REMORA, "check", "--config", str(path)], capture_output=True, text=True,
                       timeout=30)
    return p.returncode, p.stdout + p.stderr


def test_check_refuses_a_route_to_an_unknown_service_with_its_path(tmp_path):
    cfg = mesh({"cart-v1": 1, "cart-v2": 2, "catalog": 3}, 9080,
               {"bad": http_route({"prefix": "/"}, service="nowhere.shop.local")})
    code, out = check(tmp_path, cfg)
    assert code == 1
    assert "gatewayRoutes[0].spec.httpRoute.action.target.virtualService.virtualServiceName" in out
    assert "nowhere.shop.local" in out


@pytest.mark.parametrize("spec,where", [
    ({"httpRoute": {"match": {"prefix": "cart"}, "action": {"target": {"virtualService": {"virtualServiceName": CART}}}}},
     "gatewayRoutes[0].spec.httpRoute.match.prefix"),
    ({"httpRoute": {"match": {"prefix": "/aws-appmesh/x"}, "action": {"target": {"virtualService": {"virtualServiceName": CART}}}}},
     "gatewayRoutes[0].spec.httpRoute.match.prefix"),
    ({"httpRoute": {"match": {"path": {"exact": "/a"}}, "action": {"target": {"virtualService": {"virtualServiceName": CART}},
                                                                   "rewrite": {"prefix": {"value": "/b/"}}}}},
     "gatewayRoutes[0].spec.httpRoute.action.rewrite.prefix"),
    ({"httpRoute": {"match": {"prefix": "/"}, "action": {"target": {"virtualService": {"virtualServiceName": CART}}}},
      "priority": 1001}, "gatewayRoutes[0].spec.priority"),
    ({"grpcRoute": {"match": {"serviceName": "shop.Cart"}, "action": {"target": {"virtualService": {"virtualServiceName": CART}}}}},
     "gatewayRoutes[0].spec.grpcRoute: the gateway \"edge\"'s listener on port 9080 is http: it takes httpRoute"),
])
def test_check_refuses_invalid_gateway_routes(tmp_path, spec, where):
    cfg = mesh({"cart-v1": 1, "cart-v2": 2, "catalog": 3}, 9080, {})
    cfg["gatewayRoutes"] = [{"virtualGatewayName": "edge", "gatewayRouteName": "r", "spec": spec}]
    code, out = check(tmp_path, cfg)
    assert code == 1 and where in out, out


def test_check_summarises_the_gateway(tmp_path):
    cfg = mesh({"cart-v1": 1, "cart-v2": 2, "catalog": 3}, 9080,
               {"cart": http_route({"prefix": "/cart"}),
                "catalog": http_route({"prefix": "/", "hostname": {"suffix": ".example.com"}},
                                      service=CATALOG, priority=3)})
    code, out = check(tmp_path, cfg)
    assert code == 0, out
    assert "gateway edge" in out and ":9080" in out
    assert "/cart" in out and CART in out and CATALOG in out and ".example.com" in out


def test_the_gateway_is_chosen_by_its_app_mesh_arn(gw, upstream, remora):
    cfg = mesh(gw.ports, gw.port, {"cart": http_route({"prefix": "/"})})
    del cfg["proxy"]
    r = remora(cfg, env={"APPMESH_RESOURCE_ARN":
                         "arn:aws:appmesh:us-east-1:111122223333:mesh/shop/virtualGateway/edge"})
    _, body = gw.send("/hello")
    assert body["server"].startswith("cart-")
    status, text = r.admin("/server_info")
    assert status == 200 and '"LIVE"' in text


def test_the_gateways_log_and_its_trace_segment(gw, tmp_path):
    """logging.accessLog as a node's (here JSON); the gateway is the trace's first segment,
    named MESH/GATEWAY, and the request goes upstream with a trace header under it."""
    from test_tracing import Collector
    col = Collector()
    try:
        log = tmp_path / "gw.log"
        cfg = mesh(gw.ports, gw.port, {"cart": http_route({"prefix": "/cart"})},
                   gateway_extra={"logging": {"accessLog": {"file": {"path": str(log), "format": {
                       "json": [{"key": "path", "value": "%REQ(:PATH)%"},
                                {"key": "code", "value": "%RESPONSE_CODE%"},
                                {"key": "host", "value": "%REQ(:AUTHORITY)%"}]}}}}})
        gw.cfg = cfg
        gw.r = gw.remora(cfg, env={"ENABLE_ENVOY_XRAY_TRACING": "1", "XRAY_SAMPLING_RATE": "1",
                                   "XRAY_DAEMON_PORT": str(col.port)})
        _, body = gw.send("/cart/a")
        resp, _ = gw.send("/nothing")
        assert resp.status == 404
        wait_until(lambda: len(log.read_text().splitlines()) >= 2, timeout=5, what="two log lines")
        lines = [json.loads(line) for line in log.read_text().splitlines()]
        # :PATH is the path sent upstream (Envoy logs the rewritten one too)
        assert [(x["path"], x["code"]) for x in lines] == [("/a", 200), ("/nothing", 404)]
        wait_until(lambda: any(d.get("name") == "shop/edge" for d in col.documents()), timeout=5,
                   what="the gateway's segment")
        seg = next(d for d in col.documents() if d.get("name") == "shop/edge")
        assert "parent_id" not in seg and seg["http"]["request"]["url"].endswith("/cart/a")
        trace = next(v for k, v in body["headers"] if k.lower() == "x-amzn-trace-id")
        assert f"Root={seg['trace_id']}" in trace and f"Parent={seg['id']}" in trace
    finally:
        col.stop()


def test_tls_to_the_mesh_from_backend_defaults(gw, remora, tmp_path):
    """backendDefaults.clientPolicy.tls: the gateway verifies the target's certificate against
    the trust it names, as a sidecar does. The target is `openssl s_server -www` standing in
    for a sidecar's STRICT listener; a certificate from another CA is refused with 503."""
    ca, other = CA(str(tmp_path / "ca"), "mesh CA"), CA(str(tmp_path / "ca2"), "other CA")
    good = ca.issue(str(tmp_path / "l"), "cat", [("DNS", "catalog.apps.local")])
    bad = other.issue(str(tmp_path / "l2"), "cat2", [("DNS", "catalog.apps.local")])
    for cert, want in ((good, 200), (bad, 503)):
        port = free_port()
        srv = subprocess.Popen(["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert",
                                cert.cert, "-key", cert.key, "-www", "-quiet"],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        try:
            wait_until(lambda: port_open(port), what="openssl s_server")
            ports = dict(gw.ports, catalog=port)
            gw.port = free_port()
            cfg = mesh(ports, gw.port, {"catalog": http_route({"prefix": "/"}, service=CATALOG)},
                       gateway_extra={"backendDefaults": {"clientPolicy": {"tls": {
                           "validation": {"trust": {"file": {"certificateChain": ca.cert}},
                                          "subjectAlternativeNames": {"match": {
                                              "exact": ["catalog.apps.local"]}}}}}}})
            remora(cfg)
            c = Conn(gw.port)
            c.send(request("GET", "/x", host="shop.example.com"))
            r = c.read_response()
            assert r.status == want, (want, r.status, r.body)
            if want == 200:
                assert b"s_server" in r.body  # the page openssl s_server -www answers with
        finally:
            srv.terminate()
            srv.wait(5)


def test_a_gateway_with_two_listeners_routes_by_port(gw, remora):
    """Each listener is bound; match.port picks the routes of one (required with several)."""
    second = free_port()
    cfg = mesh(gw.ports, gw.port, {
        "first": http_route({"prefix": "/", "port": gw.port}),
        "second": http_route({"prefix": "/", "port": second}, service=CATALOG)})
    cfg["virtualGateways"][0]["spec"]["listeners"].append(
        {"portMapping": {"port": second, "protocol": "http"}})
    r = remora(cfg)
    assert gw.send("/a")[1]["server"].startswith("cart-")
    assert gw.send("/b")[1]["server"].startswith("cart-")  # a second connection
    c = Conn(second)
    c.send(request("GET", "/a", host="shop.example.com"))
    resp = c.read_response()
    assert resp.status == 200 and json.loads(resp.body)["server"] == "catalog"
    # Each listener is its own in the admin API and the stats, and there is no egress.
    _, text = r.admin("/listeners")
    assert text.splitlines() == [f"lds_ingress_0.0.0.0_{gw.port}::0.0.0.0:{gw.port}",
                                 f"lds_ingress_0.0.0.0_{second}::0.0.0.0:{second}"]
    _, text = r.admin("/listeners?format=json")
    assert [(l["name"], l["local_address"]["socket_address"]["port_value"])
            for l in json.loads(text)["listener_statuses"]] == [
        (f"lds_ingress_0.0.0.0_{gw.port}", gw.port), (f"lds_ingress_0.0.0.0_{second}", second)]
    wait_until(lambda: r.stats().get(f"listener.0.0.0.0_{gw.port}.downstream_cx_destroy") == 2,
               what="the first listener's two connections closed")
    st = r.stats()
    assert st[f"listener.0.0.0.0_{gw.port}.downstream_cx_total"] == 2
    assert st[f"listener.0.0.0.0_{second}.downstream_cx_total"] == 1
    assert st[f"listener.0.0.0.0_{second}.downstream_cx_active"] == 1
    assert st["server.total_connections"] == 1
    assert [n for n in st if n.startswith("http.egress.") or "0.0.0.0_0." in n] == []
    assert st["http.ingress.downstream_rq_2xx"] == 3


def test_stats_tags_name_the_gateway(gw):
    """ENABLE_ENVOY_STATS_TAGS=1 on a gateway: appmesh_virtual_gateway, as the App Mesh image
    (1.15 and later) labels a gateway's series, not appmesh_virtual_node."""
    gw.cfg = mesh(gw.ports, gw.port, {"cart": http_route({"prefix": "/"})})
    r = gw.remora(gw.cfg, env={"ENABLE_ENVOY_STATS_TAGS": "1"})
    assert gw.send("/a")[0].status == 200
    _, text = r.admin("/stats/prometheus")
    series = [l for l in text.splitlines() if l and not l.startswith("#")]
    assert series and all(l.split(" ")[0].endswith("}") for l in series)
    tagged = 'appmesh_mesh="shop",appmesh_virtual_gateway="edge"'
    assert [l for l in series if tagged not in l or "appmesh_virtual_node" in l] == []


def test_check_wants_match_port_with_two_listeners(tmp_path):
    cfg = mesh({"cart-v1": 1, "cart-v2": 2, "catalog": 3}, 9080, {"r": http_route({"prefix": "/"})})
    cfg["virtualGateways"][0]["spec"]["listeners"].append(
        {"portMapping": {"port": 9081, "protocol": "http"}})
    code, out = check(tmp_path, cfg)
    assert code == 1 and "gatewayRoutes[0].spec.httpRoute.match.port: required" in out, out


def test_check_accepts_http2_and_grpc_listeners_with_their_routes(tmp_path):
    """An http2 listener with an http2Route and a grpc listener with a grpcRoute (serviceName,
    metadata, the hostname rewrite alone), routed by match.port."""
    cfg = mesh({"cart-v1": 1, "cart-v2": 2, "catalog": 3}, 9080, {
        "h2": {"http2Route": {"match": {"prefix": "/cart", "port": 9080},
                              "action": {"target": {"virtualService": {"virtualServiceName": CART}}}}},
        "rpc": {"grpcRoute": {"match": {"serviceName": "shop.Catalog", "port": 9081,
                                        "metadata": [{"name": "x-tier", "invert": True,
                                                      "match": {"prefix": "free"}}]},
                              "action": {"target": {"virtualService": {"virtualServiceName": CATALOG}},
                                         "rewrite": {"hostname": {"defaultTargetHostname": "DISABLED"}}}}}},
               listener={"portMapping": {"port": 9080, "protocol": "http2"}})
    cfg["virtualGateways"][0]["spec"]["listeners"].append(
        {"portMapping": {"port": 9081, "protocol": "grpc"}})
    code, out = check(tmp_path, cfg)
    assert code == 0, out
    assert "not supported yet" not in out, out


def test_an_http2_listener_serves_http2_routes(gw):
    """The gateway's http2 listener takes HTTP/1.1 too (every listener sniffs the HTTP/2
    preface); its http2Route matches and rewrites as an httpRoute does, and cart's http
    listeners are spoken to in HTTP/1.1."""
    gw.start({"h2": {"http2Route": {"match": {"prefix": "/cart"}, "action": {
        "target": {"virtualService": {"virtualServiceName": CART}}}}}},
        listener={"portMapping": {"port": gw.port, "protocol": "http2"}})
    resp, body = gw.send("/cart/checkout")
    assert resp.status == 200 and body["server"].startswith("cart-"), resp.body
    assert body["target"] == "/checkout"
    assert seen_host(body) == CART
    resp, _ = gw.send("/other")
    assert resp.status == 404


def test_a_grpc_listener_routes_grpc_calls_by_service(upstream, remora):
    """A grpc gateway listener and a grpcRoute by serviceName and metadata: real gRPC calls
    (grpcio) go to the catalog service, whose node listens in grpc (so remora speaks HTTP/2 to
    it); a call no route takes is UNIMPLEMENTED, answered by remora in gRPC's own form."""
    import grpc
    from grpc_peers import GrpcServer, channel, unary

    catalog = GrpcServer("catalog")
    try:
        port = free_port()
        ports = {"cart-v1": free_port(), "cart-v2": free_port(), "catalog": catalog.port}
        cfg = mesh(ports, port, {"rpc": {"grpcRoute": {
            "match": {"serviceName": "shop.Catalog",
                      "metadata": [{"name": "x-tier", "invert": True, "match": {"exact": "free"}}]},
            "action": {"target": {"virtualService": {"virtualServiceName": CATALOG}}}}}},
            listener={"portMapping": {"port": port, "protocol": "grpc"}})
        cfg["virtualNodes"][2]["spec"]["listeners"][0]["portMapping"]["protocol"] = "grpc"
        r = remora(cfg)
        ch = channel(port, "shop.example.com")
        for i in range(5):
            resp, md = unary(ch, "/shop.Catalog/List", b"%d" % i, timeout=10)
            assert resp == b"catalog:List:%d" % i and md["x-server"] == "catalog"
        assert catalog.calls[0]["metadata"].get(":authority", CATALOG) == CATALOG
        for path, md in (("/shop.Cart/Get", ()), ("/shop.Catalog/List", (("x-tier", "free"),))):
            try:
                unary(ch, path, metadata=md, timeout=10)
                raise AssertionError(f"{path} {md} was routed")
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.UNIMPLEMENTED, e
        assert catalog.count() == 5
        st = r.stats()
        cl = f"cluster.cds_egress_shop_catalog_grpc_{catalog.port}"
        assert st[f"{cl}.upstream_rq_total"] == 5
        assert st[f"{cl}.upstream_cx_http2_total"] == 1
        ch.close()
    finally:
        catalog.stop()
