"""The operator's stops, recorded: a stop from a shell wins over a router's loads.

CONTRACT: `llmctl stop` / `llmctl unload` write `stops.json` in the state folder (the wall time
of the newest stop of every server, and of each profile stopped alone) before they cancel a
load or take the lock. A router then loads a profile only for requests that arrived after the
newest stop covering it; the requests that waited before it are answered 503 ("stopped from a
shell"), and nothing reloads until a new request comes.

    record_stop(state_dir, profile=None)       profile None: every server
    stopped_after(state_dir, profile, since)   the StopMark newer than `since`, or None
    refusal(state_dir, profile, admitted_at)   the OperatorStopped a load for a request that
                                               arrived at `admitted_at` ends with, or None

A stop that cannot be recorded (read-only folder) stops anyway; the file is small and
rewritten atomically. Reading is cheap: only a load reads it.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import NamedTuple

from llmctl.errors import OperatorStopped

STOPS_FILE = "stops.json"
_MAX_BYTES = 1 << 20  # a hand-edited or corrupt file is ignored, never read whole
_ALL = "*"  # the key for "every server"


class StopMark(NamedTuple):
    """A stop from a shell: when (wall clock), by which process, of which profile (None: all).
    (A NamedTuple: `llmctl stop` imports this module, and a dataclass costs ten times more.)"""

    at: float
    pid: int
    profile: str | None

    def describe(self) -> str:
        what = "every server" if self.profile is None else f"profile {self.profile!r}"
        clock = time.strftime("%H:%M:%S", time.localtime(self.at))
        return f"{what} was stopped from a shell (`llmctl stop`, pid {self.pid}) at {clock}"


def _path(state_dir: Path) -> Path:
    return state_dir / STOPS_FILE


def _read(state_dir: Path) -> dict[str, list[float]]:
    try:
        with open(_path(state_dir), "rb") as f:
            blob = f.read(_MAX_BYTES + 1)
    except OSError:
        return {}
    if len(blob) > _MAX_BYTES:
        return {}
    try:
        data = json.loads(blob)
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    out: dict[str, list[float]] = {}
    for key, value in data.items():
        if (
            isinstance(key, str)
            and isinstance(value, list)
            and len(value) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        ):
            out[key] = [float(value[0]), float(value[1])]
    return out


def record_stop(state_dir: Path, profile: str | None = None, *, now: float | None = None) -> None:
    """Record a stop of `profile` (None: every server) made now; best effort."""
    from llmctl.supervisor.state import new_temp

    marks = _read(state_dir)
    at = time.time() if now is None else now
    if profile is None:
        marks = {_ALL: [at, float(os.getpid())]}  # a stop of all covers every older one
    else:
        marks[profile] = [at, float(os.getpid())]
    blob = json.dumps(marks).encode()
    with contextlib.suppress(OSError):
        state_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = new_temp(state_dir, ".stops.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
            os.replace(tmp, _path(state_dir))
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def stopped_after(state_dir: Path, profile: str, since: float) -> StopMark | None:
    """The newest stop covering `profile` made after `since` (wall clock), or None."""
    marks = _read(state_dir)
    found: StopMark | None = None
    for key in (_ALL, profile):
        if key in marks:
            at, pid = marks[key]
            if at > since and (found is None or at > found.at):
                found = StopMark(at, int(pid), None if key == _ALL else profile)
    return found


def refusal(state_dir: Path, profile: str, admitted_at: float | None) -> OperatorStopped | None:
    """Why a router's load of `profile` for a request that arrived at `admitted_at` (wall
    clock; None: not a router's load) must not go on: a stop from a shell covering the profile
    came after it. The error says no retry is wanted; None when the load may go on."""
    if admitted_at is None:
        return None
    mark = stopped_after(state_dir, profile, admitted_at)
    if mark is None:
        return None
    return OperatorStopped(
        f"{mark.describe()}, after this request arrived; profile {profile!r} was not loaded again",
        hint="send the request again to load it",
        stopped_at=mark.at,
    )
