"""The dashboard of `llmctl serve`: the page under `/ui` and the endpoints it reads.

`GET /ui` serves static files shipped in the package (no build step, nothing from a CDN). The
page asks for the router's API key (kept in the browser session) and then reads:

- `GET /ui/api/state`: one JSON object with lists, so that several servers fit as they come:
  `servers`, `devices` (one bar each, with every loaded profile's planned share and its reported
  use), `profiles` (state, estimate, where it would go), `queue`, `requests`, `upstreams`;
- `GET /ui/api/log?server=NAME&lines=N`: a server's log as server-sent events, followed live.

Loading and unloading go through the same endpoints as the CLI (`/models/switch`, `/models/stop`).
The modules: `page` (the files), `state` (the state snapshot), `plans` (each profile's memory plan
and what loading it would unload), `log` (the log stream and its caps), `protocol` (the members of
the router's runtime they read).
"""

from __future__ import annotations

from starlette.routing import Route

from llmctl.router.dashboard.log import log_endpoint
from llmctl.router.dashboard.page import asset, hello_endpoint, to_slash
from llmctl.router.dashboard.state import state_endpoint


def routes() -> list[Route]:
    return [
        Route("/", to_slash, methods=["GET"]),  # the router's own page is the dashboard
        Route("/ui", to_slash, methods=["GET"]),
        Route("/ui/", asset, methods=["GET"]),
        Route("/ui/api/hello", hello_endpoint, methods=["GET"]),
        Route("/ui/api/state", state_endpoint, methods=["GET"]),
        Route("/ui/api/log", log_endpoint, methods=["GET"]),
        Route("/ui/{name}", asset, methods=["GET"]),
    ]
