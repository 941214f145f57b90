"""`llmctl devices`: the devices profiles are placed on."""

from __future__ import annotations

import sys
from pathlib import Path  # typer reads the annotations at run time
from typing import TYPE_CHECKING, Any

from llmctl.cli.argv import parse
from llmctl.cli.output import print_json, run_command
from llmctl.cli.placement import detect_devices, mib
from llmctl.cli.switch import supervisor
from llmctl.errors import EXIT_OK

if TYPE_CHECKING:
    import typer


def run(*, manifest: str | Path | None = None, json_out: bool = False) -> int:
    def body() -> int:
        from llmctl.manifest.cache import load_manifest

        m = load_manifest(manifest)
        report = detect_devices(m, json_out)
        recs = supervisor(600.0).records()
        rows: list[dict[str, Any]] = []
        for d in report.devices:
            placed = {
                name: int(rec.extra.get("usage", {}).get(d.name, 0))
                for name, rec in recs.items()
                if rec.extra.get("usage", {}).get(d.name)
            }
            row = d.to_json()
            row["placed"] = placed
            # which figure placed each: measured / engine plan / formula (the placer's record)
            row["placed_source"] = {
                name: recs[name].extra.get("memory_source") or "formula" for name in placed
            }
            used = sum(placed.values())
            row["available_bytes"] = (
                None if d.budget is None else max(0, d.budget - d.headroom - used)
            )
            rows.append(row)
        if json_out:
            print_json({"devices": rows, "warnings": report.warnings})
            return EXIT_OK
        w = max([10, *(len(r["name"]) for r in rows)])  # RPC[host:port] names are long
        sys.stdout.write(
            f"{'DEVICE':<{w}} {'BUDGET':>10} {'HEADROOM':>10} {'AVAILABLE':>10}  PLACED\n"
        )
        for r in rows:
            placed_text = (
                ", ".join(f"{k} {mib(v)} ({r['placed_source'][k]})" for k, v in r["placed"].items())
                or "-"
            )
            sys.stdout.write(
                f"{r['name']:<{w}} {mib(r['budget_bytes']):>10} {mib(r['headroom_bytes']):>10} "
                f"{mib(r['available_bytes']):>10}  {placed_text}  [{r['source']}]\n"
            )
        return EXIT_OK

    return run_command(json_out, body)


def fast(args: list[str]) -> int | None:
    parsed = parse(args, flags={"--json": "json_out"}, options={"--manifest": ("manifest", str)})
    return None if parsed is None else run(**parsed[1])


def register(app: typer.Typer) -> None:
    import typer

    from llmctl.cli.options import json_option, manifest_option

    @app.command()
    def devices(manifest: Path | None = manifest_option(), json_out: bool = json_option()) -> None:
        """Show the devices profiles are placed on.

        Each with its budget, headroom, what is placed on it and what is free. Figures from the manifest's gpu:, completed by nvidia-smi (GPUs) and /proc/meminfo (CPU);
        configured values win.
        """
        raise typer.Exit(run(manifest=manifest, json_out=json_out))
