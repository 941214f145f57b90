"""The compute buffer llama.cpp reserves for its worst-case graph: approximate, from the graph's
shapes (the rule is in `compute_parts`' docstring), for the llama.cpp build whose rules
(`llmctl.memory.builds`) it is given: the logits reserved, the embedding inputs, what
`flash_attn: auto` resolves to. Pure functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llmctl.memory.builds import NEWEST, NO_MIXED_BATCH, Backend, BuildRules, fa_supported
from llmctl.memory.hparams import HParams
from llmctl.memory.kv import CacheEstimate, ContextSizes
from llmctl.memory.options import LaunchOptions


def n_outputs_reserved(cs: ContextSizes, n_draft: int = 0, rules: BuildRules = NEWEST) -> int:
    """Outputs (logit rows) the prompt graph reserves: one per slot, plus the draft tokens each
    slot verifies (server_output_limits), at most n_batch; before b9464 (`logits: ubatch`) one
    per token of the ubatch."""
    if rules.logits == "ubatch":
        return min(cs.n_ctx, cs.n_ubatch)
    return max(1, min(cs.n_batch, cs.n_seq * (1 + max(0, n_draft))))


def flash_attn_on(
    hp: HParams, opts: LaunchOptions, backend: Backend | None, caches: Sequence[CacheEstimate] = ()
) -> bool:
    """Whether llama-server runs flash attention: `on`/`off` as asked; `auto` where the backend
    has every attention layer's head shape and the cache types (llmctl.memory.builds)."""
    if opts.flash_attn != "auto":
        return opts.flash_attn == "on"
    shapes: set[tuple[int, int, int]] = set()
    for il in range(hp.n_layer):
        if hp.n_head_kv[il] <= 0 or hp.is_recr[il]:
            continue
        hk, hv = hp.head_k(il), hp.head_v(il)
        shapes.add((hk, hv, hp.n_head[il] // hp.n_head_kv[il]))
    return fa_supported(backend, sorted(shapes), opts.cache_type_k, opts.cache_type_v)


@dataclass
class ComputeParts:
    """The compute buffer as the sum of what is alive at the graph's widest point."""

    n_tokens: int
    masks: int  # the KQ masks, inputs alive through every layer
    layer: int  # activations of the widest layer (FFN, MoE, attention scores or SSM scan)
    where: str  # which phase of a layer is the widest
    states: int  # recurrent states copied into the graph
    outputs: int  # logits of the reserved outputs
    inputs: int = 0  # the mixed token/embedding input path (b11401 and newer)
    flash_attn: bool = True  # what the graph was sized with (`auto` resolved)
    build: int | None = None  # the build whose rules sized it (None: the newest)

    @property
    def bytes(self) -> int:
        return self.masks + self.inputs + max(self.layer + self.states, self.outputs)

    def to_json(self) -> dict[str, Any]:
        return {
            "n_tokens": self.n_tokens,
            "masks": self.masks,
            "layer": self.layer,
            "where": self.where,
            "states": self.states,
            "outputs": self.outputs,
            "inputs": self.inputs,
            "flash_attn": self.flash_attn,
            "build": self.build,
            "bytes": self.bytes,
        }


def compute_parts(
    hp: HParams,
    opts: LaunchOptions,
    cs: ContextSizes,
    caches: Sequence[CacheEstimate],
    n_draft: int = 0,
    rules: BuildRules = NEWEST,
    backend: Backend | None = None,
) -> ComputeParts:
    """The compute buffer llama.cpp reserves for its worst-case graph, from the graph's shapes.

    llama.cpp reserves a prompt-processing graph of n_tokens = min(n_ctx, n_ubatch) tokens with
    one output per slot (before b9464: one per token). ggml's allocator frees each activation
    after its last use, so the buffer is the largest set of tensors alive at once:

        masks + inputs + max(widest layer + recurrent states, logits)

    masks   n_tokens x cells per attention cache, f16 with flash attention (f32 without)
    layer   4 n_tokens x (3 n_embd + n_q + FFN), where the FFN keeps gate, up and their
            product alive (3 n_ff; MoE: 3 n_ff_exp x used experts, plus the experts' outputs
            n_embd x used when they do not fit in the freed gate/up); without flash attention
            the KQ scores (cells x n_head x n_tokens, f32) with q, k, v and the residuals;
            MLA adds its absorbed per-head latent (2 kv_lora_rank + rope) to the scores;
            an SSM layer keeps its input projection and 2.5 x d_inner of scan outputs
    states  the recurrent states of every slot (Mamba-2: d_state x d_inner per slot)
    logits  4 x outputs x n_vocab (outputs: n_outputs_reserved, by the build's rules); with
            the whole ubatch's logits (before b9464) also the normed hidden state they are
            computed from, 4 x outputs x n_embd
    cast    before b9415 with flash attention: the mask is made f32 and cast to f16, so until
            the cast the f32 mask (2x masks) and the token inputs (5 n_embd x n_tokens, f32)
            are alive beside it; a phase like a layer's, since the f32 mask is freed after
            (measured on b9093: the compute buffer's growth with the context is 3x masks)
    inputs  b11401 and newer: the mixed token/embedding path, 4 n_embd x n_tokens: the copy
            set_rows writes into is an unselected branch of the input select and never freed;
            its input and the token rows' lookup leave holes the allocator refills (measured
            on a real b11434 build: 1x makes the compute buffer exact on the 53 launches of
            bench/estimate_accuracy.py where 3x was 7 % high at the median)

    Narrow FFNs are over-counted: at n_ff <= 2 n_embd (no published model; they have 2.7 to
    5.3 n_embd) the allocator fits the FFN's tensors into holes the attention left, and the
    buffer is 4 n_tokens x (n_embd + n_q) smaller than the layer term (measured on test models
    of n_embd 256 and 512, n_ff 1 and 2 x n_embd, on b11312 and b11434: 1 MiB, 12 %; exact at
    n_ff 4 x n_embd and beyond). A high figure, so a safe one.

    `flash_attn: auto` is resolved for `backend` (flash_attn_on); the build's rules are in
    llmctl.memory.builds.RULES.
    Checked against `sched_reserve: CPU compute buffer size` on models with published shapes
    (bench/estimate_accuracy.py, tests/memory/test_shapes.py).
    """
    n_tokens = min(cs.n_ctx, cs.n_ubatch)
    fa = flash_attn_on(hp, opts, backend, caches)
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
    # before b9415, with flash attention: the f32 mask (2x the f16 one) is alive beside its f16
    # copy and the token inputs until the cast, and freed after it (its hole holds the layers)
    if fa and attn and rules.mask_cast:
        phases.append((2 * masks + 4 * n_tokens * 5 * e, "mask cast"))
    layer, where = max(phases)
    n_out = n_outputs_reserved(cs, n_draft, rules)
    outputs = 4 * n_out * hp.n_vocab
    if rules.logits == "ubatch":  # the normed hidden state the output layer reads, as wide
        outputs += 4 * n_out * hp.n_embd
    inputs = 0
    if rules.mixed_input and hp.arch not in NO_MIXED_BATCH:
        inputs = 4 * hp.n_embd * n_tokens
    return ComputeParts(n_tokens, masks, layer, where, states, outputs, inputs, fa, rules.build)


def compute_estimate(
    hp: HParams,
    opts: LaunchOptions,
    cs: ContextSizes,
    caches: Sequence[CacheEstimate],
    rules: BuildRules = NEWEST,
) -> int:
    """Bytes of the compute buffer (see compute_parts)."""
    return compute_parts(hp, opts, cs, caches, rules=rules).bytes
