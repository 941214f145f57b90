"""One way to build a Problem positioned in the profiles file: by a path into the YAML document when
the rule has one, else by profile and field, else at the file. Every rule (manifest/rules.py and lint/)
builds its problems here. Below lint/, because the rules a manifest needs to be usable use it too."""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmctl.errors import Problem, Severity

if TYPE_CHECKING:
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
