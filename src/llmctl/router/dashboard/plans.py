"""Each profile's memory plan by its estimate (bytes per device and kind) and, with several
servers, what loading it now would unload; both kept per manifest (a reload brings a new one)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmctl.router.dashboard.protocol import Router

GPU, RAM = "gpu0", "ram"  # device ids: the bars, and the keys of each profile's plan

# estimates read each model's header: keep them per manifest (a reload brings a new one)
_plans_for: tuple[int, dict[str, dict[str, Any]]] | None = None


_placements_for: tuple[int, dict[str, Any]] | None = None


def profile_evicts(router: Router) -> dict[str, list[str]]:
    """Several servers: for each profile not loaded, the servers the placer would unload to load
    it now (its placement, read from the model's header, is kept per manifest)."""
    global _placements_for
    from llmctl.placement.placer import placement_request, plan_load

    manifest = router.manifest
    if _placements_for is None or _placements_for[0] != id(manifest):
        _placements_for = (id(manifest), {})
    placements = _placements_for[1]
    records = router.supervisor.records()
    activity = router.scheduler.activity()
    out: dict[str, list[str]] = {}
    for name in router.index.profiles:
        if name in records:
            continue
        try:
            if name not in placements:
                placements[name] = placement_request(manifest, name, router.devices)
            decision, _ = plan_load(
                manifest, name, records, router.devices, activity, placements[name]
            )
        except Exception:  # an unreadable model: the profile's card says so from its plan
            continue
        out[name] = list(decision.evict) if decision.action == "start" else []
    return out


def profile_plans(router: Router) -> dict[str, dict[str, Any]]:
    global _plans_for
    manifest = router.manifest
    if _plans_for is not None and _plans_for[0] == id(manifest):
        return _plans_for[1]
    plans = {name: plan_profile(manifest, name) for name in router.index.profiles}
    _plans_for = (id(manifest), plans)
    return plans


def plan_profile(manifest: Any, name: str) -> dict[str, Any]:
    """Where a profile's memory goes by its estimate: bytes per device and kind."""
    from llmctl.memory.profile import estimate_profile

    profile = manifest.profiles[name]
    gpu = manifest.gpu_budget
    try:
        est = estimate_profile(manifest, name)
        if est is None:
            return {"error": "the model file is missing"}
    except Exception as exc:  # an unreadable model is reported per profile, not fatal
        return {"error": str(exc)}
    w = est.weights
    on_gpu = gpu.vram is not None and profile.n_gpu_layers != 0
    if on_gpu:
        dev = {
            GPU: {
                "weights": w.gpu_bytes,
                "kv": est.kv_gpu_bytes,
                "compute": est.compute_bytes,
                "overhead": est.overhead_bytes,
            },
            RAM: {"weights": w.cpu_bytes, "kv": est.kv_bytes - est.kv_gpu_bytes},
        }
    else:  # no GPU budget given, or nothing offloaded: llama-server keeps all of it in RAM
        dev = {RAM: {"weights": w.bytes, "kv": est.kv_bytes, "compute": est.compute_bytes}}
    source, engine = _kept_source(manifest, name)
    return {
        "estimate": {
            # the formula's figures; the engine's plan of this launch beside them when kept
            "memory_source": source,
            "engine_bytes": engine,
            "total_bytes": sum(sum(d.values()) for d in dev.values()),
            "weights_bytes": w.bytes,
            "kv_bytes": est.kv_bytes,
            "compute_bytes": est.compute_bytes,
            "overhead_bytes": est.overhead_bytes if on_gpu else 0,
            "gpu_total_bytes": est.gpu_total_bytes,
            "fits": est.fits,
            "exact": est.exact,
            "n_ctx": est.sizes.n_ctx,
            "n_seq": est.sizes.n_seq,
        },
        "devices": {k: {kind: n for kind, n in v.items() if n} for k, v in dev.items()},
    }


def _kept_source(manifest: Any, name: str) -> tuple[str, int | None]:
    """The figure the placer would go by for this profile's launch (`measured` after an
    out-of-memory load, `engine plan` once a plan is kept, else `formula`), and all the kept
    plan states (devices and host)."""
    from llmctl.memory.engine import plan_total
    from llmctl.supervisor.probe import kept_figures

    try:
        plan, floor, _ = kept_figures(manifest, name)
    except Exception:  # a cache: without it the formula stands
        return "formula", None
    engine = None if plan is None else sum(plan_total(plan).values())
    source = "measured" if floor else "formula" if plan is None else "engine plan"
    return source, engine
