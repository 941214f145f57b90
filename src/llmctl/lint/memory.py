"""Lint rules from the memory estimator: budget, headroom, trained context, cache block sizes, MLA.

Profiles whose GGUF is not on this machine are checked from their `metadata:` block; a profile
with neither is skipped here (the manifest rules already report the missing file).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmctl.errors import GGUFError, Problem, Severity
from llmctl.manifest.sizes import format_bytes
from llmctl.memory.estimate import (
    MetadataError,
    estimate,
    hparams_from_metadata,
    options_from_profile,
    source_for_profile,
)

if TYPE_CHECKING:
    from llmctl.manifest.model import Manifest

_BLOCK = {"q8_0": 32, "q4_0": 32, "q4_1": 32, "iq4_nl": 32, "q5_0": 32, "q5_1": 32}


def memory_problems(manifest: Manifest) -> list[Problem]:
    """Problems the estimator finds in each profile of `manifest`."""
    out: list[Problem] = []
    vram = manifest.gpu_budget.vram
    headroom = manifest.gpu_budget.headroom
    overhead = manifest.gpu_budget.overhead

    for name, profile in manifest.profiles.items():

        def problem(
            severity: Severity,
            rule: str,
            message: str,
            field: str | None,
            hint: str | None,
            name: str = name,
        ) -> None:
            file, line, column = manifest.where(name, field)
            out.append(Problem(severity, rule, message, name, file, line, column, hint))

        try:
            source = source_for_profile(profile)
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
            block = _BLOCK.get(ctype)
            if block is None:
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

        if hp.n_ctx_train > 0 and profile.ctx_size > hp.n_ctx_train:
            problem(
                "warning",
                "ctx-over-trained",
                f"ctx_size {profile.ctx_size} is larger than the context {hp.n_ctx_train} the "
                "model was trained for; quality drops beyond it unless RoPE scaling is set",
                "ctx_size",
                f"use ctx_size: {hp.n_ctx_train} (or 0 for the trained context)",
            )

        if vram is None or bad_type:
            continue
        try:
            est = estimate(
                source,
                options_from_profile(profile),
                profile=name,
                budget=vram,
                headroom=headroom,
                overhead=overhead,
            )
        except (MetadataError, KeyError) as err:
            problem("error", "model-metadata", str(err), "model", None)
            continue
        total = est.gpu_total_bytes
        approx = "" if est.exact else " (approximate)"
        if total > vram:
            problem(
                "error",
                "over-budget",
                f"estimated GPU memory {format_bytes(total)}{approx} exceeds gpu.vram "
                f"{format_bytes(vram)} by {format_bytes(total - vram)}",
                None,
                f"run `llmctl fit {name}` for the smallest changes that make it fit",
            )
        elif total > vram - headroom:
            problem(
                "warning",
                "in-headroom",
                f"estimated GPU memory {format_bytes(total)}{approx} leaves "
                f"{format_bytes(vram - total)} free, less than gpu.headroom "
                f"{format_bytes(headroom)}",
                None,
                f"run `llmctl fit {name}` to see what would leave more room",
            )
    return out
