"""`/health` and `/metrics`: the router's own, with each server's metrics appended."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from llmctl.router import metrics as metrics_mod
from llmctl.router.breaker import STATE_VALUES
from llmctl.router.proxy import open_reply
from llmctl.router.runtime import Router, router_of
from llmctl.router.transport.base import StreamBroken, UpstreamFailure


async def health(request: Request) -> Response:
    router = router_of(request)
    sched = router.scheduler
    return JSONResponse(
        {
            "status": "shutting_down" if router.shutting_down else "ok",
            "profile": sched.active,
            "switching": sched.switching,
            "queue_depth": sched.depth,
        },
        status_code=503 if router.shutting_down else 200,
    )


async def metrics_endpoint(request: Request) -> Response:
    router = router_of(request)
    router.check_auth(request)
    sched = router.scheduler
    assert router.upstreams is not None
    text = router.metrics.render(
        queue_depth=sched.depth,
        inflight=sched.inflight,
        loaded=sched.active,
        breakers={
            k: STATE_VALUES[b.state] for u in router.upstreams.all for k, b in u.breakers().items()
        },
        breaker_opens={k: b.opens for u in router.upstreams.all for k, b in u.breakers().items()},
    )
    text += metrics_mod.render_order(
        sched.depth_of(), sched.passed_over_s, sched.loads_avoided, sched.swaps
    )
    text += await _servers_metrics(router)
    return PlainTextResponse(text, media_type=metrics_mod.CONTENT_TYPE)


async def _servers_metrics(router: Router) -> str:
    """Each loaded profile's llama-server metrics (those started with --metrics; the others
    answer 501 and are left out), labelled with the profile, fetched side by side over the
    router's own upstream transport."""
    managed = router.upstreams.managed if router.upstreams is not None else None
    if managed is None:
        return ""

    async def fetch(profile: str) -> tuple[str, str] | None:
        url = router.managed_base(profile) + "/metrics"
        try:
            reply = await open_reply(
                router.transport_for(managed, url),
                upstream=managed.name,
                url=url,
                method="GET",
                headers=[],
                body=b"",
                timeout=2.0,
            )
        except UpstreamFailure:
            return None
        try:
            if reply.status != 200:
                return None
            data = reply.first + b"".join([c async for c in reply.rest])
        except StreamBroken:
            return None
        finally:
            await reply.aclose()
        return profile, data.decode("utf-8", "replace")

    profiles = [p for p in router.scheduler.loaded if p in router.index.profiles]
    got = await asyncio.gather(*(fetch(p) for p in profiles))
    return metrics_mod.with_profile_label(g for g in got if g is not None)
