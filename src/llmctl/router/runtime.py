"""The router's runtime state: `Router` applies and reloads the manifest, refreshes what runs,
holds the scheduler, the clients and the host watch. Endpoints reach it through `router_of(request)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import httpx
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request

from llmctl.errors import LlmctlError, LoadCancelled
from llmctl.llama.endpoints import api_key_of
from llmctl.manifest.model import ServeConfig
from llmctl.router import metrics as metrics_mod
from llmctl.router.activity import Activity
from llmctl.router.auth import key_allowed, serve_keys
from llmctl.router.client import Pool
from llmctl.router.errors import (
    RouterError,
    body_timeout,
    client_gone,
    too_large,
    unauthorized,
)
from llmctl.router.host_watch import HostWatch
from llmctl.router.hosts import (
    STATE_VERSION,
    HostProfile,
    Standing,
    order,
)
from llmctl.router.models import (
    ModelIndex,
    Target,
)
from llmctl.router.origins import OriginPolicy
from llmctl.router.proxy import (
    lean_capable,
)
from llmctl.router.scheduler import Progress, ProgressFn, Scheduler, SwitchFailed, switching
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


def router_of(request: Request) -> Router:
    router: Router = request.app.state.router
    return router
