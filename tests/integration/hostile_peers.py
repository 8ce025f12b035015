"""Peers for test_hostile.py that see or send exactly the bytes on the wire.

RawUpstream is a TCP server that records every byte each connection carries, so a test can
prove that nothing (not even part of a refused request) reached the upstream, or that what
did reach it parses as exactly the requests it should. Its behaviour per connection is a
handler function; the default answers each complete request with a small 200.
"""
import errno
import select
import socket
import threading
import time

from conftest import wait_until


class Request:
    """One request as the upstream parsed it from the bytes it received."""

    def __init__(self, method, target, version, headers, body):
        self.method, self.target, self.version = method, target, version
        self.headers, self.body = headers, body

    def header_all(self, name):
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def header(self, name):
        values = self.header_all(name)
        return values[0] if values else None

    def __repr__(self):
        return f"Request({self.method} {self.target} {self.version}, {self.headers}, {self.body!r})"


class Incomplete(Exception):
    """More bytes are needed before a request can be parsed."""


def _chunked(data, pos):
    """Decodes a chunked body starting at data[pos:]; returns (body, end position)."""
    body = b""
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            raise Incomplete
        size = int(data[pos:eol].split(b";")[0].strip(), 16)
        pos = eol + 2
        if size == 0:
            while True:  # trailer section, up to an empty line
                eol = data.find(b"\r\n", pos)
                if eol < 0:
                    raise Incomplete
                line, pos = data[pos:eol], eol + 2
                if not line:
                    return body, pos
        if len(data) < pos + size + 2:
            raise Incomplete
        body += data[pos:pos + size]
        if data[pos + size:pos + size + 2] != b"\r\n":
            raise ValueError("chunk data not followed by CRLF")
        pos += size + 2


def parse_one(data):
    """Parses the first request in `data`: (Request, bytes after it). Raises Incomplete, or
    ValueError for bytes that are no request."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        raise Incomplete
    lines = data[:end].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise ValueError(f"bad request line {lines[0]!r}")
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon:
            raise ValueError(f"bad field line {line!r}")
        headers.append((name, value.strip(" \t")))
    req = Request(*parts, headers, b"")
    pos = end + 4
    te = ",".join(req.header_all("transfer-encoding"))
    if te:
        if te.split(",")[-1].strip().lower() != "chunked":
            raise ValueError(f"request framing not chunked: {te!r}")
        req.body, pos = _chunked(data, pos)
    elif req.header("content-length") is not None:
        n = int(req.header("content-length"))
        if len(data) < pos + n:
            raise Incomplete
        req.body, pos = data[pos:pos + n], pos + n
    return req, data[pos:]


def parse_requests(data):
    """Every complete request in `data`, in order, and the bytes left over (an incomplete or
    unparsable tail)."""
    out = []
    while data:
        try:
            req, data = parse_one(data)
        except (Incomplete, ValueError):
            break
        out.append(req)
    return out, data


class PeerConn:
    """The upstream's side of one connection; every byte received is recorded."""

    def __init__(self, sock, record):
        self.sock, self.record = sock, record

    def recv(self, n=65536):
        data = self.sock.recv(n)
        with self.record.lock:
            if data:
                self.record.data += data
            else:
                self.record.eof = True
        return data

    def sendall(self, data):
        self.sock.sendall(data)


class Record:
    def __init__(self):
        self.lock = threading.Lock()
        self.data = b""
        self.eof = False     # the peer (remora) closed or half-closed its side
        self.closed = False  # the handler has finished and the socket is closed


def answer_each_request(status=200, body=b"ok\n"):
    """The default handler: answers every complete request with `status` and `body`, in order;
    bytes that never make a complete request are only recorded."""

    def handler(conn):
        buf = b""
        while True:
            data = conn.recv()
            if not data:
                return
            buf += data
            while True:
                try:
                    req, buf = parse_one(buf)
                except Incomplete:
                    break
                except ValueError:
                    buf = b""  # garbage: never answered
                    break
                head = f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                conn.sendall(head + (b"" if req.method == "HEAD" else body))

    return handler


class RawUpstream:
    def __init__(self, handler=None):
        self.handler = handler or answer_each_request()
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(128)
        self.port = self.listener.getsockname()[1]
        self.records, self.socks, self.threads = [], [], []
        self.lock = threading.Lock()
        self.stopped = False
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def _accept(self):
        while not self.stopped:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            rec = Record()
            t = threading.Thread(target=self._serve, args=(sock, rec), daemon=True)
            with self.lock:
                if self.stopped:
                    sock.close()
                    return
                self.records.append(rec)
                self.socks.append(sock)
                self.threads.append(t)
            t.start()

    def _serve(self, sock, rec):
        try:
            self.handler(PeerConn(sock, rec))
        except (OSError, ValueError):
            pass
        finally:
            rec.closed = True
            sock.close()

    def connections(self):
        with self.lock:
            return len(self.records)

    def received(self):
        """Every byte received, connection after connection."""
        with self.lock:
            return b"".join(r.data for r in self.records)

    def all_closed(self):
        with self.lock:
            return all(r.closed for r in self.records)

    def stop(self):
        with self.lock:
            self.stopped = True
            socks, threads = list(self.socks), list(self.threads)
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.acceptor.join(2)
        for t in threads:
            t.join(2)


def settle(remora, *ups):
    """Stops remora (SIGTERM, exit 0 expected) and waits until every upstream connection it had
    is closed: what the upstreams recorded is then all they will ever receive."""
    code = remora.stop()
    assert code == 0, f"remora exited with {code}:\n{remora.read_log()[-3000:]}"
    for u in ups:
        wait_until(u.all_closed, timeout=5, what="upstream connections closed")


def fast_fail_address(candidates=("224.0.0.1", "255.255.255.255")):
    """An IPv4 address to which a non-blocking TCP connect fails at once (not EINPROGRESS) on
    this machine, as libuv's uv_tcp_connect then returns the error synchronously."""
    for ip in candidates:
        s = socket.socket()
        s.setblocking(False)
        try:
            rc = s.connect_ex((ip, 9))
        finally:
            s.close()
        if rc not in (0, errno.EINPROGRESS, errno.EAGAIN):
            return ip
    raise AssertionError(f"no address in {candidates} fails to connect at once here")


def recv_until_closed(sock, timeout):
    """Reads until the peer closes; returns (bytes, closed) where closed is False when the
    deadline passed first. A reset counts as closed."""
    sock.setblocking(False)
    data, deadline = b"", time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return data, False
            r, _, _ = select.select([sock], [], [], left)
            if not r:
                continue
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return data, True
            if not chunk:
                return data, True
            data += chunk
    finally:
        sock.setblocking(True)
