"""llama-server's own memory plan: the event read, bounded probes, the formula set beside it.

The real llama-server (pinned build) for the event and the agreement with what it then
allocates; a FAKE server (tests/fakes/fake_engine_server.py) for what a real one does not do on
demand: no --log-jsonl, garbage, a hang, a crash, a flood, a server that ignores SIGTERM.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmctl.llama.engineplan import MAX_LINE, PlanFormatError, TextTable, parse_line, probe
from llmctl.llama.gguf import read_gguf
from llmctl.memory.engine import TermDiff, best_figure, compare, warnings
from llmctl.memory.estimate import ModelSource, estimate
from llmctl.memory.options import LaunchOptions
from llmctl.memory.profile import binary_rules
from llmctl.testing.testmodels import write_tiny_model

FAKE = Path(__file__).resolve().parents[1] / "fakes" / "fake_engine_server.py"
MiB = 1024**2


def _event(rows: object, unit: str = "MiB") -> str:
    return json.dumps({"type": "fit_memory_breakdown", "data": {"unit": unit, "rows": rows}})


def test_the_event_is_read_in_bytes_and_other_lines_are_not_plans() -> None:
    plan = parse_line(
        _event(
            [
                {
                    "kind": "device",
                    "name": "CUDA0",
                    "total": 24576,
                    "free": 23000,
                    "model": 1000,
                    "context": 200,
                    "compute": 100,
                },
                {"kind": "host", "name": "Host", "model": 50, "context": 0, "compute": 10},
                {"kind": "buffer_type", "name": "AMX", "model": 3},
            ]
        )
    )
    assert plan is not None and plan.resolution == MiB
    cuda = plan.row("CUDA0")
    assert cuda is not None and (cuda.model, cuda.total) == (1000 * MiB, 24576 * MiB)
    # a buffer type is a row of its own, neither the host's nor a device's (llama.cpp counts host
    # buffers such as CUDA_Host in Host): the CPU's extra ones, AMX or CPU_REPACK, in RAM
    assert [r.name for r in plan.memory_rows()] == ["CUDA0", "Host", "AMX"]
    assert [plan.on_host(r) for r in plan.memory_rows()] == [False, True, True]
    assert parse_line('{"type":"log","msg":"fit_memory_breakdown is a word here"}') is None
    assert parse_line("not json at all fit_memory_breakdown") is None
    assert parse_line("x" * (MAX_LINE + 1)) is None
    again = parse_line(json.dumps({"type": "fit_memory_breakdown", "data": plan.to_json()}))
    assert again is None or again.rows  # its own JSON form is not the engine's


@pytest.mark.parametrize(
    "line",
    [
        _event([{"kind": "host", "name": "Host", "model": 1}], unit="furlongs"),
        _event(["not a row"]),
        _event([]),
        _event([{"kind": "host", "name": "Host", "model": "12"}]),
        _event([{"kind": "host", "name": "Host", "model": -1}]),
        json.dumps({"type": "fit_memory_breakdown", "data": None}),
    ],
)
def test_a_malformed_event_is_refused_with_a_reason(line: str) -> None:
    with pytest.raises(PlanFormatError):
        parse_line(line)


def test_best_figure_prefers_measured_then_engine_then_formula() -> None:
    assert best_figure(100, 120, 130) == (130, "measured")
    assert best_figure(100, 120) == (120, "engine plan")
    assert best_figure(100) == (100, "formula")


def test_a_difference_beyond_ten_percent_and_the_rounding_is_a_warning_naming_term_and_build() -> (
    None
):
    small = TermDiff("compute", 9 * MiB, 8 * MiB, MiB)  # within the engine's MiB rounding
    assert not small.off
    low = TermDiff("compute", 100 * MiB, 200 * MiB, MiB)
    assert low.off
    (line,) = warnings([small, low], "b9093")
    assert "compute" in line and "lower" in line and "50%" in line and "b9093" in line


def _fake(mode: str, tmp: Path, **kw: object) -> tuple[object, int | None]:
    pidfile = tmp / f"{mode}.pid"
    env = {**os.environ, "FAKE_ENGINE_MODE": mode, "FAKE_ENGINE_PIDFILE": str(pidfile)}
    outcome = probe([sys.executable, str(FAKE)], env=env, **kw)  # type: ignore[arg-type]
    pid = int(pidfile.read_text()) if pidfile.exists() else None
    return outcome, pid


def _fake_binary(tmp: Path, mode: str, name: str | None = None) -> Path:
    """An executable that runs the FAKE server in `mode`, as a configured llama-server would."""
    path = tmp / (name or f"{mode}-llama-server")
    path.write_text(f'#!/bin/sh\nFAKE_ENGINE_MODE={mode} exec {sys.executable} {FAKE} "$@"\n')
    path.chmod(0o755)
    return path


def _gone(pid: int | None) -> bool:
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_probe_of_a_fake_reads_the_plan_and_stops_it(tmp_path: Path) -> None:
    outcome, pid = _fake("plan", tmp_path)
    assert outcome.plan is not None and outcome.reason is None  # type: ignore[attr-defined]
    assert _gone(pid)


@pytest.mark.parametrize(
    ("mode", "says"),
    [
        ("garbage", "cannot be read"),
        ("unit", "unknown unit"),
        ("crash", "exited with 3"),
        ("hang", "within the time limit"),
        ("loaded", "without stating its plan first"),
        ("flood", "without a memory plan"),
    ],
)
def test_every_bad_probe_falls_back_with_a_reason_and_leaves_nothing(
    tmp_path: Path, mode: str, says: str
) -> None:
    outcome, pid = _fake(mode, tmp_path, timeout=2.0, max_output=4 * MiB)
    assert outcome.plan is None  # type: ignore[attr-defined]
    assert says in outcome.reason  # type: ignore[attr-defined]
    assert _gone(pid)


def test_a_huge_line_is_skipped_and_the_plan_after_it_read(tmp_path: Path) -> None:
    outcome, pid = _fake("huge", tmp_path)
    assert outcome.plan is not None  # type: ignore[attr-defined]
    assert _gone(pid)


def test_a_probe_that_ignores_sigterm_is_killed(tmp_path: Path) -> None:
    outcome, pid = _fake("ignore-term", tmp_path, grace=0.2)
    assert outcome.plan is not None  # type: ignore[attr-defined]
    assert pid is not None and _gone(pid)


def test_a_binary_that_cannot_start_is_a_reason(tmp_path: Path) -> None:
    outcome = probe([str(tmp_path / "no-such-llama-server")])
    assert outcome.plan is None and outcome.reason is not None
    assert "cannot start" in outcome.reason


def test_the_text_table_of_an_older_build_is_the_same_plan() -> None:
    """b9093's common_memory_breakdown_print table (the fake's copy of its format): a device
    row, the host, a buffer type; the first line after it ends the table."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("fake_engine_server", FAKE)
    assert spec is not None and spec.loader is not None
    fake = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fake)
    table = TextTable()
    plans = [table.feed(line) for line in fake.TEXT_TABLE.splitlines()]
    assert plans[:-1] == [None] * (len(plans) - 1)
    plan = plans[-1]
    assert plan is not None and plan.resolution == MiB
    cuda, host = plan.row("CUDA0"), plan.row("Host")
    assert cuda is not None and host is not None
    assert (cuda.kind, cuda.model, cuda.context, cuda.compute) == (
        "device",
        1000 * MiB,
        200 * MiB,
        100 * MiB,
    )
    assert (cuda.total, cuda.free, cuda.self_bytes, cuda.unaccounted) == (
        24135 * MiB,
        22741 * MiB,
        1300 * MiB,
        94 * MiB,
    )
    assert (host.kind, host.model, host.compute) == ("host", 50 * MiB, 10 * MiB)
    assert [r.kind for r in plan.rows] == ["device", "host", "buffer_type"]
    # a negative unaccounted figure (the driver reports less than llama.cpp holds) is read
    neg = TextTable()
    neg.feed("common_memory_breakdown_print: | memory breakdown [MiB] | total free ...")
    neg.feed(
        "common_memory_breakdown_print: |   - CUDA0 (RTX 3090) | 24135 = 100 + (24100 = 24000 + 50 + 50) + -65 |"
    )
    got = neg.end()
    assert got is not None and got.rows[0].unaccounted == -65 * MiB
    # no header, no plan; a header with no rows, no plan
    assert TextTable().end() is None
    empty = TextTable()
    empty.feed("common_memory_breakdown_print: | memory breakdown [MiB] | total free")
    assert empty.feed("common_params_fit_impl: projected to use 0 MiB") is None


