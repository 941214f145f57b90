"""The readiness probe: GET /health answers 200 once the model is loaded (503 while loading)."""

from __future__ import annotations

import http.client
from urllib.parse import urlsplit


def health_status(url: str, timeout: float = 0.5) -> int | None:
    """HTTP status of `url`/health, None when nothing answers in time."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(
        parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout
    )
    try:
        conn.request("GET", "/health", headers={"Connection": "close"})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def is_healthy(url: str, timeout: float = 0.5) -> bool:
    return health_status(url, timeout) == 200
