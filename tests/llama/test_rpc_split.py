"""The RPC split against the real thing: two `ggml-rpc-server`s on loopback and llama-server
started with llmctl's own command line (`--rpc a,b --device RPC0,RPC1 -ts ...`), on a tiny
generated model. What llama-server logs for each RPC device's buffers (`-lv 4`: model, KV,
compute) is compared with llmctl's plan for that device.

Needs a llama-server built with -DGGML_RPC=ON: $LLMCTL_TEST_LLAMA_SERVER_RPC (its folder holds
ggml-rpc-server too), else `LLMCTL_RPC=1 scripts/build-llama-server.sh` (cached after the first
build, in build-cpu-rpc beside the plain build).
"""

from __future__ import annotations

import os
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmctl.llama import rpc
from llmctl.llama.gguf import read_gguf
from llmctl.manifest.validate import load_manifest
from llmctl.memory.calibration import measure_reported
from llmctl.memory.estimate import mib
from llmctl.memory.measured import Reported
from llmctl.placement.placer import placement_request
from llmctl.placement.plan import DevicePlan
from llmctl.supervisor.devices import detect
from llmctl.testing.testmodels import write_tiny_model
from processes import stop_process

ROOT = Path(__file__).resolve().parents[2]
N_LAYER = 7


@pytest.fixture(scope="session")
def rpc_build() -> Path:
    """The folder with an RPC-enabled llama-server and ggml-rpc-server."""
    given = os.environ.get("LLMCTL_TEST_LLAMA_SERVER_RPC")
    if given:
        binary = Path(given)
    else:
        proc = subprocess.run(
            ["bash", str(ROOT / "scripts" / "build-llama-server.sh")],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "LLMCTL_RPC": "1"},
        )
        if proc.returncode != 0:
            pytest.fail(f"building llama-server with RPC failed:\n{proc.stderr[-4000:]}")
        binary = Path(proc.stdout.strip().splitlines()[-1])
    server = binary.parent / rpc.RPC_SERVER_BINARY
    for path in (binary, server):
        if not os.access(path, os.X_OK):
            pytest.fail(f"{path} is not an executable (LLMCTL_TEST_LLAMA_SERVER_RPC={given})")
    return binary.parent


def _listening(port: int) -> bool:
    """A TCP socket in LISTEN state on `port` (from /proc/net/tcp: no connection is made)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
                return True
    return False


def start_rpc_server(build: Path, port: int) -> subprocess.Popen[str]:
    """A ggml-rpc-server on 127.0.0.1:port, returned once it listens (or failed: its output)."""
    proc = subprocess.Popen(
        [str(build / rpc.RPC_SERVER_BINARY), "-H", "127.0.0.1", "-p", str(port), "-t", "1"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # it prints its banner before it binds, and only flushes on the first client: watch the
    # socket table instead (a condition, polled; the server binds within milliseconds)
    import time

    deadline = time.monotonic() + 60
    while not _listening(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            out = proc.communicate()[0] if proc.poll() is not None else ""
            stop_process(proc)
            pytest.fail(f"ggml-rpc-server on port {port} did not listen:\n{out[-3000:]}")
        time.sleep(0.01)
    return proc


@pytest.fixture
def rpc_servers(rpc_build: Path) -> Iterator[list[str]]:
    from processes import free_port

    ports = [free_port(), free_port()]
    procs = [start_rpc_server(rpc_build, p) for p in ports]
    try:
        yield [f"127.0.0.1:{p}" for p in ports]
    finally:
        for p in procs:
            stop_process(p)
            if p.stdout is not None:
                p.stdout.close()


def plan_and_log(
    tmp: Path, build: Path, servers: list[str], port: int, profile: str
) -> tuple[DevicePlan, Reported, str]:
    model = write_tiny_model(tmp / "m.gguf", n_layer=N_LAYER)
    a, b = servers
    path = tmp / "profiles.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            version: 1
            server: {{binary: {build / "llama-server"}, port: {port}}}
            gpu:
              - {{rpc: "{a}", vram: 3GiB, headroom: 0, overhead: 0}}
              - {{rpc: "{b}", vram: 2GiB, headroom: 0, overhead: 0}}
            profiles:
              split:
                model: {model}
                ctx_size: 1024
                parallel: 2
                rpc: [{a}, {b}]
              partial:
                model: {model}
                ctx_size: 1024
                parallel: 1
                n_gpu_layers: 5
                rpc: [{a}, {b}]
            """
        )
    )
    m = load_manifest(path)
    placed = placement_request(m, profile, detect(m.device_configs()).devices)
    plan, spec = placed.plans[0], placed.specs[0]
    reported, log = measure_reported([*spec.argv, "-nr"])  # as `llmctl estimate --measure`
    assert reported.loaded, log[-4000:]
    return plan, reported, log


