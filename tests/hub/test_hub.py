"""Hugging Face models before and after download, against a FAKE hub (tests/fakes/fake_hub.py: a
real HTTP server speaking the hub's API from local folders, with real Range support): does it
fit from the header alone, and `pull` once with resume and checksum."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fakes.fake_hub import TOKEN, FakeHub
from llmctl.hub.refs import parse_ref
from llmctl.testing.realshapes import ProjectorShape, write_projector
from llmctl.testing.testmodels import write_tiny_model
from processes import free_port, imported_modules

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


def test_a_slow_server_is_given_up_on_and_said(hub: FakeHub) -> None:
    """A hub that takes the request and never answers: the estimate and the pull stop after
    HF_HUB_DOWNLOAD_TIMEOUT seconds, name it, and leave no partial file."""
    hub.hold = threading.Event()  # every file GET waits; the hub's close releases it
    slow = {"HF_HUB_DOWNLOAD_TIMEOUT": "1"}
    out = llmctl("estimate", "hf://org/tiny-GGUF:Q4_K_M", env=slow)
    assert out.returncode != 0, out.stdout
    assert "no answer within 1 s" in out.stderr and "HF_HUB_DOWNLOAD_TIMEOUT" in out.stderr
    assert hub.waiting.is_set()  # it did reach the hub
    pulled = llmctl("pull", "hf://org/tiny-GGUF:Q4_K_M", env=slow)
    assert pulled.returncode != 0 and "Traceback" not in out.stderr + pulled.stderr
    assert "no answer within 1 s" in pulled.stderr
    assert "HF_HUB_DOWNLOAD_TIMEOUT" in pulled.stderr and "run the pull again" in pulled.stderr
    hub.hold.set()
    assert llmctl("estimate", "hf://org/tiny-GGUF:Q4_K_M").returncode == 0  # and then it answers


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


# --- hub models in profiles ----------------------------------------------------------------


def manifest(tmp_path: Path, profiles: str, gpu: str = "") -> Path:
    path = tmp_path / "profiles.yaml"
    path.write_text(f"version: 1\n{gpu}profiles:\n{profiles}")
    return path


HUB_PROFILES = """\
  q4:
    model: hf://org/tiny-GGUF:Q4_K_M
    ctx_size: 2048
  q8:
    hf: org/tiny-GGUF:Q8_0
  f16:
    hf: org/tiny-GGUF
    hf_file: Tiny-F16.gguf
