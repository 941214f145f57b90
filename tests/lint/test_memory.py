"""Lint errors for placement and companion models: --n-cpu-moe, -ot, draft vocabulary, mmproj;
and the estimate's handling of them (experts moved, projector and draft counted)."""

from __future__ import annotations

from pathlib import Path

from llmctl.lint.memory import memory_problems
from llmctl.llama.gguf import ggml_type, read_gguf
from llmctl.llama.gguf_writer import Tensor, string, u32, write_gguf
from llmctl.llama.vocab import parse_overrides
from llmctl.manifest.validate import load_manifest
from llmctl.memory.estimate import ModelSource, estimate
from llmctl.memory.options import LaunchOptions
from llmctl.testing.testmodels import write_tiny_model


def _moe(tmp: Path) -> Path:
    return write_tiny_model(tmp / "moe.gguf", arch="qwen3moe", n_layer=3, extra={"expert_count": 4})


def _mmproj(tmp: Path, projection_dim: int) -> Path:
    f32 = ggml_type("f32")
    meta = [
        ("general.architecture", string("clip")),
        ("clip.projector_type", string("gemma3")),
        ("clip.has_vision_encoder", u32(1)),
        ("clip.vision.image_size", u32(224)),
        ("clip.vision.patch_size", u32(14)),
        ("clip.vision.embedding_length", u32(64)),
        ("clip.vision.feed_forward_length", u32(128)),
        ("clip.vision.head_count", u32(2)),
        ("clip.vision.projection_dim", u32(projection_dim)),
    ]
    tensors = [Tensor("v.patch_embd.weight", (14, 14, 3, 64), f32)]
    return write_gguf(tmp / f"mmproj-{projection_dim}.gguf", meta, tensors)


def _rules(tmp: Path, fields: str, model: Path) -> list[tuple[str, str | None]]:
    path = tmp / "profiles.yaml"
    path.write_text(f"version: 1\nprofiles:\n  p:\n    model: {model}\n{fields}")
    found = memory_problems(load_manifest(path))
    return [(p.rule, p.line and path.read_text().splitlines()[p.line - 1].split(":")[0].strip())
            for p in found]  # fmt: skip


def test_n_cpu_moe_beyond_layers_and_on_dense_models(tmp_path: Path) -> None:
    moe = _moe(tmp_path)
    dense = write_tiny_model(tmp_path / "dense.gguf")
    assert _rules(tmp_path, "    n_cpu_moe: 3\n", moe) == []
    assert _rules(tmp_path, "    n_cpu_moe: 4\n", moe) == [("n-cpu-moe-range", "n_cpu_moe")]
    assert _rules(tmp_path, "    n_cpu_moe: 1\n", dense) == [("n-cpu-moe-dense", "n_cpu_moe")]


def test_override_patterns_that_match_nothing_everything_or_are_not_regexes(
    tmp_path: Path,
) -> None:
    moe = _moe(tmp_path)
    ok = "    override_tensor: 'ffn_.*_exps=CPU'\n"
    assert _rules(tmp_path, ok, moe) == []
    none = "    override_tensor: 'attn_qkv=CPU'\n"
    assert _rules(tmp_path, none, moe) == [("override-tensor-none", "override_tensor")]
    every = "    override_tensor: '.*=CPU'\n"
    assert _rules(tmp_path, every, moe) == [("override-tensor-all", "override_tensor")]
    bad = "    override_tensor: 'blk.(=CPU'\n"
    assert _rules(tmp_path, bad, moe) == [("override-tensor", "override_tensor")]
    no_eq = "    override_tensor: 'exps'\n"
    assert _rules(tmp_path, no_eq, moe) == [("override-tensor", "override_tensor")]


def test_draft_with_another_vocabulary_and_mmproj_for_another_model(tmp_path: Path) -> None:
    main = write_tiny_model(tmp_path / "main.gguf")  # 320 tokens, n_embd 256
    same = write_tiny_model(tmp_path / "same.gguf", n_layer=1, n_vocab_extra=100)
    other = write_tiny_model(tmp_path / "other.gguf", n_layer=1, n_vocab_extra=500)
    assert _rules(tmp_path, f"    model_draft: {same}\n", main) == []
    assert _rules(tmp_path, f"    model_draft: {other}\n", main) == [("draft-vocab", "model_draft")]
    good, wrong = _mmproj(tmp_path, 256), _mmproj(tmp_path, 1024)
    assert _rules(tmp_path, f"    mmproj: {good}\n", main) == []
    assert _rules(tmp_path, f"    mmproj: {wrong}\n", main) == [("mmproj-mismatch", "mmproj")]


def test_experts_move_to_the_host_as_llama_cpp_moves_them(tmp_path: Path) -> None:
    src = ModelSource.from_gguf(read_gguf(_moe(tmp_path)))
    experts = [t for t in src.tensors or [] if "_exps" in t.name]
    per_block = sum(t.nbytes for t in experts if t.name.startswith("blk.0."))
    base = estimate(src, LaunchOptions(ctx_size=1024))
    one = estimate(src, LaunchOptions(ctx_size=1024, n_cpu_moe=1))
    assert one.weights.overridden_cpu_bytes == per_block
    assert one.host_weights_bytes - base.host_weights_bytes == per_block
    assert base.weights.gpu_bytes - one.weights.gpu_bytes >= per_block
    every = estimate(src, LaunchOptions(ctx_size=1024, override_tensor=r"\.ffn_.*_exps=CPU"))
    assert every.weights.overridden_cpu_bytes == sum(t.nbytes for t in experts)
    assert every.weights.overridden_tensors == len(experts)
    # the KV cache stays on the GPU: only the experts moved
    assert every.kv_gpu_bytes == base.kv_gpu_bytes
    assert parse_overrides("a=CPU,b=CUDA0") == [("a", "CPU"), ("b", "CUDA0")]


def test_mmproj_and_draft_are_counted_on_their_device(tmp_path: Path) -> None:
    main = ModelSource.from_gguf(read_gguf(write_tiny_model(tmp_path / "m.gguf")))
    draft = ModelSource.from_gguf(read_gguf(write_tiny_model(tmp_path / "d.gguf", n_layer=1)))
    proj = ModelSource.from_gguf(read_gguf(_mmproj(tmp_path, 256)))
    opts = LaunchOptions(ctx_size=2048)
    alone = estimate(main, opts)
    both = estimate(main, opts, mmproj=proj, draft=draft)
    assert both.mmproj is not None and both.draft is not None
    assert both.mmproj.weights_bytes == 14 * 14 * 3 * 64 * 4
    extra = both.mmproj.weights_bytes + both.mmproj.compute_bytes + both.draft.gpu_total_bytes
    assert both.gpu_total_bytes - alone.gpu_total_bytes == extra
    # with a speculative type enabled, the main context reserves outputs for drafted tokens
    drafting = estimate(main, opts, draft=draft, n_draft=64)
    assert drafting.compute is not None and both.compute is not None
    assert drafting.compute.outputs == both.compute.outputs * 65
    cpu = estimate(main, opts, mmproj=proj, draft=draft, gpu=False)
    assert cpu.gpu_total_bytes == 0
    assert cpu.host_total_bytes > estimate(main, opts, gpu=False).host_total_bytes
