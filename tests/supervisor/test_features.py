"""A feature the configured llama-server build lacks is said once, not skipped silently: no
`--log-jsonl` (launches log text; the engine plan from its text table) and no slot token counts in `/slots` (keep_kv
saves nothing). The old build is the FAKE llama-server posing as b9093 (tests/fakes/)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmctl.cli import build_app
from llmctl.memory.builds import feature_gaps
from llmctl.supervisor import features, spawn
from llmctl.supervisor.launch import KeepKv, LaunchSpec
from llmctl.testing.testmodels import write_tiny_model
from supervisor_helpers import FAKE

runner = CliRunner()
NEW_FLAGS = frozenset({"--ctx-size", "--log-jsonl", "--load-mode"})
OLD_FLAGS = frozenset({"--ctx-size", "--mmap", "--no-mmap"})


def old_build(tmp: Path, build: int = 9093) -> Path:
    """An executable llama-server that is the FAKE posing as `build`."""
    path = tmp / "bin" / "llama-server"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\nexec {sys.executable} {FAKE} --pose-build {build} "$@"\n')
    path.chmod(0o755)
    return path


def test_gaps_of_each_build() -> None:
    assert feature_gaps(NEW_FLAGS, 11312, ("coder",)) == []
    [jsonl] = feature_gaps(OLD_FLAGS, 11312)
    assert jsonl.feature == "log-jsonl" and "b11312 has no --log-jsonl" in jsonl.message
    gaps = feature_gaps(OLD_FLAGS, 9093, ("coder", "chat"))
    assert [g.feature for g in gaps] == ["log-jsonl", "slot-tokens"]
    assert "b9093's /slots reports no n_prompt_tokens" in gaps[1].message
    assert "(coder, chat)" in gaps[1].message and gaps[1].profiles == ("coder", "chat")
    # no keep_kv profile: slot token counts are not needed; an unknown build: the newest rules
    assert [g.feature for g in feature_gaps(OLD_FLAGS, 9093)] == ["log-jsonl"]
    assert feature_gaps(NEW_FLAGS, None, ("coder",)) == []
    assert feature_gaps(None, 9093) == []  # --help unknown: nothing said about --log-jsonl


def test_lint_warns_once_per_feature_with_the_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LLMCTL_LLAMA_SERVER", raising=False)
    binary = old_build(tmp_path)
    model = write_tiny_model(tmp_path / "m.gguf", arch="llama")
    path = tmp_path / "profiles.yaml"
    path.write_text(
        f"version: 1\nserver:\n  binary: {binary}\nprofiles:\n"
        f"  a: {{model: {model}, keep_kv: true}}\n"
        f"  b: {{model: {model}, keep_kv: true}}\n"
        f"  c: {{model: {model}}}\n"
    )
    result = runner.invoke(build_app(), ["lint", "manifest", str(path), "--json"])
    report = json.loads(result.stdout)
    found = {p["rule"]: p for p in report["problems"] if p["rule"].startswith("build-lacks-")}
    assert sorted(found) == ["build-lacks-log-jsonl", "build-lacks-slot-tokens"], report
    assert all(p["severity"] == "warning" for p in found.values())
    assert "b9093 has no --log-jsonl" in found["build-lacks-log-jsonl"]["message"]
    assert found["build-lacks-log-jsonl"]["line"] == 3  # at server.binary
    slots = found["build-lacks-slot-tokens"]
    assert "b9093" in slots["message"] and "(a, b)" in slots["message"]
    assert (slots["profile"], slots["line"]) == ("a", 5)
    assert report["ok"]  # warnings only
    # the text form: one line each, with the build
    text = runner.invoke(build_app(), ["lint", "manifest", str(path)]).stdout
    assert text.count("has no --log-jsonl") == 1 and text.count("reports no n_prompt_tokens") == 1


def test_a_launch_says_each_gap_once_per_binary(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What serve's launches go through (spawn.with_log_format): one log line per feature for
    the binary, however many launches; the launch logs text (no --log-jsonl added)."""
    monkeypatch.setattr(features, "_told", set())
    binary = old_build(tmp_path)
    spec = LaunchSpec(profile="coder", argv=(str(binary), "-m", "m.gguf"), port=1)
    kept = LaunchSpec(
        profile="chat",
        argv=(str(binary), "-m", "m.gguf"),
        port=1,
        keep_kv=KeepKv(1024**3, 10 * 1024**3, 86400.0, 15.0),
    )
    with caplog.at_level(logging.WARNING, logger="llmctl.supervisor"):
        assert spawn.with_log_format(spec).argv == spec.argv  # text logs, said below
        spawn.with_log_format(spec)
        spawn.with_log_format(kept)
        spawn.with_log_format(kept)
    lines = [r.getMessage() for r in caplog.records if r.name == "llmctl.supervisor"]
    assert len(lines) == 2, lines
    assert "b9093 has no --log-jsonl" in lines[0]
    assert "n_prompt_tokens" in lines[1] and "(chat)" in lines[1]


def test_a_build_with_every_feature_says_nothing(
    llama_server_bin: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(features, "_told", set())
    with caplog.at_level(logging.WARNING, logger="llmctl.supervisor"):
        assert features.say_once(str(llama_server_bin), ("coder",)) == []
    assert not [r for r in caplog.records if r.name == "llmctl.supervisor"]
