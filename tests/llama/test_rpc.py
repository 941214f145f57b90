"""llama.cpp RPC servers in a profile (`rpc:`): validation, the --rpc argv round trip, the split of
the layers over the RPC devices and the local ones, lint and placement. Pure: no RPC server runs
here (tests/llama/test_rpc_split.py starts one)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from llmctl.cli import build_app
from llmctl.errors import ManifestError, UsageError
from llmctl.llama import rpc
from llmctl.llama.gguf import read_gguf
from llmctl.manifest.validate import load_manifest
from llmctl.memory.cmdline import parse_llama_args
from llmctl.memory.estimate import ModelSource, estimate
from llmctl.placement.placer import placement_request, plan_load, policy_devices
from llmctl.placement.plan import GpuTarget, plan_devices
from llmctl.placement.policy import Running, decide
from llmctl.supervisor.devices import detect
from llmctl.supervisor.launch import launch_spec
from llmctl.testing.testmodels import write_tiny_model

N_LAYER = 7  # + the output layer: 8 units to split
A = "192.168.1.20:50052"
B = "gpu-box.lan:50053"
runner = CliRunner()


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("rpc") / "m.gguf", n_layer=N_LAYER)


def write(tmp: Path, text: str) -> Path:
    path = tmp / "profiles.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def lint(path: Path) -> dict[str, Any]:
    result = runner.invoke(build_app(), ["lint", "manifest", str(path), "--json"])
    return dict(json.loads(result.stdout))


def problems(report: dict[str, Any], rule: str) -> list[dict[str, Any]]:
    return [p for p in report["problems"] if p["rule"] == rule]


def two_machines(tmp: Path, model: Path, extra: str = "") -> Path:
    """CUDA0 here, two RPC servers; `extra` adds profiles (indented by two spaces)."""
    path = write(
        tmp,
        f"""\
        version: 1
        gpu:
          - {{name: CUDA0, vram: 8GiB}}
          - {{rpc: "{A}", vram: 24GiB}}
          - {{rpc: "{B}", vram: 8GiB, overhead: 0}}
        profiles:
          big:
            model: {model}
            rpc: [{A}, {B}]
        """,
    )
    path.write_text(path.read_text() + extra)
    return path


# --- endpoints ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("192.168.1.20:50052", "192.168.1.20:50052"),
        (" gpu-box.lan:1 ", "gpu-box.lan:1"),
        ("localhost:0050052", "localhost:50052"),
    ],
)
def test_endpoint_is_host_colon_port(text: str, want: str) -> None:
    assert rpc.parse_endpoint(text) == want


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("192.168.1.20", "has no port"),
        (":50052", "is not a host name"),
        ("bad host:1", "is not a host name"),
        ("[::1]:50052", "is not a host name"),  # ggml-rpc splits at the first colon
        ("h:0", "from 1 to 65535"),
        ("h:70000", "from 1 to 65535"),
        ("h:port", "from 1 to 65535"),
        (50052, "host:port"),
    ],
)
def test_bad_endpoints_say_what_is_wrong(text: object, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        rpc.parse_endpoint(text)


def test_device_names_follow_ggml_rpc() -> None:
    assert rpc.device_key(A) == f"RPC[{A}]" and rpc.endpoint_of(f"RPC[{A}]") == A
    assert rpc.endpoint_of("CUDA0") is None
    assert rpc.device_name(1) == "RPC1"
    assert rpc.buffer_name(A) == f"RPC0[{A}]"


# --- the manifest: validation errors with file, line and profile -----------------------------


def test_bad_rpc_values_are_errors_at_their_line(tmp_path: Path, model: Path) -> None:
    path = write(
        tmp_path,
        f"""\
        version: 1
        gpu:
          - {{rpc: "{A}", vram: 24GiB}}
        profiles:
          p:
            model: {model}
            rpc:
              - {A}
              - 10.0.0.2
              - "bad host:1"
        """,
    )
    report = lint(path)
    schema = [p for p in problems(report, "schema") if p["profile"] == "p"]
    assert [(p["line"], p["message"].split(":")[0]) for p in schema] == [
        (9, "`rpc.1`"),
        (10, "`rpc.2`"),
    ]
    assert "has no port" in schema[0]["message"]
    assert "not a host name" in schema[1]["message"]
    with pytest.raises(ManifestError) as err:
        load_manifest(path)
    assert f"{path}:9" in err.value.message and "has no port" in err.value.message


def test_device_entries_name_a_local_device_or_an_rpc_server(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""\
        version: 1
        gpu:
          - {{name: CUDA0, rpc: "{A}"}}
          - {{vram: 8GiB}}
          - {{rpc: "{A}:1"}}
        profiles:
          p: {{model: m.gguf}}
        """,
    )
    report = lint(path)
    found = {p["line"]: p["message"] for p in problems(report, "schema")}
    assert "either `name`" in found[3] and "not both" in found[3]
    assert "needs `name`" in found[4] and "`rpc`" in found[4]
    assert "port" in found[5]
    assert not any("GpuConfig" in m or "list[" in m for m in found.values())


