"""The estimate against the real llama-server on models with published shapes (few layers).

The compute buffer depends on the shapes (vocabulary, embedding, heads, FFN and experts), so these
models reserve what the published ones reserve. On the CPU backend every figure is host memory:
the compute buffer must be within 10 % of `sched_reserve: CPU compute buffer size`, the weights,
KV and output buffers exact to the printed precision, and the host total within 10 %.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from llmctl.llama.gguf import read_gguf
from llmctl.memory.calibration import measure_reported
from llmctl.memory.cmdline import parse_llama_args
from llmctl.memory.estimate import MiB, ModelSource, estimate, mib
from llmctl.memory.measured import Reported
from llmctl.memory.options import LaunchOptions
from llmctl.memory.profile import binary_rules
from llmctl.testing.realshapes import PROJECTORS, shape, write_projector, write_shaped_model

CASES = [
    ("gemma3-270m", "-c 4096"),
    ("gemma3-270m", "-c 16384 -np 2 -fa off -ub 256"),
    ("moe-8x", "-c 8192 -ub 1024"),
    ("moe-8x", "-c 4096 -fa off -np 1"),
    ("deepseek-v2-lite", "-c 4096"),
    ("deepseek-v2-lite", "-c 8192 -fa off -ub 128"),
    ("granite-4.0-h", "-c 4096 -np 2"),
    ("granite-4.0-h", "-c 8192 -fa off -ctk q8_0"),
]


@pytest.fixture(scope="module")
def shaped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("shaped")


def run_reported(binary: Path, model: Path, args: list[str], warmup: bool = False) -> Reported:
    """llama-server as `llmctl estimate --measure` runs it, until the model is loaded."""
    # a projector reserves its compute buffer during its warm-up only
    cmd = [str(binary), "-m", str(model), "--fit", "off", "-nr", "-ngl", "0", *args]
    reported, log = measure_reported(cmd, warmup=warmup)
    assert reported.loaded, log[-3000:]
    return reported


@pytest.mark.parametrize(("name", "args"), CASES, ids=[f"{n} {a}" for n, a in CASES])
def test_shaped_model_estimate_matches(
    name: str, args: str, shaped: Path, llama_server_bin: Path
) -> None:
    path = write_shaped_model(shaped, shape(name))
    reported = run_reported(llama_server_bin, path, args.split())
    opts = parse_llama_args(args.split()).options
    rules = binary_rules(str(llama_server_bin))
    est = estimate(ModelSource.from_gguf(read_gguf(path)), opts, gpu=False, rules=rules)
    assert est.gpu_total_bytes == 0
    compute = reported.total("compute")
    error = est.compute_bytes / (compute * MiB) - 1
    assert abs(error) <= 0.10, f"compute {mib(est.compute_bytes)} vs {compute} MiB ({error:+.1%})"
    assert abs(mib(est.host_weights_bytes) - reported.total("model")) <= 0.011
    assert abs(mib(est.host_kv_bytes) - reported.total("kv")) <= 0.011 * max(1, len(est.caches))
    assert abs(mib(est.output_bytes) - reported.total("output")) <= 0.011
    host = sum(reported.total(p) for p in ("model", "kv", "output", "compute")) * MiB
    assert abs(est.host_total_bytes / host - 1) <= 0.10


def test_projector_is_counted_as_llama_server_allocates_it(
    shaped: Path, llama_server_bin: Path
) -> None:
    """Gemma-3-4B with its SigLIP projector: weights and the projector's compute buffer (reserved
    during its warm-up) match what llama-server reports."""
    proj = PROJECTORS[0]
    text = write_shaped_model(shaped, shape(proj.text_model))
    path = write_projector(shaped, proj)
    reported = run_reported(
        llama_server_bin, text, ["-c", "4096", "--mmproj", str(path)], warmup=True
    )
    src = ModelSource.from_gguf(read_gguf(text))
    est = estimate(
        src, LaunchOptions(ctx_size=4096), gpu=False, mmproj=ModelSource.from_gguf(read_gguf(path))
    )
    assert est.mmproj is not None
    assert abs(mib(est.mmproj.weights_bytes) - reported.total("mmproj_model")) <= 0.011
    compute = reported.total("mmproj_compute") * MiB
    assert abs(est.mmproj.compute_bytes / compute - 1) <= 0.10
