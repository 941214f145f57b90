"""Launch logs in JSON lines (`--log-jsonl`): every reader sees text, and every launch records
the engine's memory plan (llama/logline.py, supervisor/logs.py, supervisor/probe.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import processes
from llmctl import paths
from llmctl.llama.logline import decode_text, event_type, text_lines
from llmctl.supervisor.launch import LaunchSpec
from llmctl.supervisor.lifecycle import Supervisor
from llmctl.supervisor.logs import LogFollower, error_line, tail_lines
from llmctl.supervisor.state import read_servers
from llmctl.testing.testmodels import write_tiny_model
from supervisor_helpers import real_spec

ENTRY = '{"type":"log","time":61234567,"level":"error","msg":"srv  load_model: failed\\nsecond\\n"}'
PLAN = '{"type":"fit_memory_breakdown","data":{"unit":"MiB","rows":[{"kind":"host","name":"Host","self":7,"model":2,"context":0,"compute":4}]}}'


def test_a_json_entry_reads_as_the_text_form_and_events_are_not_text() -> None:
    assert text_lines(ENTRY) == ["1.01.234.567 E srv  load_model: failed", "1.01.234.567 E second"]
    assert text_lines(PLAN) == [] and event_type(PLAN) == "fit_memory_breakdown"
    assert event_type(ENTRY) is None
    for raw in ("0.00.001.111 I text line", '{"type": broken', "[1, 2]", '{"type":"log"}'):
        assert text_lines(raw) in ([raw], []), raw
    assert text_lines('{"type":"log","time":-5,"level":7,"msg":"odd"}') == ["0.00.000.000 I odd"]
    assert decode_text(f"a\n{ENTRY}\n{PLAN}") == "a\n" + "\n".join(text_lines(ENTRY))


def test_followers_and_tails_give_text_and_keep_the_plan(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text(f"# llmctl: profile p\n{ENTRY}\n{PLAN}\n0.00.002.000 I plain\n")
    follower = LogFollower(log)
    lines, grew = follower.poll()
    follower.close()
    assert grew and lines == [*text_lines(ENTRY), "0.00.002.000 I plain"]
    assert follower.plan_line == PLAN
    assert tail_lines(log, 2) == [text_lines(ENTRY)[1], "0.00.002.000 I plain"]
    assert error_line(lines) == text_lines(ENTRY)[0]  # the level prefix is found again


# b9093 with `-mg 0` on a machine with no GPU: no level prefixes, and the lines after the cause
# name an error too
B9093_MAIN_GPU = """\
common_params_fit_impl: getting device memory data for initial parameters:
llama_prepare_model_devices: invalid value for main_gpu: 0 (available devices: 0)
llama_model_load_from_file_impl: failed to load model
common_fit_params: encountered an error while trying to fit params to free device memory: failed to load model
common_init_from_params: failed to load model '/m/tiny.gguf'
srv    load_model: failed to load model, '/m/tiny.gguf'
main: exiting due to model loading error""".splitlines()


def test_the_cause_comes_before_the_lines_that_follow_any_failed_load() -> None:
    assert error_line(B9093_MAIN_GPU) == B9093_MAIN_GPU[1]
    assert error_line(B9093_MAIN_GPU[2:]) == B9093_MAIN_GPU[2]  # no cause: the first of them
    pinned = ["0.00.010.000 E gguf_init_from_file: failed to open GGUF file 'x' (No such file)",
              "0.00.010.001 E srv    load_model: failed to load model, 'x'"]  # fmt: skip
    assert error_line(pinned) == pinned[0]


def _llmctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmctl", *args], capture_output=True, text=True, timeout=60
    )


def test_a_real_launch_logs_json_records_its_plan_and_reads_as_text(
    tmp_path: Path, llama_server_bin: Path
) -> None:
    """With --log-jsonl where the build has it; a build without it (b9093) logs text, and the
    launch's plan is read from the memory table in that text."""
    from llmctl.llama.binary import known_flags

    jsonl = "--log-jsonl" in (known_flags(str(llama_server_bin)) or ())
    model = write_tiny_model(tmp_path / "tiny.gguf", arch="llama")
    spec = real_spec(llama_server_bin, model, processes.free_port(), "tiny")
    sup = Supervisor(paths.state_dir(), lock_timeout=30)
    try:
        res = sup.switch(spec)
        assert res.ready, res.error
        rec = read_servers(sup.state_dir)["tiny"]
        assert ("--log-jsonl" in rec.argv) == jsonl
        assert rec.config_hash == spec.config_hash  # llmctl's own flags are not the profile's
        assert sup.switch(spec).noop  # so the same profile is still a no-op
        plan = rec.extra["engine_plan"]
        assert plan["source"] == "engine plan" and plan["by_device_mib"], plan
        from llmctl.supervisor.probe import known_plan_for

        assert known_plan_for(spec) is not None  # kept as a probe keeps it
        raw = Path(rec.log).read_text()
        assert ('{"type":"log"' in raw) == jsonl
        shown = _llmctl("logs", "-n", "200")
        assert shown.returncode == 0, shown.stderr
        assert "model loaded" in shown.stdout and '{"type"' not in shown.stdout
        assert json.loads(_llmctl("status", "--json").stdout)["running"] is True
        ps = _llmctl("ps")
        assert "engine plan" in ps.stdout, ps.stdout  # what the launch itself stated
        ps_json = json.loads(_llmctl("ps", "--json").stdout)
        assert ps_json["servers"][0]["engine_plan"] == plan
    finally:
        sup.stop()


