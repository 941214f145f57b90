"""Units behind the fixes of issue 8: masking, redaction, per-profile breakers, state-folder checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmctl.errors import EXIT_STATE, StateDirError
from llmctl.llama.secrets import mask_argv
from llmctl.router.server import redact_query
from llmctl.router.upstreams import Upstream
from llmctl.supervisor.state import check_writable


def test_mask_argv() -> None:
    argv = ["llama-server", "--api-key", "k1,k2", "-hft", "hf_x", "--hf-token=hf_y", "-c", "512"]
    assert mask_argv(argv) == [
        "llama-server", "--api-key", "***", "-hft", "***", "--hf-token=***", "-c", "512",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("target", "shown"),
    [
        ("/v1/models?api_key=sk-1", "/v1/models?api_key=***"),
        ("/v1/models?x=1&access_token=t&y=2", "/v1/models?x=1&access_token=***&y=2"),
        ("/v1/models?Signature=abc&key=k", "/v1/models?Signature=***&key=***"),
        ("/v1/models?model=a&stream=true", "/v1/models?model=a&stream=true"),
    ],
)
def test_redact_query(target: str, shown: str) -> None:
    assert redact_query(target) == shown


def test_managed_breakers_are_per_profile() -> None:
    up = Upstream(name="local", kind="managed", url=None)
    a, b = up.breaker_for("a"), up.breaker_for("b")
    assert a is not b and up.breaker_for("a") is a
    for _ in range(a.threshold):
        a.record_failure("connect")
    assert a.state == "open" and b.state == "closed"
    assert set(up.breakers()) == {"local/a", "local/b"}
    remote = Upstream(name="cloud", kind="openai", url="http://x")
    assert remote.breaker_for("a") is remote.breaker


def test_state_folder_that_is_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("x")
    with pytest.raises(StateDirError) as info:
        check_writable(blocker)
    assert "it is a file, not a folder" in info.value.message
    assert info.value.exit_code == EXIT_STATE
    with pytest.raises(StateDirError) as info:
        check_writable(blocker / "below")
    assert "a file stands where a folder should be" in info.value.message
    check_writable(tmp_path / "fresh")  # created, probed, left empty
    assert list((tmp_path / "fresh").iterdir()) == []
