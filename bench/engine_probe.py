"""The engine's own memory plan against the formula and against what llama-server then allocates.

    uv run python bench/engine_probe.py [--shapes a,b] [--options N]

For each real-shaped model (llmctl.testing.realshapes) and launch option set (by default every
launch of bench/estimate_accuracy.py but the projector's), three figures per term (weights, KV
cache, compute; the output buffer is not in the engine's plan): the formula (`llmctl estimate`),
the engine's plan (`fit_memory_breakdown` of `--log-jsonl`, or the text table of a build without
it such as b9093, asked as `llmctl estimate --engine` asks it, stopped before the weights load),
and the buffers llama-server reports after a full load (`-lv 4`). The plan states whole MiB
(rounded down), so it is "exact" within 1 MiB. Then the probe's time beside the full load's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from estimate_accuracy import FAMILY_OPTIONS, OPTIONS
from readiness import find_llama_server

from llmctl.llama.binary import known_flags
from llmctl.llama.engineplan import probe
from llmctl.llama.gguf import read_gguf
from llmctl.memory.calibration import measure_reported, on_free_port
from llmctl.memory.cmdline import parse_llama_args
from llmctl.memory.engine import engine_terms, formula_terms
from llmctl.memory.estimate import MiB, ModelSource, estimate
from llmctl.memory.profile import binary_rules
from llmctl.paths import cache_dir
from llmctl.testing.realshapes import SHAPES, write_shaped_model

# the engine's `context` is the KV cache alone; the output buffer is not in its plan
TERMS = (("model", ("model",)), ("context", ("kv",)), ("compute", ("compute",)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", help="comma-separated shape names (default: all)")
    ap.add_argument(
        "--options", type=int, default=len(OPTIONS), help="how many option sets per model"
    )
    a = ap.parse_args()
    names = set(a.shapes.split(",")) if a.shapes else None
    binary = find_llama_server()
    rules = binary_rules(binary)  # the build's rules (llmctl.memory.builds)
    # a build without --log-jsonl (b9093) states its plan as a text table in its log
    jsonl = "--log-jsonl" in (known_flags(binary) or ())
    print(f"{binary}: the plan from {'the --log-jsonl event' if jsonl else 'its text table'}")
    folder = cache_dir() / "bench-models"
    folder.mkdir(parents=True, exist_ok=True)
    head = (
        f"{'model':18} {'options':34} {'term':8} {'formula':>9} {'engine':>8} {'loaded':>9}"
        f" {'formula err':>11} {'engine err':>10}"
    )
    print(head)
    print("-" * len(head))
    f_err: list[float] = []
    e_err: list[float] = []
    probe_s: list[float] = []
    load_s: list[float] = []
    for s in SHAPES:
        if names and s.name not in names:
            continue
        path = write_shaped_model(folder, s)
        src = ModelSource.from_gguf(read_gguf(path))
        family = FAMILY_OPTIONS.get(s.family, ()) if a.options >= len(OPTIONS) else ()
        for args in (*OPTIONS[: a.options], *family):  # every launch of estimate_accuracy.py
            # `--fit off` would skip the plan: the launch as llmctl makes it (-c, -np given)
            argv = [binary, "-m", str(path), "-nr", *args.split()]
            outcome = probe(on_free_port(argv), jsonl=jsonl)
            t0 = time.monotonic()
            reported = measure_reported(argv)[0]
            load_s.append(time.monotonic() - t0)
            est = estimate(src, parse_llama_args(args.split()).options, gpu=False, rules=rules)
            if outcome.plan is None:
                print(f"{s.name:18} {args:34} no engine plan: {outcome.reason}")
                continue
            probe_s.append(outcome.seconds)
            formula, engine = formula_terms(est), engine_terms(outcome.plan)
            for term, parts in TERMS:
                got = sum(reported.total(p) for p in parts)
                fe = formula[term] / MiB / got - 1 if got else 0.0
                ee = (engine[term] / MiB - got) / got if got else 0.0
                f_err.append(abs(fe))
                e_err.append(abs(ee))
                print(
                    f"{s.name:18} {args:34} {term:8} {formula[term] / MiB:9.2f} "
                    f"{engine[term] / MiB:8.0f} {got:9.2f} {fe:+11.1%} {ee:+10.1%}"
                )
    if f_err:
        print()
        print(
            f"|error| against the loaded buffers, {len(f_err)} terms: formula median "
            f"{statistics.median(f_err):.1%} worst {max(f_err):.1%}; engine plan median "
            f"{statistics.median(e_err):.1%} worst {max(e_err):.1%} (whole MiB, rounded down)"
        )
    if probe_s:
        print(
            f"time: engine probe median {statistics.median(probe_s):.2f} s, worst "
            f"{max(probe_s):.2f} s; full load to its buffers median "
            f"{statistics.median(load_s):.2f} s ({statistics.median(load_s) / statistics.median(probe_s):.0f}x)"
        )


if __name__ == "__main__":
    main()
