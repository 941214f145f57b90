"""`llmctl estimate`: GPU memory per profile, or per llama-server command line."""

from __future__ import annotations

import sys
from pathlib import Path  # typer reads the annotations at run time
from typing import TYPE_CHECKING, Any

from llmctl.cli.argv import parse
from llmctl.cli.output import error_json, error_lines, print_json, run_command, table
from llmctl.errors import EXIT_FAILED, EXIT_OK, LlmctlError, UsageError
from llmctl.paths import is_hub_model
from llmctl.term import BOLD, DIM, GREEN, RED, YELLOW, style

if TYPE_CHECKING:
    import typer

    from llmctl.memory.calibration import Measurement
    from llmctl.memory.estimate import Estimate
    from llmctl.placement.plan import DevicePlan


def size(n: int | None) -> str:
    from llmctl.term import format_bytes

    return "-" if n is None else format_bytes(n)


def estimate_text(est: Estimate, ignored: list[str] | None = None) -> str:
    title = est.profile or est.model
    exact = "KV rules exact" if est.exact else "KV approximate (generic rules)"
    lines = [f"{style(title, BOLD)}  {est.architecture}, {exact}"]
    if est.profile:
        lines.append(f"  model: {est.model}")
    s = est.sizes
    streams = (
        f"{s.n_stream} streams" if s.n_stream > 1 else "unified" if s.kv_unified else "1 stream"
    )
    lines.append(
        f"  context: n_ctx {s.n_ctx}, {s.n_ctx_seq} per sequence, {s.n_seq} slot(s), {streams}; "
        f"flash_attn {est.flash_attn}; ubatch {s.n_ubatch}"
    )
    rows = [
        [
            f"KV {c.kind}",
            str(c.cells),
            str(c.layers),
            f"{size(c.k_bytes)} {c.k_type}",
            f"{size(c.v_bytes)} {c.v_type}",
            size(c.bytes),
        ]
        for c in est.caches
    ]
    if not est.caches:
        rows.append(["KV cache", "-", "-", "-", "-", "none"])
    w = est.weights
    rows.append(
        ["weights", "", "", f"GPU {size(w.gpu_bytes)}", f"CPU {size(w.cpu_bytes)}", size(w.bytes)]
    )
    if w.overridden_cpu_bytes:
        rows.append(["CPU by -ncmoe/-ot", "", "", "", "", size(w.overridden_cpu_bytes)])
    where = f" ({est.compute.where})" if est.compute else ""
    rows.append([f"compute{where}", "", "", "", "", size(est.compute_bytes)])
    if est.mmproj is not None:
        m = est.mmproj
        rows.append(
            ["mmproj", "", "", size(m.weights_bytes), f"compute {size(m.compute_bytes)}", ""]
        )
    if est.draft is not None:
        d = est.draft
        rows.append(
            ["draft", "", "", f"GPU {size(d.gpu_total_bytes)}", "", size(d.host_total_bytes)]
        )
    if est.on_gpu:
        rows.append(["CUDA overhead", "", "", "", "", size(est.overhead_bytes)])
        rows.append(
            [style("GPU total", BOLD), "", "", "", "", style(size(est.gpu_total_bytes), BOLD)]
        )
    rows.append(
        [
            style("host total", BOLD),
            "",
            "",
            f"weights {size(est.host_weights_bytes)}",
            f"KV {size(est.host_kv_bytes)}",
            style(size(est.host_total_bytes), BOLD),
        ]
    )
    lines += table(rows, header=["", "cells", "layers", "K / R", "V / S", "total"])
    if est.budget_bytes is not None:
        room = est.budget_bytes - est.gpu_total_bytes
        if not est.fits:
            verdict = f"{style('does not fit', RED)}: {size(-room)} over"
        elif not est.within_headroom:
            verdict = f"{style('fits, inside the headroom', YELLOW)}: {size(room)} free"
        else:
            verdict = f"{style('fits', GREEN)}: {size(room)} free"
        lines.append(f"  budget {size(est.budget_bytes)}: {verdict}")
    lines += [f"  {style(f'note: {note}', DIM)}" for note in est.notes]
    if ignored:
        lines.append(f"  {style('not taken into account: ' + ' '.join(ignored), DIM)}")
    return "".join(line + "\n" for line in lines) + "\n"


