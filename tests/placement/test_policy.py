"""The placement policy as a pure function: no processes, no files."""

from __future__ import annotations

from llmctl.placement.policy import (
    EXHAUSTIVE_LIMIT,
    Device,
    Option,
    Request,
    Running,
    decide,
)

GiB = 1024**3
ONE = [Device("CUDA0", 24 * GiB, 1 * GiB)]  # 23 GiB usable
TWO = [Device("CUDA0", 24 * GiB, 0), Device("CUDA1", 8 * GiB, 0), Device("CPU", 64 * GiB, 0)]


def req(name: str, *usages: dict[str, int], **kw: object) -> Request:
    return Request(name, [Option(u, "+".join(u)) for u in usages], **kw)  # type: ignore[arg-type]


def run(name: str, usage: dict[str, int], **kw: object) -> Running:
    return Running(name, usage, **kw)  # type: ignore[arg-type]


def test_fits_beside_what_runs() -> None:
    d = decide(ONE, [run("chat", {"CUDA0": 10 * GiB})], req("embed", {"CUDA0": 2 * GiB}))
    assert d.action == "start" and d.evict == () and d.option == 0


def test_headroom_counts() -> None:
    d = decide(ONE, [run("chat", {"CUDA0": 21 * GiB})], req("embed", {"CUDA0": 2 * GiB + 1}))
    assert d.action == "start" and d.evict == ("chat",)


def test_already_running_with_same_config_is_noop() -> None:
    running = [run("chat", {"CUDA0": 10 * GiB}, config="h1")]
    assert decide(ONE, running, req("chat", {"CUDA0": GiB}, configs=("h1",))).action == "noop"
    d = decide(ONE, running, req("chat", {"CUDA0": GiB}, configs=("h2",)))
    assert d.action == "start" and d.evict == ("chat",)


def test_evicts_least_recently_used_idle_first() -> None:
    running = [
        run("old", {"CUDA0": 8 * GiB}, last_used=1.0, reload_cost=5),
        run("new", {"CUDA0": 8 * GiB}, last_used=9.0, reload_cost=5),
        run("busy", {"CUDA0": 6 * GiB}, last_used=0.0, inflight=3, reload_cost=1),
    ]
    d = decide(ONE, running, req("x", {"CUDA0": 8 * GiB}))
    assert d.action == "start" and d.evict == ("old",) and d.busy == ()


def test_prefers_least_reload_cost() -> None:
    running = [
        run("big", {"CUDA0": 12 * GiB}, last_used=1.0, reload_cost=12 * GiB),
        run("small1", {"CUDA0": 4 * GiB}, last_used=5.0, reload_cost=4 * GiB),
        run("small2", {"CUDA0": 4 * GiB}, last_used=6.0, reload_cost=4 * GiB),
    ]
    # 3 GiB free; 8 more needed: both small ones (8 GiB of reload) beat the big one (12 GiB)
    d = decide(ONE, running, req("x", {"CUDA0": 11 * GiB}))
    assert d.action == "start" and set(d.evict) == {"small1", "small2"}


def test_busy_servers_only_when_idle_ones_do_not_free_enough() -> None:
    running = [
        run("busy", {"CUDA0": 15 * GiB}, inflight=2),
        run("idle", {"CUDA0": 4 * GiB}),
    ]
    d = decide(ONE, running, req("x", {"CUDA0": 10 * GiB}))
    assert d.action == "start" and "busy" in d.evict and d.busy == ("busy",)


def test_pinned_never_evicted() -> None:
    running = [run("pin", {"CUDA0": 20 * GiB}, pinned=True)]
    d = decide(ONE, running, req("x", {"CUDA0": 10 * GiB}))
    assert d.action == "refuse" and not d.alone
    assert d.shortfall[0].device == "CUDA0"
    assert "pinned" in d.reason


def test_refused_when_it_cannot_fit_alone_naming_device_and_shortfall() -> None:
    d = decide(ONE, [], req("x", {"CUDA0": 30 * GiB}))
    assert d.action == "refuse" and d.alone
    (s,) = d.shortfall
    assert (s.device, s.need, s.available, s.missing) == ("CUDA0", 30 * GiB, 23 * GiB, 7 * GiB)
    assert "CUDA0" in d.reason and "7168 MiB short" in d.reason


def test_group_is_exclusive() -> None:
    running = [run("big1", {"CUDA0": 1 * GiB}, group="big"), run("other", {"CUDA0": GiB})]
    d = decide(ONE, running, req("big2", {"CUDA0": GiB}, group="big"))
    assert d.action == "start" and d.evict == ("big1",)
    pinned = [run("big1", {"CUDA0": GiB}, group="big", pinned=True)]
    d = decide(ONE, pinned, req("big2", {"CUDA0": GiB}, group="big"))
    assert d.action == "refuse" and "big1" in d.reason


