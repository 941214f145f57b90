"""The router with several real llama-servers (`server.ports`): a budget on the CPU device that
holds two of three tiny profiles, loads from the router and from a shell, and the end state."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from llmctl.supervisor import procs
from llmctl.testing.testmodels import write_tiny_model
from processes import free_port_range, llmctl
from serving import Served, start_serve, stop_serve
from supervisor_helpers import wait_until


def chat(url: str, model: str, timeout: float = 120) -> httpx.Response:
    return httpx.post(
        url + "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        timeout=timeout,
    )


def servers() -> dict[str, dict[str, object]]:
    out = llmctl("ps", "--json")
    return {s["profile"]: s for s in json.loads(out.stdout)["servers"]}


@pytest.fixture
def served(
    tmp_path: Path, llama_server_bin: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Served]:
    model = write_tiny_model(tmp_path / "tiny.gguf")
    base = free_port_range(5)
    path = tmp_path / "profiles.yaml"
    # planned CPU bytes: about a 16 MiB, b 24 MiB, c 40 MiB; 70 MiB holds a+b or b+c, not all three
    path.write_text(
        f"""version: 1
server:
  binary: {llama_server_bin}
  ports: {base + 1}-{base + 4}
gpu:
  - {{name: CPU, vram: 70MiB, headroom: 0}}
serve:
  inflight_timeout: 30s
profiles:
  a: {{model: {model}, ctx_size: 4096, parallel: 1}}
  b: {{model: {model}, ctx_size: 8192, parallel: 1}}
  c: {{model: {model}, ctx_size: 16384, parallel: 1}}
"""
    )
    monkeypatch.setenv("LLMCTL_MANIFEST", str(path))
    srv = start_serve(path, base, tmp_path)
    try:
        yield srv
    finally:
        stop_serve(srv)
        llmctl("unload", "--all")


def test_two_fit_together_the_third_evicts_an_idle_one(served: Served) -> None:
    url = served.url
    assert chat(url, "a").status_code == 200
    assert chat(url, "b").status_code == 200
    both = servers()
    assert set(both) == {"a", "b"} and all(s["healthy"] for s in both.values())

    # co-resident: alternating requests cause no load
    status = httpx.get(url + "/models/status", timeout=10).json()
    loads_before = status["router"]["loaded"]
    assert sorted(loads_before) == ["a", "b"]
    for model in ["a", "b"] * 4:
        assert chat(url, model).status_code == 200
    assert {p: s["pid"] for p, s in servers().items()} == {p: s["pid"] for p, s in both.items()}

    # /v1/models and /models/status show every loaded profile with its devices
    models = {m["id"]: m for m in httpx.get(url + "/v1/models", timeout=10).json()["data"]}
    assert models["a"]["loaded"] and models["b"]["loaded"] and not models["c"]["loaded"]
    assert models["a"]["devices"] == ["CPU"]
    status = httpx.get(url + "/models/status", timeout=10).json()
    assert {s["profile"] for s in status["servers"]} == {"a", "b"}
    assert all(s["devices"] == ["CPU"] and s["healthy"] for s in status["servers"])

    # c does not fit beside both: b was used last, so a (idle longest) goes
    assert chat(url, "b").status_code == 200
    assert chat(url, "c").status_code == 200
    after = servers()
    assert set(after) == {"b", "c"}
    assert after["b"]["pid"] == both["b"]["pid"]
    assert not procs.is_alive(int(str(both["a"]["pid"])))

    # nothing left after unload --all
    pids = [int(str(s["pid"])) for s in after.values()]
    assert llmctl("unload", "--all").returncode == 0
    assert servers() == {}
    assert not any(procs.is_alive(p) for p in pids)
    # the router learns it, and loads again on the next request
    assert chat(url, "a").status_code == 200
    assert set(servers()) == {"a"}


def test_requests_for_a_loaded_profile_do_not_wait_for_another_load(
    served: Served, tmp_path: Path
) -> None:
    """`slow` loads from a fifo nobody writes: llama-server blocks opening it, so its load lasts
    until the test stops it (writing the model into the fifo would end it three ways: llama-server
    may fail to seek, read it whole, or open the file a second time and block until the queue's
    deadline)."""
    from llmctl.llama.gguf import read_gguf

    url = served.url
    model = tmp_path / "tiny.gguf"
    meta = {
        k: v
        for k, v in read_gguf(model).metadata.items()
        if not k.startswith("tokenizer.") and isinstance(v, (int, float, str))
    }
    meta["llama.vocab_size"] = len(read_gguf(model).metadata["tokenizer.ggml.tokens"])
    meta["weights_bytes"] = model.stat().st_size
    fifo = tmp_path / "slow.gguf"
    os.mkfifo(fifo)
    text = served.manifest.read_text()
    text += (
        f"  slow: {{model: {fifo}, ctx_size: 2048, parallel: 1, metadata: {json.dumps(meta)}}}\n"
    )
    served.manifest.write_text(text)
    served.proc.send_signal(signal.SIGHUP)
    assert chat(url, "b").status_code == 200  # b loaded (the reload is done once slow is known)

    def listed() -> bool:
        ids = {m["id"] for m in httpx.get(url + "/v1/models", timeout=10).json()["data"]}
        return "slow" in ids

    assert wait_until(listed, 30)
    result: dict[str, int] = {}
    t = threading.Thread(target=lambda: result.setdefault("slow", chat(url, "slow").status_code))
    t.start()
    try:
        # the load has started: llama-server is blocked opening the fifo
        assert wait_until(lambda: servers().get("slow", {}).get("phase") == "starting", 60)
        for _ in range(3):
            assert chat(url, "b", timeout=30).status_code == 200
        assert servers()["slow"]["phase"] == "starting"  # b never waited for it
        b_pid = servers()["b"]["pid"]
    finally:
        # end the load: a stop from a shell cancels it, and its waiting request is refused
        stopped = llmctl("unload", "slow")
        t.join(120)
    assert stopped.returncode == 0, stopped.stderr
    assert "cancelled the load of 'slow'" in stopped.stdout
    assert result["slow"] == 503
    running = servers()
    assert running["b"]["healthy"] and running["b"]["pid"] == b_pid
    assert chat(url, "b").status_code == 200


def test_a_server_that_dies_is_loaded_again_and_only_it(served: Served) -> None:
    url = served.url
    assert chat(url, "a").status_code == 200
    assert chat(url, "b").status_code == 200
    before = servers()
    pid = int(str(before["a"]["pid"]))
    os.kill(pid, signal.SIGKILL)
    # a server that died: gone once its last thread has exited (it holds its port until then)
    wait_until(lambda: not procs.is_alive(pid), timeout=30)
    assert chat(url, "a").status_code == 200  # relaunched by this request
    after = servers()
    assert after["a"]["pid"] != before["a"]["pid"] and after["a"]["healthy"]
    assert after["b"]["pid"] == before["b"]["pid"]
