"""The profiles.yaml sections as pydantic models (server, gpu and devices, serve, profiles) and
`Manifest`, the validated whole with the lookups of ManifestOps (manifest/view.py). Loading and
validation are in manifest/validate.py."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    WithJsonSchema,
    model_validator,
)

from llmctl.llama import rpc as llama_rpc
from llmctl.llama.vocab import CacheType
from llmctl.manifest.types import (
    _DEVICE_NAME,
    _ENDPOINT_SCHEMA,
    AllowedHost,
    CorsOrigin,
    CtxSize,
    DeviceName,
    Duration,
    KeepKvCap,
    Layers,
    Parallel,
    Port,
    PortRange,
    RpcEndpoint,
    Size,
    TriState,
    _device_name,
    _rpc_list,
)
from llmctl.manifest.view import ManifestOps
from llmctl.manifest.yamldoc import Source
from llmctl.paths import is_hub_model


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
    llama_build: int | None = Field(
        None,
        ge=1,
        description="The llama.cpp build (tag bN, e.g. 11312) of the llama-server the estimates "
        "are for, when it is not the one llmctl can run here (another machine or host). Unset: "
        "the configured llama-server's build (its --version), else the newest rules.",
    )


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
    loading_state: bool = Field(
        False,
        description="A streaming chat request that waits for a load gets the load's progress "
        "as `reasoning_content` deltas, which chat UIs show in their thinking box (as "
        "llama-swap's sendLoadingState); off: SSE comments only.",
    )
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
    restart_changed: bool = Field(
        True,
        description="After a reload (SIGHUP), stop the server of a profile whose launch changed "
        "or that left the manifest once its requests in flight are done; the next request "
        "loads the new flags. False: it runs on with the old ones, marked stale.",
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


def _hub_model(value: str) -> str:
    """A hub reference is checked here (a path is checked by lint, against the machine)."""
    if is_hub_model(value):
        from llmctl.hub.refs import ref_problem

        problem = ref_problem(value)
        if problem is not None:
            raise ValueError(problem)
    return value


def _profile_schema(schema: dict[str, Any]) -> None:
    """`model` or `hf` names the model: either is required."""
    schema["required"] = [r for r in schema.get("required", []) if r != "model"]
    if not schema["required"]:
        del schema["required"]
    schema["anyOf"] = [{"required": ["model"]}, {"required": ["hf"]}]


class Profile(_Strict):
    """One way to run llama-server. Field names follow llama-server's long flags in snake_case."""

    model_config = ConfigDict(
        extra="forbid", validate_default=False, json_schema_extra=_profile_schema
    )

    @model_validator(mode="before")
    @classmethod
    def _hf_fields(cls, data: Any) -> Any:
        """`hf:` (and `hf_file:`) become `model: hf://...`, so everything after reads `model`."""
        if not isinstance(data, dict) or (data.get("hf") is None and data.get("hf_file") is None):
            return data
        from llmctl.hub.refs import from_fields

        hf, hf_file = data.get("hf"), data.get("hf_file")
        if not isinstance(hf, str) or not hf:
            raise ValueError("`hf_file` names a file of the repo `hf: org/repo` gives; add `hf`")
        if data.get("model") is not None:
            raise ValueError("`hf` and `model` both name the model; keep one of them")
        rest = {k: v for k, v in data.items() if k not in ("hf", "hf_file")}
        return {**rest, "model": from_fields(hf, hf_file if isinstance(hf_file, str) else None)}

    model: Annotated[str, AfterValidator(_hub_model)] = Field(
        description="GGUF path (first split for split models; ~ and $VARS expand), or a "
        "Hugging Face model: hf://org/repo:Q4_K_M, hf://org/repo/file.gguf, @revision to pin."
    )
    hf: str | None = Field(
        None,
        description="Instead of `model`, llama-server's -hf spelling: org/repo[@revision][:QUANT].",
    )
    hf_file: str | None = Field(
        None, description="With `hf`, llama-server's -hff: the exact GGUF file of the repo."
    )
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
