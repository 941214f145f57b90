"""A FAKE OpenAI-compatible upstream for router tests and the router benchmark.

It is a real HTTP server (uvicorn in a thread, its own event loop), so streaming and client
disconnects behave as on the wire. It answers /v1/chat/completions, /v1/completions,
/v1/embeddings and /v1/models with made-up content. Its behaviour is set on the object or per
request with the `x-fake-mode` header:

  ok            stream `tokens` chunks, `token_delay` seconds apart (or one JSON body)
  error5NN      answer 5NN (500, 502, 503 ...) with an OpenAI error body
  error400      answer 400 (a client error: must not trip a breaker)
  hang          send nothing, ever (until the client gives up)
  die:N         stream N chunks, then drop the connection without ending the response
  slow:S        wait S seconds before the status line

It records what it saw: requests, streams started, finished and cancelled by the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from processes import free_port

__all__ = ["free_port"]  # the tests that start a fake upstream take their port from here too


class ServerThread:
    """Any ASGI app under a real uvicorn server in a background thread."""

    def __init__(self, app: Any, port: int | None = None, **config: Any) -> None:
        self.port = port or free_port()
        cfg = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level=config.pop("log_level", "warning"),
            lifespan=config.pop("lifespan", "on"),
            access_log=False,
            **config,
        )
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server on port {self.port} did not start")
            time.sleep(0.005)
        return self

    def stop(self, timeout: float = 10) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class Seen:
    path: str
    model: str | None
    stream: bool
    headers: dict[str, str]
    body: dict[str, Any] = field(default_factory=dict)


class FakeUpstream:
    """The fake upstream; `name` goes into every answer so tests can tell fakes apart."""

    def __init__(
        self,
        name: str = "fake",
        *,
        tokens: int = 5,
        token_delay: float = 0.0,
        mode: str = "ok",
        port: int | None = None,
    ) -> None:
        self.name = name
        self.tokens = tokens
        self.token_delay = token_delay
        self.mode = mode
        self.loaded_model: str | None = None  # set by the fake supervisor
        self.seen: list[Seen] = []
        self.streams_started = 0
        self.streams_finished = 0
        self.streams_cancelled = 0
        self.cancelled = threading.Event()
        # set to an unset event: every stream holds after its first chunk until the test sets it
        self.hold: threading.Event | None = None
        self.active = 0
        self._thread = ServerThread(self.app(), port=port, lifespan="off")

    @property
    def url(self) -> str:
        return self._thread.url

    @property
    def port(self) -> int:
        return self._thread.port

    def start(self) -> FakeUpstream:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._thread.stop()

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the app ---

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/models", self._models, methods=["GET"]),
                Route("/health", self._health, methods=["GET"]),
                Route("/v1/{path:path}", self._complete, methods=["POST"]),
            ]
        )

    async def _health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def _models(self, request: Request) -> Response:
        return JSONResponse(
            {"object": "list", "data": [{"id": self.loaded_model or self.name, "object": "model"}]}
        )

    async def _complete(self, request: Request) -> Response:
        raw = await request.body()
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            return JSONResponse(
                {"error": {"message": "bad json", "type": "invalid_request_error"}}, 400
            )
        mode = request.headers.get("x-fake-mode", self.mode)
        stream = bool(body.get("stream"))
        self.seen.append(
            Seen(request.url.path, body.get("model"), stream, dict(request.headers), body)
        )
        if mode.startswith("slow:"):
            await asyncio.sleep(float(mode.split(":", 1)[1]))
            mode = "ok"
        if mode == "hang":
            await asyncio.sleep(3600)
        if mode.startswith("error5"):
            return JSONResponse(
                {
                    "error": {
                        "message": f"{self.name} is broken",
                        "type": "server_error",
                        "code": int(mode[5:]),
                    }
                },
                status_code=int(mode[5:]),
            )
        if mode == "error400":
            return JSONResponse(
                {
                    "error": {
                        "message": "bad request",
                        "type": "invalid_request_error",
                        "code": None,
                    }
                },
                status_code=400,
            )
        die_after = int(mode.split(":", 1)[1]) if mode.startswith("die:") else None
        tokens = self.tokens
        if isinstance(body.get("max_tokens"), int):
            tokens = min(tokens, body["max_tokens"])
        served = self.loaded_model or self.name
        if request.url.path.endswith("/embeddings"):
            return JSONResponse(
                {
                    "object": "list",
                    "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
                    "model": served,
                    "usage": {"prompt_tokens": 1, "total_tokens": 1},
                }
            )
        if not stream:
            if self.token_delay:
                await asyncio.sleep(self.token_delay * tokens)
            text = " ".join(f"tok{i}" for i in range(tokens))
            return JSONResponse(_completion(served, text, self.name))
        return StreamingResponse(
            self._stream(served, tokens, die_after), media_type="text/event-stream"
        )

    async def _stream(
        self, served: str, tokens: int, die_after: int | None
    ) -> AsyncIterator[bytes]:
        self.streams_started += 1
        self.active += 1
        try:
            for i in range(tokens):
                if die_after is not None and i >= die_after:
                    raise ConnectionAbortedError("fake upstream dies mid-stream")
                chunk = {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": served,
                    "system_fingerprint": self.name,
                    "choices": [
                        {"index": 0, "delta": {"content": f"tok{i} "}, "finish_reason": None}
                    ],
                }
                yield f"data: {json.dumps(chunk)}\n\n".encode()
                while self.hold is not None and not self.hold.is_set():
                    await asyncio.sleep(0.01)
                if self.token_delay:
                    await asyncio.sleep(self.token_delay)
            end = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": served,
                "system_fingerprint": self.name,
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            }
            yield f"data: {json.dumps(end)}\n\ndata: [DONE]\n\n".encode()
            self.streams_finished += 1
        except asyncio.CancelledError:
            self.streams_cancelled += 1
            self.cancelled.set()
            raise
        finally:
            self.active -= 1


def _completion(model: str, text: str, fingerprint: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "system_fingerprint": fingerprint,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


@contextlib.contextmanager
def running(*fakes: FakeUpstream) -> Iterator[tuple[FakeUpstream, ...]]:
    for f in fakes:
        f.start()
    try:
        yield fakes
    finally:
        for f in fakes:
            f.stop()
