"""`llmctl status --json` with nothing running, side by side with a bare interpreter start.

    uv run python bench/status_startup.py [-n RUNS]

Runs are interleaved (bare, status, ...) so machine noise hits every column alike. Also shown
for scale: importing typer, pydantic, httpx and rich naively, and `llmctl --version` (typer).
With --with-server, also `llmctl status --json` while a llama-server runs (a tiny model; the
binary as in bench/readiness.py): that path reads the state, checks /health and the log.
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
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llmctl.supervisor.lifecycle import Supervisor


def _llmctl() -> list[str]:
    script = Path(sys.executable).parent / "llmctl"
    return [str(script)] if script.exists() else [sys.executable, "-m", "llmctl"]


def _time(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


def _start_server(folder: Path) -> tuple[Supervisor, dict[str, str]]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from readiness import find_llama_server, free_port

    from llmctl.llama.tinymodel import write_tiny_model
    from llmctl.supervisor.launch import LaunchSpec
    from llmctl.supervisor.lifecycle import Supervisor

    model = write_tiny_model(folder / "tiny.gguf", arch="llama")
    port = free_port()
    argv = (find_llama_server(), "-m", str(model), "-c", "512", "-np", "1", "--port", str(port))
    state = folder / "server-state"
    sup = Supervisor(state)
    res = sup.switch(LaunchSpec(profile="tiny", argv=argv, port=port))
    if not res.ready:
        raise SystemExit(f"llama-server did not start: {res.error}")
    env = dict(os.environ, LLMCTL_STATE_DIR=str(state))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return sup, env


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--no-bytecode-cache",
        action="store_true",
        help="keep PYTHONDONTWRITEBYTECODE as given: no .pyc written (existing ones still used)",
    )
    ap.add_argument("-n", "--runs", type=int, default=30)
    ap.add_argument("--with-server", action="store_true")
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
        runs = [(name, cmd, env) for name, cmd in cases.items()]
        sup = None
        if args.with_server:
            sup, server_env = _start_server(Path(tmp))
            cmd = [*_llmctl(), "status", "--json"]
            runs.append(("llmctl status --json (running)", cmd, dict(server_env)))
        try:
            for _, cmd, run_env in runs:  # warm the page cache and .pyc files
                _time(cmd, run_env)
            times: dict[str, list[float]] = {name: [] for name, _, _ in runs}
            for _ in range(args.runs):
                for name, cmd, run_env in runs:
                    times[name].append(_time(cmd, run_env))
        finally:
            if sup is not None:
                sup.stop()
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
