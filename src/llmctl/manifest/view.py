"""What a loaded manifest answers: names, aliases, ports, devices, the GPU budget, positions. Shared
by the pydantic `Manifest` that validation builds (manifest/model.py) and by `ManifestView`, the same
data read back from the cache without pydantic. Typed against the few members it reads (Device, a
Protocol), so this module imports nothing of manifest/model.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, cast

from llmctl.errors import UsageError
from llmctl.manifest.source import Path_, Source

if TYPE_CHECKING:
    from collections.abc import Iterable

# the defaults of a `gpu:` device (manifest/model.py's GpuConfig and DeviceConfig say the same)
_HEADROOM = 512 * 1024**2
_OVERHEAD = 400 * 1024**2


class Device(Protocol):
    """One device under `gpu:` as a manifest answers it (a DeviceConfig, or a cached Record)."""

    @property
    def name(self) -> str: ...
    @property
    def vram(self) -> int | None: ...
    @property
    def headroom(self) -> int: ...
    @property
    def overhead(self) -> int | None: ...
    @property
    def rpc(self) -> str | None: ...


class GpuBudget(NamedTuple):
    """The budget single-device estimates are judged against (`Manifest.gpu_budget`). (A
    NamedTuple: every command that reads a manifest makes it at import; a dataclass costs more.)"""

    vram: int | None = None
    headroom: int = _HEADROOM
    overhead: int = _OVERHEAD


class ManifestOps:
    """Lookups over `profiles`, `_path`, `_source` and `_profile_origin` (set by the subclasses)."""

    if TYPE_CHECKING:
        profiles: dict[str, Any]
        _path: Path
        _source: Source | None
        _profile_origin: dict[str, dict[str, str]]
        gpu: Any
        server: Any

    @property
    def path(self) -> Path:
        return self._path

    @property
    def source(self) -> Source | None:
        return self._source

    @property
    def devices_listed(self) -> bool:
        """`gpu:` is a list of devices: launches pass --device and the plan's split."""
        return isinstance(self.gpu, list)

    def device_configs(self) -> list[Device]:
        """Every device, in manifest order, CPU last unless listed: the old single `gpu:` mapping
        is one device named GPU (no --device is passed for it)."""
        # plain records, not DeviceConfig: the cached manifest answers without importing pydantic
        if isinstance(self.gpu, list):
            out: list[Device] = list(self.gpu)
        else:
            out = []
            if self.gpu.vram is not None:
                gpu = {
                    "name": "GPU",
                    "vram": self.gpu.vram,
                    "headroom": self.gpu.headroom,
                    "overhead": self.gpu.overhead,
                    "rpc": None,
                }
                out.append(cast("Device", Record(gpu, gpu)))
        if not any(d.name.upper() == "CPU" for d in out):
            cpu = {
                "name": "CPU",
                "vram": None,
                "headroom": _HEADROOM,
                "overhead": 0,
                "rpc": None,
            }
            out.append(cast("Device", Record(cpu, cpu)))
        return out

    @property
    def gpu_budget(self) -> GpuBudget:
        """The budget single-device estimates are judged against: the first GPU."""
        if not isinstance(self.gpu, list):
            return GpuBudget(self.gpu.vram, self.gpu.headroom, self.gpu.overhead)
        for d in self.gpu:
            if d.name.upper() != "CPU" and d.rpc is None:
                overhead = d.overhead if d.overhead is not None else _OVERHEAD
                return GpuBudget(d.vram, d.headroom, overhead)
        return GpuBudget()

    def profile_port(self, name: str) -> int:
        """The port of a profile: its own, else its slot in server.ports, else server.port."""
        profile = self.profiles[name]
        if profile.port is not None:
            return int(profile.port)
        ports = self.server.ports
        if ports is None:
            return int(self.server.port)
        own = {p.port for p in self.profiles.values() if p.port is not None}
        port = int(ports[0])
        for pname, p in self.profiles.items():
            if p.port is not None:
                continue
            while port in own:
                port += 1
            if pname == name:
                return port
            port += 1
        return port

    def names(self) -> list[str]:
        """Every profile name and alias."""
        out: list[str] = []
        for name, profile in self.profiles.items():
            out.append(name)
            out.extend(profile.aliases)
        return out

    def resolve(self, name: str) -> str:
        """Profile name for a name or alias: exact first, then case-insensitive. UsageError otherwise."""
        if name in self.profiles:
            return name
        for pname, profile in self.profiles.items():
            if name in profile.aliases:
                return pname
        folded = name.casefold()
        for pname, profile in self.profiles.items():
            if pname.casefold() == folded or any(a.casefold() == folded for a in profile.aliases):
                return pname
        import difflib

        close = difflib.get_close_matches(name, self.names(), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else None
        available = ", ".join(self.profiles) or "(none)"
        raise UsageError(
            f"no profile or alias named {name!r} in {self._path}; profiles: {available}",
            hint=hint or "llmctl lint shows the manifest's profiles",
        )

    def field_path(self, profile: str, field: str) -> Path_:
        """Where a profile's field is written: under the profile, or under `defaults`."""
        origin = self._profile_origin.get(profile, {})
        if field == "model" and "model" not in origin and "hf" in origin:
            field = "hf"  # `hf: org/repo` written for `model: hf://org/repo`
        if origin.get(field) == "defaults":
            return ("defaults", field)
        return ("profiles", profile, field)

    def where(
        self, profile: str, field: str | None = None, index: int | None = None
    ) -> tuple[str, int | None, int | None]:
        """file, line, column of a profile, one of its fields, or one item of a list field."""
        path: Path_ = ("profiles", profile)
        if field is not None:
            path = self.field_path(profile, field)
            if index is not None:
                path = (*path, index)
        if self._source is None:
            return str(self._path), None, None
        line, column = self._source.position(path)
        return str(self._path), line, column


# A section (server, gpu, a profile ...) in the cache: its validated values and which were written.
_RECORD = "\x00record"


class Record:
    """A validated section as plain attributes, with `model_fields_set` like the model it copies."""

    def __init__(self, values: dict[str, Any], fields_set: Iterable[str]) -> None:
        self.__dict__.update(values)
        self.model_fields_set = frozenset(fields_set)

    def __repr__(self) -> str:
        shown = {k: v for k, v in self.__dict__.items() if k != "model_fields_set"}
        return f"Record({shown!r})"


def dump_value(value: Any) -> Any:
    """A validated pydantic value as JSON data; nested models keep which fields were written."""
    fields = getattr(type(value), "model_fields", None)
    if fields is not None:
        return {
            _RECORD: {k: dump_value(getattr(value, k)) for k in fields},
            "set": sorted(value.model_fields_set),
        }
    if isinstance(value, list):
        return [dump_value(v) for v in value]
    if isinstance(value, dict):
        return {k: dump_value(v) for k, v in value.items()}
    return value


def load_value(data: Any) -> Any:
    """The inverse of dump_value: records for models, plain data for the rest."""
    if isinstance(data, dict):
        if _RECORD in data:
            values = {k: load_value(v) for k, v in data[_RECORD].items()}
            return Record(values, data["set"])
        return {k: load_value(v) for k, v in data.items()}
    if isinstance(data, list):
        return [load_value(v) for v in data]
    return data


class ManifestView(ManifestOps):
    """A manifest read back from the cache: the attributes of `Manifest`, no pydantic."""

    def __init__(
        self,
        sections: dict[str, Any],
        path: Path,
        source: Source | None,
        origins: dict[str, dict[str, str]],
        complete: bool,
    ) -> None:
        for key, value in sections.items():
            setattr(self, key, load_value(value))
        self._path = path
        self._source = source
        self._profile_origin = origins
        self._complete = complete
