"""Several real llama-servers at once on the CPU device, with a budget small enough that
co-residency, eviction and refusal happen for real (tiny models: KV cache sizes set by ctx)."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmctl.errors import StateDirError
from llmctl.supervisor import lifecycle, procs
from llmctl.supervisor.lifecycle import Supervisor
from llmctl.supervisor.state import state_dir_error
from llmctl.testing.testmodels import write_tiny_model
from processes import free_port_range, llmctl, ps
from supervisor_helpers import fake_pids, fake_spec, kill_fakes

# Planned CPU bytes of the tiny llama at these contexts: about a 16 MiB, b 24 MiB, c 40 MiB.
BUDGET = "70MiB"


@pytest.fixture
def placed(
    tmp_path: Path, llama_server_bin: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    model = write_tiny_model(tmp_path / "tiny.gguf")
    base = free_port_range(6)
    path = tmp_path / "profiles.yaml"
    path.write_text(
        f"""version: 1
server:
  ports: {base}-{base + 5}
gpu:
  - {{name: CPU, vram: {BUDGET}, headroom: 0}}
profiles:
  a: {{model: {model}, ctx_size: 4096}}
  b: {{model: {model}, ctx_size: 8192}}
  c: {{model: {model}, ctx_size: 16384}}
  huge: {{model: {model}, ctx_size: 500000, parallel: 1}}
