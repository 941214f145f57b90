"""The dashboard's endpoints against a real `llmctl serve` (a real llama-server on tiny models),
and the pure parts (token counts from an answer). The browser tests are in
router/test_dashboard_page.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dashboard_helpers import KEY, serving_dashboard, write_manifest, write_models
from llmctl import paths
from llmctl.router.activity import Activity, Speed, speed_from, usage_from
from llmctl.supervisor.lifecycle import Supervisor
from serving import Served, start_serve, stop_serve

AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return write_models(tmp_path_factory.mktemp("models"))


@pytest.fixture
def served(
    tmp_path: Path, llama_server_bin: Path, models: tuple[Path, Path, Path], free_port: int
) -> Iterator[Served]:
    with serving_dashboard(tmp_path, llama_server_bin, models, free_port) as s:
        yield s


def test_usage_from_openai_answers_and_llama_server_stream_timings() -> None:
    body = b'{"usage":{"completion_tokens":4,"prompt_tokens":54,"details":{"cached":0}},"id":"x"}'
    assert usage_from(body) == {"prompt_tokens": 54, "completion_tokens": 4}
    stream = b'data: {"timings":{"cache_n":53,"prompt_n":1,"predicted_n":4}}\n\ndata: [DONE]\n\n'
    assert usage_from(stream) == {"prompt_tokens": 54, "completion_tokens": 4}
    assert usage_from(b'{"usage": {"prompt_tokens": 3') == {}  # cut off: nothing, no error
    assert usage_from(b'{"usage": [1]}') == {}
    assert usage_from(b"") == {}


def test_speed_from_llama_server_timings() -> None:
    whole = b'{"choices":[],"timings":{"predicted_n":4,"predicted_per_second":41.5,'
    whole += b'"prompt_n":9,"prompt_per_second":300.25},"usage":{"completion_tokens":4}}'
    assert speed_from(whole) == Speed(41.5, 4, 300.25)
    # a stream: the last chunk's timings; a prompt served from the cache has no prompt speed
    stream = b'data: {"timings":{"predicted_n":1,"predicted_per_second":9}}\n\n'
    stream += b'data: {"timings":{"predicted_n":3,"predicted_per_second":12.0,"prompt_n":0,'
    stream += b'"prompt_per_second":null}}\n\ndata: [DONE]\n\n'
    assert speed_from(stream) == Speed(12.0, 3, None)
    for said in (
        b'{"timings":{"predicted_n":0,"predicted_per_second":0}}',  # generated nothing
        b'{"timings":{"predicted_n":2,"predicted_per_second":null}}',
        b'{"timings":{"predicted_n":true,"predicted_per_second":5}}',
        b'{"timings":{"predicted_n":2,"predicted_per_second":"fast"}}',
        b'{"timings":{"predicted_n":2,"predicted_per_second":1e999}}',  # inf
        b'{"timings":{"predicted_n":2,"predic',  # cut off
        b'{"usage":{"completion_tokens":4}}',
        b"",
    ):
        assert speed_from(said) is None, said


def test_activity_keeps_a_bounded_ring_of_requests() -> None:
    act = Activity(size=3)
    for i in range(5):
        act.request("POST", f"/v1/{i}", "p", "local", 200, 0.1)
    assert [r.path for r in act.requests] == ["/v1/2", "/v1/3", "/v1/4"]


def test_page_files_are_served_without_a_key_and_data_needs_one(served: Served) -> None:
    r = httpx.get(served.url + "/ui")
    assert r.status_code == 308 and r.headers["location"] == "/ui/"
    root = httpx.get(served.url + "/")  # the router's own URL leads to its page
    assert root.status_code == 307 and root.headers["location"] == "/ui/"
    # the terminal says where the page is
    assert f"dashboard: {served.url}/ui" in served.logs()
    page = httpx.get(served.url + "/ui/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert '<script src="app.js"' in page.text and "http" not in page.text.split("<body>")[0]
    for name, kind in [("app.js", "text/javascript"), ("style.css", "text/css")]:
        r = httpx.get(f"{served.url}/ui/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind)
    missing = httpx.get(served.url + "/ui/secrets.txt")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert httpx.get(served.url + "/ui/api/hello").json() == {"auth": True}

    for headers in ({}, {"Authorization": "Bearer wrong"}):
        for path in ("/ui/api/state", "/ui/api/log"):
            r = httpx.get(served.url + path, headers=headers)
            assert r.status_code == 401, path
            assert r.json()["error"]["code"] == "invalid_api_key"


def test_state_lists_servers_devices_profiles_and_requests(served: Served) -> None:
    state = httpx.get(served.url + "/ui/api/state", headers=AUTH).json()
    assert [s["name"] for s in state["servers"]] == ["managed"]
    assert state["servers"][0]["profile"] is None
    devices = {d["id"]: d for d in state["devices"]}
    assert devices["gpu0"]["total_bytes"] == 2 * 1024**3 and devices["gpu0"]["shares"] == []
    assert devices["ram"]["total_bytes"] > 0
    profiles = {p["name"]: p for p in state["profiles"]}
    assert set(profiles) == {"tiny-a", "tiny-b", "broken"}
    a = profiles["tiny-a"]
    assert a["state"] == "idle" and a["aliases"] == ["A"] and a["evicts"] == []
    assert a["memory_source"] == a["estimate"]["memory_source"] == "formula"  # nothing kept yet
    # all layers offloaded: weights, KV and compute planned on the GPU; nothing offloaded: RAM
    assert {"weights", "kv", "compute"} <= set(a["plan"]["gpu0"])
    assert set(profiles["tiny-b"]["plan"]) == {"ram"}
    assert profiles["tiny-b"]["plan"]["ram"]["kv"] == profiles["tiny-b"]["estimate"]["kv_bytes"]

    body = {"model": "A", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    r = httpx.post(served.url + "/v1/chat/completions", json=body, headers=AUTH, timeout=90)
    assert r.status_code == 200
    answer = r.json()
    said = [answer["usage"]]  # a random-weight model may end before max_tokens
    stream = {**body, "stream": True}
    r = httpx.post(served.url + "/v1/chat/completions", json=stream, headers=AUTH, timeout=90)
    assert r.status_code == 200
    said.insert(0, usage_from(r.content))  # newest first, as the dashboard lists them

    state = httpx.get(served.url + "/ui/api/state", headers=AUTH).json()
    profiles = {p["name"]: p for p in state["profiles"]}
    assert profiles["tiny-a"]["state"] == "ready" and profiles["tiny-a"]["server"] == "managed"
    assert profiles["tiny-b"]["evicts"] == ["tiny-a"]
    # launched from the manifest serve holds: not stale (tests/supervisor/test_stale.py edits it)
    assert profiles["tiny-a"]["stale"] is False and state["servers"][0]["stale"] is False
    assert profiles["tiny-a"]["load"]["progress"] == 1.0  # by the steps in llama-server's log
    gpu = next(d for d in state["devices"] if d["id"] == "gpu0")
    assert [s["profile"] for s in gpu["shares"]] == ["tiny-a"]
    ram = next(d for d in state["devices"] if d["id"] == "ram")
    assert ram["shares"][0]["reported_bytes"] > 0  # the running llama-server's resident memory
    streamed, plain = state["requests"][:2]  # newest first
    for rec, usage in zip((streamed, plain), said, strict=True):
        assert rec["profile"] == "tiny-a" and rec["upstream"] == "local" and rec["status"] == 200
        assert 1 <= rec["completion_tokens"] <= 3 and rec["prompt_tokens"] > 0
        assert rec["completion_tokens"] == usage["completion_tokens"]
        assert rec["prompt_tokens"] == usage["prompt_tokens"]
    assert plain["duration_s"] > 0
    # the generation speed llama-server states, per request and in /metrics
    speeds = [speed_from(r.content), speed_from(json.dumps(answer).encode())]
    assert all(sp is not None for sp in speeds), speeds
    for rec, sp in zip((streamed, plain), speeds, strict=True):
        assert sp is not None and rec["tokens_per_second"] == round(sp.generation, 2) > 0
        assert sp.generated == rec["completion_tokens"]
    assert plain["tokens_per_second"] == round(answer["timings"]["predicted_per_second"], 2)
    metrics = httpx.get(served.url + "/metrics", headers=AUTH).text
    assert 'llmctl_generation_tokens_per_second_count{profile="tiny-a"} 2\n' in metrics
    generated = sum(sp.generated for sp in speeds if sp is not None)
    assert f'llmctl_generated_tokens_total{{profile="tiny-a"}} {generated}\n' in metrics


def test_a_failed_load_is_kept_with_the_error_line_first(served: Served) -> None:
    r = httpx.post(
        served.url + "/models/switch", json={"profile": "broken"}, headers=AUTH, timeout=90
    )
    assert r.status_code >= 500
    state = httpx.get(served.url + "/ui/api/state", headers=AUTH).json()
    broken = next(p for p in state["profiles"] if p["name"] == "broken")
    assert broken["state"] == "failed"
    load = broken["load"]
    assert "error" in load["tail"][0].lower()  # llama-server's own line
    assert 0 < load["progress"] < 1 and load["step"] == "reading the model"
    assert load["error"].startswith("llama-server for profile 'broken'")


def _events(text: str) -> list[tuple[str, object]]:
    out = []
    for block in text.split("\n\n"):
        name = "message"
        data = []
        for line in block.splitlines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
        if data:
            out.append((name, json.loads("\n".join(data))))
    return out


def test_log_stream_sends_the_tail_then_follows(served: Served) -> None:
    r = httpx.post(
        served.url + "/models/switch", json={"profile": "tiny-a"}, headers=AUTH, timeout=90
    )
    assert r.json()["ok"] is True
    got: list[tuple[str, object]] = []
    with httpx.stream(
        "GET", served.url + "/ui/api/log?lines=5", headers=AUTH, timeout=30
    ) as stream:
        buf = ""
        asked = False
        for chunk in stream.iter_text():
            buf += chunk
            got = _events(buf.rsplit("\n\n", 1)[0] + "\n\n")
            lines = [ln for name, batch in got if name == "lines" for ln in batch]  # type: ignore[union-attr]
            if not asked and lines:
                assert got[0][0] == "file" and len(lines) <= 5
                # a request makes llama-server write to its log: it comes down the stream
                body = {"model": "A", "prompt": "hello", "max_tokens": 2}
                httpx.post(served.url + "/v1/completions", json=body, headers=AUTH, timeout=60)
                asked = True
            elif asked and any("print_timing" in ln or "launch_slot" in ln for ln in lines):
                break
    assert asked


def test_log_stream_refuses_bad_parameters(served: Served) -> None:
    r = httpx.get(served.url + "/ui/api/log?lines=lots", headers=AUTH)
    assert r.status_code == 400 and r.json()["error"]["param"] == "lines"
    r = httpx.get(served.url + "/ui/api/log?server=gpu7", headers=AUTH)
    assert r.status_code == 404 and "managed" in r.json()["error"]["message"]


def test_several_servers_each_with_its_share_log_and_unload(
    tmp_path: Path, llama_server_bin: Path, models: tuple[Path, Path, Path], free_port: int
) -> None:
    from fakes.fake_upstream import free_port as another_port
    from processes import free_port_range

    manifest = write_manifest(tmp_path / "profiles.yaml", llama_server_bin, models, another_port())
    base = free_port_range(4)
    text = manifest.read_text().replace("server:\n", f'server:\n  ports: "{base}-{base + 3}"\n', 1)
    # tiny-a and tiny-a2 never run together: loading one would unload the other
    text = text.replace("    aliases: [A]\n", "    aliases: [A]\n    group: g\n", 1)
    a_model = models[0]
    text += f"  tiny-a2:\n    model: {a_model}\n    ctx_size: 256\n    group: g\n"
    manifest.write_text(text)
    s = start_serve(manifest, free_port, tmp_path)
    try:
        for model in ("A", "tiny-b"):
            body = {
                "model": model,
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 2,
            }
            r = httpx.post(s.url + "/v1/chat/completions", json=body, headers=AUTH, timeout=90)
            assert r.status_code == 200, r.text
        state = httpx.get(s.url + "/ui/api/state", headers=AUTH).json()
        assert sorted(x["name"] for x in state["servers"]) == ["tiny-a", "tiny-b"]
        profiles = {p["name"]: p for p in state["profiles"]}
        assert profiles["tiny-a"]["state"] == profiles["tiny-b"]["state"] == "ready"
        assert profiles["tiny-a"]["waiting"] == 0  # requests waiting for it, per profile
        queue = state["queue"]
        assert queue["swaps"] == {} and queue["loads_avoided"] == 0  # the order's figures
        assert queue["passed_over_s"] == 0 and queue["max_wait_s"] == 0
        assert profiles["tiny-a"]["server"] == "tiny-a"
        # which figure placed each: the placer's record (no plan was kept before these loads)
        assert profiles["tiny-a"]["memory_source"] == profiles["tiny-b"]["memory_source"]
        assert profiles["tiny-a"]["memory_source"] == "formula"
        ram = next(d for d in state["devices"] if d["id"] == "ram")
        gpu = next(d for d in state["devices"] if d["id"] == "gpu0")
        assert [x["profile"] for x in gpu["shares"]] == ["tiny-a"]  # all layers on the GPU
        assert "tiny-b" in [x["profile"] for x in ram["shares"]]
        # what loading each profile now would unload, by the placer's decision
        assert profiles["tiny-a2"]["evicts"] == ["tiny-a"]
        assert profiles["broken"]["evicts"] == []
        # each server's own log
        with httpx.stream(
            "GET", s.url + "/ui/api/log?server=tiny-b&lines=5", headers=AUTH, timeout=30
        ) as log:
            assert log.status_code == 200
            lines = log.iter_lines()
            assert next(lines).startswith("event: file")
            assert "tiny-b" in next(lines)
        bad = httpx.get(s.url + "/ui/api/log?server=nope", headers=AUTH)
        assert bad.status_code == 404 and "'tiny-a'" in bad.json()["error"]["message"]
        # a failed load shows on its card (error line, log tail) until the next attempt
        body = {"model": "broken", "messages": [{"role": "user", "content": "hi"}]}
        r = httpx.post(s.url + "/v1/chat/completions", json=body, headers=AUTH, timeout=90)
        assert r.status_code == 503, r.text
        state = httpx.get(s.url + "/ui/api/state", headers=AUTH).json()
        broken = {p["name"]: p for p in state["profiles"]}["broken"]
        assert broken["state"] == "failed", broken
        assert broken["load"]["error"] and broken["load"]["tail"], broken
        # unload one profile, keep the other
        r = httpx.post(s.url + "/models/stop", json={"profile": "A"}, headers=AUTH, timeout=60)
        assert r.status_code == 200 and r.json()["stopped"] == "tiny-a"
        state = httpx.get(s.url + "/ui/api/state", headers=AUTH).json()
        assert [x["name"] for x in state["servers"]] == ["tiny-b"]
        profiles = {p["name"]: p for p in state["profiles"]}
        assert profiles["tiny-a"]["evicts"] == profiles["tiny-a2"]["evicts"] == []
        r = httpx.post(s.url + "/models/stop", json={"profile": "nope"}, headers=AUTH)
        assert r.status_code == 404
    finally:
        stop_serve(s)
        Supervisor(paths.state_dir(), lock_timeout=30).stop()


def test_state_and_available_with_gpu_as_a_device_list(
    tmp_path: Path, llama_server_bin: Path, models: tuple[Path, Path, Path], free_port: int
) -> None:
    """`gpu:` as a list of devices (the form placement needs): the dashboard and
    /models/available judge profiles against its first GPU instead of answering 500."""
    from fakes.fake_upstream import free_port as another_port
    from processes import free_port_range

    manifest = write_manifest(tmp_path / "profiles.yaml", llama_server_bin, models, another_port())
    base = free_port_range(3)
    text = manifest.read_text().replace("server:\n", f'server:\n  ports: "{base}-{base + 2}"\n', 1)
    text = text.replace(
        "gpu:\n  vram: 2GiB\n", "gpu:\n  - {name: CUDA0, vram: 2GiB, headroom: 256MiB}\n"
    )
    manifest.write_text(text)
    s = start_serve(manifest, free_port, tmp_path)
    try:
        r = httpx.get(s.url + "/ui/api/state", headers=AUTH, timeout=30)
        assert r.status_code == 200, r.text
        state = r.json()
        gpu = next(d for d in state["devices"] if d["kind"] == "gpu")
        assert gpu["total_bytes"] == 2 * 1024**3 and gpu["headroom_bytes"] == 256 * 1024**2
        profiles = {p["name"]: p for p in state["profiles"]}
        assert profiles["tiny-a"]["estimate"]["fits"] is True
        r = httpx.get(s.url + "/models/available", headers=AUTH, timeout=30)
        assert r.status_code == 200, r.text
        available = {p["profile"]: p for p in r.json()["profiles"]}
        assert available["tiny-a"]["fits"] is True
        assert "Traceback" not in s.logs()
    finally:
        stop_serve(s)
        Supervisor(paths.state_dir(), lock_timeout=30).stop()


def test_log_streams_cannot_exhaust_file_descriptors(
    tmp_path: Path, llama_server_bin: Path, models: tuple[Path, Path, Path], free_port: int
) -> None:
    """Under a 256-file limit, 120 log streams from one client: the first few stream, the rest
    get 429 with Retry-After, no stream holds its log file open between polls, and /health and
    the API keep answering (before: every request failed, with thousands of tracebacks)."""
    import os
    import socket
    import time

    from fakes.fake_upstream import free_port as another_port

    manifest = write_manifest(tmp_path / "profiles.yaml", llama_server_bin, models, another_port())
    s = start_serve(manifest, free_port, tmp_path, nofile=256)
    conns: list[socket.socket] = []
    try:
        r = httpx.post(
            s.url + "/models/switch", json={"profile": "tiny-b"}, headers=AUTH, timeout=90
        )
        assert r.status_code == 200, r.text
        statuses: list[int] = []
        request = (
            f"GET /ui/api/log?server=managed&lines=5 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {KEY}\r\n\r\n"
        ).encode()
        for _ in range(120):
            c = socket.create_connection(("127.0.0.1", free_port))
            c.settimeout(30)
            c.sendall(request)
            statuses.append(int(c.recv(64).split(b" ")[1]))
            conns.append(c)
        assert statuses.count(200) == 4 and statuses.count(429) == 116, statuses
        fds = os.listdir(f"/proc/{s.proc.pid}/fd")
        logs = [f for f in fds if os.readlink(f"/proc/{s.proc.pid}/fd/{f}").endswith(".log")]
        # a poll reads one at a time; none is kept open (fds 0-2 are the process's own output)
        assert len([f for f in logs if int(f) > 2]) <= 1, logs
        assert httpx.get(s.url + "/health", timeout=10).status_code == 200
        assert httpx.get(s.url + "/ui/api/state", headers=AUTH, timeout=10).status_code == 200
        for c in conns:
            c.close()
        conns.clear()
        # the streams' slots come back once their clients leave
        deadline = time.monotonic() + 10
        while True:
            with httpx.stream(
                "GET", s.url + "/ui/api/log?lines=1", headers=AUTH, timeout=10
            ) as again:
                if again.status_code == 200 or time.monotonic() > deadline:
                    break
        assert again.status_code == 200
        assert "Traceback" not in s.logs()
    finally:
        for c in conns:
            c.close()
        stop_serve(s)
        Supervisor(paths.state_dir(), lock_timeout=30).stop()
