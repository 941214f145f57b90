"""llama.cpp's out-of-memory errors at load, stated once, and the device and size they name.

A load that cannot allocate a buffer ends with one or more of these lines (ggml and llama.cpp
sources; the same words on every build from 2024 to late 2026):

    ggml_backend_cuda_buffer_type_alloc_buffer: allocating 45108.64 MiB on device 0: cudaMalloc failed: out of memory
    alloc_tensor_range: failed to allocate CUDA0 buffer of size 47300000000
    ggml_gallocr_reserve_n: failed to allocate CUDA0 buffer of size 150995968
    ggml_backend_cpu_buffer_type_alloc_buffer: failed to allocate buffer of size 437944320
    llama_model_load: error loading model: unable to allocate CUDA0 buffer
    llama_kv_cache: failed to allocate buffer for kv cache
    llama_init_from_model: failed to initialize the context: failed to allocate compute pp buffers
    ggml_metal_buffer_init: error: failed to allocate buffer, size = 1024.00 MiB
    CUDA error: out of memory
    vk::Device::allocateMemory: ErrorOutOfDeviceMemory

`out_of_memory(lines)` says whether a failed load's log is one of these, and which device and
how many bytes the failed allocation named, where it says.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

_MIB = 1024 * 1024

# the failed buffer's device and size in bytes: ggml-alloc.c (alloc_tensor_range, gallocr)
_BUFFER_OF_SIZE = re.compile(
    r"failed to allocate (?P<dev>[A-Za-z][\w.:-]*) buffer of size (?P<n>\d+)"
)
# ggml-cuda: the device index and MiB it tried
_CUDA_MALLOC = re.compile(
    r"allocating (?P<mib>[\d.]+) MiB on device (?P<idx>\d+): cudaMalloc failed: out of memory"
)
# ggml-cpu: a host allocation, size in bytes, no device named
_CPU_BUFFER = re.compile(
    r"cpu_buffer_type_alloc_buffer: failed to allocate buffer of size (?P<n>\d+)"
)
# llama-model.cpp: the buffer type that could not be allocated
_UNABLE = re.compile(r"unable to allocate (?P<dev>[A-Za-z][\w.:-]*) buffer")
# the rest say it without a device
_GENERAL = re.compile(
    r"cudaMalloc failed: out of memory|CUDA error: out of memory|"
    r"failed to allocate buffer for kv cache|failed to allocate compute (?:pp )?buffers|"
    r"ggml_metal\w*: error: failed to allocate buffer|ErrorOutOfDeviceMemory|"
    r"unable to allocate backend buffer|hipMalloc failed: out of memory",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class OutOfMemory:
    """What an out-of-memory failure named: the line, and the device and bytes where it said."""

    line: str
    device: str | None = None  # llama.cpp's buffer name: CUDA0, CPU, CUDA_Host, Metal...
    bytes: int | None = None  # the allocation that failed

    @property
    def on_host(self) -> bool:
        """The failed buffer is in system memory (CPU, CPU_REPACK, a pinned CUDA_Host buffer)."""
        d = self.device or ""
        return d.upper().startswith("CPU") or d.endswith("_Host")


def out_of_memory(lines: Iterable[str]) -> OutOfMemory | None:
    """The first out-of-memory line of a failed load's log (text form), with the device and size
    of the failed allocation from the most specific line that states them; None when the load
    failed for another reason."""
    first: str | None = None
    device: str | None = None
    exact: int | None = None  # bytes, as ggml-alloc states them
    rounded: int | None = None  # MiB to two places, as ggml-cuda states them
    for raw in lines:
        line = raw.strip()
        m = _BUFFER_OF_SIZE.search(line)
        if m:
            device = device or m["dev"]
            exact = exact or int(m["n"])
        elif (m := _CUDA_MALLOC.search(line)) is not None:
            device = device or f"CUDA{m['idx']}"
            rounded = rounded or int(float(m["mib"]) * _MIB)
        elif (m := _CPU_BUFFER.search(line)) is not None:
            device = device or "CPU"
            exact = exact or int(m["n"])
        elif (m := _UNABLE.search(line)) is not None and m["dev"] != "backend":
            device = device or m["dev"]
        elif not _GENERAL.search(line):
            continue
        first = first or line
    if first is None:
        return None
    return OutOfMemory(first, device, exact or rounded)
