"""Other `llmctl serve` processes in the chain (hosts): what each said about itself, and the order
in which a request's chain tries them.

Pure: the poller (`host_watch.py`) fetches each host's `GET /llmctl/v1/state` and gives the JSON
to `parse_state`; `order` ranks a chain from what was learned; the hop helpers spot a request that
came back to a router it already passed. No I/O here.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

STATE_PATH = "/llmctl/v1/state"
STATE_VERSION = 1
# every router a request passed through, by router id, oldest first
HOPS_HEADER = "x-llmctl-hops"
MAX_HOPS = 8
# a host's state is read whole; beyond these it is cut (profiles) or refused (bytes)
MAX_PROFILES = 1000
MAX_STATE_BYTES = 4 * 1024 * 1024
PROFILE_STATES = ("ready", "loading", "idle", "failed")


class BadState(ValueError):
    """A host's answer that is not an llmctl state document."""


@dataclass(frozen=True)
class HostProfile:
    """One profile of a host, as the host reported it."""

    name: str
    aliases: tuple[str, ...] = ()
    state: str = "idle"  # ready, loading, idle, failed
    fits: bool | None = None  # loading it would unload nothing (None: the host cannot tell)
    inflight: int = 0

    @property
    def loaded(self) -> bool:
        return self.state == "ready"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "aliases": list(self.aliases),
            "state": self.state,
            "fits": self.fits,
            "inflight": self.inflight,
        }


@dataclass
class Learned:
    """One state document, read: the host's id, its profiles (at most MAX_PROFILES), its queue."""

    router_id: str
    profiles: list[HostProfile]
    queue_depth: int = 0
    dropped: int = 0  # profiles beyond MAX_PROFILES, left out


def _str_list(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadState(f"{what} is not a list of strings")
    return tuple(value)


def _count(value: Any, what: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadState(f"{what} is not a count")
    return value


def parse_state(data: Any, *, limit: int = MAX_PROFILES) -> Learned:
    """A host's state document, checked field by field; BadState names what is wrong."""
    if not isinstance(data, dict):
        raise BadState("the answer is not a JSON object")
    if data.get("llmctl_state") != STATE_VERSION:
        raise BadState(
            f"no llmctl_state: {STATE_VERSION} in the answer (not an llmctl serve, or another version)"
        )
    router_id = data.get("router_id")
    if not isinstance(router_id, str) or not router_id:
        raise BadState("router_id is missing")
    raw = data.get("profiles")
    if not isinstance(raw, list):
        raise BadState("profiles is not a list")
    profiles: list[HostProfile] = []
    seen: set[str] = set()
    for i, item in enumerate(raw[:limit]):
        if not isinstance(item, dict):
            raise BadState(f"profiles[{i}] is not an object")
        name = item.get("name")
        if not isinstance(name, str) or not name or name in seen:
            raise BadState(f"profiles[{i}].name is missing, not a string or repeated")
        seen.add(name)
        state = item.get("state")
        if state not in PROFILE_STATES:
            raise BadState(f"profiles[{i}].state is not one of {', '.join(PROFILE_STATES)}")
        fits = item.get("fits")
        if fits is not None and not isinstance(fits, bool):
            raise BadState(f"profiles[{i}].fits is not true, false or null")
        profiles.append(
            HostProfile(
                name=name,
                aliases=_str_list(item.get("aliases"), f"profiles[{i}].aliases"),
                state=str(state),
                fits=fits,
                inflight=_count(item.get("inflight"), f"profiles[{i}].inflight"),
            )
        )
    return Learned(
        router_id=router_id,
        profiles=profiles,
        queue_depth=_count(data.get("queue_depth"), "queue_depth"),
        dropped=max(0, len(raw) - limit),
    )


@dataclass
class HostState:
    """What the router knows of one host. The profiles of the last good answer are kept while the
    host is down, so that it serves them again as soon as it answers."""

    up: bool = False
    router_id: str | None = None
    profiles: dict[str, HostProfile] = field(default_factory=dict)
    queue_depth: int = 0
    dropped: int = 0
    error: str | None = "not reached yet"
    checked_at: float | None = None  # time.monotonic() of the last poll
    polls: int = 0  # answers and failures seen (tests wait on it)
    _names: dict[str, str] = field(default_factory=dict, repr=False)

    def learn(self, learned: Learned, now: float) -> None:
        self.up = True
        self.error = None
        self.router_id = learned.router_id
        self.profiles = {p.name: p for p in learned.profiles}
        self.queue_depth = learned.queue_depth
        self.dropped = learned.dropped
        self.checked_at = now
        self.polls += 1
        names: dict[str, str] = {}
        for p in learned.profiles:  # profile names win over aliases, as on the host
            names[p.name.casefold()] = p.name
        for p in learned.profiles:
            for alias in p.aliases:
                names.setdefault(alias.casefold(), p.name)
        self._names = names

    def fail(self, error: str, now: float) -> None:
        self.up = False
        self.error = error
        self.checked_at = now
        self.polls += 1

    def lookup(self, name: str) -> str | None:
        """The host's profile for a name or alias (ignoring case), if it has one."""
        return self._names.get(name.casefold())

    def names(self) -> list[str]:
        """Every profile name and alias the host listed."""
        return [n for p in self.profiles.values() for n in (p.name, *p.aliases)]

    def to_json(self, now: float | None = None) -> dict[str, Any]:
        now = time.monotonic() if now is None else now
        return {
            "up": self.up,
            "router_id": self.router_id,
            "error": self.error,
            "checked_s_ago": None
            if self.checked_at is None
            else round(max(0.0, now - self.checked_at), 3),
            "queue_depth": self.queue_depth,
            "profiles_dropped": self.dropped,
            "profiles": [p.to_json() for p in self.profiles.values()],
        }


# --- which host first -----------------------------------------------------------------------


@dataclass(frozen=True)
class Standing:
    """What is known of one chain entry for one request's profile."""

    host: bool  # a host whose state is known (this router's own server, or an llmctl host)
    loaded: bool = False
    fits: bool | None = None


def rank(s: Standing) -> int:
    """0: has it loaded; 1: can load it without unloading anything; 2: anything else."""
    if not s.host:
        return 2
    if s.loaded:
        return 0
    return 1 if s.fits else 2


def order(standings: Sequence[Standing]) -> list[int]:
    """The chain's positions in the order to try them: the host that has the profile loaded, else
    one where it fits without unloading, else chain order (the sort is stable)."""
    return sorted(range(len(standings)), key=lambda i: rank(standings[i]))


# --- loops ----------------------------------------------------------------------------------


def parse_hops(value: str | None) -> list[str]:
    """The router ids a request passed through (the hops header), oldest first."""
    if not value:
        return []
    return [h.strip() for h in value.split(",") if h.strip()]


def loop_error(hops: Iterable[str], router_id: str) -> str | None:
    """Why a request that arrives with these hops must not go on, or None."""
    seen = list(hops)
    if router_id in seen:
        return (
            f"this request already passed through this router ({len(seen)} hop(s)): two llmctl "
            "hosts list each other as upstreams for this model. Remove one of the `type: llmctl` "
            "entries or narrow its `models`"
        )
    if len(seen) >= MAX_HOPS:
        return (
            f"this request passed through {len(seen)} llmctl hosts already (at most {MAX_HOPS}); "
            "shorten the chain of `type: llmctl` upstreams"
        )
    return None


def with_hop(hops: Sequence[str], router_id: str) -> bytes:
    """The hops header value to send on: the ones that came in, then this router."""
    return ",".join([*hops, router_id]).encode("latin-1")
