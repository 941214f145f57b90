"""The validated manifest kept as JSON, so that everyday commands read it without YAML or pydantic.

`check_manifest` and `load_manifest` here answer like those of `llmctl.manifest.model`. The first
run after the file changes parses and validates it and writes the result to
`$LLMCTL_CACHE_DIR/manifests/`; later runs read that back as a `ManifestView` (same attributes, no
pydantic). An entry is used only while everything it was computed from is unchanged: the file's
text (compared whole: it is small, and a timestamp can miss a quick same-size edit), the
environment variables its paths expand (and HOME), llmctl's version and the validation code. Any doubt (missing, unreadable, stale entry) means
validating again; a cache that cannot be written is no error.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from llmctl.errors import Problem
from llmctl.manifest.discover import find_manifest
from llmctl.manifest.problems import usable
from llmctl.manifest.readfile import read_manifest_bytes
from llmctl.manifest.source import Source
from llmctl.manifest.view import ManifestView, dump_value

if TYPE_CHECKING:
    from llmctl.manifest.model import Manifest

FORMAT = 1
_VAR = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")
# the code whose output is cached: a change to any of them (an upgrade, an edit) is a miss;
# the checks across profiles (manifest/rules.py) are kept with the manifest
_CODE = (
    "model.py",
    "yamldoc.py",
    "sizes.py",
    "view.py",
    "types.py",
    "validate.py",
    "cache.py",
    "rules.py",
    "problems.py",
    "../llama/flags.py",  # the managed flags the rules check
    "../llama/rpc.py",  # validates `rpc` endpoints
    "../hub/refs.py",  # validates hub references
    "../paths.py",  # tells them from paths
)


def _code_stat(path: str) -> list[int]:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def _code_key() -> list[Any]:
    from llmctl import __version__

    here = os.path.dirname(__file__)
    return [__version__, FORMAT, *(_code_stat(os.path.join(here, n)) for n in _CODE)]


def _entry_path(real: str) -> Path:
    from llmctl.paths import cache_dir

    name = real.replace("%", "%25").replace("/", "%2F")
    if len(name) > 200:
        import hashlib

        name = hashlib.sha256(real.encode()).hexdigest()
    return cache_dir() / "manifests" / f"{name}.json"


_Checked = tuple["Manifest", list[Problem], list[Problem] | None]


def _read(path: Path, real: str, text: str) -> _Checked | None:
    try:
        with open(_entry_path(real), "rb") as f:
            entry = json.loads(f.read())
        if (
            entry["file"] != real
            or entry["text"] != text
            or entry["code"] != _code_key()
            or any(os.environ.get(k) != v for k, v in entry["env"].items())
        ):
            return None
        data = entry["manifest"]
        source = Source.from_json(data["source"]) if data["source"] is not None else None
        view = ManifestView(data["sections"], path, source, data["origins"], data["complete"])
        problems = [Problem(**p) for p in entry["problems"]]
        cross = None if entry["cross"] is None else [Problem(**p) for p in entry["cross"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    # The view has every attribute of Manifest and its sections (a test compares them field by
    # field); it is not a pydantic model, so that pydantic stays out of the process.
    return cast("Manifest", view), problems, cross


def _cross(manifest: Manifest) -> list[Problem] | None:
    """The checks across profiles that need nothing but the manifest; None if they fail (the
    caller runs them again and sees the failure)."""
    from llmctl.manifest.rules import manifest_rules

    try:
        return manifest_rules(manifest)
    except Exception:
        return None


def _write(real: str, text: str, manifest: Manifest, problems: list[Problem]) -> None:
    try:
        cross = _cross(manifest)
        names = sorted(set(_VAR.findall(text)) | {"HOME"})
        sections = {k: dump_value(getattr(manifest, k)) for k in type(manifest).model_fields}
        entry = {
            "file": real,
            "text": text,
            "code": _code_key(),
            "env": {k: os.environ.get(k) for k in names},
            "manifest": {
                "sections": sections,
                "source": manifest.source.to_json() if manifest.source is not None else None,
                "origins": manifest._profile_origin,
                "complete": manifest._complete,
            },
            "problems": [p.to_json() for p in problems],
            "cross": None if cross is None else [p.to_json() for p in cross],
        }
        target = _entry_path(real)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}")
        tmp.write_text(json.dumps(entry))
        os.replace(tmp, target)
    except (OSError, ValueError, TypeError):
        pass


def check_manifest(path: Path) -> tuple[Manifest, list[Problem]]:
    """`llmctl.manifest.validate.check_manifest`, from the cache while nothing it depends on changed."""
    manifest, problems, _ = _checked(path)
    return manifest, problems


def _checked(path: Path) -> _Checked:
    real = os.path.realpath(path)
    try:
        data = read_manifest_bytes(real, path)  # ManifestError for a device, FIFO or huge file
        text: str | None = data.decode("utf-8")
    except (OSError, UnicodeDecodeError):
        text = None  # the validation says what is wrong
    if text is not None:
        hit = _read(path, real, text)
        if hit is not None:
            return hit
    from llmctl.manifest import validate

    # the bytes read above, so that the entry holds what was validated
    manifest, problems = validate.check_manifest(path, data if text is not None else None)
    if text is not None:
        _write(real, text, manifest, problems)
    return manifest, problems, None


def load_manifest(path: Path | str | None = None) -> Manifest:
    """`llmctl.manifest.validate.load_manifest`, from the cache while the file is unchanged."""
    found = find_manifest(path)
    manifest, problems, cross = _checked(found)
    if cross is None:
        from llmctl.manifest.rules import manifest_rules

        cross = manifest_rules(manifest)
    return usable(found, manifest, problems, cross)


def cached_manifest(path: Path) -> Manifest | None:
    """The manifest at `path` from a cache entry that is still valid, else None: never validates
    (no YAML, no pydantic), for a command that must stay cheap (`llmctl status`)."""
    from llmctl.errors import LlmctlError

    real = os.path.realpath(path)
    try:
        text = read_manifest_bytes(real, path).decode("utf-8")
    except (OSError, UnicodeDecodeError, LlmctlError):
        return None
    hit = _read(path, real, text)
    if hit is None:
        return None
    manifest, problems, cross = hit
    if cross is None:
        return None
    try:
        return usable(path, manifest, problems, cross)
    except LlmctlError:
        return None
