"""Loading and validating profiles.yaml: `check_manifest(path)` returns every problem it finds (for
lint); `load_manifest(path)` returns a usable Manifest or raises ManifestError with the errors.
Pydantic's errors are translated here into positioned problems (1-based file:line:column) with a
suggestion for a misspelt key."""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ValidationError

from llmctl.errors import ManifestError, Problem
from llmctl.llama.vocab import CACHE_TYPES
from llmctl.manifest.discover import expand_path, find_manifest
from llmctl.manifest.model import PATH_FIELDS, TRISTATE_FIELDS, Manifest, ManifestModel, Profile
from llmctl.manifest.problems import usable
from llmctl.manifest.readfile import read_manifest_bytes
from llmctl.manifest.rules import manifest_rules
from llmctl.manifest.yamldoc import Path_, Source, YamlLoadError, load_yaml
from llmctl.paths import is_hub_model

_FLAG_NAMES = {
    # what people type (llama-server flags, other tools' names) -> our field
    "c": "ctx_size",
    "ctx": "ctx_size",
    "context": "ctx_size",
    "context_size": "ctx_size",
    "context_length": "ctx_size",
    "num_ctx": "ctx_size",
    "n_ctx": "ctx_size",
    "np": "parallel",
    "n_parallel": "parallel",
    "slots": "parallel",
    "ngl": "n_gpu_layers",
    "gpu_layers": "n_gpu_layers",
    "num_gpu": "n_gpu_layers",
    "fa": "flash_attn",
    "flash_attention": "flash_attn",
    "ctk": "cache_type_k",
    "ctv": "cache_type_v",
    "kv_cache_type": "cache_type_k",
    "type_k": "cache_type_k",
    "type_v": "cache_type_v",
    "kvu": "kv_unified",
    "b": "batch_size",
    "ub": "ubatch_size",
    "batch": "batch_size",
    "ubatch": "ubatch_size",
    "t": "threads",
    "tb": "threads_batch",
    "nkvo": "no_kv_offload",
    "m": "model",
    "path": "model",
    "file": "model",
    "alias": "aliases",
    "args": "extra_args",
    "cmd": "extra_args",
    "environment": "env",
    "temperature": "temp",
    "ot": "override_tensor",
    "md": "model_draft",
    "embeddings": "embedding",
    "no_mmap": "mmap",
    "ttl_seconds": "ttl",
}


def _suggest(key: str, known: list[str]) -> str | None:
    norm = key.strip().lstrip("-").replace("-", "_").lower()
    if norm in known and norm != key:
        return norm
    if norm in _FLAG_NAMES and _FLAG_NAMES[norm] in known:
        return _FLAG_NAMES[norm]
    close = difflib.get_close_matches(norm, known, n=1, cutoff=0.6)
    return close[0] if close else None


def _stringy(annotation: Any) -> str | None:
    """How a field holds text: "str", "list" (of str), "dict" (str values), or None."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _stringy(typing.get_args(annotation)[0])
    if annotation is str:
        return "str"
    if origin is Literal:
        return "str" if all(isinstance(a, str) for a in typing.get_args(annotation)) else None
    if origin in (typing.Union, types.UnionType):
        kinds = {_stringy(a) for a in typing.get_args(annotation) if a is not type(None)}
        return kinds.pop() if len(kinds) == 1 else None
    if origin is list and typing.get_args(annotation) and typing.get_args(annotation)[0] is str:
        return "list"
    if (
        origin is dict
        and len(typing.get_args(annotation)) == 2
        and typing.get_args(annotation)[1] is str
    ):
        return "dict"
    return None


def _submodel(annotation: Any) -> tuple[type[BaseModel], bool] | None:
    """The section model a field holds, and whether it holds a list of them (`upstreams`)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin is list and args:
        inner = _submodel(args[0])
        return (inner[0], True) if inner and not inner[1] else None
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _submodel(args[0])
    return None


