"""`llmctl estimate PROFILE ... | --all`: each profile's estimate, per-device plans, measurement
and (`--engine`) engine plan; a profile that cannot be estimated is reported and the others still
are (exit status 1)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmctl.cli.estimate.measure import calibration
from llmctl.cli.estimate.render import estimate_text, explain_text, plans_text
from llmctl.cli.output import error_json, error_lines, print_json
from llmctl.errors import EXIT_FAILED, EXIT_OK, LlmctlError, UsageError
from llmctl.term import BOLD, RED, style

if TYPE_CHECKING:
    from llmctl.placement.plan import DevicePlan


def _device_plans(manifest: Any, name: str) -> list[DevicePlan]:
    """The profile's per-device plans, one per choice of devices (llmctl.placement.plan)."""
    from llmctl.placement.placer import placement_request
    from llmctl.supervisor.devices import detect

    try:
        report = detect(manifest.device_configs())
        return placement_request(manifest, name, report.devices).plans
    except LlmctlError:
        return []


def estimate_profiles(
    names: list[str],
    all_: bool,
    manifest_path: str | Path | None,
    json_out: bool,
    explain: bool = False,
    measure: bool = False,
    engine: bool = False,
    llama_build: int | None = None,
) -> int:
    from llmctl.manifest.cache import load_manifest
    from llmctl.memory.hparams import MetadataError
    from llmctl.memory.profile import build_rules, estimate_profile

    if not all_ and not names:
        raise UsageError(
            "name a profile, or give --all",
            hint="llmctl estimate PROFILE, llmctl estimate --all, "
            "or llmctl estimate -- -m model.gguf ...",
        )
    manifest = load_manifest(manifest_path)
    chosen = list(manifest.profiles) if all_ else [manifest.resolve(n) for n in names]
    rules = build_rules(manifest, llama_build)
    results: list[dict[str, Any]] = []
    failed = 0
    for name in chosen:
        profile = manifest.profiles[name]
        try:
            try:
                found = estimate_profile(manifest, name, network=True, rules=rules)
            except MetadataError as err:
                raise LlmctlError(str(err), hint="check the metadata block") from None
            if found is None:
                raise LlmctlError(
                    f"model file {profile.model} is missing",
                    hint="download it, or add a metadata: block to the profile for an estimate",
                )
            est = found
        except LlmctlError as err:
            # one profile that cannot be estimated does not hide the others
            failed += 1
            results.append(
                {"profile": name, "model": profile.model, "ok": False, "error": error_json(err)}
            )
            if not json_out:
                sys.stdout.write(f"{style(name, BOLD)}  {style('cannot estimate', RED)}\n")
                sys.stdout.write("".join(f"{line}\n" for line in error_lines(err, indent="  ")))
                sys.stdout.write("\n")
            continue
        measured = calibration(manifest, name, est, measure, ask=explain or measure)
        obj = est.to_json()
        if measured is not None:
            obj["measured"] = measured
        plans = _device_plans(manifest, name)
        obj["plans"] = [p.to_json() for p in plans]
        engine_obj = None
        if engine:
            from llmctl.cli.estimate.engine import engine_report

            engine_obj = engine_report(manifest, name, est)
        if engine_obj is not None:
            obj["engine"] = engine_obj
        results.append(obj)
        if not json_out:
            sys.stdout.write(estimate_text(est))
            sys.stdout.write(plans_text(plans))
            if engine_obj is not None:
                from llmctl.cli.estimate.engine import engine_text

                sys.stdout.write(engine_text(engine_obj))
            if explain or measure:
                sys.stdout.write(explain_text(est, measured) + "\n")
            elif measured is not None:
                d = measured["parts"].get("compute")
                if d:
                    sys.stdout.write(
                        f"  measured compute {d['measured_mib']:.2f} MiB (formula "
                        f"{d['error']:+.1%}); `--explain` for every buffer\n\n"
                    )
    if json_out:
        print_json(results)
    return EXIT_FAILED if failed else EXIT_OK
