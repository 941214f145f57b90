"""The header of a profile's hub model, for estimates, lint and the placer: the pulled file when it
is in a cache (llmctl.hub.local), else the remote header by range reads (llmctl.hub.remote),
kept by repo, commit and file so that it is read from the hub once.

With `network=False` (lint, the placer) nothing is asked of the hub: a model neither pulled nor
read before raises NotCached. huggingface_hub is imported only when the hub must be asked.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmctl.hub.local import LocalModel, find_local
from llmctl.hub.refs import parse_ref
from llmctl.llama.gguf import GGUFFile, read_gguf


@dataclass(frozen=True)
class HubHeaders:
    """The model's header (split parts joined), its mmproj sibling's, and where it came from."""

    gguf: GGUFFile
    mmproj: GGUFFile | None
    local: LocalModel | None  # None: read from the hub (or its kept copy)


def hub_headers(text: str, *, network: bool = True) -> HubHeaders:
    """The headers of hub model `text` (`hf://...`). UsageError for a malformed reference;
    HubError when the hub cannot answer; NotCached when `network=False` and it must."""
    ref = parse_ref(text)
    local = find_local(ref)
    if local is not None:
        mmproj = read_gguf(local.mmproj) if local.mmproj is not None else None
        return HubHeaders(read_gguf(local.path), mmproj, local)
    from llmctl.hub.remote import list_repo, read_model

    listing = list_repo(ref.repo, ref.revision, network=network, prefer_cache=True)
    model = read_model(ref, listing=listing, network=network)
    return HubHeaders(model.gguf, model.mmproj, None)
