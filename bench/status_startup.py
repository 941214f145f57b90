"""`llmctl status --json` with nothing running, side by side with a bare interpreter start.

    uv run python bench/status_startup.py [-n RUNS]

Runs are interleaved (bare, status, ...) so machine noise hits every column alike. Also shown
for scale: importing typer, pydantic, httpx and rich naively, and `llmctl --version` (typer).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _llmctl() -> list[str]:
    script = Path(sys.executable).parent / "llmctl"
    return [str(script)] if script.exists() else [sys.executable, "-m", "llmctl"]


def _time(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--no-bytecode-cache",
        action="store_true",
        help="keep PYTHONDONTWRITEBYTECODE as given: no .pyc written (existing ones still used)",
    )
    ap.add_argument("-n", "--runs", type=int, default=30)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, LLMCTL_STATE_DIR=str(Path(tmp) / "state"))
        if not args.no_bytecode_cache:
            # as installed: .pyc files written once, then reused
            env.pop("PYTHONDONTWRITEBYTECODE", None)
        cases = {
            "bare python -c pass": [sys.executable, "-c", "pass"],
            "llmctl status --json": [*_llmctl(), "status", "--json"],
            "llmctl status": [*_llmctl(), "status"],
            "import typer,pydantic,httpx,rich": [
                sys.executable,
                "-c",
                "import typer, pydantic, httpx, rich",
            ],
            "llmctl --version (typer)": [*_llmctl(), "--version"],
        }
        for cmd in cases.values():  # warm the page cache and .pyc files
            _time(cmd, env)
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.runs):
            for name, cmd in cases.items():
                times[name].append(_time(cmd, env))
    base = statistics.median(times["bare python -c pass"])
    cache = "off (PYTHONDONTWRITEBYTECODE)" if args.no_bytecode_cache else "on"
    print(
        f"{args.runs} runs each, interleaved; python {sys.version.split()[0]}; bytecode cache {cache}"
    )
    print(f"{'command':36} {'median ms':>10} {'min ms':>8} {'x bare':>7}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:36} {med * 1000:10.1f} {min(ts) * 1000:8.1f} {med / base:7.2f}")


if __name__ == "__main__":
    main()
