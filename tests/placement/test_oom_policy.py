"""Out of memory at load as pure functions: llama.cpp's error lines read (llama/oom.py), and the
decision after one (placement.policy.after_oom): the need kept, the next victim, one retry."""

from __future__ import annotations

import pytest

from llmctl.llama.oom import out_of_memory
from llmctl.placement.policy import (
    OOM_MARGIN,
    Decision,
    Device,
    Option,
    Request,
    Running,
    after_oom,
    decide,
)

GiB = 1024**3
MiB = 1024**2
ONE = [Device("CUDA0", 24 * GiB, 0)]
TWO = [Device("CUDA0", 24 * GiB, 0), Device("CUDA1", 24 * GiB, 0)]


def start(request: Request, running: list[Running], devices: list[Device] = ONE) -> Decision:
    d = decide(devices, running, request)
    assert d.action == "start", d.reason
    return d


# lines as llama.cpp prints them (ggml-cuda.cu, ggml-alloc.c, ggml-cpu, llama-model.cpp), from
# users' logs of 2024-2026 builds
CUDA = [
    "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 45108.64 MiB on device 0: "
    "cudaMalloc failed: out of memory",
    "alloc_tensor_range: failed to allocate CUDA0 buffer of size 47299441664",
    "llama_model_load: error loading model: unable to allocate CUDA0 buffer",
]
COMPUTE = [
    "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 144.00 MiB on device 4: "
    "cudaMalloc failed: out of memory",
    "ggml_gallocr_reserve_n: failed to allocate CUDA4 buffer of size 150995968",
    "llama_new_context_with_model: failed to allocate compute buffers",
]
CPU = [
    "0.00.100.000 E ggml_backend_cpu_buffer_type_alloc_buffer: failed to allocate buffer of "
    "size 437944320",
    "0.00.100.000 E alloc_tensor_range: failed to allocate CPU buffer of size 437944320",
    "0.00.100.000 E llama_model_load: error loading model: unable to allocate CPU buffer",
]


@pytest.mark.parametrize(
    ("lines", "device", "size"),
    [
        (CUDA, "CUDA0", 47299441664),
        (COMPUTE, "CUDA4", 150995968),
        (CPU, "CPU", 437944320),
        (["llama_model_load: error loading model: unable to allocate CUDA_Host buffer"],
         "CUDA_Host", None),
        (["llama_kv_cache: failed to allocate buffer for kv cache"], None, None),
        (["CUDA error: out of memory", "  current device: 1"], None, None),
        (["ggml_metal_buffer_init: error: failed to allocate buffer, size = 1024.00 MiB"],
         None, None),
        (["llama_model_load: error loading model: unable to allocate backend buffer"], None, None),
    ],
)  # fmt: skip
def test_the_engines_out_of_memory_lines_are_read_with_device_and_size(
    lines: list[str], device: str | None, size: int | None
) -> None:
    oom = out_of_memory(lines)
    assert oom is not None
    assert (oom.device, oom.bytes) == (device, size)
    assert oom.line == lines[0].strip()


def test_other_failures_are_not_out_of_memory() -> None:
    assert out_of_memory(["llama_model_load: error loading model: tensor 'x' not found"]) is None
    assert out_of_memory(["main: exiting due to model loading error"]) is None
    assert out_of_memory([]) is None


def test_host_buffers_are_on_the_host() -> None:
    assert out_of_memory(CPU).on_host  # type: ignore[union-attr]
    assert out_of_memory(["unable to allocate CUDA_Host buffer"]).on_host  # type: ignore[union-attr]
    assert not out_of_memory(CUDA).on_host  # type: ignore[union-attr]


def test_the_next_victim_is_the_one_the_policy_would_choose_and_the_need_is_kept() -> None:
    running = [
        Running("old", {"CUDA0": 6 * GiB}, reload_cost=4 * GiB, last_used=1.0),
        Running("new", {"CUDA0": 6 * GiB}, reload_cost=4 * GiB, last_used=9.0),
        Running("dear", {"CUDA0": 4 * GiB}, reload_cost=8 * GiB, last_used=0.5),
    ]
    request = Request("big", [Option({"CUDA0": 8 * GiB})])
    failed = start(request, running)  # 16 of 24 GiB used: 8 fits, by the figures
    assert failed.evict == ()
    out = after_oom(ONE, running, request, failed, "CUDA0")
    assert out.retry and out.decision is not None
    assert out.floor == {"CUDA0": 8 * GiB + OOM_MARGIN}  # more than the 8 GiB that was free
    # the cheapest victim: the least reload cost, then the longest idle (never two)
    assert out.decision.evict == ("old",)
    assert "unloading 'old' and trying once more" in out.reason


def test_at_most_one_retry() -> None:
    running = [Running("a", {"CUDA0": 10 * GiB})]
    request = Request("big", [Option({"CUDA0": 8 * GiB})])
    failed = start(request, running)
    out = after_oom(ONE, running, request, failed, "CUDA0", attempts=2)
    assert not out.retry and "no further retry" in out.reason
    assert out.floor == {"CUDA0": 14 * GiB + OOM_MARGIN}  # the need is still kept


