"""What the scheduler asks of the backend that runs the servers, as function types, and the
`Progress` a load or stop reports to the requests waiting for it.

The scheduler decides who waits for what (with router/order.py); these functions do it: plan a
load (which servers go), load, stop, and wait on the scheduler's clock. A backend
(router/backends.py) implements them; the tests pass fakes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Progress:
    """One step of a switch as a waiting client sees it."""

    kind: str  # queued, stopping, stopped, starting, loading, ready, error
    message: str
    profile: str | None
    elapsed_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "event": self.kind,
            "message": self.message,
            "profile": self.profile,
            "elapsed_s": round(self.elapsed_s, 3),
        }


ProgressFn = Callable[[Progress], None]

# The profiles to unload before `target` loads (raises SwitchFailed when the load is refused).
PlanFn = Callable[[str], Awaitable[list[str]]]
# Load `target` (the placer may decide again); the profiles it unloaded.
LoadFn = Callable[[str, ProgressFn], Awaitable[list[str]]]
# Stop this profile's server (None: every server).
StopFn = Callable[[str | None, ProgressFn], Awaitable[None]]
# Wait until `event` is set or `seconds` (on the scheduler's clock) pass.
WaitFn = Callable[[asyncio.Event, float], Awaitable[None]]
# Switch the one managed server to `target` (None: stop it); raise SwitchFailed on failure.
SwitchFn = Callable[[str | None, ProgressFn], Awaitable[None]]
# The newest stop from a shell of `profile` after a wall time: (its wall time, what it was).
StoppedFn = Callable[[str, float], tuple[float, str] | None]


async def wait_event(event: asyncio.Event, seconds: float) -> None:
    """The WaitFn of the real clock."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)
