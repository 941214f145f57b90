"""Lint: what the configured llama-server build lacks of what the manifest uses, said once per
binary as a warning with the build (llmctl.supervisor.features): no `--log-jsonl` (launches log
text, the engine's plan read from its text table), no slot token counts in `/slots` (keep_kv saves nothing)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmctl.manifest.problems import problem

if TYPE_CHECKING:
    from llmctl.errors import Problem
    from llmctl.manifest.model import Manifest

HINTS = {
    "log-jsonl": "a llama.cpp build that lists --log-jsonl in --help (the pinned one does)",
    "slot-tokens": "a llama.cpp build whose /slots reports n_prompt_tokens, or drop keep_kv",
}


def feature_problems(m: Manifest) -> list[Problem]:
    """One warning per feature the configured llama-server lacks (none when it cannot be run)."""
    from llmctl.llama.binary import find_binary
    from llmctl.supervisor.features import binary_gaps

    binary = find_binary(m.server.binary)
    if binary is None:
        return []
    keep_kv = tuple(n for n, p in m.profiles.items() if getattr(p, "keep_kv", None))
    out = []
    for gap in binary_gaps(binary, keep_kv):
        first = gap.profiles[0] if gap.profiles else None
        out.append(
            problem(
                m,
                "warning",
                f"build-lacks-{gap.feature}",
                f"{binary}: {gap.message}",
                first,
                "keep_kv" if first else None,
                HINTS[gap.feature],
                # at server.binary when the manifest names it
                path=("server", "binary") if not first and m.server.binary else None,
            )
        )
    return out
