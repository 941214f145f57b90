"""The dashboard of `llmctl serve`: the page under `/ui` and the two endpoints it reads.

`GET /ui` serves static files shipped in the package (no build step, nothing from a CDN). The
page asks for the router's API key (kept in the browser session) and then reads:

- `GET /ui/api/state`: one JSON object with lists, so that several servers fit as they come:
  `servers`, `devices` (one bar each, with every loaded profile's planned share and its reported
  use), `profiles` (state, estimate, where it would go), `queue`, `requests`, `upstreams`;
- `GET /ui/api/log?server=NAME&lines=N`: a server's log as server-sent events, followed live.

Loading and unloading go through the same endpoints as the CLI (`/models/switch`, `/models/stop`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import anyio
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from llmctl.router import sse
from llmctl.router.errors import RouterError, bad_request

if TYPE_CHECKING:
    from llmctl.router.activity import Activity
    from llmctl.router.routing import ModelIndex
    from llmctl.router.scheduler import Scheduler
    from llmctl.router.upstreams import Upstreams
    from llmctl.supervisor.lifecycle import Supervisor


class Router(Protocol):
    """What the dashboard uses of the router's runtime (`runtime.Router` is one), and no more."""

    manifest: Any
    supervisor: Supervisor
    scheduler: Scheduler
    activity: Activity
    index: ModelIndex
    upstreams: Upstreams | None
    api_keys: tuple[str, ...]
    shutting_down: bool
    log_streams: dict[str, int]
    metrics: Any

    @property
    def devices(self) -> list[Any]: ...

    def check_auth(self, request: Request) -> None: ...

    async def refresh(self, *, force: bool = False) -> None: ...


UI_DIR = Path(__file__).parent / "ui"
_ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
}
# the page runs only its own files: no inline script, nothing from elsewhere, not framed
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
MANAGED = "managed"  # the one server today's router runs
GPU, RAM = "gpu0", "ram"  # device ids: the bars, and the keys of each profile's plan
LOG_POLL_S = 0.25
LOG_FILE_CHECK_S = 1.0
LOG_HEARTBEAT_S = 15.0
MAX_LOG_LINES = 2000
# log streams are long-lived connections: a few per client and a bound in all, so that streams
# can never take the connections (and file descriptors) the API needs
MAX_LOG_STREAMS_PER_CLIENT = 4
MAX_LOG_STREAMS = 32


def routes() -> list[Route]:
    return [
        Route("/", _to_slash, methods=["GET"]),  # the router's own page is the dashboard
        Route("/ui", _to_slash, methods=["GET"]),
        Route("/ui/", asset, methods=["GET"]),
        Route("/ui/api/hello", hello_endpoint, methods=["GET"]),
        Route("/ui/api/state", state_endpoint, methods=["GET"]),
        Route("/ui/api/log", log_endpoint, methods=["GET"]),
        Route("/ui/{name}", asset, methods=["GET"]),
    ]


def _router(request: Request) -> Router:
    router: Router = request.app.state.router
    return router


async def _to_slash(request: Request) -> Response:
    return RedirectResponse("/ui/", status_code=307 if request.url.path == "/" else 308)


_cache: dict[str, bytes] = {}


async def asset(request: Request) -> Response:
    """A file of the page; no key needed (the files hold no data, the data endpoints need it)."""
    name = request.path_params.get("name", "index.html")
    if name not in _ASSETS:
        raise RouterError(404, f"No such file of the dashboard: {name}.", code="not_found")
    body = _cache.get(name)
    if body is None:
        body = _cache[name] = (UI_DIR / name).read_bytes()
    return Response(body, media_type=_ASSETS[name], headers=_PAGE_HEADERS)


async def hello_endpoint(request: Request) -> Response:
    """Whether the page must ask for a key (any data request would say so with a 401 anyway)."""
    return JSONResponse({"auth": bool(_router(request).api_keys)})


# --- state --------------------------------------------------------------------------------------


async def state_endpoint(request: Request) -> Response:
    router = _router(request)
    router.check_auth(request)
    await router.refresh()
    statuses, _note = await run_in_threadpool(router.supervisor.ps, check_health=False)
    plans = await run_in_threadpool(_plans, router)
    evicts = await run_in_threadpool(_evicts, router) if _several(router) else None
    rss = {st.pid: _rss(st.pid) for st in statuses if st.pid}
    return JSONResponse(build_state(router, statuses, plans, _meminfo(), rss, evicts))


