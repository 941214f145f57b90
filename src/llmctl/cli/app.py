"""The typer application (root options only); command modules register on it."""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperGroup


class _InTableOrder(TyperGroup):
    """Commands listed as the command table orders them (typer puts groups such as `lint` last)."""

    def list_commands(self, ctx: Any) -> list[str]:
        from llmctl.cli import COMMANDS

        order = list(COMMANDS)
        names = super().list_commands(ctx)
        return sorted(names, key=lambda n: order.index(n) if n in order else len(order))


def _version(value: bool) -> None:
    if value:
        from llmctl import __version__

        typer.echo(f"llmctl {__version__}")
        raise typer.Exit()


def new_app() -> typer.Typer:
    app = typer.Typer(
        name="llmctl",
        cls=_InTableOrder,
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
