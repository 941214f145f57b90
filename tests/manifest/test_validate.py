"""The manifest, `llmctl lint`, `llmctl command`, `llmctl schema`: every rule, every error path."""

from __future__ import annotations

import json
import os
import shlex
import textwrap
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from llmctl.cli import build_app
from llmctl.errors import ManifestError
from llmctl.llama.flags import FLAGS
from llmctl.manifest.discover import find_manifest
from llmctl.manifest.validate import load_manifest
from llmctl.supervisor.launch import launch_spec
from llmctl.testing.testmodels import write_tiny_model

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def cli(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(build_app(), list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def write(tmp: Path, text: str, name: str = "profiles.yaml") -> Path:
    path = tmp / name
    path.write_text(textwrap.dedent(text))
    return path


def gguf(tmp: Path, name: str = "m.gguf") -> Path:
    """A real (tiny, random-weight) GGUF that llama-server loads."""
    return write_tiny_model(tmp / name, arch="llama")


def lint(path: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    code, out, _ = cli("lint", "manifest", str(path), "--json", *extra)
    return code, json.loads(out)


def rules(report: dict[str, Any], severity: str | None = None) -> list[str]:
    return [p["rule"] for p in report["problems"] if severity in (None, p["severity"])]


def find(report: dict[str, Any], rule: str) -> dict[str, Any]:
    for p in report["problems"]:
        if p["rule"] == rule:
            return p
    raise AssertionError(f"no {rule} in {report['problems']}")


BASE = """\
version: 1
profiles:
  small:
    model: m.gguf
"""


# --- the bundled example -------------------------------------------------------------------


def test_bundled_example_lints_ok_without_a_binary() -> None:
    code, report = lint(ROOT / "profiles.yaml")
    assert code == 0
    assert report["ok"] is True
    assert set(rules(report)) <= {"model-missing", "binary"}
    assert rules(report, "error") == []


def test_bundled_example_flags_are_known_to_the_real_binary(
    llama_server_bin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMCTL_LLAMA_SERVER", str(llama_server_bin))
    code, report = lint(ROOT / "profiles.yaml")
    assert code == 0, report
    assert "unknown-flag" not in rules(report)
    assert "binary" not in rules(report)


def test_every_table_flag_is_known_to_the_real_binary(llama_server_bin: Path) -> None:
    from llmctl.llama.binary import known_flags

    known = known_flags(str(llama_server_bin))
    assert known is not None
    for f in FLAGS:
        missing = [s for s in (f.flag, *f.spellings, f.off_flag) if s and s not in known]
        assert not missing, f"{f.field}: {missing}"
    for managed in ("--host", "--port", "--alias", "--load-mode"):
        assert managed in known


def test_profiles_yaml_points_editors_at_the_committed_schema() -> None:
    first = (ROOT / "profiles.yaml").read_text().splitlines()[0]
    assert first == "# yaml-language-server: $schema=./schema/profiles.schema.json"


def test_committed_schema_is_in_sync() -> None:
    code, out, _ = cli("schema")
    assert code == 0
    committed = json.loads((ROOT / "schema" / "profiles.schema.json").read_text())
    assert json.loads(out) == committed, "run: llmctl schema > schema/profiles.schema.json"


def test_schema_accepts_the_bundled_example() -> None:
    import jsonschema
    import yaml

    schema = json.loads((ROOT / "schema" / "profiles.schema.json").read_text())
    data = yaml.safe_load((ROOT / "profiles.yaml").read_text())
    jsonschema.validate(data, schema)


# --- YAML pitfalls -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "flag"),
    [
        ("on", "on"),
        ("off", "off"),
        ("yes", "on"),
        ("no", "off"),
        ("true", "on"),
        ("false", "off"),
        ("'on'", "on"),
        ("enabled", "on"),
        ("disabled", "off"),
        ("auto", "auto"),
        ("1", "on"),
        ("0", "off"),
        ("True", "on"),
        ("OFF", "off"),
    ],
)
def test_flash_attn_spellings_become_on_off_auto(tmp_path: Path, written: str, flag: str) -> None:
    gguf(tmp_path)
    path = write(tmp_path, BASE + f"    flash_attn: {written}\n")
    code, out, _ = cli("command", "small", "--manifest", str(path), "--json")
    assert code == 0
    argv = json.loads(out)["argv"]
    assert argv[argv.index("-fa") + 1] == flag
    assert "True" not in argv and "False" not in argv
    code, report = lint(path)
    assert "yaml-coercion" not in rules(report)


def test_yaml_coercions_warn_and_keep_the_text_as_written(tmp_path: Path) -> None:
    gguf(tmp_path)
    path = write(
        tmp_path,
        BASE + "    aliases: [no, 1.10]\n    description: 1.10\n"
        "    env: {FLAG: yes, CUDA_VISIBLE_DEVICES: 0}\n",
    )
    code, report = lint(path)
    assert code == 0
    warnings = [p for p in report["problems"] if p["rule"] == "yaml-coercion"]
    lines = sorted((p["line"], p["column"]) for p in warnings)
    assert lines == [(5, 15), (5, 19), (6, 18), (7, 17)]  # not CUDA_VISIBLE_DEVICES: 0
    m = load_manifest(path)
    assert m.profiles["small"].aliases == ["no", "1.10"]
    assert m.profiles["small"].description == "1.10"
    assert m.profiles["small"].env == {"FLAG": "yes", "CUDA_VISIBLE_DEVICES": "0"}


def test_cache_type_off_is_an_error_with_the_yaml_warning(tmp_path: Path) -> None:
    gguf(tmp_path)
    path = write(tmp_path, BASE + "    cache_type_k: off\n")
    code, report = lint(path)
    assert code == 1
    err = find(report, "cache-type")
    assert (err["line"], err["column"], err["profile"]) == (5, 19, "small")
    assert "'off'" in err["message"]
    assert find(report, "yaml-coercion")["line"] == 5


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("version: 1\nversion: 1\nprofiles: {a: {model: m.gguf}}\n", 2),
        ("version: 1\nprofiles:\n  a:\n    model: m.gguf\n  a:\n    model: m.gguf\n", 5),
        ("version: 1\nprofiles:\n  a:\n    model: m.gguf\n    ctx_size: 1\n    ctx_size: 2\n", 6),
        ("version: 1\nprofiles:\n  a:\n    model: m.gguf\n    env: {A: x, A: y}\n", 5),
        (
            "version: 1\nserve:\n  queue:\n    max_size: 1\n    max_size: 2\nprofiles: {a: {model: m.gguf}}\n",
            5,
        ),
    ],
)
def test_duplicate_keys_at_any_level_are_errors(tmp_path: Path, text: str, line: int) -> None:
    gguf(tmp_path)
    code, report = lint(write(tmp_path, text))
    assert code == 1
    assert find(report, "duplicate-key")["line"] == line
    with pytest.raises(ManifestError):
        load_manifest(tmp_path / "profiles.yaml")


def test_anchors_and_merge_keys_work(tmp_path: Path) -> None:
    gguf(tmp_path)
    path = write(
        tmp_path,
        """\
        version: 1
        x-base: &base
          model: m.gguf
          cache_type_k: q8_0
          cache_type_v: q8_0
        profiles:
          short:
            <<: *base
            ctx_size: 8K
          long:
            <<: *base
            ctx_size: 128K
            cache_type_v: q4_0
        """,
    )
    # x-base is not a manifest key: it is reported, the profiles still work
    code, report = lint(path)
    assert rules(report, "error") == ["unknown-key"]
    path.write_text(path.read_text().replace("x-base: &base", "defaults: &base"))
    code, report = lint(path)
    assert code == 0, report
    m = load_manifest(path)
    assert m.profiles["short"].ctx_size == 8192
    assert m.profiles["long"].ctx_size == 131072
    assert m.profiles["long"].cache_type_v == "q4_0"
    assert m.profiles["short"].cache_type_v == "q8_0"


@pytest.mark.parametrize(
    ("content", "needle", "line"),
    [
        (b"", "empty", None),
        (b"# just a comment\n\n", "empty", None),
        (b"- a\n- b\n", "must be a mapping", 1),
        (b"hello\n", "must be a mapping", 1),
        (b"version: 1\nprofiles:\n\ta: {}\n", "tab", 3),
        (b"version: 1\nprofiles: {a: {model: \xff\xfe}}\n", "not UTF-8", 2),
        (b"version: 1\nprofiles: [a, b\n", "invalid YAML", 3),
        (b"version: 1\n---\nversion: 1\n", "more than one YAML document", 2),
        (b"a: &x [*x]\n", "recursive alias", 1),
        (b"version: 1\n? [a, b]\n: c\n", "key must be a plain name", 2),
    ],
)
def test_unreadable_manifests_exit_2_with_the_place(
    tmp_path: Path, content: bytes, needle: str, line: int | None
) -> None:
    path = tmp_path / "profiles.yaml"
    path.write_bytes(content)
    code, out, err = cli("lint", "manifest", str(path))
    assert code == 2
    assert needle in err
    if line is not None:
        assert f"{path}:{line}:" in err
    assert "Traceback" not in err
    code, out, _ = cli("lint", "manifest", str(path), "--json")
    assert code == 2
    body = json.loads(out)
    assert body["ok"] is False and needle in body["error"]["message"]


def test_alias_bomb_is_refused(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        prev = f"*a{i - 1}"
        lines.append(f"a{i}: &a{i} [{', '.join([prev] * 10)}]")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    code, _, err = cli("lint", "manifest", str(path))
    assert code == 2 and "alias bomb" in err


def test_missing_manifest_file(tmp_path: Path) -> None:
    code, _, err = cli("lint", "manifest", str(tmp_path / "nope.yaml"))
    assert code == 2 and "no such file" in err
    code, _, err = cli("lint", "manifest", str(tmp_path))
    assert code == 2 and "is a folder" in err


# --- schema and value rules ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "suggestion"),
    [
        ("flash_atn", "flash_attn"),
        ("ngl", "n_gpu_layers"),
        ("ctx-size", "ctx_size"),
        ("cache_typ_k", "cache_type_k"),
        ("context_length", "ctx_size"),
    ],
)
def test_unknown_keys_say_did_you_mean(tmp_path: Path, key: str, suggestion: str) -> None:
    gguf(tmp_path)
    code, report = lint(write(tmp_path, BASE + f"    {key}: 1\n"))
    assert code == 1
    err = find(report, "unknown-key")
    assert err["profile"] == "small" and err["line"] == 5 and err["column"] == 5
    assert f"`{suggestion}`" in err["hint"]


def test_unknown_key_in_a_section_and_in_defaults(tmp_path: Path) -> None:
    gguf(tmp_path)
    code, report = lint(
        write(
            tmp_path,
            "version: 1\nserver:\n  prot: 9000\ndefaults:\n  ctx: 8\n"
            "profiles:\n  a: {model: m.gguf}\n",
        )
    )
    assert code == 1
    problems = [(p["line"], p["hint"]) for p in report["problems"] if p["rule"] == "unknown-key"]
    assert problems == [(3, "did you mean `port`?"), (5, "did you mean `ctx_size`?")]


@pytest.mark.parametrize(
    ("field", "value", "rule"),
    [
        ("cache_type_v", "q6_0", "cache-type"),
        ("flash_attn", "maybe", "flash-attn"),
        ("parallel", "0", "parallel"),
        ("parallel", "-3", "parallel"),
        ("ctx_size", "-1", "range"),
        ("batch_size", "0", "range"),
        ("n_gpu_layers", "-2", "range"),
        ("ctx_size", "lots", "schema"),
        ("port", "70000", "range"),
        ("ready_timeout", "soon", "schema"),
    ],
)
def test_invalid_values(tmp_path: Path, field: str, value: str, rule: str) -> None:
    gguf(tmp_path)
    code, report = lint(write(tmp_path, BASE + f"    {field}: {value}\n"))
    assert code == 1
    err = find(report, rule)
    assert (err["profile"], err["line"]) == ("small", 5)


def test_missing_model_and_no_profiles(tmp_path: Path) -> None:
    code, report = lint(write(tmp_path, "version: 1\nprofiles:\n  a:\n    ctx_size: 8\n"))
    assert code == 1 and find(report, "missing-key")["line"] == 3
    code, report = lint(write(tmp_path, "version: 1\n"))
    assert code == 1 and "no-profiles" in rules(report)


def test_quantized_v_cache_with_flash_attention_off(tmp_path: Path) -> None:
    gguf(tmp_path)
    code, report = lint(write(tmp_path, BASE + "    cache_type_v: q8_0\n    flash_attn: off\n"))
    assert code == 1
    assert find(report, "quantized-v-cache")["line"] == 6
    code, report = lint(write(tmp_path, BASE + "    cache_type_v: q8_0\n    flash_attn: auto\n"))
    assert code == 0


def test_duplicate_names_and_aliases(tmp_path: Path) -> None:
    gguf(tmp_path)
    code, report = lint(
        write(
            tmp_path,
            """\
        version: 1
        profiles:
          a: {model: m.gguf, aliases: [shared, B]}
          b: {model: m.gguf, aliases: [Shared]}
        """,
        )
    )
    assert code == 1
    errs = [(p["profile"], p["line"]) for p in report["problems"] if p["rule"] == "duplicate-name"]
    assert sorted(errs) == [("a", 3), ("b", 4)]


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("server: {port: 8080}\n", 1),
        ("server: {port: 9000}\nserve: {port: 9000}\n", 2),
        ("server: {port: 9000, host: 0.0.0.0}\nserve: {port: 9000}\n", 2),
    ],
)
def test_router_and_server_on_the_same_port(tmp_path: Path, text: str, line: int) -> None:
    gguf(tmp_path)
    code, report = lint(write(tmp_path, text + BASE))
    assert code == 1
    assert find(report, "port-conflict")["line"] == line


