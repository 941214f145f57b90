"""`llmctl switch`, `status`, `stop`, `logs`, `demo`: parsing and display; the work is in the core."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from llmctl.cli.app import app
from llmctl.cli.common import (
    JsonOpt,
    ManifestOpt,
    ProfileArg,
    console,
    err_console,
    handle_errors,
    print_json,
    render_error,
)
from llmctl.errors import EXIT_FAILED, EXIT_OK, LlmctlError

if TYPE_CHECKING:
    from rich.console import Console, ConsoleOptions, RenderResult

    from llmctl.supervisor.launch import LaunchSpec
    from llmctl.supervisor.lifecycle import Event, SwitchResult

EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143

QuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress output; only the result or the error.")
]
LockTimeoutOpt = Annotated[
    float,
    typer.Option(
        "--lock-timeout",
        help="Seconds to wait for another llmctl that is changing the server (then exit 3).",
        min=0,
    ),
]


def _supervisor(lock_timeout: float) -> Any:
    from llmctl.paths import state_dir
    from llmctl.supervisor.lifecycle import Supervisor

    return Supervisor(state_dir(), lock_timeout=lock_timeout)


# --------------------------------------------------------------------------- switch


@app.command()
def switch(
    profile: ProfileArg,
    manifest: ManifestOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    lock_timeout: LockTimeoutOpt = 600.0,
) -> None:
    """Make PROFILE the running llama-server: stop the current one, start this one, wait until
    /health answers. A no-op when PROFILE already runs healthy with the same configuration.
    Exactly PROFILE runs afterwards: every other server is stopped (`llmctl load` starts one
    beside the others instead).

    Exit codes: 0 ready, 1 the server failed to start, 2 invalid input, 3 locked by another
    llmctl, 130 cancelled by Ctrl-C, 143 cancelled by SIGTERM (nothing is left running).
    """
    t0 = time.monotonic()
    try:
        spec = _spec_for(profile, manifest)
        code = _run_switch(spec, json_out=json_out, quiet=quiet, lock_timeout=lock_timeout)
    except LlmctlError as err:
        if json_out:
            print_json(_early_error_json(profile, err, time.monotonic() - t0))
        else:
            render_error(err, json_out=False)
        raise typer.Exit(err.exit_code) from None
    raise typer.Exit(code)


def _spec_for(profile: str, manifest: Path | None) -> LaunchSpec:
    from llmctl.manifest.model import load_manifest
    from llmctl.supervisor.placer import command_spec

    return command_spec(load_manifest(manifest), profile)


def _early_error_json(profile: str, err: LlmctlError, elapsed: float) -> dict[str, Any]:
    """The `switch --json` object for a failure before anything was launched."""
    message = f"{err.message} ({err.hint})" if err.hint else err.message
    return {
        "profile": profile,
        "pid": None,
        "port": None,
        "url": None,
        "ready": False,
        "elapsed_s": round(elapsed, 3),
        "log": None,
        "error": {"message": message, "exit_code": None, "stderr_tail": []},
    }


def _run_switch(spec: LaunchSpec, *, json_out: bool, quiet: bool, lock_timeout: float) -> int:
    """Switch in a worker thread; this thread draws progress and turns Ctrl-C into a cancel."""
    import queue

    sup = _supervisor(lock_timeout)
    cancel = threading.Event()
    events: queue.SimpleQueue[Event] = queue.SimpleQueue()
    box: dict[str, Any] = {}
    done = threading.Event()

    def work() -> None:
        try:
            box["result"] = sup.switch(spec, on_event=events.put, cancel=cancel)
        except BaseException as exc:  # handed to the main thread
            box["exc"] = exc
        finally:
            done.set()

    view = _make_view(spec.profile, quiet)
    # Not Thread.join(): a KeyboardInterrupt inside join() can leave is_alive() False while the
    # thread still runs. An Event is set only once the worker has finished for real.
    worker = threading.Thread(target=work, name="llmctl-switch", daemon=True)
    interrupted = 0  # the exit code once cancelled: 130 for Ctrl-C, 143 for SIGTERM
    signalled: list[int] = []

    def on_sigterm(signum: int, frame: object) -> None:
        # `timeout 60 llmctl switch big` sends SIGTERM: cancel like Ctrl-C, leave nothing
        signalled.append(signum)
        raise KeyboardInterrupt

    import signal

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, on_sigterm) if main_thread else None
    view.start()
    try:
        worker.start()
        while True:
            try:
                finished = done.wait(0.05)
                while not events.empty():
                    view.event(events.get())
                if finished:
                    break
                view.tick()
            except KeyboardInterrupt:
                if not interrupted:
                    interrupted = EXIT_TERMINATED if signalled else EXIT_INTERRUPTED
                    cancel.set()
                    view.note("cancelling: stopping the load, leaving nothing running ...")
        while not events.empty():
            view.event(events.get())
    finally:
        view.stop()
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    if "exc" in box:
        raise box["exc"]
    result: SwitchResult = box["result"]
    if json_out:
        print_json(result.to_json())
    else:
        _print_switch_result(result, quiet)
    if result.ready:
        return EXIT_OK
    return interrupted or EXIT_FAILED


def _print_switch_result(result: SwitchResult, quiet: bool) -> None:
    if result.ready:
        if result.noop:
            msg = (
                f"profile {result.profile!r} already runs with this configuration "
                f"(pid {result.pid}) at {result.url}; nothing to do"
            )
        else:
            msg = (
                f"ready: profile {result.profile!r} at {result.url} "
                f"(pid {result.pid}) in {result.elapsed_s:.2f} s"
            )
        # plain write: importing rich for one line would cost scripts ~30 ms per switch
        sys.stdout.write(msg + "\n")
        sys.stdout.flush()
        return
    from rich.markup import escape

    err = result.error
    assert err is not None
    out = err_console()
    out.print(f"[bold red]error:[/] {escape(err.message)}", soft_wrap=True)
    if err.stderr_tail:
        out.print("[dim]llama-server said (error line first):[/]")
        for line in err.stderr_tail[:16]:
            out.print(f"  [dim]|[/] {escape(line)}", soft_wrap=True)
    if err.hint:
        out.print(f"[dim]hint:[/] {escape(err.hint)}", soft_wrap=True)


class _View:
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


class _PlainView(_View):
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


class _LiveView(_View):
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
        self._live = Live(self, console=err_console(), refresh_per_second=12, transient=True)
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


def _make_view(profile: str, quiet: bool) -> _View:
    if quiet:
        return _View()
    # isatty() first: rich is imported only for the live view
    if sys.stderr.isatty() and err_console().is_terminal:
        return _LiveView(profile)
    return _PlainView()


# --------------------------------------------------------------------------- status


@app.command()
def status(json_out: JsonOpt = False) -> None:
    """Show the running llama-server: profile, pid, url, health (live /health check), uptime,
    log, and the memory it reported. Exit 1 when it runs but /health does not answer 200."""
    from llmctl.cli.fast import run_status

    with handle_errors(json_out):
        code = run_status(json_out)
    raise typer.Exit(code)


# --------------------------------------------------------------------------- stop


@app.command()
def stop(
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    lock_timeout: LockTimeoutOpt = 600.0,
) -> None:
    """Stop the running llama-server (SIGTERM to its process group, SIGKILL after its
    stop_timeout) and wait until its port is free. Nothing running is not an error."""

    def on_event(e: Event) -> None:
        # say what was repaired or went wrong; the result line says the rest
        if json_out or quiet:
            return
        plain_stop = e.message.startswith("stopped profile") and ";" not in e.message
        waited = e.kind == "locked" and e.message.startswith("waited")
        if e.kind == "error" or waited or (e.kind == "stopped" and not plain_stop):
            sys.stderr.write(f"{e.message}\n")

    with handle_errors(json_out):
        result = _supervisor(lock_timeout).stop(on_event=on_event)
    if json_out:
        print_json(result.to_json())
    elif result.stopped:
        sys.stdout.write(
            f"stopped profile {result.profile!r} (pid {result.pid}) in {result.elapsed_s:.2f} s\n"
        )
    elif not quiet:
        sys.stdout.write("nothing was running\n")
    raise typer.Exit(EXIT_OK)


# --------------------------------------------------------------------------- logs


@app.command()
def logs(
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing what is appended.")
    ] = False,
    lines: Annotated[int, typer.Option("-n", "--lines", help="How many last lines.", min=0)] = 50,
    path_only: Annotated[bool, typer.Option("--path", help="Print the log's path only.")] = False,
) -> None:
    """Show the log of the running llama-server, else of the latest launch."""
    from llmctl.supervisor.logs import tail_lines

    sup = _supervisor(0.0)
    with handle_errors(False):
        path = sup.log_path()
        if path is None or not path.exists():
            raise LlmctlError(
                "no llama-server log yet: nothing was started with `llmctl switch`",
                hint=f"logs are kept in {sup.state_dir / 'logs'}",
            )
    if path_only:
        sys.stdout.write(f"{path}\n")
        raise typer.Exit(EXIT_OK)
    size = path.stat().st_size
    for line in tail_lines(path, lines, end=size):
        sys.stdout.write(line + "\n")
    sys.stdout.flush()
    if follow:
        with contextlib.suppress(KeyboardInterrupt):
            _follow(sup, path, size)
    raise typer.Exit(EXIT_OK)


def _follow(sup: Any, path: Path, offset: int) -> None:
    """Like `tail -F`: print what is appended; move to the next launch's log when there is one."""
    last_check = time.monotonic()
    while True:
        with path.open("rb") as f:
            f.seek(offset)
            chunk = f.read()
        if chunk:
            offset += len(chunk)
            sys.stdout.write(chunk.decode(errors="replace"))
            sys.stdout.flush()
        now = time.monotonic()
        if now - last_check >= 0.5:
            last_check = now
            current = sup.log_path()
            if current is not None and current != path and current.exists():
                path, offset = current, 0
                sys.stdout.write(f"\n==> {path} <==\n")
        time.sleep(0.1)


