"""keep_kv: the follow-up turn of a long conversation after a swap away and back, with and without it.

    uv run python bench/slotcache.py [-n ROUNDS] [--tokens N] [--layers L] [--embd E]

The llama-server is $LLMCTL_LLAMA_SERVER, else llama-server on PATH, else the test bed's build.
The model is a random-weight GGUF with a real model's shape at a smaller size (llama architecture,
L layers of width E, grouped-query attention with 4 KV heads of 64, f16 weights), so the prompt
costs what it would cost on such a model; its tokenizer is byte-level, so N tokens are N bytes.

Each round, for each of the two profiles (same model and flags; one with `keep_kv: true`), in turn:
  1. switch to it, send a prompt of N tokens (the long conversation), 1 token out;
  2. swap away: switch to a small other profile (keep_kv: the slots are saved here);
  3. swap back (keep_kv: the slots are restored here, before switch returns);
  4. the follow-up turn: the same prompt plus a short question, streamed; the time to the first
     token is the figure. Without keep_kv the whole prompt is processed again (the cold time).
Printed side by side: time to first token, swap-back time (load + restore), save and restore times,
bytes on disk, and the prompt tokens llama-server took from its cache. Medians over the rounds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from support import find_llama_server, free_port

ROOT = Path(__file__).resolve().parent.parent


def first_token(url: str, prompt: str) -> tuple[float, int]:
    """Seconds to the first streamed token, and the prompt tokens taken from the cache."""
    body = json.dumps({"prompt": prompt, "n_predict": 4, "temperature": 0, "stream": True}).encode()
    req = urllib.request.Request(
        f"{url}/completion", data=body, headers={"Content-Type": "application/json"}
    )
    t0 = time.perf_counter()
    ttft = None
    cache_n = 0
    with urllib.request.urlopen(req, timeout=600) as resp:
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data: "):
                continue
            if ttft is None:
                ttft = time.perf_counter() - t0
            data = json.loads(line[6:])
            if data.get("stop"):
                cache_n = int(data.get("timings", {}).get("cache_n", 0))
    assert ttft is not None, "no token streamed"
    return ttft, cache_n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", "--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=6000)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--embd", type=int, default=1024)
    args = ap.parse_args()

    from llmctl.supervisor.kvcache.files import saved
    from llmctl.supervisor.launch import KeepKv, LaunchSpec
    from llmctl.supervisor.lifecycle import Supervisor
    from llmctl.supervisor.results import Event
    from llmctl.testing.testmodels import write_tiny_model

    binary = find_llama_server()
    work = Path(tempfile.mkdtemp(prefix="llmctl-bench-kv-"))
    n_head = args.embd // 64
    model = write_tiny_model(
        work / "model.gguf",
        n_layer=args.layers,
        n_embd=args.embd,
        n_head=n_head,
        n_head_kv=4,
        head_dim=64,
        n_ff=args.embd * 11 // 4,
        n_ctx_train=32768,
    )
    other = write_tiny_model(work / "other.gguf")
    ctx = 1024 * ((args.tokens + 1024) // 1024 + 1)
    limits = KeepKv(max_bytes=8 << 30, total_bytes=20 << 30, max_age_s=86400, timeout_s=120)

    def spec(name: str, path: Path, port: int, keep: bool, c: int) -> LaunchSpec:
        argv = (binary, "-m", str(path), "--host", "127.0.0.1", "--port", str(port))
        argv += ("-c", str(c), "-np", "1", "--no-warmup")
        return LaunchSpec(
            profile=name,
            argv=argv,
            port=port,
            ready_timeout=300,
            model=str(path),
            keep_kv=limits if keep else None,
        )

    # a conversation-like prompt, one byte per token, never the same sentence twice in a row
    words = ("the", "a", "model", "swap", "cache", "prompt", "token", "server", "slot", "keeps",
             "long", "agent", "turn")  # fmt: skip
    text = " ".join(words[(i * 7) % len(words)] + str(i % 97) for i in range(args.tokens))
    prompt = text[: args.tokens]
    question = "\nAnd the next step?"
    port = free_port()
    sup = Supervisor(work / "state", lock_timeout=60)
    rows: dict[str, dict[str, list[float]]] = {"without keep_kv": {}, "with keep_kv": {}}
    print(
        f"model: llama {args.layers} layers x {args.embd} ({n_head} heads, 4 KV heads of 64), "
        f"f16, {model.stat().st_size / 2**20:.0f} MiB; prompt {len(prompt)} tokens; -c {ctx}; "
        f"{args.rounds} round(s)",
        flush=True,
    )
    try:
        for rnd in range(args.rounds):
            for label, keep in (("without keep_kv", False), ("with keep_kv", True)):
                r = rows[label]
                main_spec = spec("long", model, port, keep, ctx)
                sup.stop(forget=True)
                assert sup.switch(main_spec).ready
                first_token(main_spec.url, prompt)
                events: list[Event] = []
                t0 = time.perf_counter()
                assert sup.switch(
                    spec("other", other, port, False, 512), on_event=events.append
                ).ready
                r.setdefault("swap away (s)", []).append(time.perf_counter() - t0)
                disk = sum(s["bytes"] for s in saved(sup.state_dir))
                t0 = time.perf_counter()
                assert sup.switch(main_spec, on_event=events.append).ready
                r.setdefault("swap back (s)", []).append(time.perf_counter() - t0)
                ttft, cache_n = first_token(main_spec.url, prompt + question)
                r.setdefault("first token (s)", []).append(ttft)
                r.setdefault("prompt tokens from cache", []).append(cache_n)
                r.setdefault("bytes on disk (MiB)", []).append(disk / 2**20)
                for e in events:
                    if e.kind == "kv" and " in " in e.message:
                        kind = "save (s)" if "saved the" in e.message else "restore (s)"
                        seconds = float(e.message.rsplit(" in ", 1)[1].split()[0])
                        r.setdefault(kind, []).append(seconds)
            print(f"round {rnd + 1}/{args.rounds} done", flush=True)
    finally:
        sup.stop(forget=True)
        shutil.rmtree(work, ignore_errors=True)

    keys = [
        "first token (s)",
        "prompt tokens from cache",
        "swap away (s)",
        "swap back (s)",
        "save (s)",
        "restore (s)",
        "bytes on disk (MiB)",
    ]
    print(f"\n{'median':<26}{'without keep_kv':>18}{'with keep_kv':>16}")
    for key in keys:
        cells = []
        for label in rows:
            values = rows[label].get(key)
            cells.append(f"{statistics.median(values):.3f}" if values else "-")
        print(f"{key:<26}{cells[0]:>18}{cells[1]:>16}")
    cold = statistics.median(rows["without keep_kv"]["first token (s)"])
    warm = statistics.median(rows["with keep_kv"]["first token (s)"])
    verdict = "OK" if warm <= cold / 4 else "NOT MET"
    print(f"\nfollow-up first token: {warm / cold:.1%} of the cold time (goal <= 25%: {verdict})")
    return 0 if warm <= cold / 4 else 1


if __name__ == "__main__":
    sys.exit(main())
