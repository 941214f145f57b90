"""Profile -> llama-server command line. FLAGS is the one table of field -> flag (the README shows it).

`-m`, `-c`, `-np`, `-ngl`, `--host`, `--port` and `--alias` are always passed, so memory use does not
depend on llama-server's `--fit`, which otherwise rewrites the context and layer count.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from llmctl.llama.rpc import RPC_FLAG
from llmctl.supervisor.launch import LaunchSpec

if TYPE_CHECKING:
    from llmctl.manifest.model import Manifest, Profile, ServerConfig
    from llmctl.supervisor.slotcache import KeepKv

# The KV cache types llama-server accepts (-ctk/-ctv), and those that are quantized.
from llmctl.llama.vocab import CACHE_TYPES as CACHE_TYPES
from llmctl.llama.vocab import QUANTIZED_CACHE_TYPES as QUANTIZED_CACHE_TYPES

Kind = Literal["value", "list", "switch", "bool-pair", "tristate"]


@dataclass(frozen=True)
class Flag:
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


def _value(v: object) -> str:
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _load_mode(profile: Profile) -> str | None:
    if profile.mlock is None and profile.mmap is None:
        return None
    mmap = profile.mmap is not False
    if profile.mlock:
        return "mmap+mlock" if mmap else "mlock"
    return "mmap" if mmap else "none"


def profile_args(name: str, profile: Profile, host: str, port: int) -> list[str]:
    """The llama-server arguments (without the binary) for a profile, in table order."""
    args: list[str] = []
    explicit = profile.model_fields_set
    for f in FLAGS:
        if not f.always and f.field not in explicit:
            continue
        value = getattr(profile, f.field)
        if value is None:
            continue
        if f.kind == "value":
            args += [f.flag, _value(value)]
        elif f.kind == "list":
            if value:
                args += [f.flag, ",".join(_value(v) for v in value)]
        elif f.kind == "switch":
            if value:
                args.append(f.flag)
        elif f.kind == "bool-pair":
            args.append(f.flag if value else (f.off_flag or f.flag))
    mode = _load_mode(profile)
    if mode is not None:
        args += ["--load-mode", mode]
    args += ["--host", host, "--port", str(port), "--alias", ",".join([name, *profile.aliases])]
    args += profile.extra_args
    return args


def find_binary(manifest: Manifest | None = None) -> str | None:
    """$LLMCTL_LLAMA_SERVER, then server.binary, then llama-server on PATH; None when none is found."""
    env = os.environ.get("LLMCTL_LLAMA_SERVER")
    if env:
        return os.path.expanduser(env)
    if manifest is not None and manifest.server.binary:
        return manifest.server.binary
    import shutil  # not at the top: it pulls in bz2 and lzma, and most commands never get here

    return shutil.which("llama-server")


def launch_spec(manifest: Manifest, name: str) -> LaunchSpec:
    """Everything the supervisor needs to run profile `name` (a name or alias)."""
    pname = manifest.resolve(name)
    profile = manifest.profiles[pname]
    server = manifest.server
    host = profile.host or server.host
    port = manifest.profile_port(pname)
    binary = find_binary(manifest) or "llama-server"
    return LaunchSpec(
        profile=pname,
        argv=(binary, *profile_args(pname, profile, host, port)),
        env=dict(profile.env),
        host=host,
        port=port,
        ready_timeout=profile.ready_timeout or server.ready_timeout,
        stall_timeout=profile.stall_timeout or server.stall_timeout,
        stop_timeout=profile.stop_timeout or server.stop_timeout,
        model=profile.model,
        unset_env=secret_env_names(manifest),
        keep_kv=_keep_kv(profile, server),
    )


def _keep_kv(profile: Profile, server: ServerConfig) -> KeepKv | None:
    if not profile.keep_kv:
        return None
    from llmctl.supervisor.slotcache import KeepKv

    return KeepKv(
        max_bytes=profile.keep_kv,
        total_bytes=server.keep_kv_total,
        max_age_s=server.keep_kv_max_age,
        timeout_s=server.keep_kv_timeout,
    )


def secret_env_names(manifest: Manifest) -> tuple[str, ...]:
    """Environment variables that hold keys (router and upstreams): never passed to llama-server."""
    names = {manifest.serve.api_keys_env, "LLMCTL_API_KEYS"}
    names.update(u.api_key_env for u in manifest.serve.upstreams if u.api_key_env)
    return tuple(sorted(names))


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
