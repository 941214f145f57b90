"""The sidecar API: `/models/status`, `/models/available`, `/models/switch`, `/models/stop`
and the host state other routers poll.
"""

from __future__ import annotations

import json
import time
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from llmctl.router.errors import (
    bad_request,
    model_not_found,
)
from llmctl.router.relay import ProgressStream
from llmctl.router.runtime import Router, router_of
from llmctl.router.scheduler import ProgressFn


async def models_status(request: Request) -> Response:
    router = router_of(request)
    router.check_auth(request)
    status = await run_in_threadpool(router.supervisor.status, check_health=True, timeout=0.5)
    sched = router.scheduler
    assert router.upstreams is not None
    server = {
        "running": status.running,
        "profile": status.profile,
        "pid": status.pid,
        "url": status.url,
        "healthy": status.healthy,
        "uptime_s": status.uptime_s,
        "log": status.log,
    }
    servers = await router.backend.servers(server, status.running)
    return JSONResponse(
        {
            "server": server,
            "servers": servers,
            "router": {
                "profile": sched.active,
                "loaded": sched.loaded,
                "switching": sched.switching,
                "loading": sched.loading,
                "queue_depth": sched.depth,
                "queue_max_size": sched.max_size,
                "inflight": sched.inflight,
                "last_switch_s": sched.last_switch_s,
                "auth": {
                    "enabled": bool(router.api_keys),
                    "keys": len(router.api_keys),
                },
            },
            "upstreams": [u.public() for u in router.upstreams.all],
            "kv_saved": status.kv_saved,
        }
    )


async def host_state_endpoint(request: Request) -> Response:
    """`GET /llmctl/v1/state`: what other llmctl hosts learn from this one (small, stable JSON)."""
    router = router_of(request)
    router.check_auth(request)
    await router.refresh()
    fits = await router.fits_without_evicting()
    return JSONResponse(router.host_state(fits))


async def models_available(request: Request) -> Response:
    router = router_of(request)
    router.check_auth(request)
    out = []
    for name, aliases in router.index.profiles.items():
        profile = router.manifest.profiles[name]
        entry: dict[str, Any] = {
            "profile": name,
            "aliases": aliases,
            "description": router.index.descriptions.get(name),
            "model": getattr(profile, "model", None),
            "loaded": router.scheduler.is_loaded(name),
            "ttl_s": router.index.ttls.get(name),
        }
        entry.update(await run_in_threadpool(_estimate, router.manifest, name))
        out.append(entry)
    return JSONResponse({"profiles": out})


def _estimate(manifest: Any, name: str) -> dict[str, Any]:
    """The memory estimate and whether it fits the GPU budget, when llmctl.memory.estimate can tell."""
    from llmctl.memory.profile import estimate_profile

    try:
        est = estimate_profile(manifest, name)
        if est is None:
            return {"estimate": None, "fits": None, "estimate_error": "the model file is missing"}
    except Exception as exc:  # an unreadable model is reported per profile, not fatal
        return {"estimate": None, "fits": None, "estimate_error": str(exc)}
    return {
        "estimate": {
            "gpu_total_bytes": est.gpu_total_bytes,
            "kv_bytes": est.kv_bytes,
            "budget_bytes": est.budget_bytes,
            "exact": est.exact,
        },
        "fits": est.fits,
    }


async def _json_object(request: Request, router: Router) -> dict[str, Any]:
    body = await router.read_body(request)
    try:
        data = json.loads(body) if body else {}
    except (ValueError, RecursionError) as exc:
        raise bad_request(
            f"The request body is not valid JSON: {exc}", code="invalid_json"
        ) from None
    if not isinstance(data, dict):
        raise bad_request("The request body must be a JSON object.", code="invalid_json")
    return data


def _wants_sse(request: Request) -> bool:
    return "text/event-stream" in request.headers.get("accept", "")


async def models_switch(request: Request) -> Response:
    router = router_of(request)
    router.check_auth(request)
    data = await _json_object(request, router)
    name = data.get("profile")
    if not isinstance(name, str) or not name:
        raise bad_request('Send {"profile": NAME}.', param="profile", code="profile_required")
    profile = router.index.lookup(name)
    if profile is None:
        raise model_not_found(name, router.index.names())
    await router.refresh(force=True)
    sched = router.scheduler

    async def run(progress: ProgressFn) -> dict[str, Any]:
        started = time.monotonic()
        noop = not sched.would_wait(profile)
        lease = await sched.acquire(profile, on_progress=progress)
        lease.release()
        return {
            "ok": True,
            "profile": profile,
            "noop": noop,
            "url": router.managed_base(profile),
            "elapsed_s": round(time.monotonic() - started, 3),
        }

    if _wants_sse(request):
        return ProgressStream(run)  # type: ignore[return-value]
    return JSONResponse(await run(lambda p: None))


async def models_stop(request: Request) -> Response:
    router = router_of(request)
    router.check_auth(request)
    name = (await _json_object(request, router)).get("profile")  # no body: stop every server
    await router.refresh(force=True)
    started = time.monotonic()
    sched = router.scheduler
    if name is not None:
        # one profile: unload it and keep the others (several servers); with one server at a
        # time, stop it only when it is the one running
        profile = router.index.lookup(name) if isinstance(name, str) else None
        if profile is None:
            raise model_not_found(str(name), router.index.names())
        stopped = await router.backend.stop_profile(profile)
        return JSONResponse(
            {"ok": True, "stopped": stopped, "elapsed_s": round(time.monotonic() - started, 3)}
        )
    before = sched.active
    await sched.stop()
    return JSONResponse(
        {"ok": True, "stopped": before, "elapsed_s": round(time.monotonic() - started, 3)}
    )