class _Checker:
    def __init__(self, path: Path, source: Source) -> None:
        self.file = str(path)
        self.source = source
        self.problems: list[Problem] = []

    def add(
        self,
        severity: Literal["error", "warning"],
        rule: str,
        message: str,
        path: Path_,
        profile: str | None = None,
        hint: str | None = None,
        *,
        value: bool = False,
    ) -> None:
        line, column = self.source.value_position(path) if value else self.source.position(path)
        self.problems.append(
            Problem(severity, rule, message, profile, self.file, line, column, hint)
        )

    # YAML 1.1 coercions -------------------------------------------------------------------
    def keep_text(
        self, data: dict[str, Any], model: type[BaseModel], path: Path_, profile: str | None
    ) -> None:
        """Where a field holds text but YAML made it a bool/number, use the text as written."""
        for name, info in model.model_fields.items():
            if name not in data or name in TRISTATE_FIELDS:
                continue
            kind = _stringy(info.annotation)
            if kind == "str":
                data[name] = self._text(data[name], (*path, name), profile, name)
            elif kind == "list" and isinstance(data[name], list):
                data[name] = [
                    self._text(v, (*path, name, i), profile, name) for i, v in enumerate(data[name])
                ]
            elif kind == "dict" and isinstance(data[name], dict):
                data[name] = {
                    k: self._text(v, (*path, name, k), profile, name, quiet_numbers=True)
                    for k, v in data[name].items()
                }
            sub = _submodel(info.annotation)
            if sub is None:
                continue
            section, many = sub
            if many and isinstance(data[name], list):
                for i, item in enumerate(data[name]):
                    if isinstance(item, dict):
                        self.keep_text(item, section, (*path, name, i), profile)
            elif not many and isinstance(data[name], dict):
                self.keep_text(data[name], section, (*path, name), profile)

    def _text(
        self, value: Any, path: Path_, profile: str | None, field: str, quiet_numbers: bool = False
    ) -> Any:
        note = self.source.coerced.get(path)
        if note is None or isinstance(value, str) or note.kind == "null":
            return value
        if not (quiet_numbers and note.kind == "number"):
            self.add(
                "warning",
                "yaml-coercion",
                f"YAML 1.1 reads {note.raw} as the {note.kind} {_show(note.value)} in `{field}`; "
                f"llmctl used the text {note.raw!r}",
                path,
                profile,
                hint=f"quote it to say what you mean: {field}: '{note.raw}'",
                value=True,
            )
        return note.raw

    # pydantic errors ------------------------------------------------------------------------
    def validation(
        self,
        err: ValidationError,
        path: Path_,
        profile: str | None,
        model: type[BaseModel],
        origin: dict[str, str] | None = None,
    ) -> None:
        for e in _one_branch(err.errors(include_url=False)):
            loc: tuple[str | int, ...] = tuple(e["loc"])
            where = (*path, *loc)
            if origin and loc and origin.get(str(loc[0])) == "defaults":
                where = ("defaults", *loc)
            field = str(loc[-1]) if loc else ""
            top = str(loc[0]) if loc else ""
            etype = e["type"]
            msg = str(e["msg"]).removeprefix("Value error, ")
            if not loc and etype == "value_error" and path and path[0] == "profiles":
                # a check across fields (`hf` with `model`) names the field it is about first
                named = msg.split("`")[1] if msg.startswith("`") else ""
                if named in model.model_fields:
                    loc, top, field = (named,), named, named
                    where = (*path, *loc)
            if etype == "extra_forbidden":
                known = _known_fields(model, loc[:-1])
                guess = _suggest(field, known)
                self.add(
                    "error",
                    "unknown-key",
                    f"unknown key `{field}`",
                    where,
                    profile,
                    hint=f"did you mean `{guess}`?"
                    if guess
                    else f"known keys: {', '.join(sorted(known))}",
                )
            elif etype == "missing":
                self.add(
                    "error",
                    "missing-key",
                    f"`{field}` is required",
                    path if not loc[:-1] else (*path, *loc[:-1]),
                    profile,
                )
            elif top in ("model", "hf", "hf_file") and etype == "value_error":
                self.add(
                    "error",
                    "hub-ref",
                    msg,
                    where,
                    profile,
                    hint="a file path, or a Hugging Face model: `model: hf://org/repo:Q4_K_M` "
                    "(hf://org/repo/file.gguf for one file, @revision after the repo to pin "
                    "one), or `hf: org/repo:Q4_K_M` and `hf_file:` as llama-server spells them",
                    value=True,
                )
            elif top in ("cache_type_k", "cache_type_v"):
                self.add(
                    "error",
                    "cache-type",
                    f"`{top}` must be one of {', '.join(CACHE_TYPES)}; got {e.get('input')!r}",
                    where,
                    profile,
                    hint="q8_0 halves the f16 cache, q4_0 quarters it",
                    value=True,
                )
            elif top == "flash_attn":
                self.add(
                    "error",
                    "flash-attn",
                    f"`flash_attn` must be on, off or auto; got {e.get('input')!r}",
                    where,
                    profile,
                    value=True,
                )
            elif top == "parallel":
                self.add(
                    "error",
                    "parallel",
                    f"`parallel`: {msg} (got {e.get('input')!r})",
                    where,
                    profile,
                    hint="use 1 for one user, or auto",
                    value=True,
                )
            elif etype in ("greater_than_equal", "greater_than", "less_than_equal"):
                self.add(
                    "error",
                    "range",
                    f"`{_dotted(loc)}`: {msg.lower()} (got {e.get('input')!r})",
                    where,
                    profile,
                    value=True,
                )
            else:
                self.add("error", "schema", f"`{_dotted(loc)}`: {msg}", where, profile, value=True)


