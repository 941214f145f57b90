"""Measured memory: llama-server's buffer lines parsed, kept per (model, arguments, build) by a
real launch (`llmctl estimate --measure`), and shown beside the formula (`--explain`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmctl.cli import build_app
from llmctl.llama.binary import parse_version
from llmctl.memory.calibration import calibration_key, memory_args, on_free_port
from llmctl.memory.measured import CacheReport, parse_reported
from llmctl.testing.testmodels import write_tiny_model

runner = CliRunner()

# lines as llama-server prints them at -lv 4 (the default level prints none of them)
LOG = """\
0.01 I load_tensors:          AMX model buffer size =   383.75 MiB
0.01 I load_tensors:   CPU_Mapped model buffer size =   383.82 MiB
0.01 I llama_context:        CPU  output buffer size =     4.00 MiB
0.01 I llama_kv_cache:        CPU KV buffer size =     4.00 MiB
0.01 I llama_kv_cache:        CPU KV buffer size =    12.50 MiB
0.01 I sched_reserve:        CPU compute buffer size =    24.27 MiB
0.02 I load_hparams: model size:         10.00 MiB
0.02 I reserve_compute_meta:        CPU compute buffer size =     5.50 MiB
0.03 I load_tensors:   CPU_Mapped model buffer size =    50.00 MiB
0.03 I llama_kv_cache:        CPU KV buffer size =     2.00 MiB
0.03 I sched_reserve:        CPU compute buffer size =     3.00 MiB
"""


def test_buffer_lines_are_read_per_model() -> None:
    r = parse_reported(LOG)
    assert r.model == {"AMX": 383.75, "CPU_Mapped": 383.82}
    assert r.kv == {"CPU": 16.5} and r.output == {"CPU": 4.0} and r.compute == {"CPU": 24.27}
    assert r.mmproj_model == {"model": 10.0} and r.mmproj_compute == {"CPU": 5.5}
    assert r.draft is not None and r.draft.total("model") == 50.0
    assert r.draft.total("compute") == 3.0
    assert parse_reported("I srv  llama_server: model loaded\n").empty
    assert parse_reported("I srv  llama_server: model loaded\n").loaded
    assert not r.loaded


# a hybrid model's context: an attention cache and a recurrent state, each summed up; at -v,
# --fit's probe load prints its buffers first
CONTEXT_LOG = """\
0.00 I load_tensors:          CPU model buffer size =     0.00 MiB
0.00 I llama_kv_cache:        CPU KV buffer size =     0.00 MiB
0.00 I llama_kv_cache: size =    6.00 MiB (  1536 cells,   2 layers,  2/2 seqs), K (q8_0):    2.00 MiB, V (f16):    4.00 MiB
0.00 I sched_reserve:        CPU compute buffer size =    10.02 MiB
0.00 I common_params_fit_impl: will leave 24091 >= 1024 MiB of system memory, no changes needed
0.00 I common_fit_params: successfully fit params to free device memory
0.00 I load_tensors:   CPU_Mapped model buffer size =     7.09 MiB
0.00 I llama_context: n_ctx                 = 3072
0.00 I llama_context: n_ctx_seq             = 1536
0.00 I llama_kv_cache:        CPU KV buffer size =     6.00 MiB
0.00 I llama_kv_cache: size =    6.00 MiB (  1536 cells,   2 layers,  2/2 seqs), K (q8_0):    2.00 MiB, V (f16):    4.00 MiB
0.00 I llama_memory_recurrent:        CPU RS buffer size =     0.42 MiB
0.00 I llama_memory_recurrent: size =    0.42 MiB (     3 cells,   4 layers,  3 seqs  0 rs_seq), R (f32):    0.04 MiB, S (f32):    0.38 MiB, P (f32):    0.00 MiB
0.00 I sched_reserve:        CPU compute buffer size =    10.02 MiB
0.01 I llama_context: n_ctx                 = 512
0.01 I srv  llama_server: model loaded
"""


def test_caches_and_context_sizes_are_read_as_printed() -> None:
    r = parse_reported(CONTEXT_LOG)
    assert (r.n_ctx, r.n_ctx_seq, r.loaded) == (3072, 1536, True)  # the first context's
    assert r.caches == [
        CacheReport("attn", 6.0, 1536, 2, 2, 2, "q8_0", 2.0, "f16", 4.0),
        CacheReport("recurrent", 0.42, 3, 4, 3, None, "f32", 0.04, "f32", 0.38),
    ]
    assert r.kv == {"CPU": 6.42} and r.model == {"CPU_Mapped": 7.09} and r.draft is None


def test_a_measurement_listens_on_a_free_port() -> None:
    argv = on_free_port(
        ["llama-server", "-m", "m.gguf", "--port", "8080", "--port=8081", "-c", "9"]
    )
    assert argv[:-1] == ["llama-server", "-m", "m.gguf", "-c", "9", "--port"]
    assert int(argv[-1]) > 0


def test_key_ignores_what_does_not_change_memory(tmp_path: Path) -> None:
    model = write_tiny_model(tmp_path / "m.gguf")
    build = parse_version("version: 0.5.0-dev (build 7, commit abc123)")
    assert build is not None and build.build == 7 and build.commit == "abc123"
    a = ["llama-server", "-m", str(model), "-c", "4096", "--port", "8081", "--host", "x"]
    b = ["llama-server", "-m", str(model), "-c", "4096", "--port", "9999", "-lv", "4"]
    assert memory_args(a) == memory_args(b) == ["-m", str(model), "-c", "4096"]
    assert calibration_key(str(model), a, build) == calibration_key(str(model), b, build)
    assert calibration_key(str(model), a, build) != calibration_key(str(model), a, None)
    c = [*a[:4], "8192", *a[5:]]
    assert calibration_key(str(model), a, build) != calibration_key(str(model), c, build)


def test_measure_then_explain(tmp_path: Path, llama_server_bin: Path) -> None:
    model = write_tiny_model(tmp_path / "m.gguf")
    manifest = tmp_path / "profiles.yaml"

    def write(ctx: int) -> None:
        manifest.write_text(
            f"version: 1\nserver:\n  binary: {llama_server_bin}\nprofiles:\n  tiny:\n"
            f"    model: {model}\n    ctx_size: {ctx}\n    n_gpu_layers: 0\n"
            # no repacked weight copies (AMX, CPU_REPACK): the model buffer is the weights
            "    extra_args: [-nr]\n"
        )

    def run(*args: str) -> dict[str, object]:
        result = runner.invoke(
            build_app(), ["estimate", "tiny", "--manifest", str(manifest), "--json", *args]
        )
        assert result.exit_code == 0, result.output
        out: list[dict[str, object]] = json.loads(result.stdout)
        return out[0]

    write(2048)
    assert "measured" not in run("--explain")
    measured = run("--measure")["measured"]
    assert isinstance(measured, dict)
    parts = measured["parts"]
    assert abs(parts["kv"]["error"]) < 0.01 and "compute" in parts
    assert abs(parts["model"]["error"]) < 0.01
    assert "build 0" in str(measured["build"]) or measured["build"]
    # later estimates of the same profile show it, without asking llama-server again
    assert run()["measured"] == measured
    # other arguments: no measurement applies
    write(4096)
    assert "measured" not in run()


def test_measure_and_explain_a_command_line(
    tmp_path: Path, llama_server_bin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`estimate --measure/--explain -- ARGS` measure and explain the command line itself (they
    were ignored there), with the llama-server of $LLMCTL_LLAMA_SERVER."""
    from llmctl.cli import estimate as estimate_cli

    model = write_tiny_model(tmp_path / "m.gguf")
    argv = ["-m", str(model), "-c", "2048", "-ngl", "0", "-nr", "--port", "1"]
    monkeypatch.setenv("LLMCTL_LLAMA_SERVER", str(llama_server_bin))

    def run(*flags: str) -> dict[str, object]:
        result = runner.invoke(build_app(), ["estimate", "--json", *flags, "--", *argv])
        assert result.exit_code == 0, result.output
        out: list[dict[str, object]] = json.loads(result.stdout)
        return out[0]

    assert "measured" not in run("--explain")
    measured = run("--measure")["measured"]  # --port 1 replaced by a free port
    assert isinstance(measured, dict)
    assert abs(measured["parts"]["kv"]["error"]) < 0.01
    assert run()["measured"] == measured
    # the fast path (no typer) takes the same flags and prints the explanation
    result = runner.invoke(build_app(), ["estimate", "--explain", "--", *argv])
    assert "measured" in result.stdout and "compute =" in result.stdout
    assert estimate_cli.fast(["--explain", "--", *argv]) == 0