def test_profile_on_the_router_port(tmp_path: Path) -> None:
    gguf(tmp_path)
    code, report = lint(write(tmp_path, BASE + "    port: 8080\n"))
    assert code == 1
    assert find(report, "port-conflict")["profile"] == "small"
    code, report = lint(
        write(tmp_path, "server: {host: 10.0.0.1, port: 9}\nserve: {port: 9}\n" + BASE)
    )
    assert "port-conflict" not in rules(report)


def test_model_missing_is_a_warning_not_gguf_is_an_error(tmp_path: Path) -> None:
    code, report = lint(write(tmp_path, BASE))
    assert code == 0 and find(report, "model-missing")["line"] == 4
    code, _ = lint(write(tmp_path, BASE), "--strict")
    assert code == 1
    (tmp_path / "m.gguf").write_text("not a model")
    code, report = lint(write(tmp_path, BASE))
    assert code == 1 and find(report, "not-gguf")["profile"] == "small"
    (tmp_path / "m.gguf").unlink()
    (tmp_path / "m.gguf").mkdir()
    code, report = lint(write(tmp_path, BASE))
    assert code == 1 and "model-file" in rules(report)


@pytest.mark.parametrize(
    "arg", ["-c", "--ctx-size", "--port", "-m", "-ngl", "-fa", "--alias=x", "--host", "-np"]
)
def test_extra_args_must_not_repeat_a_managed_flag(tmp_path: Path, arg: str) -> None:
    gguf(tmp_path)
    code, report = lint(write(tmp_path, BASE + f"    extra_args: ['--no-warmup', '{arg}', '1']\n"))
    assert code == 1
    err = find(report, "managed-flag")
    assert (err["line"], err["column"]) == (5, 33)


