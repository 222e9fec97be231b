"""The Prometheus metrics of `appliance health`: base units, labels, counters.

Names follow the Prometheus conventions (seconds, bytes, `_total` counters, one label
per dimension) and, where the appliance has the same figure, celery-exporter's names
(`celery_queue_length{queue_name}`, `celery_worker_up{hostname}`,
`celery_task_*_total{hostname}`) so its dashboards work. Imported only for
`--format prometheus` and `--textfile`: the Nagios path never loads prometheus_client.

Every sample is measured in this run: on UNKNOWN (the checker failed, or Redis could not
be read) the checks that could not run say status 3 instead of keeping an old value.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from appliance.health.verdict import UNKNOWN, Check

if TYPE_CHECKING:
    from appliance.health.config import HealthConfig
    from appliance.health.run import HealthRun

# The check name of the checker's own failure (exit 3) in appliance_check_status.
CHECKER = "health"

STATUS_HELP = "0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (Nagios)"

# Heartbeat counter -> the state label of appliance_tasks_total and celery-exporter's name.
TASK_COUNTERS = {
    "succeeded": "celery_task_succeeded",
    "failed": "celery_task_failed",
    "retried": "celery_task_retried",
}
_CELERY_TASK_HELP = {
    "succeeded": "Tasks that succeeded on this worker node since it started "
    "(per node: the appliance has no per-task-name counts).",
    "failed": "Tasks that failed on this worker node since it started "
    "(per node: the appliance has no per-task-name or exception counts).",
    "retried": "Tasks that failed and will be retried, on this worker node since it started "
    "(per node: the appliance has no per-task-name counts).",
}

# A Check's uom -> the factor to the base unit (seconds, ratio).
_TO_BASE = {"ms": 0.001, "s": 1.0, "%": 0.01}


def check_label(name: str) -> str:
    """A check's name as its `check` label, as before: [^a-zA-Z0-9_] become `_`."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def _number(value: Any) -> float | None:
    """A finite number out of a heartbeat field (which may be anything), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _gauge(name: str, doc: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


class _Families:
    """The metric families of one rendering, in order, each created once."""

    def __init__(self) -> None:
        self._families: dict[str, Metric] = {}

    def gauge(self, name: str, doc: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
        family = self._families.setdefault(name, _gauge(name, doc, labels))
        assert isinstance(family, GaugeMetricFamily)
        return family

    def counter(self, name: str, doc: str, labels: Iterable[str] = ()) -> CounterMetricFamily:
        family = self._families.setdefault(
            name, CounterMetricFamily(name, doc, labels=list(labels))
        )
        assert isinstance(family, CounterMetricFamily)
        return family

    def set(self, name: str, doc: str, value: float | None, **labels: str) -> None:
        """One gauge sample (nothing when *value* is None)."""
        if value is not None:
            self.gauge(name, doc, labels).add_metric(list(labels.values()), value)

    def with_samples(self) -> list[Metric]:
        return [f for f in self._families.values() if f.samples]


def _core(
    families: _Families, up: bool, status: int, statuses: dict[str, int], started: float
) -> None:
    families.set(
        "appliance_up",
        "1 when this health run could read Redis and measure; 0 when it could not "
        "(Redis unreachable or refusing, no sentinel master, the checker itself failed)",
        1 if up else 0,
    )
    families.set("appliance_health_status", f"Overall status: {STATUS_HELP}", status)
    check_status = families.gauge(
        "appliance_check_status", f"Status of each health check: {STATUS_HELP}", ["check"]
    )
    for name, value in statuses.items():
        check_status.add_metric([name], value)
    families.set(
        "appliance_health_last_run_timestamp_seconds",
        "When this health run started (Unix time)",
        started,
    )


def previous_checks(textfile: str | Path) -> list[str]:
    """The check names an earlier textfile reported (none when it is missing or garbage)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = Path(textfile).read_text(encoding="utf-8", errors="replace")
        names = [
            sample.labels["check"]
            for family in text_string_to_metric_families(text)
            if family.name == "appliance_check_status"
            for sample in family.samples
            if "check" in sample.labels
        ]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return []
    return list(dict.fromkeys(names))


def _static(metrics: list[Metric]) -> Collector:
    class Static(Collector):
        def collect(self) -> Iterator[Metric]:
            yield from metrics

    return Static()


def _registry(metrics: list[Metric]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_static(metrics))
    return registry


def unknown(previous: Iterable[str] = (), started: float | None = None) -> CollectorRegistry:
    """The checker failed (exit 3): status 3 for it and for every check reported before,
    and no measured value at all, so nothing stale can pass for current."""
    statuses = {CHECKER: UNKNOWN}
    statuses.update({name: UNKNOWN for name in previous})
    families = _Families()
    _core(families, False, UNKNOWN, statuses, time.time() if started is None else started)
    return _registry(families.with_samples())


