"""Faults of issue 8 against a real `llmctl serve` process and REAL llama-servers on tiny models:
breakers that belong to what fails, operators switching beside router traffic, state-folder faults,
a corrupt state file, refusals known before a stream starts."""

from __future__ import annotations

import concurrent.futures
import contextlib
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from llmctl import paths
from llmctl.supervisor.lifecycle import Supervisor
from processes import llmctl
from serving import Served, llama_pids, start_serve, stop_serve, write_manifest

CHAT = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 2}


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

    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)
    extra = f"  broken:\n    model: {broken}\n    ctx_size: 512\n"
    manifest = write_manifest(
        tmp_path / "profiles.yaml", llama_server_bin, tiny_models, another_port(), extra
    )
    s = start_serve(manifest, free_port, tmp_path)
    try:
        yield s
    finally:
        stop_serve(s)
        Supervisor(paths.state_dir(), lock_timeout=60).stop()
    assert llama_pids(llama_server_bin) == []


def chat(served: Served, model: str, **extra: object) -> httpx.Response:
    return httpx.post(
        served.url + "/v1/chat/completions", json={**CHAT, "model": model, **extra}, timeout=120
    )


# --- 1: breakers belong to what fails --------------------------------------------------------


def test_a_profile_that_cannot_load_leaves_the_others_serving(served: Served) -> None:
    for _ in range(7):  # more than serve.breaker.failures (5)
        r = chat(served, "broken")
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "model_load_failed"  # its own reason, every time
    r = chat(served, "A")
    assert r.status_code == 200, r.text
    assert "WARNING llmctl.router: loading broken failed: " in served.logs()
    metrics = httpx.get(served.url + "/metrics").text
    assert "llmctl_breaker_opens_total" in metrics
    assert not [
        ln
        for ln in metrics.splitlines()
        if ln.startswith("llmctl_breaker_opens_total{") and not ln.endswith(" 0")
    ]


def test_answers_of_a_live_server_do_not_trip_its_breaker(served: Served) -> None:
    assert chat(served, "A").status_code == 200
    for _ in range(7):
        # llama-server without --embeddings answers 501 to this request: a verdict, not ill health
        r = httpx.post(served.url + "/v1/embeddings", json={"model": "A", "input": "x"}, timeout=60)
        assert r.status_code == 501, r.text
    r = chat(served, "A")
    assert r.status_code == 200, r.text


# --- 2: an operator's switch or stop is not an upstream failure -----------------------------


def test_switches_and_stops_from_a_shell_lose_no_router_request(served: Served) -> None:
    """A switch from a shell fails no router request; a stop wins over the requests that
    waited before it (503 model_stopped, nothing else), and later requests load again."""
    assert chat(served, "A").status_code == 200
    statuses: list[int] = []
    bodies: list[str] = []
    done = threading.Event()

    def traffic() -> None:
        while not done.is_set():
            r = chat(served, "A")
            if r.status_code == 503 and r.json()["error"]["code"] == "model_stopped":
                assert "stopped from a shell" in r.json()["error"]["message"]
                continue
            statuses.append(r.status_code)
            if r.status_code != 200:
                bodies.append(r.text)

    manifest = str(served.manifest)
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        clients = [pool.submit(traffic) for _ in range(3)]
        try:
            for step in [["stop"], ["switch", "tiny-b", "--manifest", manifest]] * 2:
                # each CLI run waits for its change; the router meanwhile keeps sending requests
                out = llmctl(*step)
                assert out.returncode == 0, out.stderr
        finally:
            done.set()
            for c in clients:
                c.result()
    assert statuses and set(statuses) == {200}, (statuses, bodies[:3])
    metrics = httpx.get(served.url + "/metrics").text
    assert not [
        ln
        for ln in metrics.splitlines()
        if ln.startswith("llmctl_breaker_opens_total{") and not ln.endswith(" 0")
    ]


# --- 7: state-folder faults: clear errors, exit 4, nothing stopped -------------------------


