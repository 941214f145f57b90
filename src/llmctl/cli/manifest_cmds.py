"""`llmctl lint`, `llmctl command`, `llmctl schema`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

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
from llmctl.errors import EXIT_FAILED, EXIT_OK

if TYPE_CHECKING:
    from llmctl.lint.run import LintResult

lint_app = typer.Typer(
    help="Check a manifest before anything runs (bare `llmctl lint` checks the manifest).",
    invoke_without_command=True,
    no_args_is_help=False,
)
app.add_typer(lint_app, name="lint")

StrictOpt = Annotated[bool, typer.Option("--strict", help="Warnings fail too (exit 1).")]


def _run_lint(path: Path | None, json_out: bool, strict: bool) -> None:
    from llmctl.lint.run import lint_manifest
    from llmctl.manifest.model import find_manifest

    with handle_errors(json_out):
        found = find_manifest(path)
        result = lint_manifest(found)
    if json_out:
        print_json(result.to_json())
    else:
        _print_lint(result)
    failed = bool(result.errors) or (strict and bool(result.warnings))
    raise typer.Exit(EXIT_FAILED if failed else EXIT_OK)


def _print_lint(result: LintResult) -> None:
    from rich.markup import escape

    out = console()
    groups: dict[str | None, list[int]] = {}
    for i, p in enumerate(result.problems):
        groups.setdefault(p.profile, []).append(i)
    for profile, idx in groups.items():
        out.print(f"[bold]{escape(profile)}[/]" if profile else "[bold](manifest)[/]")
        for i in idx:
            p = result.problems[i]
            colour = "red" if p.severity == "error" else "yellow"
            out.print(
                f"  {escape(p.where())}: [{colour}]{p.severity}[/] {escape(p.message)} "
                f"[dim]\\[{p.rule}][/]"
            )
            if p.hint:
                out.print(f"      [dim]hint: {escape(p.hint)}[/]")
    n_err, n_warn = len(result.errors), len(result.warnings)
    profiles = len(result.manifest.profiles) if result.manifest else 0
    if n_err:
        summary = f"[red]{n_err} error(s)[/], {n_warn} warning(s)"
    else:
        summary = f"[green]ok[/]: {profiles} profile(s), {n_warn} warning(s)"
    out.print(f"{escape(str(result.path))}: {summary}")


@lint_app.callback()
def lint_default(
    ctx: typer.Context,
    manifest: ManifestOpt = None,
    json_out: JsonOpt = False,
    strict: StrictOpt = False,
) -> None:
    """Check the manifest (same as `llmctl lint manifest`)."""
    if ctx.invoked_subcommand is None:
        _run_lint(manifest, json_out, strict)


@lint_app.command("manifest")
def lint_manifest_cmd(
    path: Annotated[Path | None, typer.Argument(help="The manifest (default: discovered).")] = None,
    manifest: ManifestOpt = None,
    json_out: JsonOpt = False,
    strict: StrictOpt = False,
) -> None:
    """Check a manifest: schema, YAML pitfalls, names, ports, files, flags, memory.

    Exit 0 without errors (warnings allowed unless --strict), 1 with errors, 2 when the
    manifest cannot be read or parsed.
    """
    _run_lint(path or manifest, json_out, strict)


@app.command("command")
def command_cmd(
    profile: ProfileArg,
    manifest: ManifestOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Print the exact llama-server command line that `llmctl switch PROFILE` runs.

    With devices listed under gpu:, the line carries the placement's flags (--device, -ngl,
    --tensor-split, --main-gpu) for the profile's first choice of devices."""
    from llmctl.supervisor.placer import command_spec

    m = load_manifest_cli(manifest, json_out=json_out)
    with handle_errors(json_out):
        spec = command_spec(m, profile)
    if json_out:
        print_json(spec.to_json())
    else:
        typer.echo(spec.shell())


@app.command("schema")
def schema_cmd() -> None:
    """Print the manifest's JSON Schema (for editors: yaml-language-server)."""
    from llmctl.manifest.schema import manifest_schema

    print_json(manifest_schema())
