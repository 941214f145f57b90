"""One profile's memory estimate, against the manifest's budget: the one function every surface
uses (`llmctl estimate`, lint, the placer, the router's `/models/available`, the dashboard).

The budget is `manifest.gpu_budget`: the single GPU of `gpu: {vram: ...}`, or the first GPU of a
device list (a per-device split is `placement`'s job, from the same estimate). No GPU budget
means no GPU: every figure is host memory.

A profile whose model is on the Hugging Face hub (`model: hf://...`) is estimated from the pulled
file, else from its remote header (llmctl.hub.source). Only with `network=True` (the commands
asked for an estimate: `estimate`, `fit`) is the hub asked; otherwise (lint, the placer, the
router) a model neither pulled nor read before has no source.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmctl.paths import is_hub_model

if TYPE_CHECKING:
    from llmctl.manifest.model import Manifest
    from llmctl.memory.builds import BuildRules
    from llmctl.memory.estimate import Estimate, ModelSource, ProfileLike


def build_rules(manifest: Manifest, build: int | None = None) -> BuildRules:
    """The llama.cpp rules estimates follow: `build` (--llama-build), else the manifest's
    `server.llama_build`, else the configured llama-server's --version (cached per binary), else
    the newest rules."""
    from llmctl.memory.builds import rules_for

    if build:
        return rules_for(build, "flag")
    pinned = getattr(manifest.server, "llama_build", None)
    if pinned:
        return rules_for(pinned, "manifest")
    from llmctl.llama.binary import find_binary

    return binary_rules(find_binary(manifest.server.binary))


_UNSAID: set[tuple[str, ...]] = set()  # binaries whose --version named no build, this process


def binary_rules(binary: str | None) -> BuildRules:
    """The rules of the build `binary --version` names (cached per binary); the newest when
    there is no binary or it does not say (asked once per process: not again per profile)."""
    from llmctl.llama.binary import file_identity, llama_build
    from llmctl.memory.builds import rules_for

    if not binary:
        return rules_for(None)
    ident = (binary, *(file_identity(binary) or ()))
    found = None if ident in _UNSAID else llama_build(binary, timeout=10.0)
    if found is None:
        _UNSAID.add(ident)
    return rules_for(found.build if found else None, "binary")


def estimate_profile(
    manifest: Manifest,
    name: str,
    *,
    budget: bool = True,
    source: ModelSource | None = None,
    network: bool = False,
    rules: BuildRules | None = None,
) -> Estimate | None:
    """The estimate of profile `name` (an alias is resolved); None when its model is neither on
    this machine nor described by a `metadata:` block.

    With `budget=False`, the estimate placement splits over devices itself: no budget, no
    backend overhead (each device adds its own), the main model alone.
    `source` is the model's header when the caller has read it already; `rules` the llama.cpp
    build's (default: `build_rules(manifest)`).
    Raises GGUFError for an unreadable model file and MetadataError for missing metadata.
    """
    from llmctl.memory.builds import backend_of
    from llmctl.memory.estimate import estimate, options_from_profile

    name = manifest.resolve(name)
    profile = manifest.profiles[name]
    source = source or source_for_profile(profile, network=network)
    if source is None:
        return None
    opts = options_from_profile(profile)
    rules = rules or build_rules(manifest)
    if not budget:
        return estimate(source, opts, profile=name, overhead=0, rules=rules)
    gpu = manifest.gpu_budget
    devices = manifest.gpu if isinstance(manifest.gpu, list) else []
    names = [d.name for d in devices if d.name and d.name.upper() != "CPU" and d.rpc is None]
    mmproj, draft = extra_sources(profile, network=network)
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
        rules=rules,
        backend=backend_of(names[0]) if names else None,
    )


def source_for_profile(profile: ProfileLike, *, network: bool = False) -> ModelSource | None:
    """llmctl.memory.estimate's source_for_profile, and a hub model's header: the pulled file,
    else the remote header, else (`network=False`, never read) its `metadata:` block or None.
    Raises HubError when the hub cannot answer, GGUFError for an unreadable file."""
    from llmctl.memory import estimate

    if is_hub_model(profile.model):
        from llmctl.hub.remote import NotCached
        from llmctl.hub.source import hub_headers

        try:
            headers = hub_headers(profile.model, network=network)
        except NotCached:
            pass  # the `metadata:` block, if any
        else:
            source = estimate.ModelSource.from_gguf(headers.gguf)
            if headers.local is None:  # named by its reference (a Path would fold its //)
                source.path = profile.model
            return source
    return estimate.source_for_profile(profile)


def extra_sources(
    profile: ProfileLike, *, network: bool = False
) -> tuple[ModelSource | None, ModelSource | None]:
    """The profile's projector and draft model; a hub model without its own `mmproj` has its
    repo's mmproj sibling (as `-hf` loads it)."""
    from llmctl.memory import estimate

    mmproj, draft = estimate.extra_sources(profile)
    if getattr(profile, "mmproj", None) is None and is_hub_model(profile.model):
        from llmctl.hub.remote import NotCached
        from llmctl.hub.source import hub_headers

        try:
            sibling = hub_headers(profile.model, network=network).mmproj
        except NotCached:
            sibling = None
        mmproj = estimate.ModelSource.from_gguf(sibling) if sibling is not None else None
    return mmproj, draft
