"""Checks that look across fields, profiles and the machine (lint rules beyond the schema)."""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from llmctl.errors import Problem
from llmctl.llama.binary import find_binary, is_gguf, known_flags
from llmctl.llama.flags import FLAGS, MANAGED, QUANTIZED_CACHE_TYPES, flag_owner
from llmctl.supervisor.launch import profile_args

if TYPE_CHECKING:
    from llmctl.manifest.model import Manifest

_NUMBER = re.compile(r"^-?[0-9.]+$")
_ANY_HOST = {"0.0.0.0", "::", ""}


class _Out:
    def __init__(self, manifest: Manifest) -> None:
        self.m = manifest
        self.problems: list[Problem] = []

    def at(
        self,
        severity: Literal["error", "warning"],
        rule: str,
        message: str,
        profile: str | None,
        field: str | None = None,
        hint: str | None = None,
        path: tuple[str | int, ...] | None = None,
    ) -> None:
        file = str(self.m.path)
        line: int | None
        column: int | None
        if path is not None and self.m.source is not None:
            line, column = self.m.source.position(path)
        elif profile is not None:
            file, line, column = self.m.where(profile, field)
        else:
            line, column = None, None
        self.problems.append(Problem(severity, rule, message, profile, file, line, column, hint))


def _hosts_overlap(a: str, b: str) -> bool:
    loop = {"127.0.0.1", "localhost", "::1"}
    if a in _ANY_HOST or b in _ANY_HOST:
        return True
    return a == b or (a in loop and b in loop)


def cross_checks(manifest: Manifest, *, include_environment: bool = True) -> list[Problem]:
    """Rules across fields and profiles; with `include_environment`, also files and the binary."""
    out = _Out(manifest)
    _flag_rules(out)
    _names(out)
    _ports(out)
    _serve(out)
    from llmctl.lint.placement import static_problems

    out.problems.extend(static_problems(manifest))
    if include_environment:
        _files(out)
        _binary(out)
        _rpc_servers(out)
    return out.problems


def _flag_rules(out: _Out) -> None:
    for name, p in out.m.profiles.items():
        if p.cache_type_v in QUANTIZED_CACHE_TYPES and p.flash_attn == "off":
            out.at(
                "error",
                "quantized-v-cache",
                f"a quantized V cache ({p.cache_type_v}) needs flash attention, but flash_attn is off;"
                " llama-server refuses to load",
                name,
                "flash_attn",
                hint="set flash_attn: on (or auto), or cache_type_v: f16",
            )
        if p.ubatch_size > p.batch_size:
            out.at(
                "warning",
                "batch",
                f"ubatch_size {p.ubatch_size} is larger than batch_size "
                f"{p.batch_size}; llama-server uses {p.batch_size}",
                name,
                "ubatch_size",
            )
        seen: dict[str, int] = {}
        for i, arg in enumerate(p.extra_args):
            if not arg.startswith("-") or _NUMBER.match(arg):
                continue
            flag = arg.split("=", 1)[0]
            owner = flag_owner(flag)
            if flag in ("--api-key", "--api-key-file"):
                out.at(
                    "error",
                    "server-api-key",
                    f"extra_args passes {flag}: llama-server would then refuse every request "
                    "the router forwards (401), and the key would show in status and logs",
                    name,
                    hint="put client keys in serve.api_keys (or LLMCTL_API_KEYS); the router "
                    "checks them, and llama-server listens on loopback only",
                    path=(*out.m.field_path(name, "extra_args"), i),
                )
            elif owner is not None:
                field_names = {f.field for f in FLAGS}
                how = (
                    f"set `{owner}` instead"
                    if owner in field_names
                    else f"llmctl sets it from {owner}"
                )
                out.at(
                    "error",
                    "managed-flag",
                    f"extra_args passes {flag}, which llmctl already passes from the profile",
                    name,
                    hint=how,
                    path=(*out.m.field_path(name, "extra_args"), i),
                )
            elif flag in seen:
                out.at(
                    "warning",
                    "repeated-flag",
                    f"extra_args passes {flag} twice (llama-server keeps the last)",
                    name,
                    path=(*out.m.field_path(name, "extra_args"), i),
                )
            seen.setdefault(flag, i)


