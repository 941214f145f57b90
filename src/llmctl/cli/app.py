"""The typer application (root options only); command modules register on it."""

from __future__ import annotations

import typer


def _version(value: bool) -> None:
    if value:
        from llmctl import __version__

        typer.echo(f"llmctl {__version__}")
        raise typer.Exit()


def new_app() -> typer.Typer:
    app = typer.Typer(
        name="llmctl",
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
