"""Stopping the processes a test started, the same way everywhere."""

from __future__ import annotations

import signal
import subprocess
import sys


def stop_process(
    proc: subprocess.Popen[bytes] | subprocess.Popen[str],
    timeout: float = 10.0,
    sig: int = signal.SIGTERM,
) -> int:
    """Send `sig` (SIGTERM), wait up to `timeout`, then SIGKILL; returns the exit status."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def llmctl(
    *args: str, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`llmctl ARGS` as a user runs it: its own process, text output, any exit status; `env`
    (else this one's) is its whole environment."""
    return subprocess.run(
        [sys.executable, "-m", "llmctl", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
    )
