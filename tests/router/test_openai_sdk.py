"""`llmctl serve` as a real process, the official openai SDK as the client, REAL llama-servers on
tiny models behind it: two profiles, a request for the other one switches."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from llmctl import paths
from llmctl.supervisor.lifecycle import Supervisor, procs
from serving import Served, llama_pids, serve_argv, start_serve, stop_serve, write_manifest

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    from llmctl.testing.testmodels import write_tiny_model

    folder = tmp_path_factory.mktemp("models")
    return (
        write_tiny_model(folder / "tiny-a.gguf", arch="llama"),
        write_tiny_model(folder / "tiny-b.gguf", arch="llama", seed=7),
        write_tiny_model(folder / "tiny-long.gguf", arch="llama", n_ctx_train=32768),
    )


@pytest.fixture
def served(
    tmp_path: Path, llama_server_bin: Path, tiny_models: tuple[Path, Path, Path], free_port: int
) -> Iterator[Served]:
    from fakes.fake_upstream import free_port as another_port

    manifest = write_manifest(
        tmp_path / "profiles.yaml", llama_server_bin, tiny_models, another_port()
    )
    s = start_serve(manifest, free_port, tmp_path)
    try:
        yield s
    finally:
        stop_serve(s)
        Supervisor(paths.state_dir(), lock_timeout=30).stop()


def test_openai_sdk_switches_between_real_servers(served: Served, llama_server_bin: Path) -> None:
    with served.client() as client:
        models = {m.id: m for m in client.models.list()}
        assert {"tiny-a", "A", "chat-a", "tiny-b", "B"} <= set(models)
        assert not any(m.model_extra and m.model_extra.get("loaded") for m in models.values())

        r = client.chat.completions.create(
            model="A", messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
        assert r.choices[0].message.content is not None
        st = httpx.get(served.url + "/models/status").json()
        assert st["server"]["profile"] == "tiny-a" and st["server"]["healthy"] is True
        pid_a = st["server"]["pid"]

        # the other profile: the router switches the real server, then answers (streaming)
        stream = client.chat.completions.create(
            model="tiny-b", messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True
        )
        chunks = [c for c in stream]
        assert chunks and chunks[-1].choices[0].finish_reason is not None
        st = httpx.get(served.url + "/models/status").json()
        assert st["server"]["profile"] == "tiny-b" and st["server"]["pid"] != pid_a
        assert not procs.is_alive(pid_a)
        assert len(llama_pids(llama_server_bin)) == 1

        # the CLI's view (the same state file) agrees
        status = Supervisor(paths.state_dir()).status(check_health=True)
        assert status.profile == "tiny-b" and status.healthy

        # completions and pass-through of other /v1 routes reach the same server
        comp = client.completions.create(model="B", prompt="hello", max_tokens=3)
        assert comp.choices[0].text is not None
        models = {m.id: m for m in client.models.list()}
        assert models["tiny-b"].model_extra["loaded"] is True

        # an unknown model is a NotFoundError from the SDK, listing what exists
        with pytest.raises(openai.NotFoundError) as info:
            client.chat.completions.create(
                model="gpt-9", messages=[{"role": "user", "content": "x"}]
            )
        assert "tiny-a" in str(info.value)
    m = httpx.get(served.url + "/metrics").text
    assert 'llmctl_switch_duration_seconds_count{profile="tiny-b",result="ok"} 1' in m
    # serve's terminal says what it did on its own
    logs = served.logs()
    assert "loading tiny-b for 1 waiting request(s); unloading tiny-a" in logs, logs
    assert "loaded tiny-b in " in logs


def test_concurrent_requests_across_real_switches(served: Served) -> None:
    names = ["tiny-a", "tiny-b", "A", "B"] * 4

    def ask(i: int) -> tuple[str, str]:
        messages = [{"role": "user", "content": str(i)}]
        with served.client(timeout=90) as client:
            if i % 2:
                raw = client.chat.completions.with_raw_response.create(
                    model=names[i], messages=messages, max_tokens=3
                )
                assert raw.parse().choices
                return names[i], raw.headers["x-llmctl-profile"]
        # streams: the header, or (for a stream that waited for a switch) the comment naming it
        body = {"model": names[i], "messages": messages, "max_tokens": 3, "stream": True}
        r = httpx.post(served.url + "/v1/chat/completions", json=body, timeout=90)
        assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]")
        if "x-llmctl-profile" in r.headers:
            return names[i], r.headers["x-llmctl-profile"]
        line = next(ln for ln in r.text.splitlines() if ln.startswith(": upstream "))
        return names[i], line.split("x-llmctl-profile=")[1]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(ask, range(len(names))))
    # every request got an answer, from the profile it named
    assert len(results) == len(names)
    for asked, profile in results:
        assert profile == ("tiny-a" if asked in ("tiny-a", "A") else "tiny-b"), (asked, profile)


def test_sidecar_switch_sse_and_stop(served: Served, llama_server_bin: Path) -> None:
    with httpx.stream(
        "POST",
        served.url + "/models/switch",
        json={"profile": "tiny-a"},
        headers={"accept": "text/event-stream"},
        timeout=90,
    ) as r:
        text = "".join(r.iter_text())
    kinds = [ln[7:] for ln in text.splitlines() if ln.startswith("event: ")]
    assert kinds[0] == "queued" and kinds[-2:] == ["ready", "done"]
    assert "starting" in kinds and "loading" in kinds  # llama-server's own log lines
    loading = [
        json.loads(ln[6:])
        for ln in text.splitlines()
        if ln.startswith("data: ") and '"loading"' in ln
    ]
    assert any("llama" in e["message"] or "load" in e["message"] for e in loading)
    r = httpx.post(served.url + "/models/switch", json={"profile": "A"}, timeout=30)
    assert r.json()["noop"] is True
    available = {
        p["profile"]: p for p in httpx.get(served.url + "/models/available").json()["profiles"]
    }
    assert available["tiny-a"]["loaded"] is True and available["tiny-b"]["loaded"] is False
    est = available["tiny-a"]["estimate"]
    assert est["gpu_total_bytes"] > est["kv_bytes"] > 0 and est["budget_bytes"] == 24 * 1024**3
    assert available["tiny-a"]["fits"] is True
    r = httpx.post(served.url + "/models/stop", timeout=30)
    assert r.json()["stopped"] == "tiny-a"
    assert llama_pids(llama_server_bin) == []
    assert httpx.get(served.url + "/models/status").json()["server"]["running"] is False


def test_a_broken_profile_fails_its_waiters_with_the_reason(
    tmp_path: Path, llama_server_bin: Path, tiny_models: tuple[Path, Path, Path], free_port: int
) -> None:
    from fakes.fake_upstream import free_port as another_port

    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)
    extra = f"  broken:\n    model: {broken}\n    ctx_size: 512\n"
    manifest = write_manifest(
        tmp_path / "profiles.yaml", llama_server_bin, tiny_models, another_port(), extra
    )
    s = start_serve(manifest, free_port, tmp_path)
    try:
        with s.client(timeout=60) as client:
            with pytest.raises(openai.APIStatusError) as info:
                client.chat.completions.create(
                    model="broken", messages=[{"role": "user", "content": "x"}]
                )
            assert info.value.status_code == 503
            body = info.value.body
            assert isinstance(body, dict) and body["code"] == "model_load_failed"
            assert body.get("stderr_tail")
            r = client.chat.completions.create(
                model="A", messages=[{"role": "user", "content": "x"}], max_tokens=2
            )
            assert r.choices
    finally:
        stop_serve(s)
        Supervisor(paths.state_dir(), lock_timeout=30).stop()
    assert llama_pids(llama_server_bin) == []


def test_sigterm_drains_and_stops_the_server_it_started(
    served: Served, llama_server_bin: Path
) -> None:
    with served.client(timeout=60) as client:
        client.chat.completions.create(
            model="A", messages=[{"role": "user", "content": "x"}], max_tokens=2
        )
    assert len(llama_pids(llama_server_bin)) == 1
    code = stop_serve(served)
    assert code in (0, -signal.SIGTERM, 128 + signal.SIGTERM)
    assert llama_pids(llama_server_bin) == []
    assert "Traceback" not in served.logs()
    assert Supervisor(paths.state_dir()).status(check_health=False).running is False


def test_sighup_reloads_the_manifest(served: Served, tiny_models: tuple[Path, Path, Path]) -> None:
    text = served.manifest.read_text()
    served.manifest.write_text(
        text + f"  tiny-c:\n    model: {tiny_models[0]}\n    ctx_size: 512\n"
    )
    served.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    ids: set[str] = set()
    while time.monotonic() < deadline:
        ids = {m["id"] for m in httpx.get(served.url + "/v1/models").json()["data"]}
        if "tiny-c" in ids:
            break
        time.sleep(0.05)
    assert "tiny-c" in ids
    # a broken manifest is refused; the router keeps the last good one
    served.manifest.write_text("version: [")
    served.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while "manifest reload failed" not in served.logs() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "manifest reload failed" in served.logs()
    assert served.proc.poll() is None
    assert "tiny-c" in {m["id"] for m in httpx.get(served.url + "/v1/models").json()["data"]}


def test_refuses_to_listen_beyond_loopback_without_keys(tmp_path: Path, free_port: int) -> None:
    manifest = tmp_path / "profiles.yaml"
    manifest.write_text("version: 1\nprofiles:\n  a:\n    model: /m/a.gguf\n")
    cmd = serve_argv(manifest, free_port)
    r = subprocess.run([*cmd, "--host", "0.0.0.0"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert "refusing to listen on 0.0.0.0 without API keys" in r.stderr
    assert "--allow-insecure" in r.stderr


def test_busy_port_is_a_clear_error(tmp_path: Path) -> None:
    import socket

    manifest = tmp_path / "profiles.yaml"
    manifest.write_text("version: 1\nprofiles:\n  a:\n    model: /m/a.gguf\n")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        r = subprocess.run(
            serve_argv(manifest, port),
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert r.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in r.stderr


def test_keys_from_environment_and_allow_insecure(tmp_path: Path, free_port: int) -> None:
    manifest = tmp_path / "profiles.yaml"
    manifest.write_text("version: 1\nprofiles:\n  a:\n    model: /m/a.gguf\n")
    env = {**os.environ, "LLMCTL_API_KEYS": "k-one,k-two"}
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            serve_argv(manifest, free_port, "--host", "0.0.0.0"),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        url = f"http://127.0.0.1:{free_port}"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                httpx.get(url + "/health", timeout=0.5)
                break
            except httpx.HTTPError:
                time.sleep(0.05)
        assert httpx.get(url + "/v1/models").status_code == 401
        assert (
            httpx.get(url + "/v1/models", headers={"authorization": "Bearer k-two"}).status_code
            == 200
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    text = log.read_text()
    assert "2 API key(s)" in text
    assert "k-one" not in text and "k-two" not in text


def test_crashed_server_is_relaunched_by_the_next_request(
    served: Served, llama_server_bin: Path
) -> None:
    messages = [{"role": "user", "content": "x"}]
    with served.client(timeout=60) as client:
        client.chat.completions.create(model="A", messages=messages, max_tokens=2)
        [pid] = llama_pids(llama_server_bin)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while procs.is_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        # the request finds the server gone, the state file agrees, the router starts it again
        raw = client.chat.completions.with_raw_response.create(
            model="A", messages=messages, max_tokens=2
        )
        assert raw.parse().choices and raw.headers["x-llmctl-profile"] == "tiny-a"
    [again] = llama_pids(llama_server_bin)
    assert again != pid


def test_sigterm_lets_an_inflight_stream_finish(served: Served, llama_server_bin: Path) -> None:
    body = {
        "model": "A",
        "messages": [{"role": "user", "content": "count"}],
        "max_tokens": 400,
        "ignore_eos": True,
        "stream": True,
    }
    events = 0
    with httpx.stream("POST", served.url + "/v1/chat/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        for line in lines:
            if line.startswith("data: {"):
                events += 1
                break
        served.proc.send_signal(signal.SIGTERM)  # mid-stream
        rest = list(lines)
    events += sum(1 for ln in rest if ln.startswith("data: {"))
    assert rest[-1] == "data: [DONE]" or rest[-2:] == ["data: [DONE]", ""]
    assert events > 100  # the whole generation arrived, not a cut-off stream
    served.proc.wait(30)
    assert llama_pids(llama_server_bin) == []


def test_client_disconnect_stops_the_real_generation(served: Served) -> None:
    # a generation that would run for many seconds: 16K tokens of context, EOS ignored
    body = {
        "model": "tiny-long",
        "messages": [{"role": "user", "content": "go"}],
        "max_tokens": 16000,
        "ignore_eos": True,
        "stream": True,
    }
    with httpx.stream("POST", served.url + "/v1/chat/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        got = 0
        for line in lines:
            if line.startswith("data: {"):
                got += 1
                if got == 5:
                    break
    # the router closed its upstream connection; llama-server notices and frees the slot
    llama = httpx.get(served.url + "/models/status").json()["server"]["url"]
    deadline = time.monotonic() + 30
    busy = True
    while busy and time.monotonic() < deadline:
        slots = httpx.get(llama + "/slots", timeout=5).json()
        busy = any(s.get("is_processing") for s in slots)
        time.sleep(0.05)
    assert not busy, "llama-server kept generating for a client that left"
    # and the router is free for the next request at once
    r2 = httpx.post(
        served.url + "/v1/chat/completions",
        json={**body, "stream": False, "max_tokens": 2},
        timeout=30,
    )
    assert r2.status_code == 200


def test_loading_state_shows_the_load_in_a_chat_stream(
    tmp_path: Path, llama_server_bin: Path, tiny_models: tuple[Path, Path, Path], free_port: int
) -> None:
    """serve.loading_state: a streaming chat that waits for a load gets the load's steps as
    `reasoning_content` deltas (a chat UI's thinking box), then the answer; read with the
    openai SDK, as chat UIs' backends do."""
    from fakes.fake_upstream import free_port as another_port

    manifest = write_manifest(tmp_path / "profiles.yaml", llama_server_bin, tiny_models,
                              another_port())  # fmt: skip
    text = manifest.read_text()
    assert "serve:\n" in text
    manifest.write_text(text.replace("serve:\n", "serve:\n  loading_state: true\n", 1))
    s = start_serve(manifest, free_port, tmp_path)
    try:
        with s.client() as client:
            stream = client.chat.completions.create(
                model="B", messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True
            )
            chunks = list(stream)
        thinking = "".join(
            (c.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
            for c in chunks
            if c.choices and c.id == "llmctl-loading"
        )
        assert "starting profile 'tiny-b'" in thinking, thinking
        assert "is ready" in thinking
        assert chunks[-1].choices[0].finish_reason is not None
        assert all(c.model == "B" for c in chunks if c.id == "llmctl-loading")
        # a second request finds it loaded: no loading state at all
        with s.client() as client:
            again = list(
                client.chat.completions.create(
                    model="B",
                    messages=[{"role": "user", "content": "hi"}],
                    max_tokens=4,
                    stream=True,
                )
            )
        assert not [c for c in again if c.id == "llmctl-loading"]
    finally:
        stop_serve(s)
        Supervisor(paths.state_dir(), lock_timeout=30).stop()


def _load_fields(value: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in value.split("; "))


def test_an_answer_that_waited_for_a_load_says_so_in_a_header(served: Served) -> None:
    """X-Llmctl-Load, without serve.loading_state: a response that waited for the load of its
    profile names it, the wait and the last step; one that waited for nothing carries none. A
    stream that waits sends it with its first step, and the final one in its upstream comment."""
    body = {"model": "B", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    url = served.url + "/v1/chat/completions"
    r = httpx.post(url, json=body, timeout=60)
    assert r.status_code == 200, r.text
    load = _load_fields(r.headers["x-llmctl-load"])
    assert load["profile"] == "tiny-b" and load["stage"] == "ready", load
    assert float(load["waited"]) > 0
    again = httpx.post(url, json=body, timeout=60)  # loaded now: it waits for nothing
    assert again.status_code == 200 and again.headers["x-llmctl-profile"] == "tiny-b"
    assert "x-llmctl-load" not in again.headers
    # a stream for the other profile waits for the switch
    r = httpx.post(url, json={**body, "model": "A", "stream": True}, timeout=60)
    assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]"), r.text
    first = _load_fields(r.headers["x-llmctl-load"])
    assert first["profile"] == "tiny-a", first
    assert first["stage"] in ("queued", "stopping", "stopped", "starting", "loading"), first
    line = next(ln for ln in r.text.splitlines() if ln.startswith(": upstream "))
    final = _load_fields(line.split("x-llmctl-load=")[1].split(" x-llmctl-profile=")[0])
    assert final["profile"] == "tiny-a" and final["stage"] == "ready", line
    assert float(final["waited"]) >= float(first["waited"])
    assert line.endswith("x-llmctl-profile=tiny-a")


def test_a_gateway_manifest_needs_no_local_profile(tmp_path: Path, free_port: int) -> None:
    """A router in front of other machines: `serve.upstreams` and no `profiles` (before:
    refused as "profiles is empty"); lint passes and serve relays to the upstream."""
    from fakes.fake_upstream import FakeUpstream

    with FakeUpstream("remote") as remote:
        for profiles in ("", "profiles: {}\n"):
            manifest = tmp_path / "gateway.yaml"
            manifest.write_text(
                "version: 1\nserve:\n  upstreams:\n"
                f'    - {{name: gpu-box, url: "{remote.url}/v1", models: [big-model]}}\n' + profiles
            )
            lint = subprocess.run(
                [sys.executable, "-m", "llmctl", "lint", "--manifest", str(manifest)],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert "no-profiles" not in lint.stdout + lint.stderr, lint.stdout
        s = start_serve(manifest, free_port, tmp_path)
        try:
            body = {"model": "big-model", "messages": [{"role": "user", "content": "hi"}]}
            r = httpx.post(s.url + "/v1/chat/completions", json=body, timeout=30)
            assert r.status_code == 200, r.text
            assert r.headers["x-llmctl-upstream"] == "gpu-box"
        finally:
            stop_serve(s)
    empty = tmp_path / "empty.yaml"
    empty.write_text("version: 1\nprofiles: {}\n")
    lint = subprocess.run(
        [sys.executable, "-m", "llmctl", "lint", "--manifest", str(empty)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert lint.returncode == 1 and "serve.upstreams" in lint.stdout + lint.stderr
