"""The progress of a switch or a load on stderr: a live view on a terminal (rich, imported only
then), plain lines otherwise, nothing with --quiet. `run_with_view` runs one load in a worker
thread while this thread draws its progress (`llmctl load`, one view per profile)."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable

    from rich.console import Console, ConsoleOptions, RenderResult

    from llmctl.supervisor.results import Event


def _err_console() -> Any:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


class View:
    """Progress of a switch on stderr. This base is silent (--quiet)."""

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def event(self, e: Event) -> None:
        pass

    def tick(self) -> None:
        pass

    def note(self, message: str) -> None:
        pass


class _PlainView(View):
    """Not a terminal: one line per step; a heartbeat with the last log line every 10 s."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.last_line = ""
        self.next_beat = self.t0 + 10.0
        self.loading = False

    def _say(self, text: str, elapsed: float | None = None) -> None:
        if elapsed is None:
            elapsed = time.monotonic() - self.t0
        sys.stderr.write(f"[{elapsed:7.2f}s] {text}\n")
        sys.stderr.flush()

    def event(self, e: Event) -> None:
        if e.kind == "log":
            self.last_line = e.message
            return
        self.loading = e.kind == "starting"
        if e.kind == "locked" and not e.message.startswith("waited"):
            return
        if e.kind not in ("ready", "error"):  # the result says those
            self._say(e.message, e.elapsed_s)

    def tick(self) -> None:
        now = time.monotonic()
        if self.loading and now >= self.next_beat:
            from llmctl.supervisor.logs import strip_prefix

            self._say(f"still loading; last log line: {strip_prefix(self.last_line)[:160]}")
            self.next_beat = now + 10.0

    def note(self, message: str) -> None:
        self._say(message)


class _LiveView(View):
    """A terminal: spinner, profile, elapsed time, current step, the last log lines."""

    def __init__(self, profile: str) -> None:
        self.profile = profile
        self.t0 = time.monotonic()
        self.step = "waiting for the state lock"
        self.lines: list[str] = []
        self.done: list[str] = []
        self._live: Any = None

    def start(self) -> None:
        from rich.live import Live
        from rich.spinner import Spinner

        self._spinner = Spinner("dots")
        self._live = Live(self, console=_err_console(), refresh_per_second=12, transient=True)
        self._live.start()

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def event(self, e: Event) -> None:
        from rich.markup import escape

        from llmctl.supervisor.logs import strip_prefix

        if e.kind == "log":
            self.lines.append(strip_prefix(e.message))
            del self.lines[:-6]
            return
        self.step = e.message
        if e.kind in ("stopping", "stopped") and self._live is not None:
            self._live.console.print(f"[dim]{e.elapsed_s:6.2f}s[/] {escape(e.message)}")

    def note(self, message: str) -> None:
        self.step = message

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        from rich.markup import escape
        from rich.table import Table
        from rich.text import Text

        elapsed = time.monotonic() - self.t0
        head = Table.grid(padding=(0, 1))
        head.add_row(
            self._spinner,
            Text.from_markup(
                f"[bold]{escape(self.profile)}[/]  [cyan]{elapsed:5.1f}s[/]  {escape(self.step)}",
                overflow="ellipsis",
            ),
        )
        yield head
        width = max(20, options.max_width - 4)
        for line in self.lines:
            text = line if len(line) <= width else line[: width - 3] + "..."
            yield Text(f"  {text}", style="dim", no_wrap=True, overflow="ellipsis")


def make_view(profile: str, quiet: bool) -> View:
    if quiet:
        return View()
    # isatty() first: rich is imported only for the live view
    if sys.stderr.isatty() and _err_console().is_terminal:
        return _LiveView(profile)
    return _PlainView()


T = TypeVar("T")


def run_with_view(
    view: View, work: Callable[[Callable[[Event], None]], T], cancel: threading.Event
) -> T:
    """`work(on_event)` in a worker thread while this thread feeds its events to `view`; Ctrl-C
    sets `cancel` (the work stops the load) and waits for the work to end. The work's result, or
    its exception raised here."""
    import queue
    import threading

    events: queue.SimpleQueue[Event] = queue.SimpleQueue()
    box: dict[str, Any] = {}
    done = threading.Event()

    def target() -> None:
        try:
            box["result"] = work(events.put)
        except BaseException as exc:  # handed to the main thread
            box["exc"] = exc
        finally:
            done.set()

    worker = threading.Thread(target=target, name="llmctl-load", daemon=True)
    view.start()
    try:
        worker.start()
        while True:
            try:
                finished = done.wait(0.05)  # woken at once by the worker; paces the live view
                while not events.empty():
                    view.event(events.get())
                if finished:
                    break
                view.tick()
            except KeyboardInterrupt:
                if not cancel.is_set():
                    cancel.set()
                    view.note("cancelling: stopping the load, leaving nothing of it running ...")
        while not events.empty():
            view.event(events.get())
    finally:
        view.stop()
    if "exc" in box:
        raise box["exc"]
    result: T = box["result"]
    return result
