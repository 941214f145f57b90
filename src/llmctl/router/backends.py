"""The router's two ways to run llama-server, behind one `Backend` interface: the effects the
scheduler calls (plan, load, stop) and what the runtime asks of them (refresh, base_url,
unload_idle, stop_started, local fits).

- `SwitchingBackend`: one server, switched from profile to profile (no `server.ports`).
- `PlacingBackend`: several servers at once (`server.ports`), each load placed by memory.

The scheduler decides (queue, order, who waits); a backend carries out and reports. Every error
of the supervisor or the placer becomes the waiters' failure in one place,
`errors.router_error_for`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, Protocol, TypeVar

from starlette.concurrency import run_in_threadpool

from llmctl.errors import LlmctlError, LoadCancelled
from llmctl.router.activity import Activity
from llmctl.router.errors import RouterError, failed_start, router_error_for
from llmctl.router.routing import ModelIndex
from llmctl.router.scheduler import Progress, ProgressFn, Scheduler, switching
from llmctl.supervisor.launch import LaunchSpec
from llmctl.supervisor.lifecycle import Supervisor
from llmctl.supervisor.results import Event

_T = TypeVar("_T")
log = logging.getLogger("llmctl.router")

_EVENT_KINDS = {
    "log": "loading",
    "stopping": "stopping",
    "stopped": "stopped",
    "starting": "starting",
    "ready": "ready",
    "error": "error",
}


def places_servers(manifest: Any) -> bool:
    """`server.ports` is set: several servers at once, placed by memory."""
    return getattr(getattr(manifest, "server", None), "ports", None) is not None


LAUNCHER = "llmctl serve"  # Supervisor.started_by of the router's launches


def started_here(rec: Any, started_pids: set[int]) -> bool:
    """A server this router stops on exit: it started it, or a router that died did (a
    restarted serve takes over the servers of the one killed before it)."""
    from llmctl.supervisor.spawn import launcher_gone

    return rec.pid in started_pids or launcher_gone(rec, LAUNCHER)


def log_kv(ev: Event) -> None:
    """Saved KV cache events (keep_kv profiles) go to the router's log."""
    if ev.kind == "kv":
        log.info("%s", ev.message)


class Backend(Protocol):
    """What the runtime needs of a mode; it never asks which one it holds."""

    places: bool  # several servers, placed by memory (reported as `several_servers`)
    scheduler: Scheduler
    devices: list[Any]
    managed_pid: int | None  # the one server's pid (SwitchingBackend), for the exchange's retry
    started_pids: set[int]

    def configure(
        self, manifest: Any, spec_for: Callable[[str], LaunchSpec], index: ModelIndex
    ) -> None: ...

    async def refresh(self) -> None: ...

    def base_url(self, profile: str) -> str: ...

    async def stop_started(self) -> None: ...

    async def unload_idle(self, ttls: Mapping[str, float | None]) -> None: ...

    def local_fits(self, profile: str) -> bool | None: ...

    async def fits_without_evicting(self, names: list[str]) -> dict[str, bool | None]: ...

    async def stop_profile(self, profile: str) -> str | None: ...

    async def retire(self, profile: str) -> None: ...

    async def servers(self, one: dict[str, Any], running: bool) -> list[dict[str, Any]]: ...

    async def loaded_devices(self) -> dict[str, list[str]]: ...


