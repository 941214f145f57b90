"""The router's Starlette app: OpenAI-compatible API, sidecar API, health and metrics.

`create_app(manifest, supervisor)` builds it; tests call it without a port. Everything that
changes what the managed llama-server runs goes through the supervisor (same state file and
lock as the CLI), serialized by the scheduler (router/scheduler.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import httpx
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmctl.errors import LlmctlError, LoadCancelled
from llmctl.llama.endpoints import api_key_of, cors_headers
from llmctl.manifest.model import ServeConfig
from llmctl.router import dashboard, sse
from llmctl.router import metrics as metrics_mod
from llmctl.router.activity import Activity
from llmctl.router.auth import key_allowed, serve_keys
from llmctl.router.breaker import STATE_VALUES
from llmctl.router.client import Pool, StreamBroken
from llmctl.router.errors import (
    SERVER,
    RouterError,
    bad_request,
    body_timeout,
    client_gone,
    model_not_found,
    too_large,
    unauthorized,
)
from llmctl.router.exchange import COUNTED, Exchange
from llmctl.router.host_watch import HostWatch
from llmctl.router.hosts import (
    HOPS_HEADER,
    STATE_PATH,
    STATE_VERSION,
    HostProfile,
    Standing,
    loop_error,
    order,
    parse_hops,
)
from llmctl.router.models import (
    ModelIndex,
    Target,
    detect,
    query_model,
    route_kind,
    split_upstream_path,
)
from llmctl.router.origins import OriginPolicy
from llmctl.router.proxy import (
    RelayResponse,
    Reply,
    UpstreamFailure,
    WaitingStreamResponse,
    lean_capable,
    open_reply,
)
from llmctl.router.safepath import unsafe_path
from llmctl.router.scheduler import Progress, ProgressFn, Scheduler, SwitchFailed, switching
from llmctl.router.scheduler import configure as configure_order
from llmctl.router.upstreams import Upstream, Upstreams
from llmctl.supervisor.launch import LaunchSpec
from llmctl.supervisor.lifecycle import Event, Supervisor


def _serve_of(manifest: Any) -> ServeConfig:
    """The manifest's validated `serve:` section (its defaults when a test's stand-in has none)."""
    serve = getattr(manifest, "serve", None)
    return serve if serve is not None else ServeConfig()


_T = TypeVar("_T")
log = logging.getLogger("llmctl.router")

JSON_ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
_EVENT_KINDS = {
    "log": "loading",
    "stopping": "stopping",
    "stopped": "stopped",
    "starting": "starting",
    "ready": "ready",
    "error": "error",
}
_REFRESH_EVERY = 1.0


def _several_servers(manifest: Any) -> bool:
    """`server.ports` is set: several servers at once, placed by memory."""
    return getattr(getattr(manifest, "server", None), "ports", None) is not None


def _default_spec_for(manifest: Any) -> Callable[[str], LaunchSpec]:
    from llmctl.llama.flags import launch_spec

    return partial(launch_spec, manifest)


class Router:
    """The state behind the app: manifest view, upstreams, scheduler, metrics, HTTP clients."""

    def __init__(
        self,
        manifest: Any,
        supervisor: Supervisor,
        *,
        spec_for: Callable[[Any, str], LaunchSpec] | None = None,
        manifest_path: Path | None = None,
        environ: Mapping[str, str] | None = None,
        heartbeat: float = 5.0,
    ) -> None:
        self.supervisor = supervisor
        self.manifest_path = manifest_path
        self.environ = environ
        self.heartbeat = heartbeat
        # names this process to other hosts: a request that comes back to it is a loop
        self.router_id = uuid.uuid4().hex[:16]
        self.hosts = HostWatch(self)
        # (manifest, loaded profiles, fits): the placer's answers while neither changes
        self._fits_cache: tuple[Any, tuple[str, ...], dict[str, bool | None]] | None = None
        self._spec_for_factory = spec_for
        # set by whoever binds the socket: raises for settings that must not serve that address
        # (serve section, its keys) -> raises when the bind that opened the socket must refuse it
        self.bind_check: Callable[[ServeConfig, tuple[str, ...]], None] | None = None
        self.metrics = metrics_mod.Metrics()
        self.activity = Activity()
        self.upstreams: Upstreams | None = None
        self.managed_url: str | None = None
        self.managed_pid: int | None = None
        self.started_pids: set[int] = set()
        self.shutting_down = False
        # the address the socket listens on (set by whoever binds it): the Host rules depend on it
        self.bind_host: str | None = None
        self._last_refresh = 0.0
        self._pool: Pool | None = None
        self._remote: httpx.AsyncClient | None = None
        self.managed_urls: dict[str, str] = {}
        self.devices: list[Any] = []
        # server.ports: several servers at once, each profile loaded with the placer; else one
        # server, switched (fixed for the router's life: a reload does not change it)
        self.several = _several_servers(manifest)
        self.scheduler: Scheduler
        if self.several:
            self.scheduler = Scheduler(self._plan, self._load, self._stop_servers)
        else:
            self.scheduler = switching(self._switch)
        self.scheduler.on_switch_done = self.metrics.observe_switch
        self.apply(manifest)

    # --- configuration ----------------------------------------------------------------

    def apply(self, manifest: Any) -> None:
        """Take a (new) manifest: settings, names, upstream chain (breakers kept), queue limits."""
        self.manifest = manifest
        self._fits_cache = None  # what fits depends on the profiles' settings
        self.serve = _serve_of(manifest)
        self.api_keys = serve_keys(self.serve, self.environ)
        self.origins = OriginPolicy.from_serve(self.serve, self.bind_host or self.serve.host)
        self.index = ModelIndex(manifest)
        self.upstreams = Upstreams.from_serve(self.serve, self.upstreams, self.environ)
        if self._spec_for_factory is None:
            self.spec_for = _default_spec_for(manifest)
        else:
            self.spec_for = partial(self._spec_for_factory, manifest)
        if self.several:
            from llmctl.supervisor.devices import detect

            report = detect(manifest.device_configs())
            for warning in report.warnings:
                log.warning("%s", warning)
            self.devices = report.devices
        s = self.scheduler
        s.max_size = self.serve.queue.max_size
        s.timeout = self.serve.queue.timeout
        s.inflight_timeout = self.serve.inflight_timeout
        configure_order(s, manifest)

    def bound_to(self, host: str) -> None:
        """The socket listens on `host`: the Host and Origin rules follow from it."""
        self.bind_host = host
        self.origins = OriginPolicy.from_serve(self.serve, host)

    async def reload(self) -> bool:
        """Reload the manifest from its file (SIGHUP); keep the old one when the new one is broken."""
        from llmctl.manifest.model import load_manifest

        try:
            manifest = await run_in_threadpool(load_manifest, self.manifest_path)
        except LlmctlError as err:
            log.error("manifest reload failed, keeping the previous one: %s", err.message)
            return False
        if self.bind_check is not None:
            try:
                serve = _serve_of(manifest)
                self.bind_check(serve, serve_keys(serve, self.environ))
            except LlmctlError as err:
                log.error(
                    "manifest reload refused, keeping the previous one: %s (%s)",
                    err.message,
                    err.hint,
                )
                return False
        self.apply(manifest)
        self.hosts.sync()
        log.info("manifest reloaded: %d profile(s)", len(self.index.profiles))
        await self.stop_removed_profile()
        return True

    async def stop_removed_profile(self) -> None:
        """The running profile left the manifest: stop its server once its requests are done."""
        active = self.scheduler.active
        if active is None or active in self.index.profiles:
            return
        log.warning(
            "profile %s, which the managed server runs, is no longer in the manifest: "
            "stopping it once its requests in flight are done",
            active,
        )
        try:
            await self.scheduler.stop()
        except RouterError as err:
            log.error("could not stop the server of removed profile %s: %s", active, err.message)
        else:
            log.info("stopped the server of removed profile %s", active)

    # --- HTTP clients -----------------------------------------------------------------

    def transport_for(self, upstream: Upstream, url: str) -> httpx.AsyncClient | Pool:
        """Loopback plain http: the lean pool. Elsewhere httpx, which may use a proxy from the environment."""
        if lean_capable(url):
            if self._pool is None:
                self._pool = Pool()
            return self._pool
        if self._remote is None:
            self._remote = _new_client(trust_env=True)
        return self._remote

    async def aclose_clients(self) -> None:
        if self._remote is not None:
            await self._remote.aclose()
        if self._pool is not None:
            self._pool.close()
        self._pool = None
        self._remote = None

    # --- managed server ---------------------------------------------------------------

    async def _switch(self, target: str | None, progress: ProgressFn) -> None:
        loop = asyncio.get_running_loop()

        def on_event(ev: Event) -> None:  # runs in the supervisor's thread
            _log_kv(ev)
            kind = _EVENT_KINDS.get(ev.kind)
            if kind is None:
                return
            item = Progress(kind, ev.message, ev.profile or target, ev.elapsed_s)
            with contextlib.suppress(RuntimeError):  # the loop may be closing
                loop.call_soon_threadsafe(progress, item)
                loop.call_soon_threadsafe(self.activity.load_step, item)

        cancel = threading.Event()
        if target is None:
            call: Callable[[], Any] = partial(self.supervisor.stop, on_event=on_event)
        else:
            try:
                spec = self.spec_for(target)
            except LlmctlError as err:
                self.activity.load_failed(target, err.message, [])
                raise SwitchFailed(err.message) from None
            call = partial(self.supervisor.switch, spec, on_event=on_event, cancel=cancel)
        try:
            # a stop has no error to look at: only a load may be cut short by another llmctl
            result = await self._carry_out(call, cancel, lambda r: getattr(r, "error", None))
        except LlmctlError as err:
            details: dict[str, Any] = {}
            if getattr(err, "stderr_tail", None):
                details["stderr_tail"] = list(err.stderr_tail)[-20:]  # type: ignore[attr-defined]
            if target is not None:
                self.activity.load_failed(target, err.message, details.get("stderr_tail", []))
            raise SwitchFailed(err.message, details=details) from None
        if target is None:
            self.managed_url = None
            self.managed_pid = None
            return
        if not result.ready or result.error is not None:
            failure = result.error
            details = {}
            if failure is not None:
                details = {
                    "exit_code": failure.exit_status,
                    "stderr_tail": list(failure.stderr_tail)[-20:],
                }
            message = failure.message if failure is not None else "the server did not become ready"
            self.activity.load_failed(target, message, details.get("stderr_tail", []))
            raise SwitchFailed(message, details=details)
        self.managed_url = result.url
        self.managed_pid = result.pid
        if not result.noop and result.pid:
            self.started_pids.add(result.pid)

    async def _plan(self, target: str) -> list[str]:
        """The servers the placer would unload to load `target`; SwitchFailed if it is refused."""
        from llmctl.supervisor.placer import plan_load, refusal

        activity = self.scheduler.activity()

        def work() -> list[str]:
            try:
                decision, _ = plan_load(
                    self.manifest, target, self.supervisor.records(), self.devices, activity
                )
            except LlmctlError as err:
                raise SwitchFailed(err.message) from None
            if decision.action == "refuse":
                refused = refusal(decision)
                raise SwitchFailed(
                    f"{refused.message} ({refused.hint})", details={"decision": decision.to_json()}
                )
            return list(decision.evict)

        return await run_in_threadpool(work)

    async def _carry_out(
        self, call: Callable[[], _T], cancel: threading.Event, error_of: Callable[[_T], Any]
    ) -> _T:
        """Run a supervisor's switch or load in a thread; cancelled, it ends the load and leaves
        nothing half-started. A load that an operator's stop or switch from a shell cut short is
        not a failure of the profile: once that change is done, it is loaded again (twice at
        most) for the requests that wait for it."""
        loop = asyncio.get_running_loop()
        for _ in range(3):
            fut = loop.run_in_executor(None, call)
            try:
                out = await asyncio.shield(fut)
            except asyncio.CancelledError:
                cancel.set()
                with contextlib.suppress(BaseException):
                    await fut
                raise
            err = error_of(out)
            if not (isinstance(err, LoadCancelled) and err.by_another):
                break
            log.info("a load was cancelled by another llmctl (%s); loading again", err.message)
            await loop.run_in_executor(
                None, self.supervisor.wait_for_change, self.scheduler.timeout
            )
        return out

    async def _load(self, target: str, progress: ProgressFn) -> list[str]:
        """Load `target` beside the running servers; the profiles the placer unloaded."""
        from llmctl.supervisor.placer import PlacementRefused, load_profile

        loop = asyncio.get_running_loop()
        activity = self.scheduler.load_activity()

        def on_event(ev: Event) -> None:  # runs in the supervisor's thread
            kind = _EVENT_KINDS.get(ev.kind)
            if kind is None:
                return
            item = Progress(kind, ev.message, ev.profile or target, ev.elapsed_s)
            with contextlib.suppress(RuntimeError):  # the loop may be closing
                loop.call_soon_threadsafe(progress, item)

        cancel = threading.Event()
        call = partial(
            load_profile,
            self.supervisor,
            self.manifest,
            target,
            self.devices,
            activity=lambda: activity,
            on_event=on_event,
            cancel=cancel,
        )
        try:
            outcome = await self._carry_out(
                call, cancel, lambda o: o.result.error if o.result is not None else None
            )
        except PlacementRefused as err:
            details = {"decision": err.decision.to_json()} if err.decision else {}
            raise SwitchFailed(f"{err.message} ({err.hint})", details=details) from None
        except LlmctlError as err:
            raise SwitchFailed(err.message) from None
        result = outcome.result
        if result is None or not result.ready or result.error is not None:
            failure = result.error if result is not None else None
            raise SwitchFailed(
                failure.message if failure is not None else "the server did not become ready",
                details={
                    "exit_code": failure.exit_status,
                    "stderr_tail": list(failure.stderr_tail)[-20:],
                }
                if failure is not None
                else {},
            )
        self.managed_urls[target] = result.url
        if not result.noop and result.pid:
            self.started_pids.add(result.pid)
        evicted = list(outcome.decision.evict) if outcome.decision is not None else []
        return [p for p in evicted if p != target]

    async def _stop_servers(self, target: str | None, progress: ProgressFn) -> None:
        """Stop one profile's server, or every server (None)."""
        try:
            await run_in_threadpool(self.supervisor.stop, profile=target)
        except LlmctlError as err:
            raise SwitchFailed(err.message) from None
        if target is None:
            self.managed_urls.clear()
        else:
            self.managed_urls.pop(target, None)

    async def refresh(self, *, force: bool = False) -> None:
        """Learn what the state file says runs (a shell `llmctl switch` may have changed it)."""
        now = time.monotonic()
        sched = self.scheduler
        if not force and (
            now - self._last_refresh < _REFRESH_EVERY or sched.switching or sched.depth
        ):
            return
        self._last_refresh = now
        generation = sched.generation
        if self.several:
            try:
                # live servers only: one that died is repaired out of the state and loads again
                statuses, _ = await run_in_threadpool(self.supervisor.ps, check_health=False)
            except Exception as exc:  # a broken state file must not take the router down
                log.warning("cannot read the supervisor state: %s", exc)
                return
            live = {st.profile: st for st in statuses if st.profile and st.phase == "ready"}
            if generation == sched.generation:
                sched.observe_loaded(p for p in live if p in self.index.profiles)
            for name, st in live.items():
                if st.url:
                    self.managed_urls[name] = st.url
            return
        try:
            status = await run_in_threadpool(self.supervisor.status, check_health=False)
        except Exception as exc:  # a broken state file must not take the router down
            log.warning("cannot read the supervisor state: %s", exc)
            return
        running = status.profile if status.running else None
        if running is not None and running not in self.index.profiles:
            running = self.index.lookup(running)
        sched.observe(running, generation)
        if status.running and status.url and sched.active == running:
            self.managed_url = status.url
            self.managed_pid = status.pid

    def managed_base(self, profile: str) -> str:
        if self.several:
            return self.managed_urls.get(profile) or self.spec_for(profile).url
        if self.managed_url:
            return self.managed_url
        return self.spec_for(profile).url

    async def stop_started_server(self) -> None:
        """On exit: stop the llama-server this router started, unless it was replaced since."""
        if not self.started_pids:
            return
        if self.several:
            try:
                records = await run_in_threadpool(self.supervisor.records)
                for name, rec in records.items():
                    if rec.pid in self.started_pids:
                        log.info("stopping llama-server (pid %s, %s)", rec.pid, name)
                        await run_in_threadpool(self.supervisor.stop, profile=name)
            except Exception as exc:
                log.error("could not stop llama-server on exit: %s", exc)
            return
        try:
            status = await run_in_threadpool(self.supervisor.status, check_health=False)
            if status.running and status.pid in self.started_pids:
                log.info("stopping llama-server (pid %s, %s)", status.pid, status.profile)
                await run_in_threadpool(self.supervisor.stop, on_event=_log_kv)
        except Exception as exc:
            log.error("could not stop llama-server on exit: %s", exc)

    async def idle_loop(self) -> None:
        """Unload a profile idle for longer than its `ttl`."""
        while True:
            ttls = [t for t in self.index.ttls.values() if t]
            await asyncio.sleep(max(0.05, min(ttls) / 4) if ttls else 1.0)
            if self.several:
                try:
                    await self.scheduler.unload_idle(self.index.ttls)
                except RouterError as err:
                    log.warning("idle unload skipped: %s", err.message)
                continue
            active = self.scheduler.active
            if active is None:
                continue
            try:
                await self.scheduler.unload_if_idle(self.index.ttls.get(active))
            except RouterError as err:
                log.warning("idle unload of %s skipped: %s", active, err.message)

    # --- hosts (type: llmctl) ----------------------------------------------------------

    def own_profiles(self) -> list[str]:
        """The profiles this router's own llama-server serves (what it tells other hosts)."""
        assert self.upstreams is not None
        managed = self.upstreams.managed
        return [
            name
            for name, aliases in self.index.profiles.items()
            if managed is not None and managed.serves([name, *aliases])
        ]

    def _local_fits(self, profile: str | None) -> bool | None:
        """Loading `profile` here would unload nothing (None: not known right now)."""
        sched = self.scheduler
        if profile is None:
            return None
        if sched.is_loaded(profile):
            return True
        if not self.several:
            return sched.active is None and not sched.switching
        hit = self._cached_fits(tuple(sorted(sched.loaded)))
        return None if hit is None else hit.get(profile)

    async def fits_without_evicting(self) -> dict[str, bool | None]:
        """Each own profile: would loading it now unload nothing? With several servers the placer
        decides (cached until what is loaded changes); with one, only when nothing runs."""
        sched = self.scheduler
        names = self.own_profiles()
        if not self.several:
            return {n: self._local_fits(n) for n in names}
        key = tuple(sorted(sched.loaded))
        if (hit := self._cached_fits(key)) is not None:
            return {n: hit.get(n) for n in names}
        from llmctl.supervisor.placer import plan_load

        manifest, devices, activity = self.manifest, self.devices, sched.activity()

        def work() -> dict[str, bool | None]:
            records = self.supervisor.records()
            out: dict[str, bool | None] = {}
            for name in names:
                if name in key:
                    out[name] = True
                    continue
                try:
                    decision, _ = plan_load(manifest, name, records, devices, activity)
                except Exception:  # an unreadable model: the host cannot tell
                    out[name] = None
                    continue
                out[name] = decision.action != "refuse" and not decision.evict
            return out

        fits = await run_in_threadpool(work)
        self._fits_cache = (manifest, key, fits)  # the manifest it was decided with
        return fits

    def _cached_fits(self, key: tuple[str, ...]) -> dict[str, bool | None] | None:
        cached = self._fits_cache
        if cached is not None and cached[0] is self.manifest and cached[1] == key:
            return cached[2]
        return None

    def host_state(self, fits: Mapping[str, bool | None]) -> dict[str, Any]:
        """This router's answer to `GET /llmctl/v1/state`: its own profiles for other hosts, and
        what it learned from its own hosts (for `llmctl ps --all-hosts`)."""
        sched = self.scheduler
        several = self.several
        profiles = []
        for name in self.own_profiles():
            load = self.activity.loads.get(name)
            if sched.is_loaded(name):
                state = "ready"
            elif sched.loading == name:
                state = "loading"
            elif load is not None and load.state == "failed":
                state = "failed"
            else:
                state = "idle"
            inflight = sched.inflight_of(name)
            profiles.append(
                HostProfile(
                    name, tuple(self.index.aliases(name)), state, fits.get(name), inflight
                ).to_json()
            )
        assert self.upstreams is not None
        now = time.monotonic()
        return {
            "llmctl_state": STATE_VERSION,
            "router_id": self.router_id,
            "several_servers": several,
            "queue_depth": sched.depth,
            "profiles": profiles,
            "hosts": [
                {"name": u.name, "url": u.public()["url"], **u.host.to_json(now)}
                for u in self.upstreams.hosts()
                if u.host is not None
            ],
        }

    def order_chain(self, chain: list[Upstream], target: Target) -> list[Upstream]:
        """With hosts in the chain: the one that has the profile loaded first, else one where it
        fits without unloading anything, else chain order (`hosts.order`)."""
        if not any(u.host is not None for u in chain):
            return chain
        names = [n for n in (target.model, target.profile) if n]
        if target.profile:
            names.extend(self.index.aliases(target.profile))
        standings: list[Standing] = []
        for u in chain:
            if u.managed:
                standings.append(
                    Standing(
                        host=True,
                        loaded=self.scheduler.is_loaded(target.profile),
                        fits=self._local_fits(target.profile),
                    )
                )
                continue
            found = u.host_profile(names)
            reported = u.host.profiles.get(found) if u.host is not None and found else None
            if reported is None:
                standings.append(Standing(host=False))
            else:
                standings.append(Standing(host=True, loaded=reported.loaded, fits=reported.fits))
        return [chain[i] for i in order(standings)]

    # --- auth -------------------------------------------------------------------------

    def check_auth(self, request: Request) -> None:
        keys = self.api_keys
        if not keys:
            return
        headers = request.headers
        given = api_key_of(headers.get("authorization"), headers.get("x-api-key"))
        if not key_allowed(given, keys):
            self.metrics.count_rejected("unauthorized")
            raise unauthorized()

    async def read_body(self, request: Request) -> bytes:
        limit = self.serve.max_body_size
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            self.metrics.count_rejected("too_large")
            raise too_large(limit)
        parts: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.serve.body_timeout):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        self.metrics.count_rejected("too_large")
                        raise too_large(limit)
                    parts.append(chunk)
        except ClientDisconnect:
            # the client left during its upload: nothing to answer, nothing went wrong here
            self.metrics.count_rejected("client_gone")
            raise client_gone() from None
        except TimeoutError:
            self.metrics.count_rejected("body_timeout")
            raise body_timeout(self.serve.body_timeout) from None
        return b"".join(parts)


