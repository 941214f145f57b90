"""Why a managed llama-server stopped answering: a change made on purpose, or a failure.

An operator's `llmctl switch` or `stop` (or another router) cuts the requests in flight to the
server it replaces. That is not a failure of the server: a caller should wait for the change to
end and try again on whatever runs then. A server that died while the state file still names it
is a failure (it crashed).
"""

from __future__ import annotations

from pathlib import Path

from llmctl.errors import LlmctlError
from llmctl.supervisor.lock import StateLock
from llmctl.supervisor.state import CorruptState, read_state


def deliberate_change(state_dir: Path, pid: int | None) -> str | None:
    """What another llmctl did to the server `pid`, or None when the state still names it.

    "Another llmctl" is seen by the state lock it holds (a switch or stop in progress) or by a
    state file that names another launch, a launch still loading, or none at all.
    """
    lock = StateLock(state_dir, 0.0, purpose="llmctl serve (checking a change)")
    try:
        free = lock.try_acquire()
    except (OSError, LlmctlError):
        free = True  # the folder cannot be locked: judge by the state file alone
    if free:
        lock.release()
    else:
        return f"another llmctl is changing the server ({lock.holder() or 'it holds the lock'})"
    try:
        rec = read_state(state_dir)
    except CorruptState:
        return None
    if rec is None:
        return "the server was stopped"
    if pid is not None and rec.pid != pid:
        return f"the server was replaced by profile {rec.profile!r} (pid {rec.pid})"
    if rec.phase == "starting":
        return f"profile {rec.profile!r} is loading"
    return None


def wait_for_change(state_dir: Path, timeout: float) -> bool:
    """Wait (at most `timeout`) until no other llmctl holds the state lock; True when it is free."""
    lock = StateLock(state_dir, timeout, purpose="llmctl serve (waiting for a change)")
    try:
        lock.acquire()
    except (OSError, LlmctlError):
        return False
    lock.release()
    return True
