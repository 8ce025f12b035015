"""Cloud Map API discovery (DiscoverInstances, DiscoverInstancesRevision, SigV4) against the
real moto server, through a recording proxy (cloudmap_peers.py), with real upstreams.

One Cloud Map service shop.local/cart holds the instances of two virtual nodes told apart by an
attribute: cart-v1 (version=v1) and cart-v2 (version=v2). Each instance says where it is with
AWS_INSTANCE_IPV4 (127.0.0.2, 127.0.0.3, 127.0.0.4), and an upstream answering with its own
name listens on that address at the virtual nodes' listener port, as App Mesh dials it. Every
instance also carries an AWS_INSTANCE_PORT on which nothing listens: App Mesh does not use it.
The router sends /v1/ to cart-v1, /v2/ to cart-v2 and splits the rest 1:1.

Unless a test says otherwise, moto verifies every request's signature (an IAM user's key, given
to remora in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), so a request signed wrongly fails the
test. remora polls every 200 ms (REMORA_CLOUDMAP_POLL_MS).

moto's revision is the sum of per-instance counters of the instances it returns: it drops on a
deregistration, and DiscoverInstances with QueryParameters reports a different number than
DiscoverInstancesRevision (reference §1.8)."""
import json
import time

import pytest

from cloudmap_peers import (REGION, cloudmap, credentials_server, loopback_upstreams, moto_session,  # noqa: F401,E501
                            no_aws_env, shared_free_port)
from conftest import wait_until
from rawhttp import Conn, request

NS, SVC = "shop.local", "cart"
IPS = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
UNUSED_PORT = "9"  # AWS_INSTANCE_PORT: nothing listens there
OPS = ("DiscoverInstances", "DiscoverInstancesRevision")


def cloudmap_node(name, port, version):
    cm = {"namespaceName": NS, "serviceName": SVC}
    if version:
        cm["attributes"] = [{"key": "version", "value": version}]
    return {"virtualNodeName": name, "spec": {
        "listeners": [{"portMapping": {"port": port, "protocol": "http"}}],
        "serviceDiscovery": {"awsCloudMap": cm}}}


def route(name, priority, prefix, weights):
    return {"virtualRouterName": "cart", "routeName": name, "spec": {"priority": priority, "httpRoute": {
        "match": {"prefix": prefix},
        "action": {"weightedTargets": [{"virtualNode": n, "weight": w} for n, w in weights]}}}}


def shop_mesh(port, attributes=True, proxy=None):
    if attributes:
        nodes = [cloudmap_node("cart-v1", port, "v1"), cloudmap_node("cart-v2", port, "v2")]
        routes = [route("v1", 0, "/v1/", [("cart-v1", 1)]), route("v2", 1, "/v2/", [("cart-v2", 1)]),
                  route("split", 2, "/", [("cart-v1", 1), ("cart-v2", 1)])]
    else:
        nodes = [cloudmap_node("cart", port, None)]
        routes = [route("all", 0, "/", [("cart", 1)])]
    return {
        "mesh": {"meshName": "shop"},
        "virtualNodes": [{"virtualNodeName": "web", "spec": {
            "listeners": [{"portMapping": {"port": 1, "protocol": "http"}}],
            "backends": [{"virtualService": {"virtualServiceName": "cart.shop.local"}}]}}] + nodes,
        "virtualServices": [{"virtualServiceName": "cart.shop.local", "spec": {
            "provider": {"virtualRouter": {"virtualRouterName": "cart"}}}}],
        "virtualRouters": [{"virtualRouterName": "cart", "spec": {
            "listeners": [{"portMapping": {"port": 80, "protocol": "http"}}]}}],
        "routes": routes,
        "proxy": dict({"node": "web"}, **(proxy or {})),
    }