def test_extra_args_repeated_flag_is_a_warning(tmp_path: Path) -> None:
    gguf(tmp_path)
    code, report = lint(
        write(tmp_path, BASE + "    extra_args: [--rope-scale, '2', --rope-scale, '4']\n")
    )
    assert code == 0 and "repeated-flag" in rules(report)


def test_binary_not_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gguf(tmp_path)
    code, report = lint(write(tmp_path, "server: {binary: ./nope/llama-server}\n" + BASE))
    assert code == 1
    err = find(report, "binary")
    assert err["line"] == 1 and "does not exist" in err["message"]
    monkeypatch.setenv("LLMCTL_LLAMA_SERVER", str(tmp_path / "missing"))
    code, report = lint(write(tmp_path, BASE))
    assert code == 1 and "LLMCTL_LLAMA_SERVER" in find(report, "binary")["message"]


def test_flags_the_installed_binary_does_not_know(
    tmp_path: Path, llama_server_bin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gguf(tmp_path)
    monkeypatch.setenv("LLMCTL_LLAMA_SERVER", str(llama_server_bin))
    path = write(tmp_path, BASE + "    extra_args: [--no-warmup, --rope-scal, '2']\n")
    code, report = lint(path)
    assert code == 1
    err = find(report, "unknown-flag")
    assert (err["line"], err["column"]) == (5, 31)
    assert err["hint"] == "did you mean --rope-scale?"
    cached = list((Path(os.environ["LLMCTL_CACHE_DIR"])).glob("help-*.json"))
    assert len(cached) == 1 and "--rope-scale" in json.loads(cached[0].read_text())


def test_help_cache_is_used_and_keyed_by_mtime(tmp_path: Path) -> None:
    from llmctl.llama.binary import known_flags

    fake = tmp_path / "llama-server"
    fake.write_text(
        "#!/bin/sh\necho run >> "
        + str(tmp_path / "runs")
        + "\n"
        + "".join(f"echo '--flag{i}   does {i}'\n" for i in range(12))
    )
    fake.chmod(0o755)
    assert known_flags(str(fake)) == frozenset(f"--flag{i}" for i in range(12))
    assert known_flags(str(fake)) is not None
    assert (tmp_path / "runs").read_text().count("run") == 1
    os.utime(fake, ns=(1, 1))
    known_flags(str(fake))
    assert (tmp_path / "runs").read_text().count("run") == 2


# --- llmctl command -------------------------------------------------------------------------


def test_command_always_passes_ctx_parallel_and_layers(tmp_path: Path) -> None:
    gguf(tmp_path)
    path = write(tmp_path, BASE)
    code, out, _ = cli("command", "small", "--manifest", str(path), "--json")
    assert code == 0
    body = json.loads(out)
    argv = body["argv"]
    assert argv[argv.index("-c") + 1] == "4096"
    assert argv[argv.index("-np") + 1] == "-1"
    assert argv[argv.index("-ngl") + 1] == "-1"
    assert argv[argv.index("-m") + 1] == str(tmp_path / "m.gguf")
    assert argv[argv.index("--port") + 1] == "8081"
    assert body["env"] == {}


def test_command_is_shell_quoted_with_env(tmp_path: Path) -> None:
    gguf(tmp_path, "my model.gguf")
    path = write(
        tmp_path,
        """\
        version: 1
        profiles:
          q:
            model: my model.gguf
            env: {CUDA_VISIBLE_DEVICES: "0,1"}
            extra_args: [--slot-save-path, "a b"]
        """,
    )
    code, out, _ = cli("command", "q", "--manifest", str(path))
    assert code == 0
    words = shlex.split(out)
    assert words[0] == "CUDA_VISIBLE_DEVICES=0,1"
    assert str(tmp_path / "my model.gguf") in words
    assert words[-2:] == ["--slot-save-path", "a b"]


def test_field_table_maps_every_flag(tmp_path: Path) -> None:
    gguf(tmp_path)
    path = write(
        tmp_path,
        BASE
        + textwrap.indent(
            textwrap.dedent("""\
        ctx_size: 128K
        parallel: 2
        kv_unified: false
        swa_full: true
        cache_type_k: q8_0
        cache_type_v: q4_0
        flash_attn: on
        n_gpu_layers: 20
        batch_size: 1024
        ubatch_size: 256
        threads: 8
        mlock: true
        mmap: false
        no_kv_offload: true
        jinja: false
        embedding: true
        pooling: mean
        aliases: [s]
        """),
            "    ",
        ),
    )
    code, out, _ = cli("command", "s", "--manifest", str(path), "--json")
    assert code == 0
    argv = json.loads(out)["argv"]
    joined = " ".join(argv[1:])
    for part in [
        "-c 131072",
        "-np 2",
        "-no-kvu",
        "--swa-full",
        "-ctk q8_0",
        "-ctv q4_0",
        "-fa on",
        "-ngl 20",
        "-b 1024",
        "-ub 256",
        "-t 8",
        "--load-mode mlock",
        "-nkvo",
        "--no-jinja",
        "--embedding",
        "--pooling mean",
        "--alias small,s",
    ]:
        assert part in joined, part


def test_paths_expand_home_vars_and_manifest_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    monkeypatch.setenv("MODELS", "/srv/models")
    path = write(
        tmp_path,
        """\
        version: 1
        server: {binary: bin/llama-server}
        profiles:
          a: {model: ~/models/a.gguf}
          b: {model: $MODELS/b.gguf}
          c: {model: sub/c.gguf, mmproj: ../p.gguf}
        """,
    )
    m = load_manifest(path)
    assert m.profiles["a"].model == str(tmp_path / "h" / "models" / "a.gguf")
    assert m.profiles["b"].model == "/srv/models/b.gguf"
    assert m.profiles["c"].model == str(tmp_path / "sub" / "c.gguf")
    assert m.profiles["c"].mmproj == str(tmp_path.parent / "p.gguf")
    assert m.server.binary == str(tmp_path / "bin" / "llama-server")
    assert launch_spec(m, "a").argv[0] == str(tmp_path / "bin" / "llama-server")


def test_env_binary_wins_over_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "server: {binary: /opt/llama-server}\n" + BASE)
    monkeypatch.setenv("LLMCTL_LLAMA_SERVER", "/usr/local/bin/llama-server")
    assert launch_spec(load_manifest(path), "small").argv[0] == "/usr/local/bin/llama-server"


