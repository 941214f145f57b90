"""GPU memory release after a stop, where nvidia-smi is present (bounded wait)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterable


def gpu_pids() -> set[int] | None:
    """Pids holding GPU memory per nvidia-smi; None when nvidia-smi is absent or fails."""
    from llmctl.supervisor.devices import nvidia_smi_path

    exe = nvidia_smi_path()
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-compute-apps=pid", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    pids = set()
    for line in out.stdout.splitlines():
        line = line.strip()
        if line.isdigit():
            pids.add(int(line))
    return pids


def wait_released(pids: Iterable[int], timeout: float) -> bool | None:
    """Wait until none of `pids` holds GPU memory. None when it cannot be known."""
    wanted = set(pids)
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        held = gpu_pids()
        if held is None:
            return None
        if not (held & wanted):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.5)
