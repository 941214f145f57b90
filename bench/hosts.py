"""Two `llmctl serve` processes on loopback, the front one listing the back one as a host: what a
hop costs, and how soon the front answers from its own server once the back host is gone.

    uv run python bench/hosts.py [--quick] [-n REQUESTS]

Each `llmctl serve` has its own state folder and a real llama-server on a tiny random-weight GGUF
($LLMCTL_LLAMA_SERVER, else llama-server on PATH, else scripts/build-llama-server.sh's build).

Added latency of one hop: `POST /completion` (n_predict 1, not streamed) on one keep-alive
connection, in alternating blocks, to

  llama-server   the back host's llama-server itself
  back           the back host's router (one router)
  front          the front router, which sends it to the back host (two routers)

p50 and p99 of each, and front - back: the hop.

Failover: the back host has the profile loaded and the front's own server has it loaded too (a
warm fallback; its load time is not the figure). At t=0 the back host is killed (SIGKILL of its
router and its llama-server) or frozen (SIGSTOP: connections are accepted by the kernel and never
answered, as for a host that hangs or drops off the network). A client sends one request every
50 ms, each on its own connection; the figure is the time from t=0 to the first answer from the
front's own server. Side by side: the back host as `type: llmctl` (polled every poll_interval) and,
as baseline, as `type: openai` (a static URL, only breakers). Both have upstream timeout 10 s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from support import find_llama_server, free_port, llmctl_cmd

COMPLETION = {"model": "tiny", "prompt": "hello", "n_predict": 1, "cache_prompt": False}
UPSTREAM_TIMEOUT = "10s"


@dataclass
class Host:
    name: str
    folder: Path
    manifest: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = (self.folder / "serve.log").open("ab")
        self.proc = subprocess.Popen(
            [*llmctl_cmd(), "serve", "--manifest", str(self.manifest), "--port", str(self.port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
        )
        log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} serve exited; see {self.folder / 'serve.log'}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            time.sleep(0.05)
        raise SystemExit(f"{self.name} serve did not start; see {self.folder / 'serve.log'}")

    def llama_pid(self) -> int | None:
        pid = httpx.get(self.url + "/models/status", timeout=10).json()["server"]["pid"]
        return int(pid) if pid else None

    def stop(self) -> None:
        """Stop the router and whatever llama-server its state folder names."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        subprocess.run(
            [*llmctl_cmd(), "stop"],
            env=self.env,
            capture_output=True,
            check=False,
        )


def write_manifest(path: Path, binary: str, model: Path, upstreams: str = "") -> Path:
    text = f"""version: 1
server:
  binary: {binary}
  port: {free_port()}
  ready_timeout: 60s
gpu:
  vram: 24GiB
serve:
  queue: {{max_size: 200, timeout: 60s}}
{upstreams}profiles:
  tiny:
    model: {model}
    ctx_size: 512
    parallel: 4
"""
    path.write_text(text)
    return path


def make_host(root: Path, name: str, binary: str, model: Path, upstreams: str = "") -> Host:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["LLMCTL_STATE_DIR"] = str(folder / "state")
    env["LLMCTL_CACHE_DIR"] = str(folder / "cache")
    manifest = write_manifest(folder / "profiles.yaml", binary, model, upstreams)
    return Host(name, folder, manifest, free_port(), env=env)


def front_upstreams(kind: str, back: Host, poll: str) -> str:
    poll_line = f"      poll_interval: {poll}\n" if kind == "llmctl" else ""
    return (
        "  upstreams:\n"
        f"    - name: back\n      type: {kind}\n      url: {back.url}\n"
        f"      timeout: {UPSTREAM_TIMEOUT}\n{poll_line}"
        "    - {name: local, type: managed}\n"
    )


@contextlib.contextmanager
def two_hosts(
    root: Path, binary: str, model: Path, kind: str, poll: str
) -> Iterator[tuple[Host, Host]]:
    back = make_host(root / f"{kind}-{time.monotonic_ns()}", "back", binary, model)
    front = make_host(back.folder.parent, "front", binary, model, front_upstreams(kind, back, poll))
    try:
        back.start()
        front.start()
        yield front, back
    finally:
        for h in (front, back):
            h.stop()


def wait_for(what: str, check: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, KeyError, StopIteration):
            if check():  # type: ignore[operator]
                return
        time.sleep(0.02)
    raise SystemExit(f"timed out waiting until {what}")


def back_state(front: Host) -> dict[str, object]:
    hosts = httpx.get(front.url + "/llmctl/v1/state", timeout=10).json()["hosts"]
    found: dict[str, object] = next(h for h in hosts if h["name"] == "back")
    return found


def warm(front: Host, back: Host, kind: str) -> None:
    """The back host serves `tiny`, loaded; the front's own server has it loaded as well."""
    r = httpx.post(front.url + "/models/switch", json={"profile": "tiny"}, timeout=120)
    r.raise_for_status()
    r = httpx.post(back.url + "/models/switch", json={"profile": "tiny"}, timeout=120)
    r.raise_for_status()
    if kind == "llmctl":
        wait_for(
            "the front learns that the back host has tiny loaded",
            lambda: [p["state"] for p in back_state(front)["profiles"]] == ["ready"],  # type: ignore[attr-defined]
        )
    r = httpx.post(front.url + "/completion", json=COMPLETION, timeout=60)
    assert r.headers.get("x-llmctl-upstream") == "back", (r.status_code, r.headers, r.text)


# --- latency ------------------------------------------------------------------------------


