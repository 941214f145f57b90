"""`llmctl estimate` and `llmctl fit`: option parsing and output; the work is in llmctl.memory/fit."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from llmctl.cli.app import app
from llmctl.cli.common import (
    JsonOpt,
    ManifestOpt,
    ProfileArg,
    console,
    handle_errors,
    load_manifest_cli,
    print_json,
)
from llmctl.errors import EXIT_FAILED, EXIT_OK, LlmctlError, UsageError

if TYPE_CHECKING:
    from llmctl.manifest.model import Manifest
    from llmctl.memory.calibration import Measurement
    from llmctl.memory.estimate import Estimate
    from llmctl.memory.fit import FitAdvice
    from llmctl.memory.plan import DevicePlan


def _b(n: int | None) -> str:
    from llmctl.manifest.sizes import format_bytes

    return "-" if n is None else format_bytes(n)


def _measured_json(est: Estimate, m: Measurement) -> dict[str, Any]:
    """The measured figures (MiB as printed) beside the formula's, and their differences."""
    from llmctl.memory.estimate import mib

    r = m.reported
    formula = {
        "model": mib(est.weights.bytes),
        "kv": mib(est.kv_bytes),
        "output": mib(est.output_bytes),
        "compute": mib(est.compute_bytes),
    }
    out: dict[str, Any] = {"build": m.build, "args": m.args, "buffers_mib": r.to_json()}
    diffs: dict[str, Any] = {}
    for part, value in formula.items():
        got = r.total(part)
        if part == "model":  # repacked copies (AMX, CPU_REPACK) are extra, not the weights
            got = round(sum(v for k, v in r.model.items() if not _repacked(k)), 2)
        if got:
            diffs[part] = {"measured_mib": got, "formula_mib": value, "error": value / got - 1}
    repacked = round(sum(v for k, v in r.model.items() if _repacked(k)), 2)
    if repacked:
        diffs["repacked"] = {"measured_mib": repacked, "formula_mib": 0.0, "error": -1.0}
    out["parts"] = diffs
    return out


def _repacked(buffer: str) -> bool:
    return "REPACK" in buffer or buffer == "AMX"


def _render_explain(est: Estimate, measured: dict[str, Any] | None) -> None:
    from rich.markup import escape

    out = console()
    c = est.compute
    if c is not None:
        out.print(
            f"  compute = masks {_b(c.masks)} + max(widest layer ({c.where}) {_b(c.layer)}"
            f" + recurrent states {_b(c.states)}, logits {_b(c.outputs)}) for {c.n_tokens} "
            "tokens (from the graph's shapes; checked on the CPU backend)"
        )
    out.print(
        f"  weights: GPU {_b(est.weights.gpu_bytes)}, host {_b(est.host_weights_bytes)}"
        f" (exact per tensor); KV {_b(est.kv_bytes)} (exact); output buffer "
        f"{_b(est.output_bytes)} (exact)"
    )
    if measured is None:
        out.print(
            "  [dim]no measurement for this model, these arguments and this llama-server build;"
            " `llmctl estimate PROFILE --measure` launches it once to measure[/]"
        )
        return
    out.print(f"  [bold]measured[/] (llama-server {escape(str(measured['build']))}):")
    for part, d in measured["parts"].items():
        out.print(
            f"    {part:8} measured {d['measured_mib']:10.2f} MiB   formula "
            f"{d['formula_mib']:10.2f} MiB   {d['error']:+.1%}"
        )


