#!/usr/bin/env python3
"""FAKE llama-server for the engine-plan probe: the faults a real one does not do on demand.

`--help` lists `--log-jsonl` (modes `old` and `old-nofit`: it does not); `--version` prints a
version line. Otherwise it behaves as $FAKE_ENGINE_MODE says:
  old          a build without --log-jsonl (b9093): refuses that flag as b9093 does; else logs
               text and its plan as b9093's text table (TEXT_TABLE), then waits to be stopped
  old-nofit    the same build with `--fit off`: text lines, "model loaded", no table
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
    # the CPU's extra buffer type: neither the host's (CUDA_Host is) nor a device's
    {"kind": "buffer_type", "name": "CPU_REPACK", "self": 10, "model": 10, "context": 0,
     "compute": 0},
]  # fmt: skip


# b9093's table (common_memory_breakdown_print), as it prints it before loading a model
TEXT_TABLE = """\
0.00.010.000 I common_init_result: fitting params to device memory, for bugs during this step try to reproduce them with -fit off
0.00.010.100 I common_params_fit_impl: getting device memory data for initial parameters:
0.00.010.200 I common_memory_breakdown_print: | memory breakdown [MiB] | total   free    self   model   context   compute    unaccounted |
0.00.010.300 I common_memory_breakdown_print: |   - CUDA0 (RTX 3090)   | 24135 = 22741 + ( 1300 =  1000 +     200 +     100) +          94 |
0.00.010.400 I common_memory_breakdown_print: |   - Host               |                    60 =    50 +       0 +      10                |
0.00.010.500 I common_memory_breakdown_print: |   - CPU_REPACK         |                    10 =    10 +       0 +       0                |
0.00.010.600 I common_params_fit_impl: projected to use 1300 MiB of device memory vs. 22741 MiB of free device memory
"""


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
        if not MODE.startswith("old"):
            flags.append("--log-jsonl")
        print("\n".join(flags))
        return 0
    if "--version" in sys.argv:
        print("version: 9093 (b9093)", file=sys.stderr)
        return 0
    if MODE == "ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if MODE.startswith("old"):
        if "--log-jsonl" in sys.argv:
            print("error: invalid argument: --log-jsonl", file=sys.stderr)
            return 1
        print("0.00.004.891 I srv  llama_server: initializing ...", file=sys.stderr, flush=True)
        if MODE == "old":
            sys.stderr.write(TEXT_TABLE)
        else:
            print("0.00.115.102 I srv  llama_server: model loaded", file=sys.stderr, flush=True)
        sys.stderr.flush()
        wait_forever()
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
