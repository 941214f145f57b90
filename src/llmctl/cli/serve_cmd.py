"""`llmctl serve`: the OpenAI-compatible router. Starlette, uvicorn and httpx load only here."""

from __future__ import annotations

from typing import Annotated

import typer

from llmctl.cli.app import app
from llmctl.cli.common import ManifestOpt, handle_errors


@app.command()
def serve(
    host: Annotated[
        str | None,
        typer.Option("--host", help="Address to listen on (default: serve.host, 127.0.0.1)."),
    ] = None,
    port: Annotated[
        int | None, typer.Option("--port", help="Port to listen on (default: serve.port, 8080).")
    ] = None,
    manifest: ManifestOpt = None,
    allow_insecure: Annotated[
        bool,
        typer.Option(
            "--allow-insecure",
            help="Listen beyond loopback without API keys (only on a network you trust).",
        ),
    ] = False,
    log_level: Annotated[
        str, typer.Option("--log-level", help="debug, info, warning or error.")
    ] = "info",
    access_log: Annotated[
        bool, typer.Option("--access-log", help="Log every request line.")
    ] = False,
) -> None:
    """Run the OpenAI-compatible router: one URL for every profile, switching on demand."""
    with handle_errors():
        from llmctl.router.server import run

        run(
            manifest,
            host=host,
            port=port,
            allow_insecure=allow_insecure,
            log_level=log_level.lower(),
            access_log=access_log,
        )
