"""What the supervisor reports: progress events and the results of status, switch/load and stop.

Plain dataclasses with `to_json()` (the `--json` objects of the CLI), the Emitter that sends the
events of one call, and `result_maker`, the SwitchResult of one switch or load. Imports nothing
heavy: `llmctl status` loads this module.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from llmctl.errors import LaunchError
from llmctl.llama.secrets import mask_argv

if TYPE_CHECKING:
    from llmctl.supervisor.launch import LaunchSpec

EventKind = Literal["locked", "stopping", "stopped", "starting", "log", "kv", "ready", "error"]


class Event(NamedTuple):
    kind: EventKind
    message: str
    elapsed_s: float
    profile: str | None = None


class Emitter:
    """The `on_event` of one supervisor call, given each event's kind, message and profile (the
    call's own when none is named) and the time since the call began (monotonic `t0`)."""

    def __init__(
        self, callback: Callable[[Event], None] | None, t0: float, profile: str | None = None
    ) -> None:
        self.callback = callback
        self.t0 = t0
        self.profile = profile

    def __call__(self, kind: EventKind, message: str, profile: str | None = None) -> None:
        if self.callback is not None:
            self.callback(Event(kind, message, time.monotonic() - self.t0, profile or self.profile))

    def kv(self, profile: str) -> Callable[[str], None]:
        """The "kv" events of `profile`'s keep_kv hooks."""
        return lambda message: self("kv", message, profile)


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
    # added: "ready", "starting" (another llmctl is loading it) or None when nothing runs
    phase: str | None = None
    # added: what status noticed and repaired (a server that died, a switch that was killed)
    note: str | None = None
    # added: every running server (several run with `llmctl load`), brief, oldest first
    servers: list[dict[str, Any]] = field(default_factory=list)
    # added: saved KV caches of keep_kv profiles (kvcache.files.saved)
    kv_saved: list[dict[str, Any]] = field(default_factory=list)
    # added: the server runs an old launch of its profile (supervisor/stale.py); None: unknown
    stale: bool | None = None
    stale_why: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "running": self.running,
            "phase": self.phase,
            "profile": self.profile,
            "pid": self.pid,
            "host": self.host,
            "port": self.port,
            "url": self.url,
            "started_at": self.started_at,
            "uptime_s": None if self.uptime_s is None else round(self.uptime_s, 3),
            "healthy": self.healthy,
            "log": self.log,
            "config_hash": self.config_hash,
            "argv": mask_argv(self.argv),
            "memory": dict(self.memory),
            "note": self.note,
            "servers": list(self.servers),
            "kv_saved": list(self.kv_saved),
            "stale": self.stale,
            "stale_why": self.stale_why,
        }


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

    def to_json(self) -> dict[str, Any]:
        """The `llmctl switch --json` object."""
        err = None
        if self.error is not None:
            message = self.error.message
            if self.error.hint:
                message = f"{message} ({self.error.hint})"
            err = {
                "message": message,
                "exit_code": self.error.exit_status,
                "stderr_tail": list(self.error.stderr_tail),
            }
        return {
            "profile": self.profile,
            "pid": self.pid,
            "port": self.port,
            "url": self.url,
            "ready": self.ready,
            "elapsed_s": round(self.elapsed_s, 3),
            "log": self.log,
            "error": err,
        }

    def raise_for_error(self) -> SwitchResult:
        """Raise the LaunchError, if any; return self otherwise."""
        if self.error is not None:
            raise self.error
        return self


def result_maker(spec: LaunchSpec, t0: float) -> Callable[..., SwitchResult]:
    """The SwitchResult maker of a switch or load of `spec` that began at monotonic `t0`."""

    def result(
        *,
        ready: bool,
        pid: int | None,
        log: str | None,
        noop: bool = False,
        error: LaunchError | None = None,
    ) -> SwitchResult:
        return SwitchResult(
            profile=spec.profile,
            pid=pid,
            port=spec.port,
            url=spec.url,
            ready=ready,
            elapsed_s=time.monotonic() - t0,
            log=log,
            noop=noop,
            error=error,
        )

    return result


@dataclass
class StopResult:
    stopped: bool
    profile: str | None
    pid: int | None
    elapsed_s: float
    # added: every profile stopped (several servers may run)
    profiles: list[str] = field(default_factory=list)
    # stop(forget=True): saved KV cache files and bytes dropped
    forgotten: tuple[int, int] = (0, 0)
    # loads in progress (another llmctl's) that the stop cancelled
    cancelled: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "stopped": self.stopped,
            "cancelled": list(self.cancelled),
            "profile": self.profile,
            "pid": self.pid,
            "elapsed_s": round(self.elapsed_s, 3),
            "profiles": list(self.profiles),
            "kv_forgotten": {"files": self.forgotten[0], "bytes": self.forgotten[1]},
        }
