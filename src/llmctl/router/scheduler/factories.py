"""Schedulers made for a purpose: `switching()` for one managed server switched between
profiles, and `configure()`, which takes the order's settings from a manifest.

Several servers placed by memory use `Scheduler` itself with the placer's functions
(router/backends.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from llmctl.router import order
from llmctl.router.scheduler.core import SWITCH, Scheduler
from llmctl.router.scheduler.effects import ProgressFn, SwitchFn, WaitFn


def switching(
    switch: SwitchFn,
    *,
    active: str | None = None,
    max_size: int = 10,
    timeout: float = 120.0,
    inflight_timeout: float = 60.0,
    clock: Callable[[], float] = time.monotonic,
    wait: WaitFn | None = None,
) -> Scheduler:
    """The scheduler of one managed server, switched between profiles: every load unloads every
    other profile (the switch), a stop is a switch to nothing, one FIFO bounded at `max_size`."""

    async def plan(target: str) -> list[str]:
        return [p for p in scheduler.loaded if p != target]

    async def load(target: str, progress: ProgressFn) -> list[str]:
        await switch(target, progress)
        return []  # what ran left when the switch started

    async def stop(target: str | None, progress: ProgressFn) -> None:
        await switch(None, progress)

    scheduler = Scheduler(
        plan,
        load,
        stop,
        policy=SWITCH,
        loaded=[active] if active else [],
        max_size=max_size,
        timeout=timeout,
        inflight_timeout=inflight_timeout,
        clock=clock,
        wait=wait,
    )
    return scheduler


def configure(scheduler: Scheduler, manifest: Any) -> None:
    """Take the order's settings from a manifest: serve.max_wait and max_passes, each profile's
    priority, min_residency and max_concurrency."""
    serve = getattr(manifest, "serve", None)
    scheduler.bound = order.Bound(
        float(getattr(serve, "max_wait", 0.0) or 0.0), getattr(serve, "max_passes", None)
    )
    settings: dict[str, order.Settings] = {}
    limits: dict[str, int] = {}
    for name, prof in getattr(manifest, "profiles", {}).items():
        prio = int(getattr(prof, "priority", 0) or 0)
        residency = float(getattr(prof, "min_residency", None) or 0.0)
        if prio or residency:
            settings[name] = order.Settings(prio, residency)
        limit = getattr(prof, "max_concurrency", None)
        if limit:
            limits[name] = int(limit)
    scheduler.settings, scheduler.max_concurrency = settings, limits
