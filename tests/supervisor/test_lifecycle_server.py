"""Supervisor against the REAL llama-server on tiny models: golden path, readiness, real failures."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

import processes
from llmctl import paths
from llmctl.supervisor.health import health_status
from llmctl.supervisor.lifecycle import Supervisor, procs
from llmctl.supervisor.results import Event
from llmctl.supervisor.state import read_state
from supervisor_helpers import llama_pids, real_spec


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from llmctl.testing.testmodels import write_tiny_model

    folder = tmp_path_factory.mktemp("models")
    a = write_tiny_model(folder / "tiny-a.gguf", arch="llama")
    b = write_tiny_model(folder / "tiny-b.gguf", arch="llama")
    return a, b


def chat(url: str) -> dict[str, object]:
    body = json.dumps(
        {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0}
    ).encode()
    req = urllib.request.Request(
        f"{url}/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        result: dict[str, object] = json.loads(resp.read())
        return result


@pytest.fixture
def sup(llama_server_bin: Path) -> Iterator[Supervisor]:
    s = Supervisor(paths.state_dir(), lock_timeout=60)
    try:
        yield s
    finally:
        s.stop()
        assert llama_pids(llama_server_bin) == []


def test_golden_path(
    sup: Supervisor, llama_server_bin: Path, tiny_models: tuple[Path, Path]
) -> None:
    model_a, model_b = tiny_models
    spec_a = real_spec(llama_server_bin, model_a, processes.free_port(), "tiny-a")
    spec_b = real_spec(llama_server_bin, model_b, processes.free_port(), "tiny-b", "-c", "1024")

    a = sup.switch(spec_a)
    assert a.ready and a.error is None, a.error
    assert health_status(a.url) == 200
    reply = chat(a.url)
    assert reply["choices"]
    st = sup.status()
    assert st.running and st.healthy and st.profile == "tiny-a" and st.pid == a.pid

    events: list[Event] = []
    b = sup.switch(spec_b, on_event=events.append)
    assert b.ready and not b.noop and b.pid != a.pid
    kinds = [e.kind for e in events if e.kind != "log"]
    assert kinds == ["locked", "stopping", "stopped", "starting", "ready"]
    assert a.pid is not None and not procs.is_alive(a.pid)
    assert not procs.port_in_use("127.0.0.1", spec_a.port)
    assert chat(b.url)["choices"]
    assert llama_pids(llama_server_bin) == [b.pid]

    again = sup.switch(spec_b)
    assert again.noop and again.ready and again.pid == b.pid
    rec = read_state(sup.state_dir)
    assert rec is not None and rec.profile == "tiny-b" and rec.pid == b.pid

    out = sup.stop()
    assert out.stopped and out.profile == "tiny-b"
    assert b.pid is not None and not procs.is_alive(b.pid)
    assert not procs.port_in_use("127.0.0.1", spec_b.port)
    assert not sup.status().running


_STAMP = re.compile(r"^(\d+)\.(\d+)\.(\d+)\.(\d+) ")


def _server_time(line: str) -> float:
    m = _STAMP.match(line)
    assert m, line
    minutes, secs, ms, us = (int(x) for x in m.groups())
    return minutes * 60 + secs + ms / 1000 + us / 1e6


def test_readiness_is_noticed_promptly(
    sup: Supervisor, llama_server_bin: Path, tiny_models: tuple[Path, Path]
) -> None:
    """Ready is reported shortly after llama-server says "model loaded" (its own clock)."""
    events: list[Event] = []
    res = sup.switch(
        real_spec(llama_server_bin, tiny_models[0], processes.free_port(), "tiny"),
        on_event=events.append,
    )
    assert res.ready
    starting = next(e for e in events if e.kind == "starting")
    ready = next(e for e in events if e.kind == "ready")
    # llama-server logs "model loaded" (on its own clock, from its start) right after /health
    # turns 200; the log is written by a worker thread, so read it from the file.
    assert res.log is not None
    from llmctl.llama.logline import decode_text

    # the log is in JSON lines (--log-jsonl) where the build has them: read it as text
    text = decode_text(Path(res.log).read_text())
    loaded = next(x for x in text.splitlines() if "model loaded" in x)
    if not _STAMP.match(loaded):  # older builds (b9093) print their lines without a time
        pytest.skip(f"this llama-server's log lines carry no time: {loaded!r}")
    server_loaded = _server_time(loaded)
    # from spawn to "ready" reported, minus the server's own time to load: small
    assert (ready.elapsed_s - starting.elapsed_s) - server_loaded < 0.5


def test_bad_model_path_fails_at_once(
    sup: Supervisor, llama_server_bin: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "missing.gguf"
    res = sup.switch(real_spec(llama_server_bin, missing, processes.free_port(), "missing"))
    assert not res.ready and res.error is not None
    assert res.error.exit_status == 1
    assert res.elapsed_s < 10
    # the cause in the build's words: "failed to open GGUF file" (b11312), "failed to load model
    # from" (b9093)
    said = ("failed to open GGUF file", "failed to load model from")
    assert any(w in res.error.message for w in said) and str(missing) in res.error.message
    assert any(w in res.error.stderr_tail[0] for w in said)
    assert "exiting due to model loading error" in res.error.stderr_tail[-1]


def test_invalid_flag_value_error_line_comes_first(
    sup: Supervisor, llama_server_bin: Path, tiny_models: tuple[Path, Path]
) -> None:
    spec = real_spec(
        llama_server_bin, tiny_models[0], processes.free_port(), "badflag", "-ctk", "foo"
    )
    res = sup.switch(spec)
    assert not res.ready and res.error is not None and res.error.exit_status == 1
    assert 'error while handling argument "-ctk": Unsupported cache type: foo' in res.error.message
    assert res.error.stderr_tail[0].startswith("error while handling argument")
    # the usage text that follows is in the tail, after the error line
    assert len(res.error.stderr_tail) > 1


def test_port_held_elsewhere_is_named_before_launch(
    sup: Supervisor, llama_server_bin: Path, tiny_models: tuple[Path, Path]
) -> None:
    port = processes.free_port()
    # another llama-server, not ours, already on the port
    other = subprocess.Popen(
        [str(llama_server_bin), "-m", str(tiny_models[0]), "--port", str(port), "-c", "512"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert _wait(lambda: health_status(f"http://127.0.0.1:{port}") == 200)
        res = sup.switch(real_spec(llama_server_bin, tiny_models[1], port, "tiny-b"))
        assert not res.ready and res.error is not None
        assert f"pid {other.pid}" in res.error.message and "llama-server" in res.error.message
        assert res.pid is None
    finally:
        other.terminate()
        other.wait(10)


def test_cancel_real_load(
    sup: Supervisor, llama_server_bin: Path, tiny_models: tuple[Path, Path]
) -> None:
    cancel = threading.Event()

    def on_event(e: Event) -> None:
        if e.kind == "log":
            cancel.set()

    res = sup.switch(
        real_spec(llama_server_bin, tiny_models[0], processes.free_port(), "tiny"),
        on_event=on_event,
        cancel=cancel,
    )
    assert not res.ready and res.error is not None and "cancelled" in res.error.message
    assert llama_pids(llama_server_bin) == []
    assert read_state(sup.state_dir) is None


def test_status_reports_memory_at_verbosity_4(
    sup: Supervisor, llama_server_bin: Path, tiny_models: tuple[Path, Path]
) -> None:
    res = sup.switch(
        real_spec(llama_server_bin, tiny_models[0], processes.free_port(), "tiny", "-lv", "4")
    )
    assert res.ready
    mem = sup.status().memory
    assert mem["model_mib"] > 0 and mem["kv_mib"] == pytest.approx(0.5, abs=0.01)
    assert mem["compute_mib"] > 0
    assert mem["total_mib"] == pytest.approx(
        mem["model_mib"] + mem["kv_mib"] + mem["compute_mib"], abs=0.02
    )


def test_status_memory_counts_each_cache_once_beside_a_draft(
    sup: Supervisor, llama_server_bin: Path, tmp_path: Path
) -> None:
    """A sliding-window model (two caches on the CPU), its own draft, at -v: --fit's probe loads
    print their buffers first, and the draft's come after the main model's."""
    from llmctl.llama.gguf import read_gguf
    from llmctl.memory.estimate import ModelSource, estimate, mib
    from llmctl.memory.options import LaunchOptions
    from llmctl.testing.testmodels import write_tiny_model

    model = write_tiny_model(tmp_path / "swa.gguf", arch="gemma3")
    spec = real_spec(llama_server_bin, model, processes.free_port(), "swa", "-v", "-md", str(model))
    assert sup.switch(spec).ready
    mem = sup.status().memory
    est = estimate(ModelSource.from_gguf(read_gguf(model)), LaunchOptions(ctx_size=512, parallel=1))
    assert len(est.caches) == 2
    assert mem["kv_mib"] == pytest.approx(mib(est.kv_bytes), abs=0.02)
    assert mem["kv_by_device_mib"] == {"CPU": pytest.approx(mem["kv_mib"], abs=0.02)}
    draft = mem["draft_mib"]
    assert draft == pytest.approx(mem["model_mib"] + mem["kv_mib"] + mem["compute_mib"], abs=0.1)
    assert mem["total_mib"] == pytest.approx(2 * draft, abs=0.1)


def _wait(cond: object, timeout: float = 30.0) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(cond) and cond():
            return True
        time.sleep(0.02)
    return False


def test_cli_style_kill_of_switcher_then_recovery(
    sup: Supervisor, llama_server_bin: Path, tiny_models: tuple[Path, Path]
) -> None:
    """A switcher process SIGKILLed right after the spawn: the next status kills the orphan."""
    port = processes.free_port()
    script = (
        "import sys, os, signal\n"
        "from pathlib import Path\n"
        "from llmctl.supervisor.lifecycle import Supervisor\n"
        "from llmctl.supervisor.launch import LaunchSpec\n"
        "spec = LaunchSpec(profile='tiny', argv=tuple(sys.argv[2:]), port=int(sys.argv[1]))\n"
        "def on_event(e):\n"
        "    if e.kind == 'log':\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "Supervisor(Path(os.environ['LLMCTL_STATE_DIR'])).switch(spec, on_event=on_event)\n"
    )
    spec = real_spec(llama_server_bin, tiny_models[0], port, "tiny")
    proc = subprocess.run([sys.executable, "-c", script, str(port), *spec.argv], check=False)
    assert proc.returncode == -9
    rec = read_state(sup.state_dir)
    assert rec is not None and rec.phase == "starting" and rec.pid is not None
    status = sup.status()
    assert not status.running and status.note and "interrupted switch" in status.note
    assert llama_pids(llama_server_bin) == []
    assert not procs.port_in_use("127.0.0.1", port)


def test_api_keys_never_reach_llama_servers_environment(
    tmp_path: Path, llama_server_bin: Path, free_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmctl.manifest.validate import load_manifest
    from llmctl.supervisor.launch import launch_spec
    from llmctl.supervisor.lifecycle import Supervisor
    from llmctl.supervisor.procs import environ_has
    from llmctl.testing.testmodels import write_tiny_model

    model = write_tiny_model(tmp_path / "m.gguf")
    manifest = tmp_path / "profiles.yaml"
    manifest.write_text(
        f"version: 1\nserver: {{binary: {llama_server_bin}, port: {free_port}}}\n"
        "serve:\n  upstreams:\n    - {name: local, type: managed}\n"
        "    - {name: cloud, url: 'http://127.0.0.1:9/v1', api_key_env: CLOUD_KEY}\n"
        f"profiles:\n  p: {{model: {model}, ctx_size: 512, parallel: 1, env: {{KEEP: 'yes'}}}}\n"
    )
    monkeypatch.setenv("LLMCTL_API_KEYS", "router-secret")
    monkeypatch.setenv("CLOUD_KEY", "cloud-secret")
    monkeypatch.setenv("UNRELATED", "stays")
    spec = launch_spec(load_manifest(manifest), "p")
    assert set(spec.unset_env) >= {"LLMCTL_API_KEYS", "CLOUD_KEY"}
    sup = Supervisor(tmp_path / "state")
    result = sup.switch(spec)
    try:
        assert result.ready and result.pid is not None
        assert environ_has(result.pid, "LLMCTL_API_KEYS=router-secret") is False
        assert environ_has(result.pid, "CLOUD_KEY=cloud-secret") is False
        assert environ_has(result.pid, "UNRELATED=stays") is True
        assert environ_has(result.pid, "KEEP=yes") is True
    finally:
        sup.stop()


def test_switch_to_a_truncated_model_stops_nothing(
    sup: Supervisor, llama_server_bin: Path, tiny_models: tuple[Path, Path], tmp_path: Path
) -> None:
    """A GGUF cut short (header intact, tensor data missing) is refused before the healthy
    server is stopped, by switch and by load."""
    from llmctl.llama.gguf import GGUFTruncated

    healthy = real_spec(llama_server_bin, tiny_models[0], processes.free_port(), "tiny-a")
    cut = tmp_path / "cut.gguf"
    data = tiny_models[1].read_bytes()
    cut.write_bytes(data[: len(data) * 2 // 3])
    bad = real_spec(llama_server_bin, cut, processes.free_port(), "cut")

    a = sup.switch(healthy)
    assert a.ready, a.error
    for attempt in (sup.switch, sup.load):
        with pytest.raises(GGUFTruncated) as info:
            attempt(bad)
        err = info.value
        assert str(cut) in err.message and "'cut'" in err.message and "cut short" in err.message
        assert err.hint is not None and "download" in err.hint and err.exit_code == 2
        assert health_status(a.url) == 200
        assert llama_pids(llama_server_bin) == [a.pid]