def _names(out: _Out) -> None:
    owners: dict[str, tuple[str, str]] = {}
    for name in out.m.profiles:
        owners[name.casefold()] = (name, "profile")
    for name, p in out.m.profiles.items():
        for i, alias in enumerate(p.aliases):
            key = alias.casefold()
            if key in owners:
                other, kind = owners[key]
                if other == name and kind == "profile":
                    out.at(
                        "warning",
                        "duplicate-name",
                        f"alias `{alias}` is the profile's own name",
                        name,
                        path=(*out.m.field_path(name, "aliases"), i),
                    )
                    continue
                what = f"profile `{other}`" if kind == "profile" else f"an alias of `{other}`"
                out.at(
                    "error",
                    "duplicate-name",
                    f"alias `{alias}` is already {what}; a request for it would be ambiguous",
                    name,
                    hint="names and aliases must be unique (case does not count)",
                    path=(*out.m.field_path(name, "aliases"), i),
                )
            else:
                owners[key] = (name, "alias")


def _ports(out: _Out) -> None:
    serve, server = out.m.serve, out.m.server
    if serve.port == server.port and _hosts_overlap(serve.host, server.host):
        out.at(
            "error",
            "port-conflict",
            f"the router (serve.port) and llama-server (server.port) both use port {serve.port}",
            None,
            hint="give them different ports, e.g. serve 8080 and server 8081",
            path=_first_written(
                out, ("serve", "port"), ("server", "port"), ("serve",), ("server",)
            ),
        )
    for name, p in out.m.profiles.items():
        if (
            p.port is not None
            and p.port == serve.port
            and _hosts_overlap(p.host or server.host, serve.host)
        ):
            out.at(
                "error",
                "port-conflict",
                f"profile port {p.port} is the router's port (serve.port)",
                name,
                "port",
                hint="pick another port for the profile, or leave it to server.port",
            )


def _first_written(out: _Out, *paths: tuple[str | int, ...]) -> tuple[str | int, ...]:
    keys = out.m.source.keys if out.m.source else {}
    return next((p for p in paths if p in keys), ())


def _serve(out: _Out) -> None:
    serve = out.m.serve
    if serve.default_profile is not None:
        try:
            out.m.resolve(serve.default_profile)
        except Exception:
            out.at(
                "error",
                "unknown-profile",
                f"serve.default_profile `{serve.default_profile}` is not a profile or alias",
                None,
                path=("serve", "default_profile"),
            )
    seen: set[str] = set()
    for i, up in enumerate(serve.upstreams):
        if up.name in seen:
            out.at(
                "error",
                "duplicate-name",
                f"two upstreams are named `{up.name}`",
                None,
                path=("serve", "upstreams", i, "name"),
            )
        seen.add(up.name)
        if up.type in ("openai", "llmctl"):
            if not up.url:
                out.at(
                    "error",
                    "upstream",
                    f"upstream `{up.name}` has no url",
                    None,
                    hint="set url: http://host:port/v1 (type llmctl: http://host:port), "
                    "or type: managed for the local server",
                    path=("serve", "upstreams", i),
                )
            elif not up.url.startswith(("http://", "https://")):
                out.at(
                    "error",
                    "upstream",
                    f"upstream `{up.name}`: url must start with http:// "
                    f"or https://, got {up.url!r}",
                    None,
                    path=("serve", "upstreams", i, "url"),
                )


def _files(out: _Out) -> None:
    for name, p in out.m.profiles.items():
        for field in ("model", "mmproj", "model_draft", "chat_template_file"):
            value = getattr(p, field)
            if not value:
                continue
            path = Path(value)
            if path.is_dir():
                out.at(
                    "error", "model-file", f"{field} {value} is a folder, not a file", name, field
                )
            elif not path.exists():
                where = (
                    " (estimates use its `metadata:` block)"
                    if field == "model" and p.metadata
                    else ""
                )
                out.at(
                    "warning",
                    "model-missing",
                    f"{field} {value} does not exist on this machine{where}",
                    name,
                    field,
                    hint="fine if the manifest is for another machine; else fix the path",
                )
            elif field != "chat_template_file" and is_gguf(path) is False:
                out.at(
                    "error",
                    "not-gguf",
                    f"{field} {value} is not a GGUF file (wrong magic bytes)",
                    name,
                    field,
                    hint="point it at a .gguf file (the first part of a split model)",
                )
            elif not os.access(path, os.R_OK):
                out.at("error", "model-file", f"{field} {value} is not readable", name, field)


