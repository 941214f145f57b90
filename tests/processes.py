"""Stopping the processes a test started, the same way everywhere."""

from __future__ import annotations

import signal
import subprocess


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