class Shop:
    """The set-up above: moto (cm), the upstreams, and, after start(), remora (r)."""

    def __init__(self, cm, loopback_upstreams, remora):
        self.cm, self._remora = cm, remora
        self.port = shared_free_port(IPS)
        self.ups = {name: loopback_upstreams(ip, self.port, name)
                    for ip, name in zip(IPS, ("v1-a", "v2-a", "v2-b"))}
        cm.admin.service(NS, SVC)
        self.r = None

    def register(self, instance_id):
        """i-v1a (127.0.0.2, v1), i-v2a (127.0.0.3, v2), i-v2b (127.0.0.4, v2)."""
        ip = {"i-v1a": IPS[0], "i-v2a": IPS[1], "i-v2b": IPS[2]}[instance_id]
        self.cm.admin.register(SVC, instance_id, AWS_INSTANCE_IPV4=ip, AWS_INSTANCE_PORT=UNUSED_PORT,
                               version=instance_id[2:4])

    def start(self, env=None, secure=True, direct=False, attributes=True, proxy=None,
              register=("i-v1a", "i-v2a")):
        for iid in register:
            self.register(iid)
        full = dict(self.cm.env)
        if direct:  # no proxy: remora talks to moto itself (so that "moto stopped" is refused)
            full["AWS_ENDPOINT_URL_SERVICEDISCOVERY"] = self.cm.moto.url
        if secure:
            self.env_key = self.cm.secure()
            full.update(self.env_key)
        elif not (env and any(k.startswith("AWS_CONTAINER") for k in env)):
            full.update({"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
                         "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"})
        for k, v in (env or {}).items():  # None: not set at all
            if v is None:
                full.pop(k, None)
            else:
                full[k] = v
        self.r = self._remora(shop_mesh(self.port, attributes, proxy), env=full)
        return self.r

    def cluster(self, node):
        return f"cds_egress_shop_{node}_http_{self.port}"

    def cluster_status(self, node):
        _, body = self.r.admin("/clusters?format=json")
        for c in json.loads(body)["cluster_statuses"]:
            if c["name"] == self.cluster(node):
                return c
        raise AssertionError(f"no cluster {self.cluster(node)} in {body}")

    def endpoints(self, node):
        return sorted(f'{h["address"]["socket_address"]["address"]}:{h["address"]["socket_address"]["port_value"]}'
                      for h in self.cluster_status(node)["host_statuses"])

    def at(self, *ips):
        return sorted(f"{ip}:{self.port}" for ip in ips)

    def stat(self, node, name):
        return self.r.stats().get(f"cluster.{self.cluster(node)}.{name}", 0)

    def cm_stat(self, node, op, result):
        return self.r.stats().get(f"remora.cloudmap.{self.cluster(node)}.{op}.{result}", 0)

    def cm_results(self, node, result):
        return sum(self.cm_stat(node, op, result) for op in OPS)

    def served_by(self, path, n):
        c = Conn(self.r.egress)
        out = {}
        for _ in range(n):
            c.send(request("GET", path))
            resp = c.read_response()
            key = json.loads(resp.body)["server"] if resp.status == 200 else str(resp.status)
            out[key] = out.get(key, 0) + 1
            if resp.header("connection") == "close":
                c = Conn(self.r.egress)
        return out


@pytest.fixture
def shop(cloudmap, loopback_upstreams, remora):  # noqa: F811
    return Shop(cloudmap, loopback_upstreams, remora)


