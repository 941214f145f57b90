"""Lint rule `chat-template`: a chat profile whose model has no chat template of its own.

A base model (no `tokenizer.chat_template` in its GGUF) still answers `/v1/chat/completions`:
llama-server falls back to a generic template, and chat UIs show text the model was never trained
to continue. Said once per profile, with what to do; a profile that names its own template, or
serves embeddings or reranking, is not concerned.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmctl.errors import LlmctlError, Problem
from llmctl.manifest.problems import problem

if TYPE_CHECKING:
    from llmctl.manifest.model import Manifest

TEMPLATE_KEY = "tokenizer.chat_template"


def template_problems(manifest: Manifest) -> list[Problem]:
    """A warning per chat profile whose local GGUF carries no chat template."""
    from llmctl.memory.profile import source_for_profile

    out: list[Problem] = []
    for name, profile in manifest.profiles.items():
        if profile.embedding or profile.reranking:
            continue
        if profile.chat_template or profile.chat_template_file:
            continue
        try:
            # nothing asked of the hub: a hub model's pulled file or the header read before
            source = source_for_profile(profile, network=False)
        except LlmctlError:
            continue  # the memory rules report an unreadable file
        if source is None or source.tensors is None or TEMPLATE_KEY in source.metadata:
            continue
        out.append(
            problem(
                manifest,
                "warning",
                "chat-template",
                "the model has no chat template (a base model?): chat requests get llama-server's "
                "generic template and the answers read as noise",
                name,
                "model",
                "use /completion or /infill for a base model, or name a template: "
                "chat_template: chatml (or chat_template_file: PATH)",
            )
        )
    return out