class RawClient:
    """One keep-alive HTTP/1.1 connection with TCP_NODELAY, each request in one write: cheap and
    the same for every column (httpx's separate header and body writes meet delayed ACKs)."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.address = (host, int(port))
        self.connect()
        body = json.dumps(COMPLETION).encode()
        self.request = (
            f"POST /completion HTTP/1.1\r\nhost: {host}:{port}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
        ).encode() + body

    def connect(self) -> None:
        self.sock = socket.create_connection(self.address)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = self.sock.makefile("rb")
        self.used = 0

    def fresh(self) -> None:
        """A new connection before llama-server's keep-alive limit (100 requests) closes it."""
        if self.used >= 90:
            self.close()
            self.connect()

    def post(self) -> int:
        self.used += 1
        self.sock.sendall(self.request)
        status = int(self.file.readline().split()[1])
        length = 0
        while (line := self.file.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        self.file.read(length)
        return status

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def latencies(urls: dict[str, str], n: int, block: int = 20) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {k: [] for k in urls}
    clients = {k: RawClient(url) for k, url in urls.items()}
    try:
        for c in clients.values():  # warm each connection
            for _ in range(5):
                c.post()
        done = 0
        while done < n:
            for name, c in clients.items():
                for _ in range(block):
                    c.fresh()  # not timed
                    t0 = time.perf_counter()
                    status = c.post()
                    out[name].append(time.perf_counter() - t0)
                    if status != 200:
                        raise SystemExit(f"{name}: answered {status}")
            done += block
    finally:
        for c in clients.values():
            c.close()
    return out


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


# --- failover -----------------------------------------------------------------------------


def failover(front: Host, back: Host, how: str, limit: float = 40.0) -> float | None:
    """Seconds from killing/freezing the back host to the first answer from the front's own server."""
    pids = [p for p in (back.proc.pid if back.proc else None, back.llama_pid()) if p]
    answered: queue.Queue[float] = queue.Queue()

    def one(t0: float) -> None:
        with contextlib.suppress(httpx.HTTPError):
            r = httpx.post(front.url + "/completion", json=COMPLETION, timeout=limit)
            if r.status_code == 200 and r.headers.get("x-llmctl-upstream") == "local":
                answered.put(time.monotonic() - t0)

    sig = signal.SIGKILL if how == "kill" else signal.SIGSTOP
    threads: list[threading.Thread] = []
    t0 = time.monotonic()
    for pid in pids:
        os.kill(pid, sig)
    try:
        while time.monotonic() - t0 < limit:
            t = threading.Thread(target=one, args=(t0,), daemon=True)
            t.start()
            threads.append(t)
            with contextlib.suppress(queue.Empty):
                return answered.get(timeout=0.05)  # the first answer put is the earliest
        return None
    finally:
        if how == "freeze":
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
                    os.kill(pid, signal.SIGKILL)
        if back.proc is not None:
            back.proc.wait()
        for t in threads:
            t.join(limit)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer requests, one failover round")
    ap.add_argument("-n", "--requests", type=int, default=400, help="requests per column")
    ap.add_argument("--rounds", type=int, default=3, help="failover rounds per setup")
    ap.add_argument("--poll", default="1s", help="the front's poll_interval for the back host")
    args = ap.parse_args()
    n = 100 if args.quick else args.requests
    rounds = 1 if args.quick else args.rounds
    binary = find_llama_server()
    from llmctl.testing.testmodels import write_tiny_model

    with tempfile.TemporaryDirectory(prefix="llmctl-bench-hosts-") as tmp:
        root = Path(tmp)
        model = write_tiny_model(root / "tiny.gguf", arch="llama")
        print(f"llama-server: {binary}\nmodel: tiny random-weight llama; poll_interval {args.poll}")

        with two_hosts(root, binary, model, "llmctl", args.poll) as (front, back):
            warm(front, back, "llmctl")
            llama = httpx.get(back.url + "/models/status", timeout=10).json()["server"]["url"]
            lat = latencies({"llama-server": llama, "back": back.url, "front": front.url}, n)
        print(f"\nAdded latency of one hop: POST /completion, n_predict 1, {n} requests each")
        print(f"{'':<32}{'p50 ms':>10}{'p99 ms':>10}")
        labels = {
            "llama-server": "llama-server direct",
            "back": "back router (baseline)",
            "front": "front -> back (one hop)",
        }
        for name, values in lat.items():
            p50, p99 = pct(values, 0.5) * 1e3, pct(values, 0.99) * 1e3
            print(f"{labels[name]:<32}{p50:>10.2f}{p99:>10.2f}")
        hop50 = (pct(lat["front"], 0.5) - pct(lat["back"], 0.5)) * 1e3
        hop99 = (pct(lat["front"], 0.99) - pct(lat["back"], 0.99)) * 1e3
        print(f"{'added by the hop':<32}{hop50:>10.2f}{hop99:>10.2f}")

        results: dict[tuple[str, str], list[float | None]] = {}
        for how in ("kill", "freeze"):
            for kind in ("llmctl", "openai"):
                for _ in range(rounds):
                    with two_hosts(root, binary, model, kind, args.poll) as (front, back):
                        warm(front, back, kind)
                        results.setdefault((how, kind), []).append(failover(front, back, how))
        print("\nFailover: back host killed (SIGKILL) or frozen (SIGSTOP) at t=0; seconds to the")
        print("first answer from the front's own server (median of rounds; - = none in 40 s)")
        print(f"{'':<10}{'type: llmctl':>16}{'type: openai (baseline)':>26}")
        for how in ("kill", "freeze"):
            cells = []
            for kind in ("llmctl", "openai"):
                got = [v for v in results[(how, kind)] if v is not None]
                cells.append(f"{statistics.median(got):.3f}" if got else "-")
            print(f"{how:<10}{cells[0]:>16}{cells[1]:>26}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
