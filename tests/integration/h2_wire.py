"""HTTP/2 peers for test_h2.py: a raw frame client for conformance and abuse (frames built by
hand, byte for byte, so that they can be as wrong as a test needs; HPACK by the hpack module),
and a well-behaved client on python3-h2 for flow control and trailers.

Frames read back are plain objects (type, flags, stream, payload) with the decoded fields of
HEADERS (header blocks are reassembled across CONTINUATION), the error code of RST_STREAM and
GOAWAY, and the increment of WINDOW_UPDATE."""
import socket
import ssl
import struct
import time
import types

import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20

# Error codes (RFC 9113 section 7).
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR, SETTINGS_TIMEOUT, STREAM_CLOSED, \
    FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR, CONNECT_ERROR, \
    ENHANCE_YOUR_CALM = range(12)

# SETTINGS identifiers.
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, \
    MAX_HEADER_LIST_SIZE = range(1, 7)


def frame(ftype, flags, stream, payload=b""):
    """One frame's bytes: the 9-octet header (RFC 9113 section 4.1) and the payload."""
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + \
        struct.pack(">I", stream & 0xFFFFFFFF) + payload


def settings(*pairs, flags=0, stream=0):
    return frame(SETTINGS, flags, stream, b"".join(struct.pack(">HI", k, v) for k, v in pairs))


def ping(data=b"12345678", flags=0, stream=0):
    return frame(PING, flags, stream, data)


def rst(stream, code=CANCEL):
    return frame(RST_STREAM, 0, stream, struct.pack(">I", code))


def window_update(stream, increment):
    return frame(WINDOW_UPDATE, 0, stream, struct.pack(">I", increment))


def goaway(last=0, code=NO_ERROR, stream=0):
    return frame(GOAWAY, 0, stream, struct.pack(">II", last, code))


def data(stream, payload=b"", end=True, flags=0):
    return frame(DATA, flags | (END_STREAM if end else 0), stream, payload)


def request_fields(path="/echo", method="GET", authority="web", scheme="http", extra=()):
    return [(":method", method), (":scheme", scheme), (":authority", authority),
            (":path", path), *extra]


