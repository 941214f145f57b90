"""Readiness overhead of `llmctl switch`, side by side with llama-server started by hand.

    uv run python bench/readiness.py [-n RUNS]

The llama-server is $LLMCTL_LLAMA_SERVER, else llama-server on PATH, else the test bed's build
(scripts/build-llama-server.sh); the model is a tiny random-weight GGUF. Each round, interleaved:

  by hand      Popen(argv), then GET /health every 5 ms until 200: the server's own time to ready
  in-process   Supervisor.switch(spec) from nothing running: the supervisor's cost without the CLI
  llmctl       `llmctl switch PROFILE --quiet` from nothing running, wall time of the command
  CLI start    `llmctl command PROFILE`: the same CLI start, manifest load and profile -> argv as
               `llmctl switch`, without launching anything

The same argv (from the manifest) is used by all three; --no-warmup keeps llama-server's own
load time steady, since the figure of interest is the supervisor's delay, not the model's. Stops
between runs are not timed. The paired medians (per round) are the least noisy figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from support import find_llama_server, free_port, llmctl_cmd

ROOT = Path(__file__).resolve().parent.parent


def by_hand(argv: tuple[str, ...], url: str, log: Path) -> float:
    from llmctl.supervisor.health import health_status

    with log.open("wb") as f:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            while health_status(url, 1.0) != 200:
                if proc.poll() is not None:
                    raise SystemExit(f"llama-server exited: see {log}")
                time.sleep(0.005)
            return time.perf_counter() - t0
        finally:
            proc.terminate()
            proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--no-bytecode-cache",
        action="store_true",
        help="keep PYTHONDONTWRITEBYTECODE as given: no .pyc written (existing ones still used)",
    )
    ap.add_argument("-n", "--runs", type=int, default=15)
    args = ap.parse_args()

    from llmctl.manifest.validate import load_manifest
    from llmctl.supervisor.launch import launch_spec
    from llmctl.supervisor.lifecycle import Supervisor
    from llmctl.testing.testmodels import write_tiny_model

    binary = find_llama_server()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = write_tiny_model(folder / "tiny.gguf", arch="llama")
        port = free_port()
        manifest = folder / "profiles.yaml"
        manifest.write_text(
            f'version: 1\nserver: {{binary: "{binary}", port: {port}}}\n'
            f'profiles:\n  tiny: {{model: "{model}", ctx_size: 512, parallel: 1,'
            ' extra_args: ["--no-warmup"]}\n'
        )
        spec = launch_spec(load_manifest(manifest), "tiny")
        state = folder / "state"
        env = dict(os.environ, LLMCTL_STATE_DIR=str(state))
        if not args.no_bytecode_cache:
            # as installed: .pyc files written once, then reused
            env.pop("PYTHONDONTWRITEBYTECODE", None)
        sup = Supervisor(state)
        cli = llmctl_cmd()
        rows: dict[str, list[float]] = {
            "by hand": [],
            "in-process": [],
            "llmctl": [],
            "CLI start": [],
        }

        def cli_switch() -> float:
            t0 = time.perf_counter()
            subprocess.run(
                [*cli, "switch", "tiny", "--manifest", str(manifest), "--quiet"],
                env=env,
                stdout=subprocess.DEVNULL,
                check=True,
            )
            return time.perf_counter() - t0

        def cli_start() -> float:
            t0 = time.perf_counter()
            subprocess.run(
                [*cli, "command", "tiny", "--manifest", str(manifest)],
                env=env,
                stdout=subprocess.DEVNULL,
                check=True,
            )
            return time.perf_counter() - t0

        def in_process() -> float:
            t0 = time.perf_counter()
            res = sup.switch(spec)
            took = time.perf_counter() - t0
            if not res.ready:
                raise SystemExit(f"switch failed: {res.error}")
            return took

        # warm up: page cache, .pyc files
        by_hand(spec.argv, spec.url, folder / "hand.log")
        in_process()
        sup.stop()
        cli_switch()
        sup.stop()
        cli_start()
        try:
            for _ in range(args.runs):
                rows["by hand"].append(by_hand(spec.argv, spec.url, folder / "hand.log"))
                rows["in-process"].append(in_process())
                sup.stop()
                rows["llmctl"].append(cli_switch())
                sup.stop()
                rows["CLI start"].append(cli_start())
        finally:
            sup.stop()

    med = {k: statistics.median(v) * 1000 for k, v in rows.items()}
    print(f"llama-server: {binary}")
    print(f"argv: {spec.shell()}")
    cache = "off (PYTHONDONTWRITEBYTECODE)" if args.no_bytecode_cache else "on"
    print(f"{args.runs} rounds, interleaved; times in ms; bytecode cache {cache}")
    print(f"{'':34} {'median':>8} {'min':>8} {'max':>8}")
    for name, ts in rows.items():
        ms = [t * 1000 for t in ts]
        print(f"{name:34} {statistics.median(ms):8.1f} {min(ms):8.1f} {max(ms):8.1f}")
    hand = med["by hand"]
    print()
    print(f"in-process overhead (switch - by hand):          {med['in-process'] - hand:7.1f} ms")
    print(
        f"llmctl switch overhead (llmctl - by hand):       {med['llmctl'] - hand:7.1f} ms"
        "   (target: < 150 ms)"
    )
    print(f"  of which CLI start (llmctl command PROFILE):   {med['CLI start']:7.1f} ms")
    print(
        "  readiness overhead beyond the CLI start:       "
        f"{med['llmctl'] - hand - med['CLI start']:7.1f} ms   (target: < 30 ms)"
    )
    # per-round differences: a median of paired differences is less noisy
    paired = [(a - b) * 1000 for a, b in zip(rows["in-process"], rows["by hand"], strict=True)]
    print(f"median of paired (in-process - by hand):         {statistics.median(paired):7.1f} ms")
    paired = [(a - b) * 1000 for a, b in zip(rows["llmctl"], rows["by hand"], strict=True)]
    print(
        f"median of paired (llmctl - by hand):             {statistics.median(paired):7.1f} ms"
        "   (target: < 150 ms)"
    )
    paired = [
        (a - b - c) * 1000
        for a, b, c in zip(rows["llmctl"], rows["by hand"], rows["CLI start"], strict=True)
    ]
    print(f"median of paired (llmctl - by hand - CLI start): {statistics.median(paired):7.1f} ms")


if __name__ == "__main__":
    main()