def test_probe_of_an_older_build_reads_its_text_table_and_stops_it(tmp_path: Path) -> None:
    outcome, pid = _fake("old", tmp_path, jsonl=False)
    plan = outcome.plan  # type: ignore[attr-defined]
    assert plan is not None and plan.row("CUDA0").model == 1000 * MiB
    assert _gone(pid)
    outcome, pid = _fake("old-nofit", tmp_path, jsonl=False)
    assert outcome.plan is None and "without stating its plan" in outcome.reason  # type: ignore[attr-defined]
    assert _gone(pid)


# The tiny model's feed-forward width (2 x n_embd by default) is narrower than any published
# model's (2.7 to 5.3 x): there ggml's allocator fits the FFN's tensors into holes the attention
# left, and the formula's compute, which counts them beside each other, is 1 MiB (12 %) high on
# every build. At 4 x n_embd, as published models have, the formula is exact on b11312 and
# b11434 alike; the tests comparing the formula with the engine use that width (REAL_WIDTH).
REAL_WIDTH = {"n_ff": 4 * 256}  # the tiny model's n_embd is 256


def test_the_real_engine_plan_equals_what_llama_server_then_allocates(
    tmp_path: Path, llama_server_bin: Path
) -> None:
    """The probe's figures are the ones the same command line then allocates (to the MiB the
    event states), and the formula is within the engine's rounding of them."""
    from llmctl.memory.calibration import measure, on_free_port
    from llmctl.memory.measured import parse_reported

    model = write_tiny_model(tmp_path / "tiny.gguf", **REAL_WIDTH)
    argv = [str(llama_server_bin), "-m", str(model), "-c", "8192", "-np", "2"]
    from llmctl.llama.binary import known_flags

    jsonl = "--log-jsonl" in (known_flags(str(llama_server_bin)) or ())  # else a text table
    outcome = probe(on_free_port(argv), jsonl=jsonl)
    assert outcome.plan is not None, outcome.reason
    assert outcome.seconds < 10
    plan = outcome.plan
    rows = [r for r in plan.memory_rows() if plan.on_host(r)]  # Host, and AMX or CPU_REPACK
    assert [r.name for r in rows][:1] == ["Host"]
    reported = parse_reported(measure(on_free_port(argv)))
    assert reported.loaded

    def planned(term: str) -> int:
        return sum(getattr(r, term) or 0 for r in rows)

    # llama-server's own buffer lines after the full load (MiB, two decimals); the event
    # states whole MiB, rounded down, per row
    slack = plan.resolution * len(rows) + 0.02 * MiB
    for term, allocated in (
        ("context", reported.total("kv")),  # the output buffer is not in the plan
        ("compute", reported.total("compute")),
    ):
        assert -0.02 * MiB <= allocated * MiB - planned(term) < slack, (term, allocated)
    weights = reported.total("model") * MiB
    if len(rows) == 1:
        assert -0.02 * MiB <= weights - planned("model") < slack, (planned("model"), weights)
    else:
        # a CPU with AMX: the dry run states the AMX buffer's weights but leaves out the mmapped
        # rest (0 MiB for 2.57 of a 6.48 MiB model, b11312 and b11434 alike); the placer then
        # takes the tensor table's figure, which is exact
        assert planned("model") <= weights + 0.02 * MiB
    est = estimate(
        ModelSource.from_gguf(read_gguf(model)),
        LaunchOptions(ctx_size=8192, parallel=2),
        gpu=False,
        rules=binary_rules(str(llama_server_bin)),  # the build's rules
    )
    for d in compare(est, outcome.plan):
        assert not d.off, d


