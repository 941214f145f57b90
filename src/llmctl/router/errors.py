"""OpenAI-shaped error bodies: `{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

import math
from typing import Any

from starlette.responses import JSONResponse

INVALID_REQUEST = "invalid_request_error"
AUTHENTICATION = "authentication_error"
NOT_FOUND = "not_found_error"
RATE_LIMIT = "rate_limit_error"
SERVER = "server_error"
TIMEOUT = "timeout_error"


class RouterError(Exception):
    """An error the router answers itself, with its HTTP status and OpenAI error fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = INVALID_REQUEST,
        code: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.retry_after = retry_after
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {
            "message": self.message,
            "type": self.type,
            "param": self.param,
            "code": self.code,
        }
        err.update(self.extra)
        return {"error": err}

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        merged = self.headers()
        if headers:
            merged.update(headers)
        return JSONResponse(self.body(), status_code=self.status, headers=merged)


def bad_request(message: str, *, param: str | None = None, code: str | None = None) -> RouterError:
    return RouterError(400, message, param=param, code=code)


_MAX_ECHOED_NAME = 200  # a client's unknown model name is echoed this far, not whole


def _echoed_name(name: str) -> str:
    return name if len(name) <= _MAX_ECHOED_NAME else name[:_MAX_ECHOED_NAME] + "\u2026"


def model_not_found(model: str, available: list[str]) -> RouterError:
    listing = ", ".join(available) if available else "(none)"
    return RouterError(
        404,
        f"The model {_echoed_name(model)!r} does not exist on this server. Available: {listing}.",
        type=INVALID_REQUEST,
        code="model_not_found",
        param="model",
        extra={"available": available},
    )


def unauthorized() -> RouterError:
    return RouterError(
        401,
        "Missing or invalid API key. Send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'.",
        type=AUTHENTICATION,
        code="invalid_api_key",
    )


def too_large(limit: int) -> RouterError:
    return RouterError(
        413,
        f"The request body is larger than the limit of {limit} bytes (serve.max_body_size).",
        code="request_too_large",
    )


def client_gone() -> RouterError:
    """The client closed its connection before the router answered (logged as 499, never sent)."""
    return RouterError(499, "The client closed the connection.", code="client_closed")


def body_timeout(seconds: float) -> RouterError:
    return RouterError(
        408,
        f"The request body did not arrive within {seconds:g} s (serve.body_timeout).",
        type=TIMEOUT,
        code="body_timeout",
    )


class SwitchFailed(Exception):
    """The load or stop could not be done; `message` says why, for every waiter (the scheduler
    answers it as a RouterError)."""

    def __init__(
        self,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        stopped_at: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}
        # a stop from a shell refused the load (errors.OperatorStopped): its wall time
        self.stopped_at = stopped_at


def router_error_for(exc: Exception) -> SwitchFailed:
    """The one translation of a supervisor's or placer's error (an LlmctlError) into the failure
    every waiter of a load or stop gets: its message, the placer's hint and decision when it
    refused, the tail of the server's stderr when it failed to start."""
    message = getattr(exc, "message", None) or str(exc)
    details: dict[str, Any] = {}
    decision = getattr(exc, "decision", None)
    if hasattr(exc, "decision"):  # PlacementRefused: the hint says what to change
        message = f"{message} ({getattr(exc, 'hint', '')})"
        if decision is not None:
            details["decision"] = decision.to_json()
    tail = getattr(exc, "stderr_tail", None)
    if tail:
        details["stderr_tail"] = list(tail)[-20:]
    return SwitchFailed(message, details=details)


def failed_start(failure: Any) -> SwitchFailed:
    """A server that did not become ready (`failure`: the supervisor's record of why, or None)."""
    if failure is None:
        return SwitchFailed("the server did not become ready")
    stopped_at = getattr(failure, "stopped_at", None)
    if stopped_at:  # errors.OperatorStopped
        return SwitchFailed(failure.message, stopped_at=stopped_at)
    return SwitchFailed(
        failure.message,
        details={"exit_code": failure.exit_status, "stderr_tail": list(failure.stderr_tail)[-20:]},
    )
