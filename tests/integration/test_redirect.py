"""`remora redirect install|remove`: the ECS aws-appmesh CNI plugin's nat rules, made in a pair
of network namespaces this module creates (an "app" one where the rules go, a "peer" one at the
other end of a veth), then connections through them:

  egress   a uid other than IgnoredUID connects to the peer's address: the connection lands on
           the listener on ProxyEgressPort, which reads SO_ORIGINAL_DST and says what it saw
  bypass   as IgnoredUID, or to port 22, the same connection reaches the peer itself
  ingress  the peer connects to an AppPort: the connection lands on ProxyIngressPort

Every listener answers a connection with one JSON line naming itself and the original
destination it read, so what a client receives proves where the connection went.
"""
import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REMORA

PROXY_UID, APP_UID = 1337, 1000
APP_NS, PEER_NS = f"rmrd{os.getpid()}a", f"rmrd{os.getpid()}p"
APP4, PEER4 = "10.251.0.1", "10.251.0.2"
APP6, PEER6 = "fd00:251::1", "fd00:251::2"
PROPERTIES = ("IgnoredUID", "IgnoredGID", "ProxyIngressPort", "ProxyEgressPort", "AppPorts",
              "EgressIgnoredIPs", "EgressIgnoredPorts", "EnableIPv6", "IPv6")
# The environment remora runs with: this one minus any stray proxyConfiguration property.
CLEAN_ENV = {k: v for k, v in os.environ.items() if k not in PROPERTIES}
EMPTY_NAT = ["-P PREROUTING ACCEPT", "-P INPUT ACCEPT", "-P OUTPUT ACCEPT",
             "-P POSTROUTING ACCEPT"]


def sh(*argv, check=True, timeout=20, env=None):
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {r.returncode}:\n{r.stdout}{r.stderr}")
    return r


def in_ns(ns, argv, uid=None):
    """argv run in namespace ns, as uid (with its own gid and no groups) when given."""
    prefix = ["ip", "netns", "exec", ns]
    if uid is not None:
        prefix += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    return prefix + list(argv)


def why_unsupported():
    """Why the namespaces cannot be made here (one reason), or None."""
    if os.geteuid() != 0:
        return "not root: creating network namespaces needs it"
    for tool in ("ip", "iptables", "ip6tables", "setpriv"):
        if not shutil.which(tool):
            return f"{tool} is not installed"
    probe = f"rmrd{os.getpid()}x"
    try:
        r = sh("ip", "netns", "add", probe, check=False)
        if r.returncode != 0:
            return f"cannot create a network namespace: {r.stderr.strip()}"
        for tool in ("iptables", "ip6tables"):
            r = sh(*in_ns(probe, [tool, "-w", "-t", "nat", "-N", "PROBE"]), check=False)
            if r.returncode != 0:
                return f"{tool} cannot use the nat table: {r.stderr.strip()}"
    except (OSError, subprocess.SubprocessError) as e:
        return f"namespace probe failed: {e}"
    finally:
        sh("ip", "netns", "del", probe, check=False)
    return None


REASON = why_unsupported()


@pytest.fixture(scope="module")
def netns():
    """The app and peer namespaces joined by a veth (10.251.0.1/2, fd00:251::1/2), removed at
    the end whatever happened."""
    if REASON:
        pytest.skip(f"network namespaces unavailable: {REASON}")
    try:
        sh("ip", "netns", "add", APP_NS)
        sh("ip", "netns", "add", PEER_NS)
        sh("ip", "-n", APP_NS, "link", "add", "veth0", "type", "veth", "peer", "name", "veth0",
           "netns", PEER_NS)
        for ns, v4, v6 in ((APP_NS, APP4, APP6), (PEER_NS, PEER4, PEER6)):
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "addr", "add", f"{v4}/24", "dev", "veth0")
            sh("ip", "-n", ns, "addr", "add", f"{v6}/64", "dev", "veth0", "nodad")
            sh("ip", "-n", ns, "link", "set", "veth0", "up")
        yield
    finally:
        for ns in (APP_NS, PEER_NS):
            sh("ip", "netns", "del", ns, check=False)


def redirect(*args, env=None, ns=APP_NS, uid=None):
    """`remora redirect ARGS` in ns with env as its only proxyConfiguration properties."""
    full = dict(CLEAN_ENV)
    full.update(env or {})
    return sh(*in_ns(ns, [REMORA, "redirect", *args], uid), check=False, env=full)


def nat(tool="iptables"):
    return sh(*in_ns(APP_NS, [tool, "-w", "-t", "nat", "-S"])).stdout.splitlines()


