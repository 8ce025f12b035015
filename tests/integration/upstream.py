#!/usr/bin/python3
"""A real HTTP/1.1 upstream for the integration tests, with behaviour chosen by path.

It speaks HTTP/1.1 keep-alive itself (its own small parser, so that it can also misbehave on
purpose) and counts what it sees; tests read the counts from GET /_stats on it directly.

Paths:
  /echo                 200, JSON: method, target, headers, body length and sha256
  /status/N             status N (no body for 1xx/204/304)
  /bytes/N              N bytes; ?chunked=1 chunked, ?close=1 delimited by close (HTTP/1.0 style)
  /sleep/MS             answer after MS milliseconds
  /die-mid-response     promise 1 MB, send 1000 bytes, close
  /die-before-response  close without answering
  /malformed            an invalid status line
  /ws                   101 Switching Protocols, then echo every byte (a tunnel)
  /upload               read the body (any framing), answer its length and sha256
  /slow-upload/MS       read nothing for MS milliseconds, then the body; answer its length
  /early-413            answer 413 at once without reading the body, then close
  /stale-on-reuse       on a connection's first request 200; on a later one, close unanswered
                        (a keep-alive timeout racing the request)
  /fail-once/KEY/N      the first request for KEY answers N (a status, or "reset" to close
                        unanswered); later ones echo like /echo
  /slow-once/KEY/MS     the first request for KEY waits MS ms before answering; later ones at once
  /_stats               counters (neither it nor its connection is counted)
"""
import argparse
import asyncio
import hashlib
import json
import signal

SEEN = set()  # keys of /fail-once and /slow-once
STATS = {"connections": 0, "requests": 0, "aborted_uploads": 0, "open": 0, "completed_uploads": 0,
         "receiving": 0, "stale_closes": 0}
HEAD_LIMIT = 256 * 1024


class BadRequest(Exception):
    pass


async def read_head(reader):
    data = await reader.readuntil(b"\r\n\r\n")
    if len(data) > HEAD_LIMIT:
        raise BadRequest("head too large")
    lines = data[:-4].decode("latin-1").split("\r\n")
    method, target, version = lines[0].split(" ", 2)
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append((name, value.strip()))
    return method, target, version, headers


def header(headers, name):
    for k, v in headers:
        if k.lower() == name:
            return v
    return None


