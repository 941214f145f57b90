"""`llmctl command PROFILE`: the exact llama-server command line a switch runs, with what the
launch adds (a keep_kv profile's --slot-save-path, --log-jsonl where the binary has it)."""

from __future__ import annotations

import sys
from pathlib import Path  # typer reads the annotations at run time
from typing import TYPE_CHECKING

from llmctl.cli.argv import parse
from llmctl.cli.output import print_json, run_command
from llmctl.errors import EXIT_OK

if TYPE_CHECKING:
    import typer


def run(profile: str, manifest: str | Path | None = None, *, json_out: bool = False) -> int:
    def body() -> int:
        from llmctl.manifest.cache import load_manifest
        from llmctl.paths import state_dir
        from llmctl.placement.placer import command_spec
        from llmctl.supervisor.launch import as_launched

        spec = as_launched(state_dir(), command_spec(load_manifest(manifest), profile))
        if json_out:
            print_json(spec.to_json())
        else:
            sys.stdout.write(spec.shell() + "\n")
        return EXIT_OK

    return run_command(json_out, body)


def fast(args: list[str]) -> int | None:
    parsed = parse(
        args,
        flags={"--json": "json_out"},
        options={"--manifest": ("manifest", str)},
        positional=(1, 1),
    )
    if parsed is None:
        return None
    (profile,), opts = parsed
    return run(profile, **opts)


def register(app: typer.Typer) -> None:
    import typer

    from llmctl.cli.options import json_option, manifest_option, profile_argument

    @app.command("command")
    def command_cmd(
        profile: str = profile_argument(),
        manifest: Path | None = manifest_option(),
        json_out: bool = json_option(),
    ) -> None:
        """Print the llama-server command line a switch runs.

        Exactly what `llmctl switch PROFILE` starts, shell-quoted (--json: its parts).
        """
        raise typer.Exit(run(profile, manifest, json_out=json_out))
