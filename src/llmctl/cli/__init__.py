"""Command-line entry point: a table of commands, each in its own module, imported on demand.

A command module has `register(app)`, which adds its typer command(s), and may have
`fast(args) -> int | None`, which runs the everyday invocations without importing typer (its
import alone costs several bare interpreter starts) and returns None for anything it does not
recognise, which typer then parses as usual (help, errors, the rest). Adding a command is one
module and one line in COMMANDS.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import typer

# command name -> module; `llmctl --help` lists them in this order
COMMANDS: dict[str, str] = {
    "init": "llmctl.cli.init",
    "lint": "llmctl.cli.lint",
    "command": "llmctl.cli.command",
    "schema": "llmctl.cli.schema",
    "estimate": "llmctl.cli.estimate",
    "fit": "llmctl.cli.fit",
    "pull": "llmctl.cli.pull",
    "switch": "llmctl.cli.switch",
    "status": "llmctl.cli.status",
    "stop": "llmctl.cli.stop",
    "logs": "llmctl.cli.logs",
    "load": "llmctl.cli.load",
    "unload": "llmctl.cli.unload",
    "ps": "llmctl.cli.ps",
    "devices": "llmctl.cli.devices",
    "serve": "llmctl.cli.serve",
    "demo": "llmctl.cli.demo",
    "completion": "llmctl.cli.completion",
}


def _module(name: str) -> object:
    import importlib

    return importlib.import_module(COMMANDS[name])


def build_app(names: list[str] | None = None) -> typer.Typer:
    """The typer app with the given commands registered (all by default)."""
    from llmctl.cli.app import new_app

    app = new_app(list(COMMANDS))
    for name in names or list(COMMANDS):
        _module(name).register(app)  # type: ignore[attr-defined]
    return app


def run_fast(args: list[str]) -> int | None:
    """The exit code of a command its module ran without typer, or None."""
    if os.environ.get("_LLMCTL_COMPLETE"):
        from llmctl.cli.completion import fast_complete

        return fast_complete()
    if not args or args[0] not in COMMANDS:
        return None
    fast = getattr(_module(args[0]), "fast", None)
    code = None if fast is None else fast(args[1:])
    return None if code is None else int(code)


EXIT_PIPE = 141  # 128 + SIGPIPE, as a shell reports a command whose reader went away


def main() -> None:
    try:
        code = run_fast(sys.argv[1:])
        if code is not None:
            sys.stdout.flush()
            sys.exit(code)
        build_app()(prog_name="llmctl")
    except BrokenPipeError:
        # the reader left (`llmctl estimate --all | head`): stop quietly, as cat or grep do;
        # stdout goes to /dev/null so the interpreter's final flush has nowhere to fail
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(EXIT_PIPE)