def test_estimate_engine_on_the_cli_and_its_fallbacks(
    tmp_path: Path, llama_server_bin: Path
) -> None:
    model = write_tiny_model(tmp_path / "tiny.gguf", **REAL_WIDTH)
    manifest = tmp_path / "profiles.yaml"

    def run(binary: str, *args: str) -> subprocess.CompletedProcess[str]:
        manifest.write_text(
            f"version: 1\nserver:\n  binary: {binary}\nprofiles:\n"
            f"  tiny:\n    model: {model}\n    ctx_size: 4096\n"
        )
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "llmctl",
                "estimate",
                "tiny",
                "--engine",
                "--manifest",
                str(manifest),
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )

    out = run(str(llama_server_bin), "--json")
    assert out.returncode == 0, out.stderr
    engine = json.loads(out.stdout)[0]["engine"]
    assert engine["source"] == "engine plan" and engine["warnings"] == []
    assert {t["term"] for t in engine["terms"]} == {"model", "context", "compute"}
    text = run(str(llama_server_bin)).stdout
    assert "engine plan" in text and "Host" in text
    # a build without --log-jsonl (b9093): its plan is read from the text table it logs
    old = _fake_binary(tmp_path, "old")
    out = run(str(old), "--json")
    assert out.returncode == 0, out.stderr
    engine = json.loads(out.stdout)[0]["engine"]
    assert engine["source"] == "engine plan", engine
    # ...and one that prints no table (`--fit off`): the formula stands, and it says why
    nofit = _fake_binary(tmp_path, "old-nofit")
    out = run(str(nofit), "--json")
    assert out.returncode == 0, out.stderr
    engine = json.loads(out.stdout)[0]["engine"]
    assert engine["source"] == "formula" and "--log-jsonl" in engine["reason"], engine
    assert "no memory breakdown" in engine["reason"]
    # a command line for another machine is not probed here
    refused = subprocess.run(
        [sys.executable, "-m", "llmctl", "estimate", "--engine", "--", "-m", str(model)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert refused.returncode == 2 and "--engine" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_the_placer_decides_by_the_engine_plan_once_one_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A budget between the engine's figure and the formula's: refused by the formula alone,
    placed once the engine's plan of that very launch is known. The FAKE server states a plan
    of 16 MiB for a profile the formula puts at over 100 MiB."""
    from llmctl.manifest.validate import load_manifest
    from llmctl.placement.placer import command_spec, plan_load
    from llmctl.supervisor.probe import probe_profile

    model = write_tiny_model(tmp_path / "tiny.gguf")
    fake = _fake_binary(tmp_path, "host", name="llama-server")
    manifest = tmp_path / "profiles.yaml"
    manifest.write_text(
        f"version: 1\nserver:\n  binary: {fake}\n  ports: 18100-18101\n"
        "gpu:\n  - {name: CPU, vram: 40MiB, headroom: 0}\n"
        f"profiles:\n  big:\n    model: {model}\n    ctx_size: 65536\n    parallel: 1\n"
    )
    m = load_manifest(manifest)
    from llmctl.supervisor.devices import detect

    devices = detect(m.device_configs()).devices
    before, _ = plan_load(m, "big", {}, devices)
    assert before.action == "refuse" and "does not fit even alone" in before.reason
    res = probe_profile(m, "big", spec=command_spec(m, "big"))
    assert res.plan is not None, res.reason
    after, placed = plan_load(m, "big", {}, devices)
    assert after.action == "start", after.reason
    # each term rounded up to the next MiB, and the output buffer the plan does not state
    assert placed.estimate is not None
    assert after.usage["CPU"] == (10 + 4 + 2 + 3) * MiB + placed.estimate.output_bytes
    assert placed.specs[0].placement["memory_source"] == "engine plan"
    assert any("own plan" in n for n in placed.notes)


def test_on_a_cpu_with_amx_the_host_holds_the_amx_row_and_at_least_the_tensor_tables_weights(
    tmp_path: Path,
) -> None:
    """The plan b11312 states on a CPU with AMX for the tiny f16 model (-c 8192 -np 2): Host
    model 0 (the mmapped weights left out), AMX 3. The placer counts the AMX row on the host and
    never fewer host weights than the tensor table holds; the warning does not blame the formula."""
    from types import SimpleNamespace

    from llmctl.llama.engineplan import EnginePlan, PlanRow
    from llmctl.placement.placer import _engine_usage

    MiB_ = 1024**2
    plan = EnginePlan(
        (
            PlanRow("host", "Host", model=0, context=8 * MiB_, compute=12 * MiB_),
            PlanRow("buffer_type", "AMX", model=3 * MiB_, context=0, compute=0),
        )
    )
    model = write_tiny_model(tmp_path / "tiny.gguf", n_ff=1024)
    est = estimate(
        ModelSource.from_gguf(read_gguf(model)), LaunchOptions(ctx_size=8192, parallel=2), gpu=False
    )
    usage = _engine_usage(plan, SimpleNamespace(shares=[]), est)  # type: ignore[arg-type]
    assert usage is not None and list(usage) == ["CPU"]
    stated = (8 + 12 + 3) * MiB_ + 3 * MiB_  # each stated term rounded up to the next MiB
    assert usage["CPU"] == stated + est.output_bytes + (est.weights.cpu_bytes - 4 * MiB_)
    assert usage["CPU"] >= est.weights.cpu_bytes + est.kv_bytes + est.host_compute_bytes
    model_term = next(d for d in compare(est, plan) if d.term == "model")
    assert model_term.engine == 3 * MiB_ and not model_term.off
