"""`llmctl estimate`: GPU memory per profile, or per llama-server command line.

The command and its options: `fast` (no typer) and `register` (typer) both call `run`, which
picks the path: hub models (`cli/hub.py`), a command line after `--` (`cmdline`), or profiles
(`profiles`). The figures are rendered by `render`, measurements read by `measure`, and the
`--engine` comparison made by `engine`; each path is imported when it runs.
"""

from __future__ import annotations

from pathlib import Path  # typer reads the annotations at run time
from typing import TYPE_CHECKING

from llmctl.cli.argv import parse
from llmctl.cli.output import run_command
from llmctl.errors import UsageError
from llmctl.paths import is_hub_model

if TYPE_CHECKING:
    import typer


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
    llama_build: str | None = None,
) -> int:
    def body() -> int:
        build = parse_llama_build(llama_build)
        refs = [a for a in args if is_hub_model(a)]
        if refs and build is not None:
            raise UsageError(
                "--llama-build applies to profiles and command lines, not to hub models",
                hint="put the hub model in a profile: llmctl estimate PROFILE --llama-build N",
            )
        if refs:
            from llmctl.cli.hub import estimate_hub

            rest = [a for a in args if not is_hub_model(a)]
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
            from llmctl.cli.estimate.cmdline import estimate_argv

            return estimate_argv(args, json_out, explain, measure, build)
        from llmctl.cli.estimate.profiles import estimate_profiles

        return estimate_profiles(args, all_, manifest, json_out, explain, measure, engine, build)

    return run_command(json_out, body)


def parse_llama_build(value: str | None) -> int | None:
    """`--llama-build N`: a llama.cpp build number (tag bN; `b11312` is read as 11312)."""
    if value is None:
        return None
    text = value.strip()
    digits = text[1:] if text[:1] in ("b", "B") else text
    if not digits.isdigit() or int(digits) < 1:
        raise UsageError(
            f"--llama-build {value!r}: not a llama.cpp build number",
            hint="the N of tag bN, as `llama-server --version` prints it: --llama-build 11312",
        )
    return int(digits)


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
            options={
                "--vram": ("vram", str),
                "--manifest": ("manifest", str),
                "--llama-build": ("llama_build", str),
            },
            positional=(0, 1000),
        )
        if parsed is None or not all(is_hub_model(a) for a in parsed[0]):
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
        options={
            "--manifest": ("manifest", str),
            "--vram": ("vram", str),
            "--llama-build": ("llama_build", str),
        },
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
        llama_build: str | None = typer.Option(
            None,
            "--llama-build",
            help="Estimate for this llama.cpp build (tag bN) instead of the configured "
            "llama-server's: a machine llmctl cannot run.",
            metavar="N",
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
                llama_build=llama_build,
            )
        )
