#!/usr/bin/python3
"""Writes the seeds of the h2_server target (tests/fuzz/corpus/h2_server/): eight knob bytes
(fuzz_h2_server.c has their layout), then client frames, HPACK-encoded by python3-hpack.

Unless knob bit 0x04 is set the target sends the connection preface and an empty SETTINGS
itself, so most seeds start at the first frame after them."""
import os
import struct
import sys

import hpack

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "h2_server")
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def frame(ftype, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + \
        struct.pack(">I", stream) + payload


def fields(path="/", method="GET", extra=()):
    return [(":method", method), (":scheme", "http"), (":authority", "web"), (":path", path),
            *extra]


class Client:
    def __init__(self):
        self.enc = hpack.Encoder()

    def headers(self, sid, f, end_stream=True, end_headers=True):
        return frame(1, (1 if end_stream else 0) | (4 if end_headers else 0), sid,
                     self.enc.encode(f))


def data(sid, payload, end=True):
    return frame(0, 1 if end else 0, sid, payload)


def settings(*pairs, ack=False):
    return frame(4, 1 if ack else 0, 0, b"".join(struct.pack(">HI", k, v) for k, v in pairs))


def knobs(b0=0, seed=1, end=0, *streams):
    s = list(streams) + [0] * (5 - len(streams))
    return bytes([b0, seed, end, *s[:5]])


def seeds():
    c = Client()
    yield "get", knobs() + c.headers(1, fields("/echo"))
    c = Client()
    yield "post-with-length", knobs(0, 2, 0, 0x08) + c.headers(
        1, fields("/upload", "POST", [("content-length", "5")]), end_stream=False) + \
        data(1, b"hello")
    c = Client()
    yield "post-streamed-with-trailers-echoed", knobs(1, 3, 0, 0x14) + c.headers(
        1, fields("/up", "POST", [("te", "trailers")]), end_stream=False) + \
        data(1, b"abc", end=False) + data(1, b"def", end=False) + \
        c.headers(1, [("x-checksum", "1")])
    c = Client()
    yield "five-streams-at-once", knobs(2, 4, 0, 0x00, 0x41, 0x82, 0xc3, 0x0c) + b"".join(
        c.headers(sid, fields(f"/s{sid}")) for sid in (1, 3, 5, 7, 9))
    c = Client()
    yield "reset-after-headers", knobs(0, 5, 0, 0x03) + c.headers(1, fields("/a")) + \
        frame(3, 0, 1, struct.pack(">I", 8)) + c.headers(3, fields("/b"))
    c = Client()
    yield "ping-settings-window-update", knobs(3, 6) + frame(6, 0, 0, b"12345678") + \
        settings((4, 100000), (1, 8192)) + frame(8, 0, 0, struct.pack(">I", 1000)) + \
        c.headers(1, fields("/x"))
    c = Client()
    yield "head-request", knobs(0, 7, 0, 0x00) + c.headers(1, fields("/h", "HEAD"))
    c = Client()
    yield "connect", knobs(0, 8) + c.headers(
        1, [(":method", "CONNECT"), (":authority", "example.com:443")], end_stream=False)
    c = Client()
    yield "malformed-fields", knobs(0, 9) + c.headers(1, fields("/", extra=[("X-Up", "1")])) + \
        c.headers(3, fields("/", extra=[("connection", "close")])) + c.headers(5, fields("/ok"))
    c = Client()
    body = b"".join(data(1, b"z" * 16384, end=False) for _ in range(5)) + data(1, b"")
    yield "upload-paused", knobs(1, 10, 0, 0x24) + c.headers(
        1, fields("/big", "POST"), end_stream=False) + body
    c = Client()
    yield "sniffed-h2", knobs(0x84, 11) + PREFACE + settings() + c.headers(1, fields("/sn"))
    yield "sniffed-h1", knobs(0x84, 12) + b"GET / HTTP/1.1\r\nHost: web\r\n\r\n"
    yield "sniffed-preface-then-not", knobs(0x85, 13) + b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n"
    c = Client()
    block = c.enc.encode(fields("/cont", extra=[("x-a", "1" * 50), ("x-b", "2" * 50)]))
    yield "continuation", knobs(0, 14) + frame(1, 1, 1, block[:20]) + \
        frame(9, 0, 1, block[20:60]) + frame(9, 4, 1, block[60:])
    c = Client()
    yield "expect-continue", knobs(0, 15, 0, 0x1c) + c.headers(
        1, fields("/e", "POST", [("expect", "100-continue"), ("content-length", "3")]),
        end_stream=False) + data(1, b"abc")
    c = Client()
    yield "client-goaway", knobs(0, 16, 2, 0x03) + c.headers(1, fields("/g")) + \
        frame(7, 0, 0, struct.pack(">II", 1, 0))
    c = Client()
    yield "priority-frames", knobs(0, 17) + frame(2, 0, 3, b"\0\0\0\x01\x10") + \
        c.headers(1, fields("/p")) + frame(2, 0, 1, b"\0\0\0\0\x20")
    c = Client()
    yield "small-window-big-response", knobs(0, 18, 0, 0x18) + settings((4, 10)) + \
        c.headers(1, fields("/w")) + frame(8, 0, 1, struct.pack(">I", 5000)) + \
        frame(8, 0, 0, struct.pack(">I", 5000))
    c = Client()
    yield "drain", knobs(0x40, 19, 0, 0x03, 0x03) + c.headers(1, fields("/d1")) + \
        c.headers(3, fields("/d2"))
    c = Client()
    yield "write-fails", knobs(0x18, 20, 0, 0x08) + c.headers(1, fields("/f"))
    c = Client()
    yield "abort-responses", knobs(0x08, 21, 1, 0xc8, 0xc9) + c.headers(1, fields("/a1")) + \
        c.headers(3, fields("/a2", "POST"), end_stream=False) + data(3, b"x")
    c = Client()
    yield "cookies-and-host", knobs(0, 22) + c.headers(1, fields("/c", extra=[
        ("cookie", "a=1"), ("cookie", "b=2"), ("host", "web")])) + \
        c.headers(3, fields("/c2", extra=[("host", "other")]))
    c = Client()
    yield "content-length-mismatch", knobs(0, 23) + c.headers(
        1, fields("/m", "POST", [("content-length", "10")]), end_stream=False) + data(1, b"abc")


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, blob in seeds():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(blob)
    print(f"wrote {len(list(seeds()))} seeds to {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
