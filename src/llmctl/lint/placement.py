"""Lint rules for placement: devices, port ranges, pinned profiles that cannot all be resident."""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmctl.errors import LlmctlError, Problem

if TYPE_CHECKING:
    from llmctl.manifest.model import Manifest


def _at(
    m: Manifest,
    severity: str,
    rule: str,
    message: str,
    profile: str | None,
    field: str | None = None,
    hint: str | None = None,
    path: tuple[str | int, ...] | None = None,
) -> Problem:
    file = str(m.path)
    line = column = None
    if path is not None and m.source is not None:
        line, column = m.source.position(path)
    elif profile is not None:
        file, line, column = m.where(profile, field)
    return Problem(severity, rule, message, profile, file, line, column, hint)  # type: ignore[arg-type]


def _wanted(value: str | list[str] | None) -> list[str]:
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
                    _at(
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
        for want in _wanted(p.device):
            if want not in names:
                out.append(
                    _at(
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
                _at(
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
                _at(
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
                    _at(
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
                    _at(
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
                    _at(
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


def machine_problems(m: Manifest) -> list[Problem]:
    """Rules that read models and the llama-server binary (for `llmctl lint`)."""
    from llmctl.llama.binary import find_binary, list_devices
    from llmctl.supervisor.devices import detect
    from llmctl.supervisor.placement import Device

    out: list[Problem] = []
    binary = find_binary(m.server.binary)
    if isinstance(m.gpu, list) and binary is not None:
        known = list_devices(binary)
        if known is not None:
            for i, d in enumerate(m.gpu):
                if d.name.upper() != "CPU" and d.rpc is None and d.name not in known:
                    out.append(
                        _at(
                            m,
                            "error",
                            "device",
                            f"{binary} does not list device {d.name} (--list-devices: "
                            f"{', '.join(known) or 'none'})",
                            None,
                            path=("gpu", i, "name"),
                            hint="use a name from `llama-server --list-devices`, or CPU",
                        )
                    )
    report = detect(m.device_configs())
    devices = {d.name: Device(d.name, d.budget or 0, d.headroom) for d in report.devices}
    # pinned profiles with one explicit device: all of them must fit there together
    from llmctl.supervisor.placer import placement_request

    by_device: dict[str, list[tuple[str, int]]] = {}
    for name, p in m.profiles.items():
        wanted = _wanted(p.device)
        if not p.pinned or len(wanted) != 1 or wanted[0] not in devices:
            continue
        try:
            placed = placement_request(m, name, report.devices)
        except (LlmctlError, ValueError):
            continue
        if not placed.plans:
            continue
        need = placed.plans[0].usage().get(wanted[0], 0)
        by_device.setdefault(wanted[0], []).append((name, need))
    for dev, items in by_device.items():
        total = sum(n for _, n in items)
        usable = devices[dev].usable
        if len(items) > 1 and total > usable:
            listing = ", ".join(f"{n} ({b / 1024**2:.0f} MiB)" for n, b in items)
            out.append(
                _at(
                    m,
                    "error",
                    "pinned-overcommit",
                    f"pinned profiles on {dev} need {total / 1024**2:.0f} MiB together, "
                    f"{usable / 1024**2:.0f} MiB usable: {listing}",
                    items[-1][0],
                    "pinned",
                    hint="unpin one, move one to another device, or shrink it (`llmctl fit`)",
                )
            )
    return out
