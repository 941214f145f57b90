"""`llmctl stop`: stop the running llama-server (or cancel a load another llmctl is doing)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from llmctl.cli.argv import CHANGE_FLAGS, CHANGE_OPTIONS, parse
from llmctl.cli.output import print_json, run_command
from llmctl.cli.switch import DEFAULT_LOCK_TIMEOUT, supervisor
from llmctl.errors import EXIT_OK

if TYPE_CHECKING:
    import typer

    from llmctl.supervisor.results import Event


def run(
    *,
    json_out: bool = False,
    quiet: bool = False,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    forget: bool = False,
) -> int:
    def on_event(e: Event) -> None:
        # say what was repaired or went wrong; the result line says the rest
        if json_out or quiet:
            return
        plain_stop = e.message.startswith("stopped profile") and ";" not in e.message
        waited = e.kind == "locked" and e.message.startswith("waited")
        if e.kind in ("error", "kv") or waited or (e.kind == "stopped" and not plain_stop):
            sys.stderr.write(f"{e.message}\n")

    def body() -> int:
        result = supervisor(lock_timeout).stop(on_event=on_event, forget=forget, operator=True)
        if json_out:
            print_json(result.to_json())
        elif result.stopped:
            sys.stdout.write(
                f"stopped profile {result.profile!r} (pid {result.pid}) "
                f"in {result.elapsed_s:.2f} s\n"
            )
        elif result.cancelled and not quiet:
            names = ", ".join(repr(p) for p in result.cancelled)
            sys.stdout.write(f"cancelled the load of {names}; nothing else was running\n")
        elif not quiet:
            sys.stdout.write("nothing was running\n")
        return EXIT_OK

    return run_command(json_out, body)


def fast(args: list[str]) -> int | None:
    from llmctl.cli.argv import drop_manifest

    args = drop_manifest(args)
    parsed = parse(
        args,
        flags={**CHANGE_FLAGS, "--forget": "forget"},
        options={"--lock-timeout": CHANGE_OPTIONS["--lock-timeout"]},
    )
    return None if parsed is None else run(**parsed[1])


def register(app: typer.Typer) -> None:
    import typer

    from llmctl.cli.options import json_option, lock_timeout_option, manifest_option, quiet_option

    @app.command()
    def stop(
        manifest: str | None = manifest_option(),
        json_out: bool = json_option(),
        quiet: bool = quiet_option(),
        lock_timeout: float = lock_timeout_option(),
        forget: bool = typer.Option(
            False,
            "--forget",
            help="Drop every saved KV cache (keep_kv) instead of saving this one.",
        ),
    ) -> None:
        """Stop the running llama-server.

        Returns once its port is free.

        SIGTERM to its process group, SIGKILL after its stop_timeout. Also cancels a load another
        llmctl is doing. Nothing running is not an error. A keep_kv profile's slots are saved
        first (restored on its next load) unless --forget.
        """
        raise typer.Exit(
            run(json_out=json_out, quiet=quiet, lock_timeout=lock_timeout, forget=forget)
        )