def test_each_node_holds_only_its_instances(shop):
    r = shop.start()
    assert shop.endpoints("cart-v1") == shop.at(IPS[0])
    assert shop.endpoints("cart-v2") == shop.at(IPS[1])
    assert shop.served_by("/v1/echo", 4) == {"v1-a": 4}
    assert shop.served_by("/v2/echo", 4) == {"v2-a": 4}
    assert shop.served_by("/echo", 20) == {"v1-a": 10, "v2-a": 10}
    # What remora asked moto, and that moto accepted every signature.
    calls = shop.cm.proxy.seen("DiscoverInstances")
    assert {json.dumps(c.body.get("QueryParameters")) for c in calls} == {'{"version": "v1"}',
                                                                          '{"version": "v2"}'}
    for c in shop.cm.proxy.seen():
        assert c.status == 200, c
        assert c.body["NamespaceName"] == NS and c.body["ServiceName"] == SVC, c
        assert c.headers["content-type"] == "application/x-amz-json-1.1"
        assert c.headers["x-amz-target"] == "Route53AutoNaming_v20170314." + c.op
        assert c.access_key == shop.env_key["AWS_ACCESS_KEY_ID"]
        assert f"/{REGION}/servicediscovery/aws4_request" in c.headers["authorization"]
    for c in calls:
        assert c.body["HealthStatus"] == "HEALTHY_OR_ELSE_ALL" and c.body["MaxResults"] == 1000, c
    # Polling: the revision every 200 ms.
    n = shop.cm.proxy.count("DiscoverInstancesRevision")
    wait_until(lambda: shop.cm.proxy.count("DiscoverInstancesRevision") >= n + 4, timeout=3,
               what="revision polls")
    # What remora says about it.
    _, text = r.admin("/clusters")
    _, prom = r.admin("/stats/prometheus")
    for node in ("cart-v1", "cart-v2"):
        assert shop.cluster_status(node)["discovery"]["source"] == "cloudmap_api"
        assert f"{shop.cluster(node)}::discovery_source::cloudmap_api" in text
        assert shop.stat(node, "update_attempt") >= 1
        assert shop.stat(node, "update_success") >= 1
        assert shop.stat(node, "update_failure") == 0 and shop.stat(node, "update_empty") == 0
        assert shop.cm_stat(node, "DiscoverInstances", "ok") >= 1
        assert shop.cm_stat(node, "DiscoverInstancesRevision", "ok") >= 1
        for result in ("error", "throttled", "not_found", "timeout"):
            assert shop.cm_results(node, result) == 0
        label = f'envoy_cluster_name="{shop.cluster(node)}"'
        assert f'remora_cloudmap_requests_total{{{label},operation="DiscoverInstances",result="ok"}} ' in prom
        assert f"envoy_cluster_update_attempt{{{label}}} " in prom
        assert f"remora_cloudmap_revision{{{label}}} " in prom


def test_register_and_deregister_reach_traffic_within_a_few_polls(shop):
    shop.start()
    success0 = shop.stat("cart-v2", "update_success")
    shop.register("i-v2b")
    t0 = time.monotonic()
    wait_until(lambda: shop.endpoints("cart-v2") == shop.at(IPS[1], IPS[2]), timeout=5,
               what="i-v2b in cart-v2")
    assert time.monotonic() - t0 < 1.5, "within a few 200 ms polls"
    assert shop.endpoints("cart-v1") == shop.at(IPS[0]), "a v2 instance is not cart-v1's"
    assert shop.served_by("/v2/echo", 6) == {"v2-a": 3, "v2-b": 3}
    assert shop.stat("cart-v2", "update_success") > success0
    # Deregistering lowers moto's revision (3 -> 2): a change all the same.
    shop.cm.admin.deregister(SVC, "i-v2a")
    t0 = time.monotonic()
    wait_until(lambda: shop.endpoints("cart-v2") == shop.at(IPS[2]), timeout=5, what="i-v2a gone")
    assert time.monotonic() - t0 < 1.5
    assert shop.served_by("/v2/echo", 4) == {"v2-b": 4}
    assert shop.served_by("/v1/echo", 2) == {"v1-a": 2}
    assert shop.served_by("/echo", 4) == {"v1-a": 2, "v2-b": 2}


