"""`llmctl init`: a first manifest from the GGUF files on this machine, or from Hugging Face
models named as `hf://org/repo:QUANT` (read from their headers; nothing is downloaded)."""

from __future__ import annotations

import os
import sys
from pathlib import Path  # typer reads the annotations at run time
from typing import TYPE_CHECKING, Any

from llmctl.cli.argv import parse
from llmctl.cli.output import print_json, run_command, table
from llmctl.errors import EXIT_INPUT, EXIT_OK, LlmctlError, UsageError
from llmctl.term import BOLD, DIM, GREEN, YELLOW, style

if TYPE_CHECKING:
    import typer

    from llmctl.manifest.starter import FoundModel, Scan


def default_output() -> Path:
    from llmctl.paths import config_dir

    return config_dir() / "profiles.yaml"


def _gpus() -> tuple[list[tuple[str, int]], bool, str | None]:
    """(name, total bytes) of each NVIDIA GPU nvidia-smi lists; whether llama-server may offload
    at all (supervisor.devices.can_offload); and a warning when nvidia-smi failed."""
    from llmctl.llama.binary import find_binary
    from llmctl.supervisor.devices import can_offload, nvidia_smi

    found, warning = nvidia_smi()
    gpus = sorted(((name, total) for name, (total, _free) in found.items()), key=lambda g: g[0])
    offload = bool(gpus) or bool(can_offload(find_binary()))
    return gpus, offload, warning


def _write(output: Path, text: str, force: bool) -> Path | None:
    """Write the manifest once it validates; the file it replaces (with --force) is kept as
    .bak. Returns that backup's path."""
    from llmctl.manifest.validate import check_manifest

    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
        tmp.write_text(text, encoding="utf-8")
    except OSError as err:
        raise LlmctlError(
            f"cannot write {output}: {err.strerror or err}",
            hint="choose another file with --output PATH",
        ) from None
    try:
        _, problems = check_manifest(tmp)
        errors = [p for p in problems if p.severity == "error"]
        if errors:  # a file llmctl itself cannot read is never left behind
            raise LlmctlError(
                f"the manifest written for these models does not validate: {errors[0].message}",
                hint="please report this; pass folders one at a time to find the model",
            )
        backup = None
        if output.exists() and force:
            backup = output.with_name(output.name + ".bak")
            os.replace(output, backup)
        os.replace(tmp, output)
        return backup
    finally:
        tmp.unlink(missing_ok=True)


def _shadowing(target: Path) -> str | None:
    """What other commands would read instead of the manifest just written, said as a user
    would find it ($LLMCTL_MANIFEST, ./profiles.yaml), or None when they read this one."""
    from llmctl.errors import ManifestError
    from llmctl.manifest.discover import find_manifest

    try:
        found = find_manifest()
    except ManifestError:
        return None
    if found.resolve() == target.resolve():
        return None
    if os.environ.get("LLMCTL_MANIFEST"):
        return f"LLMCTL_MANIFEST={found}"
    return f"./{found}"


def _add_hub_models(found: Scan, refs: list[str]) -> None:
    """A profile for each hub model, from its header (the pulled file, else range reads)."""
    if not refs:
        return
    from llmctl.hub.source import hub_headers
    from llmctl.manifest.starter import from_header

    names = {m.name for m in found.models}
    for ref in refs:
        headers = hub_headers(ref)
        local = headers.local
        if local is not None:
            file, size = local.path.name, sum(p.stat().st_size for p in local.parts)
        else:
            file, size = str(headers.gguf.paths[0]), headers.gguf.file_size
        found.models.append(from_header(ref, file, headers.gguf, size, names))


def _summary(models: list[FoundModel]) -> list[str]:
    from llmctl.manifest.starter import start_ctx
    from llmctl.term import format_bytes

    rows = []
    for m in models:
        kind = "embedding" if m.embedding else "reranking" if m.reranking else ""
        extra = ", ".join(x for x in (kind, "mmproj" if m.mmproj else "") if x)
        rows.append(
            [
                m.name,
                m.architecture,
                format_bytes(m.size_bytes),
                str(start_ctx(m)),
                extra,
            ]
        )
    return table(rows, header=["profile", "architecture", "file", "ctx", ""])