def test_measure_a_command_line_without_llama_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = write_tiny_model(tmp_path / "m.gguf")
    monkeypatch.setenv("LLMCTL_LLAMA_SERVER", "")
    monkeypatch.setenv("PATH", str(tmp_path))
    result = runner.invoke(build_app(), ["estimate", "--measure", "--", "-m", str(model)])
    assert result.exit_code != 0
    assert "--measure needs llama-server" in result.output
    assert "LLMCTL_LLAMA_SERVER" in result.output
    assert "Traceback" not in result.output
    # an estimate with --all and a command line is a usage error, not a silent choice
    result = runner.invoke(build_app(), ["estimate", "--all", "--", "-m", str(model)])
    assert result.exit_code == 2 and "--all" in result.output


def test_every_version_format_seen_in_2026_is_read() -> None:
    sdist = parse_version("version: 0.5.0-dev (build 0, commit unknown)\nbuilt with GNU 12.2.0")
    assert sdist is not None and (sdist.build, sdist.commit) == (0, "unknown")
    tag = parse_version("version: 9093 (b9093)\nbuilt with cc (Debian 12.2.0-14) for x86_64")
    assert tag is not None and (tag.version, tag.build, tag.commit) == ("b9093", 9093, "unknown")
    commit = parse_version("version: 11312 (1a2b3c4d)")
    assert commit is not None and (commit.build, commit.commit) == (11312, "1a2b3c4d")
    assert parse_version("llama-server, no version here") is None
