"""Renderings of health results: Nagios plugin output, JSON, a Prometheus textfile."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from appliance.health.verdict import OK, STATUS_NAMES, Check

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from appliance.health.config import HealthConfig
    from appliance.health.run import HealthRun


def overall(checks: list[Check]) -> int:
    """The worst status of all checks (checks themselves are OK/WARNING/CRITICAL)."""
    return max((c.status for c in checks), default=OK)


def _perf_value(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.0f}" if value == int(value) else f"{value:.3f}"


def perfdata(checks: list[Check]) -> str:
    """Nagios perfdata: 'label'=value[UOM];warn;crit;min;max for every measured check."""
    items = []
    for c in checks:
        if c.value is None:
            continue
        uom = c.uom if c.uom in ("s", "ms", "%", "B") else ""
        fields = [
            f"{_perf_value(c.value)}{uom}",
            _perf_value(c.warn or None),
            _perf_value(c.crit or None),
            _perf_value(c.minimum),
            _perf_value(c.maximum),
        ]
        items.append(f"'{c.name}'=" + ";".join(fields).rstrip(";"))
    return " ".join(items)


def nagios(checks: list[Check]) -> str:
    """`APPLIANCE STATUS - summary | perfdata`, then one line per problem."""
    status = overall(checks)
    problems = sorted((c for c in checks if c.status != OK), key=lambda c: -c.status)
    if problems:
        summary = "; ".join(c.message for c in problems[:3])
        if len(problems) > 3:
            summary += f"; and {len(problems) - 3} more"
    else:
        workers = sum(int(c.value or 0) for c in checks if c.name.startswith("workers_"))
        waiting = sum(int(c.value or 0) for c in checks if c.name.endswith("_depth"))
        summary = f"{len(checks)} checks OK: {workers} worker(s), {waiting} task(s) waiting"
    lines = [f"APPLIANCE {STATUS_NAMES[status]} - {summary} | {perfdata(checks)}".rstrip(" |")]
    lines += [f"{STATUS_NAMES[c.status]}: {c.message}" for c in problems]
    return "\n".join(lines)


def as_json(checks: list[Check]) -> str:
    data: dict[str, Any] = {
        "status": STATUS_NAMES[overall(checks)],
        "exit_code": overall(checks),
        "checks": [c.to_dict() for c in checks],
    }
    return json.dumps(data, indent=2, sort_keys=True)


def prometheus(
    cfg: HealthConfig, run: HealthRun, previous: Iterable[str] = ()
) -> CollectorRegistry:
    """A prometheus_client registry holding the results (for text output or a textfile);
    see appliance.health.metrics (imported here only, so the Nagios path never loads it)."""
    from appliance.health import metrics

    return metrics.measured(cfg, run, overall(run.checks), previous)