def test_same_port_must_go() -> None:
    d = decide(ONE, [run("a", {"CUDA0": GiB}, port=8081)], req("b", {"CUDA0": GiB}, port=8081))
    assert d.action == "start" and d.evict == ("a",)


def test_options_in_order_and_the_one_without_evictions_wins() -> None:
    running = [run("chat", {"CUDA0": 20 * GiB})]
    d = decide(TWO, running, req("x", {"CUDA0": 6 * GiB}, {"CUDA1": 6 * GiB}))
    assert d.action == "start" and d.option == 1 and d.evict == ()
    d = decide(TWO, [], req("x", {"CUDA0": 6 * GiB}, {"CUDA1": 6 * GiB}))
    assert d.option == 0


def test_per_device_accounting_with_host_side() -> None:
    running = [run("a", {"CUDA0": 4 * GiB, "CPU": 60 * GiB})]
    d = decide(TWO, running, req("b", {"CUDA1": 4 * GiB, "CPU": 8 * GiB}))
    assert d.action == "start" and d.evict == ("a",)  # the host side does not fit


def test_unknown_device_refused() -> None:
    d = decide(ONE, [], req("x", {"ROCm0": GiB}))
    assert d.action == "refuse" and "ROCm0" in d.reason


def test_greedy_beyond_exhaustive_limit_still_frees_enough() -> None:
    n = EXHAUSTIVE_LIMIT + 5
    running = [run(f"s{i}", {"CUDA0": GiB}, last_used=float(i)) for i in range(n)]
    devices = [Device("CUDA0", n * GiB, 0)]
    d = decide(devices, running, req("x", {"CUDA0": 3 * GiB}))
    assert d.action == "start" and set(d.evict) == {"s0", "s1", "s2"}


def test_a_set_is_placed_together_or_refused_at_the_first_that_cannot_join() -> None:
    from llmctl.placement.policy import decide_set

    fits = decide_set(ONE, [], [req("a", {"CUDA0": 10 * GiB}), req("b", {"CUDA0": 10 * GiB})])
    assert [(d.action, d.evict) for d in fits] == [("start", ()), ("start", ())]
    # c fits only without a: a member is never unloaded for another one
    over = decide_set(
        ONE,
        [],
        [
            req("a", {"CUDA0": 10 * GiB}),
            req("b", {"CUDA0": 10 * GiB}),
            req("c", {"CUDA0": 5 * GiB}),
        ],
    )
    assert [d.action for d in over] == ["start", "start", "refuse"]
    assert "'a', 'b' named in the same command" in over[-1].reason
    assert "pinned" not in over[-1].reason
    # what runs outside the set may still be unloaded for it
    evicts = decide_set(ONE, [run("old", {"CUDA0": 20 * GiB})], [req("a", {"CUDA0": 10 * GiB})])
    assert evicts[0].evict == ("old",)
    # two members on one port cannot both run
    port = decide_set(
        ONE, [], [req("a", {"CUDA0": GiB}, port=8081), req("b", {"CUDA0": GiB}, port=8081)]
    )
    assert port[-1].action == "refuse" and "port 8081" in port[-1].reason


def test_a_resident_server_goes_only_when_nothing_else_frees_enough() -> None:
    running = [
        run("young", {"CUDA0": 8 * GiB}, last_used=1.0, resident=True),
        run("old", {"CUDA0": 8 * GiB}, last_used=9.0, reload_cost=50),
    ]
    assert decide(ONE, running, req("x", {"CUDA0": 10 * GiB})).evict == ("old",)
    both = decide(ONE, running, req("x", {"CUDA0": 20 * GiB}))
    assert both.action == "start" and set(both.evict) == {"young", "old"}


def test_min_residency_is_read_from_the_profile_and_the_record(tmp_path: object) -> None:
    """placer.running_servers marks a server ready less than its profile's min_residency ago
    as resident (the policy then evicts it only when nothing else frees enough)."""
    from pathlib import Path

    from llmctl.manifest.validate import load_manifest
    from llmctl.placement.placer import running_servers
    from llmctl.supervisor.state import LaunchRecord

    folder = Path(str(tmp_path))
    path = folder / "profiles.yaml"
    path.write_text(
        "version: 1\nserver: {ports: 9100-9103}\nprofiles:\n"
        "  kept: {model: m.gguf, min_residency: 10m}\n  free: {model: m.gguf}\n"
    )
    manifest = load_manifest(path)

    def rec(name: str, ready_at: float) -> LaunchRecord:
        return LaunchRecord("id", "ready", name, "h", [], "127.0.0.1", 9100, "", "", 0.0,
                            ready_at=ready_at)  # fmt: skip

    records = {"kept": rec("kept", 1000.0), "free": rec("free", 1000.0)}
    soon = {r.profile: r.resident for r in running_servers(manifest, records, now=1300.0)}
    assert soon == {"kept": True, "free": False}
    later = {r.profile: r.resident for r in running_servers(manifest, records, now=1700.0)}
    assert later == {"kept": False, "free": False}
