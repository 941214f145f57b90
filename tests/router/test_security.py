"""Security of a real `llmctl serve` process: a reload never opens a public bind without keys, and
no request path can leave an upstream's prefix with that upstream's key (a recording FAKE upstream
stands in for the remote API)."""

from __future__ import annotations

import contextlib
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fakes.fake_upstream import ServerThread
from processes import raw_request
from serving import Served, start_serve, stop_serve

PROFILES = """profiles:
  alpha:
    model: /models/alpha.gguf
"""


def wait_for_log(served: Served, text: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in served.logs():
            return
        time.sleep(0.02)
    raise AssertionError(f"{text!r} not in the log:\n{served.logs()}")


def test_reload_without_keys_on_a_public_bind_is_refused(tmp_path: Path, free_port: int) -> None:
    manifest = tmp_path / "profiles.yaml"
    with_keys = "version: 1\nserve:\n  api_keys: [k-secret-1]\n" + PROFILES
    manifest.write_text(with_keys)
    served = start_serve(manifest, free_port, tmp_path, "--host", "0.0.0.0")
    try:
        url = served.url + "/v1/models"
        assert httpx.get(url).status_code == 401
        manifest.write_text("version: 1\n" + PROFILES + "  beta:\n    model: /models/b.gguf\n")
        served.proc.send_signal(signal.SIGHUP)
        wait_for_log(served, "manifest reload refused, keeping the previous one")
        assert "refusing to listen on 0.0.0.0 without API keys" in served.logs()
        assert httpx.get(url).status_code == 401
        ok = httpx.get(url, headers={"authorization": "Bearer k-secret-1"})
        assert ok.status_code == 200
        assert "beta" not in {m["id"] for m in ok.json()["data"]}  # the old manifest stays
        # a reload that keeps keys still applies
        manifest.write_text(with_keys + "  beta:\n    model: /models/b.gguf\n")
        served.proc.send_signal(signal.SIGHUP)
        wait_for_log(served, "manifest reloaded: 2 profile(s)")
        ids = {
            m["id"]
            for m in httpx.get(url, headers={"authorization": "Bearer k-secret-1"}).json()["data"]
        }
        assert "beta" in ids
        assert "k-secret-1" not in served.logs()
    finally:
        stop_serve(served)


def test_reload_without_keys_on_loopback_applies(tmp_path: Path, free_port: int) -> None:
    manifest = tmp_path / "profiles.yaml"
    manifest.write_text("version: 1\nserve:\n  api_keys: [k1]\n" + PROFILES)
    served = start_serve(manifest, free_port, tmp_path)
    try:
        assert httpx.get(served.url + "/v1/models").status_code == 401
        manifest.write_text("version: 1\n" + PROFILES)
        served.proc.send_signal(signal.SIGHUP)
        wait_for_log(served, "manifest reloaded")
        assert httpx.get(served.url + "/v1/models").status_code == 200
    finally:
        stop_serve(served)


class Recorder:
    """A FAKE remote API that records every request it receives, whatever the path."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, bytes, str]] = []

    async def any_path(self, request: Request) -> Response:
        raw = request.scope.get("raw_path") or b""
        self.seen.append((request.method, raw, request.headers.get("authorization", "")))
        return JSONResponse({"id": "x", "object": "chat.completion", "choices": []})

    def app(self) -> Starlette:
        methods = ["GET", "POST", "PUT", "DELETE", "PATCH"]
        return Starlette(routes=[Route("/{path:path}", self.any_path, methods=methods)])


@pytest.fixture
def remote_behind_router(tmp_path: Path, free_port: int) -> Iterator[tuple[Served, Recorder]]:
    rec = Recorder()
    with ServerThread(rec.app(), lifespan="off") as st:
        manifest = tmp_path / "profiles.yaml"
        manifest.write_text(
            "version: 1\nserve:\n  upstreams:\n"
            f"    - {{name: cloud, url: '{st.url}/v1', models: [remote-model], api_key_env: CLOUD_KEY}}\n"
            + PROFILES
        )
        import os

        os.environ["CLOUD_KEY"] = "sk-upstream-secret"
        try:
            served = start_serve(manifest, free_port, tmp_path)
        finally:
            del os.environ["CLOUD_KEY"]
        try:
            yield served, rec
        finally:
            stop_serve(served)


ESCAPES = [
    "/v1/../../admin/secret",
    "/v1/chat/../../../admin/secret",
    "/v1/%2e%2e/%2e%2e/admin/secret",
    "/v1/%2E%2E/admin/secret",
    "/v1/.%2e/admin",
    "/v1/%252e%252e/admin",
    "/v1/chat%2fcompletions",
    "/v1/chat%2Fcompletions",
    "/v1/..%5cadmin",
    "/v1/..\\admin",
    "/v1/./chat/completions",
    "/v1/chat/completions/..",
    "/health/../v1/chat/completions",
]


@pytest.mark.parametrize("target", ESCAPES)
def test_dot_segments_and_encoded_slashes_are_refused(
    remote_behind_router: tuple[Served, Recorder], target: str
) -> None:
    served, rec = remote_behind_router
    body = b'{"model": "remote-model", "messages": [{"role": "user", "content": "x"}]}'
    status, answer = raw_request(served.url, "POST", target, body)
    assert status == 400, answer
    assert b'"invalid_path"' in answer
    assert rec.seen == []  # nothing reached the upstream, its key was never sent


def test_normal_paths_still_reach_the_upstream(
    remote_behind_router: tuple[Served, Recorder],
) -> None:
    served, rec = remote_behind_router
    body = b'{"model": "remote-model", "messages": [{"role": "user", "content": "x"}]}'
    status, _ = raw_request(served.url, "POST", "/v1/chat/completions", body)
    assert status == 200
    assert rec.seen == [("POST", b"/v1/chat/completions", "Bearer sk-upstream-secret")]
    _, answer = raw_request(served.url, "GET", "/v1/models/remote-model%3Av1")  # %3A is fine
    assert b"invalid_path" not in answer


@pytest.mark.parametrize("pure", [False, True], ids=["httptools", "h11"])
def test_both_client_protocols_cut_slow_headers_and_cap_connections(pure: bool) -> None:
    """The httptools protocol `llmctl serve` runs and its pure-Python fallback (h11, where
    httptools does not install) close a connection whose headers do not come in time and the
    longest-waiting one past the cap, keep answering whole requests, and spell the CORS headers
    as llama-server does."""
    from llmctl.manifest.model import ServeConfig
    from llmctl.router.server import guarded_protocol

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = [(b"content-type", b"text/plain"), (b"Access-Control-Allow-Origin", b"*")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})

    serve = ServeConfig(header_timeout=0.5, max_connections=4)
    protocol = guarded_protocol(serve, pure=pure)
    assert ("H11" in protocol.__name__) is pure
    half_open: list[socket.socket] = []
    with ServerThread(app, lifespan="off", http=protocol) as st:
        try:
            for _ in range(8):  # twice the cap, each with half a request line
                conn = socket.create_connection(("127.0.0.1", st.port))
                conn.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                half_open.append(conn)
            r = httpx.get(st.url + "/", timeout=10)
            assert r.status_code == 200 and r.text == "ok"
            assert (b"Access-Control-Allow-Origin", b"*") in r.headers.raw
            for conn in half_open:  # each closed: by the cap, or after header_timeout
                conn.settimeout(30)
                with contextlib.suppress(ConnectionResetError):
                    assert conn.recv(100) == b""
        finally:
            for conn in half_open:
                conn.close()


def test_keep_alive_connection_keeps_its_header_deadline_per_request() -> None:
    """One header-guard timer per connection: a keep-alive client whose requests together take
    longer than serve.header_timeout is not cut, and an idle one is still closed in time."""
    from llmctl.manifest.model import ServeConfig
    from llmctl.router.server import guarded_protocol

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = [(b"content-type", b"text/plain"), (b"content-length", b"2")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})

    serve = ServeConfig(header_timeout=0.6, max_connections=4)
    with ServerThread(app, lifespan="off", http=guarded_protocol(serve)) as st:
        conn = socket.create_connection(("127.0.0.1", st.port))
        try:
            conn.settimeout(30)
            for _ in range(8):  # 1.2 s in all, each request well within its own deadline
                conn.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                got = b""
                while not got.endswith(b"\r\n\r\nok"):
                    chunk = conn.recv(4096)
                    assert chunk, "the connection was closed between requests"
                    got += chunk
                assert got.startswith(b"HTTP/1.1 200")
                time.sleep(0.15)
            with contextlib.suppress(ConnectionResetError):  # idle now: closed after 0.6 s
                assert conn.recv(100) == b""
        finally:
            conn.close()


def test_client_transport_writes_a_head_with_what_follows_it() -> None:
    """A response head goes out with the body written after it (one send), alone at the end of
    the loop's turn when nothing follows, and before the connection closes."""
    import asyncio

    from llmctl.router.server import _ClientTransport

    class FakeTransport(asyncio.Transport):
        """FAKE: records writes."""

        def __init__(self) -> None:
            super().__init__()
            self.writes: list[bytes] = []
            self.closed = False

        def write(self, data: Any) -> None:
            self.writes.append(bytes(data))

        def is_closing(self) -> bool:
            return self.closed

        def close(self) -> None:
            self.closed = True

    async def main() -> None:
        raw = FakeTransport()
        t = _ClientTransport(raw, asyncio.get_running_loop())
        t.write(b"HTTP/1.1 200 OK\r\naccess-control-allow-origin: *\r\n\r\n")
        t.write(b"body")
        assert raw.writes == [b"HTTP/1.1 200 OK\r\nAccess-Control-Allow-Origin: *\r\n\r\nbody"]
        t.write(b"HTTP/1.1 200 OK\r\n\r\n")  # a stream's head, its first chunk not in yet
        assert len(raw.writes) == 1
        await asyncio.sleep(0)  # the end of this turn of the loop
        assert raw.writes[-1] == b"HTTP/1.1 200 OK\r\n\r\n"
        t.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        t.close()
        assert raw.writes[-1] == b"HTTP/1.1 204 No Content\r\n\r\n" and raw.closed
        await asyncio.sleep(0)
        assert len(raw.writes) == 3  # written once

    asyncio.run(main())
