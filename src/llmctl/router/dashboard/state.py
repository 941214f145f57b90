"""`GET /ui/api/state`: the page's data in one JSON object. The endpoint gathers (servers, plans,
/proc); `build_state` only composes what it is given (no I/O)."""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from llmctl.router.dashboard.modes import Mode, mode_of
from llmctl.router.dashboard.plans import GPU, RAM, profile_evicts, profile_plans
from llmctl.router.dashboard.protocol import Router, router_of


async def state_endpoint(request: Request) -> Response:
    router = router_of(request)
    router.check_auth(request)
    await router.refresh()
    statuses, _note = await run_in_threadpool(router.supervisor.ps, check_health=False)
    plans = await run_in_threadpool(profile_plans, router)
    mode = mode_of(router)
    evicts = await run_in_threadpool(profile_evicts, router) if mode.places else None
    rss = {st.pid: _rss(st.pid) for st in statuses if st.pid}
    records = await run_in_threadpool(router.supervisor.records)
    sources = {n: str(r.extra.get("memory_source") or "formula") for n, r in records.items()}
    stale = await run_in_threadpool(stale_servers, router)
    return JSONResponse(
        build_state(
            router, statuses, plans, _meminfo(), rss, evicts, stale, sources=sources, mode=mode
        )
    )


def stale_servers(router: Router) -> dict[str, dict[str, Any]]:
    """{profile: {"stale", "stale_why"}} of the running servers, against the router's manifest
    (what it loaded last: an edit counts once SIGHUP reloads it)."""
    from llmctl.supervisor.launch import current_identity
    from llmctl.supervisor.stale import check

    found = check(router.supervisor.records(), current_identity, load=lambda _path: router.manifest)
    return {name: st.to_json() for name, st in found.items()}


def build_state(
    router: Router,
    statuses: list[Any],
    plans: dict[str, dict[str, Any]],
    meminfo: dict[str, int],
    rss: dict[int, int | None],
    evicts: dict[str, list[str]] | None = None,
    stale: dict[str, dict[str, Any]] | None = None,
    *,
    sources: dict[str, str] | None = None,
    mode: Mode | None = None,
) -> dict[str, Any]:
    """The page's data from what the router knows (no I/O here). `statuses` are the running
    servers (Supervisor.ps), `rss` their resident memory by pid; `evicts` (several servers):
    what loading each profile now would unload, by the placer's decision; `stale`: which servers
    run an old launch of their profile (stale_servers); `sources`: which figure placed each
    running server (measured / engine plan / formula, its record's)."""
    old = stale or {}
    fresh = {"stale": False, "stale_why": None}
    sched = router.scheduler
    active = sched.active
    loading = sched.loading
    mode = mode or mode_of(router)

    servers: list[dict[str, Any]] = []
    for st in statuses or [None]:
        profile = st.profile if st is not None and st.running else None
        servers.append(
            {
                "name": mode.server_name(profile),
                "profile": profile,
                "phase": st.phase if st is not None else None,
                "pid": st.pid if st is not None else None,
                "url": st.url if st is not None else None,
                "uptime_s": None if st is None or st.uptime_s is None else round(st.uptime_s, 1),
                "log": st.log if st is not None else None,
                "reported": dict(st.memory) if st is not None else {},
                "rss_bytes": rss.get(st.pid) if st is not None and st.pid else None,
                "inflight": mode.inflight(profile),
                "idle_s": mode.idle_s(profile),
                **old.get(profile or "", fresh),
            }
        )
    by_profile = {s["profile"]: s for s in servers if s["profile"] is not None}
    waiting = sched.depth_of()
    profiles = []
    for name, aliases in router.index.profiles.items():
        p = router.manifest.profiles[name]
        load = router.activity.loads.get(name)
        if loading == name:
            state = "loading"
        elif mode.ready(name, set(by_profile)):
            state = "ready"
        elif load is not None and load.state == "failed":
            state = "failed"
        else:
            state = "idle"
        plan = plans.get(name, {})
        unloads = mode.unloads(name, evicts or {})
        profiles.append(
            {
                "name": name,
                "aliases": aliases,
                "description": router.index.descriptions.get(name),
                "model": p.model,
                "ctx_size": p.ctx_size,
                "parallel": p.parallel,
                "cache_type_k": p.cache_type_k,
                "cache_type_v": p.cache_type_v,
                "n_gpu_layers": p.n_gpu_layers,
                "ttl_s": router.index.ttls.get(name),
                "state": state,
                "server": mode.server_name(name) if state in ("loading", "ready") else None,
                "load": load.to_json() if load is not None else None,
                "inflight": mode.inflight(name) if state == "ready" else 0,
                "waiting": waiting.get(name, 0),
                "idle_s": mode.idle_s(name) if state == "ready" else None,
                "estimate": plan.get("estimate"),
                "estimate_error": plan.get("error"),
                # the figure placement goes by: a running server's record, else the best known
                "memory_source": (sources or {}).get(name)
                or (plan.get("estimate") or {}).get("memory_source"),
                "plan": plan.get("devices", {}),
                "evicts": unloads,
                **(old.get(name, fresh) if state == "ready" else fresh),
            }
        )
    loaded = [s for s in servers if s["profile"] is not None]
    if not loaded and (active or loading):
        shown = active or loading
        loaded = [
            {"profile": shown, "name": mode.server_name(shown), "reported": {}, "rss_bytes": None}
        ]
    assert router.upstreams is not None
    return {
        "servers": servers,
        "devices": devices(router, plans, loaded, meminfo),
        "profiles": profiles,
        "queue": {
            "depth": sched.depth,
            "max_size": sched.max_size,
            "switching": sched.switching,
            "loading": loading,
            "inflight": sched.inflight,
            # the order (serve.max_wait): swaps by reason, time passed over, loads avoided
            "max_wait_s": sched.bound.max_wait,
            "deferring": sched.deferring,
            "swaps": dict(sched.swaps),
            "passed_over_s": round(sched.passed_over_s, 1),
            "loads_avoided": sched.loads_avoided,
        },
        "requests": [r.to_json() for r in reversed(router.activity.requests)][:50],
        "upstreams": [u.public() for u in router.upstreams.all],
        "auth": bool(router.api_keys),
    }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


