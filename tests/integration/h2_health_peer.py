"""Targets for test_health_h2.py's http2 and grpc health checks, run in the test's process so
that a test can change their answer while remora checks them.

GrpcHealth   a real gRPC server (python3-grpcio) serving /grpc.health.v1.Health/Check from a
             generic handler with identity (bytes) serializers: no protoc, no grpc_health
             module. `reply` is the HealthCheckResponse's bytes (b"\\x08\\x01" SERVING,
             b"\\x08\\x02" NOT_SERVING, b"" UNKNOWN); `abort` a grpc.StatusCode to fail with;
             another `service` name leaves the health method unimplemented.
H2Peer       an HTTP/2 server (python3-h2, one thread per connection), plaintext with prior
             knowledge or TLS with ALPN, in one of these modes:
               ok             answers every request with `status` (and a short body)
               silent         reads, acknowledges SETTINGS, never answers
               huge_headers   a head of 40 fields of 4 KiB each (160 KiB of headers)
               endless_headers  a head that never ends: HEADERS without END_HEADERS, then
                              CONTINUATION frames of small fields (a CONTINUATION flood)
               endless_data   a gRPC-looking head (200, application/grpc), then DATA for as
                              long as flow control lets it, and waits for more window
               goaway         GOAWAY (last stream 0) at once, and keeps the connection open
             It records each request's headers in `requests`.
"""
import socket
import ssl
import threading
from concurrent import futures

import grpc
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import hpack

from h2_wire import CONTINUATION, HEADERS, frame

HEALTH_SERVICE = "grpc.health.v1.Health"
SERVING, NOT_SERVING, UNKNOWN = b"\x08\x01", b"\x08\x02", b""


class GrpcHealth:
    def __init__(self, reply=SERVING, cert=None, service=HEALTH_SERVICE):
        self.reply, self.abort, self.calls = reply, None, 0
        handler = grpc.method_handlers_generic_handler(service, {
            "Check": grpc.unary_unary_rpc_method_handler(self._check)})  # bytes in, bytes out
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=[handler])
        if cert:
            with open(cert.key, "rb") as k, open(cert.cert, "rb") as c:
                creds = grpc.ssl_server_credentials([(k.read(), c.read())])
            self.port = self.server.add_secure_port("127.0.0.1:0", creds)
        else:
            self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def _check(self, request, context):
        self.calls += 1
        if request != b"":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "expected an empty HealthCheckRequest")
        if self.abort is not None:
            context.abort(self.abort, "told to fail")
        return self.reply

    def stop(self):
        self.server.stop(0).wait(5)


class H2Peer:
    def __init__(self, mode="ok", status=200, cert=None, alpn=("h2",)):
        self.mode, self.status, self.requests = mode, status, []
        self.tls = None
        if cert:
            self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.tls.load_cert_chain(cert.cert, cert.key)
            self.tls.set_alpn_protocols(list(alpn))
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.lsock.settimeout(0.1)
        self.port = self.lsock.getsockname()[1]
        self.stopping = False
        self.conns = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.stopping:
            try:
                raw, _ = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw):
        raw.settimeout(10)
        try:
            sock = self.tls.wrap_socket(raw, server_side=True) if self.tls else raw
            with self.lock:
                self.conns.append(sock)
            conn = h2.connection.H2Connection(h2.config.H2Configuration(
                client_side=False, header_encoding="utf-8", validate_outbound_headers=False))
            conn.initiate_connection()
            if self.mode == "goaway":
                conn.close_connection(last_stream_id=0)
            sock.sendall(conn.data_to_send())
            while not self.stopping:
                data = sock.recv(65536)
                if not data:
                    return
                raw_out = b"".join(self._on_event(conn, e) for e in conn.receive_data(data))
                sock.sendall(conn.data_to_send() + raw_out)
        except (OSError, ssl.SSLError, h2.exceptions.ProtocolError):
            pass  # the probe hung up (it does once it has a verdict), or spoke something else
        finally:
            raw.close()

    def _on_event(self, conn, event):
        """Answers a request through `conn`; returns frames made by hand, to send after."""
        if not isinstance(event, h2.events.RequestReceived):
            return b""
        self.requests.append(dict(event.headers))
        if self.mode == "endless_headers":
            enc = hpack.Encoder()  # conn's own encoder sends no header block on this connection
            more = enc.encode([("x-more", "y" * 16)])
            return frame(HEADERS, 0, event.stream_id, enc.encode([(":status", "200")])) + \
                b"".join(frame(CONTINUATION, 0, event.stream_id, more) for _ in range(64))
        self._answer(conn, event.stream_id)
        return b""

    def _answer(self, conn, stream):
        if self.mode == "ok":
            conn.send_headers(stream, [(":status", str(self.status)), ("content-type", "text/plain")])
            conn.send_data(stream, b"checked\n", end_stream=True)
        elif self.mode == "huge_headers":
            fields = [(f"x-filler-{i}", "f" * 4096) for i in range(40)]
            conn.send_headers(stream, [(":status", "200")] + fields)
        elif self.mode == "endless_data":
            conn.send_headers(stream, [(":status", "200"), ("content-type", "application/grpc")])
            self._pour(conn, stream)

    @staticmethod
    def _pour(conn, stream):
        """DATA until the window is spent: the probe never reopens it, so this is the most a
        target can make it read."""
        while True:
            n = min(conn.local_flow_control_window(stream), conn.max_outbound_frame_size, 4096)
            if n <= 0:
                return
            conn.send_data(stream, b"\x00" * n)

    def stop(self):
        self.stopping = True
        self.thread.join(5)
        self.lsock.close()
        with self.lock:
            for s in self.conns:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
