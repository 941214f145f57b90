"""`llmctl completion SHELL`, and the answers to the shell's Tab presses.

The scripts (typer's, copies in completions/) call llmctl with `_LLMCTL_COMPLETE` set. Profile
names, asked on every Tab after `llmctl switch`, are answered here from the cached manifest
without typer; everything else (commands, options) goes to typer's completion.
"""

from __future__ import annotations

import os
import sys
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import typer

# commands whose positional arguments are profile names
PROFILE_COMMANDS = frozenset({"switch", "command", "fit", "estimate"})
# options that take a value (the word after them is not a profile)
VALUE_OPTIONS = frozenset({"--manifest", "--vram", "--lock-timeout"})


class Shell(StrEnum):
    bash = "bash"
    zsh = "zsh"
    fish = "fish"


def completion_script(shell: str) -> str:
    from typer._completion_shared import get_completion_script

    script = get_completion_script(prog_name="llmctl", complete_var="_LLMCTL_COMPLETE", shell=shell)
    return script if script.endswith("\n") else script + "\n"


def profile_names(incomplete: str, manifest: str | None = None) -> list[str]:
    """Profile names and aliases that start with `incomplete`; none when there is no manifest."""
    from llmctl.errors import LlmctlError
    from llmctl.manifest.cache import load_manifest

    try:
        names = load_manifest(manifest).names()
    except LlmctlError:
        return []
    return [n for n in names if n.startswith(incomplete)]


def complete_profile(incomplete: str) -> list[str]:
    """typer's autocompletion for a profile argument."""
    return profile_names(incomplete)


def _split(line: str) -> list[str]:
    import shlex

    try:
        return shlex.split(line)
    except ValueError:  # an open quote while typing
        return line.split()


def _words() -> tuple[str, list[str], str] | None:
    """(shell, words after the program name, the word being completed)."""
    shell = os.environ.get("_LLMCTL_COMPLETE", "").removeprefix("complete_")
    if shell == "bash":
        words = _split(os.environ.get("COMP_WORDS", ""))
        try:
            cword = int(os.environ.get("COMP_CWORD", ""))
        except ValueError:
            return None
        return shell, words[1:cword], words[cword] if cword < len(words) else ""
    if shell in ("zsh", "fish"):
        line = os.environ.get("_TYPER_COMPLETE_ARGS", "")
        words = _split(line)[1:]
        if words and not line.endswith(" "):
            return shell, words[:-1], words[-1]
        return shell, words, ""
    return None


def fast_complete() -> int | None:
    """Answer a Tab press for a profile name; None when typer should answer."""
    got = _words()
    if got is None:
        return None
    shell, args, incomplete = got
    if not args or args[0] not in PROFILE_COMMANDS or incomplete.startswith("-"):
        return None
    if args[-1] in VALUE_OPTIONS:
        return None  # a path or a size, not a profile
    manifest = None
    positional = 0
    i = 1
    while i < len(args):
        if args[i] == "--":
            return None  # estimate -- ARGS: llama-server's arguments
        if args[i] in VALUE_OPTIONS:
            if args[i] == "--manifest" and i + 1 < len(args):
                manifest = args[i + 1]
            i += 2
            continue
        if args[i].startswith("--manifest="):
            manifest = args[i].partition("=")[2]
        elif not args[i].startswith("-"):
            positional += 1
        i += 1
    if positional and args[0] != "estimate":
        return 0  # the one profile is given: nothing more to offer
    names = profile_names(incomplete, manifest)
    if shell == "bash":
        out = "\n".join(names)
    elif shell == "zsh":
        # typer's zsh format: an _arguments spec, or files when there is nothing to offer
        quoted = "\n".join('"' + _zsh_escape(n) + '"' for n in names)
        out = f"_arguments '*: :(({quoted}))'" if names else "_files"
    else:
        action = os.environ.get("_TYPER_COMPLETE_FISH_ACTION", "")
        if action == "is-args":
            return 0 if names else 1
        out = "\n".join(names)
    if out:
        sys.stdout.write(out + "\n")
    return 0


def _zsh_escape(s: str) -> str:
    return (
        s.replace('"', '""')
        .replace("'", "''")
        .replace("$", "\\$")
        .replace("`", "\\`")
        .replace(":", r"\\:")
    )


def register(app: typer.Typer) -> None:
    import typer

    @app.command("completion")
    def completion_cmd(
        shell: Shell = typer.Argument(..., help="bash, zsh or fish.", metavar="SHELL"),
    ) -> None:
        """Print the shell completion script.

        It completes commands, options and profile names.

        bash: llmctl completion bash > ~/.local/share/bash-completion/completions/llmctl
        zsh:  llmctl completion zsh > "${fpath[1]}/_llmctl"
        fish: llmctl completion fish > ~/.config/fish/completions/llmctl.fish
        """
        typer.echo(completion_script(shell.value), nl=False)
