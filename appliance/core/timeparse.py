"""Parsing of operator-typed times: ISO 8601 instants and relative ages like ``30m``."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_age(text: str) -> timedelta:
    """``90s``, ``15m``, ``2h``, ``7d``, ``1w`` as a timedelta; ValueError otherwise."""
    match = _AGE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not an age like 30s, 15m, 2h, 7d or 1w")
    return timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})


def parse_instant(text: str) -> datetime:
    """An ISO 8601 time (naive means UTC) as an aware datetime; ValueError otherwise."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 time like 2026-01-31T14:00:00Z") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """A cut-off time: either an age before *now* (``2h``) or an ISO 8601 instant."""
    try:
        return (now or datetime.now(UTC)) - parse_age(text)
    except ValueError:
        pass
    try:
        return parse_instant(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither an age (30m, 2h, 7d) nor an ISO 8601 time") from None
