"""`llmctl load`: start profiles beside those that run, placed by memory."""

from __future__ import annotations

import sys
import time
from pathlib import Path  # typer reads the annotations at run time
from typing import TYPE_CHECKING, Any

from llmctl.cli.argv import CHANGE_FLAGS, CHANGE_OPTIONS, PULL_FLAG, parse
from llmctl.cli.output import (
    EXIT_INTERRUPTED,
    error_json,
    print_json,
    render_error,
    run_command,
)
from llmctl.cli.placement import detect_devices, print_decision, usage_text
from llmctl.cli.switch import DEFAULT_LOCK_TIMEOUT, supervisor
from llmctl.errors import EXIT_FAILED, EXIT_OK, UsageError

if TYPE_CHECKING:
    from collections.abc import Callable

    import typer

    from llmctl.supervisor.results import Event


def run(
    profiles: list[str],
    *,
    manifest: str | Path | None = None,
    json_out: bool = False,
    dry_run: bool = False,
    quiet: bool = False,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    pull: bool = False,
) -> int:
    results: list[dict[str, Any]] = []

    def finish(code: int) -> int:
        if json_out:
            print_json({"ok": code == EXIT_OK, "profiles": results})
        return code

    def body() -> int:
        from llmctl.manifest.cache import load_manifest
        from llmctl.placement.placer import PlacementRefused, load_profile, plan_set, refusal

        m = load_manifest(manifest)
        if not profiles:
            raise UsageError("name one or more profiles to load", hint="llmctl load PROFILE...")
        names = [m.resolve(p) for p in profiles]
        if not dry_run:  # every hub model here before anything is stopped
            from llmctl.cli.pull import ensure_pulled

            ensure_pulled(m, names, pull=pull, quiet=quiet or json_out)
        report = detect_devices(m, quiet or json_out)
        sup = supervisor(lock_timeout)
        names = list(dict.fromkeys(names))  # `load a A` names one profile
        # the profiles of one command are one set: placed together, or refused before any loads
        planned = (
            plan_set(m, names, sup.records(), report.devices) if len(names) > 1 or dry_run else []
        )
        if dry_run:
            for decision, placed in planned:
                item: dict[str, Any] = {
                    "profile": decision.profile,
                    "dry_run": True,
                    "decision": decision.to_json(),
                }
                if decision.option is not None:
                    item["argv"] = list(placed.specs[decision.option].argv)
                    item["port"] = placed.specs[decision.option].port
                results.append(item)
                if not json_out:
                    print_decision(decision.to_json(), dry_run=True)
            refused = any(d.action == "refuse" for d, _ in planned)
            return finish(EXIT_FAILED if refused else EXIT_OK)
        if planned and planned[-1][0].action == "refuse":
            err = refusal(planned[-1][0])
            results.append(
                {"profile": planned[-1][0].profile, "ok": False, "error": error_json(err)}
            )
            if not json_out:
                render_error(err, json_out=False)
            return finish(EXIT_FAILED)
        import threading

        from llmctl.cli.progress import make_view, run_with_view

        code = EXIT_OK
        cancel = threading.Event()
        for i, name in enumerate(names):
            t0 = time.monotonic()

            def work(on_event: Callable[[Event], None], name: str = name, i: int = i) -> Any:
                return load_profile(
                    sup,
                    m,
                    name,
                    report.devices,
                    on_event=on_event,
                    keep=names[:i],
                    cancel=cancel,
                )

            # one view per profile: live on a terminal, plain lines otherwise
            view = make_view(name, quiet or json_out)
            try:
                outcome = run_with_view(view, work, cancel)
            except PlacementRefused as err:
                results.append({"profile": name, "ok": False, "error": error_json(err)})
                if not json_out:
                    render_error(err, json_out=False)
                return finish(EXIT_FAILED)
            res = outcome.result
            results.append(
                {
                    "profile": name,
                    "ok": res is not None and res.ready,
                    "decision": outcome.decision.to_json() if outcome.decision else None,
                    "result": res.to_json() if res else None,
                }
            )
            if outcome.oom is not None:  # the first load ran out of memory (placement.after_oom)
                results[-1]["oom_retry"] = outcome.oom.to_json()
                if res is not None and res.ready and not json_out and not quiet:
                    sys.stderr.write(f"note: {outcome.oom.reason}\n")
            if res is None or not res.ready:
                if res is not None and res.error is not None and not json_out:
                    render_error(res.error, json_out=False)
                return finish(EXIT_INTERRUPTED if cancel.is_set() else EXIT_FAILED)
            if not json_out:
                what = "already running" if res.noop else "ready"
                devices = ""
                if outcome.decision is not None and outcome.decision.usage:
                    devices = f" on {usage_text(dict(outcome.decision.usage))}"
                sys.stdout.write(
                    f"{what}: profile {name!r} at {res.url} (pid {res.pid}){devices} "
                    f"in {time.monotonic() - t0:.2f} s\n"
                )
        return finish(code)

    return run_command(json_out, body)


def fast(args: list[str]) -> int | None:
    parsed = parse(
        args,
        flags={**CHANGE_FLAGS, **PULL_FLAG, "--dry-run": "dry_run"},
        options=CHANGE_OPTIONS,
        positional=(1, 1000),
    )
    if parsed is None:
        return None
    profiles, opts = parsed
    return run(profiles, **opts)


def register(app: typer.Typer) -> None:
    import typer

    from llmctl.cli.options import (
        json_option,
        lock_timeout_option,
        manifest_option,
        pull_option,
        quiet_option,
    )
    from llmctl.cli.placement import dry_run_option, profiles_argument

    @app.command()
    def load(
        profiles: list[str] | None = profiles_argument(),
        manifest: Path | None = manifest_option(),
        json_out: bool = json_option(),
        dry_run: bool = dry_run_option(),
        quiet: bool = quiet_option(),
        lock_timeout: float = lock_timeout_option(),
        pull: bool = pull_option(),
    ) -> None:
        """Start profiles beside those that run.

        Idle servers are unloaded when memory is short. Each profile is placed by its estimate per device (gpu: in the manifest): it starts if it
        fits beside what runs; otherwise the least costly unpinned servers go; a profile that
        cannot fit even alone is refused before anything is stopped.
        Exit status: 0 all loaded, 1 a load failed or was refused, 2 bad input, 3 locked.
        """
        code = run(
            profiles or [],
            manifest=manifest,
            json_out=json_out,
            dry_run=dry_run,
            quiet=quiet,
            lock_timeout=lock_timeout,
            pull=pull,
        )
        raise typer.Exit(code)
