"""Start-up of every everyday command, cold, against a bare interpreter: before and after, one run.

    uv run python bench/startup.py [-n RUNS] [--baseline REV]

Each command runs as a new process, as a user or a script starts it (`python -m llmctl ...`),
with the bytecode cache on, as installed. "before" runs the same commands on the sources of
REV (default 8570c9d, before the lazily loaded command table and the manifest cache), unpacked
from git into a temporary folder and put first on PYTHONPATH; "after" runs this checkout. Runs
are interleaved (bare, before, after, ...) so machine noise hits every column alike; the figure
is the median, and the ratio is to the bare interpreter's median (`python -c pass`).

A real llama-server runs a tiny model for `switch` (to the running profile: the no-op path),
`status` and `logs`; `stop`, and `status` once more, run against an empty state folder (nothing
running). The binary is found as in bench/readiness.py.
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

ROOT = Path(__file__).resolve().parent.parent
TARGET = 8.0  # at most 8 times a bare interpreter start


def _time(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, int]:
    t0 = time.perf_counter()
    done = subprocess.run(
        cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False
    )
    return time.perf_counter() - t0, done.returncode


def _unpack(rev: str, dest: Path) -> Path:
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "src"], capture_output=True, check=True
    ).stdout
    dest.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest / "src"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", "--runs", type=int, default=20)
    ap.add_argument("--baseline", default="8570c9d", help="git revision to compare with")
    args = ap.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from support import find_llama_server, free_port

    from llmctl.supervisor.lifecycle import Supervisor
    from llmctl.testing.testmodels import write_tiny_model

    binary = find_llama_server()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        before_src = _unpack(args.baseline, tmp / "before")
        model = write_tiny_model(tmp / "tiny.gguf", arch="llama")
        port = free_port()
        manifest = tmp / "profiles.yaml"
        manifest.write_text(
            f'version: 1\nserver: {{binary: "{binary}", port: {port}}}\n'
            f"gpu: {{vram: 8GiB}}\n"
            f'profiles:\n  tiny: {{model: "{model}", ctx_size: 512, parallel: 1}}\n'
            f'  wide: {{model: "{model}", ctx_size: 2048, parallel: 2}}\n'
        )
        running = tmp / "state-running"
        empty = tmp / "state-empty"
        base_env = dict(os.environ)
        base_env.pop("PYTHONDONTWRITEBYTECODE", None)  # as installed: .pyc written once, reused
        for var in ("LLMCTL_MANIFEST", "LLMCTL_LLAMA_SERVER"):
            base_env.pop(var, None)

        def env_for(side: str, state: Path) -> dict[str, str]:
            env = dict(base_env, LLMCTL_STATE_DIR=str(state))
            env["LLMCTL_CACHE_DIR"] = str(tmp / f"cache-{side}")
            if side == "before":
                env["PYTHONPATH"] = str(before_src)
            return env

        llmctl = [sys.executable, "-m", "llmctl"]
        mf = ["--manifest", str(manifest)]
        complete = {
            "_LLMCTL_COMPLETE": "complete_bash",
            "COMP_WORDS": f"llmctl switch --manifest {manifest} t",
            "COMP_CWORD": "4",
        }
        # name, argv, state folder, extra environment
        cases: list[tuple[str, list[str], Path, dict[str, str]]] = [
            ("command PROFILE", ["command", "tiny", *mf], empty, {}),
            ("lint", ["lint", *mf], empty, {}),
            ("estimate PROFILE", ["estimate", "tiny", *mf], empty, {}),
            ("estimate -- ARGS", ["estimate", "--", "-m", str(model), "-c", "512"], empty, {}),
            ("fit PROFILE", ["fit", "tiny", *mf], empty, {}),
            ("switch (no-op)", ["switch", "tiny", "--quiet", *mf], running, {}),
            ("stop (nothing runs)", ["stop"], empty, {}),
            ("status (nothing runs)", ["status"], empty, {}),
            ("status --json (running)", ["status", "--json"], running, {}),
            ("logs -n 5", ["logs", "-n", "5"], running, {}),
            ("ps (running)", ["ps"], running, {}),
            ("load (running: no-op)", ["load", "tiny", "--quiet", *mf], running, {}),
            ("unload (not loaded)", ["unload", "wide", *mf], running, {}),
            ("complete a profile name", [], empty, complete),
            ("--help (may take longer)", ["--help"], empty, {}),
        ]
        sup = Supervisor(running)
        runs: list[tuple[str, str, list[str], dict[str, str]]] = [
            ("bare", "python -c pass", [sys.executable, "-c", "pass"], base_env)
        ]
        for name, argv, state, extra in cases:
            for side in ("before", "after"):
                runs.append((side, name, [*llmctl, *argv], {**env_for(side, state), **extra}))
        times: dict[tuple[str, str], list[float]] = {(s, n): [] for s, n, _, _ in runs}
        try:
            # the running server, as `llmctl switch tiny` would have started it
            subprocess.run(
                [*llmctl, "switch", "tiny", "--quiet", *mf],
                env=env_for("after", running),
                check=True,
            )
            codes = {}
            for side, name, cmd, env in runs:  # warm up: page cache, .pyc files, manifest cache
                codes[(side, name)] = _time(cmd, env, tmp)[1]
            for _ in range(args.runs):
                for side, name, cmd, env in runs:
                    times[(side, name)].append(_time(cmd, env, tmp)[0])
        finally:
            sup.stop()

    bare = statistics.median(times[("bare", "python -c pass")])
    print(
        f"{args.runs} runs each, interleaved; python {sys.version.split()[0]}; "
        f"bare interpreter {bare * 1000:.1f} ms; before = {args.baseline}, after = this checkout"
    )
    print(f"{'command':26} {'before ms':>10} {'x bare':>7} {'after ms':>10} {'x bare':>7}  <= 8x")
    for name, *_ in cases:
        b = statistics.median(times[("before", name)])
        a = statistics.median(times[("after", name)])
        ok = "yes" if a / bare <= TARGET else "NO"
        if name.startswith("--help"):
            ok = "-"
        if codes[("after", name)] not in (0, 1):  # 1: `unload` of what is not loaded says so
            ok = f"exit {codes[('after', name)]}"
        before = f"{b * 1000:10.1f} {b / bare:7.1f}"
        if codes[("before", name)] == 2:  # a usage error: the command did not exist yet
            before = f"{'-':>10} {'-':>7}"
        print(f"{name:26} {before} {a * 1000:10.1f} {a / bare:7.1f}  {ok}")


if __name__ == "__main__":
    main()