def _log_kv(ev: Event) -> None:
    """Saved KV cache events (keep_kv profiles) go to the router's log."""
    if ev.kind == "kv":
        log.info("%s", ev.message)


def _new_client(*, trust_env: bool) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        trust_env=trust_env,
        timeout=httpx.Timeout(600.0, connect=10.0),
        limits=httpx.Limits(
            max_connections=1000, max_keepalive_connections=200, keepalive_expiry=30.0
        ),
        follow_redirects=False,
    )


# --- endpoints ----------------------------------------------------------------------------


def _router(request: Request) -> Router:
    router: Router = request.app.state.router
    return router


def _upstream_request(request: Request, router: Router) -> tuple[Request, str]:
    """`/upstream/{profile}/{path}`: the request as llama-server gets it (`/{path}`), and the profile."""
    scope = request.scope
    raw = scope.get("raw_path") or scope["path"].encode("utf-8")
    split = split_upstream_path(raw.split(b"?", 1)[0])
    if split is None:
        raise RouterError(
            404,
            "Name a profile: /upstream/{profile}/{path}, e.g. /upstream/"
            f"{next(iter(router.index.profiles), 'PROFILE')}/metrics.",
            code="not_found",
        )
    name, rest = split
    profile = router.index.lookup(name)
    if profile is None:
        assert router.upstreams is not None
        if not router.upstreams.find_explicit(name):  # a host's profile is named as it is
            raise model_not_found(name, router.index.names())
        profile = name
    inner = dict(scope, path=rest.decode("utf-8", "surrogateescape"), raw_path=rest)
    return Request(inner, request.receive), profile


