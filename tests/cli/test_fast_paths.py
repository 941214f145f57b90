"""The command table, the small parser of the fast paths, completion and the error renderer."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmctl.cli import COMMANDS, build_app, run_fast
from llmctl.cli.argv import non_negative_float, non_negative_int, parse
from llmctl.cli.output import error_json, error_lines, render_error
from llmctl.errors import LaunchError, LlmctlError, ManifestError, Problem, UsageError
from processes import imported_modules, llmctl


def test_every_command_module_registers_and_is_named_for_its_command() -> None:
    import typer.main

    group = typer.main.get_command(build_app())
    assert set(group.commands) == set(COMMANDS)  # type: ignore[attr-defined]
    for name, module in COMMANDS.items():
        assert module == f"llmctl.cli.{name}"
        assert hasattr(importlib.import_module(module), "register")


def test_fast_options_are_typer_options() -> None:
    """Each fast parser knows only options that typer's command has too."""
    import typer.main

    group = typer.main.get_command(build_app())
    spellings = {
        "switch": ["--manifest", "--json", "--quiet", "-q", "--lock-timeout", "--pull"],
        "load": ["--manifest", "--json", "--quiet", "-q", "--lock-timeout", "--pull", "--dry-run"],
        "pull": ["--manifest", "--json", "--no-mmproj"],
        "stop": ["--json", "--quiet", "-q", "--lock-timeout"],
        "logs": ["--follow", "-f", "--path", "-n", "--lines"],
        "command": ["--manifest", "--json"],
        "fit": ["--manifest", "--json", "--vram"],
        "estimate": ["--manifest", "--json", "--all"],
        "status": ["--json"],
    }
    for name, opts in spellings.items():
        command = group.commands[name]  # type: ignore[attr-defined]
        known = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
        assert set(opts) <= known, name


def test_parse_accepts_only_what_it_understands() -> None:
    spec = {
        "flags": {"--json": "json"},
        "options": {"--n": ("n", non_negative_int), "--t": ("t", non_negative_float)},
        "positional": (1, 1),
    }
    assert parse(["p", "--json", "--n", "3", "--t=1.5"], **spec) == (  # type: ignore[arg-type]
        ["p"],
        {"json": True, "n": 3, "t": 1.5},
    )
    for bad in (
        [],  # the positional is missing
        ["p", "q"],  # one too many
        ["p", "--help"],
        ["p", "--bogus"],
        ["p", "--n"],  # no value
        ["p", "--n", "x"],
        ["p", "--n", "-1"],
        ["p", "--t", "nan"],
        ["p", "--json=1"],
    ):
        assert parse(bad, **spec) is None, bad  # type: ignore[arg-type]


def test_anything_the_fast_path_does_not_know_goes_to_typer() -> None:
    for args in (
        [],
        ["frobnicate"],
        ["status", "--verbose"],
        ["switch"],
        ["switch", "a", "b"],
        ["switch", "a", "--lock-timeout", "-1"],
        ["logs", "-n", "many"],
        ["lint", "manifest", "a", "b"],
        ["estimate", "--bogus", "--", "-m", "x"],
        ["serve"],
        ["schema"],
        ["demo"],
    ):
        assert run_fast(args) is None, args


