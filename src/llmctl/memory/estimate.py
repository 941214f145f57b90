"""Memory estimates for llama-server: pure functions over GGUF metadata and launch options.

Exact where llama.cpp's allocation is fully determined by the GGUF and the flags (the KV caches,
recurrent states and weights), approximate and documented where it is not (the compute buffer, the
CUDA context). The rules follow llama.cpp's `llama_context` (context sizes), `llama_kv_cache` /
`llama_kv_cache_iswa` (attention caches), `llama_memory_recurrent` / `llama_memory_hybrid` (states)
and `llama_model::create_memory` (which cache an architecture gets).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

from llmctl.errors import EXIT_INPUT, LlmctlError
from llmctl.llama.gguf import GGMLType, GGUFFile, SkippedArray, TensorInfo
from llmctl.llama.vocab import (
    CACHE_TYPES,
    CPU_BUFFER,
    FlashAttn,
    cache_type,
    n_cpu_moe_patterns,
    parse_overrides,
    tristate,
)
from llmctl.memory.families import Family, SwaRule, family

MiB = 1024 * 1024
DEFAULT_CUDA_OVERHEAD = 400 * MiB


def pad(x: int, n: int) -> int:
    """Round x up to a multiple of n (GGML_PAD)."""
    return (x + n - 1) // n * n


@dataclass
class LaunchOptions:
    """The llama-server flags that change memory use, with llama-server's defaults."""

    ctx_size: int = 0  # -c; 0 = the model's trained context
    parallel: int = -1  # -np; -1 = auto (4 slots, unified KV)
    kv_unified: bool | None = None  # -kvu / -no-kvu; None = llama-server's default
    swa_full: bool = False
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    flash_attn: FlashAttn = "auto"
    n_gpu_layers: int = -1  # -ngl; -1 = all
    batch_size: int = 2048
    ubatch_size: int = 512
    no_kv_offload: bool = False
    n_cpu_moe: int = 0  # --n-cpu-moe: expert tensors of the first N blocks on the CPU
    override_tensor: str | None = None  # -ot PATTERN=BUFFER,...

    def tensor_overrides(self) -> list[tuple[str, str]]:
        """(pattern, buffer) pairs in the order llama-server reads them from llmctl's command line
        (--n-cpu-moe before -ot; common/arg.cpp appends both to one list, first match wins)."""
        out = [(p, CPU_BUFFER) for p in n_cpu_moe_patterns(self.n_cpu_moe)]
        return out + (parse_overrides(self.override_tensor) if self.override_tensor else [])


# --- hyper-parameters ---------------------------------------------------------------------------


@dataclass
class HParams:
    """The hyper-parameters that size llama.cpp's caches, derived as llama.cpp derives them."""

    arch: str
    n_layer_all: int
    n_layer_nextn: int
    n_embd: int
    n_ctx_train: int
    n_vocab: int
    n_head: list[int]
    n_head_kv: list[int]
    n_ff: list[int]
    head_k_full: int
    head_v_full: int
    head_k_swa: int
    head_v_swa: int
    is_swa: list[bool]
    is_recr: list[bool]
    n_swa: int
    swa: bool
    kv_from_start: int  # -1: every layer has KV
    is_mla: bool
    n_embd_r: int
    n_embd_s: int
    known: bool  # an architecture whose rules llmctl implements
    ssm_d_inner: int = 0
    notes: list[str] = field(default_factory=list)
    family: Family = field(default_factory=Family)
    # what sizes the compute graph beyond the caches
    n_expert: int = 0
    n_expert_used: int = 0
    n_ff_exp: int = 0
    n_ff_shexp: int = 0
    n_expert_shared: int = 0
    n_layer_dense_lead: int = 0
    kv_lora_rank: int = 0
    ssm_d_state: int = 0
    ssm_n_group: int = 0
    ssm_dt_rank: int = 0
    head_k_mla: int = 0

    def q_dim(self, il: int) -> int:
        """Width of the query projection of layer il (MLA: per-head key_length_mla)."""
        head = self.head_k_mla if self.is_mla else self.head_k(il)
        return self.n_head[il] * head

    @property
    def n_layer(self) -> int:
        return self.n_layer_all - self.n_layer_nextn

    def head_k(self, il: int) -> int:
        return self.head_k_swa if self.is_swa[il] else self.head_k_full

    def head_v(self, il: int) -> int:
        return self.head_v_swa if self.is_swa[il] else self.head_v_full

    def k_gqa(self, il: int) -> int:
        return self.head_k(il) * self.n_head_kv[il]

    def v_gqa(self, il: int) -> int:
        return self.head_v(il) * self.n_head_kv[il]

    def v_gqa_max(self) -> int:
        return max([self.v_gqa(0)] + [self.v_gqa(il) for il in range(self.n_layer_all)])

    def has_kv(self, il: int) -> bool:
        return self.kv_from_start < 0 or il < self.kv_from_start


