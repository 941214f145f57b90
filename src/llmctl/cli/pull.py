"""`llmctl pull PROFILE|hf://org/repo[:QUANT]`: download a hub model once, into llama.cpp's cache.

Every split part and the mmproj sibling, with a progress bar, resumed after an interruption,
checked against the SHA-256 the hub lists (llmctl.hub.pull). A file already there is not
fetched again, whoever fetched it (`llama-server -hf`, huggingface-cli, an earlier pull).
`ensure_pulled` is what `switch` and `load` check before anything is stopped (`--pull`: pull).
"""

from __future__ import annotations

import sys
from pathlib import Path  # typer reads the annotations at run time
from typing import TYPE_CHECKING, Any

from llmctl.cli.argv import parse
from llmctl.cli.output import print_json, run_command
from llmctl.errors import EXIT_OK, UsageError
from llmctl.paths import is_hub_model

if TYPE_CHECKING:
    import typer

    from llmctl.hub.pull import Pulled
    from llmctl.manifest.model import Manifest


def profile_ref(m: Manifest, name: str) -> str:
    """The hub reference of profile `name` (UsageError for a profile of a local file)."""
    pname = m.resolve(name)
    model = m.profiles[pname].model
    if not is_hub_model(model):
        raise UsageError(
            f"profile {pname!r} runs the file {model}, not a Hugging Face model: nothing to pull",
            hint="`llmctl pull` takes a profile whose model is hf://org/repo:QUANT, or such a "
            "reference itself",
        )
    return str(model)


def pull_ref(ref: str, *, quiet: bool = False, mmproj: bool = True) -> list[Pulled]:
    """Download `ref` (progress on stderr unless `quiet`)."""
    from llmctl.hub.pull import pull
    from llmctl.hub.refs import parse_ref
    from llmctl.term import format_bytes

    def on_file(file: str, size: int, cached: bool) -> None:
        if not quiet:
            what = "already here:" if cached else "pulling"
            sys.stderr.write(f"{what} {file} ({format_bytes(size)})\n")

    return pull(
        parse_ref(ref),
        with_mmproj=mmproj,
        on_file=on_file,
        tqdm_class=_quiet_tqdm() if quiet else None,
    )


def ensure_pulled(m: Manifest, names: list[str], *, pull: bool, quiet: bool = False) -> None:
    """Every named profile's hub model is on this machine, or is pulled now (`pull`), or
    ModelNotPulled before anything is stopped. Profiles of local files cost one string test."""
    hub = [m.resolve(n) for n in names if is_hub_model(m.profiles[m.resolve(n)].model)]
    if not hub:
        return
    from llmctl.hub.local import find_local
    from llmctl.hub.refs import parse_ref
    from llmctl.supervisor.modelfile import not_pulled

    for name in hub:
        ref = str(m.profiles[name].model)
        if find_local(parse_ref(ref)) is not None:
            continue
        if not pull:
            raise not_pulled(name, ref)
        pull_ref(ref, quiet=quiet)


def run(
    what: str, *, manifest: str | Path | None = None, json_out: bool = False, mmproj: bool = True
) -> int:
    def body() -> int:
        from llmctl.hub.pull import llama_cache_dir

        if is_hub_model(what):
            ref = what
        else:
            from llmctl.manifest.cache import load_manifest

            ref = profile_ref(load_manifest(manifest), what)
        got = pull_ref(ref, quiet=json_out, mmproj=mmproj)
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
        manifest=opts.get("manifest"),
        json_out=opts.get("json_out", False),
        mmproj=not opts.get("no_mmproj"),
    )


def register(app: typer.Typer) -> None:
    import typer

    from llmctl.cli.completion import complete_profile
    from llmctl.cli.options import json_option, manifest_option

    @app.command()
    def pull(
        what: str = typer.Argument(
            ...,
            help="A profile whose model is on Hugging Face, or hf://org/repo[:QUANT], "
            "hf://org/repo/file.gguf",
            metavar="PROFILE|REF",
            autocompletion=complete_profile,
        ),
        manifest: Path | None = manifest_option(),
        json_out: bool = json_option(),
        no_mmproj: bool = typer.Option(False, "--no-mmproj", help="Not the mmproj sibling."),
    ) -> None:
        """Download a Hugging Face model once, into llama.cpp's cache.

        Every split part and the mmproj sibling; resumed after an interruption; checked
        against the hub's SHA-256. HF_TOKEN, HF_ENDPOINT and HF_HUB_OFFLINE are honoured.
        """
        raise typer.Exit(run(what, manifest=manifest, json_out=json_out, mmproj=not no_mmproj))
