"""The supervisor: this machine's llama-server processes, one LaunchRecord per profile.

CONTRACT (the names the CLI and the router use):

    sup = Supervisor(state_dir=paths.state_dir(), lock_timeout=..., keep_logs=...)
    sup.status(check_health=True, timeout=0.5) -> Status   the newest server; all in Status.servers
    sup.ps() -> (list[Status], note)                        every server, oldest first
    sup.records() -> dict[str, LaunchRecord]                the records, read without repair
    sup.switch(spec, on_event=..., cancel=..., admitted_at=...) -> SwitchResult
                                                            leaves exactly `spec` running
    sup.load(spec, choose=..., on_event=..., ...) -> SwitchResult
                                                            starts `spec` beside the others;
                                                            `choose` (the placement) runs under the lock
    sup.stop(profile=None, forget=False, cancel_loading=True, operator=False) -> StopResult
                                                            one profile, or all
    sup.log_path(profile=None) -> Path | None

Every method is synchronous and safe from several threads and processes at once: a file lock
in the state folder serializes every change. A change first checks that the folder can be
written (StateDirError), so nothing is stopped that cannot be recorded. Launch failures (exit
while loading, time-out, stall, port taken, binary missing, cancelled, refused after a stop
from a shell) come back in `SwitchResult.error` with `ready=False` and nothing left running;
`switch`/`load` raise only LockTimeout, StateDirError, a refused model file (GGUFTruncated,
ModelNotPulled) and what `choose` raises, all before anything is stopped (and re-raise
KeyboardInterrupt/SystemExit after cleaning up).

`on_event` receives Event objects in order: "locked", "stopping", "stopped", "starting", "log"
(one per stderr line while loading), "kv" (a keep_kv cache saved, restored or dropped), then
"ready" or "error". It runs in the calling thread and must be quick.

PHASES of one profile's server (LaunchRecord.phase; Status.phase), and who moves it:

    from       to         by                                          where
    ---------  ---------  ------------------------------------------  ----------------------
    stopped    starting   switch/load: the record written, then Popen  starting.py, spawn.py
    starting   ready      /health answered 200 (keep_kv restored)      readiness.py
    starting   stopped    exited, timed out, stalled, cancelled (the   starting.py,
                          `cancel` event, or the cancel file a stop    stopping.kill_launch
                          touches), or refused (a stop from a shell
                          came after the request: stops.refusal)
    ready      stopped    stop, or switch/load of another config:      stopping.py
                          keep_kv saved, SIGTERM, wait, SIGKILL
    any        stopped    the pid gone or reused, the loading llmctl   repair.py
                          dead: the record dropped, noted in Status.note

What a call does in each phase:

    phase      status           stop                           switch/load of it
    ---------  ---------------  -----------------------------  -------------------------------
    stopped    running=False    no-op                          start
    starting   phase starting   touch the cancel file          wait on the lock, then as below
                                (cancels.py), then take the
                                lock; cancel_loading=False
                                waits for the load instead
    ready      healthy or not   stop it                        same config and healthy: no-op;
                                                               else stop, then start

Orphans (our servers with no record, found by STATE_DIR_ENV in their environment) are adopted
or stopped by repair.py. State folder: `state.json` (state.py), `lock` (flock, lock.py),
`stops.json` (stops.py), `cancel-<launch id>` (cancels.py), `logs/` (one log per launch, the
newest `keep_logs` kept), `kv/` (keep_kv caches).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmctl.errors import LaunchError, LlmctlError

# Only what `status` needs is imported here: `llmctl status` must start fast (tests guard the
# set). Starting and stopping (starting.py, stopping.py, subprocess, http.client, log parsing)
# are imported where they are used.
from llmctl.supervisor import procs
from llmctl.supervisor.lock import StateLock
from llmctl.supervisor.results import Emitter, Event, Status, StopResult, result_maker
from llmctl.supervisor.state import (
    CorruptState,
    LaunchRecord,
    check_writable,
    read_servers,
    readable_servers,
)

if TYPE_CHECKING:
    from llmctl.supervisor.launch import LaunchSpec
    from llmctl.supervisor.results import SwitchResult


class Supervisor:
    def __init__(
        self,
        state_dir: Path,
        *,
        lock_timeout: float = 600.0,
        keep_logs: int = 20,
        port_timeout: float = 10.0,
        gpu_timeout: float = 10.0,
        started_by: str | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.lock_timeout = lock_timeout
        self.keep_logs = keep_logs
        self.port_timeout = port_timeout
        self.gpu_timeout = gpu_timeout
        # "llmctl serve": each record names this process as its launcher (records.started_by),
        # so that the next router takes over the servers of one that died
        self.started_by = started_by

    # ------------------------------------------------------------------ status

    def status(self, *, check_health: bool = True, timeout: float = 0.5) -> Status:
        """What runs now (the newest server when several run). Repairs a stale state when no
        other llmctl holds the lock."""
        servers, note = self._snapshot(check_health, timeout)
        if not servers:
            return Status(running=False, note=note, kv_saved=self._kv_saved())
        newest = max(servers, key=lambda st: st.started_at or 0.0)
        if note is not None:
            newest.note = note
        newest.servers = [
            {
                "profile": st.profile,
                "phase": st.phase,
                "pid": st.pid,
                "url": st.url,
                "healthy": st.healthy,
            }
            for st in sorted(servers, key=lambda st: st.started_at or 0.0)
        ]
        return newest

    def ps(
        self, *, check_health: bool = True, timeout: float = 0.5
    ) -> tuple[list[Status], str | None]:
        """Every server, oldest first, and a note on what was repaired."""
        servers, note = self._snapshot(check_health, timeout)
        return sorted(servers, key=lambda st: st.started_at or 0.0), note

    def records(self) -> dict[str, LaunchRecord]:
        """The state's records by profile (no repair; {} when unreadable)."""
        return readable_servers(self.state_dir)

    def _snapshot(self, check_health: bool, timeout: float) -> tuple[list[Status], str | None]:
        procs.reap_children()
        try:
            recs = read_servers(self.state_dir)
        except CorruptState:
            fixed = self._repair_now() or (
                "the state file is unreadable; the llmctl now holding the lock will repair it"
            )
            try:
                recs = read_servers(self.state_dir)
            except CorruptState:
                return [], fixed
            return self._statuses(recs, check_health, timeout), fixed
        note: str | None = None
        stale = [r for r in recs.values() if not r.is_live()]
        if stale:
            note = self._repair_now() or "; ".join(
                f"the server of profile {r.profile!r} (pid {r.pid}) is gone; the llmctl "
                "now holding the lock will repair the state"
                for r in stale
            )
            recs = {k: r for k, r in recs.items() if r not in stale}
        return self._statuses(recs, check_health, timeout), note

    def _statuses(
        self, recs: dict[str, LaunchRecord], check_health: bool, timeout: float
    ) -> list[Status]:
        return [self._status_of(r, check_health, timeout) for r in recs.values()]

    def _status_of(self, rec: LaunchRecord, check_health: bool, timeout: float) -> Status:
        healthy: bool | None = None
        if check_health:
            from llmctl.supervisor.health import health_status

            healthy = health_status(rec.url, timeout) == 200
        memory: dict[str, Any] = {}
        if rec.phase == "ready":
            from llmctl.supervisor.logs import parse_memory

            memory = parse_memory(Path(rec.log))
        now = time.time()
        return Status(
            running=True,
            profile=rec.profile,
            pid=rec.pid,
            host=rec.host,
            port=rec.port,
            url=rec.url,
            started_at=rec.started_at,
            uptime_s=max(0.0, now - rec.started_at),
            healthy=healthy,
            log=rec.log,
            config_hash=rec.config_hash,
            argv=list(rec.argv),
            memory=memory,
            phase=rec.phase,
            kv_saved=self._kv_saved(),
        )

    def _kv_saved(self) -> list[dict[str, Any]]:
        from llmctl.supervisor.kvcache.files import saved

        return saved(self.state_dir)

    def log_path(self, profile: str | None = None) -> Path | None:
        """The log of the running server (the newest one), else of the latest launch; with
        `profile`, that profile's server's log, else its latest launch's."""
        from llmctl.supervisor.logs import latest_log

        with contextlib.suppress(CorruptState):
            recs = read_servers(self.state_dir)
            if profile is not None:
                recs = {k: r for k, r in recs.items() if k == profile}
            if recs:
                rec = max(recs.values(), key=lambda r: r.started_at)
                path = Path(rec.log)
                live = Path(f"/proc/{rec.pid}/fd/1")
                if not path.exists() and rec.pid and procs.is_alive(rec.pid, rec.start_time):
                    # deleted while the server runs: the server still holds it open
                    with contextlib.suppress(OSError):
                        if os.readlink(live) == f"{path} (deleted)":
                            return live
                return path
        return latest_log(self.state_dir, profile)

    # ------------------------------------------------------------------ stop

    def stop(
        self,
        *,
        on_event: Callable[[Event], None] | None = None,
        cancel_loading: bool = True,
        profile: str | None = None,
        forget: bool = False,
        operator: bool = False,
    ) -> StopResult:
        """Stop every managed server, or only `profile`'s (SIGTERM to its group, then SIGKILL);
        no-op when none runs. Raises StateDirError (before stopping anything) when the state
        folder cannot be written.

        A load in progress in another llmctl is cancelled (`cancel_loading=False`: wait for it
        to finish, then stop what it started). `forget`: drop the saved KV caches (of `profile`
        only, when one is named) instead of saving the server's. `operator`: a stop from a
        shell, recorded first (supervisor/stops.py) so that a router does not load the profile
        again for the requests that waited before it.
        """
        t0 = time.monotonic()
        emit = Emitter(on_event, t0)
        if operator:
            from llmctl.supervisor.stops import record_stop

            record_stop(self.state_dir, profile)
        # That load holds the lock until it ends: ask it to cancel (it polls for this file)
        # rather than wait for a big model to finish loading.
        from llmctl.supervisor import cancels

        requests = cancels.request(self.state_dir, emit, profile) if cancel_loading else []
        try:
            with self._lock("stop" if profile is None else f"unload {profile}") as lock:
                emit("locked", _locked_message(lock))
                from llmctl.supervisor import repair

                recs = repair.load_for_change(self.state_dir, self.port_timeout, emit)
                chosen = [r for p, r in recs.items() if profile is None or p == profile]
                if chosen:
                    check_writable(self.state_dir, 0)  # the state must be clearable first
                    from llmctl.supervisor import stopping

                    if len(chosen) == 1:
                        stopping.stop_record(self, chosen[0], emit, save=not forget)
                    else:
                        stopping.stop_all(self, chosen, emit, save=not forget)
                forgotten = (0, 0)
                if forget:
                    from llmctl.supervisor.stopping import forget_kv

                    forgotten = forget_kv(self.state_dir, emit, profile)
                return StopResult(
                    bool(chosen),
                    chosen[0].profile if chosen else None,
                    chosen[0].pid if chosen else None,
                    time.monotonic() - t0,
                    profiles=[r.profile for r in chosen],
                    forgotten=forgotten,
                    cancelled=sorted({name for name, _ in requests}),
                )
        finally:
            cancels.withdraw(requests)

    # ------------------------------------------------------------------ switch

    def switch(
        self,
        spec: LaunchSpec,
        *,
        on_event: Callable[[Event], None] | None = None,
        cancel: threading.Event | None = None,
        admitted_at: float | None = None,
    ) -> SwitchResult:
        """Make `spec` the running server: no-op if it already runs healthy with the same config.

        `admitted_at` (a router's request, wall clock): refused with OperatorStopped, before
        anything starts, when a stop from a shell covering the profile came after it."""
        t0 = time.monotonic()
        emit = Emitter(on_event, t0, spec.profile)
        result = result_maker(spec, t0)

        with self._lock(f"switch {spec.profile}") as lock:
            emit("locked", _locked_message(lock))
            from llmctl.supervisor import repair

            recs = repair.load_for_change(self.state_dir, self.port_timeout, emit)
            others = [r for p, r in recs.items() if p != spec.profile]
            rec = recs.get(spec.profile)
            keep = rec is not None and self._healthy_same(rec, spec, emit)
            if keep and rec is not None and not others:
                return result(ready=True, pid=rec.pid, log=rec.log, noop=True)
            refused = self._refusal(spec.profile, "switch", cancel, admitted_at)
            if refused is not None:
                emit("error", refused.message)
                return result(ready=False, pid=None, log=None, error=refused)
            # before anything is stopped: the new server's state and log must be writable
            check_writable(self.state_dir, sync=bool(others) or rec is not None)
            from llmctl.supervisor.modelfile import check_model_file

            check_model_file(spec)
            # exactly this profile runs afterwards: every other server goes
            from llmctl.supervisor import starting, stopping

            for other in others:
                stopping.stop_record(self, other, emit)
            if keep and rec is not None:
                return result(ready=True, pid=rec.pid, log=rec.log)
            if rec is not None:
                stopping.stop_record(self, rec, emit)
            return starting.start(self, spec, emit, cancel, result, admitted_at)

    def load(
        self,
        spec: LaunchSpec,
        *,
        choose: Callable[[dict[str, LaunchRecord]], tuple[Sequence[str], LaunchSpec]] | None = None,
        same_as: Sequence[LaunchSpec] = (),
        on_event: Callable[[Event], None] | None = None,
        cancel: threading.Event | None = None,
        admitted_at: float | None = None,
    ) -> SwitchResult:
        """Start `spec` beside the servers that run; no-op if it (or one of `same_as`, other
        ways of running the profile) already runs healthy. `admitted_at`: as for `switch`.

        `choose(records)` runs under the lock with the live servers and returns those to stop
        first and the spec to start (the placement policy); it may raise an LlmctlError to
        refuse, and nothing is stopped then. Without it, only a server on the same port (or of
        the same profile) goes. Failures come back as for `switch`.
        """
        t0 = time.monotonic()
        emit = Emitter(on_event, t0, spec.profile)
        result = result_maker(spec, t0)

        with self._lock(f"load {spec.profile}") as lock:
            emit("locked", _locked_message(lock))
            from llmctl.supervisor import repair

            recs = repair.load_for_change(self.state_dir, self.port_timeout, emit)
            rec = recs.get(spec.profile)
            if rec is not None:
                match = next((s for s in (spec, *same_as) if self._same_config(rec, s)), spec)
                if self._healthy_same(rec, match, emit):
                    return result(ready=True, pid=rec.pid, log=rec.log, noop=True)
            if choose is not None:
                chosen, spec = choose(dict(recs))
                result = result_maker(spec, t0)  # the placer may give it another port or devices
                victims = list(chosen)
            else:
                victims = [p for p, r in recs.items() if r.port == spec.port]
            if rec is not None and spec.profile not in victims:
                victims.append(spec.profile)
            refused = self._refusal(spec.profile, "load", cancel, admitted_at)
            if refused is not None:
                emit("error", refused.message)
                return result(ready=False, pid=None, log=None, error=refused)
            # before anything is stopped: the new server's state and log must be writable
            check_writable(self.state_dir, sync=any(name in recs for name in victims))
            from llmctl.supervisor.modelfile import check_model_file

            check_model_file(spec)
            from llmctl.supervisor import starting, stopping

            for name in victims:
                if name in recs:
                    stopping.stop_record(self, recs[name], emit)
            return starting.start(self, spec, emit, cancel, result, admitted_at)

    # ------------------------------------------------------------------ changes by others

    def deliberate_change(self, pid: int | None) -> str | None:
        """Why the server `pid` stopped answering if another llmctl changed it on purpose."""
        from llmctl.supervisor.changes import deliberate_change

        return deliberate_change(self.state_dir, pid)

    def wait_for_change(self, timeout: float) -> bool:
        """Wait until no other llmctl is changing the server (at most `timeout`)."""
        from llmctl.supervisor.changes import wait_for_change

        return wait_for_change(self.state_dir, timeout)

    # ------------------------------------------------------------------ internals

    def _refusal(
        self, profile: str, what: str, cancel: threading.Event | None, admitted_at: float | None
    ) -> LaunchError | None:
        """Why a switch or load must end before it stops or starts anything: cancelled, or a
        router's load whose request came before a stop from a shell (stops.py)."""
        if cancel is not None and cancel.is_set():
            return LaunchError(f"the {what} was cancelled before it started anything")
        if admitted_at is None:
            return None
        from llmctl.supervisor.stops import refusal

        return refusal(self.state_dir, profile, admitted_at)

    def _healthy_same(self, rec: LaunchRecord, spec: LaunchSpec, emit: Emitter) -> bool:
        if not self._same_config(rec, spec):
            return False
        from llmctl.supervisor.health import health_status

        if health_status(rec.url, 1.0) == 200:
            emit(
                "ready",
                f"profile {spec.profile!r} already runs with this configuration "
                f"(pid {rec.pid}) and is healthy; nothing to do",
            )
            return True
        emit("stopping", f"profile {spec.profile!r} runs but is not healthy: restarting")
        return False

    def _lock(self, purpose: str) -> StateLock:
        return StateLock(self.state_dir, self.lock_timeout, purpose=f"llmctl {purpose}")

    def _repair_now(self) -> str | None:
        """Repair a stale state if the lock is free at once; None if another llmctl holds it."""
        lock = self._lock("status (repair)")
        try:
            if not lock.try_acquire():
                return None
        except LlmctlError as err:  # a state folder that cannot be locked: say so, repair nothing
            return err.message
        try:
            notes: list[str] = []
            from llmctl.supervisor import repair

            repair.load_for_change(
                self.state_dir, self.port_timeout, lambda kind, msg: notes.append(msg)
            )
            return "; ".join(notes) or "the state changed meanwhile"
        except LlmctlError as err:
            return err.message
        finally:
            lock.release()

    def _same_config(self, rec: LaunchRecord, spec: LaunchSpec) -> bool:
        return (
            rec.profile == spec.profile
            and rec.config_hash == spec.config_hash
            and rec.host == spec.host
            and rec.port == spec.port
        )


def _locked_message(lock: StateLock) -> str:
    if lock.waited_s >= 0.05:
        return f"waited {lock.waited_s:.1f} s for another llmctl; lock acquired"
    return "lock acquired"
