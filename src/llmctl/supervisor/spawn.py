"""Effects of starting one llama-server: the port check, the launch log, the record, Popen.

No decisions and no waiting (readiness.py waits): each function does one step of a launch and
says plainly what failed. Children started by this process are kept in a registry so they are
reaped (no zombies in a long-lived router). The caller holds the state lock.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from llmctl.errors import LaunchError
from llmctl.supervisor import procs

# stated with the launch (`llmctl command` shows it without importing this module)
from llmctl.supervisor.launch import with_log_format as _with_log_format
from llmctl.supervisor.state import LAUNCH_ID_ENV, CorruptState, LaunchRecord, read_servers

if TYPE_CHECKING:
    import subprocess
    from pathlib import Path

    from llmctl.supervisor.launch import LaunchSpec

# The state folder a server belongs to, in its environment: finds our servers when the state
# file is lost, without touching those of another state folder.
STATE_DIR_ENV = "LLMCTL_SERVER_STATE"

_children: dict[int, subprocess.Popen[bytes]] = {}
_children_lock = threading.Lock()


def reap() -> None:
    """Collect the exit status of children that have exited."""
    with _children_lock:
        for pid, proc in list(_children.items()):
            if proc.poll() is not None:
                del _children[pid]


def port_error(spec: LaunchSpec) -> LaunchError | None:
    """Why `spec`'s port cannot be used (another program holds it), or None."""
    holder = procs.port_holder(spec.host, spec.port)
    if holder is None:
        return None
    return LaunchError(
        f"port {spec.port} on {spec.host} is in use by {holder.describe()}",
        hint=f"stop that program or give profile {spec.profile!r} another port",
    )


def launch_log(state_dir: Path, spec: LaunchSpec, keep_logs: int) -> tuple[Path, int]:
    """A new launch log with its header written (the logs of running servers are kept);
    its path and the header's length in bytes."""
    from llmctl.supervisor.logs import HEADER, new_log

    running_logs: set[str] = set()
    with contextlib.suppress(CorruptState):
        running_logs = {r.log for r in read_servers(state_dir).values()}
    header = (
        f"{HEADER} profile={spec.profile} config={spec.config_hash}\n{HEADER} $ {spec.shell()}\n"
    )
    try:
        log_path = new_log(state_dir, spec.profile, keep=keep_logs, protect=running_logs)
        log_path.write_text(header)
    except OSError as oserr:
        from llmctl.supervisor.state import state_dir_error

        raise state_dir_error(state_dir, oserr, "write the launch log") from None
    return log_path, len(header.encode())


def starting_record(
    spec: LaunchSpec,
    log_path: Path,
    keep_kv: dict[str, Any] | None,
    started_by: str | None = None,
    config_hash: str | None = None,
) -> LaunchRecord:
    """The record of a launch about to start, owned by this process until it is ready;
    `started_by` ("llmctl serve"): the launcher kept in the record for good (launcher_gone)."""
    me = os.getpid()
    by = {"what": started_by, "pid": me, "start_time": procs.start_time(me)} if started_by else None
    return LaunchRecord(
        launch_id=os.urandom(16).hex(),  # as uuid4().hex, without importing uuid
        phase="starting",
        profile=spec.profile,
        config_hash=config_hash or spec.config_hash,
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
        extra={
            **spec.placement,
            **({"keep_kv": keep_kv} if keep_kv else {}),
            **({"started_by": by} if by else {}),
            **({"origin": spec.origin} if spec.origin else {}),
        },
    )


def with_log_format(spec: LaunchSpec) -> LaunchSpec:
    """launch.with_log_format for a launch: what the build lacks (no --log-jsonl, no slot token
    counts for keep_kv) is said once here, not by `llmctl command`, which shows the same argv."""
    from llmctl.supervisor.features import say_once

    say_once(spec.argv[0], (spec.profile,) if spec.keep_kv is not None else ())
    return _with_log_format(spec)


def launcher_gone(rec: LaunchRecord, what: str) -> bool:
    """The record's server was started by a `what` (e.g. "llmctl serve") that no longer runs."""
    by = rec.extra.get("started_by")
    if not isinstance(by, dict) or by.get("what") != what:
        return False
    pid, start = by.get("pid"), by.get("start_time")
    if not isinstance(pid, int) or pid == os.getpid():
        return False
    return not procs.is_alive(pid, start if isinstance(start, int) else None)


def popen(
    spec: LaunchSpec, rec: LaunchRecord, log_path: Path, state_dir: Path
) -> subprocess.Popen[bytes]:
    """Start `spec` in its own session, output to the log, marked with the launch id and state
    folder; registered for reaping. LaunchError when the binary cannot be run."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if k not in spec.unset_env}
    env.update(spec.env)
    env[LAUNCH_ID_ENV] = rec.launch_id
    env[STATE_DIR_ENV] = str(state_dir)
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
            exe = spec.argv[0] if spec.argv else "?"
            raise LaunchError(
                f"cannot run {exe}: {err.strerror or err}",
                hint="set server.binary in the manifest or LLMCTL_LLAMA_SERVER to "
                "llama-server's path (scripts/build-llama-server.sh builds one)",
            ) from None
    with _children_lock:
        _children[proc.pid] = proc
    return proc
