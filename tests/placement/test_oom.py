"""Out of memory at load, end to end: a device budget the formula gets wrong on purpose.

The profiles that run out of memory use a FAKE llama-server (tests/fakes/fake_llama_server.py,
$FAKE_LLAMA_OOM_PORTS) that fails with llama.cpp's own out-of-memory lines while another server
answers on one of the given ports, as a card would that the formula overfilled. Their
neighbours are real llama-servers on a tiny model (or fakes, a second run of the same tests).
The placer must unload the next victim, retry once, keep the real need, and never loop.
"""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from llmctl.testing.testmodels import write_tiny_model
from processes import free_port_range, llmctl, ps
from serving import start_serve, stop_serve
from supervisor_helpers import FAKE, kill_fakes

MiB = 1024 * 1024


@dataclass
class Setup:
    manifest: Path
    base: int  # a: base, b: base + 1, pinned: base + 2
    launches: Path  # one line per launch of a FAKE

    def launched(self) -> int:
        return len(self.launches.read_text().split()) if self.launches.exists() else 0


def _floors() -> dict[str, dict[str, int]]:
    """The needs kept after out-of-memory loads, by launch key."""
    import os

    path = Path(os.environ["LLMCTL_STATE_DIR"]) / "engine-plans.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    return {k: v["need_floor"] for k, v in data.items() if "need_floor" in v}


@pytest.fixture(params=["fake", "real"])
def setup(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Setup]:
    """Neighbours a (about 16 MiB planned), b (24 MiB) and a pinned one (16 MiB) on a CPU
    budget of 70 MiB; the `oom*` profiles are the FAKE that fails beside the ports named."""
    model = write_tiny_model(tmp_path / "tiny.gguf")
    launches = tmp_path / "launches"
    if request.param == "real":
        real = request.getfixturevalue("llama_server_bin")
        neighbour = f'exec {real} "$@"'
    else:
        neighbour = f'exec {sys.executable} {FAKE} "$@"'
    wrapper = tmp_path / "llama-server"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'if [ -n "$FAKE_LLAMA_OOM_PORTS" ]; then exec {sys.executable} {FAKE} "$@"; fi\n'
        f"{neighbour}\n"
    )
    wrapper.chmod(0o755)
    base = free_port_range(9)  # the profiles' ports, a spare one, the router's
    a_b = f"{base},{base + 1}"

    def oom(ports: str) -> str:
        return f"env: {{FAKE_LLAMA_OOM_PORTS: '{ports}', FAKE_LLAMA_LAUNCHES: '{launches}'}}"

    path = tmp_path / "profiles.yaml"
    path.write_text(
        f"""version: 1
server:
  binary: {wrapper}
  ports: {base}-{base + 7}
gpu:
  - {{name: CPU, vram: 70MiB, headroom: 0}}
profiles:
  a: {{model: {model}, ctx_size: 4096}}
  b: {{model: {model}, ctx_size: 8192}}
  held: {{model: {model}, ctx_size: 4096, pinned: true}}
  oom: {{model: {model}, ctx_size: 4096, {oom(a_b)}}}
  oom2: {{model: {model}, ctx_size: 8192, {oom(a_b)}}}
  oom-held: {{model: {model}, ctx_size: 4096, {oom(str(base + 2))}}}
  oom-alone: {{model: {model}, ctx_size: 4096, {oom(str(base + 7))}}}
"""
    )
    monkeypatch.setenv("LLMCTL_MANIFEST", str(path))
    try:
        yield Setup(path, base, launches)
    finally:
        llmctl("unload", "--all")
        kill_fakes()


def planned(profile: str) -> int:
    return int(ps()[profile]["planned"]["CPU"])  # type: ignore[index]


