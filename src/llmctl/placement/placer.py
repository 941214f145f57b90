"""From a manifest to the placement policy's inputs, and from its decision to a launch.

`placement_request` turns a profile into its ways of running (one DevicePlan per option, with the
launch spec that runs it); `running_servers` turns the state's records into the policy's view;
`decide` (llmctl.placement.policy) chooses.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from llmctl.errors import LlmctlError, LoadCancelled
from llmctl.paths import is_hub_model

if TYPE_CHECKING:
    from llmctl.llama.engineplan import EnginePlan
    from llmctl.manifest.model import Manifest
    from llmctl.memory.estimate import Estimate
    from llmctl.placement.plan import DevicePlan
    from llmctl.placement.policy import Decision, Device, OomRetry, Request, Running
    from llmctl.supervisor.devices import DeviceInfo
    from llmctl.supervisor.launch import LaunchSpec
    from llmctl.supervisor.lifecycle import Supervisor
    from llmctl.supervisor.results import Event, SwitchResult
    from llmctl.supervisor.state import LaunchRecord

# The policy (llmctl.placement.policy) is imported where it is used: `llmctl switch` and
# `command` reach this module for `command_spec` and, without listed devices, need no policy.

# Flags the plan sets when the manifest lists devices; the profile's own are replaced.
PLAN_FLAGS = {
    "-ngl": True,
    "--n-gpu-layers": True,
    "--gpu-layers": True,
    "-sm": True,
    "--split-mode": True,
    "-ts": True,
    "--tensor-split": True,
    "-mg": True,
    "--main-gpu": True,
    "-dev": True,
    "--device": True,
}


@dataclass
class Placement:
    """A profile's ways of running, in order of preference."""

    profile: str
    plans: list[DevicePlan]
    specs: list[LaunchSpec]
    estimate: Estimate | None
    request: Request
    notes: list[str] = field(default_factory=list)


def policy_devices(devices: Sequence[DeviceInfo]) -> list[Device]:
    from llmctl.placement.policy import Device

    return [
        Device(d.name, d.budget if d.budget is not None else 0, d.headroom)
        for d in devices
        if d.budget is not None
    ]


def _gpu_choices(
    manifest: Manifest, name: str, devices: Sequence[DeviceInfo]
) -> list[list[DeviceInfo]]:
    """The device sets a profile may use: [] means the CPU device alone. The devices of the
    profile's RPC servers are in every set, first (llama-server's order)."""
    from llmctl.llama.rpc import device_key
    from llmctl.supervisor.devices import DeviceInfo

    profile = manifest.profiles[name]
    gpus = [d for d in devices if not d.is_cpu and d.rpc is None]
    by_name = {d.name: d for d in devices}
    remote = [
        by_name.get(device_key(ep)) or DeviceInfo(device_key(ep), None, 0, 0, rpc=ep)
        for ep in profile.rpc
    ]
    wanted = profile.device
    if isinstance(wanted, str) and wanted.lower() != "auto":
        wanted = [wanted]
    if isinstance(wanted, list):
        missing = [w for w in wanted if w not in by_name]
        if missing:
            raise LlmctlError(
                f"profile {name!r} asks for device {missing[0]!r}, which the manifest does not list",
                hint=f"devices: {', '.join(by_name)}; add it under gpu: or fix `device`",
            )
        chosen = [by_name[w] for w in wanted if not by_name[w].is_cpu]
        return [remote + chosen]
    if profile.n_gpu_layers == 0 or not gpus:
        return [remote]
    choices: list[list[DeviceInfo]] = [[*remote, g] for g in gpus]
    if len(gpus) > 1:
        choices.append(remote + list(gpus))
    return choices


