"""Few-layer GGUF models with the dimensions of published models, for checking memory estimates.

llama.cpp's compute buffer depends on tensor shapes (vocabulary, embedding, heads, FFN and expert
widths), not on weight values or the number of layers, so a model with the real shapes and two to
six layers reserves what the published model reserves. The weights are random (q4_0 or q8_0 to
keep the files a few hundred MB); the output is gibberish.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmctl.testing.testmodels import write_tiny_model


@dataclass(frozen=True)
class Shape:
    """A published model's shape, reduced to `overrides['n_layer']` layers."""

    name: str
    family: str  # what it stands for in the tables (dense, swa, mla, moe, hybrid)
    like: str  # the published model whose dimensions it has
    arch: str
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def n_vocab(self) -> int:
        return 3 + 256 + int(self.overrides.get("n_vocab_extra", 61))


def _vocab(n: int) -> int:
    return n - 259


SHAPES: tuple[Shape, ...] = (
    Shape(
        "qwen2.5-7b",
        "dense",
        "Qwen2.5-7B (152k vocabulary)",
        "llama",
        dict(
            n_layer=2,
            n_embd=3584,
            n_head=28,
            n_head_kv=4,
            head_dim=128,
            n_ff=18944,
            n_vocab_extra=_vocab(152064),
            weight_type="q4_0",
            n_ctx_train=32768,
        ),
    ),
    Shape(
        "llama3.2-1b",
        "dense",
        "Llama-3.2-1B (128k vocabulary, tied)",
        "llama",
        dict(
            n_layer=2,
            n_embd=2048,
            n_head=32,
            n_head_kv=8,
            head_dim=64,
            n_ff=8192,
            n_vocab_extra=_vocab(128256),
            weight_type="q8_0",
            tied=True,
            n_ctx_train=131072,
        ),
    ),
    Shape(
        "gemma3-270m",
        "swa",
        "Gemma-3-270M (262k vocabulary, window 512)",
        "gemma3",
        dict(
            n_layer=6,
            n_embd=640,
            n_head=4,
            n_head_kv=1,
            head_dim=256,
            n_ff=2048,
            n_vocab_extra=_vocab(262144),
            weight_type="q8_0",
            tied=True,
            n_ctx_train=32768,
            extra={"sliding_window": 512},
        ),
    ),
    Shape(
        "gemma3-4b",
        "swa",
        "Gemma-3-4B (262k vocabulary, window 1024)",
        "gemma3",
        dict(
            n_layer=6,
            n_embd=2560,
            n_head=8,
            n_head_kv=4,
            head_dim=256,
            n_ff=10240,
            n_vocab_extra=_vocab(262144),
            weight_type="q4_0",
            tied=True,
            n_ctx_train=131072,
            extra={"sliding_window": 1024},
        ),
    ),
    Shape(
        "deepseek-v2-lite",
        "mla",
        "DeepSeek-V2-Lite attention (MLA, 102k vocabulary)",
        "deepseek2",
        dict(
            n_layer=2,
            n_embd=2048,
            n_head=16,
            n_ff=10944,
            n_vocab_extra=_vocab(102400),
            weight_type="q8_0",
            n_ctx_train=163840,
            extra={
                "q_lora_rank": 1536,
                "kv_lora_rank": 512,
                "rope_dim": 64,
                "key_length_mla": 192,
                "value_length_mla": 128,
            },
        ),
    ),
    Shape(
        "qwen3-30b-a3b",
        "moe",
        "Qwen3-30B-A3B (128 experts, 8 used, 152k vocabulary)",
        "qwen3moe",
        dict(
            n_layer=2,
            n_embd=2048,
            n_head=32,
            n_head_kv=4,
            head_dim=128,
            n_ff=768,
            n_vocab_extra=_vocab(151936),
            weight_type="q4_0",
            n_ctx_train=40960,
            extra={"expert_count": 128, "expert_used_count": 8},
        ),
    ),
    Shape(
        "moe-8x",
        "moe",
        "an 8-expert MoE (2 used, 152k vocabulary)",
        "qwen3moe",
        dict(
            n_layer=2,
            n_embd=2048,
            n_head=16,
            n_head_kv=8,
            head_dim=128,
            n_ff=5632,
            n_vocab_extra=_vocab(151936),
            weight_type="q4_0",
            n_ctx_train=32768,
            extra={"expert_count": 8, "expert_used_count": 2},
        ),
    ),
    Shape(
        "granite-4.0-h",
        "hybrid",
        "Granite-4.0-H (Mamba-2 + attention, 100k vocabulary)",
        "granitehybrid",
        dict(
            n_layer=4,
            n_embd=1536,
            n_head=12,
            n_head_kv=4,
            head_dim=128,
            n_ff=4096,
            n_vocab_extra=_vocab(100352),
            weight_type="q8_0",
            n_ctx_train=131072,
            extra={"d_state": 128, "n_group": 1, "n_ssm_head": 48},
        ),
    ),
)


