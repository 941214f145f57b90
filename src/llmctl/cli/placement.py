"""What `llmctl load`, `unload`, `ps` and `devices` share: several servers at once, placed by
memory. Each command is its own module; this one holds their common parts."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmctl.cli.output import render_error
from llmctl.errors import LlmctlError

if TYPE_CHECKING:
    from llmctl.manifest.model import Manifest
    from llmctl.supervisor.devices import DeviceReport
    from llmctl.supervisor.lifecycle import Supervisor


def profiles_argument() -> Any:
    import typer

    return typer.Argument(None, help="Profile names or aliases.", show_default=False)


def dry_run_option() -> Any:
    import typer

    return typer.Option(
        False, "--dry-run", help="Print the placement decision; start or stop nothing."
    )


def quiet_option() -> Any:
    import typer

    return typer.Option(False, "--quiet", "-q", help="Only the result or the error.")


def lock_timeout_option() -> Any:
    import typer

    return typer.Option(
        600.0,
        "--lock-timeout",
        help="Seconds to wait for another llmctl that is changing the servers (then exit 3).",
        min=0,
    )


@contextmanager
def handle_errors(json_out: bool) -> Iterator[None]:
    """An LlmctlError becomes its rendering (cli/output.py) and its exit status."""
    import typer

    try:
        yield
    except LlmctlError as err:
        raise typer.Exit(render_error(err, json_out=json_out)) from None


def load_manifest_cli(path: str | Path | None, *, json_out: bool = False) -> Manifest:
    from llmctl.manifest.cache import load_manifest

    with handle_errors(json_out):
        return load_manifest(path)
    raise AssertionError("unreachable")  # pragma: no cover


def supervisor(lock_timeout: float) -> Supervisor:
    from llmctl.paths import state_dir
    from llmctl.supervisor.lifecycle import Supervisor

    return Supervisor(state_dir(), lock_timeout=lock_timeout)


def detect_devices(m: Manifest, quiet: bool = False) -> DeviceReport:
    from llmctl.supervisor.devices import detect

    report = detect(m.device_configs())
    if not quiet:
        for w in report.warnings:
            sys.stderr.write(f"warning: {w}\n")
    return report


def mib(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / 1024**3:.2f} GiB" if n >= 1024**3 else f"{n / 1024**2:.0f} MiB"


def usage_text(usage: dict[str, int]) -> str:
    return ", ".join(f"{d} {mib(b)}" for d, b in usage.items()) or "no memory known"


def print_decision(d: dict[str, Any], *, dry_run: bool) -> None:
    prefix = "would " if dry_run else ""
    if d["action"] == "noop":
        sys.stdout.write(f"{d['profile']}: already runs; nothing to do\n")
    elif d["action"] == "start":
        evict = f"{prefix}unload {', '.join(d['evict'])}, then " if d["evict"] else ""
        sys.stdout.write(
            f"{d['profile']}: {evict}{prefix}start on {usage_text(d['usage'])} ({d['reason']})\n"
        )
    else:
        sys.stdout.write(f"{d['profile']}: refused: {d['reason']}\n")
