"""One request's way through the fallback chain: which upstream, under which lease, with what result.

The chain is tried in order. An upstream whose breaker is open is skipped; the managed server is
reached through the switch scheduler (a lease on the profile); a connect error, a 5xx, a timeout
before the first byte or a failed load moves on to the next upstream. A managed server found dead
is started again once, when the state file agrees it is gone. A managed server cut off by an
operator's switch or stop (another llmctl holds the lock, or the state names another launch) is
no failure: the request waits for the change to end and goes to what runs then. A host (`type:
llmctl`) that its last poll found down is skipped like an open breaker; a failure there asks for
a new poll at once.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from llmctl.router.activity import speed_from
from llmctl.router.breaker import CircuitBreaker, counts_as_failure
from llmctl.router.errors import SERVER, RouterError
from llmctl.router.hosts import HOPS_HEADER, parse_hops, with_hop
from llmctl.router.proxy import open_reply
from llmctl.router.relay import (
    LOAD_HEADER_B,
    PROFILE_HEADER,
    Outcome,
    Reply,
    error_from_body,
    load_header,
    request_headers,
)
from llmctl.router.routing import Target
from llmctl.router.scheduler import Lease, ProgressFn
from llmctl.router.transport.base import UpstreamFailure
from llmctl.router.upstreams import Upstream

if TYPE_CHECKING:
    from llmctl.router.activity import Activity
    from llmctl.router.host_watch import HostWatch
    from llmctl.router.metrics import Metrics
    from llmctl.router.scheduler import Scheduler
    from llmctl.router.transport.transports import Transports
    from llmctl.supervisor.lifecycle import Supervisor


class ManagedServers(Protocol):
    """The managed servers as an exchange reaches them once its lease is granted (the router's
    backend): each profile's base URL, the one server's pid, and a fresh look at what runs."""

    managed_pid: int | None

    def base_url(self, profile: str) -> str: ...
    async def refresh(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ChainContext:
    """What every exchange shares, given when it is made (it never calls back into the router):
    the scheduler that leases the managed server, the servers themselves, the supervisor (to
    tell an operator's change from a crash), the hosts' watch, the transports, and where to
    count and record the outcome."""

    scheduler: Scheduler
    servers: ManagedServers
    supervisor: Supervisor
    hosts: HostWatch
    transports: Transports
    metrics: Metrics
    activity: Activity
    router_id: str


log = logging.getLogger("llmctl.router")

# operators' switches and stops one request may wait out before it fails
MAX_CHANGES = 20
# scope key: this request's answer is counted in the metrics (by its exchange)
COUNTED = "llmctl.counted"


@dataclass
class _Failure:
    upstream: str
    reason: str
    message: str


class Exchange:
    """One client request on its way through the chain: the lease it holds, where it went."""

    def __init__(
        self,
        ctx: ChainContext,
        request: Request,
        target: Target,
        chain: list[Upstream],
        aliases: list[str],
        body: bytes,
        payload: dict[str, Any] | None,
    ) -> None:
        self.ctx = ctx
        self.scope = request.scope
        self.target = target
        self.chain = chain
        self.aliases = aliases  # the target profile's
        self.method = request.method
        # the raw path as the client sent it (no re-encoding), and its query string
        scope = request.scope
        path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        query = scope.get("query_string", b"").decode("latin-1")
        self.path = f"{path}?{query}" if query else path
        self.headers: list[tuple[bytes, bytes]] = scope["headers"]  # lower-case names (ASGI)
        self.body = body
        self.payload = payload
        self.lease: Lease | None = None
        self.upstream: Upstream | None = None
        self.breaker: CircuitBreaker | None = None
        self.pid: int | None = None  # the managed server's pid the request went to
        self.started = time.monotonic()
        self.arrived = time.time()  # against stops from a shell (scheduler.stopped_after)

    def will_wait(self) -> bool:
        first = self.chain[0]
        return first.managed and self.ctx.scheduler.would_wait(self.target.profile)

    def _names(self) -> list[str]:
        names = [n for n in (self.target.model, self.target.profile) if n]
        if self.target.profile:
            names.extend(self.aliases)
        return names

    def _body_for(self, upstream: Upstream) -> bytes:
        if upstream.managed or self.payload is None:
            return self.body
        mapped = upstream.upstream_model(self._names())
        if mapped is None or mapped == self.payload.get("model"):
            return self.body
        return json.dumps({**self.payload, "model": mapped}).encode()

    def _host_request(self, up: Upstream) -> tuple[str, list[tuple[bytes, bytes]]]:
        """A host gets `/upstream/{its profile}/...`, which names the profile even for a request
        without a model (GET /props), and the hops header with this router added."""
        profile = up.host_profile(self._names())
        path = self.path
        if profile is not None:
            path = f"/upstream/{quote(profile, safe='')}{self.path}"
        hops = parse_hops(_header(self.headers, HOPS_HEADER.encode()))
        headers = request_headers(self.headers, up.api_key)
        headers.append((HOPS_HEADER.encode(), with_hop(hops, self.ctx.router_id)))
        return up.url_for(path), headers

    async def open(self, progress: ProgressFn | None) -> Reply:
        """The first good reply along the chain; RouterError when every upstream failed."""
        ctx = self.ctx
        failures: list[_Failure] = []
        last_status: UpstreamFailure | None = None
        queue = list(self.chain)
        relaunched = False
        changes = 0
        while queue:
            up = queue.pop(0)
            has_next = bool(queue)
            breaker = up.breaker_for(self.target.profile)
            if up.host is not None and not up.host.up:
                failures.append(_Failure(up.name, "host_down", f"host down ({up.host.error})"))
                continue
            if not breaker.allow():
                failures.append(_Failure(up.name, "breaker_open", "circuit open"))
                continue
            lease: Lease | None = None
            used_pid: int | None = None
            try:
                if up.managed:
                    assert self.target.profile is not None
                    try:
                        lease = await ctx.scheduler.acquire(
                            self.target.profile, on_progress=progress, since=self.arrived
                        )
                    except RouterError as err:
                        # a profile that cannot load is answered with its load error; no breaker
                        # counts it (the server of every other profile is fine)
                        breaker.release()
                        if has_next and err.code in (
                            "model_load_failed",
                            "model_stopped",
                            "queue_full",
                        ):
                            ctx.metrics.count_fallback(up.name, err.code or "error")
                            failures.append(_Failure(up.name, err.code or "error", err.message))
                            continue
                        raise
                    used_pid = ctx.servers.managed_pid
                    url = ctx.servers.base_url(self.target.profile) + self.path
                    headers = request_headers(self.headers, up.api_key)
                elif up.host is not None:
                    url, headers = self._host_request(up)
                else:
                    url = up.url_for(self.path)
                    headers = request_headers(self.headers, up.api_key)
                reply = await open_reply(
                    ctx.transports.for_url(url),
                    upstream=up.name,
                    url=url,
                    method=self.method,
                    headers=headers,
                    body=self._body_for(up),
                    timeout=up.timeout,
                )
            except UpstreamFailure as fail:
                if lease is not None:
                    lease.release()
                # 503: a server another llmctl is loading on the same port ("Loading model")
                cut = fail.reason in ("connect", "transport") or fail.status == 503
                # every operator's change is waited out (a shell script may switch and stop
                # several times under one request), within the queue's deadline
                waited = time.monotonic() - self.started
                if up.managed and cut and changes < MAX_CHANGES and waited < ctx.scheduler.timeout:
                    why = await run_in_threadpool(ctx.supervisor.deliberate_change, used_pid)
                    if why is not None:
                        # cut by an operator's switch or stop: wait for the new state, try again
                        changes += 1
                        breaker.release()
                        log.info(
                            "request for %s met a deliberate change (%s); retrying once it is done",
                            self.target.profile,
                            why,
                        )
                        await run_in_threadpool(
                            ctx.supervisor.wait_for_change, ctx.scheduler.timeout
                        )
                        await ctx.servers.refresh()
                        queue.insert(0, up)
                        continue
                if counts_as_failure(fail.status) if fail.status is not None else True:
                    breaker.record_failure(f"{fail.reason}: {fail.message}")
                    if up.host is not None:
                        ctx.hosts.poke(up.name)  # learn now whether the host is gone
                else:
                    breaker.record_success()  # alive: it answered (a 500 or 501 to this request)
                ctx.metrics.count_fallback(up.name, fail.reason)
                failures.append(_Failure(up.name, fail.reason, fail.message))
                if fail.status is not None:
                    last_status = fail
                log.warning("upstream %s failed (%s): %s", up.name, fail.reason, fail.message)
                if up.managed and fail.reason == "connect" and not relaunched:
                    # crashed, or stopped from a shell: if the state file agrees, start it again
                    relaunched = True
                    await ctx.servers.refresh()
                    if not ctx.scheduler.is_loaded(self.target.profile):
                        queue.insert(0, up)
                continue
            except BaseException:
                if lease is not None:
                    lease.release()
                breaker.release()
                raise
            if counts_as_failure(reply.status):
                breaker.record_failure(f"answered {reply.status}")
            else:
                breaker.record_success()
            self.lease = lease
            self.upstream = up
            self.breaker = breaker
            self.pid = used_pid
            if lease is not None and lease.profile:
                if lease.waited is not None:  # it waited for the load of its profile
                    note = load_header(lease.profile, lease.waited.seconds, lease.waited.stage)
                    reply.extra_headers.append((LOAD_HEADER_B, note))
                # the lease holds the server on this profile until the response is done; named
                # last, where a waiting stream's `: upstream` comment ends
                reply.extra_headers.append((PROFILE_HEADER.encode(), lease.profile.encode()))
            return reply
        raise self._all_failed(failures, last_status)

    def _all_failed(self, failures: list[_Failure], last: UpstreamFailure | None) -> RouterError:
        summary = "; ".join(f"{f.upstream}: {f.message}" for f in failures) or "no upstream"
        names = [f.upstream for f in failures]
        if last is not None and failures and failures[-1].reason == "status":
            err = error_from_body(last.status or 502, last.body, f"upstream answered {last.status}")
            err.message = f"{err.message} (tried {summary})"
            err.extra["upstreams"] = names
            return err
        if failures and all(f.reason in ("breaker_open", "host_down") for f in failures):
            profile = self.target.profile
            wait = min(
                (
                    u.poll_interval if u.host is not None else u.breaker_for(profile).retry_in()
                    for u in self.chain
                ),
                default=1.0,
            )
            return RouterError(
                503,
                f"Every upstream for this model is failing or down ({summary}).",
                type=SERVER,
                code="upstream_unavailable",
                retry_after=max(1.0, wait),
                extra={"upstreams": names},
            )
        if failures and failures[-1].reason == "timeout":
            return RouterError(
                504,
                f"No upstream answered in time ({summary}).",
                type=SERVER,
                code="upstream_timeout",
                retry_after=1,
                extra={"upstreams": names},
            )
        return RouterError(
            502,
            f"No upstream could serve the request ({summary}).",
            type=SERVER,
            code="upstream_error",
            retry_after=1,
            extra={"upstreams": names},
        )

    def done(self, outcome: Outcome, reply: Reply | None, error: RouterError | None) -> None:
        if self.lease is not None:
            self.lease.release()
            self.lease = None
        up = self.upstream
        if outcome == "upstream_error" and up is not None and self.breaker is not None:
            why = None
            if up.managed:
                why = self.ctx.supervisor.deliberate_change(self.pid)
            if why is None:
                self.breaker.record_failure("failed mid-stream")
                if up.host is not None:
                    self.ctx.hosts.poke(up.name)  # learn now whether the host is gone
            else:
                log.info("a response from %s was cut by a deliberate change: %s", up.name, why)
        if outcome == "client_gone":
            status = 499
        elif reply is not None:
            status = 502 if outcome == "upstream_error" else reply.status
        else:
            status = error.status if error is not None else 500
        self.ctx.metrics.count_request(self.target.profile, up.name if up else None, status)
        self.scope[COUNTED] = True
        tail = (reply.tail or reply.first[-8192:]) if reply is not None else b""
        speed = speed_from(tail) if status == 200 else None
        if speed is not None:
            self.ctx.metrics.observe_generation(
                self.target.profile, speed.generation, speed.generated
            )
        self.ctx.activity.request(
            self.method,
            self.path,
            self.target.profile,
            up.name if up else None,
            status,
            time.monotonic() - self.started,
            tail,
            speed,
        )


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    for k, v in headers:
        if k.lower() == name:
            return v.decode("latin-1")
    return None
