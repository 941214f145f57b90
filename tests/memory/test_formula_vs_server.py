"""The estimate against the real llama-server at -lv 4, on tiny generated models.

Every cache llama-server prints (`llama_kv_cache: size = ...`, `llama_memory_recurrent: size = ...`)
must match the estimate to the printed precision (0.01 MiB), with the same cells, layers and
streams; the model buffer must match the weights; the compute buffer must stay within the error the
docstring of `llmctl.memory.compute.compute_estimate` states.
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from llmctl.llama.gguf import read_gguf
from llmctl.memory.calibration import measure_reported
from llmctl.memory.estimate import ModelSource, estimate, mib
from llmctl.memory.measured import Reported
from llmctl.memory.options import LaunchOptions
from llmctl.memory.profile import binary_rules
from llmctl.testing.testmodels import write_tiny_model

MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("llama", {}),
    "llama-tied": ("llama", {"tied": True, "n_layer": 3}),
    "gemma2": ("gemma2", {}),
    "gemma3": ("gemma3", {}),
    "gemma3-pattern": ("gemma3", {"n_layer": 5, "extra": {"sliding_window_pattern": 3}}),
    "deepseek2-mla": ("deepseek2", {}),
    "lfm2-hybrid": ("lfm2", {}),
    "lfm2-hybrid-swa": ("lfm2", {"extra": {"sliding_window": 128}}),
    "cohere2": ("cohere2", {}),
    "gemma4": ("gemma4", {}),
    "gemma4-shared-kv": ("gemma4", {"extra": {"shared_kv_layers": 2}}),
    "mamba": ("mamba", {}),
    "granite-hybrid": ("granitehybrid", {}),
    "llama-q8-weights": ("llama", {"weight_type": "q8_0", "n_layer": 3}),
    "llama-q4-weights": ("llama", {"weight_type": "q4_0", "n_layer": 2}),
}


def to_args(o: LaunchOptions) -> list[str]:
    args = [
        "-c", str(o.ctx_size), "-np", str(o.parallel), "-ctk", o.cache_type_k,
        "-ctv", o.cache_type_v, "-fa", o.flash_attn, "-b", str(o.batch_size),
        "-ub", str(o.ubatch_size), "-ngl", str(o.n_gpu_layers),
    ]  # fmt: skip
    if o.kv_unified is True:
        args.append("-kvu")
    elif o.kv_unified is False:
        args.append("-no-kvu")
    if o.swa_full:
        args.append("--swa-full")
    if o.no_kv_offload:
        args.append("-nkvo")
    return args


def run_server(binary: Path, model: Path, args: list[str]) -> tuple[Reported, str]:
    """llama-server as `llmctl estimate --measure` runs it, until the model is loaded (or failed)."""
    # -nr: no CPU weight repacking, whose extra host buffer is not VRAM and not estimated
    return measure_reported([str(binary), "-m", str(model), "--fit", "off", "-nr", *args])


def combinations(name: str, arch: str, n: int) -> list[LaunchOptions]:
    """A fixed, seeded sample of the flag space; constraints llama-server enforces are respected."""
    rng = random.Random(f"{name}-matrix")
    types = ["f16", "q8_0", "q4_0", "f32", "bf16", "q5_1", "iq4_nl"]
    out = [
        LaunchOptions(ctx_size=4096, parallel=-1),
        LaunchOptions(ctx_size=1000, parallel=3, kv_unified=False, flash_attn="off"),
        LaunchOptions(ctx_size=0, parallel=2, kv_unified=True, cache_type_k="q8_0"),
        LaunchOptions(ctx_size=2048, parallel=1, swa_full=True, ubatch_size=64),
    ]
    while len(out) < n:
        k = rng.choice(types)
        v = k if arch == "deepseek2" else rng.choice(types)
        fa = rng.choice(["on", "off", "auto"])
        if fa == "off" and v not in ("f16", "f32", "bf16"):
            fa = "on"
        out.append(
            LaunchOptions(
                ctx_size=rng.choice([256, 700, 1000, 1536, 2048, 3000, 0]),
                parallel=rng.choice([1, 2, 3, 4, -1]),
                kv_unified=rng.choice([None, True, False]),
                swa_full=rng.random() < 0.3,
                cache_type_k=k,
                cache_type_v=v,
                flash_attn=fa,  # type: ignore[arg-type]
                batch_size=rng.choice([2048, 512, 300]),
                ubatch_size=rng.choice([512, 64, 128, 200]),
            )
        )
    if arch == "deepseek2":
        out = [replace(o, cache_type_v=o.cache_type_k) for o in out]
    # a CPU-only build: nothing is offloaded, every weight is on the CPU
    return [replace(o, n_gpu_layers=0) for o in out]


CASES = [
    pytest.param(name, i, id=f"{name}-{i}")
    for name, (arch, _) in MODELS.items()
    for i in range(len(combinations(name, arch, 10)))
]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    return {
        name: write_tiny_model(folder / f"{name}.gguf", arch=arch, **overrides)
        for name, (arch, overrides) in MODELS.items()
    }


COMPUTE_ERRORS: list[float] = []


@pytest.mark.parametrize(("name", "index"), CASES)
def test_estimate_matches_llama_server(
    name: str, index: int, models: dict[str, Path], llama_server_bin: Path
) -> None:
    arch = MODELS[name][0]
    opts = combinations(name, arch, 10)[index]
    path = models[name]
    printed, text = run_server(llama_server_bin, path, to_args(opts))
    assert printed.loaded, text[-3000:]
    rules = binary_rules(str(llama_server_bin))
    est = estimate(ModelSource.from_gguf(read_gguf(path)), opts, rules=rules)
    assert est.exact
    assert (est.sizes.n_ctx, est.sizes.n_ctx_seq) == (printed.n_ctx, printed.n_ctx_seq), text[
        -3000:
    ]
    assert len(est.caches) == len(printed.caches), (est.to_json(), printed)
    for ours, theirs in zip(est.caches, printed.caches, strict=True):
        where = f"{name} {opts} {ours.kind}"
        assert ours.cells == theirs.cells, where
        assert ours.layers == theirs.layers, where
        assert ours.n_seq == theirs.n_seq, where
        if ours.kind != "recurrent":
            assert ours.n_stream == theirs.n_stream, where
            assert (ours.k_type, ours.v_type) == (theirs.k_type, theirs.v_type), where
        assert abs(mib(ours.k_bytes) - theirs.k_mib) <= 0.011, where
        assert abs(mib(ours.v_bytes) - theirs.v_mib) <= 0.011, where
        assert abs(mib(ours.bytes) - theirs.mib) <= 0.011, where
    # CPU only: every weight is on the CPU, a tied output shares the embedding
    model_mib = printed.total("model")
    assert abs(mib(est.weights.bytes) - model_mib) <= 0.011, (name, model_mib)
    error = est.compute_bytes / (printed.total("compute") * 1024 * 1024) - 1
    COMPUTE_ERRORS.append(error)
    assert abs(error) <= 0.5, f"compute estimate off by {error:+.0%} ({name} {opts})"


def test_unsupported_combinations_fail_as_llama_server_does(
    models: dict[str, Path], llama_server_bin: Path
) -> None:
    """A quantized V cache without flash attention is refused by llama-server (lint flags it too)."""
    opts = LaunchOptions(ctx_size=512, parallel=1, cache_type_v="q8_0", flash_attn="off")
    printed, text = run_server(llama_server_bin, models["llama"], to_args(opts))
    assert not printed.loaded
    assert "quantized V cache" in text