"""
    )
    monkeypatch.setenv("LLMCTL_MANIFEST", str(path))
    monkeypatch.setenv("LLMCTL_LLAMA_SERVER", str(llama_server_bin))
    try:
        yield path
    finally:
        llmctl("unload", "--all")


def test_coresidency_eviction_refusal_and_unload_all(placed: Path) -> None:
    out = llmctl("load", "a", "b", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    data = json.loads(out.stdout)
    assert [p["decision"]["evict"] for p in data["profiles"]] == [[], []]
    running = ps()
    assert set(running) == {"a", "b"}
    assert all(s["healthy"] for s in running.values())
    assert running["a"]["port"] != running["b"]["port"]
    assert running["a"]["devices"] == ["CPU"]
    b_pid = running["b"]["pid"]

    # status: the newest in full, every server listed
    status = llmctl("status", "--json")
    assert status.returncode == 0
    listed = json.loads(status.stdout)["servers"]
    assert [x["profile"] for x in listed] == ["a", "b"] and all(x["healthy"] for x in listed)
    text = llmctl("status").stdout
    assert "profile  b" in text and "also running: a (pid" in text

    # the dry run says what a load would do, and does nothing
    dry = llmctl("load", "c", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stdout
    decision = json.loads(dry.stdout)["profiles"][0]["decision"]
    assert decision["action"] == "start" and decision["evict"] == ["a"]
    assert set(ps()) == {"a", "b"}

    # c does not fit beside both: the least recently loaded (a) goes, b keeps running
    out = llmctl("load", "c")
    assert out.returncode == 0, out.stderr
    assert "stopped profile 'a'" in out.stderr
    running = ps()
    assert set(running) == {"b", "c"} and running["b"]["pid"] == b_pid
    assert all(s["healthy"] for s in running.values())

    # cannot fit even alone: refused before anything stops, naming the device and shortfall
    out = llmctl("load", "huge")
    assert out.returncode == 1
    assert "does not fit even alone: CPU needs" in out.stderr and "short" in out.stderr
    assert "llmctl fit huge" in out.stderr
    assert set(ps()) == {"b", "c"}
    js = llmctl("load", "huge", "--json")
    err = json.loads(js.stdout)["profiles"][0]["error"]
    assert err["type"] == "PlacementRefused"
    assert err["decision"]["shortfall"][0]["device"] == "CPU"

    # devices shows what is placed where
    dev = json.loads(llmctl("devices", "--json").stdout)["devices"]
    cpu = next(d for d in dev if d["name"] == "CPU")
    assert set(cpu["placed"]) == {"b", "c"} and cpu["budget_bytes"] == 70 * 1024**2

    # unload one: only it stops
    out = llmctl("unload", "b")
    assert out.returncode == 0 and "unloaded 'b'" in out.stdout
    assert set(ps()) == {"c"} and not procs.is_alive(int(str(b_pid)))

    pids = [int(str(s["pid"])) for s in ps().values()]
    out = llmctl("unload", "--all", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["unloaded"][0]["profiles"] == ["c"]
    assert ps() == {} and not any(procs.is_alive(p) for p in pids)


def test_pinned_and_group(placed: Path) -> None:
    text = placed.read_text()
    text = text.replace("ctx_size: 8192}", "ctx_size: 8192, pinned: true}")
    text = text.replace("ctx_size: 4096}", "ctx_size: 4096, group: big}")
    text = text.replace("ctx_size: 16384}", "ctx_size: 16384, group: big}")
    placed.write_text(text)
    assert llmctl("load", "b", "a").returncode == 0
    # c shares a's group: a goes although there would be room for both without it
    out = llmctl("load", "c", "--json")
    assert out.returncode == 0, out.stdout
    assert json.loads(out.stdout)["profiles"][0]["decision"]["evict"] == ["a"]
    assert set(ps()) == {"b", "c"}
    # a needs room that only b (pinned) or c (same group, must go anyway) could free
    out = llmctl("load", "a", "--json")
    assert json.loads(out.stdout)["profiles"][0]["decision"]["evict"] == ["c"]
    assert set(ps()) == {"a", "b"}


def test_switch_keeps_its_meaning(placed: Path) -> None:
    assert llmctl("load", "a", "b").returncode == 0
    out = llmctl("switch", "c", "--quiet")
    assert out.returncode == 0, out.stderr
    assert set(ps()) == {"c"}


def test_lost_state_file_with_several_servers_is_repaired(placed: Path) -> None:
    assert llmctl("load", "a", "b").returncode == 0
    pids = [int(str(s["pid"])) for s in ps().values()]
    state = Path(os.environ["LLMCTL_STATE_DIR"]) / "state.json"
    state.write_text("{not json")
    out = llmctl("unload", "--all")
    assert out.returncode == 0
    assert "set aside" in out.stderr or "set aside" in out.stdout
    assert not any(procs.is_alive(p) for p in pids)


def test_nothing_stops_when_the_state_cannot_be_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sup = Supervisor(tmp_path / "state", lock_timeout=5)
    p1, p2 = free_port_range(2), free_port_range(2)
    try:
        first = sup.switch(fake_spec(p1, "alpha"))
        assert first.ready
        real_check = lifecycle.check_writable

        def full_disk(state_dir: Path, probe_bytes: int = 0, *, sync: bool = True) -> None:
            raise state_dir_error(state_dir, OSError(errno.ENOSPC, "No space left"), "write")

        monkeypatch.setattr(lifecycle, "check_writable", full_disk)
        with pytest.raises(StateDirError, match="the disk is full"):
            sup.switch(fake_spec(p2, "beta"))
        assert procs.is_alive(first.pid or 0)  # alpha still runs
        with pytest.raises(StateDirError):
            sup.load(fake_spec(p2, "beta"))
        assert procs.is_alive(first.pid or 0)
        monkeypatch.setattr(lifecycle, "check_writable", real_check)
        loaded = sup.load(fake_spec(p2, "beta"))
        assert loaded.ready
        servers, _ = sup.ps(check_health=False)
        assert {s.profile for s in servers} == {"alpha", "beta"}
        sup.stop()
        assert fake_pids() == []
    finally:
        kill_fakes()


def test_profiles_named_together_are_one_set(placed: Path) -> None:
    """`load a b c` where c fits only without a: refused before anything loads, and the dry
    run says the same; before, c unloaded a, the command exited 0 and said all were ready."""
    dry = llmctl("load", "a", "b", "c", "--dry-run", "--json")
    assert dry.returncode == 1, dry.stdout
    decisions = [p["decision"] for p in json.loads(dry.stdout)["profiles"]]
    assert [d["action"] for d in decisions] == ["start", "start", "refuse"]
    assert "named in the same command" in decisions[-1]["reason"]
    out = llmctl("load", "a", "b", "c")
    assert out.returncode == 1
    assert "profile 'c'" in out.stderr and "'a', 'b' named in the same command" in out.stderr
    assert ps() == {}  # nothing loaded, nothing stopped
    # a set that fits runs together, and each member stays
    out = llmctl("load", "b", "c", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    assert set(ps()) == {"b", "c"}


def test_stop_signals_every_server_before_waiting_for_any(placed: Path) -> None:
    """Several servers stop together: one grace period, not one per server (the order of the
    events shows it: every "stopping" comes before the first "stopped")."""
    from llmctl import paths
    from llmctl.supervisor.lifecycle import Supervisor
    from llmctl.supervisor.results import Event

    assert llmctl("load", "a", "b").returncode == 0
    events: list[Event] = []
    result = Supervisor(paths.state_dir(), lock_timeout=30).stop(on_event=events.append)
    assert result.stopped and sorted(result.profiles) == ["a", "b"]
    kinds = [e.kind for e in events if e.kind in ("stopping", "stopped")]
    assert kinds == ["stopping", "stopping", "stopped", "stopped"], events
    assert ps() == {}
