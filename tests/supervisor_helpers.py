"""Shared helpers for the supervisor tests: LaunchSpecs for the FAKE llama-server, cleanup."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path

from llmctl.supervisor import procs
from llmctl.supervisor.launch import LaunchSpec

FAKE = Path(__file__).resolve().parent / "fakes" / "fake_llama_server.py"


def fake_spec(
    port: int,
    profile: str = "a",
    mode: str = "ok",
    *extra: str,
    ready_timeout: float = 30.0,
    stall_timeout: float = 10.0,
    stop_timeout: float = 5.0,
) -> LaunchSpec:
    argv = (sys.executable, str(FAKE), "--port", str(port), "--mode", mode, *extra)
    return LaunchSpec(
        profile=profile,
        argv=argv,
        port=port,
        ready_timeout=ready_timeout,
        stall_timeout=stall_timeout,
        stop_timeout=stop_timeout,
    )


def fake_pids() -> list[int]:
    """Live FAKE servers started by this test session (any launch)."""
    found = []
    mark = os.environ["LLMCTL_TEST_SESSION"]
    for pid in procs.all_pids():
        ours = procs.environ_has(pid, f"LLMCTL_TEST_SESSION={mark}")
        cmd = procs.cmdline(pid)
        if cmd.endswith((" --help", " --version", " --list-devices")):
            continue  # a question llmctl asks the binary (llama/binary.py), not a server
        if ours and str(FAKE) in cmd and procs.is_alive(pid):
            found.append(pid)
    return found


def kill_fakes() -> None:
    for pid in fake_pids():
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def wait_until(cond: object, timeout: float = 10.0, step: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(cond) and cond():
            return True
        time.sleep(step)
    return bool(callable(cond) and cond())