def _render_estimate(est: Estimate, ignored: list[str] | None = None) -> None:
    from rich.markup import escape
    from rich.table import Table

    out = console()
    title = est.profile or est.model
    exact = "KV rules exact" if est.exact else "KV approximate (generic rules)"
    out.print(f"[bold]{escape(title)}[/]  {escape(est.architecture)}, {exact}")
    if est.profile:
        out.print(f"  model: {escape(est.model)}")
    s = est.sizes
    streams = (
        f"{s.n_stream} streams" if s.n_stream > 1 else "unified" if s.kv_unified else "1 stream"
    )
    out.print(
        f"  context: n_ctx {s.n_ctx}, {s.n_ctx_seq} per sequence, {s.n_seq} slot(s), {streams}; "
        f"flash_attn {est.flash_attn}; ubatch {s.n_ubatch}"
    )
    table = Table(box=None, pad_edge=False, show_header=True, header_style="dim")
    for col in ("", "cells", "layers", "K / R", "V / S", "total"):
        table.add_column(col, justify="left" if not col else "right")
    for c in est.caches:
        table.add_row(
            f"KV {c.kind}",
            str(c.cells),
            str(c.layers),
            f"{_b(c.k_bytes)} {c.k_type}",
            f"{_b(c.v_bytes)} {c.v_type}",
            _b(c.bytes),
        )
    if not est.caches:
        table.add_row("KV cache", "-", "-", "-", "-", "none")
    w = est.weights
    table.add_row(
        "weights", "", "", f"GPU {_b(w.gpu_bytes)}", f"CPU {_b(w.cpu_bytes)}", _b(w.bytes)
    )
    if w.overridden_cpu_bytes:
        table.add_row("CPU by -ncmoe/-ot", "", "", "", "", _b(w.overridden_cpu_bytes))
    where = f" ({est.compute.where})" if est.compute else ""
    table.add_row(f"compute{where}", "", "", "", "", _b(est.compute_bytes))
    if est.mmproj is not None:
        m = est.mmproj
        table.add_row("mmproj", "", "", _b(m.weights_bytes), f"compute {_b(m.compute_bytes)}", "")
    if est.draft is not None:
        d = est.draft
        table.add_row("draft", "", "", f"GPU {_b(d.gpu_total_bytes)}", "", _b(d.host_total_bytes))
    if est.on_gpu:
        table.add_row("CUDA overhead", "", "", "", "", _b(est.overhead_bytes))
        table.add_row("[bold]GPU total[/]", "", "", "", "", f"[bold]{_b(est.gpu_total_bytes)}[/]")
    table.add_row(
        "[bold]host total[/]",
        "",
        "",
        f"weights {_b(est.host_weights_bytes)}",
        f"KV {_b(est.host_kv_bytes)}",
        f"[bold]{_b(est.host_total_bytes)}[/]",
    )
    out.print(table)
    if est.budget_bytes is not None:
        room = est.budget_bytes - est.gpu_total_bytes
        if not est.fits:
            verdict = f"[red]does not fit[/]: {_b(-room)} over"
        elif not est.within_headroom:
            verdict = f"[yellow]fits, inside the headroom[/]: {_b(room)} free"
        else:
            verdict = f"[green]fits[/]: {_b(room)} free"
        out.print(f"  budget {_b(est.budget_bytes)}: {verdict}")
    for note in est.notes:
        out.print(f"  [dim]note: {escape(note)}[/]")
    if ignored:
        out.print(f"  [dim]not taken into account: {escape(' '.join(ignored))}[/]")
    out.print()


def _estimate_argv(argv: list[str], json_out: bool) -> int:
    from llmctl.cli.fast import estimate_for_argv, estimate_json

    est, ignored = estimate_for_argv(argv)
    if json_out:
        sys.stdout.write(estimate_json(est, ignored))
        sys.stdout.flush()
    else:
        _render_estimate(est, ignored)
    return 0


def _device_plans(manifest: Manifest, name: str) -> list[DevicePlan]:
    """The profile's per-device plans, one per choice of devices (llmctl.memory.plan)."""
    from llmctl.supervisor.devices import detect
    from llmctl.supervisor.placer import placement_request

    try:
        report = detect(manifest.device_configs())
        return placement_request(manifest, name, report.devices).plans
    except LlmctlError:
        return []


def _render_plans(plans: list[DevicePlan]) -> None:
    from rich.markup import escape

    for plan in plans:
        parts = [
            f"{s.device} {_b(s.total_bytes)}"
            + (
                f" ({s.layers} layers{' + output' if s.output else ''})"
                if s.layers
                else " (output)"
                if s.output
                else ""
            )
            for s in plan.shares
            if s.total_bytes
        ]
        console().print(f"plan on {escape(plan.label)}: " + escape(", ".join(parts)))
        flags = plan.launch_args()
        if flags:  # nothing to pass when one device takes it all by llama-server's defaults
            console().print(f"  [dim]flags: {escape(' '.join(flags))}[/]")
    if plans:
        console().print()


