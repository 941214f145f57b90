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
    from llmctl.cli.status import launch_identity
    from llmctl.supervisor.stale import UNKNOWN, check
    from llmctl.supervisor.state import CorruptState, read_servers

    sup = supervisor(600.0)
    servers, note = sup.ps()
    try:
        recs = read_servers(sup.state_dir)
    except (CorruptState, OSError):
        recs = {}
    stale = check(recs, launch_identity)  # against each launch's manifest as it is now
    rows: list[dict[str, Any]] = []
    for st in servers:
        rec = recs.get(st.profile or "")
        extra = rec.extra if rec is not None else {}
        row = st.to_json()
        row["devices"] = extra.get("devices", [])
        row["planned"] = extra.get("usage", {})
        # which figure the placement used (engine plan / formula), and what the launch stated
        row["memory_source"] = extra.get("memory_source")
        row["engine_plan"] = extra.get("engine_plan")
        row.update(stale.get(st.profile or "", UNKNOWN).to_json())
        rows.append(row)
    from llmctl.cli.status import kv_saved_text
    from llmctl.supervisor.kvcache.files import saved

    kv = saved(sup.state_dir)
    code = (
        EXIT_FAILED
        if any(r["phase"] == "ready" and r["healthy"] is False for r in rows)
        else EXIT_OK
    )
    if json_out:
        print_json({"servers": rows, "note": note, "kv_saved": kv})
        return code
    if note:
        sys.stderr.write(f"{note}\n")
    if not rows:
        sys.stdout.write("nothing runs\n")
        sys.stdout.write("".join(line + "\n" for line in kv_saved_text(kv)))
        return code
    # columns as wide as their longest value (init's own profile names pass 16 characters);
    # a stale server's name is marked with a `*`, explained under the table
    names = [f"{r['profile']}{STALE_MARK if r['stale'] else ''}" for r in rows]
    name_w = max(16, *(len(n) for n in names))
    url_w = max(24, *(len(str(r["url"] or "-")) for r in rows))
    head = (
        f"{'PROFILE':<{name_w}} {'PHASE':<8} {'HEALTH':<7} {'PID':>7} {'URL':<{url_w}} "
        f"{'UPTIME':>8}  MEMORY"
    )
    sys.stdout.write(head + "\n")
    columns = _terminal_columns()
    for name, r in zip(names, rows, strict=True):
        health = {True: "ok", False: "FAIL", None: "-"}[r["healthy"]]
        planned = usage_text(r["planned"]) if r["planned"] else ""  # placed: what it holds
        reported = r["memory"].get("total_mib") if r["memory"] else None
        stated = (r["engine_plan"] or {}).get("by_device_mib") or {}
        notes = [f"{r['memory_source']}" if r["memory_source"] and planned else ""]
        notes.append(f"engine plan {sum(stated.values()):.0f} MiB" if stated else "")
        notes.append(f"reported {reported:.0f} MiB" if reported else "")
        said = ", ".join(n for n in notes if n)
        mem = (f"{planned} ({said})" if planned and said else planned or said) or "-"
        uptime = f"{r['uptime_s']:.0f} s" if r["uptime_s"] is not None else "-"
        line = (
            f"{name:<{name_w}} {r['phase'] or '-':<8} {health:<7} {r['pid'] or '-':>7} "
            f"{r['url'] or '-':<{url_w}} {uptime:>8}  {mem}"
        )
        sys.stdout.write(_fit(line, len(line) - len(mem), columns) + "\n")
    sys.stdout.write("".join(line + "\n" for line in stale_text(rows)))
    sys.stdout.write("".join(line + "\n" for line in kv_saved_text(kv)))
    return code


STALE_MARK = "*"


def _terminal_columns() -> int | None:
    """The terminal's width when stdout is one, else None (a pipe gets whole lines)."""
    import os

    if not sys.stdout.isatty():
        return None
    try:
        return os.get_terminal_size(sys.stdout.fileno()).columns
    except OSError:
        return None


def _fit(line: str, fixed: int, columns: int | None) -> str:
    """A row within the terminal's width: the last column (memory) is cut with `...`, so that a
    row never wraps; the columns before it (`fixed` characters) stay whole."""
    if columns is None or len(line) <= columns or fixed + 8 > columns:
        return line
    return line[: columns - 3] + "..."


def stale_text(rows: list[dict[str, Any]]) -> list[str]:
    """One line per stale server under the table: why, and how to restart it."""
    return [
        f"{STALE_MARK} stale: {r['profile']} runs an old launch ({r['stale_why']}); "
        f"`llmctl load {r['profile']}` restarts it"
        for r in rows
        if r["stale"]
    ]


def fast(args: list[str]) -> int | None:
    parsed = parse(args, flags={"--json": "json_out"})
    return None if parsed is None else run(**parsed[1])


