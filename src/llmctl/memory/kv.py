"""Context sizes and the caches llama-server allocates for them: exact, pure functions.

`context_sizes` follows `llama_context` (n_ctx padding, per-sequence size, streams); `kv_caches`
returns every cache in the order llama-server prints them, following `llama_kv_cache` /
`llama_kv_cache_iswa` (attention), `llama_memory_recurrent` / `llama_memory_hybrid` (states) and
`llama_model::create_memory` (which cache an architecture gets).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from llmctl.llama.gguf import GGMLType
from llmctl.llama.vocab import cache_type
from llmctl.memory.hparams import HParams
from llmctl.memory.options import LaunchOptions


def pad(x: int, n: int) -> int:
    """Round x up to a multiple of n (GGML_PAD)."""
    return (x + n - 1) // n * n


class ContextSizes(NamedTuple):
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