def placement_request(manifest: Manifest, name: str, devices: Sequence[DeviceInfo]) -> Placement:
    """Every way profile `name` may run on `devices`, with its memory per device.

    A profile whose model can be neither read nor described (`metadata:`) is placed with no
    memory (its launch will fail and say why).
    """
    from llmctl.memory.profile import estimate_profile, source_for_profile
    from llmctl.placement.plan import DevicePlan, GpuTarget, plan_devices
    from llmctl.supervisor.launch import launch_spec

    name = manifest.resolve(name)
    profile = manifest.profiles[name]
    base = launch_spec(manifest, name)
    notes: list[str] = []
    # nothing asked of the hub: a hub model's pulled file, or the header an estimate read
    source = source_for_profile(profile, network=False)
    est = (
        estimate_profile(manifest, name, budget=False, source=source, network=False)
        if source is not None
        else None
    )
    if est is None and is_hub_model(profile.model):
        notes.append(
            f"{profile.model} of {name!r} is neither pulled nor its header read: its memory is "
            f"unknown (`llmctl estimate {name}` reads the header, `llmctl pull {name}` the file)"
        )
    elif est is None:
        notes.append(f"no model file or metadata for {name!r}: its memory is unknown")
    plans: list[DevicePlan] = []
    specs: list[LaunchSpec] = []
    for gpus in _gpu_choices(manifest, name, devices):
        targets = [
            GpuTarget(g.name, g.overhead, _share(g), _launch_name(g, profile.rpc)) for g in gpus
        ]
        if est is not None and source is not None:
            plan = plan_devices(
                est,
                source,
                targets,
                split_mode=profile.split_mode,
                tensor_split=profile.tensor_split,
                main_gpu=profile.main_gpu,
            )
        else:
            plan = DevicePlan(tuple(t.name for t in targets), "layer", (), 0, 0, [])
        plan.flags = manifest.devices_listed
        plans.append(plan)
        specs.append(with_plan(base, plan) if manifest.devices_listed else base)
    from llmctl.placement.policy import Option, Request
    from llmctl.supervisor.probe import known_figures_for

    usages: list[dict[str, int]] = []
    sources: list[str] = []
    floors: list[dict[str, int]] = []
    for spec, plan in zip(specs, plans, strict=True):
        found, floor = known_figures_for(spec)
        engine = _engine_usage(found, plan, est)
        usage = engine if engine is not None else plan.usage()
        label = "engine plan" if engine is not None else "formula"
        raised = {d: b for d, b in floor.items() if b > usage.get(d, 0)}
        if raised:  # an out-of-memory load of this launch showed it needs more
            usage = {**usage, **raised}
            label = "measured"
        usages.append(usage)
        sources.append(label)
        floors.append(raised)
    if "engine plan" in sources:
        notes.append(f"memory of {name!r} from llama-server's own plan of this launch")
    for raised in floors[:1]:
        if raised:
            notes.append(
                f"memory of {name!r} raised to what a load that ran out of memory showed: "
                + ", ".join(f"more than {b / 1024**2:.0f} MiB on {d}" for d, b in raised.items())
            )
    options = [Option(u, p.label) for u, p in zip(usages, plans, strict=True)]
    specs = [
        replace(spec, placement={**_placement_info(plan, est), "usage": u, "memory_source": src})
        for spec, plan, u, src in zip(specs, plans, usages, sources, strict=True)
    ]
    request = Request(
        profile=name,
        options=options,
        group=profile.group,
        port=base.port,
        configs=tuple(sp.config_hash for sp in specs),
    )
    return Placement(name, plans, specs, est, request, notes)


def _launch_name(device: DeviceInfo, rpc: Sequence[str]) -> str:
    """The name --device takes: an RPC device's is its place in the profile's --rpc list."""
    from llmctl.llama.rpc import device_name

    return device.name if device.rpc is None else device_name(list(rpc).index(device.rpc))


def _share(device: DeviceInfo) -> float:
    """A GPU's weight in --tensor-split when the profile gives none: its usable GiB (0.1 steps)."""
    usable = (device.budget or 0) - device.headroom
    return max(0.1, round(usable / 1024**3, 1))


