"""The hand-off between the manifest and the supervisor: exactly what to run, and how to judge it.

`launch_spec(manifest, name)` composes a profile's LaunchSpec from the flag table (llama/flags.py),
the binary (llama/binary.py) and the profile's settings; `KeepKv` is a profile's keep_kv limits,
which supervisor/kvcache/ applies; the spec's `origin` is what a launch record keeps to tell
later whether its server is stale (supervisor/stale.py). Light at import: the table and the binary
lookup are imported when a spec is built, so `llmctl status` does not pay for them."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from llmctl.paths import is_hub_model

if TYPE_CHECKING:
    from pathlib import Path

    from llmctl.manifest.model import Manifest, Profile, ServerConfig


@dataclass(frozen=True)
class KeepKv:
    """A profile's `keep_kv` limits: bytes for this profile, bytes for the whole kv folder,
    the age after which a file is dropped, and how long one save (or restore) may take."""

    max_bytes: int
    total_bytes: int
    max_age_s: float
    timeout_s: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LaunchSpec:
    """One llama-server launch: argv (argv[0] is the binary), the extra environment, and its limits."""

    profile: str
    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int = 8081
    ready_timeout: float = 600.0
    stall_timeout: float = 120.0
    stop_timeout: float = 10.0
    model: str = ""
    # Inherited variables llama-server must not see (the router's and upstreams' API keys).
    unset_env: tuple[str, ...] = ()
    # What the placer decided (devices, bytes per device, reload cost): kept in the state.
    placement: dict[str, Any] = field(default_factory=dict, compare=False)
    # Save the slots' KV cache before an unload, restore it after the next load (supervisor/kvcache/).
    keep_kv: KeepKv | None = None
    # Where the launch came from (supervisor/stale.py): the manifest's path and stat, and the
    # profile's identity in it; kept in the record, so that ps and status tell a stale server.
    origin: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        return f"http://{host}:{self.port}"

    @property
    def config_hash(self) -> str:
        """Identifies the configuration: same argv and environment, same hash."""
        config: dict[str, Any] = {"argv": list(self.argv), "env": self.env}
        if self.keep_kv is not None:  # a launch with --slot-save-path differs
            config["keep_kv"] = True
        blob = json.dumps(config, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def shell(self) -> str:
        """The command line to show: shell-quoted, environment assignments first, secrets masked."""
        import shlex

        from llmctl.llama.secrets import mask_argv

        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items()))
        cmd = shlex.join(mask_argv(self.argv))
        return f"{env} {cmd}" if env else cmd

    def to_json(self) -> dict[str, Any]:
        return {"argv": list(self.argv), "env": dict(self.env)}


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


def _load_mode_args(profile: Profile, known: frozenset[str] | None) -> list[str]:
    """mlock/mmap as the build spells them: `--load-mode` (2026 builds), else the older
    `--no-mmap` / `--mlock` switches when the binary's --help lists those and not --load-mode."""
    mode = _load_mode(profile)
    if mode is None:
        return []
    if known is None or "--load-mode" in known or "--no-mmap" not in known:
        return ["--load-mode", mode]
    out = [] if profile.mmap is not False else ["--no-mmap"]
    return out + (["--mlock"] if profile.mlock else [])


def profile_args(
    name: str,
    profile: Profile,
    host: str,
    port: int,
    known: frozenset[str] | None = None,
    files: dict[str, list[str]] | None = None,
) -> list[str]:
    """The llama-server arguments (without the binary) for a profile, in table order; `known`,
    the flags of the binary (its --help), picks the spelling of flags that changed; `files`, the
    arguments that stand for a field instead (a hub model's local file, `hub_files`)."""
    from llmctl.llama.flags import FLAGS

    args: list[str] = []
    explicit = profile.model_fields_set
    for f in FLAGS:
        if files and f.field in files:
            args += files[f.field]
            continue
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
    args += _load_mode_args(profile, known)
    args += ["--host", host, "--port", str(port), "--alias", ",".join([name, *profile.aliases])]
    args += profile.extra_args
    return args


