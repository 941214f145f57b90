"""One request's path through the router, counted: the llmctl modules it passes through, the
hand-offs between them (a call from one module into another), and how often it re-enters each.

    uv run python bench/request_path.py [--stream]

In one process and one event loop: a FAKE upstream (a raw asyncio HTTP server with a fixed
answer) stands for a llama-server already running profile `bench`; the router (`create_app` on
uvicorn, the managed-server path with its queue lease, as `bench/router_overhead.py` sets it up)
in front of it; and a raw HTTP/1.1 client. After warm-up requests, one non-streaming chat
completion (or, with `--stream`, one streamed one) is traced with `sys.setprofile`: every Python
call whose code lives in `llmctl` counts, calls inside a module are not hand-offs. What runs in
other threads (none on this path) is not seen.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path
from types import FrameType

from support import free_port, stub_router_app

SRC = str(Path(__file__).resolve().parent.parent / "src" / "llmctl")
ANSWER = json.dumps(
    {"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message":
     {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]}
).encode()  # fmt: skip
CHUNK = b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'


async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """FAKE llama-server: reads one request at a time on a keep-alive connection."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            body = await reader.readexactly(length) if length else b""
            if b'"stream": true' in body:
                chunks = CHUNK * 4 + b"data: [DONE]\n\n"
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                    b"content-length: %d\r\n\r\n%s" % (len(chunks), chunks)
                )
            else:
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\n\r\n%s" % (len(ANSWER), ANSWER)
                )
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


class Client:
    def __init__(self, port: int) -> None:
        self.port = port

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def post(self, body: bytes) -> bytes:
        self.writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"
            b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        if b"transfer-encoding: chunked" in head.lower():
            out = b""
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
                data = await self.reader.readexactly(size + 2)
                if size == 0:
                    return head + out
                out += data[:-2]
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        return head + await self.reader.readexactly(length)


def module_of(frame: FrameType) -> str | None:
    path = frame.f_code.co_filename
    if not path.startswith(SRC):
        return None
    return path[len(SRC) - len("llmctl") :].removesuffix(".py")


async def main(stream: bool) -> None:
    import uvicorn

    from llmctl.router.server import uvicorn_options

    up_port, router_port = free_port(), free_port()
    up = await asyncio.start_server(upstream, "127.0.0.1", up_port)
    workdir = Path(tempfile.mkdtemp(prefix="llmctl-path-"))
    upstream_url = f"http://127.0.0.1:{up_port}"

    app, manifest = stub_router_app(upstream_url, workdir)
    options = {k: v for k, v in uvicorn_options(manifest.serve).items() if k != "loop"}
    config = uvicorn.Config(
        app, host="127.0.0.1", port=router_port, log_level="warning", access_log=False, **options
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    body = json.dumps(
        {"model": "bench", "messages": [{"role": "user", "content": "hello"}], "stream": stream}
    ).encode()
    client = Client(router_port)
    await client.open()
    for _ in range(5):
        assert b" 200 " in (await client.post(body)).split(b"\r\n")[0]

    calls: list[tuple[str | None, str]] = []

    def profile(frame: FrameType, event: str, arg: object) -> None:
        if event != "call":
            return
        callee = module_of(frame)
        if callee is None:
            return
        back = frame.f_back
        while back is not None and module_of(back) is None and back.f_back is not None:
            back = back.f_back  # through library frames to the llmctl code that led here
        calls.append((module_of(back) if back is not None else None, callee))

    sys.setprofile(profile)
    reply = await client.post(body)
    await asyncio.sleep(0.05)  # what the request left to run (its finally blocks, counters)
    sys.setprofile(None)
    assert b" 200 " in reply.split(b"\r\n")[0]
    server.should_exit = True
    await task
    up.close()

    handoffs = [(a, b) for a, b in calls if a != b]
    entered = Counter(b for _, b in handoffs)
    modules = sorted({b for _, b in calls})
    kind = "streamed" if stream else "non-streaming"
    print(f"one {kind} chat completion for a loaded profile, through the router:")
    print(f"  llmctl calls            {len(calls)}")
    print(f"  modules passed through  {len(modules)}")
    print(f"  hand-offs (a call from one module into another)  {len(handoffs)}")
    print("  entries per module:")
    for name, n in entered.most_common():
        print(f"    {n:4}  {name}")
    print(
        "  baseline, this script at 1e6dfee (before the redesign): 120 llmctl calls, 12 modules,"
        " 43 hand-offs; the Router (router/app then) entered 6 times"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stream", action="store_true")
    args = parser.parse_args()
    asyncio.run(main(args.stream))
