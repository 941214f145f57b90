"""Cancel files: how a stop asks a load that another llmctl holds the lock for to end.

A load holds the state lock until its server is ready, which for a big model takes minutes. A
stop does not wait for it: it touches `cancel-<launch_id>` in the state folder, beside the
record of each load in progress (phase "starting", its llmctl alive), and the loading llmctl's
LoadWatcher (readiness.py) polls for that file, kills its launch and drops the record. The stop
then takes the lock and removes the files it made.

    path(state_dir, launch_id)              the cancel file of one launch
    request(state_dir, emit, profile=None)  touch the files; [(profile, path)] of those made
    withdraw(requests)                      remove them (the stop is done)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from llmctl.supervisor.state import CorruptState, read_servers

if TYPE_CHECKING:
    from llmctl.supervisor.results import Emitter


def path(state_dir: Path, launch_id: str) -> Path:
    """The cancel file of the launch `launch_id`."""
    return state_dir / f"cancel-{launch_id}"


def request(state_dir: Path, emit: Emitter, profile: str | None = None) -> list[tuple[str, Path]]:
    """Ask every load in progress (of `profile` only, when named) to end: the profile and the
    cancel file of each one asked."""
    try:
        recs = read_servers(state_dir)
    except CorruptState:
        return []
    made = []
    for rec in recs.values():
        if profile is not None and rec.profile != profile:
            continue
        if rec.phase != "starting" or not rec.is_live():
            continue
        file = path(state_dir, rec.launch_id)
        try:
            file.touch()
        except OSError:
            continue
        emit(
            "stopping",
            f"cancelling the load of profile {rec.profile!r} in progress (llmctl pid {rec.owner_pid})",
            rec.profile,
        )
        made.append((rec.profile, file))
    return made


def withdraw(requests: Iterable[tuple[str, Path]]) -> None:
    """Remove the cancel files `request` made."""
    for _, file in requests:
        with contextlib.suppress(OSError):
            file.unlink()