def shape(name: str) -> Shape:
    for s in SHAPES:
        if s.name == name:
            return s
    raise KeyError(name)


def write_shaped_model(folder: Path, s: Shape) -> Path:
    """The GGUF of `s` in `folder` (written once; reused when present)."""
    path = folder / f"{s.name}.gguf"
    if not path.exists():
        write_tiny_model(path, arch=s.arch, name=s.name, **s.overrides)
    return path


@dataclass(frozen=True)
class ProjectorShape:
    """A vision projector (mmproj GGUF) with a published encoder's shape and few blocks."""

    name: str
    like: str
    projector_type: str
    text_model: str  # the Shape whose embedding it feeds
    image_size: int
    patch_size: int
    n_embd: int
    n_ff: int
    n_head: int
    n_block: int
    projection_dim: int


PROJECTORS: tuple[ProjectorShape, ...] = (
    ProjectorShape(
        "gemma3-4b-mmproj",
        "Gemma-3-4B's SigLIP encoder (896 px, 14 px patches, 2 of 27 blocks)",
        "gemma3",
        "gemma3-4b",
        image_size=896,
        patch_size=14,
        n_embd=1152,
        n_ff=4304,
        n_head=16,
        n_block=2,
        projection_dim=2560,
    ),
)


def write_projector(folder: Path, p: ProjectorShape) -> Path:
    """The mmproj GGUF of `p` in `folder` (written once; reused when present)."""
    from llmctl.llama.gguf import T_FLOAT32, ggml_type
    from llmctl.llama.gguf_writer import Tensor, array, boolean, f32, string, u32, write_gguf

    path = folder / f"{p.name}.gguf"
    if path.exists():
        return path
    f16, f32t = ggml_type("f16"), ggml_type("f32")
    e, side = p.n_embd, p.image_size // p.patch_size
    meta = [
        ("general.architecture", string("clip")),
        ("general.name", string(p.name)),
        ("clip.projector_type", string(p.projector_type)),
        ("clip.has_vision_encoder", boolean(True)),
        ("clip.use_gelu", boolean(True)),
        ("clip.vision.image_size", u32(p.image_size)),
        ("clip.vision.patch_size", u32(p.patch_size)),
        ("clip.vision.embedding_length", u32(e)),
        ("clip.vision.feed_forward_length", u32(p.n_ff)),
        ("clip.vision.block_count", u32(p.n_block)),
        ("clip.vision.projection_dim", u32(p.projection_dim)),
        ("clip.vision.attention.head_count", u32(p.n_head)),
        ("clip.vision.attention.layer_norm_epsilon", f32(1e-6)),
        ("clip.vision.image_mean", array(T_FLOAT32, [0.5, 0.5, 0.5])),
        ("clip.vision.image_std", array(T_FLOAT32, [0.5, 0.5, 0.5])),
    ]
    tensors = [
        Tensor("v.patch_embd.weight", (p.patch_size, p.patch_size, 3, e), f16),
        Tensor("v.patch_embd.bias", (e,), f32t),
        Tensor("v.position_embd.weight", (e, side * side), f16),
    ]
    for il in range(p.n_block):
        b = f"v.blk.{il}."
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            tensors += [
                Tensor(b + name + ".weight", (e, e), f16),
                Tensor(b + name + ".bias", (e,), f32t),
            ]
        tensors += [
            Tensor(b + "ln1.weight", (e,), f32t, "ones"),
            Tensor(b + "ln1.bias", (e,), f32t, "zeros"),
            Tensor(b + "ln2.weight", (e,), f32t, "ones"),
            Tensor(b + "ln2.bias", (e,), f32t, "zeros"),
            Tensor(b + "ffn_up.weight", (e, p.n_ff), f16),
            Tensor(b + "ffn_up.bias", (p.n_ff,), f32t),
            Tensor(b + "ffn_down.weight", (p.n_ff, e), f16),
            Tensor(b + "ffn_down.bias", (e,), f32t),
        ]
    tensors += [
        Tensor("v.post_ln.weight", (e,), f32t, "ones"),
        Tensor("v.post_ln.bias", (e,), f32t, "zeros"),
        Tensor("mm.soft_emb_norm.weight", (e,), f32t, "ones"),
        Tensor("mm.input_projection.weight", (p.projection_dim, e), f16),
    ]
    return write_gguf(path, meta, tensors)
