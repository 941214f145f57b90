"""Every llama-server endpoint through a real `llmctl serve`, compared with the same request sent to
the same REAL llama-server directly: status, content type and body (volatile fields aside).

Also: the route table against the pinned llama.cpp source, CORS preflights, `/upstream/{profile}/`,
`/cors-proxy`, the model from the body or the query, and the official openai and anthropic SDKs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmctl import paths
from llmctl.llama.binary import llama_build
from llmctl.llama.endpoints import NEWER_ROUTES, ROUTER_MODE_ROUTES, ROUTES
from llmctl.supervisor.lifecycle import Supervisor
from processes import raw_request
from serving import Served, start_serve, stop_serve

KEY = "router-key"
AUTH = {"authorization": f"Bearer {KEY}"}

# fields that differ between two identical requests (ids, clocks, counters of the server's life)
_VOLATILE = {
    "id",
    "created",
    "created_at",
    "completed_at",
    "timings",
    "id_task",
    "id_slot",
    "t_start_process_prompt",
    "t_start_generation",
    "system_fingerprint",
    "n_decoded",
    "n_past",
    "n_ctx_used",
    "tokens_cached",
    "cache_n",
    "prompt_progress",
    "t_ms",
    "cached_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "prompt_tokens_details",
    "input_tokens_details",
}


def _scrub(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items() if k not in _VOLATILE}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    if isinstance(value, str) and re.fullmatch(r"(chatcmpl|resp|msg|cmpl|fc|rs)[-_].*", value):
        return "<id>"
    return value


def _normal(response: httpx.Response) -> Any:
    """The body with volatile fields removed: JSON as data, SSE event by event, else the text."""
    ctype = response.headers.get("content-type", "")
    text = response.text
    if ctype.startswith("text/event-stream"):
        events = []
        for line in text.splitlines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(_scrub(json.loads(line[6:])))
            elif line and not line.startswith(":"):
                events.append(line)
        return events
    try:
        return _scrub(json.loads(text))
    except ValueError:
        return text


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from llmctl.testing.testmodels import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny.gguf", arch="llama")


@pytest.fixture(scope="module")
def both(
    tmp_path_factory: pytest.TempPathFactory, llama_server_bin: Path, tiny_model: Path
) -> Iterator[tuple[Served, str]]:
    """A `llmctl serve` with keys in front of a running llama-server, and that server's own URL."""
    from fakes.fake_upstream import free_port

    tmp = tmp_path_factory.mktemp("endpoints")
    state = tmp / "state"
    llama_port = free_port()
    manifest = tmp / "profiles.yaml"
    manifest.write_text(
        f"""version: 1
server:
  binary: {llama_server_bin}
  port: {llama_port}
  ready_timeout: 60s
serve:
  api_keys: [{KEY}]
profiles:
  tiny:
    model: {tiny_model}
    aliases: [T]
    ctx_size: 512
    parallel: 1
    metrics: true
    seed: 1
"""
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLMCTL_STATE_DIR", str(state))
        served = start_serve(manifest, free_port(), tmp)
        try:
            r = httpx.post(
                served.url + "/models/switch", json={"profile": "tiny"}, headers=AUTH, timeout=60
            )
            assert r.status_code == 200, r.text
            yield served, f"http://127.0.0.1:{llama_port}"
        finally:
            stop_serve(served)
            Supervisor(paths.state_dir(), lock_timeout=30).stop()


CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0}
COMPLETION = {"prompt": "hello", "n_predict": 4, "temperature": 0, "seed": 1}

# (method, path, JSON body or None): every route llama-server registers, as a client sends it
CASES: list[tuple[str, str, Any]] = [
    ("POST", "/completion", COMPLETION),
    ("POST", "/completion", {**COMPLETION, "stream": True}),
    ("POST", "/completions", COMPLETION),
    ("POST", "/v1/completions", {"prompt": "hello", "max_tokens": 4, "temperature": 0}),
    ("POST", "/chat/completions", CHAT),
    ("POST", "/v1/chat/completions", CHAT),
    ("POST", "/v1/chat/completions", {**CHAT, "stream": True}),
    ("POST", "/v1/chat/completions/input_tokens", CHAT),
    ("POST", "/chat/completions/input_tokens", CHAT),
    ("POST", "/v1/responses", {"input": "hi", "max_output_tokens": 4, "temperature": 0}),
    ("POST", "/responses", {"input": "hi", "max_output_tokens": 4, "temperature": 0}),
    ("POST", "/v1/responses/input_tokens", {"input": "hi"}),
    ("POST", "/responses/input_tokens", {"input": "hi"}),
    ("POST", "/v1/messages", {**CHAT, "model": "tiny"}),
    ("POST", "/v1/messages", {**CHAT, "model": "tiny", "stream": True}),
    ("POST", "/v1/messages/count_tokens", {"messages": CHAT["messages"], "model": "tiny"}),
    ("POST", "/v1/chat/completions/control", {}),
    ("POST", "/infill", {"input_prefix": "def f(", "input_suffix": "):", "n_predict": 2}),
    ("POST", "/tokenize", {"content": "hello world", "with_pieces": True}),
    ("POST", "/detokenize", {"tokens": [1, 2, 3]}),
    ("POST", "/apply-template", {"messages": CHAT["messages"]}),
    ("POST", "/embedding", {"content": "hello"}),
    ("POST", "/embeddings", {"content": "hello"}),
    ("POST", "/v1/embeddings", {"input": "hello"}),
    ("POST", "/rerank", {"query": "a", "documents": ["a", "b"]}),
    ("POST", "/reranking", {"query": "a", "documents": ["a", "b"]}),
    ("POST", "/v1/rerank", {"query": "a", "documents": ["a", "b"]}),
    ("POST", "/v1/reranking", {"query": "a", "documents": ["a", "b"]}),
    ("POST", "/v1/audio/transcriptions", None),
    ("POST", "/audio/transcriptions", None),
    ("GET", "/props", None),
    ("POST", "/props", {}),
    ("GET", "/slots", None),
    ("POST", "/slots/0?action=save", {"filename": "x.bin"}),
    ("GET", "/lora-adapters", None),
    ("POST", "/lora-adapters", []),
    ("GET", "/v1/stream", None),
    ("POST", "/v1/streams/lookup", {}),
    ("DELETE", "/v1/stream", None),
    ("GET", "/tools", None),
    ("POST", "/tools", {}),
]


