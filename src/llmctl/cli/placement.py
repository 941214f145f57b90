"""What `llmctl load`, `unload`, `ps` and `devices` share: several servers at once, placed by
memory. Each command is its own module; this one holds their common parts. No typer here at
import time: the fast paths use it."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmctl.manifest.model import Manifest
    from llmctl.supervisor.devices import DeviceReport


def profiles_argument() -> Any:
    import typer

    return typer.Argument(
        None, help="Profile names or aliases.", metavar="PROFILE", show_default=False
    )


def dry_run_option() -> Any:
    import typer

    return typer.Option(
        False, "--dry-run", help="Print the placement decision; start or stop nothing."
    )


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
