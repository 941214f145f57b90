"""The router's runtime state: `Router` applies and reloads the manifest, refreshes what runs,
holds the scheduler, the clients and the host watch. Endpoints reach it through `router_of(request)`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request

from llmctl.errors import LlmctlError
from llmctl.llama.endpoints import api_key_of
from llmctl.manifest.model import ServeConfig
from llmctl.router import metrics as metrics_mod
from llmctl.router.activity import Activity
from llmctl.router.auth import key_allowed, serve_keys
from llmctl.router.backends import backend_for
from llmctl.router.errors import (
    RouterError,
    body_timeout,
    client_gone,
    too_large,
    unauthorized,
)
from llmctl.router.exchange import ChainContext
from llmctl.router.host_watch import HostWatch
from llmctl.router.hosts import (
    STATE_VERSION,
    HostProfile,
    Standing,
)
from llmctl.router.origins import OriginPolicy
from llmctl.router.routing import (
    ModelIndex,
    Target,
    order_chain,
)
from llmctl.router.transport.base import Transport
from llmctl.router.transport.transports import Transports
from llmctl.router.upstreams import Upstream, Upstreams
from llmctl.supervisor.launch import LaunchSpec
from llmctl.supervisor.lifecycle import Supervisor


def _serve_of(manifest: Any) -> ServeConfig:
    """The manifest's validated `serve:` section (its defaults when a test's stand-in has none)."""
    serve = getattr(manifest, "serve", None)
    return serve if serve is not None else ServeConfig()


_T = TypeVar("_T")
log = logging.getLogger("llmctl.router")

JSON_ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
# scope key the router's HTTP protocol sets once a request's whole body is in (server.py): its
# read needs no deadline, every receive returns at once
BODY_IN = "llmctl.body_in"
_REFRESH_EVERY = 1.0


def _default_spec_for(manifest: Any) -> Callable[[str], LaunchSpec]:
    from llmctl.supervisor.launch import launch_spec

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
        self._spec_for_factory = spec_for
        # set by whoever binds the socket: raises for settings that must not serve that address
        # (serve section, its keys) -> raises when the bind that opened the socket must refuse it
        self.bind_check: Callable[[ServeConfig, tuple[str, ...]], None] | None = None
        self.metrics = metrics_mod.Metrics()
        self.activity = Activity()
        self.upstreams: Upstreams | None = None
        self.shutting_down = False
        # the address the socket listens on (set by whoever binds it): the Host rules depend on it
        self.bind_host: str | None = None
        self._last_refresh = 0.0
        self.transports = Transports()
        # server.ports: several servers at once, each profile loaded with the placer; else one
        # server, switched (fixed for the router's life: a reload does not change it)
        self.backend = backend_for(manifest, supervisor, self.activity)
        self.scheduler = self.backend.scheduler
        self.log_streams: dict[str, int] = {}  # open dashboard log streams, by client address
        self.scheduler.on_switch_done = self.metrics.observe_switch
        # what each request's exchange is given (runtime state it never calls back for)
        self.chain_context = ChainContext(
            scheduler=self.scheduler,
            servers=self.backend,
            supervisor=supervisor,
            hosts=self.hosts,
            transports=self.transports,
            metrics=self.metrics,
            activity=self.activity,
            router_id=self.router_id,
        )
        self.apply(manifest)

    # --- configuration ----------------------------------------------------------------

    def apply(self, manifest: Any) -> None:
        """Take a (new) manifest: settings, names, upstream chain (breakers kept), queue limits."""
        self.manifest = manifest
        self.serve = _serve_of(manifest)
        self.api_keys = serve_keys(self.serve, self.environ)
        self.origins = OriginPolicy.from_serve(self.serve, self.bind_host or self.serve.host)
        self.index = ModelIndex(manifest)
        self.upstreams = Upstreams.from_serve(self.serve, self.upstreams, self.environ)
        if self._spec_for_factory is None:
            self.spec_for = _default_spec_for(manifest)
        else:
            self.spec_for = partial(self._spec_for_factory, manifest)
        self.backend.configure(manifest, self.spec_for, self.index)
        s = self.scheduler
        s.max_size = self.serve.queue.max_size
        s.timeout = self.serve.queue.timeout
        s.inflight_timeout = self.serve.inflight_timeout
        from llmctl.router.scheduler import configure as configure_order

        configure_order(s, manifest)

    def bound_to(self, host: str) -> None:
        """The socket listens on `host`: the Host and Origin rules follow from it."""
        self.bind_host = host
        self.origins = OriginPolicy.from_serve(self.serve, host)

    async def reload(self) -> bool:
        """Reload the manifest from its file (SIGHUP); keep the old one when the new one is broken."""
        from llmctl.manifest.validate import load_manifest

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
        before = self._launches(self.scheduler.loaded)
        self.apply(manifest)
        self.hosts.sync()
        log.info("manifest reloaded: %d profile(s)", len(self.index.profiles))
        await self.retire_outdated(before)
        return True

    def _launches(self, profiles: list[str]) -> dict[str, str | None]:
        """Each profile's launch identity under the current manifest (None: not in it)."""
        out: dict[str, str | None] = {}
        for p in profiles:
            try:
                out[p] = self.spec_for(p).config_hash if p in self.index.profiles else None
            except LlmctlError:
                out[p] = None
        return out

    async def retire_outdated(self, before: Mapping[str, str | None]) -> None:
        """After a reload: the servers of profiles that left the manifest, or whose launch it
        changed (flags, model, environment), stop once their requests in flight are done; the
        next request loads the profile with the new flags (as llama-swap restarts changed
        models)."""
        now = self._launches(list(before))
        for profile, old in before.items():
            new = now.get(profile)
            if new is not None and new == old:
                continue
            why = "is no longer in the manifest" if new is None else "changed in the manifest"
            if not self.serve.restart_changed:
                log.warning(
                    "profile %s %s: its server runs the old launch and stays (serve."
                    "restart_changed: false); `llmctl ps` marks it stale",
                    profile,
                    why,
                )
                continue
            log.warning(
                "profile %s %s: its server runs the old launch; stopping it once its requests in "
                "flight are done (the next request loads it anew)",
                profile,
                why,
            )
            try:
                await self.backend.retire(profile)
            except RouterError as err:
                log.error("could not stop the server of profile %s: %s", profile, err.message)
            else:
                log.info("stopped the server of profile %s (%s)", profile, why)

    # --- HTTP clients -----------------------------------------------------------------

    def transport_for(self, upstream: Upstream, url: str) -> Transport:
        """The transport for `url` (`Transports.for_url`)."""
        return self.transports.for_url(url)

    async def aclose_clients(self) -> None:
        await self.transports.aclose()

    # --- managed server ---------------------------------------------------------------

    async def refresh(self, *, force: bool = False) -> None:
        """Learn what the state file says runs (a shell `llmctl switch` may have changed it)."""
        now = time.monotonic()
        sched = self.scheduler
        if not force and (
            now - self._last_refresh < _REFRESH_EVERY or sched.switching or sched.depth
        ):
            return
        self._last_refresh = now
        await self.backend.refresh()

    @property
    def devices(self) -> list[Any]:
        return self.backend.devices

    @property
    def managed_pid(self) -> int | None:
        return self.backend.managed_pid

    def managed_base(self, profile: str) -> str:
        return self.backend.base_url(profile)

    async def stop_started_server(self) -> None:
        """On exit: stop the llama-servers this router started (or took over from a router that
        died), unless they were replaced since."""
        await self.backend.stop_started()

    async def idle_loop(self) -> None:
        """Unload a profile idle for longer than its `ttl`."""
        while True:
            ttls = [t for t in self.index.ttls.values() if t]
            await asyncio.sleep(max(0.05, min(ttls) / 4) if ttls else 1.0)
            await self.backend.unload_idle(self.index.ttls)

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
        return None if profile is None else self.backend.local_fits(profile)

    async def fits_without_evicting(self) -> dict[str, bool | None]:
        """Each own profile: would loading it now unload nothing? With several servers the placer
        decides (cached until what is loaded changes); with one, only when nothing runs."""
        return await self.backend.fits_without_evicting(self.own_profiles())

    def host_state(self, fits: Mapping[str, bool | None]) -> dict[str, Any]:
        """This router's answer to `GET /llmctl/v1/state`: its own profiles for other hosts, and
        what it learned from its own hosts (for `llmctl ps --all-hosts`)."""
        sched = self.scheduler
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
            "several_servers": self.backend.places,
            "queue_depth": sched.depth,
            "profiles": profiles,
            "hosts": [
                {"name": u.name, "url": u.public()["url"], **u.host.to_json(now)}
                for u in self.upstreams.hosts()
                if u.host is not None
            ],
        }

    def order_chain(self, chain: list[Upstream], target: Target) -> list[Upstream]:
        """The chain in the order to try it (`routing.order_chain`)."""
        return order_chain(chain, target, self.index, self._local_standing)

    def _local_standing(self, profile: str | None) -> Standing:
        return Standing(
            host=True, loaded=self.scheduler.is_loaded(profile), fits=self._local_fits(profile)
        )

    # --- auth -------------------------------------------------------------------------

    def check_auth(self, request: Request) -> None:
        keys = self.api_keys
        if not keys:
            return
        given = api_key_of(header(request, b"authorization"), header(request, b"x-api-key"))
        if not key_allowed(given, keys):
            self.metrics.count_rejected("unauthorized")
            raise unauthorized()

    async def read_body(self, request: Request) -> bytes:
        limit = self.serve.max_body_size
        declared = header(request, b"content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            self.metrics.count_rejected("too_large")
            raise too_large(limit)
        try:
            if BODY_IN in request.scope:
                return await self._receive_body(request, limit)
            async with asyncio.timeout(self.serve.body_timeout):
                return await self._receive_body(request, limit)
        except ClientDisconnect:
            # the client left during its upload: nothing to answer, nothing went wrong here
            self.metrics.count_rejected("client_gone")
            raise client_gone() from None
        except TimeoutError:
            self.metrics.count_rejected("body_timeout")
            raise body_timeout(self.serve.body_timeout) from None

    async def _receive_body(self, request: Request, limit: int) -> bytes:
        # the ASGI messages themselves: request.stream() is an async generator per request
        receive = request.receive
        parts: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            chunk: bytes = message.get("body", b"")
            more = message.get("more_body", False)
            if not chunk:
                continue
            size += len(chunk)
            if size > limit:
                self.metrics.count_rejected("too_large")
                raise too_large(limit)
            parts.append(chunk)
        return b"".join(parts)


def header(request: Request, name: bytes) -> str | None:
    """A request header by its lower-case name (ASGI's), without building Starlette's `Headers`,
    whose lookup of an absent name raises and catches a KeyError."""
    headers: list[tuple[bytes, bytes]] = request.scope["headers"]
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None


def router_of(request: Request) -> Router:
    router: Router = request.app.state.router
    return router
