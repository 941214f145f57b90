"""Process lifecycle of the managed llama-server: switch, stop, status, logs.

CONTRACT (stable names used by the CLI and the router; the implementation may add more):

    sup = Supervisor(state_dir=paths.state_dir(), lock_timeout=...)
    sup.status(check_health=True, timeout=0.5) -> Status
    sup.switch(spec: LaunchSpec, on_event=callback, cancel=threading.Event()) -> SwitchResult
    sup.stop(on_event=callback) -> StopResult
    sup.logs path: Status.log / SwitchResult.log

`on_event` receives Event objects in order: "locked", "stopping", "stopped", "starting",
"log" (one per stderr line while loading), "ready" or "error". The callback runs in the
switching thread and must be quick.

Every method is synchronous and safe to call from several threads and processes at once:
a file lock in the state directory serializes every change of state.

Failures of the launch itself (the process exits while loading, the load times out or
stalls, the port is taken, the binary is missing, the load is cancelled) come back in
`SwitchResult.error` with `ready=False` and nothing left running; `switch` raises only
LockTimeout (and re-raises KeyboardInterrupt/SystemExit after cleaning up).

Added to the contract (backward compatible): `Status.phase` ("ready", or "starting" while
another llmctl loads it) and `Status.note` (a repair that status made or saw);
`to_json()` on Status, SwitchResult (the `switch --json` object) and StopResult;
`SwitchResult.raise_for_error()`; `Supervisor.log_path()`; keyword arguments `keep_logs`,
`port_timeout`, `gpu_timeout`. Event kind "kv": the saved KV cache of a `keep_kv` profile (saved
before a stop, restored after a load, or a file dropped); `stop(forget=True)` drops every saved
cache instead of saving; `Status.kv_saved` lists them. `stop()` cancels a load in progress in another llmctl
instead of waiting for it to finish (`stop(cancel_loading=False)` waits).

State folder: `state.json` (LaunchRecord, see llmctl.supervisor.state), `lock` (flock), `logs/` (one
log per launch, the newest `keep_logs` kept).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from llmctl.errors import LaunchError

# Only what `status` needs is imported here: `llmctl status` must start fast. The rest
# (subprocess, http.client, log parsing) is imported where it is used.
from llmctl.supervisor import procs
from llmctl.supervisor.lock import StateLock
from llmctl.supervisor.state import (
    CorruptState,
    LaunchRecord,
    clear_state,
    read_state,
    set_aside_corrupt,
    write_state,
)

if TYPE_CHECKING:
    import subprocess

    from llmctl.supervisor.launch import LaunchSpec

EventKind = Literal["locked", "stopping", "stopped", "starting", "log", "kv", "ready", "error"]

LAUNCH_ID_ENV = "LLMCTL_LAUNCH_ID"


@dataclass(frozen=True)
class Event:
    kind: EventKind
    message: str
    elapsed_s: float
    profile: str | None = None


@dataclass
class Status:
    running: bool
    profile: str | None = None
    pid: int | None = None
    host: str | None = None
    port: int | None = None
    url: str | None = None
    started_at: float | None = None
    uptime_s: float | None = None
    healthy: bool | None = None
    log: str | None = None
    config_hash: str | None = None
    argv: list[str] = field(default_factory=list)
    memory: dict[str, Any] = field(default_factory=dict)
    # added: "ready", "starting" (another llmctl is loading it) or None when nothing runs
    phase: str | None = None
    # added: what status noticed and repaired (a server that died, a switch that was killed)
    note: str | None = None
    # added: saved KV caches of keep_kv profiles (slotcache.saved)
    kv_saved: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "running": self.running,
            "phase": self.phase,
            "profile": self.profile,
            "pid": self.pid,
            "host": self.host,
            "port": self.port,
            "url": self.url,
            "started_at": self.started_at,
            "uptime_s": None if self.uptime_s is None else round(self.uptime_s, 3),
            "healthy": self.healthy,
            "log": self.log,
            "config_hash": self.config_hash,
            "argv": list(self.argv),
            "memory": dict(self.memory),
            "note": self.note,
            "kv_saved": list(self.kv_saved),
        }


@dataclass
class SwitchResult:
    profile: str
    pid: int | None
    port: int
    url: str
    ready: bool
    elapsed_s: float
    log: str | None
    noop: bool = False
    error: LaunchError | None = None

    def to_json(self) -> dict[str, Any]:
        """The `llmctl switch --json` object."""
        err = None
        if self.error is not None:
            message = self.error.message
            if self.error.hint:
                message = f"{message} ({self.error.hint})"
            err = {
                "message": message,
                "exit_code": self.error.exit_status,
                "stderr_tail": list(self.error.stderr_tail),
            }
        return {
            "profile": self.profile,
            "pid": self.pid,
            "port": self.port,
            "url": self.url,
            "ready": self.ready,
            "elapsed_s": round(self.elapsed_s, 3),
            "log": self.log,
            "error": err,
        }

    def raise_for_error(self) -> SwitchResult:
        """Raise the LaunchError, if any; return self otherwise."""
        if self.error is not None:
            raise self.error
        return self


@dataclass
class StopResult:
    stopped: bool
    profile: str | None
    pid: int | None
    elapsed_s: float
    # stop(forget=True): saved KV cache files and bytes dropped
    forgotten: tuple[int, int] = (0, 0)

    def to_json(self) -> dict[str, Any]:
        return {
            "stopped": self.stopped,
            "profile": self.profile,
            "pid": self.pid,
            "elapsed_s": round(self.elapsed_s, 3),
            "kv_forgotten": {"files": self.forgotten[0], "bytes": self.forgotten[1]},
        }


# Children started by this process, kept so they can be reaped (no zombies in a long-lived router).
_children: dict[int, subprocess.Popen[bytes]] = {}
_children_lock = threading.Lock()


def _reap() -> None:
    with _children_lock:
        for pid, proc in list(_children.items()):
            if proc.poll() is not None:
                del _children[pid]


class _Cancelled(Exception):
    pass


class Supervisor:
    def __init__(
        self,
        state_dir: Path,
        *,
        lock_timeout: float = 600.0,
        keep_logs: int = 20,
        port_timeout: float = 10.0,
        gpu_timeout: float = 10.0,
    ) -> None:
        self.state_dir = state_dir
        self.lock_timeout = lock_timeout
        self.keep_logs = keep_logs
        self.port_timeout = port_timeout
        self.gpu_timeout = gpu_timeout

    # ------------------------------------------------------------------ status

    def status(self, *, check_health: bool = True, timeout: float = 0.5) -> Status:
        """What runs now. Repairs a stale state when no other llmctl holds the lock."""
        _reap()
        try:
            rec = read_state(self.state_dir)
        except CorruptState:
            note = self._repair_now() or (
                "the state file is unreadable; the llmctl now holding the lock will repair it"
            )
            return Status(running=False, note=note)
        if rec is None:
            return Status(running=False, kv_saved=self._kv_saved())
        if not self._is_live(rec):
            gone = self._repair_now() or (
                f"the server of profile {rec.profile!r} (pid {rec.pid}) is gone; the llmctl "
                "now holding the lock will repair the state"
            )
            return Status(running=False, note=gone, kv_saved=self._kv_saved())
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
        from llmctl.supervisor.slotcache import saved

        return saved(self.state_dir)

    def log_path(self) -> Path | None:
        """The log of the running server, else of the latest launch."""
        from llmctl.supervisor.logs import latest_log

        with contextlib.suppress(CorruptState):
            rec = read_state(self.state_dir)
            if rec is not None:
                return Path(rec.log)
        return latest_log(self.state_dir)

    # ------------------------------------------------------------------ stop

    def stop(
        self,
        *,
        on_event: Callable[[Event], None] | None = None,
        cancel_loading: bool = True,
        forget: bool = False,
    ) -> StopResult:
        """Stop the managed server (SIGTERM to its group, then SIGKILL); no-op when none runs.

        A load in progress in another llmctl is cancelled (`cancel_loading=False`: wait for it
        to finish, then stop what it started). `forget`: drop every saved KV cache instead of
        saving the server's.
        """
        t0 = time.monotonic()
        emit = _Emitter(on_event, t0)
        # That load holds the lock until it ends: ask it to cancel (it polls for this file)
        # rather than wait for a big model to finish loading.
        request = self._request_cancel(emit) if cancel_loading else None
        try:
            with self._lock("stop") as lock:
                emit("locked", _locked_message(lock))
                rec = self._load_for_change(emit)
                if rec is not None:
                    self._stop_record(rec, emit, save_kv=not forget)
                forgotten = self._forget_kv(emit) if forget else (0, 0)
                if rec is None:
                    return StopResult(False, None, None, time.monotonic() - t0, forgotten)
                return StopResult(True, rec.profile, rec.pid, time.monotonic() - t0, forgotten)
        finally:
            if request is not None:
                with contextlib.suppress(OSError):
                    request.unlink()

    def _forget_kv(self, emit: _Emitter) -> tuple[int, int]:
        from llmctl.supervisor.slotcache import forget

        files, size = forget(self.state_dir)
        if files:
            emit("kv", f"dropped {files} saved KV cache file(s), {size / 1024**2:.1f} MiB")
        return files, size

    def _cancel_path(self, launch_id: str) -> Path:
        return self.state_dir / f"cancel-{launch_id}"

    def _request_cancel(self, emit: _Emitter) -> Path | None:
        try:
            rec = read_state(self.state_dir)
        except CorruptState:
            return None
        if rec is None or rec.phase != "starting" or not self._is_live(rec):
            return None
        path = self._cancel_path(rec.launch_id)
        try:
            path.touch()
        except OSError:
            return None
        emit(
            "stopping",
            f"cancelling the load of profile {rec.profile!r} in progress (llmctl pid {rec.owner_pid})",
            rec.profile,
        )
        return path

    # ------------------------------------------------------------------ switch

    def switch(
        self,
        spec: LaunchSpec,
        *,
        on_event: Callable[[Event], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> SwitchResult:
        """Make `spec` the running server: no-op if it already runs healthy with the same config."""
        t0 = time.monotonic()
        emit = _Emitter(on_event, t0, spec.profile)

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

        with self._lock(f"switch {spec.profile}") as lock:
            emit("locked", _locked_message(lock))
            rec = self._load_for_change(emit)
            if rec is not None and self._same_config(rec, spec):
                from llmctl.supervisor.health import health_status

                if health_status(rec.url, 1.0) == 200:
                    emit(
                        "ready",
                        f"profile {spec.profile!r} already runs with this configuration "
                        f"(pid {rec.pid}) and is healthy; nothing to do",
                    )
                    return result(ready=True, pid=rec.pid, log=rec.log, noop=True)
                emit("stopping", f"profile {spec.profile!r} runs but is not healthy: restarting")
            if cancel is not None and cancel.is_set():
                err = LaunchError("the switch was cancelled before it started anything")
                emit("error", err.message)
                return result(ready=False, pid=None, log=None, error=err)
            if rec is not None:
                self._stop_record(rec, emit)
            return self._start(spec, emit, cancel, result)

    # ------------------------------------------------------------------ internals

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
        if not lock.try_acquire():
            return None
        try:
            notes: list[str] = []
            self._load_for_change(lambda kind, msg: notes.append(msg))
            return "; ".join(notes) or "the state changed meanwhile"
        finally:
            lock.release()

    def _load_for_change(self, emit: Callable[[EventKind, str], None]) -> LaunchRecord | None:
        """Under the lock: the live record, after repairing any stale one (and saying so)."""
        try:
            rec = read_state(self.state_dir)
        except CorruptState as err:
            where = set_aside_corrupt(self.state_dir)
            emit("stopped", f"{err}; set aside as {where}" if where else str(err))
            return None
        if rec is None:
            return None
        if rec.phase == "ready" and rec.pid is not None and procs.is_alive(rec.pid, rec.start_time):
            return rec
        # Stale: the server exited, its pid was reused, or the llmctl that started it died
        # mid-switch (any llmctl alive would still hold the lock we now hold).
        leftovers = self._members(rec)
        if leftovers:
            procs.terminate(leftovers, pgid=self._pgid(rec), timeout=rec.stop_timeout, reap=_reap)
            procs.wait_port_free(rec.host, rec.port, self.port_timeout)
            what = f"stopped the half-started server of profile {rec.profile!r} (pid {rec.pid}) left by an interrupted switch"
            if rec.phase == "ready":
                what = f"stopped processes left by the server of profile {rec.profile!r} (pid {rec.pid})"
        elif rec.phase == "ready":
            what = f"the server of profile {rec.profile!r} (pid {rec.pid}) had exited"
        else:
            what = f"an interrupted switch to profile {rec.profile!r} left a state; nothing was running"
        clear_state(self.state_dir)
        emit("stopped", f"{what}; state repaired")
        return None

    def _members(self, rec: LaunchRecord) -> list[int]:
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

    def _pgid(self, rec: LaunchRecord) -> int | None:
        if rec.pid is None:
            return None
        for pid in procs.session_members(rec.pid, rec.marker):
            st = procs.stat(pid)
            if st is not None and st.pgrp == rec.pid:
                return rec.pid
        return None

    def _same_config(self, rec: LaunchRecord, spec: LaunchSpec) -> bool:
        return (
            rec.profile == spec.profile
            and rec.config_hash == spec.config_hash
            and rec.host == spec.host
            and rec.port == spec.port
        )

    def _stop_record(
        self, rec: LaunchRecord, emit: _Emitter | Callable[..., None], *, save_kv: bool = True
    ) -> None:
        if save_kv and rec.extra.get("keep_kv"):
            # hook: save slots before stopping a server
            from llmctl.supervisor.slotcache import save_slots

            save_slots(
                rec.extra["keep_kv"], rec.url, rec.argv, _kv_emit(emit, rec.profile), rec.profile
            )
        emit("stopping", f"stopping profile {rec.profile!r} (pid {rec.pid})", rec.profile)
        members = self._members(rec)
        outcome = procs.terminate(
            members, pgid=self._pgid(rec), timeout=rec.stop_timeout, reap=_reap
        )
        clear_state(self.state_dir)
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
    ) -> SwitchResult:
        import subprocess
        import uuid

        from llmctl.supervisor.logs import HEADER, new_log

        # hook: a keep_kv profile gets --slot-save-path; the record keeps where and what key
        from llmctl.supervisor.slotcache import prepare_launch

        config_hash = spec.config_hash
        spec, keep_kv = prepare_launch(self.state_dir, spec)
        holder = procs.port_holder(spec.host, spec.port)
        if holder is not None:
            err = LaunchError(
                f"port {spec.port} on {spec.host} is in use by {holder.describe()}",
                hint=f"stop that program or give profile {spec.profile!r} another port",
            )
            emit("error", err.message)
            return result(ready=False, pid=None, log=None, error=err)

        rec_prev = None
        with contextlib.suppress(CorruptState):
            rec_prev = read_state(self.state_dir)
        log_path = new_log(
            self.state_dir,
            spec.profile,
            keep=self.keep_logs,
            protect=rec_prev.log if rec_prev else None,
        )
        header = (
            f"{HEADER} profile={spec.profile} config={config_hash}\n{HEADER} $ {spec.shell()}\n"
        )
        log_path.write_text(header)
        me = os.getpid()
        rec = LaunchRecord(
            launch_id=uuid.uuid4().hex,
            phase="starting",
            profile=spec.profile,
            config_hash=config_hash,
            argv=list(spec.argv),
            host=spec.host,
            port=spec.port,
            url=spec.url,
            log=str(log_path),
            started_at=time.time(),
            owner_pid=me,
            owner_start_time=procs.start_time(me),
            stop_timeout=spec.stop_timeout,
            model=spec.model,
            extra={"keep_kv": keep_kv} if keep_kv else {},
        )
        # Written before the spawn: an llmctl killed right after the spawn leaves a record
        # whose launch_id finds the orphan through its environment.
        write_state(self.state_dir, rec)
        emit("starting", f"starting profile {spec.profile!r}: {spec.shell()}")
        env = {k: v for k, v in os.environ.items() if k not in spec.unset_env}
        env.update(spec.env)
        env[LAUNCH_ID_ENV] = rec.launch_id
        proc: subprocess.Popen[bytes] | None = None
        try:
            with log_path.open("ab") as log_file:
                try:
                    proc = subprocess.Popen(
                        list(spec.argv),
                        stdin=subprocess.DEVNULL,
                        stdout=log_file,
                        stderr=subprocess.STDOUT,
                        env=env,
                        start_new_session=True,
                        close_fds=True,
                    )
                except OSError as err:
                    clear_state(self.state_dir)
                    exe = spec.argv[0] if spec.argv else "?"
                    lerr = LaunchError(
                        f"cannot run {exe}: {err.strerror or err}",
                        hint="set server.binary in the manifest or LLMCTL_LLAMA_SERVER to "
                        "llama-server's path (scripts/build-llama-server.sh builds one)",
                    )
                    emit("error", lerr.message)
                    return result(ready=False, pid=None, log=str(log_path), error=lerr)
            with _children_lock:
                _children[proc.pid] = proc
            rec.pid = proc.pid
            rec.start_time = procs.start_time(proc.pid)
            write_state(self.state_dir, rec)
            error = self._wait_ready(
                proc,
                spec,
                log_path,
                len(header.encode()),
                emit,
                cancel,
                self._cancel_path(rec.launch_id),
            )
            if error is None and keep_kv:
                # hook: restore slots after the server is ready, before the first request
                from llmctl.supervisor.slotcache import restore_slots

                if not restore_slots(keep_kv, spec.url, _kv_emit(emit, spec.profile), spec.profile):
                    # the server died on a file (now removed): the next load goes on without it
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=spec.stop_timeout)
                    code = proc.poll()
                    error = (
                        self._exit_error(spec, code, [], log_path)
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
            clear_state(self.state_dir)
            raise
        if error is not None:
            self._kill_launch(rec)
            clear_state(self.state_dir)
            emit("error", error.message)
            return result(ready=False, pid=proc.pid, log=str(log_path), error=error)
        rec.phase = "ready"
        rec.ready_at = time.time()
        rec.owner_pid = None
        rec.owner_start_time = None
        write_state(self.state_dir, rec)
        emit("ready", f"profile {spec.profile!r} is ready at {spec.url} (pid {proc.pid})")
        return result(ready=True, pid=proc.pid, log=str(log_path))

    def _kill_launch(self, rec: LaunchRecord) -> None:
        members = self._members(rec)
        procs.terminate(members, pgid=self._pgid(rec), timeout=rec.stop_timeout, reap=_reap)
        procs.wait_port_free(rec.host, rec.port, self.port_timeout)

    def _wait_ready(
        self,
        proc: subprocess.Popen[bytes],
        spec: LaunchSpec,
        log_path: Path,
        offset: int,
        emit: _Emitter,
        cancel: threading.Event | None,
        cancel_file: Path,
    ) -> LaunchError | None:
        """Poll the log (every 1-20 ms) and /health; None once /health answers 200.

        A load ends early when the process exits, at ready_timeout, after stall_timeout without
        log output, or when cancelled (`cancel`, or `cancel_file` created by another stop).
        """
        from llmctl.supervisor.health import health_status
        from llmctl.supervisor.logs import READY_LINE, LogFollower

        follower = LogFollower(log_path, offset)
        lines: list[str] = []
        t0 = time.monotonic()
        last_progress = t0
        saw_ready_line = False
        health_every = 0.02
        next_health = t0 + health_every
        nap = 0.001
        try:
            while True:
                new, grew = follower.poll()
                now = time.monotonic()
                if grew:
                    last_progress = now
                    nap = 0.001
                for line in new:
                    lines.append(line)
                    emit("log", line)
                    if READY_LINE.search(line):
                        saw_ready_line = True
                if len(lines) > 2000:
                    del lines[:1000]
                if saw_ready_line or now >= next_health:
                    if health_status(spec.url, 1.0) == 200:
                        for line in follower.poll()[0]:
                            emit("log", line)
                        return None
                    if not saw_ready_line:
                        health_every = min(health_every * 1.5, 0.5)
                        next_health = time.monotonic() + health_every
                code = proc.poll()
                if code is not None:
                    more, _ = follower.poll()
                    more += follower.flush()
                    for line in more:
                        lines.append(line)
                        emit("log", line)
                    return self._exit_error(spec, code, lines, log_path)
                if cancel is not None and cancel.is_set():
                    return LaunchError(
                        f"the load of profile {spec.profile!r} was cancelled; nothing is left running"
                    )
                if cancel_file.exists():
                    return LaunchError(
                        f"the load of profile {spec.profile!r} was cancelled by `llmctl stop` "
                        "from another process; nothing is left running"
                    )
                if now - t0 > spec.ready_timeout:
                    return self._load_error(
                        spec,
                        f"profile {spec.profile!r} was not ready after {spec.ready_timeout:g} s (ready_timeout); killed",
                        lines,
                        "raise ready_timeout for big models",
                    )
                if now - last_progress > spec.stall_timeout:
                    return self._load_error(
                        spec,
                        f"profile {spec.profile!r} stalled: no log output for {spec.stall_timeout:g} s "
                        "while loading; killed",
                        lines,
                        "raise stall_timeout if the load is just slow",
                    )
                time.sleep(nap)
                nap = min(nap * 1.5, 0.002 if saw_ready_line else 0.02)
        finally:
            follower.close()

    def _exit_error(
        self, spec: LaunchSpec, code: int, lines: list[str], log_path: Path
    ) -> LaunchError:
        from llmctl.supervisor.logs import error_tail, strip_prefix, tail_lines

        if not lines:
            lines = tail_lines(log_path, 50)
        err_line, tail = error_tail(lines)
        how = f"exited with code {code}" if code >= 0 else f"was killed by signal {-code}"
        message = f"llama-server for profile {spec.profile!r} {how} while loading"
        if err_line:
            message += f": {strip_prefix(err_line)}"
        return LaunchError(
            message, hint=f"full log: {log_path}", exit_status=code, stderr_tail=tail
        )

    def _load_error(
        self, spec: LaunchSpec, message: str, lines: list[str], hint: str
    ) -> LaunchError:
        from llmctl.supervisor.logs import error_tail

        _, tail = error_tail(lines)
        return LaunchError(message, hint=hint, stderr_tail=tail)


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