def test_gpu_of_neither_shape_is_one_error(tmp_path: Path) -> None:
    path = write(tmp_path, "version: 1\ngpu: 5\nprofiles:\n  p: {model: m.gguf}\n")
    schema = problems(lint(path), "schema")
    assert len(schema) == 1 and schema[0]["line"] == 2
    assert "a mapping (vram, headroom, overhead) or a list of devices" in schema[0]["message"]


def test_rpc_server_without_a_device_entry_is_an_error_saying_what_to_add(
    tmp_path: Path, model: Path
) -> None:
    path = write(
        tmp_path,
        f"""\
        version: 1
        gpu: {{vram: 8GiB}}
        profiles:
          p:
            model: {model}
            rpc: {A},{B}
        """,
    )
    found = problems(lint(path), "rpc-budget")
    assert [p["severity"] for p in found] == ["error", "error"]
    assert found[0]["profile"] == "p" and found[0]["line"] == 6
    assert f"RPC server {A} has no device under gpu:" in found[0]["message"]
    assert f"- {{rpc: {A}, vram: 24GiB}}" in found[0]["hint"]
    assert "list of devices" in found[0]["hint"]
    assert "ggml-rpc-server -H 192.168.1.20 -p 50052" in found[0]["hint"]
    with pytest.raises(ManifestError, match="has no device under gpu:"):
        load_manifest(path)


def test_rpc_device_without_budget_is_a_warning_and_repeats_an_error(
    tmp_path: Path, model: Path
) -> None:
    path = write(
        tmp_path,
        f"""\
        version: 1
        gpu:
          - {{rpc: "{A}"}}
        profiles:
          p:
            model: {model}
            rpc: [{A}, {A}]
        """,
    )
    report = lint(path)
    budget = problems(report, "rpc-budget")
    assert [(p["severity"], p["line"]) for p in budget] == [("warning", 3)]
    assert "has no `vram`" in budget[0]["message"]
    again = problems(report, "rpc")
    assert [(p["severity"], p["line"]) for p in again] == [("error", 7)]
    assert "listed twice" in again[0]["message"]


def test_schema_has_rpc_in_profiles_and_devices() -> None:
    from llmctl.manifest.schema import manifest_schema

    defs = manifest_schema()["$defs"]
    assert "rpc" in defs["Profile"]["properties"]
    assert "rpc" in defs["DeviceConfig"]["properties"]
    assert defs["DeviceConfig"]["anyOf"] == [{"required": ["name"]}, {"required": ["rpc"]}]


# --- the command line: --rpc, before --device, and back ---------------------------------------


def test_rpc_is_passed_before_the_plans_device_flag_and_reads_back(
    tmp_path: Path, model: Path
) -> None:
    m = load_manifest(two_machines(tmp_path, model))
    spec = placement_request(m, "big", detect(m.device_configs()).devices).specs[0]
    argv = list(spec.argv)
    assert argv[argv.index("--rpc") + 1] == f"{A},{B}"
    # llama-server names the RPC devices when it reads --rpc: --device must come after it
    assert argv.index("--rpc") < argv.index("--device")
    assert argv[argv.index("--device") + 1] == "RPC0,RPC1,CUDA0"
    parsed = parse_llama_args(argv)
    assert parsed.rpc == [A, B]
    assert not any(i.startswith("--rpc") for i in parsed.ignored)
    # without a device list there is no --device; --rpc comes from the profile alone
    plain = launch_spec(m, "big").argv
    assert plain[list(plain).index("--rpc") + 1] == f"{A},{B}"


