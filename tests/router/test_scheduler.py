"""The router's scheduler placing several servers, with fake loads ordered by events (no processes)."""

from __future__ import annotations

import asyncio

import pytest

from llmctl.router.errors import RouterError
from llmctl.router.scheduler import ProgressFn, Scheduler, SwitchFailed


class FakePlacer:
    """Loads that finish when the test says so; `victims` is what the placer would unload."""

    def __init__(self) -> None:
        self.victims: dict[str, list[str]] = {}
        self.gates: dict[str, asyncio.Event] = {}
        self.started: dict[str, asyncio.Event] = {}
        self.fail: dict[str, str] = {}
        self.loads: list[str] = []
        self.stops: list[str | None] = []

    def gate(self, name: str) -> asyncio.Event:
        return self.gates.setdefault(name, asyncio.Event())

    def began(self, name: str) -> asyncio.Event:
        return self.started.setdefault(name, asyncio.Event())

    async def plan(self, target: str) -> list[str]:
        if target in self.fail:
            raise SwitchFailed(self.fail[target])
        return list(self.victims.get(target, []))

    async def load(self, target: str, progress: ProgressFn) -> list[str]:
        self.began(target).set()
        await self.gate(target).wait()
        self.loads.append(target)
        return list(self.victims.get(target, []))

    async def stop(self, target: str | None, progress: ProgressFn) -> None:
        self.stops.append(target)
        if target is not None and target in self.fail:
            raise SwitchFailed(self.fail[target])


def scheduler(fake: FakePlacer, **kw: float) -> Scheduler:
    return Scheduler(fake.plan, fake.load, fake.stop, **kw)  # type: ignore[arg-type]


async def _loaded(s: Scheduler, fake: FakePlacer, name: str) -> None:
    fake.gate(name).set()
    (await s.acquire(name)).release()


def test_a_loaded_profile_never_waits_for_another_load() -> None:
    async def main() -> None:
        fake = FakePlacer()
        s = scheduler(fake)
        await _loaded(s, fake, "a")
        waiting = asyncio.ensure_future(s.acquire("b"))
        await fake.began("b").wait()  # b is loading and will not finish until the gate opens
        lease = await asyncio.wait_for(s.acquire("a"), 5)  # at once
        assert lease.profile == "a" and s.inflight_of("a") == 1
        lease.release()
        fake.gate("b").set()
        (await waiting).release()
        assert s.loaded == ["a", "b"] and fake.loads == ["a", "b"]

    asyncio.run(main())


def test_eviction_waits_for_the_victims_requests_in_flight() -> None:
    async def main() -> None:
        fake = FakePlacer()
        s = scheduler(fake)
        await _loaded(s, fake, "a")
        held = await s.acquire("a")
        fake.victims["c"] = ["a"]
        fake.gate("c").set()
        waiting = asyncio.ensure_future(s.acquire("c"))
        await asyncio.sleep(0)  # let the driver plan
        for _ in range(10):
            await asyncio.sleep(0)
        assert not fake.began("c").is_set()  # the load waits for a's request
        assert s.would_wait("a")  # new requests for a victim queue
        held.release()
        (await asyncio.wait_for(waiting, 5)).release()
        assert s.loaded == ["c"]

    asyncio.run(main())


def test_a_refused_load_fails_only_its_own_requests() -> None:
    async def main() -> None:
        fake = FakePlacer()
        s = scheduler(fake)
        await _loaded(s, fake, "a")
        fake.fail["huge"] = "profile 'huge' does not fit even alone: CPU needs 2 GiB"
        with pytest.raises(RouterError) as err:
            await s.acquire("huge")
        assert err.value.status == 503 and err.value.code == "model_load_failed"
        assert "does not fit even alone" in err.value.message
        (await s.acquire("a")).release()
        assert s.loaded == ["a"]

    asyncio.run(main())


def test_queues_are_per_profile() -> None:
    async def main() -> None:
        fake = FakePlacer()
        s = scheduler(fake, max_size=2)
        waiting = [asyncio.ensure_future(s.acquire("b")) for _ in range(2)]
        await fake.began("b").wait()
        with pytest.raises(RouterError) as err:
            await s.acquire("b")
        assert err.value.status == 429
        # another profile still has room in its own queue
        other = asyncio.ensure_future(s.acquire("c"))
        await asyncio.sleep(0)
        assert not other.done()
        fake.gate("b").set()
        fake.gate("c").set()
        for w in [*waiting, other]:
            (await w).release()
        assert set(s.loaded) == {"b", "c"}

    asyncio.run(main())


def test_deadline_and_ttl_per_profile() -> None:
    async def main() -> None:
        now = [0.0]
        fake = FakePlacer()
        s = scheduler(fake, timeout=0.05)
        s._clock = lambda: now[0]
        with pytest.raises(RouterError) as err:
            await s.acquire("slow")  # its gate never opens
        assert err.value.status == 504
        fake.gate("slow").set()
        await _loaded(s, fake, "a")
        await _loaded(s, fake, "b")
        now[0] = 100.0
        (await s.acquire("b")).release()  # b used just now
        assert await s.unload_idle({"a": 50.0, "b": 50.0}) == ["a"]
        assert fake.stops == ["a"] and "a" not in s.loaded and "b" in s.loaded

    asyncio.run(main())


