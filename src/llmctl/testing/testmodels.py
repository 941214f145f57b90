"""Tiny random-weight GGUF models that the real llama-server loads and serves: the test fixtures.

The output is gibberish; the mechanics (load, KV allocation, HTTP API, streaming) are real. Used by
the tests, the benchmarks, and the demo when no real model can be had:
`write_tiny_model(Path("tiny.gguf"))`. The file format itself is `llmctl.llama.gguf_writer`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmctl.llama.gguf import T_BOOL, T_FLOAT32, T_INT32, T_STRING, GGMLType, ggml_type
from llmctl.llama.gguf_writer import Tensor, Value, array, boolean, f32, string, u32, write_gguf

# --- vocabulary -------------------------------------------------------------------------------

_PIECES = ["▁", "▁the", "▁a", "▁is", "▁and", "▁to", "▁of", "▁in", "e", "t", "a", "o", "n"]
_CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _vocab(n_extra: int) -> list[tuple[str, Value]]:
    tokens = ["<unk>", "<s>", "</s>"]
    types = [2, 3, 3]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [6] * 256
    pieces = list(_PIECES)
    i = 0
    while len(pieces) < n_extra:
        pieces.append(f"▁w{i}")
        i += 1
    tokens += pieces[:n_extra]
    types += [1] * n_extra
    scores = [0.0] * 3 + [0.0] * 256 + [-float(i) for i in range(n_extra)]
    return [
        ("tokenizer.ggml.model", string("llama")),
        ("tokenizer.ggml.tokens", array(T_STRING, tokens)),
        ("tokenizer.ggml.scores", array(T_FLOAT32, scores)),
        ("tokenizer.ggml.token_type", array(T_INT32, types)),
        ("tokenizer.ggml.unknown_token_id", u32(0)),
        ("tokenizer.ggml.bos_token_id", u32(1)),
        ("tokenizer.ggml.eos_token_id", u32(2)),
        ("tokenizer.ggml.add_bos_token", boolean(True)),
        ("tokenizer.ggml.add_eos_token", boolean(False)),
        ("tokenizer.chat_template", string(_CHATML)),
    ]


# --- architectures ----------------------------------------------------------------------------


@dataclass
class _Cfg:
    arch: str
    n_layer: int = 2
    n_embd: int = 256
    n_head: int = 4
    n_head_kv: int | list[int] = 2
    head_dim: int = 64
    n_ff: int = 512
    n_ctx_train: int = 4096
    n_vocab_extra: int = 61  # 3 special + 256 bytes + 61 pieces = 320 tokens
    tied: bool = False
    weight_type: str = "f16"
    name: str = "tiny"
    seed: int = 0
    extra: dict[str, Any] | None = None

    @property
    def n_vocab(self) -> int:
        return 3 + 256 + self.n_vocab_extra

    def kv(self, il: int) -> int:
        return self.n_head_kv[il] if isinstance(self.n_head_kv, list) else self.n_head_kv

    def opt(self, key: str, default: Any) -> Any:
        return (self.extra or {}).get(key, default)


_Builder = Callable[[_Cfg], tuple[list[tuple[str, Value]], list[Tensor]]]


_HEAD_KEYS = (".key_length", ".value_length", ".head_count_kv", ".dimension_count")


def _common_meta(c: _Cfg, *, own_heads: bool = False) -> list[tuple[str, Value]]:
    """Metadata every architecture shares; with `own_heads`, without the head-size keys
    (KV head count, key/value length, rope dimensions) that the caller writes itself."""
    a = c.arch
    head_kv: Value = (
        array(T_INT32, c.n_head_kv) if isinstance(c.n_head_kv, list) else u32(c.n_head_kv)
    )
    meta = [
        ("general.architecture", string(a)),
        ("general.name", string(c.name)),
        ("general.file_type", u32(1)),
        (f"{a}.context_length", u32(c.n_ctx_train)),
        (f"{a}.embedding_length", u32(c.n_embd)),
        (f"{a}.block_count", u32(c.n_layer)),
        (f"{a}.feed_forward_length", u32(c.n_ff)),
        (f"{a}.attention.head_count", u32(c.n_head)),
        (f"{a}.attention.head_count_kv", head_kv),
        (f"{a}.attention.key_length", u32(c.head_dim)),
        (f"{a}.attention.value_length", u32(c.head_dim)),
        (f"{a}.attention.layer_norm_rms_epsilon", f32(1e-5)),
        (f"{a}.rope.dimension_count", u32(c.head_dim)),
        (f"{a}.rope.freq_base", f32(10000.0)),
        (f"{a}.vocab_size", u32(c.n_vocab)),
    ]
    if own_heads:
        meta = [(k, v) for k, v in meta if not k.endswith(_HEAD_KEYS)]
    return meta


def _emb_out(c: _Cfg, wt: GGMLType, f32t: GGMLType) -> list[Tensor]:
    out = [
        Tensor("token_embd.weight", (c.n_embd, c.n_vocab), wt),
        Tensor("output_norm.weight", (c.n_embd,), f32t, "ones"),
    ]
    if not c.tied:
        out.append(Tensor("output.weight", (c.n_embd, c.n_vocab), wt))
    return out


def _llama(c: _Cfg) -> tuple[list[tuple[str, Value]], list[Tensor]]:
    wt, ft = ggml_type(c.weight_type), ggml_type("f32")
    tensors = _emb_out(c, wt, ft)
    q = c.head_dim * c.n_head
    for il in range(c.n_layer):
        kv = c.head_dim * c.kv(il)
        p = f"blk.{il}."
        tensors += [
            Tensor(p + "attn_norm.weight", (c.n_embd,), ft, "ones"),
            Tensor(p + "attn_q.weight", (c.n_embd, q), wt),
            Tensor(p + "attn_k.weight", (c.n_embd, kv), wt),
            Tensor(p + "attn_v.weight", (c.n_embd, kv), wt),
            Tensor(p + "attn_output.weight", (q, c.n_embd), wt),
            Tensor(p + "ffn_norm.weight", (c.n_embd,), ft, "ones"),
            Tensor(p + "ffn_gate.weight", (c.n_embd, c.n_ff), wt),
            Tensor(p + "ffn_down.weight", (c.n_ff, c.n_embd), wt),
            Tensor(p + "ffn_up.weight", (c.n_embd, c.n_ff), wt),
        ]
    return _common_meta(c), tensors


def _attn(c: _Cfg, il: int, wt: GGMLType, ft: GGMLType, qk_norm: bool = False) -> list[Tensor]:
    p = f"blk.{il}."
    q = c.head_dim * c.n_head
    kv = c.head_dim * c.kv(il)
    out = [
        Tensor(p + "attn_q.weight", (c.n_embd, q), wt),
        Tensor(p + "attn_k.weight", (c.n_embd, kv), wt),
        Tensor(p + "attn_v.weight", (c.n_embd, kv), wt),
        Tensor(p + "attn_output.weight", (q, c.n_embd), wt),
    ]
    if qk_norm:
        out += [
            Tensor(p + "attn_q_norm.weight", (c.head_dim,), ft, "ones"),
            Tensor(p + "attn_k_norm.weight", (c.head_dim,), ft, "ones"),
        ]
    return out


def _ffn(c: _Cfg, il: int, wt: GGMLType) -> list[Tensor]:
    p = f"blk.{il}."
    return [
        Tensor(p + "ffn_gate.weight", (c.n_embd, c.n_ff), wt),
        Tensor(p + "ffn_down.weight", (c.n_ff, c.n_embd), wt),
        Tensor(p + "ffn_up.weight", (c.n_embd, c.n_ff), wt),
    ]


def _gemma(c: _Cfg) -> tuple[list[tuple[str, Value]], list[Tensor]]:
    """gemma2 (window 4096 by default, pattern 2) and gemma3 (pattern 6, window required)."""
    wt, ft = ggml_type(c.weight_type), ggml_type("f32")
    if c.arch == "gemma2":
        c.tied = True  # gemma2 always reuses token_embd as its output
    tensors = _emb_out(c, wt, ft)
    for il in range(c.n_layer):
        p = f"blk.{il}."
        tensors.append(Tensor(p + "attn_norm.weight", (c.n_embd,), ft, "ones"))
        tensors += _attn(c, il, wt, ft, qk_norm=c.arch == "gemma3")
        tensors += [
            Tensor(p + "post_attention_norm.weight", (c.n_embd,), ft, "ones"),
            Tensor(p + "ffn_norm.weight", (c.n_embd,), ft, "ones"),
            *_ffn(c, il, wt),
            Tensor(p + "post_ffw_norm.weight", (c.n_embd,), ft, "ones"),
        ]
    meta = _common_meta(c)
    meta.append((f"{c.arch}.attention.sliding_window", u32(c.opt("sliding_window", 128))))
    pattern = c.opt("sliding_window_pattern", None)
    if isinstance(pattern, list):
        meta.append((f"{c.arch}.attention.sliding_window_pattern", array(T_BOOL, pattern)))
    elif pattern is not None:
        meta.append((f"{c.arch}.attention.sliding_window_pattern", u32(pattern)))
    return meta, tensors


def _deepseek2(c: _Cfg) -> tuple[list[tuple[str, Value]], list[Tensor]]:
    """MLA attention (K-only cache of kv_lora_rank + rope width), dense FFN in every layer."""
    wt, ft = ggml_type(c.weight_type), ggml_type("f32")
    a = c.arch
    q_lora = c.opt("q_lora_rank", 128)
    kv_lora = c.opt("kv_lora_rank", 192)
    rope = c.opt("rope_dim", 64)
    k_mla = c.opt("key_length_mla", 128)  # nope + rope
    v_mla = c.opt("value_length_mla", 64)
    nope = k_mla - rope
    tensors = _emb_out(c, wt, ft)
    for il in range(c.n_layer):
        p = f"blk.{il}."
        tensors += [
            Tensor(p + "attn_norm.weight", (c.n_embd,), ft, "ones"),
            Tensor(p + "attn_q_a_norm.weight", (q_lora,), ft, "ones"),
            Tensor(p + "attn_kv_a_norm.weight", (kv_lora,), ft, "ones"),
            Tensor(p + "attn_q_a.weight", (c.n_embd, q_lora), wt),
            Tensor(p + "attn_q_b.weight", (q_lora, c.n_head * k_mla), wt),
            Tensor(p + "attn_kv_a_mqa.weight", (c.n_embd, kv_lora + rope), wt),
            Tensor(p + "attn_k_b.weight", (nope, kv_lora, c.n_head), wt),
            Tensor(p + "attn_v_b.weight", (kv_lora, v_mla, c.n_head), wt),
            Tensor(p + "attn_output.weight", (c.n_head * v_mla, c.n_embd), wt),
            Tensor(p + "ffn_norm.weight", (c.n_embd,), ft, "ones"),
            *_ffn(c, il, wt),
        ]
    meta = _common_meta(c, own_heads=True)
    meta += [
        (f"{a}.attention.head_count_kv", u32(1)),
        (f"{a}.attention.key_length", u32(kv_lora + rope)),
        (f"{a}.attention.value_length", u32(kv_lora)),
        (f"{a}.attention.key_length_mla", u32(k_mla)),
        (f"{a}.attention.value_length_mla", u32(v_mla)),
        (f"{a}.attention.q_lora_rank", u32(q_lora)),
        (f"{a}.attention.kv_lora_rank", u32(kv_lora)),
        (f"{a}.rope.dimension_count", u32(rope)),
        (f"{a}.leading_dense_block_count", u32(c.n_layer)),
        (f"{a}.expert_feed_forward_length", u32(c.n_ff)),
        (f"{a}.expert_shared_count", u32(1)),
    ]
    return meta, tensors


def _lfm2(c: _Cfg) -> tuple[list[tuple[str, Value]], list[Tensor]]:
    """Hybrid: short-convolution (recurrent) layers where head_count_kv is 0, attention elsewhere."""
    wt, ft = ggml_type(c.weight_type), ggml_type("f32")
    if not isinstance(c.n_head_kv, list):
        c.n_head_kv = [0 if il % 2 == 0 else c.n_head_kv for il in range(c.n_layer)]
    l_cache = c.opt("l_cache", 3)
    tensors = [Tensor("token_embd.weight", (c.n_embd, c.n_vocab), wt)]
    tensors.append(Tensor("token_embd_norm.weight", (c.n_embd,), ft, "ones"))
    if not c.tied:
        tensors.append(Tensor("output.weight", (c.n_embd, c.n_vocab), wt))
    for il in range(c.n_layer):
        p = f"blk.{il}."
        tensors += [
            Tensor(p + "ffn_norm.weight", (c.n_embd,), ft, "ones"),
            *_ffn(c, il, wt),
            Tensor(p + "attn_norm.weight", (c.n_embd,), ft, "ones"),
        ]
        if c.kv(il) == 0:
            tensors += [
                Tensor(p + "shortconv.conv.weight", (l_cache, c.n_embd), ft),
                Tensor(p + "shortconv.in_proj.weight", (c.n_embd, 3 * c.n_embd), wt),
                Tensor(p + "shortconv.out_proj.weight", (c.n_embd, c.n_embd), wt),
            ]
        else:
            tensors += _attn(c, il, wt, ft, qk_norm=True)
    meta = [*_common_meta(c), (f"{c.arch}.shortconv.l_cache", u32(l_cache))]
    window = c.opt("sliding_window", None)
    if window is not None:
        meta.append((f"{c.arch}.attention.sliding_window", u32(window)))
    return meta, tensors


def _cohere2(c: _Cfg) -> tuple[list[tuple[str, Value]], list[Tensor]]:
    """Sliding window every layer but each 4th, output tied to token_embd, parallel FFN block."""
    wt, ft = ggml_type(c.weight_type), ggml_type("f32")
    c.tied = True
    tensors = _emb_out(c, wt, ft)
    for il in range(c.n_layer):
        p = f"blk.{il}."
        tensors.append(Tensor(p + "attn_norm.weight", (c.n_embd,), ft, "ones"))
        tensors += _attn(c, il, wt, ft)
        tensors += _ffn(c, il, wt)
    a = c.arch
    meta = [
        *_common_meta(c),
        (f"{a}.attention.sliding_window", u32(c.opt("sliding_window", 128))),
        (f"{a}.logit_scale", f32(0.125)),
        (f"{a}.attention.layer_norm_epsilon", f32(1e-5)),
    ]
    return meta, tensors


def _mamba(c: _Cfg) -> tuple[list[tuple[str, Value]], list[Tensor]]:
    """Mamba 1: no attention, one recurrent state per layer (d_inner = 2 n_embd)."""
    wt, ft = ggml_type(c.weight_type), ggml_type("f32")
    a = c.arch
    d_inner = 2 * c.n_embd
    d_conv = c.opt("d_conv", 4)
    d_state = c.opt("d_state", 16)
    dt_rank = c.opt("dt_rank", 16)
    tensors = _emb_out(c, wt, ft)
    for il in range(c.n_layer):
        p = f"blk.{il}."
        tensors += [
            Tensor(p + "attn_norm.weight", (c.n_embd,), ft, "ones"),
            Tensor(p + "ssm_in.weight", (c.n_embd, 2 * d_inner), wt),
            Tensor(p + "ssm_conv1d.weight", (d_conv, d_inner), ft),
            Tensor(p + "ssm_conv1d.bias", (d_inner,), ft),
            Tensor(p + "ssm_x.weight", (d_inner, dt_rank + 2 * d_state), wt),
            Tensor(p + "ssm_dt.weight", (dt_rank, d_inner), wt),
            Tensor(p + "ssm_dt.bias", (d_inner,), ft),
            Tensor(p + "ssm_a", (d_state, d_inner), ft, "neg"),
            Tensor(p + "ssm_d", (d_inner,), ft, "ones"),
            Tensor(p + "ssm_out.weight", (d_inner, c.n_embd), wt),
        ]
    meta = [
        ("general.architecture", string(a)),
        ("general.name", string(c.name)),
        ("general.file_type", u32(1)),
        (f"{a}.context_length", u32(c.n_ctx_train)),
        (f"{a}.embedding_length", u32(c.n_embd)),
        (f"{a}.block_count", u32(c.n_layer)),
        (f"{a}.feed_forward_length", u32(0)),
        (f"{a}.attention.head_count", u32(0)),
        (f"{a}.attention.layer_norm_rms_epsilon", f32(1e-5)),
        (f"{a}.ssm.conv_kernel", u32(d_conv)),
        (f"{a}.ssm.inner_size", u32(d_inner)),
        (f"{a}.ssm.state_size", u32(d_state)),
        (f"{a}.ssm.time_step_rank", u32(dt_rank)),
        (f"{a}.vocab_size", u32(c.n_vocab)),
    ]
    return meta, tensors


def _gemma4(c: _Cfg) -> tuple[list[tuple[str, Value]], list[Tensor]]:
    """Gemma 4 (dense): wider full-attention heads than sliding ones, per-layer KV head counts,
    and optionally the last `shared_kv_layers` layers reusing earlier layers' KV."""
    wt, ft = ggml_type(c.weight_type), ggml_type("f32")
    a = c.arch
    pattern: list[bool] = c.opt("sliding_window_pattern", [True, True, True, False, True, False])
    c.n_layer = len(pattern)
    shared = c.opt("shared_kv_layers", 0)
    head_full = c.opt("key_length", 2 * c.head_dim)
    head_swa = c.head_dim
    kv_full, kv_swa = c.opt("head_count_kv_full", 1), c.opt("head_count_kv_swa", 4)
    n_head_kv = [kv_swa if swa else kv_full for swa in pattern]
    tensors = _emb_out(c, wt, ft)
    tensors.append(Tensor("rope_freqs.weight", (head_full // 2,), ft, "ones"))
    for il, swa in enumerate(pattern):
        p = f"blk.{il}."
        head = head_swa if swa else head_full
        has_kv = il < c.n_layer - shared
        tensors += [
            Tensor(p + "attn_norm.weight", (c.n_embd,), ft, "ones"),
            Tensor(p + "attn_q.weight", (c.n_embd, head * c.n_head), wt),
        ]
        if has_kv:
            tensors += [
                Tensor(p + "attn_k.weight", (c.n_embd, head * n_head_kv[il]), wt),
                Tensor(p + "attn_v.weight", (c.n_embd, head * n_head_kv[il]), wt),
                Tensor(p + "attn_k_norm.weight", (head,), ft, "ones"),
            ]
        tensors += [
            Tensor(p + "attn_output.weight", (head * c.n_head, c.n_embd), wt),
            Tensor(p + "attn_q_norm.weight", (head,), ft, "ones"),
            Tensor(p + "post_attention_norm.weight", (c.n_embd,), ft, "ones"),
            Tensor(p + "ffn_norm.weight", (c.n_embd,), ft, "ones"),
            *_ffn(c, il, wt),
            Tensor(p + "post_ffw_norm.weight", (c.n_embd,), ft, "ones"),
        ]
    meta = _common_meta(c, own_heads=True)
    meta += [
        (f"{a}.attention.head_count_kv", array(T_INT32, n_head_kv)),
        (f"{a}.attention.key_length", u32(head_full)),
        (f"{a}.attention.value_length", u32(head_full)),
        (f"{a}.attention.key_length_swa", u32(head_swa)),
        (f"{a}.attention.value_length_swa", u32(head_swa)),
        (f"{a}.rope.dimension_count", u32(head_full)),
        (f"{a}.rope.dimension_count_swa", u32(head_swa)),
        (f"{a}.attention.sliding_window", u32(c.opt("sliding_window", 128))),
        (f"{a}.attention.sliding_window_pattern", array(T_BOOL, pattern)),
        (f"{a}.attention.shared_kv_layers", u32(shared)),
        (f"{a}.embedding_length_per_layer_input", u32(0)),
    ]
    return meta, tensors


def _granitehybrid(c: _Cfg) -> tuple[list[tuple[str, Value]], list[Tensor]]:
    """Granite 4 hybrid: Mamba-2 layers (grouped state) where head_count_kv is 0, attention elsewhere."""
    wt, ft = ggml_type(c.weight_type), ggml_type("f32")
    a = c.arch
    if not isinstance(c.n_head_kv, list):
        c.n_head_kv = [c.n_head_kv if il % 2 else 0 for il in range(c.n_layer)]
    d_inner = 2 * c.n_embd
    d_conv = c.opt("d_conv", 4)
    d_state = c.opt("d_state", 32)
    n_group = c.opt("n_group", 2)
    n_ssm_head = c.opt("n_ssm_head", 8)
    d_in_proj = 2 * d_inner + 2 * n_group * d_state + n_ssm_head
    conv = d_inner + 2 * n_group * d_state
    tensors = _emb_out(c, wt, ft)
    for il in range(c.n_layer):
        p = f"blk.{il}."
        tensors.append(Tensor(p + "attn_norm.weight", (c.n_embd,), ft, "ones"))
        if c.kv(il) == 0:
            tensors += [
                Tensor(p + "ssm_in.weight", (c.n_embd, d_in_proj), wt),
                Tensor(p + "ssm_conv1d.weight", (d_conv, conv), ft),
                Tensor(p + "ssm_conv1d.bias", (conv,), ft),
                Tensor(p + "ssm_dt.bias", (n_ssm_head,), ft),
                Tensor(p + "ssm_a", (1, n_ssm_head), ft, "neg"),
                Tensor(p + "ssm_d", (1, n_ssm_head), ft, "ones"),
                Tensor(p + "ssm_norm.weight", (d_inner // n_group, n_group), ft, "ones"),
                Tensor(p + "ssm_out.weight", (d_inner, c.n_embd), wt),
            ]
        else:
            tensors += _attn(c, il, wt, ft)
        tensors.append(Tensor(p + "ffn_norm.weight", (c.n_embd,), ft, "ones"))
        tensors += _ffn(c, il, wt)
    meta = [
        *_common_meta(c),
        (f"{a}.ssm.conv_kernel", u32(d_conv)),
        (f"{a}.ssm.inner_size", u32(d_inner)),
        (f"{a}.ssm.state_size", u32(d_state)),
        (f"{a}.ssm.time_step_rank", u32(n_ssm_head)),
        (f"{a}.ssm.group_count", u32(n_group)),
    ]
    return meta, tensors


def _qwen3moe(c: _Cfg) -> tuple[list[tuple[str, Value]], list[Tensor]]:
    """Qwen3-MoE: attention with q/k norms, then `expert_count` experts of `n_ff` (8 used) per
    layer behind a router; the experts of a layer are three 3-D tensors (`ffn_*_exps`)."""
    wt, ft = ggml_type(c.weight_type), ggml_type("f32")
    a = c.arch
    n_expert = c.opt("expert_count", 8)
    n_used = c.opt("expert_used_count", min(2, n_expert))
    tensors = _emb_out(c, wt, ft)
    for il in range(c.n_layer):
        p = f"blk.{il}."
        tensors.append(Tensor(p + "attn_norm.weight", (c.n_embd,), ft, "ones"))
        tensors += _attn(c, il, wt, ft, qk_norm=True)
        tensors += [
            Tensor(p + "ffn_norm.weight", (c.n_embd,), ft, "ones"),
            Tensor(p + "ffn_gate_inp.weight", (c.n_embd, n_expert), ft),
            Tensor(p + "ffn_gate_exps.weight", (c.n_embd, c.n_ff, n_expert), wt),
            Tensor(p + "ffn_down_exps.weight", (c.n_ff, c.n_embd, n_expert), wt),
            Tensor(p + "ffn_up_exps.weight", (c.n_embd, c.n_ff, n_expert), wt),
        ]
    meta = [
        *_common_meta(c),
        (f"{a}.expert_count", u32(n_expert)),
        (f"{a}.expert_used_count", u32(n_used)),
        (f"{a}.expert_feed_forward_length", u32(c.n_ff)),
    ]
    return meta, tensors


ARCHITECTURES: dict[str, _Builder] = {
    "qwen3moe": _qwen3moe,
    "granitehybrid": _granitehybrid,
    "gemma4": _gemma4,
    "cohere2": _cohere2,
    "mamba": _mamba,
    "llama": _llama,
    "gemma2": _gemma,
    "gemma3": _gemma,
    "deepseek2": _deepseek2,
    "lfm2": _lfm2,
}
_DEFAULTS: dict[str, dict[str, Any]] = {
    "gemma2": {"n_layer": 4},
    "gemma3": {"n_layer": 6},
    "lfm2": {"n_layer": 4},
    "cohere2": {"n_layer": 4},
    "granitehybrid": {"n_layer": 4},
}


def write_tiny_model(
    path: Path, arch: str = "llama", *, sparse: bool = False, **overrides: Any
) -> Path:
    """Write a tiny random-weight GGUF of `arch` that llama-server loads; returns `path`.

    Architectures: llama, gemma2, gemma3, gemma4, cohere2 (sliding windows), deepseek2 (MLA),
    lfm2 and granitehybrid (hybrid), mamba (recurrent), qwen3moe (mixture of experts).
    Overrides: n_layer, n_embd, n_head, n_head_kv (int or per-layer list), head_dim, n_ff,
    n_ctx_train, n_vocab_extra, tied (no output.weight), weight_type (f32/f16/q8_0/q4_0),
    name, seed, and `extra`, a dict of architecture-specific settings: sliding_window and
    sliding_window_pattern (gemma*, cohere2, lfm2), shared_kv_layers, key_length,
    head_count_kv_full/_swa (gemma4), q_lora_rank, kv_lora_rank, rope_dim, key_length_mla,
    value_length_mla (deepseek2), l_cache (lfm2), d_conv, d_state, dt_rank (mamba),
    n_group, n_ssm_head (granitehybrid), expert_count, expert_used_count (qwen3moe; `n_ff` is
    then the width of one expert). `sparse`: header only, weights a hole (any weight_type; see
    write_gguf).
    """
    builder = ARCHITECTURES.get(arch)
    if builder is None:
        known = ", ".join(sorted(ARCHITECTURES))
        raise ValueError(f"no tiny model for architecture {arch!r}; known: {known}")
    fields = set(_Cfg.__dataclass_fields__)
    unknown = set(overrides) - fields
    if unknown:
        raise TypeError(f"unknown overrides: {', '.join(sorted(unknown))}")
    cfg = _Cfg(arch=arch, **{**_DEFAULTS.get(arch, {}), **overrides})
    meta, tensors = builder(cfg)
    meta = meta + _vocab(cfg.n_vocab_extra)
    return write_gguf(Path(path), meta, tensors, seed=cfg.seed, sparse=sparse)


def write_split_model(
    folder: Path, prefix: str, parts: int, arch: str = "llama", **overrides: Any
) -> list[Path]:
    """A tiny model as llama.cpp's gguf-split writes it: `prefix-0000N-of-0000M.gguf`, the
    metadata in the first part, the tensors spread over all, `split.*` keys in each."""
    from llmctl.llama.gguf import T_UINT16

    cfg = _Cfg(arch=arch, **{**_DEFAULTS.get(arch, {}), **overrides})
    meta, tensors = ARCHITECTURES[arch](cfg)
    meta = meta + _vocab(cfg.n_vocab_extra)
    per = -(-len(tensors) // parts)
    out = []
    for i in range(parts):
        split_meta = [
            ("split.no", Value(T_UINT16, i)),
            ("split.count", Value(T_UINT16, parts)),
            ("split.tensors.count", Value(T_INT32, len(tensors))),
        ]
        path = Path(folder) / f"{prefix}-{i + 1:05d}-of-{parts:05d}.gguf"
        head = meta + split_meta if i == 0 else split_meta
        out.append(write_gguf(path, head, tensors[i * per : (i + 1) * per], seed=cfg.seed))
    return out
