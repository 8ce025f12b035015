#!/usr/bin/python3
"""Network namespaces for the interception tests: an ECS task in miniature.

    net   (bridge br0, 10.200.0.1, fd00:200::1: the "VPC"; Knot listens here)
     |-- task  10.200.0.2  fd00:200::2    remora (uid 1337) + the app (uid 1000), CNI nat rules
     |-- b1    10.200.0.11 fd00:200::11   backend tasks; also 10.200.0.21 (an ignored IP)
     `-- b2    10.200.0.12 fd00:200::12   backend tasks

Only namespaces this module creates are touched: every link, address, route and iptables
rule lives inside them, and deleting the namespaces removes all of it. The host's own
interfaces and rules are never read or changed.

The same file is also run *inside* the namespaces (`python3 netns.py serve ...`) as the small
TCP servers the tests need, and imported by the app-side Python clients for a few socket
helpers, so it uses the standard library only.
"""
import argparse
import contextlib
import ctypes
import hashlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CLONE_NEWNET = 0x40000000
SUBNET4, SUBNET6 = "10.200.0", "fd00:200:"
ADDR = {  # namespace role -> (IPv4, IPv6)
    "net": ("10.200.0.1", "fd00:200::1"),
    "task": ("10.200.0.2", "fd00:200::2"),
    "b1": ("10.200.0.11", "fd00:200::11"),
    "b2": ("10.200.0.12", "fd00:200::12"),
}
B1_IGNORED = "10.200.0.21"  # a second address of b1, listed in EgressIgnoredIPs
VIRTUAL_IP = "10.200.9.9"   # nobody's address: what a service name may resolve to
_serial = itertools.count()
# What every process started here gets: no proxy settings (curl would obey them) and none of
# remora's own variables.
CLEAN_ENV = {k: v for k, v in os.environ.items()
             if "proxy" not in k.lower() and not k.startswith(("APPMESH_", "ENVOY_", "REMORA_"))}


# ---- running things ----

def sh(*argv, check=True, timeout=15, input=None):
    """Runs argv; on failure raises with its stderr (the thing a reader needs)."""
    out = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, input=input)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} -> {out.returncode}: {out.stderr.strip() or out.stdout.strip()}")
    return out


def as_user(uid):
    """The prefix that runs a command as uid (gid = uid) with no supplementary groups."""
    return [] if uid is None else ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]


def in_ns(ns, argv, uid=None):
    return ["ip", "netns", "exec", ns, *as_user(uid), *argv]


