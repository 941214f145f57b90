"""Stale servers: after a manifest edit, a server that runs its profile's old launch is marked in
`llmctl ps`, `llmctl status` and the dashboard's state (the FAKE llama-server: only the marks
matter here), and the decision itself (supervisor/stale.py) without processes."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from llmctl import paths
from llmctl.supervisor.lifecycle import Supervisor
from llmctl.supervisor.stale import CURRENT, UNKNOWN, staleness
from processes import free_port_range, llmctl
from supervisor_helpers import FAKE, kill_fakes


def test_staleness_decides_from_the_two_identities() -> None:
    assert staleness("abc", "abc", True) == CURRENT
    old = staleness("abc", "def", True)
    assert old.stale is True and old.why and "changed" in old.why
    gone = staleness("abc", None, False)
    assert gone.stale is True and gone.why and "no longer in the manifest" in gone.why
    assert staleness(None, "abc", True) == UNKNOWN  # a record from before origins were kept
    assert staleness("abc", None, True) == UNKNOWN  # the launch cannot be composed now


@pytest.fixture
def manifest(tmp_path: Path) -> Iterator[Path]:
    base = free_port_range(3)
    path = tmp_path / "profiles.yaml"
    path.write_text(
        "version: 1\n"
        f'server:\n  binary: {json.dumps(str(FAKE))}\n  ports: "{base}-{base + 2}"\n'
        "  stop_timeout: 2\n"
        "profiles:\n"
        "  edited: {model: m.gguf, ctx_size: 1024}\n"
        "  kept: {model: m.gguf, ctx_size: 1024}\n"
    )
    try:
        yield path
    finally:
        Supervisor(paths.state_dir(), lock_timeout=30).stop()
        kill_fakes()


def _ps() -> dict[str, dict[str, object]]:
    res = llmctl("ps", "--json")
    assert res.returncode == 0, res.stderr
    return {r["profile"]: r for r in json.loads(res.stdout)["servers"]}


def _status() -> dict[str, object]:
    res = llmctl("status", "--json")
    assert res.returncode == 0, res.stderr
    data: dict[str, object] = json.loads(res.stdout)
    return data


HEAVY_PROBE = (
    "import sys\nfrom llmctl.cli import main\nsys.argv = ['llmctl', 'status']\n"
    "try:\n    main()\nexcept SystemExit:\n    pass\n"
    "print('HEAVY', sorted(m for m in ('pydantic', 'yaml', 'typer', 'rich', 'httpx') "
    "if m in sys.modules), file=sys.stderr)\n"
)


def test_an_edit_marks_the_changed_server_stale_in_ps_and_status(manifest: Path) -> None:
    mf = ["--manifest", str(manifest)]
    assert llmctl("load", "edited", "kept", *mf).returncode == 0
    rows = _ps()
    assert rows["edited"]["stale"] is False and rows["kept"]["stale"] is False
    status = _status()
    assert status["stale"] is False
    assert [s["stale"] for s in status["servers"]] == [False, False]  # type: ignore[attr-defined,index]
    assert "stale" not in llmctl("ps").stdout

    manifest.write_text(manifest.read_text().replace("edited: {model: m.gguf, ctx_size: 1024}",
                                                     "edited: {model: m.gguf, ctx_size: 2048}"))  # fmt: skip
    # status before anything read the edited manifest: it does not validate (cheap), it says so
    status = _status()
    servers = {s["profile"]: s for s in status["servers"]}  # type: ignore[attr-defined]
    assert servers["edited"]["stale"] is None and "llmctl ps" in servers["edited"]["stale_why"]
    probe = subprocess.run(
        [sys.executable, "-c", HEAVY_PROBE], capture_output=True, text=True, check=False
    )
    assert "HEAVY []" in probe.stderr, probe.stderr
    # ps reads the manifest as it is now
    rows = _ps()
    assert rows["edited"]["stale"] is True and rows["kept"]["stale"] is False
    assert "changed" in str(rows["edited"]["stale_why"])
    text = llmctl("ps").stdout
    assert "edited*" in text and "kept*" not in text
    assert "* stale: edited runs an old launch" in text and "llmctl load edited" in text
    # status now finds the manifest in its cache
    status = _status()
    servers = {s["profile"]: s for s in status["servers"]}  # type: ignore[attr-defined]
    assert servers["edited"]["stale"] is True and servers["kept"]["stale"] is False
    plain = llmctl("status").stdout
    assert "STALE" in plain or "stale    yes" in plain, plain
    # the profile gone from the manifest
    manifest.write_text(
        manifest.read_text().replace("  kept: {model: m.gguf, ctx_size: 1024}\n", "")
    )
    rows = _ps()
    assert rows["kept"]["stale"] is True and "no longer in the manifest" in str(
        rows["kept"]["stale_why"]
    )
    # loading the edited profile again restarts it with the new flags: no longer stale
    assert llmctl("load", "edited", *mf).returncode == 0
    assert _ps()["edited"]["stale"] is False


def test_the_dashboard_judges_against_the_manifest_serve_loaded(manifest: Path) -> None:
    """The router's manifest is what SIGHUP loaded last: an edit counts once it is reloaded."""
    from llmctl.manifest.cache import load_manifest
    from llmctl.router.dashboard.state import stale_servers

    assert llmctl("load", "edited", "kept", "--manifest", str(manifest)).returncode == 0
    sup = Supervisor(paths.state_dir(), lock_timeout=30)
    before = load_manifest(manifest)
    manifest.write_text(
        manifest.read_text().replace("ctx_size: 1024}\n  kept", "ctx_size: 4096}\n  kept")
    )
    router = SimpleNamespace(supervisor=sup, manifest=before)
    marks = stale_servers(router)  # type: ignore[arg-type]
    assert marks["edited"] == {"stale": False, "stale_why": None}  # not reloaded yet
    router.manifest = load_manifest(manifest)  # the reload
    marks = stale_servers(router)  # type: ignore[arg-type]
    assert marks["edited"]["stale"] is True and marks["kept"]["stale"] is False