class RawH2:
    """One client connection speaking raw frames. `tls`: an ssl.SSLContext (ALPN h2 is
    offered); `preface`: send the connection preface and an empty SETTINGS at once;
    `ack`: acknowledge the server's SETTINGS and PINGs as they come (a conforming client does);
    `rcvbuf`: a small receive buffer, for a client that reads nothing."""

    def __init__(self, port, tls=None, server_hostname=None, preface=True, client_settings=(),
                 ack=True, rcvbuf=None, timeout=5.0):
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        raw.settimeout(timeout)
        raw.connect(("127.0.0.1", port))
        if tls:
            raw = tls.wrap_socket(raw, server_hostname=server_hostname)
        self.sock = raw
        self.enc = hpack.Encoder()
        self.dec = hpack.Decoder()
        self.dec.max_header_list_size = 1 << 30
        self.buf = b""
        self.ack = ack
        self.eof = False
        self.frames = []  # everything read, in order
        self.server_settings = {}
        self._block = None  # a header block being reassembled: (frame, bytes)
        if preface:
            self.send(PREFACE + settings(*client_settings))

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, *chunks):
        self.sock.sendall(b"".join(chunks))

    def block(self, fields):
        """An HPACK header block for `fields` (this connection's encoder state)."""
        return self.enc.encode(fields)

    def headers(self, stream, fields, end_stream=True, end_headers=True, raw_block=None):
        block = self.block(fields) if raw_block is None else raw_block
        flags = (END_STREAM if end_stream else 0) | (END_HEADERS if end_headers else 0)
        return frame(HEADERS, flags, stream, block)

    def request(self, stream, path="/echo", method="GET", authority="web", extra=(), body=None):
        """Send a request; `body` (bytes) follows as one DATA frame."""
        fields = request_fields(path, method, authority, extra=extra)
        if body is None:
            self.send(self.headers(stream, fields))
        else:
            self.send(self.headers(stream, fields, end_stream=False), data(stream, body))

    # ---- reading ----

    def _fill(self, deadline):
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except (socket.timeout, ssl.SSLWantReadError):
                return False
            except (ConnectionResetError, BrokenPipeError, ssl.SSLError, OSError):
                self.eof = True
                return False
            if not chunk:
                self.eof = True
                return False
            self.buf += chunk
            return True

    def read_frame(self, timeout=5.0):
        """The next frame, or None when the connection ended or nothing came in time."""
        deadline = time.monotonic() + timeout
        while True:
            if len(self.buf) >= 9:
                length = int.from_bytes(self.buf[:3], "big")
                if len(self.buf) >= 9 + length:
                    f = self._parse(self.buf[:9 + length])
                    self.buf = self.buf[9 + length:]
                    if f is not None:
                        return f
                    continue
            if self.eof or not self._fill(deadline):
                return None

    def _parse(self, raw):
        ftype, flags = raw[3], raw[4]
        stream = int.from_bytes(raw[5:9], "big") & 0x7FFFFFFF
        payload = raw[9:]
        f = types.SimpleNamespace(type=ftype, flags=flags, stream=stream, payload=payload,
                                  fields=None, code=None, increment=None, last=None)
        if ftype in (RST_STREAM, GOAWAY) and len(payload) >= 4:
            if ftype == GOAWAY:
                f.last = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
                f.code = int.from_bytes(payload[4:8], "big")
            else:
                f.code = int.from_bytes(payload[:4], "big")
        elif ftype == PING and not flags & ACK and self.ack and len(payload) == 8:
            self.send(ping(payload, flags=ACK))
        elif ftype == WINDOW_UPDATE and len(payload) == 4:
            f.increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
        elif ftype == SETTINGS and not flags & ACK:
            for i in range(0, len(payload) - 5, 6):
                k, v = struct.unpack(">HI", payload[i:i + 6])
                self.server_settings[k] = v
            if self.ack:
                self.send(settings(flags=ACK))
        elif ftype in (HEADERS, CONTINUATION):
            if ftype == HEADERS:
                block = payload
                if flags & PADDED:
                    block = block[1:len(block) - block[0]]
                if flags & PRIORITY_FLAG:
                    block = block[5:]
                self._block = (f, block)
            elif self._block:
                self._block = (self._block[0], self._block[1] + payload)
            if not flags & END_HEADERS:
                return None
            first, block = self._block
            self._block = None
            first.fields = [(k.decode() if isinstance(k, bytes) else k,
                             v.decode() if isinstance(v, bytes) else v)
                            for k, v in self.dec.decode(block, raw=True)]
            first.flags |= flags & END_HEADERS
            self.frames.append(first)
            return first
        self.frames.append(f)
        return f

    def until(self, pred, timeout=5.0):
        """Frames read until one satisfies pred (returned), or None at the end or timeout."""
        deadline = time.monotonic() + timeout
        while True:
            f = self.read_frame(max(0.0, deadline - time.monotonic()))
            if f is None or pred(f):
                return f

    def goaway(self, timeout=5.0):
        """The GOAWAY the server sends (None if the connection ended, or time ran out, without
        one)."""
        return self.until(lambda f: f.type == GOAWAY, timeout)

    def stream_error(self, stream, timeout=5.0):
        """An RST_STREAM for `stream`, or a GOAWAY: whichever ends it first."""
        return self.until(lambda f: f.type == GOAWAY or (f.type == RST_STREAM and
                                                         f.stream == stream), timeout)

    def response(self, stream, timeout=5.0, window=True):
        """The response on `stream`: status, fields, body, trailers, and how it ended ("end",
        "reset", "goaway" or "eof"). Reading credits the windows back when `window`."""
        out = types.SimpleNamespace(status=None, fields=[], body=b"", trailers=None, end=None,
                                    code=None, interim=[])
        deadline = time.monotonic() + timeout
        while out.end is None:
            f = self.read_frame(max(0.0, deadline - time.monotonic()))
            if f is None:
                out.end = "eof" if self.eof else "timeout"
            elif f.type == GOAWAY:
                out.end, out.code = "goaway", f.code
            elif f.stream != stream:
                if f.type == DATA and window and f.payload:
                    self.send(window_update(0, len(f.payload)))
                continue
            elif f.type == RST_STREAM:
                out.end, out.code = "reset", f.code
            elif f.type == HEADERS:
                status = dict(f.fields).get(":status")
                if out.status is None and status and status.startswith("1"):
                    out.interim.append(status)
                elif out.status is None:
                    out.status = int(status) if status else None
                    out.fields = f.fields
                else:
                    out.trailers = f.fields
                if f.flags & END_STREAM:
                    out.end = "end"
            elif f.type == DATA:
                payload = f.payload
                if f.flags & PADDED:
                    payload = payload[1:len(payload) - payload[0]]
                out.body += payload
                if window and f.payload:
                    self.send(window_update(0, len(f.payload)), window_update(stream,
                                                                             len(f.payload)))
                if f.flags & END_STREAM:
                    out.end = "end"
        return out

    def closed(self, timeout=5.0):
        """Whether the server closed the connection within `timeout` (frames before are read)."""
        deadline = time.monotonic() + timeout
        while not self.eof and time.monotonic() < deadline:
            self.read_frame(max(0.0, deadline - time.monotonic()))
        return self.eof


