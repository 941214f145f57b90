"""`llmctl pull hf://org/repo[:QUANT]`: download a hub model once, into llama.cpp's own cache.

Every split part and the mmproj sibling, with a progress bar, resumed after an interruption,
checked against the SHA-256 the hub lists (llmctl.hub.pull). A file already there is not
fetched again, whoever fetched it (`llama-server -hf`, huggingface-cli, an earlier pull).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from llmctl.cli.argv import parse
from llmctl.cli.output import print_json, run_command
from llmctl.errors import EXIT_OK

if TYPE_CHECKING:
    import typer


def run(
    ref: str, *, json_out: bool = False, mmproj: bool = True, manifest: str | None = None
) -> int:
    def body() -> int:
        from llmctl.hub.local import cache_dir as llama_cache_dir
        from llmctl.hub.pull import pull
        from llmctl.hub.refs import is_hub_ref, parse_ref
        from llmctl.term import format_bytes

        hub_ref = parse_ref(ref if is_hub_ref(ref) else _profile_ref(ref, manifest))

        def on_file(file: str, size: int, cached: bool) -> None:
            if not json_out:
                what = "already here" if cached else "downloading"
                sys.stderr.write(f"{file} ({format_bytes(size)}): {what}\n")

        got = pull(
            hub_ref,
            with_mmproj=mmproj,
            on_file=on_file,
            tqdm_class=_quiet_tqdm() if json_out else None,
        )
        if json_out:
            files: list[dict[str, Any]] = [
                {
                    "file": p.file,
                    "path": str(p.path),
                    "bytes": p.size,
                    "sha256": p.sha256,
                    "downloaded": p.downloaded,
                }
                for p in got
            ]
            print_json({"ref": ref, "cache": str(llama_cache_dir()), "files": files})
        else:
            for p in got:
                sys.stdout.write(f"{p.path}\n")
        return EXIT_OK

    return run_command(json_out, body)


def pull_if_missing(manifest: Any, name: str, *, quiet: bool) -> None:
    """`switch --pull`: download profile `name`'s hub model first when it is not here yet."""
    model = manifest.profiles[manifest.resolve(name)].model
    if not model.startswith("hf://"):
        return
    from llmctl.hub.local import local_model

    if local_model(model) is not None:
        return
    from llmctl.hub.pull import pull
    from llmctl.hub.refs import parse_ref
    from llmctl.term import format_bytes

    def on_file(file: str, size: int, cached: bool) -> None:
        if not quiet:
            sys.stderr.write(f"pulling {file} ({format_bytes(size)})\n")

    pull(parse_ref(model), on_file=on_file, tqdm_class=_quiet_tqdm() if quiet else None)


def _profile_ref(name: str, manifest: str | None) -> str:
    """The hub reference of profile `name`'s model (UsageError when it is a local file)."""
    from llmctl.errors import UsageError
    from llmctl.manifest.cache import load_manifest

    m = load_manifest(manifest)
    pname = m.resolve(name)
    model = m.profiles[pname].model
    if not model.startswith("hf://"):
        raise UsageError(
            f"profile {pname!r} runs a local file ({model}): there is nothing to pull",
            hint="give a hub model (`model: hf://org/repo:Q4_K_M`), or a reference: "
            "llmctl pull hf://org/repo:Q4_K_M",
        )
    return model


def _quiet_tqdm() -> Any:
    from huggingface_hub.utils import tqdm  # type: ignore[attr-defined]

    class Quiet(tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]

    return Quiet


def fast(args: list[str]) -> int | None:
    parsed = parse(
        args,
        flags={"--json": "json_out", "--no-mmproj": "no_mmproj"},
        options={"--manifest": ("manifest", str)},
        positional=(1, 1),
    )
    if parsed is None:
        return None
    opts = parsed[1]
    return run(
        parsed[0][0],
        json_out=opts.get("json_out", False),
        mmproj=not opts.get("no_mmproj"),
        manifest=opts.get("manifest"),
    )


def register(app: typer.Typer) -> None:
    import typer

    from llmctl.cli.options import json_option, manifest_option

    @app.command()
    def pull(
        ref: str = typer.Argument(
            ...,
            help="hf://org/repo[:QUANT], hf://org/repo/file.gguf, or a PROFILE whose model is one",
        ),
        json_out: bool = json_option(),
        no_mmproj: bool = typer.Option(False, "--no-mmproj", help="Not the mmproj sibling."),
        manifest: str | None = manifest_option(),
    ) -> None:
        """Download a Hugging Face model once, into llama.cpp's cache.

        Every split part and the mmproj sibling; resumed after an interruption; checked
        against the hub's SHA-256. HF_TOKEN, HF_ENDPOINT and HF_HUB_OFFLINE are honoured.
        """
        raise typer.Exit(run(ref, json_out=json_out, mmproj=not no_mmproj, manifest=manifest))
