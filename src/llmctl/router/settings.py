"""The `serve:` section of the manifest, read once into plain values with their defaults."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from llmctl.router.auth import collect_keys

MIB = 1024 * 1024


def _get(obj: Any, name: str, default: Any) -> Any:
    if obj is None:
        return default
    value = obj.get(name, default) if isinstance(obj, Mapping) else getattr(obj, name, default)
    return default if value is None else value


@dataclass(frozen=True)
class UpstreamSettings:
    name: str
    type: str = "managed"
    url: str | None = None
    api_key_env: str | None = None
    models: tuple[str, ...] = ("*",)
    model_map: dict[str, str] = field(default_factory=dict)
    timeout: float = 600.0
    poll_interval: float = 2.0  # type llmctl: how often the host's state is learned


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    default_profile: str | None = None
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    allow_insecure_bind: bool = False
    max_body_size: int = 16 * MIB
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    max_connections: int | None = None  # None: from the open-file limit
    drain_timeout: float = 30.0
    inflight_timeout: float = 60.0
    stop_server_on_exit: bool = True
    queue_max_size: int = 10
    queue_timeout: float = 120.0
    breaker_failures: int = 5
    breaker_open_for: float = 30.0
    breaker_max_open_for: float = 300.0
    upstreams: tuple[UpstreamSettings, ...] = ()

    @classmethod
    def from_manifest(cls, manifest: Any, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        serve = getattr(manifest, "serve", None)
        queue = _get(serve, "queue", None)
        breaker = _get(serve, "breaker", None)
        keys = collect_keys(
            list(_get(serve, "api_keys", [])),
            str(_get(serve, "api_keys_env", "LLMCTL_API_KEYS")),
            env,
        )
        ups: list[UpstreamSettings] = []
        for i, raw in enumerate(_get(serve, "upstreams", []) or []):
            url = _get(raw, "url", None)
            kind = str(_get(raw, "type", "managed" if url is None else "openai"))
            default_models = ["*"]
            ups.append(
                UpstreamSettings(
                    name=str(_get(raw, "name", f"upstream{i + 1}")),
                    type="managed" if kind == "managed" or url is None else kind,
                    url=None if kind == "managed" else url,
                    api_key_env=_get(raw, "api_key_env", None),
                    models=tuple(_get(raw, "models", default_models) or default_models),
                    model_map=dict(_get(raw, "model_map", {}) or {}),
                    timeout=float(_get(raw, "timeout", 600.0)),
                    poll_interval=float(_get(raw, "poll_interval", 2.0)),
                )
            )
        return cls(
            host=str(_get(serve, "host", cls.host)),
            port=int(_get(serve, "port", cls.port)),
            default_profile=_get(serve, "default_profile", None),
            api_keys=keys,
            allow_insecure_bind=bool(_get(serve, "allow_insecure_bind", False)),
            max_body_size=int(_get(serve, "max_body_size", cls.max_body_size)),
            header_timeout=float(_get(serve, "header_timeout", cls.header_timeout)),
            body_timeout=float(_get(serve, "body_timeout", cls.body_timeout)),
            max_connections=_get(serve, "max_connections", None),
            drain_timeout=float(_get(serve, "drain_timeout", cls.drain_timeout)),
            inflight_timeout=float(_get(serve, "inflight_timeout", cls.inflight_timeout)),
            stop_server_on_exit=bool(_get(serve, "stop_server_on_exit", True)),
            queue_max_size=int(_get(queue, "max_size", cls.queue_max_size)),
            queue_timeout=float(_get(queue, "timeout", cls.queue_timeout)),
            breaker_failures=int(_get(breaker, "failures", cls.breaker_failures)),
            breaker_open_for=float(_get(breaker, "open_for", cls.breaker_open_for)),
            breaker_max_open_for=float(_get(breaker, "max_open_for", cls.breaker_max_open_for)),
            upstreams=tuple(ups),
        )
