"""The `Scheduler`: who waits for which profile, and the loop that loads and stops for them.

It holds the loaded profiles and their leases (leases.py) and the queue (waiters.py), asks
router/order.py which load goes next and when its swap may start, and carries the load or stop
out through the backend's functions (effects.py). `Policy` says how it shares the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from llmctl.router import order
from llmctl.router.errors import SERVER, RouterError, SwitchFailed
from llmctl.router.scheduler.effects import (
    LoadFn,
    PlanFn,
    Progress,
    ProgressFn,
    StopFn,
    StoppedFn,
    WaitFn,
    wait_event,
)
from llmctl.router.scheduler.leases import Lease, Loaded, Waited
from llmctl.router.scheduler.waiters import Op, Waiter, Waiters, queued_message, shutting_down

log = logging.getLogger("llmctl.router")


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
        self._wait = wait or wait_event
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
        self._loaded = Loaded(clock, self._wake.set)
        self._waiters = Waiters(self._wake.set)
        self._busy = False
        self._driver: asyncio.Task[None] | None = None
        self._closed = False
        for profile in loaded:
            self._loaded.add(profile)

    @property
    def _clock(self) -> Callable[[], float]:
        """One clock for the scheduler and its leases (a test may set its own)."""
        return self._loaded.clock

    @_clock.setter
    def _clock(self, clock: Callable[[], float]) -> None:
        self._loaded.clock = clock

    # --- what callers see -------------------------------------------------------------

    @property
    def active(self) -> str | None:
        """The most recently loaded profile (the one-server view)."""
        return self._loaded.newest

    @property
    def loaded(self) -> list[str]:
        return self._loaded.names

    def is_loaded(self, profile: str | None) -> bool:
        return profile is not None and profile in self._loaded

    @property
    def inflight(self) -> int:
        return self._loaded.inflight

    def inflight_of(self, profile: str) -> int:
        return self._loaded.inflight_of(profile)

    @property
    def depth(self) -> int:
        """Requests waiting (not yet let through)."""
        return len(self._waiters)

    def depth_of(self) -> dict[str, int]:
        """Requests waiting, per profile (a stop counts under "")."""
        return self._waiters.depth_of()

    @property
    def deferring(self) -> bool:
        """A swap waits while the loaded profiles serve their requests."""
        return self._deferring

    @property
    def switching(self) -> bool:
        return self._busy

    def activity(self) -> dict[str, tuple[float, int]]:
        """profile -> (last used as wall-clock time, requests in flight), for the placer."""
        return self._loaded.activity()

    def load_activity(self) -> dict[str, tuple[float, int]]:
        """activity() for the load under way: every server not drained for it counts as busy, so
        the placer, deciding again under the supervisor's lock, takes the victims this scheduler
        drained rather than a server that may be answering (a request cut off there is lost)."""
        return self._loaded.load_activity()

    async def drain_more(self, profiles: Iterable[str]) -> None:
        """For a load under way that must unload more (placement.after_oom's retry): no new
        leases on `profiles`, and their requests in flight finish first."""
        profiles = list(profiles)
        self._loaded.evicting.update(profiles)
        await self._loaded.drain(profiles, self.inflight_timeout)

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
            if self._deferring:
                self._passes += 1
                self.loads_avoided += 1
            return self._loaded.lease(profile)
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
        now, known = set(running), set(self._loaded.names)
        if now == known:
            return
        log.info("servers changed outside the router: %s -> %s", sorted(known), sorted(now))
        for gone in known - now:
            self._loaded.drop(gone)
        for new in sorted(now - known):
            self._loaded.add(new)
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
        idle = self._loaded.idle()
        return max(idle.values()) if idle else None

    async def unload_idle(self, ttls: Mapping[str, float | None]) -> list[str]:
        """Unload each profile idle for longer than its own ttl."""
        done = []
        for profile in self._loaded.names:
            ttl = ttls.get(profile)
            idle = self._loaded.idle().get(profile)  # anew each time: an unload takes a while
            if not ttl or idle is None or idle < ttl:
                continue
            if any(w.target == profile for w in self._waiters):
                continue
            log.info("unloading %s after %.0f s idle (ttl %.0f s)", profile, idle, ttl)
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
        self._waiters.close(shutting_down())

    async def aclose(self) -> None:
        """close(), and end a load in progress (the supervisor cancels it)."""
        self.close()
        if self._driver is not None and not self._driver.done():
            self._driver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._driver

    # --- admission ----------------------------------------------------------------------

    def _ready(self, profile: str | None) -> bool:
        """Loaded and staying: its requests may go through."""
        return not self._closed and self._loaded.staying(profile)

    def _fast_path(self, profile: str | None) -> bool:
        # _ready(), spelled out: every request for a loaded profile passes here. Exclusive:
        # anything waiting will replace what runs, or waits behind what will, unless that swap
        # is deferred while what runs serves its requests
        return (
            not self._closed
            and self._loaded.staying(profile)
            and not (self.policy.exclusive and self._waiters.queue and not self._deferring)
        )

    def _retry_after(self) -> float:
        return max(1.0, self.last_switch_s or 1.0)

    def _refuse_if_busy(self, profile: str | None) -> None:
        limit = self.max_concurrency.get(profile or "")
        if limit and profile is not None:
            self._waiters.refuse_over_limit(profile, limit, self._loaded.inflight_of(profile))

    def _refuse_if_full(self, profile: str | None) -> None:
        self._waiters.refuse_if_full(
            profile, self.max_size, self.policy.shared_queue, self._retry_after()
        )

    async def _wait_for(
        self,
        op: Op,
        target: str | None,
        on_progress: ProgressFn | None,
        timeout: float | None,
        since: float | None = None,
    ) -> Lease | None:
        if self._closed:
            raise shutting_down()
        self._refuse_if_full(target)
        loop = asyncio.get_running_loop()
        wall = time.time() if since is None else since
        waiter = Waiter(
            op, target, loop.create_future(), on_progress, self._clock(), self._passes, wall
        )
        self._waiters.join(waiter)
        joining = self.loading == target
        message = queued_message(op, target, len(self._waiters), joining, self.policy.exclusive)
        self._waiters.notify(waiter, Progress("queued", message, target))
        self._kick()
        limit = self.timeout if timeout is None else timeout
        return await self._waiters.wait(waiter, limit, self._retry_after)

    def _kick(self) -> None:
        if self._driver is None or self._driver.done():
            self._driver = asyncio.get_running_loop().create_task(self._drive())

    def _admit(self, ready: Callable[[str | None], bool], *, loaded: bool = False) -> None:
        """Let through, in queue order, every load waiter whose profile is `ready`; `loaded`:
        its load has just ended, and each lease says how long it waited."""
        for waiter in self._waiters.take_loads(ready):
            assert waiter.target is not None
            lease = self._loaded.lease(waiter.target)
            if loaded:
                lease.waited = Waited(self._clock() - waiter.since, waiter.stage or "ready")
            waiter.future.set_result(lease)

    def _admit_loaded(self) -> None:
        """Let through the load waiters whose profile is loaded now; exclusive: only once the
        head's is, since a head that needs a load replaces whatever else they wait for."""
        if self.policy.exclusive:
            head = self._waiters.head
            if head is None or head.op != "load" or not self._ready(head.target):
                return
        self._admit(self._ready)

    # --- the loop that loads and stops ---------------------------------------------------

    def _replace(self, profiles: Iterable[str]) -> float:
        """Exclusive: the one server is replaced from now on, so what it ran is gone (its
        leases no longer count, it stays gone if the switch fails); the switch is timed from
        here."""
        for p in profiles:
            self._loaded.drop(p)
        self.generation += 1
        return self._clock()

    def _timed(self, target: str | None, ok: bool, started: float) -> None:
        self.last_switch_s = self._clock() - started
        if self.on_switch_done is not None:
            self.on_switch_done(target, ok, self.last_switch_s)

    async def _choose(self) -> tuple[str, list[str]] | None:
        """The profile to load next and its victims, once the order lets its swap start; None
        when nothing waits for a load any more. Deferred, it waits for a request to finish or
        arrive, or for the clock (the bound, a grace, a residency) to change the verdict."""
        try:
            while not self._closed:
                self._wake.clear()
                self._admit_loaded()
                now = self._clock()
                waiting = self._waiters.waiting(self._passes)
                pick = order.next_profile(waiting, self.settings, self.bound, now)
                if pick is None:
                    return None
                try:
                    victims = await self._plan(pick.profile)
                except Exception as exc:  # refused: only its waiters fail
                    self._load_failed(pick.profile, exc)
                    continue
                if not self._waiters.wanted("load", pick.profile):
                    continue
                verdict = order.swap_verdict(
                    pick, self._loaded.residents(victims), self.settings, self.bound, now
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
                    self._waiters.broadcast(
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
            head = self._waiters.head
            if head is None:
                return
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
                self._loaded.evicting.clear()
                self.loading = None

    async def _do_stop(self, op: Op, target: str | None) -> None:
        exclusive = self.policy.exclusive
        known = self._loaded.names
        profiles = known if target is None else [target] if target in known else []
        # an unloaded profile has nothing to stop (with one server, its stop would stop whatever
        # replaced it); stopping every server with several also stops those not seen yet
        if not profiles and (target is not None or exclusive):
            self._waiters.finish(op, target)
            return
        self._loaded.evicting.update(profiles)
        await self._loaded.drain(profiles, self.inflight_timeout)
        if not self._waiters.wanted(op, target):
            return  # everyone who wanted it left while we drained
        started = self._replace(profiles) if exclusive else self._clock()
        ok = False
        try:
            await self._stop(target, functools.partial(self._waiters.broadcast, op, target))
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
            self._waiters.broadcast(op, target, Progress("error", err.message, target))
            self._waiters.finish(op, target, err)
        else:
            ok = True
            if profiles:
                log.info("unloaded %s", ", ".join(profiles))
            for p in profiles:
                self._loaded.drop(p)
            self.generation += 1
            self._waiters.finish(op, target)
        finally:
            if exclusive:  # with one server a stop is a switch to nothing, timed like one
                self._timed(None, ok, started)

    def _load_failed(self, target: str, exc: Exception) -> None:
        if isinstance(exc, SwitchFailed) and exc.stopped_at is not None:
            self._waiters.fail_stopped(target, exc.stopped_at, exc.message)
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
        self._waiters.broadcast("load", target, Progress("error", err.message, target))
        self._waiters.finish("load", target, err)

    async def _do_load(self, target: str, victims: list[str]) -> None:
        exclusive = self.policy.exclusive
        self.loading = target
        started = self._clock()
        # several servers: the whole step is timed; one: the switch, from the replacement on
        timed = not exclusive
        ok = False
        try:
            since = self._waiters.refuse_stopped(target, self.stopped_after)
            if since is None:
                return  # stopped from a shell after every request that waited for it
            self.loading_since = since
            self._loaded.evicting.update(victims)
            await self._loaded.drain(victims, self.inflight_timeout)
            if not self._waiters.wanted("load", target):
                return  # everyone who wanted it left while we drained
            if exclusive:
                started, timed = self._replace(victims), True
            log.info(
                "loading %s for %d waiting request(s)%s",
                target,
                len(self._waiters.of("load", target)),
                f"; unloading {', '.join(victims)}" if victims else "",
            )
            progress = functools.partial(self._waiters.broadcast, "load", target)
            evicted = await self._load(target, progress)
        except Exception as exc:
            self._load_failed(target, exc)
        else:
            ok = True
            log.info("loaded %s in %.1f s", target, self._clock() - started)
            self.loads += 1
            for p in evicted:
                self._loaded.drop(p)
            self._loaded.add(target)
            self.generation += 1
            # every waiter for it, including those that came during the load, goes through now,
            # whatever is at the head of the queue
            self._admit(lambda p: p == target, loaded=True)
        finally:
            self.loading_since = None
            if timed:
                self._timed(target, ok, started)


def _reason(exc: Exception) -> str:
    return exc.message if isinstance(exc, SwitchFailed) else f"{type(exc).__name__}: {exc}"
