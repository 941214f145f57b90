"""Devices in the manifest, their lint rules, and nvidia-smi missing, slow or printing garbage."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from llmctl.lint.run import lint_manifest
from llmctl.llama.binary import list_devices
from llmctl.manifest.validate import load_manifest
from llmctl.supervisor.devices import detect, meminfo, nvidia_smi
from llmctl.testing.testmodels import write_tiny_model

MiB = 1024**2


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "profiles.yaml"
    path.write_text(text)
    return path


def rules(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for p in lint_manifest(path).problems:
        out.setdefault(p.rule, []).append(f"{p.line}: {p.message}")
    return out


def fake_smi(tmp_path: Path, body: str) -> str:
    path = tmp_path / "nvidia-smi"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return str(path)


def test_old_mapping_is_one_device_and_cpu_is_always_there(tmp_path: Path) -> None:
    m = load_manifest(
        write(tmp_path, "version: 1\ngpu: {vram: 8GiB}\nprofiles:\n  p: {model: m.gguf}\n")
    )
    names = [d.name for d in m.device_configs()]
    assert names == ["GPU", "CPU"] and not m.devices_listed
    assert m.gpu_budget.vram == 8 * 1024**3
    bare = load_manifest(write(tmp_path, "version: 1\nprofiles:\n  p: {model: m.gguf}\n"))
    assert [d.name for d in bare.device_configs()] == ["CPU"]


def test_device_list_and_profile_keys(tmp_path: Path) -> None:
    m = load_manifest(
        write(
            tmp_path,
            "version: 1\nserver: {ports: 9100-9102}\ngpu:\n  - {name: CUDA0, vram: 24GiB}\n"
            "  - {name: CPU, vram: 32GiB, headroom: 1GiB}\nprofiles:\n"
            "  p: {model: m.gguf, device: CUDA0, pinned: true}\n  q: {model: m.gguf, group: big}\n"
            "  r: {model: m.gguf, port: 9101}\n",
        )
    )
    assert m.devices_listed and [d.name for d in m.device_configs()] == ["CUDA0", "CPU"]
    assert m.profiles["p"].pinned and m.profiles["q"].group == "big"
    # ports in manifest order, skipping one a profile took for itself
    assert [m.profile_port(n) for n in ("p", "q", "r")] == [9100, 9102, 9101]


def test_lint_device_rules(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "version: 1\nserver: {ports: 8100-8100}\ngpu:\n  - {name: CUDA0, vram: 8GiB}\n"
        "  - {name: CUDA0, vram: 8GiB}\nprofiles:\n"
        "  p: {model: m.gguf, device: CUDA3}\n  q: {model: m.gguf}\n",
    )
    found = rules(path)
    device = "\n".join(found["device"])
    assert "listed twice" in device and "asks for device CUDA3" in device
    assert "8100-8100 holds 1 ports for 2 profiles" in found["port-range"][0]


def test_lint_bad_port_range_and_router_inside(tmp_path: Path) -> None:
    bad = write(
        tmp_path, "version: 1\nserver: {ports: 9000-8000}\nprofiles:\n  p: {model: m.gguf}\n"
    )
    assert any("low to high" in m for m in rules(bad)["schema"])
    inside = write(
        tmp_path,
        "version: 1\nserver: {ports: 8000-8100}\nserve: {port: 8050}\nprofiles:\n  p: {model: m.gguf}\n",
    )
    assert any("inside server.ports" in m for m in rules(inside)["port-conflict"])


def test_lint_names_a_device_llama_server_does_not_list(
    tmp_path: Path, llama_server_bin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMCTL_LLAMA_SERVER", str(llama_server_bin))
    assert list_devices(str(llama_server_bin)) == []  # a CPU build lists none
    path = write(
        tmp_path,
        "version: 1\ngpu:\n  - {name: Vulkan0, vram: 8GiB}\nprofiles:\n  p: {model: m.gguf}\n",
    )
    device = rules(path)["device"]
    assert any("does not list device Vulkan0" in m for m in device)


def test_lint_pinned_profiles_that_cannot_share_a_device(tmp_path: Path) -> None:
    model = write_tiny_model(tmp_path / "m.gguf")
    path = write(
        tmp_path,
        f"version: 1\ngpu:\n  - {{name: CPU, vram: 40MiB, headroom: 0}}\nprofiles:\n"
        f"  a: {{model: {model}, ctx_size: 8192, device: CPU, pinned: true}}\n"
        f"  b: {{model: {model}, ctx_size: 8192, device: CPU, pinned: true}}\n",
    )
    (problem,) = rules(path)["pinned-overcommit"]
    assert "pinned profiles on CPU need" in problem and "a (" in problem and "b (" in problem


def test_cpu_device_from_proc_meminfo() -> None:
    total, avail = meminfo()
    assert total is not None and avail is not None and 0 < avail <= total
    report = detect(load_manifest_text_devices())
    cpu = report.devices[-1]
    assert cpu.name == "CPU" and cpu.budget == total and cpu.source == "/proc/meminfo"


def load_manifest_text_devices() -> list:  # type: ignore[type-arg]
    from llmctl.manifest.model import DeviceConfig

    return [DeviceConfig(name="CUDA0", vram=None), DeviceConfig(name="CPU", vram=None)]


def test_nvidia_smi_figures_and_configured_values_win(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmctl.manifest.model import DeviceConfig

    exe = fake_smi(tmp_path, "echo '0, 24576, 20000'\necho '1, 8192, 8000'")
    monkeypatch.setenv("LLMCTL_NVIDIA_SMI", exe)
    found, warning = nvidia_smi()
    assert warning is None and found["CUDA1"] == (8192 * MiB, 8000 * MiB)
    report = detect(
        [DeviceConfig(name="CUDA0", vram=None), DeviceConfig(name="CUDA1", vram=4 * 1024**3)]
    )
    cuda0, cuda1 = report.devices[:2]
    assert (cuda0.budget, cuda0.source, cuda0.free) == (24576 * MiB, "nvidia-smi", 20000 * MiB)
    assert (cuda1.budget, cuda1.source) == (4 * 1024**3, "manifest")


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ("echo 'NVIDIA-SMI has failed because it could not communicate'\nexit 9", "code 9"),
        ("echo '0, lots, of memory'", "cannot read nvidia-smi's output"),
        ("exec sleep 30", "no answer within"),
    ],
)
def test_nvidia_smi_faults_fall_back_to_the_manifest_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str, says: str
) -> None:
    from llmctl.manifest.model import DeviceConfig

    monkeypatch.setenv("LLMCTL_NVIDIA_SMI", fake_smi(tmp_path, body))
    t0 = time.monotonic()
    report = detect([DeviceConfig(name="CUDA0", vram=8 * 1024**3)], smi_timeout=0.5)
    assert time.monotonic() - t0 < 20  # bounded by the timeout, never a hang
    assert report.devices[0].budget == 8 * 1024**3
    assert any(says in w for w in report.warnings)


def test_nvidia_smi_missing_is_silent_and_the_cli_warns_on_stderr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMCTL_NVIDIA_SMI", str(tmp_path / "absent"))
    path = write(tmp_path, "version: 1\ngpu:\n  - {name: CUDA0}\nprofiles:\n  p: {model: m.gguf}\n")
    out = subprocess.run(
        [sys.executable, "-m", "llmctl", "devices", "--manifest", str(path), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["devices"][0]["budget_bytes"] is None
    assert any("cannot run nvidia-smi" in w for w in data["warnings"])
    assert any("no budget" in w for w in data["warnings"])


def test_gpu_release_asks_the_same_nvidia_smi(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wait for GPU memory after a stop finds nvidia-smi as the device detection does
    (LLMCTL_NVIDIA_SMI first), not by a lookup of its own."""
    from llmctl.supervisor.gpu import gpu_pids

    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 123\necho 456\n")
    fake.chmod(0o755)
    monkeypatch.setenv("LLMCTL_NVIDIA_SMI", str(fake))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert gpu_pids() == {123, 456}
    monkeypatch.delenv("LLMCTL_NVIDIA_SMI")
    assert gpu_pids() is None


