"""A config is one JSON document whose objects name each member once (SPEC §4, docs/config.md).
cJSON kept every copy of a repeated key and the loader found the first, while jq, Python and Go
take the last: an override an operator appended was dropped without a word. And cJSON stops at
the end of the first value, so `{...} garbage` passed `remora check`. Both are now errors,
named by JSON path or byte and line, wherever a document comes from: the config file,
REMORA_CONFIG_JSON, a config URL, and a reload, which keeps the config in force."""
import json
import os
import subprocess

from cloudmap_peers import config_server, no_aws_env  # noqa: F401
from conftest import REMORA, free_ports, mesh_config, wait_until

STAT_OK, STAT_FAILED = "remora.config.reload_ok", "remora.config.reload_failed"


def clean_env(extra=None):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("APPMESH_", "ENVOY_", "REMORA_", "AWS_", "SSL_CERT"))}
    env.update(extra or {})
    return env


def one_node(node="web"):
    """A valid document of one node, as text: the tests below splice duplicates into it."""
    return json.dumps({
        "virtualNodes": [{"virtualNodeName": node, "spec": {
            "listeners": [{"portMapping": {"port": 8080, "protocol": "http"}}]}}],
        "proxy": {"node": node}})


DUP_NODE = one_node()[:-2] + ', "node": "cart-v1"}}'
DUP_LIST = one_node()[:-1] + ', "virtualNodes": []}'
TRAILING = one_node() + "\n  garbage\n"
BAD = {
    "duplicate proxy.node": (DUP_NODE, 'proxy.node: duplicate key "node" (2 times); keep only one'),
    "second virtualNodes": (DUP_LIST, 'virtualNodes: duplicate key "virtualNodes" (2 times); '
                                      "keep only one"),
    "trailing garbage": (TRAILING, f"$: unexpected content after the JSON document at byte "
                                   f"{len(one_node()) + 3} (line 2); a config is one document"),
}


def check(args, env=None):
    p = subprocess.run([REMORA, "check", *args], capture_output=True, text=True, timeout=30,
                       env=clean_env(env))
    return p.returncode, p.stdout + p.stderr


def test_check_refuses_duplicates_and_trailing_content_in_the_file(tmp_path):
    """`remora check --config` exits 1 naming the path and key, or the byte and line; the same
    document without the fault passes (so the refusal is the fault's, not the document's)."""
    good = tmp_path / "good.json"
    good.write_text(one_node())
    assert check(["--config", str(good)])[0] == 0
    for name, (text, message) in BAD.items():
        path = tmp_path / "mesh.json"
        path.write_text(text)
        code, out = check(["--config", str(path)])
        assert code == 1, f"{name}: exit {code}\n{out}"
        assert f"{path}: {message}" in out, f"{name}:\n{out}"


def test_inline_config_json_is_held_to_the_same_rules():
    for name, (text, message) in BAD.items():
        code, out = check([], {"REMORA_CONFIG_JSON": text})
        assert code == 1, f"{name}: exit {code}\n{out}"
        assert f"REMORA_CONFIG_JSON: {message}" in out, f"{name}:\n{out}"


def test_a_config_url_document_is_held_to_the_same_rules(config_server, no_aws_env):  # noqa: F811
    srv = config_server(None)
    url = srv.url + "/mesh.json"
    srv.set(one_node().encode())
    assert check([], {"REMORA_CONFIG_URL": url})[0] == 0
    for name, (text, message) in BAD.items():
        srv.set(text.encode())
        code, out = check([], {"REMORA_CONFIG_URL": url})
        assert code == 1, f"{name}: exit {code}\n{out}"
        assert f"{url}: {message}" in out, f"{name}:\n{out}"


def test_start_with_a_duplicate_key_exits_1(tmp_path):
    """Not a proxy running node `web` while the operator meant `cart-v1`: no start at all."""
    path = tmp_path / "mesh.json"
    path.write_text(DUP_NODE)
    ingress, egress, admin = free_ports(3)
    p = subprocess.run([REMORA, "--config", str(path), "--ingress-port", str(ingress),
                        "--egress-port", str(egress), "--admin", f"127.0.0.1:{admin}",
                        "--workers", "1"], capture_output=True, text=True, timeout=15,
                       env=clean_env())
    assert p.returncode == 1, p.stdout + p.stderr
    assert f'{path}: proxy.node: duplicate key "node" (2 times); keep only one' in p.stderr


def test_a_reload_to_a_duplicate_key_is_refused_and_the_old_config_stays(upstream, remora):
    """The rewrite appends a second `virtualServices` (as an operator's override would be): the
    reload is refused, logged with the key, and /config_dump still shows the config in force.
    SIGHUP loads the same file again and is refused again."""
    app, backend = upstream("app"), upstream("cart-v1")
    cfg = mesh_config(app.port, backend.port)
    r = remora(cfg)

    def services():
        status, dump = r.admin("/config_dump")
        assert status == 200
        return [v["virtualServiceName"] for v in json.loads(dump)["config"]["virtualServices"]]

    assert services() == ["cart.shop.local"]
    st = r.stats()
    ok0, failed0 = st[STAT_OK], st[STAT_FAILED]
    override = [{"virtualServiceName": "cart.shop.local", "spec": {
        "provider": {"virtualNode": {"virtualNodeName": "web"}}}}]
    text = json.dumps(cfg)[:-1] + ', "virtualServices": ' + json.dumps(override) + "}"
    tmp = r.config_path + ".new"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, r.config_path)
    message = (f'{r.config_path}: virtualServices: duplicate key "virtualServices" (2 times); '
               "keep only one")
    wait_until(lambda: r.stats()[STAT_FAILED] == failed0 + 1, timeout=5, what="the reload refused")
    wait_until(lambda: message in r.read_log(), timeout=5, what="the refusal logged")
    assert "reload rejected; the config in force is unchanged" in r.read_log()
    r.proc.send_signal(1)  # SIGHUP
    wait_until(lambda: r.stats()[STAT_FAILED] == failed0 + 2, timeout=5,
               what="the SIGHUP reload refused")
    assert r.stats()[STAT_OK] == ok0
    assert services() == ["cart.shop.local"]
    status, dump = r.admin("/config_dump")
    provider = json.loads(dump)["config"]["virtualServices"][0]["spec"]["provider"]
    assert provider == {"virtualNode": {"virtualNodeName": "cart-v1"}}
