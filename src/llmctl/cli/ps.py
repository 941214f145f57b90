"""`llmctl ps`: every running profile."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from llmctl.cli.argv import parse
from llmctl.cli.output import print_json, run_command
from llmctl.cli.placement import usage_text
from llmctl.cli.switch import supervisor
from llmctl.errors import EXIT_FAILED, EXIT_OK

if TYPE_CHECKING:
    import typer


def run(*, json_out: bool = False) -> int:
    return run_command(json_out, lambda: _ps(json_out))


def _ps(json_out: bool) -> int:
    from llmctl.supervisor.state import CorruptState, read_servers

    sup = supervisor(600.0)
    servers, note = sup.ps()
    try:
        recs = read_servers(sup.state_dir)
    except (CorruptState, OSError):
        recs = {}
    rows: list[dict[str, Any]] = []
    for st in servers:
        rec = recs.get(st.profile or "")
        extra = rec.extra if rec is not None else {}
        row = st.to_json()
        row["devices"] = extra.get("devices", [])
        row["planned"] = extra.get("usage", {})
        rows.append(row)
    code = (
        EXIT_FAILED
        if any(r["phase"] == "ready" and r["healthy"] is False for r in rows)
        else EXIT_OK
    )
    if json_out:
        print_json({"servers": rows, "note": note})
        return code
    if note:
        sys.stderr.write(f"{note}\n")
    if not rows:
        sys.stdout.write("nothing runs\n")
        return code
    head = (
        f"{'PROFILE':<16} {'PHASE':<8} {'HEALTH':<7} {'PID':>7} {'URL':<24} {'UPTIME':>8}  MEMORY"
    )
    sys.stdout.write(head + "\n")
    for r in rows:
        health = {True: "ok", False: "FAIL", None: "-"}[r["healthy"]]
        planned = usage_text(r["planned"])
        reported = r["memory"].get("total_mib") if r["memory"] else None
        mem = planned + (f" (reported {reported:.0f} MiB)" if reported else "")
        uptime = f"{r['uptime_s']:.0f} s" if r["uptime_s"] is not None else "-"
        sys.stdout.write(
            f"{r['profile']:<16} {r['phase'] or '-':<8} {health:<7} {r['pid'] or '-':>7} "
            f"{r['url'] or '-':<24} {uptime:>8}  {mem}\n"
        )
    return code


def fast(args: list[str]) -> int | None:
    parsed = parse(args, flags={"--json": "json_out"})
    return None if parsed is None else run(**parsed[1])


def register(app: typer.Typer) -> None:
    import typer

    from llmctl.cli.options import json_option

    @app.command()
    def ps(json_out: bool = json_option()) -> None:
        """List the running profiles.

        Each with its devices, planned and reported memory, port, url, uptime and health. Exit status: 0, or 1 when a server that is ready does not answer /health.
        """
        raise typer.Exit(run(json_out=json_out))
