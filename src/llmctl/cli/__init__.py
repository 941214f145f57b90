"""Command-line entry point. Parsing only: every command calls the core."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from llmctl.cli.fast import try_fast_path

if TYPE_CHECKING:
    import typer


def build_app() -> typer.Typer:
    """The typer app with every command registered (each module registers on import)."""
    from llmctl.cli import (  # noqa: F401
        completion_cmd,
        estimate_cmds,
        manifest_cmds,
        placement_cmds,
        serve_cmd,
        supervise_cmds,
    )
    from llmctl.cli.app import app

    return app


def main() -> None:
    # `status` is answered without typer, pydantic or rich: it must start in a few milliseconds.
    code = try_fast_path(sys.argv[1:])
    if code is not None:
        sys.exit(code)
    build_app()(prog_name="llmctl")
