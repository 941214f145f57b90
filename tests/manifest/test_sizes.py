"""Sizes and durations as people write them, and the ones that are refused."""

from __future__ import annotations

import pytest

from llmctl.manifest.sizes import parse_duration, parse_size
from llmctl.term import format_bytes


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("24GiB", 24 * 2**30),
        ("24 GB", 24 * 10**9),
        ("512MiB", 512 * 2**20),
        ("1.5G", 1_500_000_000),
        (1024, 1024),
        ("100", 100),
        ("16.9GB", 16_900_000_000),
        (2.0, 2),
    ],
)
def test_sizes(text: object, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "bad", [True, -1, "-1GB", "lots", "24 GiBs", float("inf"), float("nan"), "9" * 400, None, [1]]
)
def test_bad_sizes(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_size(bad)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("90s", 90.0), ("2m", 120.0), ("500ms", 0.5), ("1h", 3600.0), (5, 5.0), ("7", 7.0)],
)
def test_durations(text: object, expected: float) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("bad", [False, -5, "soon", "5 days", float("inf"), "9" * 400, None])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_format_bytes() -> None:
    assert format_bytes(1024**3 * 1.5) == "1.50 GiB"
    assert format_bytes(512) == "512 B"