@pytest.mark.parametrize("fault", ["stopped", "500", "throttle"])
def test_api_failures_keep_the_last_good_set(shop, fault):
    # "stopped": moto itself goes away (connections refused; no signature checks, because a
    # restarted moto has forgotten its IAM users). Otherwise the proxy answers for moto.
    shop.start(secure=fault != "stopped", direct=fault == "stopped")
    # The contract backs off on throttling and on 5xx alike; it does not say whether a 5xx is
    # counted as "error" or "throttled", so either is accepted for it.
    results = {"stopped": ("error",), "500": ("error", "throttled"), "throttle": ("throttled",)}[fault]
    failures0 = shop.stat("cart-v2", "update_failure")
    if fault == "stopped":
        shop.cm.moto.stop()
    else:
        shop.cm.proxy.mode = fault
    for node in ("cart-v1", "cart-v2"):
        wait_until(lambda: sum(shop.cm_results(node, res) for res in results) >= 2, timeout=8,
                   what=f"two {'/'.join(results)} results for {node}")
    ok = shop.cm_results("cart-v2", "ok")
    assert shop.endpoints("cart-v1") == shop.at(IPS[0])
    assert shop.endpoints("cart-v2") == shop.at(IPS[1])
    assert shop.served_by("/echo", 10) == {"v1-a": 5, "v2-a": 5}
    assert shop.stat("cart-v2", "update_failure") > failures0
    assert shop.cm_results("cart-v2", "ok") == ok, "nothing succeeds while it fails"
    if fault == "throttle":
        assert shop.cm_results("cart-v2", "error") == 0
    # Back: a registration made now reaches traffic.
    if fault == "stopped":
        shop.cm.moto.start()
        shop.cm.admin.call("replay")
    else:
        shop.cm.proxy.mode = "pass"
    shop.register("i-v2b")
    wait_until(lambda: shop.endpoints("cart-v2") == shop.at(IPS[1], IPS[2]), timeout=10,
               what="recovered: i-v2b seen")
    assert shop.served_by("/v2/echo", 4) == {"v2-a": 2, "v2-b": 2}


@pytest.mark.parametrize("how", ["deregistered", "service_deleted"])
def test_an_empty_answer_empties_the_set_only_after_the_hold(shop, how):
    shop.start(proxy={"dns": {"hold": {"unit": "ms", "value": 1000}}})
    n0 = len(shop.cm.proxy.calls)
    if how == "deregistered":  # DiscoverInstances answers {"Instances": []}
        shop.cm.admin.deregister(SVC, "i-v1a")
        shop.cm.admin.deregister(SVC, "i-v2a")
    else:  # both operations answer 400 ServiceNotFound
        shop.cm.admin.call("delete_service", service=SVC, deregister_first=False)

    def first_empty(version):
        for c in shop.cm.proxy.seen(since=n0):
            if how == "service_deleted" and c.status == 400 and "ServiceNotFound" in json.dumps(c.reply):
                return c
            if (how == "deregistered" and c.op == "DiscoverInstances" and c.status == 200
                    and c.body.get("QueryParameters") == {"version": version}
                    and c.reply["Instances"] == []):
                return c
        return None

    firsts = {"cart-v1": wait_until(lambda: first_empty("v1"), timeout=5, what="v1 empty answer"),
              "cart-v2": wait_until(lambda: first_empty("v2"), timeout=5, what="v2 empty answer")}
    assert shop.served_by("/echo", 4) == {"v1-a": 2, "v2-a": 2}, "held"
    # The hold runs from the last good answer (as for DNS), at most one poll (0.2 s) before
    # the first empty one.
    assert time.monotonic() - firsts["cart-v1"].t < 0.7, "that was inside the hold"
    emptied = {}

    def both_emptied():
        for node in ("cart-v1", "cart-v2"):
            if node not in emptied and shop.endpoints(node) == []:
                emptied[node] = time.monotonic()
        return len(emptied) == 2

    wait_until(both_emptied, timeout=5, what="both sets emptied")
    for node, call in firsts.items():
        held = emptied[node] - call.t
        assert 0.7 <= held <= 2.5, f"{node} emptied {held:.2f} s after the first empty answer"
    c = Conn(shop.r.egress)
    c.send(request("GET", "/v1/echo"))
    resp = c.read_response()
    assert resp.status == 503 and b"no healthy upstream" in resp.body
    if how == "deregistered":
        assert shop.stat("cart-v1", "update_empty") >= 1 and shop.stat("cart-v2", "update_empty") >= 1
    else:
        assert shop.cm_results("cart-v1", "not_found") >= 1
        assert shop.cm_results("cart-v2", "not_found") >= 1


