"""Processes and ports, read from /proc: identity (pid + start time), sessions, port holders.

Linux only. Every function tolerates processes that vanish while being read.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class ProcStat:
    pid: int
    state: str
    ppid: int
    pgrp: int
    session: int
    start_time: int  # clock ticks since boot: with the pid, identifies one process for good


def stat(pid: int) -> ProcStat | None:
    """The process's /proc/PID/stat, or None when there is no such process."""
    try:
        raw = (PROC / str(pid) / "stat").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError, NotADirectoryError):
        return None
    # comm (field 2) may hold spaces and parentheses: split after the last ')'
    rest = raw[raw.rfind(b")") + 2 :].split()
    try:
        return ProcStat(
            pid=pid,
            state=rest[0].decode(),
            ppid=int(rest[1]),
            pgrp=int(rest[2]),
            session=int(rest[3]),
            start_time=int(rest[19]),
        )
    except (IndexError, ValueError):
        return None


def start_time(pid: int) -> int | None:
    st = stat(pid)
    return st.start_time if st else None


def is_alive(pid: int, start: int | None = None) -> bool:
    """True when `pid` runs (not a zombie) and, if `start` is given, is the same process as then."""
    st = stat(pid)
    if st is None or (start is not None and st.start_time != start):
        return False
    if st.state in ("Z", "X"):
        # A dead main thread shows Z while other threads still exit; they hold the process's
        # files (its listening socket) until the last one is gone.
        try:
            return len(os.listdir(PROC / str(pid) / "task")) > 1
        except OSError:
            return False
    return True


def cmdline(pid: int) -> str:
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return ""
    return raw.rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")


def environ_has(pid: int, entry: str) -> bool | None:
    """Whether the process's environment holds `KEY=VALUE`; None when it cannot be read."""
    try:
        raw = (PROC / str(pid) / "environ").read_bytes()
    except OSError:
        return None
    return entry.encode() in raw.split(b"\0")


def all_pids() -> Iterator[int]:
    with contextlib.suppress(OSError):
        for entry in os.scandir(PROC):
            if entry.name.isdigit():
                yield int(entry.name)


def session_members(sid: int, marker: str | None = None) -> list[int]:
    """Live processes of session `sid` (llama-server runs as a session leader).

    With `marker` (an environment entry set at launch), a process whose environment is readable
    must carry it: a session id whose leader died long ago cannot then match strangers.
    """
    found = []
    for pid in all_pids():
        st = stat(pid)
        if st is None or st.session != sid or st.state in ("Z", "X"):
            continue
        if marker is not None and environ_has(pid, marker) is False:
            continue
        found.append(pid)
    return found


def marked_processes(marker: str) -> list[int]:
    """Live processes whose environment carries `marker` (slow: reads every /proc/PID/environ)."""
    found = []
    for pid in all_pids():
        if environ_has(pid, marker):
            st = stat(pid)
            if st is not None and st.state not in ("Z", "X"):
                found.append(pid)
    return found


def signal_all(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


# ---------------------------------------------------------------- ports


@dataclass(frozen=True)
class PortHolder:
    pid: int | None
    command: str

    def describe(self) -> str:
        if self.pid is None:
            return "another program (its process could not be identified)"
        command = " ".join(self.command.split()) or "?"
        if len(command) > 120:
            command = command[:117] + "..."
        return f"pid {self.pid} ({command})"


def _parse_addr(hexaddr: str) -> tuple[bytes, int]:
    host, port = hexaddr.split(":")
    raw = bytes.fromhex(host)
    if len(raw) == 16:  # IPv6: four little-endian 32-bit words
        return b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4)), int(port, 16)
    raw = raw[::-1]
    return raw, int(port, 16)


_WILDCARDS = (bytes(4), bytes(16))


def _host_bytes(host: str) -> set[bytes]:
    import socket

    out: set[bytes] = set()
    with contextlib.suppress(OSError, UnicodeError):
        for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP):
            addr = info[4][0]
            fam = info[0]
            with contextlib.suppress(OSError, ValueError):
                out.add(socket.inet_pton(fam, str(addr).split("%")[0]))
    return out


