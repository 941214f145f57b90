"""The order a waiting request is served in: a pure policy (no processes, no asyncio, no clock).

`next_profile` names the waiting profile that loads next: one whose bound expired first (passed
over for `max_wait` seconds or `max_passes` requests), then the highest `priority`, then the
oldest request. `swap_verdict` says whether that load may start now or must wait, and why: it
starts at once when it evicts nothing ("fits"), when the bound expired ("bound expired": passed
over for `max_wait` since its arrival or since the busy victim became ready, whichever is later,
so a profile just loaded serves for at least `max_wait`), when it
outranks every busy victim ("priority") or when every victim has nothing to do ("idle"). A victim
is busy while it has requests in flight or had one within `IDLE_GRACE_S` (an agent's next request
follows its last response closely). A victim loaded less than its `min_residency` ago is not
evicted while busy, even past the bound, unless nothing else can run (it is idle). Otherwise the
load waits until `wake_at`, the first moment the verdict can change by the clock alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# A victim used less than this ago counts as busy: its agent is about to send the next request.
IDLE_GRACE_S = 0.5


@dataclass(frozen=True)
class Bound:
    """How long a request may be passed over for a loaded profile's requests; 0: never."""

    max_wait: float = 0.0
    max_passes: int | None = None


@dataclass(frozen=True)
class Settings:
    """A profile's place in the order."""

    priority: int = 0
    min_residency: float = 0.0


@dataclass(frozen=True)
class Waiting:
    """The requests waiting for one profile: since the oldest arrived, and how often it was passed."""

    profile: str
    since: float
    passed: int = 0


@dataclass(frozen=True)
class Resident:
    """A loaded profile the load would evict."""

    profile: str
    loaded_at: float
    last_used: float
    inflight: int = 0


@dataclass(frozen=True)
class Verdict:
    go: bool
    reason: str  # fits, bound expired, priority, idle; waiting: deferred
    wake_at: float | None = None


_DEFAULT = Settings()


def expired(w: Waiting, bound: Bound, now: float) -> bool:
    if bound.max_wait <= 0:
        return True  # no bound: arrival order
    if bound.max_passes is not None and w.passed >= bound.max_passes:
        return True
    # compared as the wake-up time is computed, so a wake at that moment sees it expired
    return now >= w.since + bound.max_wait


def next_profile(
    waiting: Sequence[Waiting], settings: Mapping[str, Settings], bound: Bound, now: float
) -> Waiting | None:
    """The profile to load next, or None when nothing waits."""
    if not waiting:
        return None

    def key(w: Waiting) -> tuple[bool, int, float]:
        prio = settings.get(w.profile, _DEFAULT).priority
        return (not expired(w, bound, now), -prio, w.since)

    return min(waiting, key=key)


def _busy(r: Resident, now: float) -> bool:
    return r.inflight > 0 or now < r.last_used + IDLE_GRACE_S


def swap_verdict(
    target: Waiting,
    victims: Sequence[Resident],
    settings: Mapping[str, Settings],
    bound: Bound,
    now: float,
) -> Verdict:
    """May the load of `target`, which evicts `victims`, start now?"""
    if not victims:
        return Verdict(True, "fits")
    busy = [r for r in victims if _busy(r, now)]
    if not busy:
        return Verdict(True, "idle")
    # the grace of a victim with nothing in flight ends by the clock alone
    wakes = [r.last_used + IDLE_GRACE_S for r in busy if not r.inflight]
    protected = [
        r for r in busy if now < r.loaded_at + settings.get(r.profile, _DEFAULT).min_residency
    ]
    if protected:
        ends = [r.loaded_at + settings.get(r.profile, _DEFAULT).min_residency for r in protected]
        return Verdict(False, "min residency", min(ends + wakes))
    if bound.max_wait <= 0:
        return Verdict(True, "arrival order")
    # passed over only while a profile it would evict serves: the time it waited for that
    # profile's own load is not passed over (else, with loads longer than the bound, every swap
    # would find the next bound expired and the order would be arrival order again)
    since = max([target.since, *(r.loaded_at for r in busy)])
    if expired(Waiting(target.profile, since, target.passed), bound, now):
        return Verdict(True, "bound expired")
    prio = settings.get(target.profile, _DEFAULT).priority
    if all(prio > settings.get(r.profile, _DEFAULT).priority for r in busy):
        return Verdict(True, "priority")
    return Verdict(False, "deferred", min([since + bound.max_wait, *wakes]))