def test_rpc_as_one_string_is_a_list(tmp_path: Path, model: Path) -> None:
    path = write(
        tmp_path,
        f"""\
        version: 1
        gpu:
          - {{rpc: "{A}", vram: 1GiB}}
        profiles:
          p: {{model: {model}, rpc: "{A}"}}
        """,
    )
    assert load_manifest(path).profiles["p"].rpc == [A]


def test_argv_reads_rpc_forms_and_refuses_bad_ones() -> None:
    assert parse_llama_args(["-m", "x", f"--rpc={A}"]).rpc == [A]
    assert parse_llama_args(["llama-server", "--rpc", f"{A},,{B}"]).rpc == [A, B]
    with pytest.raises(UsageError) as err:
        parse_llama_args(["-m", "x", "--rpc", "nohost"])
    assert "--rpc: 'nohost' has no port" in err.value.message
    assert err.value.hint is not None and "--rpc 192.168.1.20:50052" in err.value.hint
    with pytest.raises(UsageError, match="needs a value"):
        parse_llama_args(["-m", "x", "--rpc"])


def test_estimate_of_a_command_line_with_rpc_says_where_the_layers_go(model: Path) -> None:
    result = runner.invoke(
        build_app(), ["estimate", "--json", "--", "-m", str(model), "--rpc", A, "-c", "512"]
    )
    assert result.exit_code == 0, result.stdout
    obj = json.loads(result.stdout)[0]
    assert any(A in n and "RPC servers" in n for n in obj["notes"])
    assert obj["ignored_args"] == []
    bad = runner.invoke(build_app(), ["estimate", "--", "-m", str(model), "--rpc", "x"])
    assert bad.exit_code == 2 and "has no port" in bad.output


# --- the split -------------------------------------------------------------------------------


def _plan(model: Path, targets: list[GpuTarget], **kw: Any) -> Any:
    from llmctl.memory.options import LaunchOptions

    source = ModelSource.from_gguf(read_gguf(model))
    est = estimate(source, LaunchOptions(ctx_size=1024, parallel=1), overhead=0)
    return est, plan_devices(est, source, targets, **kw)


def test_layers_split_over_rpc_and_local_devices_by_their_shares(model: Path) -> None:
    targets = [
        GpuTarget(rpc.device_key(A), 0, 3.0, "RPC0"),
        GpuTarget("CUDA0", 0, 1.0),
    ]
    est, plan = _plan(model, targets)
    by = {s.device: s for s in plan.shares}
    # 8 units (7 blocks + output): cumulative cuts 0.75, 1.0 -> units 0-5 remote, 6-7 local
    assert (by[f"RPC[{A}]"].layers, by[f"RPC[{A}]"].output) == (6, False)
    assert (by["CUDA0"].layers, by["CUDA0"].output) == (1, True)
    assert by["CPU"].layers == 0 and by["CPU"].weights_bytes > 0  # the token embedding
    # KV follows its layer; nothing lost or counted twice
    per_layer = est.kv_bytes // N_LAYER
    assert by[f"RPC[{A}]"].kv_bytes == 6 * per_layer and by["CUDA0"].kv_bytes == per_layer
    assert sum(s.weights_bytes for s in plan.shares) == est.weights.bytes
    assert sum(s.kv_bytes for s in plan.shares) == est.kv_bytes
    # both hold layers: each has a compute buffer, with the pipeline's 3 more copies of its
    # inputs (every layer offloaded over 2 devices): the hidden state and the masks
    assert est.compute is not None
    inputs = 4 * est.compute.n_tokens * 256 + est.compute.masks  # n_embd 256
    want = est.compute_bytes + 3 * inputs
    assert by[f"RPC[{A}]"].compute_bytes == by["CUDA0"].compute_bytes == want
    # the host builds 4 copies of the masks (f32) beside the token embeddings
    assert by["CPU"].compute_bytes == 4 * 2 * est.compute.masks + 4 * est.compute.n_tokens * 256
    assert plan.launch_args() == [
        "--device",
        "RPC0,CUDA0",
        "-ngl",
        "8",
        "-sm",
        "layer",
        "-ts",
        "3,1",
    ]


