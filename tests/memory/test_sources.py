"""Every figure says where it comes from (measured / engine plan / formula): lint's budget rules,
`llmctl fit`, `llmctl devices` and the dashboard's profile cards; a formula more than 10 % off
the engine's plan is a warning naming the term and the build.

A FAKE server (tests/fakes/fake_engine_server.py) states a plan far from the formula's figures
for the tiny model (CUDA0: weights 1000, KV 200, compute 100 MiB), as a CUDA build might.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from llmctl.testing.testmodels import write_tiny_model
from processes import llmctl

FAKE = Path(__file__).resolve().parents[1] / "fakes" / "fake_engine_server.py"
MiB = 1024**2


@pytest.fixture
def manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    model = write_tiny_model(tmp_path / "tiny.gguf")
    fake = tmp_path / "llama-server"
    fake.write_text(f'#!/bin/sh\nFAKE_ENGINE_MODE=plan exec {sys.executable} {FAKE} "$@"\n')
    fake.chmod(0o755)
    path = tmp_path / "profiles.yaml"
    path.write_text(
        f"version: 1\nserver:\n  binary: {fake}\n"
        "gpu:\n  vram: 1GiB\n  headroom: 0\n  overhead: 0\n"
        f"profiles:\n  big:\n    model: {model}\n    ctx_size: 4096\n    parallel: 1\n"
    )
    monkeypatch.setenv("LLMCTL_MANIFEST", str(path))
    return path


def _lint() -> list[dict[str, object]]:
    out = llmctl("lint", "--json")
    assert "Traceback" not in out.stderr, out.stderr
    return [p for p in json.loads(out.stdout)["problems"] if p["profile"] == "big"]


def test_lint_judges_the_budget_by_the_engine_plan_once_kept_and_says_so(
    manifest: Path,
) -> None:
    before = _lint()
    assert not [p for p in before if p["rule"] in ("over-budget", "engine-plan-differs")], before
    probe = llmctl("estimate", "big", "--engine", "--json")
    assert probe.returncode == 0, probe.stdout + probe.stderr
    after = _lint()
    over = [p for p in after if p["rule"] == "over-budget"]
    assert len(over) == 1, after
    # the engine's 1300 MiB (each term rounded up to the next MiB) against 1 GiB
    assert "(engine plan)" in str(over[0]["message"]), over
    assert "1.27 GiB" in str(over[0]["message"]), over
    differs = [str(p["message"]) for p in after if p["rule"] == "engine-plan-differs"]
    assert {"weights", "KV cache", "compute"} == {
        t
        for t in ("weights", "KV cache", "compute")
        if any(f"formula's {t} " in m for m in differs)
    }, differs
    assert all("on llama.cpp b9093" in m and "lower than the engine's plan" in m for m in differs)
    assert all(p["severity"] == "warning" for p in after if p["rule"] == "engine-plan-differs")


def test_fit_names_the_formula_and_shows_the_engine_plan_beside_it(manifest: Path) -> None:
    out = llmctl("fit", "big", "--json")
    assert json.loads(out.stdout)["memory_source"] == "formula"
    assert json.loads(out.stdout)["engine_gpu_bytes"] is None
    assert "(formula)" in llmctl("fit", "big").stdout
    assert llmctl("estimate", "big", "--engine").returncode == 0
    out = llmctl("fit", "big", "--json")
    data = json.loads(out.stdout)
    assert data["memory_source"] == "formula"
    assert data["engine_gpu_bytes"] == (1000 + 200 + 100 + 3) * MiB
    assert "(formula; engine plan 1.27 GiB)" in llmctl("fit", "big").stdout


def test_the_dashboards_plan_says_its_source(manifest: Path) -> None:
    from llmctl.manifest.validate import load_manifest
    from llmctl.router.dashboard.plans import plan_profile

    m = load_manifest(manifest)
    est = plan_profile(m, "big")["estimate"]
    assert est["memory_source"] == "formula" and est["engine_bytes"] is None
    assert llmctl("estimate", "big", "--engine").returncode == 0
    est = plan_profile(m, "big")["estimate"]
    assert est["memory_source"] == "engine plan"
    assert est["engine_bytes"] == (1300 + 60 + 10) * MiB  # every device, host, buffer-type row
    from llmctl.supervisor.launch import launch_spec
    from llmctl.supervisor.probe import record_oom_floor

    record_oom_floor(launch_spec(m, "big"), {"CUDA0": 1536 * MiB})
    assert plan_profile(m, "big")["estimate"]["memory_source"] == "measured"


def test_lint_judges_by_the_need_an_out_of_memory_load_showed(manifest: Path) -> None:
    """A floor kept by the placer after an out-of-memory load (tests/placement/test_oom.py does
    it for real) outranks the formula and the plan: `measured`."""
    from llmctl.manifest.validate import load_manifest
    from llmctl.supervisor.launch import launch_spec
    from llmctl.supervisor.probe import record_oom_floor

    m = load_manifest(manifest)
    record_oom_floor(launch_spec(m, "big"), {"CUDA0": 1536 * MiB})
    over = [p for p in _lint() if p["rule"] == "over-budget"]
    assert len(over) == 1 and "1.50 GiB (measured)" in str(over[0]["message"]), over
    assert not [p for p in _lint() if p["rule"] == "engine-plan-differs"]  # no plan kept
