"""The typer application (root options only); command modules register on it. Given the order
to list the commands in, so it needs nothing from the command table (cli/__init__.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import typer
from typer.core import TyperGroup


def _in_order(order: Sequence[str]) -> type[TyperGroup]:
    """A group listing its commands in `order` (typer puts groups such as `lint` last)."""
    ranks = {name: i for i, name in enumerate(order)}

    class InOrder(TyperGroup):
        def list_commands(self, ctx: Any) -> list[str]:
            names = super().list_commands(ctx)
            return sorted(names, key=lambda n: ranks.get(n, len(ranks)))

    return InOrder


def _version(value: bool) -> None:
    if value:
        from llmctl import __version__

        typer.echo(f"llmctl {__version__}")
        raise typer.Exit()


def new_app(order: Sequence[str] = ()) -> typer.Typer:
    """The root app; `--help` lists its commands in `order` (the command table's)."""
    app = typer.Typer(
        name="llmctl",
        cls=_in_order(order),
        help=(
            "Manage llama.cpp's llama-server: validated profiles, exact memory estimates, "
            "switching, and an OpenAI-compatible router."
        ),
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        # plain help: no `<bool>` after every flag, and no rich import for --help
        rich_markup_mode=None,
        add_completion=True,
        context_settings={"help_option_names": ["-h", "--help"]},
    )

    @app.callback()
    def root(
        version: bool = typer.Option(
            False,
            "--version",
            "-V",
            help="Print the version and exit.",
            callback=_version,
            is_eager=True,
        ),
    ) -> None:
        """Manage llama.cpp's llama-server from validated profiles."""

    return app
