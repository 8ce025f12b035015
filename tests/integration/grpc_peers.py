"""gRPC peers for test_grpc.py on Debian's python3-grpcio, without protoc: generic handlers and
multi-callables carry raw bytes (identity serializers), so a "message" is whatever bytes a
test sends. A server answers every path; what it does depends on the method name (the last
path segment) and on the call's metadata, so one server serves every test:

  Unary         b"NAME:METHOD:" + the request
  ServerStream  the request is a count N (ASCII); N messages b"NAME:i"
  ClientStream  one message b"NAME:COUNT:SHA256" over the messages received
  Bidi          b"NAME:" + each message, as each arrives
  Sleep         the request is MS (ASCII): waits up to MS ms while the call is active, then
                answers b"NAME:slept"; records the deadline it was given and whether the call
                was cancelled before it was done
Metadata that makes a server fail:
  x-fail: NAMES            the servers named (comma-separated, or "*") abort at once with
                           x-fail-code (default UNAVAILABLE): grpcio then answers Trailers-Only
  x-fail-after-first: NAMES  ServerStream: after its first message, abort UNAVAILABLE (the
                           status comes in trailers, after a message)
Every response carries the initial metadata x-server: NAME. `calls` records each call
(method path, metadata, the time remaining when it arrived, how it ended)."""
import hashlib
import threading
import time
from concurrent import futures

import grpc

IDENTITY = dict(request_deserializer=None, response_serializer=None)


def _names(value):
    return {v.strip() for v in (value or "").split(",") if v.strip()}


class GrpcServer:
    def __init__(self, name, port=0, host="127.0.0.1", workers=32):
        self.name = name
        self.calls = []
        self.lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(workers),
                                  options=[("grpc.so_reuseport", 0)])
        self.server.add_generic_rpc_handlers([_Handler(self)])
        self.port = self.server.add_insecure_port(f"{host}:{port}")
        assert self.port, f"gRPC server {name} could not bind {host}:{port}"
        self.server.start()

    def stop(self):
        self.server.stop(0).wait(5)

    def count(self, method=None):
        with self.lock:
            return sum(1 for c in self.calls if method is None or c["method"].endswith("/" + method))

    def _record(self, method, context):
        md = dict(context.invocation_metadata())
        rec = {"method": method, "metadata": md, "time_remaining": context.time_remaining(),
               "cancelled": None, "done": False, "at": time.monotonic()}
        with self.lock:
            self.calls.append(rec)
        return rec

    def _fail(self, context, md, rec):
        if self.name in _names(md.get("x-fail")) or "*" in _names(md.get("x-fail")):
            code = grpc.StatusCode[md.get("x-fail-code", "UNAVAILABLE")]
            rec["done"] = "failed"
            context.abort(code, f"{self.name} fails on purpose")


class _Handler(grpc.GenericRpcHandler):
    def __init__(self, srv):
        self.srv = srv

    def service(self, details):
        method = details.method
        kind = method.rsplit("/", 1)[-1]
        srv = self.srv
        if kind == "ServerStream":
            def server_stream(request, context):
                rec = srv._record(method, context)
                md = rec["metadata"]
                srv._fail(context, md, rec)
                context.send_initial_metadata((("x-server", srv.name),))
                for i in range(int(request or b"1")):
                    yield f"{srv.name}:{i}".encode()
                    if i == 0 and (srv.name in _names(md.get("x-fail-after-first")) or
                                   "*" in _names(md.get("x-fail-after-first"))):
                        rec["done"] = "failed-after-first"
                        context.abort(grpc.StatusCode.UNAVAILABLE, f"{srv.name} fails after one")
                rec["done"] = True
            return grpc.unary_stream_rpc_method_handler(server_stream, **IDENTITY)

        if kind == "ClientStream":
            def client_stream(request_iterator, context):
                rec = srv._record(method, context)
                srv._fail(context, rec["metadata"], rec)
                context.send_initial_metadata((("x-server", srv.name),))
                digest, n = hashlib.sha256(), 0
                for msg in request_iterator:
                    digest.update(msg)
                    n += 1
                rec["done"] = True
                return f"{srv.name}:{n}:{digest.hexdigest()}".encode()
            return grpc.stream_unary_rpc_method_handler(client_stream, **IDENTITY)

        if kind == "Bidi":
            def bidi(request_iterator, context):
                rec = srv._record(method, context)
                srv._fail(context, rec["metadata"], rec)
                context.send_initial_metadata((("x-server", srv.name),))
                for msg in request_iterator:
                    yield srv.name.encode() + b":" + msg
                rec["done"] = True
            return grpc.stream_stream_rpc_method_handler(bidi, **IDENTITY)

        if kind == "Sleep":
            def sleep(request, context):
                rec = srv._record(method, context)
                srv._fail(context, rec["metadata"], rec)
                end = time.monotonic() + int(request or b"1000") / 1000
                while time.monotonic() < end and context.is_active():
                    time.sleep(0.01)
                rec["cancelled"] = not context.is_active()
                rec["ended_at"] = time.monotonic()
                rec["done"] = True
                context.send_initial_metadata((("x-server", srv.name),))
                return f"{srv.name}:slept".encode()
            return grpc.unary_unary_rpc_method_handler(sleep, **IDENTITY)

        def unary(request, context):
            rec = srv._record(method, context)
            srv._fail(context, rec["metadata"], rec)
            context.send_initial_metadata((("x-server", srv.name),))
            rec["done"] = True
            return f"{srv.name}:{kind}:".encode() + request
        return grpc.unary_unary_rpc_method_handler(unary, **IDENTITY)


def channel(port, authority):
    """A channel to 127.0.0.1:port with `authority` as :authority (what remora's egress routes
    by); no HTTP proxy from the environment, no client-side retries."""
    opts = [("grpc.default_authority", authority), ("grpc.enable_http_proxy", 0),
            ("grpc.enable_retries", 0)]
    return grpc.insecure_channel(f"127.0.0.1:{port}", options=opts)


def unary(ch, path, request=b"hi", **kw):
    """(response bytes, initial metadata as a dict) or raises grpc.RpcError."""
    resp, call = ch.unary_unary(path, request_serializer=None,
                                response_deserializer=None).with_call(request, **kw)
    return resp, dict(call.initial_metadata())


def server_stream(ch, path, request=b"3", **kw):
    return ch.unary_stream(path, request_serializer=None, response_deserializer=None)(request, **kw)


def client_stream(ch, path, messages, **kw):
    resp, call = ch.stream_unary(path, request_serializer=None,
                                 response_deserializer=None).with_call(iter(messages), **kw)
    return resp, dict(call.initial_metadata())


def bidi(ch, path, messages, **kw):
    return ch.stream_stream(path, request_serializer=None, response_deserializer=None)(
        iter(messages), **kw)


def grpc_frame(msg):
    """One length-prefixed message (uncompressed), as on the wire."""
    return b"\0" + len(msg).to_bytes(4, "big") + msg
