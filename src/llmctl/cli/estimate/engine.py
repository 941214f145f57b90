"""`llmctl estimate --engine`: llama-server's own memory plan for a profile (a probe, stopped
before the weights load), compared term by term with the formula's, and its text."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llmctl.paths import is_hub_model
from llmctl.term import BOLD, YELLOW, style

if TYPE_CHECKING:
    from llmctl.memory.estimate import Estimate


def engine_report(manifest: Any, name: str, est: Estimate) -> dict[str, Any]:
    """The engine's own plan for this profile beside the formula's terms (a probe here)."""
    from llmctl.memory.engine import compare, warnings
    from llmctl.placement.placer import command_spec
    from llmctl.supervisor.probe import probe_profile

    # the launch `switch` and `load` make: with listed devices, the placer's first choice
    spec = command_spec(manifest, name)
    if is_hub_model(spec.model):  # not pulled: llama-server would download it
        from llmctl.supervisor.modelfile import not_pulled

        raise not_pulled(name, spec.model)
    res = probe_profile(manifest, name, spec=spec)
    out: dict[str, Any] = {
        "source": "engine plan" if res.plan is not None else "formula",
        "build": res.build,
        "seconds": round(res.seconds, 3),
    }
    if res.plan is None:
        out["reason"] = res.reason
        return out
    diffs = compare(est, res.plan)
    out["plan"] = res.plan.to_json()
    out["terms"] = [d.to_json() for d in diffs]
    out["warnings"] = warnings(diffs, res.build)
    return out


def engine_text(engine: dict[str, Any]) -> str:
    """The engine's figures per row and term, then the formula's beside their sum."""
    if engine.get("plan") is None:
        return f"  engine plan: none ({engine.get('reason')}); the formula stands\n\n"
    mib = 1024**2
    lines = [
        f"  {style('engine plan', BOLD)} (llama-server {engine.get('build') or 'unknown build'},"
        f" asked in {engine['seconds']:.2f} s; MiB as it states them):"
    ]
    for row in engine["plan"]["rows"]:
        if row["kind"] not in ("device", "host"):
            continue
        parts = "  ".join(
            f"{t} {row.get(f'{t}_bytes', 0) / mib:.0f}" for t in ("model", "context", "compute")
        )
        lines.append(f"    {row['name']:10} {parts}")
    for t in engine["terms"]:
        lines.append(
            f"    {t['term']:8} engine {t['engine_bytes'] / mib:9.1f} MiB   formula "
            f"{t['formula_bytes'] / mib:9.1f} MiB"
        )
    lines += [f"  {style('warning', YELLOW)}: {w}" for w in engine["warnings"]]
    return "\n".join(lines) + "\n\n"