def run(
    folders: list[str],
    *,
    output: str | Path | None = None,
    force: bool = False,
    json_out: bool = False,
) -> int:
    def body() -> int:
        from llmctl.manifest.starter import Scan, model_folders, render, scan
        from llmctl.paths import is_hub_model

        refs = [f for f in folders if is_hub_model(f)]
        paths = [f for f in folders if not is_hub_model(f)]

        target = Path(output) if output is not None else default_output()
        if target.is_dir():
            raise UsageError(f"{target} is a folder", hint="--output names the file to write")
        if target.exists() and not force:
            raise UsageError(
                f"{target} exists; llmctl init does not replace a manifest",
                hint="--force replaces it (the old file is kept as "
                f"{target.name}.bak), or --output PATH writes another one",
            )
        if paths:
            roots = [Path(os.path.expanduser(f)).absolute() for f in paths]
            missing = [str(r) for r in roots if not r.is_dir()]
            if missing:
                raise UsageError(
                    f"no such folder: {', '.join(missing)}",
                    hint="name folders that hold .gguf files, or none to search the usual places",
                )
        else:
            roots = [] if refs else model_folders()
        found = scan(roots) if roots else Scan()
        _add_hub_models(found, refs)
        if not found.models:
            searched = ", ".join(str(r) for r in roots)
            raise LlmctlError(
                f"no GGUF model found in {searched}",
                hint="llmctl init FOLDER names where your .gguf files are; `llmctl demo` "
                "fetches a small model to try llmctl with",
                exit_code=EXIT_INPUT if folders else 1,
            )
        gpus, offload, warning = _gpus()
        if warning and not json_out:
            sys.stderr.write(f"warning: {warning}; no gpu: section written\n")
        from llmctl.llama.binary import find_binary

        binary_found = find_binary() is not None
        if not binary_found and not json_out:
            sys.stderr.write(
                "warning: llama-server is not on PATH; set server.binary in the manifest "
                "or LLMCTL_LLAMA_SERVER\n"
            )
        text = render(
            found.models, gpus, found.searched, offload=offload, binary_found=binary_found
        )
        backup = _write(target, text, force)
        shadow = _shadowing(target)
        if json_out:
            out: dict[str, Any] = {
                "ok": True,
                "manifest": str(target),
                "backup": str(backup) if backup else None,
                "shadowed_by": shadow,
                "searched": [str(p) for p in found.searched],
                "skipped": found.skipped,
                "gpus": [{"name": n, "total_bytes": t} for n, t in gpus],
                "n_gpu_layers": "all" if offload else 0,
                "profiles": [
                    {
                        "profile": m.name,
                        "model": m.ref or str(m.path),
                        "architecture": m.architecture,
                        "size_bytes": m.size_bytes,
                        "trained_ctx": m.trained_ctx,
                        "embedding": m.embedding,
                        "reranking": m.reranking,
                        "mmproj": str(m.mmproj) if m.mmproj else None,
                    }
                    for m in found.models
                ],
            }
            print_json(out)
            return EXIT_OK
        lines = _summary(found.models)
        for s in found.skipped:
            lines.append(style(f"skipped {s}", DIM))
        n = len(found.models)
        lines.append("")
        lines.append(
            f"{style('wrote', GREEN)} {style(str(target), BOLD)}: {n} profile{'s' * (n != 1)}"
            + (f" (the old file is {backup})" if backup else "")
        )
        first = found.models[0].name
        manifest_arg = "" if output is None and shadow is None else f" --manifest {target}"
        if shadow is not None:
            lines.append(
                style(
                    f"note: {shadow} comes before this file here; the commands below name it",
                    YELLOW,
                )
            )
        if found.models[0].ref:
            lines.append(
                style(
                    f"next: llmctl estimate {first}{manifest_arg} (does it fit?); "
                    f"llmctl pull {first}{manifest_arg}; llmctl switch {first}{manifest_arg}",
                    DIM,
                )
            )
            sys.stdout.write("".join(line + "\n" for line in lines))
            return EXIT_OK
        local = [m.name for m in found.models if not m.ref]
        start = (
            f"llmctl load {' '.join(local[:2])}{manifest_arg} (side by side)"
            if len(local) > 1
            else f"llmctl switch {first}{manifest_arg}"
        )
        lines.append(
            style(
                f"next: llmctl estimate --all{manifest_arg}; {start}; or llmctl serve{manifest_arg}",
                DIM,
            )
        )
        sys.stdout.write("".join(line + "\n" for line in lines))
        return EXIT_OK

    return run_command(json_out, body)


def fast(args: list[str]) -> int | None:
    """`init [FOLDER...] [--output P] [--force] [--json]`."""
    parsed = parse(
        args,
        flags={"--json": "json_out", "--force": "force"},
        options={"--output": ("output", str), "-o": ("output", str)},
        positional=(0, 100),
    )
    return None if parsed is None else run(parsed[0], **parsed[1])


def register(app: typer.Typer) -> None:
    import typer

    from llmctl.cli.options import json_option

    @app.command("init")
    def init_cmd(
        folders: list[str] | None = typer.Argument(
            None,
            help="Folders to search (default: ~/models, llama.cpp's and the Hugging Face cache, "
            "LM Studio's models), or Hugging Face models: hf://org/repo:Q4_K_M.",
            metavar="FOLDER|hf://REF",
            show_default=False,
        ),
        output: Path | None = typer.Option(
            None,
            "--output",
            "-o",
            help="The manifest to write (default: $XDG_CONFIG_HOME/llmctl/profiles.yaml).",
        ),
        force: bool = typer.Option(
            False, "--force", help="Replace an existing manifest (kept as .bak)."
        ),
        json_out: bool = json_option(),
    ) -> None:
        """Write a first manifest from the GGUF files on this machine (or Hugging Face models).

        One profile per model, named after its file, at 8K context (or the trained context when
        smaller); a matching mmproj in the same folder is attached; the GPU budget comes from
        nvidia-smi. Refuses to replace an existing manifest without --force.
        """
        raise typer.Exit(run(list(folders or []), output=output, force=force, json_out=json_out))
