"""The memory llama-server reports about itself, read from its log.

llama.cpp prints its buffers (`load_tensors: CPU_Mapped model buffer size = ...`,
`llama_kv_cache: CPU KV buffer size = ...`, `sched_reserve: CPU compute buffer size = ...`, the
output buffer) as llama-level INFO messages. llama-server's common logger shows those only from
verbosity 4 (`-lv 4`): at its default (3) none of them is printed. The multimodal projector's
lines (`load_hparams: model size`, `reserve_compute_meta: CPU compute buffer size`, the latter
only when the projector is warmed up, i.e. without `--no-warmup`) come from the projector's own
loader. Beside the buffers, each cache sums itself up (`llama_kv_cache: size = ... (cells, layers,
seqs), K (type): ..., V (type): ...`, `llama_memory_recurrent: size = ...`) and the context prints
its sizes (`llama_context: n_ctx = ...`); "model loaded" ends a launch that worked, "exiting due
to" one that did not.

Pure parsing: no process is started here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

MiB = 1024 * 1024

_MODEL = re.compile(r"load_tensors:\s+(\S+) model buffer size =\s*([\d.]+) MiB")
_KV = re.compile(r"llama_kv_cache:\s+(\S+) KV buffer size =\s*([\d.]+) MiB")
_RS = re.compile(r"llama_memory_recurrent:\s+(\S+) RS buffer size =\s*([\d.]+) MiB")
_OUTPUT = re.compile(r"llama_context:\s+(\S+)\s+output buffer size =\s*([\d.]+) MiB")
_COMPUTE = re.compile(r"sched_reserve:\s+(\S+) compute buffer size =\s*([\d.]+) MiB")
_CLIP_MODEL = re.compile(r"load_hparams: (model) size:\s*([\d.]+) MiB")
_CLIP_COMPUTE = re.compile(
    r"(?:alloc|reserve)_compute_meta:\s+(\S+) compute buffer size =\s*([\d.]+) MiB"
)
# a cache's summary; a recurrent state's R and S go where an attention cache has K and V
_KV_SUMMARY = re.compile(
    r"llama_kv_cache: size =\s*(?P<mib>[\d.]+) MiB \(\s*(?P<cells>\d+) cells,\s*(?P<layers>\d+) "
    r"layers,\s*(?P<n_seq>\d+)/(?P<n_stream>\d+) seqs\), K \((?P<k_type>\w+)\):\s*(?P<k_mib>[\d.]+) "
    r"MiB, V \((?P<v_type>\w+)\):\s*(?P<v_mib>[\d.]+) MiB"
)
_RS_SUMMARY = re.compile(
    r"llama_memory_recurrent: size =\s*(?P<mib>[\d.]+) MiB \(\s*(?P<cells>\d+) cells,\s*"
    r"(?P<layers>\d+) layers,\s*(?P<n_seq>\d+) seqs.*?\), R \((?P<k_type>\w+)\):\s*"
    r"(?P<k_mib>[\d.]+) MiB, S \((?P<v_type>\w+)\):\s*(?P<v_mib>[\d.]+) MiB"
)
# --fit's lines: at -v its probe loads print their buffers before these, and the real load after
_FIT = re.compile(r"\bcommon_(?:params_)?fit\w*:")
_N_CTX = re.compile(r"llama_context: n_ctx\s+= (\d+)")
_N_CTX_SEQ = re.compile(r"llama_context: n_ctx_seq\s+= (\d+)")
# the lines that end a launch: loaded, or given up
LOADED = "model loaded"
FAILED = "exiting due to"


def _add(into: dict[str, float], name: str, value: str) -> None:
    into[name] = round(into.get(name, 0.0) + float(value), 2)


@dataclass(frozen=True)
class CacheReport:
    """One cache as llama-server sums it up (MiB as printed): an attention cache (K and V) or a
    recurrent state (R and S, in k_* and v_*; it prints no streams)."""

    kind: str  # "attn" or "recurrent"
    mib: float
    cells: int
    layers: int
    n_seq: int
    n_stream: int | None
    k_type: str
    k_mib: float
    v_type: str
    v_mib: float


@dataclass
class Reported:
    """Buffers (MiB, as printed, by buffer type) of the main model's first context, and of the
    projector. A draft model's context, printed after the main one, is kept apart.

    `caches`, `n_ctx`, `n_ctx_seq` and `loaded` are what the log says beside the buffers, for a
    comparison with the estimate's; the calibration store keeps the buffers only."""

    model: dict[str, float] = field(default_factory=dict)
    kv: dict[str, float] = field(default_factory=dict)
    output: dict[str, float] = field(default_factory=dict)
    compute: dict[str, float] = field(default_factory=dict)
    mmproj_model: dict[str, float] = field(default_factory=dict)
    mmproj_compute: dict[str, float] = field(default_factory=dict)
    draft: Reported | None = None
    caches: list[CacheReport] = field(default_factory=list)
    n_ctx: int | None = None
    n_ctx_seq: int | None = None
    loaded: bool = False

    @property
    def empty(self) -> bool:
        return not (self.model or self.kv or self.compute or self.mmproj_model)

    def total(self, part: str) -> float:
        value: dict[str, float] = getattr(self, part)
        return round(sum(value.values()), 2)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model_mib": self.model,
            "kv_mib": self.kv,
            "output_mib": self.output,
            "compute_mib": self.compute,
        }
        if self.mmproj_model or self.mmproj_compute:
            out["mmproj_model_mib"] = self.mmproj_model
            out["mmproj_compute_mib"] = self.mmproj_compute
        if self.draft is not None:
            out["draft"] = self.draft.to_json()
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Reported:
        draft = data.get("draft")
        return cls(
            model=dict(data.get("model_mib", {})),
            kv=dict(data.get("kv_mib", {})),
            output=dict(data.get("output_mib", {})),
            compute=dict(data.get("compute_mib", {})),
            mmproj_model=dict(data.get("mmproj_model_mib", {})),
            mmproj_compute=dict(data.get("mmproj_compute_mib", {})),
            draft=cls.from_json(draft) if isinstance(draft, dict) else None,
        )


