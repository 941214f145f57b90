"""The scheduler cannot deadlock or livelock: random agents, profiles that fit together or not,
failed loads, cancellations and reloads, driven on a simulated clock (no sleeps, no real time).

The real Scheduler runs with fake effects: a load takes `load_s` simulated seconds, a request its
service time. The simulation settles the event loop, then moves the clock to the next timer, so a
run is deterministic. `LLMCTL_ORDER_EXAMPLES` sets the number of sequences (CI: 10000).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import os
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from llmctl.router.errors import RouterError
from llmctl.router.scheduler import ProgressFn, Scheduler, SwitchFailed, configure, switching

pytestmark = pytest.mark.fuzz

EXAMPLES = int(os.environ.get("LLMCTL_ORDER_EXAMPLES", "300"))
DEADLINE_S = 90.0  # simulated; far beyond the longest wait the settings below allow
NAMES = ["a", "b", "c"]
SETTLE = 400  # at most this many loop turns for every ready task to run before the clock moves


class Sim:
    """A simulated clock with timers."""

    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def timer(self, at: float) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, (max(at, self.now), next(self._seq), fut))
        return fut

    async def sleep(self, seconds: float) -> None:
        await self.timer(self.now + seconds)

    async def wait(self, event: asyncio.Event, seconds: float) -> None:
        timer = self.timer(self.now + seconds)
        waiting = asyncio.ensure_future(event.wait())
        await asyncio.wait({timer, waiting}, return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting

    async def run(self, tasks: list[asyncio.Task[None]], max_steps: int = 20000) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(max_steps):
            for _ in range(SETTLE):
                await asyncio.sleep(0)
                if not loop._ready:  # type: ignore[attr-defined]
                    break  # every other task waits (on the clock or an event): settled
            if all(t.done() for t in tasks):
                return
            live = [(at, seq, f) for at, seq, f in self._heap if not f.done()]
            if not live:
                raise AssertionError("deadlock: clients wait and no timer is pending")
            at, _, fut = heapq.heappop(self._heap)
            self.now = max(self.now, at)
            if not fut.done():
                fut.set_result(None)
        raise AssertionError("livelock: the simulation did not end")


@dataclass(frozen=True)
class Req:
    think: float
    profile: str
    service: float
    cancel_after: float | None


@dataclass
class Outcome:
    profile: str
    arrived: float
    result: str = "pending"  # served, refused, cancelled, deadline
    waited: float = 0.0


@dataclass
class Scenario:
    names: list[str]
    capacity: int
    exclusive: bool
    max_wait: float
    max_passes: int | None
    priority: dict[str, int]
    residency: dict[str, float]
    fail: set[str]
    load_s: float
    agents: list[list[Req]]
    reloads: list[tuple[float, float]] = field(default_factory=list)


def _manifest(s: Scenario, max_wait: float) -> Any:
    profiles = {
        p: SimpleNamespace(priority=s.priority[p], min_residency=s.residency[p]) for p in s.names
    }
    return SimpleNamespace(
        serve=SimpleNamespace(max_wait=max_wait, max_passes=s.max_passes), profiles=profiles
    )


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    n = draw(st.integers(2, 3))
    names = NAMES[:n]
    exclusive = draw(st.booleans())
    req = st.builds(
        Req,
        st.sampled_from([0.0, 0.0, 0.1, 1.0, 3.0]),
        st.sampled_from(names),
        st.sampled_from([0.1, 0.5, 2.0]),
        st.sampled_from([None, None, None, 0.2, 3.0]),
    )
    return Scenario(
        names=names,
        capacity=1 if exclusive else draw(st.sampled_from([1, 1, 2, n])),
        exclusive=exclusive,
        max_wait=draw(st.sampled_from([0.0, 1.0, 4.0])),
        max_passes=draw(st.sampled_from([None, 1, 3])),
        priority={p: draw(st.integers(0, 2)) for p in names},
        residency={p: draw(st.sampled_from([0.0, 0.0, 2.0])) for p in names},
        fail=draw(st.sets(st.sampled_from(names), max_size=1)),
        load_s=draw(st.sampled_from([0.5, 2.0])),
        agents=draw(st.lists(st.lists(req, min_size=1, max_size=8), min_size=1, max_size=3)),
        reloads=draw(
            st.lists(
                st.tuples(st.sampled_from([0.5, 3.0, 10.0]), st.sampled_from([0.0, 1.0, 4.0])),
                max_size=2,
            )
        ),
    )


def simulate(s: Scenario) -> tuple[list[Outcome], list[str], int, Scheduler]:
    """Run the scenario; the requests' outcomes, the loads attempted in order, the failed ones."""
    sim = Sim()
    loads: list[str] = []
    failed = 0
    holder: list[Scheduler] = []

    def check_wanted(target: str) -> None:
        # no_load_without_a_request: every load starts for a request that waits for it
        assert holder[0].depth_of().get(target, 0) > 0, f"{target} loaded with nobody waiting"

    async def effect(target: str) -> None:
        nonlocal failed
        check_wanted(target)
        loads.append(target)
        await sim.sleep(s.load_s)
        if target in s.fail and loads.count(target) % 2 == 1:  # every other load of it fails
            failed += 1
            raise SwitchFailed(f"{target} failed to load")

    def victims(target: str) -> list[str]:
        others = [p for p in holder[0].loaded if p != target]
        extra = len(others) + 1 - s.capacity
        return others[: max(0, extra)]

    async def plan(target: str) -> list[str]:
        return victims(target)

    async def load(target: str, progress: ProgressFn) -> list[str]:
        out = victims(target)
        await effect(target)
        return out

    async def stop(target: str | None, progress: ProgressFn) -> None:
        await sim.sleep(0.1)

    async def switch(target: str | None, progress: ProgressFn) -> None:
        if target is None:
            await sim.sleep(0.1)
        else:
            await effect(target)

    kw: dict[str, Any] = {
        "timeout": 1e9,
        "inflight_timeout": 1e9,
        "max_size": 100,
        "clock": lambda: sim.now,
        "wait": sim.wait,
    }
    sched = switching(switch, **kw) if s.exclusive else Scheduler(plan, load, stop, **kw)
    holder.append(sched)
    configure(sched, _manifest(s, s.max_wait))
    outcomes: list[Outcome] = []

    async def one(r: Req) -> None:
        out = Outcome(r.profile, sim.now)
        outcomes.append(out)
        acquiring = asyncio.ensure_future(sched.acquire(r.profile))
        limits = {sim.timer(sim.now + DEADLINE_S): "deadline"}
        if r.cancel_after is not None:
            limits[sim.timer(sim.now + r.cancel_after)] = "cancelled"
        done, _ = await asyncio.wait({acquiring, *limits}, return_when=asyncio.FIRST_COMPLETED)
        if acquiring in done:
            try:
                lease = acquiring.result()
            except RouterError:
                out.result = "refused"
                return
            out.result, out.waited = "served", sim.now - out.arrived
            await sim.sleep(r.service)
            lease.release()
            return
        acquiring.cancel()
        with contextlib.suppress(asyncio.CancelledError, RouterError):
            await acquiring
        out.result = next(v for f, v in limits.items() if f in done)

    async def agent(reqs: list[Req]) -> None:
        for r in reqs:
            await sim.sleep(r.think)
            await one(r)

    async def reload(at: float, max_wait: float) -> None:
        await sim.sleep(at)
        configure(sched, _manifest(s, max_wait))  # a SIGHUP with another bound

    async def main() -> None:
        tasks = [asyncio.ensure_future(agent(a)) for a in s.agents]
        tasks += [asyncio.ensure_future(reload(at, w)) for at, w in s.reloads]
        await sim.run(tasks)
        await sched.aclose()

    asyncio.run(main())
    return outcomes, loads, failed, sched


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # a failure is reported unshrunk
    suppress_health_check=[HealthCheck.too_slow],
)
@given(scenarios())
def test_the_scheduler_answers_every_request_and_bounds_its_loads(s: Scenario) -> None:
    outcomes, loads, failed, sched = simulate(s)
    # every_request_answered_or_refused_within_its_deadline
    late = [o for o in outcomes if o.result in ("deadline", "pending")]
    assert not late, f"requests not answered within {DEADLINE_S} s: {late}"
    assert all(o.waited < DEADLINE_S for o in outcomes)
    # a_request_for_the_eviction_victim_cannot_wedge_the_queue: nothing waits, nothing loads
    assert sched.depth == 0 and not sched.switching
    # no_profile_loaded_twice_in_a_row_without_a_request_for_it: asserted as each load starts
    # (a load starts only while a request waits for it), and here: between two loads of one
    # profile, another profile was loaded or a load failed
    for first, second in itertools.pairwise(loads):
        assert first != second or failed, loads
    # loads_bounded_by_bound_expiries_plus_profile_changes: with equal priorities never more
    # loads than the profile changes in the requests' arrival order (arrival order's own count)
    # plus the failed ones
    arrivals = [o.profile for o in sorted(outcomes, key=lambda o: o.arrived)]
    changes = sum(1 for i, p in enumerate(arrivals) if i == 0 or arrivals[i - 1] != p)
    if len(set(s.priority.values())) == 1:
        assert len(loads) <= changes + failed, (loads, arrivals)
    else:  # priorities reorder, which may cost loads: each load still serves a waiting request
        assert len(loads) <= len(arrivals) + failed, (loads, arrivals)
    if s.capacity >= len(s.names) and not s.exclusive:
        # profiles that fit together: each loads once, again only after a failure
        assert len(loads) <= len(set(loads)) + failed, loads
