"""`llmctl serve`: the OpenAI-compatible router. Starlette, uvicorn and httpx load only here."""

from __future__ import annotations

from pathlib import Path  # typer reads the annotations at run time
from typing import TYPE_CHECKING

from llmctl.cli.output import run_command
from llmctl.errors import EXIT_OK

if TYPE_CHECKING:
    import typer


def register(app: typer.Typer) -> None:
    import typer

    from llmctl.cli.options import manifest_option

    @app.command()
    def serve(
        host: str | None = typer.Option(
            None,
            "--host",
            help="Address to listen on (default: serve.host, 127.0.0.1).",
            metavar="ADDRESS",
            show_default=False,
        ),
        port: int | None = typer.Option(
            None,
            "--port",
            help="Port to listen on (default: serve.port, 8080).",
            metavar="PORT",
            show_default=False,
        ),
        manifest: Path | None = manifest_option(),
        allow_insecure: bool = typer.Option(
            False,
            "--allow-insecure",
            help="Listen beyond loopback without API keys (only on a network you trust).",
        ),
        log_level: str = typer.Option(
            "info", "--log-level", help="debug, info, warning or error.", metavar="LEVEL"
        ),
        access_log: bool = typer.Option(False, "--access-log", help="Log every request line."),
    ) -> None:
        """Run the OpenAI-compatible router.

        One URL for every profile, switching on demand.
        """

        def body() -> int:
            from llmctl.router.server import run

            run(
                manifest,
                host=host,
                port=port,
                allow_insecure=allow_insecure,
                log_level=log_level.lower(),
                access_log=access_log,
            )
            return EXIT_OK

        raise typer.Exit(run_command(False, body))
