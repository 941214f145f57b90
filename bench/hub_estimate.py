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

# A real repo's layout (bartowski/Qwen2.5-7B-Instruct-GGUF's file names), each quant written with
# the one ggml type its name stands for (published files mix a few types per quant).
REPO = "bartowski/Qwen2.5-7B-Instruct-GGUF"
QUANTS = {
    "IQ2_M": "iq2_s", "Q2_K": "q2_K", "Q3_K_M": "q3_K", "Q4_0": "q4_0", "Q4_K_M": "q4_K",
    "Q5_K_M": "q5_K", "Q6_K": "q6_K", "Q8_0": "q8_0", "BF16": "bf16", "F16": "f16",
}  # fmt: skip


def run(ref: str, env: dict[str, str]) -> tuple[float, dict[str, object]]:
    t0 = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "llmctl", "estimate", ref, "--json", "--vram", "24GiB"],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    return time.monotonic() - t0, json.loads(out.stdout)


def _model(quant: str) -> Path:
    """Qwen2.5-7B at full size in one quant's type, sparse (written once, in the cache)."""
    shape = next(s for s in SHAPES if s.name == "qwen2.5-7b")
    model = cache_dir() / "bench-models" / f"{shape.name}-full-{quant}-sparse.gguf"
    if not model.exists():
        model.parent.mkdir(parents=True, exist_ok=True)
        full = {**shape.overrides, "n_layer": 28, "weight_type": QUANTS[quant]}
        write_tiny_model(model, arch=shape.arch, name=shape.name, sparse=True, **full)
    return model


def main() -> None:
    name = REPO.split("/")[1].removesuffix("-GGUF")
    with tempfile.TemporaryDirectory() as tmp:
        one, many = Path(tmp) / "one", Path(tmp) / "many"
        one.mkdir()
        many.mkdir()
        (one / f"{name}-Q4_K_M.gguf").symlink_to(_model("Q4_K_M"))
        for q in QUANTS:
            (many / f"{name}-{q}.gguf").symlink_to(_model(q))
        with FakeHub() as hub:
            hub.add("bench/one-GGUF", one, hash_files=False)
            hub.add(REPO, many, hash_files=False)
            print(
                f"{'case':34} {'files':>5} {'file bytes':>12} {'read':>10} {'ratio':>9} {'time':>7}"
            )
            for ref in ("hf://bench/one-GGUF:Q4_K_M", f"hf://{REPO}"):
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
                "target: under 16 MiB read and under 1 s for one model "
                "(the time includes the process start)\n"
            )
            # the table a user reads: every quant at 32K context with a q8_0 cache, on an 8 GB card
            env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": f"{tmp}/hf-table",
                   "LLMCTL_CACHE_DIR": f"{tmp}/cache-table"}  # fmt: skip
            table = [sys.executable, "-m", "llmctl", "estimate", f"hf://{REPO}", "--vram", "8GiB",
                     "--", "-c", "32768", "-ctk", "q8_0", "-ctv", "q8_0", "-fa", "on"]  # fmt: skip
            print("$ llmctl estimate " + " ".join(table[4:]))
            sys.stdout.write(
                subprocess.run(table, capture_output=True, text=True, env=env, check=True).stdout
            )


if __name__ == "__main__":
    main()
