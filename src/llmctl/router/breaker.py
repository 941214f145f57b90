"""Circuit breaker per upstream: closed -> open after N consecutive failures -> half-open probe.

Open time starts at `open_for` and doubles on each re-open from a failed probe, up to
`max_open_for`; a success closes the breaker and resets it. Client errors (4xx other than
408 and 429) say the upstream is alive, so they count as successes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal

BreakerState = Literal["closed", "open", "half_open"]
STATE_VALUES: dict[BreakerState, int] = {"closed": 0, "half_open": 1, "open": 2}


def server_failed(status: int) -> bool:
    """A 5xx but 501, which llama-server answers for a feature it was not started with."""
    return status >= 500 and status != 501


def counts_as_failure(status: int) -> bool:
    """5xx (but 501), 408 and 429 are failures of the upstream; other statuses are answers."""
    return server_failed(status) or status in (408, 429)


class CircuitBreaker:
    def __init__(
        self,
        *,
        failures: int = 5,
        open_for: float = 30.0,
        max_open_for: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = max(1, failures)
        self.base_open_for = open_for
        self.max_open_for = max(open_for, max_open_for)
        self._clock = clock
        self._state: BreakerState = "closed"
        self._consecutive = 0
        self._open_for = open_for
        self._open_until = 0.0
        self._probing = False
        self.opens = 0
        self.last_error: str | None = None

    def configure(self, *, failures: int, open_for: float, max_open_for: float) -> None:
        """New limits (manifest reload); the current state is kept."""
        self.threshold = max(1, failures)
        self.base_open_for = open_for
        self.max_open_for = max(open_for, max_open_for)
        self._open_for = min(max(self._open_for, open_for), self.max_open_for)

    @property
    def state(self) -> BreakerState:
        if self._state == "open" and self._clock() >= self._open_until:
            self._state = "half_open"
            self._probing = False
        return self._state

    def allow(self) -> bool:
        """May a request go to this upstream now? In half-open, only one probe at a time."""
        state = self.state
        if state == "closed":
            return True
        if state == "open" or self._probing:
            return False
        self._probing = True
        return True

    def record_success(self) -> None:
        self._state = "closed"
        self._consecutive = 0
        self._open_for = self.base_open_for
        self._probing = False
        self.last_error = None

    def record_failure(self, reason: str = "") -> None:
        self.last_error = reason or self.last_error
        if self.state == "half_open":
            self._open_for = min(self._open_for * 2, self.max_open_for)
            self._trip()
            return
        self._consecutive += 1
        if self._state == "closed" and self._consecutive >= self.threshold:
            self._trip()

    def release(self) -> None:
        """A request let through ended without a verdict (the client left first)."""
        self._probing = False

    def _trip(self) -> None:
        self._state = "open"
        self._open_until = self._clock() + self._open_for
        self._probing = False
        self._consecutive = 0
        self.opens += 1

    def retry_in(self) -> float:
        """Seconds until a probe is allowed (0 when closed or half-open)."""
        if self.state != "open":
            return 0.0
        return max(0.0, self._open_until - self._clock())

    def snapshot(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "consecutive_failures": self._consecutive,
            "opens": self.opens,
            "open_for_s": round(self._open_for, 3),
            "retry_in_s": round(self.retry_in(), 3),
            "last_error": self.last_error,
        }
