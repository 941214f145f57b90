"""The estimate against what this machine's llama-server reports, on models with published shapes.

    uv run python bench/estimate_accuracy.py [--shapes a,b] [--runs N]

For each real-shaped model (llmctl.testing.realshapes: dense with 128k-152k vocabularies,
gemma3-style sliding window with 262k, MLA, MoE with 8 and 128 experts, a Mamba-2 hybrid, and
Gemma-3-4B with its vision projector) and
each launch option set, llama-server (CPU backend, `-lv 4 -nr --no-warmup`) is started until the
model is loaded; its `sched_reserve` compute buffer and its host total (model + KV + output +
compute buffers) are printed beside the estimate's, with the error. The GPU column is the
estimate of the same launch on a GPU (-ngl all, CUDA overhead left out): there is no GPU here to
report it. Then the whole `llmctl estimate` process (`--json`, answered without typer, rich or
pydantic; and the text form) is timed against a bare interpreter start, interleaved.
The models are written once to the cache folder (a few hundred MB each).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from readiness import find_llama_server, llmctl_cmd

from llmctl.llama.gguf import read_gguf
from llmctl.memory.calibration import measure_reported
from llmctl.memory.cmdline import parse_llama_args
from llmctl.memory.estimate import MiB, ModelSource, estimate
from llmctl.memory.measured import Reported
from llmctl.memory.profile import binary_rules
from llmctl.paths import cache_dir
from llmctl.testing.realshapes import PROJECTORS, SHAPES, write_projector, write_shaped_model

OPTIONS = (
    "-c 8192",
    "-c 8192 -fa off",
    "-c 32768 -ub 2048 -b 2048",
    "-c 4096 -np 1 -ctk q8_0 -ctv q8_0 -ub 128",
    "-c 16384 -np 2 -fa off -ub 256",
    "-c 8192 -np 4 -ctk q4_0 -ctv q4_0",
)
# options that only some families have a use for
FAMILY_OPTIONS = {"swa": ("-c 8192 --swa-full", "-c 16384 -np 2 --swa-full -fa off")}


def reported(binary: str, model: Path, args: str, warmup: bool = False) -> Reported:
    """llama-server as `llmctl estimate --measure` runs it (the projector reserves its compute
    buffer during its warm-up only)."""
    cmd = [binary, "-m", str(model), "--fit", "off", "-nr", *args.split()]
    return measure_reported(cmd, warmup=warmup)[0]


def accuracy(names: set[str] | None) -> Path | None:
    binary = find_llama_server()
    rules = binary_rules(binary)  # the build's rules (llmctl.memory.builds)
    print(rules.label)
    folder = cache_dir() / "bench-models"
    folder.mkdir(parents=True, exist_ok=True)
    head = (
        f"{'model':18} {'family':7} {'options':42} {'compute MiB':>22} {'err':>7} "
        f"{'host total MiB':>22} {'err':>7} {'GPU est MiB':>12}"
    )
    print(head)
    print("-" * len(head))
    errors: list[float] = []
    host_errors: list[float] = []
    last: Path | None = None
    for s in SHAPES:
        if names and s.name not in names:
            continue
        path = write_shaped_model(folder, s)
        last = path
        src = ModelSource.from_gguf(read_gguf(path))
        for args in (*OPTIONS, *FAMILY_OPTIONS.get(s.family, ())):
            r = reported(binary, path, args)
            opts = parse_llama_args(args.split()).options
            est = estimate(src, opts, gpu=False, rules=rules)
            on_gpu = estimate(src, opts, overhead=0, rules=rules)
            rc = r.total("compute")
            rh = sum(r.total(p) for p in ("model", "kv", "output", "compute"))
            ec, eh = est.compute_bytes / MiB, est.host_total_bytes / MiB
            err, herr = ec / rc - 1, eh / rh - 1
            errors.append(abs(err))
            host_errors.append(abs(herr))
            print(
                f"{s.name:18} {s.family:7} {args:42} {ec:10.2f} / {rc:9.2f} {err:+7.1%} "
                f"{eh:10.2f} / {rh:9.2f} {herr:+7.1%} {on_gpu.gpu_total_bytes / MiB:12.2f}"
            )
    for p in PROJECTORS:
        text = next(x for x in SHAPES if x.name == p.text_model)
        if names and p.name not in names and text.name not in names:
            continue
        path = write_shaped_model(folder, text)
        proj = write_projector(folder, p)
        args = "-c 8192"
        r = reported(binary, path, f"{args} --mmproj {proj}", warmup=True)
        src = ModelSource.from_gguf(read_gguf(path))
        opts = parse_llama_args(args.split()).options
        psrc = ModelSource.from_gguf(read_gguf(proj))
        est = estimate(src, opts, gpu=False, mmproj=psrc, rules=rules)
        on_gpu = estimate(src, opts, overhead=0, mmproj=psrc, rules=rules)
        assert est.mmproj is not None
        rc = r.total("mmproj_compute")
        parts = ("model", "kv", "output", "compute", "mmproj_model", "mmproj_compute")
        rh = sum(r.total(x) for x in parts)
        ec, eh = est.mmproj.compute_bytes / MiB, est.host_total_bytes / MiB
        err, herr = ec / rc - 1, eh / rh - 1
        errors.append(abs(err))
        host_errors.append(abs(herr))
        label = f"{args} --mmproj (projector compute)"
        print(
            f"{p.name:18} {'vision':7} {label:42} {ec:10.2f} / {rc:9.2f} {err:+7.1%} "
            f"{eh:10.2f} / {rh:9.2f} {herr:+7.1%} {on_gpu.gpu_total_bytes / MiB:12.2f}"
        )
    if errors:
        print()
        print(
            f"compute: {len(errors)} launches, median |error| {statistics.median(errors):.1%}, "
            f"worst {max(errors):.1%}"
        )
        print(
            f"host total: median |error| {statistics.median(host_errors):.1%}, "
            f"worst {max(host_errors):.1%}"
        )
    return last


def timing(model: Path, runs: int) -> None:
    bare = [sys.executable, "-c", "pass"]
    line = ["--", "-m", str(model), "-c", "8192", "-ngl", "99"]
    commands = {
        "bare interpreter": bare,
        "estimate --json --": [*llmctl_cmd(), "estimate", "--json", *line],
        "estimate -- (text)": [*llmctl_cmd(), "estimate", *line],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(runs):  # interleaved, so machine noise hits every column alike
        for name, cmd in commands.items():
            t0 = time.perf_counter()
            subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
            times[name].append(time.perf_counter() - t0)
    print()
    base = statistics.median(times["bare interpreter"])
    for name, values in times.items():
        med = statistics.median(values)
        print(f"{name:20} median {med * 1000:7.1f} ms  ({med / base:.1f}x the bare interpreter)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", help="comma-separated shape names (default: all)")
    ap.add_argument("--runs", type=int, default=10, help="timing runs of each command")
    ap.add_argument("--timing-only", action="store_true", help="only the process timings")
    a = ap.parse_args()
    if a.timing_only:
        s = next(x for x in SHAPES if not a.shapes or x.name in a.shapes.split(","))
        timing(write_shaped_model(cache_dir() / "bench-models", s), a.runs)
        return
    model = accuracy(set(a.shapes.split(",")) if a.shapes else None)
    if model is not None:
        timing(model, a.runs)


if __name__ == "__main__":
    main()
