"""The router's two modes as the dashboard shows them: one server switched between profiles
(`OneServer`), or several placed by memory (`SeveralServers`, `server.ports`). Each answers the
same questions (how a server is named, how busy a profile is, whether it shows as ready, what
loading it would unload), so the page's state is composed without asking which mode runs;
`mode_of` is the one place that knows."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Protocol

from llmctl.router.dashboard.protocol import MANAGED

if TYPE_CHECKING:
    from llmctl.router.dashboard.protocol import Router


class Mode(Protocol):
    places: bool  # what loading a profile unloads is the placer's decision (profile_evicts)

    def server_name(self, profile: str | None) -> str: ...

    def inflight(self, profile: str | None) -> int: ...

    def idle_s(self, profile: str | None) -> float | None: ...

    def ready(self, profile: str, running: set[str]) -> bool: ...

    def unloads(self, profile: str, evicts: dict[str, list[str]]) -> list[str]: ...


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


class OneServer:
    """One llama-server: its name is `managed`, the scheduler's counters are the server's, and
    loading another profile stops the running one."""

    places = False

    def __init__(self, router: Router) -> None:
        self.sched = router.scheduler

    def server_name(self, profile: str | None) -> str:
        return MANAGED

    def inflight(self, profile: str | None) -> int:
        return int(self.sched.inflight)

    def idle_s(self, profile: str | None) -> float | None:
        return _round(self.sched.idle_seconds())

    def ready(self, profile: str, running: set[str]) -> bool:
        return self.sched.is_loaded(profile)

    def unloads(self, profile: str, evicts: dict[str, list[str]]) -> list[str]:
        active = self.sched.active
        return [active] if active not in (None, profile) else []


class SeveralServers:
    """Several llama-servers: each is named for its profile and counted on its own, a running
    server shows as ready even before the router used it, and loading a profile unloads what
    the placer would choose now (it decides again at load time)."""

    places = True

    def __init__(self, router: Router) -> None:
        self.sched = router.scheduler
        self.activity = router.scheduler.activity()
        self.now = time.time()

    def server_name(self, profile: str | None) -> str:
        return profile if profile is not None else MANAGED

    def inflight(self, profile: str | None) -> int:
        if profile is None:
            return int(self.sched.inflight)
        return int(self.activity.get(profile, (0.0, 0))[1])

    def idle_s(self, profile: str | None) -> float | None:
        if profile is None:
            return _round(self.sched.idle_seconds())
        used, n = self.activity.get(profile, (self.now, 1))
        return None if n else _round(max(0.0, self.now - used))

    def ready(self, profile: str, running: set[str]) -> bool:
        return self.sched.is_loaded(profile) or profile in running

    def unloads(self, profile: str, evicts: dict[str, list[str]]) -> list[str]:
        return evicts.get(profile, [])


def mode_of(router: Router) -> Mode:
    """The mode the router runs in: several servers when the manifest gives `server.ports`."""
    if router.manifest.server.ports is not None:
        return SeveralServers(router)
    return OneServer(router)
