"""Servers llmctl started but no longer records: found in /proc by their launch id.

Every llama-server llmctl starts carries LLMCTL_LAUNCH_ID in its environment and writes to a
launch log in the state folder's `logs/`, whose first line names its profile and configuration.
When the state file is lost (unreadable, deleted), that is enough to rebuild its record: the
server is adopted when it answers /health, stopped otherwise.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from llmctl.supervisor import procs
from llmctl.supervisor.state import LAUNCH_ID_ENV, LaunchRecord

_PREFIX = (LAUNCH_ID_ENV + "=").encode()


@dataclass(frozen=True)
class Orphan:
    pid: int
    launch_id: str
    log: Path
    argv: list[str]

    @property
    def marker(self) -> str:
        """Its environment entry, as LaunchRecord.marker."""
        return f"{LAUNCH_ID_ENV}={self.launch_id}"

    def record(self) -> LaunchRecord | None:
        """Its launch record, rebuilt from the log's header and the command line; None if unknown."""
        from llmctl.supervisor.logs import HEADER

        try:
            with self.log.open(errors="replace") as f:
                first = f.readline()
        except OSError:
            return None
        if not first.startswith(HEADER):
            return None
        fields = dict(part.split("=", 1) for part in first[len(HEADER) :].split() if "=" in part)
        profile = fields.get("profile")
        if not profile:
            return None
        host = _flag(self.argv, "--host") or "127.0.0.1"
        port_text = _flag(self.argv, "--port") or "8080"
        if not port_text.isdigit():
            return None
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        shown = f"[{shown}]" if ":" in shown else shown
        start = procs.start_time(self.pid)
        return LaunchRecord(
            launch_id=self.launch_id,
            phase="ready",
            profile=profile,
            config_hash=fields.get("config", ""),
            argv=list(self.argv),
            host=host,
            port=int(port_text),
            url=f"http://{shown}:{port_text}",
            log=str(self.log),
            started_at=_started_at(start),
            pid=self.pid,
            start_time=start,
            ready_at=time.time(),
        )


def _flag(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv[:-1]):
        if arg == name:
            return argv[i + 1]
    return None


def _started_at(ticks: int | None) -> float:
    """Wall-clock start of a process from its start time in clock ticks since boot."""
    if ticks is None:
        return time.time()
    try:
        with open("/proc/stat") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, StopIteration, ValueError):
        return time.time()


def find_orphans(state_dir: Path) -> list[Orphan]:
    """Live session leaders with a launch id whose output goes to this state folder's logs."""
    logs = (state_dir / "logs").resolve()
    found: list[Orphan] = []
    for pid in procs.all_pids():
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        launch = next(
            (e[len(_PREFIX) :] for e in environ.split(b"\0") if e.startswith(_PREFIX)), None
        )
        if not launch:
            continue
        st = procs.stat(pid)
        if st is None or st.state in ("Z", "X") or st.session != pid:
            continue  # llama-server runs as the leader of its own session
        try:
            out = Path(os.readlink(f"/proc/{pid}/fd/1"))
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if out.parent != logs:
            continue
        argv = [a.decode(errors="replace") for a in raw.rstrip(b"\0").split(b"\0")]
        found.append(Orphan(pid, launch.decode(errors="replace"), out, argv))
    return found
