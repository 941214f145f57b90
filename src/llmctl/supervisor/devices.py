"""The devices of this machine: the manifest's list, completed by nvidia-smi and /proc/meminfo.

Configured values win. nvidia-smi is asked once, with a short timeout; when it is missing, slow or
prints something unreadable, the manifest's figures stand and a warning says why (never a hang).
The CPU device (system RAM) is always there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmctl.manifest.view import Device

MiB = 1024**2
GPU_OVERHEAD = 400 * MiB
SMI_TIMEOUT = 2.0


@dataclass
class DeviceInfo:
    name: str
    budget: int | None  # bytes; None when neither the manifest nor the machine says
    headroom: int
    overhead: int
    total: int | None = None  # from nvidia-smi or /proc/meminfo
    free: int | None = None
    source: str = "manifest"  # where the budget came from
    listed: bool = True  # named in the manifest (else the implicit CPU or the old `gpu:` mapping)
    rpc: str | None = None  # host:port of the ggml-rpc-server whose device this is

    @property
    def is_cpu(self) -> bool:
        return self.name.upper() == "CPU"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "budget_bytes": self.budget,
            "headroom_bytes": self.headroom,
            "overhead_bytes": self.overhead,
            "total_bytes": self.total,
            "free_bytes": self.free,
            "source": self.source,
            "rpc": self.rpc,
        }


@dataclass
class DeviceReport:
    devices: list[DeviceInfo]
    warnings: list[str] = field(default_factory=list)


def meminfo(path: str = "/proc/meminfo") -> tuple[int | None, int | None]:
    """(MemTotal, MemAvailable) in bytes; None where unknown."""
    total = avail = None
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if not parts or not parts[0].isdigit():
                    continue
                value = int(parts[0]) * (1024 if parts[1:2] == ["kB"] else 1)
                if key == "MemTotal":
                    total = value
                elif key == "MemAvailable":
                    avail = value
    except OSError:
        pass
    return total, avail


def nvidia_smi_path() -> str | None:
    """$LLMCTL_NVIDIA_SMI, else nvidia-smi on PATH (without importing shutil); None: no NVIDIA."""
    from llmctl.paths import on_path

    return os.environ.get("LLMCTL_NVIDIA_SMI") or on_path("nvidia-smi")


def nvidia_smi(
    timeout: float = SMI_TIMEOUT, exe: str | None = None
) -> tuple[dict[str, tuple[int, int]], str | None]:
    """{CUDAi: (total, free)} from nvidia-smi, and a warning when it could not be used.

    No nvidia-smi at all is not worth a warning (a machine without NVIDIA GPUs).
    """
    exe = exe or nvidia_smi_path()
    if not exe:
        return {}, None
    # imported here: `llmctl estimate` and the placement commands reach this module on every run
    import subprocess

    try:
        out = subprocess.run(
            [exe, "--query-gpu=index,memory.total,memory.free", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {}, f"nvidia-smi gave no answer within {timeout:g} s; using the manifest's figures"
    except OSError as err:
        return {}, f"cannot run nvidia-smi ({err.strerror or err}); using the manifest's figures"
    if out.returncode != 0:
        return {}, f"nvidia-smi exited with code {out.returncode}; using the manifest's figures"
    found: dict[str, tuple[int, int]] = {}
    for line in out.stdout.splitlines():
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 3 or not all(p.isdigit() for p in parts):
            return {}, (
                f"cannot read nvidia-smi's output ({line.strip()[:60]!r}); "
                "using the manifest's figures"
            )
        index, total, free = (int(p) for p in parts)
        found[f"CUDA{index}"] = (total * MiB, free * MiB)
    return found, None


def detect(configs: list[Device], *, smi_timeout: float = SMI_TIMEOUT) -> DeviceReport:
    """The devices of `configs` (Manifest.device_configs()) with this machine's figures."""
    warnings: list[str] = []
    gpus = [c for c in configs if c.name.upper() != "CPU" and c.rpc is None]
    smi: dict[str, tuple[int, int]] = {}
    if any(c.name.upper().startswith("CUDA") or c.name == "GPU" for c in gpus):
        smi, warning = nvidia_smi(smi_timeout)
        if warning:
            warnings.append(warning)
    out: list[DeviceInfo] = []
    for c in configs:
        is_cpu = c.name.upper() == "CPU"
        overhead = c.overhead if c.overhead is not None else (0 if is_cpu else GPU_OVERHEAD)
        info = DeviceInfo(c.name, c.vram, c.headroom, overhead, rpc=c.rpc)
        if c.rpc is not None:
            # another machine's memory: only the manifest knows it
            if info.budget is None:
                info.source = "unknown"
                warnings.append(
                    f"device {c.name}: no budget in the manifest; set its `vram` under gpu: "
                    "(the remote GPU's memory, or the remote RAM for a CPU server)"
                )
            out.append(info)
            continue
        if is_cpu:
            info.total, info.free = meminfo()
        else:
            key = "CUDA0" if c.name == "GPU" else c.name
            if key in smi:
                info.total, info.free = smi[key]
        if info.budget is None and info.total is not None:
            info.budget = info.total
            info.source = "/proc/meminfo" if is_cpu else "nvidia-smi"
        elif info.budget is None:
            info.source = "unknown"
            warnings.append(
                f"device {c.name}: no budget in the manifest and none found on this machine; "
                f"set its `vram` under gpu:"
            )
        out.append(info)
    return DeviceReport(out, warnings)


def can_offload(binary: str | None) -> bool | None:
    """Whether llama-server has a device to put layers on here: True with an NVIDIA driver
    (nvidia-smi present: not run, so GPU machines pay nothing) or on a Mac (Metal), else what
    `binary --list-devices` names; None when nothing says (no binary to ask)."""
    import sys

    if nvidia_smi_path() or sys.platform == "darwin":
        return True
    if binary is None:
        return None
    from llmctl.llama.binary import list_devices

    names = list_devices(binary)
    return None if names is None else bool(names)


def probe_rpc(endpoint: str, timeout: float = 0.5) -> str | None:
    """None when a ggml-rpc-server could be listening at host:port (a TCP connection opens),
    else why not. The connection is closed at once; the server drops it and keeps serving."""
    import socket

    host, _, port = endpoint.partition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return None
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except OSError as err:
        return err.strerror or str(err)
