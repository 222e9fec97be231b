from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from appliance.core.timeparse import parse_age, parse_instant, parse_since


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("15m", timedelta(minutes=15)),
        ("2h", timedelta(hours=2)),
        ("7d", timedelta(days=7)),
        ("1w", timedelta(weeks=1)),
        ("1.5h", timedelta(minutes=90)),
    ],
)
def test_ages(text: str, expected: timedelta) -> None:
    assert parse_age(text) == expected


def test_naive_instants_are_utc() -> None:
    assert parse_instant("2026-01-31T14:00:00") == datetime(2026, 1, 31, 14, tzinfo=UTC)
    assert parse_instant("2026-01-31T14:00:00+02:00").utcoffset() == timedelta(hours=2)


def test_since_accepts_ages_and_instants() -> None:
    now = datetime(2026, 1, 31, tzinfo=UTC)
    assert parse_since("1d", now) == datetime(2026, 1, 30, tzinfo=UTC)
    assert parse_since("2026-01-01T00:00:00Z", now) == datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize("text", ["", "yesterday", "5y", "-3d", "2026-13-01"])
def test_garbage_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_since(text)