def _parse_body(router: Router, request: Request, path: str, body: bytes) -> dict[str, Any] | None:
    """The JSON object a request carries, if any; malformed JSON is refused only on the OpenAI paths
    the router must read (elsewhere llama-server gives its own answer)."""
    strict = path in JSON_ENDPOINTS
    if not body:
        if strict and request.method == "POST":
            raise bad_request("The request body is empty; send a JSON object.", code="invalid_json")
        return None
    # llama-server reads a body as JSON whatever its content type says
    looks_json = body[:64].lstrip()[:1] == b"{"
    if not (strict or looks_json or "json" in request.headers.get("content-type", "")):
        return None
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:  # nested too deep is not JSON we take
        if not strict:
            return None
        router.metrics.count_rejected("bad_json")
        raise bad_request(
            f"The request body is not valid JSON: {exc}", code="invalid_json"
        ) from None
    if isinstance(data, dict):
        return data
    if strict:
        router.metrics.count_rejected("bad_json")
        raise bad_request("The request body must be a JSON object.", code="invalid_json")
    return None


async def proxy_endpoint(request: Request, *, pinned: bool = False) -> Response:
    """Any llama-server (or OpenAI-compatible) path, sent along the chain of the request's profile.

    `pinned`: the path is `/upstream/{profile}/{path}`, which names the profile when neither the
    body nor the query does.
    """
    router = _router(request)
    router.check_auth(request)
    if router.shutting_down:
        raise RouterError(
            503, "The router is shutting down.", type=SERVER, code="shutting_down", retry_after=5
        )
    looped = loop_error(parse_hops(request.headers.get(HOPS_HEADER)), router.router_id)
    if looped is not None:
        router.metrics.count_rejected("loop")
        raise RouterError(508, f"Request loop: {looped}.", type=SERVER, code="upstream_loop")
    path_profile: str | None = None
    if pinned:
        request, path_profile = _upstream_request(request, router)
    body = await router.read_body(request)
    path: str = request.scope["path"]
    payload = _parse_body(router, request, path, body)
    model: object = payload.get("model") if payload else None
    if model is None:
        model = query_model(request.scope.get("query_string", b"")) or path_profile
    await router.refresh()
    assert router.upstreams is not None
    target = detect(
        router.index,
        router.upstreams,
        model,
        running=router.scheduler.active,
        default=router.serve.default_profile,
    )
    aliases = router.index.aliases(target.profile) if target.profile else []
    chain = router.order_chain(
        router.upstreams.chain(target.profile, target.model, aliases), target
    )
    if not chain:
        raise RouterError(
            503, "No upstream serves this model.", type=SERVER, code="upstream_unavailable"
        )
    exchange = Exchange(router, request, target, chain, body, payload)
    streaming = bool(payload and payload.get("stream") is True)
    if streaming and exchange.will_wait():
        # a refusal known before the stream starts (429, 503) keeps its status and Retry-After
        return WaitingStreamResponse(exchange.open, exchange.done, heartbeat=router.heartbeat)  # type: ignore[return-value]
    try:
        if exchange.will_wait():
            # a client that gives up while its request waits for a switch leaves the queue
            reply = await _unless_disconnected(request, exchange.open(None))
        else:
            reply = await exchange.open(None)
    except RouterError as err:
        exchange.done("client_gone" if err.status == 499 else "ok", None, err)
        raise
    return RelayResponse(reply, exchange.done)  # type: ignore[return-value]