def test_tensor_split_of_the_profile_wins_over_the_budgets(model: Path) -> None:
    targets = [
        GpuTarget(rpc.device_key(A), 0, 3.0, "RPC0"),
        GpuTarget(rpc.device_key(B), 0, 1.0, "RPC1"),
    ]
    _, plan = _plan(model, targets, tensor_split="1,1")
    assert [(s.layers, s.output) for s in plan.shares[:2]] == [(4, False), (3, True)]
    assert plan.launch_args()[:2] == ["--device", "RPC0,RPC1"]
    assert plan.launch_args()[-2:] == ["-ts", "1,1"]


def test_an_rpc_server_alone_takes_every_offloaded_layer(model: Path) -> None:
    _, plan = _plan(model, [GpuTarget(rpc.device_key(A), 0, 1.0, "RPC0")])
    assert [(s.device, s.layers, s.output) for s in plan.shares] == [
        (f"RPC[{A}]", N_LAYER, True),
        ("CPU", 0, False),
    ]
    assert plan.launch_args() == ["--device", "RPC0", "-ngl", "8"]


def test_partial_offload_keeps_first_layers_on_this_machine(model: Path) -> None:
    from dataclasses import replace

    from llmctl.memory.options import LaunchOptions

    source = ModelSource.from_gguf(read_gguf(model))
    est = estimate(source, LaunchOptions(ctx_size=1024, parallel=1, n_gpu_layers=3), overhead=0)
    plan = plan_devices(est, source, [GpuTarget(rpc.device_key(A), 0, 1.0, "RPC0")])
    assert [(s.layers, s.output) for s in plan.shares] == [(2, True), (5, False)]
    assert replace(plan).launch_args() == ["--device", "RPC0", "-ngl", "3"]


# --- placement: every choice includes the RPC devices; budgets per device ----------------------


def test_profile_plans_put_rpc_devices_first_in_every_choice(tmp_path: Path, model: Path) -> None:
    path = two_machines(tmp_path, model, f"  local:\n    model: {model}\n")
    m = load_manifest(path)
    devices = detect(m.device_configs()).devices
    big = placement_request(m, "big", devices)
    assert [p.gpus for p in big.plans] == [(f"RPC[{A}]", f"RPC[{B}]", "CUDA0")]
    plan = big.plans[0]
    # shares by usable GiB: 23.5, 8 (no overhead, same headroom), 7.5
    assert plan.tensor_split == (23.5, 7.5, 7.5)
    assert plan.launch_names == ("RPC0", "RPC1", "CUDA0")
    usage = plan.usage()
    assert set(usage) == {f"RPC[{A}]", f"RPC[{B}]", "CUDA0", "CPU"}
    assert usage[f"RPC[{A}]"] > usage[f"RPC[{B}]"]
    # a profile without rpc never lands on an RPC server
    local = placement_request(m, "local", devices)
    assert all(not any(g.startswith("RPC") for g in p.gpus) for p in local.plans)
    js = plan.to_json()
    assert [d["device"] for d in js["per_device"]][:2] == [f"RPC[{A}]", f"RPC[{B}]"]


def test_an_rpc_device_over_its_budget_is_refused_naming_it(tmp_path: Path, model: Path) -> None:
    path = write(
        tmp_path,
        f"""\
        version: 1
        gpu:
          - {{rpc: "{A}", vram: 100MiB, headroom: 0}}
        profiles:
          big:
            model: {model}
            rpc: [{A}]
        """,
    )
    m = load_manifest(path)
    devices = detect(m.device_configs()).devices
    decision, _ = plan_load(m, "big", {}, devices)
    assert decision.action == "refuse"
    assert decision.shortfall[0].device == f"RPC[{A}]"
    assert f"RPC[{A}] needs" in decision.reason
    found = problems(lint(path), "over-budget")
    assert len(found) == 1 and f"RPC[{A}]" in found[0]["message"] and found[0]["profile"] == "big"