def _estimate_profiles(
    names: list[str],
    all_: bool,
    manifest_path: Path | None,
    json_out: bool,
    explain: bool = False,
    measure: bool = False,
) -> int:
    from llmctl.memory.estimate import (
        MetadataError,
        estimate,
        extra_sources,
        options_from_profile,
        source_for_profile,
    )

    manifest = load_manifest_cli(manifest_path, json_out=json_out)
    if all_ or not names:
        if not all_ and not names:
            raise UsageError(
                "name a profile, or give --all",
                hint="llmctl estimate PROFILE, llmctl estimate --all, "
                "or llmctl estimate -- -m model.gguf ...",
            )
        chosen = list(manifest.profiles)
    else:
        chosen = [manifest.resolve(n) for n in names]
    results: list[dict[str, Any]] = []
    failed = 0
    for name in chosen:
        profile = manifest.profiles[name]
        try:
            source = source_for_profile(profile)
            if source is None:
                raise LlmctlError(
                    f"model file {profile.model} is missing",
                    hint="download it, or add a metadata: block to the profile for an estimate",
                )
            mmproj, draft = extra_sources(profile)
            est = estimate(
                source,
                options_from_profile(profile),
                profile=name,
                budget=manifest.gpu_budget.vram,
                headroom=manifest.gpu_budget.headroom,
                overhead=manifest.gpu_budget.overhead,
                # no GPU configured: the estimate is of RAM
                gpu=manifest.gpu_budget.vram is not None,
                mmproj=mmproj,
                draft=draft,
            )
        except (LlmctlError, MetadataError) as err:
            failed += 1
            message = err.message if isinstance(err, LlmctlError) else str(err)
            hint = err.hint if isinstance(err, LlmctlError) else "check the metadata block"
            results.append(
                {"profile": name, "model": profile.model, "error": message, "hint": hint}
            )
            if not json_out:
                from rich.markup import escape

                console().print(
                    f"[bold]{escape(name)}[/]  [red]cannot estimate:[/] {escape(message)}"
                )
                if hint:
                    console().print(f"  [dim]hint: {escape(hint)}[/]")
                console().print()
            continue
        measured = _calibration(manifest, name, est, measure, ask=explain or measure)
        obj = est.to_json()
        if measured is not None:
            obj["measured"] = measured
        plans = _device_plans(manifest, name)
        obj["plans"] = [p.to_json() for p in plans]
        results.append(obj)
        if not json_out:
            _render_estimate(est)
            _render_plans(plans)
            if explain or measure:
                _render_explain(est, measured)
                console().print()
            elif measured is not None:
                d = measured["parts"].get("compute")
                if d:
                    console().print(
                        f"  measured compute {d['measured_mib']:.2f} MiB (formula "
                        f"{d['error']:+.1%}); `--explain` for every buffer\n"
                    )
    if json_out:
        print_json(results)
    return 1 if failed else 0


def _calibration(
    manifest: Any, name: str, est: Estimate, measure: bool, ask: bool
) -> dict[str, Any] | None:
    """The measurement of this profile (model file, arguments, build); with `measure`, a real
    launch first (llama-server at -lv 4 on a free port, stopped once the model is loaded)."""
    import socket

    from llmctl.llama.flags import launch_spec
    from llmctl.memory.calibration import CalibrationStore, calibration_key, measure_launch
    from llmctl.paths import state_dir

    store = CalibrationStore(state_dir() / "calibration.json")
    if not (measure or ask or store.path.exists()):
        return None
    spec = launch_spec(manifest, name)
    # the build is asked (llama-server --version) only when explaining or measuring
    build = store.build(spec.argv[0], ask=ask)
    if measure:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        argv = list(spec.argv)
        if "--port" in argv:
            argv[argv.index("--port") + 1] = str(port)
        m = measure_launch(store, spec.model, argv, build, env=spec.env, unset_env=spec.unset_env)
        if m is None:
            raise LlmctlError(
                f"llama-server did not report its buffers for {name}",
                hint="run `llmctl switch` to see why it does not load",
            )
    found = store.get(calibration_key(spec.model, spec.argv, build))
    return _measured_json(est, found) if found is not None else None


