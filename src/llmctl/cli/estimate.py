"""`llmctl estimate`: GPU memory per profile, or per llama-server command line."""

from __future__ import annotations

import sys
from pathlib import Path  # typer reads the annotations at run time
from typing import TYPE_CHECKING, Any

from llmctl.cli.argv import parse
from llmctl.cli.output import (
    BOLD,
    DIM,
    GREEN,
    RED,
    YELLOW,
    error_json,
    error_lines,
    print_json,
    run_command,
    style,
    table,
)
from llmctl.errors import EXIT_FAILED, EXIT_OK, LlmctlError, UsageError

if TYPE_CHECKING:
    import typer

    from llmctl.memory.estimate import Estimate


def size(n: int | None) -> str:
    from llmctl.manifest.sizes import format_bytes

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
    rows += [
        ["weights", "", "", f"GPU {size(w.gpu_bytes)}", f"CPU {size(w.cpu_bytes)}", size(w.bytes)],
        ["compute (approx.)", "", "", "", "", size(est.compute_bytes)],
        ["CUDA overhead", "", "", "", "", size(est.overhead_bytes)],
        [style("GPU total", BOLD), "", "", "", "", style(size(est.gpu_total_bytes), BOLD)],
    ]
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


def _estimate_argv(argv: list[str], json_out: bool) -> int:
    from llmctl.llama.argv import parse_llama_args
    from llmctl.llama.gguf import read_gguf
    from llmctl.memory.estimate import MetadataError, ModelSource, estimate

    parsed = parse_llama_args(argv)
    if not parsed.model:
        raise UsageError(
            "the llama-server command line has no -m/--model",
            hint="llmctl estimate -- -m model.gguf -c 8192 ...",
        )
    try:
        est = estimate(ModelSource.from_gguf(read_gguf(parsed.model)), parsed.options)
    except MetadataError as err:
        raise UsageError(f"{parsed.model}: {err}") from None
    if parsed.fit_may_change:
        est.notes.append(
            "without both -c and -ngl, llama-server's --fit (on by default) may lower the context"
            " and GPU layers to what is free; pass them (or --fit off) for this estimate to hold"
        )
    if json_out:
        obj = est.to_json()
        obj["ignored_args"] = parsed.ignored
        print_json([obj])
    else:
        sys.stdout.write(estimate_text(est, parsed.ignored))
    return EXIT_OK


def _estimate_profiles(
    names: list[str], all_: bool, manifest_path: str | Path | None, json_out: bool
) -> int:
    from llmctl.manifest.cache import load_manifest
    from llmctl.memory.estimate import (
        MetadataError,
        estimate,
        options_from_profile,
        source_for_profile,
    )

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
            source = source_for_profile(profile)
            if source is None:
                raise LlmctlError(
                    f"model file {profile.model} is missing",
                    hint="download it, or add a metadata: block to the profile for an estimate",
                )
            try:
                est = estimate(
                    source,
                    options_from_profile(profile),
                    profile=name,
                    budget=manifest.gpu.vram,
                    headroom=manifest.gpu.headroom,
                    overhead=manifest.gpu.overhead,
                )
            except MetadataError as err:
                raise LlmctlError(str(err), hint="check the metadata block") from None
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
        results.append(est.to_json())
        if not json_out:
            sys.stdout.write(estimate_text(est))
    if json_out:
        print_json(results)
    return EXIT_FAILED if failed else EXIT_OK


def run(
    args: list[str],
    *,
    all_: bool = False,
    manifest: str | Path | None = None,
    json_out: bool = False,
) -> int:
    def body() -> int:
        if any(a.startswith("-") for a in args):
            return _estimate_argv(args, json_out)
        return _estimate_profiles(args, all_, manifest, json_out)

    return run_command(json_out, body)


def fast(args: list[str]) -> int | None:
    """`estimate PROFILE ... [--all] [--manifest P] [--json]` and `estimate [--json] -- ARGS`."""
    if "--" in args:
        cut = args.index("--")
        parsed = parse(args[:cut], flags={"--json": "json_out"})
        return None if parsed is None else run(args[cut + 1 :], **parsed[1])
    parsed = parse(
        args,
        flags={"--json": "json_out", "--all": "all_"},
        options={"--manifest": ("manifest", str)},
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
    ) -> None:
        """Estimate GPU memory per profile or command line.

        KV caches (exact), weights, compute, against gpu.vram.

        llmctl estimate PROFILE ... | --all, or llmctl estimate -- -m model.gguf -c 32768 -ctk q8_0 ...
        Exit status: 0 when every estimate was made, 1 when some profile could not be estimated.
        """
        raise typer.Exit(run(list(args or []), all_=all_, manifest=manifest, json_out=json_out))