async def _unless_disconnected(request: Request, work: Awaitable[Reply]) -> Reply:
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, RouterError):
            reply = await task
            await reply.aclose()  # it came just as the client left (the caller frees the lease)
        raise RouterError(499, "The client closed the connection.", code="client_closed")
    return task.result()


async def list_models(request: Request) -> Response:
    router = _router(request)
    router.check_auth(request)
    return JSONResponse({"object": "list", "data": await _model_entries(router)})


async def retrieve_model(request: Request) -> Response:
    """`GET /v1/models/{id}` (the OpenAI SDK's `models.retrieve`): one entry of the list."""
    router = _router(request)
    router.check_auth(request)
    wanted: str = request.path_params["id"]
    entries = await _model_entries(router)
    for entry in entries:
        if entry["id"] == wanted:
            return JSONResponse(entry)
    profile = router.index.lookup(wanted)
    for entry in entries:
        if profile is not None and entry["id"] == profile:
            return JSONResponse({**entry, "id": wanted})
    raise model_not_found(wanted, [e["id"] for e in entries])


def _model_entry(
    model: str,
    owner: str,
    profile: str | None,
    aliases: list[str],
    loaded: bool,
    **extra: Any,
) -> dict[str, Any]:
    """One entry of /v1/models: OpenAI's fields, then llmctl's."""
    return {
        "id": model,
        "object": "model",
        "created": 0,
        "owned_by": owner,
        "profile": profile,
        "aliases": aliases,
        "loaded": loaded,
        **extra,
    }


