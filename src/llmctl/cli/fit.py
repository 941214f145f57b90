"""`llmctl fit [PROFILE]`: the smallest changes that make a profile fit, or the largest context;
without a profile, whether each profile fits.

The budget is --vram, else the manifest's GPU (gpu.vram), else a GPU nvidia-smi reports for a
listed device; a machine without any is judged against its RAM (/proc/meminfo, the figures
`llmctl devices` shows), with every figure host memory."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path  # typer reads the annotations at run time
from typing import TYPE_CHECKING, Any

from llmctl.cli.argv import parse
from llmctl.cli.output import print_json, run_command, table
from llmctl.errors import EXIT_FAILED, EXIT_OK, LlmctlError, UsageError
from llmctl.term import BOLD, GREEN, RED, style
from llmctl.term import format_bytes as _format_bytes

if TYPE_CHECKING:
    import typer

    from llmctl.manifest.model import Manifest
    from llmctl.memory.fit import FitAdvice


@dataclass(frozen=True)
class Budget:
    """What fit judges against: bytes, headroom, overhead, GPU or RAM, and where it came from."""

    bytes: int
    headroom: int
    overhead: int
    on_gpu: bool
    source: str  # "--vram", "gpu.vram", "nvidia-smi CUDA0", "RAM"
    free: int | None = None  # RAM: MemAvailable

    def note(self) -> str | None:
        """The line that says a machine without a GPU is judged against its RAM."""
        if self.on_gpu:
            return None
        free = f", {size(self.free)} free" if self.free is not None else ""
        return f"no GPU: judged against {size(self.bytes)} of RAM{free}"

    def to_json(self) -> dict[str, Any]:
        return {
            "budget_bytes": self.bytes,
            "headroom_bytes": self.headroom,
            "target_bytes": self.bytes - self.headroom,
            "on_gpu": self.on_gpu,
            "budget_source": self.source,
            "free_bytes": self.free,
        }


def budget_for(m: Manifest, vram: str | None) -> Budget:
    """--vram, the manifest's GPU, a listed GPU's detected memory, else this machine's RAM."""
    from llmctl.manifest.sizes import parse_size

    gpu = m.gpu_budget
    if vram is not None:
        try:
            return Budget(parse_size(vram), gpu.headroom, gpu.overhead, True, "--vram")
        except ValueError as err:
            raise UsageError(f"--vram: {err}", hint="e.g. --vram 24GiB") from None
    if gpu.vram is not None:
        return Budget(gpu.vram, gpu.headroom, gpu.overhead, True, "gpu.vram")
    from llmctl.cli.placement import detect_devices

    devices = detect_devices(m).devices
    for d in devices:
        if not d.is_cpu and d.rpc is None and d.budget is not None:
            return Budget(d.budget, d.headroom, d.overhead, True, f"{d.source} {d.name}")
    cpu = next((d for d in devices if d.is_cpu), None)
    if cpu is None or cpu.budget is None:
        raise UsageError(
            "no memory budget: no GPU is configured and this machine's RAM is unknown "
            "(/proc/meminfo unreadable)",
            hint="give --vram, or set gpu.vram in the manifest: llmctl fit PROFILE --vram 24GiB",
        )
    return Budget(cpu.budget, cpu.headroom, 0, False, "RAM", cpu.free)


def _budget_label(advice: FitAdvice, budget: Budget | None) -> str:
    source = budget.source if budget is not None else "gpu.vram"
    return source if advice.on_gpu else "RAM"


def size(n: int | None) -> str:
    return "-" if n is None else _format_bytes(n)