"""


def test_malformed_hub_references_are_errors_at_their_line(tmp_path: Path) -> None:
    path = manifest(
        tmp_path,
        "  a:\n    model: hf://org\n"  # line 4
        "  b:\n    hf: 'org/repo:'\n"  # line 6
        "  c:\n    hf: org/repo:Q8_0\n    hf_file: x.gguf\n"  # line 9
        "  d:\n    hf: org/repo\n    model: x.gguf\n"  # line 11
        "  e:\n    hf_file: x.gguf\n",  # line 14
    )
    out = llmctl("lint", "--manifest", str(path), "--json")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    problems = json.loads(out.stdout)["problems"]
    hub = {p["profile"]: p for p in problems if p["rule"] == "hub-ref"}
    assert {k: v["line"] for k, v in hub.items()} == {"a": 4, "b": 6, "c": 9, "d": 11, "e": 14}
    assert "not a Hugging Face model reference" in hub["a"]["message"]
    assert "not both" in hub["c"]["message"] and "keep one" in hub["d"]["message"]
    assert all(p["file"] == str(path) for p in hub.values())
    # a command on the manifest says the same, without a traceback
    bad = llmctl("switch", "a", "--manifest", str(path))
    assert bad.returncode == 2 and f"{path}:4" in bad.stderr and "Traceback" not in bad.stderr


def test_a_hub_profile_is_estimated_from_its_header_once(hub: FakeHub, tmp_path: Path) -> None:
    path = manifest(tmp_path, HUB_PROFILES, gpu="gpu: {vram: 24GiB}\n")
    out = llmctl("estimate", "q4", "q8", "f16", "--manifest", str(path), "--json")
    assert out.returncode == 0, out.stderr
    models = {e["profile"]: e for e in json.loads(out.stdout)}
    assert models["q4"]["fits"] is True
    assert models["q4"]["weights"]["bytes"] < models["q8"]["weights"]["bytes"]
    assert models["q8"]["weights"]["bytes"] < models["f16"]["weights"]["bytes"]
    assert all(s.range is not None for s in hub.seen if "/resolve/" in s.path)
    assert not list((tmp_path / "llama-cache").rglob("*.gguf"))  # nothing downloaded
    before = len(hub.seen)
    again = llmctl("estimate", "q4", "--manifest", str(path), "--json")
    assert again.returncode == 0, again.stderr
    assert len(hub.seen) == before  # the listing and the header were kept
    assert json.loads(again.stdout)[0]["weights"] == models["q4"]["weights"]
    fit = llmctl("fit", "q4", "--manifest", str(path), "--json")
    assert fit.returncode == 0 and json.loads(fit.stdout)["fits"] is True, fit.stderr
    assert len(hub.seen) == before


def test_estimate_errors_of_a_hub_profile(hub: FakeHub, tmp_path: Path) -> None:
    path = manifest(
        tmp_path,
        "  gone:\n    model: hf://org/nope-GGUF:Q4_K_M\n"
        "  noquant:\n    model: hf://org/tiny-GGUF:Q2_K\n"
        "  gated:\n    model: hf://org/gated-GGUF:Q8_0\n"
        "  never:\n    model: hf://org/tiny-GGUF:Q8_0\n",
    )
    gone = llmctl("estimate", "gone", "--manifest", str(path))
    assert gone.returncode == 1 and "no such repo" in gone.stdout, gone.stdout + gone.stderr
    noquant = llmctl("estimate", "noquant", "--manifest", str(path))
    assert noquant.returncode == 1 and "Tiny-Q4_K_M.gguf" in noquant.stdout  # the choices
    gated = llmctl("estimate", "gated", "--manifest", str(path))
    assert gated.returncode == 1 and "HF_TOKEN" in gated.stdout
    offline = llmctl("estimate", "never", "--manifest", str(path), env={"HF_HUB_OFFLINE": "1"})
    assert offline.returncode == 1 and "HF_HUB_OFFLINE" in offline.stdout
    unreachable = llmctl(
        "fit", "never", "--vram", "8GiB", "--manifest", str(path),
        env={"HF_ENDPOINT": "http://127.0.0.1:9"},
    )  # fmt: skip
    assert unreachable.returncode != 0 and "cannot reach the hub" in unreachable.stderr
    for out in (gone, noquant, gated, offline, unreachable):
        assert "Traceback" not in out.stdout + out.stderr


def test_lint_asks_nothing_of_the_hub(hub: FakeHub, tmp_path: Path) -> None:
    path = manifest(tmp_path, HUB_PROFILES, gpu="gpu: {vram: 1MiB, headroom: 0}\n")
    out = llmctl("lint", "--manifest", str(path), "--json")
    assert "Traceback" not in out.stderr
    problems = json.loads(out.stdout)["problems"]
    remote = {p["profile"]: p for p in problems if p["rule"] == "model-not-pulled"}
    assert set(remote) == {"q4", "q8", "f16"}
    assert remote["q4"]["severity"] == "warning" and "llmctl pull q4" in remote["q4"]["hint"]
    assert remote["q8"]["line"] == 8  # `hf:` stands for `model:`
    assert not any(p["rule"] == "over-budget" for p in problems)  # no header: no figure
    assert hub.seen == []
    # offline, or the hub unreachable: the same, no traceback
    for env in ({"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": "http://127.0.0.1:9"}):
        again = llmctl("lint", "--manifest", str(path), "--json", env=env)
        assert "model-not-pulled" in again.stdout and "Traceback" not in again.stderr
    # once an estimate read the header, lint judges it from the kept copy, still asking nothing
    assert llmctl("estimate", "q4", "--manifest", str(path)).returncode == 0
    before = len(hub.seen)
    judged = json.loads(llmctl("lint", "--manifest", str(path), "--json").stdout)["problems"]
    assert [p["profile"] for p in judged if p["rule"] == "over-budget"] == ["q4"]
    assert len(hub.seen) == before


def test_pull_a_profile_then_estimate_and_lint_use_the_file(hub: FakeHub, tmp_path: Path) -> None:
    path = manifest(tmp_path, HUB_PROFILES)
    out = llmctl("pull", "q8", "--manifest", str(path), "--json")
    assert out.returncode == 0, out.stderr
    [f] = json.loads(out.stdout)["files"]
    assert f["file"] == "Tiny-Q8_0.gguf" and str(tmp_path / "llama-cache") in f["path"]
    lint = json.loads(llmctl("lint", "--manifest", str(path), "--json").stdout)["problems"]
    assert {p["profile"] for p in lint if p["rule"] == "model-not-pulled"} == {"q4", "f16"}
    before = len(hub.seen)
    est = llmctl("estimate", "q8", "--manifest", str(path), "--json")
    assert est.returncode == 0, est.stderr
    assert len(hub.seen) == before  # the pulled file, not the hub
    command = llmctl("command", "q8", "--manifest", str(path), "--json")
    argv = json.loads(command.stdout)["argv"]
    assert argv[argv.index("-m") + 1] == f["path"] and "-hf" not in argv
    # not pulled: the command line llama-server would download with
    argv = json.loads(llmctl("command", "q4", "--manifest", str(path), "--json").stdout)["argv"]
    assert argv[argv.index("-hf") + 1] == "org/tiny-GGUF:Q4_K_M" and "-m" not in argv
    # a profile of a file has nothing to pull
    files = manifest(tmp_path, "  local:\n    model: m.gguf\n")
    local = llmctl("pull", "local", "--manifest", str(files))
    assert local.returncode == 2 and "nothing to pull" in local.stderr


def test_switch_refuses_a_hub_model_not_pulled(hub: FakeHub, tmp_path: Path) -> None:
    path = manifest(tmp_path, HUB_PROFILES)
    for cmd in (["switch", "q4"], ["load", "q4"], ["load", "q8", "q4"]):
        out = llmctl(*cmd, "--manifest", str(path))
        assert out.returncode == 2, (cmd, out.stderr)
        assert "not downloaded yet" in out.stderr and "llmctl pull q" in out.stderr
        assert "Traceback" not in out.stderr
    as_json = llmctl("switch", "q4", "--manifest", str(path), "--json")
    assert json.loads(as_json.stdout)["error"]["message"].startswith("profile 'q4'")
    assert not list((tmp_path / "llama-cache").rglob("*.gguf"))


def test_an_interrupted_pull_is_resumed_and_verified(hub: FakeHub, tmp_path: Path) -> None:
    path = manifest(tmp_path, HUB_PROFILES)
    size = (tmp_path / "repo" / "Tiny-F16.gguf").stat().st_size
    # past huggingface_hub's first 10 MiB write, so that part of the file is on disk
    assert size > 11 * MiB
    hub.cut_after, hub.cut_once = size - MiB // 2, True
    first = llmctl("pull", "f16", "--manifest", str(path))
    assert first.returncode != 0 and "Traceback" not in first.stderr
    assert "HTTP 503" in first.stderr
    assert "run the pull again: it continues" in first.stderr
    [partial] = list((tmp_path / "llama-cache").rglob("*.incomplete"))
    kept = partial.stat().st_size
    assert 0 < kept < size
    hub.down = False  # the hub is back
    second = llmctl("pull", "f16", "--manifest", str(path), "--json")
    assert second.returncode == 0, second.stderr
    [f] = json.loads(second.stdout)["files"]
    assert f["downloaded"] is True
    # the second request asked only for the rest
    assert hub.gets("Tiny-F16.gguf")[-1].range == f"bytes={kept}-"
    assert not partial.exists()
    import hashlib

    want = hashlib.sha256((tmp_path / "repo" / "Tiny-F16.gguf").read_bytes()).hexdigest()
    assert f["sha256"] == want
    assert hashlib.sha256(Path(f["path"]).read_bytes()).hexdigest() == want


def test_init_from_a_hub_reference(hub: FakeHub, tmp_path: Path) -> None:
    out = tmp_path / "new.yaml"
    res = llmctl("init", "hf://org/tiny-GGUF:Q8_0", "-o", str(out), "--json")
    assert res.returncode == 0, res.stderr
    [p] = json.loads(res.stdout)["profiles"]
    assert p["model"] == "hf://org/tiny-GGUF:Q8_0" and p["profile"] == "tiny-q8_0"
    assert 'model: "hf://org/tiny-GGUF:Q8_0"' in out.read_text()
    assert not list((tmp_path / "llama-cache").rglob("*.gguf"))  # the header only
    est = llmctl("estimate", "tiny-q8_0", "--manifest", str(out))
    assert est.returncode == 0, est.stdout + est.stderr
    bad = llmctl("init", "hf://org/nope-GGUF", "-o", str(tmp_path / "x.yaml"))
    assert bad.returncode != 0 and "no such repo" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "x.yaml").exists()


def test_switch_to_a_pulled_hub_profile_runs_the_real_server(
    hub: FakeHub, tmp_path: Path, llama_server_bin: Path, free_port: int
) -> None:
    local = write_tiny_model(tmp_path / "local.gguf")
    path = manifest(
        tmp_path,
        f"  here:\n    model: {local}\n    ctx_size: 512\n" + HUB_PROFILES,
    )
    path.write_text(
        path.read_text().replace(
            "version: 1\n",
            f"version: 1\nserver: {{binary: {llama_server_bin}, port: {free_port}}}\n",
        )
    )
    mf = ["--manifest", str(path)]
    try:
        assert llmctl("switch", "here", *mf).returncode == 0
        # not pulled: refused before the running server is touched
        refused = llmctl("switch", "q4", *mf, "--json")
        assert refused.returncode == 2
        assert "llmctl pull q4" in json.loads(refused.stdout)["error"]["hint"]
        [server] = json.loads(llmctl("ps", "--json").stdout)["servers"]
        assert server["profile"] == "here" and server["phase"] == "ready"
        # --pull downloads it first, then runs the file itself (-m), not llama-server's -hf
        out = llmctl("switch", "q4", "--pull", *mf, "--json")
        assert out.returncode == 0, out.stdout + out.stderr
        assert json.loads(out.stdout)["ready"] is True
        [server] = json.loads(llmctl("ps", "--json").stdout)["servers"]
        argv = server["argv"]
        assert server["profile"] == "q4" and "-hf" not in argv
        model = Path(argv[argv.index("-m") + 1])
        assert model.name == "Tiny-Q4_K_M.gguf" and str(tmp_path / "llama-cache") in str(model)
        # pulled already: a switch back and forth needs no --pull and nothing of the hub
        before = len(hub.seen)
        assert llmctl("switch", "here", *mf).returncode == 0
        assert llmctl("switch", "q4", *mf).returncode == 0
        assert len(hub.seen) == before
    finally:
        assert llmctl("stop").returncode == 0


def _hub_imports(*args: str) -> list[str]:
    """The modules of the hub (llmctl.hub, huggingface_hub, httpx) `llmctl ARGS` imports."""
    found = imported_modules(*args)
    return sorted(m for m in found if m.startswith(("llmctl.hub", "huggingface_hub", "httpx")))


def test_everyday_commands_import_nothing_of_the_hub(hub: FakeHub, tmp_path: Path) -> None:
    local = write_tiny_model(tmp_path / "local.gguf")
    plain = manifest(tmp_path, f"  here:\n    model: {local}\n")
    plain.write_text(
        plain.read_text().replace("version: 1\n", "version: 1\nserver: {binary: /nonexistent}\n")
    )
    mf = ["--manifest", str(plain)]
    llmctl("command", "here", *mf)  # validated once; the cache answers after
    for args in (["status"], ["ps"], ["command", "here", *mf], ["switch", "here", *mf]):
        assert _hub_imports(*args) == [], args
    # a pulled hub model: found in the cache's folders, without huggingface_hub or httpx
    hubs = tmp_path / "hub.yaml"
    hubs.write_text(f"version: 1\nserver: {{binary: /nonexistent}}\nprofiles:\n{HUB_PROFILES}")
    assert llmctl("pull", "q8", "--manifest", str(hubs)).returncode == 0
    for args in (["command", "q8"], ["switch", "q8"], ["switch", "q4"], ["lint"]):
        out = _hub_imports(*args, "--manifest", str(hubs))
        assert not [m for m in out if m.startswith(("huggingface_hub", "httpx"))], (args, out)


def test_measuring_a_hub_profile_not_pulled_is_refused(hub: FakeHub, tmp_path: Path) -> None:
    path = manifest(tmp_path, HUB_PROFILES)
    for flag in ("--measure", "--engine"):
        out = llmctl("estimate", "q4", flag, "--manifest", str(path))
        assert out.returncode == 2 and "llmctl pull q4" in out.stderr, (flag, out.stderr)
        assert "Traceback" not in out.stderr
    assert not list((tmp_path / "llama-cache").rglob("*.gguf"))
    explain = llmctl("estimate", "q4", "--explain", "--manifest", str(path))
    assert explain.returncode == 0, explain.stdout + explain.stderr


def test_a_split_model_and_a_revision_pin_in_profiles(hub: FakeHub, tmp_path: Path) -> None:
    repo = hub.add("org/split-GGUF", tmp_path / "split")
    path = manifest(
        tmp_path,
        "  big:\n    model: hf://org/split-GGUF:Q4_K_M\n"
        f"  pinned:\n    model: hf://org/tiny-GGUF@{hub.repos['org/tiny-GGUF'].commit}:Q8_0\n"
        "  badrev:\n    model: hf://org/tiny-GGUF@v9:Q8_0\n",
    )
    mf = ["--manifest", str(path)]
    est = llmctl("estimate", "big", "pinned", *mf, "--json")
    assert est.returncode == 0, est.stdout + est.stderr
    bad = llmctl("estimate", "badrev", *mf)
    assert bad.returncode == 1 and "no such revision" in bad.stdout
    assert llmctl("pull", "big", *mf).returncode == 0
    assert llmctl("pull", "pinned", *mf).returncode == 0
    argv = json.loads(llmctl("command", "big", *mf, "--json").stdout)["argv"]
    first = Path(argv[argv.index("-m") + 1])
    assert first.name == "Big-Q4_K_M-00001-of-00002.gguf" and first.is_file()
    argv = json.loads(llmctl("command", "pinned", *mf, "--json").stdout)["argv"]
    assert repo.commit != hub.repos["org/tiny-GGUF"].commit
    assert hub.repos["org/tiny-GGUF"].commit in argv[argv.index("-m") + 1]
    # a split model with a part missing is not pulled
    (first.parent / "Big-Q4_K_M-00002-of-00002.gguf").unlink()
    argv = json.loads(llmctl("command", "big", *mf, "--json").stdout)["argv"]
    assert "-hf" in argv and "-m" not in argv


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


def test_a_pulled_model_runs_with_its_mmproj_sibling(
    hub: FakeHub, tmp_path: Path, llama_server_bin: Path
) -> None:
    """A repo with a quant and its projector (a real CLIP GGUF that llama-server loads): the
    estimate counts the projector from its remote header, `pull` fetches both, and the real
    llama-server runs the pair with vision on."""
    vision = tmp_path / "vision"
    vision.mkdir()
    text = write_tiny_model(vision / "Eye-Q4_K_M.gguf", arch="gemma3")
    eye = ProjectorShape(
        "mmproj-Eye-F16", "a tiny SigLIP", "gemma3", "eye", image_size=112, patch_size=14,
        n_embd=64, n_ff=128, n_head=2, n_block=1, projection_dim=256,
    )  # fmt: skip
    projector = write_projector(vision, eye)
    hub.add("org/eye-GGUF", vision)
    own = write_tiny_model(tmp_path / "own-mmproj.gguf")
    port = free_port()
    path = manifest(
        tmp_path,
        "  eye:\n    model: hf://org/eye-GGUF:Q4_K_M\n    ctx_size: 512\n"
        f"  mine:\n    model: hf://org/eye-GGUF:Q4_K_M\n    mmproj: {own}\n",
        gpu=f"server: {{binary: {llama_server_bin}, port: {port}}}\n",
    )
    mf = ["--manifest", str(path)]
    est = llmctl("estimate", "eye", "--json", *mf)
    assert est.returncode == 0, est.stderr
    (row,) = json.loads(est.stdout)
    assert row["mmproj"]["weights_bytes"] > 0 and row["mmproj"]["exact"], row["mmproj"]
    assert not (tmp_path / "llama-cache").exists() or not any((tmp_path / "llama-cache").iterdir())
    pulled = llmctl("pull", "eye", *mf, "--json")
    assert pulled.returncode == 0, pulled.stderr
    files = {f["file"]: f["path"] for f in json.loads(pulled.stdout)["files"]}
    assert list(files) == ["Eye-Q4_K_M.gguf", "mmproj-Eye-F16.gguf"]
    assert Path(files["mmproj-Eye-F16.gguf"]).read_bytes() == projector.read_bytes()
    assert Path(files["Eye-Q4_K_M.gguf"]).stat().st_size == text.stat().st_size
    argv = json.loads(llmctl("command", "eye", *mf, "--json").stdout)["argv"]
    assert Path(argv[argv.index("--mmproj") + 1]).name == "mmproj-Eye-F16.gguf"
    try:
        ran = llmctl("switch", "eye", *mf)
        assert ran.returncode == 0, ran.stdout + ran.stderr
        props = httpx.get(f"http://127.0.0.1:{port}/props", timeout=10).json()
        assert props["modalities"]["vision"] is True, props.get("modalities")
    finally:
        llmctl("stop")
    argv = json.loads(llmctl("command", "mine", *mf, "--json").stdout)["argv"]
    assert argv[argv.index("--mmproj") + 1] == str(own)  # the profile's own projector wins
    assert argv.count("--mmproj") == 1