async def _model_entries(router: Router) -> list[dict[str, Any]]:
    await router.refresh()
    devices = await _loaded_devices(router)
    data: list[dict[str, Any]] = []
    for name, aliases in router.index.profiles.items():
        entry = _model_entry(
            name,
            "llmctl",
            name,
            aliases,
            router.scheduler.is_loaded(name),
            description=router.index.descriptions.get(name),
        )
        if name in devices:
            entry["devices"] = devices[name]
        data.append(entry)
        for alias in aliases:
            data.append({**entry, "id": alias, "aliases": []})
    assert router.upstreams is not None
    seen = {d["id"] for d in data}
    # profiles of other llmctl hosts, named for their host; a name served here too says where else
    elsewhere: dict[str, list[str]] = {}
    for up in router.upstreams.hosts():
        assert up.host is not None
        for name in up.host_profiles():
            reported = up.host.profiles[name]
            for model in (name, *reported.aliases):
                elsewhere.setdefault(model, []).append(up.name)
                if model in seen:
                    continue
                seen.add(model)
                aliases = list(reported.aliases) if model == name else []
                data.append(
                    _model_entry(
                        model,
                        up.name,
                        name,
                        aliases,
                        reported.loaded,
                        host=up.name,
                        host_up=up.host.up,
                    )
                )
    for entry in data:
        if entry["id"] in elsewhere and "host" not in entry:
            entry["hosts"] = elsewhere[entry["id"]]
    for model, up in router.upstreams.explicit_models():
        if model not in seen:
            seen.add(model)
            data.append(_model_entry(model, up.name, None, [], False))
    return data