def test_list_devices_is_read_once_per_binary(tmp_path: Path) -> None:
    """`--list-devices` is asked once and kept per binary (path, mtime, size) and boot: commands
    that check for a GPU do not start llama-server every time; a replaced binary is asked again."""
    calls = tmp_path / "calls"
    fake = tmp_path / "llama-server"
    script = (
        "#!/bin/sh\necho x >> {calls}\necho 'Available devices:'\n"
        "echo '  Vulkan0: AMD Radeon (16368 MiB, 16000 MiB free)'\n"
    )
    fake.write_text(script.format(calls=calls))
    fake.chmod(0o755)
    assert list_devices(str(fake)) == ["Vulkan0"]
    assert list_devices(str(fake)) == ["Vulkan0"]
    assert calls.read_text().count("x") == 1
    fake.write_text(script.format(calls=calls) + "echo '  Vulkan1: second (8 MiB, 8 MiB free)'\n")
    assert list_devices(str(fake)) == ["Vulkan0", "Vulkan1"]
    assert calls.read_text().count("x") == 2
    # output that is not the list is not kept, and says nothing
    other = tmp_path / "other"
    other.write_text(f"#!/bin/sh\necho x >> {calls}\necho usage\n")
    other.chmod(0o755)
    assert list_devices(str(other)) is None and list_devices(str(other)) is None
    assert calls.read_text().count("x") == 4
    assert list_devices(str(tmp_path / "missing")) is None


