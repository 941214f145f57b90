"""Lint rules from the memory estimator: budget, headroom, trained context, cache block sizes, MLA.

Profiles whose GGUF is not on this machine are checked from their `metadata:` block; a profile
with neither is skipped here (the manifest rules already report the missing file). A hub model
(`hf://`) is checked from its pulled file or the header an estimate read before: lint asks
nothing of the hub.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from llmctl.errors import GGUFError, LlmctlError, Problem, Severity
from llmctl.llama.vocab import (
    CACHE_TYPES,
    SPEC_VOCAB_MAX_SIZE_DIFFERENCE,
    cache_block_size,
    parse_overrides,
)
from llmctl.manifest.problems import problem as positioned
from llmctl.memory.estimate import Estimate, ModelSource, vocab_size
from llmctl.memory.hparams import HParams, MetadataError, hparams_from_metadata
from llmctl.memory.profile import estimate_profile, extra_sources, source_for_profile
from llmctl.term import format_bytes

if TYPE_CHECKING:
    from llmctl.manifest.model import Manifest


def memory_problems(manifest: Manifest) -> list[Problem]:
    """Problems the estimator finds in each profile of `manifest`."""
    out: list[Problem] = []
    vram = manifest.gpu_budget.vram
    headroom = manifest.gpu_budget.headroom

    for name, profile in manifest.profiles.items():

        def problem(
            severity: Severity,
            rule: str,
            message: str,
            field: str | None,
            hint: str | None,
            name: str = name,
        ) -> None:
            out.append(positioned(manifest, severity, rule, message, name, field, hint))

        try:
            source = source_for_profile(profile, network=False)
        except GGUFError as err:
            problem("error", "gguf", err.message, "model", err.hint)
            continue
        except MetadataError as err:
            problem("error", "model-metadata", err.message, "metadata", "fix the metadata block")
            continue
        if source is None:
            continue
        try:
            hp = hparams_from_metadata(source.metadata)
        except MetadataError as err:
            where = "metadata" if source.tensors is None else "model"
            problem("error", "model-metadata", str(err), where, "add the key to the metadata block")
            continue

        # cache types whose block size does not divide the head size
        heads_k = {hp.head_k(il) for il in range(hp.n_layer_all) if hp.n_head_kv[il] > 0}
        heads_v = {hp.head_v(il) for il in range(hp.n_layer_all) if hp.n_head_kv[il] > 0}
        bad_type = False
        for field, ctype, heads, letter in (
            ("cache_type_k", profile.cache_type_k, heads_k, "K"),
            ("cache_type_v", profile.cache_type_v, heads_v, "V"),
        ):
            block = cache_block_size(ctype) if ctype in CACHE_TYPES else 1
            if block == 1:
                continue
            bad = sorted(h for h in heads if h % block)
            if bad:
                bad_type = True
                problem(
                    "error",
                    "cache-block-size",
                    f"{letter} cache type {ctype} has blocks of {block}, which do not divide the "
                    f"head size {bad[0]} of {hp.arch}; llama-server refuses to load",
                    field,
                    "use f16 or bf16 for this model",
                )
        if hp.is_mla and profile.cache_type_k != profile.cache_type_v:
            bad_type = True
            problem(
                "error",
                "mla-cache-types",
                f"{hp.arch} uses MLA (one latent cache): cache_type_k ({profile.cache_type_k}) "
                f"and cache_type_v ({profile.cache_type_v}) must be the same",
                "cache_type_v",
                f"set cache_type_v: {profile.cache_type_k}",
            )

        placement_problems(profile, source, hp, problem)
        try:
            mmproj, draft = extra_sources(profile, network=False)
        except GGUFError as err:
            mmproj = draft = None
            problem("error", "gguf", err.message, None, err.hint)
        if draft is not None:
            ours, theirs = vocab_size(source), vocab_size(draft)
            if ours and theirs and abs(ours - theirs) > SPEC_VOCAB_MAX_SIZE_DIFFERENCE:
                problem(
                    "error",
                    "draft-vocab",
                    f"the draft model has {theirs} tokens and the main model {ours}; llama-server "
                    "refuses a draft whose vocabulary differs by more than "
                    f"{SPEC_VOCAB_MAX_SIZE_DIFFERENCE} tokens and starts without it",
                    "model_draft",
                    "use a draft model of the same family (same tokenizer)",
                )
        if mmproj is not None:
            proj = mmproj.metadata.get("clip.vision.projection_dim")
            if isinstance(proj, int) and proj != hp.n_embd:
                problem(
                    "error",
                    "mmproj-mismatch",
                    f"the projector outputs {proj}-wide embeddings but {hp.arch} takes "
                    f"{hp.n_embd}; llama-server fails to load it (mismatch between text model "
                    "and mmproj)",
                    "mmproj",
                    "use the mmproj file published with this model",
                )

        if hp.n_ctx_train > 0 and profile.ctx_size > hp.n_ctx_train:
            problem(
                "warning",
                "ctx-over-trained",
                f"ctx_size {profile.ctx_size} is larger than the context {hp.n_ctx_train} the "
                "model was trained for; quality drops beyond it unless RoPE scaling is set",
                "ctx_size",
                f"use ctx_size: {hp.n_ctx_train} (or 0 for the trained context)",
            )

        if bad_type:
            continue
        if profile.rpc:
            # split over this machine and others: each device against its own budget
            device_fit_problems(manifest, name, problem)
            continue
        if vram is None:
            continue
        try:
            found = estimate_profile(manifest, name, source=source, network=False)
            assert found is not None  # a source was given
            est = found
        except (MetadataError, KeyError) as err:
            problem("error", "model-metadata", str(err), "model", None)
            continue
        total, label = engine_figure(manifest, name, est, problem)
        approx = "" if est.exact or label != "formula" else ", approximate"
        if total > vram:
            problem(
                "error",
                "over-budget",
                f"estimated GPU memory {format_bytes(total)} ({label}{approx}) exceeds gpu.vram "
                f"{format_bytes(vram)} by {format_bytes(total - vram)}",
                None,
                f"run `llmctl fit {name}` for the smallest changes that make it fit",
            )
        elif total > vram - headroom:
            problem(
                "warning",
                "in-headroom",
                f"estimated GPU memory {format_bytes(total)} ({label}{approx}) leaves "
                f"{format_bytes(vram - total)} free, less than gpu.headroom "
                f"{format_bytes(headroom)}",
                None,
                f"run `llmctl fit {name}` to see what would leave more room",
            )
    return out


def engine_figure(
    manifest: Manifest,
    name: str,
    est: Estimate,
    problem: Callable[[Severity, str, str, str | None, str | None], None],
) -> tuple[int, str]:
    """The GPU figure to judge the budget by and its source: what an out-of-memory load of this
    launch showed it needs (measured), else the engine's plan of it when one is kept (`llmctl
    estimate --engine`, or a launch), else the formula. Where formula and plan are both known,
    each term the formula gets wrong by more than 10 % is a warning naming the build."""
    from llmctl.memory.engine import best_figure, compare, plan_gpu_bytes, warnings

    try:
        from llmctl.supervisor.probe import kept_figures

        plan, floor, build = kept_figures(manifest, name)
    except (LlmctlError, OSError, ValueError):
        plan, floor, build = None, {}, None
    gpu_floor = sum(b for d, b in floor.items() if d.upper() != "CPU") if est.on_gpu else 0
    measured = max(gpu_floor, est.gpu_total_bytes) if gpu_floor else None
    if plan is None:
        return best_figure(est.gpu_total_bytes, None, measured)
    for line in warnings(compare(est, plan), build):
        problem(
            "warning",
            "engine-plan-differs",
            line,
            None,
            f"the placer decides by the engine's plan (`llmctl estimate {name} --engine` "
            "shows both)",
        )
    engine = plan_gpu_bytes(plan, est.overhead_bytes) if est.on_gpu else None
    if measured is not None and engine is not None:
        measured = max(measured, engine)
    return best_figure(est.gpu_total_bytes, engine, measured)


def placement_problems(
    profile: object,
    source: ModelSource,
    hp: HParams,
    problem: Callable[[Severity, str, str, str | None, str | None], None],
) -> None:
    """n_cpu_moe beyond the blocks or on a dense model; -ot patterns that are not regular
    expressions, or that match no tensor or every tensor."""
    n_cpu_moe = getattr(profile, "n_cpu_moe", None) or 0
    if n_cpu_moe:
        if hp.n_expert == 0:
            problem(
                "error",
                "n-cpu-moe-dense",
                f"n_cpu_moe {n_cpu_moe} on {hp.arch}, which has no experts: llama-server moves "
                "nothing",
                "n_cpu_moe",
                "remove it, or lower n_gpu_layers to put layers on the CPU",
            )
        elif n_cpu_moe > hp.n_layer_all:
            problem(
                "error",
                "n-cpu-moe-range",
                f"n_cpu_moe {n_cpu_moe} is beyond the model's {hp.n_layer_all} layers; "
                "llama-server keeps every expert on the CPU (as --cpu-moe does)",
                "n_cpu_moe",
                f"use n_cpu_moe: {hp.n_layer_all} or fewer",
            )
    value = getattr(profile, "override_tensor", None)
    if not value:
        return
    try:
        pairs = parse_overrides(value)
        compiled = [(re.compile(p), p, b) for p, b in pairs]
    except (ValueError, re.error) as err:
        problem(
            "error",
            "override-tensor",
            f"override_tensor {value!r}: {err}; llama-server refuses to start",
            "override_tensor",
            "write PATTERN=BUFFER pairs separated by commas, e.g. 'ffn_.*_exps=CPU'",
        )
        return
    if source.tensors is None:
        return
    names = [t.name for t in source.tensors]
    for regex, pattern, buffer in compiled:
        hits = sum(1 for n in names if regex.search(n))
        if hits == 0:
            problem(
                "error",
                "override-tensor-none",
                f"override_tensor pattern {pattern!r} matches no tensor of {hp.arch}; "
                "llama-server ignores it",
                "override_tensor",
                "tensor names look like blk.12.ffn_up_exps.weight (see `llmctl estimate --json`)",
            )
        elif hits == len(names):
            problem(
                "error",
                "override-tensor-all",
                f"override_tensor pattern {pattern!r} matches every tensor: llama-server puts "
                f"the whole model in {buffer} and n_gpu_layers has no effect",
                "override_tensor",
                "anchor the pattern to the tensors meant, e.g. 'blk\\.[0-9]+\\.ffn_.*_exps=CPU'",
            )


def device_fit_problems(
    manifest: Manifest,
    name: str,
    problem: Callable[[Severity, str, str, str | None, str | None], None],
) -> None:
    """A profile split over several devices (RPC servers among them): its share on each device
    against that device's budget, for the way of placing it that fits best."""
    from llmctl.placement.placer import placement_request
    from llmctl.supervisor.devices import detect

    devices = {d.name: d for d in detect(manifest.device_configs()).devices}
    try:
        placed = placement_request(manifest, name, list(devices.values()))
    except (LlmctlError, ValueError):
        return
    best: tuple[int, list[tuple[str, int, int, int]], str] | None = None
    for option, spec in zip(placed.request.options, placed.specs, strict=True):
        rows: list[tuple[str, int, int, int]] = []  # device, need, budget, headroom
        label = str(spec.placement.get("memory_source", "formula"))
        for device, need in option.usage.items():
            d = devices.get(device)
            if d is None or d.budget is None:
                return  # an unknown budget has its own warning
            rows.append((device, need, d.budget, d.headroom))
        # 0: fits with headroom, 1: only inside the headroom, 2: over a budget
        rank = max(
            (2 if need > budget else 1 if need > budget - headroom else 0)
            for _, need, budget, headroom in rows
        )
        if best is None or rank < best[0]:
            best = (rank, rows, label)
    if best is None or best[0] == 0:
        return
    rank, rows, label = best
    if rank == 2:
        over = [r for r in rows if r[1] > r[2]]
        problem(
            "error",
            "over-budget",
            f"estimated memory ({label}) exceeds the budget of "
            + "; ".join(
                f"{d} ({format_bytes(need)} of {format_bytes(budget)}, "
                f"{format_bytes(need - budget)} over)"
                for d, need, budget, _ in over
            ),
            None,
            f"`llmctl estimate {name}` shows each device's share; add an RPC server, raise "
            "tensor_split for the devices with room, or shrink the profile",
        )
    else:
        tight = [r for r in rows if r[1] > r[2] - r[3]]
        problem(
            "warning",
            "in-headroom",
            f"estimated memory ({label}) leaves less than the headroom free on "
            + "; ".join(
                f"{d} ({format_bytes(budget - need)} free, headroom {format_bytes(headroom)})"
                for d, need, budget, headroom in tight
            ),
            None,
            f"`llmctl estimate {name}` shows each device's share",
        )