async def body_chunks(reader, headers):
    """Yields the request body as it arrives (Content-Length or chunked)."""
    te = header(headers, "transfer-encoding")
    if te and "chunked" in te.lower():
        while True:
            line = await reader.readuntil(b"\r\n")
            size = int(line.split(b";")[0].strip(), 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                return
            left = size
            while left:
                chunk = await reader.read(min(left, 1 << 16))
                if not chunk:
                    raise asyncio.IncompleteReadError(b"", left)
                left -= len(chunk)
                yield chunk
            await reader.readexactly(2)
    else:
        left = int(header(headers, "content-length") or 0)
        while left:
            chunk = await reader.read(min(left, 1 << 16))
            if not chunk:
                raise asyncio.IncompleteReadError(b"", left)
            left -= len(chunk)
            yield chunk


def response(status, body=b"", headers=(), reason="X"):
    head = [f"HTTP/1.1 {status} {reason}"]
    head += [f"{k}: {v}" for k, v in headers]
    if status >= 200 and status not in (204, 304):
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def send_bytes(writer, n, chunked, close, head=False):
    block = bytes(range(256)) * 256  # 64 KiB
    if chunked:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    elif close:
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
    else:
        writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n".encode())
    left = 0 if head else n  # a response to HEAD has no body (RFC 9110 §9.3.2)
    while left:
        part = block[: min(left, len(block))]
        if chunked:
            writer.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
        else:
            writer.write(part)
        left -= len(part)
        await writer.drain()
    if chunked and not head:
        writer.write(b"0\r\n\r\n")


async def handle_one(reader, writer, args, first):
    """Serves one request; returns False when the connection must close."""
    method, target, version, headers = await read_head(reader)
    path, _, query = target.partition("?")
    if path != "/_stats":
        STATS["requests"] += 1
        if first:
            STATS["connections"] += 1
    parts = path.strip("/").split("/")
    keep = version == "HTTP/1.1" and (header(headers, "connection") or "").lower() != "close"

    if path == "/_stats":
        writer.write(response(200, json.dumps(STATS).encode()))
    elif parts[0] == "status":
        status = int(parts[1])
        async for _ in body_chunks(reader, headers):
            pass
        writer.write(response(status, b"" if status in (204, 304) else b"status body\n"))
    elif parts[0] == "bytes":
        async for _ in body_chunks(reader, headers):
            pass
        close = "close=1" in query
        await send_bytes(writer, int(parts[1]), "chunked=1" in query, close, method == "HEAD")
        if close:
            return False
    elif parts[0] == "sleep":
        async for _ in body_chunks(reader, headers):
            pass
        await asyncio.sleep(int(parts[1]) / 1000)
        writer.write(response(200, b"slept\n"))
    elif path == "/die-mid-response":
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 1000)
        await writer.drain()
        return False
    elif path == "/die-before-response":
        return False
    elif parts[0] == "fail-once" and parts[1] not in SEEN:
        SEEN.add(parts[1])
        async for _ in body_chunks(reader, headers):
            pass
        if parts[2] == "reset":
            return False
        writer.write(response(int(parts[2]), b"failing once\n"))
    elif parts[0] == "slow-once" and parts[1] not in SEEN:
        SEEN.add(parts[1])
        async for _ in body_chunks(reader, headers):
            pass
        await asyncio.sleep(int(parts[2]) / 1000)
        writer.write(response(200, b"slow\n"))
    elif path == "/stale-on-reuse":
        if not first:
            STATS["stale_closes"] += 1
            return False
        writer.write(response(200, b"fresh\n"))
    elif path == "/malformed":
        writer.write(b"HTTP/1.1 2x0 What\r\nContent-Length: 2\r\n\r\nok")
        return False
    elif path == "/ws":
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        await writer.drain()
        while True:
            data = await reader.read(65536)
            if not data:
                return False
            writer.write(data)
            await writer.drain()
    elif parts[0] == "slow-upload":  # reads nothing for MS ms, then the whole body
        await asyncio.sleep(int(parts[1]) / 1000)
        length = 0
        async for chunk in body_chunks(reader, headers):
            length += len(chunk)
        writer.write(response(200, json.dumps({"length": length}).encode()))
    elif path == "/early-413":
        writer.write(response(413, b"too big\n", [("Connection", "close")]))
        await writer.drain()
        return False
    else:  # /echo, /upload and anything else
        digest, length = hashlib.sha256(), 0
        STATS["receiving"] += 1
        try:
            async for chunk in body_chunks(reader, headers):
                digest.update(chunk)
                length += len(chunk)
        except (asyncio.IncompleteReadError, ConnectionError):
            STATS["aborted_uploads"] += 1
            raise
        finally:
            STATS["receiving"] -= 1
        if path == "/upload":
            STATS["completed_uploads"] += 1
        body = json.dumps({"method": method, "target": target, "version": version,
                           "headers": headers, "length": length,
                           "sha256": digest.hexdigest(), "server": args.name}).encode()
        writer.write(response(200, b"" if method == "HEAD" else body,
                              [("Content-Type", "application/json")]))
    await writer.drain()
    return keep


async def serve(reader, writer, args):
    STATS["open"] += 1
    first = True
    try:
        while await handle_one(reader, writer, args, first):
            first = False
    except (asyncio.IncompleteReadError, ConnectionError, BadRequest, ValueError):
        pass
    finally:
        STATS["open"] -= 1
        try:
            writer.close()
        except Exception:
            pass


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--name", default="upstream")
    args = ap.parse_args()
    server = await asyncio.start_server(lambda r, w: serve(r, w, args), args.host, args.port,
                                        limit=HEAD_LIMIT, backlog=4096)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print("ready", flush=True)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        pass
    asyncio.run(main())
