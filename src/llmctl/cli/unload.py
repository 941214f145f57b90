"""`llmctl unload`: stop some servers; the others keep running."""

from __future__ import annotations

import sys
from pathlib import Path  # typer reads the annotations at run time
from typing import TYPE_CHECKING, Any

from llmctl.cli.output import print_json
from llmctl.cli.placement import (
    handle_errors,
    load_manifest_cli,
    supervisor,
)
from llmctl.errors import EXIT_OK, UsageError

if TYPE_CHECKING:
    import typer

    from llmctl.supervisor.lifecycle import Event


def register(app: typer.Typer) -> None:
    import typer

    from llmctl.cli.options import json_option, manifest_option
    from llmctl.cli.placement import lock_timeout_option, profiles_argument, quiet_option

    @app.command()
    def unload(
        profiles: list[str] | None = profiles_argument(),
        all_: bool = typer.Option(False, "--all", help="Every running profile."),
        manifest: Path | None = manifest_option(),
        json_out: bool = json_option(),
        quiet: bool = quiet_option(),
        lock_timeout: float = lock_timeout_option(),
    ) -> None:
        """Stop the servers of these profiles (or --all); the others keep running.

        A profile that does not run is not an error. Exit status: 0, 2 bad input, 3 locked.
        """
        stopped: list[dict[str, Any]] = []
        with handle_errors(json_out):
            if not profiles and not all_:
                raise UsageError(
                    "name profiles to unload, or give --all", hint="llmctl unload --all"
                )
            sup = supervisor(lock_timeout)
            if all_:
                targets: list[str | None] = [None]
            else:
                running = sup.records()
                targets = []
                for p in profiles or []:
                    if p in running:
                        targets.append(p)
                        continue
                    m = load_manifest_cli(manifest, json_out=json_out)
                    targets.append(m.resolve(p))

            def on_event(e: Event) -> None:
                # say what was repaired or went wrong; the result line says the rest
                if json_out or quiet:
                    return
                plain = e.message.startswith("stopped profile") and ";" not in e.message
                if e.kind == "error" or (e.kind == "stopped" and not plain):
                    sys.stderr.write(f"{e.message}\n")

            for target in targets:
                res = sup.stop(profile=target, on_event=on_event)
                stopped.append(res.to_json())
                if not json_out and not quiet:
                    if res.stopped:
                        names = ", ".join(repr(p) for p in res.profiles)
                        sys.stdout.write(f"unloaded {names} in {res.elapsed_s:.2f} s\n")
                    else:
                        what = (
                            "nothing was running"
                            if target is None
                            else f"{target!r} was not running"
                        )
                        sys.stdout.write(f"{what}\n")
        if json_out:
            print_json({"ok": True, "unloaded": stopped})
        raise typer.Exit(EXIT_OK)
