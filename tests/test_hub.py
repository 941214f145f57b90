"""Hugging Face models before and after download, against a FAKE hub (tests/fakes/fake_hub.py: a
real HTTP server speaking the hub's API from local folders, with real Range support): does it
fit from the header alone, and `pull` once with resume and checksum."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fakes.fake_hub import TOKEN, FakeHub
from llmctl.hub.refs import parse_ref
from llmctl.testing.testmodels import write_tiny_model

MiB = 1024**2


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    repo = tmp_path / "repo"
    repo.mkdir()
    for quant, layers in (("Q4_K_M", 2), ("Q8_0", 3), ("F16", 6)):
        write_tiny_model(repo / f"Tiny-{quant}.gguf", n_layer=layers, n_embd=256, n_ff=1024)
    split = tmp_path / "split"
    split.mkdir()
    whole = write_tiny_model(tmp_path / "whole.gguf", n_layer=2)
    # a split model as llama.cpp names it: every part is a GGUF of its own
    write_tiny_model(split / "Big-Q4_K_M-00001-of-00002.gguf", n_layer=2)
    write_tiny_model(split / "Big-Q4_K_M-00002-of-00002.gguf", n_layer=2)
    del whole
    gated = tmp_path / "gated"
    gated.mkdir()
    write_tiny_model(gated / "Secret-Q8_0.gguf")
    fake = FakeHub()
    fake.add("org/tiny-GGUF", repo)
    fake.add("org/gated-GGUF", gated, gated=True)
    with fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
        monkeypatch.setenv("LLAMA_CACHE", str(tmp_path / "llama-cache"))
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        yield fake


def llmctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmctl", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_references_in_llama_cpp_spelling() -> None:
    assert parse_ref("hf://org/repo:Q4_K_M").tag == "Q4_K_M"
    ref = parse_ref("hf://org/repo@v1.0/sub/file.gguf")
    assert (ref.repo, ref.revision, ref.file) == ("org/repo", "v1.0", "sub/file.gguf")
    for bad in ("org/repo", "hf://org", "hf://org/../x", "hf://org/repo:"):
        with pytest.raises(Exception, match="not a Hugging Face model reference"):
            parse_ref(bad)


def test_every_quant_side_by_side_and_the_largest_that_fits_marked(hub: FakeHub) -> None:
    first = llmctl(
        "estimate", "hf://org/tiny-GGUF", "--vram", "24GiB", "--json", "--", "-c", "4096"
    )
    assert first.returncode == 0, first.stderr
    totals = {m["tag"]: m["total_bytes"] for m in json.loads(first.stdout)["models"]}
    assert totals["Q4_K_M"] < totals["Q8_0"] < totals["F16"]
    vram = f"{(totals['Q8_0'] + totals['F16']) // 2 // 1024}KiB"  # Q8_0 fits, F16 does not
    out = llmctl("estimate", "hf://org/tiny-GGUF", "--vram", vram, "--json", "--", "-c", "4096")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    by_tag = {m["tag"]: m for m in data["models"]}
    assert set(by_tag) == {"Q4_K_M", "Q8_0", "F16"}
    assert [m["tag"] for m in data["models"] if m["largest_that_fits"]] == ["Q8_0"]
    assert by_tag["F16"]["fits"] is False and by_tag["Q4_K_M"]["fits"] is True
    # only headers crossed the wire, by range requests
    assert all(s.range is not None for s in hub.seen if "/resolve/" in s.path)
    text = llmctl("estimate", "hf://org/tiny-GGUF", "--vram", vram, "--", "-c", "4096")
    assert "largest that fits" in text.stdout and "nothing downloaded" in text.stdout


def test_one_quant_and_a_split_model_as_one(hub: FakeHub, tmp_path: Path) -> None:
    hub.add("org/split-GGUF", tmp_path / "split")
    one = llmctl("estimate", "hf://org/tiny-GGUF:Q8_0", "--json")
    assert one.returncode == 0, one.stderr
    [model] = json.loads(one.stdout)["models"]
    assert model["files"] == ["Tiny-Q8_0.gguf"]
    split = llmctl("estimate", "hf://org/split-GGUF", "--json")
    assert split.returncode == 0, split.stderr
    [big] = json.loads(split.stdout)["models"]
    assert big["files"] == ["Big-Q4_K_M-00001-of-00002.gguf", "Big-Q4_K_M-00002-of-00002.gguf"]


def test_hub_errors_say_what_to_do_and_never_print_the_token(hub: FakeHub) -> None:
    missing = llmctl("estimate", "hf://org/nope-GGUF")
    assert missing.returncode != 0 and "no such repo" in missing.stderr
    assert "Traceback" not in missing.stderr
    quant = llmctl("estimate", "hf://org/tiny-GGUF:Q2_K")
    assert quant.returncode != 0 and "Tiny-Q8_0.gguf" in quant.stderr  # the choices
    gated = llmctl("estimate", "hf://org/gated-GGUF")
    assert gated.returncode != 0 and "gated" in gated.stderr and "HF_TOKEN" in gated.stderr
    ok = llmctl("estimate", "hf://org/gated-GGUF", "--json", env={"HF_TOKEN": TOKEN})
    assert ok.returncode == 0, ok.stderr
    assert TOKEN not in ok.stdout + ok.stderr


def test_a_server_that_ignores_range_is_refused_not_downloaded(hub: FakeHub) -> None:
    hub.ignore_range = True
    out = llmctl("estimate", "hf://org/tiny-GGUF:Q4_K_M")
    assert out.returncode != 0 and "does not answer range requests" in out.stderr
    assert "Traceback" not in out.stderr


def test_offline_estimates_from_what_was_read_before(hub: FakeHub) -> None:
    assert llmctl("estimate", "hf://org/tiny-GGUF:Q8_0", "--json").returncode == 0
    before = len(hub.seen)
    again = llmctl("estimate", "hf://org/tiny-GGUF:Q8_0", "--json", env={"HF_HUB_OFFLINE": "1"})
    assert again.returncode == 0, again.stderr
    assert len(hub.seen) == before  # nothing asked of the hub
    never = llmctl("estimate", "hf://org/tiny-GGUF:F16", env={"HF_HUB_OFFLINE": "1"})
    assert never.returncode != 0 and "HF_HUB_OFFLINE" in never.stderr


def test_pull_once_verified_into_llama_cpp_cache(hub: FakeHub, tmp_path: Path) -> None:
    out = llmctl("pull", "hf://org/tiny-GGUF:Q4_K_M", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    [f] = data["files"]
    assert f["downloaded"] is True and Path(f["path"]).is_file()
    assert str(tmp_path / "llama-cache") in f["path"]
    again = json.loads(llmctl("pull", "hf://org/tiny-GGUF:Q4_K_M", "--json").stdout)
    assert again["files"][0]["downloaded"] is False  # never twice
    # a corrupt download (one byte flipped) is deleted and said
    hub.corrupt.add("Tiny-Q8_0.gguf")
    bad = llmctl("pull", "hf://org/tiny-GGUF:Q8_0")
    assert bad.returncode != 0 and "SHA-256" in bad.stderr
    assert not list((tmp_path / "llama-cache").rglob("Tiny-Q8_0.gguf"))


def test_a_profile_on_a_hub_model_estimates_refuses_unpulled_then_runs(
    hub: FakeHub, tmp_path: Path, llama_server_bin: Path
) -> None:
    """`model: hf://org/repo:QUANT` in a profile: estimate and fit read the remote header; lint
    says it is not downloaded; switch refuses before stopping anything and names `llmctl pull
    PROFILE`; after the pull, switch runs the cached file with the real llama-server."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    manifest = tmp_path / "profiles.yaml"
    manifest.write_text(
        f"version: 1\nserver: {{binary: {llama_server_bin}, port: {port}}}\n"
        "profiles:\n  tiny:\n    model: hf://org/tiny-GGUF:Q4_K_M\n    ctx_size: 512\n"
        "  bad:\n    model: hf://not a ref\n"
    )
    mf = ["--manifest", str(manifest)]
    broken = llmctl("lint", *mf)
    assert broken.returncode != 0 and "profiles.yaml:8" in broken.stdout, broken.stdout
    assert "hub-ref" in broken.stdout and "not a Hugging Face model reference" in broken.stdout
    manifest.write_text(manifest.read_text().replace("  bad:\n    model: hf://not a ref\n", ""))
    lint = llmctl("lint", *mf)
    assert "model-not-pulled" in lint.stdout and "llmctl pull tiny" in lint.stdout, lint.stdout
    est = llmctl("estimate", "tiny", "--json", *mf)
    assert est.returncode == 0, est.stderr
    (row,) = json.loads(est.stdout)
    assert row["weights"]["bytes"] > 0, row  # from the remote header
    refused = llmctl("switch", "tiny", *mf)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "not downloaded yet" in refused.stderr and "llmctl pull tiny" in refused.stderr
    pulled = llmctl("pull", "tiny", "--json", *mf)
    assert pulled.returncode == 0, pulled.stderr
    path = json.loads(pulled.stdout)["files"][0]["path"]
    try:
        ran = llmctl("switch", "tiny", "--json", *mf)
        assert ran.returncode == 0, ran.stdout + ran.stderr
        status = json.loads(llmctl("status", "--json").stdout)
        assert path in status["argv"]  # the cached file, not -hf
        assert "model-not-pulled" not in llmctl("lint", *mf).stdout
    finally:
        llmctl("stop")
    local = llmctl("pull", "nope", *mf)
    assert local.returncode == 2 and "nope" in local.stderr
    # `switch --pull`: another quant, downloaded first, then run
    manifest.write_text(
        manifest.read_text() + "  eight:\n    model: hf://org/tiny-GGUF:Q8_0\n    ctx_size: 512\n"
    )
    try:
        both = llmctl("switch", "eight", "--pull", *mf)
        assert both.returncode == 0, both.stdout + both.stderr
        assert "pulling Tiny-Q8_0.gguf" in both.stderr
        assert "Tiny-Q8_0.gguf" in " ".join(json.loads(llmctl("status", "--json").stdout)["argv"])
    finally:
        llmctl("stop")