@pytest.mark.parametrize("how", ["config", "env"])
def test_discovery_api_for_a_node_without_attributes(shop, how):
    """proxy.cloudMap.discovery "api" (or REMORA_CLOUDMAP_DISCOVERY=api): a node without
    attributes is discovered through the API too, and gets every instance. The env variant
    also names the endpoint with the generic AWS_ENDPOINT_URL."""
    if how == "config":
        r = shop.start(attributes=False, proxy={"cloudMap": {"discovery": "api"}})
    else:
        r = shop.start(attributes=False, env={
            "REMORA_CLOUDMAP_DISCOVERY": "api", "AWS_ENDPOINT_URL": shop.cm.proxy.url,
            "AWS_ENDPOINT_URL_SERVICEDISCOVERY": None})
    assert shop.endpoints("cart") == shop.at(IPS[0], IPS[1])
    assert shop.served_by("/echo", 4) == {"v1-a": 2, "v2-a": 2}
    assert shop.cluster_status("cart")["discovery"]["source"] == "cloudmap_api"
    calls = shop.cm.proxy.seen("DiscoverInstances")
    assert calls and all(not c.body.get("QueryParameters") for c in calls), calls
    # Unfiltered, moto's two operations agree on the revision; remora shows it.
    revision = shop.cm.admin.call("revision", namespace=NS, service=SVC)
    assert r.stats()[f"remora.cloudmap.{shop.cluster('cart')}.revision"] == revision == 2
    # Steady state: the revision is polled, the instances are not fetched again (refresh 30 s).
    n_di, n_rev = len(calls), shop.cm.proxy.count("DiscoverInstancesRevision")
    wait_until(lambda: shop.cm.proxy.count("DiscoverInstancesRevision") >= n_rev + 4, timeout=3,
               what="four more revision polls")
    assert shop.cm.proxy.count("DiscoverInstances") == n_di


def _signed_headers(call):
    return call.headers["authorization"].partition("SignedHeaders=")[2].partition(",")[0].split(";")


def test_container_credentials_are_verified_and_refreshed_before_expiry(
        shop, credentials_server, tmp_path):  # noqa: F811
    cm = shop.cm
    cm.secure(roles=["task-a", "task-b"])
    a = cm.admin.call("assume", role="task-a")
    b = cm.admin.call("assume", role="task-b")
    token_file = tmp_path / "token"
    token_file.write_text("first-token")
    creds = credentials_server("first-token", [a, b])  # each expires in 15 min + 3 s
    shop.start(secure=False, env={"AWS_CONTAINER_CREDENTIALS_FULL_URI": creds.full_uri,
                                  "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": str(token_file)})
    assert creds.count() == 1 and creds.rejected == 0
    t_first = creds.fetches[0][0]
    assert shop.endpoints("cart-v1") == shop.at(IPS[0])
    assert shop.served_by("/echo", 4) == {"v1-a": 2, "v2-a": 2}
    for c in cm.proxy.seen():
        assert c.status == 200, c  # moto checked signature, session token and the role's policy
        assert c.access_key == a["AccessKeyId"]
        assert c.headers["x-amz-security-token"] == a["SessionToken"]
        assert "x-amz-security-token" in _signed_headers(c)
    assert shop.r.stats()["remora.aws.credentials.success"] >= 1
    # The token file is read again for the next fetch, which comes about 3 s later.
    token_file.write_text("second-token")
    creds.token = "second-token"
    wait_until(lambda: creds.count() >= 2, timeout=8, what="the refresh")
    gap = creds.fetches[1][0] - t_first
    assert 1.5 <= gap <= 6.0, f"refreshed {gap:.1f} s after the first fetch"
    assert creds.rejected == 0
    wait_until(lambda: any(c.access_key == b["AccessKeyId"] for c in cm.proxy.seen()), timeout=3,
               what="a request signed with the new credentials")
    # The old credentials stop working: remora does not need them any more.
    cm.admin.call("revoke", role="task-a")
    n = len(cm.proxy.calls)
    shop.register("i-v2b")
    wait_until(lambda: shop.endpoints("cart-v2") == shop.at(IPS[1], IPS[2]), timeout=5,
               what="i-v2b seen with the new credentials")
    later = cm.proxy.seen(since=n)
    assert later and all(c.status == 200 and c.access_key == b["AccessKeyId"] for c in later), later
    for node in ("cart-v1", "cart-v2"):
        assert shop.cm_results(node, "error") == 0
    fetched = [t for t, _ in creds.fetches]
    assert all(t2 - t1 >= 1.5 for t1, t2 in zip(fetched, fetched[1:])), "no fetch storm"
    assert shop.r.stats()["remora.aws.credentials.success"] >= 2


