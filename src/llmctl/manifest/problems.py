"""One way to build a Problem positioned in the profiles file: by a path into the YAML document when
the rule has one, else by profile and field, else at the file. Every rule (manifest/rules.py and lint/)
builds its problems here, and `usable` turns a manifest's errors into one ManifestError. Below lint/,
because the rules a manifest needs to be usable use it too."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

from llmctl.errors import ManifestError, Problem, Severity

if TYPE_CHECKING:
    from pathlib import Path

    from llmctl.manifest.model import Manifest


def problem(
    m: Manifest,
    severity: Severity,
    rule: str,
    message: str,
    profile: str | None,
    field: str | None = None,
    hint: str | None = None,
    path: tuple[str | int, ...] | None = None,
) -> Problem:
    """A Problem at `path` in the document, else at the profile's `field`, else at the file."""
    file = str(m.path)
    line: int | None = None
    column: int | None = None
    if path is not None and m.source is not None:
        line, column = m.source.position(path)
    elif profile is not None:
        file, line, column = m.where(profile, field)
    return Problem(severity, rule, message, profile, file, line, column, hint)


class ProblemSink:
    """Collects positioned problems for one manifest: `sink.at(severity, rule, message, profile, ...)`."""

    def __init__(self, manifest: Manifest) -> None:
        self.m = manifest
        self.problems: list[Problem] = []

    def at(
        self,
        severity: Severity,
        rule: str,
        message: str,
        profile: str | None,
        field: str | None = None,
        hint: str | None = None,
        path: tuple[str | int, ...] | None = None,
    ) -> None:
        self.problems.append(problem(self.m, severity, rule, message, profile, field, hint, path))


M = TypeVar("M", bound="Manifest")


def usable(found: Path, manifest: M, problems: list[Problem], cross: list[Problem]) -> M:
    """The manifest, or ManifestError with its errors and those of the checks across profiles
    (`cross`: manifest/rules.py's, or their result as the manifest cache keeps it)."""
    problems = problems + cross
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        first = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ManifestError(
            f"invalid manifest: {first.where()}: {first.message}{more}",
            hint=f"run `llmctl lint --manifest {found}` for every problem and how to fix it",
            problems=errors,
        )
    return manifest
