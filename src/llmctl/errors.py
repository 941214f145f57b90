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

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INPUT = 2
EXIT_LOCKED = 3
EXIT_STATE = 4

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Problem:
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
        return asdict(self)

    def where(self) -> str:
        if self.line is None:
            return self.file
        return f"{self.file}:{self.line}:{self.column or 1}"


@dataclass
class LlmctlError(Exception):
    """Base of every error a user can act on. Never shown with a traceback."""

    message: str
    hint: str | None = None
    exit_code: int = EXIT_FAILED

    def __str__(self) -> str:
        return self.message

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": type(self).__name__, "message": self.message}
        if self.hint:
            out["hint"] = self.hint
        return out


@dataclass
class ManifestError(LlmctlError):
    """The manifest cannot be found, read, parsed or used; `problems` says where."""

    exit_code: int = EXIT_INPUT
    problems: list[Problem] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        if self.problems:
            out["problems"] = [p.to_json() for p in self.problems]
        return out


@dataclass
class UsageError(LlmctlError):
    """Invalid input on the command line: an unknown profile, a bad size, a bad flag value."""

    exit_code: int = EXIT_INPUT


@dataclass
class GGUFError(LlmctlError):
    """A file is not a readable GGUF (corrupt, truncated, hostile, or not GGUF at all)."""

    exit_code: int = EXIT_INPUT


@dataclass
class LaunchError(LlmctlError):
    """llama-server could not be started, failed while loading, or is not healthy."""

    exit_code: int = EXIT_FAILED
    exit_status: int | None = None
    stderr_tail: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        out["exit_status"] = self.exit_status
        out["stderr_tail"] = list(self.stderr_tail)
        return out


@dataclass
class LoadCancelled(LaunchError):
    """A load ended on request before it was ready; nothing is left running.

    `retry`: whether the caller should load again once the change that cut it short is done,
    decided where the error is made. True when another process's stop or switch cancelled it
    (its cancel file); False when the caller cancelled it itself, or a stop from a shell came
    after the request (OperatorStopped: that stop is not undone).
    """

    retry: bool = False


@dataclass
class OperatorStopped(LoadCancelled):
    """A stop from a shell (`llmctl stop`/`unload`) came after the request a router loads for;
    nothing was loaded, and no retry is wanted (supervisor/stops.py). `stopped_at`: that stop's
    wall time; requests that came later may load the profile again."""

    stopped_at: float = 0.0


@dataclass
class LockTimeout(LlmctlError):
    """Another llmctl holds the state lock and did not release it in time."""

    exit_code: int = EXIT_LOCKED


@dataclass
class StateDirError(LlmctlError):
    """The state folder cannot be written: full, read-only, or not a folder."""

    exit_code: int = EXIT_STATE
