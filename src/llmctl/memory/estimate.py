"""Memory estimates for llama-server: pure functions over GGUF metadata and launch options.

`estimate(source, opts)` puts the stages together, each in its own module: `hparams` (from the
metadata), `kv` (context sizes and caches), `weights`, `compute` (the compute buffer), plus the
projector and the draft model, and places each part on the GPU or the host. Exact where llama.cpp's
allocation is fully determined by the GGUF and the flags (the KV caches, recurrent states and
weights), approximate and documented where it is not (the compute buffer, the CUDA context).
`ModelSource` is what it reads from a model: a GGUF's header or a profile's `metadata:` block.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from llmctl.llama.gguf import GGUFFile, TensorInfo
from llmctl.llama.vocab import CACHE_TYPES, FlashAttn, tristate
from llmctl.memory.builds import NEWEST, Backend, BuildRules
from llmctl.memory.compute import ComputeParts, compute_parts, n_outputs_reserved
from llmctl.memory.hparams import MetadataError, _vocab_size, hparams_from_metadata
from llmctl.memory.kv import CacheEstimate, ContextSizes, context_sizes, kv_caches
from llmctl.memory.options import LaunchOptions
from llmctl.memory.weights import WeightsEstimate, gpu_layer_split, weights_estimate

MiB = 1024 * 1024
DEFAULT_CUDA_OVERHEAD = 400 * MiB


@dataclass
class Estimate:
    """Everything `llmctl estimate --json` reports for one profile or command line."""

    profile: str | None
    model: str
    architecture: str
    exact: bool
    sizes: ContextSizes
    flash_attn: FlashAttn
    caches: list[CacheEstimate]
    weights: WeightsEstimate
    compute_bytes: int
    overhead_bytes: int
    kv_gpu_bytes: int
    gpu_total_bytes: int
    budget_bytes: int | None
    headroom_bytes: int
    n_ctx_train: int
    options: LaunchOptions
    notes: list[str] = field(default_factory=list)
    # host memory (RAM): the whole estimate when no GPU is used
    on_gpu: bool = True
    host_weights_bytes: int = 0  # weights the CPU keeps (mapped file pages, CPU layers, experts)
    host_kv_bytes: int = 0  # KV of layers not offloaded (all of it with -nkvo or no GPU)
    host_compute_bytes: int = 0  # the CPU backend's compute buffer
    output_bytes: int = 0  # logits of the reserved outputs (host)
    host_total_bytes: int = 0
    compute: ComputeParts | None = None
    mmproj: ExtraModel | None = None
    draft: Estimate | None = None
    rules: BuildRules = NEWEST  # the llama.cpp build whose rules sized it

    @property
    def kv_bytes(self) -> int:
        return sum(c.bytes for c in self.caches)

    @property
    def fits(self) -> bool | None:
        if self.budget_bytes is None:
            return None
        return self.gpu_total_bytes <= self.budget_bytes

    @property
    def within_headroom(self) -> bool | None:
        """Fits with the headroom kept free (budget - headroom)."""
        if self.budget_bytes is None:
            return None
        return self.gpu_total_bytes <= self.budget_bytes - self.headroom_bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "model": self.model,
            "architecture": self.architecture,
            "exact": self.exact,
            "n_ctx": self.sizes.n_ctx,
            "n_ctx_seq": self.sizes.n_ctx_seq,
            "n_seq": self.sizes.n_seq,
            "n_stream": self.sizes.n_stream,
            "kv_unified": self.sizes.kv_unified,
            "n_batch": self.sizes.n_batch,
            "n_ubatch": self.sizes.n_ubatch,
            "n_ctx_train": self.n_ctx_train,
            "flash_attn": self.flash_attn,
            "kv_cache": {
                "bytes": self.kv_bytes,
                "gpu_bytes": self.kv_gpu_bytes,
                "caches": [c.to_json() for c in self.caches],
            },
            "weights": self.weights.to_json(),
            "compute_bytes": self.compute_bytes,
            "overhead_bytes": self.overhead_bytes,
            "gpu_total_bytes": self.gpu_total_bytes,
            "budget_bytes": self.budget_bytes,
            "headroom_bytes": self.headroom_bytes,
            "fits": self.fits,
            "within_headroom": self.within_headroom,
            "on_gpu": self.on_gpu,
            "host": {
                "weights_bytes": self.host_weights_bytes,
                "kv_bytes": self.host_kv_bytes,
                "compute_bytes": self.host_compute_bytes,
                "output_bytes": self.output_bytes,
                "total_bytes": self.host_total_bytes,
            },
            "compute": self.compute.to_json() if self.compute else None,
            "mmproj": self.mmproj.to_json() if self.mmproj else None,
            "draft": self.draft.to_json() if self.draft else None,
            "notes": list(self.notes),
            "llama_build": self.rules.to_json(),
        }


@dataclass
class ModelSource:
    """What an estimate needs from a model: its metadata and, from a GGUF, its tensor table."""

    path: str
    metadata: Mapping[str, Any]
    tensors: list[TensorInfo] | None = None
    weights_bytes: int | None = None  # from a metadata block without a tensor table

    @classmethod
    def from_gguf(cls, gguf: GGUFFile) -> ModelSource:
        return cls(str(gguf.path), gguf.metadata, list(gguf.tensors))

    @classmethod
    def from_metadata(cls, path: str, metadata: Mapping[str, Any]) -> ModelSource:
        """A `metadata:` block: GGUF keys, plus `weights_bytes` (or `general.size`) for the weights.

        Keys may leave out the architecture prefix: `block_count` means `{arch}.block_count`.
        """
        arch = metadata.get("general.architecture") or metadata.get("architecture")
        meta: dict[str, Any] = {}
        for key, value in metadata.items():
            if key == "architecture":
                key = "general.architecture"
            elif (
                isinstance(arch, str)
                and key != "weights_bytes"
                and not key.startswith(("general.", "tokenizer.", "split.", f"{arch}."))
            ):
                key = f"{arch}.{key}"
            meta[key] = value
        weights = meta.pop("weights_bytes", None)
        if weights is None:
            weights = meta.get("general.size")
        if weights is not None and (isinstance(weights, bool) or not isinstance(weights, int)):
            from llmctl.manifest.sizes import parse_size

            try:
                weights = parse_size(weights)
            except ValueError as err:
                raise MetadataError(f"metadata weights_bytes: {err}") from None
        return cls(path, meta, None, weights)


@dataclass
class ExtraModel:
    """A model llama-server loads beside the main one (the multimodal projector)."""

    path: str
    weights_bytes: int
    compute_bytes: int
    on_gpu: bool
    exact: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "weights_bytes": self.weights_bytes,
            "compute_bytes": self.compute_bytes,
            "on_gpu": self.on_gpu,
            "exact": self.exact,
        }


def mmproj_estimate(source: ModelSource, on_gpu: bool) -> ExtraModel:
    """The projector's weights (exact, from its tensor table) and its compute buffer, sized for
    the warm-up image at the encoder's resolution: with flash attention (on by default for the
    encoder) the widest point is a block's FFN, 4 x patches x (3 n_embd + n_ff). Checked on a
    SigLIP encoder (gemma3); other projector types have other graphs (approximate)."""
    m = source.metadata
    weights = sum(t.nbytes for t in source.tensors or ())
    if not source.tensors:
        weights = source.weights_bytes or 0

    def num(key: str) -> int:
        v = m.get(f"clip.vision.{key}")
        return v if isinstance(v, int) and not isinstance(v, bool) else 0

    patch = num("patch_size")
    side = num("image_size") // patch if patch else 0
    n_pos = side * side
    n_embd, n_ff = num("embedding_length"), num("feed_forward_length")
    compute = 4 * n_pos * (3 * n_embd + n_ff)
    exact = m.get("clip.projector_type") == "gemma3"
    return ExtraModel(source.path, weights, compute, on_gpu, exact)


def estimate(
    source: ModelSource,
    opts: LaunchOptions,
    *,
    profile: str | None = None,
    budget: int | None = None,
    headroom: int = 0,
    overhead: int = DEFAULT_CUDA_OVERHEAD,
    gpu: bool = True,
    mmproj: ModelSource | None = None,
    draft: ModelSource | None = None,
    n_draft: int = 0,
    rules: BuildRules = NEWEST,
    backend: Backend | None = None,
) -> Estimate:
    """Estimate llama-server's memory for `source` launched with `opts` (raises MetadataError).

    With `gpu=False` (no GPU, or a CPU-only llama-server) every figure is host memory and the GPU
    total is 0. `mmproj` and `draft` are counted where llama-server puts them (the projector
    and the draft's layers on the GPU when there is one). With a speculative type enabled the
    main context reserves outputs for the `n_draft` tokens each slot drafts (--draft-max); a
    draft model alone enables none in the pinned build (its log says "no implementations
    specified"), hence 0 by default. `rules` are the llama.cpp build's (llmctl.memory.builds;
    the newest by default); `backend` (cpu, cuda, metal; None: as the CPU) resolves
    `flash_attn: auto`.
    """
    hp = hparams_from_metadata(source.metadata)
    if opts.ctx_size <= 0 and hp.n_ctx_train <= 0:
        raise MetadataError(
            f"ctx_size is 0 (the trained context) but {hp.arch}.context_length is missing"
        )
    cs = context_sizes(opts, hp.n_ctx_train)
    for name in (opts.cache_type_k, opts.cache_type_v):
        if name.lower() not in CACHE_TYPES:
            raise MetadataError(f"unsupported cache type {name!r}; one of {', '.join(CACHE_TYPES)}")
    try:
        overrides = opts.tensor_overrides() if gpu else []
    except ValueError as err:
        raise MetadataError(f"override_tensor: {err}") from None
    caches = kv_caches(hp, opts, cs)
    n_blocks = hp.n_layer_all
    ngl = opts.n_gpu_layers if gpu else 0
    weights = weights_estimate(
        source.tensors,
        n_blocks,
        ngl,
        hp.family.output_prefixes,
        source.weights_bytes,
        overrides,
    )
    i_gpu_start, out_gpu = gpu_layer_split(n_blocks, ngl)
    kv_gpu = 0
    if gpu and not opts.no_kv_offload:
        for c in caches:
            kv_gpu += sum(
                b for il, b in zip(c.layer_ids, c.layer_bytes, strict=True) if il >= i_gpu_start
            )
    kv_host = sum(c.bytes for c in caches) - kv_gpu
    parts = compute_parts(
        hp, opts, cs, caches, n_draft if draft is not None else 0, rules=rules, backend=backend
    )
    compute = parts.bytes
    n_tokens = parts.n_tokens
    if not gpu:
        gpu_compute, host_compute = 0, compute
    else:
        gpu_compute = compute
        cpu_layers = i_gpu_start > 0 or not out_gpu or weights.overridden_cpu_bytes > 0
        # the CPU backend runs what stays on it; otherwise it only holds the graph's inputs
        host_compute = compute if cpu_layers else 4 * n_tokens * hp.n_embd
    output = 4 * hp.n_vocab * max(n_outputs_reserved(cs, 0), cs.n_seq)
    notes = list(hp.notes)
    exact = hp.known  # the KV rules; weights.exact says whether the weights came from tensors
    if source.tensors is None:
        notes.append("weights from the metadata block (no tensor table): split by layer count")
    if source.tensors is None and source.weights_bytes is None:
        notes.append("no weights_bytes in the metadata block: weights counted as 0")
    gpu_total = (weights.gpu_bytes + kv_gpu + gpu_compute + overhead) if gpu else 0
    host_total = weights.cpu_bytes + kv_host + host_compute + output
    extra = None
    if mmproj is not None:
        extra = mmproj_estimate(mmproj, gpu)
        if gpu:
            gpu_total += extra.weights_bytes + extra.compute_bytes
        else:
            host_total += extra.weights_bytes + extra.compute_bytes
        notes.append("mmproj compute buffer approximate (one image at the encoder's resolution)")
    draft_est = None
    if draft is not None:
        draft_opts = replace(
            opts,
            cache_type_k="f16",
            cache_type_v="f16",
            n_cpu_moe=0,
            override_tensor=None,
            ctx_size=cs.n_ctx if opts.ctx_size > 0 else opts.ctx_size,
        )
        draft_est = estimate(draft, draft_opts, overhead=0, gpu=gpu, rules=rules, backend=backend)
        gpu_total += draft_est.gpu_total_bytes
        host_total += draft_est.host_total_bytes
        if hp.n_vocab and draft_est.compute and vocab_size(draft) != hp.n_vocab:
            notes.append("the draft model's vocabulary differs from the main model's")
    return Estimate(
        profile=profile,
        model=source.path,
        architecture=hp.arch,
        exact=exact,
        sizes=cs,
        flash_attn=opts.flash_attn,
        caches=caches,
        weights=weights,
        compute_bytes=compute,
        overhead_bytes=overhead if gpu else 0,
        kv_gpu_bytes=kv_gpu,
        gpu_total_bytes=gpu_total,
        budget_bytes=budget,
        headroom_bytes=headroom,
        n_ctx_train=hp.n_ctx_train,
        options=opts,
        notes=notes,
        on_gpu=gpu,
        host_weights_bytes=weights.cpu_bytes,
        host_kv_bytes=kv_host,
        host_compute_bytes=host_compute,
        output_bytes=output,
        host_total_bytes=host_total,
        compute=parts,
        mmproj=extra,
        draft=draft_est,
        rules=rules,
    )


def vocab_size(source: ModelSource) -> int:
    """The vocabulary of a model (0 when its metadata does not say)."""
    arch = source.metadata.get("general.architecture")
    return _vocab_size(source.metadata, arch) if isinstance(arch, str) else 0


class ProfileLike(Protocol):
    """The profile fields an estimate reads (llmctl.manifest.model.Profile has them)."""

    @property
    def model(self) -> str: ...

    @property
    def ctx_size(self) -> int: ...

    @property
    def parallel(self) -> int: ...

    @property
    def kv_unified(self) -> bool | None: ...

    @property
    def swa_full(self) -> bool: ...

    @property
    def cache_type_k(self) -> str: ...

    @property
    def cache_type_v(self) -> str: ...

    @property
    def flash_attn(self) -> str: ...

    @property
    def n_gpu_layers(self) -> int: ...

    @property
    def batch_size(self) -> int: ...

    @property
    def ubatch_size(self) -> int: ...

    @property
    def no_kv_offload(self) -> bool: ...

    @property
    def metadata(self) -> dict[str, Any] | None: ...


def options_from_profile(profile: ProfileLike) -> LaunchOptions:
    """The launch options a profile asks for."""
    fa = tristate(profile.flash_attn) or "auto"
    return LaunchOptions(
        ctx_size=profile.ctx_size,
        parallel=profile.parallel,
        kv_unified=profile.kv_unified,
        swa_full=profile.swa_full,
        cache_type_k=profile.cache_type_k,
        cache_type_v=profile.cache_type_v,
        flash_attn=fa,
        n_gpu_layers=profile.n_gpu_layers,
        batch_size=profile.batch_size,
        ubatch_size=profile.ubatch_size,
        no_kv_offload=profile.no_kv_offload,
        # read with getattr: a ProfileLike written before these fields existed still works
        n_cpu_moe=getattr(profile, "n_cpu_moe", None) or 0,
        override_tensor=getattr(profile, "override_tensor", None),
    )


def source_for_profile(profile: ProfileLike) -> ModelSource | None:
    """The model's GGUF header when the file exists, else its `metadata:` block, else None.

    Raises GGUFError when the file exists but cannot be read.
    """
    source = source_for_path(profile.model)
    if source is not None:
        return source
    if profile.metadata:
        return ModelSource.from_metadata(profile.model, profile.metadata)
    return None


def source_for_path(model: str | None) -> ModelSource | None:
    """A GGUF's header and tensor table when the file exists, else None (GGUFError if unreadable)."""
    from pathlib import Path

    from llmctl.llama.gguf import read_gguf, split_paths

    if not model:
        return None
    path = Path(model)
    first = (split_paths(path) or [path])[0]
    if first.is_file():
        return ModelSource.from_gguf(read_gguf(path))
    return None


def extra_sources(profile: object) -> tuple[ModelSource | None, ModelSource | None]:
    """The profile's projector and draft model, when their GGUFs are on this machine."""
    mmproj = getattr(profile, "mmproj", None)
    draft = getattr(profile, "model_draft", None)
    return source_for_path(mmproj), source_for_path(draft)


def mib(n: int | float) -> float:
    """Bytes as MiB, rounded like llama-server prints them."""
    return math.floor(n / MiB * 100 + 0.5) / 100
