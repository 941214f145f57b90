"""The measured figures of `llmctl estimate` (`--measure`, `--explain`): a profile's or a command
line's measurement from the calibration store, beside the formula's; `--measure` launches
llama-server once first. Nothing measured and nothing asked: the measuring code is not imported."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llmctl.errors import LlmctlError
from llmctl.paths import is_hub_model

if TYPE_CHECKING:
    from llmctl.memory.calibration import Measurement
    from llmctl.memory.estimate import Estimate


def _repacked(buffer: str) -> bool:
    return "REPACK" in buffer or buffer == "AMX"


def _measured_json(est: Estimate, m: Measurement) -> dict[str, Any]:
    """The measured figures (MiB as printed) beside the formula's, and their differences."""
    from llmctl.memory.estimate import mib

    r = m.reported
    formula = {
        "model": mib(est.weights.bytes),
        "kv": mib(est.kv_bytes),
        "output": mib(est.output_bytes),
        "compute": mib(est.compute_bytes),
    }
    out: dict[str, Any] = {"build": m.build, "args": m.args, "buffers_mib": r.to_json()}
    diffs: dict[str, Any] = {}
    for part, value in formula.items():
        got = r.total(part)
        if part == "model":  # repacked copies (AMX, CPU_REPACK) are extra, not the weights
            got = round(sum(v for k, v in r.model.items() if not _repacked(k)), 2)
        if got:
            diffs[part] = {"measured_mib": got, "formula_mib": value, "error": value / got - 1}
    repacked = round(sum(v for k, v in r.model.items() if _repacked(k)), 2)
    if repacked:
        diffs["repacked"] = {"measured_mib": repacked, "formula_mib": 0.0, "error": -1.0}
    out["parts"] = diffs
    return out


def calibration(
    manifest: Any, name: str, est: Estimate, measure: bool, ask: bool
) -> dict[str, Any] | None:
    """The measurement of this profile (model file, arguments, build); with `measure`, a real
    launch first (llama-server at -lv 4 on a free port, stopped once the model is loaded)."""
    if not _may_have_measurement(measure, ask):
        return None  # nothing measured: no need for the measuring code (subprocess, hashlib)
    from llmctl.supervisor.launch import launch_spec

    spec = launch_spec(manifest, name)
    if is_hub_model(spec.model):  # not pulled: never launched here, so never measured
        if measure:
            from llmctl.supervisor.modelfile import not_pulled

            raise not_pulled(name, spec.model)
        return None
    return _measurement(
        est, spec.model, list(spec.argv), measure, ask, name, spec.env, spec.unset_env
    )


def calibration_argv(
    argv: list[str], est: Estimate, measure: bool, ask: bool
) -> dict[str, Any] | None:
    """_calibration for `estimate -- ARGS`: the command line run by this machine's llama-server
    ($LLMCTL_LLAMA_SERVER, else on PATH)."""
    if not _may_have_measurement(measure, ask):
        return None
    from llmctl.llama.binary import find_binary

    binary = find_binary()
    if binary is None:
        if not measure:
            return None  # no llama-server here: nothing can have been measured with it
        raise LlmctlError(
            "--measure needs llama-server: none in $LLMCTL_LLAMA_SERVER or on PATH",
            hint="set LLMCTL_LLAMA_SERVER to its path (`make llama-server` builds one)",
        )
    return _measurement(est, est.model, [binary, *argv], measure, ask, "this command line")


def _may_have_measurement(measure: bool, ask: bool) -> bool:
    from llmctl.paths import state_dir

    return measure or ask or (state_dir() / "calibration.json").exists()


def _measurement(
    est: Estimate,
    model: str,
    argv: list[str],
    measure: bool,
    ask: bool,
    what: str,
    env: dict[str, str] | None = None,
    unset_env: tuple[str, ...] | list[str] = (),
) -> dict[str, Any] | None:
    from llmctl.memory.calibration import CalibrationStore, calibration_key, measure_launch
    from llmctl.paths import state_dir

    store = CalibrationStore(state_dir() / "calibration.json")
    # the build is asked (llama-server --version) only when explaining or measuring
    build = store.build(argv[0], ask=ask)
    if measure:
        # measure() listens on a free port of its own, whatever --port says
        m = measure_launch(store, model, argv, build, env=env, unset_env=list(unset_env))
        if m is None:
            raise LlmctlError(
                f"llama-server did not report its buffers for {what}",
                hint="run it by hand (or `llmctl switch PROFILE`) to see why it does not load",
            )
    found = store.get(calibration_key(model, argv, build))
    return _measured_json(est, found) if found is not None else None
