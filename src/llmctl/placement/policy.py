"""The placement policy: which servers must go for a profile to load, or why it cannot.

A pure function of its inputs (devices, running servers, the request): no processes, no files, no
clock, no logging. The caller (the supervisor's `load`, the router) carries the decision out.

Rules, in order:
1. A profile already running with the same configuration: nothing to do.
2. Forced victims: a server of the same profile with another configuration, a server of the same
   exclusive `group`, a server on the same port, a server using one of the same llama.cpp RPC
   servers (a ggml-rpc-server serves one client at a time: a second llama-server would wait for
   it forever). A pinned one among them refuses the load.
3. For each way the profile may be placed (its options, in order of preference), the servers to
   unload so that every device keeps its headroom: none if it fits beside what runs; otherwise
   the set of unpinned servers that frees enough with, in order, the fewest requests in flight,
   the least reload cost (weights bytes), and the longest idle time; servers still within their
   `min_residency` (`resident`) only when no set without them frees enough.
4. An option that cannot fit even on empty devices is refused, naming the device and the shortfall.

Several profiles named in one command are one set (`decide_set`): each is placed beside what
runs with the members before it kept loaded, so the set runs together or is refused as a whole.

Out of memory at load (`after_oom`): when the engine could not allocate what the decision said
fits, the profile needs more than was free on that device, so its need there is at least that
(`floor`). Decided again with that need, the policy names the next victim it would choose, for
one retry; never a second (an evict/reload loop), and none when nothing else runs on the device
or what runs may not go (pinned, within its `min_residency`, requests in flight).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, Literal, NamedTuple

# Exhaustive search over victim sets up to this many candidates; greedy beyond.
EXHAUSTIVE_LIMIT = 10


# The default of a mapping field: shared, so read-only.
_NONE: Mapping[str, int] = MappingProxyType({})


class Device(NamedTuple):
    name: str
    budget: int
    headroom: int = 0

    @property
    def usable(self) -> int:
        return max(0, self.budget - self.headroom)


class Running(NamedTuple):
    """A server that runs (or loads) now."""

    profile: str
    usage: Mapping[str, int]
    reload_cost: int = 0  # bytes to read again if it is unloaded (its weights)
    last_used: float = 0.0  # any monotonic scale; smaller = longer idle
    inflight: int = 0
    pinned: bool = False
    resident: bool = False  # loaded less than its min_residency ago
    group: str | None = None
    port: int | None = None
    config: str = ""


class Option(NamedTuple):
    """One way to place the requested profile: bytes per device, and a label (its devices)."""

    usage: Mapping[str, int]
    label: str = ""


class Request(NamedTuple):
    profile: str
    options: Sequence[Option]
    group: str | None = None
    port: int | None = None
    configs: tuple[str, ...] = ()  # a running server with one of these needs nothing done


class Shortfall(NamedTuple):
    device: str
    need: int
    available: int  # what is free on the device (after headroom) for this profile

    @property
    def missing(self) -> int:
        return self.need - self.available

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "need_bytes": self.need,
            "available_bytes": self.available,
            "missing_bytes": self.missing,
        }


Action = Literal["noop", "start", "refuse"]


class Decision(NamedTuple):
    action: Action
    profile: str
    option: int | None = None  # index into Request.options
    evict: tuple[str, ...] = ()
    busy: tuple[str, ...] = ()  # victims with requests in flight (the caller waits for them)
    reason: str = ""
    shortfall: tuple[Shortfall, ...] = ()
    alone: bool = True  # refused: False when it would fit on empty devices (pinned servers block)
    usage: Mapping[str, int] = _NONE

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "profile": self.profile,
            "option": self.option,
            "evict": list(self.evict),
            "busy": list(self.busy),
            "reason": self.reason,
            "usage": dict(self.usage),
            "shortfall": [s.to_json() for s in self.shortfall],
        }


def _mib(n: int) -> str:
    return f"{n / 1024**2:.0f} MiB"


def decide(devices: Sequence[Device], running: Sequence[Running], request: Request) -> Decision:
    """The decision for loading `request` beside `running` on `devices`."""
    name = request.profile
    budget = {d.name: d.usable for d in devices}
    for r in running:
        if r.profile == name and r.config in request.configs:
            return Decision("noop", name, reason=f"profile {name!r} already runs")
    forced: list[Running] = []
    others: list[Running] = []
    remote = {d for o in request.options for d in _rpc_devices(o.usage)}
    for r in running:
        if (
            r.profile == name
            or (request.group is not None and r.group == request.group)
            or (request.port is not None and r.port == request.port)
            or remote & _rpc_devices(r.usage)
        ):
            forced.append(r)
        else:
            others.append(r)
    blocked = [r for r in forced if r.pinned and r.profile != name]
    if blocked:
        r = blocked[0]
        shared = sorted(remote & _rpc_devices(r.usage))
        if request.group is not None and r.group == request.group:
            why = "group " + repr(r.group)
        elif request.port is not None and r.port == request.port:
            why = f"port {r.port}"
        else:
            why = f"{shared[0]}, which serves one llama-server at a time"
        return Decision(
            "refuse",
            name,
            reason=f"profile {name!r} cannot run beside pinned profile {r.profile!r} ({why})",
            alone=False,
        )
    best: tuple[tuple[int, int, int, float, int], Decision] | None = None  # (score, decision)
    refusals: list[tuple[int, tuple[Shortfall, ...]]] = []
    pinned_blocks: list[tuple[Shortfall, ...]] = []
    for idx, option in enumerate(request.options):
        unknown = [d for d in option.usage if d not in budget and option.usage[d] > 0]
        if unknown:
            refusals.append(
                (idx, tuple(Shortfall(d, option.usage[d], 0) for d in unknown)),
            )
            continue
        alone = tuple(
            Shortfall(d, need, budget[d]) for d, need in option.usage.items() if need > budget[d]
        )
        if alone:
            refusals.append((idx, alone))
            continue
        free = dict(budget)
        for r in others:
            for d, b in r.usage.items():
                if d in free:
                    free[d] -= b
        deficit = {d: need - free[d] for d, need in option.usage.items() if need > free[d]}
        # a server within its min_residency goes only when no other set frees enough
        victims = _victims(deficit, [r for r in others if not r.pinned and not r.resident])
        if victims is None:
            victims = _victims(deficit, [r for r in others if not r.pinned])
        if victims is None:
            pinned_blocks.append(
                tuple(Shortfall(d, option.usage[d], free[d]) for d in sorted(deficit))
            )
            continue
        chosen = [*forced, *victims]
        busy, cost, recency, _ = _key(victims)
        # across options: no eviction at all beats any eviction, whatever it costs
        score = (busy, len(forced) + (1 if victims else 0), cost, recency, idx)
        if best is not None and score >= best[0]:
            continue
        evict = tuple(r.profile for r in chosen)
        reason = (
            f"profile {name!r} fits beside what runs on {option.label or 'its devices'}"
            if not victims
            else f"profile {name!r} needs {', '.join(_mib(v) + ' more on ' + d for d, v in sorted(deficit.items()))}: "
            f"unloading {', '.join(repr(r.profile) for r in victims)}"
        )
        best = (
            score,
            Decision(
                "start",
                name,
                option=idx,
                evict=evict,
                busy=tuple(r.profile for r in chosen if r.inflight),
                reason=reason,
                usage=dict(option.usage),
            ),
        )
    if best is not None:
        return best[1]
    if pinned_blocks:
        short = pinned_blocks[0]
        return Decision(
            "refuse",
            name,
            reason=f"profile {name!r} does not fit beside the pinned profiles: "
            + "; ".join(
                f"{s.device} has {_mib(s.available)} free, needs {_mib(s.need)}" for s in short
            ),
            shortfall=short,
            alone=False,
        )
    if not refusals:
        return Decision("refuse", name, reason=f"profile {name!r} has no device to run on")
    # the option that misses least
    _, short = min(refusals, key=lambda item: sum(s.missing for s in item[1]))
    return Decision(
        "refuse",
        name,
        reason=f"profile {name!r} does not fit even alone: "
        + "; ".join(
            f"{s.device} needs {_mib(s.need)} of {_mib(s.available)} available "
            f"({_mib(s.missing)} short)"
            if s.available or s.device in budget
            else f"device {s.device} is not configured"
            for s in short
        ),
        shortfall=short,
    )


def _rpc_devices(usage: Mapping[str, int]) -> set[str]:
    """The llama.cpp RPC servers' devices among a usage's keys."""
    from llmctl.llama.rpc import endpoint_of

    return {d for d in usage if endpoint_of(d) is not None}


def _frees(victims: Sequence[Running], deficit: Mapping[str, int]) -> bool:
    return all(sum(r.usage.get(d, 0) for r in victims) >= need for d, need in deficit.items())


def _key(victims: Sequence[Running]) -> tuple[int, int, float, int]:
    return (
        sum(1 for r in victims if r.inflight),
        sum(r.reload_cost for r in victims),
        sum(r.last_used for r in victims),
        len(victims),
    )


def _victims(deficit: Mapping[str, int], candidates: Sequence[Running]) -> list[Running] | None:
    """The cheapest set of candidates whose removal covers `deficit`; None if none does."""
    if not deficit:
        return []
    useful = [r for r in candidates if any(r.usage.get(d, 0) > 0 for d in deficit)]
    if not _frees(useful, deficit):
        return None
    if len(useful) <= EXHAUSTIVE_LIMIT:
        return _cheapest(deficit, useful)
    # greedy: idle before busy, then least recently used, until it fits; then drop the unneeded
    order = sorted(useful, key=lambda r: (r.inflight > 0, r.last_used, r.reload_cost))
    chosen: list[Running] = []
    for r in order:
        chosen.append(r)
        if _frees(chosen, deficit):
            break
    for r in sorted(chosen, key=lambda r: -r.reload_cost):
        rest = [x for x in chosen if x is not r]
        if _frees(rest, deficit):
            chosen = rest
    return chosen


def _cheapest(deficit: Mapping[str, int], useful: Sequence[Running]) -> list[Running] | None:
    """Branch and bound over the sets of `useful`: adding a server never lowers the key
    (requests in flight, reload cost, recency), so a feasible set is never extended and a partial
    set already no better than the best is dropped."""
    order = sorted(useful, key=lambda r: (r.inflight > 0, r.reload_cost, r.last_used))
    best: list[Running] | None = None
    best_key: tuple[int, int, float, int] | None = None
    need = dict(deficit)

    def visit(i: int, chosen: list[Running], key: tuple[int, int, float]) -> None:
        nonlocal best, best_key
        if best_key is not None and key >= best_key[:3]:
            return
        if chosen and all(v <= 0 for v in need.values()):
            best, best_key = list(chosen), (*key, len(chosen))
            return
        for j in range(i, len(order)):
            r = order[j]
            chosen.append(r)
            for d in need:
                need[d] -= r.usage.get(d, 0)
            visit(
                j + 1,
                chosen,
                (key[0] + (1 if r.inflight else 0), key[1] + r.reload_cost, key[2] + r.last_used),
            )
            for d in need:
                need[d] += r.usage.get(d, 0)
            chosen.pop()

    visit(0, [], (0, 0, 0.0))
    return best


def decide_set(
    devices: Sequence[Device], running: Sequence[Running], requests: Sequence[Request]
) -> list[Decision]:
    """The decisions for loading `requests` in order as one set: no member unloads another.

    Each request is decided beside `running` as the earlier decisions leave it, with the members
    placed so far held as if pinned. Stops at the first refusal (the last decision returned), whose
    reason names the members it could not run beside.
    """
    state = list(running)
    members: list[str] = []
    out: list[Decision] = []
    for request in requests:
        view = [r._replace(pinned=True) if r.profile in members else r for r in state]
        decision = decide(devices, view, request)
        if decision.action == "refuse" and members and not decision.alone:
            together = ", ".join(repr(m) for m in members)
            reason = decision.reason.replace("the pinned profiles", "the profiles before it")
            reason = reason.replace("pinned profile", "profile")
            decision = decision._replace(
                reason=f"{reason} (with {together} named in the same command and kept: "
                "the profiles of one command run together or not at all)",
            )
        out.append(decision)
        if decision.action == "refuse":
            break
        if decision.action == "start":
            state = [r for r in state if r.profile not in decision.evict]
            state.append(
                Running(
                    profile=request.profile,
                    usage=dict(decision.usage),
                    group=request.group,
                    port=request.port,
                    config=request.configs[0] if request.configs else "",
                )
            )
        members.append(request.profile)
    return out


# What an out-of-memory load needed at least beyond what was free: the engine's rounding.
OOM_MARGIN = 1024 * 1024


class OomRetry(NamedTuple):
    """After an out-of-memory load: the profile's need per device at least (`floor`, to keep),
    and whether to retry once, placed as `decision` says (its victims), or why not."""

    retry: bool
    reason: str
    floor: Mapping[str, int] = _NONE
    decision: Decision | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "retry": self.retry,
            "reason": self.reason,
            "floor": dict(self.floor),
            "decision": self.decision.to_json() if self.decision is not None else None,
        }


def after_oom(
    devices: Sequence[Device],
    running: Sequence[Running],
    request: Request,
    failed: Decision,
    device: str | None = None,
    attempts: int = 1,
    drain: bool = False,
) -> OomRetry:
    """What to do after `failed` (a start of `request`) ran out of memory at load, with
    `running` the servers that run now (the failed one gone). `device`: the one the engine's
    error named, if any; `attempts`: loads of this request so far (one retry at most); `drain`:
    the caller lets a victim's requests in flight finish first (the router), so a server
    serving requests may go (the idle first), else it stays."""
    name = request.profile
    usage = dict(failed.usage)
    budget = {d.name: d.usable for d in devices}
    others = [r for r in running if r.profile != name]
    on = [d for d, b in usage.items() if b > 0 and d in budget]
    if device in on:
        at_fault = [device]
    else:  # the engine did not say: the devices it shared, else every device it used
        shared = [d for d in on if any(r.usage.get(d, 0) > 0 for r in others)]
        at_fault = shared or on
    free = {d: budget[d] - sum(r.usage.get(d, 0) for r in others) for d in at_fault}
    floor = {d: max(usage[d], free[d] + OOM_MARGIN) for d in at_fault}
    where = ", ".join(at_fault) or "its devices"
    if attempts > 1:
        return OomRetry(
            False,
            f"profile {name!r} ran out of memory on {where} again after a retry: "
            "no further retry (one per load)",
            floor,
        )
    neighbours = [r for r in others if any(r.usage.get(d, 0) > 0 for d in at_fault)]
    if not neighbours:
        return OomRetry(
            False,
            f"profile {name!r} ran out of memory on {where} with nothing else running there: "
            f"it needs more than {', '.join(_mib(budget[d]) for d in at_fault)} usable",
            floor,
        )

    def kept(r: Running) -> str | None:
        if r.pinned:
            return "pinned"
        if r.resident:
            return "within its min_residency"
        if r.inflight and not drain:
            return "serving requests"
        return None

    view = [r._replace(pinned=True) if kept(r) else r for r in others]
    options = list(request.options)
    if failed.option is not None and failed.option < len(options):
        raised = {**options[failed.option].usage, **floor}
        options[failed.option] = options[failed.option]._replace(usage=raised)
    again = decide(devices, view, request._replace(options=options))
    if again.action != "start":
        held = [f"{r.profile!r} is {kept(r)}" for r in neighbours if kept(r)]
        stays = "so it stays" if len(held) == 1 else "so they stay"
        return OomRetry(
            False,
            f"profile {name!r} ran out of memory on {where} beside "
            f"{', '.join(repr(r.profile) for r in neighbours)}; no retry: "
            + (f"{'; '.join(held)}, {stays}" if held else again.reason),
            floor,
        )
    victims = ", ".join(repr(v) for v in again.evict)
    return OomRetry(
        True,
        f"profile {name!r} ran out of memory on {where} "
        f"(it needs more than the {', '.join(_mib(free[d]) for d in at_fault)} that was free): "
        + (f"unloading {victims} and trying once more" if victims else "trying once more"),
        floor,
        again,
    )
