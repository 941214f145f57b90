"""The scheduler for several servers at once (`server.ports` set): loads placed by memory.

Requests for a loaded profile proceed at once, whatever else loads. A request for a profile that
is not loaded waits in that profile's bounded queue (full: 429) with a deadline (504) while the
profile is loaded with the placer, one load at a time. The placer names the servers to unload
first; new requests for them queue from that moment, and their requests in flight may finish
(bounded by `inflight_timeout`) before they stop. A failed or refused load fails only that
profile's waiters, with the reason. `ttl` unloads each profile on its own.

Same interface as `Scheduler` (llmctl.router.queue), which keeps the one-server behaviour.
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

from llmctl.router import queue
from llmctl.router.errors import RATE_LIMIT, SERVER, TIMEOUT, RouterError
from llmctl.router.queue import Progress, ProgressFn, SwitchFailed

log = logging.getLogger("llmctl.router")

# Victims the placer would unload to load `target` (raises SwitchFailed when it is refused).
PlanFn = Callable[[str], Awaitable[list[str]]]
# Load `target` (the placer decides again under the lock); the profiles it unloaded.
LoadFn = Callable[[str, ProgressFn], Awaitable[list[str]]]
# Stop these profiles (None: every server).
StopFn = Callable[[str | None, ProgressFn], Awaitable[None]]


class Lease(queue.Lease):
    """Permission to use a loaded profile; release it when the response is finished."""

    __slots__ = ("_owner",)

    def __init__(self, scheduler: PlacementScheduler, profile: str, epoch: int) -> None:
        self._owner = scheduler
        self.profile = profile
        self._epoch = epoch
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            assert self.profile is not None
            self._owner._release(self.profile, self._epoch)


@dataclass
class _Slot:
    epoch: int
    last_used: float
    inflight: int = 0
    drained: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(eq=False)
class _Waiter:
    op: str  # "load", "stop" (every server), "unload" (one)
    target: str | None
    future: asyncio.Future[Lease | None]
    on_progress: ProgressFn | None
    since: float


class PlacementScheduler:
    def __init__(
        self,
        plan: PlanFn,
        load: LoadFn,
        stop: StopFn,
        *,
        max_size: int = 10,
        timeout: float = 120.0,
        inflight_timeout: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._plan = plan
        self._load = load
        self._stop = stop
        self.max_size = max_size
        self.timeout = timeout
        self.inflight_timeout = inflight_timeout
        self.loading: str | None = None
        self.generation = 0
        self.last_switch_s: float | None = None
        self.on_switch_done: Callable[[str | None, bool, float], None] | None = None
        self.loads = 0
        self._clock = clock
        self._slots: dict[str, _Slot] = {}
        self._order: list[str] = []  # loaded profiles, oldest load first
        self._evicting: set[str] = set()
        self._epoch = 0
        self._busy = False
        self._waiters: deque[_Waiter] = deque()
        self._driver: asyncio.Task[None] | None = None
        self._closed = False

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
        return len(self._waiters)

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
        self._refuse_if_full(profile)

    async def acquire(
        self, profile: str, *, on_progress: ProgressFn | None = None, timeout: float | None = None
    ) -> Lease:
        if self._fast_path(profile):
            slot = self._slots[profile]
            slot.inflight += 1
            return Lease(self, profile, slot.epoch)
        lease = await self._wait_for("load", profile, on_progress, timeout)
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
        """The one-server form of observe_loaded (kept for callers of Scheduler)."""
        if generation == self.generation:
            self.observe_loaded([running] if running else [])

    def idle_seconds(self) -> float | None:
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
        active = self.active
        if active is None:
            return False
        return bool(await self.unload_idle({active: ttl}))

    def close(self) -> None:
        self._closed = True
        err = RouterError(
            503, "The router is shutting down.", type=SERVER, code="shutting_down", retry_after=5
        )
        while self._waiters:
            w = self._waiters.popleft()
            if not w.future.done():
                w.future.set_exception(err)

    async def aclose(self) -> None:
        self.close()
        if self._driver is not None and not self._driver.done():
            self._driver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._driver

    # --- internals --------------------------------------------------------------------

    def _fast_path(self, profile: str | None) -> bool:
        return (
            not self._closed
            and profile is not None
            and profile in self._slots
            and profile not in self._evicting
        )

    def _add(self, profile: str) -> None:
        self._epoch += 1
        slot = _Slot(self._epoch, self._clock())
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

    def _refuse_if_full(self, profile: str | None) -> None:
        queued = sum(1 for w in self._waiters if w.target == profile)
        if queued >= self.max_size:
            raise RouterError(
                429,
                f"The queue for {profile} is full ({self.max_size} requests waiting for it to "
                "load); retry later.",
                type=RATE_LIMIT,
                code="queue_full",
                retry_after=self._retry_after(),
            )

    async def _wait_for(
        self, op: str, target: str | None, on_progress: ProgressFn | None, timeout: float | None
    ) -> Lease | None:
        if self._closed:
            raise RouterError(
                503,
                "The router is shutting down.",
                type=SERVER,
                code="shutting_down",
                retry_after=5,
            )
        self._refuse_if_full(target)
        loop = asyncio.get_running_loop()
        waiter = _Waiter(op, target, loop.create_future(), on_progress, self._clock())
        self._waiters.append(waiter)
        if op == "load":
            msg = (
                f"joining the load of {target}"
                if self.loading == target
                else f"waiting for {target} to load"
            )
            self._notify(waiter, Progress("queued", msg, target))
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

    def _broadcast(self, target: str | None, progress: Progress) -> None:
        for waiter in list(self._waiters):
            if waiter.target == target and waiter.op == "load":
                self._notify(waiter, progress)

    def _kick(self) -> None:
        if self._driver is None or self._driver.done():
            self._driver = asyncio.get_running_loop().create_task(self._drive())

    def _release(self, profile: str, epoch: int) -> None:
        slot = self._slots.get(profile)
        if slot is None or slot.epoch != epoch:
            return
        slot.inflight = max(0, slot.inflight - 1)
        slot.last_used = self._clock()
        if slot.inflight == 0:
            slot.drained.set()

    def _admit_loaded(self) -> None:
        """Let through every load waiter whose profile is loaded now."""
        for waiter in list(self._waiters):
            if waiter.op != "load" or not self._fast_path(waiter.target):
                continue
            self._waiters.remove(waiter)
            if waiter.future.done():
                continue
            assert waiter.target is not None
            slot = self._slots[waiter.target]
            slot.inflight += 1
            waiter.future.set_result(Lease(self, waiter.target, slot.epoch))

    def _finish(self, op: str, target: str | None, error: RouterError | None = None) -> None:
        for waiter in [w for w in self._waiters if w.op == op and w.target == target]:
            self._waiters.remove(waiter)
            if waiter.future.done():
                continue
            if error is not None:
                waiter.future.set_exception(error)
            else:
                waiter.future.set_result(None)

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

    async def _drive(self) -> None:
        while not self._closed:
            self._admit_loaded()
            if not self._waiters:
                return
            head = self._waiters[0]
            self._busy = True
            try:
                if head.op == "load":
                    assert head.target is not None
                    await self._do_load(head.target)
                elif head.op == "unload":
                    assert head.target is not None
                    await self._do_stop("unload", head.target, [head.target])
                else:
                    await self._do_stop("stop", None, list(self._slots))
            finally:
                self._busy = False
                self._evicting.clear()
                self.loading = None

    async def _do_stop(self, op: str, target: str | None, profiles: list[str]) -> None:
        self._evicting.update(profiles)
        await self._drain(profiles)
        try:
            await self._stop(target, functools.partial(self._broadcast, target))
        except Exception as exc:
            reason = (
                exc.message if isinstance(exc, SwitchFailed) else f"{type(exc).__name__}: {exc}"
            )
            if not isinstance(exc, SwitchFailed):
                log.exception("stopping %s failed", target or "the servers")
            self._finish(
                op,
                target,
                RouterError(503, f"Stopping failed: {reason}", type=SERVER, code="stop_failed"),
            )
            return
        for p in profiles:
            self._drop(p)
        self.generation += 1
        self._finish(op, target)

    async def _do_load(self, target: str) -> None:
        self.loading = target
        started = self._clock()
        ok = False
        try:
            victims = await self._plan(target)
            self._evicting.update(victims)
            await self._drain(victims)
            if not any(w.target == target and w.op == "load" for w in self._waiters):
                return  # everyone who wanted it left while we drained
            evicted = await self._load(target, functools.partial(self._broadcast, target))
        except Exception as exc:
            reason = (
                exc.message if isinstance(exc, SwitchFailed) else f"{type(exc).__name__}: {exc}"
            )
            details = exc.details if isinstance(exc, SwitchFailed) else {}
            if not isinstance(exc, SwitchFailed):
                log.exception("loading %s failed", target)
            err = RouterError(
                503,
                f"Loading {target} failed: {reason}",
                type=SERVER,
                code="model_load_failed",
                retry_after=self._retry_after(),
                extra=dict(details),
            )
            self._broadcast(target, Progress("error", err.message, target))
            self._finish("load", target, err)
        else:
            ok = True
            self.loads += 1
            for p in evicted:
                self._drop(p)
            self._add(target)
            self.generation += 1
        finally:
            if self.loading == target:
                self.last_switch_s = self._clock() - started
                if self.on_switch_done is not None:
                    self.on_switch_done(target, ok, self.last_switch_s)
