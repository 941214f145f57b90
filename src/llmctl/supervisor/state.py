"""The state file: which llama-servers llmctl runs, written atomically, read without a lock.

Format 2 holds every server, one per profile: {"format": 2, "servers": {profile: record}}. A
format-1 file (one record at the top level) is still read, as that one server.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from llmctl.errors import StateDirError
from llmctl.supervisor import procs

STATE_FILE = "state.json"
FORMAT = 1
FILE_FORMAT = 2

Phase = Literal["starting", "ready"]

# Every llama-server llmctl starts carries its launch id in this environment variable.
LAUNCH_ID_ENV = "LLMCTL_LAUNCH_ID"


@dataclass
class LaunchRecord:
    """One launch. `pid` + `start_time` identify the process even if the pid is reused later;
    `launch_id` is also in the server's environment (LLMCTL_LAUNCH_ID) to find it without a pid."""

    launch_id: str
    phase: Phase
    profile: str
    config_hash: str
    argv: list[str]
    host: str
    port: int
    url: str
    log: str
    started_at: float
    pid: int | None = None
    start_time: int | None = None
    ready_at: float | None = None
    owner_pid: int | None = None
    owner_start_time: int | None = None
    stop_timeout: float = 10.0
    model: str = ""
    format: int = FORMAT
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def marker(self) -> str:
        return f"{LAUNCH_ID_ENV}={self.launch_id}"

    def is_live(self) -> bool:
        """The recorded server still runs (or, while starting, the llmctl starting it does)."""
        if self.phase == "starting":
            owner_alive = self.owner_pid is not None and procs.is_alive(
                self.owner_pid, self.owner_start_time
            )
            return owner_alive and (self.pid is None or procs.is_alive(self.pid, self.start_time))
        return self.pid is not None and procs.is_alive(self.pid, self.start_time)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LaunchRecord:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class CorruptState(Exception):
    """The state file exists but cannot be understood."""


def state_path(state_dir: Path) -> Path:
    return state_dir / STATE_FILE


def read_state(state_dir: Path) -> LaunchRecord | None:
    """The newest record (the one server when only one runs), None when there is none;
    CorruptState when unreadable."""
    servers = read_servers(state_dir)
    if not servers:
        return None
    return max(servers.values(), key=lambda r: r.started_at)


def read_servers(state_dir: Path) -> dict[str, LaunchRecord]:
    """Every record by profile; CorruptState when the file is unreadable."""
    path = state_path(state_dir)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as err:
        raise CorruptState(f"cannot read {path}: {err.strerror}") from err
    try:
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise TypeError("not an object")
        if "servers" not in data:
            rec = LaunchRecord.from_json(data)
            return {rec.profile: rec}
        servers = data["servers"]
        if not isinstance(servers, dict):
            raise TypeError("servers is not an object")
        out = {}
        for name, item in servers.items():
            if not isinstance(item, dict):
                raise TypeError(f"server {name!r} is not an object")
            out[str(name)] = LaunchRecord.from_json(item)
        return out
    except (ValueError, TypeError) as err:
        raise CorruptState(f"{path} is not a valid llmctl state file ({err})") from err


_WHY = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EROFS: "it is on a read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOTDIR: "a file stands where a folder should be",
    errno.EEXIST: "it is a file, not a folder",
}

# what a switch writes before its server runs: the state record and the head of a launch log
PROBE_BYTES = 64 * 1024


def state_dir_error(state_dir: Path, err: OSError, doing: str) -> StateDirError:
    why = _WHY.get(err.errno or 0) or err.strerror or str(err)
    return StateDirError(
        f"cannot {doing} in the state folder {state_dir}: {why}",
        hint="free space on its disk or make it writable, or point LLMCTL_STATE_DIR at another "
        "folder; nothing was stopped or started",
    )


def check_writable(state_dir: Path, probe_bytes: int = PROBE_BYTES, *, sync: bool = True) -> None:
    """StateDirError unless `probe_bytes` can be written (and a file removed) in `state_dir`.

    Checked before anything is stopped: a switch that could not record its new server must not
    leave the machine with none. `sync`: also push the bytes to the disk, which a full disk may
    only refuse then (worth its cost when a running server is at stake).
    """
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = new_temp(state_dir, ".probe.")
        try:
            with os.fdopen(fd, "wb") as f:
                if probe_bytes:
                    f.write(b"\0" * probe_bytes)
                    f.flush()
                    if sync:
                        os.fsync(f.fileno())
        finally:
            os.unlink(tmp)
    except OSError as err:
        raise state_dir_error(state_dir, err, "write") from None


def write_state(state_dir: Path, record: LaunchRecord) -> None:
    """Make `record` the only server in the state."""
    write_servers(state_dir, {record.profile: record})


def write_servers(state_dir: Path, servers: dict[str, LaunchRecord]) -> None:
    """Write atomically: a reader sees the old state or the new one, never a mix. No servers:
    the file is removed.

    No fsync: the records only matter while their processes live, and none survive a reboot.
    Raises StateDirError when the folder cannot be written.
    """
    if not servers:
        clear_state(state_dir)
        return
    data = {"format": FILE_FORMAT, "servers": {k: r.to_json() for k, r in servers.items()}}
    blob = json.dumps(data, indent=2).encode() + b"\n"
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = new_temp(state_dir, ".state.")
    except OSError as err:
        raise state_dir_error(state_dir, err, "write the state") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        os.replace(tmp, state_path(state_dir))
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise state_dir_error(state_dir, exc, "write the state") from None
        raise


def new_temp(folder: Path, prefix: str) -> tuple[int, Path]:
    """A new file of this process's own in `folder`, open for writing (as tempfile.mkstemp,
    without importing tempfile: `stop` and `switch` start faster)."""
    tmp = folder / f"{prefix}{os.getpid()}.{os.urandom(6).hex()}.tmp"
    return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), tmp


def readable_servers(state_dir: Path) -> dict[str, LaunchRecord]:
    """The records by profile, {} when the file is unreadable (repair.py deals with that)."""
    try:
        return read_servers(state_dir)
    except CorruptState:
        return {}


def put_record(state_dir: Path, rec: LaunchRecord) -> None:
    """Under the lock: add or replace one record."""
    recs = readable_servers(state_dir)
    recs[rec.profile] = rec
    write_servers(state_dir, recs)


def drop_record(state_dir: Path, rec: LaunchRecord) -> None:
    """Under the lock: remove one record (only if it is still this launch)."""
    recs = readable_servers(state_dir)
    cur = recs.get(rec.profile)
    if cur is not None and cur.launch_id == rec.launch_id:
        del recs[rec.profile]
        write_servers(state_dir, recs)


def clear_state(state_dir: Path) -> None:
    try:
        state_path(state_dir).unlink()
    except FileNotFoundError:
        pass
    except OSError as err:
        raise state_dir_error(state_dir, err, "clear the state") from None


def set_aside_corrupt(state_dir: Path) -> Path | None:
    """Move an unreadable state file out of the way (kept for inspection)."""
    path = state_path(state_dir)
    dest = path.with_suffix(".json.corrupt")
    try:
        os.replace(path, dest)
    except OSError:
        return None
    return dest
