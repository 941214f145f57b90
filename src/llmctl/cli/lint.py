"""`llmctl lint [manifest [PATH]]`: every problem of a manifest, before anything runs."""

# No `from __future__ import annotations`: typer resolves `typer.Context` below, a local name.

import sys
from pathlib import Path  # typer reads the annotations at run time
from typing import TYPE_CHECKING

from llmctl.cli.argv import parse
from llmctl.cli.output import print_json, run_command
from llmctl.errors import EXIT_FAILED, EXIT_OK
from llmctl.term import BOLD, DIM, GREEN, RED, YELLOW, style

if TYPE_CHECKING:
    import typer

    from llmctl.lint.run import LintResult


def run(path: str | Path | None = None, *, json_out: bool = False, strict: bool = False) -> int:
    def body() -> int:
        from llmctl.lint.run import lint_manifest
        from llmctl.manifest.discover import find_manifest

        result = lint_manifest(find_manifest(path))
        if json_out:
            print_json(result.to_json())
        else:
            sys.stdout.write(lint_text(result))
        failed = bool(result.errors) or (strict and bool(result.warnings))
        return EXIT_FAILED if failed else EXIT_OK

    return run_command(json_out, body)


def lint_text(result: "LintResult") -> str:
    """Problems grouped by profile, in file order, then a summary line."""
    lines: list[str] = []
    groups: dict[str | None, list[int]] = {}
    for i, p in enumerate(result.problems):
        groups.setdefault(p.profile, []).append(i)
    for profile, idx in groups.items():
        lines.append(style(profile if profile else "(manifest)", BOLD))
        for i in idx:
            p = result.problems[i]
            severity = style(p.severity, RED if p.severity == "error" else YELLOW)
            lines.append(f"  {p.where()}: {severity} {p.message} {style(f'[{p.rule}]', DIM)}")
            if p.hint:
                lines.append(f"      {style(f'hint: {p.hint}', DIM)}")
    n_err, n_warn = len(result.errors), len(result.warnings)
    profiles = len(result.manifest.profiles) if result.manifest else 0
    if n_err:
        summary = f"{style(f'{n_err} error(s)', RED)}, {n_warn} warning(s)"
    else:
        summary = f"{style('ok', GREEN)}: {profiles} profile(s), {n_warn} warning(s)"
    lines.append(f"{result.path}: {summary}")
    return "".join(line + "\n" for line in lines)


_FLAGS = {"--json": "json_out", "--strict": "strict"}
_OPTIONS = {"--manifest": ("manifest", str)}


def fast(args: list[str]) -> int | None:
    """`lint [--manifest P] [--json] [--strict]` and `lint manifest [PATH] [...]`."""
    sub = args[:1] == ["manifest"]
    parsed = parse(
        args[1:] if sub else args, flags=_FLAGS, options=_OPTIONS, positional=(0, int(sub))
    )
    if parsed is None:
        return None
    rest, opts = parsed
    path = rest[0] if rest else opts.pop("manifest", None)
    opts.pop("manifest", None)
    return run(path, **opts)


def register(app: "typer.Typer") -> None:
    import typer

    from llmctl.cli.options import json_option, manifest_option

    def strict_option() -> bool:
        return typer.Option(False, "--strict", help="Warnings fail too (exit 1).")  # type: ignore[no-any-return]

    lint_app = typer.Typer(
        help="Check a manifest before anything runs.\n\nBare `llmctl lint` checks the manifest.",
        invoke_without_command=True,
        no_args_is_help=False,
        rich_markup_mode=None,
    )
    app.add_typer(lint_app, name="lint")

    @lint_app.callback()
    def lint_default(
        ctx: typer.Context,
        manifest: Path | None = manifest_option(),
        json_out: bool = json_option(),
        strict: bool = strict_option(),
    ) -> None:
        """Check the manifest (same as `llmctl lint manifest`)."""
        if ctx.invoked_subcommand is None:
            raise typer.Exit(run(manifest, json_out=json_out, strict=strict))

    @lint_app.command("manifest")
    def lint_manifest_cmd(
        path: Path | None = typer.Argument(
            None, help="The manifest (default: discovered).", metavar="[PATH]", show_default=False
        ),
        manifest: Path | None = manifest_option(),
        json_out: bool = json_option(),
        strict: bool = strict_option(),
    ) -> None:
        """Check a manifest.

        Schema, YAML pitfalls, names, ports, files, flags, memory.

        Exit 0 without errors (warnings allowed unless --strict), 1 with errors, 2 when the
        manifest cannot be read or parsed.
        """
        raise typer.Exit(run(path or manifest, json_out=json_out, strict=strict))