def explain_text(est: Estimate, measured: dict[str, Any] | None) -> str:
    lines: list[str] = []
    c = est.compute
    if c is not None:
        lines.append(
            f"  compute = masks {size(c.masks)} + max(widest layer ({c.where}) {size(c.layer)}"
            f" + recurrent states {size(c.states)}, logits {size(c.outputs)}) for {c.n_tokens} "
            "tokens (from the graph's shapes; checked on the CPU backend)"
        )
    lines.append(
        f"  weights: GPU {size(est.weights.gpu_bytes)}, host {size(est.host_weights_bytes)}"
        f" (exact per tensor); KV {size(est.kv_bytes)} (exact); output buffer "
        f"{size(est.output_bytes)} (exact)"
    )
    if measured is None:
        lines.append(
            "  "
            + style(
                "no measurement for this model, these arguments and this llama-server build;"
                " `--measure` launches it once to measure",
                DIM,
            )
        )
    else:
        lines.append(f"  {style('measured', BOLD)} (llama-server {measured['build']}):")
        for part, d in measured["parts"].items():
            lines.append(
                f"    {part:8} measured {d['measured_mib']:10.2f} MiB   formula "
                f"{d['formula_mib']:10.2f} MiB   {d['error']:+.1%}"
            )
    return "".join(line + "\n" for line in lines)


def _repacked(buffer: str) -> bool:
    return "REPACK" in buffer or buffer == "AMX"


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


def estimate_for_argv(argv: list[str]) -> tuple[Estimate, list[str]]:
    """The estimate of a llama-server command line and the arguments it did not read (raises
    UsageError)."""
    from llmctl.llama.argv import parse_llama_args
    from llmctl.llama.gguf import read_gguf
    from llmctl.memory.estimate import MetadataError, ModelSource, estimate, source_for_path

    parsed = parse_llama_args(argv)
    if not parsed.model:
        raise UsageError(
            "the llama-server command line has no -m/--model",
            hint="llmctl estimate -- -m model.gguf -c 8192 ...",
        )
    try:
        est = estimate(
            ModelSource.from_gguf(read_gguf(parsed.model)),
            parsed.options,
            mmproj=source_for_path(parsed.mmproj),
            draft=source_for_path(parsed.model_draft),
        )
    except MetadataError as err:
        raise UsageError(f"{parsed.model}: {err}") from None
    if parsed.rpc:
        est.notes.append(
            f"the offloaded layers are split over the RPC servers {', '.join(parsed.rpc)} and the"
            " local GPUs (by free memory, or -ts): `llmctl estimate PROFILE` shows each device's"
            " share, with the servers' budgets under gpu:"
        )
    if est.gpu_total_bytes:
        from llmctl.llama.binary import find_binary
        from llmctl.supervisor.devices import can_offload

        if can_offload(find_binary()) is False:
            ram = estimate(
                ModelSource.from_gguf(read_gguf(parsed.model)),
                parsed.options,
                gpu=False,
                mmproj=source_for_path(parsed.mmproj),
                draft=source_for_path(parsed.model_draft),
            )
            est.notes.append(
                "this machine's llama-server has no GPU to offload to (--list-devices lists"
                f" none): it keeps everything in RAM, {size(ram.host_total_bytes)} in all"
            )
    if parsed.fit_may_change:
        est.notes.append(
            "without both -c and -ngl, llama-server's --fit (on by default) may lower the context"
            " and GPU layers to what is free; pass them (or --fit off) for this estimate to hold"
        )
    return est, parsed.ignored


def _estimate_argv(
    argv: list[str], json_out: bool, explain: bool = False, measure: bool = False
) -> int:
    est, ignored = estimate_for_argv(argv)
    measured = _calibration_argv(argv, est, measure, ask=explain or measure)
    if json_out:
        obj = est.to_json()
        obj["ignored_args"] = ignored
        if measured is not None:
            obj["measured"] = measured
        print_json([obj])
    else:
        sys.stdout.write(estimate_text(est, ignored))
        if explain or measure:
            sys.stdout.write(explain_text(est, measured) + "\n")
    return EXIT_OK


def _device_plans(manifest: Any, name: str) -> list[DevicePlan]:
    """The profile's per-device plans, one per choice of devices (llmctl.placement.plan)."""
    from llmctl.placement.placer import placement_request
    from llmctl.supervisor.devices import detect

    try:
        report = detect(manifest.device_configs())
        return placement_request(manifest, name, report.devices).plans
    except LlmctlError:
        return []


