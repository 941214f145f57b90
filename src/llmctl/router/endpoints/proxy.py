"""The intake of every proxied request: the upstream path, the body, then one `Exchange` along
the chain of the request's profile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Awaitable
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import Response

from llmctl.router.errors import (
    SERVER,
    RouterError,
    bad_request,
    model_not_found,
)
from llmctl.router.exchange import Exchange
from llmctl.router.hosts import (
    HOPS_HEADER,
    loop_error,
    parse_hops,
)
from llmctl.router.relay import RelayResponse, Reply, WaitingStreamResponse
from llmctl.router.routing import (
    detect,
    query_model,
    split_upstream_path,
)
from llmctl.router.runtime import JSON_ENDPOINTS, Router, header

HOPS_HEADER_B = HOPS_HEADER.encode()


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
    if not (strict or looks_json or "json" in (header(request, b"content-type") or "")):
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


_SLOT_PATH = re.compile(r"^/slots/\d+$")
_FILE_ACTIONS = {"save", "restore"}


def _refuse_client_slot_files(router: Router, path: str, query: bytes, profile: str | None) -> None:
    """On a `keep_kv` profile the slot folder is llmctl's own, capped by keep_kv and
    keep_kv_total: a client's save would bypass the caps (and could overwrite its index) and a
    restore could load any file there. Erasing a slot stays allowed."""
    if profile is None or not _SLOT_PATH.match(path):
        return
    p = router.manifest.profiles.get(profile)
    if p is None or not getattr(p, "keep_kv", None):
        return
    actions = parse_qs(query.decode("latin-1")).get("action", [])
    if _FILE_ACTIONS & {a.lower() for a in actions}:
        router.metrics.count_rejected("slot_action")
        raise RouterError(
            403,
            f"Profile {profile!r} keeps its KV cache across swaps (keep_kv): its slot files are "
            "llmctl's own, so a client may not save or restore them (erase is allowed). Serve "
            "client slot saves from a profile without keep_kv and with its own --slot-save-path.",
            code="slot_action_refused",
        )


async def proxy_endpoint(router: Router, request: Request, *, pinned: bool = False) -> Response:
    """Any llama-server (or OpenAI-compatible) path, sent along the chain of the request's profile.

    `pinned`: the path is `/upstream/{profile}/{path}`, which names the profile when neither the
    body nor the query does.
    """
    router.check_auth(request)
    if router.shutting_down:
        raise RouterError(
            503, "The router is shutting down.", type=SERVER, code="shutting_down", retry_after=5
        )
    looped = loop_error(parse_hops(header(request, HOPS_HEADER_B)), router.router_id)
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
    _refuse_client_slot_files(router, path, request.scope.get("query_string", b""), target.profile)
    aliases = router.index.aliases(target.profile) if target.profile else []
    chain = router.order_chain(
        router.upstreams.chain(target.profile, target.model, aliases), target
    )
    if not chain:
        raise RouterError(
            503, "No upstream serves this model.", type=SERVER, code="upstream_unavailable"
        )
    exchange = Exchange(router.chain_context, request, target, chain, aliases, body, payload)
    streaming = bool(payload and payload.get("stream") is True)
    if streaming and exchange.will_wait():
        # a refusal known before the stream starts (429, 503) keeps its status and Retry-After
        shown = payload.get("model") if payload else None
        state = (
            str(shown or target.profile)
            if router.serve.loading_state and path.endswith("/chat/completions")
            else None
        )
        return WaitingStreamResponse(  # type: ignore[return-value]
            exchange.open,
            exchange.done,
            heartbeat=router.heartbeat,
            loading_state=state,
            profile=target.profile,
        )
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
