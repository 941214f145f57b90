#!/usr/bin/env python3
"""FAKE llama-server for the engine-plan probe: the faults a real one does not do on demand.

`--help` lists `--log-jsonl` (mode `old`: it does not); `--version` prints a version line.
Otherwise it behaves as $FAKE_ENGINE_MODE says:
  plan         a log line, then a well-formed fit_memory_breakdown event, then waits to be stopped
  host         the same with one host row: model 10, context 4, compute 2 MiB
  garbage      the event with a row that is not an object
  unit         the event in an unknown unit
  huge         a 2 MiB line first, then the event
  flood        log lines without end, no event
  hang         one log line, then nothing (waits for SIGTERM)
  loaded       a "model loaded" line and no event (as with `--fit off`)
  crash        one log line, then exits 3
  ignore-term  the event, then ignores SIGTERM (only SIGKILL stops it)
Every run (but --help/--version) first writes its pid to $FAKE_ENGINE_PIDFILE when set.
"""

from __future__ import annotations

import json
import os
import signal
import sys

MODE = os.environ.get("FAKE_ENGINE_MODE", "plan")
ROWS = [
    {"kind": "device", "name": "CUDA0", "total": 24576, "free": 23000, "self": 1300,
     "model": 1000, "context": 200, "compute": 100, "unaccounted": 0},
    {"kind": "host", "name": "Host", "self": 60, "model": 50, "context": 0, "compute": 10},
    {"kind": "buffer_type", "name": "CUDA_Host", "self": 10, "model": 0, "context": 0,
     "compute": 10},
]  # fmt: skip


def out(obj: object) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def event(rows: object, unit: str = "MiB") -> None:
    out({"type": "fit_memory_breakdown", "data": {"unit": unit, "rows": rows}})


def write_pidfile() -> None:
    """Whole or not at all (a probe may stop this process at any moment), before any output."""
    pidfile = os.environ.get("FAKE_ENGINE_PIDFILE")
    if pidfile:
        with open(pidfile + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.replace(pidfile + ".tmp", pidfile)


def wait_forever() -> None:
    while True:
        signal.pause()


def main() -> int:
    if "--help" not in sys.argv and "--version" not in sys.argv:
        write_pidfile()
    if "--help" in sys.argv:
        flags = [
            "-m, --model FNAME", "-c, --ctx-size N", "--port PORT", "-np, --parallel N",
            "--host HOST", "-ngl, --n-gpu-layers N", "-fa, --flash-attn [on|off|auto]",
            "-ctk, --cache-type-k TYPE", "-ctv, --cache-type-v TYPE", "-b, --batch-size N",
            "-ub, --ubatch-size N", "--jinja", "--metrics", "--alias STRING",
        ]  # fmt: skip
        if MODE != "old":
            flags.append("--log-jsonl")
        print("\n".join(flags))
        return 0
    if "--version" in sys.argv:
        print("version: 9093 (b9093)", file=sys.stderr)
        return 0
    if MODE == "ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    out({"type": "log", "time": 1, "level": "info", "msg": "srv  llama_server: initializing\n"})
    if MODE in ("plan", "ignore-term"):
        event(ROWS)
    elif MODE == "host":
        event(
            [{"kind": "host", "name": "Host", "self": 16, "model": 10, "context": 4, "compute": 2}]
        )
    elif MODE == "garbage":
        event([ROWS[0], "not a row"])
    elif MODE == "unit":
        event(ROWS, unit="furlongs")
    elif MODE == "huge":
        sys.stdout.write("x" * (2 * 1024 * 1024) + "\n")
        event(ROWS)
    elif MODE == "flood":
        line = json.dumps({"type": "log", "level": "info", "msg": "y" * 1000}) + "\n"
        while True:
            sys.stdout.write(line)
    elif MODE == "loaded":
        out({"type": "log", "level": "info", "msg": "srv  llama_server: model loaded\n"})
    elif MODE == "crash":
        print("error: something went wrong", file=sys.stderr)
        return 3
    wait_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
