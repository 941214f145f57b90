"""YAML loading that remembers where every value came from.

PyYAML alone keeps the last of two duplicate keys without a word and forgets positions. This loader
composes the node tree and builds plain Python data itself, so that it can:
- report duplicate keys (explicit keys only: a merge key `<<` may be overridden, as YAML intends);
- give the line and column (1-based) of every key and value, by path;
- remember plain scalars that YAML 1.1 turned into a bool, number or null (`no`, `on`, `1.10`),
  with the text as written, so the manifest can keep that text where a string was meant;
- refuse recursive aliases and alias expansion bombs instead of hanging.
"""

from __future__ import annotations

from typing import Any

import yaml

from llmctl.manifest.source import Coerced, Duplicate, Path_, Source

__all__ = ["Coerced", "Duplicate", "Path_", "Source", "YamlLoadError", "load_yaml"]

_MAX_NODES = 200_000
_MAX_DEPTH = 64
_TAG_STR = "tag:yaml.org,2002:str"
_TAG_MERGE = "tag:yaml.org,2002:merge"
_IMPLICIT_KIND = {
    "tag:yaml.org,2002:bool": "boolean",
    "tag:yaml.org,2002:int": "number",
    "tag:yaml.org,2002:float": "number",
    "tag:yaml.org,2002:null": "null",
    "tag:yaml.org,2002:timestamp": "date",
}


class YamlLoadError(Exception):
    """The text is not YAML we can use. `line`/`column` are 1-based, None when unknown."""

    def __init__(
        self,
        message: str,
        line: int | None = None,
        column: int | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column
        self.hint = hint


def _mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


class _Builder:
    def __init__(self, source: Source) -> None:
        self.source = source
        self.count = 0
        self.constructor = yaml.SafeLoader("")

    def build(self, node: yaml.Node, path: Path_, stack: tuple[int, ...]) -> Any:
        self.count += 1
        if self.count > _MAX_NODES:
            line, col = _mark(node)
            raise YamlLoadError(
                f"the document expands to more than {_MAX_NODES:,} values (alias bomb?)", line, col
            )
        if len(stack) > _MAX_DEPTH:
            line, col = _mark(node)
            raise YamlLoadError(f"nesting deeper than {_MAX_DEPTH} levels", line, col)
        if id(node) in stack:
            line, col = _mark(node)
            raise YamlLoadError(
                "an alias refers to a node that contains it (recursive alias)", line, col
            )
        self.source.values.setdefault(path, _mark(node))
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path, (*stack, id(node)))
        if isinstance(node, yaml.SequenceNode):
            return [
                self.build(item, (*path, i), (*stack, id(node)))
                for i, item in enumerate(node.value)
            ]
        assert isinstance(node, yaml.ScalarNode)
        return self._scalar(node, path)

    def _scalar(self, node: yaml.ScalarNode, path: Path_) -> Any:
        try:
            value = self.constructor.construct_object(node, deep=True)
        except yaml.YAMLError as err:
            line, col = _mark(node)
            raise YamlLoadError(f"cannot read the value {node.value!r}: {err}", line, col) from None
        except (ValueError, OverflowError):
            # e.g. a timestamp PyYAML cannot construct: keep the text
            value = node.value
        kind = _IMPLICIT_KIND.get(node.tag)
        if node.style is None and kind is not None:
            self.source.coerced[path] = Coerced(raw=node.value, kind=kind, value=value)
        if kind == "date":
            return node.value
        if isinstance(value, bytes):
            return node.value
        return value

    def _key(self, node: yaml.Node) -> str:
        if not isinstance(node, yaml.ScalarNode):
            line, col = _mark(node)
            raise YamlLoadError("a key must be a plain name, not a list or mapping", line, col)
        # The text as written: a profile named `no` or `1.10` keeps its name.
        return str(node.value)

    def _mapping(
        self, node: yaml.MappingNode, path: Path_, stack: tuple[int, ...]
    ) -> dict[str, Any]:
        explicit: dict[str, Any] = {}
        first_seen: dict[str, int] = {}
        merged: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _TAG_MERGE:
                for source_map in self._merge_sources(value_node, path, stack):
                    for k, v in source_map.items():
                        merged.setdefault(k, v)
                continue
            key = self._key(key_node)
            kpath = (*path, key)
            line, col = _mark(key_node)
            if key in explicit:
                self.source.duplicates.append(
                    Duplicate(path=kpath, line=line, column=col, first_line=first_seen[key])
                )
            else:
                first_seen[key] = line
                self.source.keys[kpath] = (line, col)
            # Positions of the last occurrence win, like the value itself.
            self.source.values[kpath] = _mark(value_node)
            explicit[key] = self.build(value_node, kpath, stack)
        out = dict(merged)
        out.update(explicit)
        return out

    def _merge_sources(
        self, node: yaml.Node, path: Path_, stack: tuple[int, ...]
    ) -> list[dict[str, Any]]:
        nodes = node.value if isinstance(node, yaml.SequenceNode) else [node]
        out = []
        for n in nodes:
            if not isinstance(n, yaml.MappingNode):
                line, col = _mark(n)
                raise YamlLoadError(
                    "a merge key `<<` needs a mapping or a list of mappings", line, col
                )
            # Merged values are recorded under the merging path, for positions.
            out.append(self._mapping(n, path, (*stack, id(n))))
        return out


def _decode(data: bytes, file: str) -> str:
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        before = data[: err.start]
        line = before.count(b"\n") + 1
        column = len(before) - (before.rfind(b"\n") + 1) + 1
        raise YamlLoadError(
            f"the file is not UTF-8 text (byte 0x{data[err.start]:02x})",
            line,
            column,
            hint="save the file as UTF-8",
        ) from None


def load_yaml(data: bytes, file: str) -> tuple[Any, Source]:
    """Parse one YAML document into plain data and its Source. Raises YamlLoadError."""
    text = _decode(data, file)
    source = Source(file=file)
    if not text.strip() or all(
        not ln.strip() or ln.lstrip().startswith("#") for ln in text.splitlines()
    ):
        raise YamlLoadError("the file is empty", hint="start from the example: llmctl lint --help")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark else None
        column = mark.column + 1 if mark else None
        problem = err.problem or "invalid YAML"
        hint = None
        if "\t" in problem or "'\\t'" in problem:
            problem = "a tab character where YAML expects indentation or a value"
            hint = "indent with spaces; YAML does not allow tabs for indentation"
        elif "expected a single document" in str(err) or "but found another document" in str(err):
            problem = "the file holds more than one YAML document (a second `---`)"
        else:
            problem = f"invalid YAML: {problem}"
            if err.context:
                problem += f" ({err.context})"
        raise YamlLoadError(problem, line, column, hint) from None
    except yaml.YAMLError as err:
        raise YamlLoadError(f"invalid YAML: {err}") from None
    except RecursionError:
        raise YamlLoadError("the document is nested too deeply") from None
    if node is None:
        raise YamlLoadError("the file is empty")
    builder = _Builder(source)
    try:
        value = builder.build(node, (), ())
    except RecursionError:
        raise YamlLoadError("the document is nested too deeply") from None
    return value, source