class _Base:
    places = False

    def __init__(self, supervisor: Supervisor, activity: Activity) -> None:
        self.supervisor = supervisor
        self.activity = activity
        self.devices: list[Any] = []
        self.managed_pid: int | None = None
        self.started_pids: set[int] = set()
        self.manifest: Any = None
        self.scheduler: Scheduler

    def _watch_stops(self) -> None:
        """The scheduler asks, before a load, for the newest stop from a shell (stops.py)."""
        from llmctl.supervisor.stops import stopped_after

        state_dir = self.supervisor.state_dir

        def newest(profile: str, since: float) -> tuple[float, str] | None:
            mark = stopped_after(state_dir, profile, since)
            return None if mark is None else (mark.at, mark.describe())

        self.scheduler.stopped_after = newest

    def configure(
        self, manifest: Any, spec_for: Callable[[str], LaunchSpec], index: ModelIndex
    ) -> None:
        self.manifest = manifest
        self.spec_for = spec_for
        self.index = index

    async def _carry_out(
        self, call: Callable[[], _T], cancel: threading.Event, error_of: Callable[[_T], Any]
    ) -> _T:
        """Run a supervisor's switch or load in a thread; cancelled, it ends the load and leaves
        nothing half-started. A load that an operator's switch from a shell cut short is not a
        failure of the profile: once that change is done, it is loaded again (twice at most) for
        the requests that wait for it. The supervisor says which cancels want that
        (LoadCancelled.retry): a stop from a shell is not undone."""
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
            if not (isinstance(err, LoadCancelled) and err.retry):
                break
            log.info("a load was cancelled by another llmctl (%s); loading again", err.message)
            await loop.run_in_executor(
                None, self.supervisor.wait_for_change, self.scheduler.timeout
            )
        return out


class SwitchingBackend(_Base):
    """One llama-server, switched to the profile a request needs (the previous one stops)."""

    places = False

    def __init__(self, supervisor: Supervisor, activity: Activity) -> None:
        super().__init__(supervisor, activity)
        self.managed_url: str | None = None
        self.scheduler = switching(self._switch)
        self._watch_stops()

    async def _switch(self, target: str | None, progress: ProgressFn) -> None:
        loop = asyncio.get_running_loop()

        def on_event(ev: Event) -> None:  # runs in the supervisor's thread
            log_kv(ev)
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
                raise router_error_for(err) from None
            call = partial(
                self.supervisor.switch,
                spec,
                on_event=on_event,
                cancel=cancel,
                admitted_at=self.scheduler.loading_since,
            )
        try:
            # a stop has no error to look at: only a load may be cut short by another llmctl
            result = await self._carry_out(call, cancel, lambda r: getattr(r, "error", None))
        except LlmctlError as err:
            failed = router_error_for(err)
            if target is not None:
                self.activity.load_failed(
                    target, failed.message, failed.details.get("stderr_tail", [])
                )
            raise failed from None
        if target is None:
            self.managed_url = None
            self.managed_pid = None
            return
        if not result.ready or result.error is not None:
            failed = failed_start(result.error)
            if failed.stopped_at is None:  # a stop from a shell is no failure of the profile
                self.activity.load_failed(
                    target, failed.message, failed.details.get("stderr_tail", [])
                )
            raise failed
        self.managed_url = result.url
        self.managed_pid = result.pid
        if not result.noop and result.pid:
            self.started_pids.add(result.pid)

    async def refresh(self) -> None:
        sched = self.scheduler
        generation = sched.generation
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

    def base_url(self, profile: str) -> str:
        if self.managed_url:
            return self.managed_url
        return self.spec_for(profile).url

    async def stop_started(self) -> None:
        try:
            status = await run_in_threadpool(self.supervisor.status, check_health=False)
            if not status.running:
                return
            ours = status.pid in self.started_pids
            if not ours:
                records = await run_in_threadpool(self.supervisor.records)
                ours = any(started_here(rec, self.started_pids) for rec in records.values())
            if ours:
                log.info("stopping llama-server (pid %s, %s)", status.pid, status.profile)
                await run_in_threadpool(self.supervisor.stop, on_event=log_kv)
        except Exception as exc:
            log.error("could not stop llama-server on exit: %s", exc)

    async def unload_idle(self, ttls: Mapping[str, float | None]) -> None:
        active = self.scheduler.active
        if active is None:
            return
        try:
            await self.scheduler.unload_if_idle(ttls.get(active))
        except RouterError as err:
            log.warning("idle unload of %s skipped: %s", active, err.message)

    def local_fits(self, profile: str) -> bool | None:
        sched = self.scheduler
        if sched.is_loaded(profile):
            return True
        return sched.active is None and not sched.switching

    async def fits_without_evicting(self, names: list[str]) -> dict[str, bool | None]:
        """Only when nothing runs: loading any profile stops the one server's current one."""
        return {n: self.local_fits(n) for n in names}

    async def stop_profile(self, profile: str) -> str | None:
        """Stop the server when it runs `profile`; the profile stopped, if any."""
        stopped = profile if self.scheduler.active == profile else None
        if stopped:
            await self.scheduler.stop()
        return stopped

    async def retire(self, profile: str) -> None:
        """The server runs an old launch of `profile`: stop it (after its requests in flight)."""
        await self.stop_profile(profile)

    async def servers(self, one: dict[str, Any], running: bool) -> list[dict[str, Any]]:
        """`/models/status`'s servers: the one server (`one`, as the status describes it)."""
        return [one] if running else []

    async def loaded_devices(self) -> dict[str, list[str]]:
        return {}  # the one server is not placed


