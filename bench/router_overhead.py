"""What `llmctl serve` adds over calling the upstream directly, side by side in one run.

Three processes on loopback: a FAST FAKE OpenAI-compatible upstream (raw ASGI on uvicorn, fixed
answers), the router (`create_app` on uvicorn, the managed-server path with its queue lease, in
front of that fake), and this client (raw asyncio HTTP/1.1 keep-alive, cheap enough not to be
the bottleneck). Each figure is measured direct and through the router in alternating blocks:

  latency at concurrency 1 (non-streaming chat completion): p50, p99, added
  throughput at concurrency 32: requests/s, router as a share of direct
  time to first streamed chunk: p50, p99, added
  CPU per request (from /proc) of the fake upstream and of the router

and, for scale, throughput at concurrency 32 when the fake upstream burns 1 ms of CPU per
request (a stand-in for inference, which is far slower on any real model).

    uv run python bench/router_overhead.py [--quick]

Aims: p50 added < 1 ms, p99 added < 5 ms, throughput >= 70 % of direct.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
CHAT = json.dumps(
    {"model": "bench", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}
).encode()
CHAT_STREAM = json.dumps(
    {"model": "bench", "messages": [{"role": "user", "content": "hello"}], "stream": True}
).encode()


# --- the FAKE upstream (child process) -------------------------------------------------------

_ANSWER = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 0,
        "model": "bench",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "hi " * 8},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 8, "total_tokens": 9},
    }
).encode()
_CHUNK = b'data: {"choices":[{"index":0,"delta":{"content":"hi "}}]}\n\n'


WORK_S = 0.0  # CPU the fake upstream burns per request (a stand-in for inference)


async def fake_upstream(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """FAKE upstream: a fixed chat completion, or 8 SSE chunks when the body asks to stream."""
    if scope["type"] != "http":
        return
    if WORK_S:
        until = time.perf_counter() + WORK_S
        while time.perf_counter() < until:
            pass
    body = b""
    more = True
    while more:
        msg = await receive()
        body += msg.get("body", b"")
        more = msg.get("more_body", False)
    if scope["path"] == "/health":
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": b'{"status":"ok"}'})
        return
    if b'"stream": true' in body or b'"stream":true' in body:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        for _ in range(8):
            await send({"type": "http.response.body", "body": _CHUNK, "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
        return
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(_ANSWER)).encode()),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": _ANSWER})


def run_upstream(port: int, work_ms: float) -> None:
    import uvicorn

    global WORK_S
    WORK_S = work_ms / 1000

    uvicorn.run(
        fake_upstream,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="off",
    )


# --- the router (child process) ----------------------------------------------------------------


def run_router(port: int, upstream_url: str, workdir: Path) -> None:
    import uvicorn

    from llmctl.launch import LaunchSpec
    from llmctl.manifest import load_manifest
    from llmctl.router.app import create_app
    from llmctl.supervisor import Status

    class StubSupervisor:
        """The FAKE upstream stands for a llama-server already running profile `bench`."""

        def status(self, *, check_health: bool = True, timeout: float = 0.5) -> Status:
            return Status(
                running=True, profile="bench", pid=os.getpid(), url=upstream_url, healthy=True
            )

    manifest_path = workdir / "profiles.yaml"
    manifest_path.write_text("version: 1\nprofiles:\n  bench:\n    model: /bench/model.gguf\n")

    def spec_for(manifest: Any, name: str) -> LaunchSpec:
        return LaunchSpec(profile=name, argv=("llama-server",))

    app = create_app(
        load_manifest(manifest_path), StubSupervisor(), spec_for=spec_for, idle_unload=False
    )  # type: ignore[arg-type]
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# --- the client ----------------------------------------------------------------------------------


class Conn:
    """One keep-alive HTTP/1.1 connection; reads Content-Length and chunked bodies."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            await self.writer.wait_closed()

    async def post(self, path: str, body: bytes) -> tuple[float, float, int]:
        """(seconds to the first body byte, seconds to the end, status)."""
        assert self.reader is not None and self.writer is not None
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        t0 = time.perf_counter()
        self.writer.write(head + body)
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.split(b"\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            if b":" in line:
                k, v = line.split(b":", 1)
                headers[k.strip().lower()] = v.strip()
        first = 0.0
        if b"content-length" in headers:
            n = int(headers[b"content-length"])
            if n:
                await self.reader.readexactly(n)
            first = time.perf_counter() - t0
        else:
            while True:
                size_line = await self.reader.readuntil(b"\r\n")
                size = int(size_line.strip().split(b";")[0], 16)
                if size == 0:
                    await self.reader.readuntil(b"\r\n")
                    break
                data = await self.reader.readexactly(size + 2)
                if not first and data.strip():
                    first = time.perf_counter() - t0
        return first, time.perf_counter() - t0, status


async def sequential(port: int, path: str, body: bytes, n: int) -> tuple[list[float], list[float]]:
    conn = Conn(port)
    await conn.open()
    firsts, totals = [], []
    try:
        for _ in range(n):
            first, total, status = await conn.post(path, body)
            if status != 200:
                raise RuntimeError(f"status {status}")
            firsts.append(first)
            totals.append(total)
    finally:
        await conn.close()
    return firsts, totals


async def throughput(port: int, n: int, concurrency: int) -> float:
    conns = [Conn(port) for _ in range(concurrency)]
    for c in conns:
        await c.open()
    remaining = n

    async def worker(c: Conn) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            _, _, status = await c.post("/v1/chat/completions", CHAT)
            if status != 200:
                raise RuntimeError(f"status {status}")

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in conns))
    elapsed = time.perf_counter() - t0
    for c in conns:
        await c.close()
    return n / elapsed


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def wait_up(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"a bench server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(direct: int, router: int, quick: bool, pids: dict[int, int]) -> dict[str, Any]:
    blocks = 4
    n_lat = 250 if quick else 1000
    n_ttfc = 100 if quick else 400
    n_tp = 1000 if quick else 4000
    # warm both paths (connections, code paths)
    for port in (direct, router):
        await sequential(port, "/v1/chat/completions", CHAT, 200)
        await throughput(port, 500, 32)
    lat: dict[int, list[float]] = {direct: [], router: []}
    ttfc: dict[int, list[float]] = {direct: [], router: []}
    rps: dict[int, list[float]] = {direct: [], router: []}
    cpu: dict[str, float] = {"upstream": 0.0, "router": 0.0}
    for _ in range(blocks):
        for port in (direct, router):
            _, totals = await sequential(port, "/v1/chat/completions", CHAT, n_lat // blocks)
            lat[port].extend(totals)
            firsts, _ = await sequential(
                port, "/v1/chat/completions", CHAT_STREAM, n_ttfc // blocks
            )
            ttfc[port].extend(firsts)
            # CPU per request at c=32: the upstream's when called directly, the router's own
            who = "upstream" if port == direct else "router"
            before = cpu_seconds(pids[port])
            rps[port].append(await throughput(port, n_tp // blocks, 32))
            cpu[who] += cpu_seconds(pids[port]) - before
    ms = 1000.0
    out = {
        "latency_c1_ms": {
            "direct_p50": pct(lat[direct], 0.5) * ms,
            "router_p50": pct(lat[router], 0.5) * ms,
            "direct_p99": pct(lat[direct], 0.99) * ms,
            "router_p99": pct(lat[router], 0.99) * ms,
        },
        "ttfc_ms": {
            "direct_p50": pct(ttfc[direct], 0.5) * ms,
            "router_p50": pct(ttfc[router], 0.5) * ms,
            "direct_p99": pct(ttfc[direct], 0.99) * ms,
            "router_p99": pct(ttfc[router], 0.99) * ms,
        },
        "throughput_c32_rps": {
            "direct": statistics.median(rps[direct]),
            "router": statistics.median(rps[router]),
        },
        "cpu_per_request_us": {
            "upstream": cpu["upstream"] / n_tp * 1e6,
            "router": cpu["router"] / n_tp * 1e6,
        },
        "requests": {"latency": n_lat, "ttfc": n_ttfc, "throughput": n_tp},
    }
    lat_ms = out["latency_c1_ms"]
    lat_ms["added_p50"] = lat_ms["router_p50"] - lat_ms["direct_p50"]
    lat_ms["added_p99"] = lat_ms["router_p99"] - lat_ms["direct_p99"]
    t = out["ttfc_ms"]
    t["added_p50"] = t["router_p50"] - t["direct_p50"]
    t["added_p99"] = t["router_p99"] - t["direct_p99"]
    tp = out["throughput_c32_rps"]
    tp["share"] = tp["router"] / tp["direct"]
    return out


class Pair:
    """A fake upstream (burning `work_ms` of CPU per request) and the router in front of it."""

    def __init__(self, workdir: Path, *, work_ms: float) -> None:
        self.workdir = workdir
        self.work_ms = work_ms
        self.up_port, self.router_port = free_port(), free_port()
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def pids(self) -> dict[int, int]:
        return {self.up_port: self.procs[0].pid, self.router_port: self.procs[1].pid}

    def __enter__(self) -> Pair:
        env = {**os.environ, "LLMCTL_STATE_DIR": str(self.workdir / "state")}
        up = [
            sys.executable,
            str(HERE),
            "--role",
            "upstream",
            "--port",
            str(self.up_port),
            "--work-ms",
            str(self.work_ms),
        ]
        rt = [
            sys.executable, str(HERE), "--role", "router", "--port", str(self.router_port),
            "--upstream-url", f"http://127.0.0.1:{self.up_port}", "--workdir", str(self.workdir),
        ]  # fmt: skip
        self.procs = [subprocess.Popen(up, env=env), subprocess.Popen(rt, env=env)]
        try:
            wait_up(self.up_port, self.procs[0])
            wait_up(self.router_port, self.procs[1])
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


async def busy_throughput(direct: int, router: int, quick: bool) -> dict[str, float]:
    n = 200 if quick else 800
    for port in (direct, router):
        await throughput(port, 100, 32)
    rps: dict[int, list[float]] = {direct: [], router: []}
    for _ in range(4):
        for port in (direct, router):
            rps[port].append(await throughput(port, n // 4, 32))
    d, r = statistics.median(rps[direct]), statistics.median(rps[router])
    return {"direct": d, "router": r, "share": r / d}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ap.add_argument("--role", choices=["upstream", "router"], help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--upstream-url", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    ap.add_argument("--work-ms", type=float, default=0.0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role == "upstream":
        run_upstream(args.port, args.work_ms)
        return
    if args.role == "router":
        run_router(args.port, args.upstream_url, Path(args.workdir))
        return

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        with Pair(Path(tmp), work_ms=0.0) as fast:
            figures = asyncio.run(measure(fast.up_port, fast.router_port, args.quick, fast.pids))
        with Pair(Path(tmp), work_ms=1.0) as busy:
            figures["throughput_c32_rps_upstream_1ms_cpu"] = asyncio.run(
                busy_throughput(busy.up_port, busy.router_port, args.quick)
            )
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    lat, ttfc, tp = figures["latency_c1_ms"], figures["ttfc_ms"], figures["throughput_c32_rps"]
    print(f"router overhead vs direct (loopback, {os.cpu_count()} CPUs, fake upstream)")
    print(f"{'':28}{'direct':>10}{'router':>10}{'added':>10}   aim")
    print(
        f"{'latency c=1 p50 (ms)':28}{lat['direct_p50']:10.3f}{lat['router_p50']:10.3f}{lat['added_p50']:10.3f}   < 1 ms"
    )
    print(
        f"{'latency c=1 p99 (ms)':28}{lat['direct_p99']:10.3f}{lat['router_p99']:10.3f}{lat['added_p99']:10.3f}   < 5 ms"
    )
    print(
        f"{'first chunk p50 (ms)':28}{ttfc['direct_p50']:10.3f}{ttfc['router_p50']:10.3f}{ttfc['added_p50']:10.3f}"
    )
    print(
        f"{'first chunk p99 (ms)':28}{ttfc['direct_p99']:10.3f}{ttfc['router_p99']:10.3f}{ttfc['added_p99']:10.3f}"
    )
    print(
        f"{'throughput c=32 (req/s)':28}{tp['direct']:10.0f}{tp['router']:10.0f}{tp['share']:9.0%}    >= 70 %"
    )
    busy = figures["throughput_c32_rps_upstream_1ms_cpu"]
    print(
        f"{'  upstream 1 ms CPU/request':28}{busy['direct']:10.0f}{busy['router']:10.0f}{busy['share']:9.0%}"
    )
    cpu = figures["cpu_per_request_us"]
    print(
        f"CPU per request at c=32: fake upstream {cpu['upstream']:.0f} us, router {cpu['router']:.0f} us"
        f" (client, router and upstream share {os.cpu_count()} CPUs)"
    )


if __name__ == "__main__":
    main()
