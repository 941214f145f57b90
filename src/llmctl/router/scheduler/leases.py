"""The loaded profiles as the scheduler counts them: a `Lease` per request in flight on each,
when each was loaded and last used, and which are being unloaded (evicting).

`Loaded` is bookkeeping only: it starts and stops nothing. A lease names the load it was
granted under (an epoch), so a lease from before its server was replaced no longer counts.
`drain()` waits, bounded, until the requests in flight on some profiles have finished. A lease
granted when the load of its profile ended says how long its request waited (`Waited`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from llmctl.router import order

log = logging.getLogger("llmctl.router")


@dataclass(frozen=True)
class Waited:
    """How a request waited for the load of its profile (the router's X-Llmctl-Load header)."""

    seconds: float  # from its arrival in the queue to its lease
    stage: str  # the last step of the load it was shown (a Progress kind: ready, once loaded)


class Lease:
    """Permission to use a loaded profile; release it when the response is finished."""

    __slots__ = ("_epoch", "_loaded", "_released", "profile", "waited")

    def __init__(self, loaded: Loaded, profile: str, epoch: int) -> None:
        self._loaded = loaded
        self.profile = profile
        self._epoch = epoch
        self._released = False
        self.waited: Waited | None = None  # None: it waited for no load of its profile

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._loaded.release(self.profile, self._epoch)


@dataclass
class _Slot:
    epoch: int
    last_used: float
    loaded_at: float
    inflight: int = 0
    drained: asyncio.Event = field(default_factory=asyncio.Event)


class Loaded:
    """The loaded profiles, oldest load first, and the leases on each.

    `clock` is the scheduler's; `on_drained` runs when a profile's last request in flight ends.
    """

    def __init__(self, clock: Callable[[], float], on_drained: Callable[[], None]) -> None:
        self.clock = clock
        self._on_drained = on_drained
        self._slots: dict[str, _Slot] = {}
        self._order: list[str] = []
        self.evicting: set[str] = set()  # being unloaded: no new leases
        self._epoch = 0

    def __contains__(self, profile: object) -> bool:
        return profile in self._slots

    @property
    def names(self) -> list[str]:
        """Oldest load first."""
        return list(self._order)

    @property
    def newest(self) -> str | None:
        return self._order[-1] if self._order else None

    @property
    def inflight(self) -> int:
        return sum(s.inflight for s in self._slots.values())

    def inflight_of(self, profile: str) -> int:
        slot = self._slots.get(profile)
        return slot.inflight if slot else 0

    def staying(self, profile: str | None) -> bool:
        """Loaded and not being unloaded."""
        return profile is not None and profile in self._slots and profile not in self.evicting

    def add(self, profile: str) -> None:
        self._epoch += 1
        slot = _Slot(self._epoch, self.clock(), self.clock())
        slot.drained.set()
        self._slots[profile] = slot
        if profile in self._order:
            self._order.remove(profile)
        self._order.append(profile)

    def drop(self, profile: str) -> None:
        slot = self._slots.pop(profile, None)
        if slot is not None:
            slot.drained.set()
        if profile in self._order:
            self._order.remove(profile)

    def lease(self, profile: str) -> Lease:
        """A lease on `profile`, which is loaded."""
        slot = self._slots[profile]
        slot.inflight += 1
        slot.last_used = self.clock()
        return Lease(self, profile, slot.epoch)

    def release(self, profile: str, epoch: int) -> None:
        slot = self._slots.get(profile)
        if slot is None or slot.epoch != epoch:
            return  # a lease from before that server was replaced no longer counts
        slot.inflight = max(0, slot.inflight - 1)
        slot.last_used = self.clock()
        if slot.inflight == 0:
            slot.drained.set()
            self._on_drained()

    async def drain(self, profiles: Iterable[str], timeout: float) -> None:
        """Wait until `profiles` have no request in flight, at most `timeout` seconds."""
        slots = [(p, self._slots[p]) for p in profiles if p in self._slots]
        busy = [(p, s) for p, s in slots if s.inflight > 0]
        if not busy:
            return
        for _, s in busy:
            s.drained.clear()
        try:
            await asyncio.wait_for(asyncio.gather(*(s.drained.wait() for _, s in busy)), timeout)
        except TimeoutError:
            left = {p: s.inflight for p, s in busy if s.inflight}
            log.warning(
                "requests still in flight after %g s (serve.inflight_timeout): %s; unloading anyway",
                timeout,
                left,
            )

    def idle(self) -> dict[str, float]:
        """profile -> seconds since last used, for those with nothing in flight that stay."""
        now = self.clock()
        return {
            p: now - s.last_used
            for p, s in self._slots.items()
            if not s.inflight and p not in self.evicting
        }

    def activity(self) -> dict[str, tuple[float, int]]:
        """profile -> (last used as wall-clock time, requests in flight), for the placer."""
        now_wall, now = time.time(), self.clock()
        return {p: (now_wall - (now - s.last_used), s.inflight) for p, s in self._slots.items()}

    def load_activity(self) -> dict[str, tuple[float, int]]:
        """activity() with every server not being unloaded counted as busy."""
        return {
            p: (used, n if p in self.evicting else max(n, 1))
            for p, (used, n) in self.activity().items()
        }

    def residents(self, victims: Iterable[str]) -> list[order.Resident]:
        """The victims of a load as the order weighs them."""
        return [
            order.Resident(p, s.loaded_at, s.last_used, s.inflight)
            for p in victims
            if (s := self._slots.get(p)) is not None
        ]
