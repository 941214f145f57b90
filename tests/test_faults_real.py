"""Faults of issue 8 against a real `llmctl serve` process and REAL llama-servers on tiny models:
breakers that belong to what fails, operators switching beside router traffic, state-folder faults,
a corrupt state file, refusals known before a stream starts."""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from llmctl import paths
from llmctl.supervisor.lifecycle import Supervisor
from serving import Served, start_serve, stop_serve
from test_router_real import llama_pids, write_manifest

CHAT = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    from llmctl.llama.tinymodel import write_tiny_model

    folder = tmp_path_factory.mktemp("models")
    return (
        write_tiny_model(folder / "tiny-a.gguf", arch="llama"),
        write_tiny_model(folder / "tiny-b.gguf", arch="llama", seed=7),
        write_tiny_model(folder / "tiny-long.gguf", arch="llama", n_ctx_train=32768),
    )


def llmctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmctl", *args], capture_output=True, text=True, timeout=120
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
    assert chat(served, "A").status_code == 200
    statuses: list[int] = []
    bodies: list[str] = []
    done = threading.Event()

    def traffic() -> None:
        while not done.is_set():
            r = chat(served, "A")
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
