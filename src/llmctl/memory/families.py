"""One declarative record per architecture family: which caches llama.cpp gives it and how its
layers split between them.

The rules follow llama.cpp's `llama_model::create_memory` (which memory an architecture gets),
`load_arch_hparams` (sliding-window patterns, recurrent layers) and the per-architecture graph
builders. Adding an architecture means adding it to one record here.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

Memory = Literal["attention", "none", "recurrent", "hybrid"]
# how the recurrent layers of a hybrid are found
RecurrentLayers = Literal["all", "zero_kv", "zero_kv_no_ff", "interval", "none"]
# which layers of a hybrid have an attention cache
AttentionLayers = Literal["not_recurrent", "all", "not_recurrent_no_ff"]
# which layers keep their own KV (the others reuse earlier layers')
KvLayers = Literal["all", "first_20", "minus_shared"]


class SwaRule(NamedTuple):
    """How an architecture marks its sliding-window layers (llama.cpp `load_arch_hparams`)."""

    pattern: int | None  # default period; None = a bool array is required
    dense_first: bool = False
    window: int | None = None  # default window when the key is absent (None: key required)
    needs_window: bool = False  # SWA only when `sliding_window` is present and > 0
    off_when_zero: bool = False  # llama4: a window of 0 disables SWA
    force_window: int | None = None  # smallthinker: this window whatever the key says
    only_with_layers: int | None = None  # exaone4: only the 64-layer model interleaves windows


class Family(NamedTuple):
    """What the estimate needs to know about an architecture beyond its GGUF keys."""

    memory: Memory = "attention"
    swa: SwaRule | None = None
    recurrent_layers: RecurrentLayers = "none"
    attention_layers: AttentionLayers = "not_recurrent"
    interval_default: int = 4  # full_attention_interval when the key is absent
    kv_layers: KvLayers = "all"
    swa_on_attention_layers: bool = False  # lfm2: a window makes every attention layer SWA
    linear_attention_state: bool = False  # minimax-01: head_k^2 per head of state
    output_prefixes: tuple[str, ...] = ("output",)  # tensors of the output layer
    exact: bool = True  # False: caches of its own, estimated with the generic rules


PLAIN = Family()
_NO_KV = Family(memory="none")
_RECURRENT = Family(memory="recurrent", recurrent_layers="all")
_HYBRID_ZERO_KV = Family(memory="hybrid", recurrent_layers="zero_kv")
_HYBRID_INTERVAL = Family(memory="hybrid", recurrent_layers="interval")
_SPECIAL = Family(exact=False)


def _swa(pattern: int | None, **kw: object) -> Family:
    return Family(swa=SwaRule(pattern, **kw))  # type: ignore[arg-type]


def _group(family: Family, *archs: str) -> dict[str, Family]:
    return dict.fromkeys(archs, family)


FAMILIES: dict[str, Family] = {
    # one attention cache, every layer (llama.cpp's create_memory default)
    **_group(
        PLAIN,
        *[
            "llama",
            "deci",
            "falcon",
            "grok",
            "gpt2",
            "gptj",
            "gptneox",
            "mpt",
            "baichuan",
            "starcoder",
            "refact",
            "bloom",
            "stablelm",
            "qwen",
            "qwen2",
            "qwen2moe",
            "qwen2vl",
            "qwen3",
            "qwen3moe",
            "qwen3vl",
            "qwen3vlmoe",
            "phi2",
            "phi3",
            "phimoe",
            "plamo",
            "codeshell",
            "orion",
            "internlm2",
            "minicpm",
            "minicpm3",
            "gemma",
            "starcoder2",
            "xverse",
            "command-r",
            "dbrx",
            "olmo",
            "olmoe",
            "openelm",
            "arctic",
            "deepseek",
            "deepseek2",
            "chatglm",
            "glm4",
            "glm4moe",
            "bitnet",
            "jais",
            "nemotron",
            "exaone",
            "granite",
            "granitemoe",
            "chameleon",
            "plm",
            "bailingmoe",
            "bailingmoe2",
            "dots1",
            "arcee",
            "ernie4_5",
            "ernie4_5-moe",
            "hunyuan-moe",
            "hunyuan-dense",
            "smollm3",
            "seed_oss",
            "grovemoe",
            "apertus",
            "minimax-m2",
            "mistral3",
            "mistral4",
            "llama-embed",
        ],
    ),
    # sliding-window layers: a second, window-sized cache
    "gemma2": _swa(2, window=4096),
    "gemma3": _swa(6, needs_window=True),
    "gemma3n": Family(swa=SwaRule(5), kv_layers="first_20"),
    "gemma4": Family(swa=SwaRule(None), kv_layers="minus_shared"),
    "cohere2": _swa(4),
    "cohere2moe": _swa(4, dense_first=True),
    "gpt-oss": _swa(2),
    "llama4": _swa(4, window=8192, off_when_zero=True),
    "olmo2": _swa(4, needs_window=True),
    "plamo3": _swa(8, needs_window=True),
    "afmoe": _swa(4, needs_window=True),
    "mellum": _swa(4, needs_window=True),
    "laguna": _swa(4, dense_first=True, needs_window=True),
    "exaone-moe": _swa(4, window=128),
    "exaone4": _swa(4, window=4096, only_with_layers=64),
    "muse-glimmer": _swa(4),
    "granite_swa": _swa(None),
    "maple": _swa(None),
    "mimo2": _swa(None),
    "step35": _swa(None),
    "spark2_5": _swa(None),
    "smallthinker": _swa(4, dense_first=True, needs_window=True, force_window=4096),
    # no KV cache: encoders and diffusion models
    **_group(
        _NO_KV,
        *[
            "bert",
            "jina-bert-v2",
            "jina-bert-v3",
            "nomic-bert",
            "nomic-bert-moe",
            "neo-bert",
            "eurobert",
            "wavtokenizer-dec",
            "modern-bert",
            "gemma-embedding",
            "dream",
            "llada",
            "llada-moe",
            "rnd1",
            "t5encoder",
        ],
    ),
    # recurrent state only
    **_group(_RECURRENT, "mamba", "mamba2", "rwkv6", "rwkv6qwen2", "rwkv7", "arwkv7"),
    # hybrids: an attention cache for the attention layers, then the recurrent state
    **_group(_HYBRID_ZERO_KV, "jamba", "plamo2", "granitehybrid", "kimi-linear"),
    **_group(
        Family(
            memory="hybrid",
            recurrent_layers="zero_kv",
            swa_on_attention_layers=True,
            output_prefixes=("output", "token_embd_norm"),
        ),
        "lfm2",
        "lfm2moe",
    ),
    "falcon-h1": Family(memory="hybrid", recurrent_layers="all", attention_layers="all"),
    **_group(
        Family(
            memory="hybrid",
            recurrent_layers="zero_kv_no_ff",
            attention_layers="not_recurrent_no_ff",
        ),
        "nemotron_h",
        "nemotron_h_moe",
    ),
    **_group(_HYBRID_INTERVAL, "qwen3next", "qwen35", "qwen35moe"),
    "minimax-01": Family(
        memory="hybrid",
        recurrent_layers="interval",
        interval_default=8,
        linear_attention_state=True,
    ),
    # caches of their own (sparse-attention indexers, compressed caches)
    **_group(
        _SPECIAL,
        *[
            "minimax-m3",
            "glm-dsa",
            "deepseek32",
            "hy_v4",
            "dots3note",
            "deepseek4",
            "qwen4exp",
            "bailingmoe3",
            "kimi-k3",
            "dflash",
            "gemma4-assistant",
            "eagle3",
            "t5",
        ],
    ),
    "glm5-next": Family(recurrent_layers="zero_kv", exact=False),
}


def family(arch: str) -> tuple[Family, bool]:
    """The record of `arch`, and whether llmctl knows it (unknown: a plain transformer)."""
    fam = FAMILIES.get(arch)
    if fam is None:
        return PLAIN, False
    return fam, fam.exact