def _heartbeat_families(families: _Families, beats: list[dict[str, Any]]) -> None:
    seen: set[str] = set()
    for beat in beats:
        if not isinstance(beat, dict) or not isinstance(beat.get("hostname"), str):
            continue
        host = beat["hostname"]
        if host in seen:
            continue
        seen.add(host)
        families.set(
            "celery_worker_up",
            "1 for every worker node with a live heartbeat (a node whose heartbeat expired "
            "is absent, not 0)",
            1,
            hostname=host,
        )
        families.set(
            "celery_worker_tasks_active",
            "The number of tasks the worker node is currently processing",
            _number(beat.get("active")),
            hostname=host,
        )
        families.set(
            "appliance_worker_tasks_reserved",
            "Tasks the worker node has prefetched and not started yet",
            _number(beat.get("reserved")),
            hostname=host,
        )
        rss = _number(beat.get("rss_kib"))
        families.set(
            "appliance_worker_resident_memory_bytes",
            "Resident memory of the worker node's main process",
            None if rss is None else rss * 1024,
            hostname=host,
        )
        families.set(
            "appliance_worker_start_time_seconds",
            "When the worker node started (Unix time): its counters count from here",
            _number(beat.get("started_at")),
            hostname=host,
        )
        tasks = families.counter(
            "appliance_tasks",
            "Tasks finished on the worker node since it started, by state "
            "(succeeded, failed, retried)",
            ["state", "hostname"],
        )
        for state, celery_name in TASK_COUNTERS.items():
            count = _number(beat.get(state))
            if count is None:
                continue
            tasks.add_metric([state, host], count)
            families.counter(celery_name, _CELERY_TASK_HELP[state], ["hostname"]).add_metric(
                [host], count
            )
        errors = _number(beat.get("record_write_errors"))
        if errors is not None:
            families.counter(
                "appliance_record_write_errors",
                "Task-record writes that failed on the worker node since it started",
                ["hostname"],
            ).add_metric([host], errors)


def _redis_families(families: _Families, checks: dict[str, Check], info: dict[str, str]) -> None:
    latency = checks.get("redis_latency")
    if latency is not None and latency.value is not None:
        families.set(
            "appliance_redis_latency_seconds",
            "Round trip of a Redis PING",
            latency.value * _TO_BASE.get(latency.uom, 1.0),
        )

    def integer(key: str) -> float | None:
        try:
            return float(int(info[key]))
        except (KeyError, ValueError):
            return None

    families.set("appliance_redis_memory_used_bytes", "Redis used_memory", integer("used_memory"))
    families.set(
        "appliance_redis_memory_max_bytes",
        "Redis maxmemory (0: no limit)",
        integer("maxmemory"),
    )
    families.set(
        "appliance_redis_aof_enabled", "1 when Redis appends to its AOF", integer("aof_enabled")
    )


def _value(checks: dict[str, Check], name: str, scale: float = 1.0) -> float | None:
    check = checks.get(name)
    if check is None or check.value is None:
        return None
    return check.value * scale


def measured(
    cfg: HealthConfig, run: HealthRun, status: int, previous: Iterable[str] = ()
) -> CollectorRegistry:
    """The metrics of a run whose checks ran; when it could not read Redis, every check
    that *previous* names and this run could not do says status 3."""
    statuses: dict[str, int] = {}
    for c in run.checks:  # two names may map to one label: the worse status wins
        statuses[check_label(c.name)] = max(statuses.get(check_label(c.name), 0), c.status)
    if not run.reached_redis:
        for name in previous:
            statuses.setdefault(name, UNKNOWN)
    families = _Families()
    _core(families, run.reached_redis, status, statuses, run.started_at)
    families.set("appliance_health_duration_seconds", "How long this health run took", run.duration)
    if not run.reached_redis:
        return _registry(families.with_samples())

    checks = {c.name: c for c in run.checks}
    _redis_families(families, checks, run.redis_info or {})

    for queue in cfg.queues:
        depth = _value(checks, f"queue_{queue}_depth")
        families.set(
            "appliance_queue_depth",
            "Messages waiting in the queue, over all its priority sub-queues",
            depth,
            queue=queue,
        )
        families.set(
            "appliance_queue_oldest_age_seconds",
            "How long the oldest waiting message of the queue has waited (0 when empty)",
            _value(checks, f"queue_{queue}_age"),
            queue=queue,
        )
        families.set(
            "celery_queue_length",
            "Messages waiting in the queue: appliance_queue_depth under celery-exporter's name",
            depth,
            queue_name=queue,
        )

    families.set(
        "appliance_unacked",
        "Messages delivered to workers and not acknowledged yet",
        _value(checks, "unacked"),
    )
    families.set(
        "appliance_unacked_oldest_age_seconds",
        "How long the oldest unacknowledged message has been out (0 when none)",
        _value(checks, "unacked_age"),
    )
    families.set(
        "appliance_visibility_timeout_seconds",
        "APPLIANCE_VISIBILITY_TIMEOUT: an unacked message older than this is redelivered",
        cfg.visibility_timeout,
    )
    for group in cfg.expected_groups:
        families.set(
            "appliance_workers",
            "Worker nodes with a live heartbeat in the expected queue group",
            _value(checks, f"workers_{group}"),
            group=group,
        )
    if run.heartbeats is not None:
        _heartbeat_families(families, run.heartbeats)
    families.set(
        "appliance_task_failure_ratio",
        "Failed / finished tasks over the workers' recent window (absent when none finished)",
        _value(checks, "failure_ratio", 0.01),
    )
    families.set(
        "appliance_record_journal_waiting",
        "Final task-record writes waiting in Redis for the database",
        _value(checks, "record_journal") or 0.0,
    )
    families.set(
        "appliance_beat_last_tick_age_seconds",
        "Seconds since the beat leader's last tick (absent when none ticks)",
        _value(checks, "beat_age"),
    )
    families.set(
        "appliance_pidbox_reply_keys",
        "Reply keys of remote-control calls (*.reply.celery.pidbox), which never expire",
        _value(checks, "pidbox_orphans"),
    )
    families.set(
        "appliance_stuck_tasks",
        "Task records running past the hard limit or on a node without heartbeat (--db)",
        _value(checks, "stuck_tasks"),
    )
    legacy = families.gauge(
        "appliance_check_value",
        "Deprecated, use the base-unit metrics: a check's measured value in its unit label",
        ["check", "unit"],
    )
    done: set[str] = set()
    for c in run.checks:
        if c.value is not None and check_label(c.name) not in done:
            done.add(check_label(c.name))
            legacy.add_metric([check_label(c.name), c.uom or "count"], c.value)
    return _registry(families.with_samples())