def _cache(kind: str, m: re.Match[str]) -> CacheReport:
    g = m.groupdict()
    stream = g.get("n_stream")
    return CacheReport(
        kind,
        float(g["mib"]),
        int(g["cells"]),
        int(g["layers"]),
        int(g["n_seq"]),
        int(stream) if stream is not None else None,
        g["k_type"],
        float(g["k_mib"]),
        g["v_type"],
        float(g["v_mib"]),
    )


def parse_reported(text: str) -> Reported:
    """What a llama-server log reports. Later contexts (a draft model, a reload) after the
    first one's compute buffer go to `draft`; lines llama-server did not print stay empty."""
    main = Reported()
    current = main
    for line in text.splitlines():
        if _FIT.search(line):
            main = current = Reported()
        elif LOADED in line:
            main.loaded = True
        elif m := _CLIP_MODEL.search(line):
            _add(main.mmproj_model, m[1], m[2])
        elif m := _CLIP_COMPUTE.search(line):
            _add(main.mmproj_compute, m[1], m[2])
        elif m := _MODEL.search(line):
            if main.compute and current is main:
                # a second model after the main context: the draft
                current = main.draft = Reported()
            _add(current.model, m[1], m[2])
        elif m := _KV.search(line) or _RS.search(line):
            _add(current.kv, m[1], m[2])
        elif m := _KV_SUMMARY.search(line):
            current.caches.append(_cache("attn", m))
        elif m := _RS_SUMMARY.search(line):
            current.caches.append(_cache("recurrent", m))
        elif m := _N_CTX.search(line):
            if current.n_ctx is None:
                current.n_ctx = int(m[1])
        elif m := _N_CTX_SEQ.search(line):
            if current.n_ctx_seq is None:
                current.n_ctx_seq = int(m[1])
        elif m := _OUTPUT.search(line):
            _add(current.output, m[1], m[2])
        elif m := _COMPUTE.search(line):
            if m[1] in current.compute and current is main and main.draft is None:
                continue  # a re-reservation of the same context (one line per device each time)
            _add(current.compute, m[1], m[2])
    return main
