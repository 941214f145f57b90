"""The router's parts on their own: breaker, queue, model detection, auth, metrics, SSE, settings."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmctl.manifest.model import ServeConfig
from llmctl.router import sse
from llmctl.router.auth import bearer_token, collect_keys, key_allowed
from llmctl.router.breaker import CircuitBreaker, counts_as_failure
from llmctl.router.errors import RouterError
from llmctl.router.metrics import Metrics
from llmctl.router.origins import is_loopback_name as is_loopback
from llmctl.router.routing import ModelIndex, detect
from llmctl.router.scheduler import Progress, ProgressFn, SwitchFailed, switching
from llmctl.router.server import check_bind
from llmctl.router.upstreams import Upstreams, public_url

# --- breaker -------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_full_cycle_with_growing_open_time() -> None:
    clock = Clock()
    b = CircuitBreaker(failures=3, open_for=10, max_open_for=25, clock=clock)
    for _ in range(2):
        assert b.allow()
        b.record_failure("boom")
    assert b.state == "closed"
    b.record_success()  # a success resets the count
    for _ in range(3):
        assert b.allow()
        b.record_failure("boom")
    assert b.state == "open" and not b.allow() and b.opens == 1
    assert b.retry_in() == 10
    clock.now += 9.9
    assert not b.allow()
    clock.now += 0.1
    assert b.state == "half_open"
    assert b.allow()  # one probe
    assert not b.allow()  # and only one
    b.record_failure("still down")
    assert b.state == "open" and b.snapshot()["open_for_s"] == 20
    clock.now += 20
    assert b.allow()
    b.record_failure("still down")
    assert b.snapshot()["open_for_s"] == 25  # capped at max_open_for
    clock.now += 25
    assert b.allow()
    b.record_success()
    assert b.state == "closed" and b.snapshot()["open_for_s"] == 10
    assert b.snapshot()["last_error"] is None


def test_breaker_probe_released_without_verdict() -> None:
    clock = Clock()
    b = CircuitBreaker(failures=1, open_for=1, clock=clock)
    b.record_failure()
    clock.now += 1
    assert b.allow()
    b.release()
    assert b.state == "half_open" and b.allow()


@pytest.mark.parametrize(
    ("status", "counts"),
    [
        (200, False),
        (400, False),
        (401, False),
        (404, False),
        (408, False),
        (413, False),
        (429, False),
        (500, False),
        (501, False),
        (502, True),
        (503, True),
        (504, True),
    ],
)
def test_which_statuses_count_as_failures(status: int, counts: bool) -> None:
    assert counts_as_failure(status) is counts


# --- auth ----------------------------------------------------------------------------------


def test_keys_from_manifest_and_environment() -> None:
    keys = collect_keys(["a", " ", "b"], "KEYS", {"KEYS": "c, a ,,d"})
    assert keys == ("a", "b", "c", "d")
    assert collect_keys([], "KEYS", {}) == ()
    assert collect_keys(["x"], "", {"": "y"}) == ("x",)


def test_bearer_parsing_and_compare() -> None:
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer   abc ") == "abc"
    assert bearer_token("Basic abc") is None
    assert bearer_token("Bearer") is None
    assert bearer_token(None) is None
    assert key_allowed("abc", ("x", "abc"))
    assert not key_allowed("abd", ("x", "abc"))
    assert not key_allowed("ab", ("abc",))
    assert not key_allowed(None, ("abc",))
    assert not key_allowed("abc", ())


def test_bind_check() -> None:
    assert (
        is_loopback("127.0.0.1")
        and is_loopback("::1")
        and is_loopback("localhost")
        and is_loopback("127.0.0.2")
    )
    assert (
        not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("gpu-box")
    )
    serve = ServeConfig()
    check_bind("127.0.0.1", serve, (), allow_insecure=False)
    with pytest.raises(Exception, match=r"refusing to listen on 0\.0\.0\.0") as info:
        check_bind("0.0.0.0", serve, (), allow_insecure=False)
    assert getattr(info.value, "exit_code", None) == 2
    check_bind("0.0.0.0", serve, (), allow_insecure=True)
    check_bind("0.0.0.0", serve, ("k",), allow_insecure=False)
    check_bind("0.0.0.0", ServeConfig(allow_insecure_bind=True), (), allow_insecure=False)


# --- model detection -------------------------------------------------------------------------


def manifest(**serve: Any) -> Any:
    prof = SimpleNamespace
    return SimpleNamespace(
        profiles={
            "Qwen": prof(aliases=["qwen-coder", "QC"], description="q", ttl=None),
            "qc": prof(aliases=[], description=None, ttl=60.0),
            "llama": prof(aliases=["Llama3"], description=None, ttl=None),
        },
        serve=ServeConfig.model_validate(serve),
    )


def test_detection_exact_then_case_insensitive() -> None:
    m = manifest()
    index = ModelIndex(m)
    ups = Upstreams.from_serve(m.serve, environ={})

    def d(model: object, running: str | None = None, default: str | None = None) -> Any:
        return detect(index, ups, model, running=running, default=default)

    assert d("Qwen").profile == "Qwen"
    assert d("qwen").profile == "Qwen"
    assert d("QWEN-CODER").profile == "Qwen"
    assert d("qc").profile == "qc"  # a profile name wins over another profile's alias
    assert d("QC").profile == "Qwen"  # exact alias before case-insensitive name
    assert d("llama3").profile == "llama"
    assert d(None, running="llama").profile == "llama"
    assert d("", running="llama").profile == "llama"
    assert d(None, default="qwen-coder").profile == "Qwen"
    assert d(None, running="qc", default="Qwen").profile == "qc"
    with pytest.raises(RouterError) as info:
        d("gpt-4")
    assert info.value.status == 404 and info.value.code == "model_not_found"
    assert info.value.body()["error"]["available"] == [
        "Qwen",
        "qc",
        "llama",
        "qwen-coder",
        "QC",
        "Llama3",
    ]
    with pytest.raises(RouterError) as info:
        d(None)
    assert info.value.status == 400 and info.value.code == "model_required"
    with pytest.raises(RouterError) as info:
        d(["x"])
    assert info.value.status == 400 and info.value.param == "model"


def test_upstream_chain_and_models() -> None:
    serve = {
        "upstreams": [
            {
                "name": "remote",
                "url": "https://user:pw@api.example.com/v1?x=1",
                "models": ["gpt-4o"],
                "api_key_env": "K",
                "model_map": {"llama": "meta-llama"},
            },
            {"name": "local", "type": "managed"},
            {"name": "any", "url": "http://10.0.0.2:8080", "models": ["*"]},
        ]
    }
    m = manifest(**serve)
    ups = Upstreams.from_serve(m.serve, environ={"K": "secret"})
    assert [u.name for u in ups.all] == ["remote", "local", "any"]
    assert ups.all[0].url == "https://user:pw@api.example.com"
    assert (
        ups.all[0].url_for("/v1/chat/completions")
        == "https://user:pw@api.example.com/v1/chat/completions?x=1"
    )
    assert (
        ups.all[0].url_for("/v1/models?a=b") == "https://user:pw@api.example.com/v1/models?a=b&x=1"
    )
    assert ups.all[2].url_for("/v1/embeddings") == "http://10.0.0.2:8080/v1/embeddings"
    assert [u.name for u in ups.chain("llama", "Llama3", ["Llama3"])] == ["remote", "local", "any"]
    assert [u.name for u in ups.chain("Qwen", "Qwen", ["qwen-coder"])] == ["local", "any"]
    assert [u.name for u in ups.chain(None, "gpt-4o")] == ["remote", "any"]
    assert ups.find_explicit("GPT-4O") and not ups.find_explicit("other")
    assert ups.all[0].upstream_model(["Llama3", "llama"]) == "meta-llama"
    pub = ups.all[0].public()
    assert pub["url"] == "https://api.example.com" and pub["api_key_set"] is True
    assert "secret" not in json.dumps(pub) and "pw" not in json.dumps(pub)
    assert public_url(None) is None
    # no managed entry listed: the managed server is put first
    only_remote = Upstreams.from_serve(manifest(upstreams=[serve["upstreams"][0]]).serve)
    assert [u.name for u in only_remote.all] == ["local", "remote"]
    # breakers survive a reload by name
    again = Upstreams.from_serve(m.serve, previous=ups)
    assert again.all[0].breaker is ups.all[0].breaker


def test_the_router_reads_the_serve_section_and_its_keys() -> None:
    """No restated defaults: the router's values are the validated manifest's."""
    from llmctl.router.auth import serve_keys

    serve = ServeConfig()
    assert serve_keys(serve, {}) == ()
    assert [u.kind for u in Upstreams.from_serve(serve, environ={}).all] == ["managed"]
    serve = manifest(api_keys=["sk-m"], queue={"max_size": 3}, breaker={"failures": 2}).serve
    assert serve_keys(serve, {"LLMCTL_API_KEYS": "sk-e"}) == ("sk-m", "sk-e")
    local = Upstreams.from_serve(serve, environ={}).all[0]
    assert local.breaker.threshold == 2
    # an entry without a url is the managed server, whatever its type says
    named = manifest(upstreams=[{"name": "gpu"}]).serve
    assert [(u.name, u.kind) for u in Upstreams.from_serve(named, environ={}).all] == [
        ("gpu", "managed")
    ]


# --- metrics and SSE ---------------------------------------------------------------------------


def test_metrics_text_format() -> None:
    m = Metrics()
    m.count_request("a", "local", 200)
    m.count_request("a", "local", 200)
    m.count_request(None, 'we"ird', 502)
    m.observe_switch("b", True, 0.3)
    m.observe_switch("b", False, 700)
    m.count_fallback("gpu", "connect")
    m.count_rejected("too_large")
    text = m.render(
        queue_depth=2,
        inflight=1,
        loaded="b",
        breakers={"local": 0, "gpu": 2},
        breaker_opens={"gpu": 1},
    )
    lines = text.splitlines()
    assert 'llmctl_requests_total{profile="a",upstream="local",status="200"} 2' in lines
    assert 'llmctl_requests_total{profile="",upstream="we\\"ird",status="502"} 1' in lines
    assert 'llmctl_switch_duration_seconds_bucket{profile="b",result="ok",le="0.25"} 0' in lines
    assert 'llmctl_switch_duration_seconds_bucket{profile="b",result="ok",le="0.5"} 1' in lines
    assert 'llmctl_switch_duration_seconds_bucket{profile="b",result="error",le="600"} 0' in lines
    assert 'llmctl_switch_duration_seconds_bucket{profile="b",result="error",le="+Inf"} 1' in lines
    assert "llmctl_queue_depth 2" in lines and "llmctl_inflight_requests 1" in lines
    assert 'llmctl_breaker_state{upstream="gpu"} 2' in lines
    assert 'llmctl_fallbacks_total{upstream="gpu",reason="connect"} 1' in lines
    assert 'llmctl_rejected_total{reason="too_large"} 1' in lines
    for line in lines:
        if not line.startswith("#"):
            _, value = line.rsplit(" ", 1)
            float(value)


def test_sse_framing() -> None:
    assert sse.comment("loading x") == b": loading x\n\n"
    assert sse.comment("a\nb") == b": a\n: b\n\n"
    assert sse.event({"a": 1}, name="ready") == b'event: ready\ndata: {"a":1}\n\n'
    err = RouterError(502, "bad", type="server_error", code="upstream_error")
    framed = sse.error_event(err)
    assert (
        framed.startswith(b"data: ") and json.loads(framed[6:])["error"]["code"] == "upstream_error"
    )
    assert err.body() == {
        "error": {"message": "bad", "type": "server_error", "param": None, "code": "upstream_error"}
    }
    assert RouterError(429, "x", retry_after=0.2).headers() == {"Retry-After": "1"}
    assert RouterError(429, "x", retry_after=7.5).headers() == {"Retry-After": "8"}


# --- the scheduler -----------------------------------------------------------------------------


class FakeSwitch:
    """Records switches; each takes `delay` seconds; targets in `fail` raise SwitchFailed."""

    def __init__(self, delay: float = 0.01) -> None:
        self.delay = delay
        self.calls: list[str | None] = []
        self.fail: set[str | None] = set()  # None: the stop fails
        self.gate: asyncio.Event | None = None

    async def __call__(self, target: str | None, progress: ProgressFn) -> None:
        self.calls.append(target)
        progress(Progress("starting", f"starting {target}", target))
        if self.gate is not None:
            await self.gate.wait()
        await asyncio.sleep(self.delay)
        if target in self.fail:
            raise SwitchFailed(f"{target} is broken", details={"exit_code": 1})
        progress(Progress("ready", "ready", target))


def run(coro_fn: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(coro_fn())  # type: ignore[arg-type]


def test_running_profile_proceeds_concurrently() -> None:
    async def main() -> None:
        sw = FakeSwitch()
        s = switching(sw, active="a")
        leases = [await s.acquire("a") for _ in range(5)]
        assert s.inflight == 5 and sw.calls == [] and not s.would_wait("a") and s.would_wait("b")
        for lease in leases:
            lease.release()
            lease.release()  # idempotent
        assert s.inflight == 0

    run(main)


def test_fifo_grouping_and_join() -> None:
    async def main() -> None:
        sw = FakeSwitch(delay=0.05)
        s = switching(sw, active="a")
        order: list[str] = []

        async def req(p: str) -> None:
            lease = await s.acquire(p)
            order.append(f"{p}:{s.active}")
            await asyncio.sleep(0.01)
            lease.release()

        tasks = [asyncio.ensure_future(req(p)) for p in ["b", "c", "b", "a", "c"]]
        await asyncio.sleep(0.02)
        tasks.append(asyncio.ensure_future(req("b")))  # joins the load of b in progress
        await asyncio.gather(*tasks)
        # b first (all three b's together), then c (both), then a
        assert sw.calls == ["b", "c", "a"]
        assert order == ["b:b", "b:b", "b:b", "c:c", "c:c", "a:a"]

    run(main)


def test_switch_waits_for_inflight_then_proceeds() -> None:
    async def main() -> None:
        sw = FakeSwitch()
        s = switching(sw, active="a", inflight_timeout=5)
        held = await s.acquire("a")
        waiter = asyncio.ensure_future(s.acquire("b"))
        await asyncio.sleep(0.05)
        assert sw.calls == [] and s.switching  # waiting for the in-flight request
        # a new request for a queues behind b: a busy profile cannot starve others
        late = asyncio.ensure_future(s.acquire("a"))
        await asyncio.sleep(0.01)
        assert not late.done()
        held.release()
        lease_b = await waiter
        assert sw.calls == ["b"] and s.active == "b"
        lease_b.release()
        (await late).release()
        assert sw.calls == ["b", "a"]

    run(main)


def test_inflight_timeout_bounds_the_drain() -> None:
    async def main() -> None:
        sw = FakeSwitch()
        s = switching(sw, active="a", inflight_timeout=0.05)
        held = await s.acquire("a")
        lease = await asyncio.wait_for(s.acquire("b"), 2)
        assert s.active == "b" and s.inflight == 1
        held.release()  # an old lease from before the switch does not count against b
        assert s.inflight == 1
        lease.release()
        assert s.inflight == 0

    run(main)


def test_full_queue_and_deadline() -> None:
    async def main() -> None:
        sw = FakeSwitch()
        sw.gate = asyncio.Event()
        s = switching(sw, active="a", max_size=2, timeout=0.1)
        w1 = asyncio.ensure_future(s.acquire("b"))
        w2 = asyncio.ensure_future(s.acquire("c"))
        await asyncio.sleep(0.01)
        assert s.depth == 2
        with pytest.raises(RouterError) as info:
            await s.acquire("a")
        assert info.value.status == 429 and info.value.code == "queue_full"
        with pytest.raises(RouterError):
            s.check_room()
        for w in (w1, w2):
            with pytest.raises(RouterError) as info:
                await w
            assert info.value.status == 504 and info.value.code == "queue_timeout"
            assert info.value.headers()["Retry-After"] == "1"
        assert s.depth == 0
        sw.gate.set()
        await asyncio.sleep(0.05)
        # nobody waits for b any more: the load that was in progress still completes
        assert sw.calls == ["b"]
        await s.aclose()

    run(main)


def test_failed_load_fails_every_waiter_then_recovers() -> None:
    async def main() -> None:
        sw = FakeSwitch(delay=0.02)
        sw.fail.add("b")
        s = switching(sw, active="a")
        seen: list[str] = []
        results = await asyncio.gather(
            *(s.acquire("b", on_progress=lambda p: seen.append(p.kind)) for _ in range(3)),
            return_exceptions=True,
        )
        assert all(isinstance(r, RouterError) and r.status == 503 for r in results)
        err = results[0]
        assert isinstance(err, RouterError)
        assert "b is broken" in err.message and err.body()["error"]["exit_code"] == 1
        assert sw.calls == ["b"] and s.active is None
        assert seen.count("queued") == 3 and seen.count("error") == 3
        (await s.acquire("a")).release()
        assert sw.calls == ["b", "a"]

    run(main)


def test_a_failed_stop_fails_its_waiters_with_retry_after() -> None:
    async def main() -> None:
        sw = FakeSwitch()
        sw.fail.add(None)
        s = switching(sw, active="a")
        with pytest.raises(RouterError) as info:
            await s.stop()
        err = info.value
        assert err.status == 503 and err.body()["error"]["code"] == "stop_failed"
        assert err.message == "Stopping the server failed: None is broken"
        assert err.retry_after is not None and err.retry_after >= 1

    run(main)


def test_unexpected_switch_exception_is_a_503() -> None:
    async def main() -> None:
        async def broken(target: str | None, progress: ProgressFn) -> None:
            raise RuntimeError("bug")

        s = switching(broken, active=None)
        with pytest.raises(RouterError) as info:
            await s.acquire("a")
        assert info.value.status == 503 and "RuntimeError: bug" in info.value.message

    run(main)


def test_cancelled_waiter_leaves_the_queue() -> None:
    async def main() -> None:
        sw = FakeSwitch()
        sw.gate = asyncio.Event()
        s = switching(sw, active="a")
        w = asyncio.ensure_future(s.acquire("b"))
        await asyncio.sleep(0.01)
        assert s.depth == 1
        w.cancel()
        with pytest.raises(asyncio.CancelledError):
            await w
        assert s.depth == 0
        sw.gate.set()
        await asyncio.sleep(0.05)
        assert s.inflight == 0
        await s.aclose()

    run(main)


def test_stop_idle_unload_observe_and_close() -> None:
    async def main() -> None:
        clock = Clock()
        sw = FakeSwitch()
        s = switching(sw, active="a", clock=clock)
        lease = await s.acquire("a")
        assert s.idle_seconds() is None  # busy
        lease.release()
        clock.now += 5
        assert s.idle_seconds() == 5
        assert not await s.unload_if_idle(None)
        assert not await s.unload_if_idle(10)
        clock.now += 6
        assert await s.unload_if_idle(10)
        assert sw.calls == [None] and s.active is None
        # something else changed what runs (a shell switch): adopt it when idle
        gen = s.generation
        s.observe("c", gen)
        assert s.active == "c"
        s.observe("a", gen)  # stale observation (generation moved): ignored
        assert s.active == "c"
        blocked = asyncio.ensure_future(s.acquire("b"))
        sw.gate = asyncio.Event()
        await asyncio.sleep(0.01)
        await s.aclose()
        with pytest.raises(RouterError) as info:
            await blocked
        assert info.value.status == 503 and info.value.code == "shutting_down"
        with pytest.raises(RouterError):
            await s.acquire("c")

    run(main)


def test_waiters_that_join_a_load_go_through_when_its_first_waiter_left() -> None:
    async def main() -> None:
        sw = FakeSwitch()
        sw.gate = asyncio.Event()
        s = switching(sw, active="a")
        first = asyncio.ensure_future(s.acquire("b"))
        while sw.calls != ["b"]:  # the switch to b is under way, held by the gate
            await asyncio.sleep(0)
        other = asyncio.ensure_future(s.acquire("c"))
        joined = asyncio.ensure_future(s.acquire("b"))
        await asyncio.sleep(0)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        sw.gate.set()
        # c is at the head now, yet b's other waiter goes through as soon as b is ready
        lease = await joined
        assert lease.profile == "b" and sw.calls == ["b"] and s.active == "b"
        lease.release()
        (await other).release()
        assert sw.calls == ["b", "c"]

    run(main)


def test_stop_of_nothing_and_an_unload_of_a_replaced_profile_are_no_ops() -> None:
    async def main() -> None:
        sw = FakeSwitch()
        done: list[tuple[str | None, bool]] = []
        s = switching(sw, active=None)
        s.on_switch_done = lambda target, ok, seconds: done.append((target, ok))
        await s.stop()
        assert sw.calls == [] and done == []
        (await s.acquire("a")).release()
        sw.gate = asyncio.Event()
        loading = asyncio.ensure_future(s.acquire("b"))
        # `POST /models/stop {"profile": "a"}` in turn after the switch: a is gone by then
        unload = asyncio.ensure_future(s.unload("a"))
        while sw.calls != ["a", "b"]:
            await asyncio.sleep(0)
        sw.gate.set()
        (await loading).release()
        await unload
        assert sw.calls == ["a", "b"] and s.active == "b"
        await s.stop()  # a stop is a switch to nothing, timed like one
        assert sw.calls == ["a", "b", None] and done == [("a", True), ("b", True), (None, True)]
        assert s.active is None and s.last_switch_s is not None

    run(main)


def test_unknown_model_name_is_echoed_truncated() -> None:
    from llmctl.router.errors import model_not_found

    err = model_not_found("x" * (10 * 1024 * 1024), ["a"])
    message = err.body()["error"]["message"]
    assert len(message) < 400 and "x" * 200 + "\u2026" in message
    assert "'short'" in model_not_found("short", ["a"]).body()["error"]["message"]


def test_unsafe_path_rules() -> None:
    from llmctl.router.safepath import unsafe_path

    for ok in (
        b"/v1/chat/completions",
        b"/health",
        b"/v1/models/a%3Ab",
        b"/v1/x%20y",
        b"/",
        b"/v1/a;b",
    ):
        assert unsafe_path(ok) is None, ok
    for bad in (
        b"/v1/../x",
        b"/v1/%2e%2e/x",
        b"/v1/%252e%252e/x",
        b"/v1/a%2fb",
        b"/v1/a\\b",
        b"/v1/a%5cb",
        b"/v1/./x",
        b"/v1/x/..",
        b"/v1/a%00b",
        b"/v1/%25252e%25252e/x",
        b"/v1/..;/x",
        b"/v1/..;jsessionid=1/x",
        b"/v1/.;x/y",
        b"/v1/%2e%2e%3b/x",
    ):
        assert unsafe_path(bad) is not None, bad


@settings(max_examples=2000, deadline=None)
@given(
    st.lists(
        st.sampled_from([b"/", b".", b"..", b";", b"%", b"2e", b"2f", b"5c", b"\\", b"\x00", b"a"]),
        max_size=12,
    )
)
def test_unsafe_path_screen_lets_through_only_what_the_full_check_allows(
    parts: list[bytes],
) -> None:
    """The screen that spares most paths the full check never passes one the check refuses."""
    from llmctl.router import safepath

    path = b"".join(parts)
    if safepath._SUSPECT.search(path) is None:
        assert safepath._why(path) is None, path


def test_relay_records_the_answer_before_its_end_goes_out() -> None:
    """A client that has read the whole answer finds it recorded, token counts included, even
    when the usage came in the first chunk and the rest was only `data: [DONE]`."""
    from llmctl.router.activity import usage_from
    from llmctl.router.relay import RelayResponse, Reply

    usage = b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3}}\n\n'

    async def rest() -> Any:
        yield b"data: [DONE]\n\n"

    async def close() -> None:
        return None

    async def main() -> None:
        headers = [(b"content-type", b"text/event-stream")]
        reply = Reply("local", 200, headers, usage, rest(), close)
        seen: list[tuple[str, dict[str, int]]] = []
        sent: list[dict[str, Any]] = []

        def on_done(outcome: Any, r: Reply | None, error: RouterError | None) -> None:
            assert r is not None
            seen.append((outcome, usage_from(r.tail)))
            assert not any(m.get("more_body") is False for m in sent)  # the end is still to go

        async def receive() -> dict[str, Any]:
            await asyncio.Event().wait()  # the client never disconnects
            return {}

        async def send(message: Any) -> None:
            sent.append(message)

        await RelayResponse(reply, on_done)({"type": "http"}, receive, send)
        assert seen == [("ok", {"prompt_tokens": 7, "completion_tokens": 3})]
        assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}

    run(main)


def test_a_load_cut_by_another_llmctl_is_loaded_again() -> None:
    """An operator's stop from a shell cancels the router's load: the router waits for that
    change to end and loads again, so the requests that wait for the profile are not failed."""
    import threading

    from llmctl.errors import LoadCancelled, OperatorStopped
    from llmctl.router.backends import SwitchingBackend as Router

    results = [
        SimpleNamespace(error=LoadCancelled("cancelled by `llmctl stop`", retry=True)),
        SimpleNamespace(error=None),
    ]
    waits: list[float] = []

    def wait_for_change(timeout: float) -> bool:
        waits.append(timeout)
        return True

    fake = SimpleNamespace(
        supervisor=SimpleNamespace(wait_for_change=wait_for_change),
        scheduler=SimpleNamespace(timeout=30.0),
    )

    async def main() -> None:
        out = await Router._carry_out(
            fake,  # type: ignore[arg-type]
            lambda: results.pop(0),
            threading.Event(),
            lambda r: r.error,
        )
        assert out.error is None and waits == [30.0] and results == []
        # cancelled by the caller itself, or failed: no second load
        mine = SimpleNamespace(error=LoadCancelled("cancelled"))
        out = await Router._carry_out(fake, lambda: mine, threading.Event(), lambda r: r.error)  # type: ignore[arg-type]
        assert out is mine and waits == [30.0]
        # a stop from a shell after the request: the supervisor says no retry, none is made
        stopped = SimpleNamespace(error=OperatorStopped("stopped from a shell", stopped_at=1.0))
        out = await Router._carry_out(fake, lambda: stopped, threading.Event(), lambda r: r.error)  # type: ignore[arg-type]
        assert out is stopped and waits == [30.0] and not stopped.error.retry

    run(main)


def test_servers_metrics_get_the_profile_label() -> None:
    from llmctl.router.metrics import with_profile_label

    a = (
        "# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.\n"
        "# TYPE llamacpp:prompt_tokens_total counter\n"
        "llamacpp:prompt_tokens_total 12\n"
        'llamacpp:requests{slot="0"} 1\n'
        "llamacpp:empty{} 3\n"
    )
    b = "# TYPE llamacpp:prompt_tokens_total counter\nllamacpp:prompt_tokens_total 5\n"
    text = with_profile_label([("a", a), ('b"x', b)])
    assert text.splitlines() == [
        "# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.",
        "# TYPE llamacpp:prompt_tokens_total counter",
        'llamacpp:prompt_tokens_total{profile="a"} 12',
        'llamacpp:requests{profile="a",slot="0"} 1',
        'llamacpp:empty{profile="a"} 3',
        'llamacpp:prompt_tokens_total{profile="b\\"x"} 5',
    ]
    assert with_profile_label([]) == ""


def test_the_routers_socket_gets_tcp_nodelay() -> None:
    """asyncio sets TCP_NODELAY only on sockets whose proto says TCP; without it every keep-alive
    response written in two parts (headers, body) waits out the client's delayed ACK (~40 ms)."""
    import socket

    from llmctl.router.server import bind_socket

    async def main() -> None:
        sock = bind_socket("127.0.0.1", 0)
        seen: list[int] = []

        def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            conn = writer.get_extra_info("socket")
            seen.append(conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(on_connect, sock=sock)
        async with server:
            _, writer = await asyncio.open_connection(*sock.getsockname())
            while not seen:
                await asyncio.sleep(0.01)
            writer.close()
        assert seen == [1]

    run(main)


def test_the_load_header_names_the_profile_the_wait_and_the_stage() -> None:
    from llmctl.router.relay import load_header

    assert load_header("tiny-b", 5.214, "ready") == b"profile=tiny-b; waited=5.21; stage=ready"
    # a name that is no token is quoted, so the header stays parseable
    assert load_header('my "b"; x', 1, "starting") == (
        b'profile="my \\"b\\"; x"; waited=1.00; stage=starting'
    )


def test_a_waiting_stream_names_the_load_in_its_header() -> None:
    """A stream that starts while its load goes on says the stage then in X-Llmctl-Load, and
    the reply's own account (stage=ready) in its `: upstream` comment; one answered before any
    step went out carries the reply's header, or none when the reply has none."""
    from llmctl.router.relay import LOAD_HEADER_B, Reply, WaitingStreamResponse

    async def rest() -> Any:
        yield b"data: [DONE]\n\n"

    async def close() -> None:
        return None

    def reply(load: bytes | None) -> Reply:
        r = Reply("local", 200, [(b"content-type", b"text/event-stream")], b"", rest(), close)
        if load is not None:
            r.extra_headers.append((LOAD_HEADER_B, load))
        r.extra_headers.append((b"x-llmctl-profile", b"b"))
        return r

    async def respond(steps: list[str], load: bytes | None) -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []

        async def opener(progress: Callable[[Progress], None]) -> Reply:
            for kind in steps:
                progress(Progress(kind, f"{kind} b", "b"))
            return reply(load)

        async def receive() -> dict[str, Any]:
            await asyncio.Event().wait()  # the client never disconnects
            return {}

        async def send(message: Any) -> None:
            sent.append(message)

        waiting = WaitingStreamResponse(opener, lambda *a: None, profile="b")
        await waiting({"type": "http"}, receive, send)
        return sent

    async def main() -> None:
        final = b"profile=b; waited=3.00; stage=ready"
        sent = await respond(["queued", "starting"], final)
        header = dict(sent[0]["headers"])[LOAD_HEADER_B].decode()
        assert header.startswith("profile=b; waited=") and header.endswith("; stage=starting")
        body = b"".join(m.get("body", b"") for m in sent[1:])
        assert b": upstream local x-llmctl-load=" + final + b" x-llmctl-profile=b" in body
        sent = await respond(["queued"], final)
        assert dict(sent[0]["headers"])[LOAD_HEADER_B] == final
        sent = await respond(["queued"], None)
        assert LOAD_HEADER_B not in dict(sent[0]["headers"])

    run(main)
