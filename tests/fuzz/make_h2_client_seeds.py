#!/usr/bin/python3
"""Writes the seeds of the h2_client target (tests/fuzz/corpus/h2_client/): ten knob bytes
(fuzz_h2_client.c has their layout), then what the upstream sends, server frames HPACK-encoded
by python3-hpack.

Unless knob bit 0x04 is set the target sends an empty SETTINGS (bit 0x40: with 1 MiB windows,
bit 0x80: two streams at once) before the input, so most seeds start at the first frame after
it. The streams the target opens before its first read get the ids 1, 3, 5, ... in order, as
long as their heads are not put off to a later turn (stream knob A bit 0x20)."""
import os
import struct
import sys

import hpack

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "h2_client")

# Stream knob A: the request (bits 0-2), when its end goes (bits 3-4), more in fuzz_h2_client.c.
GET, HEAD, POST_LEN, POST_TRAILERS, PUT_STREAM, UPGRADE, PURGE_LEN, DELETE_EMPTY = range(8)
END_AFTER_BODY, END_AFTER_HEAD, END_TURN, END_NEVER = (0x00, 0x08, 0x10, 0x18)
HEAD_LATER, PAUSE_AT_HEAD, FROM_POOL = 0x20, 0x40, 0x80
# Stream knob B: release after the response (bits 0-1), and the rest.
R_CHAIN, R_DEFER, R_TURN, R_EARLY = range(4)
UNCLEAN, E_DEFER, E_TURN, PAUSE_AT_DATA, DROP_AT_DATA, BIG = 0x04, 0x08, 0x10, 0x20, 0x40, 0x80
# Byte 0.
WHOLE, QUEUED, FAIL, FAIL_LATER, WINDOWS, TWO_AT_ONCE = 0x04, 0x08, 0x10, 0x20, 0x40, 0x80
# Byte 2: streams at the start (1-8), later (0-7), EOF at once, drop at the end.
EOF_AT_ONCE, DROP_AT_END = 0x40, 0x80
# Byte 3: the pool retires or closes after read `at`, where.
RETIRE, CLOSE = 0x40, 0x80
BETWEEN, IN_CHAIN, DEFERRED, A_TURN = 0x00, 0x10, 0x20, 0x30

NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, REFUSED_STREAM, CANCEL = 0, 1, 2, 7, 8


