"""The model's weights, split between the GPU and the host: exact from a GGUF's tensor table.

`gpu_layer_split` is llama.cpp's -ngl rule; `weights_estimate` walks the tensors once, placing each
by that rule and by the `--n-cpu-moe` / `-ot` overrides (first match wins, as in
`llama_model_loader`), and sizes GPU tensors as CUDA allocates them. Pure functions.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llmctl.llama.gguf import TensorInfo
from llmctl.llama.vocab import CPU_BUFFER
from llmctl.memory.families import family
from llmctl.memory.kv import pad

_BLK = re.compile(r"^blk\.(\d+)\.")


@dataclass
class WeightsEstimate:
    bytes: int
    gpu_bytes: int
    cpu_bytes: int
    exact: bool
    gpu_layers: int  # blocks on the GPU (output layer not counted)
    output_on_gpu: bool
    overridden_cpu_bytes: int = 0  # kept on the CPU by --n-cpu-moe / -ot (in cpu_bytes)
    overridden_tensors: int = 0  # tensors an override moved (to the CPU or another buffer)

    def to_json(self) -> dict[str, Any]:
        return {
            "bytes": self.bytes,
            "gpu_bytes": self.gpu_bytes,
            "cpu_bytes": self.cpu_bytes,
            "exact": self.exact,
            "gpu_layers": self.gpu_layers,
            "output_on_gpu": self.output_on_gpu,
            "overridden_cpu_bytes": self.overridden_cpu_bytes,
            "overridden_tensors": self.overridden_tensors,
        }


def gpu_layer_split(n_layer_all: int, n_gpu_layers: int) -> tuple[int, bool]:
    """(first block on the GPU, output layer on the GPU) by llama.cpp's -ngl rule.

    -ngl N counts the output layer first: N puts the output layer and the last N-1 blocks on the GPU.
    """
    ngl = n_layer_all + 1 if n_gpu_layers < 0 else n_gpu_layers
    i_gpu_start = max(n_layer_all + 1 - ngl, 0)
    act = min(ngl, n_layer_all + 1)
    output_on_gpu = n_layer_all >= i_gpu_start and (n_layer_all - i_gpu_start) < act
    return i_gpu_start, output_on_gpu


def _tensor_layer(t: TensorInfo, output_prefixes: tuple[str, ...] | str) -> str | int:
    """A tensor's block number, or "output" / "input"; `output_prefixes` may be an architecture
    name, whose family record gives them."""
    if isinstance(output_prefixes, str):
        output_prefixes = family(output_prefixes)[0].output_prefixes
    m = _BLK.match(t.name)
    if m:
        return int(m.group(1))
    if t.name.startswith(output_prefixes):
        return "output"
    return "input"


CUDA_ALIGNMENT = 128
CUDA_ROW_PADDING = 512  # MATRIX_ROW_PADDING in ggml-cuda


def cuda_alloc_size(t: TensorInfo) -> int:
    """Bytes a tensor takes in a CUDA buffer: quantized tensors get one extra partial row of
    padding up to 512 columns, and every tensor starts at a 128-byte boundary."""
    size = t.nbytes
    if t.type.block_size > 1 and t.shape[0] % CUDA_ROW_PADDING:
        size += t.type.row_bytes(CUDA_ROW_PADDING - t.shape[0] % CUDA_ROW_PADDING)
    return pad(size, CUDA_ALIGNMENT)


def weights_estimate(
    tensors: Sequence[TensorInfo] | None,
    n_layer_all: int,
    n_gpu_layers: int,
    output_prefixes: tuple[str, ...] = ("output",),
    total_bytes: int | None = None,
    overrides: Sequence[tuple[str, str]] = (),
) -> WeightsEstimate:
    """Weights per tensor, split GPU/CPU by the -ngl rule; tied output embeddings duplicated.

    GPU bytes follow CUDA's allocation (128-byte alignment, quantized row padding), so
    `bytes` (= gpu_bytes + cpu_bytes) can exceed the file's tensor data by a little.
    Without a tensor table (a `metadata:` block), `total_bytes` is split in proportion to layers,
    with no token-embedding separation, and marked inexact.

    `overrides` are (pattern, buffer type) pairs as `--n-cpu-moe` and `-ot` give them: the first
    pattern found in a tensor's name decides its buffer (llama_model_loader), `CPU` meaning the
    host and any other buffer a GPU.
    """
    compiled = [(re.compile(p), b.upper() == CPU_BUFFER) for p, b in overrides]
    i_gpu_start, out_gpu = gpu_layer_split(n_layer_all, n_gpu_layers)
    gpu_layers = max(0, n_layer_all - i_gpu_start)
    if tensors is None:
        total = total_bytes or 0
        share = (gpu_layers + (1 if out_gpu else 0)) / (n_layer_all + 1)
        gpu = int(total * share)
        return WeightsEstimate(total, gpu, total - gpu, False, gpu_layers, out_gpu)
    gpu = cpu = moved_cpu = moved = 0
    has_output = False
    embd: TensorInfo | None = None
    for t in tensors:
        where = _tensor_layer(t, output_prefixes)
        if t.name == "output.weight":
            has_output = True
        if t.name == "token_embd.weight":
            embd = t
        to_cpu = next((c for p, c in compiled if p.search(t.name)), None)
        if to_cpu is not None:
            moved += 1
            if to_cpu:
                cpu += t.nbytes
                moved_cpu += t.nbytes
            else:
                gpu += cuda_alloc_size(t)
        elif where == "input":
            cpu += t.nbytes
        elif where == "output":
            if out_gpu:
                gpu += cuda_alloc_size(t)
            else:
                cpu += t.nbytes
        elif isinstance(where, int) and where >= i_gpu_start:
            gpu += cuda_alloc_size(t)
        else:
            cpu += t.nbytes
    if not has_output and embd is not None and out_gpu:
        # tied embeddings: the output layer gets its own copy on its device (same device: shared)
        gpu += cuda_alloc_size(embd)
    total = gpu + cpu
    return WeightsEstimate(total, gpu, cpu, True, gpu_layers, out_gpu, moved_cpu, moved)