async def _loaded_devices(router: Router) -> dict[str, list[str]]:
    """profile -> the devices its server was placed on (several servers only)."""
    if not router.several:
        return {}
    records = await run_in_threadpool(router.supervisor.records)
    return {name: list(rec.extra.get("devices", [])) for name, rec in records.items()}


async def health(request: Request) -> Response:
    router = _router(request)
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
    router = _router(request)
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


async def models_status(request: Request) -> Response:
    router = _router(request)
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
    servers = []
    if router.several:
        statuses, _ = await run_in_threadpool(router.supervisor.ps, check_health=True, timeout=0.5)
        records = await run_in_threadpool(router.supervisor.records)
        for st in statuses:
            rec = records.get(st.profile or "")
            extra = rec.extra if rec is not None else {}
            servers.append(
                {
                    "profile": st.profile,
                    "phase": st.phase,
                    "pid": st.pid,
                    "url": st.url,
                    "healthy": st.healthy,
                    "uptime_s": st.uptime_s,
                    "devices": extra.get("devices", []),
                    "planned_bytes": extra.get("usage", {}),
                    "inflight": sched.inflight_of(st.profile or ""),
                    "log": st.log,
                }
            )
    else:
        servers = [server] if status.running else []
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
    router = _router(request)
    router.check_auth(request)
    await router.refresh()
    fits = await router.fits_without_evicting()
    return JSONResponse(router.host_state(fits))


