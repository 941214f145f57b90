"""A stop from a shell wins over the router's loads (supervisor/stops.py, the scheduler).

A real `llmctl serve` and a real Supervisor in front of the FAKE llama-server (it keeps loading
until the test creates its --ready-file: a real llama-server cannot be held mid-load on demand).
The contract: `llmctl stop` during a router's load cancels it at once; the requests that waited
before the stop get 503 `model_stopped`; nothing loads again until a request comes after it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmctl import paths
from llmctl.errors import OperatorStopped
from llmctl.supervisor.lifecycle import Supervisor
from llmctl.supervisor.stops import record_stop, refusal, stopped_after
from serving import Served, start_serve, stop_serve
from supervisor_helpers import FAKE, fake_pids, kill_fakes, wait_until


def llmctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmctl", *args], capture_output=True, text=True, timeout=60
    )


def _held(tmp_path: Path, name: str) -> tuple[str, Path, Path]:
    """A profile whose FAKE server loads until its ready file exists."""
    started, ready = tmp_path / f"{name}.started", tmp_path / f"{name}.ready"
    args = ["--started-file", str(started), "--ready-file", str(ready), "--progress-every", "0.05"]
    return f"  {name}:\n    model: m.gguf\n    extra_args: {json.dumps(args)}\n", started, ready


@pytest.fixture(params=["one server", "several servers"])
def setup(
    request: pytest.FixtureRequest, tmp_path: Path, free_port: int
) -> Iterator[tuple[Served, Path, dict[str, tuple[Path, Path]]]]:
    from fakes.fake_upstream import free_port as another_port
    from processes import free_port_range

    base = free_port_range(3)
    ports = f'  ports: "{base}-{base + 2}"\n' if request.param == "several servers" else ""
    files: dict[str, tuple[Path, Path]] = {}
    body = ""
    for name in ("alpha", "beta"):
        text, started, ready = _held(tmp_path, name)
        body += text
        files[name] = (started, ready)
    manifest = tmp_path / "profiles.yaml"
    manifest.write_text(
        "version: 1\nserver:\n"
        f"  binary: {json.dumps(str(FAKE))}\n  port: {another_port()}\n{ports}"
        "  stop_timeout: 5\n"
        "profiles:\n" + body
    )
    served = start_serve(manifest, free_port, tmp_path)
    try:
        yield served, manifest, files
    finally:
        stop_serve(served)
        Supervisor(paths.state_dir(), lock_timeout=30).stop()
        kill_fakes()


def _post(url: str, model: str, out: list[httpx.Response]) -> threading.Thread:
    def run() -> None:
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
        out.append(httpx.post(url + "/v1/chat/completions", json=body, timeout=60))

    t = threading.Thread(target=run)
    t.start()
    return t


def _queued(url: str, profile: str) -> int:
    text = httpx.get(url + "/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith("llmctl_queue_depth_profile{") and f'profile="{profile}"' in line:
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


def _error(resp: httpx.Response) -> dict[str, Any]:
    err: dict[str, Any] = resp.json()["error"]
    return err


def test_stop_during_a_router_load_wins(
    setup: tuple[Served, Path, dict[str, tuple[Path, Path]]],
) -> None:
    served, _manifest, files = setup
    started, ready = files["alpha"]
    answers: list[httpx.Response] = []
    client = _post(served.url, "alpha", answers)
    assert wait_until(started.exists, 30), served.logs()  # the router's load is under way
    stop = llmctl("stop")
    client.join(60)
    assert stop.returncode == 0, stop.stderr
    assert "cancelled the load of 'alpha'" in stop.stdout
    assert len(answers) == 1
    assert answers[0].status_code == 503, answers[0].text
    err = _error(answers[0])
    assert err["code"] == "model_stopped"
    assert "stopped from a shell" in err["message"] and "alpha" in err["message"]
    assert answers[0].headers.get("retry-after") == "1"
    # nothing was loaded again: no waiter is left, no server runs, one launch only
    assert _queued(served.url, "alpha") == 0
    assert fake_pids() == []
    assert Supervisor(paths.state_dir(), lock_timeout=5).records() == {}
    assert served.logs().count("starting profile 'alpha'") <= 1
    # a request that comes after the stop loads the profile again
    started.unlink()
    ready.touch()
    after: list[httpx.Response] = []
    _post(served.url, "alpha", after).join(60)
    assert after[0].status_code == 200, after[0].text
    assert started.exists()


def test_waiters_before_a_stop_are_refused_without_a_load(
    setup: tuple[Served, Path, dict[str, tuple[Path, Path]]],
) -> None:
    """A request that waited behind another load is not loaded for after a stop of every
    server: beta never starts."""
    served, _manifest, files = setup
    a_started, _ = files["alpha"]
    b_started, b_ready = files["beta"]
    b_ready.touch()
    answers: list[httpx.Response] = []
    first = _post(served.url, "alpha", answers)
    assert wait_until(a_started.exists, 30), served.logs()
    second = _post(served.url, "beta", answers)
    # one server: beta waits in the queue behind alpha's switch; several: behind its load
    assert wait_until(lambda: _queued(served.url, "beta") == 1, 30), served.logs()
    stop = llmctl("stop")
    assert stop.returncode == 0, stop.stderr
    first.join(60)
    second.join(60)
    codes = sorted(_error(r)["code"] for r in answers)
    assert codes == ["model_stopped", "model_stopped"], [r.text for r in answers]
    assert not b_started.exists()  # beta was never launched
    assert fake_pids() == []


def test_unload_of_one_profile_refuses_only_its_waiters(tmp_path: Path) -> None:
    """The mark of `llmctl unload beta` covers beta, not alpha; a stop of all covers both."""
    state = tmp_path / "state"
    record_stop(state, "beta", now=100.0)
    assert stopped_after(state, "alpha", 50.0) is None
    mark = stopped_after(state, "beta", 50.0)
    assert mark is not None and mark.profile == "beta" and mark.at == 100.0
    assert stopped_after(state, "beta", 100.0) is None  # a request after the stop loads
    record_stop(state, None, now=200.0)
    everything = stopped_after(state, "alpha", 150.0)
    assert everything is not None and everything.profile is None
    assert "every server was stopped from a shell" in everything.describe()
    assert sorted(p.name for p in state.iterdir()) == ["stops.json"]  # no temporary file left


def test_a_load_refused_by_a_stop_from_a_shell_wants_no_retry(tmp_path: Path) -> None:
    """The supervisor decides, where it makes the error, that a router must not load again."""
    state = tmp_path / "state"
    record_stop(state, "beta", now=100.0)
    refused = refusal(state, "beta", 50.0)
    assert isinstance(refused, OperatorStopped) and refused.stopped_at == 100.0
    assert refused.retry is False and "was not loaded again" in refused.message
    assert refusal(state, "beta", 150.0) is None  # a request after the stop loads
    assert refusal(state, "beta", None) is None  # not a router's load: nothing to refuse


def test_a_corrupt_stops_file_is_ignored(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    for blob in (b"{not json", b"[1, 2]", b'{"*": "x", "a": [1]}', b"\0" * (2 << 20)):
        (state / "stops.json").write_bytes(blob)
        assert stopped_after(state, "a", 0.0) is None
    record_stop(state, "a", now=10.0)  # and is replaced by the next stop
    assert stopped_after(state, "a", 0.0) is not None


def test_a_stop_that_cannot_be_recorded_still_stops(tmp_path: Path) -> None:
    target = tmp_path / "file-not-folder"
    target.write_text("x")
    record_stop(target, None)  # no exception: the stop itself reports an unusable folder
    assert stopped_after(target, "a", 0.0) is None
