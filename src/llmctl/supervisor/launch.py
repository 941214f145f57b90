"""The hand-off between the manifest and the supervisor: exactly what to run, and how to judge it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmctl.supervisor.slotcache import KeepKv


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
    # Save the slots' KV cache before an unload, restore it after the next load (slotcache.py).
    keep_kv: KeepKv | None = None

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
