"""`llmctl load`, `unload`, `ps`, `devices`: several servers at once, placed by memory."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer

from llmctl.cli.app import app
from llmctl.cli.common import (
    JsonOpt,
    ManifestOpt,
    handle_errors,
    load_manifest_cli,
    print_json,
    render_error,
)
from llmctl.errors import EXIT_FAILED, EXIT_OK, LlmctlError, UsageError

if TYPE_CHECKING:
    from llmctl.manifest.model import Manifest
    from llmctl.supervisor.devices import DeviceReport
    from llmctl.supervisor.lifecycle import Event, Supervisor

ProfilesArg = Annotated[
    list[str] | None,
    typer.Argument(help="Profile names or aliases.", show_default=False),
]
DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="Print the placement decision; start or stop nothing.")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Only the result or the error.")]
LockTimeoutOpt = Annotated[
    float,
    typer.Option(
        "--lock-timeout",
        help="Seconds to wait for another llmctl that is changing the servers (then exit 3).",
        min=0,
    ),
]


def _supervisor(lock_timeout: float) -> Supervisor:
    from llmctl.paths import state_dir
    from llmctl.supervisor.lifecycle import Supervisor

    return Supervisor(state_dir(), lock_timeout=lock_timeout)


def _devices(m: Manifest, quiet: bool = False) -> DeviceReport:
    from llmctl.supervisor.devices import detect

    report = detect(m.device_configs())
    if not quiet:
        for w in report.warnings:
            sys.stderr.write(f"warning: {w}\n")
    return report


def _mib(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / 1024**3:.2f} GiB" if n >= 1024**3 else f"{n / 1024**2:.0f} MiB"


def _usage_text(usage: dict[str, int]) -> str:
    return ", ".join(f"{d} {_mib(b)}" for d, b in usage.items()) or "no memory known"


@app.command()
def load(
    profiles: ProfilesArg = None,
    manifest: ManifestOpt = None,
    json_out: JsonOpt = False,
    dry_run: DryRunOpt = False,
    quiet: QuietOpt = False,
    lock_timeout: LockTimeoutOpt = 600.0,
) -> None:
    """Start profiles beside those that run, unloading idle ones when memory is short.

    Each profile is placed by its estimate per device (gpu: in the manifest): it starts if it
    fits beside what runs; otherwise the least costly unpinned servers go; a profile that
    cannot fit even alone is refused before anything is stopped.
    Exit status: 0 all loaded, 1 a load failed or was refused, 2 bad input, 3 locked.
    """
    from llmctl.supervisor.placer import PlacementRefused, load_profile, plan_load

    m = load_manifest_cli(manifest, json_out=json_out)
    results: list[dict[str, Any]] = []
    code = EXIT_OK
    with handle_errors(json_out):
        if not profiles:
            raise UsageError("name one or more profiles to load", hint="llmctl load PROFILE...")
        names = [m.resolve(p) for p in profiles]
        report = _devices(m, quiet or json_out)
        sup = _supervisor(lock_timeout)
        for name in names:
            if dry_run:
                decision, placed = plan_load(m, name, sup.records(), report.devices)
                item = {"profile": name, "dry_run": True, "decision": decision.to_json()}
                if decision.option is not None:
                    item["argv"] = list(placed.specs[decision.option].argv)
                    item["port"] = placed.specs[decision.option].port
                results.append(item)
                if decision.action == "refuse":
                    code = EXIT_FAILED
                if not json_out:
                    _print_decision(decision.to_json(), dry_run=True)
                continue

            def on_event(e: Event) -> None:
                if json_out or quiet:
                    return
                if e.kind in ("stopped", "starting", "error") or (
                    e.kind == "locked" and e.message.startswith("waited")
                ):
                    sys.stderr.write(f"{e.message}\n")

            t0 = time.monotonic()
            try:
                outcome = load_profile(sup, m, name, report.devices, on_event=on_event)
            except PlacementRefused as err:
                code = EXIT_FAILED
                results.append({"profile": name, "ok": False, "error": err.to_json()})
                if not json_out:
                    render_error(err, json_out=False)
                break
            res = outcome.result
            item = {
                "profile": name,
                "ok": res is not None and res.ready,
                "decision": outcome.decision.to_json() if outcome.decision else None,
                "result": res.to_json() if res else None,
            }
            results.append(item)
            if res is None or not res.ready:
                code = EXIT_FAILED
                if res is not None and res.error is not None and not json_out:
                    render_error(res.error, json_out=False)
                break
            if not json_out:
                what = "already running" if res.noop else "ready"
                devices = ""
                if outcome.decision is not None and outcome.decision.usage:
                    devices = f" on {_usage_text(dict(outcome.decision.usage))}"
                sys.stdout.write(
                    f"{what}: profile {name!r} at {res.url} (pid {res.pid}){devices} "
                    f"in {time.monotonic() - t0:.2f} s\n"
                )
    if json_out:
        print_json({"ok": code == EXIT_OK, "profiles": results})
    raise typer.Exit(code)


def _print_decision(d: dict[str, Any], *, dry_run: bool) -> None:
    prefix = "would " if dry_run else ""
    if d["action"] == "noop":
        sys.stdout.write(f"{d['profile']}: already runs; nothing to do\n")
    elif d["action"] == "start":
        evict = f"{prefix}unload {', '.join(d['evict'])}, then " if d["evict"] else ""
        sys.stdout.write(
            f"{d['profile']}: {evict}{prefix}start on {_usage_text(d['usage'])} ({d['reason']})\n"
        )
    else:
        sys.stdout.write(f"{d['profile']}: refused: {d['reason']}\n")


@app.command()
def unload(
    profiles: ProfilesArg = None,
    all_: Annotated[bool, typer.Option("--all", help="Every running profile.")] = False,
    manifest: ManifestOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    lock_timeout: LockTimeoutOpt = 600.0,
) -> None:
    """Stop the servers of these profiles (or --all); the others keep running.

    A profile that does not run is not an error. Exit status: 0, 2 bad input, 3 locked.
    """
    stopped: list[dict[str, Any]] = []
    with handle_errors(json_out):
        if not profiles and not all_:
            raise UsageError("name profiles to unload, or give --all", hint="llmctl unload --all")
        sup = _supervisor(lock_timeout)
        if all_:
            targets: list[str | None] = [None]
        else:
            running = sup.records()
            targets = []
            for p in profiles or []:
                if p in running:
                    targets.append(p)
                    continue
                m = load_manifest_cli(manifest, json_out=json_out)
                targets.append(m.resolve(p))

        def on_event(e: Event) -> None:
            # say what was repaired or went wrong; the result line says the rest
            if json_out or quiet:
                return
            plain = e.message.startswith("stopped profile") and ";" not in e.message
            if e.kind == "error" or (e.kind == "stopped" and not plain):
                sys.stderr.write(f"{e.message}\n")

        for target in targets:
            res = sup.stop(profile=target, on_event=on_event)
            stopped.append(res.to_json())
            if not json_out and not quiet:
                if res.stopped:
                    names = ", ".join(repr(p) for p in res.profiles)
                    sys.stdout.write(f"unloaded {names} in {res.elapsed_s:.2f} s\n")
                else:
                    what = (
                        "nothing was running" if target is None else f"{target!r} was not running"
                    )
                    sys.stdout.write(f"{what}\n")
    if json_out:
        print_json({"ok": True, "unloaded": stopped})
    raise typer.Exit(EXIT_OK)


@app.command()
def ps(json_out: JsonOpt = False) -> None:
    """Every running profile: devices, planned and reported memory, port, url, uptime, health.

    Exit status: 0, or 1 when a server that is ready does not answer /health.
    """
    from llmctl.supervisor.state import read_servers

    with handle_errors(json_out):
        sup = _supervisor(600.0)
        servers, note = sup.ps()
        try:
            recs = read_servers(sup.state_dir)
        except Exception:
            recs = {}
        rows = []
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
        raise typer.Exit(code)
    if note:
        sys.stderr.write(f"{note}\n")
    if not rows:
        sys.stdout.write("nothing runs\n")
        raise typer.Exit(code)
    head = (
        f"{'PROFILE':<16} {'PHASE':<8} {'HEALTH':<7} {'PID':>7} {'URL':<24} {'UPTIME':>8}  MEMORY"
    )
    sys.stdout.write(head + "\n")
    for r in rows:
        health = {True: "ok", False: "FAIL", None: "-"}[r["healthy"]]
        planned = _usage_text(r["planned"])
        reported = r["memory"].get("total_mib") if r["memory"] else None
        mem = planned + (f" (reported {reported:.0f} MiB)" if reported else "")
        uptime = f"{r['uptime_s']:.0f} s" if r["uptime_s"] is not None else "-"
        sys.stdout.write(
            f"{r['profile']:<16} {r['phase'] or '-':<8} {health:<7} {r['pid'] or '-':>7} "
            f"{r['url'] or '-':<24} {uptime:>8}  {mem}\n"
        )
    raise typer.Exit(code)


@app.command()
def devices(manifest: ManifestOpt = None, json_out: JsonOpt = False) -> None:
    """The devices profiles are placed on: budget, headroom, what is placed, what is free.

    Figures from the manifest's gpu:, completed by nvidia-smi (GPUs) and /proc/meminfo (CPU);
    configured values win.
    """
    m = load_manifest_cli(manifest, json_out=json_out)
    with handle_errors(json_out):
        report = _devices(m, json_out)
        recs = _supervisor(600.0).records()
        rows = []
        for d in report.devices:
            placed = {
                name: int(rec.extra.get("usage", {}).get(d.name, 0))
                for name, rec in recs.items()
                if rec.extra.get("usage", {}).get(d.name)
            }
            row = d.to_json()
            row["placed"] = placed
            used = sum(placed.values())
            row["available_bytes"] = (
                None if d.budget is None else max(0, d.budget - d.headroom - used)
            )
            rows.append(row)
    if json_out:
        print_json({"devices": rows, "warnings": report.warnings})
        raise typer.Exit(EXIT_OK)
    sys.stdout.write(f"{'DEVICE':<10} {'BUDGET':>10} {'HEADROOM':>10} {'AVAILABLE':>10}  PLACED\n")
    for r in rows:
        placed_text = ", ".join(f"{k} {_mib(v)}" for k, v in r["placed"].items()) or "-"
        sys.stdout.write(
            f"{r['name']:<10} {_mib(r['budget_bytes']):>10} {_mib(r['headroom_bytes']):>10} "
            f"{_mib(r['available_bytes']):>10}  {placed_text}  [{r['source']}]\n"
        )
    raise typer.Exit(EXIT_OK)


__all__ = ["LlmctlError", "devices", "load", "ps", "unload"]
