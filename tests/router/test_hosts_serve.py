"""Two REAL `llmctl serve` processes on loopback, each with a REAL llama-server on a tiny model:
the front one lists the back one as a host (`type: llmctl`). It routes there, fails over to its
own server when the back host is gone, and routes there again when it is back. Every wait is on
observable state (the front's /llmctl/v1/state), with generous deadlines."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fakes.fake_upstream import free_port as another_port
from hosts_helpers import (
    Host,
    host_entry,
    host_manifest,
    make_host,
    state,
    stop_llama_servers,
    wait_until,
)

BACK_KEY = "back-secret"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from llmctl.testing.testmodels import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny.gguf", arch="llama")


@pytest.fixture
def two_hosts(
    tmp_path: Path, llama_server_bin: Path, tiny_model: Path
) -> Iterator[tuple[Host, Host]]:
    back_port = another_port()
    back = make_host(
        tmp_path,
        "back",
        host_manifest(
            tmp_path / "back.yaml",
            llama_server_bin,
            tiny_model,
            another_port(),
            profiles=("tiny", "only-back"),
            serve="api_keys_env: BACK_KEYS",
        ),
        back_port,
        {"BACK_KEYS": BACK_KEY},
    )
    front = make_host(
        tmp_path,
        "front",
        host_manifest(
            tmp_path / "front.yaml",
            llama_server_bin,
            tiny_model,
            another_port(),
            upstreams=f"""
- name: back
  type: llmctl
  url: http://127.0.0.1:{back_port}
  api_key_env: BACK_KEY
  poll_interval: 0.5s
- name: local
  type: managed
""",
        ),
        another_port(),
        {"BACK_KEY": BACK_KEY},
    )
    try:
        back.start()
        front.start()
        yield front, back
    finally:
        for h in (front, back):
            h.stop()
            stop_llama_servers(h)


def ps_all_hosts(front: Host, *args: str) -> subprocess.CompletedProcess[str]:
    """`llmctl ps --all-hosts` against the front router."""
    argv = [sys.executable, "-m", "llmctl", "ps", "--all-hosts", "--router", front.url]
    argv += ["--manifest", str(front.manifest), *args]
    return subprocess.run(argv, capture_output=True, text=True, env=front.env, timeout=60)


def chat(url: str, model: str) -> httpx.Response:
    return httpx.post(
        url + "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
        timeout=120,
    )


def test_front_routes_fails_over_and_recovers(two_hosts: tuple[Host, Host]) -> None:
    front, back = two_hosts

    def logs() -> str:
        return front.logs() + "\n--- back ---\n" + back.logs()

    def back_is(up: bool) -> bool:
        return bool(host_entry(front.url, "back")["up"]) is up

    wait_until("the front learns the back host", lambda: back_is(True), logs=logs)
    entry = host_entry(front.url, "back")
    assert {p["name"] for p in entry["profiles"]} == {"tiny", "only-back"}

    # /v1/models: the back's profiles, named for their host
    models = {m["id"]: m for m in httpx.get(front.url + "/v1/models").json()["data"]}
    assert models["only-back"]["owned_by"] == "back" and models["only-back"]["host"] == "back"
    assert models["tiny"]["owned_by"] == "llmctl" and models["tiny"]["hosts"] == ["back"]

    # nothing loaded anywhere, both fit: the first in the chain, the back host
    r = chat(front.url, "tiny")
    assert r.status_code == 200, r.text
    assert r.headers["x-llmctl-upstream"] == "back"
    assert r.headers["x-llmctl-profile"] == "tiny"  # the back host's own header
    assert chat(front.url, "only-back").headers["x-llmctl-upstream"] == "back"
    # llama-server's native path, without a model: pinned to the profile on the back host
    props = httpx.get(front.url + "/upstream/only-back/props", timeout=60)
    assert props.status_code == 200 and "default_generation_settings" in props.json()
    wait_until(
        "the front learns that the back host has tiny loaded",
        lambda: (
            {p["name"]: p["state"] for p in host_entry(front.url, "back")["profiles"]}.get(
                "only-back"
            )
            == "ready"
        ),
        logs=logs,
    )

    shown = ps_all_hosts(front)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].split() == ["HOST", "UP", "PROFILE", "STATE", "FITS", "INFLIGHT"]
    assert ["local", "up", "tiny", "idle", "yes", "0"] in [line.split() for line in lines]
    assert ["back", "up", "only-back", "ready", "yes", "0"] in [line.split() for line in lines]

    # the back host goes away: the front notices, and answers from its own server
    back.stop()
    stop_llama_servers(back)
    wait_until("the front marks the back host down", lambda: back_is(False), logs=logs)
    r = chat(front.url, "tiny")
    assert r.status_code == 200, r.text
    assert r.headers["x-llmctl-upstream"] == "local"
    gone = chat(front.url, "only-back")
    assert gone.status_code == 503, gone.text
    err = gone.json()["error"]
    assert err["code"] == "upstream_unavailable" and "back: host down" in err["message"]
    assert "Retry-After" in gone.headers

    shown = ps_all_hosts(front, "--json")
    assert shown.returncode == 1
    hosts = {h["name"]: h for h in json.loads(shown.stdout)["hosts"]}
    assert hosts["local"]["up"] and not hosts["back"]["up"] and hosts["back"]["error"]
    shown = ps_all_hosts(front)
    assert shown.returncode == 1 and "host back (http://127.0.0.1:" in shown.stderr

    # it comes back by itself: up again, and a profile loaded there is routed there again
    back.start()
    wait_until("the front sees the back host again", lambda: back_is(True), logs=logs)
    switched = httpx.post(
        back.url + "/models/switch",
        json={"profile": "tiny"},
        headers={"authorization": f"Bearer {BACK_KEY}"},
        timeout=120,
    )
    assert switched.status_code == 200, switched.text
    wait_until(
        "the front learns that the back host has tiny loaded",
        lambda: (
            {p["name"]: p["state"] for p in host_entry(front.url, "back")["profiles"]}.get("tiny")
            == "ready"
        ),
        logs=logs,
    )
    r = chat(front.url, "tiny")
    assert r.status_code == 200 and r.headers["x-llmctl-upstream"] == "back", r.text
    assert chat(front.url, "only-back").status_code == 200
    assert "host back is down" in front.logs() and "host back is up" in front.logs()
    # the front's own profiles in its state, as other hosts would read them
    mine = {p["name"]: p for p in state(front.url)["profiles"]}
    assert mine["tiny"]["state"] == "ready"