@pytest.fixture
def clean_nat(netns):
    """Each test starts and ends with the app namespace's nat table empty."""
    yield
    redirect("remove", env={"IPv6": "true"})
    assert nat() == EMPTY_NAT and nat("ip6tables") == EMPTY_NAT


# ---- the rules ----

ECS_PROPERTIES = {  # reference/appmesh.md §2.4, plus an IPv6 address and IPv6 on
    "IgnoredUID": "1337", "ProxyIngressPort": "15000", "ProxyEgressPort": "15001",
    "AppPorts": "9080", "EgressIgnoredIPs": "169.254.170.2,169.254.169.254,fd00:ec2::254",
    "EgressIgnoredPorts": "2049", "EnableIPv6": "true",
}
# `iptables -S` prints one rule per -d address, each with its prefix, and --to as --to-ports.
EXPECTED_V4 = EMPTY_NAT + [
    "-N APPMESH_EGRESS",
    "-N APPMESH_INGRESS",
    "-A PREROUTING -p tcp -m addrtype ! --src-type LOCAL -j APPMESH_INGRESS",
    "-A OUTPUT -p tcp -m addrtype ! --dst-type LOCAL -j APPMESH_EGRESS",
    "-A APPMESH_EGRESS -m owner --uid-owner 1337 -j RETURN",
    "-A APPMESH_EGRESS -p tcp -m multiport --dports 2049,22 -j RETURN",
    "-A APPMESH_EGRESS -d 169.254.170.2/32 -p tcp -j RETURN",
    "-A APPMESH_EGRESS -d 169.254.169.254/32 -p tcp -j RETURN",
    "-A APPMESH_EGRESS -p tcp -j REDIRECT --to-ports 15001",
    "-A APPMESH_INGRESS -p tcp -m multiport --dports 9080 -j REDIRECT --to-ports 15000",
]
EXPECTED_V6 = EMPTY_NAT + [
    "-N APPMESH_EGRESS",
    "-N APPMESH_INGRESS",
    "-A PREROUTING -p tcp -m addrtype ! --src-type LOCAL -j APPMESH_INGRESS",
    "-A OUTPUT -p tcp -m addrtype ! --dst-type LOCAL -j APPMESH_EGRESS",
    "-A APPMESH_EGRESS -m owner --uid-owner 1337 -j RETURN",
    "-A APPMESH_EGRESS -p tcp -m multiport --dports 2049,22 -j RETURN",
    "-A APPMESH_EGRESS -d fd00:ec2::254/128 -p tcp -j RETURN",
    "-A APPMESH_EGRESS -p tcp -j REDIRECT --to-ports 15001",
    "-A APPMESH_INGRESS -p tcp -m multiport --dports 9080 -j REDIRECT --to-ports 15000",
]


def test_install_twice_then_remove_twice(clean_nat):
    for _ in range(2):  # the second install replaces the first: still one set of rules
        r = redirect("install", env=ECS_PROPERTIES)
        assert r.returncode == 0, r.stderr
        assert nat() == EXPECTED_V4
        assert nat("ip6tables") == EXPECTED_V6
    for _ in range(2):  # the second remove finds nothing, and that is success
        r = redirect("remove", env={"EnableIPv6": "true"})
        assert r.returncode == 0, r.stderr
        assert nat() == EMPTY_NAT
        assert nat("ip6tables") == EMPTY_NAT


def test_flags_egress_only_ipv4_only(clean_nat):
    # Flags instead of the environment (a flag wins); no AppPorts: no ingress chain; IPv6
    # off: ip6tables untouched, and the IPv6 ignored address is said to be ignored.
    r = redirect("install", "--ignored-gid", "1338", "--proxy-egress-port", "7001",
                 "--egress-ignored-ips", "10.0.0.0/8, fd00::1", env={"IgnoredUID": "bogus"})
    assert r.returncode == 2 and "IgnoredUID: must be a numeric id" in r.stderr, r.stderr
    assert nat() == EMPTY_NAT  # nothing installed on an invalid property
    r = redirect("install", "--ignored-uid", "", "--ignored-gid", "1338",
                 "--proxy-egress-port", "7001", "--egress-ignored-ips", "10.0.0.0/8, fd00::1",
                 env={"IgnoredUID": "bogus"})
    assert r.returncode == 0, r.stderr
    assert "IPv6 addresses fd00::1 ignored: IPv6 is not enabled" in r.stderr
    assert nat() == EMPTY_NAT[:4] + [
        "-N APPMESH_EGRESS",
        "-A OUTPUT -p tcp -m addrtype ! --dst-type LOCAL -j APPMESH_EGRESS",
        "-A APPMESH_EGRESS -m owner --gid-owner 1338 -j RETURN",
        "-A APPMESH_EGRESS -p tcp -m multiport --dports 22 -j RETURN",
        "-A APPMESH_EGRESS -d 10.0.0.0/8 -p tcp -j RETURN",
        "-A APPMESH_EGRESS -p tcp -j REDIRECT --to-ports 7001",
    ]
    assert nat("ip6tables") == EMPTY_NAT