@pytest.mark.parametrize(("method", "path", "body"), CASES, ids=[f"{m} {p}" for m, p, _ in CASES])
def test_endpoint_matches_llama_server(
    both: tuple[Served, str], method: str, path: str, body: Any
) -> None:
    served, direct = both
    kw: dict[str, Any] = {"timeout": 60}
    if body is not None:
        kw["json"] = body
    want = httpx.request(method, direct + path, **kw)
    got = httpx.request(method, served.url + path, headers=AUTH, **kw)
    assert got.status_code == want.status_code, (got.text, want.text)
    assert got.headers.get("content-type") == want.headers.get("content-type")
    assert _normal(got) == _normal(want)
    if want.status_code < 500:
        assert got.headers["x-llmctl-upstream"] == "local"


# The pinned llama.cpp build, as the script that builds it states it.
PINNED_BUILD = int(
    re.findall(
        r'llama_tag="(\d+)"',
        (Path(__file__).parents[2] / "scripts" / "build-llama-server.sh").read_text(),
    )[0]
)


def test_route_table_is_the_pinned_sources(llama_server_bin: Path) -> None:
    """ROUTES lists exactly what tools/server/server.cpp registers in the pinned llama.cpp; with
    another build (make compat), every route it registers is known (NEWER_ROUTES) and what it
    lacks is older than ROUTES."""
    source = llama_server_bin.parents[2] / "src" / "tools" / "server" / "server.cpp"
    if not source.is_file():
        pytest.skip(f"no llama.cpp source next to the binary ({source})")
    text = source.read_text()
    found = {
        (m.upper().replace("DEL", "DELETE"), p)
        for m, p in re.findall(r'ctx_http\.(get|post|del)\s*\(\s*"([^"]+)"', text)
    }
    newer = {(m, p) for m, p, _ in NEWER_ROUTES}
    known = set(ROUTES) | set(ROUTER_MODE_ROUTES)
    assert found - newer <= known, found - newer - known  # nothing 404s behind the router
    found_build = llama_build(str(llama_server_bin))
    build = found_build.build if found_build is not None else PINNED_BUILD
    if build >= PINNED_BUILD:  # the pinned build and newer have every route of the table
        assert found - newer == known
    for m, p, since in NEWER_ROUTES:
        assert ((m, p) in found) == (build >= since), (m, p, build)
    tested = {(m, p.split("?")[0]) for m, p, _ in CASES}
    own = {"/health", "/v1/health", "/metrics", "/models", "/v1/models", "/cors-proxy"}
    untested = {
        (m, p) for m, p in ROUTES if p not in own and (m, p.replace(":id_slot", "0")) not in tested
    }
    assert not untested