def test_defaults_merge_and_profile_overrides(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        version: 1
        defaults: {ctx_size: 8K, flash_attn: on, env: {A: "1"}}
        profiles:
          a: {model: m.gguf}
          b: {model: m.gguf, ctx_size: 2K, env: {B: "2"}}
        """,
    )
    m = load_manifest(path)
    assert (m.profiles["a"].ctx_size, m.profiles["b"].ctx_size) == (8192, 2048)
    assert m.profiles["b"].env == {"A": "1", "B": "2"}
    assert m.where("a", "ctx_size")[1] == 2  # inherited: reported where it is written
    assert m.where("b", "ctx_size")[1] == 5


def test_per_profile_host_port_and_timeouts(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "server: {port: 9001, ready_timeout: 5m}\n"
        + BASE
        + "    port: 9002\n    ready_timeout: 90s\n    stall_timeout: 500ms\n",
    )
    spec = launch_spec(load_manifest(path), "small")
    assert (spec.port, spec.ready_timeout, spec.stall_timeout) == (9002, 90.0, 0.5)


def test_unknown_profile_exits_2_with_suggestions(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    code, _, err = cli("command", "smal", "--manifest", str(path))
    assert code == 2
    assert "no profile or alias named 'smal'" in err and "did you mean small" in err
    code, out, _ = cli("command", "nope", "--manifest", str(path), "--json")
    assert code == 2 and json.loads(out)["error"]["type"] == "UsageError"


def test_resolve_is_exact_then_case_insensitive(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "version: 1\nprofiles:\n  Chat: {model: m, aliases: [Qwen]}\n  chat2: {model: m}\n",
    )
    m = load_manifest(path)
    assert m.resolve("Chat") == "Chat"
    assert m.resolve("chat") == "Chat"
    assert m.resolve("QWEN") == "Chat"


def test_broken_manifest_stops_command_with_exit_2(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "    parallel: 0\n")
    code, _, err = cli("command", "small", "--manifest", str(path))
    assert code == 2
    assert f"{path}:5:15" in err and "llmctl lint" in err


# --- discovery -----------------------------------------------------------------------------


def test_discovery_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    xdg = Path(os.environ["XDG_CONFIG_HOME"]) / "llmctl"
    xdg.mkdir(parents=True)
    (xdg / "profiles.yaml").write_text(BASE)
    assert find_manifest() == xdg / "profiles.yaml"
    (tmp_path / "profiles.yaml").write_text(BASE)
    assert find_manifest() == Path("profiles.yaml")
    monkeypatch.setenv("LLMCTL_MANIFEST", str(tmp_path / "env.yaml"))
    assert find_manifest() == tmp_path / "env.yaml"
    assert find_manifest(tmp_path / "x.yaml") == tmp_path / "x.yaml"


def test_no_manifest_anywhere(tmp_path: Path) -> None:
    code, _, err = cli("lint")
    assert code == 2 and "no manifest found" in err and "--manifest" in err


def test_bare_lint_is_lint_manifest(tmp_path: Path) -> None:
    gguf(tmp_path)
    write(tmp_path, BASE + "    parallel: 0\n")
    code, out, _ = cli("lint", "--json")
    assert code == 1 and "parallel" in rules(json.loads(out), "error")


def test_human_lint_output_groups_by_profile(tmp_path: Path) -> None:
    gguf(tmp_path)
    path = write(
        tmp_path,
        "version: 1\nprofiles:\n  a: {model: m.gguf, parallel: 0}\n"
        "  b: {model: m.gguf, cache_type_k: q9}\n",
    )
    code, out, _ = cli("lint", "manifest", str(path))
    assert code == 1
    lines = out.splitlines()
    a = lines.index("a")
    assert lines[a + 1].startswith(f"  {path}:3:") and "error" in lines[a + 1]
    b = lines.index("b")
    assert b > a and lines[b + 1].startswith(f"  {path}:4:")
    assert "2 error(s)" in lines[-1]


def test_nested_sections_keep_text_and_suggest_keys(tmp_path: Path) -> None:
    gguf(tmp_path)
    path = write(
        tmp_path,
        textwrap.dedent("""\
        version: 1
        serve:
          queue: {max_sise: 3}
          upstreams:
            - name: local
              type: managed
            - name: no
              url: http://gpu:8080/v1
              models: [on]
              tiemout: 5s
        """)
        + BASE.removeprefix("version: 1\n"),
    )
    code, report = lint(path)
    assert code == 1
    unknown = [(p["line"], p["hint"]) for p in report["problems"] if p["rule"] == "unknown-key"]
    assert unknown == [(3, "did you mean `max_size`?"), (10, "did you mean `timeout`?")]
    coerced = [(p["line"], p["column"]) for p in report["problems"] if p["rule"] == "yaml-coercion"]
    assert coerced == [(7, 13), (9, 16)]
    (tmp_path / "profiles.yaml").write_text(
        path.read_text().replace("max_sise", "max_size").replace("tiemout", "timeout")
    )
    m = load_manifest(path)
    assert m.serve.upstreams[1].name == "no" and m.serve.upstreams[1].models == ["on"]
    assert m.serve.queue.max_size == 3


def test_where_places_list_items_wherever_they_are_written(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        version: 1
        defaults:
          extra_args: [--no-warmup, --slots]
        profiles:
          a: {model: m.gguf, aliases: [x, y]}
        """,
    )
    m = load_manifest(path)
    assert m.where("a", "extra_args", 1) == (str(path), 3, 29)
    assert m.where("a", "aliases", 1) == (str(path), 5, 35)
    assert m.where("a") == (str(path), 5, 3)


