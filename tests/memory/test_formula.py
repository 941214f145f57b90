"""The memory model as pure functions: published worked figures and llama.cpp's allocation rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llmctl.llama.gguf import TensorInfo, ggml_type, read_gguf
from llmctl.memory.estimate import MiB, ModelSource, estimate
from llmctl.memory.hparams import MetadataError, hparams_from_metadata
from llmctl.memory.kv import context_sizes
from llmctl.memory.options import LaunchOptions
from llmctl.memory.weights import gpu_layer_split, weights_estimate
from llmctl.testing.testmodels import write_tiny_model

LLAMA_8B = {
    "general.architecture": "llama",
    "llama.block_count": 32,
    "llama.context_length": 131072,
    "llama.embedding_length": 4096,
    "llama.feed_forward_length": 14336,
    "llama.attention.head_count": 32,
    "llama.attention.head_count_kv": 8,
    "llama.vocab_size": 128256,
}
GEMMA3_27B = {
    "general.architecture": "gemma3",
    "gemma3.block_count": 62,
    "gemma3.context_length": 131072,
    "gemma3.embedding_length": 5376,
    "gemma3.feed_forward_length": 21504,
    "gemma3.attention.head_count": 32,
    "gemma3.attention.head_count_kv": 16,
    "gemma3.attention.key_length": 128,
    "gemma3.attention.value_length": 128,
    "gemma3.attention.sliding_window": 1024,
}


def est(meta: dict[str, Any], **opts: Any) -> Any:
    return estimate(ModelSource.from_metadata("m.gguf", meta), LaunchOptions(**opts))


def test_llama_3_1_8b_at_8k_is_1024_mib() -> None:
    e = est(LLAMA_8B, ctx_size=8192)
    assert [c.kind for c in e.caches] == ["full"]
    assert e.kv_bytes == 1024 * MiB
    assert e.caches[0].k_bytes == e.caches[0].v_bytes == 512 * MiB
    assert (e.sizes.n_seq, e.sizes.n_stream, e.sizes.kv_unified) == (4, 1, True)  # auto slots
    assert e.exact


def test_gemma_3_27b_at_32k_one_slot() -> None:
    e = est(GEMMA3_27B, ctx_size=32768, parallel=1)
    full, swa = e.caches
    assert (full.kind, full.layers, full.cells, full.bytes) == ("full", 10, 32768, 2560 * MiB)
    assert (swa.kind, swa.layers, swa.cells, swa.bytes) == ("swa", 52, 1536, 624 * MiB)
    # --swa-full gives the sliding-window layers the whole context
    assert est(GEMMA3_27B, ctx_size=32768, parallel=1, swa_full=True).caches[1].cells == 32768


@pytest.mark.parametrize(
    ("opts", "expected"),
    [
        ({"ctx_size": 1000, "parallel": 3, "kv_unified": False}, (1536, 512, 3, 3, False)),
        ({"ctx_size": 1000, "parallel": -1, "kv_unified": False}, (1024, 1024, 4, 1, True)),
        ({"ctx_size": 4096, "parallel": 1}, (4096, 4096, 1, 1, False)),
        ({"ctx_size": 0, "parallel": 2, "kv_unified": True}, (8192, 8192, 2, 1, True)),
        ({"ctx_size": 300, "parallel": 2}, (512, 256, 2, 2, False)),
    ],
)
def test_context_sizes_follow_llama_context(
    opts: dict[str, Any], expected: tuple[int, int, int, int, bool]
) -> None:
    cs = context_sizes(LaunchOptions(**opts), n_ctx_train=8192)
    assert (cs.n_ctx, cs.n_ctx_seq, cs.n_seq, cs.n_stream, cs.kv_unified) == expected


def test_swa_window_grows_with_unified_slots_and_ubatch() -> None:
    # unified: window * slots + ubatch, padded to 256, capped at the context
    e = est(GEMMA3_27B, ctx_size=32768, parallel=4, kv_unified=True, ubatch_size=100)
    assert e.caches[1].cells == 4352  # PAD(1024 * 4 + 100, 256)
    e = est(GEMMA3_27B, ctx_size=32768, parallel=4, kv_unified=False, ubatch_size=100)
    assert e.caches[1].cells == 1280  # PAD(1024 + 100, 256), per stream
    assert e.caches[1].n_stream == 4
    e = est(GEMMA3_27B, ctx_size=1024, parallel=1)
    assert e.caches[1].cells == 1024


def test_quantized_cache_types_use_block_sizes() -> None:
    e = est(LLAMA_8B, ctx_size=8192, parallel=1, cache_type_k="q8_0", cache_type_v="q4_0")
    full = e.caches[0]
    assert full.k_bytes == 32 * 1024 * 8192 * 34 // 32
    assert full.v_bytes == 32 * 1024 * 8192 * 18 // 32


def gemma4(**extra: Any) -> dict[str, Any]:
    pattern = [il % 6 != 5 for il in range(12)]
    meta = {
        "general.architecture": "gemma4",
        "block_count": 12,
        "context_length": 262144,
        "embedding_length": 1024,
        "attention.head_count": 8,
        "attention.head_count_kv": [4 if p else 1 for p in pattern],
        "attention.key_length": 512,
        "attention.value_length": 512,
        "attention.key_length_swa": 256,
        "attention.value_length_swa": 256,
        "attention.sliding_window": 512,
        "attention.sliding_window_pattern": pattern,
    }
    meta.update(extra)
    return meta


def test_gemma4_per_layer_widths_and_shared_kv_layers() -> None:
    e = est(gemma4(), ctx_size=4096, parallel=1)
    full, swa = e.caches
    assert (full.layers, swa.layers) == (2, 10)
    assert full.k_bytes == 2 * 512 * 1 * 4096 * 2
    assert swa.k_bytes == 10 * 256 * 4 * 1024 * 2  # PAD(512 + 512, 256) cells
    # the last 4 layers reuse earlier layers' KV
    shared = est(gemma4(**{"attention.shared_kv_layers": 4}), ctx_size=4096, parallel=1)
    assert (shared.caches[0].layers, shared.caches[1].layers) == (1, 7)
    # flash attention off: V is stored transposed at the widest V width of all layers
    off = est(gemma4(), ctx_size=4096, parallel=1, flash_attn="off")
    assert off.caches[0].v_bytes == 2 * 1024 * 4096 * 2
    assert off.caches[1].v_bytes == 10 * 1024 * 1024 * 2
    assert off.caches[0].k_bytes == full.k_bytes


def test_mla_is_k_only_and_nextn_layers_are_left_out() -> None:
    meta = {
        "general.architecture": "deepseek2",
        "block_count": 62,
        "nextn_predict_layers": 1,
        "context_length": 163840,
        "embedding_length": 7168,
        "attention.head_count": 128,
        "attention.head_count_kv": 1,
        "attention.key_length": 576,
        "attention.value_length": 512,
        "attention.key_length_mla": 192,
        "attention.value_length_mla": 128,
    }
    e = est(meta, ctx_size=32768, parallel=1)
    (cache,) = e.caches
    assert cache.layers == 61
    assert cache.v_bytes == 0
    assert cache.k_bytes == 61 * 576 * 32768 * 2


def test_recurrent_state_sizes() -> None:
    mamba = {
        "general.architecture": "mamba",
        "block_count": 64,
        "context_length": 1048576,
        "embedding_length": 2560,
        "ssm.conv_kernel": 4,
        "ssm.inner_size": 5120,
        "ssm.state_size": 16,
        "ssm.time_step_rank": 160,
    }
    (c,) = est(mamba, ctx_size=4096, parallel=3).caches
    assert (c.kind, c.cells, c.layers) == ("recurrent", 3, 64)
    assert c.k_bytes == 64 * 4 * 3 * (3 * 5120)
    assert c.v_bytes == 64 * 4 * 3 * (16 * 5120)
    # independent of the context and the cache types
    (c2,) = est(mamba, ctx_size=65536, parallel=3, cache_type_k="q4_0").caches
    assert c2.bytes == c.bytes
    rwkv = {
        "general.architecture": "rwkv6",
        "block_count": 24,
        "context_length": 1048576,
        "embedding_length": 2048,
        "wkv.head_size": 64,
    }
    (r,) = est(rwkv, ctx_size=4096, parallel=1).caches
    assert r.k_bytes == 24 * 4 * 2 * 2048
    assert r.v_bytes == 24 * 4 * 2048 * 64


def test_hybrid_granite_has_attention_then_recurrent() -> None:
    kv = [0, 0, 0, 8] * 4
    meta = {
        "general.architecture": "granitehybrid",
        "block_count": 16,
        "context_length": 131072,
        "embedding_length": 1536,
        "attention.head_count": 12,
        "attention.head_count_kv": kv,
        "ssm.conv_kernel": 4,
        "ssm.inner_size": 3072,
        "ssm.state_size": 128,
        "ssm.group_count": 1,
    }
    attn, recr = est(meta, ctx_size=8192, parallel=1).caches
    assert (attn.kind, attn.layers) == ("full", 4)
    assert attn.k_bytes == 4 * 128 * 8 * 8192 * 2
    assert (recr.kind, recr.layers) == ("recurrent", 16)  # printed as every layer
    assert recr.k_bytes == 12 * 4 * 3 * (3072 + 2 * 128)


def test_models_without_kv_and_unknown_architectures() -> None:
    bert = {
        "general.architecture": "bert",
        "block_count": 12,
        "context_length": 512,
        "embedding_length": 768,
        "attention.head_count": 12,
    }
    assert est(bert, ctx_size=512).caches == []
    unknown = {**LLAMA_8B, "general.architecture": "newthing"}
    unknown = {k.replace("llama.", "newthing."): v for k, v in unknown.items()}
    e = est(unknown, ctx_size=8192)
    assert not e.exact
    assert e.kv_bytes == 1024 * MiB  # the generic rules


def test_missing_keys_are_metadata_errors() -> None:
    with pytest.raises(MetadataError, match=r"llama\.block_count"):
        hparams_from_metadata({"general.architecture": "llama"})
    with pytest.raises(MetadataError, match=r"general\.architecture"):
        hparams_from_metadata({})
    with pytest.raises(MetadataError, match="sliding_window_pattern"):
        est({**gemma4(), "attention.sliding_window_pattern": None}, ctx_size=1024)
    # more prediction layers than layers: an error, not a list of 4.6 billion (found by fuzzing)
    for nextn in (4615272737, 32):
        with pytest.raises(MetadataError, match=r"llama\.nextn_predict_layers must be between"):
            hparams_from_metadata({**LLAMA_8B, "llama.nextn_predict_layers": nextn})


def test_metadata_block_keys_and_weights_bytes() -> None:
    src = ModelSource.from_metadata(
        "x.gguf", {"architecture": "llama", "block_count": 2, "weights_bytes": "1GiB"}
    )
    assert src.metadata == {"general.architecture": "llama", "llama.block_count": 2}
    assert src.weights_bytes == 1024**3


def test_ngl_rule() -> None:
    assert gpu_layer_split(32, -1) == (0, True)
    assert gpu_layer_split(32, 33) == (0, True)
    assert gpu_layer_split(32, 1) == (32, True)  # only the output layer
    assert gpu_layer_split(32, 5) == (28, True)  # output + the last 4 blocks
    assert gpu_layer_split(32, 0) == (33, False)


def _t(name: str, n: int, type_name: str = "f32") -> TensorInfo:
    return TensorInfo(name, (n,), ggml_type(type_name), 0)


def test_weights_split_and_tied_embeddings() -> None:
    tensors = [_t("token_embd.weight", 1024), _t("output_norm.weight", 32)]
    tensors += [_t(f"blk.{i}.w", 128) for i in range(4)]
    w = weights_estimate([*tensors, _t("output.weight", 1024)], 4, -1)
    assert (w.gpu_bytes, w.cpu_bytes) == (4 * (32 + 512 + 1024), 4096)
    w = weights_estimate([*tensors, _t("output.weight", 1024)], 4, 3)
    assert (w.gpu_bytes, w.cpu_bytes) == (4 * (32 + 256 + 1024), 4 * (1024 + 256))
    # tied: the output layer's copy of the embedding goes to the GPU too
    tied = weights_estimate(tensors, 4, -1)
    assert tied.gpu_bytes == 4 * (32 + 512 + 1024)
    assert tied.bytes == 4 * (1024 + 32 + 512 + 1024)
    cpu_only = weights_estimate(tensors, 4, 0)
    assert (cpu_only.gpu_bytes, cpu_only.bytes) == (0, 4 * 1568)


def test_cuda_padding_of_gpu_weights() -> None:
    # 100 f32 -> 400 bytes, aligned to 512; q8_0 of 4096 columns needs no row padding
    assert weights_estimate([_t("blk.0.a", 100)], 1, -1).gpu_bytes == 512
    q = TensorInfo("blk.0.q", (4096, 8), ggml_type("q8_0"), 0)
    assert weights_estimate([q], 1, -1).gpu_bytes == q.nbytes
    # 2816 columns: one extra 256-column q8_0 row fragment (8 blocks of 34 bytes), then alignment
    odd = TensorInfo("blk.0.q", (2816, 8), ggml_type("q8_0"), 0)
    expected = odd.nbytes + 8 * 34
    assert weights_estimate([odd], 1, -1).gpu_bytes == (expected + 127) // 128 * 128
    assert weights_estimate([odd], 1, 0).cpu_bytes == odd.nbytes


def test_kv_offload_follows_the_layers(tmp_path: Path) -> None:
    src = ModelSource.from_gguf(read_gguf(write_tiny_model(tmp_path / "m.gguf", n_layer=4)))
    all_gpu = estimate(src, LaunchOptions(ctx_size=1024, parallel=1))
    assert all_gpu.kv_gpu_bytes == all_gpu.kv_bytes
    half = estimate(src, LaunchOptions(ctx_size=1024, parallel=1, n_gpu_layers=3))
    assert half.kv_gpu_bytes == all_gpu.kv_bytes // 2  # blocks 2 and 3
    none = estimate(src, LaunchOptions(ctx_size=1024, parallel=1, no_kv_offload=True))
    assert none.kv_gpu_bytes == 0
    assert none.gpu_total_bytes < all_gpu.gpu_total_bytes


def test_json_contract_keys(tmp_path: Path) -> None:
    src = ModelSource.from_gguf(read_gguf(write_tiny_model(tmp_path / "m.gguf")))
    j = estimate(src, LaunchOptions(ctx_size=2048), budget=8 * 1024**3, profile="p").to_json()
    for key in [
        "profile",
        "model",
        "architecture",
        "exact",
        "n_ctx",
        "n_ctx_seq",
        "n_seq",
        "n_stream",
        "kv_unified",
        "flash_attn",
        "kv_cache",
        "weights",
        "compute_bytes",
        "gpu_total_bytes",
        "budget_bytes",
        "fits",
    ]:
        assert key in j
    cache = j["kv_cache"]["caches"][0]
    assert set(cache) >= {
        "kind",
        "cells",
        "layers",
        "k_type",
        "v_type",
        "k_bytes",
        "v_bytes",
        "bytes",
    }
    assert set(j["weights"]) >= {"bytes", "gpu_bytes", "cpu_bytes"}
    assert j["fits"] is True
    assert j["kv_cache"]["bytes"] == sum(c["bytes"] for c in j["kv_cache"]["caches"])


@pytest.mark.parametrize(
    ("arch", "n_layer", "extra", "kinds", "swa_layers"),
    [
        ("exaone4", 64, {}, ["full", "swa"], 48),
        ("exaone4", 32, {}, ["full"], 0),
        ("smallthinker", 8, {"attention.sliding_window": 512}, ["full", "swa"], 6),
        ("smallthinker", 8, {}, ["full"], 0),
        ("cohere2moe", 8, {"attention.sliding_window": 512}, ["full", "swa"], 6),
        ("llama4", 8, {"attention.sliding_window": 0}, ["full"], 0),
        ("llama4", 8, {}, ["full", "swa"], 6),
        ("phi3", 8, {"attention.sliding_window": 2048}, ["full"], 0),
    ],
)
def test_which_layers_slide(
    arch: str, n_layer: int, extra: dict[str, Any], kinds: list[str], swa_layers: int
) -> None:
    meta = {
        "general.architecture": arch,
        "block_count": n_layer,
        "context_length": 65536,
        "embedding_length": 512,
        "attention.head_count": 8,
        "attention.head_count_kv": 2,
        **extra,
    }
    e = est(meta, ctx_size=32768, parallel=1)
    assert [c.kind for c in e.caches] == kinds
    assert sum(c.layers for c in e.caches if c.kind == "swa") == swa_layers
    if arch == "smallthinker" and extra:
        assert e.caches[1].cells == 4608  # its window is 4096 whatever the key says


def test_qwen3next_full_attention_every_fourth_layer() -> None:
    meta = {
        "general.architecture": "qwen3next",
        "block_count": 8,
        "context_length": 262144,
        "embedding_length": 2048,
        "attention.head_count": 16,
        "attention.head_count_kv": 2,
        "attention.key_length": 256,
        "attention.value_length": 256,
        "ssm.conv_kernel": 4,
        "ssm.inner_size": 4096,
        "ssm.state_size": 128,
        "ssm.group_count": 16,
    }
    attn, recr = est(meta, ctx_size=8192, parallel=2, kv_unified=True).caches
    assert (attn.layers, attn.layer_ids) == (2, [3, 7])
    assert attn.k_bytes == 2 * 512 * 8192 * 2
    assert (recr.layers, recr.cells, recr.layer_ids) == (8, 2, [0, 1, 2, 4, 5, 6])
    assert recr.k_bytes == 6 * 4 * 2 * 3 * (4096 + 2 * 16 * 128)
    assert recr.v_bytes == 6 * 4 * 2 * 128 * 4096
    every = est({**meta, "attention.recurrent_layers": [True] * 7 + [False]}, ctx_size=8192)
    assert every.caches[0].layer_ids == [7]