class H2Client:
    """A conforming HTTP/2 client (python3-h2) over one connection, driven by hand: several
    streams at once, flow control honoured, request trailers."""

    def __init__(self, port, tls=None, server_hostname=None, timeout=10.0):
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock = tls.wrap_socket(raw, server_hostname=server_hostname) if tls else raw
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        self.streams = {}
        self.ended = False
        self.flush()

    def flush(self):
        out = self.conn.data_to_send()
        if out:
            self.sock.sendall(out)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def _stream(self, sid):
        return self.streams.setdefault(sid, types.SimpleNamespace(
            status=None, headers=[], body=bytearray(), trailers=None, done=False, reset=None))

    def pump(self, timeout=0.05):
        """Read what is there (up to `timeout`) and handle its events."""
        self.sock.settimeout(timeout)
        try:
            chunk = self.sock.recv(65536)
        except (socket.timeout, ssl.SSLWantReadError):
            return
        if not chunk:
            self.ended = True
            return
        for ev in self.conn.receive_data(chunk):
            if isinstance(ev, h2.events.ResponseReceived):
                st = self._stream(ev.stream_id)
                st.headers = ev.headers
                st.status = int(dict(ev.headers)[":status"])
            elif isinstance(ev, h2.events.DataReceived):
                self._stream(ev.stream_id).body += ev.data
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.TrailersReceived):
                self._stream(ev.stream_id).trailers = ev.headers
            elif isinstance(ev, h2.events.StreamEnded):
                self._stream(ev.stream_id).done = True
            elif isinstance(ev, h2.events.StreamReset):
                st = self._stream(ev.stream_id)
                st.reset, st.done = ev.error_code, True
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.ended = True
        self.flush()

    def start(self, path, method="GET", authority="web", headers=(), end=True):
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, [(":method", method), (":scheme", "http"),
                                     (":authority", authority), (":path", path), *headers],
                               end_stream=end)
        self._stream(sid)
        self.flush()
        return sid

    def send_some(self, sid, data):
        """Send as much of `data` as the stream's window allows now; returns what is left."""
        room = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
        while data and room > 0:
            part, data = data[:room], data[room:]
            self.conn.send_data(sid, part)
            room = min(self.conn.local_flow_control_window(sid),
                       self.conn.max_outbound_frame_size)
        self.flush()
        return data

    def finish(self, sid, trailers=None):
        if trailers:
            self.conn.send_headers(sid, trailers, end_stream=True)
        else:
            self.conn.end_stream(sid)
        self.flush()

    def wait(self, sid, timeout=10.0):
        deadline = time.monotonic() + timeout
        st = self._stream(sid)
        while not st.done and not self.ended and time.monotonic() < deadline:
            self.pump()
        return st

    def request(self, path, method="GET", body=b"", trailers=None, headers=(),
                authority="web", timeout=10.0):
        ended = not body and not trailers
        sid = self.start(path, method, authority, headers, end=ended)
        deadline = time.monotonic() + timeout
        while body and time.monotonic() < deadline and not self.ended:
            body = self.send_some(sid, body)
            if body:
                self.pump()
        if not ended and not self._stream(sid).done:
            self.finish(sid, trailers)
        return self.wait(sid, max(0.1, deadline - time.monotonic()))
