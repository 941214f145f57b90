"""The one table of profile field -> llama-server flag (FLAGS; the README shows it), the flags llmctl
manages itself (MANAGED), and every spelling of each. A table only: supervisor/launch.py composes a
profile's command line from it. Imports nothing of llmctl above llama/.

`-m`, `-c`, `-np`, `-ngl`, `--host`, `--port` and `--alias` are always passed, so memory use does not
depend on llama-server's `--fit`, which otherwise rewrites the context and layer count.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

from llmctl.llama.rpc import RPC_FLAG

# The KV cache types llama-server accepts (-ctk/-ctv), and those that are quantized.
from llmctl.llama.vocab import CACHE_TYPES as CACHE_TYPES
from llmctl.llama.vocab import QUANTIZED_CACHE_TYPES as QUANTIZED_CACHE_TYPES

Kind = Literal["value", "list", "switch", "bool-pair", "tristate"]


class Flag(NamedTuple):
    field: str
    flag: str  # the spelling llmctl passes
    kind: Kind
    spellings: tuple[str, ...]  # every spelling llama-server accepts (for extra_args checks)
    off_flag: str | None = None  # bool-pair: the spelling for False
    always: bool = False  # passed even when the profile does not set the field


FLAGS: tuple[Flag, ...] = (
    Flag("model", "-m", "value", ("-m", "--model"), always=True),
    Flag("ctx_size", "-c", "value", ("-c", "--ctx-size"), always=True),
    Flag("parallel", "-np", "value", ("-np", "--parallel"), always=True),
    Flag("n_gpu_layers", "-ngl", "value", ("-ngl", "--n-gpu-layers", "--gpu-layers"), always=True),
    # before any --device (the plan's): llama-server names RPC devices only once --rpc is read
    Flag("rpc", RPC_FLAG, "list", (RPC_FLAG,)),
    Flag(
        "kv_unified",
        "-kvu",
        "bool-pair",
        ("-kvu", "--kv-unified", "-no-kvu", "--no-kv-unified"),
        off_flag="-no-kvu",
    ),
    Flag("swa_full", "--swa-full", "switch", ("--swa-full",)),
    Flag("cache_type_k", "-ctk", "value", ("-ctk", "--cache-type-k")),
    Flag("cache_type_v", "-ctv", "value", ("-ctv", "--cache-type-v")),
    Flag("flash_attn", "-fa", "value", ("-fa", "--flash-attn")),
    Flag("batch_size", "-b", "value", ("-b", "--batch-size")),
    Flag("ubatch_size", "-ub", "value", ("-ub", "--ubatch-size")),
    Flag("threads", "-t", "value", ("-t", "--threads")),
    Flag("threads_batch", "-tb", "value", ("-tb", "--threads-batch")),
    Flag("no_kv_offload", "-nkvo", "switch", ("-nkvo", "--no-kv-offload", "-kvo", "--kv-offload")),
    Flag("n_cpu_moe", "--n-cpu-moe", "value", ("-ncmoe", "--n-cpu-moe")),
    Flag("override_tensor", "-ot", "value", ("-ot", "--override-tensor")),
    Flag("split_mode", "-sm", "value", ("-sm", "--split-mode")),
    Flag("tensor_split", "-ts", "value", ("-ts", "--tensor-split")),
    Flag("main_gpu", "-mg", "value", ("-mg", "--main-gpu")),
    Flag("jinja", "--jinja", "bool-pair", ("--jinja", "--no-jinja"), off_flag="--no-jinja"),
    Flag("chat_template", "--chat-template", "value", ("--chat-template",)),
    Flag("chat_template_file", "--chat-template-file", "value", ("--chat-template-file",)),
    Flag("reasoning_format", "--reasoning-format", "value", ("--reasoning-format",)),
    Flag("embedding", "--embedding", "switch", ("--embedding", "--embeddings")),
    Flag("pooling", "--pooling", "value", ("--pooling",)),
    Flag("reranking", "--reranking", "switch", ("--rerank", "--reranking")),
    Flag("mmproj", "--mmproj", "value", ("-mm", "--mmproj")),
    Flag("model_draft", "-md", "value", ("-md", "--model-draft", "--spec-draft-model")),
    Flag("temp", "--temp", "value", ("--temp", "--temperature")),
    Flag("top_k", "--top-k", "value", ("--top-k",)),
    Flag("top_p", "--top-p", "value", ("--top-p",)),
    Flag("min_p", "--min-p", "value", ("--min-p",)),
    Flag("repeat_penalty", "--repeat-penalty", "value", ("--repeat-penalty",)),
    Flag("seed", "-s", "value", ("-s", "--seed")),
    Flag("metrics", "--metrics", "switch", ("--metrics",)),
)
"""Every profile field that becomes a flag. mlock/mmap become `--load-mode` (see `_load_mode`)."""

# Set by llmctl from the manifest; a profile's extra_args must not repeat them.
# llama-server's own download of a Hugging Face model (`-hf org/repo[:QUANT]`, `-hff FILE`)
HF_REPO_FLAG = "-hf"
HF_FILE_FLAG = "-hff"

MANAGED: dict[str, str] = {
    "--host": "host (server.host or the profile's host)",
    "--port": "port (server.port or the profile's port)",
    "-a": "the profile name and aliases",
    "--alias": "the profile name and aliases",
    "-lm": "mlock / mmap",
    "--load-mode": "mlock / mmap",
    "--mlock": "mlock",
    "--no-mmap": "mmap: false",
    "--mmap": "mmap",
}


def flag_owner(arg: str) -> str | None:
    """The field (or managed setting) that owns this llama-server flag spelling, if any."""
    name = arg.split("=", 1)[0]
    for f in FLAGS:
        if name in f.spellings:
            return f.field
    return MANAGED.get(name)


def flags_table() -> str:
    """The field -> flag table as Markdown (the README holds a copy; a test keeps them equal)."""
    rows = ["| field | llama-server flag | passed |", "| --- | --- | --- |"]
    for f in FLAGS:
        if f.kind == "bool-pair":
            flag = f"`{f.flag}` / `{f.off_flag}`"
        elif f.kind == "switch":
            flag = f"`{f.flag}` when true"
        elif f.kind == "list":
            flag = f"`{f.flag} A,B,...`"
        else:
            flag = f"`{f.flag} VALUE`"
        rows.append(f"| `{f.field}` | {flag} | {'always' if f.always else 'when set'} |")
    rows.append("| `mlock`, `mmap` | `--load-mode mmap+mlock / mlock / mmap / none` | when set |")
    rows.append(
        "| `host`, `port` | `--host`, `--port` (else `server.host`, `server.port`) | always |"
    )
    rows.append("| profile name, `aliases` | `--alias NAME,ALIAS...` | always |")
    rows.append("| `extra_args` | appended verbatim, last | when set |")
    return "\n".join(rows)
