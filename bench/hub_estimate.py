"""A remote estimate against a local hub: bytes read and time, beside the files' sizes.

    uv run python bench/hub_estimate.py

A FAKE hub (tests/fakes/fake_hub.py, a real HTTP server on loopback with Range support) serves
a real-shaped GGUF at full size: Qwen2.5-7B's vocabulary, widths and all 28 layers, its tensor
data a hole (a sparse file: the header is real, the weights read as zeros). For one model, and for a repo of 10 quants, `llmctl estimate hf://...` is run as a user runs it
(a fresh process, an empty header cache), and the bytes it read are set beside the bytes a
download would have cost. The interpreter runs as installed: its bytecode cache on (a
PYTHONDONTWRITEBYTECODE of the calling shell is dropped) and warmed by one run first, so the
time is that of every run after the first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from fakes.fake_hub import FakeHub
from llmctl.paths import cache_dir
from llmctl.testing.realshapes import SHAPES
from llmctl.testing.testmodels import write_tiny_model

QUANTS = ("IQ2_M", "Q2_K", "Q3_K_M", "Q4_0", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0", "BF16", "F16")


def run(ref: str, env: dict[str, str]) -> tuple[float, dict[str, object]]:
    t0 = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "llmctl", "estimate", ref, "--json", "--vram", "24GiB"],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    return time.monotonic() - t0, json.loads(out.stdout)


def main() -> None:
    shape = next(s for s in SHAPES if s.name == "qwen2.5-7b")
    model = cache_dir() / "bench-models" / f"{shape.name}-full-sparse.gguf"
    if not model.exists():
        model.parent.mkdir(parents=True, exist_ok=True)
        full = {**shape.overrides, "n_layer": 28}
        write_tiny_model(model, arch=shape.arch, name=shape.name, sparse=True, **full)
    with tempfile.TemporaryDirectory() as tmp:
        one, many = Path(tmp) / "one", Path(tmp) / "many"
        one.mkdir()
        many.mkdir()
        (one / f"{shape.name}-Q4_K_M.gguf").symlink_to(model)
        for q in QUANTS:
            (many / f"{shape.name}-{q}.gguf").symlink_to(model)
        with FakeHub() as hub:
            hub.add("bench/one-GGUF", one, hash_files=False)
            hub.add("bench/many-GGUF", many, hash_files=False)
            print(
                f"{'case':34} {'files':>5} {'file bytes':>12} {'read':>10} {'ratio':>9} {'time':>7}"
            )
            for ref in ("hf://bench/one-GGUF:Q4_K_M", "hf://bench/many-GGUF"):
                env = {**os.environ, "HF_ENDPOINT": hub.url}
                env.pop("PYTHONDONTWRITEBYTECODE", None)  # as installed: .pyc written once
                run(ref, {**env, "HF_HOME": f"{tmp}/hf-warm", "LLMCTL_CACHE_DIR": f"{tmp}/c-warm"})
                env["HF_HOME"] = f"{tmp}/hf-{ref[-6:]}"  # then an empty header cache
                env["LLMCTL_CACHE_DIR"] = f"{tmp}/cache-{ref[-6:]}"
                seconds, data = run(ref, env)
                models = data["models"]
                assert isinstance(models, list)
                size = sum(int(m["file_bytes"]) for m in models)
                read = int(str(data["bytes_read"]))
                print(
                    f"{ref:34} {len(models):5} {size / 2**20:10.0f} Mi {read / 2**20:8.2f} Mi "
                    f"{read / size:9.4%} {seconds:6.2f}s"
                )
    print(
        "target: under 16 MiB read and under 1 s for one model (the time includes the process start)"
    )


if __name__ == "__main__":
    main()
