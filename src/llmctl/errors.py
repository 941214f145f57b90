"""Error families. Each carries what went wrong, where, and what to do (message, hint, exit code).

The tree, and the surface that renders each. CLI: `cli/output.render_error` (and the `error` object
of --json), with the class's exit code. Router: an error met while switching or loading becomes
`SwitchFailed`, answered as an OpenAI-shaped error reply (`router/errors.py`); one met on a manifest
reload is logged and the previous manifest kept.

  Exception
  ├── LlmctlError              message, hint, exit code
  │   ├── ManifestError        profiles.yaml unusable; .problems       CLI (exit 2); router: reload log
  │   ├── UsageError           unknown profile, bad flag value          CLI (exit 2); `serve` start-up
  │   ├── GGUFError            a model file that is not GGUF            CLI (exit 2); lint: a Problem
  │   ├── LaunchError          llama-server did not start; stderr tail  CLI (exit 1, the tail); router
  │   │   └── LoadCancelled    a newer switch or unload took over       CLI; router (quiet when it
  │   │       │                                                         was another request's doing)
  │   │       └── OperatorStopped  a stop from a shell came after the   router: 503 model_stopped to
  │   │                            request a load was for               the requests before it
  │   ├── LockTimeout          another llmctl holds the lock            CLI (exit 3); router
  │   ├── StateDirError        the state folder cannot be written       CLI (exit 4); router
  │   ├── MetadataError        GGUF metadata the estimator lacks        CLI; lint: a Problem
  │   │                        (memory/hparams.py; also a ValueError)
  │   ├── PlacementRefused     nothing fits; .decision                  CLI; router (with the decision)
  │   │                        (placement/placer.py)
  │   └── FetchError           the demo model cannot be fetched         CLI (`llmctl demo`)
  └── internal, never shown as such: YamlLoadError (manifest/yamldoc.py, becomes a Problem),
      CorruptState (supervisor/state.py), SlotError (supervisor/kvcache/server.py), and the router's
      own RouterError, UpstreamFailure, ConnectFailed, StreamBroken, SwitchFailed and BadState.

Exit codes (stable, documented in the README):
  0  success
  1  the operation failed: lint found errors, the server failed to start or is unhealthy
  2  invalid input: unknown profile, unreadable or unparsable manifest, bad flag value
  3  another llmctl holds the lock and did not release it in time
  4  the state folder cannot be written (full disk, read-only, not a folder); nothing was stopped
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple, Self

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INPUT = 2
EXIT_LOCKED = 3
EXIT_STATE = 4

Severity = Literal["error", "warning"]


class Problem(NamedTuple):
    """One finding about a manifest, with its place (1-based line and column)."""

    severity: Severity
    rule: str
    message: str
    profile: str | None = None
    file: str = ""
    line: int | None = None
    column: int | None = None
    hint: str | None = None

    def to_json(self) -> dict[str, Any]:
        return self._asdict()

    def where(self) -> str:
        if self.line is None:
            return self.file
        return f"{self.file}:{self.line}:{self.column or 1}"


# The error classes are plain classes (not dataclasses): every command imports this module, and
# a class built by @dataclass costs a tenth of a millisecond or more at each start.


class LlmctlError(Exception):
    """Base of every error a user can act on. Never shown with a traceback.

    `exit_code` defaults to the class's own (a class attribute each family sets)."""

    exit_code: int = EXIT_FAILED

    def __init__(self, message: str, hint: str | None = None, exit_code: int | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message

    def with_message(self, message: str) -> Self:
        """The same error (class, hint, exit code, every field) saying `message` instead."""
        import copy

        new = copy.copy(self)
        new.message = message
        new.args = (message,)
        return new

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": type(self).__name__, "message": self.message}
        if self.hint:
            out["hint"] = self.hint
        return out


class ManifestError(LlmctlError):
    """The manifest cannot be found, read, parsed or used; `problems` says where."""

    exit_code = EXIT_INPUT

    def __init__(
        self,
        message: str,
        hint: str | None = None,
        exit_code: int | None = None,
        *,
        problems: list[Problem] | None = None,
    ):
        super().__init__(message, hint, exit_code)
        self.problems: list[Problem] = problems if problems is not None else []

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        if self.problems:
            out["problems"] = [p.to_json() for p in self.problems]
        return out


class UsageError(LlmctlError):
    """Invalid input on the command line: an unknown profile, a bad size, a bad flag value."""

    exit_code = EXIT_INPUT


class GGUFError(LlmctlError):
    """A file is not a readable GGUF (corrupt, truncated, hostile, or not GGUF at all)."""

    exit_code = EXIT_INPUT


class LaunchError(LlmctlError):
    """llama-server could not be started, failed while loading, or is not healthy."""

    def __init__(
        self,
        message: str,
        hint: str | None = None,
        exit_code: int | None = None,
        *,
        exit_status: int | None = None,
        stderr_tail: list[str] | None = None,
    ):
        super().__init__(message, hint, exit_code)
        self.exit_status = exit_status
        self.stderr_tail: list[str] = stderr_tail if stderr_tail is not None else []

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        out["exit_status"] = self.exit_status
        out["stderr_tail"] = list(self.stderr_tail)
        return out


class LoadCancelled(LaunchError):
    """A load ended on request before it was ready; nothing is left running.

    `retry`: whether the caller should load again once the change that cut it short is done,
    decided where the error is made. True when another process's stop or switch cancelled it
    (its cancel file); False when the caller cancelled it itself, or a stop from a shell came
    after the request (OperatorStopped: that stop is not undone).
    """

    def __init__(
        self,
        message: str,
        hint: str | None = None,
        exit_code: int | None = None,
        *,
        retry: bool = False,
    ):  # a load cut short: no exit status or log tail of its own
        super().__init__(message, hint, exit_code)
        self.retry = retry


class OperatorStopped(LoadCancelled):
    """A stop from a shell (`llmctl stop`/`unload`) came after the request a router loads for;
    nothing was loaded, and no retry is wanted (supervisor/stops.py). `stopped_at`: that stop's
    wall time; requests that came later may load the profile again."""

    def __init__(
        self,
        message: str,
        hint: str | None = None,
        exit_code: int | None = None,
        *,
        stopped_at: float = 0.0,
    ):
        super().__init__(message, hint, exit_code)
        self.stopped_at = stopped_at


class LockTimeout(LlmctlError):
    """Another llmctl holds the state lock and did not release it in time."""

    exit_code = EXIT_LOCKED


class StateDirError(LlmctlError):
    """The state folder cannot be written: full, read-only, or not a folder."""

    exit_code = EXIT_STATE
