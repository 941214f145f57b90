"""A first manifest from the GGUF files on this machine (`llmctl init`).

Where llama.cpp users keep models: `~/models`, llama.cpp's own download cache (`-hf`,
`$LLAMA_CACHE`), the Hugging Face hub cache, LM Studio's folders, or any folder named. Each model
GGUF becomes a profile named after its file, at a context that starts fast (8K, or the trained
context when it is smaller); a vision projector (`mmproj`) in the same folder whose width matches
is attached; embedding and reranking models are served as such. Split models (`-00001-of-00003`)
are one profile, their other parts are not. A Hugging Face model named on the command line
(`hf://org/repo:QUANT`) becomes a profile of that `model:`, from its header (`from_header`).
Nothing here writes a file: `render` returns the text, the CLI writes it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from llmctl.errors import GGUFError
from llmctl.llama.gguf import GGUFFile, read_gguf
from llmctl.term import format_bytes

START_CTX = 8192
MAX_DEPTH = 8
# llama.cpp's pooling types (llama.h: LLAMA_POOLING_TYPE_*): NONE 0, MEAN 1, CLS 2, LAST 3, RANK 4
POOLING_RANK = 4
_SPLIT_PART = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$")


@dataclass
class FoundModel:
    path: Path
    name: str  # the profile name
    architecture: str
    title: str  # general.name, else the file's name
    size_bytes: int
    trained_ctx: int | None
    embedding: bool = False
    reranking: bool = False
    mmproj: Path | None = None
    ref: str | None = None  # a hub model: its `model:` (hf://...), `path` its file in the repo


@dataclass
class Scan:
    models: list[FoundModel] = field(default_factory=list)
    searched: list[Path] = field(default_factory=list)  # the folders that exist
    skipped: list[str] = field(default_factory=list)  # unreadable files, with why


def model_folders(home: Path | None = None, env: dict[str, str] | None = None) -> list[Path]:
    """Where llama.cpp users keep GGUF files, in this order (existing or not)."""
    env = dict(os.environ) if env is None else env
    home = home or Path(os.path.expanduser("~"))
    xdg_cache = Path(env.get("XDG_CACHE_HOME") or home / ".cache")
    hf_home = Path(env.get("HF_HOME") or xdg_cache / "huggingface")
    out = [
        home / "models",
        Path(env["LLAMA_CACHE"]) if env.get("LLAMA_CACHE") else xdg_cache / "llama.cpp",
        Path(env["HF_HUB_CACHE"]) if env.get("HF_HUB_CACHE") else hf_home / "hub",
        home / ".lmstudio" / "models",
        xdg_cache / "lm-studio" / "models",
    ]
    return list(dict.fromkeys(out))  # each once, in order


def profile_name(path: Path) -> str:
    """`Qwen3-8B-Q4_K_M.gguf` -> `qwen3-8b-q4_k_m`: the file's name, lower case, safe in a URL,
    a YAML key and llama-server's comma-separated --alias."""
    stem = _SPLIT_PART.sub("", path.name)
    stem = stem[:-5] if stem.lower().endswith(".gguf") else stem
    name = re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-._")
    return name or "model"


def _gguf_files(folder: Path) -> list[Path]:
    """GGUF files under `folder`, at most MAX_DEPTH levels down, hidden folders left out (the hub
    cache's files are symbolic links into its blobs: followed as files, not as folders)."""
    found: list[Path] = []
    base = len(folder.parts)
    for root, dirs, files in os.walk(folder, onerror=lambda _e: None):
        if len(Path(root).parts) - base >= MAX_DEPTH:
            dirs[:] = []
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(root) / f for f in sorted(files) if f.lower().endswith(".gguf")]
    return found


def _is_projector(g: GGUFFile) -> bool:
    return g.architecture == "clip" or g.metadata.get("general.type") == "mmproj"


def scan(folders: list[Path]) -> Scan:
    """Every model GGUF under `folders` (each file once, however it is reached)."""
    out = Scan()
    seen: set[Path] = set()
    projectors: dict[Path, list[tuple[Path, int | None]]] = {}  # folder -> (file, width)
    headers: list[tuple[Path, GGUFFile]] = []
    paths: list[Path] = []
    for folder in folders:
        if folder.is_dir():
            out.searched.append(folder)
            paths += _gguf_files(folder)
    # a file reached both as itself and through a link is named after itself (the hub cache has
    # links only: named after the link)
    paths.sort(key=lambda p: p.is_symlink())
    for path in paths:
        split = _SPLIT_PART.search(path.name)
        if split and split.group(1) != "00001":
            continue  # a later part of a split model: read with its first part
        real = path.resolve()
        if real in seen:
            continue
        seen.add(real)
        try:
            g = read_gguf(path)
        except GGUFError as err:
            out.skipped.append(f"{path}: {err.message}")
            continue
        if _is_projector(g):
            width = g.metadata.get("clip.vision.projection_dim")
            projectors.setdefault(path.parent, []).append(
                (path, width if isinstance(width, int) else None)
            )
        else:
            headers.append((path, g))
    names: set[str] = set()
    for path, g in headers:
        model = _found(path, g, names)
        arch = g.architecture
        width = g.metadata.get(f"{arch}.embedding_length")
        # a projector beside the model whose output width is the model's embedding width
        fitting = [p for p, w in projectors.get(path.parent, []) if w is None or w == width]
        if len(fitting) == 1 and not (model.embedding or model.reranking):
            model.mmproj = fitting[0]
        out.models.append(model)
    return out


