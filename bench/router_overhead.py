"""What `llmctl serve` adds over calling the upstream directly, side by side in one run.

Three processes on loopback: a FAST FAKE OpenAI-compatible upstream (raw ASGI on uvicorn, fixed
answers), the router (`create_app` on uvicorn, the managed-server path with its queue lease, in
front of that fake), and this client (raw asyncio HTTP/1.1 keep-alive, cheap enough not to be
the bottleneck). Each figure is measured direct and through the router in alternating blocks:

  latency at concurrency 1 (non-streaming chat completion): p50, p99, added
  throughput at concurrency 32: requests/s, router as a share of direct
  time to first streamed chunk: p50, p99, added
  CPU per request (from /proc) of the fake upstream and of the router
  llama.cpp's native `/completion`, streaming, at concurrency 32: p50, p99, added, requests/s
  throughput and CPU per request at 1, 8 and 32 clients, router against direct (ratios)

and, for scale, throughput at concurrency 32 when the fake upstream burns 1 ms of CPU per
request (a stand-in for inference, which is far slower on any real model).

    uv run python bench/router_overhead.py [--quick] [--json] [--litellm PATH]

`--litellm` adds LiteLLM's proxy as a third column, from a separate venv, e.g.
`uv venv /tmp/ll && uv pip install -p /tmp/ll 'litellm[proxy]'`, then `--litellm /tmp/ll/bin/litellm`.

The router runs with the uvicorn options of `llmctl serve` (its guarded HTTP protocol and event
loop, `server.uvicorn_options`); the fake upstream keeps uvicorn's pure-Python h11 protocol and
asyncio's loop whatever is installed, so that "direct" stays the same yardstick.

Aims: p50 added < 1 ms, p99 added < 5 ms, throughput >= 70 % of direct; router CPU per request
<= 120 us.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from support import free_port, stub_router_app

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
COMPLETION_STREAM = json.dumps(
    {"model": "bench", "prompt": "hello", "n_predict": 8, "stream": True}
).encode()
_CHUNK = b'data: {"choices":[{"index":0,"delta":{"content":"hi "}}]}\n\n'


CLIENTS = (1, 8, 32)  # concurrent clients of the throughput and CPU table
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
        http="h11",
        loop="asyncio",
    )


# --- the router (child process) ----------------------------------------------------------------


def run_router(port: int, upstream_url: str, workdir: Path) -> None:
    import uvicorn

    from llmctl.router.server import uvicorn_options

    app, manifest = stub_router_app(upstream_url, workdir)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        **uvicorn_options(manifest.serve),
    )


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


async def concurrent(
    port: int, path: str, body: bytes, n: int, concurrency: int
) -> tuple[list[float], float]:
    """Each request's time to its last byte, and requests/s, with `concurrency` clients."""
    conns = [Conn(port) for _ in range(concurrency)]
    for c in conns:
        await c.open()
    remaining = n
    totals: list[float] = []

    async def worker(c: Conn) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            _, total, status = await c.post(path, body)
            if status != 200:
                raise RuntimeError(f"status {status}")
            totals.append(total)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in conns))
    elapsed = time.perf_counter() - t0
    for c in conns:
        await c.close()
    return totals, n / elapsed


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def wait_up(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"a bench server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(targets: dict[str, tuple[int, int]], quick: bool) -> dict[str, Any]:
    """Figures for each target {name: (port, pid)}; "direct" is the baseline. Blocks alternate."""
    blocks = 4
    n_lat = 250 if quick else 1000
    n_ttfc = 100 if quick else 400
    n_tp = 1000 if quick else 4000
    for port, _ in targets.values():  # warm connections and code paths
        await sequential(port, "/v1/chat/completions", CHAT, 200)
        await throughput(port, 500, 32)
    lat: dict[str, list[float]] = {name: [] for name in targets}
    ttfc: dict[str, list[float]] = {name: [] for name in targets}
    rps: dict[str, dict[int, list[float]]] = {n: {c: [] for c in CLIENTS} for n in targets}
    cpu: dict[str, dict[int, float]] = {n: dict.fromkeys(CLIENTS, 0.0) for n in targets}
    native_lat: dict[str, list[float]] = {name: [] for name in targets}
    native_rps: dict[str, list[float]] = {name: [] for name in targets}
    for _ in range(blocks):
        for name, (port, pid) in targets.items():
            _, totals = await sequential(port, "/v1/chat/completions", CHAT, n_lat // blocks)
            lat[name].extend(totals)
            firsts, _ = await sequential(
                port, "/v1/chat/completions", CHAT_STREAM, n_ttfc // blocks
            )
            ttfc[name].extend(firsts)
            # CPU per request of the process on that port (for "direct": the upstream)
            for clients in CLIENTS:
                before = cpu_seconds(pid)
                rps[name][clients].append(await throughput(port, n_tp // blocks, clients))
                cpu[name][clients] += cpu_seconds(pid) - before
            totals, r = await concurrent(port, "/completion", COMPLETION_STREAM, n_tp // blocks, 32)
            native_lat[name].extend(totals)
            native_rps[name].append(r)
    ms = 1000.0
    out: dict[str, Any] = {"requests": {"latency": n_lat, "ttfc": n_ttfc, "throughput": n_tp}}
    for name in targets:
        out[name] = {
            "latency_p50_ms": pct(lat[name], 0.5) * ms,
            "latency_p99_ms": pct(lat[name], 0.99) * ms,
            "ttfc_p50_ms": pct(ttfc[name], 0.5) * ms,
            "ttfc_p99_ms": pct(ttfc[name], 0.99) * ms,
            "throughput_rps": statistics.median(rps[name][32]),
            "cpu_per_request_us": cpu[name][32] / n_tp * 1e6,
            "clients": {
                c: {
                    "throughput_rps": statistics.median(rps[name][c]),
                    "cpu_per_request_us": cpu[name][c] / n_tp * 1e6,
                }
                for c in CLIENTS
            },
            "completion_c32_p50_ms": pct(native_lat[name], 0.5) * ms,
            "completion_c32_p99_ms": pct(native_lat[name], 0.99) * ms,
            "completion_c32_rps": statistics.median(native_rps[name]),
        }
    base = out["direct"]
    for name in targets:
        if name == "direct":
            continue
        fig = out[name]
        fig["added_latency_p50_ms"] = fig["latency_p50_ms"] - base["latency_p50_ms"]
        fig["added_latency_p99_ms"] = fig["latency_p99_ms"] - base["latency_p99_ms"]
        fig["added_ttfc_p50_ms"] = fig["ttfc_p50_ms"] - base["ttfc_p50_ms"]
        fig["added_ttfc_p99_ms"] = fig["ttfc_p99_ms"] - base["ttfc_p99_ms"]
        fig["throughput_share"] = fig["throughput_rps"] / base["throughput_rps"]
        for q in ("p50", "p99"):
            key = f"completion_c32_{q}_ms"
            fig[f"added_{key}"] = fig[key] - base[key]
        fig["completion_c32_share"] = fig["completion_c32_rps"] / base["completion_c32_rps"]
        for c in CLIENTS:
            mine, theirs = fig["clients"][c], base["clients"][c]
            mine["throughput_share"] = mine["throughput_rps"] / theirs["throughput_rps"]
            mine["cpu_ratio"] = mine["cpu_per_request_us"] / theirs["cpu_per_request_us"]
    return out


class LiteLLM:
    """LiteLLM's proxy (an optional peer, from its own venv) in front of the same fake upstream."""

    def __init__(self, binary: str, workdir: Path, upstream_port: int) -> None:
        self.binary = binary
        self.workdir = workdir
        self.upstream_port = upstream_port
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> LiteLLM:
        cfg = self.workdir / "litellm.yaml"
        cfg.write_text(
            "model_list:\n  - model_name: bench\n    litellm_params:\n      model: openai/bench\n"
            f"      api_base: http://127.0.0.1:{self.upstream_port}/v1\n      api_key: fake\n"
        )
        env = {
            **os.environ,
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_LOG": "ERROR",
            "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
        }
        cmd = [self.binary, "--config", str(cfg), "--port", str(self.port), "--num_workers", "1"]
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.workdir
        )
        try:
            wait_up(self.port, self.proc, timeout=120)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


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
    ap.add_argument(
        "--litellm",
        metavar="PATH",
        help="also measure LiteLLM's proxy: the `litellm` executable of a venv with litellm[proxy]",
    )
    args = ap.parse_args()
    if args.role == "upstream":
        run_upstream(args.port, args.work_ms)
        return
    if args.role == "router":
        run_router(args.port, args.upstream_url, Path(args.workdir))
        return

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        with Pair(Path(tmp), work_ms=0.0) as fast, contextlib.ExitStack() as stack:
            targets = {
                "direct": (fast.up_port, fast.procs[0].pid),
                "router": (fast.router_port, fast.procs[1].pid),
            }
            if args.litellm:
                peer = stack.enter_context(LiteLLM(args.litellm, Path(tmp), fast.up_port))
                assert peer.proc is not None
                targets["litellm"] = (peer.port, peer.proc.pid)
            figures = asyncio.run(measure(targets, args.quick))
        with Pair(Path(tmp), work_ms=1.0) as busy:
            figures["upstream_1ms_cpu"] = asyncio.run(
                busy_throughput(busy.up_port, busy.router_port, args.quick)
            )
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    d = figures["direct"]
    names = [n for n in figures if n not in ("direct", "requests", "upstream_1ms_cpu")]
    print(f"overhead over a direct call (loopback, {os.cpu_count()} CPUs, fast fake upstream)")
    head = f"{'':26}{'direct':>9}" + "".join(f"{n:>9}{'added':>8}" for n in names)
    print(head + "   aim (router)")
    rows = [
        ("latency c=1 p50 (ms)", "latency_p50_ms", "added_latency_p50_ms", "< 1 ms"),
        ("latency c=1 p99 (ms)", "latency_p99_ms", "added_latency_p99_ms", "< 5 ms"),
        ("first chunk p50 (ms)", "ttfc_p50_ms", "added_ttfc_p50_ms", ""),
        ("first chunk p99 (ms)", "ttfc_p99_ms", "added_ttfc_p99_ms", ""),
    ]
    for label, key, added, aim in rows:
        cells = "".join(f"{figures[n][key]:9.3f}{figures[n][added]:8.3f}" for n in names)
        print(f"{label:26}{d[key]:9.3f}{cells}   {aim}")
    cells = "".join(
        f"{figures[n]['throughput_rps']:9.0f}{figures[n]['throughput_share']:8.0%}" for n in names
    )
    print(f"{'throughput c=32 (req/s)':26}{d['throughput_rps']:9.0f}{cells}   >= 70 %")
    for label, key in (
        ("/completion SSE c=32 p50", "completion_c32_p50_ms"),
        ("/completion SSE c=32 p99", "completion_c32_p99_ms"),
    ):
        cells = "".join(f"{figures[n][key]:9.3f}{figures[n]['added_' + key]:8.3f}" for n in names)
        print(f"{label:26}{d[key]:9.3f}{cells}")
    cells = "".join(
        f"{figures[n]['completion_c32_rps']:9.0f}{figures[n]['completion_c32_share']:8.0%}"
        for n in names
    )
    print(f"{'/completion SSE c=32 req/s':26}{d['completion_c32_rps']:9.0f}{cells}")
    cells = "".join(f"{figures[n]['cpu_per_request_us']:9.0f}{'':8}" for n in names)
    print(
        f"{'CPU per request c=32 (us)':26}{d['cpu_per_request_us']:9.0f}{cells}   (direct: the upstream's)"
    )
    print()
    print(
        "non-streaming chat completions; CPU per request of the process itself (direct: the upstream)"
    )
    head = f"{'clients':>8}{'direct req/s':>14}" + "".join(
        f"{n + ' req/s':>14}{'share':>7}" for n in names
    )
    head += f"{'direct CPU us':>15}" + "".join(f"{n + ' CPU us':>15}{'ratio':>7}" for n in names)
    print(head)
    for c in CLIENTS:
        base_c = d["clients"][c]
        row = f"{c:>8}{base_c['throughput_rps']:>14.0f}"
        row += "".join(
            f"{figures[n]['clients'][c]['throughput_rps']:>14.0f}"
            f"{figures[n]['clients'][c]['throughput_share']:>7.0%}"
            for n in names
        )
        row += f"{base_c['cpu_per_request_us']:>15.0f}"
        row += "".join(
            f"{figures[n]['clients'][c]['cpu_per_request_us']:>15.0f}"
            f"{figures[n]['clients'][c]['cpu_ratio']:>7.2f}"
            for n in names
        )
        print(row)
    print()
    busy_fig = figures["upstream_1ms_cpu"]
    print(
        f"with an upstream burning 1 ms CPU per request, c=32: direct {busy_fig['direct']:.0f} req/s, "
        f"router {busy_fig['router']:.0f} req/s ({busy_fig['share']:.0%})"
    )
    print(
        "(client, upstream and proxy share the CPUs above; the added figures are differences of percentiles)"
    )


if __name__ == "__main__":
    main()
