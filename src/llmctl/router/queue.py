"""The switch scheduler: which profile the managed server runs, and who waits for which.

Requests for the running profile proceed at once, concurrently. A request for another profile
waits in a bounded FIFO (full: 429) with a deadline (504). The head of the queue decides the next
profile; the switch starts once the running profile's in-flight requests have finished (bounded
by `inflight_timeout`), and every waiter for that profile, including those that arrive during
the load, is let through together when it is ready. A failed load fails each of them with the
reason. While a switch is pending, new requests for the old profile queue behind it, so a busy
profile cannot starve the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from llmctl.router.errors import RATE_LIMIT, SERVER, TIMEOUT, RouterError

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


class SwitchFailed(Exception):
    """The switch could not be done; `message` says why, for every waiter."""

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}


# Switch the managed server to `target` (None: stop it); raise SwitchFailed on failure.
SwitchFn = Callable[[str | None, ProgressFn], Awaitable[None]]


class Lease:
    """Permission to use the running profile; release it when the response is finished."""

    __slots__ = ("_epoch", "_released", "_scheduler", "profile")

    def __init__(self, scheduler: Scheduler, profile: str | None, epoch: int) -> None:
        self._scheduler = scheduler
        self.profile = profile
        self._epoch = epoch
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._scheduler._release(self._epoch, counted=self.profile is not None)


@dataclass(eq=False)
class _Waiter:
    target: str | None
    future: asyncio.Future[Lease]
    on_progress: ProgressFn | None
    since: float
    started: float = field(default=0.0)


class Scheduler:
    def __init__(
        self,
        switch: SwitchFn,
        *,
        max_size: int = 10,
        timeout: float = 120.0,
        inflight_timeout: float = 60.0,
        active: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._switch = switch
        self.max_size = max_size
        self.timeout = timeout
        self.inflight_timeout = inflight_timeout
        self.active = active
        self.loading: str | None = None
        self.inflight = 0
        self.generation = 0
        self.last_used = clock()
        self.last_switch_s: float | None = None
        self.on_switch_done: Callable[[str | None, bool, float], None] | None = None
        self._clock = clock
        self._busy = False
        self._epoch = 0
        self._waiters: deque[_Waiter] = deque()
        self._drained = asyncio.Event()
        self._driver: asyncio.Task[None] | None = None
        self._closed = False

    # --- what callers see -------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Requests waiting (not yet let through)."""
        return len(self._waiters)

    @property
    def switching(self) -> bool:
        return self._busy

    @property
    def loaded(self) -> list[str]:
        return [self.active] if self.active else []

    def is_loaded(self, profile: str | None) -> bool:
        return profile is not None and profile == self.active

    def would_wait(self, profile: str | None) -> bool:
        return not self._fast_path(profile)

    def check_room(self, profile: str | None = None) -> None:
        """Raise the 429 a request that must wait would get now (before a stream is started)."""
        self._refuse_if_full()

    async def acquire(
        self, profile: str, *, on_progress: ProgressFn | None = None, timeout: float | None = None
    ) -> Lease:
        """A lease on `profile` once the managed server runs it; raises RouterError (429/503/504)."""
        if self._fast_path(profile):
            self.inflight += 1
            return Lease(self, profile, self._epoch)
        return await self._wait_for(profile, on_progress, timeout)

    async def stop(
        self, *, on_progress: ProgressFn | None = None, timeout: float | None = None
    ) -> None:
        """Stop the managed server, in turn with the switches queued before."""
        lease = await self._wait_for(None, on_progress, timeout)
        lease.release()

    def observe(self, running: str | None, generation: int) -> None:
        """What the state file says runs, read when `generation` was current (a shell may switch too)."""
        if generation != self.generation or self._busy or self._waiters or running == self.active:
            return
        log.info("managed server changed outside the router: %s -> %s", self.active, running)
        self.active = running
        self.generation += 1
        self._new_epoch()

    def idle_seconds(self) -> float | None:
        """How long the running profile has had nothing to do; None when it is busy or absent."""
        if self.active is None or self._busy or self._waiters or self.inflight:
            return None
        return self._clock() - self.last_used

    async def unload_if_idle(self, ttl: float | None) -> bool:
        idle = self.idle_seconds()
        if ttl is None or ttl <= 0 or idle is None or idle < ttl:
            return False
        log.info("unloading %s after %.0f s idle (ttl %.0f s)", self.active, idle, ttl)
        await self.stop()
        return True

    def close(self) -> None:
        """Refuse new requests and fail the waiting ones (a switch in progress goes on)."""
        self._closed = True
        err = RouterError(
            503, "The router is shutting down.", type=SERVER, code="shutting_down", retry_after=5
        )
        while self._waiters:
            w = self._waiters.popleft()
            if not w.future.done():
                w.future.set_exception(err)

    async def aclose(self) -> None:
        """close(), and end a switch in progress (the supervisor cancels the load)."""
        self.close()
        if self._driver is not None and not self._driver.done():
            self._driver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._driver

    # --- internals --------------------------------------------------------------------

    def _fast_path(self, profile: str | None) -> bool:
        return (
            not self._closed
            and not self._busy
            and not self._waiters
            and profile is not None
            and profile == self.active
        )

    def _retry_after(self) -> float:
        return max(1.0, self.last_switch_s or 1.0)

    async def _wait_for(
        self, target: str | None, on_progress: ProgressFn | None, timeout: float | None
    ) -> Lease:
        if self._closed:
            raise RouterError(
                503,
                "The router is shutting down.",
                type=SERVER,
                code="shutting_down",
                retry_after=5,
            )
        self._refuse_if_full()
        loop = asyncio.get_running_loop()
        waiter = _Waiter(target, loop.create_future(), on_progress, self._clock())
        self._waiters.append(waiter)
        position = len(self._waiters)
        if self._busy and self.loading == target:
            msg = f"joining the load of {target}"
        elif target is None:
            msg = f"waiting to stop the server (position {position})"
        else:
            msg = f"waiting for {target} (position {position} in the queue)"
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
            what = f"for {target} to load" if target else "for the server to stop"
            raise RouterError(
                504,
                f"Timed out after {limit:.0f} s waiting {what} (serve.queue.timeout).",
                type=TIMEOUT,
                code="queue_timeout",
                retry_after=self._retry_after(),
            )
        return waiter.future.result()

    def _refuse_if_full(self) -> None:
        if len(self._waiters) >= self.max_size:
            raise RouterError(
                429,
                f"The switch queue is full ({self.max_size} requests waiting for a model to load); "
                "retry later.",
                type=RATE_LIMIT,
                code="queue_full",
                retry_after=self._retry_after(),
            )

    def _abandon(self, waiter: _Waiter) -> None:
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)
        fut = waiter.future
        if not fut.done():
            fut.cancel()
        elif not fut.cancelled() and fut.exception() is None:
            fut.result().release()

    def _notify(self, waiter: _Waiter, progress: Progress) -> None:
        if waiter.on_progress is None:
            return
        try:
            waiter.on_progress(progress)
        except Exception:  # a waiter's callback must not break the switch
            log.exception("progress callback failed")

    def _broadcast(self, target: str | None, progress: Progress) -> None:
        for waiter in list(self._waiters):
            if waiter.target == target:
                self._notify(waiter, progress)

    def _kick(self) -> None:
        if self._driver is None or self._driver.done():
            self._driver = asyncio.get_running_loop().create_task(self._drive())

    def _release(self, epoch: int, *, counted: bool) -> None:
        if not counted or epoch != self._epoch:
            return
        self.inflight -= 1
        self.last_used = self._clock()
        if self.inflight <= 0:
            self.inflight = 0
            self._drained.set()

    def _new_epoch(self) -> None:
        self._epoch += 1
        self.inflight = 0
        self._drained.set()

    def _admit(self, target: str | None) -> None:
        for waiter in [w for w in self._waiters if w.target == target]:
            self._waiters.remove(waiter)
            if waiter.future.done():
                continue
            if target is not None:
                self.inflight += 1
            waiter.future.set_result(Lease(self, target, self._epoch))
        self.last_used = self._clock()

    def _fail(self, target: str | None, err: RouterError) -> None:
        for waiter in [w for w in self._waiters if w.target == target]:
            self._waiters.remove(waiter)
            if not waiter.future.done():
                waiter.future.set_exception(err)

    async def _drain(self) -> None:
        if self.inflight <= 0:
            return
        self._drained.clear()
        try:
            await asyncio.wait_for(self._drained.wait(), self.inflight_timeout)
        except TimeoutError:
            log.warning(
                "%d request(s) for %s still in flight after %g s (serve.inflight_timeout); "
                "switching anyway",
                self.inflight,
                self.active,
                self.inflight_timeout,
            )

    async def _drive(self) -> None:
        while self._waiters and not self._closed:
            target = self._waiters[0].target
            if target == self.active:
                self._admit(target)
                continue
            self._busy = True
            self.loading = target
            try:
                await self._drain()
                if not any(w.target == target for w in self._waiters):
                    continue  # everyone who wanted it left while we drained
                self._new_epoch()
                self.generation += 1
                self.active = None
                started = self._clock()
                ok = False
                try:
                    await self._switch(target, functools.partial(self._broadcast, target))
                except Exception as exc:
                    reason = (
                        exc.message
                        if isinstance(exc, SwitchFailed)
                        else f"{type(exc).__name__}: {exc}"
                    )
                    details = exc.details if isinstance(exc, SwitchFailed) else {}
                    if not isinstance(exc, SwitchFailed):
                        log.exception("switch to %s failed", target)
                    err = RouterError(
                        503,
                        f"Loading {target} failed: {reason}"
                        if target
                        else f"Stopping the server failed: {reason}",
                        type=SERVER,
                        code="model_load_failed" if target else "stop_failed",
                        retry_after=self._retry_after(),
                        extra=dict(details),
                    )
                    self._broadcast(target, Progress("error", err.message, target))
                    self._fail(target, err)
                else:
                    ok = True
                    self.active = target
                    self.generation += 1
                    self._admit(target)
                finally:
                    self.last_switch_s = self._clock() - started
                    if self.on_switch_done is not None:
                        self.on_switch_done(target, ok, self.last_switch_s)
            finally:
                self._busy = False
                self.loading = None
