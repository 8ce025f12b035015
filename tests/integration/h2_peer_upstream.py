#!/usr/bin/python3
"""An HTTP/2 upstream (python3-h2 on asyncio) for test_h2_upstream.py and test_grpc.py: what
remora's HTTP/2 client talks to. h2c with prior knowledge, or TLS with ALPN h2 (--tls CERT KEY).
It counts connections and streams, enforces its own SETTINGS_MAX_CONCURRENT_STREAMS
(--max-streams: streams past it are refused with RST_STREAM(REFUSED_STREAM), as RFC 9113
section 5.1.2 allows), and misbehaves on purpose by path.

python3-h2 enforces the limit as a connection error; to refuse the excess per stream instead,
h2 is told a large limit and the advertised one goes in a second SETTINGS frame written beside
h2's (the peer applies the last one; the extra SETTINGS ACK is harmless to h2).

Paths (any method; the body is always read, hashed and counted):
  /echo               200, JSON: method, path, authority, scheme, headers, trailers, length,
                      sha256, conn (this connection's number), alpn
  /trailers           the same, then trailers: x-upstream-trailer: done and x-echo-NAME for each
                      request trailer
  /sleep/MS           /echo after MS milliseconds
  /bytes/N            N bytes ("x"), Content-Length N
  /reset-mid/N        headers with Content-Length N, N/2 bytes, then RST_STREAM(INTERNAL_ERROR)
  /refuse-once/KEY    the first stream for KEY is refused (RST_STREAM(REFUSED_STREAM) at its
                      headers); later ones /echo
  /drop-once/KEY      the first stream for KEY: the connection is closed at its headers (FIN,
                      nothing answered); later ones /echo
  /slow-upload/MS     credits no flow-control window for MS ms, then reads at full speed;
                      answers {"length", "sha256"}
  /hold/MS            answers nothing for MS ms (records how the stream ended), then a gRPC OK;
                      with a gRPC path ending in /Hold too (MS from the x-hold-ms header, 10000)
  /hpack-bomb         a response header block of 12,000 references to one 4,000-octet entry
  /header-flood[/N]   a response header block of N (2,000) distinct fields
  /continuation-flood HEADERS without END_HEADERS, then CONTINUATION frames without end
  /ping-flood         stops reading and writes PING frames (400,000), never answering
  any other gRPC path (content-type application/grpc): echoes each message back, grpc-status 0
--goaway-once N: the first connection, at its Nth stream, sends GOAWAY(NO_ERROR) with the last
stream id of its first N/2 streams; it answers those, never the others, then closes.
Statistics: GET anything on --stats-port (HTTP/1.1), JSON."""
import argparse
import asyncio
import hashlib
import json
import signal
import socket
import ssl

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import hpack
from hyperframe.frame import ContinuationFrame, GoAwayFrame, HeadersFrame, PingFrame, SettingsFrame

STATS = {"connections": 0, "open_connections": 0, "open": [], "streams": 0, "answered": 0, "refused": 0,
         "over_limit": 0, "resets_received": {}, "max_active_per_conn": 0, "max_active": 0,
         "goaway_sent": 0, "unprocessed": 0, "alpn": [], "tls": 0, "reading": 0,
         "records": [], "bytes_received": 0}
SEEN = set()
ACTIVE = [0]
RECORDS_KEPT = 500


def grpc_frame(msg):
    return b"\0" + len(msg).to_bytes(4, "big") + msg


def grpc_messages(body):
    out, i = [], 0
    while i + 5 <= len(body):
        n = int.from_bytes(body[i + 1:i + 5], "big")
        out.append(body[i + 5:i + 5 + n])
        i += 5 + n
    return out


