"""`llmctl estimate hf://org/repo[:QUANT] [-- LLAMA-SERVER ARGS]`: does it fit, before a download.

Each GGUF of the repo (or the one named) is read from its header and tensor table over HTTP
range reads (llmctl.hub.remote), estimated at the context and cache types the llama-server
arguments after `--` give, and judged against the manifest's GPU budget (or `--vram`). The
largest that fits is marked. Nothing but headers is downloaded.
"""

from __future__ import annotations

import sys
from typing import Any

from llmctl.cli.output import print_json, table
from llmctl.errors import EXIT_FAILED, EXIT_OK, LlmctlError
from llmctl.term import BOLD, DIM, GREEN, RED, format_bytes, style


def _budget(vram: str | None, manifest: str | None) -> tuple[int | None, int, int]:
    """(vram, headroom, overhead): from --vram, else the manifest's GPU budget, else none."""
    from llmctl.memory.estimate import DEFAULT_CUDA_OVERHEAD

    if vram is not None:
        from llmctl.errors import UsageError
        from llmctl.manifest.sizes import parse_size

        try:
            return parse_size(vram), 0, DEFAULT_CUDA_OVERHEAD
        except ValueError as err:
            raise UsageError(f"--vram: {err}", hint="e.g. --vram 24GiB") from None
    try:
        from llmctl.manifest.cache import load_manifest

        gpu = load_manifest(manifest).gpu_budget
    except LlmctlError:
        return None, 0, 0  # no manifest here: the figures, without a verdict
    return gpu.vram, gpu.headroom, gpu.overhead


def estimate_hub(
    refs: list[str],
    llama_args: list[str],
    *,
    json_out: bool = False,
    vram: str | None = None,
    manifest: str | None = None,
) -> int:
    from llmctl.hub.refs import parse_ref
    from llmctl.hub.remote import ReadStats, list_repo, read_model, source_json
    from llmctl.memory.cmdline import parse_llama_args
    from llmctl.memory.estimate import ModelSource, estimate

    parsed = parse_llama_args(llama_args)
    budget, headroom, overhead = _budget(vram, manifest)
    stats = ReadStats()
    results: list[dict[str, Any]] = []
    for text in refs:
        ref = parse_ref(text)
        listing = list_repo(ref.repo, ref.revision)
        if ref.tag or ref.file:
            models = [read_model(ref, stats, listing)]
        else:
            models = [
                read_model(ref, stats, listing, file=f, with_mmproj=False)
                for f in listing.gguf_models()
            ]
            if not models:
                raise LlmctlError(
                    f"{ref}: the repo holds no GGUF model",
                    hint="llama.cpp runs GGUF files; look for a -GGUF repo of this model",
                )
        for m in models:
            src = ModelSource.from_gguf(m.gguf)
            mm = ModelSource.from_gguf(m.mmproj) if m.mmproj is not None else None
            est = estimate(
                src,
                parsed.options,
                budget=budget,
                headroom=headroom,
                overhead=overhead,
                gpu=budget is not None,
                mmproj=mm,
            )
            results.append(
                {
                    **source_json(m),
                    "tag": m.tag,
                    "estimate": est.to_json(),
                    "total_bytes": est.gpu_total_bytes
                    if budget is not None
                    else est.host_total_bytes,
                    "fits": est.fits,
                }
            )
    results.sort(key=lambda r: (r["ref"].split("/")[2], r["file_bytes"]))
    fitting = [r for r in results if r["fits"]]
    best = max(fitting, key=lambda r: r["file_bytes"]) if fitting else None
    for r in results:
        r["largest_that_fits"] = r is best
    if json_out:
        print_json(
            {
                "models": results,
                "budget_bytes": budget,
                "bytes_read": stats.bytes_read,
                "requests": stats.requests,
            }
        )
    else:
        sys.stdout.write(_text(results, budget, headroom, parsed.options.ctx_size, stats))
    return EXIT_OK if budget is None or best is not None else EXIT_FAILED


def _text(
    results: list[dict[str, Any]], budget: int | None, headroom: int, ctx: int, stats: Any
) -> str:
    where = "GPU" if budget is not None else "RAM"
    rows = []
    for r in results:
        est = r["estimate"]
        verdict = (
            "" if r["fits"] is None else (style("yes", GREEN) if r["fits"] else style("no", RED))
        )
        mark = style("  <- largest that fits", BOLD) if r["largest_that_fits"] else ""
        rows.append(
            [
                r["files"][0]
                if len(r["files"]) == 1
                else f"{r['files'][0]} (+{len(r['files']) - 1})",
                format_bytes(r["file_bytes"]),
                format_bytes(est["weights"]["bytes"]),
                format_bytes(est["kv_cache"]["bytes"]),
                format_bytes(r["total_bytes"]),
                verdict + mark,
            ]
        )
    head = ["file", "size", "weights", "KV", f"{where} total", "fits"]
    budget_text = (
        f"against {format_bytes(budget)} ({format_bytes(headroom)} kept free)"
        if budget is not None
        else "no GPU budget (manifest gpu: or --vram): totals in RAM"
    )
    ctx_text = f"context {ctx}" if ctx > 0 else "the trained context"
    lines = [style(f"{len(results)} model(s) at {ctx_text}, {budget_text}", BOLD)]
    lines += ["  " + line for line in table(rows, header=head)]
    lines.append(
        style(
            f"  read {format_bytes(stats.bytes_read)} of headers in {stats.requests} request(s); "
            "nothing downloaded",
            DIM,
        )
    )
    return "\n".join(lines) + "\n"