def from_header(ref: str, file: str, g: GGUFFile, size: int, names: set[str]) -> FoundModel:
    """The profile of hub model `ref` (its first file `file`), from its header."""
    model = _found(Path(file), g, names, size)
    model.ref = ref
    return model


def _found(path: Path, g: GGUFFile, names: set[str], size: int | None = None) -> FoundModel:
    arch = g.architecture
    meta = g.metadata
    base = profile_name(path)
    name, n = base, 2
    while name in names:
        name, n = f"{base}-{n}", n + 1
    names.add(name)
    ctx = meta.get(f"{arch}.context_length")
    pooling = meta.get(f"{arch}.pooling_type")
    title = meta.get("general.name")
    if size is None:
        size = sum(p.stat().st_size for p in (g.paths or [path]) if p.exists())
    return FoundModel(
        path=path,
        name=name,
        architecture=arch or "unknown",
        title=title if isinstance(title, str) and title.strip() else path.name,
        size_bytes=size,
        trained_ctx=ctx if isinstance(ctx, int) and ctx > 0 else None,
        embedding=isinstance(pooling, int) and 0 < pooling < POOLING_RANK,
        reranking=pooling == POOLING_RANK,
    )


def start_ctx(model: FoundModel) -> int:
    return min(START_CTX, model.trained_ctx) if model.trained_ctx else START_CTX


def _ctx_text(n: int) -> str:
    return f"{n // 1024}K" if n % 1024 == 0 else str(n)


def _quote(value: str) -> str:
    """A YAML scalar for a path or a description, quoted when plain style would change it."""
    if re.fullmatch(r"[A-Za-z0-9_./~+-][A-Za-z0-9_./~+ ()-]*", value) and not value.endswith(" "):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(
    models: list[FoundModel],
    gpus: list[tuple[str, int]],
    folders: list[Path],
    *,
    offload: bool,
    binary_found: bool = True,
    home: Path | None = None,
) -> str:
    """The manifest's text: comments say where each figure came from. `gpus`: (name, bytes) of
    the GPUs with a known size; `offload`: llama-server has a device to put layers on."""
    home = home or Path(os.path.expanduser("~"))

    def shown(p: Path) -> str:
        try:
            return "~/" + str(p.relative_to(home))
        except ValueError:
            return str(p)

    hub = [m.ref for m in models if m.ref]
    lines = [
        "# llmctl manifest, written by `llmctl init` from the GGUF files found in:"
        if folders
        else "# llmctl manifest, written by `llmctl init`",
        *[f"#   {shown(f)}" for f in folders],
        *(["# and from Hugging Face (`llmctl pull NAME` downloads one):"] if hub else []),
        *[f"#   {r}" for r in hub],
        "# Check it with `llmctl lint`, see a profile's memory with `llmctl estimate NAME`, the",
        "# largest context that fits with `llmctl fit NAME`, then `llmctl switch NAME` or",
        "# `llmctl serve`. The README lists every field.",
        "version: 1",
        "",
        "server:",
        "  host: 127.0.0.1",
        "  ports: 8100-8199       # one port per profile, so several run at once (llmctl load A B)",
    ]
    if not binary_found:
        lines.append(
            "  # binary: ~/llama.cpp/build/bin/llama-server   # none on PATH: say where it is"
        )
    lines.append("")
    if len(gpus) == 1:
        name, total = gpus[0]
        lines += [
            f"gpu:                    # {name}: {format_bytes(total)} (nvidia-smi)",
            f"  vram: {total // 1024**2}MiB",
            "  headroom: 1GiB        # the desktop, the browser, a second program",
            "",
        ]
    elif gpus:
        lines.append("gpu:                    # from nvidia-smi")
        for name, total in gpus:
            lines += [f"  - name: {name}", f"    vram: {total // 1024**2}MiB", "    headroom: 1GiB"]
        lines.append("")
    default = next((m.name for m in models if not (m.embedding or m.reranking)), None)
    lines += ["serve:", "  host: 127.0.0.1", "  port: 8080"]
    if default:
        lines.append(f"  default_profile: {default}")
    lines += [
        "",
        "defaults:",
        f"  n_gpu_layers: {'all' if offload else 0}"
        + (
            ""
            if gpus or not offload
            else "     # the GPU's size is unknown here: add gpu: {vram: ...} for estimates"
        )
        + ("" if offload else "       # no GPU found: the model runs in RAM"),
        "",
        "profiles:",
    ]
    for m in models:
        ctx = start_ctx(m)
        trained = f", trained for {_ctx_text(m.trained_ctx)}" if m.trained_ctx else ""
        lines += [
            f"  {m.name}:",
            f"    description: {_quote(f'{m.title} ({m.architecture}, {format_bytes(m.size_bytes)})')}",
            f"    model: {_quote(m.ref or shown(m.path))}",
            f"    ctx_size: {_ctx_text(ctx)}"
            + (f"           # {trained[2:]}" if m.trained_ctx and m.trained_ctx > ctx else ""),
        ]
        if m.mmproj is not None:
            lines.append(f"    mmproj: {_quote(shown(m.mmproj))}")
        if m.embedding:
            lines.append("    embedding: true")
        if m.reranking:
            lines.append("    reranking: true")
    return "\n".join(lines) + "\n"
