"""keep_kv against the REAL llama-server: slots saved before an unload, restored after the reload,
and every bad file (truncated, another launch's, refused by llama-server, a full disk) dropped."""

from __future__ import annotations

import json
import os
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

import processes
from llmctl import paths
from llmctl.supervisor.kvcache.files import (
    file_sha256,
    profile_folder,
    read_index,
    saved,
    write_index,
)
from llmctl.supervisor.launch import KeepKv, LaunchSpec
from llmctl.supervisor.lifecycle import Supervisor
from llmctl.supervisor.results import Event
from supervisor_helpers import llama_pids, real_spec

LIMITS = KeepKv(max_bytes=1 << 30, total_bytes=1 << 31, max_age_s=3600, timeout_s=60)
PROMPT = "The quick brown fox jumps over the lazy dog. " * 12  # ~540 byte tokens


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from llmctl.testing.testmodels import write_tiny_model

    folder = tmp_path_factory.mktemp("kv-models")
    a = write_tiny_model(folder / "a.gguf", arch="llama")
    b = write_tiny_model(folder / "b.gguf", arch="llama", seed=1)
    return a, b


def spec(binary: Path, model: Path, port: int, profile: str, keep: bool = True) -> LaunchSpec:
    return real_spec(binary, model, port, profile, ctx_size=1024, keep_kv=LIMITS if keep else None)


