"""`llmctl estimate -- ARGS`: the estimate of a llama-server command line (the arguments it does
not read are listed), with what this machine's llama-server would change about it."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from llmctl.cli.estimate.measure import calibration_argv
from llmctl.cli.estimate.render import estimate_text, explain_text, size
from llmctl.cli.output import print_json
from llmctl.errors import EXIT_OK, UsageError

if TYPE_CHECKING:
    from llmctl.memory.builds import BuildRules
    from llmctl.memory.estimate import Estimate


def argv_rules(llama_build: int | None) -> BuildRules:
    """The rules of `--llama-build`, else of the configured llama-server, else the newest."""
    from llmctl.llama.binary import find_binary
    from llmctl.memory.builds import rules_for
    from llmctl.memory.profile import binary_rules

    if llama_build:
        return rules_for(llama_build, "flag")
    return binary_rules(find_binary())


def estimate_for_argv(
    argv: list[str], llama_build: int | None = None
) -> tuple[Estimate, list[str]]:
    """The estimate of a llama-server command line and the arguments it did not read (raises
    UsageError), by the rules of `llama_build` (else the configured llama-server's)."""
    from llmctl.llama.gguf import read_gguf
    from llmctl.memory.cmdline import parse_llama_args
    from llmctl.memory.estimate import ModelSource, estimate, source_for_path
    from llmctl.memory.hparams import MetadataError

    parsed = parse_llama_args(argv)
    if not parsed.model:
        raise UsageError(
            "the llama-server command line has no -m/--model",
            hint="llmctl estimate -- -m model.gguf -c 8192 ...",
        )
    rules = argv_rules(llama_build)
    try:
        est = estimate(
            ModelSource.from_gguf(read_gguf(parsed.model)),
            parsed.options,
            mmproj=source_for_path(parsed.mmproj),
            draft=source_for_path(parsed.model_draft),
            rules=rules,
        )
    except MetadataError as err:
        raise UsageError(f"{parsed.model}: {err}") from None
    if parsed.rpc:
        est.notes.append(
            f"the offloaded layers are split over the RPC servers {', '.join(parsed.rpc)} and the"
            " local GPUs (by free memory, or -ts): `llmctl estimate PROFILE` shows each device's"
            " share, with the servers' budgets under gpu:"
        )
    if est.gpu_total_bytes:
        from llmctl.llama.binary import find_binary
        from llmctl.supervisor.devices import can_offload

        if can_offload(find_binary()) is False:
            ram = estimate(
                ModelSource.from_gguf(read_gguf(parsed.model)),
                parsed.options,
                gpu=False,
                mmproj=source_for_path(parsed.mmproj),
                draft=source_for_path(parsed.model_draft),
                rules=rules,
            )
            est.notes.append(
                "this machine's llama-server has no GPU to offload to (--list-devices lists"
                f" none): it keeps everything in RAM, {size(ram.host_total_bytes)} in all"
            )
    if parsed.fit_may_change:
        est.notes.append(
            "without both -c and -ngl, llama-server's --fit (on by default) may lower the context"
            " and GPU layers to what is free; pass them (or --fit off) for this estimate to hold"
        )
    return est, parsed.ignored


def estimate_argv(
    argv: list[str],
    json_out: bool,
    explain: bool = False,
    measure: bool = False,
    llama_build: int | None = None,
) -> int:
    est, ignored = estimate_for_argv(argv, llama_build)
    measured = calibration_argv(argv, est, measure, ask=explain or measure)
    if json_out:
        obj = est.to_json()
        obj["ignored_args"] = ignored
        if measured is not None:
            obj["measured"] = measured
        print_json([obj])
    else:
        sys.stdout.write(estimate_text(est, ignored))
        if explain or measure:
            sys.stdout.write(explain_text(est, measured) + "\n")
    return EXIT_OK
