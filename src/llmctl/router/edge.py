"""The edge of the router: `FastProxy` checks every request's path, Host and Origin, answers
CORS, counts every answer, and sends the proxied paths straight to the proxy endpoint.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmctl.llama.endpoints import cors_headers
from llmctl.router.endpoints.proxy import proxy_endpoint
from llmctl.router.errors import (
    RouterError,
    bad_request,
)
from llmctl.router.exchange import COUNTED
from llmctl.router.routing import (
    route_kind,
)
from llmctl.router.runtime import Router
from llmctl.router.safepath import unsafe_path


def _browser_headers(scope: Scope) -> tuple[str | None, str | None, str | None, str | None]:
    """Host, Origin, Sec-Fetch-Site and Sec-Fetch-Mode of a request (None when absent)."""
    host = origin = site = mode = None
    for key, value in scope.get("headers", ()):
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


async def _preflight(scope: Scope, send: Send, origin: str) -> None:
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


class FastProxy:
    """The hot path: every llama-server path but the router's own (health, metrics, model list)
    goes to the proxy without Starlette's routing and exception layers, which cost more than the
    rest of the relay. Paths are checked first, and CORS is handled here for every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        router: Router = scope["app"].state.router
        response: Any
        why = unsafe_path(scope.get("raw_path") or path.encode("utf-8", "surrogateescape"))
        if why is not None:
            router.metrics.count_rejected("bad_path")
            router.metrics.count_request(None, None, 400)
            response = bad_request(
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
            await _preflight(scope, send, origin or "")
            return
        if origin is not None:
            send = _with_cors(send, origin)
        kind = route_kind(path)
        if kind == "own" and not path.startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        # every answer of the API is counted once: by its exchange, else here under its status
        sent: list[int] = []
        if kind == "own":

            async def counting_send(message: Message) -> None:
                if message["type"] == "http.response.start":
                    sent.append(message["status"])
                await send(message)

            try:
                await self.app(scope, receive, counting_send)
            finally:
                if not scope.get(COUNTED):
                    router.metrics.count_request(None, None, sent[0] if sent else 499)
            return
        # a proxied answer is counted by its exchange (a relay always ends it), a refusal here
        # under its status: no wrapper on each of a stream's chunks
        status = 499  # nothing was answered: the client left, or an internal error follows
        try:
            request = Request(scope, receive)
            try:
                if kind == "cors_proxy" and not router.serve.allow_cors_proxy:
                    router.check_auth(request)
                    raise RouterError(
                        403,
                        "/cors-proxy is refused: it would let any client make the server fetch "
                        "any URL. Set serve.allow_cors_proxy: true in the manifest to pass it "
                        "through.",
                        code="cors_proxy_disabled",
                    )
                response = await proxy_endpoint(request, pinned=kind == "upstream")
            except RouterError as err:
                response = err.response()
            status = getattr(response, "status_code", status)
            await response(scope, receive, send)
        finally:
            if not scope.get(COUNTED):
                router.metrics.count_request(None, None, status)
