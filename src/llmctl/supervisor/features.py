"""What the configured llama-server build lacks of what llmctl uses (llmctl.memory.builds
`feature_gaps`), asked of the binary (its cached `--help` and `--version`) and said once per
binary in a process: a warning in `llmctl serve`'s log rather than a feature skipped silently."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llmctl.memory.builds import FeatureGap

_told: set[tuple[str, str]] = set()
_lock = threading.Lock()


def binary_gaps(binary: str, keep_kv: tuple[str, ...] = ()) -> list[FeatureGap]:
    """The features `binary` lacks (none when it cannot be asked)."""
    from llmctl.llama.binary import known_flags, llama_build
    from llmctl.memory.builds import feature_gaps

    flags = known_flags(binary)
    if flags is None or "--ctx-size" not in flags:
        return []  # not llama-server's help: nothing to say about its build
    found = llama_build(binary, timeout=10.0)
    return feature_gaps(flags, found.build if found else None, keep_kv)


def say_once(binary: str, keep_kv: tuple[str, ...] = ()) -> list[FeatureGap]:
    """Log each feature `binary` lacks the first time it matters in this process; returns the
    gaps logged now."""
    from llmctl.llama.binary import file_identity

    ident = "\0".join(file_identity(binary) or [binary])
    said = []
    for gap in binary_gaps(binary, keep_kv):
        with _lock:
            if (ident, gap.feature) in _told:
                continue
            _told.add((ident, gap.feature))
        import logging  # only when there is something to say

        logging.getLogger("llmctl.supervisor").warning("%s", gap.message)
        said.append(gap)
    return said
