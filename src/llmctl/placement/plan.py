"""An estimate split over devices: what each GPU and the host (the CPU device) holds.

llama-server's rules (llama-model.cpp, `load_tensors`), stated here once:

- The input layer (token embedding) always stays in host memory.
- `-ngl N` offloads the output layer and the last N-1 blocks (`gpu_layer_split`); the rest stay
  on the CPU, with their KV cache.
- `--split-mode layer` (the default) gives each offloaded block, and the output layer, to a GPU
  by the cumulative fractions of `--tensor-split`: block `il` goes to the first device whose
  cumulative share exceeds `(il - i_gpu_start) / n_offloaded`. A block's KV cache lives with it
  (unless `-nkvo`, which keeps every cache on the host).
- `--split-mode row` splits each offloaded block's matrices over the GPUs by the same fractions;
  the KV cache and the intermediate results stay on `--main-gpu`.
- `--split-mode none` puts every offloaded block on `--main-gpu`.
- The devices of llama.cpp RPC servers (`--rpc`) are split over by the same rule, as GPUs: the
  caller lists them first, as llama-server orders them (`llmctl.llama.rpc`), with their budgets
  as their shares.

Every GPU that holds a block gets a compute buffer and the runtime overhead (CUDA context, pools);
the compute buffer is the single-device estimate on each (an upper bound: the logits live on the
output device only). The host gets a compute buffer when any block stays on the CPU.

Pipeline parallelism (llama_context): with several devices, every layer offloaded, `-sm layer`,
the KV cache offloaded and no tensor overrides, ggml's scheduler keeps GGML_SCHED_MAX_COPIES (4)
copies of every input it copies between devices, so that one micro-batch is copied in while the
previous one runs. Each device then holds 3 more copies of what flows into its part of the graph
(the hidden state, n_tokens x n_embd f32, and the attention masks), and the host 4 copies of the
masks it builds (f32 before the cast flash attention needs) beside the token embeddings. Checked
against llama-server's log with two RPC servers (tests/llama/test_rpc_split.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from llmctl.memory.estimate import Estimate, ModelSource
from llmctl.memory.hparams import hparams_from_metadata
from llmctl.memory.weights import cuda_alloc_size, gpu_layer_split

SplitMode = Literal["none", "layer", "row"]
CPU = "CPU"
PIPELINE_COPIES = 4  # GGML_SCHED_MAX_COPIES (ggml/CMakeLists.txt)


class GpuTarget(NamedTuple):
    """A GPU the plan may use: its llama-server name and the overhead per server on it."""

    name: str
    overhead: int = 400 * 1024**2
    weight: float = 1.0  # share of the layers under --tensor-split when the profile gives none
    launch_name: str | None = None  # the name --device takes, when not `name` (RPC devices)


@dataclass
class DeviceShare:
    """What one device holds for one profile."""

    device: str
    weights_bytes: int = 0
    kv_bytes: int = 0
    compute_bytes: int = 0
    overhead_bytes: int = 0
    layers: int = 0  # repeating blocks
    output: bool = False

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes + self.compute_bytes + self.overhead_bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "total_bytes": self.total_bytes,
            "weights_bytes": self.weights_bytes,
            "kv_bytes": self.kv_bytes,
            "compute_bytes": self.compute_bytes,
            "overhead_bytes": self.overhead_bytes,
            "layers": self.layers,
            "output": self.output,
        }


@dataclass
class DevicePlan:
    """One profile over its devices, and the llama-server flags that make it so."""

    gpus: tuple[str, ...]
    split_mode: SplitMode
    tensor_split: tuple[float, ...]
    main_gpu: int
    n_gpu_layers: int
    shares: list[DeviceShare] = field(default_factory=list)
    # False for the old single `gpu:` mapping: the device has no llama-server name, no flags
    flags: bool = True
    launch_names: tuple[str, ...] = ()  # --device names of `gpus` (default: the same)

    def usage(self) -> dict[str, int]:
        """Bytes per device (the placer's input)."""
        return {s.device: s.total_bytes for s in self.shares if s.total_bytes > 0}

    @property
    def label(self) -> str:
        return "+".join(self.gpus) if self.gpus else CPU

    def launch_args(self) -> list[str]:
        """--device, -ngl, and with several GPUs -sm/-ts, with row or none -mg."""
        if not self.flags:
            return []
        if not self.gpus:
            return ["--device", "none", "-ngl", "0"]
        names = self.launch_names or self.gpus
        args = ["--device", ",".join(names), "-ngl", str(self.n_gpu_layers)]
        if len(self.gpus) > 1:
            args += ["-sm", self.split_mode]
            args += ["-ts", ",".join(_num(x) for x in self.tensor_split)]
        if self.split_mode in ("row", "none") and len(self.gpus) > 1:
            args += ["-mg", str(self.main_gpu)]
        return args

    def to_json(self) -> dict[str, Any]:
        return {
            "devices": list(self.gpus) or [CPU],
            "split_mode": self.split_mode,
            "tensor_split": list(self.tensor_split),
            "main_gpu": self.main_gpu,
            "n_gpu_layers": self.n_gpu_layers,
            "per_device": [s.to_json() for s in self.shares],
            "launch_args": self.launch_args(),
        }


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def parse_tensor_split(text: str | None, n: int) -> tuple[float, ...] | None:
    """`-ts 3,1` as fractions for n GPUs (missing ones 0); None when not given or all zero."""
    if not text:
        return None
    parts = [p for p in text.replace("/", ",").split(",") if p.strip()]
    values = [float(p) for p in parts][:n]
    values += [0.0] * (n - len(values))
    return tuple(values) if any(v > 0 for v in values) else None


def _layer_weights(
    source: ModelSource,
    n_layer: int,
    arch: str,
    total_bytes: int,
    overrides: Sequence[tuple[str, str]] = (),
) -> tuple[list[int], int, int, list[int], int]:
    """Per block and for the output layer: GPU bytes (CUDA padding) and host bytes; the bytes the
    host keeps wherever the layers go (the input embeddings, and tensors that `overrides`, as
    --n-cpu-moe and -ot give them, send to the CPU: the first matching pattern decides)."""
    import re

    from llmctl.llama.vocab import CPU_BUFFER
    from llmctl.memory.weights import _tensor_layer

    compiled = [(re.compile(p), b.upper() == CPU_BUFFER) for p, b in overrides]

    gpu_blocks = [0] * n_layer
    cpu_blocks = [0] * n_layer
    out_gpu = out_cpu = 0
    input_bytes = 0
    if source.tensors is None:
        share = total_bytes // (n_layer + 1) if n_layer >= 0 else 0
        gpu_blocks = [share] * n_layer
        return gpu_blocks, share, share, list(gpu_blocks), 0
    has_output = False
    embd = None
    for t in source.tensors:
        where = _tensor_layer(t, arch)
        if t.name == "output.weight":
            has_output = True
        if t.name == "token_embd.weight":
            embd = t
        to_cpu = next((c for p, c in compiled if p.search(t.name)), False)
        if where == "input" or to_cpu:
            input_bytes += t.nbytes
        elif where == "output":
            out_gpu += cuda_alloc_size(t)
            out_cpu += t.nbytes
        elif isinstance(where, int) and 0 <= where < n_layer:
            gpu_blocks[where] += cuda_alloc_size(t)
            cpu_blocks[where] += t.nbytes
        else:
            input_bytes += t.nbytes
    if not has_output and embd is not None:
        out_gpu += cuda_alloc_size(embd)  # tied embeddings: the GPU output layer has its own copy
    return gpu_blocks, out_gpu, out_cpu, cpu_blocks, input_bytes


def plan_devices(
    est: Estimate,
    source: ModelSource,
    gpus: Sequence[GpuTarget],
    *,
    split_mode: SplitMode | None = None,
    tensor_split: str | None = None,
    main_gpu: int | None = None,
) -> DevicePlan:
    """Split `est` (made from `source`) over `gpus` (none: everything on the CPU device)."""
    hp = hparams_from_metadata(source.metadata)
    n_layer = hp.n_layer_all
    overrides = est.options.tensor_overrides() if gpus else []
    gpu_blocks, out_gpu_bytes, out_cpu_bytes, cpu_blocks, input_bytes = _layer_weights(
        source, n_layer, hp.arch, est.weights.bytes, overrides
    )
    kv_per_layer = [0] * (n_layer + 1)
    for cache in est.caches:
        for il, b in zip(cache.layer_ids, cache.layer_bytes, strict=True):
            if 0 <= il < n_layer:
                kv_per_layer[il] += b
    mode: SplitMode = split_mode or "layer"
    ngl = est.options.n_gpu_layers if gpus else 0
    i_gpu_start = gpu_layer_split(n_layer, ngl)[0] if gpus else n_layer + 1
    act = min(n_layer + 1 if ngl < 0 else ngl, n_layer + 1) if gpus else 0
    n = len(gpus)
    given = parse_tensor_split(tensor_split, n) if n > 1 else None
    fractions = given or tuple(g.weight for g in gpus)
    mg = min(main_gpu or 0, max(n - 1, 0))
    host = DeviceShare(CPU, weights_bytes=input_bytes)
    shares = {g.name: DeviceShare(g.name) for g in gpus}

    # cumulative split points, as llama.cpp computes them
    total = sum(fractions) or 1.0
    cuts: list[float] = []
    acc = 0.0
    for f in fractions:
        acc += f
        cuts.append(acc / total)

    def layer_device(il: int) -> int:
        x = (il - i_gpu_start) / act
        for i, c in enumerate(cuts):
            if x < c:
                return i
        return n - 1

    kv_on_host = est.options.no_kv_offload
    for il in range(n_layer + 1):
        on_gpu = n > 0 and il >= i_gpu_start and (il - i_gpu_start) < act
        is_output = il == n_layer
        gpu_w = out_gpu_bytes if is_output else gpu_blocks[il]
        cpu_w = out_cpu_bytes if is_output else cpu_blocks[il]
        kv = 0 if is_output else kv_per_layer[il]
        if not on_gpu:
            host.weights_bytes += cpu_w
            host.kv_bytes += kv
            if not is_output:
                host.layers += 1
            else:
                host.output = True
            continue
        if mode == "row" and n > 1:
            for g, f in zip(gpus, fractions, strict=True):
                shares[g.name].weights_bytes += int(gpu_w * f / total)
            target = shares[gpus[mg].name]
        else:
            target = shares[gpus[mg if mode == "none" else layer_device(il)].name]
            target.weights_bytes += gpu_w
        if kv_on_host:
            host.kv_bytes += kv
        else:
            target.kv_bytes += kv
        if is_output:
            target.output = True
        else:
            target.layers += 1
    used = [g for g in gpus if shares[g.name].layers or shares[g.name].output]
    if mode == "row" and n > 1:
        used = list(gpus)
    pipeline = n > 1 and mode == "layer" and act > n_layer and not kv_on_host and not overrides
    flowing = 0  # bytes copied into each device's part of the graph, per copy
    if pipeline and est.compute is not None:
        flowing = 4 * est.compute.n_tokens * hp.n_embd + est.compute.masks
    for g in used:
        shares[g.name].compute_bytes = est.compute_bytes + (PIPELINE_COPIES - 1) * flowing
        shares[g.name].overhead_bytes = g.overhead
    if host.layers or not used:
        host.compute_bytes = est.compute_bytes
    elif pipeline and est.compute is not None:
        masks_f32 = est.compute.masks * (2 if est.options.flash_attn != "off" else 1)
        host.compute_bytes = PIPELINE_COPIES * masks_f32 + 4 * est.compute.n_tokens * hp.n_embd
    out = [shares[g.name] for g in gpus] + [host]
    return DevicePlan(
        gpus=tuple(g.name for g in gpus),
        split_mode=mode,
        tensor_split=tuple(fractions) if n > 1 else (),
        main_gpu=mg,
        n_gpu_layers=(n_layer + 1 if ngl < 0 else ngl) if gpus else 0,
        shares=out,
        launch_names=tuple(g.launch_name or g.name for g in gpus),
    )
