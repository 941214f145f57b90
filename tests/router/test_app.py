"""The router on a real uvicorn server, in front of FAKE upstreams and a FAKE supervisor.

The fakes do what real servers cannot do on demand: fail to load, die mid-stream, answer 500,
hang. Streaming and disconnects are tested over real sockets.
"""

from __future__ import annotations

import concurrent.futures
import json
import socket
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from fakes.fake_supervisor import FakeSupervisor, fake_spec
from fakes.fake_upstream import FakeUpstream, ServerThread, free_port
from llmctl.manifest.validate import load_manifest
from llmctl.router.app import create_app
from llmctl.router.runtime import Router

PROFILES = """
profiles:
  alpha:
    model: /models/alpha.gguf
    aliases: [Alpha-Chat, a]
    description: the first one
  beta:
    model: /models/beta.gguf
    aliases: [b]
"""


def manifest_file(tmp_path: Path, serve: str = "", profiles: str = PROFILES) -> Path:
    path = tmp_path / "profiles.yaml"
    text = "version: 1\n"
    if serve:
        text += "serve:\n" + textwrap.indent(textwrap.dedent(serve).strip("\n"), "  ") + "\n"
    text += textwrap.dedent(profiles)
    path.write_text(text)
    return path


@contextmanager
def router(
    tmp_path: Path,
    sup: Any,
    serve: str = "",
    *,
    environ: dict[str, str] | None = None,
    heartbeat: float = 5.0,
    idle_unload: bool = True,
) -> Iterator[tuple[str, Router]]:
    path = manifest_file(tmp_path, serve)
    app = create_app(
        load_manifest(path),
        sup,
        manifest_path=path,
        spec_for=fake_spec,
        environ=environ or {},
        heartbeat=heartbeat,
        idle_unload=idle_unload,
    )
    with ServerThread(app) as st:
        yield st.url, app.state.router


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream("local-fake") as f:
        yield f


def chat(model: str | None = "alpha", stream: bool = False, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}], "stream": stream}
    if model is not None:
        body["model"] = model
    body.update(extra)
    return body


def sse_data(text: str) -> list[Any]:
    out = []
    for line in text.splitlines():
        if line.startswith("data: "):
            payload = line[6:]
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


# --- request validation ----------------------------------------------------------------


