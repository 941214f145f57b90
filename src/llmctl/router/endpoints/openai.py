"""The OpenAI model list: `/v1/models` and `/v1/models/{id}`."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from llmctl.router.errors import (
    model_not_found,
)
from llmctl.router.runtime import Router, router_of


async def list_models(request: Request) -> Response:
    router = router_of(request)
    router.check_auth(request)
    return JSONResponse({"object": "list", "data": await _model_entries(router)})


async def retrieve_model(request: Request) -> Response:
    """`GET /v1/models/{id}` (the OpenAI SDK's `models.retrieve`): one entry of the list."""
    router = router_of(request)
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
    return await router.backend.loaded_devices()