@pytest.mark.parametrize("own", [["-lv", "4"], ["--log-file", "x.log"]])
def test_a_profile_with_its_own_log_settings_keeps_a_text_log(
    tmp_path: Path, llama_server_bin: Path, own: list[str]
) -> None:
    from llmctl.llama.binary import known_flags
    from llmctl.supervisor.spawn import with_log_format

    argv = (str(llama_server_bin), "-m", "m.gguf", *own)
    spec = LaunchSpec(profile="p", argv=argv, env={}, host="127.0.0.1", port=1)
    assert with_log_format(spec) == spec
    plain = LaunchSpec(profile="p", argv=argv[:3], env={}, host="127.0.0.1", port=1)
    if "--log-jsonl" in (known_flags(str(llama_server_bin)) or ()):
        assert with_log_format(plain).argv[-1] == "--log-jsonl"
    else:  # a build without it keeps its text log
        assert with_log_format(plain) == plain


def test_a_keep_kv_profile_switched_to_again_is_a_noop(
    tmp_path: Path, llama_server_bin: Path
) -> None:
    from llmctl.supervisor.launch import KeepKv

    model = write_tiny_model(tmp_path / "tiny.gguf", arch="llama")
    keep = KeepKv(1 << 20, 1 << 24, 3600.0, 30.0)
    spec = real_spec(llama_server_bin, model, processes.free_port(), "kept", keep_kv=keep)
    sup = Supervisor(paths.state_dir(), lock_timeout=30)
    try:
        first = sup.switch(spec)
        assert first.ready, first.error
        again = sup.switch(spec)
        assert again.noop and again.pid == first.pid
    finally:
        sup.stop()


def test_a_real_launch_records_the_gpu_memory_nvidia_smi_says_it_holds(
    tmp_path: Path, llama_server_bin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On NVIDIA, a ready server's used memory (CUDA context included) is recorded with the
    launch and kept as its least need: a FAKE nvidia-smi lists every llama-server at 321 MiB."""
    smi = tmp_path / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\n"
        'case "$1" in\n'
        "  --query-gpu=index,uuid) echo '0, GPU-aaa';;\n"
        "  --query-compute-apps=pid,gpu_uuid,used_memory)\n"
        "    for d in /proc/[0-9]*; do\n"
        '      [ "$(cat $d/comm 2>/dev/null)" = llama-server ] && echo "${d#/proc/}, GPU-aaa, 321"\n'
        "    done;;\n"
        "esac\n"
        "exit 0\n"
    )
    smi.chmod(0o755)
    monkeypatch.setenv("LLMCTL_NVIDIA_SMI", str(smi))
    model = write_tiny_model(tmp_path / "tiny.gguf", arch="llama")
    spec = real_spec(llama_server_bin, model, processes.free_port(), "tiny")
    sup = Supervisor(paths.state_dir(), lock_timeout=30)
    try:
        res = sup.switch(spec)
        assert res.ready, res.error
        rec = read_servers(sup.state_dir)["tiny"]
        assert rec.extra["gpu_used"] == {"source": "nvidia-smi", "by_device_mib": {"CUDA0": 321.0}}
        from llmctl.supervisor.probe import known_figures_for

        _, floor = known_figures_for(spec)
        assert floor == {"CUDA0": 321 * 1024 * 1024}
    finally:
        sup.stop()
