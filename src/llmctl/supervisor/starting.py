"""Starting one llama-server, from no record to a ready one or to nothing at all.

`start(settings, spec, emit, cancel, result, admitted_at)` is the launch of `Supervisor.switch`
and `Supervisor.load` once they have stopped what had to go. In order:

    1. keep_kv: --slot-save-path added, the cache key noted          (kvcache/hooks.py)
    2. the port checked, the launch log made                          (spawn.py)
    3. the record written, phase "starting", before the spawn: an llmctl killed right after
       it leaves a record whose launch id finds the orphan            (state.py, repair.py)
    4. a stop from a shell that came after the request: refused       (stops.refusal)
    5. Popen; the pid recorded                                        (spawn.py)
    6. waited for: ready, exited, timed out, stalled, or cancelled by the event or the
       cancel file a stop touches                                     (readiness.py, cancels.py)
    7. keep_kv: the saved slots restored                              (kvcache/hooks.py)
    8. ready: the record's phase "ready", the engine's memory plan kept (probe.py)

Any failure kills the launch and drops its record, so nothing is left running, and comes back
as `SwitchResult.error`; KeyboardInterrupt and other exceptions do the same, then propagate.
The caller holds the state lock. `settings` is the Supervisor.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from llmctl.errors import LaunchError, LoadCancelled
from llmctl.supervisor import cancels, procs, spawn, stopping
from llmctl.supervisor.readiness import LoadWatcher
from llmctl.supervisor.state import drop_record, put_record
from llmctl.supervisor.stops import refusal

if TYPE_CHECKING:
    import subprocess
    import threading

    from llmctl.supervisor.launch import LaunchSpec
    from llmctl.supervisor.results import Emitter, SwitchResult


class Settings(stopping.Settings, Protocol):
    """What a launch needs of the Supervisor besides what a stop does."""

    keep_logs: int  # launch logs kept
    started_by: str | None  # "llmctl serve": the launcher named in each record


def start(
    settings: Settings,
    spec: LaunchSpec,
    emit: Emitter,
    cancel: threading.Event | None,
    result: Callable[..., SwitchResult],
    admitted_at: float | None = None,
) -> SwitchResult:
    """Start `spec` and wait until it is ready (see the module docstring)."""

    state_dir = settings.state_dir
    identity_of = spec
    keep_kv: dict[str, Any] | None = None
    if spec.keep_kv is not None:
        # hook: a keep_kv profile gets --slot-save-path; the record keeps where and what key
        from llmctl.supervisor.kvcache.hooks import prepare_launch

        spec, keep_kv = prepare_launch(state_dir, spec)
    port_err = spawn.port_error(spec)
    if port_err is not None:
        emit("error", port_err.message)
        return result(ready=False, pid=None, log=None, error=port_err)
    log_path, offset = spawn.launch_log(state_dir, spec, settings.keep_logs)
    # the record names the profile's configuration; the launch adds llmctl's own flags
    # (--slot-save-path above, --log-jsonl: the engine's memory plan lands in the log)
    identity = identity_of.config_hash
    spec = spawn.with_log_format(spec)
    rec = spawn.starting_record(spec, log_path, keep_kv, settings.started_by, identity)
    put_record(state_dir, rec)
    # A stop that read the state before this record was written cannot cancel this load:
    # its mark, written before that read, is seen here instead.
    refused = refusal(state_dir, spec.profile, admitted_at)
    if refused is not None:
        drop_record(state_dir, rec)
        emit("error", refused.message)
        return result(ready=False, pid=None, log=None, error=refused)
    emit("starting", f"starting profile {spec.profile!r}: {spec.shell()}")
    watcher = LoadWatcher(spec, log_path, emit)
    proc: subprocess.Popen[bytes] | None = None
    try:
        try:
            proc = spawn.popen(spec, rec, log_path, state_dir)
        except LaunchError as lerr:
            drop_record(state_dir, rec)
            emit("error", lerr.message)
            return result(ready=False, pid=None, log=str(log_path), error=lerr)
        rec.pid = proc.pid
        rec.start_time = procs.start_time(proc.pid)
        put_record(state_dir, rec)
        error = watcher.wait_ready(proc, offset, cancel, cancels.path(state_dir, rec.launch_id))
        if error is None and keep_kv:
            error = _restore_kv(spec, keep_kv, proc, watcher, emit)
    except BaseException:
        # Ctrl-C (KeyboardInterrupt) or anything unexpected: leave nothing running.
        stopping.kill_launch(settings, rec)
        drop_record(state_dir, rec)
        raise
    if error is not None:
        stopping.kill_launch(settings, rec)
        drop_record(state_dir, rec)
        if isinstance(error, LoadCancelled) and error.retry:
            # cancelled by another llmctl: a stop from a shell after the request means no retry
            error = refusal(state_dir, spec.profile, admitted_at) or error
        emit("error", error.message)
        return result(ready=False, pid=proc.pid, log=str(log_path), error=error)
    rec.phase = "ready"
    rec.ready_at = time.time()
    rec.owner_pid = None
    rec.owner_start_time = None
    stated = watcher.plan_line if watcher.plan_line is not None else watcher.text_plan
    if stated is not None:
        from llmctl.supervisor.probe import record_launch_plan

        plan = record_launch_plan(identity_of, stated)
        if plan is not None:
            rec.extra["engine_plan"] = plan
    from llmctl.supervisor.probe import record_gpu_used

    gpu_used = record_gpu_used(identity_of, proc.pid)
    if gpu_used is not None:
        rec.extra["gpu_used"] = gpu_used
    put_record(state_dir, rec)
    emit("ready", f"profile {spec.profile!r} is ready at {spec.url} (pid {proc.pid})")
    return result(ready=True, pid=proc.pid, log=str(log_path))


def _restore_kv(
    spec: LaunchSpec,
    keep_kv: dict[str, Any],
    proc: subprocess.Popen[bytes],
    watcher: LoadWatcher,
    emit: Emitter,
) -> LaunchError | None:
    """Hook: the saved slots restored once the server is ready, before the first request;
    the error when the server died on a file (now removed: the next load goes on without it)."""
    import subprocess

    from llmctl.supervisor.kvcache.hooks import restore_slots

    if restore_slots(keep_kv, spec.url, emit.kv(spec.profile), spec.profile):
        return None
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=spec.stop_timeout)
    code = proc.poll()
    if code is not None:
        return watcher.exit_error(code, [])
    return LaunchError(
        f"llama-server for profile {spec.profile!r} stopped answering while restoring its "
        "saved KV cache; killed",
        hint=f"full log: {watcher.log_path}",
    )