def command_spec(manifest: Manifest, name: str) -> LaunchSpec:
    """The launch `llmctl switch`/`command` use: the plan's first choice when devices are listed."""
    from llmctl.supervisor.launch import launch_spec

    if not manifest.devices_listed:
        return launch_spec(manifest, name)
    from llmctl.supervisor.devices import detect

    report = detect(manifest.device_configs())
    return placement_request(manifest, name, report.devices).specs[0]


def with_plan(spec: LaunchSpec, plan: DevicePlan) -> LaunchSpec:
    """The spec with the plan's device flags in place of the profile's."""
    argv = list(spec.argv)
    out = [argv[0]]
    i = 1
    while i < len(argv):
        flag = argv[i].split("=", 1)[0]
        if flag in PLAN_FLAGS:
            i += 1 if "=" in argv[i] else 2
            continue
        out.append(argv[i])
        i += 1
    # the plan's flags go right after the model's, before host/port and extra_args
    at = out.index("--host") if "--host" in out else len(out)
    out[at:at] = plan.launch_args()
    return replace(spec, argv=tuple(out))


def _engine_usage(
    found: EnginePlan | None, plan: DevicePlan, est: Estimate | None
) -> dict[str, int] | None:
    """Bytes per device from llama-server's own plan of exactly this launch, when one is kept
    (`llmctl estimate --engine`): its device rows by name, the host as CPU, each term rounded up
    to the plan's resolution (it states whole MiB, rounded down), and what the plan does not
    state added as the formula has it: each GPU's backend overhead, the host's output buffer.
    The CPU's extra buffer types (AMX, CPU_REPACK) count on the host, and the host's weights are
    never fewer than the tensor table puts there (on a CPU with AMX, the dry run leaves out the
    mmapped weights beside an AMX buffer: 0 MiB stated for 2.57 allocated)."""
    if found is None:
        return None
    overhead = {s.device: s.overhead_bytes for s in plan.shares}
    usage: dict[str, int] = {}
    host_model = 0
    for row in found.memory_rows():
        device = "CPU" if found.on_host(row) else row.name
        terms = [v for v in (row.model, row.context, row.compute) if v]
        upper = sum(terms) + found.resolution * len(terms)
        usage[device] = usage.get(device, 0) + upper + overhead.get(device, 0)
        if device == "CPU" and row.model:
            host_model += row.model + found.resolution
    if est is not None:
        missing = est.weights.cpu_bytes - host_model
        usage["CPU"] = usage.get("CPU", 0) + est.output_bytes + max(0, missing)
    return {d: b for d, b in usage.items() if b > 0}


def _placement_info(plan: DevicePlan, est: Estimate | None) -> dict[str, Any]:
    """What the state keeps of a placed server (LaunchRecord.extra)."""
    return {
        "usage": plan.usage(),
        "devices": list(plan.gpus) or ["CPU"],
        "weights_bytes": est.weights.bytes if est is not None else 0,
    }


def _resident(profile: Any, rec: LaunchRecord, now: float) -> bool:
    keep = getattr(profile, "min_residency", None) or 0.0
    since = rec.ready_at or rec.started_at
    return bool(keep) and since is not None and now < since + keep


def running_servers(
    manifest: Manifest,
    records: Mapping[str, LaunchRecord],
    activity: Mapping[str, tuple[float, int]] | None = None,
    now: float | None = None,
) -> list[Running]:
    """The policy's view of the running servers. `activity`: profile -> (last used, in flight),
    from the router; else the time each became ready. A server ready less than its profile's
    `min_residency` ago (wall clock `now`) is `resident`: evicted only when nothing else frees
    enough."""
    import time

    from llmctl.placement.policy import Running

    clock = time.time() if now is None else now
    out: list[Running] = []
    for name, rec in records.items():
        info = rec.extra or {}
        profile = manifest.profiles.get(name)
        last, inflight = (activity or {}).get(name, (rec.ready_at or rec.started_at, 0))
        out.append(
            Running(
                profile=name,
                usage=dict(info.get("usage", {})),
                reload_cost=int(info.get("weights_bytes", 0)),
                last_used=last,
                inflight=inflight,
                pinned=bool(profile.pinned) if profile is not None else False,
                group=profile.group if profile is not None else None,
                port=rec.port,
                config=rec.config_hash,
                resident=_resident(profile, rec, clock),
            )
        )
    return out