# `gpu:` is a mapping or a list of devices: pydantic reports each branch of the union, under
# a tag (`gpu.GpuConfig`, `gpu.list[...]`). Only the branch of the shape written is meant.
_UNION_FIELDS = frozenset({"gpu"})
_SHAPE_ERRORS = frozenset({"model_type", "model_attributes_type", "list_type", "dict_type"})


def _one_branch(errors: list[Any]) -> list[Any]:
    """Errors with union tags taken out of their place, and the other shape's errors dropped."""
    out: list[Any] = []
    tagged = [e for e in errors if _tag(e["loc"]) is not None]
    shape = [e for e in tagged if e["type"] in _SHAPE_ERRORS and len(e["loc"]) == 2]
    if tagged and len(shape) == len(tagged):  # neither shape: one error says which are meant
        field = tagged[0]["loc"][0]
        errors = [e for e in errors if e not in tagged]
        errors.append(
            {
                "loc": (field,),
                "type": "value_error",
                "msg": "must be a mapping (vram, headroom, overhead) or a list of devices",
                "input": tagged[0].get("input"),
            }
        )
    for e in errors:
        loc = tuple(e["loc"])
        if _tag(loc) is None:
            out.append(e)
            continue
        if e["type"] in _SHAPE_ERRORS and len(loc) == 2 and len(tagged) > 1:
            continue  # the input has the other branch's shape
        out.append({**e, "loc": (loc[0], *loc[2:])})
    return out


def _tag(loc: tuple[Any, ...] | list[Any]) -> str | None:
    if len(loc) > 1 and loc[0] in _UNION_FIELDS and isinstance(loc[1], str):
        return loc[1]
    return None


