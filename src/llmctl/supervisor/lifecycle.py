"""The supervisor: this machine's llama-server processes, one LaunchRecord per profile.

CONTRACT (the names the CLI and the router use):

    sup = Supervisor(state_dir=paths.state_dir(), lock_timeout=..., keep_logs=...)
    sup.status(check_health=True, timeout=0.5) -> Status   the newest server; all in Status.servers
    sup.ps() -> list[Status]                                every server, oldest first
    sup.records() -> dict[str, LaunchRecord]                the records, read without repair
    sup.switch(spec, on_event=..., cancel=...) -> SwitchResult   leaves exactly `spec` running
    sup.load(spec, choose=..., on_event=...) -> SwitchResult     starts `spec` beside the others;
                                                            `choose` (the placement) runs under the lock
    sup.stop(profile=None, forget=False, cancel_loading=True) -> StopResult   one profile, or all
    sup.log_path() -> Path | None

Every method is synchronous and safe from several threads and processes at once: a file lock
in the state folder serializes every change. A change first checks that the folder can be
written (StateDirError), so nothing is stopped that cannot be recorded. Launch failures (exit
while loading, time-out, stall, port taken, binary missing, cancelled) come back in
`SwitchResult.error` with `ready=False` and nothing left running; `switch`/`load` raise only
LockTimeout (and re-raise KeyboardInterrupt/SystemExit after cleaning up).

`on_event` receives Event objects in order: "locked", "stopping", "stopped", "starting", "log"
(one per stderr line while loading), "kv" (a keep_kv cache saved, restored or dropped), then
"ready" or "error". It runs in the calling thread and must be quick.

STATE TABLE of one profile's server (Status.phase):

    phase      record                   what a call does
    ---------  -----------------------  ---------------------------------------------------------
    stopped    none                     switch/load: write the record (phase starting), spawn, wait
    starting   launch_id, cancel file   status: "starting"; stop: touch the cancel file, the loader
               free to touch            kills its launch and drops the record (cancel_loading=False
                                        waits for it instead); switch/load of it: wait on the lock
    ready      pid, port, config hash   switch/load with the same config: noop; another config:
                                        stop (save keep_kv) then start; stop: SIGTERM, wait, SIGKILL
    dead       pid gone or not ours     any call: repair (drop the record, note it in Status.note)

Orphans (our servers with no record, found by STATE_DIR_ENV in their environment) are adopted
or stopped by repair.py. State folder: `state.json` (llmctl.supervisor.state), `lock` (flock),
`logs/` (one log per launch, the newest `keep_logs` kept), `kv/` (keep_kv caches).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmctl.errors import LaunchError, LlmctlError, LoadCancelled, OperatorStopped

# Only what `status` needs is imported here: `llmctl status` must start fast. The rest
# (subprocess, http.client, log parsing) is imported where it is used.
from llmctl.supervisor import procs
from llmctl.supervisor.lock import StateLock
from llmctl.supervisor.results import Event, EventKind, Status, StopResult, SwitchResult
from llmctl.supervisor.state import (
    CorruptState,
    LaunchRecord,
    check_writable,
    read_servers,
    write_servers,
)

if TYPE_CHECKING:
    import subprocess

    from llmctl.supervisor.launch import LaunchSpec


def _reap() -> None:
    # Only this process's children need reaping, and only a process that spawned one has
    # imported spawn: `status` stays free of it.
    spawn = sys.modules.get("llmctl.supervisor.spawn")
    if spawn is not None:
        spawn.reap()


class _Cancelled(Exception):
    pass


def _result_for(spec: LaunchSpec, t0: float) -> Callable[..., SwitchResult]:
    """The SwitchResult maker of a switch or load of `spec` that began at monotonic `t0`."""

    def result(
        *,
        ready: bool,
        pid: int | None,
        log: str | None,
        noop: bool = False,
        error: LaunchError | None = None,
    ) -> SwitchResult:
        return SwitchResult(
            profile=spec.profile,
            pid=pid,
            port=spec.port,
            url=spec.url,
            ready=ready,
            elapsed_s=time.monotonic() - t0,
            log=log,
            noop=noop,
            error=error,
        )

    return result


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
        try:
            return read_servers(self.state_dir)
        except CorruptState:
            return {}

    def _snapshot(self, check_health: bool, timeout: float) -> tuple[list[Status], str | None]:
        _reap()
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
        stale = [r for r in recs.values() if not self._is_live(r)]
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
        emit = _Emitter(on_event, t0)
        if operator:
            from llmctl.supervisor.stops import record_stop

            record_stop(self.state_dir, profile)
        # That load holds the lock until it ends: ask it to cancel (it polls for this file)
        # rather than wait for a big model to finish loading.
        requests = self._request_cancel(emit, profile) if cancel_loading else []
        try:
            with self._lock("stop" if profile is None else f"unload {profile}") as lock:
                emit("locked", _locked_message(lock))
                from llmctl.supervisor import repair

                recs = repair.load_for_change(self.state_dir, self.port_timeout, emit)
                chosen = [r for p, r in recs.items() if profile is None or p == profile]
                if chosen:
                    check_writable(self.state_dir, 0)  # the state must be clearable first
                if len(chosen) == 1:
                    self._stop_record(chosen[0], emit, save_kv=not forget)
                elif chosen:
                    self._stop_all(chosen, emit, save_kv=not forget)
                forgotten = self._forget_kv(emit, profile) if forget else (0, 0)
                cancelled = sorted({name for name, _ in requests})
                if not chosen:
                    return StopResult(
                        False,
                        None,
                        None,
                        time.monotonic() - t0,
                        forgotten=forgotten,
                        cancelled=cancelled,
                    )
                first = chosen[0]
                return StopResult(
                    True,
                    first.profile,
                    first.pid,
                    time.monotonic() - t0,
                    profiles=[r.profile for r in chosen],
                    forgotten=forgotten,
                    cancelled=cancelled,
                )
        finally:
            for _, request in requests:
                with contextlib.suppress(OSError):
                    request.unlink()

    def _forget_kv(self, emit: _Emitter, profile: str | None = None) -> tuple[int, int]:
        from llmctl.supervisor.kvcache.files import forget

        files, size = forget(self.state_dir, profile)
        if files:
            emit("kv", f"dropped {files} saved KV cache file(s), {size / 1024**2:.1f} MiB")
        return files, size

    def _cancel_path(self, launch_id: str) -> Path:
        return self.state_dir / f"cancel-{launch_id}"

    def _request_cancel(self, emit: _Emitter, profile: str | None = None) -> list[tuple[str, Path]]:
        try:
            recs = read_servers(self.state_dir)
        except CorruptState:
            return []
        paths = []
        for rec in recs.values():
            if profile is not None and rec.profile != profile:
                continue
            if rec.phase != "starting" or not self._is_live(rec):
                continue
            path = self._cancel_path(rec.launch_id)
            try:
                path.touch()
            except OSError:
                continue
            emit(
                "stopping",
                f"cancelling the load of profile {rec.profile!r} in progress (llmctl pid {rec.owner_pid})",
                rec.profile,
            )
            paths.append((rec.profile, path))
        return paths

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
        emit = _Emitter(on_event, t0, spec.profile)
        result = _result_for(spec, t0)

        with self._lock(f"switch {spec.profile}") as lock:
            emit("locked", _locked_message(lock))
            from llmctl.supervisor import repair

            recs = repair.load_for_change(self.state_dir, self.port_timeout, emit)
            others = [r for p, r in recs.items() if p != spec.profile]
            rec = recs.get(spec.profile)
            keep = rec is not None and self._healthy_same(rec, spec, emit)
            if keep and rec is not None and not others:
                return result(ready=True, pid=rec.pid, log=rec.log, noop=True)
            if cancel is not None and cancel.is_set():
                err = LaunchError("the switch was cancelled before it started anything")
                emit("error", err.message)
                return result(ready=False, pid=None, log=None, error=err)
            refused = self._stopped_after(spec.profile, admitted_at)
            if refused is not None:
                emit("error", refused.message)
                return result(ready=False, pid=None, log=None, error=refused)
            # before anything is stopped: the new server's state and log must be writable
            check_writable(self.state_dir, sync=bool(others) or rec is not None)
            from llmctl.supervisor.modelfile import check_model_file

            check_model_file(spec)
            # exactly this profile runs afterwards: every other server goes
            for other in others:
                self._stop_record(other, emit)
            if keep and rec is not None:
                return result(ready=True, pid=rec.pid, log=rec.log)
            if rec is not None:
                self._stop_record(rec, emit)
            return self._start(spec, emit, cancel, result, admitted_at)

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
        emit = _Emitter(on_event, t0, spec.profile)
        result = _result_for(spec, t0)

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
                result = _result_for(spec, t0)  # the placer may give it another port or devices
                victims = list(chosen)
            else:
                victims = [p for p, r in recs.items() if r.port == spec.port]
            if rec is not None and spec.profile not in victims:
                victims.append(spec.profile)
            if cancel is not None and cancel.is_set():
                err = LaunchError("the load was cancelled before it started anything")
                emit("error", err.message)
                return result(ready=False, pid=None, log=None, error=err)
            refused = self._stopped_after(spec.profile, admitted_at)
            if refused is not None:
                emit("error", refused.message)
                return result(ready=False, pid=None, log=None, error=refused)
            # before anything is stopped: the new server's state and log must be writable
            check_writable(self.state_dir, sync=any(name in recs for name in victims))
            from llmctl.supervisor.modelfile import check_model_file

            check_model_file(spec)
            for name in victims:
                if name in recs:
                    self._stop_record(recs[name], emit)
            return self._start(spec, emit, cancel, result, admitted_at)

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

    def _stopped_after(self, profile: str, admitted_at: float | None) -> OperatorStopped | None:
        """The refusal of a router's load when a stop from a shell came after its request."""
        if admitted_at is None:
            return None
        from llmctl.supervisor.stops import stopped_after

        mark = stopped_after(self.state_dir, profile, admitted_at)
        if mark is None:
            return None
        err = OperatorStopped(
            f"{mark.describe()}, after this request arrived; profile {profile!r} was not "
            "loaded again",
            hint="send the request again to load it",
            by_another=True,
            stopped_at=mark.at,
        )
        return err

    def _healthy_same(self, rec: LaunchRecord, spec: LaunchSpec, emit: _Emitter) -> bool:
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

    def _put(self, rec: LaunchRecord) -> None:
        """Under the lock: add or replace one record."""
        try:
            recs = read_servers(self.state_dir)
        except CorruptState:
            recs = {}
        recs[rec.profile] = rec
        write_servers(self.state_dir, recs)

    def _drop(self, rec: LaunchRecord) -> None:
        """Under the lock: remove one record (only if it is still this launch)."""
        try:
            recs = read_servers(self.state_dir)
        except CorruptState:
            recs = {}
        cur = recs.get(rec.profile)
        if cur is not None and cur.launch_id == rec.launch_id:
            del recs[rec.profile]
            write_servers(self.state_dir, recs)

    def _lock(self, purpose: str) -> StateLock:
        return StateLock(self.state_dir, self.lock_timeout, purpose=f"llmctl {purpose}")

    def _is_live(self, rec: LaunchRecord) -> bool:
        """The recorded server still runs (or, while starting, the llmctl starting it does)."""
        if rec.phase == "starting":
            owner_alive = rec.owner_pid is not None and procs.is_alive(
                rec.owner_pid, rec.owner_start_time
            )
            return owner_alive and (rec.pid is None or procs.is_alive(rec.pid, rec.start_time))
        return rec.pid is not None and procs.is_alive(rec.pid, rec.start_time)

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

    def _stop_all(self, recs: list[LaunchRecord], emit: _Emitter, *, save_kv: bool) -> None:
        """Several servers at once: their KV caches saved first (each needs its server), then
        every one signalled and waited for together, so the stop takes one grace period rather
        than one per server; the state is then cleared one record after another."""
        from concurrent.futures import ThreadPoolExecutor

        from llmctl.supervisor import repair

        for rec in recs:
            if save_kv:
                self._save_kv(rec, emit)
            emit("stopping", f"stopping profile {rec.profile!r} (pid {rec.pid})", rec.profile)

        members = [repair.members(rec) for rec in recs]  # before they exit: the GPU wait uses them

        def term(i: int) -> str:
            rec = recs[i]
            return procs.terminate(
                members[i], pgid=repair.pgid(rec), timeout=rec.stop_timeout, reap=_reap
            )

        with ThreadPoolExecutor(max_workers=len(recs)) as pool:
            outcomes = list(pool.map(term, range(len(recs))))
        for rec, outcome, mine in zip(recs, outcomes, members, strict=True):
            self._stop_record(rec, emit, outcome=outcome, members=mine)

    def _save_kv(self, rec: LaunchRecord, emit: _Emitter | Callable[..., None]) -> None:
        if rec.extra.get("keep_kv"):
            # hook: save slots before stopping a server
            from llmctl.supervisor.kvcache.hooks import save_slots

            save_slots(
                rec.extra["keep_kv"], rec.url, rec.argv, _kv_emit(emit, rec.profile), rec.profile
            )

    def _stop_record(
        self,
        rec: LaunchRecord,
        emit: _Emitter | Callable[..., None],
        *,
        save_kv: bool = True,
        outcome: str | None = None,
        members: list[int] | None = None,
    ) -> None:
        """Stop one server and clear its record; `outcome`: it was already signalled and waited
        for (by _stop_all), only the record, port and GPU are left to settle."""
        if outcome is not None:
            save_kv = False
        if save_kv and rec.extra.get("keep_kv"):
            # hook: save slots before stopping a server
            from llmctl.supervisor.kvcache.hooks import save_slots

            save_slots(
                rec.extra["keep_kv"], rec.url, rec.argv, _kv_emit(emit, rec.profile), rec.profile
            )
        from llmctl.supervisor import repair

        if members is None:
            members = repair.members(rec)
        if outcome is None:
            emit("stopping", f"stopping profile {rec.profile!r} (pid {rec.pid})", rec.profile)
            outcome = procs.terminate(
                members, pgid=repair.pgid(rec), timeout=rec.stop_timeout, reap=_reap
            )
        self._drop(rec)
        if outcome == "survived":
            emit("error", f"pid {rec.pid} survived SIGKILL; state cleared anyway", rec.profile)
        free = procs.wait_port_free(rec.host, rec.port, self.port_timeout)
        extra = "" if free else f"; port {rec.port} still busy after {self.port_timeout:g} s"
        if members and rec.pid is not None:
            from llmctl.supervisor.gpu import wait_released

            released = wait_released(members, self.gpu_timeout)
            if released is False:
                extra += f"; GPU memory not released after {self.gpu_timeout:g} s"
        what = f"profile {rec.profile!r} (pid {rec.pid})"
        message = {
            "killed": f"killed {what}: no exit {rec.stop_timeout:g} s after SIGTERM",
            "none": f"nothing of {what} was left running; state cleared",
        }.get(outcome, f"stopped {what}")
        emit("stopped", message + extra, rec.profile)

    def _start(
        self,
        spec: LaunchSpec,
        emit: _Emitter,
        cancel: threading.Event | None,
        result: Callable[..., SwitchResult],
        admitted_at: float | None = None,
    ) -> SwitchResult:
        import subprocess

        from llmctl.supervisor import spawn
        from llmctl.supervisor.readiness import LoadWatcher

        identity_of = spec
        keep_kv: dict[str, Any] | None = None
        if spec.keep_kv is not None:
            # hook: a keep_kv profile gets --slot-save-path; the record keeps where and what key
            from llmctl.supervisor.kvcache.hooks import prepare_launch

            spec, keep_kv = prepare_launch(self.state_dir, spec)
        port_err = spawn.port_error(spec)
        if port_err is not None:
            emit("error", port_err.message)
            return result(ready=False, pid=None, log=None, error=port_err)
        log_path, offset = spawn.launch_log(self.state_dir, spec, self.keep_logs)
        # the record names the profile's configuration; the launch adds llmctl's own flags
        # (--slot-save-path above, --log-jsonl: the engine's memory plan lands in the log)
        identity = identity_of.config_hash
        spec = spawn.with_log_format(spec)
        rec = spawn.starting_record(spec, log_path, keep_kv, self.started_by, identity)
        # Written before the spawn: an llmctl killed right after the spawn leaves a record
        # whose launch_id finds the orphan through its environment.
        self._put(rec)
        # A stop that read the state before this record was written cannot cancel this load:
        # its mark, written before that read, is seen here instead.
        refused = self._stopped_after(spec.profile, admitted_at)
        if refused is not None:
            self._drop(rec)
            emit("error", refused.message)
            return result(ready=False, pid=None, log=None, error=refused)
        emit("starting", f"starting profile {spec.profile!r}: {spec.shell()}")
        watcher = LoadWatcher(spec, log_path, emit)
        proc: subprocess.Popen[bytes] | None = None
        try:
            try:
                proc = spawn.popen(spec, rec, log_path, self.state_dir)
            except LaunchError as lerr:
                self._drop(rec)
                emit("error", lerr.message)
                return result(ready=False, pid=None, log=str(log_path), error=lerr)
            rec.pid = proc.pid
            rec.start_time = procs.start_time(proc.pid)
            self._put(rec)
            error = watcher.wait_ready(proc, offset, cancel, self._cancel_path(rec.launch_id))
            if error is None and keep_kv:
                # hook: restore slots after the server is ready, before the first request
                from llmctl.supervisor.kvcache.hooks import restore_slots

                if not restore_slots(keep_kv, spec.url, _kv_emit(emit, spec.profile), spec.profile):
                    # the server died on a file (now removed): the next load goes on without it
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=spec.stop_timeout)
                    code = proc.poll()
                    error = (
                        watcher.exit_error(code, [])
                        if code is not None
                        else LaunchError(
                            f"llama-server for profile {spec.profile!r} stopped answering while "
                            "restoring its saved KV cache; killed",
                            hint=f"full log: {log_path}",
                        )
                    )
        except BaseException:
            # Ctrl-C (KeyboardInterrupt) or anything unexpected: leave nothing running.
            self._kill_launch(rec)
            self._drop(rec)
            raise
        if error is not None:
            self._kill_launch(rec)
            self._drop(rec)
            if isinstance(error, LoadCancelled) and error.by_another:
                error = self._stopped_after(spec.profile, admitted_at) or error
            emit("error", error.message)
            return result(ready=False, pid=proc.pid, log=str(log_path), error=error)
        rec.phase = "ready"
        rec.ready_at = time.time()
        rec.owner_pid = None
        rec.owner_start_time = None
        if watcher.plan_line is not None:
            from llmctl.supervisor.probe import record_launch_plan

            plan = record_launch_plan(identity_of, watcher.plan_line)
            if plan is not None:
                rec.extra["engine_plan"] = plan
        from llmctl.supervisor.probe import record_gpu_used

        gpu_used = record_gpu_used(identity_of, proc.pid)
        if gpu_used is not None:
            rec.extra["gpu_used"] = gpu_used
        self._put(rec)
        emit("ready", f"profile {spec.profile!r} is ready at {spec.url} (pid {proc.pid})")
        return result(ready=True, pid=proc.pid, log=str(log_path))

    def _kill_launch(self, rec: LaunchRecord) -> None:
        from llmctl.supervisor import repair

        members = repair.members(rec)
        procs.terminate(members, pgid=repair.pgid(rec), timeout=rec.stop_timeout, reap=_reap)
        procs.wait_port_free(rec.host, rec.port, self.port_timeout)


class _Emitter:
    def __init__(
        self, callback: Callable[[Event], None] | None, t0: float, profile: str | None = None
    ) -> None:
        self.callback = callback
        self.t0 = t0
        self.profile = profile

    def __call__(self, kind: EventKind, message: str, profile: str | None = None) -> None:
        if self.callback is not None:
            self.callback(Event(kind, message, time.monotonic() - self.t0, profile or self.profile))


def _kv_emit(emit: _Emitter | Callable[..., None], profile: str) -> Callable[[str], None]:
    return lambda message: emit("kv", message, profile)


def _locked_message(lock: StateLock) -> str:
    if lock.waited_s >= 0.05:
        return f"waited {lock.waited_s:.1f} s for another llmctl; lock acquired"
    return "lock acquired"