class PlacementRefused(LlmctlError):
    """The profile cannot be placed: it does not fit, or pinned servers stand in the way."""

    decision: Decision | None = None

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        if self.decision is not None:
            out["decision"] = self.decision.to_json()
        return out


def refusal(decision: Decision) -> PlacementRefused:
    if decision.alone and decision.shortfall:
        hint = (
            f"`llmctl fit {decision.profile}` shows the context, cache types or layers that fit; "
            "or raise the device's budget under gpu:"
        )
    elif decision.shortfall:
        hint = "unload or unpin a pinned profile (`llmctl ps` lists them), or shrink this one"
    elif "(port " in decision.reason:
        hint = (
            "give the profiles their own ports: `server.ports: 8100-8199` in the manifest "
            "(as `llmctl init` writes it), or `port:` per profile"
        )
    else:
        hint = "see `llmctl devices` and `llmctl ps`"
    err = PlacementRefused(decision.reason, hint=hint)
    err.decision = decision
    return err


@dataclass
class LoadOutcome:
    decision: Decision | None
    result: SwitchResult | None
    placement: Placement | None  # None: the profile already ran, nothing was placed
    oom: OomRetry | None = None  # the first load ran out of memory: what was done about it


def plan_load(
    manifest: Manifest,
    name: str,
    records: Mapping[str, LaunchRecord],
    devices: Sequence[DeviceInfo],
    activity: Mapping[str, tuple[float, int]] | None = None,
    placement: Placement | None = None,
    keep: Collection[str] = (),
) -> tuple[Decision, Placement]:
    """The decision for loading `name` now (pure apart from reading the model's header);
    the profiles in `keep` are held as if pinned."""

    from llmctl.placement.policy import decide

    placed = placement or placement_request(manifest, name, devices)
    running = [
        r._replace(pinned=True) if r.profile in keep else r
        for r in running_servers(manifest, records, activity)
    ]
    return decide(policy_devices(devices), running, placed.request), placed


def plan_set(
    manifest: Manifest,
    names: Sequence[str],
    records: Mapping[str, LaunchRecord],
    devices: Sequence[DeviceInfo],
) -> list[tuple[Decision, Placement]]:
    """The decisions for loading `names` as one set (see placement.decide_set); stops at the
    first refusal."""
    from llmctl.placement.policy import decide_set

    placed = [placement_request(manifest, name, devices) for name in names]
    running = running_servers(manifest, records)
    decisions = decide_set(policy_devices(devices), running, [p.request for p in placed])
    return list(zip(decisions, placed, strict=False))