def complete(url: str, prompt: str) -> dict[str, int]:
    body = json.dumps({"prompt": prompt, "n_predict": 2, "temperature": 0}).encode()
    req = urllib.request.Request(
        f"{url}/completion", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        timings: dict[str, int] = json.loads(resp.read())["timings"]
        return timings


@pytest.fixture
def sup(llama_server_bin: Path) -> Iterator[Supervisor]:
    s = Supervisor(paths.state_dir(), lock_timeout=60)
    try:
        yield s
    finally:
        s.stop()
        assert llama_pids(llama_server_bin) == []


def kv_messages(events: list[Event]) -> list[str]:
    return [e.message for e in events if e.kind == "kv"]


def test_swap_away_and_back_keeps_the_prompt_cache(
    sup: Supervisor, llama_server_bin: Path, models: tuple[Path, Path]
) -> None:
    a = spec(llama_server_bin, models[0], processes.free_port(), "a")
    b = spec(llama_server_bin, models[1], processes.free_port(), "b", keep=False)
    assert sup.switch(a).ready
    first = complete(a.url, PROMPT)
    assert first["cache_n"] == 0 and first["prompt_n"] > 500

    events: list[Event] = []
    assert sup.switch(b, on_event=events.append).ready
    [said] = kv_messages(events)
    assert said.startswith("profile 'a': saved the KV cache of 1 slot(s)")
    [entry] = sup.status().kv_saved
    assert entry["profile"] == "a" and entry["tokens"] >= first["prompt_n"]
    assert entry["bytes"] == (profile_folder(sup.state_dir, "a") / "slot0.bin").stat().st_size

    events.clear()
    assert sup.switch(a, on_event=events.append).ready
    [said] = kv_messages(events)
    assert said.startswith("profile 'a': restored the KV cache of 1 slot(s)")
    # the follow-up turn reuses the whole prompt instead of processing it again
    follow = complete(a.url, PROMPT + " And then?")
    assert follow["cache_n"] >= first["prompt_n"] - 1
    assert follow["prompt_n"] < 20

    out = sup.stop(forget=True)
    assert out.stopped and out.forgotten[0] == 1
    assert sup.status().kv_saved == []
    assert not profile_folder(sup.state_dir, "a").exists()


def _saved_once(sup: Supervisor, a: LaunchSpec) -> Path:
    assert sup.switch(a).ready
    complete(a.url, PROMPT)
    sup.stop()
    folder = profile_folder(sup.state_dir, "a")
    assert (folder / "slot0.bin").is_file()
    return folder


def _reload(sup: Supervisor, a: LaunchSpec) -> tuple[str, dict[str, int]]:
    events: list[Event] = []
    result = sup.switch(a, on_event=events.append)
    assert result.ready, result.error
    [said] = kv_messages(events)
    return said, complete(a.url, PROMPT)


def test_truncated_file_is_removed_and_the_load_goes_on(
    sup: Supervisor, llama_server_bin: Path, models: tuple[Path, Path]
) -> None:
    a = spec(llama_server_bin, models[0], processes.free_port(), "a")
    folder = _saved_once(sup, a)
    blob = (folder / "slot0.bin").read_bytes()
    (folder / "slot0.bin").write_bytes(blob[: len(blob) // 2])
    said, timings = _reload(sup, a)
    assert "slot 0 removed, not restored: its file is truncated" in said
    assert timings["cache_n"] == 0
    assert not (folder / "slot0.bin").exists()
    assert saved(sup.state_dir) == []


def test_a_flipped_byte_is_not_restored_and_the_load_goes_on(
    sup: Supervisor, llama_server_bin: Path, models: tuple[Path, Path]
) -> None:
    """The same size, one byte changed: before, llama-server restored it without a word."""
    a = spec(llama_server_bin, models[0], processes.free_port(), "a")
    folder = _saved_once(sup, a)
    blob = bytearray((folder / "slot0.bin").read_bytes())
    blob[len(blob) // 2] ^= 0x01
    (folder / "slot0.bin").write_bytes(bytes(blob))
    said, timings = _reload(sup, a)
    assert "slot 0 removed, not restored: its content changed since it was saved" in said
    assert "profile 'a'" in said and str(folder / "slot0.bin") in said
    assert timings["cache_n"] == 0  # the server answers, from a cold cache
    assert not (folder / "slot0.bin").exists()
    assert saved(sup.state_dir) == []


def test_file_of_another_model_build_is_removed(
    sup: Supervisor, llama_server_bin: Path, models: tuple[Path, Path], tmp_path: Path
) -> None:
    # the same shapes, rewritten: llama-server alone would restore it without a word
    model = tmp_path / "a.gguf"
    model.write_bytes(models[0].read_bytes())
    a = replace(spec(llama_server_bin, model, processes.free_port(), "a"))
    a = replace(a, argv=tuple(str(model) if x == str(models[0]) else x for x in a.argv))
    folder = _saved_once(sup, a)
    os.utime(model, ns=(1, 1))
    said, timings = _reload(sup, a)
    assert "saved by another model file, llama-server build or cache setting" in said
    assert timings["cache_n"] == 0
    assert not (folder / "slot0.bin").exists()


def test_file_llama_server_refuses_is_removed(
    sup: Supervisor, llama_server_bin: Path, models: tuple[Path, Path]
) -> None:
    a = spec(llama_server_bin, models[0], processes.free_port(), "a")
    folder = _saved_once(sup, a)
    size = (folder / "slot0.bin").stat().st_size
    (folder / "slot0.bin").write_bytes(b"\xff" * size)  # right size, not a slot file
    # its checksum recorded as if llama-server had written it so: llama-server itself refuses
    index = read_index(folder)
    assert index is not None
    index.slots[0].sha256 = file_sha256(folder / "slot0.bin")
    write_index(folder, index)
    said, timings = _reload(sup, a)
    assert "slot 0 removed, not restored: llama-server could not restore it: HTTP 400" in said
    assert timings["cache_n"] == 0
    assert not (folder / "slot0.bin").exists()
    index = read_index(folder)
    assert index is not None and index.slots == {}


def test_full_disk_skips_the_save_and_the_unload_goes_on(
    sup: Supervisor, llama_server_bin: Path, models: tuple[Path, Path]
) -> None:
    a = spec(llama_server_bin, models[0], processes.free_port(), "a")
    assert sup.switch(a).ready
    complete(a.url, PROMPT)
    folder = profile_folder(sup.state_dir, "a")
    # llama-server writes the save under this name: every write there fails with ENOSPC
    (folder / "slot0.saving").symlink_to("/dev/full")
    events: list[Event] = []
    out = sup.stop(on_event=events.append)
    assert out.stopped
    [said] = kv_messages(events)
    assert "slot 0 not saved: HTTP 500: Unable to save slot" in said
    assert sorted(p.name for p in folder.iterdir()) == ["index.json"]
    assert saved(sup.state_dir) == []


def test_router_saves_on_ttl_unload_and_on_sigterm_and_restores_on_demand(
    tmp_path: Path, llama_server_bin: Path, models: tuple[Path, Path], free_port: int
) -> None:
    import httpx

    from serving import llama_pids as served_pids
    from serving import start_serve, stop_serve

    manifest = tmp_path / "profiles.yaml"
    manifest.write_text(
        f"version: 1\nserver: {{binary: {llama_server_bin}, port: {processes.free_port()}}}\n"
        f"profiles:\n  kept:\n    model: {models[0]}\n    ctx_size: 1024\n    parallel: 1\n"
        "    keep_kv: 64MiB\n    ttl: 1s\n"
    )
    served = start_serve(manifest, free_port, tmp_path)
    try:
        with httpx.Client(base_url=served.url, timeout=60) as client:
            body = {"model": "kept", "prompt": PROMPT, "max_tokens": 2, "temperature": 0}
            assert client.post("/v1/completions", json=body).status_code == 200

            def status() -> dict[str, object]:
                data: dict[str, object] = client.get("/models/status").json()
                return data

            # the idle unload (ttl) saves the slot first
            deadline = time.monotonic() + 60
            while status()["server"]["running"] and time.monotonic() < deadline:  # type: ignore[index]
                time.sleep(0.05)
            [entry] = status()["kv_saved"]  # type: ignore[misc]
            assert entry["profile"] == "kept" and entry["tokens"] > 500
            assert "profile 'kept': saved the KV cache of 1 slot(s)" in served.logs()

            body["prompt"] = PROMPT + " And then?"
            reply = client.post("/v1/completions", json=body).json()
            assert "profile 'kept': restored the KV cache of 1 slot(s)" in served.logs()
            assert reply["timings"]["cache_n"] > 500
        stop_serve(served)
        # SIGTERM: the router stops the server it started, saving its slot again
        assert served.logs().count("profile 'kept': saved the KV cache") == 2
        [entry] = saved(paths.state_dir())
        assert entry["tokens"] > 500
    finally:
        if served.proc.poll() is None:
            stop_serve(served)
        Supervisor(paths.state_dir(), lock_timeout=30).stop(forget=True)
    assert served_pids(llama_server_bin) == []


def test_clients_cannot_save_or_restore_the_slot_files_of_a_keep_kv_profile(
    tmp_path: Path, llama_server_bin: Path, models: tuple[Path, Path], free_port: int
) -> None:
    """300 client saves through the router leave llmctl's slot folder as it was (before: 161 MB
    written past keep_kv_total, index.json overwritten); erase still works; a profile without
    keep_kv keeps llama-server's own slot actions."""
    import httpx

    from serving import start_serve, stop_serve

    manifest = tmp_path / "profiles.yaml"
    manifest.write_text(
        f"version: 1\nserver: {{binary: {llama_server_bin}, port: {processes.free_port()},"
        " keep_kv_total: 1MiB}\n"
        f"profiles:\n  kept:\n    model: {models[0]}\n    ctx_size: 1024\n    parallel: 1\n"
        "    keep_kv: 64KiB\n"
    )
    served = start_serve(manifest, free_port, tmp_path)
    try:
        with httpx.Client(base_url=served.url, timeout=60) as client:
            body = {"model": "kept", "prompt": PROMPT, "max_tokens": 2, "temperature": 0}
            assert client.post("/v1/completions", json=body).status_code == 200
            folder = paths.state_dir()
            before = sorted(p.name for p in folder.rglob("*") if p.is_file())
            for i in range(300):
                r = client.post(
                    "/slots/0?action=save&model=kept",
                    json={"model": "kept", "filename": "index.json" if i % 2 else f"x{i}.bin"},
                )
                assert r.status_code == 403, r.text
                assert r.json()["error"]["code"] == "slot_action_refused"
                assert "keep_kv" in r.json()["error"]["message"]
            r = client.post("/slots/0?action=restore", json={"model": "kept", "filename": "a"})
            assert r.status_code == 403
            r = client.post("/slots/0?action=SAVE", json={"model": "kept", "filename": "a"})
            assert r.status_code == 403
            after = sorted(p.name for p in folder.rglob("*") if p.is_file())
            assert after == before
            erase = client.post("/slots/0?action=erase", json={"model": "kept"})
            assert erase.status_code == 200, erase.text
    finally:
        stop_serve(served)
        Supervisor(paths.state_dir(), lock_timeout=30).stop(forget=True)
