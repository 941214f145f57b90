"""Ask llama-server for a profile's memory plan before launching it (`llmctl estimate --engine`,
and the placer for a profile it has no figure for).

The probe runs the profile's exact launch command, on a free port of 127.0.0.1 and with
`--log-jsonl`, until the `fit_memory_breakdown` event, then stops it: no weight is read, and
nothing is left running. It runs only on this machine (the plan names this machine's devices).
A llama-server without `--log-jsonl` (an older build) runs as given, and its plan is read from
the text table it prints before loading (llama/engineplan.TextTable); a build that prints
neither leaves the formula to decide, and says so. A plan is kept under the
calibration key (model file, memory arguments, build), so a later decision reuses it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, NamedTuple

from llmctl.paths import engine_plans_file, on_path

if TYPE_CHECKING:
    from llmctl.llama.engineplan import EnginePlan
    from llmctl.manifest.model import Manifest
    from llmctl.memory.engine import EngineStore
    from llmctl.supervisor.launch import LaunchSpec

PROBE_TIMEOUT = 60.0


class ProbeResult(NamedTuple):
    """The engine's plan for a profile, or why there is none (then the formula stands). (A
    NamedTuple: `llmctl estimate` imports this module on every run; a dataclass costs more.)"""

    profile: str
    plan: EnginePlan | None
    reason: str | None
    seconds: float
    key: str | None = None
    build: str | None = None
    cached: bool = False


def engine_store() -> EngineStore:
    from llmctl.memory.engine import EngineStore

    return EngineStore(engine_plans_file())


def _key(spec: LaunchSpec) -> tuple[str, str | None]:
    from llmctl.llama.binary import llama_build
    from llmctl.memory.calibration import calibration_key

    build = llama_build(spec.argv[0])
    return calibration_key(spec.model, spec.argv, build), build.label if build else None


def known_plan(manifest: Manifest, name: str) -> EnginePlan | None:
    """The plan kept for this profile's exact launch, without running anything new."""
    from llmctl.supervisor.launch import launch_spec

    return known_plan_for(launch_spec(manifest, name))


def known_plan_for(spec: LaunchSpec) -> EnginePlan | None:
    """The plan kept for this launch, if any (nothing is run; the store is read only when it
    exists, and the build is asked only then)."""
    return known_figures_for(spec)[0]


def kept_plan(manifest: Manifest, name: str) -> tuple[EnginePlan, str | None] | None:
    """The plan kept for this profile's launch and the llama.cpp build that stated it (for a
    warning naming the build), without running anything new."""
    plan, _, build = kept_figures(manifest, name)
    return None if plan is None else (plan, build)


def kept_figures(
    manifest: Manifest, name: str
) -> tuple[EnginePlan | None, dict[str, int], str | None]:
    """What is kept for this profile's launch: the engine's plan, the least it needs per device
    (an out-of-memory load's floor), and the build; nothing is run."""
    from llmctl.supervisor.launch import launch_spec

    spec = launch_spec(manifest, name)
    plan, floor = known_figures_for(spec)
    if plan is None and not floor:
        return None, {}, None
    return plan, floor, _key(spec)[1]


def known_figures_for(spec: LaunchSpec) -> tuple[EnginePlan | None, dict[str, int]]:
    """The plan kept for this launch and the least it needs per device (an out-of-memory load's
    floor), each empty when none is kept; nothing is run, and nothing read when nothing was
    ever kept."""

    if not engine_plans_file().exists():
        return None, {}  # nothing probed yet: no import of the plan code on the everyday paths
    store = engine_store()
    if not os.access(on_path(spec.argv[0]) or spec.argv[0], os.X_OK):
        return None, {}
    key, _ = _key(spec)
    return store.get(key), store.floor(key)


def record_oom_floor(spec: LaunchSpec, floor: dict[str, int]) -> None:
    """Keep what this launch showed it needs at least, per device (an out-of-memory load, or
    what nvidia-smi says a ready server holds), under its calibration key (beside its engine
    plan). Never fails the caller."""
    try:
        key, build = _key(spec)
        engine_store().put_floor(key, floor, model=spec.model, build=build)
    except (OSError, ValueError):
        pass  # a cache: the next placement decides by the figures it has


