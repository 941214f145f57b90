"""`llmctl lint manifest`: every problem in a manifest, schema to machine, in file order."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmctl.errors import Problem
from llmctl.lint.memory import memory_problems
from llmctl.lint.rules import cross_checks
from llmctl.manifest.cache import check_manifest

if TYPE_CHECKING:
    from llmctl.manifest.model import Manifest


@dataclass
class LintResult:
    path: Path
    problems: list[Problem] = field(default_factory=list)
    manifest: Manifest | None = None

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "problems": [p.to_json() for p in self.problems]}


def lint_manifest(path: Path) -> LintResult:
    """All problems; raises ManifestError only when the file cannot be read or parsed."""
    manifest, problems = check_manifest(path)
    problems = problems + cross_checks(manifest, include_environment=True)
    problems = problems + memory_problems(manifest)
    from llmctl.lint.placement import machine_problems

    problems = problems + machine_problems(manifest)
    from llmctl.lint.template import template_problems

    problems = problems + template_problems(manifest)
    from llmctl.lint.features import feature_problems

    problems = problems + feature_problems(manifest)
    order = {name: i for i, name in enumerate(manifest.profiles)}
    problems.sort(
        key=lambda p: (
            p.line if p.line is not None else 0,
            p.column or 0,
            order.get(p.profile or "", -1),
        )
    )
    return LintResult(path=path, problems=problems, manifest=manifest)
