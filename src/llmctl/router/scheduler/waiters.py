"""The requests waiting for a load or a stop: one queue in arrival order, and how a waiter is
admitted to it (429 when full or over `max_concurrency`), waits (504 at its deadline), leaves
(a client gone), and is answered (a lease, a stop done, or an error; 503 when a stop from a
shell came after it arrived).

`Waiters` is bookkeeping only: which waiter goes next is router/order.py's decision, and the
load or stop itself is the scheduler's (router/scheduler/core.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

from llmctl.router import order
from llmctl.router.errors import RATE_LIMIT, SERVER, TIMEOUT, RouterError
from llmctl.router.scheduler.effects import Progress, ProgressFn, StoppedFn
from llmctl.router.scheduler.leases import Lease

log = logging.getLogger("llmctl.router")

Op = Literal["load", "stop", "unload"]  # stop: every server; unload: one


@dataclass(eq=False)
class Waiter:
    op: Op
    target: str | None
    future: asyncio.Future[Lease | None]
    on_progress: ProgressFn | None
    since: float
    passes_at: int = 0  # the scheduler's pass count when it arrived
    wall: float = 0.0  # when its request arrived (wall clock), against stops from a shell
    stage: str | None = None  # the kind of the last Progress it was sent


class Waiters:
    """The queue. `on_change` runs whenever a waiter arrives or leaves (it wakes the driver)."""

    def __init__(self, on_change: Callable[[], None]) -> None:
        self._on_change = on_change
        self.queue: deque[Waiter] = deque()  # read it; change it through the methods

    def __len__(self) -> int:
        return len(self.queue)

    def __iter__(self) -> Iterator[Waiter]:
        return iter(self.queue)

    @property
    def head(self) -> Waiter | None:
        return self.queue[0] if self.queue else None

    def of(self, op: Op, target: str | None) -> list[Waiter]:
        return [w for w in self.queue if w.op == op and w.target == target]

    def wanted(self, op: Op, target: str | None) -> bool:
        return any(w.op == op and w.target == target for w in self.queue)

    def depth_of(self) -> dict[str, int]:
        """Requests waiting, per profile (a stop counts under "")."""
        out: dict[str, int] = {}
        for w in self.queue:
            out[w.target or ""] = out.get(w.target or "", 0) + 1
        return out

    # --- admission ----------------------------------------------------------------------

    def refuse_over_limit(self, profile: str, limit: int, inflight: int) -> None:
        """429 when `profile` has `limit` requests in flight and waiting (max_concurrency)."""
        waiting = sum(1 for w in self.queue if w.target == profile and w.op == "load")
        if inflight + waiting >= limit:
            raise RouterError(
                429,
                f"{profile} already has {limit} requests in flight or waiting (its "
                "max_concurrency); retry later.",
                type=RATE_LIMIT,
                code="concurrency_limit",
                retry_after=1.0,
            )

    def refuse_if_full(
        self, profile: str | None, max_size: int, shared: bool, retry_after: float
    ) -> None:
        """429 when the queue (`shared`) or `profile`'s part of it holds `max_size` waiters."""
        if shared:
            if len(self.queue) >= max_size:
                raise RouterError(
                    429,
                    f"The switch queue is full ({max_size} requests waiting for a model to "
                    "load); retry later.",
                    type=RATE_LIMIT,
                    code="queue_full",
                    retry_after=retry_after,
                )
            return
        if sum(1 for w in self.queue if w.target == profile) >= max_size:
            raise RouterError(
                429,
                f"The queue for {profile} is full ({max_size} requests waiting for it to "
                "load); retry later.",
                type=RATE_LIMIT,
                code="queue_full",
                retry_after=retry_after,
            )

    def join(self, waiter: Waiter) -> None:
        self.queue.append(waiter)
        self._on_change()

    async def wait(
        self, waiter: Waiter, limit: float, retry_after: Callable[[], float]
    ) -> Lease | None:
        """What `waiter` is answered; a 504 after `limit` seconds (it leaves the queue)."""
        try:
            await asyncio.wait({waiter.future}, timeout=limit)
        except asyncio.CancelledError:
            self.abandon(waiter)
            raise
        if not waiter.future.done():
            self.abandon(waiter)
            what = (
                f"for {waiter.target} to load" if waiter.op == "load" else "for the server to stop"
            )
            raise RouterError(
                504,
                f"Timed out after {limit:.0f} s waiting {what} (serve.queue.timeout).",
                type=TIMEOUT,
                code="queue_timeout",
                retry_after=retry_after(),
            )
        return waiter.future.result()

    def abandon(self, waiter: Waiter) -> None:
        """`waiter` leaves (its client gone or its deadline passed); a lease it got is released."""
        self._on_change()
        with contextlib.suppress(ValueError):
            self.queue.remove(waiter)
        fut = waiter.future
        if not fut.done():
            fut.cancel()
        elif not fut.cancelled() and fut.exception() is None:
            lease = fut.result()
            if lease is not None:
                lease.release()

    # --- progress and answers -----------------------------------------------------------

    @staticmethod
    def notify(waiter: Waiter, progress: Progress) -> None:
        waiter.stage = progress.kind
        if waiter.on_progress is None:
            return
        try:
            waiter.on_progress(progress)
        except Exception:  # a waiter's callback must not break the load
            log.exception("progress callback failed")

    def broadcast(self, op: Op, target: str | None, progress: Progress) -> None:
        for waiter in self.of(op, target):
            self.notify(waiter, progress)

    def take_loads(self, ready: Callable[[str | None], bool]) -> list[Waiter]:
        """Remove, in queue order, the load waiters whose profile is `ready`; those still
        waiting for an answer."""
        taken = [w for w in self.queue if w.op == "load" and ready(w.target)]
        for waiter in taken:
            self.queue.remove(waiter)
        return [w for w in taken if not w.future.done()]

    def finish(self, op: Op, target: str | None, error: RouterError | None = None) -> None:
        """Answer every waiter for this op: done (None), or `error`."""
        for waiter in self.of(op, target):
            self.queue.remove(waiter)
            if waiter.future.done():
                continue
            if error is not None:
                waiter.future.set_exception(error)
            else:
                waiter.future.set_result(None)

    def refuse_stopped(self, target: str, stopped_after: StoppedFn | None) -> float | None:
        """Answer 503 to the load waiters for `target` that came before the newest stop of it
        from a shell; the wall time the oldest waiter left arrived, None when none is left."""
        waiters = self.of("load", target)
        if not waiters:
            return None
        since = min(w.wall for w in waiters)
        mark = stopped_after(target, since) if stopped_after is not None else None
        if mark is not None:
            self.fail_stopped(target, *mark)
            waiters = self.of("load", target)
            if not waiters:
                return None
            since = min(w.wall for w in waiters)
        return since

    def fail_stopped(self, target: str, at: float, why: str) -> None:
        """The load waiters for `target` that arrived before the stop at wall time `at` get its
        503 (`model_stopped`); those after it still wait."""
        err = RouterError(
            503,
            f"{why}. Send the request again to load {target}.",
            type=SERVER,
            code="model_stopped",
            retry_after=1,
        )
        for waiter in [w for w in self.of("load", target) if w.wall <= at]:
            self.queue.remove(waiter)
            if waiter.future.done():
                continue
            self.notify(waiter, Progress("error", err.message, target))
            waiter.future.set_exception(err)
        log.info("%s: requests that waited for %s before it were answered 503", why, target)

    def close(self, err: RouterError) -> None:
        """Every waiter gets `err`."""
        while self.queue:
            w = self.queue.popleft()
            if not w.future.done():
                w.future.set_exception(err)

    # --- what the order reads -----------------------------------------------------------

    def waiting(self, passes: int) -> list[order.Waiting]:
        """The load waiters ahead of the first stop, grouped by profile, for the order;
        `passes`: the scheduler's pass count now."""
        oldest: dict[str, Waiter] = {}
        for w in self.queue:
            if w.op != "load":
                break
            assert w.target is not None
            if w.target not in oldest:
                oldest[w.target] = w
        return [order.Waiting(p, w.since, passes - w.passes_at) for p, w in oldest.items()]


def queued_message(op: Op, target: str | None, position: int, joining: bool, fifo: bool) -> str:
    """What a waiter is told on arrival: `position` in the queue, `joining` a load under way,
    `fifo` (one queue whose position says how many switches come first)."""
    if op != "load":
        return f"waiting to stop the server (position {position})"
    if joining:
        return f"joining the load of {target}"
    if fifo:
        return f"waiting for {target} (position {position} in the queue)"
    return f"waiting for {target} to load"


def shutting_down() -> RouterError:
    return RouterError(
        503, "The router is shutting down.", type=SERVER, code="shutting_down", retry_after=5
    )