def test_invalid_properties_install_nothing(clean_nat):
    r = redirect("install", env={"IgnoredUID": "1337", "ProxyIngressPort": "15000"})
    assert r.returncode == 2
    assert ("remora redirect: ProxyIngressPort: is set but AppPorts is not" in r.stderr), r.stderr
    assert "remora redirect: nothing was installed" in r.stderr
    r = redirect("install", env={"AppPorts": "9080,70000"})
    assert r.returncode == 2
    assert "IgnoredUID: one of IgnoredUID or IgnoredGID is required" in r.stderr, r.stderr
    assert 'AppPorts: "70000" is not a port 1..65535' in r.stderr, r.stderr
    assert nat() == EMPTY_NAT and nat("ip6tables") == EMPTY_NAT


# ---- connections through the rules ----

LISTENER = r'''
import json, select, socket, struct, sys

def original_dst(c):
    try:
        if c.family == socket.AF_INET:
            raw = c.getsockopt(socket.SOL_IP, 80, 16)  # SO_ORIGINAL_DST
            addr = socket.inet_ntop(socket.AF_INET, raw[4:8])
        else:
            raw = c.getsockopt(socket.IPPROTO_IPV6, 80, 28)  # IP6T_SO_ORIGINAL_DST
            addr = "[%s]" % socket.inet_ntop(socket.AF_INET6, raw[8:24])
        return "%s:%d" % (addr, struct.unpack_from("!H", raw, 2)[0])
    except OSError:
        return None

name, ports = sys.argv[1], [int(p) for p in sys.argv[2:]]
socks = {}
for port in ports:
    for fam, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if fam == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((host, port))
        s.listen(16)
        socks[s] = port
print("ready", flush=True)
while True:
    for s in select.select(list(socks), [], [])[0]:
        c, peer = s.accept()
        seen = {"listener": "%s:%d" % (name, socks[s]), "orig": original_dst(c), "peer": peer[0]}
        c.sendall((json.dumps(seen) + "\n").encode())
        c.close()
'''

CLIENT = r'''
import json, socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3) as s:
        print(s.makefile().readline().strip() or json.dumps({"error": "closed"}))
except OSError as e:
    print(json.dumps({"error": str(e)}))
'''


