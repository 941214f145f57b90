"""The rules across fields and profiles that need only the manifest: flags passed twice or managed,
names and aliases, ports, the serve section, devices and RPC servers. A manifest is checked with
them when it is loaded (manifest/view.py, manifest/cache.py); lint/ adds the rules that read the
machine. Pure: no files, no processes."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from llmctl.errors import Problem
from llmctl.llama.flags import FLAGS, QUANTIZED_CACHE_TYPES, flag_owner
from llmctl.manifest.problems import ProblemSink, problem

if TYPE_CHECKING:
    from llmctl.manifest.model import Manifest

_NUMBER = re.compile(r"^-?[0-9.]+$")
_ANY_HOST = {"0.0.0.0", "::", ""}


def manifest_rules(manifest: Manifest) -> list[Problem]:
    """Every rule across fields and profiles that needs only `manifest`."""
    out = ProblemSink(manifest)
    _flag_rules(out)
    _names(out)
    _ports(out)
    _serve(out)
    out.problems.extend(static_problems(manifest))
    return out.problems


def _hosts_overlap(a: str, b: str) -> bool:
    loop = {"127.0.0.1", "localhost", "::1"}
    if a in _ANY_HOST or b in _ANY_HOST:
        return True
    return a == b or (a in loop and b in loop)


def _flag_rules(out: ProblemSink) -> None:
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


def _names(out: ProblemSink) -> None:
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


def _ports(out: ProblemSink) -> None:
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


def _first_written(out: ProblemSink, *paths: tuple[str | int, ...]) -> tuple[str | int, ...]:
    keys = out.m.source.keys if out.m.source else {}
    return next((p for p in paths if p in keys), ())


def _serve(out: ProblemSink) -> None:
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


def wanted_devices(value: str | list[str] | None) -> list[str]:
    if value is None or (isinstance(value, str) and value.lower() == "auto"):
        return []
    return [value] if isinstance(value, str) else list(value)


def static_problems(m: Manifest) -> list[Problem]:
    """Rules that need only the manifest (also checked when a manifest is loaded)."""
    out: list[Problem] = []
    names = [d.name for d in m.device_configs()]
    if isinstance(m.gpu, list):
        seen: set[str] = set()
        for i, d in enumerate(m.gpu):
            if d.name in seen:
                out.append(
                    problem(
                        m,
                        "error",
                        "device",
                        f"device {d.name} is listed twice under gpu:",
                        None,
                        path=("gpu", i, "name"),
                        hint="each device once",
                    )
                )
            seen.add(d.name)
    out.extend(_rpc_problems(m))
    for name, p in m.profiles.items():
        for want in wanted_devices(p.device):
            if want not in names:
                out.append(
                    problem(
                        m,
                        "error",
                        "device",
                        f"profile asks for device {want}, which gpu: does not list",
                        name,
                        "device",
                        hint=f"devices: {', '.join(names)}; list it under gpu: or use device: auto",
                    )
                )
    ports = m.server.ports
    if ports is not None:
        lo, hi = ports
        need = sum(1 for p in m.profiles.values() if p.port is None)
        if hi - lo + 1 < need:
            out.append(
                problem(
                    m,
                    "error",
                    "port-range",
                    f"server.ports {lo}-{hi} holds {hi - lo + 1} ports for {need} profiles",
                    None,
                    path=("server", "ports"),
                    hint=f"widen it, e.g. {lo}-{lo + need - 1}",
                )
            )
        if lo <= m.serve.port <= hi:
            out.append(
                problem(
                    m,
                    "error",
                    "port-conflict",
                    f"the router's port {m.serve.port} (serve.port) is inside server.ports {lo}-{hi}",
                    None,
                    path=("server", "ports"),
                    hint="move the range or the router's port",
                )
            )
    return out


def _rpc_problems(m: Manifest) -> list[Problem]:
    """Each RPC server a profile lists needs its device under gpu:, with a budget."""
    from llmctl.llama.rpc import RPC_SERVER_BINARY

    out: list[Problem] = []
    listed = {d.rpc: i for i, d in enumerate(m.gpu) if d.rpc} if isinstance(m.gpu, list) else {}
    if isinstance(m.gpu, list):
        for i, d in enumerate(m.gpu):
            if d.rpc is not None and d.vram is None:
                out.append(
                    problem(
                        m,
                        "warning",
                        "rpc-budget",
                        f"device {d.name} has no `vram`: llmctl cannot check what the profiles "
                        "that use it put there",
                        None,
                        path=("gpu", i),
                        hint="set vram: to the remote GPU's memory (or the remote RAM for a "
                        "CPU-only ggml-rpc-server)",
                    )
                )
    for name, p in m.profiles.items():
        seen: set[str] = set()
        for i, ep in enumerate(p.rpc):
            path = (*m.field_path(name, "rpc"), i)
            if ep in seen:
                out.append(
                    problem(
                        m,
                        "error",
                        "rpc",
                        f"RPC server {ep} is listed twice",
                        name,
                        path=path,
                        hint="each server once: llama-server uses every device a server exposes",
                    )
                )
            seen.add(ep)
            if ep not in listed:
                example = f"{{rpc: {ep}, vram: 24GiB}}"
                where = (
                    "to the gpu: list"
                    if isinstance(m.gpu, list)
                    else "under gpu:, written as a list of devices (see the README)"
                )
                out.append(
                    problem(
                        m,
                        "error",
                        "rpc-budget",
                        f"RPC server {ep} has no device under gpu:, so its memory budget is "
                        f"unknown and the layers it would take cannot be planned",
                        name,
                        path=path,
                        hint=f"add `- {example}` {where}, with the remote GPU's memory (or its "
                        f"RAM); on that machine: `{RPC_SERVER_BINARY} -H {ep.partition(':')[0]} -p "
                        f"{ep.partition(':')[2]}`",
                    )
                )
    return out