@dataclass
class MetadataError(LlmctlError, ValueError):
    """A metadata key the estimate needs is missing or malformed (a `metadata:` block or a GGUF)."""

    exit_code: int = EXIT_INPUT


class _Meta:
    def __init__(self, metadata: Mapping[str, Any], arch: str) -> None:
        self.m = metadata
        self.arch = arch

    def raw(self, key: str) -> Any:
        return self.m.get(f"{self.arch}.{key}")

    def num(self, key: str, default: int | None = None) -> int:
        v = self.raw(key)
        if v is None:
            if default is None:
                raise MetadataError(f"missing metadata key {self.arch}.{key}")
            return default
        return self._int(key, v)

    def _int(self, key: str, v: Any) -> int:
        """A count from the metadata: a non-negative integer (2.0 counts as 2), else MetadataError."""
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise MetadataError(f"{self.arch}.{key} should be a whole number >= 0, not {v!r}")
        return v

    def has(self, key: str) -> bool:
        return self.raw(key) is not None

    def per_layer(self, key: str, n: int, default: list[int] | None) -> list[int]:
        """A key that is either one number or a per-layer array (get_key_or_arr)."""
        v = self.raw(key)
        if v is None:
            if default is None:
                raise MetadataError(f"missing metadata key {self.arch}.{key}")
            return list(default)
        if isinstance(v, SkippedArray):
            raise MetadataError(
                f"{self.arch}.{key} is an array of {v.length}, longer than expected"
            )
        if isinstance(v, list):
            if len(v) != n:
                raise MetadataError(f"{self.arch}.{key} has {len(v)} values for {n} layers")
            return [self._int(key, x) for x in v]
        return [self._int(key, v)] * n

    def bools(self, key: str, n: int) -> list[bool] | None:
        v = self.raw(key)
        if isinstance(v, list):
            out = [bool(x) for x in v]
            return (out + [False] * n)[:n]
        return None


def _pattern(n_pattern: int, dense_first: bool, n_layer: int, n_all: int) -> list[bool]:
    out = []
    for il in range(n_layer):
        if dense_first:
            out.append(n_pattern == 0 or il % n_pattern != 0)
        else:
            out.append(n_pattern == 0 or il % n_pattern < n_pattern - 1)
    return out + [False] * (n_all - n_layer)


def _vocab_size(metadata: Mapping[str, Any], arch: str) -> int:
    v = metadata.get(f"{arch}.vocab_size")
    if isinstance(v, int):
        return v
    tokens = metadata.get("tokenizer.ggml.tokens")
    if tokens is not None:
        return len(tokens)
    return 0


