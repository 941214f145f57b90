"""The text of `llmctl estimate`: an estimate's table and verdict, how its figures are made
(`--explain`), and a profile's per-device plans. Pure: strings from the figures, no I/O."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llmctl.cli.output import table
from llmctl.term import BOLD, DIM, GREEN, RED, YELLOW, style

if TYPE_CHECKING:
    from llmctl.memory.estimate import Estimate
    from llmctl.placement.plan import DevicePlan


def size(n: int | None) -> str:
    from llmctl.term import format_bytes

    return "-" if n is None else format_bytes(n)


def _fa(est: Estimate) -> str:
    """`auto (on)`: what `flash_attn: auto` resolved to."""
    if est.flash_attn == "auto" and est.compute is not None:
        return f"auto ({'on' if est.compute.flash_attn else 'off'})"
    return str(est.flash_attn)


def estimate_text(est: Estimate, ignored: list[str] | None = None) -> str:
    title = est.profile or est.model
    exact = "KV rules exact" if est.exact else "KV approximate (generic rules)"
    lines = [f"{style(title, BOLD)}  {est.architecture}, {exact}"]
    if est.profile:
        lines.append(f"  model: {est.model}")
    s = est.sizes
    streams = (
        f"{s.n_stream} streams" if s.n_stream > 1 else "unified" if s.kv_unified else "1 stream"
    )
    lines.append(
        f"  context: n_ctx {s.n_ctx}, {s.n_ctx_seq} per sequence, {s.n_seq} slot(s), {streams}; "
        f"flash_attn {_fa(est)}; ubatch {s.n_ubatch}"
    )
    lines.append(f"  rules: {est.rules.label}")
    rows = [
        [
            f"KV {c.kind}",
            str(c.cells),
            str(c.layers),
            f"{size(c.k_bytes)} {c.k_type}",
            f"{size(c.v_bytes)} {c.v_type}",
            size(c.bytes),
        ]
        for c in est.caches
    ]
    if not est.caches:
        rows.append(["KV cache", "-", "-", "-", "-", "none"])
    w = est.weights
    rows.append(
        ["weights", "", "", f"GPU {size(w.gpu_bytes)}", f"CPU {size(w.cpu_bytes)}", size(w.bytes)]
    )
    if w.overridden_cpu_bytes:
        rows.append(["CPU by -ncmoe/-ot", "", "", "", "", size(w.overridden_cpu_bytes)])
    where = f" ({est.compute.where})" if est.compute else ""
    rows.append([f"compute{where}", "", "", "", "", size(est.compute_bytes)])
    if est.mmproj is not None:
        m = est.mmproj
        rows.append(
            ["mmproj", "", "", size(m.weights_bytes), f"compute {size(m.compute_bytes)}", ""]
        )
    if est.draft is not None:
        d = est.draft
        rows.append(
            ["draft", "", "", f"GPU {size(d.gpu_total_bytes)}", "", size(d.host_total_bytes)]
        )
    if est.on_gpu:
        rows.append(["CUDA overhead", "", "", "", "", size(est.overhead_bytes)])
        rows.append(
            [style("GPU total", BOLD), "", "", "", "", style(size(est.gpu_total_bytes), BOLD)]
        )
    rows.append(
        [
            style("host total", BOLD),
            "",
            "",
            f"weights {size(est.host_weights_bytes)}",
            f"KV {size(est.host_kv_bytes)}",
            style(size(est.host_total_bytes), BOLD),
        ]
    )
    lines += table(rows, header=["", "cells", "layers", "K / R", "V / S", "total"])
    if est.budget_bytes is not None:
        room = est.budget_bytes - est.gpu_total_bytes
        if not est.fits:
            verdict = f"{style('does not fit', RED)}: {size(-room)} over"
        elif not est.within_headroom:
            verdict = f"{style('fits, inside the headroom', YELLOW)}: {size(room)} free"
        else:
            verdict = f"{style('fits', GREEN)}: {size(room)} free"
        lines.append(f"  budget {size(est.budget_bytes)}: {verdict}")
    lines += [f"  {style(f'note: {note}', DIM)}" for note in est.notes]
    if ignored:
        lines.append(f"  {style('not taken into account: ' + ' '.join(ignored), DIM)}")
    return "".join(line + "\n" for line in lines) + "\n"


def explain_text(est: Estimate, measured: dict[str, Any] | None) -> str:
    lines: list[str] = []
    c = est.compute
    if c is not None:
        lines.append(
            f"  compute = masks {size(c.masks)} + max(widest layer ({c.where}) {size(c.layer)}"
            f" + recurrent states {size(c.states)}, logits {size(c.outputs)}) for {c.n_tokens} "
            "tokens (from the graph's shapes; checked on the CPU backend)"
        )
    lines.append(
        f"  weights: GPU {size(est.weights.gpu_bytes)}, host {size(est.host_weights_bytes)}"
        f" (exact per tensor); KV {size(est.kv_bytes)} (exact); output buffer "
        f"{size(est.output_bytes)} (exact)"
    )
    if measured is None:
        lines.append(
            "  "
            + style(
                "no measurement for this model, these arguments and this llama-server build;"
                " `--measure` launches it once to measure",
                DIM,
            )
        )
    else:
        lines.append(f"  {style('measured', BOLD)} (llama-server {measured['build']}):")
        for part, d in measured["parts"].items():
            lines.append(
                f"    {part:8} measured {d['measured_mib']:10.2f} MiB   formula "
                f"{d['formula_mib']:10.2f} MiB   {d['error']:+.1%}"
            )
    return "".join(line + "\n" for line in lines)


def plans_text(plans: list[DevicePlan]) -> str:
    lines: list[str] = []
    for plan in plans:
        parts = [
            f"{s.device} {size(s.total_bytes)}"
            + (
                f" ({s.layers} layers{' + output' if s.output else ''})"
                if s.layers
                else " (output)"
                if s.output
                else ""
            )
            for s in plan.shares
            if s.total_bytes
        ]
        lines.append(f"plan on {plan.label}: " + ", ".join(parts))
        flags = plan.launch_args()
        if flags:  # nothing to pass when one device takes it all by llama-server's defaults
            lines.append("  " + style(f"flags: {' '.join(flags)}", DIM))
    if plans:
        lines.append("")
    return "".join(line + "\n" for line in lines)
