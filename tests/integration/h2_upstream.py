#!/usr/bin/python3
"""An HTTP/1.1 upstream for test_h2.py, for what upstream.py does not do: it shows the
request's trailers and sends trailers back, and it reads request bodies slowly through a small
receive buffer (so that backpressure reaches remora at once, not after megabytes of kernel
buffering).

Paths:
  /trailers           reads the body (any framing); answers chunked, the body a JSON document
                      (method, headers, trailers, body length), with trailers of its own:
                      x-upstream-trailer: done, and x-echo-NAME: VALUE for each request trailer
  /slow-upload/MS[/US]  waits MS ms before reading the body, then reads it 16 KiB at a time with
                      a pause of US microseconds (default 2000) between reads; answers its
                      length and sha256 (JSON)
  /_stats             {"requests": N, "reading": N}
"""
import argparse
import asyncio
import hashlib
import json
import signal
import socket

STATS = {"requests": 0, "reading": 0}


async def read_head(reader):
    data = await reader.readuntil(b"\r\n\r\n")
    lines = data[:-4].decode("latin-1").split("\r\n")
    method, target, version = lines[0].split(" ", 2)
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append((name, value.strip()))
    return method, target, headers


def header(headers, name):
    for k, v in headers:
        if k.lower() == name:
            return v
    return None


async def read_body(reader, headers, chunk=65536, pause=0.0):
    """(body bytes as a hash and a length, trailers) of a request."""
    digest, length, trailers = hashlib.sha256(), 0, []
    te = header(headers, "transfer-encoding")
    if te and "chunked" in te.lower():
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
            if size == 0:
                while True:
                    line = await reader.readuntil(b"\r\n")
                    if line == b"\r\n":
                        return digest, length, trailers
                    name, _, value = line.decode("latin-1").partition(":")
                    trailers.append((name.strip(), value.strip()))
            while size:
                part = await reader.readexactly(min(size, chunk))
                digest.update(part)
                length += len(part)
                size -= len(part)
                if pause:
                    await asyncio.sleep(pause)
            await reader.readexactly(2)
    left = int(header(headers, "content-length") or 0)
    while left:
        part = await reader.read(min(left, chunk))
        if not part:
            raise asyncio.IncompleteReadError(b"", left)
        digest.update(part)
        length += len(part)
        left -= len(part)
        if pause:
            await asyncio.sleep(pause)
    return digest, length, trailers


def chunk(data):
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


async def handle(reader, writer):
    method, target, headers = await read_head(reader)
    path = target.split("?")[0]
    parts = path.strip("/").split("/")
    if path == "/_stats":
        body = json.dumps(STATS).encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
        return True
    STATS["requests"] += 1
    if parts[0] == "slow-upload":
        await asyncio.sleep(int(parts[1]) / 1000)
        STATS["reading"] += 1
        try:
            pause = int(parts[2]) / 1e6 if len(parts) > 2 else 0.002
            digest, length, _ = await read_body(reader, headers, chunk=16384, pause=pause)
        finally:
            STATS["reading"] -= 1
        body = json.dumps({"length": length, "sha256": digest.hexdigest()}).encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body)
    else:  # /trailers and anything else
        digest, length, trailers = await read_body(reader, headers)
        body = json.dumps({"method": method, "target": target, "headers": headers,
                           "trailers": trailers, "length": length,
                           "sha256": digest.hexdigest()}).encode()
        echo = "".join(f"x-echo-{k}: {v}\r\n" for k, v in trailers)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\nTrailer: x-upstream-trailer\r\n\r\n" +
                     chunk(body[:10]) + chunk(body[10:]) + b"0\r\n" +
                     f"x-upstream-trailer: done\r\n{echo}\r\n".encode())
    await writer.drain()
    return True


async def serve(reader, writer):
    try:
        while await handle(reader, writer):
            pass
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)  # inherited by accepted ones
    sock.bind(("127.0.0.1", args.port))
    server = await asyncio.start_server(serve, sock=sock, limit=1 << 20)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