def record_gpu_used(spec: LaunchSpec, pid: int) -> dict[str, Any] | None:
    """Where nvidia-smi is present: the GPU memory the ready server `pid` holds (CUDA context
    included, what the card really lost), kept as the launch's least need per device under its
    calibration key, so the placer decides by it (`measured`); its figures for the launch record
    (MiB), or None. Never fails the launch."""
    from llmctl.supervisor.devices import nvidia_smi_path

    if nvidia_smi_path() is None:
        return None  # no NVIDIA here: nothing to ask, nothing imported
    from llmctl.supervisor.gpu import used_by

    visible = spec.env.get("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES"))
    used = used_by(pid, visible)
    if not used:
        return None
    record_oom_floor(spec, used)
    mib = 1024 * 1024
    return {
        "source": "nvidia-smi",
        "by_device_mib": {name: round(size / mib, 1) for name, size in used.items()},
    }


def probe_profile(
    manifest: Manifest, name: str, *, spec: LaunchSpec | None = None, reuse: bool = False
) -> ProbeResult:
    """The engine's plan for profile `name` on this machine (see the module docstring): of
    `spec` when given (the placer's launch, with its device flags), else of its launch_spec.

    With `reuse`, a plan kept for the same launch key is returned without a probe.
    """
    from llmctl.llama.binary import known_flags
    from llmctl.llama.engineplan import FLAG, probe
    from llmctl.memory.calibration import on_free_port
    from llmctl.supervisor.launch import launch_spec

    name = manifest.resolve(name)
    spec = spec or launch_spec(manifest, name)
    binary = on_path(spec.argv[0]) or spec.argv[0]
    if not os.access(binary, os.X_OK):
        return ProbeResult(
            name,
            None,
            f"{binary} is not an executable here (server.binary, $LLMCTL_LLAMA_SERVER or PATH)",
            0.0,
        )
    flags = known_flags(binary)
    if flags is None:
        return ProbeResult(name, None, f"{binary} --help did not answer", 0.0)
    jsonl = FLAG in flags  # else an older build: its plan is a text table in its log
    key, build = _key(spec)
    store = engine_store()
    if reuse:
        kept = store.get(key)
        if kept is not None:
            return ProbeResult(name, kept, None, 0.0, key, build, cached=True)
    env = {k: v for k, v in os.environ.items() if k not in spec.unset_env}
    env.update(spec.env)
    outcome = probe(
        on_free_port(spec.argv),
        env=env,
        timeout=min(PROBE_TIMEOUT, spec.ready_timeout),
        jsonl=jsonl,
    )
    if outcome.plan is None and not jsonl:
        outcome.reason = (
            f"this llama-server has no {FLAG} and printed no memory breakdown before loading "
            f"({outcome.reason}): the formula decides"
        )
    if outcome.plan is not None:
        store.put(key, outcome.plan, model=spec.model, build=build)
    return ProbeResult(name, outcome.plan, outcome.reason, outcome.seconds, key, build)


def record_launch_plan(spec: LaunchSpec, stated: str | EnginePlan) -> dict[str, Any] | None:
    """Keep the plan a launch stated in its log (the `--log-jsonl` event line, or the plan of a
    text log's table) under the launch's calibration key, as a probe would; its per-device
    figures for the launch record (MiB), or None when it is no usable plan. Never fails the
    launch."""
    from llmctl.llama.engineplan import PlanFormatError, parse_line
    from llmctl.memory.engine import plan_total

    if isinstance(stated, str):
        try:
            plan = parse_line(stated)
        except PlanFormatError:
            return None
    else:
        plan = stated
    if plan is None:
        return None
    try:
        key, build = _key(spec)
        engine_store().put(key, plan, model=spec.model, build=build)
    except (OSError, ValueError):
        pass  # the record still shows the plan; the store is a cache
    mib = 1024 * 1024
    return {
        "source": "engine plan",
        "by_device_mib": {
            name: round(size / mib, 1) for name, size in plan_total(plan).items() if size
        },
    }
