"""`llmctl schema`: the manifest's JSON Schema, for editors (yaml-language-server)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmctl.cli.output import print_json

if TYPE_CHECKING:
    import typer


def register(app: typer.Typer) -> None:
    @app.command("schema")
    def schema_cmd() -> None:
        """Print the manifest's JSON Schema (for editors).

        For yaml-language-server and other editors that read JSON Schema.
        """
        from llmctl.manifest.schema import manifest_schema

        print_json(manifest_schema())
