"""One request's way through the fallback chain: which upstream, under which lease, with what result.

The chain is tried in order. An upstream whose breaker is open is skipped; the managed server is
reached through the switch scheduler (a lease on the profile); a connect error, a 5xx, a timeout
before the first byte or a failed load moves on to the next upstream. A managed server found dead
is started again once, when the state file agrees it is gone.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.requests import Request

from llmctl.router.breaker import counts_as_failure
from llmctl.router.errors import SERVER, RouterError
from llmctl.router.models import Target
from llmctl.router.proxy import (
    PROFILE_HEADER,
    Outcome,
    Reply,
    UpstreamFailure,
    error_from_body,
    open_reply,
    request_headers,
)
from llmctl.router.queue import Lease, ProgressFn
from llmctl.router.upstreams import Upstream

if TYPE_CHECKING:
    from llmctl.router.app import Router

log = logging.getLogger("llmctl.router")


@dataclass
class _Failure:
    upstream: str
    reason: str
    message: str


class Exchange:
    """One client request on its way through the chain: the lease it holds, where it went."""

    def __init__(
        self,
        router: Router,
        request: Request,
        target: Target,
        chain: list[Upstream],
        body: bytes,
        payload: dict[str, Any] | None,
    ) -> None:
        self.router = router
        self.target = target
        self.chain = chain
        self.method = request.method
        # the raw path as the client sent it (no re-encoding), and its query string
        scope = request.scope
        path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        query = scope.get("query_string", b"").decode("latin-1")
        self.path = f"{path}?{query}" if query else path
        self.headers = list(request.headers.raw)
        self.body = body
        self.payload = payload
        self.lease: Lease | None = None
        self.upstream: Upstream | None = None
        self.started = time.monotonic()

    def will_wait(self) -> bool:
        first = self.chain[0]
        return first.managed and self.router.scheduler.would_wait(self.target.profile)

    def _body_for(self, upstream: Upstream) -> bytes:
        if upstream.managed or self.payload is None:
            return self.body
        names = [n for n in (self.target.model, self.target.profile) if n]
        if self.target.profile:
            names.extend(self.router.index.aliases(self.target.profile))
        mapped = upstream.upstream_model(names)
        if mapped is None or mapped == self.payload.get("model"):
            return self.body
        return json.dumps({**self.payload, "model": mapped}).encode()

    async def open(self, progress: ProgressFn | None) -> Reply:
        """The first good reply along the chain; RouterError when every upstream failed."""
        router = self.router
        failures: list[_Failure] = []
        last_status: UpstreamFailure | None = None
        queue = list(self.chain)
        relaunched = False
        while queue:
            up = queue.pop(0)
            has_next = bool(queue)
            if not up.breaker.allow():
                failures.append(_Failure(up.name, "breaker_open", "circuit open"))
                continue
            lease: Lease | None = None
            try:
                if up.managed:
                    assert self.target.profile is not None
                    try:
                        lease = await router.scheduler.acquire(
                            self.target.profile, on_progress=progress
                        )
                    except RouterError as err:
                        up.breaker.release()
                        if err.code == "model_load_failed":
                            up.breaker.record_failure(err.message)
                        if has_next and err.code in ("model_load_failed", "queue_full"):
                            router.metrics.count_fallback(up.name, err.code or "error")
                            failures.append(_Failure(up.name, err.code or "error", err.message))
                            continue
                        raise
                    url = router.managed_base(self.target.profile) + self.path
                else:
                    url = up.url_for(self.path)
                reply = await open_reply(
                    router.transport_for(up, url),
                    upstream=up.name,
                    url=url,
                    method=self.method,
                    headers=request_headers(self.headers, up.api_key),
                    body=self._body_for(up),
                    timeout=up.timeout,
                )
            except UpstreamFailure as fail:
                if lease is not None:
                    lease.release()
                up.breaker.record_failure(f"{fail.reason}: {fail.message}")
                router.metrics.count_fallback(up.name, fail.reason)
                failures.append(_Failure(up.name, fail.reason, fail.message))
                if fail.status is not None:
                    last_status = fail
                log.warning("upstream %s failed (%s): %s", up.name, fail.reason, fail.message)
                if up.managed and fail.reason == "connect" and not relaunched:
                    # crashed, or stopped from a shell: if the state file agrees, start it again
                    relaunched = True
                    await router.refresh(force=True)
                    if router.scheduler.active != self.target.profile:
                        queue.insert(0, up)
                continue
            except BaseException:
                if lease is not None:
                    lease.release()
                up.breaker.release()
                raise
            if counts_as_failure(reply.status):
                up.breaker.record_failure(f"answered {reply.status}")
            else:
                up.breaker.record_success()
            self.lease = lease
            self.upstream = up
            if lease is not None and lease.profile:
                # the lease holds the server on this profile until the response is done
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
        if failures and all(f.reason == "breaker_open" for f in failures):
            wait = min((u.breaker.retry_in() for u in self.chain), default=1.0)
            return RouterError(
                503,
                f"Every upstream for this model is failing; circuit open ({summary}).",
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
        if outcome == "upstream_error" and up is not None:
            up.breaker.record_failure("failed mid-stream")
        if outcome == "client_gone":
            status = 499
        elif reply is not None:
            status = 502 if outcome == "upstream_error" else reply.status
        else:
            status = error.status if error is not None else 500
        self.router.metrics.count_request(self.target.profile, up.name if up else None, status)
        tail = (reply.tail or reply.first[-8192:]) if reply is not None else b""
        self.router.activity.request(
            self.method,
            self.path,
            self.target.profile,
            up.name if up else None,
            status,
            time.monotonic() - self.started,
            tail,
        )
