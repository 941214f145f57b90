"""`llmctl init`: a first manifest from the GGUF files found, that lint accepts and that runs."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from llmctl.llama.gguf import read_gguf
from llmctl.llama.gguf_writer import string, u32, write_gguf
from llmctl.manifest.starter import model_folders, profile_name, render, scan
from llmctl.testing.testmodels import write_tiny_model
from processes import free_port_range
from processes import llmctl as run_llmctl


def llmctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_llmctl(*args, env={**os.environ, **(env or {})})


def _projector(path: Path, width: int) -> Path:
    meta = [
        ("general.architecture", string("clip")),
        ("general.type", string("mmproj")),
        ("clip.vision.projection_dim", u32(width)),
    ]
    return write_gguf(path, meta, [])


def _pooled(path: Path, pooling: int) -> Path:
    meta = [
        ("general.architecture", string("bert")),
        ("general.name", string("tiny embedder")),
        ("bert.context_length", u32(512)),
        ("bert.pooling_type", u32(pooling)),
        ("bert.block_count", u32(2)),
        ("bert.embedding_length", u32(64)),
        ("bert.feed_forward_length", u32(128)),
        ("bert.attention.head_count", u32(4)),
    ]
    return write_gguf(path, meta, [])


@pytest.fixture
def models(tmp_path: Path) -> Path:
    """A folder as users have them: a chat model with its projector, an embedding model, a
    reranker, a second file of the same name elsewhere, a link to the first, a broken file."""
    root = tmp_path / "models"
    (root / "vision").mkdir(parents=True)
    (root / "other").mkdir()
    chat = write_tiny_model(root / "vision" / "Tiny-Chat-Q8_0.gguf", n_ctx_train=2048)
    width = read_gguf(chat).metadata["llama.embedding_length"]
    _projector(root / "vision" / "mmproj-Tiny-Chat-f16.gguf", width)
    _projector(root / "other" / "mmproj-for-another-model.gguf", width + 64)
    write_tiny_model(root / "other" / "Tiny-Chat-Q8_0.gguf")  # same name, another folder
    _pooled(root / "embed.gguf", 1)
    _pooled(root / "rerank.gguf", 4)
    (root / "broken.gguf").write_bytes(b"GGUF\x03\x00\x00\x00 truncated")
    (root / "link.gguf").symlink_to(chat)
    (root / ".hidden").mkdir()
    write_tiny_model(root / ".hidden" / "skipped.gguf")
    return root


def test_scan_finds_each_model_once_with_what_belongs_to_it(models: Path) -> None:
    found = scan([models, models / "vision"])
    by_name = {m.name: m for m in found.models}
    assert sorted(by_name) == [
        "embed",
        "rerank",
        "tiny-chat-q8_0",
        "tiny-chat-q8_0-2",
    ], "one profile per file (the link and the second folder listing are the same file)"
    chat = next(m for m in found.models if m.path.parent.name == "vision")
    assert chat.mmproj == models / "vision" / "mmproj-Tiny-Chat-f16.gguf"
    assert chat.trained_ctx == 2048
    other = next(m for m in found.models if m.path.parent.name == "other")
    assert other.mmproj is None, "a projector of another width is not attached"
    assert by_name["embed"].embedding and not by_name["embed"].reranking
    assert by_name["rerank"].reranking and not by_name["rerank"].embedding
    assert [s.split(":")[0] for s in found.skipped] == [str(models / "broken.gguf")]
    assert found.searched == [models, models / "vision"]


def test_profile_names() -> None:
    assert profile_name(Path("Qwen3-8B-Q4_K_M.gguf")) == "qwen3-8b-q4_k_m"
    assert profile_name(Path("GLM 4.5 Air (UD).gguf")) == "glm-4.5-air-ud"
    assert profile_name(Path("big-model-00001-of-00003.gguf")) == "big-model"
    assert profile_name(Path("+++.gguf")) == "model"


def test_model_folders_follow_the_tools_variables(tmp_path: Path) -> None:
    env = {"LLAMA_CACHE": "/x/llama", "HF_HOME": "/x/hf", "XDG_CACHE_HOME": "/x/cache"}
    assert model_folders(tmp_path, env) == [
        tmp_path / "models",
        Path("/x/llama"),
        Path("/x/hf/hub"),
        tmp_path / ".lmstudio" / "models",
        Path("/x/cache/lm-studio/models"),
    ]


def test_the_manifest_written_validates_and_shows_its_sources(models: Path, tmp_path: Path) -> None:
    from llmctl.manifest.validate import check_manifest

    found = scan([models])
    text = render(found.models, [("CUDA0", 24 * 1024**3)], found.searched, offload=True)
    path = tmp_path / "out.yaml"
    path.write_text(text)
    manifest, problems = check_manifest(path)
    assert [p for p in problems if p.severity == "error"] == []
    assert manifest.gpu_budget.vram == 24 * 1024**3
    chat = next(p for p in manifest.profiles.values() if "vision" in p.model)
    assert chat.ctx_size == 2048 and chat.mmproj and chat.mmproj.endswith("f16.gguf")
    assert manifest.profiles["embed"].embedding is True
    assert manifest.profiles["rerank"].reranking is True
    assert manifest.serve.default_profile in ("tiny-chat-q8_0", "tiny-chat-q8_0-2")
    two = render(
        found.models, [("CUDA0", 24 * 1024**3), ("CUDA1", 12 * 1024**3)], [models], offload=True
    )
    path.write_text(two)
    manifest, problems = check_manifest(path)
    assert [d.name for d in manifest.device_configs()][:2] == ["CUDA0", "CUDA1"]
    path.write_text(render(found.models, [], [models], offload=False))
    manifest, _ = check_manifest(path)
    assert manifest.profiles["embed"].n_gpu_layers == 0


def test_init_writes_then_refuses_to_replace(models: Path, tmp_path: Path) -> None:
    res = llmctl("init", str(models))
    assert res.returncode == 0, res.stderr
    written = tmp_path / "home" / "config" / "llmctl" / "profiles.yaml"
    assert "wrote" in res.stdout and str(written) in res.stdout
    assert "tiny-chat-q8_0" in res.stdout and "skipped" in res.stdout
    first = written.read_text()
    # the written manifest is the one every command finds, and lint accepts it
    lint = llmctl("lint")
    assert lint.returncode == 0, lint.stdout + lint.stderr
    again = llmctl("init", str(models))
    assert again.returncode == 2
    assert "exists" in again.stderr and "--force" in again.stderr
    assert written.read_text() == first, "nothing is lost"
    forced = llmctl("init", str(models / "vision"), "--force", "--json")
    assert forced.returncode == 0, forced.stderr
    out = json.loads(forced.stdout)
    assert out["ok"] and out["backup"] == str(written) + ".bak"
    assert [p["profile"] for p in out["profiles"]] == ["tiny-chat-q8_0"]
    assert Path(out["backup"]).read_text() == first


def test_init_errors(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path / "nohome"), "XDG_CACHE_HOME": str(tmp_path / "nocache")}
    for var in ("LLAMA_CACHE", "HF_HOME", "HF_HUB_CACHE"):
        env[var] = str(tmp_path / "none" / var)
    nothing = llmctl("init", env=env)
    assert nothing.returncode == 1
    assert "no GGUF model found" in nothing.stderr and "llmctl init FOLDER" in nothing.stderr
    missing = llmctl("init", str(tmp_path / "nowhere"), "--json")
    assert missing.returncode == 2
    assert json.loads(missing.stdout)["error"]["message"].startswith("no such folder")
    (tmp_path / "empty").mkdir()
    empty = llmctl("init", str(tmp_path / "empty"), "-o", str(tmp_path / "x.yaml"))
    assert empty.returncode == 2 and not (tmp_path / "x.yaml").exists()
    folder = llmctl("init", str(tmp_path), "-o", str(tmp_path / "empty"))
    assert folder.returncode == 2 and "is a folder" in folder.stderr
    for res in (nothing, missing, empty, folder):
        assert "Traceback" not in res.stdout + res.stderr
    # no manifest at all: the error says how to make one
    hint = llmctl("lint")
    assert hint.returncode == 2 and "llmctl init" in hint.stderr, hint.stderr


def test_init_then_switch_runs_the_real_server(
    tmp_path: Path, llama_server_bin: Path, free_port: int
) -> None:
    root = tmp_path / "models"
    root.mkdir()
    write_tiny_model(root / "Tiny.gguf")
    env = {"LLMCTL_LLAMA_SERVER": str(llama_server_bin)}
    out = tmp_path / "profiles.yaml"
    assert llmctl("init", str(root), "-o", str(out), env=env).returncode == 0
    text = out.read_text()
    assert "ports: 8100-8199" in text  # several profiles can run at once from the first manifest
    text = text.replace("ports: 8100-8199", f"ports: {free_port}-{free_port}")
    out.write_text(text)
    try:
        res = llmctl("switch", "tiny", "--json", env=env)
        assert res.returncode == 0, res.stdout + res.stderr
        assert json.loads(res.stdout)["ready"] is True
    finally:
        assert llmctl("stop", env=env).returncode == 0


def test_init_manifest_loads_two_models_side_by_side(
    tmp_path: Path, llama_server_bin: Path
) -> None:
    """The README's quick start: `init`, then `load A B` runs both, each on its own port."""
    root = tmp_path / "models"
    root.mkdir()
    write_tiny_model(root / "Alpha.gguf")
    write_tiny_model(root / "Beta-Coder-Instruct-Long.gguf")  # a name past 16 characters
    env = {"LLMCTL_LLAMA_SERVER": str(llama_server_bin)}
    out = tmp_path / "profiles.yaml"
    assert llmctl("init", str(root), "-o", str(out), env=env).returncode == 0
    base = free_port_range(2)
    out.write_text(out.read_text().replace("ports: 8100-8199", f"ports: {base}-{base + 1}"))
    long_name = "beta-coder-instruct-long"
    assert f"  {long_name}:" in out.read_text()
    try:
        res = llmctl("load", "alpha", long_name, "--json", env=env)
        assert res.returncode == 0, res.stdout + res.stderr
        ps = json.loads(llmctl("ps", "--json", env=env).stdout)
        running = sorted(s["profile"] for s in ps["servers"])
        assert running == ["alpha", long_name], ps
        # the text table keeps its columns whatever the names' lengths
        lines = llmctl("ps", env=env).stdout.splitlines()
        at = lines[0].index("PHASE")
        assert all(line[at:].startswith("ready") for line in lines[1:3]), lines
    finally:
        assert llmctl("stop", env=env).returncode == 0


def test_init_says_when_another_manifest_comes_first_here(models: Path, tmp_path: Path) -> None:
    """Run from a folder with its own ./profiles.yaml (a clone of this project has one), the
    commands that follow would read that file: init says so and its next steps name the new one."""
    (Path.cwd() / "profiles.yaml").write_text("version: 1\nprofiles: {}\n")
    res = llmctl("init", str(models))
    assert res.returncode == 0, res.stderr
    written = tmp_path / "home" / "config" / "llmctl" / "profiles.yaml"
    assert "note: ./profiles.yaml comes before this file here" in res.stdout
    nxt = next(line for line in res.stdout.splitlines() if line.startswith("next:"))
    assert f"--manifest {written}" in nxt
    # several local models: the next step runs two of them side by side
    assert "llmctl load " in nxt and "(side by side)" in nxt
    out = json.loads(llmctl("init", str(models), "--force", "--json").stdout)
    assert out["shadowed_by"] == "./profiles.yaml"
    (Path.cwd() / "profiles.yaml").unlink()
    plain = llmctl("init", str(models), "--force")
    assert "note:" not in plain.stdout and "--manifest" not in plain.stdout
