"""`llmctl fit`: the smallest changes that make a profile fit its budget, or how much more would fit.

Pure functions over `llmctl.memory.estimate`: each suggestion carries its new estimate. Suggestions are
ranked by what they cost in quality or speed: a q8_0 KV cache first (near lossless), a
window-sized sliding-window cache, then a smaller context or fewer slots (in proportion to what
is lost), a q4_0 cache, and last what costs speed: MoE experts on the CPU (`n_cpu_moe`) before
whole layers (`n_gpu_layers`), each ranked by the slowdown a bandwidth model expects.

Without a GPU (`on_gpu=False`) every figure is host memory: the judged total is the estimate's
RAM total, and only the changes that shrink it (cache types, window, context, slots) are offered.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from llmctl.llama.vocab import CACHE_TYPES, bytes_per_element, cache_block_size
from llmctl.memory.builds import NEWEST, BuildRules
from llmctl.memory.estimate import Estimate, ModelSource, estimate
from llmctl.memory.hparams import HParams, hparams_from_metadata
from llmctl.memory.options import LaunchOptions


def judged_bytes(e: Estimate) -> int:
    """The total a budget judges: the GPU's, or the host's when the estimate uses no GPU."""
    return e.gpu_total_bytes if e.on_gpu else e.host_total_bytes


@dataclass
class Suggestion:
    """One change (profile fields -> new values), why, and the estimate it gives."""

    change: dict[str, Any]
    description: str
    estimate: Estimate
    cost: float

    def to_json(self) -> dict[str, Any]:
        return {
            "change": self.change,
            "description": self.description,
            "gpu_total_bytes": self.estimate.gpu_total_bytes,
            "total_bytes": judged_bytes(self.estimate),
            "kv_cache_bytes": self.estimate.kv_bytes,
            "estimate": self.estimate.to_json(),
        }


@dataclass
class FitAdvice:
    """What `llmctl fit` reports for one profile."""

    profile: str | None
    current: Estimate
    budget_bytes: int
    headroom_bytes: int
    suggestions: list[Suggestion] = field(default_factory=list)
    max_ctx_size: int | None = None  # when it fits: the largest -c that still fits
    max_estimate: Estimate | None = None
    n_ctx_train: int = 0
    on_gpu: bool = True  # False: judged against host RAM (no GPU)

    @property
    def target_bytes(self) -> int:
        return self.budget_bytes - self.headroom_bytes

    @property
    def total_bytes(self) -> int:
        """The judged total: GPU memory, or RAM without a GPU."""
        return judged_bytes(self.current)

    @property
    def fits(self) -> bool:
        return self.total_bytes <= self.target_bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "fits": self.fits,
            "budget_bytes": self.budget_bytes,
            "headroom_bytes": self.headroom_bytes,
            "target_bytes": self.target_bytes,
            "gpu_total_bytes": self.current.gpu_total_bytes,
            "on_gpu": self.on_gpu,
            "total_bytes": self.total_bytes,
            "current": self.current.to_json(),
            "suggestions": [s.to_json() for s in self.suggestions],
            "max_ctx_size": self.max_ctx_size,
            "n_ctx_train": self.n_ctx_train,
            "max_ctx_gpu_total_bytes": (
                self.max_estimate.gpu_total_bytes if self.max_estimate else None
            ),
            "max_ctx_total_bytes": judged_bytes(self.max_estimate) if self.max_estimate else None,
        }


def _largest(lo: int, hi: int, ok: Callable[[int], bool]) -> int | None:
    """Largest x in [lo, hi] with ok(x), for ok monotone decreasing; None when ok(lo) fails."""
    if lo > hi or not ok(lo):
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _smallest(lo: int, hi: int, ok: Callable[[int], bool]) -> int | None:
    """Smallest x in [lo, hi] with ok(x), for ok monotone increasing; None when ok(hi) fails."""
    if lo > hi or not ok(hi):
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _cache_ok(head_sizes: set[int], name: str) -> bool:
    block = cache_block_size(name)
    return all(h % block == 0 for h in head_sizes)


# Token generation reads every weight it uses once per token: the time is the bytes read from
# each memory over its bandwidth. Typical figures (a recent GPU, dual-channel DDR5); only their
# ratio matters for the ranking.
GPU_BANDWIDTH = 900e9
CPU_BANDWIDTH = 60e9


def expected_slowdown(base: Estimate, new: Estimate, hp: HParams) -> float:
    """How much slower token generation gets from `base` to `new`: MoE layers read only the
    experts they route to (used / total of the expert bytes), the rest reads everything."""

    def seconds(e: Estimate) -> float:
        share = hp.n_expert_used / hp.n_expert if hp.n_expert else 1.0
        moved = e.weights.overridden_cpu_bytes
        cpu = (e.weights.cpu_bytes - moved) + moved * share + e.host_kv_bytes
        gpu = e.weights.gpu_bytes + e.kv_gpu_bytes
        return gpu / GPU_BANDWIDTH + cpu / CPU_BANDWIDTH

    t0 = seconds(base)
    return seconds(new) / t0 if t0 > 0 else 1.0


def _speed_cost(slowdown: float) -> float:
    """Ranking cost of a change that costs speed, not quality: 3 at no loss, +2 per halving."""
    return 3.0 + 2.0 * math.log2(max(slowdown, 1.0))


def advise(
    source: ModelSource,
    opts: LaunchOptions,
    *,
    budget: int,
    headroom: int = 0,
    overhead: int = 0,
    profile: str | None = None,
    max_suggestions: int = 6,
    rules: BuildRules = NEWEST,
    on_gpu: bool = True,
) -> FitAdvice:
    """Fit advice for `opts` against `budget - headroom` bytes of GPU memory, or of RAM with
    `on_gpu=False` (no GPU: everything stays in host memory), by the rules of a llama.cpp build
    (llmctl.memory.builds)."""
    hp = hparams_from_metadata(source.metadata)
    target = budget - headroom

    def est(o: LaunchOptions) -> Estimate:
        return estimate(
            source,
            o,
            profile=profile,
            budget=budget,
            headroom=headroom,
            overhead=overhead,
            rules=rules,
            gpu=on_gpu,
        )

    def fits(o: LaunchOptions) -> bool:
        return judged_bytes(est(o)) <= target

    current = est(opts)
    advice = FitAdvice(
        profile, current, budget, headroom, n_ctx_train=hp.n_ctx_train, on_gpu=on_gpu
    )
    n_ctx0 = opts.ctx_size if opts.ctx_size > 0 else hp.n_ctx_train

    if advice.fits:
        # how much more context would still fit (whole multiples of 256, up to the trained context)
        upper = max(hp.n_ctx_train, n_ctx0)
        best = _largest(
            n_ctx0 // 256, upper // 256, lambda k: fits(replace(opts, ctx_size=k * 256))
        )
        if best is not None:
            advice.max_ctx_size = max(best * 256, n_ctx0)
            advice.max_estimate = est(replace(opts, ctx_size=advice.max_ctx_size))
        return advice
    if max_suggestions <= 0:
        return advice

    heads = {hp.head_k(il) for il in range(hp.n_layer_all) if hp.n_head_kv[il] > 0}
    heads |= {hp.head_v(il) for il in range(hp.n_layer_all) if hp.n_head_kv[il] > 0}
    candidates: list[Suggestion] = []

    def add(change: dict[str, Any], description: str, cost: float) -> None:
        new = replace(opts, **change)
        e = est(new)
        if judged_bytes(e) <= target:
            candidates.append(Suggestion(change, description, e, cost))

    # 1. KV cache types (quantized V needs flash attention; MLA needs K == V)
    size_rank = {t: 2 * bytes_per_element(t) for t in CACHE_TYPES}
    cur_k, cur_v = opts.cache_type_k, opts.cache_type_v
    for k, v, cost in (("q8_0", "q8_0", 1.0), ("q8_0", "q4_0", 2.5), ("q4_0", "q4_0", 3.0)):
        if hp.is_mla and k != v:
            continue
        if not (_cache_ok(heads, k) and _cache_ok(heads, v)):
            continue
        if size_rank.get(k, 9) + size_rank.get(v, 9) >= size_rank.get(cur_k, 9) + size_rank.get(
            cur_v, 9
        ):
            continue
        change: dict[str, Any] = {"cache_type_k": k, "cache_type_v": v}
        if opts.flash_attn == "off":
            change["flash_attn"] = "on"
        add(change, f"KV cache {k}/{v} (-ctk {k} -ctv {v})", cost)

    # 2. a window-sized sliding-window cache instead of a full one
    if opts.swa_full and hp.swa:
        add(
            {"swa_full": False},
            "sliding-window layers keep only their window (no --swa-full; less prompt-cache reuse)",
            1.2,
        )

    # 3. a smaller context: the largest that fits
    best = _largest(1, max(1, n_ctx0 // 256 - 1), lambda k: fits(replace(opts, ctx_size=k * 256)))
    if best is not None:
        new_ctx = best * 256
        lost = 1 - new_ctx / max(n_ctx0, 1)
        add({"ctx_size": new_ctx}, f"context {n_ctx0} -> {new_ctx} (-c {new_ctx})", 1.5 + 4 * lost)
        # with a cheaper cache, the context can stay larger
        for k in ("q8_0", "q4_0"):
            if k in (cur_k, cur_v) or not _cache_ok(heads, k):
                continue
            quant = replace(opts, cache_type_k=k, cache_type_v=k)
            if opts.flash_attn == "off":
                quant = replace(quant, flash_attn="on")

            def fits_quant(x: int, q: LaunchOptions = quant) -> bool:
                return fits(replace(q, ctx_size=x * 256))

            b2 = _largest(1, n_ctx0 // 256, fits_quant)
            if b2 is not None and new_ctx < b2 * 256 < n_ctx0:
                c2 = b2 * 256
                change = {"cache_type_k": k, "cache_type_v": k, "ctx_size": c2}
                if quant.flash_attn != opts.flash_attn:
                    change["flash_attn"] = "on"
                lost2 = 1 - c2 / max(n_ctx0, 1)
                extra = 1.0 if k == "q8_0" else 3.0
                add(change, f"KV cache {k} and context {c2}", 1.5 + extra + 4 * lost2)

    # 4. fewer slots
    n_seq = current.sizes.n_seq
    if n_seq > 1:
        for np_ in range(n_seq - 1, 0, -1):
            change = {"parallel": np_}
            if opts.parallel < 0:
                change["kv_unified"] = True  # keep auto's unified cache
            if fits(replace(opts, **change)):
                add(
                    change, f"{np_} slot(s) instead of {n_seq} (-np {np_})", 2.0 + (1 - np_ / n_seq)
                )
                break

    if on_gpu:
        _offload_changes(opts, current, hp, fits, est, add)
    candidates.sort(key=lambda s: s.cost)
    advice.suggestions = candidates[:max_suggestions]
    return advice


def _offload_changes(
    opts: LaunchOptions,
    current: Estimate,
    hp: HParams,
    fits: Callable[[LaunchOptions], bool],
    est: Callable[[LaunchOptions], Estimate],
    add: Callable[[dict[str, Any], str, float], None],
) -> None:
    """What costs speed, not quality: MoE experts, then whole layers, on the CPU (GPU only)."""
    # 5. MoE: experts of the first N blocks on the CPU; attention and the KV cache stay on the
    # GPU, and a token reads only the experts it is routed to
    n_all = hp.n_layer_all
    moe_cost: float | None = None
    if hp.n_expert and not opts.n_cpu_moe:
        n = _smallest(1, n_all, lambda k: fits(replace(opts, n_cpu_moe=k)))
        if n is not None:
            e = est(replace(opts, n_cpu_moe=n))
            moe_cost = _speed_cost(expected_slowdown(current, e, hp))
            add(
                {"n_cpu_moe": n},
                f"experts of the first {n} layer(s) on the CPU (--n-cpu-moe {n}; "
                "attention and KV stay on the GPU)",
                moe_cost,
            )

    # 6. fewer layers on the GPU
    best_ngl = _largest(0, n_all, lambda n: fits(replace(opts, n_gpu_layers=n)))
    if best_ngl is not None and best_ngl < n_all + 1:
        moved = n_all + 1 - best_ngl
        e = est(replace(opts, n_gpu_layers=best_ngl))
        cost = _speed_cost(expected_slowdown(current, e, hp)) + 0.5
        if moe_cost is not None:
            cost = max(cost, moe_cost + 0.01)  # whole layers on the CPU are never faster
        add(
            {"n_gpu_layers": best_ngl},
            f"{best_ngl} layers on the GPU, {moved} on the CPU (-ngl {best_ngl}; slower)",
            cost,
        )
