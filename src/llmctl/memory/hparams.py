"""The hyper-parameters that size llama.cpp's caches, derived from GGUF metadata as llama.cpp
derives them (`llama_model::load_hparams`, with each architecture's rules from `families`).

`hparams_from_metadata(metadata)` is pure; a missing or malformed key raises `MetadataError`,
naming the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from llmctl.errors import EXIT_INPUT, LlmctlError
from llmctl.llama.gguf import SkippedArray
from llmctl.memory.families import Family, SwaRule, family


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


class MetadataError(LlmctlError, ValueError):
    """A metadata key the estimate needs is missing or malformed (a `metadata:` block or a GGUF)."""

    exit_code = EXIT_INPUT


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
    if n_nextn < 0 or n_nextn >= n_all:
        # the multi-token-prediction layers are the last of block_count (GLM-4.5: 1 of 93)
        raise MetadataError(
            f"{arch}.nextn_predict_layers must be between 0 and block_count - 1 ({n_all - 1}), "
            f"not {n_nextn}"
        )
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
