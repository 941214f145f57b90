"""`llmctl completion SHELL`: the completion script (completions/ holds the generated copies)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

from llmctl.cli.app import app


class Shell(StrEnum):
    bash = "bash"
    zsh = "zsh"
    fish = "fish"


def completion_script(shell: str) -> str:
    from typer._completion_shared import get_completion_script

    script = get_completion_script(prog_name="llmctl", complete_var="_LLMCTL_COMPLETE", shell=shell)
    return script if script.endswith("\n") else script + "\n"


@app.command("completion")
def completion_cmd(shell: Annotated[Shell, typer.Argument(help="bash, zsh or fish.")]) -> None:
    """Print the shell completion script (commands, options, profile names).

    bash: llmctl completion bash > ~/.local/share/bash-completion/completions/llmctl
    zsh:  llmctl completion zsh > "${fpath[1]}/_llmctl"
    fish: llmctl completion fish > ~/.config/fish/completions/llmctl.fish
    """
    typer.echo(completion_script(shell.value), nl=False)
