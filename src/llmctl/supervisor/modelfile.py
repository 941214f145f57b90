"""What can be checked of a launch's model file without loading it, before anything is stopped.

Only a GGUF whose tensor data is cut short (an interrupted download) is refused here: its header
reads, so nothing else would catch it until llama-server fails, after the running servers went.
A file that is not GGUF at all, or missing, is left to llama-server's own error.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llmctl.supervisor.launch import LaunchSpec


def check_model_file(spec: LaunchSpec) -> None:
    """Raise GGUFTruncated (naming the file, the profile and what to do) if the model is cut short."""
    from llmctl.errors import GGUFError
    from llmctl.llama.gguf import GGUFTruncated, read_gguf, split_paths

    if not spec.model:
        return
    if spec.model.startswith("hf://"):  # hub/refs.py SCHEME; launch_spec found no local copy
        from llmctl.errors import UsageError

        raise UsageError(
            f"profile {spec.profile!r}: its model {spec.model} is not downloaded yet; "
            "nothing was stopped",
            hint=f"`llmctl pull {spec.profile}` downloads it once (resumable, checked)",
        )
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
