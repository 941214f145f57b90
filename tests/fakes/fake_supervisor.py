"""A FAKE supervisor with the real one's interface, for router tests that need control over loads.

Switching "loads" a profile by pointing a FakeUpstream at it after `load_time` seconds (and once
`gate`, when given, is set), emitting the same events as the real supervisor; profiles in `fail`
fail to load with a LaunchError.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from fakes.fake_upstream import FakeUpstream
from llmctl.errors import LaunchError
from llmctl.supervisor.launch import LaunchSpec
from llmctl.supervisor.results import Event, Status, StopResult, SwitchResult


def fake_spec(manifest: object, name: str) -> LaunchSpec:
    return LaunchSpec(profile=name, argv=("fake-llama-server", name), port=1)


class FakeSupervisor:
    def __init__(
        self, upstream: FakeUpstream, *, load_time: float = 0.0, running: str | None = None
    ) -> None:
        self.upstream = upstream
        self.load_time = load_time
        self.fail: dict[str, str] = {}
        self.switches: list[str] = []
        self.stops = 0
        self.state_dir = Path(".")
        self._lock = threading.Lock()
        self._running = running
        self._pid = 1000
        self.changed_by_operator: str | None = None
        # set to an unset event: each load holds after "starting" until the test sets it (or
        # the load is cancelled), so a test orders what happens during a load without timing
        self.gate: threading.Event | None = None
        upstream.loaded_model = running

    @property
    def running(self) -> str | None:
        return self._running

    def records(self) -> dict[str, object]:
        return {}  # no launch records: nothing a router that died started

    def status(self, *, check_health: bool = True, timeout: float = 0.5) -> Status:
        if self._running is None:
            return Status(running=False)
        return Status(
            running=True,
            profile=self._running,
            pid=self._pid,
            url=self.upstream.url,
            healthy=True if check_health else None,
        )

    def switch(
        self,
        spec: LaunchSpec,
        *,
        on_event: Callable[[Event], None] | None = None,
        cancel: threading.Event | None = None,
        admitted_at: float | None = None,  # no stops from a shell here (supervisor/stops.py)
    ) -> SwitchResult:
        emit = on_event or (lambda e: None)
        started = time.monotonic()
        with self._lock:
            emit(Event("locked", "lock acquired", 0.0, spec.profile))
            if self._running == spec.profile:
                return SwitchResult(
                    spec.profile, self._pid, 1, self.upstream.url, True, 0.0, None, noop=True
                )
            self.switches.append(spec.profile)
            if self._running is not None:
                emit(Event("stopping", f"stopping {self._running}", 0.0, self._running))
                self._running = None
                self.upstream.loaded_model = None
                emit(Event("stopped", "stopped", 0.0, None))
            emit(Event("starting", f"starting {spec.profile}", 0.0, spec.profile))
            while self.gate is not None and not self.gate.wait(0.01):
                if cancel is not None and cancel.is_set():
                    break
            steps = 4
            for i in range(steps):
                if cancel is not None and cancel.is_set():
                    break
                time.sleep(self.load_time / steps)
                emit(
                    Event(
                        "log",
                        f"load_tensors: step {i + 1}/{steps}",
                        time.monotonic() - started,
                        spec.profile,
                    )
                )
            elapsed = time.monotonic() - started
            reason = self.fail.get(spec.profile)
            if reason is not None:
                err = LaunchError(reason, exit_status=1, stderr_tail=[reason])
                emit(Event("error", reason, elapsed, spec.profile))
                return SwitchResult(
                    spec.profile, None, 1, self.upstream.url, False, elapsed, None, error=err
                )
            self._pid += 1
            self._running = spec.profile
            self.upstream.loaded_model = spec.profile
            emit(Event("ready", "ready", elapsed, spec.profile))
            return SwitchResult(spec.profile, self._pid, 1, self.upstream.url, True, elapsed, None)

    def deliberate_change(self, pid: int | None) -> str | None:
        """Set `changed_by_operator` to play another llmctl that switched or stopped the server."""
        return self.changed_by_operator

    def wait_for_change(self, timeout: float) -> bool:
        return True

    def stop(self, *, on_event: Callable[[Event], None] | None = None) -> StopResult:
        with self._lock:
            before = self._running
            self._running = None
            self.upstream.loaded_model = None
            self.stops += 1
            return StopResult(before is not None, before, self._pid if before else None, 0.0)
