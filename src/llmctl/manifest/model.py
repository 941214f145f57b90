"""The profiles.yaml manifest: its schema, discovery, loading and validation.

`check_manifest(path)` returns every problem it finds (for lint); `load_manifest(path)` returns a
usable Manifest or raises ManifestError with the errors. Positions are 1-based file:line:column.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

from llmctl.errors import ManifestError, Problem
from llmctl.llama import rpc as llama_rpc
from llmctl.llama.vocab import CACHE_TYPES as CACHE_TYPES
from llmctl.llama.vocab import QUANTIZED_CACHE_TYPES as QUANTIZED_CACHE_TYPES
from llmctl.llama.vocab import CacheType, tristate
from llmctl.manifest.discover import expand_path as expand_path
from llmctl.manifest.discover import find_manifest as find_manifest
from llmctl.manifest.loaded import ManifestOps, usable
from llmctl.manifest.sizes import parse_duration, parse_size
from llmctl.manifest.yamldoc import Path_, Source, YamlLoadError, load_yaml


def _tristate(value: object) -> object:
    """on/off/auto from any spelling llama-server accepts, and from YAML 1.1 booleans."""
    return tristate(value) or value


_CTX = re.compile(r"^\s*([0-9]+)\s*([kK])?\s*$")


def _ctx_size(value: object) -> object:
    """8192, "8192", "8K", "128k" (K = 1024)."""
    if isinstance(value, str):
        m = _CTX.match(value)
        if m:
            return int(m.group(1)) * (1024 if m.group(2) else 1)
        raise ValueError(f"cannot read {value!r} as a context size; write 8192 or 8K")
    return value


def _parallel(value: object) -> object:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return -1
    return value


def _layers(value: object) -> object:
    if isinstance(value, str) and value.strip().lower() in ("all", "auto"):
        return -1
    return value


def _check_parallel(value: int) -> int:
    if value == 0 or value < -1:
        raise ValueError("parallel must be a number of slots (1 or more) or auto")
    return value


_SIZE_SCHEMA = {
    "anyOf": [
        {"type": "integer", "minimum": 0},
        {"type": "string", "pattern": r"^\s*[0-9]+(\.[0-9]+)?\s*([kKmMgGtT]i?[bB]?|[bB])?\s*$"},
    ]
}
_DURATION_SCHEMA = {
    "anyOf": [
        {"type": "number", "minimum": 0},
        {"type": "string", "pattern": r"^\s*[0-9]+(\.[0-9]+)?\s*(ms|s|m|h)?\s*$"},
    ]
}

Size = Annotated[int, BeforeValidator(parse_size), WithJsonSchema(_SIZE_SCHEMA)]
Duration = Annotated[float, BeforeValidator(parse_duration), WithJsonSchema(_DURATION_SCHEMA)]
TriState = Annotated[
    Literal["on", "off", "auto"],
    BeforeValidator(_tristate),
    WithJsonSchema({"enum": ["on", "off", "auto", True, False]}),
]
CtxSize = Annotated[
    int,
    BeforeValidator(_ctx_size),
    Field(ge=0),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": r"^[0-9]+[kK]?$"},
            ]
        }
    ),
]
Parallel = Annotated[
    int,
    BeforeValidator(_parallel),
    AfterValidator(_check_parallel),
    WithJsonSchema(
        {"anyOf": [{"type": "integer", "minimum": 1}, {"const": -1}, {"const": "auto"}]}
    ),
]
Layers = Annotated[
    int,
    BeforeValidator(_layers),
    Field(ge=-1),
    WithJsonSchema({"anyOf": [{"type": "integer", "minimum": -1}, {"enum": ["all", "auto"]}]}),
]
Port = Annotated[int, Field(ge=1, le=65535)]

_PORT_RANGE = re.compile(r"^\s*([0-9]{1,5})\s*-\s*([0-9]{1,5})\s*$")


def _port_range(value: object) -> object:
    """ "8100-8199" -> (8100, 8199)."""
    if isinstance(value, str):
        m = _PORT_RANGE.match(value)
        if not m:
            raise ValueError(f"cannot read {value!r} as a port range; write 8100-8199")
        value = (int(m.group(1)), int(m.group(2)))
    if isinstance(value, (list, tuple)) and len(value) == 2:
        lo, hi = value
        if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi <= 65535):
            raise ValueError(f"a port range goes from low to high within 1-65535; got {lo}-{hi}")
        return (lo, hi)
    return value


PortRange = Annotated[
    tuple[int, int],
    BeforeValidator(_port_range),
    WithJsonSchema({"type": "string", "pattern": r"^\s*[0-9]{1,5}\s*-\s*[0-9]{1,5}\s*$"}),
]
_DEVICE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def _device_name(value: object) -> object:
    if isinstance(value, str) and not _DEVICE_NAME.match(value):
        raise ValueError(f"{value!r} is not a device name; write CUDA0, Vulkan1, Metal or CPU")
    return value


DeviceName = Annotated[
    str,
    AfterValidator(_device_name),
    WithJsonSchema({"type": "string", "pattern": _DEVICE_NAME.pattern}),
]

_ENDPOINT_SCHEMA = {
    "type": "string",
    "pattern": r"^\s*[A-Za-z0-9][A-Za-z0-9.\-_]*:[0-9]{1,5}\s*$",
}
RpcEndpoint = Annotated[
    str, AfterValidator(llama_rpc.parse_endpoint), WithJsonSchema(_ENDPOINT_SCHEMA)
]


def _rpc_list(value: object) -> object:
    """`rpc: a:1,b:2` (as llama-server's --rpc takes it) or one endpoint: a list."""
    if isinstance(value, str):
        return [p for p in value.split(",") if p.strip()] or [value]
    return value


KEEP_KV_DEFAULT_CAP = 8 * 1024**3


def _keep_kv(value: object) -> object:
    """true -> the default cap, false/null -> 0 (off), a size -> that cap in bytes."""
    if value is True:
        return KEEP_KV_DEFAULT_CAP
    if value is False or value is None:
        return 0
    return parse_size(value)


KeepKvCap = Annotated[
    int,
    BeforeValidator(_keep_kv),
    WithJsonSchema({"anyOf": [{"type": "boolean"}, *_SIZE_SCHEMA["anyOf"]]}),
]


def _allowed_host(value: str) -> str:
    """A `serve.allowed_hosts` entry: a host name, `*.suffix`, or `*` (any)."""
    text = value.strip()
    if not text:
        raise ValueError("an empty host name")
    if "://" in text or "/" in text:
        raise ValueError(f"{value!r} is a URL; give the host name alone, e.g. llm.example.com")
    if any(c.isspace() for c in text):
        raise ValueError(f"{value!r} contains a space")
    return text


def _cors_origin(value: str) -> str:
    """A `serve.cors_origins` entry: scheme://host[:port] (with `*` globs), `*` or `null`."""
    text = value.strip().rstrip("/")
    if text in ("*", "null"):
        return text
    scheme, sep, rest = text.partition("://")
    if not sep or not scheme or not rest:
        raise ValueError(
            f"{value!r} is not an origin; write scheme://host[:port], e.g. "
            "https://chat.example.com or http://192.168.1.20:3000 (or * for any)"
        )
    if "/" in rest:
        raise ValueError(f"{value!r} has a path; an origin is scheme://host[:port] alone")
    return text


AllowedHost = Annotated[str, AfterValidator(_allowed_host)]
CorsOrigin = Annotated[str, AfterValidator(_cors_origin)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=False)


class ServerConfig(_Strict):
    """How llama-server is run."""

    binary: str | None = Field(
        None, description="Path of llama-server (else $LLMCTL_LLAMA_SERVER, then PATH)."
    )
    host: str = Field("127.0.0.1", description="Address llama-server binds.")
    port: Port = Field(8081, description="Port llama-server listens on.")
    ready_timeout: Duration = Field(
        600.0, description="Longest a load may take before it is killed."
    )
    stall_timeout: Duration = Field(
        120.0, description="Kill a load that prints nothing for this long."
    )
    stop_timeout: Duration = Field(10.0, description="Grace period after SIGTERM before SIGKILL.")
    ports: PortRange | None = Field(
        None,
        description="Ports for several servers at once, e.g. 8100-8199: each profile without its "
        "own `port` gets one, in manifest order. Unset: every profile uses `port`, so one runs "
        "at a time.",
    )
    keep_kv_total: Size = Field(20 * 1024**3, description="keep_kv: cap of all saved KV caches.")
    keep_kv_max_age: Duration = Field(7 * 86400.0, description="keep_kv: drop older saves.")
    keep_kv_timeout: Duration = Field(15.0, description="keep_kv: longest save or restore.")


class GpuConfig(_Strict):
    """The memory budget that estimates are judged against."""

    vram: Size | None = Field(None, description="VRAM budget, e.g. 24GiB, 24 GB, or bytes.")
    headroom: Size = Field(512 * 1024**2, description="Keep this much free; warn inside it.")
    overhead: Size = Field(
        400 * 1024**2, description="CUDA context and pools per GPU, added to estimates."
    )


class DeviceConfig(_Strict):
    """One device llama-server can place a model on, with its memory budget: a local one by its
    name, or the device of a llama.cpp RPC server (`ggml-rpc-server`) on another machine."""

    model_config = ConfigDict(
        extra="forbid",
        validate_default=False,
        json_schema_extra={"anyOf": [{"required": ["name"]}, {"required": ["rpc"]}]},
    )

    name: Annotated[str, AfterValidator(lambda v: v and _device_name(v))] = Field(
        "",
        description="The name llama-server lists (--list-devices): CUDA0, Vulkan0, Metal, or CPU. "
        "Left out for an `rpc` device (named RPC[host:port]).",
        json_schema_extra={"pattern": _DEVICE_NAME.pattern},
    )
    rpc: RpcEndpoint | None = Field(
        None,
        description="host:port of a ggml-rpc-server: its device, for profiles that list it "
        "under `rpc`. Give its budget as `vram` (the remote GPU's, or its RAM).",
    )
    vram: Size | None = Field(
        None,
        description="Budget in bytes (CPU: system RAM). Unset: nvidia-smi's total for a GPU, "
        "/proc/meminfo's for CPU.",
    )
    headroom: Size = Field(512 * 1024**2, description="Keep this much free on the device.")
    overhead: Size | None = Field(
        None,
        description="Runtime context and pools per server on the device (GPU default 400MiB, CPU 0).",
    )

    @model_validator(mode="after")
    def _named(self) -> DeviceConfig:
        if self.rpc is not None:
            if self.name and self.name != llama_rpc.device_key(self.rpc):
                raise ValueError(
                    f"a device has either `name` (a local device) or `rpc` (a remote one), "
                    f"not both; this one is named {llama_rpc.device_key(self.rpc)}"
                )
            self.name = llama_rpc.device_key(self.rpc)
        elif not self.name:
            raise ValueError(
                "a device needs `name` (CUDA0, Vulkan0, Metal, CPU) or `rpc` (host:port of a "
                "ggml-rpc-server)"
            )
        return self


class QueueConfig(_Strict):
    max_size: int = Field(10, ge=0, description="Requests that may wait for a switch; then 429.")
    timeout: Duration = Field(120.0, description="Longest a request waits for a switch; then 504.")


class BreakerConfig(_Strict):
    failures: int = Field(5, ge=1, description="Consecutive failures that open the breaker.")
    open_for: Duration = Field(30.0, description="How long an open breaker rejects before a probe.")
    max_open_for: Duration = Field(
        300.0, description="Cap of the open time, which grows on each re-open."
    )


class UpstreamConfig(_Strict):
    name: str
    type: Literal["managed", "openai", "llmctl"] = Field(
        "openai",
        description="managed: this router's llama-server; openai: an OpenAI-compatible API; "
        "llmctl: another `llmctl serve` (a host), whose profiles and state are learned from it.",
    )
    url: str | None = Field(
        None,
        description="Base URL of an OpenAI-compatible API, e.g. http://gpu:8080/v1, or of "
        "another llmctl serve, e.g. http://gpu:8080.",
    )
    api_key_env: str | None = Field(
        None, description="Environment variable that holds this upstream's key."
    )
    models: list[str] = Field(
        default_factory=lambda: ["*"], description="Model names it serves; * = any."
    )
    model_map: dict[str, str] = Field(
        default_factory=dict, description="Model name -> name sent upstream."
    )
    timeout: Duration = Field(600.0, description="Longest wait for the first byte of a response.")
    poll_interval: Duration = Field(
        2.0,
        gt=0,
        description="type llmctl: how often to learn the host's profiles and state (also right "
        "after a failure); a host that does not answer within this (at least 1 s) is marked down.",
    )


class ServeConfig(_Strict):
    """`llmctl serve`, the OpenAI-compatible router."""

    host: str = "127.0.0.1"
    port: Port = 8080
    default_profile: str | None = None
    api_keys: list[str] = Field(default_factory=list)
    api_keys_env: str = "LLMCTL_API_KEYS"
    allow_insecure_bind: bool = False
    max_body_size: Size = 16 * 1024**2
    header_timeout: Duration = Field(
        10.0, description="Time a client has to send its request line and headers; then closed."
    )
    body_timeout: Duration = Field(
        60.0, description="Time a client has to send its body; then 408."
    )
    max_connections: int | None = Field(
        None,
        ge=4,
        description="Open client connections at most; default from the open-file limit. Beyond "
        "it, the connection waiting longest for its headers is closed.",
    )
    drain_timeout: Duration = 30.0
    inflight_timeout: Duration = 60.0
    stop_server_on_exit: bool = True
    allowed_hosts: list[AllowedHost] = Field(
        default_factory=list,
        description="Host names the router answers to besides loopback ones (a reverse proxy's, "
        "a LAN name); `*.example.com` globs, `*` for any. On a loopback bind every other Host is "
        "refused (DNS rebinding); beyond loopback the Host is checked only when this is set.",
    )
    cors_origins: list[CorsOrigin] = Field(
        default_factory=list,
        description="Browser origins (scheme://host[:port], `*` globs) whose pages may use the "
        "router, besides its own and loopback ones; `*` allows any web page (unsafe).",
    )
    allow_cors_proxy: bool = Field(
        False,
        description="Pass llama-server's /cors-proxy through (it fetches any URL a client names).",
    )
    queue: QueueConfig = Field(default_factory=lambda: QueueConfig())
    max_wait: Duration = Field(
        0.0,
        description="While a load would evict a busy profile, its requests go first for at most "
        "this long before the swap (fewer loads for agents on several models); 0 = arrival order.",
    )
    max_passes: int | None = Field(
        None,
        ge=1,
        description="With max_wait: a waiting request is passed over by at most this many "
        "requests for the loaded profile.",
    )
    breaker: BreakerConfig = Field(default_factory=lambda: BreakerConfig())
    upstreams: list[UpstreamConfig] = Field(default_factory=list)


class Profile(_Strict):
    """One way to run llama-server. Field names follow llama-server's long flags in snake_case."""

    model: str = Field(description="GGUF path (first split for split models); ~ and $VARS expand.")
    description: str | None = None
    aliases: list[str] = Field(default_factory=list, description="Other names clients may ask for.")
    ctx_size: CtxSize = Field(
        4096, description="-c: context size; 0 = the model's trained context."
    )
    parallel: Parallel = Field(
        -1, description="-np: slots; -1 or auto = llama-server's auto (4, unified)."
    )
    kv_unified: bool | None = Field(None, description="-kvu / -no-kvu: one KV pool for all slots.")
    swa_full: bool = Field(False, description="--swa-full: full-size sliding-window cache.")
    cache_type_k: CacheType = Field("f16", description="-ctk: K cache type.")
    cache_type_v: CacheType = Field("f16", description="-ctv: V cache type.")
    flash_attn: TriState = Field("auto", description="-fa: on, off or auto.")
    n_gpu_layers: Layers = Field(
        -1, description="-ngl: layers on the GPU; -1 or all = every layer."
    )
    batch_size: int = Field(2048, ge=1, description="-b: logical batch size.")
    ubatch_size: int = Field(512, ge=1, description="-ub: physical batch size.")
    threads: int | None = Field(None, ge=-1, description="-t: generation threads.")
    threads_batch: int | None = Field(None, ge=-1, description="-tb: prompt threads.")
    mlock: bool | None = Field(None, description="--mlock: keep the model in RAM.")
    mmap: bool | None = Field(None, description="false -> --no-mmap.")
    no_kv_offload: bool = Field(False, description="-nkvo: keep the KV cache in host memory.")
    n_cpu_moe: int | None = Field(
        None, ge=0, description="--n-cpu-moe: MoE expert layers kept on the CPU."
    )
    override_tensor: str | None = Field(None, description="-ot: tensor buffer overrides.")
    split_mode: Literal["none", "layer", "row"] | None = Field(None, description="-sm")
    tensor_split: str | None = Field(None, description="-ts: e.g. 3,1")
    main_gpu: int | None = Field(None, ge=0, description="-mg")
    jinja: bool | None = Field(None, description="--jinja / --no-jinja: the model's chat template.")
    chat_template: str | None = Field(None, description="--chat-template")
    chat_template_file: str | None = Field(None, description="--chat-template-file (path)")
    reasoning_format: str | None = Field(None, description="--reasoning-format")
    embedding: bool | None = Field(None, description="--embedding: serve embeddings only.")
    pooling: Literal["none", "mean", "cls", "last", "rank"] | None = Field(
        None, description="--pooling"
    )
    reranking: bool | None = Field(None, description="--reranking")
    mmproj: str | None = Field(None, description="--mmproj: multimodal projector (path).")
    model_draft: str | None = Field(
        None, description="-md: draft model for speculative decoding (path)."
    )
    temp: float | None = Field(None, ge=0, description="--temp")
    top_k: int | None = Field(None, ge=0, description="--top-k")
    top_p: float | None = Field(None, ge=0, le=1, description="--top-p")
    min_p: float | None = Field(None, ge=0, le=1, description="--min-p")
    repeat_penalty: float | None = Field(None, ge=0, description="--repeat-penalty")
    seed: int | None = Field(None, description="-s")
    metrics: bool | None = Field(
        None, description="--metrics: Prometheus /metrics on llama-server."
    )
    env: dict[str, str] = Field(
        default_factory=dict, description="Extra environment for llama-server."
    )
    extra_args: list[str] = Field(
        default_factory=list, description="More llama-server arguments, verbatim."
    )
    host: str | None = Field(None, description="Overrides server.host.")
    port: Port | None = Field(None, description="Overrides server.port.")
    ready_timeout: Duration | None = Field(None, description="Overrides server.ready_timeout.")
    stall_timeout: Duration | None = Field(None, description="Overrides server.stall_timeout.")
    stop_timeout: Duration | None = Field(None, description="Overrides server.stop_timeout.")
    ttl: Duration | None = Field(None, description="serve: unload after this long idle.")
    rpc: Annotated[
        list[RpcEndpoint],
        BeforeValidator(_rpc_list),
        WithJsonSchema(
            {"anyOf": [{"type": "array", "items": _ENDPOINT_SCHEMA}, {"type": "string"}]}
        ),
    ] = Field(
        default_factory=list,
        description="--rpc: llama.cpp RPC servers (host:port of each ggml-rpc-server) whose "
        "devices take a share of the layers; each needs an `rpc` entry under gpu: with its "
        "budget.",
    )
    device: DeviceName | list[DeviceName] | None = Field(
        None,
        description="Where the model goes: a device name (CUDA1, CPU), a list (split over them), "
        "or auto (the placer chooses; the default).",
    )
    pinned: bool = Field(False, description="Never unloaded to make room for another profile.")
    priority: int = Field(
        0, description="serve: when requests for several profiles wait, higher loads first."
    )
    min_residency: Duration | None = Field(
        None,
        description="serve: not evicted sooner than this after its load while it has requests.",
    )
    max_concurrency: int | None = Field(
        None, ge=1, description="serve: requests in flight and waiting at most; beyond, 429."
    )
    group: str | None = Field(
        None, description="Profiles of one group never run at the same time (exclusive set)."
    )
    keep_kv: KeepKvCap = Field(
        0, description="Save the KV cache on unload, restore on reload: true (8GiB cap) or a cap."
    )
    metadata: dict[str, Any] | None = Field(
        None, description="GGUF metadata for estimates when the file is not on this machine."
    )


# Bare on/off/yes/no/true/false here mean on/off, as intended: no warning.
TRISTATE_FIELDS = frozenset({"flash_attn"})
PATH_FIELDS = ("model", "mmproj", "model_draft", "chat_template_file")


class ManifestModel(_Strict):
    """The whole file (`version: 1`)."""

    version: Literal[1] = 1
    server: ServerConfig = Field(default_factory=lambda: ServerConfig())
    gpu: GpuConfig | list[DeviceConfig] = Field(
        default_factory=lambda: GpuConfig(),
        description="One GPU budget (vram, headroom, overhead), or a list of devices.",
    )
    serve: ServeConfig = Field(default_factory=lambda: ServeConfig())
    defaults: dict[str, Any] = Field(
        default_factory=dict, description="Fields every profile starts from."
    )
    profiles: dict[str, Profile] = Field(default_factory=dict)


class Manifest(ManifestModel, ManifestOps):
    """A loaded manifest: profiles with defaults merged and paths resolved, plus where things are."""

    _path: Path = PrivateAttr(default=Path("profiles.yaml"))
    _source: Source | None = PrivateAttr(default=None)
    _profile_origin: dict[str, dict[str, str]] = PrivateAttr(default_factory=dict)
    _complete: bool = PrivateAttr(default=True)


# ---------------------------------------------------------------------------------------------
# validation

_FLAG_NAMES = {
    # what people type (llama-server flags, other tools' names) -> our field
    "c": "ctx_size",
    "ctx": "ctx_size",
    "context": "ctx_size",
    "context_size": "ctx_size",
    "context_length": "ctx_size",
    "num_ctx": "ctx_size",
    "n_ctx": "ctx_size",
    "np": "parallel",
    "n_parallel": "parallel",
    "slots": "parallel",
    "ngl": "n_gpu_layers",
    "gpu_layers": "n_gpu_layers",
    "num_gpu": "n_gpu_layers",
    "fa": "flash_attn",
    "flash_attention": "flash_attn",
    "ctk": "cache_type_k",
    "ctv": "cache_type_v",
    "kv_cache_type": "cache_type_k",
    "type_k": "cache_type_k",
    "type_v": "cache_type_v",
    "kvu": "kv_unified",
    "b": "batch_size",
    "ub": "ubatch_size",
    "batch": "batch_size",
    "ubatch": "ubatch_size",
    "t": "threads",
    "tb": "threads_batch",
    "nkvo": "no_kv_offload",
    "m": "model",
    "path": "model",
    "file": "model",
    "alias": "aliases",
    "args": "extra_args",
    "cmd": "extra_args",
    "environment": "env",
    "temperature": "temp",
    "ot": "override_tensor",
    "md": "model_draft",
    "embeddings": "embedding",
    "no_mmap": "mmap",
    "ttl_seconds": "ttl",
}


def _suggest(key: str, known: list[str]) -> str | None:
    norm = key.strip().lstrip("-").replace("-", "_").lower()
    if norm in known and norm != key:
        return norm
    if norm in _FLAG_NAMES and _FLAG_NAMES[norm] in known:
        return _FLAG_NAMES[norm]
    close = difflib.get_close_matches(norm, known, n=1, cutoff=0.6)
    return close[0] if close else None


def _stringy(annotation: Any) -> str | None:
    """How a field holds text: "str", "list" (of str), "dict" (str values), or None."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _stringy(typing.get_args(annotation)[0])
    if annotation is str:
        return "str"
    if origin is Literal:
        return "str" if all(isinstance(a, str) for a in typing.get_args(annotation)) else None
    if origin in (typing.Union, types.UnionType):
        kinds = {_stringy(a) for a in typing.get_args(annotation) if a is not type(None)}
        return kinds.pop() if len(kinds) == 1 else None
    if origin is list and typing.get_args(annotation) and typing.get_args(annotation)[0] is str:
        return "list"
    if (
        origin is dict
        and len(typing.get_args(annotation)) == 2
        and typing.get_args(annotation)[1] is str
    ):
        return "dict"
    return None


def _submodel(annotation: Any) -> tuple[type[BaseModel], bool] | None:
    """The section model a field holds, and whether it holds a list of them (`upstreams`)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin is list and args:
        inner = _submodel(args[0])
        return (inner[0], True) if inner and not inner[1] else None
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _submodel(args[0])
    return None


class _Checker:
    def __init__(self, path: Path, source: Source) -> None:
        self.file = str(path)
        self.source = source
        self.problems: list[Problem] = []

    def add(
        self,
        severity: Literal["error", "warning"],
        rule: str,
        message: str,
        path: Path_,
        profile: str | None = None,
        hint: str | None = None,
        *,
        value: bool = False,
    ) -> None:
        line, column = self.source.value_position(path) if value else self.source.position(path)
        self.problems.append(
            Problem(severity, rule, message, profile, self.file, line, column, hint)
        )

    # YAML 1.1 coercions -------------------------------------------------------------------
    def keep_text(
        self, data: dict[str, Any], model: type[BaseModel], path: Path_, profile: str | None
    ) -> None:
        """Where a field holds text but YAML made it a bool/number, use the text as written."""
        for name, info in model.model_fields.items():
            if name not in data or name in TRISTATE_FIELDS:
                continue
            kind = _stringy(info.annotation)
            if kind == "str":
                data[name] = self._text(data[name], (*path, name), profile, name)
            elif kind == "list" and isinstance(data[name], list):
                data[name] = [
                    self._text(v, (*path, name, i), profile, name) for i, v in enumerate(data[name])
                ]
            elif kind == "dict" and isinstance(data[name], dict):
                data[name] = {
                    k: self._text(v, (*path, name, k), profile, name, quiet_numbers=True)
                    for k, v in data[name].items()
                }
            sub = _submodel(info.annotation)
            if sub is None:
                continue
            section, many = sub
            if many and isinstance(data[name], list):
                for i, item in enumerate(data[name]):
                    if isinstance(item, dict):
                        self.keep_text(item, section, (*path, name, i), profile)
            elif not many and isinstance(data[name], dict):
                self.keep_text(data[name], section, (*path, name), profile)

    def _text(
        self, value: Any, path: Path_, profile: str | None, field: str, quiet_numbers: bool = False
    ) -> Any:
        note = self.source.coerced.get(path)
        if note is None or isinstance(value, str) or note.kind == "null":
            return value
        if not (quiet_numbers and note.kind == "number"):
            self.add(
                "warning",
                "yaml-coercion",
                f"YAML 1.1 reads {note.raw} as the {note.kind} {_show(note.value)} in `{field}`; "
                f"llmctl used the text {note.raw!r}",
                path,
                profile,
                hint=f"quote it to say what you mean: {field}: '{note.raw}'",
                value=True,
            )
        return note.raw

    # pydantic errors ------------------------------------------------------------------------
    def validation(
        self,
        err: ValidationError,
        path: Path_,
        profile: str | None,
        model: type[BaseModel],
        origin: dict[str, str] | None = None,
    ) -> None:
        for e in _one_branch(err.errors(include_url=False)):
            loc: tuple[str | int, ...] = tuple(e["loc"])
            where = (*path, *loc)
            if origin and loc and origin.get(str(loc[0])) == "defaults":
                where = ("defaults", *loc)
            field = str(loc[-1]) if loc else ""
            top = str(loc[0]) if loc else ""
            etype = e["type"]
            msg = str(e["msg"]).removeprefix("Value error, ")
            if etype == "extra_forbidden":
                known = _known_fields(model, loc[:-1])
                guess = _suggest(field, known)
                self.add(
                    "error",
                    "unknown-key",
                    f"unknown key `{field}`",
                    where,
                    profile,
                    hint=f"did you mean `{guess}`?"
                    if guess
                    else f"known keys: {', '.join(sorted(known))}",
                )
            elif etype == "missing":
                self.add(
                    "error",
                    "missing-key",
                    f"`{field}` is required",
                    path if not loc[:-1] else (*path, *loc[:-1]),
                    profile,
                )
            elif top in ("cache_type_k", "cache_type_v"):
                self.add(
                    "error",
                    "cache-type",
                    f"`{top}` must be one of {', '.join(CACHE_TYPES)}; got {e.get('input')!r}",
                    where,
                    profile,
                    hint="q8_0 halves the f16 cache, q4_0 quarters it",
                    value=True,
                )
            elif top == "flash_attn":
                self.add(
                    "error",
                    "flash-attn",
                    f"`flash_attn` must be on, off or auto; got {e.get('input')!r}",
                    where,
                    profile,
                    value=True,
                )
            elif top == "parallel":
                self.add(
                    "error",
                    "parallel",
                    f"`parallel`: {msg} (got {e.get('input')!r})",
                    where,
                    profile,
                    hint="use 1 for one user, or auto",
                    value=True,
                )
            elif etype in ("greater_than_equal", "greater_than", "less_than_equal"):
                self.add(
                    "error",
                    "range",
                    f"`{_dotted(loc)}`: {msg.lower()} (got {e.get('input')!r})",
                    where,
                    profile,
                    value=True,
                )
            else:
                self.add("error", "schema", f"`{_dotted(loc)}`: {msg}", where, profile, value=True)


# `gpu:` is a mapping or a list of devices: pydantic reports each branch of the union, under
# a tag (`gpu.GpuConfig`, `gpu.list[...]`). Only the branch of the shape written is meant.
_UNION_FIELDS = frozenset({"gpu"})
_SHAPE_ERRORS = frozenset({"model_type", "model_attributes_type", "list_type", "dict_type"})


def _one_branch(errors: list[Any]) -> list[Any]:
    """Errors with union tags taken out of their place, and the other shape's errors dropped."""
    out: list[Any] = []
    tagged = [e for e in errors if _tag(e["loc"]) is not None]
    shape = [e for e in tagged if e["type"] in _SHAPE_ERRORS and len(e["loc"]) == 2]
    if tagged and len(shape) == len(tagged):  # neither shape: one error says which are meant
        field = tagged[0]["loc"][0]
        errors = [e for e in errors if e not in tagged]
        errors.append(
            {
                "loc": (field,),
                "type": "value_error",
                "msg": "must be a mapping (vram, headroom, overhead) or a list of devices",
                "input": tagged[0].get("input"),
            }
        )
    for e in errors:
        loc = tuple(e["loc"])
        if _tag(loc) is None:
            out.append(e)
            continue
        if e["type"] in _SHAPE_ERRORS and len(loc) == 2 and len(tagged) > 1:
            continue  # the input has the other branch's shape
        out.append({**e, "loc": (loc[0], *loc[2:])})
    return out


def _tag(loc: tuple[Any, ...] | list[Any]) -> str | None:
    if len(loc) > 1 and loc[0] in _UNION_FIELDS and isinstance(loc[1], str):
        return loc[1]
    return None


def _show(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else repr(value)


def _dotted(loc: tuple[str | int, ...]) -> str:
    return ".".join(str(x) for x in loc) or "(root)"


def _known_fields(model: type[BaseModel], loc: tuple[str | int, ...]) -> list[str]:
    current: type[BaseModel] = model
    for part in loc:
        if isinstance(part, int):
            continue
        info = current.model_fields.get(part)
        sub = _submodel(info.annotation) if info is not None else None
        if sub is None:
            break
        current = sub[0]
    return list(current.model_fields)


def check_manifest(path: Path, content: bytes | None = None) -> tuple[Manifest, list[Problem]]:
    """Every problem in the manifest at `path`, and the Manifest built from what is valid.

    With errors among the problems, the Manifest is partial (invalid profiles left out).

    Raises ManifestError (exit 2) only when the file cannot be read or parsed at all.
    """
    file = str(path)
    try:
        data_bytes = path.read_bytes() if content is None else content
    except FileNotFoundError:
        raise ManifestError(
            f"{file}: no such file", hint="pass --manifest PATH or set LLMCTL_MANIFEST"
        ) from None
    except IsADirectoryError:
        raise ManifestError(f"{file} is a folder, not a manifest file") from None
    except OSError as err:
        raise ManifestError(f"{file}: cannot read: {err.strerror}") from None
    try:
        data, source = load_yaml(data_bytes, file)
    except YamlLoadError as err:
        where = file if err.line is None else f"{file}:{err.line}:{err.column or 1}"
        raise ManifestError(
            f"{where}: {err.message}",
            hint=err.hint or "fix the YAML; `llmctl lint` checks it",
            problems=[
                Problem("error", "yaml", err.message, None, file, err.line, err.column, err.hint)
            ],
        ) from None
    checker = _Checker(path, source)
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else f"the value {data!r}"
        raise ManifestError(
            f"{file}:1:1: the manifest must be a mapping with `version` and `profiles`, not {kind}",
            hint="start with `version: 1` and a `profiles:` mapping (see the README)",
            problems=[Problem("error", "yaml", "the root is not a mapping", None, file, 1, 1)],
        )
    for dup in source.duplicates:
        profile = str(dup.path[1]) if len(dup.path) > 1 and dup.path[0] == "profiles" else None
        what = "profile" if len(dup.path) == 2 and dup.path[0] == "profiles" else "key"
        checker.problems.append(
            Problem(
                "error",
                "duplicate-key",
                f"{what} `{dup.path[-1]}` appears twice (first at line {dup.first_line}); "
                "YAML would silently keep only the last one",
                profile,
                file,
                dup.line,
                dup.column,
                "rename or remove one of them",
            )
        )
    return _validate(path, data, source, checker)


def _validate(
    path: Path, data: dict[str, Any], source: Source, checker: _Checker
) -> tuple[Manifest, list[Problem]]:
    base = path.resolve().parent
    if "version" not in data:
        checker.add(
            "warning",
            "version",
            "no `version`; assuming `version: 1`",
            (),
            None,
            hint="add `version: 1` at the top",
        )
    raw_profiles = data.get("profiles")
    raw_defaults = data.get("defaults", {})
    top = {k: v for k, v in data.items() if k not in ("profiles", "defaults")}
    checker.keep_text(top, ManifestModel, (), None)
    # Each section on its own, so that an error in one does not hide the others.
    sections: dict[str, Any] = {}
    for key, value in top.items():
        try:
            ManifestModel.model_validate({key: value})
        except ValidationError as err:
            checker.validation(err, (), None, ManifestModel)
        else:
            sections[key] = value

    defaults: dict[str, Any] = {}
    if raw_defaults is None:
        raw_defaults = {}
    if not isinstance(raw_defaults, dict):
        checker.add(
            "error",
            "schema",
            "`defaults` must be a mapping of profile fields",
            ("defaults",),
            value=True,
        )
    else:
        defaults = dict(raw_defaults)
        checker.keep_text(defaults, Profile, ("defaults",), None)
        for key in list(defaults):
            if key not in Profile.model_fields:
                guess = _suggest(key, list(Profile.model_fields))
                checker.add(
                    "error",
                    "unknown-key",
                    f"unknown key `{key}` in defaults",
                    ("defaults", key),
                    hint=f"did you mean `{guess}`?" if guess else None,
                )
                del defaults[key]
            elif key == "aliases":
                checker.add(
                    "error",
                    "schema",
                    "`aliases` cannot be a default: each name must be unique",
                    ("defaults", key),
                )
                del defaults[key]

    profiles: dict[str, Profile] = {}
    origins: dict[str, dict[str, str]] = {}
    if raw_profiles is None:
        checker.add(
            "error",
            "no-profiles",
            "the manifest has no `profiles`",
            (),
            hint="add a `profiles:` mapping with at least one profile",
        )
    elif not isinstance(raw_profiles, dict):
        checker.add(
            "error",
            "schema",
            "`profiles` must be a mapping of name -> profile",
            ("profiles",),
            value=True,
        )
    else:
        if not raw_profiles:
            checker.add("error", "no-profiles", "`profiles` is empty", ("profiles",))
        for name, raw in raw_profiles.items():
            ppath: Path_ = ("profiles", name)
            if raw is None:
                raw = {}
            if not isinstance(raw, dict):
                checker.add(
                    "error",
                    "schema",
                    f"profile `{name}` must be a mapping of fields",
                    ppath,
                    name,
                    value=True,
                )
                continue
            own = dict(raw)
            checker.keep_text(own, Profile, ppath, name)
            merged = dict(defaults)
            origin = {k: "defaults" for k in defaults}
            for k, v in own.items():
                if k == "env" and isinstance(v, dict) and isinstance(merged.get("env"), dict):
                    merged["env"] = {**merged["env"], **v}
                else:
                    merged[k] = v
                origin[k] = "profile"
            for field in PATH_FIELDS:
                if isinstance(merged.get(field), str) and merged[field]:
                    merged[field] = expand_path(merged[field], base)
            try:
                profiles[name] = Profile.model_validate(merged)
            except ValidationError as err:
                checker.validation(err, ppath, name, Profile, origin)
            origins[name] = origin

    manifest = Manifest.model_validate({**sections, "defaults": defaults, "profiles": {}})
    manifest.profiles = profiles
    manifest._path = path
    manifest._source = source
    manifest._profile_origin = origins
    manifest._complete = not any(p.severity == "error" for p in checker.problems)
    if manifest.server.binary:
        manifest.server.binary = expand_path(manifest.server.binary, base)
    return manifest, checker.problems


def load_manifest(path: Path | str | None = None) -> Manifest:
    """The manifest (discovered when `path` is None), or ManifestError listing its errors.

    Always parses and validates; `llmctl.manifest.cache.load_manifest` is the same from the cache.
    """
    found = find_manifest(path)
    manifest, problems = check_manifest(found)
    return usable(found, manifest, problems)