class PlacingBackend(_Base):
    """Several llama-servers at once; the placer decides where each loads and what it unloads."""

    places = True

    def __init__(self, supervisor: Supervisor, activity: Activity) -> None:
        super().__init__(supervisor, activity)
        self.managed_urls: dict[str, str] = {}
        # (manifest, loaded profiles, fits): the placer's answers while neither changes
        self._fits_cache: tuple[Any, tuple[str, ...], dict[str, bool | None]] | None = None
        self.scheduler = Scheduler(self._plan, self._load, self._stop_servers)
        self._watch_stops()

    def configure(
        self, manifest: Any, spec_for: Callable[[str], LaunchSpec], index: ModelIndex
    ) -> None:
        from llmctl.supervisor.devices import detect

        super().configure(manifest, spec_for, index)
        self._fits_cache = None  # what fits depends on the profiles' settings
        report = detect(manifest.device_configs())
        for warning in report.warnings:
            log.warning("%s", warning)
        self.devices = report.devices

    async def _plan(self, target: str) -> list[str]:
        """The servers the placer would unload to load `target`; SwitchFailed if it is refused."""
        from llmctl.placement.placer import plan_load, refusal

        activity = self.scheduler.activity()

        def work() -> list[str]:
            try:
                decision, _ = plan_load(
                    self.manifest, target, self.supervisor.records(), self.devices, activity
                )
            except LlmctlError as err:
                raise router_error_for(err) from None
            if decision.action == "refuse":
                raise router_error_for(refusal(decision))
            return list(decision.evict)

        return await run_in_threadpool(work)

    async def _load(self, target: str, progress: ProgressFn) -> list[str]:
        """Load `target` beside the running servers; the profiles the placer unloaded."""
        from llmctl.placement.placer import load_profile

        loop = asyncio.get_running_loop()
        activity = self.scheduler.load_activity()

        def on_event(ev: Event) -> None:  # runs in the supervisor's thread
            kind = _EVENT_KINDS.get(ev.kind)
            if kind is None:
                return
            item = Progress(kind, ev.message, ev.profile or target, ev.elapsed_s)
            with contextlib.suppress(RuntimeError):  # the loop may be closing
                loop.call_soon_threadsafe(progress, item)
                loop.call_soon_threadsafe(self.activity.load_step, item)

        cancel = threading.Event()

        def before_evict(decision: Any) -> None:  # the placer's own victims (an OOM retry)
            more = [p for p in decision.evict if p not in activity or activity[p][1] > 0]
            if more:
                drain = self.scheduler.drain_more(more)
                asyncio.run_coroutine_threadsafe(drain, loop).result()

        call = partial(
            load_profile,
            self.supervisor,
            self.manifest,
            target,
            self.devices,
            activity=lambda: activity,
            before_evict=before_evict,
            on_event=on_event,
            cancel=cancel,
            admitted_at=self.scheduler.loading_since,
        )
        try:
            outcome = await self._carry_out(
                call, cancel, lambda o: o.result.error if o.result is not None else None
            )
        except LlmctlError as err:
            failed = router_error_for(err)
            self.activity.load_failed(target, failed.message, failed.details.get("stderr_tail", []))
            raise failed from None
        result = outcome.result
        if result is None or not result.ready or result.error is not None:
            failed = failed_start(result.error if result is not None else None)
            if failed.stopped_at is None:  # a stop from a shell is no failure of the profile
                self.activity.load_failed(
                    target, failed.message, failed.details.get("stderr_tail", [])
                )
            raise failed
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
            raise router_error_for(err) from None
        if target is None:
            self.managed_urls.clear()
        else:
            self.managed_urls.pop(target, None)

    async def refresh(self) -> None:
        sched = self.scheduler
        generation = sched.generation
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

    def base_url(self, profile: str) -> str:
        return self.managed_urls.get(profile) or self.spec_for(profile).url

    async def stop_started(self) -> None:
        try:
            records = await run_in_threadpool(self.supervisor.records)
            for name, rec in records.items():
                if started_here(rec, self.started_pids):
                    log.info("stopping llama-server (pid %s, %s)", rec.pid, name)
                    await run_in_threadpool(self.supervisor.stop, profile=name)
        except Exception as exc:
            log.error("could not stop llama-server on exit: %s", exc)

    async def unload_idle(self, ttls: Mapping[str, float | None]) -> None:
        try:
            await self.scheduler.unload_idle(ttls)
        except RouterError as err:
            log.warning("idle unload skipped: %s", err.message)

    def local_fits(self, profile: str) -> bool | None:
        sched = self.scheduler
        if sched.is_loaded(profile):
            return True
        hit = self._cached_fits(tuple(sorted(sched.loaded)))
        return None if hit is None else hit.get(profile)

    async def fits_without_evicting(self, names: list[str]) -> dict[str, bool | None]:
        """The placer decides, cached until what is loaded (or the manifest) changes."""
        sched = self.scheduler
        key = tuple(sorted(sched.loaded))
        if (hit := self._cached_fits(key)) is not None:
            return {n: hit.get(n) for n in names}
        from llmctl.placement.placer import plan_load

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

    async def stop_profile(self, profile: str) -> str | None:
        """Unload `profile` and keep the others; the profile stopped, if it was loaded."""
        stopped = profile if self.scheduler.is_loaded(profile) else None
        if stopped:
            await self.scheduler.unload(profile)
        return stopped

    async def retire(self, profile: str) -> None:
        """The server runs an old launch of `profile`: unload it (after its requests in flight),
        also when this router did not load it."""
        await self.scheduler.unload(profile)

    async def servers(self, one: dict[str, Any], running: bool) -> list[dict[str, Any]]:
        """`/models/status`'s servers: each live one, with its placement and requests in flight."""
        sched = self.scheduler
        statuses, _ = await run_in_threadpool(self.supervisor.ps, check_health=True, timeout=0.5)
        records = await run_in_threadpool(self.supervisor.records)
        out = []
        for st in statuses:
            rec = records.get(st.profile or "")
            extra = rec.extra if rec is not None else {}
            out.append(
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
        return out

    async def loaded_devices(self) -> dict[str, list[str]]:
        """profile -> the devices its server was placed on."""
        records = await run_in_threadpool(self.supervisor.records)
        return {name: list(rec.extra.get("devices", [])) for name, rec in records.items()}

    def _cached_fits(self, key: tuple[str, ...]) -> dict[str, bool | None] | None:
        cached = self._fits_cache
        if cached is not None and cached[0] is self.manifest and cached[1] == key:
            return cached[2]
        return None


def backend_for(manifest: Any, supervisor: Supervisor, activity: Activity) -> Backend:
    """The mode is fixed for the router's life: a reload does not change it."""
    if places_servers(manifest):
        return PlacingBackend(supervisor, activity)
    return SwitchingBackend(supervisor, activity)