def devices(
    router: Router,
    plans: dict[str, dict[str, Any]],
    loaded: list[dict[str, Any]],
    meminfo: dict[str, int],
) -> list[dict[str, Any]]:
    """One entry per device: its size, each loaded profile's planned share and reported use.
    `loaded` are server entries (profile, reported buffers, rss_bytes)."""
    out: list[dict[str, Any]] = []
    gpu = router.manifest.gpu_budget  # a device list: its first GPU
    if gpu.vram is not None:
        shares = []
        for srv in loaded:
            share = _share(plans, srv, GPU)
            if share is not None:
                share["reported_bytes"] = _reported_gpu(srv["reported"])
                shares.append(share)
        out.append(
            {
                "id": GPU,
                "kind": "gpu",
                "name": "GPU",
                "source": "gpu.vram in the manifest",
                "total_bytes": gpu.vram,
                "headroom_bytes": gpu.headroom,
                "shares": shares,
                "free_bytes": max(0, gpu.vram - gpu.headroom - _used(shares)),
            }
        )
    total = meminfo.get("MemTotal")
    if total is not None:
        shares = []
        for srv in loaded:
            share = _share(plans, srv, RAM)
            if share is not None:
                share["reported_bytes"] = srv["rss_bytes"]
                shares.append(share)
        rss = sum(s["reported_bytes"] or s["planned_bytes"] for s in shares)
        out.append(
            {
                "id": RAM,
                "kind": "ram",
                "name": "RAM",
                "source": "/proc/meminfo",
                "total_bytes": total,
                "headroom_bytes": 0,
                "shares": shares,
                # what the system says is available, the loaded servers' use already out of it
                "free_bytes": meminfo.get("MemAvailable", 0),
                "other_bytes": max(0, total - meminfo.get("MemAvailable", 0) - rss),
            }
        )
    return out


def _share(
    plans: dict[str, dict[str, Any]], srv: dict[str, Any], device: str
) -> dict[str, Any] | None:
    profile = srv["profile"]
    if profile is None:
        return None
    planned = plans.get(profile, {}).get("devices", {}).get(device)
    if not planned:
        return None
    return {
        "profile": profile,
        "server": srv["name"],
        "planned": planned,
        "planned_bytes": sum(planned.values()),
        "reported_bytes": None,
    }


def _used(shares: list[dict[str, Any]]) -> int:
    return sum(max(s["planned_bytes"], s.get("reported_bytes") or 0) for s in shares)


def _reported_gpu(reported: dict[str, Any]) -> int | None:
    """llama-server's own buffer sizes on devices other than the CPU, when its log said them."""
    mib = 0.0
    seen = False
    for kind in ("model", "kv", "compute"):
        for dev, size in (reported.get(f"{kind}_by_device_mib") or {}).items():
            if not str(dev).upper().startswith("CPU"):
                mib += float(size)
                seen = True
    return int(mib * 1024 * 1024) if seen else None


def _meminfo() -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                key, _, rest = line.partition(b":")
                parts = rest.split()
                if key in (b"MemTotal", b"MemAvailable") and parts and parts[0].isdigit():
                    out[key.decode()] = int(parts[0]) * 1024
    except OSError:
        pass
    return out


def _rss(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
