"""Swap-aware order: agents on profiles that do not fit together, arrival order against
`serve.max_wait` at two bounds, and the same with profiles that fit together.

    uv run python bench/swap_order.py [--requests 100] [--bounds 1,3] [--load-seconds S]

`llmctl serve` with `server.ports`, the real llama-server and tiny profiles on the CPU device with a
budget that holds one of them (from their estimates). 2 and 3 agents, agent i sending its requests
for profile i one after another, all at once. For each setting: loads (llama-server starts) after a
warm-up that loaded one, the requests' p50 and p99 latency, and throughput.

A tiny model loads in about 0.1 s, so arrival order's p99 here is two such loads, far below what
it is on real models (seconds to minutes per load). `--load-seconds S` puts the real
llama-server behind a FAKE slow start (a wrapper that sleeps S seconds, then execs it): a
stand-in for a model that takes S s to load, with everything else real.

Measured (2 cores, one run each):
    --requests 100                               --requests 30 --load-seconds 2
    agents  order          loads  p50 ms  p99 ms   loads   p50 ms   p99 ms
    2       arrival order    196   107.6   133.1      59   4122.2   4159.9
    2       max_wait 1s        1     3.9    19.7       1      3.2   2749.4
    2       max_wait 3s        1     3.1    16.2       1      3.8   2729.8
    2       fit together       0     2.9    15.9       0      8.9    543.4
    3       arrival order    295   171.0   204.7      88   6187.1   6243.8
    3       max_wait 1s        2     4.3    27.8       2      3.8   5439.1
    3       max_wait 3s        2     4.6    17.2       2      3.8   5442.0
    3       fit together       0     5.3   107.3       0      3.3    608.4
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from support import find_llama_server, llmctl_cmd

from placement import MiB, free_port_range, loads_from_metrics, pct

ERRORS: dict[str, int] = {}  # status and error code of every failed request, for the table


def agents(url: str, models: list[str], n: int) -> tuple[list[float], int, float]:
    import httpx

    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    start = threading.Barrier(len(models))

    def agent(model: str) -> None:
        nonlocal errors
        with httpx.Client(timeout=600) as c:
            start.wait()
            for _ in range(n):
                t = time.perf_counter()
                resp = c.post(
                    url + "/v1/chat/completions",
                    json={
                        "model": model,
                        "messages": [{"role": "user", "content": "hi"}],
                        "max_tokens": 4,
                    },
                )
                with lock:
                    latencies.append(time.perf_counter() - t)
                    errors += resp.status_code != 200
                    if resp.status_code != 200:
                        try:
                            code = resp.json()["error"].get("code")
                        except (ValueError, KeyError, AttributeError):
                            code = None
                        what = f"{resp.status_code} {code}"
                        ERRORS[what] = ERRORS.get(what, 0) + 1
                        if os.environ.get("BENCH_SHOW_ERRORS") and ERRORS[what] == 1:
                            print(f"   first {what}: {resp.text[:600]}", flush=True)

    threads = [threading.Thread(target=agent, args=(m,)) for m in models]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors, time.perf_counter() - began


def run(
    tmp: Path, budget: int, profiles: str, max_wait: float, models: list[str], n: int, binary: str
) -> str:
    import httpx

    base = free_port_range(6)
    manifest = tmp / f"m-{base}.yaml"
    manifest.write_text(
        f"version: 1\nserver:\n  binary: {binary}\n  port: {base + 1}\n"
        f"  ports: {base + 1}-{base + 5}\n"
        f"gpu:\n  - {{name: CPU, vram: {budget}, headroom: 0}}\n"
        f"serve:\n  max_wait: {max_wait}\n  queue: {{max_size: 64, timeout: 600}}\n" + profiles
    )
    # LLMCTL_LLAMA_SERVER would win over server.binary
    env = dict(os.environ, LLMCTL_STATE_DIR=str(tmp / f"state-{base}"), LLMCTL_LLAMA_SERVER=binary)
    log = (tmp / f"serve-{base}.log").open("wb")
    proc = subprocess.Popen(
        [*llmctl_cmd(), "serve", "--manifest", str(manifest), "--port", str(base)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{base}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("serve did not start")
            time.sleep(0.05)
        for m in models:  # warm-up: every profile loaded once (what fits stays)
            agents(url, [m], 1)
        before = loads_from_metrics(url)
        lat, errors, wall = agents(url, models, n)
        loads = loads_from_metrics(url) - before
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        subprocess.run([*llmctl_cmd(), "unload", "--all"], env=env, capture_output=True)
    return (
        f"{loads:>6} {statistics.median(lat) * 1e3:>9.1f} {pct(lat, 0.99) * 1e3:>9.1f} "
        f"{len(lat) / wall:>8.2f} {errors:>6}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--bounds", default="1,3", help="serve.max_wait values, seconds")
    parser.add_argument("--agents", default="2,3", help="numbers of agents to run")
    parser.add_argument(
        "--load-seconds", type=float, default=0.0, help="a FAKE slow start of S s per load"
    )
    args = parser.parse_args()
    from llmctl.manifest.validate import load_manifest
    from llmctl.placement.placer import placement_request
    from llmctl.supervisor.devices import detect
    from llmctl.testing.testmodels import write_tiny_model

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        model = write_tiny_model(tmp / "tiny.gguf")
        binary = find_llama_server()
        if args.load_seconds > 0:
            slow = tmp / "llama-server"  # named as llama-server, so process scans know it
            slow.write_text(f'#!/bin/sh\nsleep {args.load_seconds}\nexec "{binary}" "$@"\n')
            slow.chmod(0o755)
            binary = str(slow)
        profiles = "profiles:\n" + "".join(
            f"  {p}: {{model: {model}, ctx_size: {4096 * (i + 1)}, parallel: 1}}\n"
            for i, p in enumerate("abc")
        )
        probe = tmp / "probe.yaml"
        probe.write_text("version: 1\ngpu:\n  - {name: CPU, headroom: 0}\n" + profiles)
        m = load_manifest(probe)
        devices = detect(m.device_configs()).devices
        need = {p: placement_request(m, p, devices).plans[0].usage()["CPU"] for p in "abc"}
        # room for the engine's plan too: once a launch stated it, the placer decides by it,
        # each term rounded up to the MiB (a budget of the formula's figure + 1 MiB refused c)
        slack = 4 * MiB
        one, every = max(need.values()) + slack, sum(need.values()) + slack * len(need)
        slow = f"; each load {args.load_seconds:g} s longer (FAKE)" if args.load_seconds else ""
        print(
            f"## {args.requests} requests per agent; CPU budget {one / MiB:.1f} MiB holds one{slow}"
        )
        print(
            f"{'agents':<7} {'order':<22} {'loads':>6} {'p50 ms':>9} {'p99 ms':>9} "
            f"{'req/s':>8} {'errors':>6}"
        )
        bounds = [float(b) for b in args.bounds.split(",")]
        for k in [int(a) for a in args.agents.split(",")]:
            models = list("abc"[:k])
            settings = [("arrival order", one, 0.0)]
            settings += [(f"max_wait {b:g}s", one, b) for b in bounds]
            settings += [("fit together", every, 0.0)]
            for label, budget, wait in settings:
                ERRORS.clear()
                line = run(tmp, budget, profiles, wait, models, args.requests, binary)
                said = "  " + ", ".join(f"{n} x {w}" for w, n in ERRORS.items()) if ERRORS else ""
                print(f"{k:<7} {label:<22} {line}{said}", flush=True)


if __name__ == "__main__":
    main()
