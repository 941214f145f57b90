"""typer options shared by the commands. Imported only when typer parses (not on fast paths)."""

from __future__ import annotations

from typing import Any

import typer

from llmctl.cli.completion import complete_profile

MANIFEST_HELP = (
    "The manifest to use (default: $LLMCTL_MANIFEST, ./profiles.yaml, "
    "$XDG_CONFIG_HOME/llmctl/profiles.yaml)."
)


def manifest_option() -> Any:
    return typer.Option(None, "--manifest", help=MANIFEST_HELP, metavar="PATH", show_default=False)


def json_option() -> Any:
    return typer.Option(False, "--json", help="Print JSON on stdout.")


def profile_argument() -> Any:
    return typer.Argument(
        ...,
        help="A profile name or alias.",
        metavar="PROFILE",
        autocompletion=complete_profile,
        show_default=False,
    )


def quiet_option() -> Any:
    return typer.Option(
        False, "--quiet", "-q", help="No progress output; only the result or the error."
    )


def lock_timeout_option() -> Any:
    return typer.Option(
        600.0,
        "--lock-timeout",
        help="Seconds to wait for another llmctl that is changing the server (then exit 3).",
        min=0,
        metavar="SECONDS",
    )


def pull_option() -> Any:
    return typer.Option(
        False,
        "--pull",
        help="Download a Hugging Face model not pulled yet first (else it is refused).",
    )