def fit_text(advice: FitAdvice, budget: Budget | None = None, source: str = "formula") -> str:
    """`source`: where the current figure's check stands (the formula, and the engine's plan
    of this launch when one is kept)."""
    from llmctl.memory.fit import judged_bytes

    cur = advice.current
    total = advice.total_bytes
    lines = [] if budget is None or budget.note() is None else [str(budget.note())]
    lines.append(
        f"{style(advice.profile or cur.model, BOLD)}: estimated {size(total)} ({source}) "
        f"against {size(advice.target_bytes)} ({_budget_label(advice, budget)} "
        f"{size(advice.budget_bytes)} - headroom {size(advice.headroom_bytes)})"
    )
    if advice.fits:
        room = advice.target_bytes - total
        lines.append(f"  {style('fits', GREEN)}, {size(room)} to spare")
        if advice.max_ctx_size is not None and advice.max_estimate is not None:
            asked = cur.options.ctx_size or advice.n_ctx_train
            if advice.max_ctx_size > asked:
                lines.append(
                    f"  the largest context that still fits: ctx_size {advice.max_ctx_size} "
                    f"({size(judged_bytes(advice.max_estimate))})"
                )
            elif asked >= advice.n_ctx_train:
                lines.append(f"  already at or above the trained context ({advice.n_ctx_train})")
            else:
                lines.append("  no larger context fits")
        if budget is not None and budget.free is not None and total > budget.free:
            lines.append(f"  but only {size(budget.free)} of RAM is free now")
        return "".join(line + "\n" for line in lines)
    over = total - advice.target_bytes
    lines.append(f"  {style('does not fit', RED)}: {size(over)} over")
    if not advice.suggestions:
        lines.append("  no single change found that makes it fit; try a smaller quantization")
        return "".join(line + "\n" for line in lines)
    rows = []
    for i, s in enumerate(advice.suggestions, 1):
        fields = ", ".join(
            f"{k}: {str(v).lower() if isinstance(v, bool) else v}" for k, v in s.change.items()
        )
        rows.append(
            [
                str(i),
                s.description,
                fields,
                size(judged_bytes(s.estimate)),
                size(s.estimate.kv_bytes),
            ]
        )
    header = ["#", "change", "profile fields", "GPU total" if advice.on_gpu else "RAM total"]
    header.append("KV cache")
    # the text columns read better left-aligned: pad them by hand, figures right-aligned
    for col in (1, 2):
        width = max(len(r[col]) for r in [header, *rows])
        for r in [header, *rows]:
            r[col] = r[col].ljust(width)
    lines += table(rows, header=header)
    return "".join(line + "\n" for line in lines)


def run(
    profile: str | None = None,
    *,
    vram: str | None = None,
    manifest: str | Path | None = None,
    json_out: bool = False,
) -> int:
    def body() -> int:
        from llmctl.manifest.cache import load_manifest

        m = load_manifest(manifest)
        if profile is None:
            return _fit_all(m, vram, json_out)
        name = m.resolve(profile)
        if vram is None and m.profiles[name].rpc:
            # a budget per device: one figure would judge the whole split against one of them
            raise UsageError(
                f"profile {name} is split over RPC servers and this machine's devices; "
                "`llmctl fit` judges one budget",
                hint=f"`llmctl estimate {name}` shows each device's share and `llmctl lint` "
                "checks it against that device's budget; or give --vram to judge the whole "
                "offloaded part against one figure",
            )
        budget = budget_for(m, vram)
        advice = _advise(m, name, budget)
        figure_source, engine = _memory_source(m, name, advice)
        if json_out:
            print_json(
                {
                    **advice.to_json(),
                    **budget.to_json(),
                    "memory_source": figure_source,
                    "engine_gpu_bytes": engine,
                }
            )
        else:
            label = figure_source if engine is None else f"formula; engine plan {size(engine)}"
            sys.stdout.write(fit_text(advice, budget, label))
        return EXIT_OK if advice.fits else EXIT_FAILED

    return run_command(json_out, body)


def _memory_source(m: Manifest, name: str, advice: FitAdvice) -> tuple[str, int | None]:
    """The changes are the formula's; the engine's plan of the profile's launch as it is, when
    one is kept (`llmctl estimate --engine`, or a launch), is shown beside it."""
    from llmctl.paths import engine_plans_file

    if not engine_plans_file().exists():
        return "formula", None  # nothing kept: the plan code is not imported
    from llmctl.memory.engine import plan_gpu_bytes
    from llmctl.supervisor.probe import kept_plan

    try:
        kept = kept_plan(m, name)
    except (LlmctlError, OSError, ValueError):
        return "formula", None
    cur = advice.current
    engine = plan_gpu_bytes(kept[0], cur.overhead_bytes) if kept and cur.on_gpu else None
    return "formula", engine


def _advise(m: Manifest, name: str, budget: Budget, *, suggest: bool = True) -> FitAdvice:
    from llmctl.memory.estimate import options_from_profile
    from llmctl.memory.fit import advise
    from llmctl.memory.hparams import MetadataError
    from llmctl.memory.profile import build_rules, source_for_profile

    p = m.profiles[name]
    source = source_for_profile(p, network=True)
    if source is None:
        raise LlmctlError(
            f"model file {p.model} of profile {name} is missing",
            hint="download it, or add a metadata: block to the profile",
        )
    try:
        return advise(
            source,
            options_from_profile(p),
            budget=budget.bytes,
            headroom=budget.headroom,
            overhead=budget.overhead,
            profile=name,
            on_gpu=budget.on_gpu,
            max_suggestions=6 if suggest else 0,
            rules=build_rules(m),
        )
    except MetadataError as err:
        raise UsageError(f"profile {name}: {err}", hint="check its metadata block") from None