def test_no_retry_when_nothing_else_runs() -> None:
    request = Request("big", [Option({"CUDA0": 8 * GiB})])
    failed = start(request, [])
    out = after_oom(ONE, [], request, failed, "CUDA0")
    assert not out.retry and "with nothing else running there" in out.reason
    assert out.floor == {"CUDA0": 24 * GiB + OOM_MARGIN}  # next time: refused before a launch
    refused = decide(ONE, [], Request("big", [Option({"CUDA0": out.floor["CUDA0"]})]))
    assert refused.action == "refuse" and "even alone" in refused.reason


@pytest.mark.parametrize(
    ("kw", "why"),
    [
        ({"pinned": True}, "'a' is pinned"),
        ({"resident": True}, "'a' is within its min_residency"),
        ({"inflight": 2}, "'a' is serving requests"),
    ],
)
def test_no_retry_when_the_neighbour_may_not_go(kw: dict[str, object], why: str) -> None:
    running = [Running("a", {"CUDA0": 10 * GiB}, **kw)]  # type: ignore[arg-type]
    request = Request("big", [Option({"CUDA0": 8 * GiB})])
    failed = start(request, running)
    out = after_oom(ONE, running, request, failed, "CUDA0")
    assert not out.retry
    assert f"beside 'a'; no retry: {why}, so it stays" in out.reason
    assert out.floor == {"CUDA0": 14 * GiB + OOM_MARGIN}


def test_the_device_the_engine_names_is_the_one_whose_need_is_raised() -> None:
    running = [Running("a", {"CUDA0": 10 * GiB}), Running("b", {"CUDA1": 10 * GiB})]
    request = Request("split", [Option({"CUDA0": 8 * GiB, "CUDA1": 8 * GiB})])
    failed = start(request, running, TWO)
    out = after_oom(TWO, running, request, failed, "CUDA1")
    assert out.floor == {"CUDA1": 14 * GiB + OOM_MARGIN}
    assert out.decision is not None and out.decision.evict == ("b",)


def test_without_a_device_named_the_shared_devices_are_raised() -> None:
    running = [Running("a", {"CUDA0": 10 * GiB})]
    request = Request("split", [Option({"CUDA0": 8 * GiB, "CUDA1": 8 * GiB})])
    failed = start(request, running, TWO)
    out = after_oom(TWO, running, request, failed, None)
    assert out.floor == {"CUDA0": 14 * GiB + OOM_MARGIN}  # CUDA1 had nothing beside it


def test_another_way_to_run_may_be_the_retry() -> None:
    """With the need kept, the profile's other option (the other GPU, free) is the retry."""
    running = [Running("a", {"CUDA0": 10 * GiB}, pinned=True), Running("b", {"CUDA1": 20 * GiB})]
    request = Request("big", [Option({"CUDA0": 8 * GiB}), Option({"CUDA1": 8 * GiB})])
    failed = start(request, running, TWO)
    assert failed.option == 0
    out = after_oom(TWO, running, request, failed, "CUDA0")
    assert out.retry and out.decision is not None
    assert out.decision.option == 1 and out.decision.evict == ("b",)


def test_a_caller_that_drains_may_retry_beside_servers_in_flight_the_idle_first() -> None:
    """The router lets a victim's requests finish first: a server in flight may go, after the
    idle ones."""
    running = [
        Running("busy", {"CUDA0": 8 * GiB}, inflight=1, reload_cost=1),
        Running("idle", {"CUDA0": 8 * GiB}, reload_cost=9 * GiB),
    ]
    request = Request("big", [Option({"CUDA0": 8 * GiB})])
    failed = start(request, running)
    out = after_oom(ONE, running, request, failed, "CUDA0", drain=True)
    assert out.retry and out.decision is not None and out.decision.evict == ("idle",)
    only_busy = [running[0]]
    out = after_oom(ONE, only_busy, request, start(request, only_busy), "CUDA0", drain=True)
    assert out.retry and out.decision is not None and out.decision.busy == ("busy",)


def test_every_neighbour_that_may_not_go_is_named() -> None:
    running = [
        Running("a", {"CUDA0": 6 * GiB}, pinned=True),
        Running("b", {"CUDA0": 6 * GiB}, resident=True),
    ]
    request = Request("big", [Option({"CUDA0": 8 * GiB})])
    out = after_oom(ONE, running, request, start(request, running), "CUDA0")
    assert not out.retry
    assert out.reason.endswith(
        "beside 'a', 'b'; no retry: 'a' is pinned; 'b' is within its min_residency, so they stay"
    )


def test_a_reason_added_to_a_failed_load_keeps_the_error_whole() -> None:
    """placement/oom.with_reason (LlmctlError.with_message): same class, hint, exit code, exit
    status and log tail; the original error unchanged."""
    from llmctl.errors import EXIT_FAILED, LaunchError, OperatorStopped
    from llmctl.placement.oom import with_reason

    err = LaunchError("out of memory", "free a GPU", 5, exit_status=1, stderr_tail=["oom"])
    got = with_reason(err, "retried once")
    assert type(got) is LaunchError and str(got) == "out of memory; retried once"
    assert (got.hint, got.exit_code, got.exit_status, got.stderr_tail) == (
        "free a GPU",
        5,
        1,
        ["oom"],
    )
    assert got.args == ("out of memory; retried once",)
    assert err.message == "out of memory" and str(err) == "out of memory"
    stopped = with_reason(OperatorStopped("stopped", stopped_at=2.5), "by a shell")
    assert isinstance(stopped, OperatorStopped) and stopped.stopped_at == 2.5
    assert stopped.exit_code == EXIT_FAILED  # the class's own default