def unsupported():
    """Why namespaces with nat rules cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "not root"
    for tool in ("ip", "iptables", "ip6tables", "setpriv", "curl", "redis-server", "redis-cli",
                 "knotd", "kdig"):
        if not shutil.which(tool):
            return f"{tool} is not installed"
    probe = f"rmprobe{os.getpid()}"
    try:
        if sh("ip", "netns", "add", probe, check=False).returncode != 0:
            return "cannot create a network namespace (ip netns add failed)"
        for tool in ("iptables", "ip6tables"):
            r = sh(*in_ns(probe, [tool, "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-m", "owner",
                                  "--uid-owner", "1337", "-m", "addrtype", "!", "--dst-type",
                                  "LOCAL", "-j", "REDIRECT", "--to-ports", "15001"]), check=False)
            if r.returncode != 0:
                return f"{tool} nat REDIRECT unavailable: {r.stderr.strip()}"
        if sh(*in_ns(probe, ["setpriv", "--reuid=1337", "--regid=1337", "--clear-groups", "true"]),
              check=False).returncode != 0:
            return "setpriv cannot switch uid"
    except (OSError, subprocess.SubprocessError) as e:
        return f"namespace probe failed: {e}"
    finally:
        sh("ip", "netns", "del", probe, check=False)
    return None


_libc = ctypes.CDLL(None, use_errno=True)


@contextlib.contextmanager
def entered(ns):
    """The calling thread inside namespace ns for the block; sockets made there stay there.
    (setns(2) moves only the calling thread; the way back is the thread's own namespace.)"""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {ns}")
        try:
            yield
        finally:
            if _libc.setns(own, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(own)
        os.close(target)


def connect_in(ns, addr, port, timeout=5.0):
    """A TCP connection made from inside ns by this (root) process."""
    with entered(ns):
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect((addr, port))
        except OSError:
            s.close()
            raise
        return s


def can_connect(ns, addr, port):
    try:
        connect_in(ns, addr, port, timeout=0.5).close()
        return True
    except OSError:
        return False


# ---- the topology ----

class Topology:
    """Four namespaces on one bridge, unique names per run; close() removes everything, and
    every process started through spawn(), even after a failure half-way through building."""

    def __init__(self, workdir):
        self.workdir = workdir
        tag = f"rmi{os.getpid()}n{next(_serial)}"
        self.ns = {role: f"{tag}-{role}" for role in ADDR}
        self.net, self.task, self.b1, self.b2 = (self.ns[role] for role in ("net", "task", "b1", "b2"))
        self.made = []
        self.procs = []
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self):
        for role, ns in self.ns.items():
            sh("ip", "netns", "add", ns)
            self.made.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        net = self.ns["net"]
        v4, v6 = ADDR["net"]
        sh("ip", "-n", net, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", net, "addr", "add", f"{v4}/24", "dev", "br0")
        sh("ip", "-n", net, "addr", "add", f"{v6}/64", "dev", "br0", "nodad")
        sh("ip", "-n", net, "link", "set", "br0", "up")
        for role in ("task", "b1", "b2"):
            ns, (v4, v6) = self.ns[role], ADDR[role]
            port = f"p-{role}"
            # Made inside net with its peer moved straight into the member: never in the host.
            sh("ip", "-n", net, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "-n", net, "link", "set", port, "master", "br0", "up")
            sh("ip", "-n", ns, "addr", "add", f"{v4}/24", "dev", "eth0")
            sh("ip", "-n", ns, "addr", "add", f"{v6}/64", "dev", "eth0", "nodad")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", self.ns["b1"], "addr", "add", f"{B1_IGNORED}/24", "dev", "eth0")
        # The task reaches any address (a service name may resolve to one nobody owns).
        sh("ip", "-n", self.ns["task"], "route", "add", "default", "via", ADDR["net"][0])
        sh("ip", "-n", self.ns["task"], "-6", "route", "add", "default", "via", ADDR["net"][1])

    # processes

    def spawn(self, role, argv, uid=None, log=None, env=None):
        """Starts argv in namespace role (as uid); its output goes to workdir/log."""
        path = os.path.join(self.workdir, log or f"{role}-{len(self.procs)}.log")
        out = open(path, "ab")
        try:
            p = subprocess.Popen(in_ns(self.ns[role], argv, uid), stdout=out,
                                 stderr=subprocess.STDOUT, env=env or CLEAN_ENV)
        finally:
            out.close()
        p.log_path = path
        self.procs.append(p)
        return p

    def serve(self, role, mode, port, name="", host="", uid=None, log=None):
        """One of this file's TCP servers in role, ready (listening) when this returns."""
        argv = [sys.executable, os.path.join(HERE, "netns.py"), "serve", mode, str(port),
                "--name", name or mode, "--host", host]
        if log:
            argv += ["--log", log]
        p = self.spawn(role, argv, uid=uid, log=f"{role}-{mode}-{port}.log")
        deadline = time.monotonic() + 10
        while not open(p.log_path).read().startswith("listening"):
            if p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server {mode} on {role}:{port} did not start:\n"
                                   + open(p.log_path).read())
            time.sleep(0.01)
        return p

    def stop(self, p, timeout=5):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        return p.returncode

    def run(self, role, argv, uid=None, timeout=10, input=None):
        """Runs argv to completion in role (as uid): CompletedProcess with text output."""
        return subprocess.run(in_ns(self.ns[role], argv, uid), capture_output=True, text=True,
                              timeout=timeout, input=input, env=CLEAN_ENV)

    def python(self, role, code, uid=None, timeout=15):
        """Runs Python code in role (as uid) with this file's helpers imported; returns the
        object its last printed line holds (JSON)."""
        prelude = f"import sys, json, socket, time\nsys.path.insert(0, {HERE!r})\nfrom netns import *\n"
        out = self.run(role, [sys.executable, "-c", prelude + code], uid=uid, timeout=timeout)
        if out.returncode != 0:
            raise AssertionError(f"client in {role} failed ({out.returncode}):\n{out.stderr[-3000:]}")
        lines = out.stdout.strip().splitlines()
        return json.loads(lines[-1]) if lines else None

    # nat rules

    def iptables(self, role, *args, v6=False):
        return sh(*in_ns(self.ns[role], ["ip6tables" if v6 else "iptables", *args]))

    def nat_rules(self, role, v6=False):
        """`iptables -t nat -S` in role, the policy lines left out."""
        out = self.iptables(role, "-t", "nat", "-S", v6=v6).stdout
        return [line for line in out.splitlines() if not line.startswith("-P ")]

    def close(self):
        for p in reversed(self.procs):
            self.stop(p)
        for ns in reversed(self.made):
            # Anything still running in our own namespace was started by us (a child of a
            # server we stopped, say): end it by pid before the namespace goes.
            pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            sh("ip", "netns", "del", ns, check=False)
        self.made = []


def cni_rules(ignored_uid=None, ignored_gid=None, ingress_port=None, egress_port=15001,
              app_ports=(), ignored_ports=(), ignored_ips=()):
    """The nat rules the ECS aws-appmesh CNI plugin installs (plugins/aws-appmesh/plugin/
    commands.go: ingress first, then egress; multiport lists capped at 15), as iptables
    argument lists in the order it appends them."""
    rules = []
    if ingress_port and app_ports:
        rules += [["-t", "nat", "-N", "APPMESH_INGRESS"],
                  ["-t", "nat", "-A", "APPMESH_INGRESS", "-p", "tcp", "-m", "multiport", "--dports",
                   ",".join(map(str, list(app_ports)[:15])), "-j", "REDIRECT", "--to-port",
                   str(ingress_port)],
                  ["-t", "nat", "-A", "PREROUTING", "-p", "tcp", "-m", "addrtype", "!",
                   "--src-type", "LOCAL", "-j", "APPMESH_INGRESS"]]
    rules.append(["-t", "nat", "-N", "APPMESH_EGRESS"])
    if ignored_uid is not None:
        rules.append(["-t", "nat", "-A", "APPMESH_EGRESS", "-m", "owner", "--uid-owner",
                      str(ignored_uid), "-j", "RETURN"])
    if ignored_gid is not None:
        rules.append(["-t", "nat", "-A", "APPMESH_EGRESS", "-m", "owner", "--gid-owner",
                      str(ignored_gid), "-j", "RETURN"])
    if ignored_ports:
        rules.append(["-t", "nat", "-A", "APPMESH_EGRESS", "-p", "tcp", "-m", "multiport",
                      "--dports", ",".join(map(str, list(ignored_ports)[:15])), "-j", "RETURN"])
    if ignored_ips:
        rules.append(["-t", "nat", "-A", "APPMESH_EGRESS", "-p", "tcp", "-d", ",".join(ignored_ips),
                      "-j", "RETURN"])
    rules += [["-t", "nat", "-A", "APPMESH_EGRESS", "-p", "tcp", "-j", "REDIRECT", "--to",
               str(egress_port)],
              ["-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-m", "addrtype", "!", "--dst-type",
               "LOCAL", "-j", "APPMESH_EGRESS"]]
    return rules


# ---- socket helpers for app-side clients (imported by Topology.python code) ----

def read_until_close(s, limit=1 << 20):
    """Everything s receives until the peer's FIN (or the socket's timeout raises)."""
    data = b""
    while len(data) < limit:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def read_line(s):
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(1)
        if not chunk:
            break
        data += chunk
    return data


def digest(data):
    return hashlib.sha256(data).hexdigest()


# ---- the servers (python3 netns.py serve MODE PORT) ----
#
#   echo   echoes every byte; after the client's FIN, finishes and closes
#   greet  server-first: says "220 NAME ready\r\n" before reading anything, reads to the
#          client's FIN, answers "got N SHA256\r\n", closes
#   shut   says "bye from NAME\r\n" and half-closes at once, then reads to the client's FIN
#          and appends "N SHA256" to --log (what arrived after its own FIN)

def _serve_conn(conn, mode, name, log):
    try:
        conn.settimeout(30)
        if mode == "echo":
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                conn.sendall(data)
        elif mode == "greet":
            conn.sendall(f"220 {name} ready\r\n".encode())
            data = read_until_close(conn)
            conn.sendall(f"got {len(data)} {digest(data)}\r\n".encode())
        elif mode == "shut":
            conn.sendall(f"bye from {name}\r\n".encode())
            conn.shutdown(socket.SHUT_WR)
            data = read_until_close(conn)
            with open(log, "a") as f:
                f.write(f"{len(data)} {digest(data)}\n")
    except OSError:
        pass
    finally:
        conn.close()


def serve(args):
    family = socket.AF_INET6 if args.host in ("", "::") or ":" in args.host else socket.AF_INET
    ls = socket.socket(family, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        ls.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # both families on one socket
    ls.bind((args.host or "::", args.port))
    ls.listen(128)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    print("listening", flush=True)  # to the log the parent opened: the sign it is ready
    while True:
        conn, _ = ls.accept()
        threading.Thread(target=_serve_conn, args=(conn, args.mode, args.name, args.log),
                         daemon=True).start()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("serve")
    sp.add_argument("mode", choices=["echo", "greet", "shut"])
    sp.add_argument("port", type=int)
    sp.add_argument("--name", default="server")
    sp.add_argument("--host", default="")
    sp.add_argument("--log")
    serve(ap.parse_args())
