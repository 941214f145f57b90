"""`llmctl unload`: stop some servers; the others keep running."""

from __future__ import annotations

import sys
from pathlib import Path  # typer reads the annotations at run time
from typing import TYPE_CHECKING, Any

from llmctl.cli.argv import CHANGE_FLAGS, CHANGE_OPTIONS, parse
from llmctl.cli.output import print_json, run_command
from llmctl.cli.switch import DEFAULT_LOCK_TIMEOUT, supervisor
from llmctl.errors import EXIT_OK, UsageError

if TYPE_CHECKING:
    import typer

    from llmctl.supervisor.results import Event


def run(
    profiles: list[str],
    *,
    all_: bool = False,
    manifest: str | Path | None = None,
    json_out: bool = False,
    quiet: bool = False,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    forget: bool = False,
) -> int:
    def on_event(e: Event) -> None:
        # say what was repaired or went wrong; the result line says the rest
        if json_out or quiet:
            return
        plain = e.message.startswith("stopped profile") and ";" not in e.message
        if e.kind in ("error", "kv") or (e.kind == "stopped" and not plain):
            sys.stderr.write(f"{e.message}\n")

    def body() -> int:
        if not profiles and not all_:
            raise UsageError("name profiles to unload, or give --all", hint="llmctl unload --all")
        sup = supervisor(lock_timeout)
        targets: list[str | None] = [None] if all_ else []
        if not all_:
            running = sup.records()
            for p in profiles:
                if p in running:
                    targets.append(p)
                    continue
                from llmctl.manifest.cache import load_manifest

                targets.append(load_manifest(manifest).resolve(p))
        stopped: list[dict[str, Any]] = []
        for target in targets:
            res = sup.stop(profile=target, on_event=on_event, forget=forget, operator=True)
            stopped.append(res.to_json())
            if json_out or quiet:
                continue
            if res.stopped:
                names = ", ".join(repr(p) for p in res.profiles)
                sys.stdout.write(f"unloaded {names} in {res.elapsed_s:.2f} s\n")
            elif res.cancelled:
                names = ", ".join(repr(p) for p in res.cancelled)
                sys.stdout.write(f"cancelled the load of {names}\n")
            else:
                what = "nothing was running" if target is None else f"{target!r} was not running"
                sys.stdout.write(f"{what}\n")
        if json_out:
            print_json({"ok": True, "unloaded": stopped})
        return EXIT_OK

    return run_command(json_out, body)


def fast(args: list[str]) -> int | None:
    parsed = parse(
        args,
        flags={**CHANGE_FLAGS, "--all": "all_", "--forget": "forget"},
        options=CHANGE_OPTIONS,
        positional=(0, 1000),
    )
    if parsed is None:
        return None
    profiles, opts = parsed
    return run(profiles, **opts)


def register(app: typer.Typer) -> None:
    import typer

    from llmctl.cli.options import json_option, lock_timeout_option, manifest_option, quiet_option
    from llmctl.cli.placement import profiles_argument

    @app.command()
    def unload(
        profiles: list[str] | None = profiles_argument(),
        all_: bool = typer.Option(False, "--all", help="Every running profile."),
        manifest: Path | None = manifest_option(),
        json_out: bool = json_option(),
        quiet: bool = quiet_option(),
        lock_timeout: float = lock_timeout_option(),
        forget: bool = typer.Option(
            False,
            "--forget",
            help="Drop these profiles' saved KV caches (keep_kv) instead of saving them.",
        ),
    ) -> None:
        """Stop some profiles' servers; the others keep running.

        Stops the servers of the profiles named (or every one with --all). A profile with keep_kv saves its slots first (restored on its next load) unless --forget, which drops its saved caches, running or not. A profile that does not run is not an error. Exit status: 0, 2 bad input, 3 locked.
        """
        code = run(
            profiles or [],
            all_=all_,
            manifest=manifest,
            json_out=json_out,
            quiet=quiet,
            lock_timeout=lock_timeout,
            forget=forget,
        )
        raise typer.Exit(code)
