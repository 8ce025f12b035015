"""Byte-exact HTTP/1.1 over a socket: what the tests send is exactly what goes on the wire, and
responses are read one by one (for pipelining) with their framing checked."""
import socket


class Response:
    def __init__(self, status, reason, headers, body, complete):
        self.status, self.reason, self.headers, self.body = status, reason, headers, body
        self.complete = complete

    def header(self, name):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def header_all(self, name):
        return [v for k, v in self.headers if k.lower() == name.lower()]


class Conn:
    def __init__(self, port, timeout=10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = bytearray()  # appended to in place: a 32 MiB body is not copied per read

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError
        self.buf += data

    def _line(self):
        while (end := self.buf.find(b"\r\n")) < 0:
            self._fill()
        line = bytes(self.buf[:end])
        del self.buf[:end + 2]
        return line

    def _exact(self, n):
        while len(self.buf) < n:
            self._fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_response(self, head_request=False):
        """Reads one response; `complete` is False when the connection ended inside the body."""
        status_line = self._line().decode("latin-1")
        version, status, reason = (status_line.split(" ", 2) + [""])[:3]
        headers = []
        while True:
            line = self._line()
            if not line:
                break
            k, _, v = line.decode("latin-1").partition(":")
            headers.append((k, v.strip()))
        r = Response(int(status), reason, headers, b"", True)
        code = int(status)
        if head_request or code < 200 or code in (204, 304):
            return r
        try:
            te = r.header("transfer-encoding")
            if te and "chunked" in te.lower():
                body = b""
                while True:
                    size = int(self._line().split(b";")[0], 16)
                    if size == 0:
                        while self._line():
                            pass
                        break
                    body += self._exact(size)
                    self._exact(2)
                r.body = body
            elif r.header("content-length") is not None:
                r.body = self._exact(int(r.header("content-length")))
            else:
                while True:
                    try:
                        self._fill()
                    except EOFError:
                        break
                r.body, self.buf = bytes(self.buf), bytearray()
        except EOFError:
            r.body, r.complete = bytes(self.buf), False
        return r

    def closed_by_peer(self, timeout=5.0):
        """True when the peer closes the connection (EOF or reset) within `timeout`."""
        self.sock.settimeout(timeout)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True
                self.buf += data
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False

    def close(self):
        self.sock.close()


def request(method, target, host="cart.shop.local", headers=(), body=None, version="HTTP/1.1"):
    lines = [f"{method} {target} {version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += [f"{k}: {v}" for k, v in headers]
    if body is not None and not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in headers):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")
