"""Lint rules for placement: devices, port ranges, pinned profiles that cannot all be resident."""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmctl.errors import LlmctlError, Problem
from llmctl.manifest.problems import problem as _at
from llmctl.manifest.rules import wanted_devices as _wanted

if TYPE_CHECKING:
    from llmctl.manifest.model import Manifest


def machine_problems(m: Manifest) -> list[Problem]:
    """Rules that read models and the llama-server binary (for `llmctl lint`)."""
    from llmctl.llama.binary import find_binary, list_devices
    from llmctl.supervisor.devices import detect

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
    if binary is not None:
        out.extend(_main_gpu_problems(m, binary))
    report = detect(m.device_configs())
    # pinned profiles with one explicit device: all of them must fit there together
    listed = {d.name for d in report.devices}
    pinned = [
        (name, wanted[0])
        for name, p in m.profiles.items()
        if p.pinned and len(wanted := _wanted(p.device)) == 1 and wanted[0] in listed
    ]
    if not pinned:
        return out  # the placer and its policy are not imported: `llmctl lint` starts faster
    from llmctl.placement.placer import placement_request
    from llmctl.placement.policy import Device

    devices = {d.name: Device(d.name, d.budget or 0, d.headroom) for d in report.devices}
    by_device: dict[str, list[tuple[str, int, str]]] = {}
    for name, device in pinned:
        try:
            placed = placement_request(m, name, report.devices)
        except (LlmctlError, ValueError):
            continue
        if not placed.plans:
            continue
        # the figure the placer decides by: the engine's plan when kept, else the formula
        need = placed.request.options[0].usage.get(device, 0)
        label = str(placed.specs[0].placement.get("memory_source", "formula"))
        by_device.setdefault(device, []).append((name, need, label))
    for dev, items in by_device.items():
        total = sum(n for _, n, _ in items)
        usable = devices[dev].usable
        if len(items) > 1 and total > usable:
            listing = ", ".join(f"{n} ({b / 1024**2:.0f} MiB, {src})" for n, b, src in items)
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


def _main_gpu_problems(m: Manifest, binary: str) -> list[Problem]:
    """`main_gpu: N` where llama-server lists fewer devices: b9093 and other builds of early 2026
    then refuse to load the model ("invalid value for main_gpu"), newer ones ignore it."""
    from llmctl.llama.binary import list_devices

    wanted = [(name, p.main_gpu) for name, p in m.profiles.items() if p.main_gpu is not None]
    if not wanted:
        return []  # --list-devices is not asked
    gpus = list_devices(binary)  # the CPU is not among them
    if gpus is None:
        return []
    return [
        _at(
            m,
            "warning",
            "main-gpu",
            f"main_gpu: {index} names GPU {index}, but {binary} lists "
            f"{_gpus(gpus)}: some llama.cpp builds (b9093) then refuse to load the model, "
            "newer ones ignore it",
            name,
            "main_gpu",
            hint="remove main_gpu on this machine, or use a GPU `llama-server --list-devices` lists",
        )
        for name, index in wanted
        if index >= len(gpus)
    ]


def _gpus(names: list[str]) -> str:
    if not names:
        return "no GPU"
    return f"{len(names)} GPU{'s' if len(names) > 1 else ''} ({', '.join(names)})"
