"""What can be checked of a launch's model file without loading it, before anything is stopped.

Refused here: a GGUF whose tensor data is cut short (an interrupted download), whose header
reads, so nothing else would catch it until llama-server fails, after the running servers went;
and a hub model (`hf://`) not pulled yet, which llama-server would download inside the load.
A file that is not GGUF at all, or missing, is left to llama-server's own error.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from llmctl.errors import UsageError
from llmctl.paths import is_hub_model

if TYPE_CHECKING:
    from llmctl.supervisor.launch import LaunchSpec


class ModelNotPulled(UsageError):
    """A profile's hub model is not on this machine yet."""


def not_pulled(profile: str, ref: str) -> ModelNotPulled:
    return ModelNotPulled(
        f"profile {profile!r}: {ref} is not downloaded yet; nothing was stopped",
        hint=f"run `llmctl pull {profile}` first, or add --pull to download it now",
    )


def check_model_file(spec: LaunchSpec) -> None:
    """Raise GGUFTruncated (naming the file, the profile and what to do) if the model is cut
    short, ModelNotPulled if it is a hub model not downloaded yet."""
    from llmctl.errors import GGUFError
    from llmctl.llama.gguf import GGUFTruncated, read_gguf, split_paths

    if not spec.model:
        return
    if is_hub_model(spec.model):  # launch_spec keeps the reference only when nothing is pulled
        raise not_pulled(spec.profile, spec.model)
    path = Path(spec.model)
    if not (split_paths(path) or [path])[0].is_file():
        return
    try:
        read_gguf(path)
    except GGUFTruncated as err:
        raise GGUFTruncated(
            f"profile {spec.profile!r}: {err.message}; nothing was stopped", hint=err.hint
        ) from None
    except GGUFError:
        return