def side_by_side(plan: DevicePlan, reported: Reported) -> dict[str, dict[str, tuple[float, float]]]:
    """Per RPC device: part -> (planned MiB, logged MiB)."""
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for share in plan.shares:
        endpoint = rpc.endpoint_of(share.device)
        if endpoint is None:
            continue
        buf = rpc.buffer_name(endpoint)
        out[share.device] = {
            "model": (mib(share.weights_bytes), reported.model.get(buf, 0.0)),
            "kv": (mib(share.kv_bytes), reported.kv.get(buf, 0.0)),
            "compute": (mib(share.compute_bytes), reported.compute.get(buf, 0.0)),
        }
    return out


def test_layers_split_over_two_rpc_servers_as_planned(
    tmp_path: Path, rpc_build: Path, rpc_servers: list[str], free_port: int
) -> None:
    plan, reported, _ = plan_and_log(tmp_path, rpc_build, rpc_servers, free_port, "split")
    # budgets 3 GiB and 2 GiB: -ts 3,2 puts 5 of the 8 units (7 blocks + output) on the first
    assert plan.launch_args()[:2] == ["--device", "RPC0,RPC1"]
    assert plan.tensor_split == (3.0, 2.0)
    assert [(s.layers, s.output) for s in plan.shares] == [(5, False), (2, True), (0, False)]
    figures = side_by_side(plan, reported)
    assert set(figures) == {f"RPC[{e}]" for e in rpc_servers}
    for device, parts in figures.items():
        for part in ("model", "kv"):  # exact, to the printed precision
            planned, logged = parts[part]
            assert planned == pytest.approx(logged, abs=0.011), (device, part, parts)
        # the whole graph's buffer on each device, plus the pipeline's copies of its inputs:
        # an upper bound, within 10% when every device runs full layers
        planned, logged = parts["compute"]
        assert logged <= planned + 0.011 and planned <= logged * 1.10, (device, parts)
    # what stays here: the token embedding, and the inputs the pipeline copies
    host = plan.shares[-1]
    assert host.device == "CPU"
    assert mib(host.weights_bytes) == pytest.approx(reported.model["CPU_Mapped"], abs=0.011)
    assert mib(host.compute_bytes) == pytest.approx(reported.compute["CPU"], rel=0.10)


def test_partial_offload_keeps_the_first_layers_here(
    tmp_path: Path, rpc_build: Path, rpc_servers: list[str], free_port: int
) -> None:
    plan, reported, _ = plan_and_log(tmp_path, rpc_build, rpc_servers, free_port, "partial")
    # -ngl 5: the output layer and the last 4 blocks go to the servers (3:2), 3 blocks stay here
    assert [(s.layers, s.output) for s in plan.shares] == [(3, False), (1, True), (3, False)]
    for device, parts in side_by_side(plan, reported).items():
        for part in ("model", "kv"):
            planned, logged = parts[part]
            assert planned == pytest.approx(logged, abs=0.011), (device, part, parts)
        planned, logged = parts["compute"]
        assert logged <= planned + 0.011, (device, parts)  # no pipeline: the graph's, at most
    host = plan.shares[-1]
    assert mib(host.kv_bytes) == pytest.approx(reported.kv["CPU"], abs=0.011)
    # CPU_Mapped is the span of the file mapped for the host's tensors: the tiny model writes the
    # output layer (on the second server) between the embedding and block 0, so it is inside
    tensors = read_gguf(tmp_path / "m.gguf").tensors
    output_layer = mib(sum(t.nbytes for t in tensors if t.name.startswith("output")))
    assert mib(host.weights_bytes) + output_layer == pytest.approx(
        reported.model["CPU_Mapped"], abs=0.011
    )
    assert reported.compute["CPU"] <= mib(host.compute_bytes) + 0.011