def test_bad_json_is_a_400_openai_error(tmp_path: Path, fake: FakeUpstream) -> None:
    with router(tmp_path, FakeSupervisor(fake, running="alpha")) as (url, _):
        r = httpx.post(
            url + "/v1/chat/completions",
            content=b"{not json",
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 400
        err = r.json()["error"]
        assert set(err) >= {"message", "type", "param", "code"}
        assert err["type"] == "invalid_request_error" and err["code"] == "invalid_json"
        r = httpx.post(url + "/v1/chat/completions", json=[1, 2])
        assert r.status_code == 400 and "JSON object" in r.json()["error"]["message"]
        r = httpx.post(url + "/v1/chat/completions", content=b"")
        assert r.status_code == 400
        r = httpx.post(url + "/v1/chat/completions", json={"model": 5})
        assert r.status_code == 400 and r.json()["error"]["param"] == "model"
    assert fake.seen == []


def test_oversized_body_is_413(tmp_path: Path, fake: FakeUpstream) -> None:
    with router(tmp_path, FakeSupervisor(fake, running="alpha"), "max_body_size: 1000") as (url, _):
        big = chat(content="x" * 2000)
        r = httpx.post(url + "/v1/chat/completions", json=big)
        assert r.status_code == 413
        assert r.json()["error"]["code"] == "request_too_large"

        # chunked upload without a content-length is counted as it arrives
        def gen() -> Iterator[bytes]:
            for _ in range(10):
                yield b" " * 200

        r = httpx.post(url + "/v1/chat/completions", content=gen())
        assert r.status_code == 413
        r = httpx.post(url + "/v1/chat/completions", json=chat())
        assert r.status_code == 200
    assert len(fake.seen) == 1


def test_unknown_model_is_404_listing_available(tmp_path: Path, fake: FakeUpstream) -> None:
    with router(tmp_path, FakeSupervisor(fake, running="alpha")) as (url, _):
        r = httpx.post(url + "/v1/chat/completions", json=chat("gamma"))
        assert r.status_code == 404
        err = r.json()["error"]
        assert err["code"] == "model_not_found" and err["param"] == "model"
        assert "alpha" in err["message"] and "Alpha-Chat" in err["message"]
        assert err["available"] == ["alpha", "beta", "Alpha-Chat", "a", "b"]
    assert fake.seen == []


def test_api_keys_required_and_compared(tmp_path: Path, fake: FakeUpstream) -> None:
    serve = """
    api_keys: [manifest-key]
    api_keys_env: MY_KEYS
    """
    env = {"MY_KEYS": "env-key-1, env-key-2"}
    with router(tmp_path, FakeSupervisor(fake, running="alpha"), serve, environ=env) as (url, _):
        r = httpx.post(url + "/v1/chat/completions", json=chat())
        assert r.status_code == 401
        assert r.json()["error"]["type"] == "authentication_error"
        for bad in (
            "Bearer wrong",
            "Basic manifest-key",
            "Bearer",
            "Bearer manifest-key2",
        ):
            r = httpx.post(
                url + "/v1/chat/completions", json=chat(), headers={"authorization": bad}
            )
            assert r.status_code == 401, bad
        for good in ("manifest-key", "env-key-1", "env-key-2"):
            r = httpx.post(
                url + "/v1/chat/completions",
                json=chat(),
                headers={"authorization": f"Bearer {good}"},
            )
            assert r.status_code == 200, good
        # as llama-server reads keys: a bare Authorization value, or x-api-key (Anthropic's SDK)
        headers: dict[str, str]
        for headers in ({"authorization": "manifest-key"}, {"x-api-key": "env-key-1"}):
            r = httpx.post(url + "/v1/messages", json=chat(), headers=headers)
            assert r.status_code == 200, headers
        # Authorization wins over x-api-key, as in llama-server
        r = httpx.post(
            url + "/v1/messages",
            json=chat(),
            headers={"authorization": "Bearer wrong", "x-api-key": "env-key-1"},
        )
        assert r.status_code == 401
        # /v1/health is as open as /health; CORS preflights need no key
        assert httpx.get(url + "/v1/health").status_code == 200
        r = httpx.options(url + "/v1/chat/completions", headers={"origin": "http://localhost:3000"})
        assert r.status_code == 200 and r.text == ""
        assert r.headers["access-control-allow-origin"] == "http://localhost:3000"
        for path in ("/v1/models", "/metrics", "/models/status", "/models/available"):
            assert httpx.get(url + path).status_code == 401, path
        assert httpx.post(url + "/models/switch", json={"profile": "beta"}).status_code == 401
        assert httpx.post(url + "/models/stop").status_code == 401
        # health stays open for load balancers
        assert httpx.get(url + "/health").status_code == 200
        # the router's key never reaches the upstream, and no key shows in the status output
        status = httpx.get(
            url + "/models/status", headers={"authorization": "Bearer env-key-2"}
        ).text
        assert "manifest-key" not in status and "env-key" not in status
    assert len(fake.seen) == 5
    assert all("authorization" not in s.headers for s in fake.seen)
    assert all("x-api-key" not in s.headers for s in fake.seen)


def test_unknown_route_and_method_are_openai_errors(tmp_path: Path, fake: FakeUpstream) -> None:
    with router(tmp_path, FakeSupervisor(fake, running="alpha")) as (url, _):
        r = httpx.get(url + "/nope")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        r = httpx.get(url + "/models/switch")
        assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


# --- pass-through ------------------------------------------------------------------------


def test_non_streaming_passes_through_with_upstream_header(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    with router(tmp_path, FakeSupervisor(fake, running="alpha")) as (url, _):
        r = httpx.post(
            url + "/v1/chat/completions", json=chat("ALPHA-chat"), headers={"x-custom": "kept"}
        )
        assert r.status_code == 200
        assert r.headers["x-llmctl-upstream"] == "local"
        assert r.json()["choices"][0]["message"]["content"] == "tok0 tok1 tok2 tok3 tok4"
        r = httpx.post(url + "/v1/embeddings", json={"model": "a", "input": "x"})
        assert r.status_code == 200 and r.json()["data"][0]["embedding"] == [0.1, 0.2, 0.3]
        r = httpx.post(
            url + "/v1/completions?x=1", json={"prompt": "p"}
        )  # no model: the running one
        assert r.status_code == 200
    assert [s.path for s in fake.seen] == [
        "/v1/chat/completions",
        "/v1/embeddings",
        "/v1/completions",
    ]
    assert fake.seen[0].headers["x-custom"] == "kept"
    assert fake.seen[0].model == "ALPHA-chat"


def test_streaming_is_chunk_by_chunk(tmp_path: Path) -> None:
    with (
        FakeUpstream("slow", tokens=6, token_delay=0.2) as fake,
        router(tmp_path, FakeSupervisor(fake, running="alpha")) as (url, _),
    ):
        arrivals: list[float] = []
        t0 = time.monotonic()
        with httpx.stream("POST", url + "/v1/chat/completions", json=chat(stream=True)) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            assert r.headers["x-accel-buffering"] == "no"
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    arrivals.append(time.monotonic() - t0)
        # 7 events (6 tokens + end); the first arrives long before the last
        assert len(arrivals) == 7
        # the first token long before the last (1 s of token delays between them): relayed as
        # they come, not buffered; no absolute bound, which a loaded machine could miss
        assert arrivals[-1] - arrivals[0] > 0.9


def test_client_disconnect_cancels_upstream(tmp_path: Path) -> None:
    with FakeUpstream("slow", tokens=100, token_delay=0.05) as fake:
        sup = FakeSupervisor(fake, running="alpha")
        with router(tmp_path, sup) as (url, rt):
            with httpx.stream("POST", url + "/v1/chat/completions", json=chat(stream=True)) as r:
                lines = r.iter_lines()
                got = [next(lines) for _ in range(3)]
                assert any(g.startswith("data: ") for g in got)
            # the client is gone: the upstream generation is cancelled within a few tokens
            assert fake.cancelled.wait(3), "upstream stream was not cancelled"
            assert fake.streams_finished == 0
            deadline = time.monotonic() + 30
            while rt.scheduler.inflight and time.monotonic() < deadline:
                time.sleep(0.01)
            assert rt.scheduler.inflight == 0  # the lease was released
            m = httpx.get(url + "/metrics").text
            assert 'llmctl_requests_total{profile="alpha",upstream="local",status="499"} 1' in m


def test_upstream_killed_mid_stream_ends_with_sse_error(tmp_path: Path) -> None:
    with (
        FakeUpstream("dying", tokens=10, mode="die:3") as fake,
        router(tmp_path, FakeSupervisor(fake, running="alpha")) as (url, rt),
    ):
        with httpx.stream("POST", url + "/v1/chat/completions", json=chat(stream=True)) as r:
            assert r.status_code == 200
            text = "".join(r.iter_text())
        events = sse_data(text)
        assert [e["choices"][0]["delta"]["content"] for e in events[:3]] == [
            "tok0 ",
            "tok1 ",
            "tok2 ",
        ]
        assert events[-1]["error"]["code"] == "upstream_error"
        assert "during the response" in events[-1]["error"]["message"]
        assert rt.upstreams is not None
        assert rt.upstreams.managed is not None
        breaker = rt.upstreams.managed.breaker_for("alpha")
        # the router records the failure once the response is over, maybe after the client read it
        deadline = time.monotonic() + 10
        while breaker.snapshot()["consecutive_failures"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert breaker.snapshot()["consecutive_failures"] == 1


def test_openai_sdk_sees_mid_stream_error(tmp_path: Path) -> None:
    import openai

    with (
        FakeUpstream("dying", tokens=10, mode="die:2") as fake,
        router(tmp_path, FakeSupervisor(fake, running="alpha")) as (url, _),
        openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0) as client,
    ):
        stream = client.chat.completions.create(
            model="alpha", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        got = []
        with pytest.raises(openai.APIError) as info:
            for chunk in stream:
                got.append(chunk.choices[0].delta.content)
        assert got == ["tok0 ", "tok1 "]
        assert "during the response" in str(info.value)


# --- fallback and breakers ----------------------------------------------------------------


def fallback_serve(primary_url: str, fallback_url: str, extra: str = "") -> str:
    return f"""
    breaker: {{failures: 2, open_for: 0.5s, max_open_for: 2s}}
    upstreams:
      - {{name: gpu, url: "{primary_url}/v1", models: ["*"], timeout: 2s}}
      - {{name: backup, url: "{fallback_url}", models: ["*"], api_key_env: BACKUP_KEY, model_map: {{alpha: backup-model}}}}
    {extra}
    """


def test_primary_down_fallback_serves(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with FakeUpstream("backup") as backup, FakeUpstream("local") as local:
        serve = f"""
        upstreams:
          - {{name: gpu-box, url: "{dead}/v1", models: [big-model], timeout: 2s}}
          - {{name: cloud, url: "{backup.url}/v1", models: [big-model], api_key_env: BACKUP_KEY}}
        """
        env = {"BACKUP_KEY": "sk-backup-secret"}
        with router(tmp_path, FakeSupervisor(local, running="alpha"), serve, environ=env) as (
            url,
            _rt,
        ):
            r = httpx.post(
                url + "/v1/chat/completions",
                json=chat("big-model"),
                headers={"authorization": "Bearer client"},
            )
            assert r.status_code == 200
            assert r.headers["x-llmctl-upstream"] == "cloud"
            assert r.json()["system_fingerprint"] == "backup"
            assert backup.seen[-1].headers["authorization"] == "Bearer sk-backup-secret"
            status = httpx.get(url + "/models/status").json()
            assert [u["name"] for u in status["upstreams"]] == ["local", "gpu-box", "cloud"]
            assert "sk-backup-secret" not in json.dumps(status)
            assert status["upstreams"][2]["api_key_set"] is True
            assert status["upstreams"][1]["breaker"]["consecutive_failures"] == 1
            m = httpx.get(url + "/metrics").text
            assert 'llmctl_fallbacks_total{upstream="gpu-box",reason="connect"} 1' in m
            assert 'llmctl_requests_total{profile="",upstream="cloud",status="200"} 1' in m
    assert local.seen == []


def test_failed_load_falls_back_when_chain_has_more(tmp_path: Path) -> None:
    with FakeUpstream("backup") as backup, FakeUpstream("local") as local:
        sup = FakeSupervisor(local, running="alpha", load_time=0.1)
        sup.fail["beta"] = "out of memory"
        serve = f"""
        upstreams:
          - {{name: local, type: managed}}
          - {{name: cloud, url: "{backup.url}/v1", models: [beta]}}
        """
        with router(tmp_path, sup, serve) as (url, _rt):
            r = httpx.post(url + "/v1/chat/completions", json=chat("b"))
            assert r.status_code == 200 and r.headers["x-llmctl-upstream"] == "cloud"
            assert backup.seen[-1].model == "b"
            assert sup.switches == ["beta"]


def test_fallback_chain_order_and_mapping(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with FakeUpstream("backup") as backup, FakeUpstream("local-fake") as local:
        sup = FakeSupervisor(local, running="alpha")
        serve = f"""
        breaker: {{failures: 2, open_for: 0.5s, max_open_for: 2s}}
        upstreams:
          - {{name: gpu, url: "{dead}/v1", models: ["*"], timeout: 2s}}
          - {{name: local, type: managed}}
          - {{name: backup, url: "{backup.url}", api_key_env: BACKUP_KEY, model_map: {{alpha: backup-model}}, models: [alpha, cloud-only]}}
        """
        with router(tmp_path, sup, serve, environ={"BACKUP_KEY": "sk-backup"}) as (url, _rt):
            # gpu is down -> local serves
            r = httpx.post(url + "/v1/chat/completions", json=chat("alpha"))
            assert r.status_code == 200 and r.headers["x-llmctl-upstream"] == "local"
            # a model only the backup lists goes straight there, no switch
            r = httpx.post(
                url + "/v1/chat/completions",
                json=chat("cloud-only"),
                headers={"authorization": "Bearer client-key"},
            )
            assert r.status_code == 200 and r.headers["x-llmctl-upstream"] == "backup"
            assert backup.seen[-1].model == "cloud-only"
            assert backup.seen[-1].headers["authorization"] == "Bearer sk-backup"
            # the managed server fails to serve -> backup, with the model name mapped
            local.mode = "error500"
            r = httpx.post(url + "/v1/chat/completions", json=chat("alpha"))
            assert r.status_code == 200 and r.headers["x-llmctl-upstream"] == "backup"
            assert backup.seen[-1].model == "backup-model"
            assert sup.switches == []
            models = httpx.get(url + "/v1/models").json()["data"]
            assert {"cloud-only"} <= {m["id"] for m in models}


def breakers(url: str) -> dict[str, dict[str, object]]:
    """Breaker snapshots by upstream name; the managed server's for profile alpha as `local`."""
    out = {}
    for u in httpx.get(url + "/models/status").json()["upstreams"]:
        out[u["name"]] = (
            u["profile_breakers"].get("alpha") if u["type"] == "managed" else u["breaker"]
        )
    return out


def test_breaker_opens_half_opens_and_closes(tmp_path: Path) -> None:
    with (
        FakeUpstream("primary", mode="error503") as primary,
        FakeUpstream("backup") as backup,
        FakeUpstream("local") as local,
    ):
        serve = f"""
        breaker: {{failures: 2, open_for: 2s, max_open_for: 20s}}
        upstreams:
          - {{name: primary, url: "{primary.url}/v1", timeout: 2s}}
          - {{name: backup, url: "{backup.url}/v1"}}
        """
        with router(tmp_path, FakeSupervisor(local, running="alpha"), serve) as (url, rt):
            # the breakers' time is the test's: open periods pass when the test says so, however
            # slow the machine (per-profile breakers copy the clock of their template)
            now = [time.monotonic()]
            assert rt.upstreams is not None
            for u in rt.upstreams.all:
                u.breaker._clock = lambda: now[0]
            # every request lands on backup; primary sees two, then its breaker opens
            for _ in range(4):
                r = httpx.post(url + "/v1/chat/completions", json=chat("cloud"))
                assert r.status_code == 404  # 'cloud' is unknown: nothing forwarded

            def ask() -> httpx.Response:
                return httpx.post(
                    url + "/v1/chat/completions", json=chat("alpha"), headers={"x-fake-mode": "ok"}
                )

            local.mode = "error503"
            primary.mode = "error503"
            n_primary = len(primary.seen)
            for _ in range(4):
                r = httpx.post(url + "/v1/chat/completions", json=chat("alpha"))
                assert r.status_code == 200 and r.headers["x-llmctl-upstream"] == "backup"
            assert len(primary.seen) - n_primary == 2
            st = breakers(url)
            assert st["primary"]["state"] == "open" and st["local"]["state"] == "open"
            assert 'llmctl_breaker_state{upstream="primary"} 2' in httpx.get(url + "/metrics").text
            # after open_for, one probe goes through; it fails -> reopened for twice as long
            now[0] += 2.05
            r = httpx.post(url + "/v1/chat/completions", json=chat("alpha"))
            assert r.headers["x-llmctl-upstream"] == "backup"
            assert len(primary.seen) - n_primary == 3
            st = breakers(url)
            assert st["primary"]["state"] == "open" and st["primary"]["open_for_s"] == 4.0
            # heal the primary; after the (longer) open time the probe succeeds and closes it
            primary.mode = "ok"
            local.mode = "ok"
            now[0] += 4.05
            r = httpx.post(url + "/v1/chat/completions", json=chat("alpha"))
            assert r.status_code == 200
            st = breakers(url)
            assert st["local"]["state"] == "closed"
            assert ask().headers["x-llmctl-upstream"] == "local"


def test_client_errors_do_not_trip_breaker(tmp_path: Path) -> None:
    with FakeUpstream("local", mode="error400") as local:
        serve = "breaker: {failures: 2, open_for: 30s}"
        with router(tmp_path, FakeSupervisor(local, running="alpha"), serve) as (url, rt):
            for _ in range(5):
                r = httpx.post(url + "/v1/chat/completions", json=chat())
                assert r.status_code == 400
                assert r.json()["error"]["type"] == "invalid_request_error"
            assert rt.upstreams is not None and rt.upstreams.managed is not None
            assert rt.upstreams.managed.breaker_for("alpha").state == "closed"


def test_all_upstreams_failing(tmp_path: Path) -> None:
    with FakeUpstream("local", mode="error503") as local:
        serve = "breaker: {failures: 1, open_for: 30s}"
        with router(tmp_path, FakeSupervisor(local, running="alpha"), serve) as (url, _rt):
            r = httpx.post(url + "/v1/chat/completions", json=chat())
            assert r.status_code == 503
            assert "local is broken" in r.json()["error"]["message"]
            r = httpx.post(url + "/v1/chat/completions", json=chat())
            assert r.status_code == 503
            assert r.json()["error"]["code"] == "upstream_unavailable"
            assert 1 <= int(r.headers["retry-after"]) <= 30


def test_timeout_before_first_byte_falls_back(tmp_path: Path) -> None:
    with (
        FakeUpstream("hanging", mode="hang") as hanging,
        FakeUpstream("backup") as backup,
        FakeUpstream("local") as local,
    ):
        serve = f"""
        upstreams:
          - {{name: hanging, url: "{hanging.url}", timeout: 0.3s}}
          - {{name: backup, url: "{backup.url}"}}
        """
        with router(tmp_path, FakeSupervisor(local, running="alpha"), serve) as (url, _):
            t0 = time.monotonic()
            r = httpx.post(url + "/v1/chat/completions", json=chat("cloud-model"), timeout=10)
            assert r.status_code == 404
            local.mode = "error500"
            r = httpx.post(
                url + "/v1/chat/completions", json=chat("alpha", stream=True), timeout=10
            )
            assert r.status_code == 200 and r.headers["x-llmctl-upstream"] == "backup"
            assert time.monotonic() - t0 < 3
            assert sse_data(r.text)[-1] == "[DONE]"


# --- the queue and switching -----------------------------------------------------------


def test_request_for_other_profile_switches(tmp_path: Path, fake: FakeUpstream) -> None:
    sup = FakeSupervisor(fake, running="alpha", load_time=0.2)
    with router(tmp_path, sup) as (url, _rt):
        r = httpx.post(url + "/v1/chat/completions", json=chat("b"))
        assert r.status_code == 200 and r.json()["model"] == "beta"
        assert sup.switches == ["beta"]
        models = {m["id"]: m for m in httpx.get(url + "/v1/models").json()["data"]}
        assert models["beta"]["loaded"] and models["b"]["loaded"] and not models["alpha"]["loaded"]
        assert models["alpha"]["aliases"] == ["Alpha-Chat", "a"]
        # no model: the running profile
        r = httpx.post(url + "/v1/chat/completions", json=chat(None))
        assert r.json()["model"] == "beta"
        m = httpx.get(url + "/metrics").text
        assert 'llmctl_switch_duration_seconds_count{profile="beta",result="ok"} 1' in m
        assert 'llmctl_loaded_profile{profile="beta"} 1' in m


def test_default_profile_when_nothing_runs(tmp_path: Path, fake: FakeUpstream) -> None:
    sup = FakeSupervisor(fake)
    with router(tmp_path, sup, "default_profile: b") as (url, _):
        r = httpx.post(url + "/v1/chat/completions", json=chat(None))
        assert r.status_code == 200 and r.json()["model"] == "beta"
    with router(tmp_path, FakeSupervisor(fake)) as (url, _):
        r = httpx.post(url + "/v1/chat/completions", json=chat(None))
        assert r.status_code == 400 and r.json()["error"]["code"] == "model_required"


def test_full_queue_is_429_with_retry_after(tmp_path: Path, fake: FakeUpstream) -> None:
    sup = FakeSupervisor(fake, running="alpha")
    sup.gate = threading.Event()  # the load of beta lasts until the test is done with the queue
    with router(tmp_path, sup, "queue: {max_size: 2, timeout: 10s}") as (url, rt):
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            waiting = [
                pool.submit(httpx.post, url + "/v1/chat/completions", json=chat("beta"), timeout=10)
                for _ in range(2)
            ]
            deadline = time.monotonic() + 30
            while rt.scheduler.depth < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            r = httpx.post(url + "/v1/chat/completions", json=chat("alpha"))
            assert r.status_code == 429
            assert r.json()["error"]["code"] == "queue_full"
            assert r.json()["error"]["type"] == "rate_limit_error"
            assert int(r.headers["retry-after"]) >= 1
            # streaming clients get the 429 too (before any stream starts)
            r = httpx.post(url + "/v1/chat/completions", json=chat("alpha", stream=True))
            assert r.status_code == 429
            sup.gate.set()
            assert [f.result().status_code for f in waiting] == [200, 200]
        assert sup.switches == ["beta"]


def test_queue_deadline_is_504(tmp_path: Path, fake: FakeUpstream) -> None:
    sup = FakeSupervisor(fake, running="alpha")
    sup.gate = threading.Event()  # the load of beta never ends: only the deadline answers
    with router(tmp_path, sup, "queue: {max_size: 5, timeout: 0.3s}") as (url, _rt):
        r = httpx.post(url + "/v1/chat/completions", json=chat("beta"), timeout=10)
        assert r.status_code == 504
        err = r.json()["error"]
        assert err["code"] == "queue_timeout" and err["type"] == "timeout_error"
        assert int(r.headers["retry-after"]) >= 1
        # a streaming client that only waited in the queue (no byte sent yet) gets the same 504
        r = httpx.post(url + "/v1/chat/completions", json=chat("alpha", stream=True), timeout=10)
        assert r.status_code == 504
        assert r.json()["error"]["code"] == "queue_timeout"
        assert int(r.headers["retry-after"]) >= 1
        sup.gate.set()


def test_failed_load_fails_every_waiter_with_reason(tmp_path: Path, fake: FakeUpstream) -> None:
    sup = FakeSupervisor(fake, running="alpha")
    sup.fail["beta"] = "error: exiting due to model loading error"
    sup.gate = threading.Event()  # the load fails once all three wait for it
    with router(tmp_path, sup) as (url, rt):
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            futs = [
                pool.submit(httpx.post, url + "/v1/chat/completions", json=chat("beta"), timeout=10)
                for _ in range(3)
            ]
            deadline = time.monotonic() + 30
            while rt.scheduler.depth < 3 and time.monotonic() < deadline:
                time.sleep(0.01)
            sup.gate.set()
            results = [f.result() for f in futs]
        assert [r.status_code for r in results] == [503, 503, 503]
        for r in results:
            err = r.json()["error"]
            assert err["code"] == "model_load_failed"
            assert "exiting due to model loading error" in err["message"]
            assert err["stderr_tail"] == ["error: exiting due to model loading error"]
        assert sup.switches == ["beta"]  # one load, joined by all three
        # the router is still usable: alpha loads again
        r = httpx.post(url + "/v1/chat/completions", json=chat("alpha"))
        assert r.status_code == 200 and r.json()["model"] == "alpha"


def test_waiting_stream_gets_progress_comments(tmp_path: Path, fake: FakeUpstream) -> None:
    sup = FakeSupervisor(fake, running="alpha")
    sup.gate = threading.Event()  # the load ends once a heartbeat came
    with router(tmp_path, sup, heartbeat=0.1) as (url, _):
        with httpx.stream(
            "POST", url + "/v1/chat/completions", json=chat("beta", stream=True)
        ) as r:
            assert r.status_code == 200
            lines = []
            for line in r.iter_lines():
                lines.append(line)
                if line.startswith(": loading ..."):
                    sup.gate.set()
        comments = [ln for ln in lines if ln.startswith(":")]
        assert comments[0].startswith(": queued waiting for beta")
        assert any("loading load_tensors" in c for c in comments)
        assert any(c.startswith(": loading ...") for c in comments)  # heartbeat
        assert any(c.startswith(": ready") for c in comments)
        data = sse_data("\n".join(lines))
        assert data[-1] == "[DONE]" and data[0]["model"] == "beta"


def test_openai_sdk_streams_through_a_switch(tmp_path: Path, fake: FakeUpstream) -> None:
    import openai

    sup = FakeSupervisor(fake, running="alpha", load_time=0.3)
    with (
        router(tmp_path, sup, heartbeat=0.05) as (url, _),
        openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0) as client,
    ):
        stream = client.chat.completions.create(
            model="b", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert text == "tok0 tok1 tok2 tok3 tok4 "


def test_many_concurrent_requests_across_switches_none_lost(tmp_path: Path) -> None:
    with FakeUpstream("local", tokens=3, token_delay=0.01) as fake:
        sup = FakeSupervisor(fake, running="alpha", load_time=0.1)
        with router(tmp_path, sup, "queue: {max_size: 100, timeout: 30s}") as (url, rt):
            models = ["alpha", "beta", "a", "b", "Alpha-Chat"] * 12

            def one(i: int) -> tuple[str, int, Any]:
                m = models[i]
                stream = i % 2 == 0
                r = httpx.post(
                    url + "/v1/chat/completions", json=chat(m, stream=stream), timeout=30
                )
                if stream:
                    data = sse_data(r.text)
                    return (
                        m,
                        r.status_code,
                        data[0].get("model") if data and isinstance(data[0], dict) else None,
                    )
                return m, r.status_code, r.json().get("model")

            with concurrent.futures.ThreadPoolExecutor(24) as pool:
                results = list(pool.map(one, range(len(models))))
        want = {"alpha": "alpha", "a": "alpha", "Alpha-Chat": "alpha", "beta": "beta", "b": "beta"}
        for m, status, served in results:
            assert status == 200
            assert served == want[m], (m, served)  # every request ran on the profile it named
        assert len(sup.switches) >= 1
        assert rt.scheduler.inflight == 0 and rt.scheduler.depth == 0


def answering_stream(
    pool: concurrent.futures.ThreadPoolExecutor, url: str, body: dict[str, Any]
) -> tuple[concurrent.futures.Future[str], threading.Event]:
    """A streaming request in `pool`: its text when done, and an event set at its first data line
    (the upstream is answering it), so a test orders what comes next without sleeping."""
    started = threading.Event()

    def run() -> str:
        text = ""
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=30) as r:
            for line in r.iter_lines():
                if line.startswith("data:"):
                    started.set()
                text += line + "\n"
        started.set()
        return text

    return pool.submit(run), started


def test_switch_waits_for_inflight_requests(tmp_path: Path) -> None:
    with FakeUpstream("local", tokens=10) as fake:
        fake.hold = threading.Event()  # alpha's stream stays open until beta is seen waiting
        sup = FakeSupervisor(fake, running="alpha", load_time=0.0)
        with router(tmp_path, sup) as (url, rt):
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                long, started = answering_stream(pool, url, chat("alpha", stream=True))
                assert started.wait(30)  # alpha is answering: beta must wait for it
                other = pool.submit(
                    httpx.post, url + "/v1/chat/completions", json=chat("beta"), timeout=30
                )
                deadline = time.monotonic() + 30
                while rt.scheduler.depth < 1 and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert rt.scheduler.depth == 1 and sup.switches == []  # beta waits
                fake.hold.set()
                text = long.result()
                r_other = other.result()
            data = sse_data(text)
            # the alpha stream finished on alpha: the switch waited for it
            assert data[-1] == "[DONE]"
            assert {d["model"] for d in data if isinstance(d, dict)} == {"alpha"}
            assert r_other.json()["model"] == "beta"


def test_inflight_timeout_bounds_the_wait(tmp_path: Path) -> None:
    with FakeUpstream("local", tokens=3) as fake:
        fake.hold = threading.Event()  # alpha's stream stays open until the test ends it
        sup = FakeSupervisor(fake, running="alpha")
        with (
            router(tmp_path, sup, "inflight_timeout: 0.3s") as (url, _rt),
            concurrent.futures.ThreadPoolExecutor(2) as pool,
        ):
            long, started = answering_stream(pool, url, chat("alpha", stream=True))
            assert started.wait(30)  # alpha is answering: now ask for beta
            r = httpx.post(
                url + "/v1/chat/completions", json=chat("beta", max_tokens=1), timeout=10
            )
            assert r.status_code == 200 and r.json()["model"] == "beta"
            # the switch waited inflight_timeout (0.3 s), not for alpha's stream, still open
            assert not long.done()
            fake.hold.set()
            assert "[DONE]" in long.result()


# --- sidecar API ---------------------------------------------------------------------------


def test_models_switch_json_and_sse(tmp_path: Path, fake: FakeUpstream) -> None:
    sup = FakeSupervisor(fake, running="alpha", load_time=0.2)
    with router(tmp_path, sup) as (url, _rt):
        r = httpx.post(url + "/models/switch", json={"profile": "Alpha-Chat"})
        assert r.status_code == 200 and r.json()["noop"] is True and r.json()["profile"] == "alpha"
        r = httpx.post(
            url + "/models/switch", json={"profile": "b"}, headers={"accept": "text/event-stream"}
        )
        assert r.status_code == 200
        events = [ln[7:] for ln in r.text.splitlines() if ln.startswith("event: ")]
        assert events[0] == "queued"
        assert "stopping" in events and "starting" in events and "loading" in events
        assert events[-2:] == ["ready", "done"]
        assert sup.switches == ["beta"]
        r = httpx.post(url + "/models/switch", json={"profile": "nope"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        r = httpx.post(url + "/models/switch", json={})
        assert r.status_code == 400
        r = httpx.post(url + "/models/switch", content=b"[")
        assert r.status_code == 400
        sup.fail["alpha"] = "boom"
        r = httpx.post(
            url + "/models/switch",
            json={"profile": "alpha"},
            headers={"accept": "text/event-stream"},
        )
        events = [ln[7:] for ln in r.text.splitlines() if ln.startswith("event: ")]
        assert events[-1] == "error"
        assert "boom" in r.text
        r = httpx.post(url + "/models/switch", json={"profile": "alpha"})
        assert r.status_code == 503 and "boom" in r.json()["error"]["message"]


def test_models_stop_status_available_health(tmp_path: Path, fake: FakeUpstream) -> None:
    sup = FakeSupervisor(fake, running="alpha")
    with router(tmp_path, sup) as (url, _rt):
        st = httpx.get(url + "/models/status").json()
        assert st["server"]["running"] and st["server"]["profile"] == "alpha"
        assert st["router"]["queue_depth"] == 0 and st["router"]["auth"] == {
            "enabled": False,
            "keys": 0,
        }
        av = httpx.get(url + "/models/available").json()["profiles"]
        assert [p["profile"] for p in av] == ["alpha", "beta"]
        assert av[0]["loaded"] is True and av[0]["aliases"] == ["Alpha-Chat", "a"]
        assert av[0]["fits"] is None and av[0]["estimate"] is None
        assert av[0]["estimate_error"] == "the model file is missing"
        h = httpx.get(url + "/health").json()
        assert h == {"status": "ok", "profile": "alpha", "switching": False, "queue_depth": 0}
        r = httpx.post(url + "/models/stop")
        assert r.status_code == 200 and r.json()["stopped"] == "alpha"
        assert sup.running is None and sup.stops == 1
        assert httpx.get(url + "/models/status").json()["server"]["running"] is False


def test_external_switch_is_noticed(tmp_path: Path, fake: FakeUpstream) -> None:
    sup = FakeSupervisor(fake, running="alpha")
    with router(tmp_path, sup) as (url, rt):
        assert httpx.post(url + "/v1/chat/completions", json=chat(None)).json()["model"] == "alpha"
        # a shell runs `llmctl switch beta` behind the router's back
        sup.switch(fake_spec(None, "beta"))
        time.sleep(1.1)
        r = httpx.post(url + "/v1/chat/completions", json=chat(None))
        assert r.json()["model"] == "beta"
        assert rt.scheduler.active == "beta"


def test_idle_unload_after_ttl(tmp_path: Path, fake: FakeUpstream) -> None:
    sup = FakeSupervisor(fake, running=None)
    path = manifest_file(
        tmp_path, profiles=PROFILES.replace("aliases: [b]", "aliases: [b]\n    ttl: 0.3s")
    )
    app = create_app(load_manifest(path), sup, spec_for=fake_spec, environ={})
    with ServerThread(app) as st:
        r = httpx.post(st.url + "/v1/chat/completions", json=chat("beta"))
        assert r.status_code == 200 and sup.running == "beta"
        deadline = time.monotonic() + 30
        while sup.running is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sup.running is None and sup.stops == 1
        # alpha has no ttl: it stays
        httpx.post(st.url + "/v1/chat/completions", json=chat("alpha"))
        time.sleep(0.6)
        assert sup.running == "alpha"


def test_stops_the_server_it_started_on_exit(tmp_path: Path, fake: FakeUpstream) -> None:
    sup = FakeSupervisor(fake, running="alpha")
    with router(tmp_path, sup) as (url, _):
        httpx.post(url + "/v1/chat/completions", json=chat("alpha"))
    assert sup.running == "alpha" and sup.stops == 0  # not started by the router: left alone
    with router(tmp_path, sup) as (url, _):
        httpx.post(url + "/v1/chat/completions", json=chat("beta"))
    assert sup.running is None and sup.stops == 1
    with router(tmp_path, sup, "stop_server_on_exit: false") as (url, _):
        httpx.post(url + "/v1/chat/completions", json=chat("beta"))
    assert sup.running == "beta"


def test_reload_keeps_breakers_and_applies_changes(tmp_path: Path, fake: FakeUpstream) -> None:
    import asyncio

    sup = FakeSupervisor(fake, running="alpha")
    with router(tmp_path, sup, "queue: {max_size: 3}") as (url, rt):
        assert rt.upstreams is not None and rt.upstreams.managed is not None
        breaker = rt.upstreams.managed.breaker_for("alpha")
        manifest_file(
            tmp_path, "queue: {max_size: 7}", PROFILES + "  gamma:\n    model: /m/g.gguf\n"
        )
        assert asyncio.run(rt.reload()) is True
        assert rt.scheduler.max_size == 7
        assert rt.upstreams.managed.breaker_for("alpha") is breaker
        assert httpx.post(url + "/v1/chat/completions", json=chat("gamma")).status_code == 200
        (tmp_path / "profiles.yaml").write_text("version: [broken")
        assert asyncio.run(rt.reload()) is False
        assert "gamma" in rt.index.profiles


def test_router_socket_is_closed_cleanly(tmp_path: Path, fake: FakeUpstream) -> None:
    # a raw client that sends half a request and leaves must not wedge anything
    with router(tmp_path, FakeSupervisor(fake, running="alpha")) as (url, _rt):
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{"
            )
        r = httpx.post(url + "/v1/chat/completions", json=chat())
        assert r.status_code == 200


def test_threads_do_not_leak(tmp_path: Path, fake: FakeUpstream) -> None:
    before = threading.active_count()
    with router(tmp_path, FakeSupervisor(fake, running="alpha")) as (url, _):
        httpx.post(url + "/v1/chat/completions", json=chat())
    deadline = time.monotonic() + 10  # threads that end take their time on a loaded machine
    while threading.active_count() > before + 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert threading.active_count() <= before + 1


def test_waiting_clients_that_leave_free_their_place(tmp_path: Path, fake: FakeUpstream) -> None:
    sup = FakeSupervisor(fake, running="alpha")
    sup.gate = threading.Event()  # the beta load lasts until both alpha clients have left
    with router(tmp_path, sup, heartbeat=0.1) as (url, rt):
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            first = pool.submit(
                httpx.post, url + "/v1/chat/completions", json=chat("beta"), timeout=10
            )
            deadline = time.monotonic() + 30
            while not rt.scheduler.switching and time.monotonic() < deadline:
                time.sleep(0.01)
            # a streaming client and a plain one queue for alpha behind the beta load, then leave
            with httpx.stream(
                "POST", url + "/v1/chat/completions", json=chat("alpha", stream=True)
            ) as r:
                assert next(r.iter_lines()).startswith(": queued")
            with pytest.raises(httpx.TimeoutException):
                httpx.post(url + "/v1/chat/completions", json=chat("alpha"), timeout=0.3)
            deadline = time.monotonic() + 30
            while rt.scheduler.depth > 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert rt.scheduler.depth == 1  # only the beta request still waits
            sup.gate.set()
            assert first.result().status_code == 200
        # beta's waiters were let through when its load ended; no waiter is left for alpha, so
        # nothing is queued or loading (a switch back would show here first)
        assert rt.scheduler.depth == 0 and not rt.scheduler.switching
        assert sup.switches == ["beta"]
        m = httpx.get(url + "/metrics").text
        assert 'llmctl_requests_total{profile="alpha",upstream="",status="499"} 2' in m
