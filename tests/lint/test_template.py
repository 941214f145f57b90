"""Lint rule `chat-template`: base models (no chat template in the GGUF) behind a chat profile."""

from __future__ import annotations

from pathlib import Path

from llmctl.lint.run import lint_manifest
from llmctl.llama.gguf_writer import string, u32, write_gguf
from llmctl.testing.testmodels import write_tiny_model


def _base_model(path: Path) -> Path:
    meta = [
        ("general.architecture", string("llama")),
        ("general.name", string("a base model")),
        ("llama.context_length", u32(2048)),
        ("llama.block_count", u32(2)),
        ("llama.embedding_length", u32(64)),
    ]
    return write_gguf(path, meta, [])


def _rules(tmp: Path, profiles: str) -> list[tuple[str, str | None, int | None]]:
    manifest = tmp / "profiles.yaml"
    manifest.write_text(f"version: 1\nprofiles:\n{profiles}")
    result = lint_manifest(manifest)
    return [(p.rule, p.profile, p.line) for p in result.problems if p.rule == "chat-template"]


def test_a_base_model_behind_a_chat_profile_is_a_warning_at_its_model_line(
    tmp_path: Path,
) -> None:
    base = _base_model(tmp_path / "base.gguf")
    chat = write_tiny_model(tmp_path / "chat.gguf")
    found = _rules(
        tmp_path,
        f"  base:\n    model: {base}\n"
        f"  chat:\n    model: {chat}\n"
        f"  named:\n    model: {base}\n    chat_template: chatml\n"
        f"  embed:\n    model: {base}\n    embedding: true\n",
    )
    assert found == [("chat-template", "base", 4)]


def test_the_warning_says_what_to_do(tmp_path: Path) -> None:
    base = _base_model(tmp_path / "base.gguf")
    manifest = tmp_path / "profiles.yaml"
    manifest.write_text(f"version: 1\nprofiles:\n  base:\n    model: {base}\n")
    (problem,) = [p for p in lint_manifest(manifest).problems if p.rule == "chat-template"]
    assert problem.severity == "warning"
    assert problem.hint is not None and "/completion" in problem.hint
    assert "chat_template" in problem.hint
