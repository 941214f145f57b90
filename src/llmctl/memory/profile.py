"""One profile's memory estimate, against the manifest's budget: the one function every surface
uses (`llmctl estimate`, lint, the placer, the router's `/models/available`, the dashboard).

The budget is `manifest.gpu_budget`: the single GPU of `gpu: {vram: ...}`, or the first GPU of a
device list (a per-device split is `placement`'s job, from the same estimate). No GPU budget
means no GPU: every figure is host memory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llmctl.manifest.model import Manifest
    from llmctl.memory.estimate import Estimate, ModelSource


def estimate_profile(
    manifest: Manifest, name: str, *, budget: bool = True, source: ModelSource | None = None
) -> Estimate | None:
    """The estimate of profile `name` (an alias is resolved); None when its model is neither on
    this machine nor described by a `metadata:` block.

    With `budget=False`, the estimate placement splits over devices itself: no budget, no
    backend overhead (each device adds its own), the main model alone.
    `source` is the model's header when the caller has read it already.
    Raises GGUFError for an unreadable model file and MetadataError for missing metadata.
    """
    from llmctl.memory.estimate import (
        estimate,
        extra_sources,
        options_from_profile,
        source_for_profile,
    )

    name = manifest.resolve(name)
    profile = manifest.profiles[name]
    source = source or source_for_profile(profile)
    if source is None:
        return None
    opts = options_from_profile(profile)
    if not budget:
        return estimate(source, opts, profile=name, overhead=0)
    gpu = manifest.gpu_budget
    mmproj, draft = extra_sources(profile)
    return estimate(
        source,
        opts,
        profile=name,
        budget=gpu.vram,
        headroom=gpu.headroom,
        overhead=gpu.overhead,
        gpu=gpu.vram is not None,
        mmproj=mmproj,
        draft=draft,
    )
