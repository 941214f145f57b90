"""An out-of-memory load as the placer sees it: the engine's error read from a failed load, the
device it names, and the messages that say what was tried.

The decision (the need kept, the victim, one retry at most) is `placement.policy.after_oom`;
`placement.placer.load_profile` carries it out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llmctl.errors import LaunchError
    from llmctl.llama.oom import OutOfMemory
    from llmctl.placement.policy import Decision
    from llmctl.supervisor.results import SwitchResult


def out_of_memory_of(result: SwitchResult | None) -> OutOfMemory | None:
    """The engine's out-of-memory error of a failed load, else None (a load that was ready,
    cancelled or failed for another reason)."""
    if result is None or result.ready or result.error is None:
        return None
    from llmctl.errors import LoadCancelled
    from llmctl.llama.oom import out_of_memory

    if isinstance(result.error, LoadCancelled):
        return None
    return out_of_memory([result.error.message, *result.error.stderr_tail])


def failed_device(oom: OutOfMemory, usage: Mapping[str, int]) -> str | None:
    """The placement's device the error names (host buffers are the CPU device), when it is one
    the load used."""
    if oom.device is None:
        return None
    name = "CPU" if oom.on_host else oom.device
    return name if name in usage else None


def with_reason(error: LaunchError, why: str) -> LaunchError:
    return error.with_message(f"{error.message}; {why}")


def attempts_text(name: str, first: LaunchError, retried: Decision, second: LaunchError) -> str:
    """The error of a load that failed, was retried, and failed again: both attempts."""
    victims = [repr(v) for v in retried.evict if v != retried.profile]
    how = f"after unloading {', '.join(victims)}" if victims else "placed again"
    return (
        f"profile {name!r} failed to load twice: first {_cause(first)}, then, {how}, "
        f"{_cause(second)}; no further retry"
    )


def _cause(error: LaunchError) -> str:
    """A failed attempt's cause: its error line, without the profile's name said again."""
    _, sep, rest = error.message.partition(" while loading: ")
    return f"({rest if sep else error.message})"
