"""Bearer API keys, from the manifest and the environment, compared in constant time."""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llmctl.manifest.model import ServeConfig


def collect_keys(
    manifest_keys: Iterable[str], env_var: str, environ: Mapping[str, str] | None = None
) -> tuple[str, ...]:
    """The accepted keys: `serve.api_keys` plus the comma-separated list in `env_var`."""
    env = os.environ if environ is None else environ
    keys = [k.strip() for k in manifest_keys if k and k.strip()]
    raw = env.get(env_var, "") if env_var else ""
    keys.extend(k.strip() for k in raw.split(",") if k.strip())
    return tuple(dict.fromkeys(keys))


def serve_keys(serve: ServeConfig, environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The keys a `serve:` section accepts (its api_keys and its api_keys_env variable)."""
    return collect_keys(serve.api_keys, serve.api_keys_env, environ)


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def key_allowed(token: str | None, keys: tuple[str, ...]) -> bool:
    """True when `token` equals one of `keys`; every key is compared, so timing says nothing."""
    if token is None:
        return False
    given = token.encode()
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(given, key.encode())
    return ok