def hparams_from_metadata(metadata: Mapping[str, Any]) -> HParams:
    """Derive the cache-sizing hyper-parameters from GGUF metadata (raises MetadataError)."""
    arch = metadata.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise MetadataError("missing metadata key general.architecture")
    m = _Meta(metadata, arch)
    n_all = m.num("block_count")
    if n_all <= 0 or n_all > 4096:
        raise MetadataError(f"{arch}.block_count must be between 1 and 4096, not {n_all}")
    n_nextn = m.num("nextn_predict_layers", 0)
    n_layer = n_all - n_nextn
    n_embd = m.num("embedding_length")
    n_head = m.per_layer("attention.head_count", n_all, [0] * n_all)
    n_head_kv = m.per_layer("attention.head_count_kv", n_all, n_head)
    n_ff = m.per_layer("feed_forward_length", n_all, [0] * n_all)
    notes: list[str] = []
    if n_head[0] > 0:
        head_k = m.num("attention.key_length", n_embd // n_head[0])
        head_v = m.num("attention.value_length", n_embd // n_head[0])
    else:
        head_k = head_v = 0
    head_k_swa = m.num("attention.key_length_swa", head_k)
    head_v_swa = m.num("attention.value_length_swa", head_v)
    fam, known = family(arch)
    if not fam.exact:
        notes.append(f"{arch} has caches of its own; estimated with the generic rules")

    # sliding window
    is_swa = [False] * n_all
    n_swa = 0
    swa = False
    rule: SwaRule | None = fam.swa
    if rule is not None and rule.only_with_layers not in (None, n_layer):
        rule = None
    if rule is not None:
        window = m.raw("attention.sliding_window")
        if (rule.off_when_zero and window == 0) or (
            rule.needs_window and not (isinstance(window, int) and window > 0)
        ):
            rule = None
    if rule is not None:
        swa = True
        n_swa = rule.force_window or m.num("attention.sliding_window", rule.window)
        arr = m.bools("attention.sliding_window_pattern", n_all)
        if arr is not None:
            is_swa = arr
        elif rule.pattern is None:
            raise MetadataError(f"missing metadata key {arch}.attention.sliding_window_pattern")
        else:
            p = m.num("attention.sliding_window_pattern", rule.pattern)
            is_swa = _pattern(p, rule.dense_first, n_layer, n_all)

    # recurrent layers
    how = fam.recurrent_layers
    is_recr = [how == "all"] * n_all
    if how == "zero_kv":
        is_recr = [il < n_layer and n_head_kv[il] == 0 for il in range(n_all)]
    elif how == "zero_kv_no_ff":
        is_recr = [il < n_layer and n_head_kv[il] == 0 and n_ff[il] == 0 for il in range(n_all)]
    elif how == "interval":
        arr = m.bools("attention.recurrent_layers", n_all)
        scalar = m.raw("attention.recurrent_layers")
        if arr is not None:
            is_recr = arr
        elif isinstance(scalar, bool | int):
            is_recr = [bool(scalar)] * n_all
        else:
            interval = m.num("full_attention_interval", fam.interval_default)
            if interval < 1:
                raise MetadataError(f"{arch}.full_attention_interval must be 1 or more, not 0")
            is_recr = [il < n_layer and (il + 1) % interval != 0 for il in range(n_all)]
    if fam.swa_on_attention_layers:
        window = m.raw("attention.sliding_window")
        if isinstance(window, int) and window > 0:
            swa, n_swa = True, window
            is_swa = [il < n_layer and not is_recr[il] for il in range(n_all)]

    kv_from_start = -1
    if fam.kv_layers == "first_20":
        kv_from_start = 20
    elif fam.kv_layers == "minus_shared":
        kv_from_start = n_all - m.num("attention.shared_kv_layers", 0)

    is_mla = m.num("attention.key_length_mla", 0) > 0 and m.num("attention.value_length_mla", 0) > 0

    # recurrent state widths (llama_hparams::n_embd_r / n_embd_s)
    wkv = m.num("wkv.head_size", 0)
    l_cache = m.num("shortconv.l_cache", 0)
    kda = m.num("kda.head_dim", 0)
    d_conv = m.num("ssm.conv_kernel", 0)
    d_inner = m.num("ssm.inner_size", 0)
    d_state = m.num("ssm.state_size", 0)
    n_group = m.num("ssm.group_count", 0)
    head_la = head_k if fam.linear_attention_state else 0
    if wkv:
        n_embd_r = m.num("token_shift_count", 2) * n_embd
    elif l_cache:
        n_embd_r = n_embd * (l_cache - 1)
    elif kda:
        n_embd_r = 3 * (d_conv - 1 if d_conv > 0 else 3) * n_head[0] * kda
    else:
        n_embd_r = (d_conv - 1 if d_conv > 0 else 0) * (d_inner + 2 * n_group * d_state)
    if wkv:
        n_embd_s = n_embd * wkv
    elif kda:
        n_embd_s = kda * kda * n_head[0]
    elif head_la:
        n_embd_s = head_la * head_la * n_head[0]
    else:
        n_embd_s = d_state * d_inner

    return HParams(
        arch=arch,
        n_layer_all=n_all,
        n_layer_nextn=n_nextn,
        n_embd=n_embd,
        n_ctx_train=m.num("context_length", 0),
        n_vocab=_vocab_size(metadata, arch),
        n_head=n_head,
        n_head_kv=n_head_kv,
        n_ff=n_ff,
        head_k_full=head_k,
        head_v_full=head_v,
        head_k_swa=head_k_swa,
        head_v_swa=head_v_swa,
        is_swa=is_swa,
        is_recr=is_recr,
        n_swa=n_swa,
        swa=swa,
        kv_from_start=kv_from_start,
        is_mla=is_mla,
        n_embd_r=n_embd_r,
        n_embd_s=n_embd_s,
        known=known,
        ssm_d_inner=d_inner,
        notes=notes,
        family=fam,
        n_expert=m.num("expert_count", 0),
        n_expert_used=m.num("expert_used_count", 0),
        n_ff_exp=m.num("expert_feed_forward_length", 0),
        n_ff_shexp=m.num("expert_shared_feed_forward_length", 0),
        n_expert_shared=m.num("expert_shared_count", 0),
        n_layer_dense_lead=m.num("leading_dense_block_count", 0),
        kv_lora_rank=m.num("attention.kv_lora_rank", 0),
        ssm_d_state=d_state,
        ssm_n_group=n_group,
        ssm_dt_rank=m.num("ssm.time_step_rank", 0),
        head_k_mla=m.num("attention.key_length_mla", 0),
    )


# --- context sizes ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ContextSizes:
    """What `llama_context` derives from the flags (n_ctx after padding, per-sequence size, streams)."""

    n_ctx: int
    n_ctx_seq: int
    n_seq: int
    n_stream: int
    kv_unified: bool
    n_batch: int
    n_ubatch: int


def context_sizes(opts: LaunchOptions, n_ctx_train: int) -> ContextSizes:
    """Context sizes as llama-server and llama_context compute them."""
    n_seq = opts.parallel
    unified = opts.kv_unified
    if n_seq < 0:  # server.cpp: auto = 4 slots with a unified cache
        n_seq, unified = 4, True
    n_seq = max(1, n_seq)
    unified = bool(unified)
    n_ctx0 = opts.ctx_size if opts.ctx_size > 0 else n_ctx_train
    n_batch = min(n_ctx0, opts.batch_size)
    n_ubatch = min(n_batch, opts.ubatch_size if opts.ubatch_size > 0 else opts.batch_size)
    n_ctx = pad(n_ctx0, 256)
    if unified:
        n_ctx_seq = n_ctx
    else:
        n_ctx_seq = pad(n_ctx // n_seq, 256)
        n_ctx = n_ctx_seq * n_seq
    return ContextSizes(
        n_ctx, n_ctx_seq, n_seq, 1 if unified else n_seq, unified, n_batch, n_ubatch
    )


# --- caches -------------------------------------------------------------------------------------


@dataclass
class CacheEstimate:
    """One cache as llama-server prints it: cells per stream, layers, K/V (or R/S) bytes."""

    kind: Literal["full", "swa", "recurrent"]
    cells: int
    layers: int
    k_type: str
    v_type: str
    k_bytes: int
    v_bytes: int
    n_seq: int
    n_stream: int
    layer_ids: list[int] = field(default_factory=list)
    layer_bytes: list[int] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return self.k_bytes + self.v_bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "cells": self.cells,
            "layers": self.layers,
            "k_type": self.k_type,
            "v_type": self.v_type,
            "k_bytes": self.k_bytes,
            "v_bytes": self.v_bytes,
            "bytes": self.bytes,
            "n_seq": self.n_seq,
            "n_stream": self.n_stream,
        }


def _attn_cache(
    hp: HParams,
    kind: Literal["full", "swa"],
    cells: int,
    layer_filter: Callable[[int], bool],
    tk: GGMLType,
    tv: GGMLType,
    v_trans: bool,
    cs: ContextSizes,
) -> CacheEstimate:
    v_width_max = hp.v_gqa_max() if v_trans else 0
    ids: list[int] = []
    per_layer: list[int] = []
    k_total = v_total = 0
    for il in range(hp.n_layer_all):
        if not hp.has_kv(il) or not layer_filter(il):
            continue
        k = tk.row_bytes(hp.k_gqa(il)) * cells * cs.n_stream
        v = 0
        if not hp.is_mla:
            v = tv.row_bytes(v_width_max if v_trans else hp.v_gqa(il)) * cells * cs.n_stream
        ids.append(il)
        per_layer.append(k + v)
        k_total += k
        v_total += v
    return CacheEstimate(
        kind,
        cells,
        len(ids),
        tk.name,
        tv.name,
        k_total,
        v_total,
        cs.n_seq,
        cs.n_stream,
        ids,
        per_layer,
    )


def _recurrent_cache(hp: HParams, layer_filter: Callable[[int], bool], n_seq: int) -> CacheEstimate:
    rows = max(1, n_seq)  # mem_size = max(1, n_seq_max); n_rs_seq = 0 without speculative decoding
    ids = [il for il in range(hp.n_layer) if layer_filter(il)]
    r = 4 * hp.n_embd_r * rows
    s = 4 * hp.n_embd_s * rows
    return CacheEstimate(
        "recurrent",
        rows,
        hp.n_layer,  # llama-server prints every layer here, recurrent or not
        "f32",
        "f32",
        r * len(ids),
        s * len(ids),
        n_seq,
        1,
        ids,
        [r + s] * len(ids),
    )


def kv_caches(hp: HParams, opts: LaunchOptions, cs: ContextSizes) -> list[CacheEstimate]:
    """Every cache llama-server allocates, in the order it prints them."""
    fam = hp.family
    if fam.memory == "none":
        return []
    tk = cache_type(opts.cache_type_k)
    tv = cache_type(opts.cache_type_v)
    v_trans = opts.flash_attn == "off"  # auto counts as on when the cache is allocated
    caches: list[CacheEstimate] = []

    def trunk(il: int) -> bool:
        # NextN/MTP layers are never attended by the main context
        return not (hp.n_layer_nextn > 0 and hp.n_layer > 0 and il >= hp.n_layer)

    if fam.memory == "recurrent":
        return [_recurrent_cache(hp, lambda il: True, cs.n_seq)]

    if fam.memory == "hybrid":
        attn_f: Callable[[int], bool]
        recr_f: Callable[[int], bool]
        if fam.attention_layers == "all":

            def attn_f(il: int) -> bool:
                return True

        elif fam.attention_layers == "not_recurrent_no_ff":

            def attn_f(il: int) -> bool:
                return not hp.is_recr[il] and hp.n_ff[il] == 0

        elif fam.recurrent_layers == "interval":

            def attn_f(il: int) -> bool:
                return il < hp.n_layer and not hp.is_recr[il]

        else:

            def attn_f(il: int) -> bool:
                return not hp.is_recr[il]

        if fam.recurrent_layers == "zero_kv_no_ff":

            def recr_f(il: int) -> bool:
                return hp.is_recr[il] and hp.n_ff[il] == 0

        elif fam.recurrent_layers == "interval":

            def recr_f(il: int) -> bool:
                return il < hp.n_layer and hp.is_recr[il]

        else:

            def recr_f(il: int) -> bool:
                return hp.is_recr[il]

        if hp.swa:
            caches += _swa_pair(hp, attn_f, tk, tv, v_trans, opts, cs)
        else:
            caches.append(_attn_cache(hp, "full", cs.n_ctx_seq, attn_f, tk, tv, v_trans, cs))
        caches.append(_recurrent_cache(hp, recr_f, cs.n_seq))
        return caches

    if hp.swa:
        return _swa_pair(hp, trunk, tk, tv, v_trans, opts, cs)
    return [_attn_cache(hp, "full", cs.n_ctx_seq, trunk, tk, tv, v_trans, cs)]


def _swa_pair(
    hp: HParams,
    base_filter: Callable[[int], bool],
    tk: GGMLType,
    tv: GGMLType,
    v_trans: bool,
    opts: LaunchOptions,
    cs: ContextSizes,
) -> list[CacheEstimate]:
    size_base = cs.n_ctx_seq
    if opts.swa_full:
        size_swa = size_base
    else:
        window = hp.n_swa * (cs.n_seq if cs.kv_unified else 1) + cs.n_ubatch
        size_swa = pad(min(size_base, window), 256)
    full = _attn_cache(
        hp, "full", size_base, lambda il: base_filter(il) and not hp.is_swa[il], tk, tv, v_trans, cs
    )
    swa = _attn_cache(
        hp, "swa", size_swa, lambda il: base_filter(il) and hp.is_swa[il], tk, tv, v_trans, cs
    )
    return [full, swa]


# --- weights ------------------------------------------------------------------------------------

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


# --- compute buffer -----------------------------------------------------------------------------


def n_outputs_reserved(cs: ContextSizes, n_draft: int = 0) -> int:
    """Outputs (logit rows) llama-server reserves: one per slot, plus the draft tokens each slot
    verifies (server_output_limits), at most n_batch."""
    return max(1, min(cs.n_batch, cs.n_seq * (1 + max(0, n_draft))))


@dataclass
class ComputeParts:
    """The compute buffer as the sum of what is alive at the graph's widest point."""

    n_tokens: int
    masks: int  # the KQ masks, inputs alive through every layer
    layer: int  # activations of the widest layer (FFN, MoE, attention scores or SSM scan)
    where: str  # which phase of a layer is the widest
    states: int  # recurrent states copied into the graph
    outputs: int  # logits of the reserved outputs

    @property
    def bytes(self) -> int:
        return self.masks + max(self.layer + self.states, self.outputs)

    def to_json(self) -> dict[str, Any]:
        return {
            "n_tokens": self.n_tokens,
            "masks": self.masks,
            "layer": self.layer,
            "where": self.where,
            "states": self.states,
            "outputs": self.outputs,
            "bytes": self.bytes,
        }


def compute_parts(
    hp: HParams,
    opts: LaunchOptions,
    cs: ContextSizes,
    caches: Sequence[CacheEstimate],
    n_draft: int = 0,
) -> ComputeParts:
    """The compute buffer llama.cpp reserves for its worst-case graph, from the graph's shapes.

    llama.cpp reserves a prompt-processing graph of n_tokens = min(n_ctx, n_ubatch) tokens with
    one output per slot. ggml's allocator frees each activation after its last use, so the
    buffer is the largest set of tensors alive at once:

        masks + max(widest layer + recurrent states, logits)

    masks   n_tokens x cells per attention cache, f16 with flash attention (f32 without)
    layer   4 n_tokens x (3 n_embd + n_q + FFN), where the FFN keeps gate, up and their
            product alive (3 n_ff; MoE: 3 n_ff_exp x used experts, plus the experts' outputs
            n_embd x used when they do not fit in the freed gate/up); without flash attention
            the KQ scores (cells x n_head x n_tokens, f32) with q, k, v and the residuals;
            MLA adds its absorbed per-head latent (2 kv_lora_rank + rope) to the scores;
            an SSM layer keeps its input projection and 2.5 x d_inner of scan outputs
    states  the recurrent states of every slot (Mamba-2: d_state x d_inner per slot)
    logits  4 x outputs x n_vocab

    Checked against `sched_reserve: CPU compute buffer size` on models with published shapes
    (bench/estimate_accuracy.py, tests/test_memory_shapes.py).
    """
    n_tokens = min(cs.n_ctx, cs.n_ubatch)
    fa = opts.flash_attn != "off"
    attn = [c for c in caches if c.kind != "recurrent" and c.layers > 0]
    masks = sum(n_tokens * c.cells * (2 if fa else 4) for c in attn)
    e = hp.n_embd
    layers = range(hp.n_layer)
    q = max((hp.q_dim(il) for il in layers), default=0)
    kv = max((hp.k_gqa(il) for il in layers if hp.n_head_kv[il] > 0), default=0)
    base = 3 * e + q
    phases: list[tuple[int, str]] = []
    # dense FFN
    dense = [hp.n_ff[il] for il in layers if not (hp.n_expert and il >= hp.n_layer_dense_lead)]
    if hp.n_expert == 0:
        dense = list(hp.n_ff)
    f = max(dense, default=0)
    if f:
        phases.append((4 * n_tokens * (base + 3 * f), "ffn"))
    # mixture of experts
    if hp.n_expert and hp.n_expert_used:
        k = hp.n_expert_used
        f_exp = hp.n_ff_exp or (max(hp.n_ff) // k if hp.n_ff else 0)
        moe = 3 * f_exp * k
        if e * k > 2 * f_exp * k:  # expert outputs do not fit where gate and up were
            moe += e * k
        shared = 3 * (hp.n_ff_shexp or f_exp) * hp.n_expert_shared
        phases.append((4 * n_tokens * (base + max(moe, shared)), "moe"))
    # attention scores without flash attention
    if not fa and attn:
        n_head = max(hp.n_head) if hp.n_head else 0
        kq = max(c.cells for c in attn) * n_head * n_tokens * 4
        extra = 5 * e + 2 * kv
        if hp.is_mla:
            extra += n_head * (2 * hp.kv_lora_rank + (hp.head_k_full - hp.kv_lora_rank))
        phases.append((kq + 4 * n_tokens * extra, "kq"))
    # selective-state-space scan
    states = 0
    if hp.ssm_d_inner and any(hp.is_recr):
        d_inner = hp.ssm_d_inner
        n_ssm_head = hp.ssm_dt_rank if hp.ssm_n_group else 0
        d_in_proj = 2 * d_inner + 2 * hp.ssm_n_group * hp.ssm_d_state + n_ssm_head
        phases.append((4 * n_tokens * (base + d_in_proj + (5 * d_inner) // 2), "ssm"))
        states = 4 * cs.n_seq * (hp.n_embd_r + hp.n_embd_s)
    if not phases:
        phases.append((4 * n_tokens * base, "attention"))
    layer, where = max(phases)
    outputs = 4 * n_outputs_reserved(cs, n_draft) * hp.n_vocab
    return ComputeParts(n_tokens, masks, layer, where, states, outputs)


def compute_estimate(
    hp: HParams, opts: LaunchOptions, cs: ContextSizes, caches: Sequence[CacheEstimate]
) -> int:
    """Bytes of the compute buffer (see compute_parts)."""
    return compute_parts(hp, opts, cs, caches).bytes


# --- the estimate -------------------------------------------------------------------------------


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
) -> Estimate:
    """Estimate llama-server's memory for `source` launched with `opts` (raises MetadataError).

    With `gpu=False` (no GPU, or a CPU-only llama-server) every figure is host memory and the GPU
    total is 0. `mmproj` and `draft` are counted where llama-server puts them (the projector
    and the draft's layers on the GPU when there is one). With a speculative type enabled the
    main context reserves outputs for the `n_draft` tokens each slot drafts (--draft-max); a
    draft model alone enables none in the pinned build (its log says "no implementations
    specified"), hence 0 by default.
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
    parts = compute_parts(hp, opts, cs, caches, n_draft if draft is not None else 0)
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
        draft_est = estimate(draft, draft_opts, overhead=0, gpu=gpu)
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
