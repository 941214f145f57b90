"""The pure order policy (router/order.py): which waiting profile loads next, and when its swap starts."""

from __future__ import annotations

from llmctl.router.order import (
    IDLE_GRACE_S,
    Bound,
    Resident,
    Settings,
    Waiting,
    next_profile,
    swap_verdict,
)

BOUND = Bound(max_wait=5.0)


def busy(profile: str = "a", loaded_at: float = 0.0) -> Resident:
    return Resident(profile, loaded_at, last_used=10.0, inflight=1)


def test_nothing_waiting_means_nothing_to_load() -> None:
    assert next_profile([], {}, BOUND, 0.0) is None


def test_an_expired_request_goes_before_a_higher_priority_one() -> None:
    old, vip = Waiting("b", since=0.0), Waiting("c", since=4.0)
    prio = {"c": Settings(priority=5)}
    assert next_profile([vip, old], prio, BOUND, 5.0) == old
    assert next_profile([vip, old], prio, BOUND, 4.5) == vip  # neither expired: priority


def test_equal_priority_serves_the_oldest_first() -> None:
    assert next_profile([Waiting("c", 2.0), Waiting("b", 1.0)], {}, BOUND, 3.0) == Waiting("b", 1.0)


def test_a_load_that_evicts_nothing_starts_at_once() -> None:
    assert swap_verdict(Waiting("b", 0.0), [], {}, BOUND, 0.0).reason == "fits"


def test_a_busy_victim_defers_the_swap_until_the_bound() -> None:
    v = swap_verdict(Waiting("b", 10.0), [busy()], {}, BOUND, 11.0)
    assert not v.go and v.reason == "deferred" and v.wake_at == 15.0
    assert swap_verdict(Waiting("b", 10.0), [busy()], {}, BOUND, 15.0).reason == "bound expired"


def test_the_bound_counts_from_the_victims_load_when_the_request_is_older() -> None:
    """A request that waited through the load of the profile it would evict was not passed over
    then: that profile serves for max_wait before the swap (else loads longer than the bound make
    every next bound expire at once, and the order is arrival order again)."""
    fresh = busy(loaded_at=20.0)
    v = swap_verdict(Waiting("b", 10.0), [fresh], {}, BOUND, 21.0)
    assert not v.go and v.reason == "deferred" and v.wake_at == 25.0
    assert swap_verdict(Waiting("b", 10.0), [fresh], {}, BOUND, 25.0).reason == "bound expired"
    # ranking among the waiting still counts from arrival: the oldest expired goes first
    assert next_profile([Waiting("c", 19.0), Waiting("b", 10.0)], {}, BOUND, 21.0).profile == "b"


def test_passes_expire_the_bound_before_the_time() -> None:
    bound = Bound(max_wait=5.0, max_passes=3)
    assert swap_verdict(Waiting("b", 10.0, passed=3), [busy()], {}, bound, 11.0).go


def test_an_idle_victim_is_swapped_after_the_grace() -> None:
    idle = Resident("a", 0.0, last_used=10.0)
    v = swap_verdict(Waiting("b", 10.0), [idle], {}, BOUND, 10.1)
    assert not v.go and v.wake_at == 10.0 + IDLE_GRACE_S
    assert swap_verdict(Waiting("b", 10.0), [idle], {}, BOUND, 10.0 + IDLE_GRACE_S).reason == "idle"


def test_a_higher_priority_swaps_at_once() -> None:
    prio = {"b": Settings(priority=1)}
    assert swap_verdict(Waiting("b", 10.0), [busy()], prio, BOUND, 10.0).reason == "priority"


def test_min_residency_holds_a_busy_victim_past_the_bound() -> None:
    res = {"a": Settings(min_residency=30.0)}
    v = swap_verdict(Waiting("b", 0.0), [busy(loaded_at=0.0)], res, BOUND, 20.0)
    assert not v.go and v.reason == "min residency" and v.wake_at == 30.0
    assert swap_verdict(Waiting("b", 0.0), [busy(loaded_at=0.0)], res, BOUND, 30.0).go
    idle = Resident("a", 0.0, last_used=0.0)  # nothing else can run: it goes
    assert swap_verdict(Waiting("b", 0.0), [idle], res, BOUND, 20.0).reason == "idle"


def test_no_bound_is_arrival_order() -> None:
    assert swap_verdict(Waiting("b", 0.0), [busy()], {}, Bound(), 10.0).reason == "arrival order"