def test_fast_and_typer_paths_agree_on_errors(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    path = tmp_path / "profiles.yaml"
    path.write_text("version: 1\nprofiles:\n  chat: {model: m.gguf}\n")
    runner = CliRunner()
    for args in (
        ["command", "nope", "--manifest", str(path)],
        ["command", "nope", "--manifest", str(path), "--json"],
        ["fit", "chat", "--vram", "lots", "--manifest", str(path)],
        ["fit", "nope", "--manifest", str(path)],
        ["estimate", "--manifest", str(path)],
        ["estimate", "--", "-c", "512"],
        ["lint", "--manifest", str(tmp_path / "missing.yaml")],
        ["switch", "nope", "--manifest", str(path)],
    ):
        fast = llmctl(*args)
        typed = runner.invoke(build_app(), args)
        assert fast.returncode == typed.exit_code == 2, args
        assert fast.stdout == typed.stdout and fast.stderr == typed.stderr, args
        assert "Traceback" not in fast.stderr


def test_switch_json_error_has_the_shape_of_every_json_error(tmp_path: Path) -> None:
    path = tmp_path / "profiles.yaml"
    path.write_text("version: 1\nprofiles:\n  chat: {model: m.gguf}\n")
    res = llmctl("switch", "nope", "--json", "--manifest", str(path))
    out = json.loads(res.stdout)
    assert res.returncode == 2 and out["ok"] is False and out["ready"] is False
    assert out["error"]["type"] == "UsageError" and "nope" in out["error"]["message"]
    plain = json.loads(llmctl("command", "nope", "--json", "--manifest", str(path)).stdout)
    assert plain == {"ok": False, "error": out["error"]}


def test_render_error_text_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    problems = [Problem("error", "r", f"bad {i}", "p", "f.yaml", i, 1, "fix it") for i in range(25)]
    err = ManifestError("invalid manifest", hint="run lint", problems=problems)
    assert render_error(err, json_out=False) == 2
    text = capsys.readouterr().err
    assert text.startswith("error: invalid manifest\n")
    assert "  f.yaml:3:1: [p] bad 3\n    hint: fix it\n" in text
    assert "... and 5 more (llmctl lint shows them all)" in text and "bad 21" not in text
    assert text.endswith("hint: run lint\n")
    assert render_error(err, json_out=True) == 2
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False and len(out["error"]["problems"]) == 25
    launch = LaunchError("it died", hint="full log: x", exit_status=1, stderr_tail=["boom"])
    lines = list(error_lines(launch))
    assert lines == [
        "error: it died",
        "llama-server said (error line first):",
        "  | boom",
        "hint: full log: x",
    ]
    assert error_json(launch) == {
        "type": "LaunchError",
        "message": "it died",
        "hint": "full log: x",
        "exit_status": 1,
        "stderr_tail": ["boom"],
    }
    assert error_json(UsageError("no")) == {"type": "UsageError", "message": "no"}
    assert list(error_lines(LlmctlError("x"), indent="  ")) == ["  error: x"]


def _complete(shell: str, line: str, cwd: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "_LLMCTL_COMPLETE": f"complete_{shell}", **extra}
    if shell == "bash":
        words = line.split(" ")
        env.update(COMP_WORDS=line, COMP_CWORD=str(len(words) - 1))
    else:
        env["_TYPER_COMPLETE_ARGS"] = line
    return subprocess.run(
        [sys.executable, "-m", "llmctl"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )


def test_profile_completion_in_every_shell(tmp_path: Path) -> None:
    (tmp_path / "profiles.yaml").write_text(
        "version: 1\nprofiles:\n  chat: {model: m.gguf, aliases: [qwen]}\n  coder: {model: m.gguf}\n"
    )
    assert _complete("bash", "llmctl switch c", tmp_path).stdout.split() == ["chat", "coder"]
    assert _complete("bash", "llmctl fit ", tmp_path).stdout.split() == ["chat", "qwen", "coder"]
    # one profile given: nothing more (estimate takes several)
    assert _complete("bash", "llmctl switch chat ", tmp_path).stdout == ""
    assert _complete("bash", "llmctl estimate chat c", tmp_path).stdout.split() == ["chat", "coder"]
    zsh = _complete("zsh", "llmctl switch q", tmp_path).stdout
    assert zsh == "_arguments '*: :((\"qwen\"))'\n"
    assert _complete("zsh", "llmctl switch zz", tmp_path).stdout == "_files\n"
    fish = _complete("fish", "llmctl command c", tmp_path, _TYPER_COMPLETE_FISH_ACTION="get-args")
    assert fish.stdout.split() == ["chat", "coder"]
    has = _complete("fish", "llmctl command c", tmp_path, _TYPER_COMPLETE_FISH_ACTION="is-args")
    none = _complete("fish", "llmctl command z", tmp_path, _TYPER_COMPLETE_FISH_ACTION="is-args")
    assert (has.returncode, none.returncode) == (0, 1)
    # --manifest names another file; a broken or missing manifest completes nothing
    other = tmp_path / "other.yaml"
    other.write_text("version: 1\nprofiles:\n  solo: {model: m.gguf}\n")
    line = f"llmctl switch --manifest {other} "
    assert _complete("bash", line, tmp_path).stdout.split() == ["solo"]
    assert _complete("bash", "llmctl switch --manifest nope.yaml ", tmp_path).stdout == ""
    # options and commands are typer's to complete
    assert "--json" in _complete("bash", "llmctl switch --j", tmp_path).stdout
    assert "switch" in _complete("bash", "llmctl swi", tmp_path).stdout


@pytest.mark.parametrize("command", ["status", "stop", "logs"])
def test_state_commands_accept_manifest_like_every_command(tmp_path: Path, command: str) -> None:
    """README: every command takes --manifest; those that read only the state accept it too,
    on the fast path and through typer."""
    from typer.testing import CliRunner

    manifest = tmp_path / "profiles.yaml"
    manifest.write_text("version: 1\nprofiles:\n  a:\n    model: /models/a.gguf\n")
    for spelling in (["--manifest", str(manifest)], [f"--manifest={manifest}"]):
        out = llmctl(command, *spelling)
        assert out.returncode in (0, 1) and "No such option" not in out.stderr, out.stderr
        typer_out = CliRunner().invoke(build_app(), [command, *spelling])
        assert typer_out.exit_code in (0, 1), typer_out.output
        assert "No such option" not in typer_out.output


# Costly to import, and each brings others along (shutil: bz2, lzma; subprocess: selectors,
# signal; tempfile: shutil, random): the everyday commands start without them.
COSTLY = {"subprocess", "tempfile", "shutil", "bz2", "lzma", "concurrent.futures", "uuid"}


def test_everyday_commands_start_without_costly_imports(tmp_path: Path) -> None:
    """`command`, `lint`, `estimate`, `stop` and `unload` as bench/startup.py times them, on a
    cached manifest: none of COSTLY, and none of the llmctl modules only another case needs (a
    launch, a stop of a server, the placer for pinned profiles, the engine probe)."""
    from llmctl.testing.testmodels import write_tiny_model

    # never started here: its --help reads as a llama-server's, so lint caches the flags
    fake = Path(__file__).resolve().parents[1] / "fakes" / "fake_engine_server.py"
    model = write_tiny_model(tmp_path / "tiny.gguf", arch="llama")
    manifest = tmp_path / "profiles.yaml"
    manifest.write_text(
        f"version: 1\nserver: {{binary: {json.dumps(str(fake))}, port: 1}}\n"
        f"profiles:\n  tiny: {{model: {json.dumps(str(model))}, ctx_size: 512}}\n"
        f"  wide: {{model: {json.dumps(str(model))}, ctx_size: 2048, parallel: 2}}\n"
    )
    mf = ["--manifest", str(manifest)]
    # the first run validates the manifest and asks the binary for --help; both are cached
    assert llmctl("lint", *mf).returncode in (0, 1)
    launching = {
        "llmctl.supervisor.spawn",
        "llmctl.supervisor.starting",
        "llmctl.supervisor.readiness",
        "llmctl.supervisor.stopping",
        "llmctl.supervisor.probe",
        "llmctl.supervisor.kvcache.hooks",
    }
    cases: list[tuple[list[str], set[str]]] = [
        (["command", "tiny", *mf], launching | {"llmctl.placement.policy"}),
        (["lint", *mf], launching | {"llmctl.placement.placer", "llmctl.placement.policy"}),
        (["estimate", "tiny", *mf], {"llmctl.cli.estimate.engine", "llmctl.supervisor.spawn"}),
        (["stop"], launching | {"llmctl.manifest.view"}),
        (["unload", "wide", *mf], launching),
    ]
    for args, not_theirs in cases:
        found = imported_modules(*args)
        assert "llmctl.cli.output" in found, args  # the command ran
        assert sorted(found & (COSTLY | not_theirs)) == [], args
