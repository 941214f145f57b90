"""keep_kv: the pure decisions (what to save, what may be restored, the launch key), the manifest
option, status output, and the faults a real server cannot produce on demand (FAKE llama-server:
it dies in the middle of a save, or never answers one)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmctl import paths
from llmctl.cli import build_app
from llmctl.cli.status import NOT_RUNNING, current_status, status_text
from llmctl.supervisor.kvcache.decide import SlotTokens, check_entry, plan_saves
from llmctl.supervisor.kvcache.files import (
    Index,
    Saved,
    claim,
    forget,
    profile_folder,
    read_index,
    saved,
    write_index,
)
from llmctl.supervisor.kvcache.key import cache_flags, launch_key
from llmctl.supervisor.launch import KeepKv
from llmctl.supervisor.lifecycle import Supervisor
from llmctl.supervisor.results import Event, Status
from supervisor_helpers import fake_pids, fake_spec, kill_fakes

MiB = 1024**2
LIMITS = KeepKv(max_bytes=100 * MiB, total_bytes=300 * MiB, max_age_s=3600, timeout_s=10)


def entry(slot: int, size: int, at: float = 0.0, tokens: int = 100) -> Saved:
    return Saved(slot, f"slot{slot}.bin", tokens, size, at)


# --------------------------------------------------------------------------- plan_saves


def test_plan_saves_every_slot_that_holds_tokens_biggest_first() -> None:
    slots = [SlotTokens(0, 10), SlotTokens(1, 0), SlotTokens(2, 30)]
    plan = plan_saves(slots, limits=LIMITS, bytes_per_token=MiB, own={}, others=[], free_disk=None)
    assert plan.save == [2, 0] and plan.skip == [] and plan.evict == []


def test_plan_skips_a_slot_over_the_profile_cap_and_keeps_the_rest() -> None:
    slots = [SlotTokens(0, 150), SlotTokens(1, 60), SlotTokens(2, 50)]
    plan = plan_saves(slots, limits=LIMITS, bytes_per_token=MiB, own={}, others=[], free_disk=None)
    assert plan.save == [1]
    assert [s for s, _ in plan.skip] == [0, 2]
    assert "exceed the profile's keep_kv cap 100.0 MiB" in plan.skip[0][1]


def test_plan_counts_the_file_a_slot_replaces_as_free() -> None:
    plan = plan_saves(
        [SlotTokens(0, 90)],
        limits=LIMITS,
        bytes_per_token=MiB,
        own={0: entry(0, 80 * MiB)},
        others=[],
        free_disk=10 * MiB,
    )
    assert plan.save == [0]


def test_plan_skips_when_the_disk_is_too_full() -> None:
    plan = plan_saves(
        [SlotTokens(0, 50)], limits=LIMITS, bytes_per_token=MiB, own={}, others=[], free_disk=MiB
    )
    assert plan.save == [] and "free on the disk" in plan.skip[0][1]


def test_plan_evicts_other_profiles_oldest_first_for_the_folder_cap() -> None:
    others = [("x", entry(0, 100 * MiB, at=5)), ("y", entry(0, 100 * MiB, at=1))]
    others.append(("z", entry(1, 90 * MiB, at=3)))
    plan = plan_saves(
        [SlotTokens(0, 80)],
        limits=LIMITS,
        bytes_per_token=MiB,
        own={},
        others=others,
        free_disk=None,
    )
    assert plan.save == [0] and plan.evict == [("y", 0)]


def test_plan_never_evicts_for_a_save_that_cannot_fit_anyway() -> None:
    small = replace(LIMITS, total_bytes=50 * MiB)
    plan = plan_saves(
        [SlotTokens(0, 80)],
        limits=replace(small, max_bytes=100 * MiB),
        bytes_per_token=MiB,
        own={},
        others=[("y", entry(0, 10 * MiB))],
        free_disk=None,
    )
    assert plan.save == [] and plan.evict == []
    assert "server.keep_kv_total" in plan.skip[0][1]


def test_plan_without_a_size_guess_saves_and_checks_afterwards() -> None:
    plan = plan_saves(
        [SlotTokens(0, 10**9)], limits=LIMITS, bytes_per_token=None, own={}, others=[], free_disk=0
    )
    assert plan.save == [0]


# --------------------------------------------------------------------------- check_entry


@pytest.mark.parametrize(
    ("key_ok", "size", "now", "reason"),
    [
        (True, 1000, 10.0, None),
        (False, 1000, 10.0, "another model file, llama-server build or cache setting"),
        (True, None, 10.0, "missing"),
        (True, 500, 10.0, "truncated or altered (500 bytes, 1000 written)"),
        (True, 1000, 7200.0, "older than server.keep_kv_max_age"),
    ],
)
def test_check_entry(key_ok: bool, size: int | None, now: float, reason: str | None) -> None:
    why = check_entry(entry(0, 1000), key_ok=key_ok, size_on_disk=size, now=now, max_age_s=3600)
    assert (why is None) if reason is None else (why is not None and reason in why)


# --------------------------------------------------------------------------- the launch key


def test_cache_flags_drop_what_cannot_change_the_cache() -> None:
    argv = ["llama-server", "-m", "m.gguf", "--port", "1", "-t", "4", "--metrics", "-c", "8192"]
    argv += ["--temp=0.2", "-ctk", "q8_0", "--alias", "a,b", "--rope-scaling", "yarn"]
    assert cache_flags(argv) == [
        "-m",
        "m.gguf",
        "-c",
        "8192",
        "-ctk",
        "q8_0",
        "--rope-scaling",
        "yarn",
    ]


def test_launch_key_follows_model_file_build_and_cache_flags(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + b"\0" * 64)
    binary = tmp_path / "llama-server"
    binary.write_bytes(b"bin")
    base = [str(binary), "-m", str(model), "-c", "4096"]
    key = launch_key(base)
    assert launch_key([*base, "--port", "9", "-t", "2"]) == key
    assert launch_key([*base, "-ctk", "q8_0"]) != key
    (tmp_path / "libllama.so").write_bytes(b"lib")  # a rebuild of the library beside the binary
    assert launch_key(base) != key
    key = launch_key(base)
    model.write_bytes(b"GGUF" + b"\1" * 64)
    assert launch_key(base) != key


def test_profile_folders_are_safe_and_distinct(tmp_path: Path) -> None:
    assert profile_folder(tmp_path, "qwen-8k").name == "qwen-8k"
    weird = [profile_folder(tmp_path, n).name for n in ("a/b", "a_b", "..", "a b", "", "A_b")]
    assert len(set(weird)) == 6 and all("/" not in n and not n.startswith(".") for n in weird)
    # a safe name that looks like another's cleaned name does not share its folder
    cleaned = profile_folder(tmp_path, "a/b").name
    for lookalike in (cleaned, cleaned.replace("~", "-"), cleaned.replace("~", "_"), "a_b"):
        assert profile_folder(tmp_path, lookalike) != profile_folder(tmp_path, "a/b")
    long = "x" * 61
    assert profile_folder(tmp_path, long) != profile_folder(tmp_path, long + "y")


def _old_folder_name(profile: str) -> str:
    """The folder name of the earlier scheme: the name if safe, else cleaned + `-` + 8 hex."""
    import hashlib
    import re

    safe = re.sub(r"[^A-Za-z0-9._-]", "_", profile)[:60]
    if safe != profile or safe.startswith("."):
        safe = f"{safe.lstrip('.')}-{hashlib.sha256(profile.encode()).hexdigest()[:8]}"
    return safe


def test_the_names_that_shared_a_folder_get_two(tmp_path: Path) -> None:
    twin = _old_folder_name("a/b")  # a profile named like the folder the scheme gave `a/b`
    assert _old_folder_name(twin) == twin  # the collision: both were `kv/a_b-<hash>/`
    assert profile_folder(tmp_path, "a/b") != profile_folder(tmp_path, twin)
    # and names that differ only in case, for a file system that ignores it (macOS)
    names = {profile_folder(tmp_path, n).name.lower() for n in ("Qwen", "qwen", "QWEN")}
    assert len(names) == 3


def _write_at(folder: Path, profile: str, tokens: int = 100) -> None:
    folder.mkdir(parents=True)
    (folder / "slot0.bin").write_bytes(b"\0" * 64)
    write_index(folder, Index(profile, "k", {0: Saved(0, "slot0.bin", tokens, 64, time.time())}))


def test_folders_of_the_earlier_naming_are_found_by_their_index(tmp_path: Path) -> None:
    """A folder named by the earlier scheme is moved to the profile's folder at its next launch,
    its saved slots kept; the folder two profiles shared goes to the profile its index names."""
    root = tmp_path / "kv"
    twin = _old_folder_name("a/b")
    _write_at(root / twin, "a/b", tokens=7)  # a/b's files, in the folder the twin also used
    _write_at(root / "Qwen", "Qwen", tokens=9)  # a name now hashed (case)
    assert claim(tmp_path, twin) == profile_folder(tmp_path, twin)
    assert read_index(profile_folder(tmp_path, twin)) is None  # the twin starts cold...
    moved = read_index(profile_folder(tmp_path, "a/b"))
    assert moved is not None and moved.profile == "a/b" and moved.slots[0].tokens == 7  # a/b keeps
    assert (profile_folder(tmp_path, "a/b") / "slot0.bin").exists()
    folder = claim(tmp_path, "Qwen")
    assert folder.name != "Qwen" and not (root / "Qwen").exists()
    index = read_index(folder)
    assert index is not None and index.slots[0].tokens == 9
    assert sorted(s["profile"] for s in saved(tmp_path)) == ["Qwen", "a/b"]


def test_a_stale_duplicate_of_an_earlier_naming_is_removed(tmp_path: Path) -> None:
    _write_at(profile_folder(tmp_path, "a/b"), "a/b", tokens=1)
    _write_at(tmp_path / "kv" / _old_folder_name("a/b"), "a/b", tokens=2)
    folder = claim(tmp_path, "a/b")
    index = read_index(folder)
    assert index is not None and index.slots[0].tokens == 1  # its own folder wins
    assert [p.name for p in (tmp_path / "kv").iterdir()] == [folder.name]


def test_forget_drops_a_profiles_folders_of_any_naming(tmp_path: Path) -> None:
    twin = _old_folder_name("a/b")
    _write_at(tmp_path / "kv" / twin, "a/b")
    assert forget(tmp_path, twin) == (0, 0)  # the twin's name, a/b's files: not the twin's
    assert forget(tmp_path, "a/b") == (1, 64)
    assert saved(tmp_path) == []


# --------------------------------------------------------------------------- manifest


def test_keep_kv_in_the_manifest(tmp_path: Path) -> None:
    from llmctl.manifest.validate import load_manifest
    from llmctl.supervisor.launch import launch_spec

    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    path = tmp_path / "profiles.yaml"
    path.write_text(
        "version: 1\n"
        "server: {keep_kv_total: 1GiB, keep_kv_max_age: 24h, keep_kv_timeout: 5s}\n"
        "profiles:\n"
        f"  on: {{model: {model}, keep_kv: true}}\n"
        f"  capped: {{model: {model}, keep_kv: 2GiB}}\n"
        f"  off: {{model: {model}}}\n"
    )
    m = load_manifest(path)
    on = launch_spec(m, "on").keep_kv
    assert on == KeepKv(8 * 1024**3, 1024**3, 86400.0, 5.0)
    capped = launch_spec(m, "capped").keep_kv
    assert capped is not None and capped.max_bytes == 2 * 1024**3
    off = launch_spec(m, "off")
    assert off.keep_kv is None
    # a launch with --slot-save-path is another configuration
    assert replace(off, keep_kv=on).config_hash != off.config_hash


def test_a_bad_keep_kv_value_names_its_line(tmp_path: Path) -> None:
    from llmctl.errors import ManifestError
    from llmctl.manifest.validate import load_manifest

    path = tmp_path / "profiles.yaml"
    path.write_text("version: 1\nprofiles:\n  a:\n    model: m.gguf\n    keep_kv: lots\n")
    with pytest.raises(ManifestError) as err:
        load_manifest(path)
    text = str(err.value) + " ".join(str(p.message) for p in getattr(err.value, "problems", []))
    problems = getattr(err.value, "problems", [])
    assert any(p.line == 5 and "keep_kv" in (p.message + str(p.hint)) for p in problems), text


# --------------------------------------------------------------------------- status


def _write_saved(state: Path, profile: str, tokens: int, size: int, at: float) -> None:
    folder = profile_folder(state, profile)
    folder.mkdir(parents=True)
    (folder / "slot0.bin").write_bytes(b"\0" * size)
    write_index(folder, Index(profile, "k", {0: Saved(0, "slot0.bin", tokens, size, at)}))


def test_status_lists_saved_caches_when_nothing_runs() -> None:
    import time

    state = paths.state_dir()
    _write_saved(state, "chat", 5000, 2048, time.time() - 90)
    data = current_status()
    assert data["running"] is False
    [item] = data["kv_saved"]
    assert item["profile"] == "chat" and item["tokens"] == 5000 and item["bytes"] == 2048
    assert 89 <= item["age_s"] < 600
    text = status_text(data)
    assert "not running" in text and "chat  slot 0  5000 tokens" in text
    assert Supervisor(state).status().kv_saved == saved(state)


def test_status_json_keys_agree_with_the_fast_path() -> None:
    assert set(Status(running=False).to_json()) == set(NOT_RUNNING)
    assert current_status() == NOT_RUNNING


# --------------------------------------------------------------------------- faults (FAKE server)


@pytest.fixture
def sup() -> Iterator[Supervisor]:
    s = Supervisor(paths.state_dir(), lock_timeout=10)
    try:
        yield s
    finally:
        s.stop(forget=True)
        kill_fakes()
        assert fake_pids() == []


@pytest.mark.parametrize(
    ("mode", "timeout", "said"),
    [
        ("save-crash", 30.0, "slot 0 not saved: the server went away"),
        ("save-hang", 0.5, "slot 0 not saved: no answer within"),
    ],
)
def test_a_save_that_fails_never_keeps_a_file_and_the_unload_goes_on(
    sup: Supervisor, free_port: int, mode: str, timeout: float, said: str
) -> None:
    spec = replace(fake_spec(free_port, "a", mode), keep_kv=replace(LIMITS, timeout_s=timeout))
    folder = profile_folder(sup.state_dir, "a")
    assert sup.switch(spec).ready
    # an older save of this profile stays usable when a new one fails
    (folder / "slot0.bin").write_bytes(b"old")
    rec_key = json.loads((sup.state_dir / "state.json").read_text())["servers"]["a"]["extra"][
        "keep_kv"
    ]["key"]
    write_index(folder, Index("a", rec_key, {0: Saved(0, "slot0.bin", 10, 3, 1.0)}))

    events: list[Event] = []
    out = sup.stop(on_event=events.append)
    assert out.stopped
    messages = [e.message for e in events if e.kind == "kv"]
    assert len(messages) == 1 and said in messages[0], messages
    assert sorted(p.name for p in folder.iterdir()) == ["index.json", "slot0.bin"]
    assert [s["tokens"] for s in saved(sup.state_dir)] == [10]


def test_cli_stop_forget_drops_saved_caches() -> None:
    import time

    from typer.testing import CliRunner

    from llmctl.cli import build_app

    state = paths.state_dir()
    _write_saved(state, "chat", 5000, 2048, time.time())
    result = CliRunner().invoke(build_app(), ["stop", "--json", "--forget"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["stopped"] is False and data["kv_forgotten"] == {"files": 1, "bytes": 2048}
    assert saved(state) == [] and current_status() == NOT_RUNNING
    result = CliRunner().invoke(build_app(), ["stop", "--forget"])
    assert result.exit_code == 0 and "nothing was running" in result.stdout


def test_unload_forget_drops_only_that_profiles_caches_and_ps_lists_them(
    tmp_path: Path,
) -> None:
    import time

    from llmctl.cli.ps import run as ps_run
    from llmctl.cli.unload import fast as unload_fast

    state = paths.state_dir()
    _write_saved(state, "chat", 5000, 2048, time.time())
    _write_saved(state, "coder", 7000, 4096, time.time())
    manifest = tmp_path / "profiles.yaml"
    manifest.write_text(
        "version: 1\nprofiles:\n  chat: {model: /m/chat.gguf}\n  coder: {model: /m/c.gguf}\n"
    )
    result = CliRunner().invoke(build_app(), ["ps", "--json"])
    assert result.exit_code == 0, result.output
    assert [k["profile"] for k in json.loads(result.stdout)["kv_saved"]] == ["chat", "coder"]
    result = CliRunner().invoke(build_app(), ["ps"])
    assert "nothing runs" in result.stdout and "coder  slot 0  7000 tokens" in result.stdout
    # typer and the fast path take --forget; only the named profile's caches go
    result = CliRunner().invoke(
        build_app(), ["unload", "chat", "--forget", "--json", "--manifest", str(manifest)]
    )
    assert result.exit_code == 0, result.output
    [one] = json.loads(result.stdout)["unloaded"]
    assert one["kv_forgotten"] == {"files": 1, "bytes": 2048}
    assert [k["profile"] for k in saved(state)] == ["coder"]
    assert unload_fast(["--all", "--forget", "--quiet"]) == 0
    assert saved(state) == []
    assert ps_run(json_out=True) == 0


def test_a_server_that_dies_while_restoring_fails_the_load_and_loses_the_file(
    sup: Supervisor, free_port: int
) -> None:
    spec = replace(fake_spec(free_port, "a", "restore-crash"), keep_kv=LIMITS)
    folder = profile_folder(sup.state_dir, "a")
    folder.mkdir(parents=True)
    (folder / "slot0.bin").write_bytes(b"x" * 10)
    key = launch_key(spec.argv, spec.env)
    write_index(folder, Index("a", key, {0: Saved(0, "slot0.bin", 5, 10, time.time())}))
    events: list[Event] = []
    result = sup.switch(spec, on_event=events.append)
    assert not result.ready and result.error is not None
    assert "exited with code 3" in result.error.message
    said = [e.message for e in events if e.kind == "kv"]
    assert len(said) == 1 and "could not restore it: the server went away" in said[0]
    assert saved(sup.state_dir) == [] and not (folder / "slot0.bin").exists()
    assert not sup.status().running
    # the next load goes on without the file
    again = sup.switch(replace(spec, argv=(*spec.argv[:-1], "ok")))
    assert again.ready
