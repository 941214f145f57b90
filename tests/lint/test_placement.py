"""Lint rules for placement that read the machine: `main-gpu`, a GPU index llama-server does not
list (`llama-server --list-devices` is answered by a stand-in here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmctl.lint.run import lint_manifest
from llmctl.testing.testmodels import write_tiny_model


def _main_gpu(
    tmp: Path, devices: list[str] | None, monkeypatch: pytest.MonkeyPatch
) -> list[tuple[str | None, int | None, str]]:
    monkeypatch.setattr("llmctl.llama.binary.list_devices", lambda binary, timeout=10.0: devices)
    model = write_tiny_model(tmp / "tiny.gguf")
    binary = tmp / "llama-server"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    manifest = tmp / "profiles.yaml"
    manifest.write_text(
        f"version: 1\nserver:\n  binary: {binary}\nprofiles:\n"
        f"  none:\n    model: {model}\n"
        f"  first:\n    model: {model}\n    main_gpu: 0\n"
        f"  second:\n    model: {model}\n    main_gpu: 1\n"
    )
    found = lint_manifest(manifest).problems
    return [(p.profile, p.line, p.message) for p in found if p.rule == "main-gpu"]


def test_a_gpu_index_past_the_listed_devices_is_a_warning_at_its_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    found = _main_gpu(tmp_path, [], monkeypatch)
    assert [(p, line) for p, line, _ in found] == [("first", 9), ("second", 12)]
    assert "lists no GPU" in found[0][2] and "b9093" in found[0][2]
    one = _main_gpu(tmp_path, ["CUDA0"], monkeypatch)
    assert [(p, line) for p, line, _ in one] == [("second", 12)]
    assert "lists 1 GPU (CUDA0)" in one[0][2]
    assert _main_gpu(tmp_path, ["CUDA0", "CUDA1"], monkeypatch) == []
    assert _main_gpu(tmp_path, None, monkeypatch) == []  # cannot ask: nothing said
