"""A FAKE `llmctl serve` host, for the faults a real one cannot produce on demand.

It answers `GET /llmctl/v1/state` according to `state_mode`:

  ok        a state document listing `profiles` (all idle, fitting)
  garbage   200 with a body that is not JSON
  wrong     200 with JSON that is not a state document
  hang      nothing, ever (until the client gives up)
  huge:N    a state document listing N profiles

and any other request with a small chat completion naming itself, recording the path and the
headers it saw (to check which key reached it). `key`: the key it wants, as a real host would.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from fakes.fake_upstream import ServerThread


@dataclass
class SeenRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class FakeHost:
    def __init__(
        self,
        name: str = "fake-host",
        *,
        profiles: tuple[str, ...] = ("remote",),
        state_mode: str = "ok",
        key: str | None = None,
    ) -> None:
        self.name = name
        self.profiles = profiles
        self.state_mode = state_mode
        self.key = key
        self.router_id = f"fake-{name}"
        self.seen: list[SeenRequest] = []
        self.state_polls = 0
        self.state_headers: list[dict[str, str]] = []
        self.polled = threading.Event()
        self.closing = threading.Event()  # ends hanging answers, so the server stops promptly
        self._thread = ServerThread(self.app(), lifespan="off")

    @property
    def url(self) -> str:
        return self._thread.url

    def __enter__(self) -> FakeHost:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.closing.set()
        self._thread.stop()

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/llmctl/v1/state", self._state, methods=["GET"]),
                Route("/{path:path}", self._other, methods=["GET", "POST"]),
            ]
        )

    def _authorized(self, request: Request) -> bool:
        return self.key is None or request.headers.get("authorization") == f"Bearer {self.key}"

    def document(self, count: int | None = None) -> dict[str, Any]:
        names = [f"p{i}" for i in range(count)] if count is not None else list(self.profiles)
        return {
            "llmctl_state": 1,
            "router_id": self.router_id,
            "queue_depth": 0,
            "profiles": [
                {"name": n, "aliases": [], "state": "idle", "fits": True, "inflight": 0}
                for n in names
            ],
            "hosts": [],
        }

    async def _state(self, request: Request) -> Response:
        self.state_polls += 1
        self.state_headers.append(dict(request.headers))
        self.polled.set()
        if not self._authorized(request):
            return JSONResponse({"error": {"message": "bad key"}}, status_code=401)
        mode = self.state_mode
        if mode == "hang":
            while not self.closing.is_set():
                await asyncio.sleep(0.05)
            return Response(status_code=503)
        if mode == "garbage":
            return PlainTextResponse("<html>this is not the state you want</html>")
        if mode == "wrong":
            return JSONResponse({"models": ["x"]})
        if mode.startswith("huge:"):
            return Response(
                json.dumps(self.document(int(mode.split(":", 1)[1]))),
                media_type="application/json",
            )
        return JSONResponse(self.document())

    async def _other(self, request: Request) -> Response:
        raw = await request.body()
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {}
        self.seen.append(SeenRequest(request.method, request.url.path, dict(request.headers), body))
        if not self._authorized(request):
            return JSONResponse({"error": {"message": "bad key"}}, status_code=401)
        return JSONResponse(
            {
                "object": "chat.completion",
                "model": body.get("model"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": f"from {self.name}"},
                        "finish_reason": "stop",
                    }
                ],
            }
        )
