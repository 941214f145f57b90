"""`llmctl switch PROFILE`: make PROFILE the running llama-server, return when it is ready.

The manifest comes from the cache (no YAML, no pydantic) and nothing of typer or rich is imported
unless asked for (rich draws the live view on a terminal), so the command adds little to
llama-server's own start.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path  # typer reads the annotations at run time
from typing import TYPE_CHECKING, Any

from llmctl.cli.argv import CHANGE_FLAGS, CHANGE_OPTIONS, PULL_FLAG, parse
from llmctl.cli.output import (
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    error_json,
    print_json,
    render_error,
)
from llmctl.errors import EXIT_FAILED, EXIT_OK, LlmctlError

if TYPE_CHECKING:
    import typer

    from llmctl.supervisor.launch import LaunchSpec
    from llmctl.supervisor.lifecycle import Supervisor
    from llmctl.supervisor.results import Event, SwitchResult

DEFAULT_LOCK_TIMEOUT = 600.0


def supervisor(lock_timeout: float) -> Supervisor:
    from llmctl.paths import state_dir
    from llmctl.supervisor.lifecycle import Supervisor

    return Supervisor(state_dir(), lock_timeout=lock_timeout)


def switch_json(result: SwitchResult) -> dict[str, Any]:
    """The `switch --json` object: the result, `ok`, and the error as every JSON error is shown."""
    out = result.to_json()
    out["ok"] = result.ready
    out["error"] = None if result.error is None else error_json(result.error)
    return out


def run(
    profile: str,
    manifest: str | Path | None = None,
    *,
    json_out: bool = False,
    quiet: bool = False,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    pull: bool = False,
) -> int:
    t0 = time.monotonic()
    try:
        from llmctl.cli.pull import ensure_pulled
        from llmctl.manifest.cache import load_manifest
        from llmctl.placement.placer import command_spec

        m = load_manifest(manifest)
        ensure_pulled(m, [profile], pull=pull, quiet=quiet or json_out)
        spec = command_spec(m, profile)
        return _run_switch(spec, json_out=json_out, quiet=quiet, lock_timeout=lock_timeout)
    except LlmctlError as err:
        if not json_out:
            return render_error(err, json_out=False)
        # the shape of a switch result, with nothing launched
        print_json(
            {
                "profile": profile,
                "pid": None,
                "port": None,
                "url": None,
                "ready": False,
                "elapsed_s": round(time.monotonic() - t0, 3),
                "log": None,
                "ok": False,
                "error": error_json(err),
            }
        )
        return err.exit_code


def _run_switch(spec: LaunchSpec, *, json_out: bool, quiet: bool, lock_timeout: float) -> int:
    """Switch in a worker thread; this thread draws progress and turns Ctrl-C into a cancel."""
    import queue
    import signal

    from llmctl.cli.progress import make_view

    sup = supervisor(lock_timeout)
    cancel = threading.Event()
    events: queue.SimpleQueue[Event] = queue.SimpleQueue()
    box: dict[str, Any] = {}
    done = threading.Event()

    def work() -> None:
        try:
            box["result"] = sup.switch(spec, on_event=events.put, cancel=cancel)
        except BaseException as exc:  # handed to the main thread
            box["exc"] = exc
        finally:
            done.set()

    view = make_view(spec.profile, quiet)
    # Not Thread.join(): a KeyboardInterrupt inside join() can leave is_alive() False while the
    # thread still runs. An Event is set only once the worker has finished for real.
    worker = threading.Thread(target=work, name="llmctl-switch", daemon=True)
    interrupted = 0  # the exit code once cancelled: 130 for Ctrl-C, 143 for SIGTERM
    signalled: list[int] = []

    def on_sigterm(signum: int, frame: object) -> None:
        # `timeout 60 llmctl switch big` sends SIGTERM: cancel like Ctrl-C, leave nothing
        signalled.append(signum)
        raise KeyboardInterrupt

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, on_sigterm) if main_thread else None
    view.start()
    try:
        worker.start()
        while True:
            try:
                # woken at once by the worker; the timeout only paces the live view
                finished = done.wait(0.05)
                while not events.empty():
                    view.event(events.get())
                if finished:
                    break
                view.tick()
            except KeyboardInterrupt:
                if not interrupted:
                    interrupted = EXIT_TERMINATED if signalled else EXIT_INTERRUPTED
                    cancel.set()
                    view.note("cancelling: stopping the load, leaving nothing running ...")
        while not events.empty():
            view.event(events.get())
    finally:
        view.stop()
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    if "exc" in box:
        raise box["exc"]
    result: SwitchResult = box["result"]
    if json_out:
        print_json(switch_json(result))
    elif result.ready:
        sys.stdout.write(_ready_line(result) + "\n")
        sys.stdout.flush()
    else:
        assert result.error is not None
        render_error(result.error, json_out=False)
    if result.ready:
        return EXIT_OK
    return interrupted or EXIT_FAILED


def _ready_line(result: SwitchResult) -> str:
    if result.noop:
        return (
            f"profile {result.profile!r} already runs with this configuration "
            f"(pid {result.pid}) at {result.url}; nothing to do"
        )
    return (
        f"ready: profile {result.profile!r} at {result.url} "
        f"(pid {result.pid}) in {result.elapsed_s:.2f} s"
    )


def fast(args: list[str]) -> int | None:
    parsed = parse(
        args,
        flags={**CHANGE_FLAGS, **PULL_FLAG},
        options=CHANGE_OPTIONS,
        positional=(1, 1),
    )
    if parsed is None:
        return None
    (profile,), opts = parsed
    return run(profile, **opts)


def register(app: typer.Typer) -> None:
    import typer

    from llmctl.cli.options import (
        json_option,
        lock_timeout_option,
        manifest_option,
        profile_argument,
        pull_option,
        quiet_option,
    )

    @app.command()
    def switch(
        profile: str = profile_argument(),
        manifest: Path | None = manifest_option(),
        json_out: bool = json_option(),
        quiet: bool = quiet_option(),
        lock_timeout: float = lock_timeout_option(),
        pull: bool = pull_option(),
    ) -> None:
        """Make PROFILE the running llama-server.

        Returns when /health answers.

        Stops the current server, starts this one, waits until it is ready. A no-op when PROFILE
        already runs healthy with the same configuration. Exactly PROFILE runs afterwards:
        every other server is stopped (`llmctl load` starts one beside the others instead).

        Exit codes: 0 ready, 1 the server failed to start, 2 invalid input, 3 locked by another
        llmctl, 130 cancelled by Ctrl-C, 143 cancelled by SIGTERM (nothing is left running).
        """
        code = run(
            profile,
            manifest,
            json_out=json_out,
            quiet=quiet,
            lock_timeout=lock_timeout,
            pull=pull,
        )
        raise typer.Exit(code)