def register(app: typer.Typer) -> None:
    import typer

    from llmctl.cli.options import json_option, manifest_option

    @app.command()
    def ps(
        json_out: bool = json_option(),
        hosts: bool = typer.Option(
            False,
            "--all-hosts",
            help="Ask the running `llmctl serve` for its profiles and those of every host "
            "(type: llmctl upstream) it knows.",
        ),
        router: str | None = typer.Option(
            None,
            "--router",
            help="With --all-hosts: the router's URL (default: http://serve.host:serve.port).",
            metavar="URL",
        ),
        manifest: str | None = manifest_option(),
    ) -> None:
        """List the running profiles.

        Each with its devices, planned and reported memory, port, url, uptime and health. Exit status: 0, or 1 when a server that is ready does not answer /health. With --all-hosts: every host's profiles and state, from the running router; exit status 1 when a host is down.
        """
        if hosts:
            raise typer.Exit(all_hosts(manifest, router, json_out))
        raise typer.Exit(run(json_out=json_out))


def all_hosts(manifest_path: str | None, url: str | None, json_out: bool) -> int:
    """`ps --all-hosts`: this router's profiles, then each host's, from GET /llmctl/v1/state."""
    return run_command(json_out, lambda: _all_hosts(manifest_path, url, json_out))


def _all_hosts(manifest_path: str | None, url: str | None, json_out: bool) -> int:
    from llmctl.manifest.cache import load_manifest

    m = load_manifest(manifest_path)
    base = (url or _router_url(m.serve.host, m.serve.port)).rstrip("/")
    data = _fetch_state(base, _router_key(m.serve.api_keys, m.serve.api_keys_env))
    hosts = [
        {"name": "local", "url": base, "up": True, "error": None, "profiles": data["profiles"]},
        *data.get("hosts", []),
    ]
    code = EXIT_FAILED if any(not h.get("up") for h in hosts) else EXIT_OK
    if json_out:
        print_json({"router": base, "router_id": data.get("router_id"), "hosts": hosts})
        return code
    from llmctl.cli.output import printable as pr
    from llmctl.cli.output import table

    # everything below but the column words comes from the router and its hosts: escaped
    rows: list[list[str]] = []
    for h in hosts:
        up = "up" if h.get("up") else "DOWN"
        if not h.get("profiles"):
            rows.append([pr(h["name"]), up, "-", "-", "-", "-"])
        for p in h.get("profiles", []):
            fits = {True: "yes", False: "no"}.get(p.get("fits"), "-")
            row = [h["name"], up, p["name"], p["state"], fits, p.get("inflight", 0)]
            rows.append([pr(cell) for cell in row])
    header = ["HOST", "UP", "PROFILE", "STATE", "FITS", "INFLIGHT"]
    sys.stdout.write("\n".join(table(rows, header=header)) + "\n")
    for h in hosts:
        if not h.get("up"):
            sys.stderr.write(
                f"host {pr(h['name'])} ({pr(h.get('url'))}) is down: {pr(h.get('error'))}\n"
            )
        elif h.get("profiles_dropped"):
            sys.stderr.write(
                f"host {pr(h['name'])}: {pr(h['profiles_dropped'])} more profiles left out "
                "(too many)\n"
            )
    return code


def _router_url(host: str, port: int) -> str:
    """Where the router listens, as a client reaches it (a wildcard address means this machine)."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _router_key(manifest_keys: list[str], env_var: str) -> str | None:
    from llmctl.router.auth import collect_keys

    keys = collect_keys(manifest_keys, env_var)
    return keys[0] if keys else None


def _fetch_state(base: str, key: str | None) -> dict[str, Any]:
    import httpx

    from llmctl.errors import LlmctlError

    headers = {"authorization": f"Bearer {key}"} if key else {}
    try:
        r = httpx.get(base + "/llmctl/v1/state", headers=headers, timeout=10, trust_env=False)
    except httpx.HTTPError as exc:
        raise LlmctlError(
            f"cannot reach llmctl serve at {base}: {exc or type(exc).__name__}",
            hint="start it with `llmctl serve`, or name its URL with --router",
        ) from None
    if r.status_code == 401:
        raise LlmctlError(
            f"llmctl serve at {base} refused the key",
            hint="put one of its keys in serve.api_keys or the variable serve.api_keys_env names",
        )
    if r.status_code != 200:
        raise LlmctlError(
            f"llmctl serve at {base} answered {r.status_code} to /llmctl/v1/state",
            hint="is it an llmctl serve of this version? (see its log)",
        )
    try:
        data = r.json()
    except ValueError:
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("profiles"), list):
        raise LlmctlError(
            f"{base}/llmctl/v1/state did not answer llmctl state",
            hint="is --router the URL of an llmctl serve?",
        )
    return data
