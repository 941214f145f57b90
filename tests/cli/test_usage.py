"""CLI plumbing: completions, version, help, exit codes of usage errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmctl.cli import build_app
from llmctl.cli.completion import completion_script

ROOT = Path(__file__).resolve().parents[2]
FILES = {"bash": "llmctl.bash", "zsh": "_llmctl", "fish": "llmctl.fish"}


@pytest.mark.parametrize("shell", sorted(FILES))
def test_committed_completions_are_fresh(shell: str) -> None:
    committed = (ROOT / "completions" / FILES[shell]).read_text()
    assert committed == completion_script(shell), (
        f"completions/{FILES[shell]} is stale: run llmctl completion {shell} > completions/{FILES[shell]}"
    )


def _complete(words: str, cword: int, cwd: Path) -> list[str]:
    env = {
        **os.environ,
        "_LLMCTL_COMPLETE": "complete_bash",
        "COMP_WORDS": words,
        "COMP_CWORD": str(cword),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "llmctl"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return proc.stdout.split()


def test_bash_completion_completes_commands_and_profiles(tmp_path: Path) -> None:
    (tmp_path / "profiles.yaml").write_text(
        "version: 1\nprofiles:\n  chat: {model: m.gguf, aliases: [qwen]}\n  coder: {model: m.gguf}\n"
    )
    assert "lint" in _complete("llmctl li", 1, tmp_path)
    assert _complete("llmctl command c", 2, tmp_path) == ["chat", "coder"]
    assert _complete("llmctl command q", 2, tmp_path) == ["qwen"]


def test_version() -> None:
    result = CliRunner().invoke(build_app(), ["--version"])
    assert result.exit_code == 0 and result.stdout.startswith("llmctl ")


def test_help_lists_the_commands_in_table_order_without_stray_types() -> None:
    from llmctl.cli import COMMANDS

    result = CliRunner().invoke(build_app(), ["--help"], terminal_width=100)
    assert result.exit_code == 0
    lines = result.stdout.split("Commands:")[1].splitlines()
    listed = [line.split()[0] for line in lines if line.startswith("  ") and line.strip()]
    assert listed == list(COMMANDS)  # lint (a group) in its place too
    assert "<bool>" not in result.stdout
    for name in COMMANDS:
        sub = CliRunner().invoke(build_app(), [name, "--help"], terminal_width=100)
        assert sub.exit_code == 0 and "<bool>" not in sub.stdout, name
        summary = next(line for line in result.stdout.splitlines() if line.split()[:1] == [name])
        assert not summary.endswith("..."), summary  # a first sentence short enough to show


def test_unknown_command_and_bad_option_exit_2() -> None:
    result = CliRunner().invoke(build_app(), ["frobnicate"])
    assert result.exit_code == 2
    result = CliRunner().invoke(build_app(), ["lint", "--bogus"])
    assert result.exit_code == 2


def test_readme_flag_table_is_the_code_table() -> None:
    from llmctl.llama.flags import flags_table

    readme = (ROOT / "README.md").read_text()
    start = readme.index("<!-- flags-table:start -->\n") + len("<!-- flags-table:start -->\n")
    end = readme.index("<!-- flags-table:end -->")
    assert readme[start:end].strip() == flags_table(), (
        "copy llmctl.llama.flags.flags_table() into README"
    )


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make test" in ci


# `llmctl ARGS` that, should it ever hang (once, in a CI run, `schema` did for 60 s and could not
# be made to again), prints every thread's stack and exits instead of being killed unexplained
HANG_REPORT = (
    "import faulthandler, sys; faulthandler.dump_traceback_later(60, exit=True); "
    "sys.argv[0] = 'llmctl'; from llmctl.cli import main; main()"
)


@pytest.mark.parametrize("args", [["estimate", "--all"], ["schema"], ["--help"]])
def test_a_reader_that_leaves_ends_the_command_quietly(tmp_path: Path, args: list[str]) -> None:
    """`llmctl estimate --all | head`: the reader has gone before llmctl writes (its end of the
    pipe is closed first, so every write fails), on the fast path and through typer alike."""
    from llmctl.testing.testmodels import write_tiny_model

    model = write_tiny_model(tmp_path / "m.gguf")
    manifest = tmp_path / "profiles.yaml"
    manifest.write_text(f"version: 1\nprofiles:\n  a:\n    model: {model}\n")
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", HANG_REPORT, *args],
            stdin=subprocess.DEVNULL,
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=90,
            check=False,
            cwd=tmp_path,
        )
    finally:
        os.close(write)
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
    # 141 (128 + SIGPIPE) on the fast path; click ends its own commands with 1
    assert proc.returncode in (1, 141)