def listening_inodes(port: int, host: str | None = None) -> list[int]:
    """Inodes of TCP sockets listening on `port` that would clash with binding `host:port`."""
    wanted = _host_bytes(host) if host else set()
    wild_host = not wanted or any(w in wanted for w in _WILDCARDS)
    inodes = []
    for name in ("tcp", "tcp6"):
        try:
            lines = (PROC / "net" / name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) < 10 or parts[3] != "0A":  # 0A = LISTEN
                continue
            addr, lport = _parse_addr(parts[1])
            if lport != port:
                continue
            v4mapped = addr[:12] == bytes(10) + b"\xff\xff"
            if (
                wild_host
                or addr in _WILDCARDS
                or addr in wanted
                or (v4mapped and addr[12:] in wanted)
            ):
                inodes.append(int(parts[9]))
    return inodes


def socket_owners(inodes: Iterable[int]) -> list[int]:
    targets = {f"socket:[{i}]" for i in inodes}
    if not targets:
        return []
    owners = []
    for pid in all_pids():
        try:
            fds = os.scandir(PROC / str(pid) / "fd")
        except OSError:
            continue
        with fds:
            for fd in fds:
                try:
                    link = os.readlink(fd.path)
                except OSError:
                    continue
                if link in targets:
                    owners.append(pid)
                    break
    return owners


def port_in_use(host: str, port: int) -> bool:
    """True when binding `host:port` as llama-server would fails with "address in use".

    A listener with SO_REUSEPORT (llama-server's --reuse-port) still blocks this bind, which
    sets only SO_REUSEADDR; a bind test is also much cheaper than reading /proc/net/tcp.
    """
    import errno
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as err:
            return err.errno == errno.EADDRINUSE
    return False


def port_holder(host: str, port: int) -> PortHolder | None:
    """Who listens on `host:port`, when it can be known; None when the port is free."""
    if not port_in_use(host, port):
        return None
    inodes = listening_inodes(port, host)
    owners = socket_owners(inodes)
    if not owners:
        return PortHolder(None, "")
    pid = min(owners)
    return PortHolder(pid, cmdline(pid))


def wait_port_free(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        if not port_in_use(host, port):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def terminate(
    pids: Iterable[int],
    *,
    pgid: int | None,
    timeout: float,
    reap: Callable[[], object] | None = None,
) -> str:
    """SIGTERM, wait up to `timeout`, then SIGKILL. Returns "none" (nothing to stop),
    "terminated", "killed" (SIGKILL was needed) or "survived".

    One SIGTERM per process: llama-server takes a second one as "exit(1) at once".
    """
    targets: dict[int, int | None] = {}
    outside_group = []
    for pid in pids:
        st = stat(pid)
        if st is None:
            continue
        targets[pid] = st.start_time
        if st.pgrp != pgid:
            outside_group.append(pid)
    if pgid is not None:
        signal_group(pgid, signal.SIGTERM)
    if not targets and pgid is None:
        return "none"
    signal_all(outside_group, signal.SIGTERM)
    if _wait_gone(targets, timeout, reap):
        return "terminated"
    if pgid is not None:
        signal_group(pgid, signal.SIGKILL)
    signal_all(targets, signal.SIGKILL)
    return "killed" if _wait_gone(targets, 5.0, reap) else "survived"


def reap_children() -> None:
    """Collect the exit status of this process's llama-servers that have exited (spawn.py keeps
    them). A process that spawned none has not imported spawn, and it is not imported for this:
    `llmctl status` stays free of it."""
    spawn = sys.modules.get("llmctl.supervisor.spawn")
    if spawn is not None:
        spawn.reap()


def _wait_gone(
    targets: dict[int, int | None], timeout: float, reap: Callable[[], object] | None
) -> bool:
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        if reap is not None:
            reap()
        if not any(is_alive(p, s) for p, s in targets.items()):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


__all__ = [
    "PortHolder",
    "ProcStat",
    "all_pids",
    "cmdline",
    "environ_has",
    "is_alive",
    "marked_processes",
    "port_holder",
    "port_in_use",
    "reap_children",
    "session_members",
    "signal_all",
    "signal_group",
    "start_time",
    "stat",
    "terminate",
    "wait_port_free",
]
