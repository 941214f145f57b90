"""Hosts (`type: llmctl` upstreams) without processes: reading a host's state, the order in which
a chain is tried, loops, and the chain built from what was learned."""

from __future__ import annotations

from typing import Any

import pytest

from llmctl.manifest.model import ServeConfig, UpstreamConfig
from llmctl.router.hosts import (
    MAX_HOPS,
    BadState,
    HostState,
    Standing,
    loop_error,
    order,
    parse_hops,
    parse_state,
    with_hop,
)
from llmctl.router.upstreams import Upstreams


def doc(*profiles: dict[str, Any], router_id: str = "r1") -> dict[str, Any]:
    return {"llmctl_state": 1, "router_id": router_id, "queue_depth": 2, "profiles": list(profiles)}


def prof(name: str, state: str = "idle", fits: bool | None = True, **kw: Any) -> dict[str, Any]:
    return {"name": name, "aliases": kw.get("aliases", []), "state": state, "fits": fits}


# --- parse_state ------------------------------------------------------------------------


def test_parse_state_reads_profiles_and_queue() -> None:
    learned = parse_state(doc(prof("chat", "ready", aliases=["c"]), prof("code", fits=None)))
    assert learned.router_id == "r1" and learned.queue_depth == 2 and learned.dropped == 0
    chat, code = learned.profiles
    assert chat.loaded and chat.aliases == ("c",) and not code.loaded and code.fits is None


@pytest.mark.parametrize(
    ("data", "why"),
    [
        ("hello", "not a JSON object"),
        ({"models": []}, "llmctl_state"),
        ({"llmctl_state": 99, "router_id": "x", "profiles": []}, "llmctl_state"),
        ({"llmctl_state": 1, "profiles": []}, "router_id"),
        ({"llmctl_state": 1, "router_id": "x", "profiles": {}}, "profiles is not a list"),
        (doc({"state": "idle"}), "profiles[0].name"),
        (doc(prof("a"), prof("a")), "repeated"),
        (doc(prof("a", "sleeping")), "profiles[0].state"),
        (doc({**prof("a"), "fits": "yes"}), "fits"),
        (doc({**prof("a"), "aliases": "b"}), "aliases"),
        (doc({**prof("a"), "inflight": -1}), "inflight"),
    ],
)
def test_parse_state_names_what_is_wrong(data: Any, why: str) -> None:
    with pytest.raises(BadState, match=why.replace("[", r"\[").replace("]", r"\]")):
        parse_state(data)


def test_parse_state_caps_an_enormous_list() -> None:
    learned = parse_state(doc(*(prof(f"p{i}") for i in range(50))), limit=10)
    assert len(learned.profiles) == 10 and learned.dropped == 40


def test_host_state_lookup_and_keeps_profiles_when_down() -> None:
    host = HostState()
    assert not host.up and host.lookup("chat") is None
    host.learn(parse_state(doc(prof("chat", aliases=["Chat-Alias"]))), now=1.0)
    assert host.up and host.lookup("CHAT") == "chat" and host.lookup("chat-alias") == "chat"
    host.fail("cannot connect", now=2.0)
    assert not host.up and host.error == "cannot connect"
    assert host.lookup("chat") == "chat"  # still known: served again as soon as it answers


# --- order ------------------------------------------------------------------------------


def test_order_loaded_then_fits_then_chain_order() -> None:
    other = Standing(host=False)
    idle = Standing(host=True, fits=False)
    fits = Standing(host=True, fits=True)
    loaded = Standing(host=True, loaded=True, fits=False)
    assert order([other, idle, fits, loaded]) == [3, 2, 0, 1]
    assert order([idle, Standing(host=True, fits=None), other]) == [0, 1, 2]  # chain order
    assert order([fits, Standing(host=True, fits=True)]) == [0, 1]  # ties keep the chain order


# --- loops ------------------------------------------------------------------------------


def test_hops() -> None:
    assert parse_hops(None) == [] and parse_hops(" a, ,b ") == ["a", "b"]
    assert with_hop(["a"], "me") == b"a,me"
    assert loop_error(["a", "b"], "me") is None
    why = loop_error(["a", "me"], "me")
    assert why is not None and "list each other" in why
    too_many = loop_error([str(i) for i in range(MAX_HOPS)], "me")
    assert too_many is not None and f"at most {MAX_HOPS}" in too_many


# --- the chain from learned state -------------------------------------------------------


def chain_of(models: tuple[str, ...] = ("*",)) -> Upstreams:
    serve = ServeConfig(
        upstreams=[
            UpstreamConfig(name="back", type="llmctl", url="http://h:1/", models=list(models)),
            UpstreamConfig(name="local", type="managed"),
        ]
    )
    return Upstreams.from_serve(serve, environ={})


def test_a_host_serves_what_it_reported_within_models() -> None:
    ups = chain_of()
    back = ups.all[0]
    assert back.host is not None and back.url == "http://h:1"
    assert ups.chain(None, "chat") == []  # nothing learned yet
    back.host.learn(parse_state(doc(prof("chat", aliases=["c"]), prof("code"))), now=0)
    assert ups.chain(None, "C") == [back] and back.upstream_model(["C"]) == "chat"
    assert ups.find_explicit("code") and not ups.find_explicit("nope")
    assert [m for m, _ in ups.explicit_models()] == ["chat", "c", "code"]

    narrow = chain_of(models=("c",))
    host = narrow.all[0]
    assert host.host is not None
    host.host.learn(parse_state(doc(prof("chat", aliases=["c"]), prof("code"))), now=0)
    assert narrow.chain(None, "chat") == [host] and narrow.chain(None, "code") == []


def test_learned_state_survives_a_reload() -> None:
    first = chain_of()
    assert first.all[0].host is not None
    first.all[0].host.learn(parse_state(doc(prof("chat"))), now=0)
    same = ServeConfig(upstreams=[UpstreamConfig(name="back", type="llmctl", url="http://h:1/v1")])
    again = Upstreams.from_serve(same, previous=first, environ={})
    assert again.all[1].host is first.all[0].host  # `local` is added first
    moved = ServeConfig(upstreams=[UpstreamConfig(name="back", type="llmctl", url="http://h:2")])
    elsewhere = Upstreams.from_serve(moved, previous=again, environ={})
    assert elsewhere.all[1].host is not None and not elsewhere.all[1].host.profiles