def _namespaces_work() -> bool:
    import shutil

    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True
    )
    return probe.returncode == 0


needs_mounts = pytest.mark.skipif(
    not _namespaces_work(), reason="needs user and mount namespaces (unshare) for a small tmpfs"
)

NO_TRACEBACK = "Traceback"


def _in_namespace(script: str, tmp_path: Path) -> str:
    """Run `script` (bash) as root of a new user+mount namespace; its output."""
    path = tmp_path / "script.sh"
    path.write_text("set -u\n" + script)
    out = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "bash", str(path)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    return out.stdout + out.stderr


def _profiles(tmp_path: Path, binary: Path, models: tuple[Path, Path, Path]) -> Path:
    from fakes.fake_upstream import free_port as another_port

    return write_manifest(tmp_path / "profiles.yaml", binary, models, another_port())


@needs_mounts
def test_a_full_state_disk_stops_nothing(
    tmp_path: Path, llama_server_bin: Path, tiny_models: tuple[Path, Path, Path]
) -> None:
    manifest = _profiles(tmp_path, llama_server_bin, tiny_models)
    state = paths.state_dir()
    state.mkdir(parents=True, exist_ok=True)
    cli = f"{sys.executable} -m llmctl"
    text = _in_namespace(
        f"""
mount -t tmpfs -o size=1m tmpfs {state}
{cli} switch tiny-a --manifest {manifest} -q; echo "rc-a=$?"
dd if=/dev/zero of={state}/fill bs=4k 2>/dev/null
{cli} switch tiny-b --manifest {manifest}; echo "rc-b=$?"
{cli} switch tiny-b --manifest {manifest} --json; echo "rc-b-json=$?"
{cli} status --json
rm {state}/fill
{cli} stop; echo "rc-stop=$?"
""",
        tmp_path,
    )
    assert "rc-a=0" in text, text
    assert "rc-b=4" in text and "rc-b-json=4" in text, text
    assert f"cannot write in the state folder {state}: the disk is full" in text
    assert '"profile": "tiny-a"' in text and '"running": true' in text  # alpha kept running
    assert "rc-stop=0" in text and NO_TRACEBACK not in text
    assert llama_pids(llama_server_bin) == []


@needs_mounts
def test_a_read_only_state_folder_stops_nothing(
    tmp_path: Path, llama_server_bin: Path, tiny_models: tuple[Path, Path, Path]
) -> None:
    manifest = _profiles(tmp_path, llama_server_bin, tiny_models)
    state = paths.state_dir()
    state.mkdir(parents=True, exist_ok=True)
    cli = f"{sys.executable} -m llmctl"
    text = _in_namespace(
        f"""
mount -t tmpfs -o size=4m tmpfs {state}
{cli} switch tiny-a --manifest {manifest} -q; echo "rc-a=$?"
mount --bind {state} {state} && mount -o remount,ro,bind {state}
{cli} switch tiny-b --manifest {manifest}; echo "rc-b=$?"
{cli} stop; echo "rc-ro-stop=$?"
{cli} stop --json; echo "rc-ro-stop-json=$?"
{cli} status --json
umount {state}
{cli} stop; echo "rc-stop=$?"
""",
        tmp_path,
    )
    assert "rc-a=0" in text and "rc-b=4" in text, text
    assert "rc-ro-stop=4" in text and "rc-ro-stop-json=4" in text, text
    assert "read-only file system" in text and '"type": "StateDirError"' in text
    assert '"profile": "tiny-a"' in text and '"running": true' in text
    assert "rc-stop=0" in text and NO_TRACEBACK not in text
    assert llama_pids(llama_server_bin) == []


