"""The import graph of src/llmctl: no circle, and no import of a higher layer from a lower one.

Every import counts: top-level, function-local and `if TYPE_CHECKING:` ones (read with ast, nothing is
imported). The layers are written once, in LAYERS, lowest first.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "llmctl"

# Lowest first; a module may import its own layer and those below it. A package's modules share
# its layer; a top-level module (errors.py) is its own entry.
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"__init__", "errors", "paths", "term"}),  # __init__: llmctl itself, __version__
    frozenset({"llama"}),
    frozenset({"testing"}),  # the shipped test models: written with llama/gguf_writer
    frozenset({"hub"}),  # Hugging Face repos: listings, range-read headers, downloads
    frozenset({"manifest"}),
    frozenset({"memory"}),
    frozenset({"supervisor"}),
    frozenset({"placement"}),  # plan, policy and placer: above the supervisor they drive
    frozenset({"lint"}),
    frozenset({"router"}),
    frozenset({"cli", "demo", "__main__"}),
)

# Edges (importer, imported) tolerated today, each in a package another change is splitting. An
# entry goes when that change lands; the test fails when an entry is no longer needed.
KNOWN_EXCEPTIONS: frozenset[tuple[str, str]] = frozenset()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The llmctl modules `name` imports anywhere in its file."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from llmctl.x import y` imports the submodule y when there is one
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and target.startswith("llmctl"):
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _layer(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    for i, layer in enumerate(LAYERS):
        if top in layer:
            return i
    raise AssertionError(f"{module} is in no layer: add its package to LAYERS in {__file__}")


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _without_exceptions(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    return {m: {t for t in ts if (m, t) not in KNOWN_EXCEPTIONS} for m, ts in graph.items()}


def test_no_import_circle() -> None:
    cycles = _cycles(_without_exceptions(_graph()))
    assert not cycles, "import circles (counting local and TYPE_CHECKING imports):\n" + "\n".join(
        " <-> ".join(c) for c in cycles
    )


def test_no_import_of_a_higher_layer() -> None:
    upward = [
        f"{m} imports {t}"
        for m, targets in sorted(_without_exceptions(_graph()).items())
        for t in sorted(targets)
        if _layer(t) > _layer(m)
    ]
    assert not upward, "imports of a higher layer from a lower one:\n" + "\n".join(upward)


def test_every_known_exception_is_still_needed() -> None:
    graph = _graph()
    stale = sorted(e for e in KNOWN_EXCEPTIONS if e[1] not in graph.get(e[0], set()))
    assert not stale, f"no longer imported, remove from KNOWN_EXCEPTIONS: {stale}"


def test_the_graph_reader_sees_every_kind_of_import(tmp_path: Path) -> None:
    """A local and a TYPE_CHECKING import count as much as a top-level one."""
    known = {"llmctl.a", "llmctl.b", "llmctl.c", "llmctl.d"}
    path = tmp_path / "a.py"
    path.write_text(
        "from typing import TYPE_CHECKING\n"
        "import llmctl.b\n"
        "if TYPE_CHECKING:\n    from llmctl.c import X\n"
        "def f():\n    from llmctl import d\n"
    )
    assert _imports("llmctl.a", path, known) == {"llmctl.b", "llmctl.c", "llmctl.d"}
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_tests_mirror_the_packages() -> None:
    """A newcomer finds a module's tests at tests/<package>/test_<module>.py: every test folder
    is a package of src/llmctl, and only this whole-project check sits at the top."""
    tests = Path(__file__).resolve().parent
    folders = [d for d in tests.iterdir() if d.is_dir() and d.name not in ("fakes", "__pycache__")]
    assert folders and all((SRC / d.name / "__init__.py").is_file() for d in folders), folders
    assert [p.name for p in tests.glob("test_*.py")] == ["test_layers.py"]
