"""`llmctl logs`: the log of the running llama-server, else of the latest launch."""

from __future__ import annotations

import contextlib
import sys
import time
from typing import TYPE_CHECKING

from llmctl.cli.argv import non_negative_int, parse
from llmctl.cli.output import run_command
from llmctl.cli.switch import supervisor
from llmctl.errors import EXIT_OK, LlmctlError

if TYPE_CHECKING:
    from pathlib import Path

    import typer

    from llmctl.supervisor.lifecycle import Supervisor

DEFAULT_LINES = 50


def run(
    profile: str | None = None,
    *,
    follow: bool = False,
    lines: int = DEFAULT_LINES,
    path_only: bool = False,
    manifest: str | None = None,
) -> int:
    from llmctl.supervisor.logs import tail_lines

    sup = supervisor(0.0)

    def find() -> int:
        name = _profile_name(sup, profile, manifest) if profile else None
        path = sup.log_path(name)
        if path is None and name is not None:
            raise LlmctlError(
                f"no log of profile {name!r}: it was never started here",
                hint="`llmctl ps` lists what runs; `llmctl logs` shows the newest log",
            )
        if path is not None and not path.exists():
            raise LlmctlError(
                f"the log {path} was deleted",
                hint=f"logs are kept in {sup.state_dir / 'logs'}",
            )
        if path is None:
            raise LlmctlError(
                "no llama-server log yet: nothing was started with `llmctl switch`",
                hint=f"logs are kept in {sup.state_dir / 'logs'}",
            )
        if path_only:
            sys.stdout.write(f"{path}\n")
            return EXIT_OK
        size = path.stat().st_size
        for line in tail_lines(path, lines, end=size):
            sys.stdout.write(line + "\n")
        sys.stdout.flush()
        if follow:
            with contextlib.suppress(KeyboardInterrupt):
                _follow(sup, path, size, name)
        return EXIT_OK

    return run_command(False, find)


def _profile_name(sup: Supervisor, given: str, manifest: str | None) -> str:
    """`given` as a profile name: itself when a server or log of it exists, else resolved as an
    alias by the manifest (read only then)."""
    from llmctl.supervisor.logs import latest_log

    if sup.log_path(given) is not None or latest_log(sup.state_dir, given) is not None:
        return given
    from llmctl.manifest.cache import load_manifest

    try:
        return load_manifest(manifest).resolve(given)
    except LlmctlError:
        return given  # no manifest to ask: the "no log" error names it as given


def _follow(sup: Supervisor, path: Path, offset: int, profile: str | None = None) -> None:
    """Like `tail -F`: print what is appended; move to the next launch's log when there is one."""
    from llmctl.supervisor.logs import LogFollower

    # whole lines, JSON lines (--log-jsonl) in their text form
    follower = LogFollower(path, offset, keep_open=False)
    last_check = time.monotonic()
    while True:
        lines, _ = follower.poll()
        if lines:
            sys.stdout.write("".join(line + "\n" for line in lines))
            sys.stdout.flush()
        now = time.monotonic()
        if now - last_check >= 0.5:
            last_check = now
            current = sup.log_path(profile)
            if current is not None and current != path and current.exists():
                path = current
                follower = LogFollower(path, 0, keep_open=False)
                sys.stdout.write(f"\n==> {path} <==\n")
        time.sleep(0.1)  # polling a file: a person reads along, 100 ms is immediate


def fast(args: list[str]) -> int | None:
    parsed = parse(
        args,
        flags={"--follow": "follow", "-f": "follow", "--path": "path_only"},
        options={
            "-n": ("lines", non_negative_int),
            "--lines": ("lines", non_negative_int),
            "--manifest": ("manifest", str),
        },
        positional=(0, 1),
    )
    return None if parsed is None else run(*parsed[0], **parsed[1])


def register(app: typer.Typer) -> None:
    import typer

    from llmctl.cli.options import manifest_option

    @app.command()
    def logs(
        profile: str | None = typer.Argument(
            None, help="A profile (or alias): its server's log, else its latest launch's."
        ),
        manifest: str | None = manifest_option(),
        follow: bool = typer.Option(
            False, "--follow", "-f", help="Keep printing what is appended."
        ),
        lines: int = typer.Option(
            DEFAULT_LINES, "-n", "--lines", help="How many last lines.", min=0, metavar="N"
        ),
        path_only: bool = typer.Option(False, "--path", help="Print the log's path only."),
    ) -> None:
        """Show llama-server's log.

        The running server's log (the newest, with several), else the latest launch's; or the
        log of PROFILE.
        """
        raise typer.Exit(
            run(
                profile,
                follow=follow,
                lines=lines,
                path_only=path_only,
                manifest=str(manifest) if manifest else None,
            )
        )
