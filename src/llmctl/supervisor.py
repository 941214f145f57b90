"""Process lifecycle of the managed llama-server: switch, stop, status, logs.

CONTRACT (stable names used by the CLI and the router; the implementation may add more):

    sup = Supervisor(state_dir=paths.state_dir(), lock_timeout=...)
    sup.status(check_health=True, timeout=0.5) -> Status
    sup.switch(spec: LaunchSpec, on_event=callback, cancel=threading.Event()) -> SwitchResult
    sup.stop(on_event=callback) -> StopResult
    sup.logs path: Status.log / SwitchResult.log

`on_event` receives Event objects in order: "locked", "stopping", "stopped", "starting",
"log" (one per stderr line while loading), "ready" or "error". The callback runs in the
switching thread and must be quick.

Every method is synchronous and safe to call from several threads and processes at once:
a file lock in the state directory serializes every change of state.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from llmctl.errors import LaunchError
from llmctl.launch import LaunchSpec

EventKind = Literal["locked", "stopping", "stopped", "starting", "log", "ready", "error"]


@dataclass(frozen=True)
class Event:
    kind: EventKind
    message: str
    elapsed_s: float
    profile: str | None = None


@dataclass
class Status:
    running: bool
    profile: str | None = None
    pid: int | None = None
    host: str | None = None
    port: int | None = None
    url: str | None = None
    started_at: float | None = None
    uptime_s: float | None = None
    healthy: bool | None = None
    log: str | None = None
    config_hash: str | None = None
    argv: list[str] = field(default_factory=list)
    memory: dict[str, Any] = field(default_factory=dict)


@dataclass
class SwitchResult:
    profile: str
    pid: int | None
    port: int
    url: str
    ready: bool
    elapsed_s: float
    log: str | None
    noop: bool = False
    error: LaunchError | None = None


@dataclass
class StopResult:
    stopped: bool
    profile: str | None
    pid: int | None
    elapsed_s: float


class Supervisor:
    def __init__(self, state_dir: Path, *, lock_timeout: float = 600.0) -> None:
        self.state_dir = state_dir
        self.lock_timeout = lock_timeout

    def status(self, *, check_health: bool = True, timeout: float = 0.5) -> Status:
        raise NotImplementedError

    def switch(
        self,
        spec: LaunchSpec,
        *,
        on_event: Callable[[Event], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> SwitchResult:
        raise NotImplementedError

    def stop(self, *, on_event: Callable[[Event], None] | None = None) -> StopResult:
        raise NotImplementedError