def test_profiles_on_one_rpc_server_never_run_together(tmp_path: Path, model: Path) -> None:
    """A ggml-rpc-server serves one client at a time: a second llama-server would wait for it
    forever, so the first is unloaded even when the memory would hold both."""
    path = write(
        tmp_path,
        f"""\
        version: 1
        gpu:
          - {{rpc: "{A}", vram: 64GiB, headroom: 0}}
          - {{rpc: "{B}", vram: 64GiB, headroom: 0}}
        profiles:
          one: {{model: {model}, rpc: [{A}]}}
          two: {{model: {model}, rpc: [{B}, {A}]}}
          other: {{model: {model}, rpc: [{B}]}}
        """,
    )
    m = load_manifest(path)
    devices = detect(m.device_configs()).devices
    one = Running("one", placement_request(m, "one", devices).plans[0].usage(), reload_cost=1)
    two = placement_request(m, "two", devices).request
    decision = decide(policy_devices(devices), [one], two)
    assert decision.action == "start" and decision.evict == ("one",)
    # another server: no conflict
    other = placement_request(m, "other", devices).request
    assert decide(policy_devices(devices), [one], other).evict == ()
    # a pinned user of the server refuses the load, saying why
    pinned = Running("one", one.usage, pinned=True)
    refused = decide(policy_devices(devices), [pinned], two)
    assert refused.action == "refuse"
    assert f"RPC[{A}], which serves one llama-server at a time" in refused.reason


# --- lint on this machine: servers reachable, a llama-server that speaks RPC ------------------


def test_lint_warns_of_an_unreachable_server_and_not_of_a_listening_one(
    tmp_path: Path, model: Path, free_port: int
) -> None:
    import socket

    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        up = f"127.0.0.1:{listening.getsockname()[1]}"
        down = f"127.0.0.1:{free_port}"  # nothing listens there
        path = write(
            tmp_path,
            f"""\
            version: 1
            gpu:
              - {{rpc: "{up}", vram: 1GiB}}
              - {{rpc: "{down}", vram: 1GiB}}
            profiles:
              p:
                model: {model}
                rpc: [{up}, {down}]
            """,
        )
        found = problems(lint(path), "rpc-unreachable")
    assert [(p["severity"], p["line"]) for p in found] == [("warning", 8)]
    assert down in found[0]["message"] and "refused" in found[0]["message"].lower()
    assert f"ggml-rpc-server -H 127.0.0.1 -p {free_port}" in found[0]["hint"]


def test_lint_warns_when_the_binary_was_built_without_rpc(
    tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build = tmp_path / "bin"
    build.mkdir()
    binary = build / "llama-server"
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(0o755)
    (build / "libggml-base.so").write_text("")
    monkeypatch.setenv("LLMCTL_LLAMA_SERVER", str(binary))
    path = write(
        tmp_path,
        f"""\
        version: 1
        gpu: [{{rpc: "{A}", vram: 1GiB}}]
        profiles:
          p: {{model: {model}, rpc: [{A}]}}
        """,
    )
    found = problems(lint(path), "rpc-unsupported")
    assert len(found) == 1 and "RPC not supported in this build" in found[0]["message"]
    assert "LLMCTL_RPC=1 scripts/build-llama-server.sh" in found[0]["hint"]
    (build / "libggml-rpc.so").write_text("")
    assert problems(lint(path), "rpc-unsupported") == []
    assert rpc.build_has_rpc(str(tmp_path / "nowhere" / "llama-server")) is None


def test_fit_of_a_split_profile_points_at_the_per_device_figures(
    tmp_path: Path, model: Path
) -> None:
    path = two_machines(tmp_path, model)
    result = runner.invoke(build_app(), ["fit", "big", "--manifest", str(path)])
    assert result.exit_code == 2
    assert "split over RPC servers" in result.output and "llmctl estimate big" in result.output
    given = runner.invoke(build_app(), ["fit", "big", "--manifest", str(path), "--vram", "80GiB"])
    assert given.exit_code == 0, given.output
