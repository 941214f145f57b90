"""Readiness of a starting llama-server: wait until /health answers 200, or say why not.

`LoadWatcher(spec, log_path, emit).wait_ready(proc, offset, cancel, cancel_file)` follows the
launch log from `offset` (each new line emitted as a "log" event) and polls /health. It returns
None when ready, or the LaunchError that ends the load: the process exited (its log's error
line), ready_timeout, stall_timeout without log output, or a cancel (the event, or the cancel
file another llmctl's stop creates). It starts and kills nothing: the caller owns the process.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from llmctl.errors import LaunchError, LoadCancelled

if TYPE_CHECKING:
    import subprocess
    import threading
    from pathlib import Path

    from llmctl.llama.engineplan import EnginePlan
    from llmctl.supervisor.launch import LaunchSpec
    from llmctl.supervisor.results import EventKind


class LoadWatcher:
    def __init__(
        self, spec: LaunchSpec, log_path: Path, emit: Callable[[EventKind, str], None]
    ) -> None:
        self.spec = spec
        self.log_path = log_path
        self.emit = emit
        self.plan_line: str | None = None  # the engine's memory plan event, if the log had one
        self.text_plan: EnginePlan | None = None  # or the plan table of a text log (b9093)

    def wait_ready(
        self,
        proc: subprocess.Popen[bytes],
        offset: int,
        cancel: threading.Event | None,
        cancel_file: Path,
    ) -> LaunchError | None:
        """Poll the log (every 1-20 ms) and /health; None once /health answers 200.

        A load ends early when the process exits, at ready_timeout, after stall_timeout without
        log output, or when cancelled (`cancel`, or `cancel_file` created by another stop).
        """
        spec, log_path, emit = self.spec, self.log_path, self.emit
        from llmctl.supervisor.health import health_status
        from llmctl.supervisor.logs import READY_LINE, LogFollower

        follower = LogFollower(log_path, offset, plans=True)
        lines: list[str] = []
        t0 = time.monotonic()
        last_progress = t0
        saw_ready_line = False
        health_every = 0.02
        next_health = t0 + health_every
        nap = 0.001
        try:
            while True:
                new, grew = follower.poll()
                now = time.monotonic()
                if grew:
                    last_progress = now
                    nap = 0.001
                for line in new:
                    lines.append(line)
                    emit("log", line)
                    if READY_LINE.search(line):
                        saw_ready_line = True
                if len(lines) > 2000:
                    del lines[:1000]
                if saw_ready_line or now >= next_health:
                    if health_status(spec.url, 1.0) == 200:
                        for line in follower.poll()[0]:
                            emit("log", line)
                        return None
                    if not saw_ready_line:
                        health_every = min(health_every * 1.5, 0.5)
                        next_health = time.monotonic() + health_every
                code = proc.poll()
                if code is not None:
                    more, _ = follower.poll()
                    more += follower.flush()
                    for line in more:
                        lines.append(line)
                        emit("log", line)
                    return self.exit_error(code, lines)
                if cancel is not None and cancel.is_set():
                    return LoadCancelled(
                        f"the load of profile {spec.profile!r} was cancelled; nothing is left running"
                    )
                if cancel_file.exists():
                    return LoadCancelled(
                        f"the load of profile {spec.profile!r} was cancelled by `llmctl stop` "
                        "from another process; nothing is left running",
                        retry=True,  # once that change is done; stops.refusal may say no
                    )
                if now - t0 > spec.ready_timeout:
                    return self.load_error(
                        f"profile {spec.profile!r} was not ready after {spec.ready_timeout:g} s (ready_timeout); killed",
                        lines,
                        "raise ready_timeout for big models",
                    )
                if now - last_progress > spec.stall_timeout:
                    return self.load_error(
                        f"profile {spec.profile!r} stalled: no log output for {spec.stall_timeout:g} s "
                        "while loading; killed",
                        lines,
                        "raise stall_timeout if the load is just slow",
                    )
                time.sleep(nap)
                nap = min(nap * 1.5, 0.002 if saw_ready_line else 0.02)
        finally:
            self.plan_line = follower.plan_line
            self.text_plan = follower.text_plan
            follower.close()

    def exit_error(self, code: int, lines: list[str]) -> LaunchError:
        """The error of a server that exited with `code` while loading (its log's error line)."""
        spec, log_path = self.spec, self.log_path
        from llmctl.supervisor.logs import error_tail, strip_prefix, tail_lines

        if not lines:
            lines = tail_lines(log_path, 50)
        err_line, tail = error_tail(lines)
        how = f"exited with code {code}" if code >= 0 else f"was killed by signal {-code}"
        message = f"llama-server for profile {spec.profile!r} {how} while loading"
        if err_line:
            message += f": {strip_prefix(err_line)}"
        return LaunchError(
            message, hint=f"full log: {log_path}", exit_status=code, stderr_tail=tail
        )

    def load_error(self, message: str, lines: list[str], hint: str) -> LaunchError:
        from llmctl.supervisor.logs import error_tail

        _, tail = error_tail(lines)
        return LaunchError(message, hint=hint, stderr_tail=tail)
