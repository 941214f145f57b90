"""The dashboard's cost, side by side with its baselines, in one run.

A real `llmctl serve` (API key on) in front of a real llama-server on a tiny generated model, and
the distribution's headless Chromium (driven by playwright):

  first load of /ui: bytes of HTML, script, style and data; ms from navigation to a usable page
  (profiles drawn), next to the same browser navigating to /health (the floor on loopback)
  router latency on API requests (GET /v1/models, answered by the router; a one-token chat
  completion, relayed to llama-server) with the dashboard closed and with it open and following
  the log, in alternating blocks: p50, p99 and the difference

    LLMCTL_LLAMA_SERVER=$(scripts/build-llama-server.sh) uv run python bench/dashboard.py [--quick]

Without Chromium (`make browser`) or playwright it says so and exits 0.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

KEY = "bench-key"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_serve(folder: Path, binary: str) -> tuple[subprocess.Popen[bytes], str]:
    from llmctl.testing.testmodels import write_tiny_model

    model = write_tiny_model(folder / "tiny.gguf", arch="llama")
    manifest = folder / "profiles.yaml"
    manifest.write_text(
        f"""version: 1
server: {{binary: {binary}, port: {free_port()}, ready_timeout: 60s}}
gpu: {{vram: 8GiB}}
serve: {{api_keys: [{KEY}]}}
profiles:
  tiny: {{model: {model}, ctx_size: 512, parallel: 1}}
"""
    )
    port = free_port()
    env = {**os.environ, "LLMCTL_STATE_DIR": str(folder / "state")}
    log = (folder / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmctl", "serve", "--manifest", str(manifest), "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=0.5).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("llmctl serve did not start: " + (folder / "serve.log").read_text())


def stop_serve(proc: subprocess.Popen[bytes], url: str) -> None:
    import contextlib

    with contextlib.suppress(httpx.HTTPError):
        httpx.post(url + "/models/stop", headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def first_loads(browser: Any, url: str, n: int) -> dict[str, Any]:
    """Bytes by kind and ms to a usable page, over n fresh browser contexts (no cache)."""
    page_ms: list[float] = []
    floor_ms: list[float] = []
    sizes: dict[str, int] = {}
    for i in range(n):
        ctx = browser.new_context()
        ctx.add_init_script(f"sessionStorage.setItem('llmctl.key', {KEY!r})")
        page = ctx.new_page()
        got: dict[str, int] = {}

        def on_response(resp: Any, got: dict[str, int] = got) -> None:
            path = resp.url.split("://", 1)[1].split("/", 1)[1].split("?")[0]
            if path == "ui/api/log":
                return  # a stream, not part of the first load
            try:
                got[path] = len(resp.body())
            except Exception:  # a redirect has no body
                got[path] = 0

        page.on("response", on_response)
        t0 = time.perf_counter()
        page.goto(url + "/ui/")
        page.wait_for_selector("body[data-ready] .card")
        page_ms.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        page.goto(url + "/health")
        floor_ms.append((time.perf_counter() - t0) * 1000)
        ctx.close()
        if i == 0:
            sizes = got
    kinds = {
        "html": sum(v for k, v in sizes.items() if k in ("ui/", "ui")),
        "script": sum(v for k, v in sizes.items() if k.endswith(".js")),
        "style": sum(v for k, v in sizes.items() if k.endswith(".css")),
        "icon": sum(v for k, v in sizes.items() if k.endswith(".svg")),
        "data": sum(v for k, v in sizes.items() if k.startswith("ui/api/")),
    }
    return {"bytes": kinds, "page_ms": page_ms, "floor_ms": floor_ms}


def timed(client: httpx.Client, method: str, path: str, body: Any, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = client.request(method, path, json=body)
        out.append((time.perf_counter() - t0) * 1000)
        if r.status_code != 200:
            raise SystemExit(f"{method} {path}: {r.status_code} {r.text[:200]}")
    return out


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    chromium = os.environ.get("LLMCTL_CHROMIUM") or shutil.which("chromium")
    binary = os.environ.get("LLMCTL_LLAMA_SERVER") or shutil.which("llama-server")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("skipped: playwright is not installed (uv sync)")
        return 0
    if not chromium:
        print("skipped: Chromium is not installed (make browser)")
        return 0
    if not binary:
        print("skipped: no llama-server (LLMCTL_LLAMA_SERVER=$(scripts/build-llama-server.sh))")
        return 0
    loads, blocks, n_models, n_chat = (3, 2, 100, 10) if args.quick else (10, 4, 300, 30)
    with tempfile.TemporaryDirectory(prefix="llmctl-bench-") as tmp:
        proc, url = start_serve(Path(tmp), binary)
        pw = sync_playwright().start()
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            headers = {"Authorization": f"Bearer {KEY}"}
            with httpx.Client(base_url=url, headers=headers, timeout=120) as client:
                client.post("/models/switch", json={"profile": "tiny"}).raise_for_status()
                fl = first_loads(browser, url, loads)
                chat = {
                    "model": "tiny",
                    "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 1,
                }
                timed(client, "POST", "/v1/chat/completions", chat, 3)  # warm
                res: dict[str, dict[str, list[float]]] = {
                    "closed": {"models": [], "chat": []},
                    "open": {"models": [], "chat": []},
                }
                for _ in range(blocks):
                    for mode in ("closed", "open"):
                        ctx = page = None
                        if mode == "open":
                            ctx = browser.new_context()
                            ctx.add_init_script(f"sessionStorage.setItem('llmctl.key', {KEY!r})")
                            page = ctx.new_page()
                            page.goto(url + "/ui/")
                            page.wait_for_selector("#log div")  # following the log
                        res[mode]["models"] += timed(client, "GET", "/v1/models", None, n_models)
                        res[mode]["chat"] += timed(
                            client, "POST", "/v1/chat/completions", chat, n_chat
                        )
                        if mode == "open":
                            assert page is not None and ctx is not None
                            # the log lines of those requests reached the open page
                            page.wait_for_selector("#log div:has-text('print_timing')")
                            ctx.close()
        finally:
            browser.close()
            pw.stop()
            stop_serve(proc, url)

    b = fl["bytes"]
    total = sum(b.values())
    print("dashboard first load (headless Chromium, loopback, fresh context each time)")
    print(
        f"  bytes: html {b['html']}, script {b['script']}, style {b['style']}, "
        f"icon {b['icon']}, data {b['data']}; total {total} ({total / 1024:.1f} KiB)"
    )
    pm, fm = statistics.median(fl["page_ms"]), statistics.median(fl["floor_ms"])
    print(
        f"  to a usable page (profiles drawn): median {pm:.0f} ms over {loads} loads   "
        f"baseline /health in the same browser: {fm:.0f} ms"
    )
    print("router latency with the dashboard closed vs open and following the log")
    print(f"  {'request':<34}{'closed p50':>11}{'open p50':>10}{'added':>8}"
          f"{'closed p99':>12}{'open p99':>10}")  # fmt: skip
    for key, label in (
        ("models", f"GET /v1/models (x{n_models * blocks})"),
        ("chat", f"chat, 1 token, relayed (x{n_chat * blocks})"),
    ):
        c, o = res["closed"][key], res["open"][key]
        c50, o50 = statistics.median(c), statistics.median(o)
        print(
            f"  {label:<34}{c50:>9.2f}ms{o50:>8.2f}ms{o50 - c50:>+6.2f}ms"
            f"{pct(c, 0.99):>10.2f}ms{pct(o, 0.99):>8.2f}ms"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