def _several(router: Router) -> bool:
    """Several servers at once (`server.ports`): each server is named for its profile."""
    return router.manifest.server.ports is not None


def server_name(router: Router, profile: str | None) -> str:
    return profile if profile is not None and _several(router) else MANAGED


def build_state(
    router: Router,
    statuses: list[Any],
    plans: dict[str, dict[str, Any]],
    meminfo: dict[str, int],
    rss: dict[int, int | None],
    evicts: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    """The page's data from what the router knows (no I/O here). `statuses` are the running
    servers (Supervisor.ps), `rss` their resident memory by pid; `evicts` (several servers):
    what loading each profile now would unload, by the placer's decision."""
    sched = router.scheduler
    active = sched.active
    loading = sched.loading
    several = _several(router)
    activity = sched.activity() if several else {}
    now = time.time()

    def inflight_of(profile: str | None) -> int:
        if several and profile is not None:
            return int(activity.get(profile, (0.0, 0))[1])
        return int(sched.inflight)

    def idle_of(profile: str | None) -> float | None:
        if several and profile is not None:
            used, n = activity.get(profile, (now, 1))
            return None if n else _round(max(0.0, now - used))
        return _round(sched.idle_seconds())

    servers: list[dict[str, Any]] = []
    for st in statuses or [None]:
        profile = st.profile if st is not None and st.running else None
        servers.append(
            {
                "name": server_name(router, profile),
                "profile": profile,
                "phase": st.phase if st is not None else None,
                "pid": st.pid if st is not None else None,
                "url": st.url if st is not None else None,
                "uptime_s": None if st is None or st.uptime_s is None else round(st.uptime_s, 1),
                "log": st.log if st is not None else None,
                "reported": dict(st.memory) if st is not None else {},
                "rss_bytes": rss.get(st.pid) if st is not None and st.pid else None,
                "inflight": inflight_of(profile),
                "idle_s": idle_of(profile),
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
        elif sched.is_loaded(name) or (several and name in by_profile):
            state = "ready"
        elif load is not None and load.state == "failed":
            state = "failed"
        else:
            state = "idle"
        plan = plans.get(name, {})
        # one server at a time: loading another profile stops the running one; with several,
        # what the placer would decide now (it decides again at load time)
        if several:
            unloads = (evicts or {}).get(name, [])
        else:
            unloads = [active] if active not in (None, name) else []
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
                "server": server_name(router, name) if state in ("loading", "ready") else None,
                "load": load.to_json() if load is not None else None,
                "inflight": inflight_of(name) if state == "ready" else 0,
                "waiting": waiting.get(name, 0),
                "idle_s": idle_of(name) if state == "ready" else None,
                "estimate": plan.get("estimate"),
                "estimate_error": plan.get("error"),
                "plan": plan.get("devices", {}),
                "evicts": unloads,
            }
        )
    loaded = [s for s in servers if s["profile"] is not None]
    if not loaded and (active or loading):
        loaded = [{"profile": active or loading, "reported": {}, "rss_bytes": None}]
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
            share = _share(router, plans, srv["profile"], GPU)
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
            share = _share(router, plans, srv["profile"], RAM)
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
    router: Router, plans: dict[str, dict[str, Any]], profile: str | None, device: str
) -> dict[str, Any] | None:
    if profile is None:
        return None
    planned = plans.get(profile, {}).get("devices", {}).get(device)
    if not planned:
        return None
    return {
        "profile": profile,
        "server": server_name(router, profile),
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


# estimates read each model's header: keep them per manifest (a reload brings a new one)
_plans_for: tuple[int, dict[str, dict[str, Any]]] | None = None


_placements_for: tuple[int, dict[str, Any]] | None = None


def _evicts(router: Router) -> dict[str, list[str]]:
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


def _plans(router: Router) -> dict[str, dict[str, Any]]:
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
    return {
        "estimate": {
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


# --- log ----------------------------------------------------------------------------------------


async def log_endpoint(request: Request) -> Response:
    router = _router(request)
    router.check_auth(request)
    server = request.query_params.get("server", MANAGED)
    running = [server_name(router, p) for p in router.supervisor.records()]
    if server != MANAGED and server not in running:
        names = ", ".join(repr(n) for n in running) or repr(MANAGED)
        raise RouterError(
            404, f"No server named {server!r}; this router runs {names}.", code="not_found"
        )
    raw = request.query_params.get("lines", "200")
    if not raw.isdigit() or int(raw) > MAX_LOG_LINES:
        raise bad_request(
            f"lines must be a whole number from 0 to {MAX_LOG_LINES}, not {raw!r}.", param="lines"
        )
    client = request.client.host if request.client else "?"
    open_streams = router.log_streams
    mine = open_streams.get(client, 0)
    if mine >= MAX_LOG_STREAMS_PER_CLIENT or sum(open_streams.values()) >= MAX_LOG_STREAMS:
        router.metrics.count_rejected("log_streams")
        whose = "this client" if mine >= MAX_LOG_STREAMS_PER_CLIENT else "all clients"
        limit = (
            MAX_LOG_STREAMS_PER_CLIENT if mine >= MAX_LOG_STREAMS_PER_CLIENT else MAX_LOG_STREAMS
        )
        raise RouterError(
            429,
            f"Too many log streams open for {whose} ({limit}); close one (a dashboard tab) first.",
            code="too_many_log_streams",
            retry_after=5,
        )
    return LogStream(router, int(raw), None if server == MANAGED else server, client)  # type: ignore[return-value]


class LogStream:
    """The log's last lines, then what is appended, as `lines` events; a new launch's log is
    followed as it appears (a `file` event names it). Ends when the client leaves or the router
    shuts down."""

    def __init__(
        self, router: Router, lines: int, profile: str | None = None, client: str = "?"
    ) -> None:
        self.router = router
        self.lines = lines
        self.profile = profile  # None: the newest server's log (or the latest launch's)
        self.client = client
        router.log_streams[client] = router.log_streams.get(client, 0) + 1  # counted from now

    def _log_path(self) -> Path | None:
        if self.profile is None:
            return self.router.supervisor.log_path()
        rec = self.router.supervisor.records().get(self.profile)
        return Path(rec.log) if rec is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            *((k.lower().encode(), v.encode()) for k, v in sse.SSE_HEADERS.items()),
        ]
        try:
            await self._stream(headers, receive, send)
        finally:
            left = self.router.log_streams.get(self.client, 1) - 1
            if left > 0:
                self.router.log_streams[self.client] = left
            else:
                self.router.log_streams.pop(self.client, None)

    async def _stream(
        self, headers: list[tuple[bytes, bytes]], receive: Receive, send: Send
    ) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                tg.cancel_scope.cancel()

            tg.start_soon(watch)
            with contextlib.suppress(OSError):  # the client went away mid-write
                await self._follow(send)
            tg.cancel_scope.cancel()
        with contextlib.suppress(OSError):
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _follow(self, send: Send) -> None:
        from llmctl.supervisor.logs import LogFollower, tail_lines

        async def emit(data: bytes) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": True})

        router = self.router
        path: Path | None = None
        follower: LogFollower | None = None
        loop = asyncio.get_running_loop()
        next_check = 0.0
        last_sent = loop.time()
        try:
            while not router.shutting_down:
                now = loop.time()
                if now >= next_check:
                    next_check = now + LOG_FILE_CHECK_S
                    current = await run_in_threadpool(self._log_path)
                    if current != path and current is not None:
                        if follower is not None:
                            follower.close()
                        first = path is None
                        path = current
                        size = _size(path)
                        await emit(sse.event({"path": str(path)}, name="file"))
                        # a log that appeared while following is shown whole, the first one's tail
                        back = self.lines if first else MAX_LOG_LINES
                        head = tail_lines(path, back, end=size)
                        if head:
                            await emit(sse.event(json.dumps(head), name="lines"))
                        follower = LogFollower(path, size, keep_open=False)
                        last_sent = now
                if follower is not None:
                    lines, _grew = follower.poll()
                    if lines:
                        await emit(sse.event(json.dumps(lines), name="lines"))
                        last_sent = now
                if now - last_sent >= LOG_HEARTBEAT_S:
                    await emit(sse.comment("keep-alive"))
                    last_sent = now
                await asyncio.sleep(LOG_POLL_S)
        finally:
            if follower is not None:
                follower.close()


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0
