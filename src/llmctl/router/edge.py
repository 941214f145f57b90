"""The edge of the router, the ASGI entry of every request: `Edge` checks each request's path,
Host and Origin, answers CORS, counts every answer, and runs the proxied paths itself, outside
Starlette's routing and error middleware; the router's own paths go on to the Starlette app.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmctl.llama.endpoints import cors_headers
from llmctl.router.endpoints.proxy import proxy_endpoint
from llmctl.router.errors import SERVER, RouterError, bad_request
from llmctl.router.exchange import COUNTED
from llmctl.router.routing import route_kind
from llmctl.router.runtime import Router
from llmctl.router.safepath import unsafe_path

log = logging.getLogger("llmctl.router")


def _browser_headers(scope: Scope) -> tuple[str | None, str | None, str | None, str | None]:
    """Host, Origin, Sec-Fetch-Site and Sec-Fetch-Mode of a request (None when absent)."""
    host = origin = site = mode = None
    for key, value in scope["headers"]:
        if key == b"host":
            host = value.decode("latin-1")
        elif key == b"origin":
            origin = value.decode("latin-1")
        elif key == b"sec-fetch-site":
            site = value.decode("latin-1").lower()
        elif key == b"sec-fetch-mode":
            mode = value.decode("latin-1").lower()
    return host, origin, site, mode


def _with_cors(send: Send, origin: str) -> Send:
    """Add llama-server's `Access-Control-Allow-Origin` to answers for an allowed origin."""
    allow = [*cors_headers(origin, preflight=False), (b"Vary", b"Origin")]

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [
                (k, v)
                for k, v in message.get("headers", ())
                if k.lower() not in (b"access-control-allow-origin", b"vary")
            ]
            message = {**message, "headers": headers + allow}
        await send(message)

    return wrapped


async def _preflight(send: Send, origin: str) -> None:
    """A CORS preflight from an allowed origin, answered as llama-server answers it: before any
    key check, empty body."""
    headers = [
        *cors_headers(origin, preflight=True),
        (b"Vary", b"Origin"),
        (b"Content-Type", b"text/html"),
        (b"Content-Length", b"0"),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def _internal_error() -> RouterError:
    return RouterError(500, "Internal error in the router.", type=SERVER, code="internal_error")


class Edge:
    """The hot path: every llama-server path but the router's own (health, metrics, model list)
    goes to the proxy without Starlette's routing, exception and error layers, which cost more
    than the rest of the relay; `app` (the Starlette stack) serves the rest. Paths are checked
    first, and CORS is handled here for every response."""

    def __init__(self, router: Router, app: ASGIApp) -> None:
        self.router = router
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        router = self.router
        why = unsafe_path(scope.get("raw_path") or path.encode("utf-8", "surrogateescape"))
        if why is not None:
            router.metrics.count_rejected("bad_path")
            router.metrics.count_request(None, None, 400)
            response: Any = bad_request(
                f"The request path is refused: {why}. Send the path without dot segments "
                "or encoded slashes.",
                code="invalid_path",
            ).response()
            await response(scope, receive, send)
            return
        host, origin, site, mode = _browser_headers(scope)
        refused = router.origins.refusal(host, origin, site, mode == "navigate")
        if refused is not None:
            router.metrics.count_rejected(refused.code)
            router.metrics.count_request(None, None, 403)
            response = RouterError(403, refused.message, code=refused.code).response()
            await response(scope, receive, send)
            return
        if scope["method"] == "OPTIONS":
            await _preflight(send, origin or "")
            return
        if origin is not None:
            send = _with_cors(send, origin)
        kind = route_kind(path)
        if kind == "own":
            if path.startswith("/v1/"):
                await self._own_counted(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        await self._proxied(scope, receive, send, kind)

    async def _own_counted(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The router's own /v1/ paths (model list, health): counted here under their status."""
        sent: list[int] = []

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                sent.append(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            if not scope.get(COUNTED):
                self.router.metrics.count_request(None, None, sent[0] if sent else 499)

    async def _proxied(self, scope: Scope, receive: Receive, send: Send, kind: str) -> None:
        """A proxied answer is counted by its exchange (a relay always ends it), a refusal here
        under its status: no wrapper on each of a stream's chunks. An internal error is
        answered 500 (when nothing went out yet) and raised on for the server to log."""
        router = self.router
        status = 499  # nothing was answered: the client left, or an internal error follows
        response: Any = None
        try:
            try:
                if kind == "cors_proxy" and not router.serve.allow_cors_proxy:
                    request = Request(scope, receive)
                    router.check_auth(request)
                    raise RouterError(
                        403,
                        "/cors-proxy is refused: it would let any client make the server fetch "
                        "any URL. Set serve.allow_cors_proxy: true in the manifest to pass it "
                        "through.",
                        code="cors_proxy_disabled",
                    )
                response = await proxy_endpoint(
                    router, Request(scope, receive), pinned=kind == "upstream"
                )
            except RouterError as err:
                response = err.response()
            status = getattr(response, "status_code", status)
            await response(scope, receive, send)
        except Exception:
            log.exception("internal error on %s %s", scope["method"], scope["path"])
            if not getattr(response, "started", response is not None):
                status = 500
                await _internal_error().response()(scope, receive, send)
            raise
        finally:
            if not scope.get(COUNTED):
                router.metrics.count_request(None, None, status)
