"""The router's scheduler: which profiles the managed servers run, and who waits for which.

One scheduler, two policies (`Policy`):

One server, switched (`switching()`, no `server.ports`): capacity one, a load replaces whatever
runs. Requests for the running profile proceed at once, concurrently. A request for another
profile waits in one bounded FIFO (full: 429) with a deadline (504). The head of the queue
decides the next profile; the switch starts once the running profile's in-flight requests have
finished (bounded by `inflight_timeout`), and every waiter for that profile, including those that
arrive during the load, is let through together when it is ready. A failed load fails each of
them with the reason. While a switch is pending, new requests for the old profile queue behind
it, so a busy profile cannot starve the others.

Several servers (`server.ports`): loads placed by memory. Requests for a loaded profile proceed
at once, whatever else loads. A request for a profile that is not loaded waits in that profile's
bounded queue (full: 429) with a deadline (504) while the profile is loaded with the placer, one
load at a time. The placer names the servers to unload first; new requests for them queue from
that moment, and their requests in flight may finish (bounded by `inflight_timeout`) before they
stop. A failed or refused load fails only that profile's waiters, with the reason. `ttl` unloads
each profile on its own.

A stop from a shell (`llmctl stop`/`unload`, supervisor/stops.py) wins: before a load, the
waiters that arrived before the newest such stop of that profile are answered 503
(`model_stopped`) and the load goes on only for those that came after it (`stopped_after`).

The order of the waiting (both policies) is router/order.py's: while a load would evict a busy
profile, its requests (and new ones for it) go first, up to `bound`; then the swap happens, its
reason logged. `max_concurrency` caps a profile's requests in flight and waiting (429).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from llmctl.router import order
from llmctl.router.errors import RATE_LIMIT, SERVER, TIMEOUT, RouterError
from llmctl.router.errors import SwitchFailed as SwitchFailed  # the effects raise it

log = logging.getLogger("llmctl.router")


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


@dataclass(frozen=True)
class Policy:
    """How the scheduler shares the machine between profiles."""

    # Capacity one: every load replaces what runs (one server on one port). What runs is gone
    # from the moment the switch starts; a waiting request means it will be replaced, so the
    # queue is one FIFO whose head decides; a stop is timed like a switch to nothing.
    exclusive: bool = False
    # `max_size` bounds every waiter together rather than each profile's own queue.
    shared_queue: bool = False


SWITCH = Policy(exclusive=True, shared_queue=True)
PLACEMENT = Policy()


class Lease:
    """Permission to use a loaded profile; release it when the response is finished."""

    __slots__ = ("_epoch", "_released", "_scheduler", "profile")

    def __init__(self, scheduler: Scheduler, profile: str, epoch: int) -> None:
        self._scheduler = scheduler
        self.profile = profile
        self._epoch = epoch
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._scheduler._release(self.profile, self._epoch)


@dataclass
class _Slot:
    epoch: int
    last_used: float
    loaded_at: float
    inflight: int = 0
    drained: asyncio.Event = field(default_factory=asyncio.Event)


Op = Literal["load", "stop", "unload"]  # stop: every server; unload: one


@dataclass(eq=False)
class _Waiter:
    op: Op
    target: str | None
    future: asyncio.Future[Lease | None]
    on_progress: ProgressFn | None
    since: float
    passes_at: int = 0  # the scheduler's pass count when it arrived
    wall: float = 0.0  # when its request arrived (wall clock), against stops from a shell


class Scheduler:
    def __init__(
        self,
        plan: PlanFn,
        load: LoadFn,
        stop: StopFn,
        *,
        policy: Policy = PLACEMENT,
        loaded: Iterable[str] = (),
        max_size: int = 10,
        timeout: float = 120.0,
        inflight_timeout: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        wait: WaitFn | None = None,
    ) -> None:
        self._plan = plan
        self._load = load
        self._stop = stop
        self.policy = policy
        self.max_size = max_size
        self.timeout = timeout
        self.inflight_timeout = inflight_timeout
        self.loading: str | None = None
        self.generation = 0
        self.last_switch_s: float | None = None
        self.on_switch_done: Callable[[str | None, bool, float], None] | None = None
        self.loads = 0
        self._clock = clock
        self._wait = wait or _wait_event
        self.bound = order.Bound()
        self.settings: dict[str, order.Settings] = {}
        self.max_concurrency: dict[str, int] = {}
        self.stopped_after: StoppedFn | None = None  # set by the backend that has a state folder
        self.loading_since: float | None = (
            None  # the wall time of the oldest waiter being loaded for
        )
        # what /metrics shows of the order
        self.swaps: dict[str, int] = {}  # reason -> swaps
        self.passed_over_s = 0.0  # seconds requests waited while their swap was deferred
        self.loads_avoided = 0  # requests served by a loaded profile while a swap was deferred
        self._passes = 0
        self._deferring = False
        self._deferred_since: float | None = None
        self._wake = asyncio.Event()
        self._slots: dict[str, _Slot] = {}
        self._order: list[str] = []  # loaded profiles, oldest load first
        self._evicting: set[str] = set()
        self._epoch = 0
        self._busy = False
        self._waiters: deque[_Waiter] = deque()
        self._driver: asyncio.Task[None] | None = None
        self._closed = False
        for profile in loaded:
            self._add(profile)

    # --- what callers see -------------------------------------------------------------

    @property
    def active(self) -> str | None:
        """The most recently loaded profile (the one-server view)."""
        return self._order[-1] if self._order else None

    @property
    def loaded(self) -> list[str]:
        return list(self._order)

    def is_loaded(self, profile: str | None) -> bool:
        return profile is not None and profile in self._slots

    @property
    def inflight(self) -> int:
        return sum(s.inflight for s in self._slots.values())

    def inflight_of(self, profile: str) -> int:
        slot = self._slots.get(profile)
        return slot.inflight if slot else 0

    @property
    def depth(self) -> int:
        """Requests waiting (not yet let through)."""
        return len(self._waiters)

    def depth_of(self) -> dict[str, int]:
        """Requests waiting, per profile (a stop counts under "")."""
        out: dict[str, int] = {}
        for w in self._waiters:
            out[w.target or ""] = out.get(w.target or "", 0) + 1
        return out

    @property
    def deferring(self) -> bool:
        """A swap waits while the loaded profiles serve their requests."""
        return self._deferring

    @property
    def switching(self) -> bool:
        return self._busy

    def activity(self) -> dict[str, tuple[float, int]]:
        """profile -> (last used as wall-clock time, requests in flight), for the placer."""
        now_wall, now = time.time(), self._clock()
        return {p: (now_wall - (now - s.last_used), s.inflight) for p, s in self._slots.items()}

    def load_activity(self) -> dict[str, tuple[float, int]]:
        """activity() for the load under way: every server not drained for it counts as busy, so
        the placer, deciding again under the supervisor's lock, takes the victims this scheduler
        drained rather than a server that may be answering (a request cut off there is lost)."""
        return {
            p: (used, n if p in self._evicting else max(n, 1))
            for p, (used, n) in self.activity().items()
        }

    def would_wait(self, profile: str | None) -> bool:
        return not self._fast_path(profile)

    def check_room(self, profile: str | None = None) -> None:
        """Raise the 429 a request would get now (before a stream is started)."""
        self._refuse_if_busy(profile)
        if not self._fast_path(profile):
            self._refuse_if_full(profile)

    async def acquire(
        self,
        profile: str,
        *,
        on_progress: ProgressFn | None = None,
        timeout: float | None = None,
        since: float | None = None,
    ) -> Lease:
        """A lease on `profile` once it is loaded; raises RouterError (429/503/504).

        `since`: when the request arrived (wall clock; default now), so that a retry after a
        stop from a shell is not taken for a request that came after it."""
        self._refuse_if_busy(profile)
        if self._fast_path(profile):
            slot = self._slots[profile]
            slot.inflight += 1
            slot.last_used = self._clock()
            if self._deferring:
                self._passes += 1
                self.loads_avoided += 1
            return Lease(self, profile, slot.epoch)
        lease = await self._wait_for("load", profile, on_progress, timeout, since)
        assert lease is not None
        return lease

    async def stop(
        self, *, on_progress: ProgressFn | None = None, timeout: float | None = None
    ) -> None:
        """Stop every server, in turn with the loads queued before."""
        await self._wait_for("stop", None, on_progress, timeout)

    async def unload(self, profile: str, *, timeout: float | None = None) -> None:
        await self._wait_for("unload", profile, None, timeout)

    def observe_loaded(self, running: Iterable[str]) -> None:
        """What the state file says runs (a shell may load or unload too)."""
        if self._busy or self._waiters:
            return
        now = set(running)
        if now == set(self._slots):
            return
        log.info("servers changed outside the router: %s -> %s", sorted(self._slots), sorted(now))
        for gone in set(self._slots) - now:
            self._drop(gone)
        for new in sorted(now - set(self._slots)):
            self._add(new)
        self.generation += 1

    def observe(self, running: str | None, generation: int) -> None:
        """What the state file says the one server runs, read when `generation` was current."""
        if generation == self.generation:
            self.observe_loaded([running] if running else [])

    def idle_seconds(self) -> float | None:
        """How long a loaded profile has had nothing to do (the longest); None when none is
        idle, or while a load or stop is under way or requests wait (what runs may change)."""
        if self._busy or self._waiters:
            return None
        idle = [
            self._clock() - s.last_used
            for p, s in self._slots.items()
            if not s.inflight and p not in self._evicting
        ]
        return max(idle) if idle else None

    async def unload_idle(self, ttls: Mapping[str, float | None]) -> list[str]:
        """Unload each profile idle for longer than its own ttl."""
        done = []
        for profile, slot in list(self._slots.items()):
            ttl = ttls.get(profile)
            if not ttl or slot.inflight or profile in self._evicting:
                continue
            if self._clock() - slot.last_used < ttl or any(
                w.target == profile for w in self._waiters
            ):
                continue
            log.info("unloading %s after %.0f s idle (ttl %.0f s)", profile, ttl, ttl)
            await self.unload(profile)
            done.append(profile)
        return done

    async def unload_if_idle(self, ttl: float | None) -> bool:
        """Unload the running profile once idle for longer than `ttl` (the one-server view)."""
        idle = self.idle_seconds()
        active = self.active
        if ttl is None or ttl <= 0 or idle is None or idle < ttl or active is None:
            return False
        log.info("unloading %s after %.0f s idle (ttl %.0f s)", active, idle, ttl)
        # exclusive: it is the stop, which answers every stop waiting with it
        await (self.stop() if self.policy.exclusive else self.unload(active))
        return True

    def close(self) -> None:
        """Refuse new requests and fail the waiting ones (a load in progress goes on)."""
        self._closed = True
        err = _shutting_down()
        while self._waiters:
            w = self._waiters.popleft()
            if not w.future.done():
                w.future.set_exception(err)

    async def aclose(self) -> None:
        """close(), and end a load in progress (the supervisor cancels it)."""
        self.close()
        if self._driver is not None and not self._driver.done():
            self._driver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._driver

    # --- internals --------------------------------------------------------------------

    def _ready(self, profile: str | None) -> bool:
        """Loaded and staying: its requests may go through."""
        return (
            not self._closed
            and profile is not None
            and profile in self._slots
            and profile not in self._evicting
        )

    def _fast_path(self, profile: str | None) -> bool:
        # exclusive: anything waiting will replace what runs, or waits behind what will, unless
        # that swap is deferred while what runs serves its requests
        return self._ready(profile) and not (
            self.policy.exclusive and self._waiters and not self._deferring
        )

    def _add(self, profile: str) -> None:
        self._epoch += 1
        slot = _Slot(self._epoch, self._clock(), self._clock())
        slot.drained.set()
        self._slots[profile] = slot
        if profile in self._order:
            self._order.remove(profile)
        self._order.append(profile)

    def _drop(self, profile: str) -> None:
        slot = self._slots.pop(profile, None)
        if slot is not None:
            slot.drained.set()
        if profile in self._order:
            self._order.remove(profile)

    def _retry_after(self) -> float:
        return max(1.0, self.last_switch_s or 1.0)

    def _refuse_if_busy(self, profile: str | None) -> None:
        limit = self.max_concurrency.get(profile or "")
        if not limit or profile is None:
            return
        waiting = sum(1 for w in self._waiters if w.target == profile and w.op == "load")
        if self.inflight_of(profile) + waiting >= limit:
            raise RouterError(
                429,
                f"{profile} already has {limit} requests in flight or waiting (its "
                "max_concurrency); retry later.",
                type=RATE_LIMIT,
                code="concurrency_limit",
                retry_after=1.0,
            )

    def _refuse_if_full(self, profile: str | None) -> None:
        if self.policy.shared_queue:
            if len(self._waiters) >= self.max_size:
                raise RouterError(
                    429,
                    f"The switch queue is full ({self.max_size} requests waiting for a model to "
                    "load); retry later.",
                    type=RATE_LIMIT,
                    code="queue_full",
                    retry_after=self._retry_after(),
                )
            return
        if sum(1 for w in self._waiters if w.target == profile) >= self.max_size:
            raise RouterError(
                429,
                f"The queue for {profile} is full ({self.max_size} requests waiting for it to "
                "load); retry later.",
                type=RATE_LIMIT,
                code="queue_full",
                retry_after=self._retry_after(),
            )

    def _queued_message(self, op: Op, target: str | None) -> str:
        if op != "load":
            return f"waiting to stop the server (position {len(self._waiters)})"
        if self.loading == target:
            return f"joining the load of {target}"
        if self.policy.exclusive:  # one FIFO: the position says how many switches come first
            return f"waiting for {target} (position {len(self._waiters)} in the queue)"
        return f"waiting for {target} to load"

    async def _wait_for(
        self,
        op: Op,
        target: str | None,
        on_progress: ProgressFn | None,
        timeout: float | None,
        since: float | None = None,
    ) -> Lease | None:
        if self._closed:
            raise _shutting_down()
        self._refuse_if_full(target)
        loop = asyncio.get_running_loop()
        wall = time.time() if since is None else since
        waiter = _Waiter(
            op, target, loop.create_future(), on_progress, self._clock(), self._passes, wall
        )
        self._waiters.append(waiter)
        self._wake.set()
        self._notify(waiter, Progress("queued", self._queued_message(op, target), target))
        self._kick()
        limit = self.timeout if timeout is None else timeout
        try:
            await asyncio.wait({waiter.future}, timeout=limit)
        except asyncio.CancelledError:
            self._abandon(waiter)
            raise
        if not waiter.future.done():
            self._abandon(waiter)
            what = f"for {target} to load" if op == "load" else "for the server to stop"
            raise RouterError(
                504,
                f"Timed out after {limit:.0f} s waiting {what} (serve.queue.timeout).",
                type=TIMEOUT,
                code="queue_timeout",
                retry_after=self._retry_after(),
            )
        return waiter.future.result()

    def _abandon(self, waiter: _Waiter) -> None:
        self._wake.set()
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)
        fut = waiter.future
        if not fut.done():
            fut.cancel()
        elif not fut.cancelled() and fut.exception() is None:
            lease = fut.result()
            if lease is not None:
                lease.release()

    def _notify(self, waiter: _Waiter, progress: Progress) -> None:
        if waiter.on_progress is None:
            return
        try:
            waiter.on_progress(progress)
        except Exception:  # a waiter's callback must not break the load
            log.exception("progress callback failed")

    def _broadcast(self, op: Op, target: str | None, progress: Progress) -> None:
        for waiter in list(self._waiters):
            if waiter.op == op and waiter.target == target:
                self._notify(waiter, progress)

    def _wanted(self, op: Op, target: str | None) -> bool:
        return any(w.op == op and w.target == target for w in self._waiters)

    def _kick(self) -> None:
        if self._driver is None or self._driver.done():
            self._driver = asyncio.get_running_loop().create_task(self._drive())

    def _release(self, profile: str, epoch: int) -> None:
        slot = self._slots.get(profile)
        if slot is None or slot.epoch != epoch:
            return  # a lease from before that server was replaced no longer counts
        slot.inflight = max(0, slot.inflight - 1)
        slot.last_used = self._clock()
        if slot.inflight == 0:
            slot.drained.set()
            self._wake.set()

    def _admit(self, ready: Callable[[str | None], bool]) -> None:
        """Let through, in queue order, every load waiter whose profile is `ready`."""
        for waiter in [w for w in self._waiters if w.op == "load" and ready(w.target)]:
            self._waiters.remove(waiter)
            if waiter.future.done():
                continue
            assert waiter.target is not None
            slot = self._slots[waiter.target]
            slot.inflight += 1
            slot.last_used = self._clock()
            waiter.future.set_result(Lease(self, waiter.target, slot.epoch))

    def _admit_loaded(self) -> None:
        """Let through the load waiters whose profile is loaded now; exclusive: only once the
        head's is, since a head that needs a load replaces whatever else they wait for."""
        if self.policy.exclusive:
            head = self._waiters[0] if self._waiters else None
            if head is None or head.op != "load" or not self._ready(head.target):
                return
        self._admit(self._ready)

    def _finish(self, op: Op, target: str | None, error: RouterError | None = None) -> None:
        for waiter in [w for w in self._waiters if w.op == op and w.target == target]:
            self._waiters.remove(waiter)
            if waiter.future.done():
                continue
            if error is not None:
                waiter.future.set_exception(error)
            else:
                waiter.future.set_result(None)

    async def drain_more(self, profiles: Iterable[str]) -> None:
        """Hook for a load under way that must unload more (placement.after_oom's retry)."""
        self._evicting.update(profiles)
        await self._drain(profiles)

    async def _drain(self, profiles: Iterable[str]) -> None:
        slots = [(p, self._slots[p]) for p in profiles if p in self._slots]
        busy = [(p, s) for p, s in slots if s.inflight > 0]
        if not busy:
            return
        for _, s in busy:
            s.drained.clear()
        try:
            await asyncio.wait_for(
                asyncio.gather(*(s.drained.wait() for _, s in busy)), self.inflight_timeout
            )
        except TimeoutError:
            left = {p: s.inflight for p, s in busy if s.inflight}
            log.warning(
                "requests still in flight after %g s (serve.inflight_timeout): %s; unloading anyway",
                self.inflight_timeout,
                left,
            )

    def _replace(self, profiles: Iterable[str]) -> float:
        """Exclusive: the one server is replaced from now on, so what it ran is gone (its
        leases no longer count, it stays gone if the switch fails); the switch is timed from
        here."""
        for p in profiles:
            self._drop(p)
        self.generation += 1
        return self._clock()

    def _timed(self, target: str | None, ok: bool, started: float) -> None:
        self.last_switch_s = self._clock() - started
        if self.on_switch_done is not None:
            self.on_switch_done(target, ok, self.last_switch_s)

    def _waiting(self) -> list[order.Waiting]:
        """The load waiters ahead of the first stop, grouped by profile, for the order."""
        oldest: dict[str, _Waiter] = {}
        for w in self._waiters:
            if w.op != "load":
                break
            assert w.target is not None
            if w.target not in oldest:
                oldest[w.target] = w
        return [order.Waiting(p, w.since, self._passes - w.passes_at) for p, w in oldest.items()]

    def _resident(self, victims: Iterable[str]) -> list[order.Resident]:
        return [
            order.Resident(p, s.loaded_at, s.last_used, s.inflight)
            for p in victims
            if (s := self._slots.get(p)) is not None
        ]

    async def _choose(self) -> tuple[str, list[str]] | None:
        """The profile to load next and its victims, once the order lets its swap start; None
        when nothing waits for a load any more. Deferred, it waits for a request to finish or
        arrive, or for the clock (the bound, a grace, a residency) to change the verdict."""
        try:
            while not self._closed:
                self._wake.clear()
                self._admit_loaded()
                now = self._clock()
                pick = order.next_profile(self._waiting(), self.settings, self.bound, now)
                if pick is None:
                    return None
                try:
                    victims = await self._plan(pick.profile)
                except Exception as exc:  # refused: only its waiters fail
                    self._load_failed(pick.profile, exc)
                    continue
                if not self._wanted("load", pick.profile):
                    continue
                verdict = order.swap_verdict(
                    pick, self._resident(victims), self.settings, self.bound, now
                )
                if verdict.go:
                    if victims:
                        self.swaps[verdict.reason] = self.swaps.get(verdict.reason, 0) + 1
                        log.info(
                            "swapping %s for %s: %s",
                            ", ".join(victims),
                            pick.profile,
                            verdict.reason,
                        )
                    return pick.profile, victims
                if not self._deferring:
                    self._deferring, self._deferred_since = True, now
                    self._broadcast(
                        "load",
                        pick.profile,
                        Progress(
                            "queued",
                            f"waiting for {pick.profile}: {', '.join(victims)} serves its "
                            f"requests first ({verdict.reason})",
                            pick.profile,
                        ),
                    )
                    if self.policy.exclusive:
                        self._admit(self._ready)
                assert verdict.wake_at is not None
                await self._wait(self._wake, max(0.0, verdict.wake_at - now))
            return None
        finally:
            if self._deferring and self._deferred_since is not None:
                self.passed_over_s += self._clock() - self._deferred_since
            self._deferring, self._deferred_since = False, None

    async def _drive(self) -> None:
        while not self._closed:
            self._admit_loaded()
            if not self._waiters:
                return
            head = self._waiters[0]
            chosen: tuple[str, list[str]] | None = None
            if head.op == "load":
                chosen = await self._choose()
                if chosen is None:
                    continue
            self._busy = True
            try:
                if chosen is not None:
                    await self._do_load(*chosen)
                else:
                    await self._do_stop(head.op, head.target)
            finally:
                self._busy = False
                self._evicting.clear()
                self.loading = None

    async def _do_stop(self, op: Op, target: str | None) -> None:
        exclusive = self.policy.exclusive
        profiles = (
            list(self._slots) if target is None else [target] if target in self._slots else []
        )
        # an unloaded profile has nothing to stop (with one server, its stop would stop whatever
        # replaced it); stopping every server with several also stops those not seen yet
        if not profiles and (target is not None or exclusive):
            self._finish(op, target)
            return
        self._evicting.update(profiles)
        await self._drain(profiles)
        if not self._wanted(op, target):
            return  # everyone who wanted it left while we drained
        started = self._replace(profiles) if exclusive else self._clock()
        ok = False
        try:
            await self._stop(target, functools.partial(self._broadcast, op, target))
        except Exception as exc:
            reason = _reason(exc)
            if not isinstance(exc, SwitchFailed):
                log.exception("stopping %s failed", target or "the servers")
            what = "the server" if target is None or exclusive else target
            err = RouterError(
                503,
                f"Stopping {what} failed: {reason}",
                type=SERVER,
                code="stop_failed",
                retry_after=self._retry_after(),
            )
            log.warning("%s", err.message)
            self._broadcast(op, target, Progress("error", err.message, target))
            self._finish(op, target, err)
        else:
            ok = True
            if profiles:
                log.info("unloaded %s", ", ".join(profiles))
            for p in profiles:
                self._drop(p)
            self.generation += 1
            self._finish(op, target)
        finally:
            if exclusive:  # with one server a stop is a switch to nothing, timed like one
                self._timed(None, ok, started)

    def _refuse_stopped(self, target: str) -> bool:
        """Answer 503 to the waiters for `target` that came before a stop of it from a shell;
        True when none is left to load it for. Sets `loading_since` for the effects."""
        waiters = [w for w in self._waiters if w.op == "load" and w.target == target]
        if not waiters:
            return True
        since = min(w.wall for w in waiters)
        mark = self.stopped_after(target, since) if self.stopped_after is not None else None
        if mark is not None:
            self._fail_before(target, *mark)
            waiters = [w for w in self._waiters if w.op == "load" and w.target == target]
            if not waiters:
                return True
            since = min(w.wall for w in waiters)
        self.loading_since = since
        return False

    def _fail_before(self, target: str, at: float, why: str) -> None:
        """The waiters for `target` that arrived before the stop at `at` get its 503."""
        err = RouterError(
            503,
            f"{why}. Send the request again to load {target}.",
            type=SERVER,
            code="model_stopped",
            retry_after=1,
        )
        for waiter in [
            w for w in self._waiters if w.op == "load" and w.target == target and w.wall <= at
        ]:
            self._waiters.remove(waiter)
            if waiter.future.done():
                continue
            self._notify(waiter, Progress("error", err.message, target))
            waiter.future.set_exception(err)
        log.info("%s: requests that waited for %s before it were answered 503", why, target)

    def _load_failed(self, target: str, exc: Exception) -> None:
        if isinstance(exc, SwitchFailed) and exc.stopped_at is not None:
            self._fail_before(target, exc.stopped_at, exc.message)
            return  # those that came after the stop still wait: the next pass loads for them
        if not isinstance(exc, SwitchFailed):
            log.exception("loading %s failed", target)
        else:
            log.warning("loading %s failed: %s", target, exc.message)
        details = exc.details if isinstance(exc, SwitchFailed) else {}
        err = RouterError(
            503,
            f"Loading {target} failed: {_reason(exc)}",
            type=SERVER,
            code="model_load_failed",
            retry_after=self._retry_after(),
            extra=dict(details),
        )
        self._broadcast("load", target, Progress("error", err.message, target))
        self._finish("load", target, err)

    async def _do_load(self, target: str, victims: list[str]) -> None:
        exclusive = self.policy.exclusive
        self.loading = target
        started = self._clock()
        # several servers: the whole step is timed; one: the switch, from the replacement on
        timed = not exclusive
        ok = False
        try:
            if self._refuse_stopped(target):
                return  # stopped from a shell after every request that waited for it
            self._evicting.update(victims)
            await self._drain(victims)
            if not self._wanted("load", target):
                return  # everyone who wanted it left while we drained
            if exclusive:
                started, timed = self._replace(victims), True
            waiting = sum(1 for w in self._waiters if w.op == "load" and w.target == target)
            log.info(
                "loading %s for %d waiting request(s)%s",
                target,
                waiting,
                f"; unloading {', '.join(victims)}" if victims else "",
            )
            evicted = await self._load(target, functools.partial(self._broadcast, "load", target))
        except Exception as exc:
            self._load_failed(target, exc)
        else:
            ok = True
            log.info("loaded %s in %.1f s", target, self._clock() - started)
            self.loads += 1
            for p in evicted:
                self._drop(p)
            self._add(target)
            self.generation += 1
            # every waiter for it, including those that came during the load, goes through now,
            # whatever is at the head of the queue
            self._admit(lambda p: p == target)
        finally:
            self.loading_since = None
            if timed:
                self._timed(target, ok, started)


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


async def _wait_event(event: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)


def _reason(exc: Exception) -> str:
    return exc.message if isinstance(exc, SwitchFailed) else f"{type(exc).__name__}: {exc}"


def _shutting_down() -> RouterError:
    return RouterError(
        503, "The router is shutting down.", type=SERVER, code="shutting_down", retry_after=5
    )


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