def test_the_next_victim_goes_the_retry_succeeds_and_the_need_is_kept(setup: Setup) -> None:
    assert llmctl("load", "a").returncode == 0
    beside = 70 * MiB - planned("a")
    # the formula says `oom` fits beside a (16 + 16 of 70 MiB); the engine runs out of memory
    out = llmctl("load", "oom", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    item = json.loads(out.stdout)["profiles"][0]
    assert item["ok"] and item["decision"]["evict"] == ["a"], item
    assert "ran out of memory on CPU" in item["oom_retry"]["reason"]
    assert item["oom_retry"]["retry"] is True
    assert setup.launched() == 2  # the failed load and the retry: no more
    assert set(ps()) == {"oom"}  # the victim was stopped, the retry runs
    # it was placed by the need the failure showed, and `devices` says so
    cpu = next(d for d in json.loads(llmctl("devices", "--json").stdout)["devices"])
    assert cpu["placed_source"] == {"oom": "measured"}, cpu
    assert f"oom {(beside + MiB) / MiB:.0f} MiB (measured)" in llmctl("devices").stdout
    # the real need: more than what was free beside a
    (floor,) = _floors().values()
    assert floor == {"CPU": beside + MiB}, floor
    # the next placement does not put it beside the same neighbour
    assert llmctl("unload", "oom").returncode == 0
    assert llmctl("load", "a").returncode == 0
    dry = llmctl("load", "oom", "--dry-run", "--json")
    decision = json.loads(dry.stdout)["profiles"][0]["decision"]
    assert decision["evict"] == ["a"] and decision["usage"]["CPU"] == beside + MiB, decision
    out = llmctl("load", "oom")
    assert out.returncode == 0, out.stdout + out.stderr
    assert setup.launched() == 3  # placed right the first time: no out-of-memory load
    row = next(s for s in json.loads(llmctl("ps", "--json").stdout)["servers"])
    assert row["memory_source"] == "measured"


def test_a_second_failure_does_not_loop_and_the_error_names_both_attempts(
    setup: Setup,
) -> None:
    assert llmctl("load", "a", "b").returncode == 0
    beside_b = 70 * MiB - planned("b")
    # oom2 fails while a or b answers: evicting one victim is not enough, and there is no third try
    out = llmctl("load", "oom2")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    (err,) = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert "failed to load twice" in err and "after unloading 'a'" in err, err
    assert err.count("failed to allocate buffer of size") == 2, err
    assert err.endswith("no further retry")
    assert setup.launched() == 2
    assert set(ps()) == {"b"}  # one victim, never two rounds of eviction
    (floor,) = _floors().values()
    assert floor["CPU"] == beside_b + MiB  # what was free at the second failure, and more


def test_no_retry_beside_a_pinned_neighbour_and_the_error_says_what_was_tried(
    setup: Setup,
) -> None:
    assert llmctl("load", "held").returncode == 0
    out = llmctl("load", "oom-held", "--json")
    assert out.returncode == 1
    item = json.loads(out.stdout)["profiles"][0]
    message = item["result"]["error"]["message"]
    assert "unable to allocate CPU buffer" in message or "failed to allocate" in message
    assert "no retry: 'held' is pinned, so it stays" in message, message
    assert setup.launched() == 1
    assert set(ps()) == {"held"}
    # the need is kept: the next load is refused before anything starts
    again = llmctl("load", "oom-held")
    assert again.returncode == 1 and "pinned" in again.stderr, again.stderr
    assert setup.launched() == 1


def test_no_retry_when_nothing_else_runs(setup: Setup) -> None:
    # something outside llmctl holds the memory (the FAKE sees a listener on its port)
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        other.bind(("127.0.0.1", setup.base + 7))
        other.listen()
        out = llmctl("load", "oom-alone")
    assert out.returncode == 1
    assert "with nothing else running there" in out.stderr, out.stderr
    assert setup.launched() == 1
    assert ps() == {}


def test_the_router_retries_once_after_the_victim_goes(setup: Setup, tmp_path: Path) -> None:
    """The same through `llmctl serve`: a request for `oom` beside a loads it after unloading
    a, once; the answer is the retried server's."""
    served = start_serve(setup.manifest, setup.base + 8, tmp_path)
    try:

        def chat(model: str) -> httpx.Response:
            body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
            return httpx.post(
                served.url + "/v1/chat/completions", json={**body, "max_tokens": 2}, timeout=120
            )

        assert chat("a").status_code == 200
        r = chat("oom")
        assert r.status_code == 200, r.text
        assert setup.launched() == 2
        assert set(ps()) == {"oom"}
        listed = httpx.get(served.url + "/v1/models", timeout=30).json()["data"]
        loaded = {m["id"] for m in listed if m.get("loaded")}
        assert loaded == {"oom"}, listed  # the router knows the victim went
    finally:
        stop_serve(served)
