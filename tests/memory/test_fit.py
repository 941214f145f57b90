"""`llmctl fit` advice: smallest changes that fit, ranked, each with its estimate; or the headroom."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from llmctl.llama.gguf import read_gguf
from llmctl.memory.estimate import ModelSource, estimate
from llmctl.memory.fit import advise
from llmctl.memory.options import LaunchOptions
from llmctl.term import format_bytes
from llmctl.testing.testmodels import write_tiny_model

GiB = 1024**3
MiB = 1024**2

# Gemma 4 26B-A4B as published: 30 layers, 5 sliding : 1 full, window 1024, 16 heads,
# sliding layers 8 KV heads of 256, full layers 2 KV heads of 512; vocabulary 262,144.
PATTERN = [il % 6 != 5 for il in range(30)]
GEMMA4_26B: dict[str, Any] = {
    "general.architecture": "gemma4",
    "block_count": 30,
    "context_length": 262144,
    "embedding_length": 2816,
    "feed_forward_length": 2112,
    "attention.head_count": 16,
    "attention.head_count_kv": [8 if swa else 2 for swa in PATTERN],
    "attention.key_length": 512,
    "attention.value_length": 512,
    "attention.key_length_swa": 256,
    "attention.value_length_swa": 256,
    "attention.sliding_window": 1024,
    "attention.sliding_window_pattern": PATTERN,
    "vocab_size": 262144,
    "weights_bytes": "12GiB",
}


def gemma4_source() -> ModelSource:
    return ModelSource.from_metadata("gemma-4-26B-A4B.gguf", GEMMA4_26B)


def test_gemma4_at_128k_with_q8_0_proposes_q4_0_or_a_smaller_context() -> None:
    opts = LaunchOptions(
        ctx_size=131072, swa_full=True, cache_type_k="q8_0", cache_type_v="q8_0", parallel=1
    )
    advice = advise(gemma4_source(), opts, budget=24 * GiB, headroom=512 * MiB, overhead=400 * MiB)
    assert not advice.fits
    assert advice.current.gpu_total_bytes > 24 * GiB
    changes = [s.change for s in advice.suggestions]
    assert {"cache_type_k": "q4_0", "cache_type_v": "q4_0"} in changes
    assert any(set(c) == {"ctx_size"} and c["ctx_size"] < 131072 for c in changes)
    assert changes[0] == {"swa_full": False}  # the cheapest fix: window-sized SWA cache
    for s in advice.suggestions:
        assert s.estimate.gpu_total_bytes <= advice.target_bytes
        assert s.estimate.kv_bytes < advice.current.kv_bytes or "n_gpu_layers" in s.change
    costs = [s.cost for s in advice.suggestions]
    assert costs == sorted(costs)
    q4 = next(s for s in advice.suggestions if s.change.get("cache_type_v") == "q4_0")
    saved = advice.current.kv_bytes - q4.estimate.kv_bytes
    assert saved == advice.current.kv_bytes * 16 // 34  # 18 instead of 34 bytes per block


def test_smaller_context_is_the_largest_that_fits() -> None:
    opts = LaunchOptions(ctx_size=131072, swa_full=True, parallel=1)
    advice = advise(gemma4_source(), opts, budget=24 * GiB, headroom=512 * MiB)
    ctx = next(s for s in advice.suggestions if set(s.change) == {"ctx_size"})
    new = ctx.change["ctx_size"]
    assert new % 256 == 0
    assert ctx.estimate.gpu_total_bytes <= advice.target_bytes
    bigger = advise(gemma4_source(), LaunchOptions(ctx_size=new + 256, swa_full=True, parallel=1),
                    budget=24 * GiB, headroom=512 * MiB)  # fmt: skip
    assert not bigger.fits


def test_when_it_fits_the_largest_context_is_reported(tmp_path: Path) -> None:
    src = ModelSource.from_gguf(read_gguf(write_tiny_model(tmp_path / "m.gguf", n_ctx_train=65536)))
    opts = LaunchOptions(ctx_size=4096, parallel=1, n_gpu_layers=-1)
    budget = 64 * MiB
    advice = advise(src, opts, budget=budget, headroom=0, overhead=0)
    assert advice.fits
    assert advice.max_ctx_size is not None and advice.max_ctx_size > 4096
    assert advice.max_estimate is not None
    assert advice.max_estimate.gpu_total_bytes <= budget
    over = advise(src, LaunchOptions(ctx_size=advice.max_ctx_size + 256, parallel=1),
                  budget=budget, headroom=0, overhead=0)  # fmt: skip
    assert not over.fits
    assert advice.to_json()["max_ctx_size"] == advice.max_ctx_size


def test_mla_models_only_get_equal_cache_types(tmp_path: Path) -> None:
    src = ModelSource.from_gguf(read_gguf(write_tiny_model(tmp_path / "m.gguf", arch="deepseek2")))
    opts = LaunchOptions(ctx_size=4096, parallel=1)
    full = advise(src, opts, budget=10**12).current.gpu_total_bytes
    advice = advise(src, opts, budget=full - 1, overhead=0)
    for s in advice.suggestions:
        if "cache_type_k" in s.change:
            assert s.change["cache_type_k"] == s.change["cache_type_v"]


def test_quantized_v_turns_flash_attention_on() -> None:
    opts = LaunchOptions(ctx_size=131072, swa_full=True, parallel=1, flash_attn="off")
    advice = advise(gemma4_source(), opts, budget=24 * GiB, headroom=512 * MiB)
    for s in advice.suggestions:
        if s.change.get("cache_type_v", "f16") not in ("f16", "f32", "bf16"):
            assert s.change.get("flash_attn") == "on"


def test_fit_moves_experts_before_layers(tmp_path: Path) -> None:
    """A MoE model over budget: n_cpu_moe (attention and KV stay on the GPU) ranks before fewer
    GPU layers, and both are ranked by the slowdown a bandwidth model expects."""
    path = write_tiny_model(
        tmp_path / "moe.gguf", arch="qwen3moe", n_layer=4, n_ff=512, extra={"expert_count": 8}
    )
    src = ModelSource.from_gguf(read_gguf(path))
    opts = LaunchOptions(ctx_size=256, parallel=1, cache_type_k="q4_0", cache_type_v="q4_0")
    full = estimate(src, opts, overhead=0)
    experts_block = sum(
        t.nbytes for t in src.tensors or [] if t.name.startswith("blk.0.") and "_exps" in t.name
    )
    advice = advise(src, opts, budget=full.gpu_total_bytes - experts_block // 2, overhead=0)
    changes = [s.change for s in advice.suggestions]
    assert {"n_cpu_moe": 1} in changes
    ngl = [c for c in changes if "n_gpu_layers" in c]
    assert ngl and changes.index({"n_cpu_moe": 1}) < changes.index(ngl[0])
    moe = advice.suggestions[changes.index({"n_cpu_moe": 1})]
    assert moe.estimate.kv_gpu_bytes == full.kv_gpu_bytes


# --- `llmctl fit` on a machine without a GPU, and `fit` without a profile ----------------------

HUGE_META = (
    "{general.architecture: llama, block_count: 80, context_length: 131072, "
    "embedding_length: 8192, attention.head_count: 64, attention.head_count_kv: 8, "
    "vocab_size: 128000, weights_bytes: 70TiB}"
)


def _no_gpu_manifest(tmp_path: Path) -> Path:
    write_tiny_model(tmp_path / "tiny.gguf")
    path = tmp_path / "profiles.yaml"
    path.write_text(
        "version: 1\nprofiles:\n"
        f"  a-profile-name-longer-than-sixteen: {{model: {tmp_path / 'tiny.gguf'}, ctx_size: 1024}}\n"
        f"  huge: {{model: {tmp_path / 'absent.gguf'}, ctx_size: 8192, metadata: {HUGE_META}}}\n"
        f"  gone: {{model: {tmp_path / 'gone.gguf'}}}\n"
    )
    return path


def _ram(path: Path) -> dict[str, Any]:
    """The CPU device as `llmctl devices --json` shows it."""
    from processes import llmctl

    res = llmctl("devices", "--json", "--manifest", str(path))
    assert res.returncode == 0, res.stderr
    cpu: dict[str, Any] = next(d for d in json.loads(res.stdout)["devices"] if d["name"] == "CPU")
    return cpu


def test_fit_without_a_gpu_judges_against_the_ram_devices_shows(tmp_path: Path) -> None:
    from processes import llmctl

    path = _no_gpu_manifest(tmp_path)
    cpu = _ram(path)
    res = llmctl("fit", "a-profile-name-longer-than-sixteen", "--manifest", str(path))
    assert res.returncode == 0, res.stderr
    first = res.stdout.splitlines()[0]
    ram = format_bytes(cpu["budget_bytes"])
    assert re.fullmatch(rf"no GPU: judged against {re.escape(ram)} of RAM, [\d.]+ GiB free", first)
    assert "no memory budget" not in res.stdout + res.stderr
    assert "fits" in res.stdout and f"(RAM {ram} - headroom 512.00 MiB)" in res.stdout
    data = json.loads(
        llmctl("fit", "huge", "--json", "--manifest", str(path)).stdout  # does not fit: exit 1
    )
    assert data["on_gpu"] is False and data["budget_source"] == "RAM"
    assert data["budget_bytes"] == cpu["budget_bytes"]
    assert data["headroom_bytes"] == cpu["headroom_bytes"]
    assert data["fits"] is False and data["gpu_total_bytes"] == 0
    assert data["total_bytes"] == data["current"]["host"]["total_bytes"] > data["target_bytes"]
    # RAM offers no GPU changes: nothing to move to the CPU
    assert not any({"n_gpu_layers", "n_cpu_moe"} & set(s["change"]) for s in data["suggestions"])
    # a budget given still wins, and is a GPU's
    res = llmctl("fit", "huge", "--vram", "24GiB", "--json", "--manifest", str(path))
    assert json.loads(res.stdout)["on_gpu"] is True


def test_fit_without_a_profile_lists_every_profile(tmp_path: Path) -> None:
    from processes import llmctl

    path = _no_gpu_manifest(tmp_path)
    res = llmctl("fit", "--manifest", str(path))
    assert res.returncode == 1, res.stderr  # one does not fit
    lines = res.stdout.splitlines()
    assert lines[0].startswith("no GPU: judged against ")
    head = next(i for i, line in enumerate(lines) if line.startswith("PROFILE"))
    rows = {line.split()[0]: line for line in lines[head + 1 :]}
    assert set(rows) == {"a-profile-name-longer-than-sixteen", "huge", "gone"}
    assert " yes " in rows["a-profile-name-longer-than-sixteen"] + " "
    assert " no " in rows["huge"] and "over" in rows["huge"]
    assert "missing" in rows["gone"]
    # columns line up: each row's FITS cell starts where the header's does
    col = lines[head].index("FITS")
    assert all(rows[n][col - 1] == " " for n in rows)
    data = json.loads(llmctl("fit", "--json", "--manifest", str(path)).stdout)
    by = {p["profile"]: p for p in data["profiles"]}
    assert by["a-profile-name-longer-than-sixteen"]["fits"] is True
    assert by["huge"]["fits"] is False and by["gone"]["fits"] is None
    assert "missing" in by["gone"]["error"]
    assert data["on_gpu"] is False and data["budget_bytes"] == _ram(path)["budget_bytes"]
    fitting = tmp_path / "ok.yaml"
    fitting.write_text(
        f"version: 1\nprofiles:\n  one: {{model: {tmp_path / 'tiny.gguf'}, ctx_size: 512}}\n"
    )
    assert llmctl("fit", "--manifest", str(fitting)).returncode == 0


def test_fit_with_a_listed_gpu_and_no_vram_takes_what_nvidia_smi_reports(tmp_path: Path) -> None:
    import os

    from processes import llmctl

    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho '0, 24576, 20000'\n")
    smi.chmod(0o755)
    write_tiny_model(tmp_path / "tiny.gguf")
    path = tmp_path / "profiles.yaml"
    path.write_text(
        "version: 1\ngpu:\n  - {name: CUDA0}\nprofiles:\n"
        f"  p: {{model: {tmp_path / 'tiny.gguf'}, ctx_size: 1024}}\n"
    )
    env = {**os.environ, "LLMCTL_NVIDIA_SMI": str(smi)}
    res = llmctl("fit", "p", "--json", "--manifest", str(path), env=env)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["on_gpu"] is True and data["budget_bytes"] == 24576 * MiB
    assert data["budget_source"] == "nvidia-smi CUDA0" and data["gpu_total_bytes"] > 0
    text = llmctl("fit", "p", "--manifest", str(path), env=env).stdout
    assert "no GPU" not in text and "(nvidia-smi CUDA0 24.00 GiB - headroom" in text