class Stream:
    def __init__(self, sid, headers, conn):
        self.sid, self.headers, self.conn = sid, headers, conn
        h = dict(headers)
        self.path = h.get(":path", "")
        self.method = h.get(":method", "")
        self.parts = self.path.split("?")[0].strip("/").split("/")
        self.digest, self.length, self.body = hashlib.sha256(), 0, bytearray()
        self.trailers = []
        self.ended = asyncio.Event()
        self.reset = None
        self.closed = False
        self.task = None
        self.record = {"path": self.path, "headers": headers, "conn": conn.number, "reset": None,
                       "answered": False}
        STATS["records"].append(self.record)
        del STATS["records"][:-RECORDS_KEPT]

    def header(self, name):
        for k, v in self.headers:
            if k == name:
                return v
        return None

    @property
    def grpc(self):
        return (self.header("content-type") or "").startswith("application/grpc")


class Peer(asyncio.Protocol):
    def __init__(self, args):
        self.args = args
        self.streams = {}
        self.window_open = asyncio.Event()
        self.number = None
        self.active = 0
        self.goaway_last = None
        self.first_ids = []
        self.dead = False

    # ---- connection ----

    def connection_made(self, transport):
        self.transport = transport
        STATS["connections"] += 1
        STATS["open_connections"] += 1
        self.number = STATS["connections"]
        STATS["open"].append(self.number)
        sslobj = transport.get_extra_info("ssl_object")
        if sslobj is not None:
            STATS["tls"] += 1
            STATS["alpn"].append(sslobj.selected_alpn_protocol())
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding="utf-8"))
        self.h2.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 100000,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 1 << 20})
        self.h2.initiate_connection()
        out = self.h2.data_to_send()
        limit = SettingsFrame(0, settings={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.args.max_streams})
        transport.write(out + limit.serialize())

    def connection_lost(self, exc):
        STATS["open_connections"] -= 1
        STATS["open"].remove(self.number)
        self.dead = True
        for st in list(self.streams.values()):
            self.close_stream(st)
        self.window_open.set()

    def flush(self):
        if not self.dead:
            out = self.h2.data_to_send()
            if out:
                self.transport.write(out)

    def data_received(self, data):
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.flush()
            self.transport.close()
            return
        for ev in events:
            self.on_event(ev)
        self.flush()

    def on_event(self, ev):
        if isinstance(ev, h2.events.RequestReceived):
            self.on_request(ev)
        elif isinstance(ev, h2.events.DataReceived):
            st = self.streams.get(ev.stream_id)
            STATS["bytes_received"] += len(ev.data)
            if st is None:
                self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                return
            st.digest.update(ev.data)
            st.length += len(ev.data)
            if st.grpc:
                st.body += ev.data
            if st.parts[0] == "slow-upload" and not getattr(st, "reading", False):
                st.credit = getattr(st, "credit", 0) + ev.flow_controlled_length
            else:
                self.ack(ev.stream_id, ev.flow_controlled_length)
        elif isinstance(ev, h2.events.TrailersReceived):
            st = self.streams.get(ev.stream_id)
            if st:
                st.trailers = ev.headers
        elif isinstance(ev, h2.events.StreamEnded):
            st = self.streams.get(ev.stream_id)
            if st:
                st.ended.set()
        elif isinstance(ev, h2.events.StreamReset):
            code = int(ev.error_code)
            STATS["resets_received"][str(code)] = STATS["resets_received"].get(str(code), 0) + 1
            st = self.streams.get(ev.stream_id)
            if st:
                st.reset = code
                st.record["reset"] = code
                self.close_stream(st)
        elif isinstance(ev, h2.events.WindowUpdated):
            self.window_open.set()
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.transport.close()

    def ack(self, sid, n):
        try:
            self.h2.acknowledge_received_data(n, sid)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            pass

    def close_stream(self, st):
        if st.closed:
            return
        st.closed = True
        self.active -= 1
        ACTIVE[0] -= 1
        if st.task and st.reset is not None:
            st.task.cancel()
        st.ended.set()
        self.streams.pop(st.sid, None)
        if self.goaway_last is not None and not any(s.sid <= self.goaway_last
                                                    for s in self.streams.values()):
            self.flush()
            self.transport.close()

    # ---- streams ----

    def on_request(self, ev):
        sid = ev.stream_id
        st = Stream(sid, ev.headers, self)
        STATS["streams"] += 1
        if self.goaway_last is not None and sid > self.goaway_last:
            STATS["unprocessed"] += 1
            return  # never processed: the client retries it
        if self.active >= self.args.max_streams:
            STATS["over_limit"] += 1
            STATS["refused"] += 1
            st.record["reset"] = "refused"
            self.h2.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        self.streams[sid] = st
        self.active += 1
        ACTIVE[0] += 1
        STATS["max_active_per_conn"] = max(STATS["max_active_per_conn"], self.active)
        STATS["max_active"] = max(STATS["max_active"], ACTIVE[0])
        if ev.stream_ended:
            st.ended.set()
        if self.args.goaway_once and STATS["goaway_sent"] == 0:
            self.first_ids.append(sid)
            if len(self.first_ids) == self.args.goaway_once:
                self.goaway_last = self.first_ids[self.args.goaway_once // 2 - 1]
                STATS["goaway_sent"] += 1
                self.flush()
                self.transport.write(GoAwayFrame(0, last_stream_id=self.goaway_last,
                                                 error_code=0).serialize())
                for s in list(self.streams.values()):
                    if s.sid > self.goaway_last:
                        STATS["unprocessed"] += 1
                        self.streams.pop(s.sid)
                        s.closed = True
                        self.active -= 1
                        ACTIVE[0] -= 1
                        if s.task:
                            s.task.cancel()
                if sid > self.goaway_last:
                    return
        if st.parts[0] == "refuse-once":
            key = "/".join(st.parts[1:])
            if key not in SEEN:
                SEEN.add(key)
                STATS["refused"] += 1
                st.record["reset"] = "refused"
                self.h2.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
                self.close_stream(st)
                return
        if st.parts[0] == "drop-once":
            key = "/".join(st.parts[1:])
            if key not in SEEN:
                SEEN.add(key)
                st.record["reset"] = "dropped"
                self.transport.close()
                return
        st.task = asyncio.get_running_loop().create_task(self.serve(st))

    async def serve(self, st):
        try:
            await self.respond(st)
        except asyncio.CancelledError:
            pass
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
            pass
        finally:
            self.flush()

    async def send_body(self, st, data, end=True):
        view = memoryview(data)
        while view and not st.closed and not self.dead:
            try:
                room = min(self.h2.local_flow_control_window(st.sid),
                           self.h2.max_outbound_frame_size)
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                return
            if room <= 0:
                self.window_open.clear()
                self.flush()
                await self.window_open.wait()
                continue
            part, view = view[:room], view[room:]
            self.h2.send_data(st.sid, bytes(part), end_stream=end and not view)
            self.flush()
            if self.transport.get_write_buffer_size() > 1 << 20:
                await asyncio.sleep(0.001)
        if not data and end:
            self.h2.end_stream(st.sid)
        self.flush()

    def answered(self, st):
        STATS["answered"] += 1
        st.record["answered"] = True
        self.close_stream(st)

    def echo_doc(self, st):
        h = dict(st.headers)
        return {"method": st.method, "path": st.path, "authority": h.get(":authority"),
                "scheme": h.get(":scheme"), "headers": st.headers, "trailers": st.trailers,
                "length": st.length, "sha256": st.digest.hexdigest(), "conn": self.number,
                "alpn": (self.transport.get_extra_info("ssl_object").selected_alpn_protocol()
                         if self.transport.get_extra_info("ssl_object") else None)}

    async def respond(self, st):
        kind = st.parts[0]
        if kind == "hpack-bomb":
            return self.hpack_bomb(st)
        if kind == "header-flood":
            return self.header_flood(st)
        if kind == "continuation-flood":
            return await self.continuation_flood(st)
        if kind == "ping-flood":
            return await self.ping_flood(st)
        if kind == "slow-upload":
            await asyncio.sleep(int(st.parts[1]) / 1000)
            st.reading = True
            STATS["reading"] += 1
            try:
                if getattr(st, "credit", 0):
                    self.ack(st.sid, st.credit)
                    self.flush()
                await st.ended.wait()
            finally:
                STATS["reading"] -= 1
            body = json.dumps({"length": st.length, "sha256": st.digest.hexdigest()}).encode()
            self.h2.send_headers(st.sid, [(":status", "200"), ("content-type", "application/json"),
                                          ("content-length", str(len(body)))])
            await self.send_body(st, body)
            return self.answered(st)
        hold = None
        if kind == "hold":
            hold = int(st.parts[1])
        elif st.grpc and st.path.endswith("/Hold"):
            hold = int(st.header("x-hold-ms") or 10000)
        if hold is not None:
            try:
                await asyncio.wait_for(self.until_closed(st), hold / 1000)
                return  # reset by the client first: recorded
            except asyncio.TimeoutError:
                pass
            await st.ended.wait()
            self.h2.send_headers(st.sid, [(":status", "200"), ("content-type", "application/grpc")])
            await self.send_body(st, grpc_frame(b"held"), end=False)
            self.h2.send_headers(st.sid, [("grpc-status", "0")], end_stream=True)
            return self.answered(st)
        await st.ended.wait()
        if st.closed:
            return
        if kind == "sleep":
            await asyncio.sleep(int(st.parts[1]) / 1000)
        if kind == "bytes":
            n = int(st.parts[1])
            self.h2.send_headers(st.sid, [(":status", "200"), ("content-length", str(n))])
            chunk = b"x" * min(n, 1 << 16)
            left = n
            while left > 0 and not st.closed:
                part = chunk[:left]
                await self.send_body(st, part, end=(left == len(part)))
                left -= len(part)
            return self.answered(st)
        if kind == "reset-mid":
            n = int(st.parts[1])
            self.h2.send_headers(st.sid, [(":status", "200"), ("content-length", str(n))])
            await self.send_body(st, b"y" * (n // 2), end=False)
            self.flush()
            await asyncio.sleep(0.05)
            self.h2.reset_stream(st.sid, h2.errors.ErrorCodes.INTERNAL_ERROR)
            self.flush()
            st.record["reset"] = "sent"
            return self.close_stream(st)
        if st.grpc and kind not in ("echo", "trailers", "sleep"):
            msgs = grpc_messages(bytes(st.body))
            self.h2.send_headers(st.sid, [(":status", "200"), ("content-type", "application/grpc"),
                                          ("x-server", self.args.name)])
            await self.send_body(st, b"".join(grpc_frame(m) for m in msgs), end=False)
            self.h2.send_headers(st.sid, [("grpc-status", "0")], end_stream=True)
            return self.answered(st)
        body = json.dumps(self.echo_doc(st)).encode()
        if kind == "trailers":
            self.h2.send_headers(st.sid, [(":status", "200"), ("content-type", "application/json"),
                                          ("x-server", self.args.name)])
            await self.send_body(st, body, end=False)
            trailers = [("x-upstream-trailer", "done")] + [(f"x-echo-{k}", v) for k, v in st.trailers]
            self.h2.send_headers(st.sid, trailers, end_stream=True)
        else:
            self.h2.send_headers(st.sid, [(":status", "200"), ("content-type", "application/json"),
                                          ("content-length", str(len(body))),
                                          ("x-server", self.args.name)])
            await self.send_body(st, body)
        return self.answered(st)

    async def until_closed(self, st):
        while not st.closed:
            await asyncio.sleep(0.01)

    # ---- hostile answers (raw frames beside h2's state machine: the connection is expected to
    # be torn down by the client, so h2's HPACK and stream state going out of step is moot) ----

    @staticmethod
    def fresh_block(fields):
        """An HPACK block that first empties the peer's dynamic table (size updates to 0 and
        back to 4096), so that a fresh encoder's indices mean what they say."""
        return b"\x20\x3f\xe1\x1f" + hpack.Encoder().encode(fields)

    def write_block(self, sid, block, end_headers=True):
        self.flush()
        first, rest = block[:16000], block[16000:]
        frames = [HeadersFrame(sid, first, flags=["END_HEADERS"] if not rest and end_headers else [])]
        while rest:
            part, rest = rest[:16000], rest[16000:]
            frames.append(ContinuationFrame(sid, part, flags=["END_HEADERS"] if not rest and end_headers
                                            else []))
        self.transport.write(b"".join(f.serialize() for f in frames))

    def hpack_bomb(self, st):
        block = self.fresh_block([(":status", "200"), ("x-bomb", "a" * 4000)]) + b"\xbe" * 12000
        self.write_block(st.sid, block)
        st.record["hostile"] = "hpack-bomb"

    def header_flood(self, st):
        enc = hpack.Encoder()
        n = int(st.parts[1]) if len(st.parts) > 1 else 2000
        fields = [(":status", "200")] + [(f"x-flood-{i}", f"value-{i}") for i in range(n)]
        self.write_block(st.sid, b"\x20\x3f\xe1\x1f" + enc.encode(fields))
        st.record["hostile"] = "header-flood"

    async def continuation_flood(self, st):
        self.write_block(st.sid, self.fresh_block([(":status", "200")]), end_headers=False)
        enc = hpack.Encoder()
        sent = 0
        while not self.dead and sent < 100000:
            frames = b"".join(ContinuationFrame(st.sid, enc.encode([("x-c", str(sent + i))],
                                                                     huffman=False)).serialize()
                              for i in range(100))
            self.transport.write(frames)
            sent += 100
            await asyncio.sleep(0.001)
        st.record["hostile"] = f"continuation-flood {sent}"

    async def ping_flood(self, st):
        self.flush()
        self.transport.pause_reading()
        sock = self.transport.get_extra_info("socket")
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        except OSError:
            pass
        one = PingFrame(0, opaque_data=b"floodfld").serialize()
        chunk = one * 4000
        sent = 0
        while not self.dead and sent < 400000:
            self.transport.write(chunk)
            sent += 4000
            while not self.dead and self.transport.get_write_buffer_size() > 1 << 20:
                await asyncio.sleep(0.005)
        st.record["hostile"] = f"ping-flood {sent}"


async def stats_handler(reader, writer):
    try:
        await reader.readuntil(b"\r\n\r\n")
        body = json.dumps(STATS).encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--stats-port", type=int, required=True)
    ap.add_argument("--name", default="h2-upstream")
    ap.add_argument("--max-streams", type=int, default=100)
    ap.add_argument("--goaway-once", type=int, default=0)
    ap.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    ap.add_argument("--alpn", default="h2", help="the ALPN protocols the TLS server takes, comma-separated")
    args = ap.parse_args()
    ctx = None
    if args.tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*args.tls)
        ctx.set_alpn_protocols(args.alpn.split(","))
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Peer(args), "127.0.0.1", args.port, ssl=ctx,
                                      reuse_address=True, backlog=1024)
    stats = await asyncio.start_server(stats_handler, "127.0.0.1", args.stats_port)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    async with server, stats:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())


class H2Peer:
    """This script as a process, for the tests: `stats()` reads its counters."""

    def __init__(self, name="h2-upstream", max_streams=100, goaway_once=0, tls=None, alpn="h2"):
        import os
        import subprocess
        import sys
        from conftest import free_ports, port_open, wait_until
        self.port, self.stats_port = free_ports(2)
        argv = [sys.executable, os.path.abspath(__file__), "--port", str(self.port),
                "--stats-port", str(self.stats_port), "--name", name,
                "--max-streams", str(max_streams), "--goaway-once", str(goaway_once)]
        if tls:
            argv += ["--tls", tls.cert, tls.key, "--alpn", alpn]
        self.proc = subprocess.Popen(argv)
        # The stats port opens after the main one: probing the main port would count as a
        # connection.
        wait_until(lambda: self.proc.poll() is None and port_open(self.stats_port),
                   what=f"h2 peer {name}")
        self.name = name

    def stats(self):
        import urllib.request
        with urllib.request.urlopen(f"http://127.0.0.1:{self.stats_port}/", timeout=5) as r:
            return json.loads(r.read())

    def stop(self):
        import subprocess
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
