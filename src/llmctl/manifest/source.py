"""Where each value of a YAML document was written: positions by path, kept apart from the YAML
parser so that a cached manifest can answer `file:line:column` without importing it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

Path_ = tuple[str | int, ...]


class Coerced(NamedTuple):
    """A plain scalar that YAML 1.1 read as something other than text."""

    raw: str
    kind: str  # boolean, number, null, date
    value: Any


class Duplicate(NamedTuple):
    path: Path_
    line: int
    column: int
    first_line: int


@dataclass
class Source:
    """Positions and notes from one YAML document, keyed by path (keys and list indexes)."""

    file: str
    values: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    coerced: dict[Path_, Coerced] = field(default_factory=dict)
    duplicates: list[Duplicate] = field(default_factory=list)

    def position(self, path: Path_) -> tuple[int | None, int | None]:
        """The key's position if the path names a key, else the value's, else the nearest parent's."""
        p = tuple(path)
        while p:
            if p in self.keys:
                return self.keys[p]
            if p in self.values:
                return self.values[p]
            p = p[:-1]
        return self.values.get((), (None, None))

    def value_position(self, path: Path_) -> tuple[int | None, int | None]:
        p = tuple(path)
        if p in self.values:
            return self.values[p]
        return self.position(p)

    def to_json(self) -> dict[str, Any]:
        """Positions only (what the checks after loading use); coercions and duplicates are
        already turned into problems by then."""
        return {
            "file": self.file,
            "keys": [[list(p), *pos] for p, pos in self.keys.items()],
            "values": [[list(p), *pos] for p, pos in self.values.items()],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Source:
        def table(rows: list[list[Any]]) -> dict[Path_, tuple[int, int]]:
            return {tuple(p): (line, col) for p, line, col in rows}

        return cls(file=data["file"], keys=table(data["keys"]), values=table(data["values"]))
