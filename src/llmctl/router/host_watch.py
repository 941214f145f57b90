"""The poller of `type: llmctl` upstreams: one task per host reads its `GET /llmctl/v1/state`
every `poll_interval` seconds, and at once when a request to it failed.

A poll that fails (no connection, no answer within max(1 s, poll_interval), an error status,
anything but a state document) marks the host down; the next good one marks it up again and
closes its breaker, so a host that comes back is used again without waiting for a probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import TYPE_CHECKING, Protocol

from llmctl.router.hosts import MAX_STATE_BYTES, STATE_PATH, BadState, HostState, parse_state
from llmctl.router.proxy import open_reply
from llmctl.router.transport.base import UpstreamFailure
from llmctl.router.upstreams import Upstream

if TYPE_CHECKING:
    from llmctl.router.transport.base import Transport
    from llmctl.router.upstreams import Upstreams


class Router(Protocol):
    """What the host watch uses of the router's runtime (`runtime.Router` is one): the chain, the
    id it sends along, and the transports."""

    upstreams: Upstreams | None
    router_id: str

    def transport_for(self, upstream: Upstream, url: str) -> Transport: ...


log = logging.getLogger("llmctl.router")


def poll_timeout(up: Upstream) -> float:
    return max(1.0, up.poll_interval)


class HostWatch:
    """The poll tasks of the router's hosts, kept in line with the chain (after a reload too)."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._wake: dict[str, asyncio.Event] = {}

    def sync(self) -> None:
        """One task per `type: llmctl` upstream of the current chain (call on the event loop)."""
        assert self.router.upstreams is not None
        names = {u.name for u in self.router.upstreams.hosts()}
        for name in list(self._tasks):
            if name not in names:
                self._tasks.pop(name).cancel()
                self._wake.pop(name, None)
        for name in names:
            if name not in self._tasks:
                self._wake[name] = asyncio.Event()
                self._tasks[name] = asyncio.ensure_future(self._run(name))

    def poke(self, name: str) -> None:
        """Poll this host now (a request to it just failed)."""
        wake = self._wake.get(name)
        if wake is not None:
            wake.set()

    async def aclose(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        self._wake.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _current(self, name: str) -> Upstream | None:
        ups = self.router.upstreams
        return next((u for u in ups.hosts() if u.name == name), None) if ups else None

    async def _run(self, name: str) -> None:
        while True:
            up = self._current(name)
            wake = self._wake.get(name)
            if up is None or wake is None:
                return
            wake.clear()
            try:
                await self.poll(up)
            except Exception as exc:  # a poll must never end the task: the host stays watched
                log.exception("polling host %s failed unexpectedly", name, exc_info=exc)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(up.poll_interval):
                    await wake.wait()

    async def poll(self, up: Upstream) -> None:
        """Read the host's state once and record what it says (or why it said nothing useful)."""
        host = up.host
        assert host is not None and up.url is not None
        try:
            learned = parse_state(json.loads(await self._fetch(up)))
        except UpstreamFailure as fail:
            self._down(up, host, fail.message)
            return
        except (ValueError, RecursionError) as exc:  # BadState is a ValueError too
            why = str(exc) if isinstance(exc, BadState) else f"not JSON: {exc}"
            self._down(
                up,
                host,
                f"{STATE_PATH} answered something that is not llmctl state ({why}); "
                "is this url another llmctl serve?",
            )
            return
        if learned.router_id == self.router.router_id:
            self._down(
                up,
                host,
                "the url points back at this llmctl serve itself; name another host there",
            )
            return
        was_up = host.up
        dropped_before = host.dropped
        host.learn(learned, time.monotonic())
        if learned.dropped and learned.dropped != dropped_before:
            log.warning(
                "host %s lists %d profiles; only the first %d are used",
                up.name,
                len(learned.profiles) + learned.dropped,
                len(learned.profiles),
            )
        if not was_up:
            up.breaker.record_success()  # it answers again: no need to wait for a probe
            log.info("host %s is up: %d profile(s)", up.name, len(learned.profiles))

    async def _fetch(self, up: Upstream) -> bytes:
        """The body of the host's state, at most MAX_STATE_BYTES, within the poll timeout."""
        assert up.url is not None
        timeout = poll_timeout(up)
        url = up.url_for(STATE_PATH)
        headers = [(b"accept", b"application/json")]
        if up.api_key:
            headers.append((b"authorization", b"Bearer " + up.api_key.encode()))
        deadline = time.monotonic() + timeout
        reply = await open_reply(
            self.router.transport_for(up, url),
            upstream=up.name,
            url=url,
            method="GET",
            headers=headers,
            body=b"",
            timeout=timeout,
        )
        try:
            if reply.status != 200:
                hint = {
                    401: "set the host's key in the environment variable named by api_key_env",
                    404: "is this url another llmctl serve, of this version or newer?",
                }.get(reply.status, "see the host's log")
                raise UpstreamFailure(
                    "status",
                    f"{STATE_PATH} answered {reply.status}; {hint}",
                    status=reply.status,
                )
            parts = [reply.first]
            size = len(reply.first)
            async with asyncio.timeout(max(0.001, deadline - time.monotonic())):
                async for chunk in reply.rest:
                    size += len(chunk)
                    if size > MAX_STATE_BYTES:
                        raise UpstreamFailure(
                            "too_large",
                            f"{STATE_PATH} answered more than {MAX_STATE_BYTES} bytes",
                        )
                    parts.append(chunk)
        except TimeoutError:
            raise UpstreamFailure(
                "timeout", f"{STATE_PATH} did not answer whole within {timeout:g} s"
            ) from None
        except UpstreamFailure:
            raise
        except Exception as exc:  # a broken stream
            raise UpstreamFailure("transport", f"{STATE_PATH} broke off: {exc}") from None
        finally:
            await reply.aclose()
        return b"".join(parts)

    def _down(self, up: Upstream, host: HostState, error: str) -> None:
        if host.up or host.error != error:
            log.warning("host %s is down: %s", up.name, error)
        host.fail(error, time.monotonic())
