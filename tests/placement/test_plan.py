"""Per-device plans for 2 and 4 GPUs (no GPU here): the split, and the launch flags that make it.

Checked through `llmctl command`, `llmctl estimate --json` and the plan itself; the layer rule is
llama.cpp's (cumulative --tensor-split fractions, output layer last, KV with its layer).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmctl.manifest.validate import load_manifest
from llmctl.memory.estimate import estimate, options_from_profile, source_for_profile
from llmctl.placement.placer import placement_request
from llmctl.placement.plan import GpuTarget, plan_devices
from llmctl.supervisor.devices import detect
from llmctl.testing.testmodels import write_tiny_model
from processes import llmctl

N_LAYER = 7  # + the output layer: 8 units to split


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return write_tiny_model(tmp_path / "m.gguf", n_layer=N_LAYER)


def manifest(tmp_path: Path, body: str, gpus: int = 4) -> Path:
    devices = "\n".join(f"  - {{name: CUDA{i}, vram: 8GiB}}" for i in range(gpus))
    path = tmp_path / "profiles.yaml"
    path.write_text(f"version: 1\ngpu:\n{devices}\nprofiles:\n{body}")
    return path


def argv_of(path: Path, profile: str) -> list[str]:
    out = llmctl("command", profile, "--manifest", str(path), "--json")
    assert out.returncode == 0, out.stderr
    return list(json.loads(out.stdout)["argv"])


def flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def test_four_gpus_layer_split_even(tmp_path: Path, model: Path) -> None:
    path = manifest(
        tmp_path, f"  p:\n    model: {model}\n    device: [CUDA0, CUDA1, CUDA2, CUDA3]\n"
    )
    argv = argv_of(path, "p")
    assert flag(argv, "--device") == "CUDA0,CUDA1,CUDA2,CUDA3"
    assert flag(argv, "-ngl") == str(N_LAYER + 1)
    assert flag(argv, "-sm") == "layer"
    assert flag(argv, "-ts") == "7.5,7.5,7.5,7.5"  # usable GiB of each: equal shares
    assert "-mg" not in argv
    assert argv.count("-ngl") == 1  # the profile's own -ngl was replaced
    m = load_manifest(path)
    plan = placement_request(m, "p", detect(m.device_configs()).devices).plans[0]
    layers = {s.device: (s.layers, s.output) for s in plan.shares}
    assert layers == {
        "CUDA0": (2, False),
        "CUDA1": (2, False),
        "CUDA2": (2, False),
        "CUDA3": (1, True),
        "CPU": (0, False),
    }
    # every GPU holds its layers' KV, a compute buffer and the runtime overhead
    kv = [s.kv_bytes for s in plan.shares[:4]]
    assert kv[0] == kv[1] == kv[2] == 2 * kv[3] > 0
    assert all(s.overhead_bytes == 400 * 1024**2 for s in plan.shares[:4])


def test_two_gpus_tensor_split_three_to_one(tmp_path: Path, model: Path) -> None:
    body = f"  p:\n    model: {model}\n    device: [CUDA0, CUDA1]\n    tensor_split: '3,1'\n"
    path = manifest(tmp_path, body, gpus=2)
    argv = argv_of(path, "p")
    assert flag(argv, "-ts") == "3,1" and flag(argv, "--device") == "CUDA0,CUDA1"
    m = load_manifest(path)
    plan = placement_request(m, "p", detect(m.device_configs()).devices).plans[0]
    assert [(s.layers, s.output) for s in plan.shares[:2]] == [(6, False), (1, True)]
    est = placement_request(m, "p", detect(m.device_configs()).devices).estimate
    assert est is not None
    # nothing lost or counted twice: the shares add up to the whole model
    assert sum(s.weights_bytes for s in plan.shares) == est.weights.bytes
    assert sum(s.kv_bytes for s in plan.shares) == est.kv_bytes


def test_partial_offload_keeps_first_layers_and_their_kv_on_the_cpu(
    tmp_path: Path, model: Path
) -> None:
    body = f"  p:\n    model: {model}\n    device: [CUDA0, CUDA1]\n    n_gpu_layers: 4\n"
    path = manifest(tmp_path, body, gpus=2)
    argv = argv_of(path, "p")
    assert flag(argv, "-ngl") == "4"
    m = load_manifest(path)
    plan = placement_request(m, "p", detect(m.device_configs()).devices).plans[0]
    cpu = plan.shares[-1]
    assert cpu.device == "CPU" and cpu.layers == 4 and cpu.kv_bytes > 0 and cpu.compute_bytes > 0
    assert sum(s.layers for s in plan.shares[:2]) == 3
    assert plan.shares[1].output


def test_row_split_keeps_kv_on_the_main_gpu(tmp_path: Path, model: Path) -> None:
    body = (
        f"  p:\n    model: {model}\n    device: [CUDA0, CUDA1]\n    split_mode: row\n"
        "    main_gpu: 1\n"
    )
    path = manifest(tmp_path, body, gpus=2)
    argv = argv_of(path, "p")
    assert flag(argv, "-sm") == "row" and flag(argv, "-mg") == "1"
    m = load_manifest(path)
    plan = placement_request(m, "p", detect(m.device_configs()).devices).plans[0]
    g0, g1 = plan.shares[:2]
    assert g0.kv_bytes == 0 and g1.kv_bytes > 0
    assert g0.weights_bytes > 0 and g1.weights_bytes > 0


def test_no_kv_offload_puts_every_cache_on_the_host(tmp_path: Path, model: Path) -> None:
    m_path = manifest(tmp_path, f"  p:\n    model: {model}\n    no_kv_offload: true\n", gpus=1)
    m = load_manifest(m_path)
    profile = m.profiles["p"]
    source = source_for_profile(profile)
    assert source is not None
    est = estimate(source, options_from_profile(profile))
    plan = plan_devices(est, source, [GpuTarget("CUDA0")])
    assert plan.shares[0].kv_bytes == 0 and plan.shares[-1].kv_bytes == est.kv_bytes


def test_pinned_device_and_cpu_only(tmp_path: Path, model: Path) -> None:
    body = f"  one:\n    model: {model}\n    device: CUDA1\n  host:\n    model: {model}\n    device: CPU\n"
    path = manifest(tmp_path, body, gpus=2)
    one = argv_of(path, "one")
    assert flag(one, "--device") == "CUDA1" and "-ts" not in one
    host = argv_of(path, "host")
    assert flag(host, "--device") == "none" and flag(host, "-ngl") == "0"


def test_auto_offers_each_gpu_then_the_split(tmp_path: Path, model: Path) -> None:
    path = manifest(tmp_path, f"  p:\n    model: {model}\n", gpus=2)
    m = load_manifest(path)
    placed = placement_request(m, "p", detect(m.device_configs()).devices)
    assert [p.label for p in placed.plans] == ["CUDA0", "CUDA1", "CUDA0+CUDA1"]


def test_estimate_json_shows_the_plan(tmp_path: Path, model: Path) -> None:
    body = f"  p:\n    model: {model}\n    device: [CUDA0, CUDA1]\n"
    path = manifest(tmp_path, body, gpus=2)
    out = llmctl("estimate", "p", "--manifest", str(path), "--json")
    assert out.returncode == 0, out.stderr
    (item,) = json.loads(out.stdout)
    (plan,) = item["plans"]
    assert plan["devices"] == ["CUDA0", "CUDA1"]
    assert [d["device"] for d in plan["per_device"]] == ["CUDA0", "CUDA1", "CPU"]
    assert plan["launch_args"][:2] == ["--device", "CUDA0,CUDA1"]
    text = llmctl("estimate", "p", "--manifest", str(path))
    assert "plan on CUDA0+CUDA1" in text.stdout and "--device CUDA0,CUDA1" in text.stdout


def test_old_single_gpu_mapping_passes_no_device_flags(tmp_path: Path, model: Path) -> None:
    path = tmp_path / "profiles.yaml"
    path.write_text(f"version: 1\ngpu: {{vram: 8GiB}}\nprofiles:\n  p:\n    model: {model}\n")
    argv = argv_of(path, "p")
    assert "--device" not in argv and flag(argv, "-ngl") == "-1"


def test_experts_kept_on_the_cpu_are_on_the_host_side_of_the_plan(tmp_path: Path) -> None:
    """--n-cpu-moe (and -ot ...=CPU) keep those expert tensors in host memory whatever device
    their layer is on: the plan's CPU share holds them, and the GPUs' weights add up to the
    estimate's GPU weights."""
    moe = write_tiny_model(tmp_path / "moe.gguf", arch="qwen3moe", n_layer=4)
    body = f"  p:\n    model: {moe}\n    device: [CUDA0, CUDA1]\n    n_cpu_moe: 2\n"
    m = load_manifest(manifest(tmp_path, body, gpus=2))
    plan = placement_request(m, "p", detect(m.device_configs()).devices).plans[0]
    est = estimate(source_for_profile(m.profiles["p"]), options_from_profile(m.profiles["p"]))
    assert est.weights.overridden_cpu_bytes > 0
    gpus, cpu = plan.shares[:2], plan.shares[-1]
    assert cpu.device == "CPU" and cpu.weights_bytes == est.weights.cpu_bytes
    assert sum(s.weights_bytes for s in gpus) == est.weights.gpu_bytes
    # without the option the same layers hold their experts on the GPUs
    plain = load_manifest(manifest(tmp_path, body.replace("    n_cpu_moe: 2\n", ""), gpus=2))
    whole = placement_request(plain, "p", detect(plain.device_configs()).devices).plans[0]
    moved = sum(s.weights_bytes for s in whole.shares[:2]) - sum(s.weights_bytes for s in gpus)
    assert (
        moved > 0
        and cpu.weights_bytes - whole.shares[-1].weights_bytes == est.weights.overridden_cpu_bytes
    )
