"""The engine's memory plans, kept per launch key, and the choice of the best figure known.

A plan (`llama.engineplan.EnginePlan`) is what llama-server states it will allocate for one
command line on this machine. It is stored under the calibration key (model file identity, the
memory arguments, the llama.cpp build), so it is reused exactly for that launch and never for
another build or file; beside it, the least the launch needs per device when a load of it ran out
of memory (`need_floor`). `compare` sets the formula's terms beside the engine's; `best_figure`
picks, in order, a measured figure (buffers llama-server reported after a load), the engine's
plan, the formula, and says which it took.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from llmctl.llama.engineplan import EnginePlan
    from llmctl.memory.estimate import Estimate

Source = Literal["measured", "engine plan", "formula"]
WARN_RATIO = 0.10  # a difference beyond this between formula and engine is worth a warning
TERM_NAMES = {"model": "weights", "context": "KV cache", "compute": "compute"}


class EngineStore:
    """A JSON file of engine plans (`engine-plans.json` in the state folder), by launch key."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, key: str) -> EnginePlan | None:
        item = self._load().get(key)
        if not isinstance(item, dict) or not isinstance(item.get("plan"), dict):
            return None
        from llmctl.llama.engineplan import EnginePlan

        return EnginePlan.from_json(item["plan"])

    def put(self, key: str, plan: EnginePlan, *, model: str, build: str | None) -> None:
        data = self._load()
        old = data.get(key)
        data[key] = {"plan": plan.to_json(), "model": model, "build": build, "at": time.time()}
        if isinstance(old, dict) and isinstance(old.get("need_floor"), dict):
            data[key]["need_floor"] = old["need_floor"]  # a plan does not undo what a load showed
        self._write(data)

    def floor(self, key: str) -> dict[str, int]:
        """Bytes per device this launch needs at least: what was free when it ran out of memory
        at load (see placement.policy.after_oom); {} when it never did."""
        item = self._load().get(key)
        found = item.get("need_floor") if isinstance(item, dict) else None
        if not isinstance(found, dict):
            return {}
        return {str(d): int(b) for d, b in found.items() if isinstance(b, int) and b > 0}

    def put_floor(
        self, key: str, floor: Mapping[str, int], *, model: str, build: str | None
    ) -> None:
        """Keep `floor` (the larger of it and what was kept, per device) beside the key's plan."""
        data = self._load()
        item = data.get(key)
        if not isinstance(item, dict):
            item = {"model": model, "build": build, "at": time.time()}
        kept = self.floor(key)
        item["need_floor"] = {d: max(b, kept.get(d, 0)) for d, b in {**kept, **floor}.items()}
        data[key] = item
        self._write(data)

    def _write(self, data: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        tmp.replace(self.path)


@dataclass(frozen=True)
class TermDiff:
    """One term, the formula's bytes beside the engine's (summed over devices and host)."""

    term: str  # model, context, compute
    formula: int
    engine: int
    resolution: int  # the engine's rounding: a difference within it is none

    @property
    def difference(self) -> int:
        return self.formula - self.engine

    @property
    def ratio(self) -> float | None:
        return None if self.engine == 0 else self.formula / self.engine

    @property
    def off(self) -> bool:
        """Beyond the warning ratio, and beyond the engine's own rounding. Weights the engine
        states below the tensor table's (exact) are the engine's omission, not the formula's
        error: on a CPU with AMX its dry run leaves out mmapped weights; the placer takes the
        tensor table's figure then."""
        if self.term == "model" and self.engine < self.formula:
            return False
        if abs(self.difference) <= self.resolution:
            return False
        return self.engine == 0 or abs(self.difference) / self.engine > WARN_RATIO

    def to_json(self) -> dict[str, Any]:
        return {
            "term": self.term,
            "formula_bytes": self.formula,
            "engine_bytes": self.engine,
            "difference_bytes": self.difference,
            "ratio": None if self.ratio is None else round(self.ratio, 4),
            "off": self.off,
        }


def engine_terms(plan: EnginePlan) -> dict[str, int]:
    """Bytes per term over the plan's devices and host."""
    rows = plan.memory_rows()
    return {t: sum(getattr(r, t) or 0 for r in rows) for t in TERM_NAMES}


def formula_terms(est: Estimate) -> dict[str, int]:
    """The formula's bytes per term, summed over GPU and host as the engine sums them: weights,
    KV cache, compute buffers. The output (logits) buffer is not in the engine's plan (its
    `context` is the KV cache alone: checked against the loaded buffers of the pinned build)."""
    return {
        "model": est.weights.bytes,
        "context": est.kv_bytes,
        "compute": (est.compute_bytes if est.on_gpu else 0) + est.host_compute_bytes,
    }


def compare(est: Estimate, plan: EnginePlan) -> list[TermDiff]:
    formula = formula_terms(est)
    engine = engine_terms(plan)
    return [TermDiff(t, formula[t], engine[t], plan.resolution) for t in TERM_NAMES]


def warnings(diffs: list[TermDiff], build: str | None) -> list[str]:
    """One line per term the formula gets wrong by more than WARN_RATIO."""
    out = []
    for d in diffs:
        if d.off:
            way = "low" if d.difference < 0 else "high"
            pct = "" if d.ratio is None else f" ({abs(1 - d.ratio):.0%} {way})"
            out.append(
                f"the formula's {TERM_NAMES[d.term]} is {abs(d.difference) / 1024**2:.1f} MiB "
                f"{way}er than the engine's plan{pct} on llama.cpp {build or 'of unknown build'}"
            )
    return out


def best_figure(
    formula: int, engine: int | None = None, measured: int | None = None
) -> tuple[int, Source]:
    """The figure to decide by, and where it comes from: measured, else engine plan, else
    formula."""
    if measured is not None:
        return measured, "measured"
    if engine is not None:
        return engine, "engine plan"
    return formula, "formula"


def plan_gpu_bytes(plan: EnginePlan, overhead: int = 0) -> int | None:
    """The GPU bytes of a plan, as the formula's GPU total counts them: each term of its device
    rows rounded up to the plan's resolution, and the backend `overhead` (not in the plan) added;
    None for a plan with no GPU (a CPU build's plan states the host alone)."""
    rows = [r for r in plan.memory_rows() if r.kind == "device"]
    if not rows:
        return None
    total = overhead
    for r in rows:
        terms = [v for v in (r.model, r.context, r.compute) if v]
        total += sum(terms) + plan.resolution * len(terms)
    return total


def plan_total(plan: EnginePlan, names: Mapping[str, str] | None = None) -> dict[str, int]:
    """Planned bytes per device or host row name (renamed by `names` where given)."""
    out: dict[str, int] = {}
    for r in plan.memory_rows():
        key = (names or {}).get(r.name, r.name)
        out[key] = out.get(key, 0) + r.planned
    return out