def _show(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else repr(value)


def _dotted(loc: tuple[str | int, ...]) -> str:
    return ".".join(str(x) for x in loc) or "(root)"


def _known_fields(model: type[BaseModel], loc: tuple[str | int, ...]) -> list[str]:
    current: type[BaseModel] = model
    for part in loc:
        if isinstance(part, int):
            continue
        info = current.model_fields.get(part)
        sub = _submodel(info.annotation) if info is not None else None
        if sub is None:
            break
        current = sub[0]
    return list(current.model_fields)


def check_manifest(path: Path, content: bytes | None = None) -> tuple[Manifest, list[Problem]]:
    """Every problem in the manifest at `path`, and the Manifest built from what is valid.

    With errors among the problems, the Manifest is partial (invalid profiles left out).

    Raises ManifestError (exit 2) only when the file cannot be read or parsed at all.
    """
    file = str(path)
    try:
        data_bytes = read_manifest_bytes(path) if content is None else content
    except FileNotFoundError:
        raise ManifestError(
            f"{file}: no such file", hint="pass --manifest PATH or set LLMCTL_MANIFEST"
        ) from None
    except IsADirectoryError:
        raise ManifestError(f"{file} is a folder, not a manifest file") from None
    except OSError as err:
        raise ManifestError(f"{file}: cannot read: {err.strerror}") from None
    try:
        data, source = load_yaml(data_bytes, file)
    except YamlLoadError as err:
        where = file if err.line is None else f"{file}:{err.line}:{err.column or 1}"
        raise ManifestError(
            f"{where}: {err.message}",
            hint=err.hint or "fix the YAML; `llmctl lint` checks it",
            problems=[
                Problem("error", "yaml", err.message, None, file, err.line, err.column, err.hint)
            ],
        ) from None
    checker = _Checker(path, source)
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else f"the value {data!r}"
        raise ManifestError(
            f"{file}:1:1: the manifest must be a mapping with `version` and `profiles`, not {kind}",
            hint="start with `version: 1` and a `profiles:` mapping (see the README)",
            problems=[Problem("error", "yaml", "the root is not a mapping", None, file, 1, 1)],
        )
    for dup in source.duplicates:
        profile = str(dup.path[1]) if len(dup.path) > 1 and dup.path[0] == "profiles" else None
        what = "profile" if len(dup.path) == 2 and dup.path[0] == "profiles" else "key"
        checker.problems.append(
            Problem(
                "error",
                "duplicate-key",
                f"{what} `{dup.path[-1]}` appears twice (first at line {dup.first_line}); "
                "YAML would silently keep only the last one",
                profile,
                file,
                dup.line,
                dup.column,
                "rename or remove one of them",
            )
        )
    return _validate(path, data, source, checker)


def _validate(
    path: Path, data: dict[str, Any], source: Source, checker: _Checker
) -> tuple[Manifest, list[Problem]]:
    base = path.resolve().parent
    if "version" not in data:
        checker.add(
            "warning",
            "version",
            "no `version`; assuming `version: 1`",
            (),
            None,
            hint="add `version: 1` at the top",
        )
    raw_profiles = data.get("profiles")
    raw_defaults = data.get("defaults", {})
    top = {k: v for k, v in data.items() if k not in ("profiles", "defaults")}
    checker.keep_text(top, ManifestModel, (), None)
    # Each section on its own, so that an error in one does not hide the others.
    sections: dict[str, Any] = {}
    for key, value in top.items():
        try:
            ManifestModel.model_validate({key: value})
        except ValidationError as err:
            checker.validation(err, (), None, ManifestModel)
        else:
            sections[key] = value

    defaults: dict[str, Any] = {}
    if raw_defaults is None:
        raw_defaults = {}
    if not isinstance(raw_defaults, dict):
        checker.add(
            "error",
            "schema",
            "`defaults` must be a mapping of profile fields",
            ("defaults",),
            value=True,
        )
    else:
        defaults = dict(raw_defaults)
        checker.keep_text(defaults, Profile, ("defaults",), None)
        for key in list(defaults):
            if key not in Profile.model_fields:
                guess = _suggest(key, list(Profile.model_fields))
                checker.add(
                    "error",
                    "unknown-key",
                    f"unknown key `{key}` in defaults",
                    ("defaults", key),
                    hint=f"did you mean `{guess}`?" if guess else None,
                )
                del defaults[key]
            elif key == "aliases":
                checker.add(
                    "error",
                    "schema",
                    "`aliases` cannot be a default: each name must be unique",
                    ("defaults", key),
                )
                del defaults[key]

    profiles: dict[str, Profile] = {}
    origins: dict[str, dict[str, str]] = {}
    # a gateway in front of other machines (serve.upstreams) needs no local profile
    raw_serve = data.get("serve")
    gateway = isinstance(raw_serve, dict) and bool(raw_serve.get("upstreams"))
    if raw_profiles is None and gateway:
        pass
    elif raw_profiles is None:
        checker.add(
            "error",
            "no-profiles",
            "the manifest has no `profiles`",
            (),
            hint="add a `profiles:` mapping with at least one profile",
        )
    elif not isinstance(raw_profiles, dict):
        checker.add(
            "error",
            "schema",
            "`profiles` must be a mapping of name -> profile",
            ("profiles",),
            value=True,
        )
    else:
        if not raw_profiles and not gateway:
            checker.add(
                "error",
                "no-profiles",
                "`profiles` is empty",
                ("profiles",),
                hint="add a profile, or `serve.upstreams` for a router in front of other machines",
            )
        for name, raw in raw_profiles.items():
            ppath: Path_ = ("profiles", name)
            if raw is None:
                raw = {}
            if not isinstance(raw, dict):
                checker.add(
                    "error",
                    "schema",
                    f"profile `{name}` must be a mapping of fields",
                    ppath,
                    name,
                    value=True,
                )
                continue
            own = dict(raw)
            checker.keep_text(own, Profile, ppath, name)
            merged = dict(defaults)
            origin = {k: "defaults" for k in defaults}
            for k, v in own.items():
                if k == "env" and isinstance(v, dict) and isinstance(merged.get("env"), dict):
                    merged["env"] = {**merged["env"], **v}
                else:
                    merged[k] = v
                origin[k] = "profile"
            for field in PATH_FIELDS:
                if (
                    isinstance(merged.get(field), str)
                    and merged[field]
                    and not is_hub_model(merged[field])
                ):
                    merged[field] = expand_path(merged[field], base)
            try:
                profiles[name] = Profile.model_validate(merged)
            except ValidationError as err:
                checker.validation(err, ppath, name, Profile, origin)
            origins[name] = origin

    manifest = Manifest.model_validate({**sections, "defaults": defaults, "profiles": {}})
    manifest.profiles = profiles
    manifest._path = path
    manifest._source = source
    manifest._profile_origin = origins
    manifest._complete = not any(p.severity == "error" for p in checker.problems)
    if manifest.server.binary:
        manifest.server.binary = expand_path(manifest.server.binary, base)
    return manifest, checker.problems


def load_manifest(path: Path | str | None = None) -> Manifest:
    """The manifest (discovered when `path` is None), or ManifestError listing its errors.

    Always parses and validates; `llmctl.manifest.cache.load_manifest` is the same from the cache.
    """
    found = find_manifest(path)
    manifest, problems = check_manifest(found)
    return usable(found, manifest, problems, manifest_rules(manifest))
