"""Bodies of any size stream through in bounded memory, in both directions, with
backpressure toward whichever side is faster."""
import hashlib
import json
import os
import subprocess
import time

import pytest

from rawhttp import Conn, request

GIB = 1 << 30
# The documented bound (README, "What it does today"): a 1 GiB body, in either direction,
# "passes in under 5 MiB of RSS". Checked as the docs phrase it: the kernel's VmHWM (peak RSS)
# of the whole process, start-up included, not just the growth.
RSS_LIMIT_KIB = 5 * 1024
# A sanitizer's runtime (ASan's shadow memory and quarantine, UBSan's runtime) inflates RSS by
# more than the bound itself; the bound is about remora's own buffers, so it is checked in the
# plain build only.
CHECK_RSS = os.environ.get("REMORA_SANITIZER", "") == ""


def test_1gib_response_streams_in_bounded_memory(mesh):
    r, _, _ = mesh()
    out = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download}",
                          "-H", "Host: cart.shop.local", f"http://127.0.0.1:{r.egress}/bytes/{GIB}"],
                         capture_output=True, text=True, timeout=240)
    assert out.stdout == f"200 {GIB}", out.stderr
    peak = r.rss_kib("VmHWM")
    print(f"1 GiB download: remora peak RSS {peak} KiB")
    if CHECK_RSS:
        assert peak < RSS_LIMIT_KIB, f"peak RSS {peak} KiB, documented bound {RSS_LIMIT_KIB} KiB"


def test_1gib_request_body_streams_in_bounded_memory(mesh):
    r, _, backend = mesh()
    gen = subprocess.Popen(["head", "-c", str(GIB), "/dev/zero"], stdout=subprocess.PIPE)
    out = subprocess.run(["curl", "-sS", "-T", "-", "-H", "Host: cart.shop.local",
                          "-H", "Expect:", f"http://127.0.0.1:{r.egress}/upload"],
                         stdin=gen.stdout, capture_output=True, text=True, timeout=240)
    gen.wait()
    seen = json.loads(out.stdout)
    assert seen["length"] == GIB
    digest = hashlib.sha256()
    zeros = bytes(1 << 20)
    for _ in range(1024):
        digest.update(zeros)
    assert seen["sha256"] == digest.hexdigest()
    peak = r.rss_kib("VmHWM")
    print(f"1 GiB upload: remora peak RSS {peak} KiB")
    if CHECK_RSS:
        assert peak < RSS_LIMIT_KIB, f"peak RSS {peak} KiB, documented bound {RSS_LIMIT_KIB} KiB"


def test_slow_reader_gets_backpressure_not_buffering(mesh):
    """A client that reads 64 MiB slowly: without backpressure remora would hold most of it."""
    r, _, _ = mesh()
    size = 64 << 20
    c = Conn(r.egress, timeout=60)
    c.send(request("GET", f"/bytes/{size}"))
    got = 0
    c.sock.setsockopt(__import__("socket").SOL_SOCKET, __import__("socket").SO_RCVBUF, 65536)
    deadline = time.monotonic() + 120
    while got < size + 40 and time.monotonic() < deadline:
        data = c.sock.recv(65536)
        if not data:
            break
        got += len(data)
        if got < 16 << 20:
            time.sleep(0.002)  # slow for the first 16 MiB, while remora is tempted to buffer
    assert got > size
    peak = r.rss_kib("VmHWM")
    print(f"slow reader: remora peak RSS {peak} KiB")
    if CHECK_RSS:
        assert peak < RSS_LIMIT_KIB, f"peak RSS {peak} KiB, documented bound {RSS_LIMIT_KIB} KiB"


@pytest.mark.parametrize("path", ["/bytes/3000000", "/bytes/3000000?chunked=1"])
def test_large_bodies_arrive_intact(mesh, path):
    r, _, _ = mesh()
    c = Conn(r.egress, timeout=30)
    c.send(request("GET", path))
    resp = c.read_response()
    expected = (bytes(range(256)) * 256 * 46)[:3000000]
    assert resp.body == expected