@pytest.mark.parametrize("fault", ["wrong_secret", "endpoint_fails"])
def test_bad_credentials_keep_the_last_good_set(shop, credentials_server, tmp_path, fault):  # noqa: F811
    """wrong_secret: the refresh hands out a wrong secret key; moto answers 403
    SignatureDoesNotMatch, counted as errors, and the endpoints stay. endpoint_fails: the
    refresh fails (500); remora keeps signing with the credentials it has."""
    cm = shop.cm
    cm.secure(roles=["task-a"])
    a = cm.admin.call("assume", role="task-a")
    wrong = dict(a, SecretAccessKey=a["SecretAccessKey"][::-1])
    token_file = tmp_path / "token"
    token_file.write_text("tok")
    creds = credentials_server("tok", [a, wrong] if fault == "wrong_secret" else [a])
    shop.start(secure=False, env={"AWS_CONTAINER_CREDENTIALS_FULL_URI": creds.full_uri,
                                  "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": str(token_file)})
    assert all(c.status == 200 for c in cm.proxy.seen())
    if fault == "endpoint_fails":
        creds.status = 500
    wait_until(lambda: len(creds.requests) >= 2, timeout=8, what="the refresh")
    n = len(cm.proxy.calls)
    if fault == "wrong_secret":
        wait_until(lambda: len([c for c in cm.proxy.seen(since=n) if c.status == 403
                                and "SignatureDoesNotMatch" in str(c.reply)]) >= 3,
                   timeout=5, what="three 403 SignatureDoesNotMatch")
        for node in ("cart-v1", "cart-v2"):
            wait_until(lambda: shop.cm_results(node, "error") >= 2, timeout=3,
                       what=f"errors counted for {node}")
        shop.register("i-v2b")  # not seen while the credentials are wrong
        n = len(cm.proxy.calls)
        # failures back off (1, 2, 4, 8, 10 s), so three more calls of the two clusters take a while
        wait_until(lambda: len(cm.proxy.seen(since=n)) >= 3, timeout=15, what="three more polls")
        assert shop.endpoints("cart-v2") == shop.at(IPS[1])
    else:
        wait_until(lambda: shop.r.stats().get("remora.aws.credentials.failure", 0) >= 1,
                   timeout=5, what="the failed fetch counted")
        shop.register("i-v2b")
        wait_until(lambda: shop.endpoints("cart-v2") == shop.at(IPS[1], IPS[2]), timeout=5,
                   what="i-v2b seen with the old credentials")
        later = cm.proxy.seen(since=n)
        assert later and all(c.status == 200 and c.access_key == a["AccessKeyId"] for c in later)
    assert shop.endpoints("cart-v1") == shop.at(IPS[0])
    assert shop.served_by("/v1/echo", 2) == {"v1-a": 2}
    assert "v2-a" in shop.served_by("/v2/echo", 2)
