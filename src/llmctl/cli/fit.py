"""`llmctl fit PROFILE`: the smallest changes that make a profile fit, or the largest context."""

from __future__ import annotations

import sys
from pathlib import Path  # typer reads the annotations at run time
from typing import TYPE_CHECKING

from llmctl.cli.argv import parse
from llmctl.cli.estimate.render import size
from llmctl.cli.output import print_json, run_command, table
from llmctl.errors import EXIT_FAILED, EXIT_OK, LlmctlError, UsageError
from llmctl.term import BOLD, GREEN, RED, style

if TYPE_CHECKING:
    import typer

    from llmctl.manifest.model import Manifest
    from llmctl.memory.fit import FitAdvice


def fit_text(advice: FitAdvice, source: str = "formula") -> str:
    """`source`: where the current figure's check stands (the formula, and the engine's plan
    of this launch when one is kept)."""
    cur = advice.current
    lines = [
        f"{style(advice.profile or cur.model, BOLD)}: estimated {size(cur.gpu_total_bytes)} "
        f"({source}) against {size(advice.target_bytes)} (gpu.vram "
        f"{size(advice.budget_bytes)} - headroom {size(advice.headroom_bytes)})"
    ]
    if advice.fits:
        room = advice.target_bytes - cur.gpu_total_bytes
        lines.append(f"  {style('fits', GREEN)}, {size(room)} to spare")
        if advice.max_ctx_size is not None and advice.max_estimate is not None:
            asked = cur.options.ctx_size or advice.n_ctx_train
            if advice.max_ctx_size > asked:
                lines.append(
                    f"  the largest context that still fits: ctx_size {advice.max_ctx_size} "
                    f"({size(advice.max_estimate.gpu_total_bytes)})"
                )
            elif asked >= advice.n_ctx_train:
                lines.append(f"  already at or above the trained context ({advice.n_ctx_train})")
            else:
                lines.append("  no larger context fits")
        return "".join(line + "\n" for line in lines)
    over = cur.gpu_total_bytes - advice.target_bytes
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
                size(s.estimate.gpu_total_bytes),
                size(s.estimate.kv_bytes),
            ]
        )
    header = ["#", "change", "profile fields", "GPU total", "KV cache"]
    # the text columns read better left-aligned: pad them by hand, figures right-aligned
    for col in (1, 2):
        width = max(len(r[col]) for r in [header, *rows])
        for r in [header, *rows]:
            r[col] = r[col].ljust(width)
    lines += table(rows, header=header)
    return "".join(line + "\n" for line in lines)


def run(
    profile: str,
    *,
    vram: str | None = None,
    manifest: str | Path | None = None,
    json_out: bool = False,
) -> int:
    def body() -> int:
        from llmctl.manifest.cache import load_manifest
        from llmctl.manifest.sizes import parse_size
        from llmctl.memory.estimate import options_from_profile
        from llmctl.memory.fit import advise
        from llmctl.memory.hparams import MetadataError
        from llmctl.memory.profile import build_rules, source_for_profile

        m = load_manifest(manifest)
        name = m.resolve(profile)
        p = m.profiles[name]
        if vram is not None:
            try:
                budget = parse_size(vram)
            except ValueError as err:
                raise UsageError(f"--vram: {err}", hint="e.g. --vram 24GiB") from None
        elif p.rpc:
            # a budget per device: one figure would judge the whole split against one of them
            raise UsageError(
                f"profile {name} is split over RPC servers and this machine's devices; "
                "`llmctl fit` judges one budget",
                hint=f"`llmctl estimate {name}` shows each device's share and `llmctl lint` "
                "checks it against that device's budget; or give --vram to judge the whole "
                "offloaded part against one figure",
            )
        elif m.gpu_budget.vram is not None:
            budget = m.gpu_budget.vram
        else:
            raise UsageError(
                "no memory budget: give --vram, or set gpu.vram in the manifest",
                hint="llmctl fit PROFILE --vram 24GiB",
            )
        source = source_for_profile(p, network=True)
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
                rules=build_rules(m),
            )
        except MetadataError as err:
            raise UsageError(f"profile {name}: {err}", hint="check its metadata block") from None
        figure_source, engine = _memory_source(m, name, advice)
        if json_out:
            print_json(
                {**advice.to_json(), "memory_source": figure_source, "engine_gpu_bytes": engine}
            )
        else:
            label = figure_source if engine is None else f"formula; engine plan {size(engine)}"
            sys.stdout.write(fit_text(advice, label))
        return EXIT_OK if advice.fits else EXIT_FAILED

    return run_command(json_out, body)


def _memory_source(m: Manifest, name: str, advice: FitAdvice) -> tuple[str, int | None]:
    """The changes are the formula's; the engine's plan of the profile's launch as it is, when
    one is kept (`llmctl estimate --engine`, or a launch), is shown beside it."""
    from llmctl.memory.engine import plan_gpu_bytes
    from llmctl.supervisor.probe import kept_plan

    try:
        kept = kept_plan(m, name)
    except (LlmctlError, OSError, ValueError):
        return "formula", None
    cur = advice.current
    engine = plan_gpu_bytes(kept[0], cur.overhead_bytes) if kept and cur.on_gpu else None
    return "formula", engine


def fast(args: list[str]) -> int | None:
    parsed = parse(
        args,
        flags={"--json": "json_out"},
        options={"--manifest": ("manifest", str), "--vram": ("vram", str)},
        positional=(1, 1),
    )
    if parsed is None:
        return None
    (profile,), opts = parsed
    return run(profile, **opts)


def register(app: typer.Typer) -> None:
    import typer

    from llmctl.cli.options import json_option, manifest_option, profile_argument

    @app.command()
    def fit(
        profile: str = profile_argument(),
        vram: str | None = typer.Option(
            None,
            "--vram",
            help="GPU memory budget (e.g. 24GiB); default gpu.vram.",
            metavar="SIZE",
            show_default=False,
        ),
        manifest: Path | None = manifest_option(),
        json_out: bool = json_option(),
    ) -> None:
        """What to change so that PROFILE fits.

        The smallest changes that make PROFILE fit, or the largest context that still does.

        Changes: cache type, sliding-window cache, context, slots, GPU layers.
        Exit status: 0 when the profile fits as it is, 1 when it does not (the advice is printed).
        """
        raise typer.Exit(run(profile, vram=vram, manifest=manifest, json_out=json_out))