def _fit_all(m: Manifest, vram: str | None, json_out: bool) -> int:
    """Every profile against the budget: one row each (an error is that profile's row)."""
    from llmctl.errors import ManifestError

    if not m.profiles:
        raise ManifestError(
            f"{m.path}: no local profiles to judge", hint="add a profile under profiles:"
        )
    budget = budget_for(m, vram)
    rows: list[dict[str, Any]] = []
    for name, p in m.profiles.items():
        row: dict[str, Any] = {"profile": name, "fits": None, "total_bytes": None}
        if vram is None and p.rpc:
            row["error"] = "split over RPC servers: `llmctl estimate` shows each device's share"
        else:
            try:
                advice = _advise(m, name, budget, suggest=False)
            except LlmctlError as err:
                row["error"] = err.message
            else:
                row.update(
                    fits=advice.fits,
                    total_bytes=advice.total_bytes,
                    gpu_total_bytes=advice.current.gpu_total_bytes,
                    max_ctx_size=advice.max_ctx_size,
                    ctx_size=advice.current.sizes.n_ctx,
                )
        rows.append(row)
    code = EXIT_OK if all(r["fits"] for r in rows) else EXIT_FAILED
    if json_out:
        print_json({**budget.to_json(), "profiles": rows})
        return code
    sys.stdout.write(fit_all_text(rows, budget))
    return code


def fit_all_text(rows: list[dict[str, Any]], budget: Budget) -> str:
    target = budget.bytes - budget.headroom
    what = "RAM" if not budget.on_gpu else budget.source
    lines = [
        budget.note() or f"judged against {size(budget.bytes)} ({what})",
        f"target {size(target)} ({what} {size(budget.bytes)} - headroom {size(budget.headroom)})",
        "",
    ]
    table_rows: list[list[str]] = []
    for r in rows:
        if r["fits"] is None:
            table_rows.append([r["profile"], "-", "?", "-", r.get("error", "")])
            continue
        spare = target - r["total_bytes"]
        fits = style("yes", GREEN) if r["fits"] else style("no", RED)
        room = f"{size(spare)} spare" if spare >= 0 else f"{size(-spare)} over"
        ctx = r.get("max_ctx_size")
        note = f"ctx up to {ctx}" if r["fits"] and ctx and ctx > r["ctx_size"] else ""
        if not r["fits"]:
            note = f"`llmctl fit {r['profile']}` for changes"
        table_rows.append([r["profile"], size(r["total_bytes"]), fits, room, note])
    header = ["PROFILE", "ESTIMATE", "FITS", "ROOM", "NOTE"]
    # names and notes read better left-aligned: pad the note by hand
    width_note = max(len(cells[4]) for cells in [header, *table_rows])
    for cells in [header, *table_rows]:
        cells[4] = cells[4].ljust(width_note)
    lines += table(table_rows, header=header)
    return "".join(line.rstrip() + "\n" for line in lines)


def fast(args: list[str]) -> int | None:
    parsed = parse(
        args,
        flags={"--json": "json_out"},
        options={"--manifest": ("manifest", str), "--vram": ("vram", str)},
        positional=(0, 1),
    )
    if parsed is None:
        return None
    names, opts = parsed
    return run(names[0] if names else None, **opts)


def register(app: typer.Typer) -> None:
    import typer

    from llmctl.cli.completion import complete_profile
    from llmctl.cli.options import json_option, manifest_option

    @app.command()
    def fit(
        profile: str | None = typer.Argument(
            None,
            help="A profile name or alias; none: every profile.",
            metavar="PROFILE",
            autocompletion=complete_profile,
            show_default=False,
        ),
        vram: str | None = typer.Option(
            None,
            "--vram",
            help="GPU memory budget (e.g. 24GiB); default gpu.vram, else the GPU found, "
            "else the RAM.",
            metavar="SIZE",
            show_default=False,
        ),
        manifest: Path | None = manifest_option(),
        json_out: bool = json_option(),
    ) -> None:
        """What to change so that PROFILE fits.

        The smallest changes that make PROFILE fit, or the largest context that still does.
        Without PROFILE: every profile, whether it fits. No GPU budget and no GPU found: judged
        against this machine's RAM.

        Changes: cache type, sliding-window cache, context, slots, GPU layers.
        Exit status: 0 when the profile (every profile) fits as it is, 1 when not.
        """
        raise typer.Exit(run(profile, vram=vram, manifest=manifest, json_out=json_out))