def load_profile(
    sup: Supervisor,
    manifest: Manifest,
    name: str,
    devices: Sequence[DeviceInfo],
    *,
    activity: Callable[[], Mapping[str, tuple[float, int]]] | None = None,
    before_evict: Callable[[Decision], None] | None = None,
    on_event: Callable[[Event], None] | None = None,
    cancel: Any = None,
    keep: Collection[str] = (),
    admitted_at: float | None = None,
) -> LoadOutcome:
    """Load profile `name` beside what runs, unloading what the policy says (under the lock).

    Raises PlacementRefused before anything is stopped when it cannot be placed.
    `before_evict(decision)` runs under the lock before victims stop (the router waits there
    for their requests in flight). The profiles in `keep` (loaded by the same command) are
    held as if pinned. `admitted_at`: the router's request time (Supervisor.load).
    """
    box: dict[str, Any] = {}

    def placement() -> Placement:
        # the estimate and plans, made once and only when needed: a profile that already runs
        # healthy is a no-op found before (unless listed devices give it several ways to run)
        if "placed" not in box:
            box["placed"] = placement_request(manifest, name, devices)
        placed: Placement = box["placed"]
        return placed

    if manifest.devices_listed:
        first, same_as = placement().specs[0], placement().specs[1:]
    else:
        first, same_as = command_spec(manifest, name), []

    def choose(records: dict[str, LaunchRecord]) -> tuple[list[str], LaunchSpec]:
        placed = placement()
        decision, _ = plan_load(
            manifest, name, records, devices, activity() if activity else None, placed, keep
        )
        box["decision"] = decision
        if decision.action == "refuse":
            raise refusal(decision)
        if decision.action == "noop" or decision.option is None:
            return [], placed.specs[0]
        if decision.evict and before_evict is not None:
            before_evict(decision)
        return list(decision.evict), placed.specs[decision.option]

    result = sup.load(
        first,
        choose=choose,
        same_as=same_as,
        on_event=on_event,
        cancel=cancel,
        admitted_at=admitted_at,
    )
    decision: Decision | None = box.get("decision")
    from llmctl.placement.oom import attempts_text, failed_device, out_of_memory_of, with_reason

    oom = out_of_memory_of(result)
    if oom is None or decision is None or decision.action != "start" or decision.option is None:
        return LoadOutcome(decision, result, box.get("placed"))
    # out of memory at load: the next victim, one retry, the need kept (placement.after_oom)
    from llmctl.placement.policy import after_oom
    from llmctl.supervisor.probe import record_oom_floor
    from llmctl.supervisor.results import Event

    failed = decision
    failed_spec = placement().specs[decision.option]
    device = failed_device(oom, failed.usage)

    def retry_for(records: Mapping[str, LaunchRecord], attempts: int) -> OomRetry:
        running = [
            r._replace(pinned=True) if r.profile in keep else r
            for r in running_servers(manifest, records, activity() if activity else None)
        ]
        return after_oom(
            policy_devices(devices),
            running,
            placement().request,
            failed,
            device,
            attempts,
            drain=before_evict is not None,
        )

    first_try = retry_for(sup.records(), 1)
    if first_try.floor:
        record_oom_floor(failed_spec, dict(first_try.floor))
    if on_event is not None:
        on_event(Event("log", first_try.reason, result.elapsed_s if result else 0.0, name))
    assert result is not None and result.error is not None
    first_error = result.error
    if not first_try.retry:
        error = with_reason(first_error, first_try.reason)
        return LoadOutcome(failed, replace(result, error=error), box.get("placed"), first_try)
    box.pop("placed", None)  # placed again: the need just kept raises its figure

    def choose_again(records: dict[str, LaunchRecord]) -> tuple[list[str], LaunchSpec]:
        again = retry_for(records, 1)  # under the lock, with what runs now
        if not again.retry or again.decision is None or again.decision.option is None:
            raise PlacementRefused(
                f"{first_error.message}; {again.reason}",
                hint="see `llmctl ps` and `llmctl devices`",
            )
        box["decision"] = again.decision
        if again.decision.evict and before_evict is not None:
            before_evict(again.decision)
        return list(again.decision.evict), placement().specs[again.decision.option]

    second = sup.load(
        placement().specs[0],
        choose=choose_again,
        on_event=on_event,
        cancel=cancel,
        admitted_at=admitted_at,
    )
    retried: Decision = box.get("decision") or first_try.decision or failed
    both = retried._replace(
        evict=tuple(dict.fromkeys((*failed.evict, *retried.evict))),
        reason=f"{failed.reason}; {first_try.reason}",
    )
    if second.ready or second.error is None or isinstance(second.error, LoadCancelled):
        return LoadOutcome(both, second, box.get("placed"), first_try)
    again_oom = out_of_memory_of(second)
    if again_oom is not None:
        # the second attempt's need too (more was free then); no third attempt, ever
        last = after_oom(
            policy_devices(devices),
            running_servers(manifest, sup.records()),
            placement().request,
            retried,
            failed_device(again_oom, retried.usage),
            attempts=2,
        )
        if last.floor:
            record_oom_floor(placement().specs[retried.option or 0], dict(last.floor))
    err = second.error.with_message(attempts_text(name, first_error, retried, second.error))
    return LoadOutcome(both, replace(second, error=err), box.get("placed"), first_try)