def test_gpu_memory_a_process_holds_named_as_llama_cpp_names_devices(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nvidia-smi's per-process figures (FAKE nvidia-smi): GPU index by UUID, MiB to bytes, the
    devices a process sees renumbered by CUDA_VISIBLE_DEVICES as llama.cpp numbers them."""
    from llmctl.supervisor.gpu import used_by

    body = (
        'case "$1" in\n'
        "  --query-gpu=index,uuid) echo '0, GPU-aaa'; echo '1, GPU-bbb'; echo '2, GPU-ccc';;\n"
        "  --query-compute-apps=pid,gpu_uuid,used_memory)\n"
        "    echo '77, GPU-bbb, 1500'; echo '77, GPU-ccc, 700'; echo '88, GPU-aaa, 9000';;\n"
        "esac"
    )
    monkeypatch.setenv("LLMCTL_NVIDIA_SMI", fake_smi(tmp_path, body))
    assert used_by(77) == {"CUDA1": 1500 * MiB, "CUDA2": 700 * MiB}
    assert used_by(77, "1,2") == {"CUDA0": 1500 * MiB, "CUDA1": 700 * MiB}
    assert used_by(77, "2") == {"CUDA0": 700 * MiB}
    assert used_by(77, "GPU-bbb") is None  # UUIDs: not mapped here
    assert used_by(99) is None  # not listed: nothing known


@pytest.mark.parametrize(
    "body",
    ["exit 3", "echo 'not, csv, at all, really'", "exec sleep 30"],
    ids=["fails", "garbage", "hangs"],
)
def test_gpu_memory_of_a_process_unknown_when_nvidia_smi_misbehaves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str
) -> None:
    from llmctl.supervisor import gpu

    monkeypatch.setenv("LLMCTL_NVIDIA_SMI", fake_smi(tmp_path, body))
    if body.startswith("exec sleep"):
        monkeypatch.setattr(gpu.subprocess, "run", _timeout_run(gpu.subprocess.run))
    assert gpu.used_by(77) is None


def _timeout_run(run: Any) -> Any:
    def short(*args: Any, **kwargs: Any) -> Any:
        return run(*args, **{**kwargs, "timeout": 0.2})

    return short
