"""`llmctl status`: what runs. Scripts poll it, so it imports no typer, rich, pydantic or httpx,
and with nothing running not even the supervisor; typer's command prints through `run_status` too.
"""

from __future__ import annotations

import os
import sys

# typing and json are left out on purpose: `llmctl status` with nothing running imports
# neither (each costs a few ms, a good part of a bare interpreter start).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    import typer

    from llmctl.supervisor.results import Status

EXIT_OK = 0
EXIT_FAILED = 1

# Status(running=False).to_json(), spelled out so that "nothing runs" needs no import of the
# supervisor (tests/cli/test_switch.py checks the two agree).
NOT_RUNNING: dict[str, Any] = {
    "running": False,
    "phase": None,
    "profile": None,
    "pid": None,
    "host": None,
    "port": None,
    "url": None,
    "started_at": None,
    "uptime_s": None,
    "healthy": None,
    "log": None,
    "config_hash": None,
    "argv": [],
    "memory": {},
    "note": None,
    "servers": [],
    "kv_saved": [],
    "stale": None,
    "stale_why": None,
}
NOT_RUNNING_JSON = (
    "{\n"
    + ",\n".join(
        f'  "{k}": '
        + ("false" if v is False else "null" if v is None else "[]" if v == [] else "{}")
        for k, v in NOT_RUNNING.items()
    )
    + "\n}\n"
)


def status_exit_code(status: dict[str, Any]) -> int:
    """0 when nothing runs or every server is healthy (or still loading); 1 when one is not."""
    if status["running"] and status["phase"] == "ready" and status["healthy"] is False:
        return EXIT_FAILED
    for server in status.get("servers", ()):
        if server["phase"] == "ready" and server["healthy"] is False:
            return EXIT_FAILED
    return EXIT_OK


def status_json(status: dict[str, Any]) -> str:
    if status == NOT_RUNNING:
        return NOT_RUNNING_JSON
    import json

    return json.dumps(status, indent=2) + "\n"


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f} s"
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s"


def _mib(value: float) -> str:
    return f"{value / 1024:.2f} GiB" if value >= 1024 else f"{value:.2f} MiB"


def memory_text(memory: dict[str, Any]) -> str:
    parts = []
    for key, label in (
        ("model_mib", "model"),
        ("kv_mib", "KV cache"),
        ("recurrent_mib", "recurrent state"),
        ("compute_mib", "compute"),
        ("draft_mib", "draft model"),
        ("mmproj_mib", "projector"),
    ):
        if key in memory:
            parts.append(f"{label} {_mib(float(memory[key]))}")
    total = memory.get("total_mib")
    if total is not None:
        parts.append(f"total {_mib(float(total))}")
    return ", ".join(parts)


def status_text(status: dict[str, Any]) -> str:
    """The human `llmctl status`: plain text, no markup."""
    lines = []
    if not status["running"]:
        lines.append("not running")
    else:
        starting = status["phase"] == "starting"
        if starting:
            health = "no (loading)"
        elif status["healthy"] is None:
            health = "not checked"
        else:
            health = "yes" if status["healthy"] else "NO (/health did not answer 200)"
        rows = [
            ("profile", f"{status['profile']}"),
            ("state", "loading (another llmctl is starting it)" if starting else "running"),
            ("pid", "-" if status["pid"] is None else str(status["pid"])),
            ("url", status["url"] or "-"),
            ("model", _model_of(status.get("argv") or []) or "-"),
            ("healthy", health),
            ("uptime", _duration(status["uptime_s"] or 0.0)),
            ("log", status["log"] or "-"),
        ]
        if status["memory"]:
            rows.append(("memory", memory_text(status["memory"])))
        if status.get("stale"):
            again = f"`llmctl load {status['profile']}` restarts it"
            rows.append(("stale", f"yes: {status['stale_why']}; {again}"))
        elif status.get("stale") is None and status.get("stale_why"):
            rows.append(("stale", f"unknown: {status['stale_why']}"))
        width = max(len(k) for k, _ in rows)
        lines += [f"{k.ljust(width)}  {v}" for k, v in rows]
    others = [x for x in status.get("servers", ()) if x["profile"] != status["profile"]]
    for other in others:
        health = {True: "healthy", False: "NOT healthy", None: "loading"}[other["healthy"]]
        old = f", STALE ({other['stale_why']})" if other.get("stale") else ""
        lines.append(
            f"also running: {other['profile']} (pid {other['pid']}) at {other['url']}, "
            f"{health}{old}"
        )
    if status["note"]:
        lines.append(f"note: {status['note']}")
    lines += kv_saved_text(status.get("kv_saved") or [])
    return "\n".join(lines) + "\n"


