"""The dashboard's page: its static files under `/ui/` (no key needed: they hold no data), the
redirect to them, and `/ui/api/hello` (whether the page must ask for a key)."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from llmctl.router.dashboard.protocol import router_of
from llmctl.router.errors import RouterError

UI_DIR = Path(__file__).parent.parent / "ui"
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


async def to_slash(request: Request) -> Response:
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
    return JSONResponse({"auth": bool(router_of(request).api_keys)})
