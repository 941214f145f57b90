"""What nvidia-smi says of llama-server's processes, where it is present: the GPU memory a
process holds (what the card really lost, CUDA context included) and its release after a stop
(bounded waits)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterable

MiB = 1024 * 1024


def _query(what: str) -> list[list[str]] | None:
    """nvidia-smi's CSV rows for `--query-...=...`; None when nvidia-smi is absent or fails."""
    from llmctl.supervisor.devices import nvidia_smi_path

    exe = nvidia_smi_path()
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, what, "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return [[cell.strip() for cell in line.split(",")] for line in out.stdout.splitlines()]


def gpu_pids() -> set[int] | None:
    """Pids holding GPU memory per nvidia-smi; None when nvidia-smi is absent or fails."""
    rows = _query("--query-compute-apps=pid")
    if rows is None:
        return None
    return {int(row[0]) for row in rows if row and row[0].isdigit()}


def used_by(pid: int, visible: str | None = None) -> dict[str, int] | None:
    """{CUDAi: bytes} the process `pid` holds per nvidia-smi, named as llama.cpp names the
    devices it sees (`visible`: the process's CUDA_VISIBLE_DEVICES, physical indices, so
    "2,3" makes GPU 2 CUDA0); None when nvidia-smi is absent, fails or does not list it."""
    gpus = _query("--query-gpu=index,uuid")
    apps = _query("--query-compute-apps=pid,gpu_uuid,used_memory")
    if gpus is None or apps is None:
        return None
    index = {row[1]: int(row[0]) for row in gpus if len(row) == 2 and row[0].isdigit()}
    order: list[int] | None = None
    if visible:
        try:
            order = [int(x) for x in visible.split(",") if x.strip()]
        except ValueError:
            return None  # UUIDs or MIG names: not mapped to llama.cpp's names here
    used: dict[str, int] = {}
    for row in apps:
        if len(row) != 3 or row[0] != str(pid) or not row[2].isdigit():
            continue
        physical = index.get(row[1])
        if physical is None:
            continue
        if order is not None:
            if physical not in order:
                continue
            physical = order.index(physical)
        name = f"CUDA{physical}"
        used[name] = used.get(name, 0) + int(row[2]) * MiB
    return used or None


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
