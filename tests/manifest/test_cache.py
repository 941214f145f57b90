"""The manifest cache: the same answers as validating, without YAML or pydantic, never stale."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llmctl.errors import ManifestError
from llmctl.manifest import cache, validate
from llmctl.manifest.view import ManifestView

ROOT = Path(__file__).resolve().parents[2]


def _fields(obj: Any) -> Any:
    """Every field of a model or of its view, recursively, for comparison."""
    names = getattr(type(obj), "model_fields", None)
    if names is None and hasattr(obj, "model_fields_set"):
        names = [k for k in vars(obj) if k != "model_fields_set"]
    if names is not None:
        return {
            "fields": {k: _fields(getattr(obj, k)) for k in names},
            "set": sorted(obj.model_fields_set),
        }
    if isinstance(obj, list):
        return [_fields(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _fields(v) for k, v in obj.items()}
    return obj


def test_the_view_has_every_field_of_the_model() -> None:
    path = ROOT / "profiles.yaml"
    fresh, problems = validate.check_manifest(path)
    first, first_problems = cache.check_manifest(path)  # validates, writes the entry
    view, view_problems = cache.check_manifest(path)  # reads it back
    assert not isinstance(first, ManifestView) and isinstance(view, ManifestView)
    assert problems == first_problems == view_problems
    for section in type(fresh).model_fields:
        assert _fields(getattr(view, section)) == _fields(getattr(fresh, section)), section
    assert view.path == fresh.path and view.names() == fresh.names()
    for name in fresh.profiles:
        for field in ("model", "ctx_size", "cache_type_k", "aliases"):
            assert view.where(name, field) == fresh.where(name, field)
        assert view.profiles[name].model_fields_set == fresh.profiles[name].model_fields_set


def test_launch_specs_from_the_cache_are_the_same() -> None:
    from llmctl.supervisor.launch import launch_spec

    path = ROOT / "profiles.yaml"
    fresh = validate.load_manifest(path)
    cache.load_manifest(path)
    view = cache.load_manifest(path)
    assert isinstance(view, ManifestView)
    for name in fresh.profiles:
        assert launch_spec(view, name) == launch_spec(fresh, name)


def _write(path: Path, ctx: int) -> None:
    path.write_text(f"version: 1\nprofiles:\n  a: {{model: $MODELS/m.gguf, ctx_size: {ctx}}}\n")


def test_an_edit_is_seen_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELS", "/models")
    path = tmp_path / "profiles.yaml"
    _write(path, 1024)
    assert cache.load_manifest(path).profiles["a"].ctx_size == 1024
    assert isinstance(cache.load_manifest(path), ManifestView)
    # same size, written within the same timestamp tick: the text tells them apart
    _write(path, 2048)
    m = cache.load_manifest(path)
    assert not isinstance(m, ManifestView) and m.profiles["a"].ctx_size == 2048


def test_a_changed_variable_is_seen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELS", "/models")
    path = tmp_path / "profiles.yaml"
    _write(path, 1024)
    cache.load_manifest(path)
    assert cache.load_manifest(path).profiles["a"].model == "/models/m.gguf"
    monkeypatch.setenv("MODELS", "/elsewhere")
    m = cache.load_manifest(path)
    assert not isinstance(m, ManifestView) and m.profiles["a"].model == "/elsewhere/m.gguf"


def _entries(tmp: Path) -> list[Path]:
    from llmctl.paths import cache_dir

    return sorted((cache_dir() / "manifests").glob("*.json"))


def test_a_damaged_or_unwritable_cache_is_no_error(tmp_path: Path) -> None:
    path = tmp_path / "profiles.yaml"
    _write(path, 1024)
    cache.load_manifest(path)
    (entry,) = _entries(tmp_path)
    for damage in ("", "{not json", json.dumps({"file": "x"}), json.dumps([1, 2])):
        entry.write_text(damage)
        m = cache.load_manifest(path)
        assert not isinstance(m, ManifestView) and m.profiles["a"].ctx_size == 1024
    entry.unlink()
    entry.parent.chmod(0o500)
    try:
        assert cache.load_manifest(path).profiles["a"].ctx_size == 1024
    finally:
        entry.parent.chmod(0o700)


def test_errors_are_the_same_from_the_cache(tmp_path: Path) -> None:
    path = tmp_path / "profiles.yaml"
    path.write_text("version: 1\nprofiles:\n  a: {model: m.gguf, ctx_size: -4, ngl: 3}\n")
    with pytest.raises(ManifestError) as fresh:
        validate.load_manifest(path)
    for _ in range(2):  # validated, then from the cache
        with pytest.raises(ManifestError) as cached:
            cache.load_manifest(path)
        assert cached.value.message == fresh.value.message
        assert cached.value.problems == fresh.value.problems
    assert _entries(tmp_path)


def test_unreadable_manifests_are_not_cached(tmp_path: Path) -> None:
    path = tmp_path / "profiles.yaml"
    path.write_text("version: 1\nprofiles: [\n")
    for _ in range(2):
        with pytest.raises(ManifestError, match="invalid YAML"):
            cache.load_manifest(path)
    with pytest.raises(ManifestError, match="no such file"):
        cache.load_manifest(tmp_path / "missing.yaml")
    path.write_bytes(b"version: 1\n\xff\n")
    with pytest.raises(ManifestError, match="not UTF-8"):
        cache.load_manifest(path)


def test_checks_across_profiles_are_kept_with_the_manifest(tmp_path: Path) -> None:
    """A cache hit neither runs lint's rules (they import the `--help` reader and more) nor loses
    what they found: an error across fields is reported from the cache as on the first read."""
    import subprocess
    import sys

    path = tmp_path / "profiles.yaml"
    path.write_text(
        "version: 1\nprofiles:\n"
        "  a: {model: m.gguf, cache_type_v: q8_0, flash_attn: 'off'}\n"
        "  b: {model: m.gguf}\n"
    )
    messages = []
    for _ in range(2):
        with pytest.raises(ManifestError) as info:
            cache.load_manifest(path)
        messages.append(info.value.message)
    assert messages[0] == messages[1] and "flash attention" in messages[0]
    path.write_text("version: 1\nprofiles:\n  a: {model: m.gguf}\n")
    cache.load_manifest(path)  # validates and keeps the checks' result
    probe = (
        "import sys\nfrom llmctl.manifest import cache\n"
        f"cache.load_manifest({str(path)!r})\n"
        "print(sorted(m for m in ('llmctl.lint.rules', 'pydantic', 'yaml') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