def kv_saved_text(saved: list[dict[str, Any]]) -> list[str]:
    """The saved KV caches (keep_kv), one line per slot."""
    if not saved:
        return []
    lines = ["saved KV caches (restored on the next load of their profile):"]
    for s in saved:
        lines.append(
            f"  {s['profile']}  slot {s['slot']}  {s['tokens']} tokens  "
            f"{_mib(s['bytes'] / 1024**2)}  saved {_duration(s['age_s'])} ago"
        )
    return lines


def current_status() -> dict[str, Any]:
    """The status as JSON data; the supervisor is not even imported when no state file exists."""
    from llmctl.paths import state_dir

    folder = state_dir()
    if not os.path.exists(os.path.join(folder, "state.json")):
        if not os.path.isdir(os.path.join(folder, "kv")):
            return dict(NOT_RUNNING)
        from llmctl.supervisor.kvcache.files import saved

        return {**NOT_RUNNING, "kv_saved": saved(folder)}
    return full_status(folder).to_json()


def full_status(folder: os.PathLike[str] | str) -> Status:
    from pathlib import Path

    from llmctl.supervisor.lifecycle import Supervisor

    status = Supervisor(Path(folder), lock_timeout=0.0).status()
    if status.running:
        mark_stale(status, Path(folder))
    return status


def launch_identity(manifest: Any, profile: str) -> str | None:
    """launch.current_identity, imported only when a manifest changed since a launch."""
    from llmctl.supervisor.launch import current_identity

    return current_identity(manifest, profile)


def mark_stale(status: Status, folder: os.PathLike[str] | str) -> None:
    """Which servers run an old launch: from their records and the manifest cache only (one
    stat when the manifest is unchanged; never a validation)."""
    from pathlib import Path

    from llmctl.supervisor.stale import UNKNOWN, check
    from llmctl.supervisor.state import CorruptState, read_servers

    try:
        recs = read_servers(Path(folder))
    except (CorruptState, OSError):
        return
    found = check(recs, launch_identity, cheap=True)
    mine = found.get(status.profile or "", UNKNOWN)
    status.stale, status.stale_why = mine.stale, mine.why
    for server in status.servers:
        server.update(found.get(server["profile"] or "", UNKNOWN).to_json())


def run_status(json_out: bool) -> int:
    """Print the status (JSON or text) and return the exit code."""
    status = current_status()
    sys.stdout.write(status_json(status) if json_out else status_text(status))
    sys.stdout.flush()
    return status_exit_code(status)


def fast(args: list[str]) -> int | None:
    """`status` and `status --json` (every other spelling goes to typer)."""
    from llmctl.cli.argv import drop_manifest

    args = drop_manifest(args)
    if args == ["--json"]:
        return run_status(True)
    if not args:
        return run_status(False)
    return None


def register(app: typer.Typer) -> None:
    import typer

    from llmctl.cli.options import json_option, manifest_option
    from llmctl.cli.output import run_command

    @app.command()
    def status(json_out: bool = json_option(), manifest: str | None = manifest_option()) -> None:
        """Show the running llama-server.

        Profile, pid, url, health, uptime, log, and the memory it reported.

        Health is a live /health check. Exit 1 when the server runs but /health does not answer 200.
        """
        raise typer.Exit(run_command(json_out, lambda: run_status(json_out)))


__all__ = [
    "NOT_RUNNING",
    "current_status",
    "fast",
    "kv_saved_text",
    "launch_identity",
    "mark_stale",
    "memory_text",
    "register",
    "run_status",
    "status_exit_code",
    "status_json",
    "status_text",
]


def _model_of(argv: list[str]) -> str | None:
    """The model file a server runs, from its command line (`-m` / `--model`)."""
    for i, arg in enumerate(argv[:-1]):
        if arg in ("-m", "--model"):
            return argv[i + 1]
    return next((a.split("=", 1)[1] for a in argv if a.startswith("--model=")), None)