def frame(ftype, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + \
        struct.pack(">I", stream) + payload


def data(sid, payload, end=True, pad=None):
    if pad is not None:
        return frame(0, (1 if end else 0) | 8, sid, bytes([pad]) + payload + b"\0" * pad)
    return frame(0, 1 if end else 0, sid, payload)


def settings(*pairs, ack=False):
    return frame(4, 1 if ack else 0, 0, b"".join(struct.pack(">HI", k, v) for k, v in pairs))


def rst(sid, code):
    return frame(3, 0, sid, struct.pack(">I", code))


def goaway(last, code=NO_ERROR, debug=b""):
    return frame(7, 0, 0, struct.pack(">II", last, code) + debug)


def ping(opaque=b"12345678", ack=False):
    return frame(6, 1 if ack else 0, 0, opaque)


def window_update(sid, inc):
    return frame(8, 0, sid, struct.pack(">I", inc))


class Server:
    def __init__(self):
        self.enc = hpack.Encoder()

    def block(self, fields):
        return self.enc.encode(fields)

    def headers(self, sid, fields, end_stream=False, end_headers=True):
        return frame(1, (1 if end_stream else 0) | (4 if end_headers else 0), sid,
                     self.block(fields))

    def response(self, sid, status=200, extra=(), end_stream=False):
        return self.headers(sid, [(":status", str(status)), *extra], end_stream)


def knobs(b0=0, seed=1, b2=0, b3=0, *streams):
    s = list(streams) + [0] * (6 - len(streams))
    return bytes([b0, seed, b2, b3, *s[:6]])


def streams(n, later=0):
    return (n - 1) | (later << 3)


def seeds():
    s = Server()
    yield "get-200-with-length", knobs(0, 1, 0, 0, GET, R_CHAIN) + \
        s.response(1, 200, [("content-length", "5"), ("server", "up")]) + data(1, b"hello")
    s = Server()
    yield "get-chunked-body-in-pieces", knobs(1, 2, 0, 0, GET, R_DEFER) + \
        s.response(1, 200) + data(1, b"abc", end=False) + data(1, b"def", end=False) + \
        data(1, b"")
    s = Server()
    yield "head-response-with-length", knobs(0, 3, 0, 0, HEAD, R_TURN) + \
        s.response(1, 200, [("content-length", "1000")], end_stream=True)
    s = Server()
    yield "head-response-then-empty-data", knobs(0, 4, 0, 0, HEAD, R_CHAIN) + \
        s.response(1, 200, [("content-length", "1000")]) + data(1, b"")
    s = Server()
    yield "post-with-length", knobs(0, 5, 0, 0, POST_LEN | FROM_POOL, R_CHAIN) + \
        s.response(1, 201, [("content-length", "2")]) + data(1, b"ok")
    s = Server()
    yield "post-trailers-both-ways", knobs(0, 6, 0, 0, POST_TRAILERS | FROM_POOL, R_CHAIN) + \
        s.response(1, 200, [("content-type", "application/grpc")]) + \
        data(1, b"\0\0\0\0\x05hello", end=False) + \
        s.headers(1, [("grpc-status", "0"), ("grpc-message", "")], end_stream=True)
    s = Server()
    yield "put-streamed-response-early", knobs(0, 7, 0, 0, PUT_STREAM | END_TURN, R_TURN) + \
        s.response(1, 200, [("content-length", "0")], end_stream=True) + rst(1, NO_ERROR)
    s = Server()
    yield "five-streams-interleaved", knobs(2, 8, streams(5), 0, GET, R_CHAIN,
                                            POST_LEN | FROM_POOL, R_DEFER | UNCLEAN,
                                            PUT_STREAM, R_TURN) + \
        s.response(3, 200) + s.response(1, 404, [("content-length", "3")]) + \
        data(3, b"xx", end=False) + s.response(5, 500, end_stream=True) + data(1, b"nop") + \
        s.response(7, 204, end_stream=True) + data(3, b"yy") + \
        s.response(9, 200, [("content-length", "1")]) + data(9, b"z")
    s = Server()
    yield "goaway-last-stream-id", knobs(0, 9, streams(4), 0, GET, R_CHAIN, GET, R_DEFER) + \
        s.response(1, 200, end_stream=True) + goaway(3) + s.response(3, 200) + data(3, b"ok")
    s = Server()
    yield "goaway-then-more-streams", knobs(1, 10, streams(2, 5), 0, GET, R_CHAIN) + \
        goaway(1) + s.response(1, 200, end_stream=True)
    s = Server()
    yield "goaway-with-an-error", knobs(0, 11, streams(2), 0, POST_LEN, R_CHAIN) + \
        s.response(1, 200, end_stream=True) + goaway(1, PROTOCOL_ERROR, b"bye")
    s = Server()
    yield "rst-stream-refused", knobs(0, 12, streams(3), 0, GET, R_CHAIN, GET, E_TURN) + \
        rst(1, REFUSED_STREAM) + s.response(3, 200, end_stream=True) + rst(5, REFUSED_STREAM)
    s = Server()
    yield "rst-stream-after-head", knobs(0, 13, streams(2), 0, GET, R_CHAIN) + \
        s.response(1, 200) + data(1, b"par", end=False) + rst(1, INTERNAL_ERROR) + \
        s.response(3, 200) + rst(3, CANCEL)
    yield "ping-flood", knobs(0, 14) + b"".join(ping(struct.pack(">Q", i)) for i in range(1100))
    s = Server()
    yield "pings-and-settings", knobs(0, 15) + ping() + settings((1, 0), (4, 100000), (5, 32768)) + \
        ping(b"abcdefgh") + settings(ack=True) + s.response(1, 200, end_stream=True) + \
        ping(b"zzzzzzzz", ack=True)
    s = Server()
    yield "window-updates-big-upload", knobs(3, 16, 0, 0, POST_LEN | FROM_POOL, BIG) + \
        settings((4, 1 << 20)) + window_update(0, 1 << 20) + window_update(1, 1 << 20) + \
        ping() * 4 + s.response(1, 200, [("content-length", "0")], True)
    s = Server()
    yield "big-upload-past-high-water", knobs(WINDOWS | QUEUED | 3, 17, 0, 0,
                                              POST_TRAILERS | FROM_POOL, BIG) + \
        ping() * 4 + s.response(1, 200) + data(1, b"done")
    s = Server()
    yield "big-upload-static", knobs(WINDOWS | 3, 18, streams(2), 0, PUT_STREAM, BIG) + \
        ping() * 4 + \
        s.response(1, 200) + s.response(3, 200) + data(1, b"a") + data(3, b"b")
    s = Server()
    yield "upload-stalls-at-window", knobs(QUEUED, 19, 0, 0, POST_LEN | FROM_POOL, BIG) + \
        s.response(1, 100) + settings((4, 10))
    s = Server()
    block = s.block([(":status", "200"), ("x-a", "1" * 60), ("x-b", "2" * 60),
                     ("content-length", "1")])
    yield "continuation", knobs(0, 20) + frame(1, 0, 1, block[:20]) + \
        frame(9, 0, 1, block[20:80]) + frame(9, 4, 1, block[80:]) + data(1, b"c")
    s = Server()
    block = s.block([(":status", "200")])
    yield "continuation-flood", knobs(0, 21) + frame(1, 0, 1, b"") + \
        b"".join(frame(9, 0, 1, b"") for _ in range(12)) + frame(9, 4, 1, block)
    s = Server()
    yield "interim-heads", knobs(0, 22, 0, 0, POST_LEN, R_CHAIN) + \
        s.response(1, 100) + s.response(1, 103, [("link", "</a>; rel=preload")]) + \
        s.response(1, 200, [("content-length", "2")]) + data(1, b"ok")
    s = Server()
    yield "big-response-body", knobs(3, 23) + s.response(1, 200) + \
        b"".join(data(1, bytes([65 + i % 26]) * 700, end=False) for i in range(5)) + data(1, b"")
    s = Server()
    yield "paused-response-fills-the-window", knobs(2, 24, 0, 0, GET | PAUSE_AT_HEAD, R_CHAIN) + \
        s.response(1, 200, [("content-length", "65535")]) + \
        b"".join(data(1, b"w" * 16384, end=False) for _ in range(3)) + data(1, b"w" * 16383)
    s = Server()
    yield "paused-at-head-and-at-data", knobs(0, 25, 0, 0, GET | PAUSE_AT_HEAD,
                                              PAUSE_AT_DATA | R_DEFER) + \
        s.response(1, 200) + data(1, b"one", end=False) + data(1, b"two", end=False) + \
        s.headers(1, [("x-t", "1")], end_stream=True)
    s = Server()
    yield "paused-at-data", knobs(1, 26, 0, 0, GET, PAUSE_AT_DATA) + s.response(1, 200) + \
        data(1, b"first", end=False) + data(1, b"second", end=False) + data(1, b"")
    s = Server()
    yield "two-at-once", knobs(TWO_AT_ONCE, 27, streams(4), 0, GET, R_CHAIN) + \
        s.response(1, 200, end_stream=True) + s.response(3, 200, end_stream=True) + \
        s.response(5, 200, end_stream=True) + s.response(7, 200, end_stream=True)
    s = Server()
    yield "retire-between-reads", knobs(1, 28, streams(2), RETIRE | 1, GET, R_CHAIN) + \
        s.response(1, 200) + data(1, b"a") + s.response(3, 200, end_stream=True)
    s = Server()
    yield "retire-in-the-chain", knobs(0, 29, streams(2), RETIRE | IN_CHAIN, GET, R_DEFER) + \
        s.response(1, 200, end_stream=True) + s.response(3, 200, end_stream=True)
    s = Server()
    yield "close-in-the-chain", knobs(0, 30, streams(3), CLOSE | IN_CHAIN, GET, R_CHAIN,
                                      POST_LEN, R_TURN) + \
        s.response(1, 200) + data(1, b"x") + s.response(3, 200, end_stream=True)
    s = Server()
    yield "close-deferred", knobs(1, 31, streams(2), CLOSE | DEFERRED | 1, GET, R_CHAIN) + \
        s.response(1, 200, [("content-length", "4")]) + data(1, b"ab", end=False) + \
        data(1, b"cd")
    s = Server()
    yield "close-a-turn-later", knobs(0, 32, streams(2), CLOSE | A_TURN, POST_TRAILERS,
                                      R_TURN) + s.response(1, 200, end_stream=True)
    s = Server()
    yield "upgrade-refused", knobs(0, 33, streams(2), 0, UPGRADE, R_CHAIN, GET, R_CHAIN) + \
        s.response(1, 200, end_stream=True)
    s = Server()
    yield "write-fails-at-once", knobs(FAIL, 34, streams(2), 0, POST_LEN, R_CHAIN) + \
        s.response(1, 200, end_stream=True)
    s = Server()
    yield "write-fails-later", knobs(FAIL | FAIL_LATER | QUEUED, 35, streams(2), 0,
                                     POST_LEN | FROM_POOL, R_CHAIN) + \
        s.response(1, 200) + data(1, b"x")
    s = Server()
    yield "malformed-responses", knobs(0, 36, streams(6), 0, GET, R_CHAIN) + \
        s.headers(1, [(":status", "200"), ("X-Upper", "1")]) + \
        s.headers(3, [("content-length", "1")]) + \
        s.headers(5, [(":status", "200"), ("connection", "close")]) + \
        s.response(7, 200, [("content-length", "5")]) + data(7, b"abc") + \
        s.headers(9, [(":status", "2000")]) + s.headers(11, [(":status", "600")], True)
    s = Server()
    yield "trailers-with-pseudo-header", knobs(0, 37) + s.response(1, 200) + \
        s.headers(1, [(":status", "200")], end_stream=True)
    s = Server()
    yield "push-promise", knobs(0, 38) + frame(5, 4, 1, struct.pack(">I", 2) + s.block(
        [(":method", "GET"), (":scheme", "http"), (":authority", "a"), (":path", "/p")]))
    s = Server()
    yield "eof-in-the-body", knobs(1, 39, streams(2), 0, GET, R_CHAIN) + \
        s.response(1, 200, [("content-length", "100")]) + data(1, b"part", end=False)
    yield "eof-at-once", knobs(0, 40, EOF_AT_ONCE | streams(2), 0, GET, R_CHAIN) + \
        Server().response(1, 200)
    s = Server()
    yield "released-early", knobs(0, 41, streams(3), 0, GET, R_EARLY, POST_LEN, DROP_AT_DATA) + \
        s.response(1, 200) + data(1, b"a") + s.response(3, 200) + data(3, b"bb", end=False) + \
        data(3, b"cc")
    s = Server()
    yield "padded-data", knobs(0, 42) + s.response(1, 200, [("content-length", "3")]) + \
        data(1, b"abc", pad=200)
    s = Server()
    yield "header-table-size-zero", knobs(WHOLE, 43, streams(3)) + settings((1, 0)) + \
        s.response(1, 200, [("x-long", "v" * 30)], True) + \
        s.response(3, 200, [("x-long", "v" * 30)], True) + s.response(5, 301, [("location", "/")], True)
    s = Server()
    yield "no-server-settings", knobs(WHOLE, 44) + s.response(1, 200, end_stream=True)
    s = Server()
    yield "delete-empty-body", knobs(0, 45, 0, 0, DELETE_EMPTY, R_CHAIN) + \
        s.response(1, 204, end_stream=True)
    s = Server()
    yield "purge-with-length", knobs(0, 46, 0, 0, PURGE_LEN | END_AFTER_HEAD, R_CHAIN) + \
        s.response(1, 200, [("content-length", "0")]) + data(1, b"")
    s = Server()
    yield "heads-on-later-turns", knobs(1, 47, streams(3), 0, GET | HEAD_LATER, R_TURN,
                                        POST_LEN | HEAD_LATER, R_CHAIN) + \
        s.response(1, 200, end_stream=True) + s.response(3, 200, end_stream=True) + \
        s.response(5, 200, end_stream=True)
    s = Server()
    yield "drop-everything-at-the-end", knobs(0, 48, DROP_AT_END | streams(3), 0,
                                              PUT_STREAM | END_NEVER, R_CHAIN) + \
        s.response(1, 200) + data(1, b"part", end=False)
    s = Server()
    yield "data-on-an-idle-stream", knobs(0, 49) + data(3, b"nope")
    s = Server()
    yield "response-too-many-fields", knobs(0, 50) + s.response(
        1, 200, [(f"x-{i}", "v") for i in range(120)], end_stream=True)
    s = Server()
    yield "settings-flood", knobs(0, 51) + b"".join(settings((3, 100)) for _ in range(40))
    s = Server()
    yield "window-overflow", knobs(0, 52, 0, 0, POST_LEN) + window_update(1, 0x7fffffff) + \
        window_update(0, 0x7fffffff)
    s = Server()
    yield "304-with-length", knobs(0, 53) + \
        s.response(1, 304, [("content-length", "10")]) + data(1, b"")
    s = Server()
    yield "head-response-with-a-body", knobs(0, 54, 0, 0, HEAD, R_CHAIN) + s.response(1, 200) + \
        data(1, b"abc")
    s = Server()
    yield "304-with-a-body", knobs(0, 55) + s.response(1, 304) + data(1, b"abc")


def main():
    os.makedirs(OUT, exist_ok=True)
    n = 0
    for name, blob in seeds():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(blob)
        n += 1
    print(f"wrote {n} seeds to {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
