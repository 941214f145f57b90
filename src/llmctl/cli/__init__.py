"""Command-line entry point. Parsing only: every command calls the core."""

from __future__ import annotations

import importlib
import sys

# Each module registers its commands on llmctl.cli.app.app when imported.
_COMMAND_MODULES = (
    "llmctl.cli.manifest_cmds",
    "llmctl.cli.completion_cmd",
    "llmctl.cli.estimate_cmds",
    "llmctl.cli.supervise_cmds",
    "llmctl.cli.serve_cmd",
)


def build_app() -> object:
    from llmctl.cli.app import app

    for name in _COMMAND_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
    return app


def main() -> None:
    argv = sys.argv[1:]
    try:
        from llmctl.cli.fast import try_fast_path
    except ModuleNotFoundError:
        pass
    else:
        code = try_fast_path(argv)
        if code is not None:
            sys.exit(code)
    app = build_app()
    app(prog_name="llmctl")  # type: ignore[operator]
