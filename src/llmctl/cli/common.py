"""Helpers shared by the command modules: options, output, error rendering."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from llmctl.errors import EXIT_INPUT, LlmctlError, ManifestError

if TYPE_CHECKING:
    from rich.console import Console

    from llmctl.manifest.model import Manifest


def _complete_profile(incomplete: str) -> list[str]:
    """Shell completion for profile names and aliases, from the discovered manifest."""
    try:
        from llmctl.manifest.model import load_manifest

        manifest = load_manifest(None)
    except Exception:
        return []
    names: list[str] = []
    for name, profile in manifest.profiles.items():
        names.append(name)
        names.extend(profile.aliases)
    return [n for n in names if n.startswith(incomplete)]


ManifestOpt = Annotated[
    Path | None,
    typer.Option(
        "--manifest",
        help="The manifest to use (default: $LLMCTL_MANIFEST, ./profiles.yaml, "
        "$XDG_CONFIG_HOME/llmctl/profiles.yaml).",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")]
ProfileArg = Annotated[
    str, typer.Argument(help="A profile name or alias.", autocompletion=_complete_profile)
]


@cache
def console() -> Console:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


@cache
def err_console() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def render_error(err: LlmctlError, *, json_out: bool) -> None:
    """Human text on stderr, or `{"ok": false, "error": {...}}` on stdout."""
    if json_out:
        print_json({"ok": False, "error": err.to_json()})
        return
    from rich.markup import escape

    out = err_console()
    out.print(f"[bold red]error:[/] {escape(err.message)}")
    if isinstance(err, ManifestError):
        for p in err.problems[:20]:
            where = f"{p.where()}: " if p.file else ""
            prof = f"[{p.profile}] " if p.profile else ""
            out.print(f"  {escape(where)}{escape(prof)}{escape(p.message)}")
            if p.hint:
                out.print(f"    [dim]hint: {escape(p.hint)}[/]")
        if len(err.problems) > 20:
            out.print(f"  ... and {len(err.problems) - 20} more (llmctl lint shows them all)")
    if err.hint:
        out.print(f"[dim]hint:[/] {escape(err.hint)}")


def fail(err: LlmctlError, *, json_out: bool) -> NoReturn:
    render_error(err, json_out=json_out)
    raise typer.Exit(err.exit_code)


@contextmanager
def handle_errors(json_out: bool = False) -> Iterator[None]:
    """Render an LlmctlError (human or JSON) and exit with its code; Ctrl-C exits 130."""
    try:
        yield
    except LlmctlError as err:
        fail(err, json_out=json_out)
    except KeyboardInterrupt:
        err_console().print("[yellow]interrupted[/]")
        raise typer.Exit(130) from None


def load_manifest_cli(path: Path | None, *, json_out: bool = False) -> Manifest:
    """Load the manifest or exit 2 with its problems rendered."""
    from llmctl.manifest.model import load_manifest

    try:
        return load_manifest(path)
    except ManifestError as err:
        fail(err, json_out=json_out)


__all__ = [
    "EXIT_INPUT",
    "JsonOpt",
    "ManifestOpt",
    "ProfileArg",
    "console",
    "err_console",
    "fail",
    "handle_errors",
    "load_manifest_cli",
    "print_json",
    "render_error",
]
