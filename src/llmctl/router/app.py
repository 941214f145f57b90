"""The router's Starlette app: OpenAI-compatible API, sidecar API, health and metrics.

`create_app(manifest, supervisor)` builds it; tests call it without a port. Everything that
changes what the managed llama-server runs goes through the supervisor (same state file and
lock as the CLI), serialized by the scheduler (router/scheduler/).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from llmctl.router import dashboard
from llmctl.router.edge import Edge
from llmctl.router.endpoints.health import health, metrics_endpoint
from llmctl.router.endpoints.openai import list_models, retrieve_model
from llmctl.router.endpoints.sidecar import (
    host_state_endpoint,
    models_available,
    models_status,
    models_stop,
    models_switch,
)
from llmctl.router.errors import (
    SERVER,
    RouterError,
)
from llmctl.router.hosts import (
    STATE_PATH,
)
from llmctl.router.runtime import Router, log
from llmctl.supervisor.launch import LaunchSpec
from llmctl.supervisor.lifecycle import Supervisor


async def _router_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RouterError)
    return exc.response()


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    err = RouterError(exc.status_code, str(exc.detail), code=code)
    return err.response(dict(exc.headers or {}))


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.exception("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return RouterError(
        500, "Internal error in the router.", type=SERVER, code="internal_error"
    ).response()


class RouterApp(Starlette):
    """The Starlette app behind the router's `Edge`: the edge takes every request first and runs
    the proxied paths itself; the router's own paths (and the lifespan) go through Starlette."""

    edge: Edge

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["app"] = self
        await self.edge(scope, receive, send)

    async def _starlette(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(scope, receive, send)


def create_app(
    manifest: Any,
    supervisor: Supervisor,
    *,
    manifest_path: Path | None = None,
    spec_for: Callable[[Any, str], LaunchSpec] | None = None,
    environ: Mapping[str, str] | None = None,
    heartbeat: float = 5.0,
    idle_unload: bool = True,
) -> RouterApp:
    """The router app over `manifest` and `supervisor`; `app.state.router` is its Router."""
    router = Router(
        manifest,
        supervisor,
        spec_for=spec_for,
        manifest_path=manifest_path,
        environ=environ,
        heartbeat=heartbeat,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await router.refresh(force=True)
        router.hosts.sync()
        idle = asyncio.ensure_future(router.idle_loop()) if idle_unload else None
        try:
            yield
        finally:
            router.shutting_down = True
            await router.hosts.aclose()
            if idle is not None:
                idle.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await idle
            await router.scheduler.aclose()
            if router.serve.stop_server_on_exit:
                await router.stop_started_server()
            await router.aclose_clients()

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/v1/health", health, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/models", list_models, methods=["GET"]),
        Route("/v1/models/{id:path}", retrieve_model, methods=["GET"]),
        Route("/models/available", models_available, methods=["GET"]),
        Route("/models/status", models_status, methods=["GET"]),
        Route("/models/switch", models_switch, methods=["POST"]),
        Route("/models/stop", models_stop, methods=["POST"]),
        Route(STATE_PATH, host_state_endpoint, methods=["GET"]),
        *dashboard.routes(),
    ]
    app = RouterApp(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            RouterError: _router_error,
            HTTPException: _http_error,
            Exception: _internal_error,
        },
    )
    app.state.router = router
    app.edge = Edge(router, app._starlette)
    return app