async def models_available(request: Request) -> Response:
    router = _router(request)
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
    try:
        from llmctl.memory.estimate import estimate, options_from_profile, source_for_profile
    except ImportError:
        return {"estimate": None, "fits": None}
    profile = manifest.profiles[name]
    gpu = getattr(manifest, "gpu", None)
    try:
        source = source_for_profile(profile)
        if source is None:
            return {"estimate": None, "fits": None, "estimate_error": "the model file is missing"}
        est = estimate(
            source,
            options_from_profile(profile),
            profile=name,
            budget=getattr(gpu, "vram", None),
            headroom=getattr(gpu, "headroom", 0) or 0,
            overhead=getattr(gpu, "overhead", 0) or 0,
        )
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
    router = _router(request)
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
    router = _router(request)
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
        if router.several:
            stopped = profile if sched.is_loaded(profile) else None
            if stopped:
                await sched.unload(profile)
        else:
            stopped = profile if sched.active == profile else None
            if stopped:
                await sched.stop()
        return JSONResponse(
            {"ok": True, "stopped": stopped, "elapsed_s": round(time.monotonic() - started, 3)}
        )
    before = sched.active
    await sched.stop()
    return JSONResponse(
        {"ok": True, "stopped": before, "elapsed_s": round(time.monotonic() - started, 3)}
    )


