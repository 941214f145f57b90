"""Placement: decisions per second against one estimate, and a mixed router workload with
placement against one server at a time, side by side in one run.

    uv run python bench/placement.py [--clients 32] [--rounds 6]

1. Decisions: the pure policy (llmctl.placement.policy.decide) for 50 profiles over 4 GPUs
   and the CPU device, 8 servers running, against one `llmctl estimate --all` of 50 profiles
   (the CLI, wall time) and the in-process estimate + per-device plan of one profile.
2. Router: `llmctl serve` with the real llama-server and three tiny profiles on the CPU device
   with a budget that holds any two of them but not all three (from their estimates). Once with `server.ports` (placement) and once without (one server at a time,
   today's behaviour). Phase "a/b": 32 concurrent clients, requests alternating a and b, after a
   warm-up that loaded both. Phase "a/b/c": the same clients cycling a, b, c. For each: loads
   (llama-server starts) during the phase, and the requests' median and p99 latency.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from support import find_llama_server, llmctl_cmd

ROOT = Path(__file__).resolve().parent.parent
GiB = 1024**3
MiB = 1024**2


def free_port_range(n: int) -> int:
    for _ in range(200):
        base = random.randrange(20000, 60000)
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range")


# --------------------------------------------------------------------------- decisions


def bench_decisions(tmp: Path) -> None:
    from llmctl.placement.policy import Device, Option, Request, Running, decide
    from llmctl.testing.testmodels import write_tiny_model

    rng = random.Random(7)
    devices = [Device(f"CUDA{i}", 24 * GiB, GiB) for i in range(4)] + [
        Device("CPU", 128 * GiB, 4 * GiB)
    ]
    profiles = []
    for i in range(50):
        options = []
        for d in range(4):  # each GPU alone, then all four split
            options.append(Option({f"CUDA{d}": rng.randint(2, 20) * GiB, "CPU": GiB}))
        split = rng.randint(8, 60) * GiB
        options.append(Option({f"CUDA{d}": split // 4 for d in range(4)} | {"CPU": GiB}))
        profiles.append(Request(f"p{i}", options, group="big" if i % 10 == 0 else None))
    running = [
        Running(
            f"p{i}",
            {f"CUDA{i % 4}": rng.randint(2, 10) * GiB, "CPU": GiB},
            reload_cost=rng.randint(1, 20) * GiB,
            last_used=float(i),
            inflight=i % 3 == 0,
        )
        for i in range(40, 48)
    ]
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 2.0:
        for req in profiles:
            decide(devices, running, req)
        n += len(profiles)
    per_s = n / (time.perf_counter() - t0)

    model = write_tiny_model(tmp / "m.gguf", n_layer=8)
    manifest = tmp / "estimate.yaml"
    gpus = "\n".join(f"  - {{name: CUDA{i}, vram: 24GiB}}" for i in range(4))
    body = "\n".join(
        f"  p{i}: {{model: {model}, ctx_size: {1024 * (1 + i % 8)}}}" for i in range(50)
    )
    manifest.write_text(f"version: 1\ngpu:\n{gpus}\nprofiles:\n{body}\n")
    runs = []
    for _ in range(3):
        t = time.perf_counter()
        subprocess.run(
            [*llmctl_cmd(), "estimate", "--all", "--json", "--manifest", str(manifest)],
            check=True,
            capture_output=True,
        )
        runs.append(time.perf_counter() - t)
    from llmctl.manifest.validate import load_manifest
    from llmctl.placement.placer import placement_request
    from llmctl.supervisor.devices import detect

    m = load_manifest(manifest)
    report = detect(m.device_configs())
    k = 0
    t = time.perf_counter()
    while time.perf_counter() - t < 1.0:
        placement_request(m, f"p{k % 50}", report.devices)
        k += 1
    one = (time.perf_counter() - t) / k
    print("## Placement decisions (50 profiles, 4 GPUs + CPU, 8 running)")
    print(f"{'what':<52} {'time':>12} {'per second':>12}")
    print(f"{'decide() (pure policy), one decision':<52} {1e6 / per_s:>9.1f} us {per_s:>12.0f}")
    est = statistics.median(runs)
    print(
        f"{'`llmctl estimate --all` of 50 profiles (CLI)':<52} {est * 1e3:>9.1f} ms {50 / est:>12.1f}"
    )
    print(
        f"{'estimate + per-device plan of one profile':<52} {one * 1e3:>9.2f} ms {1 / one:>12.0f}"
    )
    print(f"decisions per `llmctl estimate --all`: {per_s * est:,.0f}")
    print()


# --------------------------------------------------------------------------- router


def loads_from_metrics(url: str) -> int:
    import httpx

    text = httpx.get(url + "/metrics", timeout=10).text
    total = 0
    for line in text.splitlines():
        if line.startswith("llmctl_switch_duration_seconds_count") and 'profile=""' not in line:
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def run_phase(url: str, models: list[str], clients: int, rounds: int) -> tuple[list[float], int]:
    import httpx

    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    start = threading.Barrier(clients)

    def client(i: int) -> None:
        nonlocal errors
        with httpx.Client(timeout=600) as c:
            start.wait()
            for r in range(rounds):
                model = models[(i + r) % len(models)]
                t = time.perf_counter()
                resp = c.post(
                    url + "/v1/chat/completions",
                    json={
                        "model": model,
                        "messages": [{"role": "user", "content": "hi"}],
                        "max_tokens": 4,
                    },
                )
                dt = time.perf_counter() - t
                with lock:
                    latencies.append(dt)
                    if resp.status_code != 200:
                        errors += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def bench_router(tmp: Path, clients: int, rounds: int) -> None:
    import httpx

    from llmctl.testing.testmodels import write_tiny_model

    binary = find_llama_server()
    model = write_tiny_model(tmp / "tiny.gguf")
    results: dict[str, dict[str, tuple[int, float, float, int]]] = {}
    profiles = (
        "profiles:\n"
        f"  a: {{model: {model}, ctx_size: 4096, parallel: 4}}\n"
        f"  b: {{model: {model}, ctx_size: 8192, parallel: 4}}\n"
        f"  c: {{model: {model}, ctx_size: 16384, parallel: 4}}\n"
    )
    # the budget: any two fit together, all three do not
    from llmctl.manifest.validate import load_manifest
    from llmctl.placement.placer import placement_request
    from llmctl.supervisor.devices import detect

    probe = tmp / "probe.yaml"
    probe.write_text("version: 1\ngpu:\n  - {name: CPU, headroom: 0}\n" + profiles)
    m = load_manifest(probe)
    report = detect(m.device_configs())
    need = {p: placement_request(m, p, report.devices).plans[0].usage()["CPU"] for p in "abc"}
    budget = sum(need.values()) - MiB
    for mode in ("placement", "one at a time"):
        base = free_port_range(6)
        ports = f"  ports: {base + 1}-{base + 5}\n" if mode == "placement" else ""
        manifest = tmp / f"{mode.replace(' ', '-')}.yaml"
        manifest.write_text(
            f"version: 1\nserver:\n  binary: {binary}\n  port: {base + 1}\n{ports}"
            f"gpu:\n  - {{name: CPU, vram: {budget}, headroom: 0}}\n"
            "serve:\n  queue: {max_size: 64, timeout: 600}\n" + profiles
        )
        env = dict(os.environ, LLMCTL_STATE_DIR=str(tmp / f"state-{base}"))
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
            for m in ("a", "b"):  # warm-up: both loaded (placement) or b running
                run_phase(url, [m], 1, 1)
            mode_results = {}
            for phase, models in (("a/b", ["a", "b"]), ("a/b/c", ["a", "b", "c"])):
                before = loads_from_metrics(url)
                lat, errors = run_phase(url, models, clients, rounds)
                loads = loads_from_metrics(url) - before
                mode_results[phase] = (loads, statistics.median(lat), pct(lat, 0.99), errors)
            results[mode] = mode_results
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            subprocess.run(
                [*llmctl_cmd(), "unload", "--all"], env=env, capture_output=True, check=False
            )
    sizes = ", ".join(f"{p} {n / MiB:.1f} MiB" for p, n in need.items())
    print(
        f"## Router: {clients} concurrent clients x {rounds} requests; "
        f"CPU budget {budget / MiB:.1f} MiB ({sizes}: any two fit, not all three)"
    )
    print(f"{'phase':<8} {'mode':<15} {'loads':>6} {'p50 ms':>9} {'p99 ms':>9} {'errors':>7}")
    for phase in ("a/b", "a/b/c"):
        for mode in ("placement", "one at a time"):
            loads, p50, p99, errors = results[mode][phase]
            print(
                f"{phase:<8} {mode:<15} {loads:>6} {p50 * 1e3:>9.1f} {p99 * 1e3:>9.1f} {errors:>7}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--skip-router", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        bench_decisions(tmp)
        if not args.skip_router:
            bench_router(tmp, args.clients, args.rounds)


if __name__ == "__main__":
    main()
