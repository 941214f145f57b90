"""llama.cpp's vocabulary, stated once: KV cache types, on/off/auto spellings.

Every other module (the manifest schema, the command-line reader, the estimate, lint, fit) takes
these from here. Sizes come from the ggml type table in `llmctl.llama.gguf`.
"""

from __future__ import annotations

import typing
from typing import Literal

from llmctl.llama.gguf import GGMLType, ggml_type

# `-ctk` / `-ctv` values llama-server accepts (common/arg.cpp kv_cache_types)
CacheType = Literal["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1"]
CACHE_TYPES: tuple[str, ...] = typing.get_args(CacheType)
QUANTIZED_CACHE_TYPES = frozenset(t for t in CACHE_TYPES if ggml_type(t).block_size > 1)

FlashAttn = Literal["on", "off", "auto"]
# common/arg.cpp: -fa accepts on/off/auto and their synonyms; YAML 1.1 adds yes/no
ON_SPELLINGS = frozenset({"on", "enabled", "true", "1", "yes"})
OFF_SPELLINGS = frozenset({"off", "disabled", "false", "0", "no"})
AUTO_SPELLINGS = frozenset({"auto", "-1"})


def cache_type(name: str) -> GGMLType:
    """The ggml type of a cache type name (KeyError when llama-server does not accept it)."""
    if name.lower() not in CACHE_TYPES:
        raise KeyError(name)
    return ggml_type(name.lower())


def cache_block_size(name: str) -> int:
    """Elements per block: a quantized cache needs head sizes that are multiples of it."""
    return cache_type(name).block_size


def bytes_per_element(name: str) -> float:
    t = cache_type(name)
    return t.type_size / t.block_size


def tristate(value: object) -> FlashAttn | None:
    """on/off/auto from any spelling llama-server accepts and from YAML booleans; None if none."""
    if value is True:
        return "on"
    if value is False:
        return "off"
    if isinstance(value, int) and value in (0, 1, -1):
        return "on" if value == 1 else "off" if value == 0 else "auto"
    if isinstance(value, str):
        v = value.strip().lower()
        if v in ON_SPELLINGS:
            return "on"
        if v in OFF_SPELLINGS:
            return "off"
        if v in AUTO_SPELLINGS:
            return "auto"
    return None


# --- tensor placement overrides (common/common.h, common/arg.cpp) ---------------------------------

# the MoE expert tensors `--cpu-moe` and `--n-cpu-moe N` keep on the CPU
FFN_EXPS_REGEX = r"\.ffn_(up|down|gate|gate_up)_(ch|)exps"
CPU_BUFFER = "CPU"


def n_cpu_moe_patterns(n: int) -> list[str]:
    """`--n-cpu-moe N`: one pattern per block 0..N-1 (llm_add_n_cpu_ffn_overrides)."""
    return [rf"blk\.{i}{FFN_EXPS_REGEX}" for i in range(n)]


def parse_overrides(value: str) -> list[tuple[str, str]]:
    """`-ot PATTERN=BUFFER,...` as (pattern, buffer type) pairs, in order (ValueError if an
    item has no `=`). Patterns are regular expressions searched in tensor names."""
    out: list[tuple[str, str]] = []
    for item in value.split(","):
        pattern, eq, buffer = item.partition("=")
        if not eq or not pattern:
            raise ValueError(f"{item!r} is not PATTERN=BUFFER (e.g. 'exps=CPU')")
        out.append((pattern, buffer))
    return out


# --- speculative decoding and projectors ------------------------------------------------------

# common/speculative.cpp: a draft whose vocabulary size differs by more than this is refused
SPEC_VOCAB_MAX_SIZE_DIFFERENCE = 128