def test_model_from_body_then_query_then_upstream_path(both: tuple[Served, str]) -> None:
    served, direct = both
    url = served.url
    tok = {"content": "hello"}
    # the query names the profile (an alias works); the body wins over it
    r = httpx.post(url + "/tokenize?model=T", json=tok, headers=AUTH)
    assert r.status_code == 200 and r.headers["x-llmctl-profile"] == "tiny"
    r = httpx.post(url + "/tokenize?model=tiny", json={**tok, "model": "nope"}, headers=AUTH)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = httpx.post(url + "/tokenize?model=nope", json={**tok, "model": "tiny"}, headers=AUTH)
    assert r.status_code == 200
    # /upstream/{profile}/{path}: any path of that profile's server, llama-server's metrics too
    r = httpx.post(url + "/upstream/T/tokenize", json=tok, headers=AUTH)
    assert r.json() == httpx.post(direct + "/tokenize", json=tok).json()
    r = httpx.get(url + "/upstream/tiny/metrics", headers=AUTH)
    assert r.status_code == 200 and "llamacpp:" in r.text
    assert r.headers["content-type"] == httpx.get(direct + "/metrics").headers["content-type"]
    # the router's /metrics: its own, then each loaded server's with the profile as a label
    r = httpx.get(url + "/metrics", headers=AUTH)
    assert "llmctl_requests_total" in r.text
    assert 'llamacpp:prompt_tokens_total{profile="tiny"} ' in r.text
    assert r.text.count("# TYPE llamacpp:prompt_tokens_total counter") == 1
    r = httpx.get(url + "/upstream/nope/metrics", headers=AUTH)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert "tiny" in r.json()["error"]["message"]
    r = httpx.get(url + "/upstream/", headers=AUTH)
    assert r.status_code == 404 and "/upstream/{profile}/{path}" in r.json()["error"]["message"]
    # no key, no passage; dot segments are refused before routing, under /upstream/ too
    assert httpx.get(url + "/upstream/tiny/metrics").status_code == 401
    for bad in ("/upstream/tiny/../metrics", "/upstream/tiny/%2e%2e/metrics", "/upstream/a%2fb/x"):
        status, answer = raw_request(url, "GET", bad)
        assert status == 400 and b'"invalid_path"' in answer, bad
    # the model list answers under llama-server's names too, and one model by id
    assert httpx.get(url + "/models", headers=AUTH).json()["data"][0]["id"] == "tiny"
    r = httpx.get(url + "/v1/models/T", headers=AUTH)
    assert r.status_code == 200 and r.json()["id"] == "T" and r.json()["profile"] == "tiny"
    r = httpx.get(url + "/v1/models/nope", headers=AUTH)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_cors_like_llama_server(both: tuple[Served, str]) -> None:
    served, direct = both
    origin = {"origin": "http://localhost:5173", "access-control-request-method": "POST"}
    for path in ("/v1/chat/completions", "/completion", "/v1/models", "/health"):
        want = httpx.options(direct + path, headers=origin)
        got = httpx.options(served.url + path, headers=origin)  # no key: browsers send none
        assert got.status_code == want.status_code == 200
        assert got.text == want.text == ""
        for h in (
            "content-type",
            "access-control-allow-origin",
            "access-control-allow-credentials",
            "access-control-allow-methods",
            "access-control-allow-headers",
        ):
            assert got.headers.get(h) == want.headers.get(h), h
        # spelled the same, for clients that read headers into a plain dict
        spelled = [k for k, _ in got.headers.raw if k.lower().startswith(b"access-control-")]
        assert spelled == [k for k, _ in want.headers.raw if k in spelled]
        assert all(k.startswith(b"Access-Control-") for k in spelled)
    # and every answer carries the origin, the router's own ones included
    for path in ("/v1/models", "/health", "/props"):
        r = httpx.get(served.url + path, headers={**AUTH, "origin": "http://localhost:5173"})
        assert r.headers["access-control-allow-origin"] == "http://localhost:5173", path


def test_cors_proxy_refused_unless_allowed(both: tuple[Served, str]) -> None:
    served, _ = both
    r = httpx.get(served.url + "/cors-proxy?url=http://example.com/", headers=AUTH)
    assert r.status_code == 403 and r.json()["error"]["code"] == "cors_proxy_disabled"
    assert "serve.allow_cors_proxy" in r.json()["error"]["message"]
    assert httpx.get(served.url + "/cors-proxy").status_code == 401


def test_openai_and_anthropic_sdks(both: tuple[Served, str]) -> None:
    import openai

    anthropic = pytest.importorskip("anthropic")
    served, _ = both
    for base in (served.url + "/v1", served.url):  # llama-server answers without /v1 too
        with openai.OpenAI(base_url=base, api_key=KEY, max_retries=0) as client:
            r = client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4
            )
            assert r.choices[0].message.content is not None
            chunks = list(
                client.chat.completions.create(
                    model="T",
                    messages=[{"role": "user", "content": "hi"}],
                    max_tokens=4,
                    stream=True,
                )
            )
            assert chunks[-1].choices and chunks[-1].choices[0].finish_reason is not None
            resp = client.responses.create(model="tiny", input="hi", max_output_tokens=4)
            assert resp.status == "completed"
            if base.endswith("/v1"):  # llama-server has no /models/{id}; neither has the router
                assert client.models.retrieve("tiny").id == "tiny"
    with anthropic.Anthropic(base_url=served.url, api_key=KEY, max_retries=0) as claude:
        msg = claude.messages.create(
            model="tiny", max_tokens=4, messages=[{"role": "user", "content": "hi"}]
        )
        assert msg.role == "assistant" and msg.stop_reason is not None
        # the SDK's stream helper needs `message_start`, which the SDK sometimes does not see from
        # llama-server (directly too): the events it does see are checked instead
        events = claude.messages.create(
            model="T", max_tokens=4, messages=[{"role": "user", "content": "hi"}], stream=True
        )
        kinds = [e.type for e in events]
        assert "content_block_delta" in kinds and kinds[-1] == "message_stop"
        count = claude.messages.count_tokens(
            model="tiny", messages=[{"role": "user", "content": "hi"}]
        )
        assert count.input_tokens > 0
