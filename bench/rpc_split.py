"""llmctl's per-device plan of a model split over llama.cpp RPC servers, beside what llama-server
logs for each device's buffers, in one run.

    LLMCTL_RPC=1 scripts/build-llama-server.sh      # once: llama-server with RPC, ggml-rpc-server
    uv run python bench/rpc_split.py

Two `ggml-rpc-server`s on loopback (budgets 3 GiB and 2 GiB in the manifest: -ts 3,2) and
llama-server started with llmctl's own command line for two profiles of a tiny generated model
(7 blocks): every layer offloaded (pipeline parallelism on), and -ngl 5 (3 blocks stay here).
For each device: weights, KV cache and compute buffer, planned and logged (`-lv 4`, MiB as
printed), and the difference. The servers and llama-server are the ones tests/llama/test_rpc_split.py
starts (its helpers are used here, so both measure the same thing).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "llama"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from support import free_port
from test_rpc_split import plan_and_log, side_by_side, start_rpc_server

from llmctl.memory.estimate import mib
from processes import stop_process

ROOT = Path(__file__).resolve().parent.parent


def rpc_build() -> Path:
    given = os.environ.get("LLMCTL_TEST_LLAMA_SERVER_RPC")
    if given:
        return Path(given).parent
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build-llama-server.sh")],
        stdout=subprocess.PIPE,
        text=True,
        check=True,
        env={**os.environ, "LLMCTL_RPC": "1"},
    )
    return Path(out.stdout.strip().splitlines()[-1]).parent


def main() -> None:
    build = rpc_build()
    ports = [free_port(), free_port()]
    servers = [start_rpc_server(build, p) for p in ports]
    try:
        endpoints = [f"127.0.0.1:{p}" for p in ports]
        for profile in ("split", "partial"):
            with tempfile.TemporaryDirectory() as tmp:
                plan, reported, _ = plan_and_log(Path(tmp), build, endpoints, free_port(), profile)
            print(f"profile {profile}: {' '.join(plan.launch_args())}")
            print(f"  {'device':26} {'part':8} {'planned MiB':>12} {'logged MiB':>11} {'diff':>8}")
            rows = side_by_side(plan, reported)
            host = plan.shares[-1]
            rows["CPU (this machine)"] = {
                "model": (mib(host.weights_bytes), reported.model.get("CPU_Mapped", 0.0)),
                "kv": (mib(host.kv_bytes), reported.kv.get("CPU", 0.0)),
                "compute": (mib(host.compute_bytes), reported.compute.get("CPU", 0.0)),
            }
            for device, parts in rows.items():
                share = next((s for s in plan.shares if s.device == device), host)
                where = f"{share.layers} layers" + (" + output" if share.output else "")
                for part, (planned, logged) in parts.items():
                    diff = f"{planned / logged - 1:+.1%}" if logged else "-"
                    print(f"  {device:26} {part:8} {planned:12.2f} {logged:11.2f} {diff:>8}")
                print(f"  {'':26} ({where})")
            print()
    finally:
        for proc in servers:
            stop_process(proc)
            if proc.stdout is not None:
                proc.stdout.close()


if __name__ == "__main__":
    main()