def test_a_load_counts_every_server_it_did_not_drain_as_busy() -> None:
    async def main() -> None:
        fake = FakePlacer()
        s = scheduler(fake)
        await _loaded(s, fake, "a")
        await _loaded(s, fake, "b")
        fake.victims["c"] = ["a"]
        waiting = asyncio.ensure_future(s.acquire("c"))
        await fake.began("c").wait()  # a drained, the load of c under way
        act = s.load_activity()
        assert act["a"][1] == 0  # the planned victim: idle, may go
        assert act["b"][1] >= 1  # not drained: the placer must not pick it now
        assert s.activity()["b"][1] == 0
        fake.gate("c").set()
        (await waiting).release()

    asyncio.run(main())


def test_a_failed_unload_names_its_profile_and_keeps_it_loaded() -> None:
    async def main() -> None:
        fake = FakePlacer()
        s = scheduler(fake)
        await _loaded(s, fake, "a")
        fake.fail["a"] = "a would not stop"
        with pytest.raises(RouterError) as info:
            await s.unload("a")
        err = info.value
        assert err.status == 503 and err.body()["error"]["code"] == "stop_failed"
        assert err.message == "Stopping a failed: a would not stop"
        assert err.retry_after is not None and s.is_loaded("a")

    asyncio.run(main())


def test_max_concurrency_refuses_with_429_and_retry_after() -> None:
    async def main() -> None:
        fake = FakePlacer()
        s = scheduler(fake)
        await _loaded(s, fake, "a")
        s.max_concurrency = {"a": 1}
        held = await s.acquire("a")
        with pytest.raises(RouterError) as err:
            await s.acquire("a")
        assert err.value.status == 429 and err.value.retry_after
        assert "max_concurrency" in err.value.message
        held.release()
        (await s.acquire("a")).release()

    asyncio.run(main())


def test_a_stop_from_a_shell_refuses_the_requests_before_it_and_loads_for_the_later() -> None:
    """Pure: the waiters that arrived before the stop get 503 model_stopped; one that came
    after gets its load. The effects' refusal (a stop seen under the lock) acts the same."""

    async def main() -> None:
        fake = FakePlacer()
        s = scheduler(fake)
        marks: list[tuple[float, str]] = []
        s.stopped_after = lambda profile, since: next(
            ((at, why) for at, why in marks if at > since), None
        )
        fake.gate("a").set()
        marks.append((150.0, "profile 'a' was stopped from a shell"))
        early = asyncio.ensure_future(s.acquire("a", since=100.0))
        with pytest.raises(RouterError) as refused:
            await early
        assert refused.value.status == 503 and refused.value.code == "model_stopped"
        assert "stopped from a shell" in refused.value.message
        assert fake.loads == []  # nothing loaded for it
        late = await s.acquire("a", since=200.0)
        assert fake.loads == ["a"] and late.profile == "a"
        late.release()

    asyncio.run(main())


def test_a_load_refused_by_a_stop_under_the_lock_keeps_the_later_waiters() -> None:
    async def main() -> None:
        fake = FakePlacer()
        s = scheduler(fake)
        calls: list[float | None] = []

        async def load(target: str, progress: ProgressFn) -> list[str]:
            calls.append(s.loading_since)
            if len(calls) == 1:
                raise SwitchFailed("every server was stopped from a shell", stopped_at=150.0)
            return []

        s._load = load
        early = asyncio.ensure_future(s.acquire("a", since=100.0))
        late = asyncio.ensure_future(s.acquire("a", since=200.0))
        with pytest.raises(RouterError) as refused:
            await early
        assert refused.value.code == "model_stopped"
        (await late).release()
        assert calls == [100.0, 200.0]  # the second load is for the request after the stop

    asyncio.run(main())


def test_a_lease_says_how_long_it_waited_for_the_load_of_its_profile() -> None:
    """The lease of a request that waited for a load names the wait and the last step it was
    shown (the router's X-Llmctl-Load header); a lease granted at once names none."""

    async def main() -> None:
        from llmctl.router.scheduler import Progress, Waited

        now = [10.0]
        began, gate = asyncio.Event(), asyncio.Event()

        async def load(target: str, progress: ProgressFn) -> list[str]:
            progress(Progress("starting", f"starting {target}", target))
            began.set()
            await gate.wait()
            now[0] = 15.25
            progress(Progress("ready", f"{target} is ready", target))
            return []

        fake = FakePlacer()
        s = Scheduler(fake.plan, load, fake.stop, clock=lambda: now[0])
        first = asyncio.ensure_future(s.acquire("b"))
        await began.wait()
        now[0] = 12.0
        joined = asyncio.ensure_future(s.acquire("b"))  # arrives during the load
        while s.depth_of().get("b", 0) != 2:  # both wait (no clock decides it)
            await asyncio.sleep(0)
        gate.set()
        a, b = await first, await joined
        assert a.waited == Waited(5.25, "ready") and b.waited == Waited(3.25, "ready")
        at_once = await s.acquire("b")
        assert at_once.waited is None
        for lease in (a, b, at_once):
            lease.release()

    asyncio.run(main())