class ProgressStream:
    """`POST /models/switch` with `Accept: text/event-stream`: one event per step, then the result."""

    def __init__(self, run: Callable[[ProgressFn], Any]) -> None:
        self.run = run

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        events: asyncio.Queue[Progress | None] = asyncio.Queue()
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            *((k.lower().encode(), v.encode()) for k, v in sse.SSE_HEADERS.items()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        task = asyncio.ensure_future(self.run(events.put_nowait))
        task.add_done_callback(lambda _t: events.put_nowait(None))
        try:
            while True:
                item = await events.get()
                if item is None:
                    break
                await send(
                    {
                        "type": "http.response.body",
                        "body": sse.event(item.to_json(), name=item.kind),
                        "more_body": True,
                    }
                )
            exc = task.exception()
            if isinstance(exc, RouterError):
                final = sse.event(exc.body(), name="error")
            elif exc is not None:
                raise exc
            else:
                final = sse.event(task.result(), name="done")
            await send({"type": "http.response.body", "body": final, "more_body": False})
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task


def _browser_headers(scope: Scope) -> tuple[str | None, str | None, str | None, str | None]:
    """Host, Origin, Sec-Fetch-Site and Sec-Fetch-Mode of a request (None when absent)."""
    host = origin = site = mode = None
    for key, value in scope.get("headers", ()):
        if key == b"host":
            host = value.decode("latin-1")
        elif key == b"origin":
            origin = value.decode("latin-1")
        elif key == b"sec-fetch-site":
            site = value.decode("latin-1").lower()
        elif key == b"sec-fetch-mode":
            mode = value.decode("latin-1").lower()
    return host, origin, site, mode


def _with_cors(send: Send, origin: str) -> Send:
    """Add llama-server's `Access-Control-Allow-Origin` to answers for an allowed origin."""
    allow = [*cors_headers(origin, preflight=False), (b"Vary", b"Origin")]

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [
                (k, v)
                for k, v in message.get("headers", ())
                if k.lower() not in (b"access-control-allow-origin", b"vary")
            ]
            message = {**message, "headers": headers + allow}
        await send(message)

    return wrapped


async def _preflight(scope: Scope, send: Send, origin: str) -> None:
    """A CORS preflight from an allowed origin, answered as llama-server answers it: before any
    key check, empty body."""
    headers = [
        *cors_headers(origin, preflight=True),
        (b"Vary", b"Origin"),
        (b"Content-Type", b"text/html"),
        (b"Content-Length", b"0"),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


class FastProxy:
    """The hot path: every llama-server path but the router's own (health, metrics, model list)
    goes to the proxy without Starlette's routing and exception layers, which cost more than the
    rest of the relay. Paths are checked first, and CORS is handled here for every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        router: Router = scope["app"].state.router
        response: Any
        why = unsafe_path(scope.get("raw_path") or path.encode("utf-8", "surrogateescape"))
        if why is not None:
            router.metrics.count_rejected("bad_path")
            router.metrics.count_request(None, None, 400)
            response = bad_request(
                f"The request path is refused: {why}. Send the path without dot segments "
                "or encoded slashes.",
                code="invalid_path",
            ).response()
            await response(scope, receive, send)
            return
        host, origin, site, mode = _browser_headers(scope)
        refused = router.origins.refusal(host, origin, site, mode == "navigate")
        if refused is not None:
            router.metrics.count_rejected(refused.code)
            router.metrics.count_request(None, None, 403)
            response = RouterError(403, refused.message, code=refused.code).response()
            await response(scope, receive, send)
            return
        if scope["method"] == "OPTIONS":
            await _preflight(scope, send, origin or "")
            return
        if origin is not None:
            send = _with_cors(send, origin)
        kind = route_kind(path)
        if kind == "own" and not path.startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        # every answer of the API is counted once: by its exchange, else here under its status
        sent: list[int] = []

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                sent.append(message["status"])
            await send(message)

        try:
            if kind == "own":
                await self.app(scope, receive, counting_send)
                return
            request = Request(scope, receive)
            try:
                if kind == "cors_proxy" and not router.serve.allow_cors_proxy:
                    router.check_auth(request)
                    raise RouterError(
                        403,
                        "/cors-proxy is refused: it would let any client make the server fetch "
                        "any URL. Set serve.allow_cors_proxy: true in the manifest to pass it "
                        "through.",
                        code="cors_proxy_disabled",
                    )
                response = await proxy_endpoint(request, pinned=kind == "upstream")
            except RouterError as err:
                response = err.response()
            await response(scope, receive, counting_send)
        finally:
            if not scope.get(COUNTED):
                router.metrics.count_request(None, None, sent[0] if sent else 499)


# --- errors -------------------------------------------------------------------------------


async def _router_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RouterError)
    return exc.response()


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    err = RouterError(exc.status_code, str(exc.detail), code=code)
    return err.response(dict(exc.headers or {}))


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.exception("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return RouterError(
        500, "Internal error in the router.", type=SERVER, code="internal_error"
    ).response()


def create_app(
    manifest: Any,
    supervisor: Supervisor,
    *,
    manifest_path: Path | None = None,
    spec_for: Callable[[Any, str], LaunchSpec] | None = None,
    environ: Mapping[str, str] | None = None,
    heartbeat: float = 5.0,
    idle_unload: bool = True,
) -> Starlette:
    """The router app over `manifest` and `supervisor`; `app.state.router` is its Router."""
    router = Router(
        manifest,
        supervisor,
        spec_for=spec_for,
        manifest_path=manifest_path,
        environ=environ,
        heartbeat=heartbeat,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await router.refresh(force=True)
        router.hosts.sync()
        idle = asyncio.ensure_future(router.idle_loop()) if idle_unload else None
        try:
            yield
        finally:
            router.shutting_down = True
            await router.hosts.aclose()
            if idle is not None:
                idle.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await idle
            await router.scheduler.aclose()
            if router.serve.stop_server_on_exit:
                await router.stop_started_server()
            await router.aclose_clients()

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/v1/health", health, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/models", list_models, methods=["GET"]),
        Route("/v1/models/{id:path}", retrieve_model, methods=["GET"]),
        Route("/models/available", models_available, methods=["GET"]),
        Route("/models/status", models_status, methods=["GET"]),
        Route("/models/switch", models_switch, methods=["POST"]),
        Route("/models/stop", models_stop, methods=["POST"]),
        Route(STATE_PATH, host_state_endpoint, methods=["GET"]),
        *dashboard.routes(),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(FastProxy)],
        lifespan=lifespan,
        exception_handlers={
            RouterError: _router_error,
            HTTPException: _http_error,
            Exception: _internal_error,
        },
    )
    app.state.router = router
    return app