def launch_spec(manifest: Manifest, name: str) -> LaunchSpec:
    """Everything the supervisor needs to run profile `name` (a name or alias)."""
    from llmctl.llama.binary import find_binary

    pname = manifest.resolve(name)
    profile = manifest.profiles[pname]
    server = manifest.server
    host = profile.host or server.host
    port = manifest.profile_port(pname)
    binary = find_binary(manifest.server.binary) or "llama-server"
    known = None
    if profile.mlock is not None or profile.mmap is not None:
        from llmctl.llama.binary import known_flags

        known = known_flags(binary)  # cached per binary; asked only for a flag that changed
    model, files = hub_files(profile) if is_hub_model(profile.model) else (profile.model, None)
    spec = LaunchSpec(
        profile=pname,
        argv=(binary, *profile_args(pname, profile, host, port, known, files)),
        env=dict(profile.env),
        host=host,
        port=port,
        ready_timeout=profile.ready_timeout or server.ready_timeout,
        stall_timeout=profile.stall_timeout or server.stall_timeout,
        stop_timeout=profile.stop_timeout or server.stop_timeout,
        model=model,
        unset_env=secret_env_names(manifest),
        keep_kv=_keep_kv(profile, server),
    )
    from llmctl.supervisor.stale import origin_of

    return replace(spec, origin=origin_of(manifest, spec))


def current_identity(manifest: Manifest, profile: str) -> str | None:
    """The identity the manifest gives `profile` now (supervisor/stale.py); None when its
    launch cannot be composed."""
    from llmctl.errors import LlmctlError

    try:
        spec = launch_spec(manifest, profile)
    except (LlmctlError, OSError):
        return None
    found = spec.origin.get("identity")
    return str(found) if found else None


def with_log_format(spec: LaunchSpec) -> LaunchSpec:
    """The spec with `--log-jsonl` where the binary has it (its cached --help) and the profile
    sets no log format of its own: the engine's memory plan is then in every launch log."""
    from llmctl.llama.binary import known_flags
    from llmctl.llama.logline import JSONL_FLAG

    if any(a.startswith(("--log-", "-lv", "--verbosity")) for a in spec.argv[1:]):
        return spec  # the user's own log settings stand (a verbose text log, a log file)
    flags = known_flags(spec.argv[0])
    if flags is None or JSONL_FLAG not in flags:
        return spec
    return replace(spec, argv=(*spec.argv, JSONL_FLAG))


def as_launched(state_dir: Path, spec: LaunchSpec) -> LaunchSpec:
    """`spec` with what a launch adds (Supervisor._start), without its effects: a keep_kv
    profile's `--slot-save-path` (its folder, not claimed here), then `--log-jsonl`. What
    `llmctl command` prints: the argv llama-server is started with."""
    if spec.keep_kv is not None:
        # not kvcache.hooks (it imports the HTTP client for the slots): the folder and flag only
        from llmctl.supervisor.kvcache.files import profile_folder, slot_save_args

        folder = profile_folder(state_dir, spec.profile)
        spec = replace(spec, argv=(*spec.argv, *slot_save_args(folder)))
    return with_log_format(spec)


def hub_files(profile: Profile) -> tuple[str, dict[str, list[str]]]:
    """A hub model's launch: its pulled file with `-m` (and the repo's mmproj sibling, as `-hf`
    loads it, unless the profile names one), and that path as the spec's model. Not pulled: the
    `-hf` command line llama-server itself would download with, and the reference as the model,
    which `check_model_file` refuses before anything is stopped."""
    from llmctl.hub.local import find_local
    from llmctl.hub.refs import parse_ref
    from llmctl.llama.flags import FLAGS, HF_FILE_FLAG, HF_REPO_FLAG

    ref = parse_ref(profile.model)
    local = find_local(ref)
    if local is None:
        repo = ref.repo + (f":{ref.tag}" if ref.tag else "")
        return profile.model, {
            "model": [HF_REPO_FLAG, repo, *([HF_FILE_FLAG, ref.file] if ref.file else [])]
        }
    flag = {f.field: f.flag for f in FLAGS}
    files = {"model": [flag["model"], str(local.path)]}
    if local.mmproj is not None and profile.mmproj is None:
        files["mmproj"] = [flag["mmproj"], str(local.mmproj)]
    return str(local.path), files


def _keep_kv(profile: Profile, server: ServerConfig) -> KeepKv | None:
    if not profile.keep_kv:
        return None
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