def test_a_truncated_gguf_is_a_lint_error_and_switch_refuses_it(tmp_path: Path) -> None:
    """An interrupted download (header intact, tensor data missing) is named by lint and refused
    by switch before anything runs, with what to do."""
    model = gguf(tmp_path)
    data = model.read_bytes()
    model.write_bytes(data[: len(data) - 4096])
    path = write(tmp_path, BASE)
    code, report = lint(path)
    assert code != 0
    p = find(report, "gguf")
    assert p["severity"] == "error" and p["profile"] == "small"
    assert str(model) in p["message"] and "cut short" in p["message"]
    assert "download" in p["hint"]
    code, out, err = cli("switch", "small", "--manifest", str(path))
    assert code == 2, (out, err)
    assert "cut short" in err and str(model) in err and "download" in err


def test_a_manifest_that_is_a_device_fifo_or_huge_is_refused_naming_it(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)  # nobody writes to it: reading it would block forever
    huge = tmp_path / "huge.yaml"
    with open(huge, "wb") as f:
        f.truncate(64 * 1024 * 1024)  # sparse: no disk used
    for path, words in (
        (Path("/dev/zero"), "not a regular file"),
        (fifo, "not a regular file"),
        (huge, "more than a manifest may have"),
    ):
        for args in (
            ("lint", "manifest", str(path)),
            ("command", "small", "--manifest", str(path)),
        ):
            code, out, err = cli(*args)
            assert code == 2, (args, out, err)
            assert str(path) in err and words in err and "Traceback" not in err