def _binary(out: _Out) -> None:
    binary = find_binary(out.m.server.binary)
    env = os.environ.get("LLMCTL_LLAMA_SERVER")
    source = "LLMCTL_LLAMA_SERVER" if env else "server.binary" if out.m.server.binary else None
    if binary is None:
        out.at(
            "warning",
            "binary",
            "llama-server is not on PATH and no binary is configured",
            None,
            hint="set server.binary or LLMCTL_LLAMA_SERVER, or build one with "
            "scripts/build-llama-server.sh",
            path=("server",),
        )
        return
    if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        out.at(
            "error",
            "binary",
            f"llama-server binary {binary} (from {source}) does not exist or is not executable",
            None,
            path=("server", "binary"),
            hint="fix the path, or build one with scripts/build-llama-server.sh",
        )
        return
    known = known_flags(binary)
    if known is None:
        out.at(
            "warning",
            "binary",
            f"{binary} --help did not list llama-server flags; flags not checked",
            None,
            path=("server", "binary"),
        )
        return
    for name, p in out.m.profiles.items():
        args = profile_args(name, p, "127.0.0.1", 1)
        extra_start = len(args) - len(p.extra_args)
        for i, arg in enumerate(args):
            if not arg.startswith("-") or _NUMBER.match(arg) or (i > 0 and args[i - 1] in MANAGED):
                continue
            flag = arg.split("=", 1)[0]
            if flag in known:
                continue
            if i >= extra_start:
                path = (*out.m.field_path(name, "extra_args"), i - extra_start)
                close = difflib.get_close_matches(flag, sorted(known), n=1, cutoff=0.7)
                out.at(
                    "error",
                    "unknown-flag",
                    f"{binary} does not know the flag {flag}",
                    name,
                    hint=f"did you mean {close[0]}?" if close else "see llama-server --help",
                    path=path,
                )
            else:
                field = flag_owner(flag)
                out.at(
                    "error",
                    "unknown-flag",
                    f"{binary} does not know {flag} (from `{field}`); it may be older than this field",
                    name,
                    field if any(f.field == field for f in FLAGS) else None,
                    hint="update llama-server, or remove the field",
                )


def _rpc_servers(out: _Out) -> None:
    """The RPC servers profiles list: reachable now, and a llama-server that speaks RPC."""
    from llmctl.llama.rpc import NOT_SUPPORTED, RPC_SERVER_BINARY, build_has_rpc
    from llmctl.supervisor.devices import probe_rpc

    users: dict[str, tuple[str, int]] = {}  # endpoint -> first profile and index listing it
    for name, p in out.m.profiles.items():
        for i, ep in enumerate(p.rpc):
            users.setdefault(ep, (name, i))
    if not users:
        return
    binary = find_binary(out.m.server.binary)
    if binary is not None and build_has_rpc(binary) is False:
        name = next(iter(users.values()))[0]
        out.at(
            "warning",
            "rpc-unsupported",
            f"{binary} looks built without RPC (no libggml-rpc beside it): it refuses --rpc "
            f"({NOT_SUPPORTED!r})",
            name,
            "rpc",
            hint="build one with -DGGML_RPC=ON: LLMCTL_RPC=1 scripts/build-llama-server.sh",
        )
    for ep, (name, i) in users.items():
        why = probe_rpc(ep)
        if why is None:
            continue
        host, _, port = ep.partition(":")
        out.at(
            "warning",
            "rpc-unreachable",
            f"RPC server {ep} cannot be reached now ({why}); llama-server aborts at start "
            "while it cannot",
            name,
            hint=f"on {host}: `{RPC_SERVER_BINARY} -H {host} -p {port}`; fine if it runs "
            "only when the profile does",
            path=(*out.m.field_path(name, "rpc"), i),
        )
