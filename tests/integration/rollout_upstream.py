#!/usr/bin/python3
"""A stand-in service version for the rollout tests and the `make run` demo: HTTP/1.1
keep-alive, every request answered 200 with the version's name, except that

  --fail-every N   every Nth request answers 500 (deterministic: N=20 is exactly 5 %);
  --fail-file F    ... only while the file F exists (the demo's "make v2 fail" switch);
  --delay-ms MS    every answer waits MS milliseconds first.

GET /_control?fail_every=N&delay_ms=MS changes them at run time; GET /_stats answers
{"requests", "failed"} (neither counted). Health checks (/status/200) always answer 200."""
import argparse
import asyncio
import json
import os
import signal
from urllib.parse import parse_qs

STATE = {"fail_every": 0, "delay_ms": 0, "fail_file": None}
STATS = {"requests": 0, "failed": 0}


def response(status, body, ctype="text/plain"):
    return (f"HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n"
            .encode() + body)


async def serve(reader, writer, name):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            line = head.split(b"\r\n", 1)[0].decode("latin-1")
            target = line.split(" ")[1]
            path, _, query = target.partition("?")
            length = 0
            for h in head.split(b"\r\n")[1:]:
                k, _, v = h.partition(b":")
                if k.strip().lower() == b"content-length":
                    length = int(v)
            if length:
                await reader.readexactly(length)
            if path == "/_stats":
                writer.write(response(200, json.dumps(STATS).encode(), "application/json"))
            elif path == "/_control":
                q = parse_qs(query)
                for key in ("fail_every", "delay_ms"):
                    if key in q:
                        STATE[key] = int(q[key][0])
                writer.write(response(200, json.dumps(STATE).encode(), "application/json"))
            elif path.startswith("/status/"):
                writer.write(response(200, b"ok\n"))
            else:
                STATS["requests"] += 1
                if STATE["delay_ms"]:
                    await asyncio.sleep(STATE["delay_ms"] / 1000)
                every = STATE["fail_every"]
                armed = STATE["fail_file"] is None or os.path.exists(STATE["fail_file"])
                if every and armed and STATS["requests"] % every == 0:
                    STATS["failed"] += 1
                    writer.write(response(500, f"{name} failed\n".encode()))
                else:
                    writer.write(response(200, f"{name}\n".encode()))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, ValueError, IndexError):
        pass
    finally:
        writer.close()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--name", default="upstream")
    ap.add_argument("--fail-every", type=int, default=0)
    ap.add_argument("--fail-file")
    ap.add_argument("--delay-ms", type=int, default=0)
    args = ap.parse_args()
    STATE.update(fail_every=args.fail_every, delay_ms=args.delay_ms, fail_file=args.fail_file)
    server = await asyncio.start_server(lambda r, w: serve(r, w, args.name), "127.0.0.1",
                                        args.port, backlog=1024)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print("ready", flush=True)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