# --------------------------------------------------------------------------- demo


@app.command()
def demo(
    keep: Annotated[
        bool, typer.Option("--keep", help="Leave the demo server running at the end.")
    ] = False,
) -> None:
    """Try llmctl end to end on a tiny model: switch, status, a chat request, switch to a second
    profile, stop. Needs a llama-server: $LLMCTL_LLAMA_SERVER, else on PATH, else (in a clone of
    the repository) the one scripts/build-llama-server.sh builds."""
    with handle_errors(False):
        code = _run_demo(keep)
    raise typer.Exit(code)


def _find_llama_server() -> str:
    import shutil
    import subprocess

    from rich.markup import escape

    given = os.environ.get("LLMCTL_LLAMA_SERVER")
    if given:
        path = os.path.expanduser(given)
        if not os.access(path, os.X_OK):
            raise LlmctlError(
                f"LLMCTL_LLAMA_SERVER={given} is not an executable file",
                hint="point it at a llama-server binary, or unset it to search PATH",
            )
        return path
    found = shutil.which("llama-server")
    if found:
        return found
    import llmctl

    script = Path(llmctl.__file__).resolve().parents[2] / "scripts" / "build-llama-server.sh"
    if not script.is_file():
        raise LlmctlError(
            "no llama-server found: LLMCTL_LLAMA_SERVER is not set and none is on PATH",
            hint="install llama.cpp (its llama-server on PATH), or set "
            "LLMCTL_LLAMA_SERVER=/path/to/llama-server; in a clone of the llmctl repository, "
            "scripts/build-llama-server.sh builds one (cmake and a C++ compiler, ~4 minutes)",
        )
    err_console().print(
        f"no llama-server installed: building the test bed's with {escape(str(script))} "
        "(a few minutes the first time, then reused) ..."
    )
    proc = subprocess.run(["bash", str(script)], stdout=subprocess.PIPE, text=True, check=False)
    out = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not out:
        raise LlmctlError(
            f"building llama-server failed (exit {proc.returncode})",
            hint="its messages are above; it needs cmake and a C++17 compiler",
        )
    return out[-1]


