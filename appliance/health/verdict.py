"""A check's verdict: the Nagios statuses and one Check with its perfdata."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
STATUS_NAMES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}


@dataclass
class Check:
    """One check's verdict, with its measured value and thresholds for perfdata."""

    name: str
    status: int
    message: str
    value: float | None = None
    uom: str = ""
    warn: float | None = None
    crit: float | None = None
    minimum: float | None = 0
    maximum: float | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = STATUS_NAMES[self.status]
        return data


def rate(value: float, thresholds: tuple[float, float]) -> int:
    """OK / WARNING / CRITICAL for a value where higher is worse (a 0 threshold is off)."""
    warn, crit = thresholds
    if crit and value >= crit:
        return CRITICAL
    if warn and value >= warn:
        return WARNING
    return OK


def measured(
    name: str, value: float, uom: str, thresholds: tuple[float, float], what: str
) -> Check:
    status = rate(value, thresholds)
    shown = f"{value:.0f}{uom}" if uom != "ms" else f"{value:.1f}ms"
    return Check(name, status, f"{what} {shown}", value, uom, thresholds[0], thresholds[1])
