"""Repair of the state folder: stale records, orphaned servers, adoption.

Runs under the state lock. A record whose server exited, whose pid was reused or whose
switching llmctl died is dropped and its leftovers stopped; with no usable state, servers this
folder started (found by their launch id) are adopted when healthy and stopped otherwise. Every
repair is reported through `emit`, so the caller can say what it fixed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from llmctl.supervisor import procs
from llmctl.supervisor.state import (
    CorruptState,
    LaunchRecord,
    read_servers,
    set_aside_corrupt,
    write_servers,
)

if TYPE_CHECKING:
    from pathlib import Path

    from llmctl.supervisor.results import EventKind


def load_for_change(
    state_dir: Path, port_timeout: float, emit: Callable[[EventKind, str], None]
) -> dict[str, LaunchRecord]:
    """Under the lock: the live records, after repairing stale ones (and saying so)."""
    try:
        recs = read_servers(state_dir)
    except CorruptState as err:
        where = set_aside_corrupt(state_dir)
        return recover_orphans(
            state_dir, f"{err}; set aside as {where}" if where else str(err), emit
        )
    if not recs:
        return recover_orphans(state_dir, None, emit)
    live: dict[str, LaunchRecord] = {}
    changed = False
    for name, rec in recs.items():
        kept = repair_record(rec, emit, port_timeout)
        if kept is None:
            changed = True
        else:
            live[name] = kept
    if changed:
        write_servers(state_dir, live)
    return live


def repair_record(
    rec: LaunchRecord, emit: Callable[[EventKind, str], None], port_timeout: float
) -> LaunchRecord | None:
    """The record if its server is live and ready; else repaired (leftovers stopped), None."""
    if rec.phase == "ready" and rec.pid is not None and procs.is_alive(rec.pid, rec.start_time):
        return rec
    # Stale: the server exited, its pid was reused, or the llmctl that started it died
    # mid-switch (any llmctl alive would still hold the lock we now hold).
    leftovers = members(rec)
    if leftovers:
        procs.terminate(
            leftovers, pgid=pgid(rec), timeout=rec.stop_timeout, reap=procs.reap_children
        )
        procs.wait_port_free(rec.host, rec.port, port_timeout)
        what = f"stopped the half-started server of profile {rec.profile!r} (pid {rec.pid}) left by an interrupted switch"
        if rec.phase == "ready":
            what = (
                f"stopped processes left by the server of profile {rec.profile!r} (pid {rec.pid})"
            )
    elif rec.phase == "ready":
        what = f"the server of profile {rec.profile!r} (pid {rec.pid}) had exited"
    else:
        what = f"an interrupted switch to profile {rec.profile!r} left a state; nothing was running"
    emit("stopped", f"{what}; state repaired")
    return None


def recover_orphans(
    state_dir: Path, note: str | None, emit: Callable[[EventKind, str], None]
) -> dict[str, LaunchRecord]:
    """No usable state: servers this folder started are found by their launch id, each
    healthy one adopted (its record rebuilt, one per profile), any other stopped. Says what
    was repaired."""
    from llmctl.supervisor.adopt import find_orphans

    orphans = find_orphans(state_dir)
    if not orphans:
        if note:
            emit("stopped", note)
        return {}
    from llmctl.supervisor.health import health_status

    notes = [note] if note else []
    adopted: dict[str, LaunchRecord] = {}
    for orphan in orphans:
        rec = orphan.record()
        if rec is not None and rec.profile not in adopted and health_status(rec.url, 1.0) == 200:
            adopted[rec.profile] = rec
            notes.append(
                f"found the llama-server of profile {rec.profile!r} (pid {orphan.pid}) by its "
                "launch id and adopted it"
            )
            continue
        members = procs.session_members(orphan.pid, orphan.marker)
        procs.terminate(
            members or [orphan.pid], pgid=orphan.pid, timeout=10.0, reap=procs.reap_children
        )
        notes.append(f"stopped llama-server pid {orphan.pid}, which no state recorded")
    if adopted:
        write_servers(state_dir, adopted)
    emit("stopped", "; ".join(notes) + "; state repaired")
    return adopted


def members(rec: LaunchRecord) -> list[int]:
    """Live processes of this launch: its session (marker-checked), else any marked process."""
    if rec.pid is not None:
        members = procs.session_members(rec.pid, rec.marker)
        leader_ok = rec.start_time is not None and procs.is_alive(rec.pid, rec.start_time)
        if leader_ok and rec.pid not in members:
            members.append(rec.pid)
        if members:
            return members
    if rec.phase == "starting":
        return procs.marked_processes(rec.marker)
    return []


def pgid(rec: LaunchRecord) -> int | None:
    if rec.pid is None:
        return None
    for pid in procs.session_members(rec.pid, rec.marker):
        st = procs.stat(pid)
        if st is not None and st.pgrp == rec.pid:
            return rec.pid
    return None