def _demo_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_demo(keep: bool) -> int:
    import shlex
    import subprocess

    from rich.markup import escape

    from llmctl.llama.tinymodel import write_tiny_model
    from llmctl.paths import state_dir

    out = console()
    binary = _find_llama_server()
    folder = state_dir() / "demo"
    demo_state = folder / "state"
    folder.mkdir(parents=True, exist_ok=True)
    model = write_tiny_model(folder / "tiny-llama.gguf", arch="llama")
    port = _demo_port()
    manifest = folder / "profiles.yaml"
    manifest.write_text(
        "# llmctl demo manifest: two profiles of one tiny random-weight model\n"
        "version: 1\n"
        "server:\n"
        f"  binary: {_yaml_str(binary)}\n"
        "  host: 127.0.0.1\n"
        f"  port: {port}\n"
        "profiles:\n"
        "  tiny:\n"
        f"    model: {_yaml_str(str(model))}\n"
        "    description: 1k context, one slot\n"
        "    ctx_size: 1024\n"
        "    parallel: 1\n"
        "  tiny-wide:\n"
        f"    model: {_yaml_str(str(model))}\n"
        "    description: 4k context, two slots\n"
        "    ctx_size: 4096\n"
        "    parallel: 2\n"
    )
    out.print(f"[bold]llmctl demo[/]  llama-server: {escape(binary)}")
    out.print(f"  tiny model (random weights, so replies are gibberish): {escape(str(model))}")
    out.print(f"  demo manifest: {escape(str(manifest))}")
    out.print(
        f"  the demo keeps its own state in {escape(str(demo_state))}, "
        "so a server llmctl already runs is left alone\n"
    )
    env = dict(os.environ, LLMCTL_STATE_DIR=str(demo_state))
    base = [sys.executable, "-m", "llmctl"]
    mf = ["--manifest", str(manifest)]

    def step(title: str, args: list[str]) -> int:
        out.print(f"[bold cyan]# {escape(title)}[/]")
        out.print(f"[bold]$ llmctl {escape(shlex.join(args))}[/]")
        code = subprocess.run([*base, *args], env=env, check=False).returncode
        out.print()
        return code

    stopped = False
    try:
        if code := step("start the first profile", ["switch", "tiny", *mf]):
            return code
        if code := step("what runs now", ["status"]):
            return code
        out.print("[bold cyan]# a chat request, straight to llama-server[/]")
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        out.print(
            f"[bold]$ curl -s {url} -H 'Content-Type: application/json' "
            '-d \'{"messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 16}\'[/]'
        )
        reply, took = _chat(url)
        out.print(f"  reply ({took * 1000:.0f} ms): {escape(reply)!r}\n")
        if code := step("switch to the second profile", ["switch", "tiny-wide", *mf]):
            return code
        if code := step("the same switch again is a no-op", ["switch", "tiny-wide", *mf]):
            return code
        if keep:
            out.print(
                f"the demo server stays up; stop it with: LLMCTL_STATE_DIR={demo_state} llmctl stop"
            )
            stopped = True
            return EXIT_OK
        code = step("stop it", ["stop"])
        stopped = code == EXIT_OK
        if code:
            return code
        out.print(
            "[green]done.[/] Next: write your own profiles.yaml (llmctl lint checks it), "
            "then `llmctl switch PROFILE`."
        )
        return EXIT_OK
    finally:
        if not stopped:
            from llmctl.supervisor.lifecycle import Supervisor

            Supervisor(demo_state, lock_timeout=30).stop()


def _yaml_str(value: str) -> str:
    import json

    return json.dumps(value)  # a JSON string is a valid YAML scalar


def _chat(url: str) -> tuple[str, float]:
    import json
    import urllib.error
    import urllib.request

    body = json.dumps(
        {"messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 16}
    ).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            data = json.loads(resp.read())
    except (OSError, ValueError) as err:
        raise LlmctlError(f"the chat request to {url} failed: {err}") from err
    took = time.monotonic() - t0
    try:
        return str(data["choices"][0]["message"]["content"]), took
    except (KeyError, IndexError, TypeError):
        return json.dumps(data)[:200], took
