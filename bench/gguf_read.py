"""Header reading speed: llmctl.llama.gguf.read_gguf against gguf-py's GGUFReader, side by side.

Writes its own test file: a GGUF whose header holds a 262,144-token vocabulary (tokens, scores,
token types, as Gemma 3/4 ship it) and a small tensor table. Measures both readers in this process
(median of several runs) and as whole processes, interpreter start included.

    uv run python bench/gguf_read.py [--vocab 262144] [--runs 5]
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from llmctl.llama.gguf import T_FLOAT32, T_INT32, T_STRING, ggml_type, read_gguf
from llmctl.llama.gguf_writer import Tensor, array, string, u32, write_gguf


def write_vocab_model(path: Path, n_vocab: int) -> Path:
    rng = random.Random(0)
    letters = "abcdefghijklmnopqrstuvwxyz▁"
    tokens = [f"<0x{b:02X}>" for b in range(256)]
    while len(tokens) < n_vocab:
        tokens.append("".join(rng.choice(letters) for _ in range(rng.randint(2, 12))))
    meta = [
        ("general.architecture", string("gemma3")),
        ("gemma3.block_count", u32(2)),
        ("gemma3.embedding_length", u32(64)),
        ("tokenizer.ggml.model", string("llama")),
        ("tokenizer.ggml.tokens", array(T_STRING, tokens)),
        ("tokenizer.ggml.scores", array(T_FLOAT32, [float(-i) for i in range(n_vocab)])),
        ("tokenizer.ggml.token_type", array(T_INT32, [1] * n_vocab)),
    ]
    f16 = ggml_type("f16")
    tensors = [Tensor(f"blk.{i}.attn_q.weight", (64, 64), f16) for i in range(2)]
    return write_gguf(path, meta, tensors)


def timed(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def process_time(code: str, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=262_144)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--baseline-runs", type=int, default=2, help="runs of the slow gguf-py reader")
    args = ap.parse_args()
    try:
        from gguf import GGUFReader
    except ImportError:
        sys.exit("gguf-py is not installed (it is a dev dependency: uv sync)")

    with tempfile.TemporaryDirectory() as tmp:
        path = write_vocab_model(Path(tmp) / "vocab.gguf", args.vocab)
        size = path.stat().st_size
        g = read_gguf(path)
        assert len(g.metadata["tokenizer.ggml.tokens"]) == args.vocab
        reader = GGUFReader(str(path))
        assert len(reader.fields["tokenizer.ggml.tokens"].data) == args.vocab
        del reader

        ours_in = timed(lambda: read_gguf(path), args.runs)
        theirs_in = timed(lambda: GGUFReader(str(path)), args.baseline_runs)
        empty = process_time("pass", args.runs)
        ours_proc = process_time(
            f"from llmctl.llama.gguf import read_gguf; read_gguf({str(path)!r})", args.runs
        )
        theirs_proc = process_time(
            f"from gguf import GGUFReader; GGUFReader({str(path)!r})", args.baseline_runs
        )

    print(f"header with a {args.vocab:,}-token vocabulary, file {size / 1e6:.1f} MB")
    print(f"{'':28} {'llmctl':>10} {'gguf-py':>10} {'ratio':>8}")
    print(
        f"{'in process (median)':28} {ours_in * 1000:8.1f}ms {theirs_in * 1000:8.1f}ms "
        f"{theirs_in / ours_in:7.1f}x"
    )
    print(
        f"{'whole process':28} {ours_proc * 1000:8.1f}ms {theirs_proc * 1000:8.1f}ms "
        f"{theirs_proc / ours_proc:7.1f}x"
    )
    print(f"{'(python -c pass)':28} {empty * 1000:8.1f}ms")


if __name__ == "__main__":
    main()
