"""Hugging Face references, `hf://org/repo[@rev][:QUANT]` or `hf://org/repo[@rev]/path/file.gguf`,
and llama.cpp's rules for choosing a repo's files (common/download.cpp, stated here once): the
quant tag of a file name, split parts `-0000N-of-0000M` as one model, which files are models, the
default tags Q4_K_M then Q8_0, and the mmproj sibling nearest in folder and quant bits.

Pure: no network, no hub library.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from llmctl.errors import UsageError
from llmctl.paths import HUB_SCHEME as SCHEME
from llmctl.paths import is_hub_model

DEFAULT_REVISION = "main"
DEFAULT_TAGS = ("Q4_K_M", "Q8_0")  # what llama-server -hf picks when no tag is given
# file names that are not models (llama.cpp's gguf_filename_is_model)
NOT_MODEL = ("mmproj", "imatrix", "mtp-", "eagle3-", "dflash-", "dspark-")

_REPO_PART = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_REF_RE = re.compile(
    rf"^(?P<repo>{_REPO_PART}/{_REPO_PART})(?:@(?P<rev>[A-Za-z0-9._/-]+?))?"
    r"(?::(?P<tag>[A-Za-z0-9_.-]+)|/(?P<file>.+\.gguf))?$"
)
_SPLIT_RE = re.compile(r"^(.+)-([0-9]{5})-of-([0-9]{5})$", re.IGNORECASE)
_TAG_RE = re.compile(r"[-.]([A-Z0-9_]+)$", re.IGNORECASE)


@dataclass(frozen=True)
class HubRef:
    """A model on the hub: a repo, a revision, and a quant tag or an exact file (or neither)."""

    repo: str
    revision: str = DEFAULT_REVISION
    tag: str | None = None
    file: str | None = None

    def __str__(self) -> str:
        rev = "" if self.revision == DEFAULT_REVISION else f"@{self.revision}"
        if self.file:
            return f"{SCHEME}{self.repo}{rev}/{self.file}"
        return f"{SCHEME}{self.repo}{rev}" + (f":{self.tag}" if self.tag else "")

    def with_file(self, file: str) -> HubRef:
        return HubRef(self.repo, self.revision, None, file)


SPELLINGS = (
    "hf://org/repo, hf://org/repo:Q4_K_M, hf://org/repo/file.gguf, "
    "with @revision after the repo to pin one (hf://org/repo@v1.0:Q8_0)"
)


def is_hub_ref(text: str) -> bool:
    return is_hub_model(text)


def ref_problem(text: str) -> str | None:
    """Why `text` is not a hub reference, or None when it is one."""
    body = text[len(SCHEME) :] if is_hub_ref(text) else text
    m = _REF_RE.match(body)
    if not is_hub_ref(text) or m is None or "//" in body or ".." in body:
        return f"{text!r} is not a Hugging Face model reference"
    return None


def parse_ref(text: str) -> HubRef:
    """The HubRef of `hf://...`; UsageError, with the accepted spellings, for anything else."""
    problem = ref_problem(text)
    m = _REF_RE.match(text[len(SCHEME) :])
    if problem is not None or m is None:
        raise UsageError(
            problem or f"{text!r} is not a Hugging Face model reference", hint=SPELLINGS
        )
    tag = m.group("tag")
    return HubRef(m.group("repo"), m.group("rev") or DEFAULT_REVISION, tag, m.group("file"))


def from_fields(hf: str, hf_file: str | None = None) -> str:
    """The `hf://` reference of a profile's `hf: org/repo[@rev][:QUANT]` and `hf_file: PATH`
    (llama-server's `-hf` and `-hff`); ValueError saying what is wrong."""
    text = hf if is_hub_ref(hf) else SCHEME + hf
    if ref_problem(text) is not None:
        raise ValueError(f"`hf` {hf!r} is not a Hugging Face repo (org/repo[@revision][:QUANT])")
    if hf_file:
        ref = parse_ref(text)
        if ref.tag or ref.file:
            what = f"the quant in `hf` (:{ref.tag})" if ref.tag else "the file in `hf`"
            raise ValueError(f"`hf_file` and {what} both choose the file; give one, not both")
        text = str(ref.with_file(hf_file.lstrip("/")))
        if ref_problem(text) is not None:
            raise ValueError(f"`hf_file` {hf_file!r} is not a .gguf file of the repo")
    return text


@dataclass(frozen=True)
class SplitInfo:
    prefix: str  # the name without .gguf and without -0000N-of-0000M (tag included)
    tag: str  # the quant tag, upper case ("" when the name has none)
    index: int
    count: int


def split_info(path: str) -> SplitInfo | None:
    """llama.cpp's reading of a GGUF file name; None when it does not end in .gguf."""
    if not path.endswith(".gguf"):
        return None
    prefix = path[: -len(".gguf")]
    index = count = 1
    m = _SPLIT_RE.match(prefix)
    if m:
        prefix, index, count = m.group(1), int(m.group(2)), int(m.group(3))
    t = _TAG_RE.search(prefix)
    return SplitInfo(prefix, t.group(1).upper() if t else "", index, count)


def quant_bits(path: str) -> int:
    """The first number of the quant tag (Q4_K_M -> 4, F16 -> 16), 0 without one."""
    info = split_info(path)
    m = re.search(r"[0-9]+", info.tag) if info else None
    return int(m.group()) if m else 0


def is_model_file(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return path.endswith(".gguf") and not any(word in name for word in NOT_MODEL)


def parts_of(files: list[str], first: str) -> list[str]:
    """Every part of the model whose first file is `first`, in order (just `first` if not split)."""
    info = split_info(first)
    if info is None or info.count <= 1:
        return [first]
    found: dict[int, str] = {}
    for f in files:
        other = split_info(f)
        if other and other.count == info.count and other.prefix == info.prefix:
            found[other.index] = f
    return [found[i] for i in sorted(found)]


def models(files: list[str]) -> list[str]:
    """The first file of each model among a repo's files (split parts after the first left out)."""
    out = []
    for f in files:
        info = split_info(f)
        if info is not None and is_model_file(f) and (info.count <= 1 or info.index == 1):
            out.append(f)
    return out


def find_model(files: list[str], tag: str | None) -> str | None:
    """The file `-hf repo:tag` loads: the first model whose name has `tag` followed by `.` or `-`
    (case-insensitive); with no tag, Q4_K_M, then Q8_0, then the first model."""
    candidates = models(files)
    for t in [tag] if tag else list(DEFAULT_TAGS):
        pattern = re.compile(re.escape(t) + r"[.-]", re.IGNORECASE)
        for f in candidates:
            if pattern.search(f):
                return f
    if not tag and candidates:
        return candidates[0]
    return None


def find_mmproj(files: list[str], model: str) -> str | None:
    """The mmproj GGUF beside `model`: deepest shared folder, then nearest quant bits."""
    model_dir = model.split("/")[:-1]
    bits = quant_bits(model)
    best: tuple[int, int] | None = None
    chosen = None
    for f in files:
        if not f.endswith(".gguf") or "mmproj" not in f:
            continue
        sib_dir = f.split("/")[:-1]
        if sib_dir != model_dir[: len(sib_dir)]:
            continue  # not in the model's folder or one above it
        key = (-len(sib_dir), abs(quant_bits(f) - bits))
        if best is None or key < best:
            best, chosen = key, f
    return chosen
