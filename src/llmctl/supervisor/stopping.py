"""Stopping recorded llama-servers: keep_kv caches saved, SIGTERM then SIGKILL, the record
dropped, then the port and the GPU memory waited for.

    stop_record(settings, rec, emit)         one server (also a half-started launch's leftovers)
    stop_all(settings, recs, emit, save_kv)  several at once, in one grace period
    kill_launch(settings, rec)               a launch that did not become ready: no save, no wait
                                             for the GPU, the record left to the caller
    forget_kv(state_dir, emit, profile)      drop the saved KV caches (`stop --forget`)

The caller holds the state lock. `settings` is the Supervisor (anything with its state folder
and time-outs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from llmctl.supervisor import procs, repair
from llmctl.supervisor.state import LaunchRecord, drop_record

if TYPE_CHECKING:
    from pathlib import Path

    from llmctl.supervisor.results import Emitter


class Settings(Protocol):
    """Where the records are and how long a stop waits (the Supervisor's attributes)."""

    state_dir: Path
    port_timeout: float  # for the port to be free after the process exited
    gpu_timeout: float  # for its GPU memory to be released


def save_kv(rec: LaunchRecord, emit: Emitter) -> None:
    """Hook: a keep_kv server's slots saved before it stops (the server must still run)."""
    if rec.extra.get("keep_kv"):
        from llmctl.supervisor.kvcache.hooks import save_slots

        save_slots(rec.extra["keep_kv"], rec.url, rec.argv, emit.kv(rec.profile), rec.profile)


def stop_record(
    settings: Settings,
    rec: LaunchRecord,
    emit: Emitter,
    *,
    save: bool = True,
    outcome: str | None = None,
    members: list[int] | None = None,
) -> None:
    """Stop one server and clear its record; `outcome`: it was already signalled and waited
    for (by stop_all), only the record, port and GPU are left to settle."""
    if outcome is None and save:
        save_kv(rec, emit)
    if members is None:
        members = repair.members(rec)
    if outcome is None:
        emit("stopping", f"stopping profile {rec.profile!r} (pid {rec.pid})", rec.profile)
        outcome = procs.terminate(
            members, pgid=repair.pgid(rec), timeout=rec.stop_timeout, reap=procs.reap_children
        )
    drop_record(settings.state_dir, rec)
    if outcome == "survived":
        emit("error", f"pid {rec.pid} survived SIGKILL; state cleared anyway", rec.profile)
    free = procs.wait_port_free(rec.host, rec.port, settings.port_timeout)
    extra = "" if free else f"; port {rec.port} still busy after {settings.port_timeout:g} s"
    if members and rec.pid is not None:
        from llmctl.supervisor.gpu import wait_released

        released = wait_released(members, settings.gpu_timeout)
        if released is False:
            extra += f"; GPU memory not released after {settings.gpu_timeout:g} s"
    what = f"profile {rec.profile!r} (pid {rec.pid})"
    message = {
        "killed": f"killed {what}: no exit {rec.stop_timeout:g} s after SIGTERM",
        "none": f"nothing of {what} was left running; state cleared",
    }.get(outcome, f"stopped {what}")
    emit("stopped", message + extra, rec.profile)


def stop_all(settings: Settings, recs: list[LaunchRecord], emit: Emitter, *, save: bool) -> None:
    """Several servers at once: their KV caches saved first (each needs its server), then
    every one signalled and waited for together, so the stop takes one grace period rather
    than one per server; the state is then cleared one record after another."""
    from concurrent.futures import ThreadPoolExecutor

    for rec in recs:
        if save:
            save_kv(rec, emit)
        emit("stopping", f"stopping profile {rec.profile!r} (pid {rec.pid})", rec.profile)

    members = [repair.members(rec) for rec in recs]  # before they exit: the GPU wait uses them

    def term(i: int) -> str:
        rec = recs[i]
        return procs.terminate(
            members[i], pgid=repair.pgid(rec), timeout=rec.stop_timeout, reap=procs.reap_children
        )

    with ThreadPoolExecutor(max_workers=len(recs)) as pool:
        outcomes = list(pool.map(term, range(len(recs))))
    for rec, outcome, mine in zip(recs, outcomes, members, strict=True):
        stop_record(settings, rec, emit, outcome=outcome, members=mine)


def kill_launch(settings: Settings, rec: LaunchRecord) -> None:
    """End a launch that is not ready (failed, cancelled, interrupted): its processes killed
    and its port free again. The caller drops the record."""
    members = repair.members(rec)
    procs.terminate(
        members, pgid=repair.pgid(rec), timeout=rec.stop_timeout, reap=procs.reap_children
    )
    procs.wait_port_free(rec.host, rec.port, settings.port_timeout)


def forget_kv(state_dir: Path, emit: Emitter, profile: str | None = None) -> tuple[int, int]:
    """Drop the saved KV caches (of `profile` only, when named): the files and bytes dropped."""
    from llmctl.supervisor.kvcache.files import forget

    files, size = forget(state_dir, profile)
    if files:
        emit("kv", f"dropped {files} saved KV cache file(s), {size / 1024**2:.1f} MiB")
    return files, size