def plans_text(plans: list[DevicePlan]) -> str:
    lines: list[str] = []
    for plan in plans:
        parts = [
            f"{s.device} {size(s.total_bytes)}"
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
        lines.append(f"plan on {plan.label}: " + ", ".join(parts))
        flags = plan.launch_args()
        if flags:  # nothing to pass when one device takes it all by llama-server's defaults
            lines.append("  " + style(f"flags: {' '.join(flags)}", DIM))
    if plans:
        lines.append("")
    return "".join(line + "\n" for line in lines)


def _calibration(
    manifest: Any, name: str, est: Estimate, measure: bool, ask: bool
) -> dict[str, Any] | None:
    """The measurement of this profile (model file, arguments, build); with `measure`, a real
    launch first (llama-server at -lv 4 on a free port, stopped once the model is loaded)."""
    if not _may_have_measurement(measure, ask):
        return None  # nothing measured: no need for the measuring code (subprocess, hashlib)
    from llmctl.supervisor.launch import launch_spec

    spec = launch_spec(manifest, name)
    if is_hub_model(spec.model):  # not pulled: never launched here, so never measured
        if measure:
            from llmctl.supervisor.modelfile import not_pulled

            raise not_pulled(name, spec.model)
        return None
    return _measurement(
        est, spec.model, list(spec.argv), measure, ask, name, spec.env, spec.unset_env
    )


def _calibration_argv(
    argv: list[str], est: Estimate, measure: bool, ask: bool
) -> dict[str, Any] | None:
    """_calibration for `estimate -- ARGS`: the command line run by this machine's llama-server
    ($LLMCTL_LLAMA_SERVER, else on PATH)."""
    if not _may_have_measurement(measure, ask):
        return None
    from llmctl.llama.binary import find_binary

    binary = find_binary()
    if binary is None:
        if not measure:
            return None  # no llama-server here: nothing can have been measured with it
        raise LlmctlError(
            "--measure needs llama-server: none in $LLMCTL_LLAMA_SERVER or on PATH",
            hint="set LLMCTL_LLAMA_SERVER to its path (`make llama-server` builds one)",
        )
    return _measurement(est, est.model, [binary, *argv], measure, ask, "this command line")


def _may_have_measurement(measure: bool, ask: bool) -> bool:
    from llmctl.paths import state_dir

    return measure or ask or (state_dir() / "calibration.json").exists()


def _measurement(
    est: Estimate,
    model: str,
    argv: list[str],
    measure: bool,
    ask: bool,
    what: str,
    env: dict[str, str] | None = None,
    unset_env: tuple[str, ...] | list[str] = (),
) -> dict[str, Any] | None:
    from llmctl.memory.calibration import CalibrationStore, calibration_key, measure_launch
    from llmctl.paths import state_dir

    store = CalibrationStore(state_dir() / "calibration.json")
    # the build is asked (llama-server --version) only when explaining or measuring
    build = store.build(argv[0], ask=ask)
    if measure:
        # measure() listens on a free port of its own, whatever --port says
        m = measure_launch(store, model, argv, build, env=env, unset_env=list(unset_env))
        if m is None:
            raise LlmctlError(
                f"llama-server did not report its buffers for {what}",
                hint="run it by hand (or `llmctl switch PROFILE`) to see why it does not load",
            )
    found = store.get(calibration_key(model, argv, build))
    return _measured_json(est, found) if found is not None else None


def _engine(manifest: Any, name: str, est: Estimate) -> dict[str, Any]:
    """The engine's own plan for this profile beside the formula's terms (a probe here)."""
    from llmctl.memory.engine import compare, warnings
    from llmctl.placement.placer import command_spec
    from llmctl.supervisor.probe import probe_profile

    # the launch `switch` and `load` make: with listed devices, the placer's first choice
    spec = command_spec(manifest, name)
    if is_hub_model(spec.model):  # not pulled: llama-server would download it
        from llmctl.supervisor.modelfile import not_pulled

        raise not_pulled(name, spec.model)
    res = probe_profile(manifest, name, spec=spec)
    out: dict[str, Any] = {
        "source": "engine plan" if res.plan is not None else "formula",
        "build": res.build,
        "seconds": round(res.seconds, 3),
    }
    if res.plan is None:
        out["reason"] = res.reason
        return out
    diffs = compare(est, res.plan)
    out["plan"] = res.plan.to_json()
    out["terms"] = [d.to_json() for d in diffs]
    out["warnings"] = warnings(diffs, res.build)
    return out


def engine_text(engine: dict[str, Any]) -> str:
    """The engine's figures per row and term, then the formula's beside their sum."""
    if engine.get("plan") is None:
        return f"  engine plan: none ({engine.get('reason')}); the formula stands\n\n"
    mib = 1024**2
    lines = [
        f"  {style('engine plan', BOLD)} (llama-server {engine.get('build') or 'unknown build'},"
        f" asked in {engine['seconds']:.2f} s; MiB as it states them):"
    ]
    for row in engine["plan"]["rows"]:
        if row["kind"] not in ("device", "host"):
            continue
        parts = "  ".join(
            f"{t} {row.get(f'{t}_bytes', 0) / mib:.0f}" for t in ("model", "context", "compute")
        )
        lines.append(f"    {row['name']:10} {parts}")
    for t in engine["terms"]:
        lines.append(
            f"    {t['term']:8} engine {t['engine_bytes'] / mib:9.1f} MiB   formula "
            f"{t['formula_bytes'] / mib:9.1f} MiB"
        )
    lines += [f"  {style('warning', YELLOW)}: {w}" for w in engine["warnings"]]
    return "\n".join(lines) + "\n\n"


def _estimate_profiles(
    names: list[str],
    all_: bool,
    manifest_path: str | Path | None,
    json_out: bool,
    explain: bool = False,
    measure: bool = False,
    engine: bool = False,
) -> int:
    from llmctl.manifest.cache import load_manifest
    from llmctl.memory.estimate import MetadataError
    from llmctl.memory.profile import estimate_profile

    if not all_ and not names:
        raise UsageError(
            "name a profile, or give --all",
            hint="llmctl estimate PROFILE, llmctl estimate --all, "
            "or llmctl estimate -- -m model.gguf ...",
        )
    manifest = load_manifest(manifest_path)
    chosen = list(manifest.profiles) if all_ else [manifest.resolve(n) for n in names]
    results: list[dict[str, Any]] = []
    failed = 0
    for name in chosen:
        profile = manifest.profiles[name]
        try:
            try:
                found = estimate_profile(manifest, name, network=True)
            except MetadataError as err:
                raise LlmctlError(str(err), hint="check the metadata block") from None
            if found is None:
                raise LlmctlError(
                    f"model file {profile.model} is missing",
                    hint="download it, or add a metadata: block to the profile for an estimate",
                )
            est = found
        except LlmctlError as err:
            # one profile that cannot be estimated does not hide the others
            failed += 1
            results.append(
                {"profile": name, "model": profile.model, "ok": False, "error": error_json(err)}
            )
            if not json_out:
                sys.stdout.write(f"{style(name, BOLD)}  {style('cannot estimate', RED)}\n")
                sys.stdout.write("".join(f"{line}\n" for line in error_lines(err, indent="  ")))
                sys.stdout.write("\n")
            continue
        measured = _calibration(manifest, name, est, measure, ask=explain or measure)
        obj = est.to_json()
        if measured is not None:
            obj["measured"] = measured
        plans = _device_plans(manifest, name)
        obj["plans"] = [p.to_json() for p in plans]
        engine_obj = _engine(manifest, name, est) if engine else None
        if engine_obj is not None:
            obj["engine"] = engine_obj
        results.append(obj)
        if not json_out:
            sys.stdout.write(estimate_text(est))
            sys.stdout.write(plans_text(plans))
            if engine_obj is not None:
                sys.stdout.write(engine_text(engine_obj))
            if explain or measure:
                sys.stdout.write(explain_text(est, measured) + "\n")
            elif measured is not None:
                d = measured["parts"].get("compute")
                if d:
                    sys.stdout.write(
                        f"  measured compute {d['measured_mib']:.2f} MiB (formula "
                        f"{d['error']:+.1%}); `--explain` for every buffer\n\n"
                    )
    if json_out:
        print_json(results)
    return EXIT_FAILED if failed else EXIT_OK


def run(
    args: list[str],
    *,
    all_: bool = False,
    manifest: str | Path | None = None,
    json_out: bool = False,
    explain: bool = False,
    measure: bool = False,
    engine: bool = False,
    vram: str | None = None,
) -> int:
    def body() -> int:
        refs = [a for a in args if a.startswith("hf://")]
        if refs:
            from llmctl.cli.hub import estimate_hub

            rest = [a for a in args if not a.startswith("hf://")]
            return estimate_hub(
                refs,
                rest,
                json_out=json_out,
                vram=vram,
                manifest=str(manifest) if manifest else None,
            )
        if vram is not None:
            raise UsageError(
                "--vram judges a hub model (hf://...); a profile is judged by gpu: in the manifest",
                hint="llmctl fit PROFILE --vram 24GiB",
            )
        if any(a.startswith("-") for a in args):
            if all_:
                raise UsageError(
                    "--all estimates the manifest's profiles, not a command line",
                    hint="llmctl estimate --all, or llmctl estimate -- -m model.gguf ...",
                )
            if engine:
                raise UsageError(
                    "--engine asks this machine's llama-server about a profile; a command line "
                    "given after -- may be meant for another machine",
                    hint="put the command line in a profile, or use --measure to launch it here",
                )
            return _estimate_argv(args, json_out, explain, measure)
        return _estimate_profiles(args, all_, manifest, json_out, explain, measure, engine)

    return run_command(json_out, body)


def fast(args: list[str]) -> int | None:
    """`estimate PROFILE ... [--all] [--manifest P] [--json]` and `estimate [--json] -- ARGS`."""
    if "--" in args:
        cut = args.index("--")
        parsed = parse(
            args[:cut],
            flags={
                "--json": "json_out",
                "--explain": "explain",
                "--measure": "measure",
                "--engine": "engine",
            },
            options={"--vram": ("vram", str), "--manifest": ("manifest", str)},
            positional=(0, 1000),
        )
        if parsed is None or not all(a.startswith("hf://") for a in parsed[0]):
            return None  # profile names before -- are not a command line: typer says so
        return run([*parsed[0], *args[cut + 1 :]], **parsed[1])
    parsed = parse(
        args,
        flags={
            "--json": "json_out",
            "--all": "all_",
            "--explain": "explain",
            "--measure": "measure",
            "--engine": "engine",
        },
        options={"--manifest": ("manifest", str), "--vram": ("vram", str)},
        positional=(0, 1000),
    )
    return None if parsed is None else run(parsed[0], **parsed[1])


def register(app: typer.Typer) -> None:
    import typer

    from llmctl.cli.options import json_option, manifest_option

    @app.command(context_settings={"ignore_unknown_options": True})
    def estimate(
        args: list[str] | None = typer.Argument(
            None,
            help="Profile names or aliases; or, after --, a llama-server command line.",
            metavar="PROFILE | -- ARGS",
            show_default=False,
        ),
        all_: bool = typer.Option(False, "--all", help="Every profile of the manifest."),
        manifest: Path | None = manifest_option(),
        json_out: bool = json_option(),
        explain: bool = typer.Option(
            False,
            "--explain",
            help="How each figure is made, and the measured figures beside them.",
        ),
        measure: bool = typer.Option(
            False,
            "--measure",
            help="Launch llama-server once (stopped when loaded) and keep what it reports.",
        ),
        engine: bool = typer.Option(
            False,
            "--engine",
            help="Ask llama-server for its own memory plan (--log-jsonl; stopped before the "
            "weights load) and show it beside the formula.",
        ),
        vram: str | None = typer.Option(
            None,
            "--vram",
            help="For hf:// models: the budget to judge them against.",
            metavar="SIZE",
        ),
    ) -> None:
        """Estimate GPU memory per profile or command line.

        GPU and host memory: KV caches (exact), weights, compute, against gpu.vram.

        llmctl estimate PROFILE ... | --all, or llmctl estimate -- -m model.gguf -c 32768 -ctk q8_0 ...
        Exit status: 0 when every estimate was made, 1 when some profile could not be estimated.
        """
        raise typer.Exit(
            run(
                list(args or []),
                all_=all_,
                manifest=manifest,
                json_out=json_out,
                explain=explain,
                measure=measure,
                engine=engine,
                vram=vram,
            )
        )
