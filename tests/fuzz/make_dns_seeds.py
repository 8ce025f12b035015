#!/usr/bin/env python3
"""Writes the dns_parse seed corpus (tests/fuzz/corpus/dns_parse/): real answers captured from
Knot DNS (knotd, installed by `make deps`) for the shapes remora reads, plus a few malformed
packets cut from them. Run it again only to change the seeds; its output is committed.

    tests/fuzz/make_dns_seeds.py [OUTDIR]
"""
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "corpus", "dns_parse")
ZONE = "ns.local"

RECORDS = [
    # Cloud Map's shape: SRV per instance, each target's addresses in Additional.
    "backend  IN SRV 1 1 8081 i-1.backend",
    "backend  IN SRV 2 5 8082 i-2.backend",
    "i-1.backend IN A 10.0.0.1",
    "i-2.backend IN A 10.0.0.2",
    "i-2.backend IN AAAA 2001:db8::2",
    "web      IN A 10.0.1.1",
    "web      IN A 10.0.1.2",
    "web      IN AAAA 2001:db8::1:1",
    "alias    IN CNAME web",
    "out      IN SRV 0 0 443 api.example.com.",  # a target outside the zone: no Additional
] + [f"big IN SRV 1 1 {9000 + i} host-{i:02d}.big" for i in range(40)] \
  + [f"host-{i:02d}.big IN A 10.1.0.{i}" for i in range(40)]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def query(name, qtype, qid, edns=False):
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 1 if edns else 0)
    for label in name.rstrip(".").split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\0" + struct.pack(">HH", qtype, 1)
    if edns:  # OPT: 4096-byte UDP payload
        q += b"\0" + struct.pack(">HHIH", 41, 4096, 0, 0)
    return q


def ask_udp(port, q):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    s.sendto(q, ("127.0.0.1", port))
    data, _ = s.recvfrom(65535)
    s.close()
    return data


def ask_tcp(port, q):
    s = socket.create_connection(("127.0.0.1", port), timeout=2)
    s.sendall(struct.pack(">H", len(q)) + q)
    n = struct.unpack(">H", s.recv(2, socket.MSG_WAITALL))[0]
    data = s.recv(n, socket.MSG_WAITALL)
    s.close()
    return data


def start_knot(tmp):
    port = free_port()
    for sub in ("run", "db", "zones"):
        os.makedirs(os.path.join(tmp, sub))
    conf = os.path.join(tmp, "knot.conf")
    with open(conf, "w") as f:
        f.write(f"""server:
    rundir: "{tmp}/run"
    listen: 127.0.0.1@{port}
database:
    storage: "{tmp}/db"
log:
  - target: stderr
    any: error
template:
  - id: default
    storage: "{tmp}/zones"
    file: "%s.zone"
    semantic-checks: off
zone:
  - domain: {ZONE}
""")
    with open(os.path.join(tmp, "zones", ZONE + ".zone"), "w") as f:
        f.write(f"$ORIGIN {ZONE}.\n$TTL 30\n@ IN SOA ns1 hostmaster 1 60 60 3600 5\n"
                "@ IN NS ns1\nns1 IN A 127.0.0.1\n" + "\n".join(RECORDS) + "\n")
    proc = subprocess.Popen(["knotd", "-c", conf], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            ask_udp(port, query("ns1." + ZONE, 1, 1))
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("knotd did not answer")


def main():
    A, AAAA, SRV = 1, 28, 33
    seeds = {}
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start_knot(tmp)
        try:
            seeds["srv_additional"] = ask_udp(port, query("backend." + ZONE, SRV, 0x1001))
            seeds["srv_out_of_zone"] = ask_udp(port, query("out." + ZONE, SRV, 0x1002))
            seeds["a_two"] = ask_udp(port, query("web." + ZONE, A, 0x1003))
            seeds["aaaa"] = ask_udp(port, query("web." + ZONE, AAAA, 0x1004))
            seeds["cname_a"] = ask_udp(port, query("alias." + ZONE, A, 0x1005))
            seeds["nxdomain"] = ask_udp(port, query("nope." + ZONE, A, 0x1006))
            seeds["nodata_soa"] = ask_udp(port, query("web." + ZONE, SRV, 0x1007))
            seeds["srv_truncated_tc"] = ask_udp(port, query("big." + ZONE, SRV, 0x1008))
            seeds["srv_edns"] = ask_udp(port, query("backend." + ZONE, SRV, 0x1009, edns=True))
            seeds["srv_big_tcp"] = ask_tcp(port, query("big." + ZONE, SRV, 0x100a))
        finally:
            proc.terminate()
            proc.wait(5)
    srv = seeds["srv_additional"]
    # Malformed: cut inside the last record; a header that claims one more answer; a
    # compression pointer to itself; one that points past the end.
    seeds["bad_cut_mid_record"] = srv[: len(srv) - 3]
    seeds["bad_count_high"] = srv[:6] + struct.pack(">H", struct.unpack(">H", srv[6:8])[0] + 1) + srv[8:]
    header = struct.pack(">HHHHHH", 0x2001, 0x8180, 0, 1, 0, 0)  # no question, one answer
    loop = header + b"\xc0\x0c" + struct.pack(">HHIH", A, 1, 5, 4) + b"\x0a\0\0\1"
    seeds["bad_pointer_loop"] = loop
    seeds["bad_pointer_past_end"] = loop[:12] + b"\xc0\xff" + loop[14:]
    # Knot writes SRV targets uncompressed (RFC 2782); some servers compress them anyway.
    qname = b"".join(bytes([len(x)]) + x.encode() for x in ("backend." + ZONE).split(".")) + b"\0"
    target = b"\x03i-1\xc0\x0c"
    pkt = (struct.pack(">HHHHHH", 0x2002, 0x8500, 1, 1, 0, 1) + qname + struct.pack(">HH", SRV, 1) +
           b"\xc0\x0c" + struct.pack(">HHIHHHH", SRV, 1, 30, 6 + len(target), 1, 1, 8081))
    at = len(pkt)  # the target's offset: the Additional A record's owner points at it
    pkt += target + struct.pack(">H", 0xc000 | at) + struct.pack(">HHIH", A, 1, 30, 4) + b"\x0a\0\0\1"
    seeds["srv_compressed_target"] = pkt
    os.makedirs(OUT, exist_ok=True)
    for name, data in sorted(seeds.items()):
        with open(os.path.join(OUT, name + ".bin"), "wb") as f:
            f.write(data)
        print(f"{name}: {len(data)} bytes")


if __name__ == "__main__":
    main()
