"""Shared helpers for the supervisor tests: LaunchSpecs for the FAKE and the REAL llama-server,
the servers a test left, cleanup."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path

from llmctl.supervisor import procs
from llmctl.supervisor.launch import KeepKv, LaunchSpec

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


def real_spec(
    binary: Path,
    model: Path,
    port: int,
    profile: str = "tiny",
    *extra: str,
    ctx_size: int = 512,
    keep_kv: KeepKv | None = None,
) -> LaunchSpec:
    """A launch of the REAL llama-server on a test model, as launch_spec makes one: one slot of
    `ctx_size` tokens, `extra` flags last, time-outs for a loaded 2-CPU machine."""
    argv = (str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port))
    argv += ("-c", str(ctx_size), "-np", "1", *extra)
    return LaunchSpec(
        profile=profile,
        argv=argv,
        port=port,
        ready_timeout=60,
        stall_timeout=30,
        model=str(model),
        keep_kv=keep_kv,
    )


def llama_pids(binary: Path, state_dir: Path | None = None) -> list[int]:
    """Live llama-servers started by this test session (others may run the same binary); with
    `state_dir`, only those of that state folder (of this test: others run at the same time)."""
    mark = f"LLMCTL_TEST_SESSION={os.environ['LLMCTL_TEST_SESSION']}"
    if state_dir is not None:
        mark = f"LLMCTL_STATE_DIR={state_dir}"
    return [
        p
        for p in procs.all_pids()
        if procs.cmdline(p).startswith(str(binary))
        and procs.environ_has(p, mark)
        and procs.is_alive(p)
    ]


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