class Listener:
    """LISTENER on ports in ns, up until stop()."""

    def __init__(self, ns, name, ports):
        self.proc = subprocess.Popen(in_ns(ns, [sys.executable, "-c", LISTENER, name,
                                                *map(str, ports)]),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.stop()
            raise AssertionError(f"listener {name} did not start: {line}{self.proc.stderr.read()}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()


@pytest.fixture
def listeners(netns):
    """The proxy's two ports in the app namespace; 8080 and 22 on the peer (the destinations
    a connection that is not redirected reaches)."""
    started = [Listener(APP_NS, "proxy", (15000, 15001)), Listener(PEER_NS, "peer", (8080, 22))]
    yield
    for l in started:
        l.stop()


def connect(ns, host, port, uid=None):
    """What a client in ns (as uid) connecting to host:port is told by the listener it reached."""
    r = sh(*in_ns(ns, [sys.executable, "-c", CLIENT, host, str(port)], uid))
    return json.loads(r.stdout)


def test_connections_are_redirected(clean_nat, listeners):
    r = redirect("install", "--ignored-uid", str(PROXY_UID), "--app-ports", "9080",
                 "--enable-ipv6")
    assert r.returncode == 0, r.stderr

    # Egress: the app's uid, to a non-local address, lands on 15001 with the destination kept.
    seen = connect(APP_NS, PEER4, 8080, uid=APP_UID)
    assert seen.get("listener") == "proxy:15001" and seen.get("orig") == f"{PEER4}:8080", seen
    seen = connect(APP_NS, PEER6, 8080, uid=APP_UID)
    assert seen.get("listener") == "proxy:15001" and seen.get("orig") == f"[{PEER6}]:8080", seen

    # IgnoredUID: the proxy's own connection goes where it was going.
    seen = connect(APP_NS, PEER4, 8080, uid=PROXY_UID)
    assert seen.get("listener") == "peer:8080" and seen.get("peer") == APP4, seen
    seen = connect(APP_NS, PEER6, 8080, uid=PROXY_UID)
    assert seen.get("listener") == "peer:8080" and seen.get("peer") == APP6, seen
    # Port 22 is always ignored, even when EgressIgnoredPorts does not list it.
    seen = connect(APP_NS, PEER4, 22, uid=APP_UID)
    assert seen.get("listener") == "peer:22", seen

    # Ingress: the peer, to an AppPort, lands on 15000 with the destination kept.
    seen = connect(PEER_NS, APP4, 9080)
    assert seen.get("listener") == "proxy:15000" and seen.get("orig") == f"{APP4}:9080", seen
    seen = connect(PEER_NS, APP6, 9080)
    assert seen.get("listener") == "proxy:15000" and seen.get("orig") == f"[{APP6}]:9080", seen
    # Local destinations are never redirected: the listener on 15000 answers as itself.
    seen = connect(APP_NS, "127.0.0.1", 15000, uid=APP_UID)
    assert seen.get("listener") == "proxy:15000" and seen.get("orig") in (None, "127.0.0.1:15000"), seen

    # Removed: the app's connection reaches the peer again.
    r = redirect("remove", "--enable-ipv6")
    assert r.returncode == 0, r.stderr
    seen = connect(APP_NS, PEER4, 8080, uid=APP_UID)
    assert seen.get("listener") == "peer:8080", seen


# ---- refusals: what is missing, and how to get it ----

def test_without_cap_net_admin_exits_1():
    """As uid 1000 (setpriv when this is root; as it is otherwise) there is no CAP_NET_ADMIN."""
    argv = [REMORA, "redirect", "install", "--ignored-uid", "1337"]
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("setpriv is not installed")
        argv = ["setpriv", "--reuid=1000", "--regid=1000", "--clear-groups"] + argv
    else:
        with open("/proc/self/status") as f:
            caps = next(int(l.split()[1], 16) for l in f if l.startswith("CapEff:"))
        if caps >> 12 & 1:
            pytest.skip("this non-root user has CAP_NET_ADMIN")
    r = sh(*argv, check=False, env=CLEAN_ENV)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "remora redirect: missing CAP_NET_ADMIN" in r.stderr, r.stderr
    assert "--cap-add NET_ADMIN" in r.stderr and "init container" in r.stderr, r.stderr
    assert r.stdout == ""  # not one command was run


def test_without_iptables_says_to_install_it(netns):
    # A private mount namespace where /usr/sbin (and so /sbin) is an empty tmpfs.
    if not shutil.which("unshare"):
        pytest.skip("unshare is not installed")
    script = 'mount -t tmpfs none /usr/sbin && exec "$0" redirect install --ignored-uid 1337'
    r = sh(*in_ns(APP_NS, ["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                           REMORA]),
           check=False, env=dict(CLEAN_ENV, PATH="/usr/bin:/bin"))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "remora redirect: iptables not found" in r.stderr, r.stderr
    assert "apt-get install iptables" in r.stderr, r.stderr
    assert nat() == EMPTY_NAT


def test_dry_run_prints_the_commands_and_runs_nothing():
    # No namespace needed: --dry-run needs neither the capability nor iptables.
    env = dict(CLEAN_ENV, IgnoredUID="1337", AppPorts="9080")
    r = sh(REMORA, "redirect", "install", "--dry-run", env=env)
    assert r.stdout.splitlines() == [
        "iptables -w -t nat -N APPMESH_EGRESS",
        "iptables -w -t nat -A APPMESH_EGRESS -m owner --uid-owner 1337 -j RETURN",
        "iptables -w -t nat -A APPMESH_EGRESS -p tcp -m multiport --dports 22 -j RETURN",
        "iptables -w -t nat -A APPMESH_EGRESS -p tcp -j REDIRECT --to 15001",
        "iptables -w -t nat -A OUTPUT -p tcp -m addrtype ! --dst-type LOCAL -j APPMESH_EGRESS",
        "iptables -w -t nat -N APPMESH_INGRESS",
        "iptables -w -t nat -A APPMESH_INGRESS -p tcp -m multiport --dports 9080 -j REDIRECT "
        "--to-port 15000",
        "iptables -w -t nat -A PREROUTING -p tcp -m addrtype ! --src-type LOCAL -j "
        "APPMESH_INGRESS",
    ]
    r = sh(REMORA, "redirect", "remove", "--dry-run", env=CLEAN_ENV)
    assert len(r.stdout.splitlines()) == 6 and r.stdout.startswith("iptables -w -t nat -D OUTPUT")
    r = sh(REMORA, "redirect", "--dry-run", check=False, env=CLEAN_ENV)
    assert r.returncode == 2 and "say install or remove" in r.stderr