def test_a_state_folder_that_is_a_file(
    tmp_path: Path,
    llama_server_bin: Path,
    tiny_models: tuple[Path, Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    free_port: int,
) -> None:
    manifest = _profiles(tmp_path, llama_server_bin, tiny_models)
    blocker = tmp_path / "state-file"
    blocker.write_text("not a folder\n")
    monkeypatch.setenv("LLMCTL_STATE_DIR", str(blocker))
    for args in (["switch", "tiny-a", "--manifest", str(manifest)], ["stop"]):
        for extra in ([], ["--json"]):
            out = llmctl(*args, *extra)
            assert out.returncode == 4, out
            assert "it is a file, not a folder" in out.stdout + out.stderr
            assert NO_TRACEBACK not in out.stdout + out.stderr
    # serve answers with the reason and logs no traceback
    s = start_serve(manifest, free_port, tmp_path)
    try:
        r = chat(s, "A")
        assert r.status_code == 503
        assert "it is a file, not a folder" in r.json()["error"]["message"]
    finally:
        stop_serve(s)
    assert NO_TRACEBACK not in s.logs()


# --- 6: a lost state file does not lose the running server --------------------------------


def test_a_corrupt_state_file_finds_the_server_by_its_launch_id(
    tmp_path: Path, llama_server_bin: Path, tiny_models: tuple[Path, Path, Path]
) -> None:
    import json

    manifest = str(_profiles(tmp_path, llama_server_bin, tiny_models))
    assert llmctl("switch", "tiny-a", "--manifest", manifest, "-q").returncode == 0
    [pid] = llama_pids(llama_server_bin)
    state = paths.state_dir() / "state.json"
    state.write_text("{not json")
    out = llmctl("status", "--json")
    status = json.loads(out.stdout)
    assert status["running"] is True and status["profile"] == "tiny-a" and status["pid"] == pid
    assert "adopted" in status["note"] and "set aside" in status["note"]
    # the adopted record serves the next commands: a switch finds the port free
    state.write_text("{not json")
    out = llmctl("switch", "tiny-b", "--manifest", manifest)
    assert out.returncode == 0, out.stderr
    assert "adopted" in out.stderr and "stopping profile 'tiny-a'" in out.stderr
    [pid_b] = llama_pids(llama_server_bin)
    state.unlink()  # deleted: found the same way
    out = llmctl("stop")
    assert out.returncode == 0 and f"(pid {pid_b})" in out.stdout + out.stderr, out
    assert llama_pids(llama_server_bin) == []


# --- 8, 9: refusals known before a stream starts keep their status, and every answer is counted


def test_stream_refusals_before_any_byte_keep_status_and_are_counted(
    tmp_path: Path, llama_server_bin: Path, tiny_models: tuple[Path, Path, Path], free_port: int
) -> None:
    from fakes.fake_upstream import free_port as another_port

    manifest = write_manifest(
        tmp_path / "profiles.yaml", llama_server_bin, tiny_models, another_port()
    )
    # no room to wait for a switch; one timeout opens a breaker; the managed server answers
    # its first byte within 1 s or counts as failing
    manifest.write_text(
        manifest.read_text().replace(
            "serve:\n  queue: {max_size: 50, timeout: 60s}",
            "serve:\n  api_keys: [k1]\n  queue: {max_size: 0}\n"
            "  breaker: {failures: 1, open_for: 60s}\n"
            "  upstreams:\n    - {name: local, type: managed, timeout: 1s}",
        )
    )
    # tiny-long runs, started from a shell (the router has no room to wait for a switch)
    assert llmctl("switch", "tiny-long", "--manifest", str(manifest), "-q").returncode == 0
    s = start_serve(manifest, free_port, tmp_path)
    key = {"authorization": "Bearer k1"}
    url = s.url + "/v1/chat/completions"

    def post(model: str, **extra: object) -> httpx.Response:
        body = {**CHAT, "model": model, **extra}
        return httpx.post(url, json=body, headers=key, timeout=120)

    try:
        # 16,000 tokens cannot arrive within 1 s: a timeout before the first byte -> breaker open
        r = post("tiny-long", max_tokens=16000, ignore_eos=True)
        assert r.status_code == 504, r.text
        assert post("A").status_code == 429  # the queue has no room: refused, not queued
        streams = []
        for _ in range(3):
            streams.append(post("A", stream=True))
        for r in streams:
            assert r.status_code == 429, r.text
            assert r.headers["content-type"].startswith("application/json")
            assert int(r.headers["retry-after"]) >= 1
            assert r.json()["error"]["code"] == "queue_full"
        # tiny-a runs (a shell switched; the sidecar switch makes the router look at once), and a
        # stream for tiny-long, whose breaker is open, is refused with 503 before it starts
        assert llmctl("switch", "tiny-a", "--manifest", str(manifest), "-q").returncode == 0
        r = httpx.post(s.url + "/models/switch", json={"profile": "A"}, headers=key, timeout=60)
        assert r.status_code == 200 and r.json()["noop"] is True, r.text
        r = post("tiny-long", stream=True)
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "upstream_unavailable"
        assert int(r.headers["retry-after"]) >= 1
        assert httpx.post(url, json={**CHAT, "model": "A"}).status_code == 401
        metrics = httpx.get(s.url + "/metrics", headers=key).text
        assert 'status="503"} 1' in metrics, metrics
        assert 'status="429"} 4' in metrics, metrics
        assert 'status="401"} 1' in metrics, metrics
        assert 'status="504"} 1' in metrics, metrics
    finally:
        stop_serve(s)
        Supervisor(paths.state_dir(), lock_timeout=60).stop()


# --- 5, 10: slow clients, deep JSON, uploads cut short ---------------------------------------

LIMITS = """version: 1
serve:
  header_timeout: 1s
  body_timeout: 1s
  max_connections: 20
profiles:
  alpha:
    model: /models/alpha.gguf
"""


def _metric(served: Served, line_start: str) -> int:
    for line in httpx.get(served.url + "/metrics").text.splitlines():
        if line.startswith(line_start):
            return int(line.rsplit(" ", 1)[1])
    return 0


def test_slow_clients_are_cut_and_health_keeps_answering(tmp_path: Path, free_port: int) -> None:
    import socket

    manifest = tmp_path / "profiles.yaml"
    manifest.write_text(LIMITS)
    s = start_serve(manifest, free_port, tmp_path)
    half_open: list[socket.socket] = []
    try:
        # three times the connection limit, each with half a request header (slowloris)
        for _ in range(60):
            conn = socket.create_connection(("127.0.0.1", free_port))
            conn.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            half_open.append(conn)
        for _ in range(5):
            assert httpx.get(s.url + "/health", timeout=10).status_code == 200
        # every half-open connection is closed: by the limit, or after header_timeout
        for conn in half_open:
            conn.settimeout(30)
            with contextlib.suppress(ConnectionResetError):
                assert conn.recv(100) == b""
        # a body that stops coming: 408 after body_timeout
        conn = socket.create_connection(("127.0.0.1", free_port))
        conn.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{"
        )
        conn.settimeout(30)
        assert conn.recv(100).startswith(b"HTTP/1.1 408 ")
        conn.close()
    finally:
        for conn in half_open:
            conn.close()
        stop_serve(s)
    assert "Traceback" not in s.logs()


def test_deep_json_and_aborted_uploads_are_no_internal_errors(
    tmp_path: Path, free_port: int
) -> None:
    import socket

    manifest = tmp_path / "profiles.yaml"
    manifest.write_text(LIMITS.replace("body_timeout: 1s", "body_timeout: 60s"))
    s = start_serve(manifest, free_port, tmp_path)
    try:
        r = httpx.post(
            s.url + "/v1/chat/completions",
            content=b"[" * 100_000,
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
        for _ in range(20):
            conn = socket.create_connection(("127.0.0.1", free_port))
            conn.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b'Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"model":'
            )
            conn.close()
        # counted as clients gone (499), once each; wait until the router has seen all 20
        want = 'llmctl_requests_total{profile="",upstream="",status="499"}'
        for _ in range(600):
            if _metric(s, want) >= 20:
                break
            threading.Event().wait(0.05)
        assert _metric(s, want) == 20
        assert httpx.get(s.url + "/health").status_code == 200
    finally:
        stop_serve(s)
    assert "Traceback" not in s.logs() and "internal error" not in s.logs()


# --- also seen ---------------------------------------------------------------------------


def _reload_until_said(served: Served, manifest_text: str, said: str) -> None:
    """Write the manifest, SIGHUP the router, and wait (by its log, not the clock) until it
    logs `said`."""
    import signal

    served.manifest.write_text(manifest_text)
    served.proc.send_signal(signal.SIGHUP)
    for _ in range(1200):
        if said in served.logs():
            break
        threading.Event().wait(0.05)
    assert said in served.logs(), served.logs()


def test_removing_the_running_profile_stops_its_server(
    served: Served, llama_server_bin: Path
) -> None:

    assert chat(served, "B").status_code == 200
    assert len(llama_pids(llama_server_bin)) == 1
    text = served.manifest.read_text()
    start = text.index("  tiny-b:")
    end = text.index("  tiny-long:")
    _reload_until_said(
        served,
        text[:start] + text[end:],
        "stopped the server of profile tiny-b (is no longer in the manifest)",
    )
    assert llama_pids(llama_server_bin) == []
    models = httpx.get(served.url + "/v1/models").json()["data"]
    assert not any(m["loaded"] for m in models)


def test_a_changed_running_profile_restarts_with_its_new_flags(
    served: Served, llama_server_bin: Path
) -> None:
    """A SIGHUP that changes the running profile's launch: its server stops once idle, and
    the next request loads the new flags; before, it ran on with the old ones, nothing said."""

    assert chat(served, "B").status_code == 200
    (old_pid,) = llama_pids(llama_server_bin)
    text = served.manifest.read_text()
    start = text.index("  tiny-b:")
    end = text.index("  tiny-long:")
    block = text[start:end]
    assert "ctx_size: 512" in block
    _reload_until_said(
        served,
        text[:start] + block.replace("ctx_size: 512", "ctx_size: 640") + text[end:],
        "stopped the server of profile tiny-b (changed in the manifest)",
    )
    assert llama_pids(llama_server_bin) == []
    assert chat(served, "B").status_code == 200
    (new_pid,) = llama_pids(llama_server_bin)
    assert new_pid != old_pid
    rec = Supervisor(paths.state_dir()).records()["tiny-b"]
    assert "640" in rec.argv, rec.argv


def test_with_restart_changed_off_a_changed_profile_runs_on_marked_stale(
    served: Served, llama_server_bin: Path
) -> None:
    """`serve.restart_changed: false`: after the SIGHUP the server keeps its old flags and its
    pid, the router says so, and `llmctl ps` marks it stale."""
    import json

    assert chat(served, "B").status_code == 200
    (old_pid,) = llama_pids(llama_server_bin)
    text = served.manifest.read_text()
    start = text.index("  tiny-b:")
    end = text.index("  tiny-long:")
    block = text[start:end].replace("ctx_size: 512", "ctx_size: 640")
    edited = text[:start] + block + text[end:]
    edited = edited.replace("serve:\n", "serve:\n  restart_changed: false\n", 1)
    assert "restart_changed: false" in edited
    _reload_until_said(
        served, edited, "its server runs the old launch and stays (serve.restart_changed: false)"
    )
    assert llama_pids(llama_server_bin) == [old_pid]
    assert chat(served, "B").status_code == 200  # served by the old server, not reloaded
    assert llama_pids(llama_server_bin) == [old_pid]
    out = llmctl("ps", "--json", "--manifest", str(served.manifest))
    (row,) = json.loads(out.stdout)["servers"]
    assert row["stale"] is True and row["stale_why"], row


def test_access_log_masks_keys_in_the_query(tmp_path: Path, free_port: int) -> None:
    manifest = tmp_path / "profiles.yaml"
    manifest.write_text(LIMITS)
    s = start_serve(manifest, free_port, tmp_path, "--access-log")
    try:
        r = httpx.get(s.url + "/v1/models?api_key=sk-SECRET-1&x=1&access_token=sk-SECRET-2")
        assert r.status_code == 200
        assert httpx.get(s.url + "/health").status_code == 200
    finally:
        stop_serve(s)
    logs = s.logs()
    assert "/v1/models?api_key=***&x=1&access_token=***" in logs, logs
    assert "SECRET" not in logs


def test_api_key_in_extra_args_is_a_lint_error_and_masked_where_shown(
    tmp_path: Path, llama_server_bin: Path, tiny_models: tuple[Path, Path, Path]
) -> None:
    import json

    manifest = _profiles(tmp_path, llama_server_bin, tiny_models)
    text = manifest.read_text().replace(
        "    parallel: 2\n", "    parallel: 2\n    extra_args: [--api-key, sk-LEAK-1]\n", 1
    )
    manifest.write_text(text)
    out = llmctl("lint", "manifest", str(manifest), "--json")
    assert out.returncode == 1
    rules = [p["rule"] for p in json.loads(out.stdout)["problems"]]
    assert "server-api-key" in rules
    refused = llmctl("switch", "tiny-a", "--manifest", str(manifest))
    assert refused.returncode == 2 and "serve.api_keys" in refused.stderr
    assert "sk-LEAK-1" not in refused.stdout + refused.stderr
    # a secret llama-server does take (a Hugging Face token) is masked wherever argv is shown
    manifest.write_text(text.replace("--api-key, sk-LEAK-1", "-hft, sk-LEAK-1"))
    shown = llmctl("switch", "tiny-a", "--manifest", str(manifest))
    assert shown.returncode == 0, shown.stderr
    status = llmctl("status", "--json")
    data = json.loads(status.stdout)
    assert "-hft" in data["argv"] and "***" in data["argv"]
    command = llmctl("command", "tiny-a", "--manifest", str(manifest))
    log = Path(data["log"]).read_text()
    for seen in (shown.stdout + shown.stderr, status.stdout, command.stdout, log):
        assert "sk-LEAK-1" not in seen
    assert llmctl("stop").returncode == 0


def test_logs_of_a_running_server_whose_log_was_deleted(
    tmp_path: Path, llama_server_bin: Path, tiny_models: tuple[Path, Path, Path]
) -> None:
    import json

    manifest = _profiles(tmp_path, llama_server_bin, tiny_models)
    assert llmctl("switch", "tiny-a", "--manifest", str(manifest), "-q").returncode == 0
    try:
        log = Path(json.loads(llmctl("status", "--json").stdout)["log"])
        log.unlink()
        out = llmctl("logs", "-n", "5")
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() and "nothing was started" not in out.stdout + out.stderr
    finally:
        assert llmctl("stop").returncode == 0


def test_a_restarted_serve_stops_on_exit_what_the_killed_one_started(
    served: Served, llama_server_bin: Path, tmp_path: Path
) -> None:
    """kill -9 of serve leaves its server running; the next serve adopts it and, on SIGTERM,
    stops it as the first would have. A server started from a shell is left running."""
    assert chat(served, "B").status_code == 200
    served.proc.kill()
    served.proc.wait()
    assert len(llama_pids(llama_server_bin)) == 1  # outlived the killed router
    port = int(served.url.rsplit(":", 1)[1])
    again = start_serve(served.manifest, port, tmp_path)
    assert chat(again, "B").status_code == 200  # adopted, not started again
    stop_serve(again)
    assert llama_pids(llama_server_bin) == [], again.logs()
    # a server started from a shell outlives the router (as before)
    assert llmctl("switch", "B", "--manifest", str(served.manifest)).returncode == 0
    third = start_serve(served.manifest, port, tmp_path)
    assert chat(third, "B").status_code == 200
    stop_serve(third)
    assert len(llama_pids(llama_server_bin)) == 1
    assert llmctl("stop").returncode == 0