@app.command(context_settings={"ignore_unknown_options": True})
def estimate(
    args: Annotated[
        list[str] | None,
        typer.Argument(
            help="Profile names or aliases; or, after --, a llama-server command line.",
            show_default=False,
        ),
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every profile of the manifest.")] = False,
    manifest: ManifestOpt = None,
    json_out: JsonOpt = False,
    explain: Annotated[
        bool,
        typer.Option(
            "--explain", help="How each figure is made, and the measured figures beside them."
        ),
    ] = False,
    measure: Annotated[
        bool,
        typer.Option(
            "--measure",
            help="Launch llama-server once (stopped when loaded) and keep what it reports.",
        ),
    ] = False,
) -> None:
    """Estimate GPU and host memory: KV caches (exact), weights, compute, against gpu.vram.

    llmctl estimate PROFILE ... | --all, or llmctl estimate -- -m model.gguf -c 32768 -ctk q8_0 ...
    Exit status: 0 when every estimate was made, 1 when some profile could not be estimated.
    """
    argv = list(args or [])
    with handle_errors(json_out):
        if any(a.startswith("-") for a in argv):
            code = _estimate_argv(argv, json_out)
        else:
            code = _estimate_profiles(argv, all_, manifest, json_out, explain, measure)
    if code:
        raise typer.Exit(code)


def _render_fit(advice: FitAdvice) -> None:
    from rich.markup import escape
    from rich.table import Table

    out = console()
    cur = advice.current
    out.print(
        f"[bold]{escape(advice.profile or cur.model)}[/]: estimated {_b(cur.gpu_total_bytes)} "
        f"against {_b(advice.target_bytes)} (gpu.vram {_b(advice.budget_bytes)} - headroom "
        f"{_b(advice.headroom_bytes)})"
    )
    if advice.fits:
        room = advice.target_bytes - cur.gpu_total_bytes
        out.print(f"  [green]fits[/], {_b(room)} to spare")
        if advice.max_ctx_size is not None and advice.max_estimate is not None:
            asked = cur.options.ctx_size or advice.n_ctx_train
            if advice.max_ctx_size > asked:
                out.print(
                    f"  the largest context that still fits: ctx_size {advice.max_ctx_size} "
                    f"({_b(advice.max_estimate.gpu_total_bytes)})"
                )
            elif asked >= advice.n_ctx_train:
                out.print(f"  already at or above the trained context ({advice.n_ctx_train})")
            else:
                out.print("  no larger context fits")
        return
    over = cur.gpu_total_bytes - advice.target_bytes
    out.print(f"  [red]does not fit[/]: {_b(over)} over")
    if not advice.suggestions:
        out.print("  no single change found that makes it fit; try a smaller quantization")
        return
    table = Table(box=None, pad_edge=False, header_style="dim")
    table.add_column("#", justify="right")
    table.add_column("change")
    table.add_column("profile fields")
    table.add_column("GPU total", justify="right")
    table.add_column("KV cache", justify="right")
    for i, s in enumerate(advice.suggestions, 1):
        fields = ", ".join(
            f"{k}: {str(v).lower() if isinstance(v, bool) else v}" for k, v in s.change.items()
        )
        table.add_row(
            str(i),
            escape(s.description),
            escape(fields),
            _b(s.estimate.gpu_total_bytes),
            _b(s.estimate.kv_bytes),
        )
    out.print(table)


@app.command()
def fit(
    profile: ProfileArg,
    vram: Annotated[
        str | None,
        typer.Option("--vram", help="GPU memory budget (e.g. 24GiB); default gpu.vram."),
    ] = None,
    manifest: ManifestOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Smallest changes that make PROFILE fit (cache type, context, slots, GPU layers); or, when it
    fits, the largest context that still does.

    Exit status: 0 when the profile fits as it is, 1 when it does not (the advice is printed).
    """
    from llmctl.manifest.sizes import parse_size
    from llmctl.memory.estimate import MetadataError, options_from_profile, source_for_profile
    from llmctl.memory.fit import advise

    with handle_errors(json_out):
        m = load_manifest_cli(manifest, json_out=json_out)
        name = m.resolve(profile)
        p = m.profiles[name]
        if vram is not None:
            try:
                budget = parse_size(vram)
            except ValueError as err:
                raise UsageError(f"--vram: {err}") from None
        elif m.gpu_budget.vram is not None:
            budget = m.gpu_budget.vram
        else:
            raise UsageError(
                "no memory budget: give --vram, or set gpu.vram in the manifest",
                hint="llmctl fit PROFILE --vram 24GiB",
            )
        source = source_for_profile(p)
        if source is None:
            raise LlmctlError(
                f"model file {p.model} of profile {name} is missing",
                hint="download it, or add a metadata: block to the profile",
            )
        try:
            advice = advise(
                source,
                options_from_profile(p),
                budget=budget,
                headroom=m.gpu_budget.headroom,
                overhead=m.gpu_budget.overhead,
                profile=name,
            )
        except MetadataError as err:
            raise UsageError(f"profile {name}: {err}", hint="check its metadata block") from None
    if json_out:
        print_json(advice.to_json())
    else:
        _render_fit(advice)
    raise typer.Exit(EXIT_OK if advice.fits else EXIT_FAILED)
