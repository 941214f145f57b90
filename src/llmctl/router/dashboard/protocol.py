"""What the dashboard depends on: the few members of the router's runtime it reads (the `Router`
Protocol, which `runtime.Router` satisfies), and how it names servers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from starlette.requests import Request

if TYPE_CHECKING:
    from llmctl.router.activity import Activity
    from llmctl.router.routing import ModelIndex
    from llmctl.router.scheduler import Scheduler
    from llmctl.router.upstreams import Upstreams
    from llmctl.supervisor.lifecycle import Supervisor


class Router(Protocol):
    """What the dashboard uses of the router's runtime (`runtime.Router` is one), and no more."""

    manifest: Any
    supervisor: Supervisor
    scheduler: Scheduler
    activity: Activity
    index: ModelIndex
    upstreams: Upstreams | None
    api_keys: tuple[str, ...]
    shutting_down: bool
    log_streams: dict[str, int]
    metrics: Any

    @property
    def devices(self) -> list[Any]: ...

    def check_auth(self, request: Request) -> None: ...

    async def refresh(self, *, force: bool = False) -> None: ...


MANAGED = "managed"  # the one server today's router runs


def router_of(request: Request) -> Router:
    router: Router = request.app.state.router
    return router
