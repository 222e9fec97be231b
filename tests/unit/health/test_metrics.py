"""The Prometheus metrics of `appliance health`, rendered from verdicts without a Redis.

Given the checks and heartbeats of one run, the text format has base-unit names, one
label per dimension, counters for counts, celery-exporter's names where they overlap,
HELP and TYPE on every family; and when health could not measure, status 3 and no
stale value.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from appliance.health import metrics, output
from appliance.health.config import HealthConfig
from appliance.health.run import HealthRun
from appliance.health.verdict import CRITICAL, OK, WARNING, Check, measured
from tests.unit.health.conftest import Promtool


def config(**changes: Any) -> HealthConfig:
    values: dict[str, Any] = {
        "broker_url": "redis://127.0.0.1:6379/0",
        "queues": ["default", "high-prio"],
        "worker_groups": {"default": ["default", "high-prio"], "io": ["io"]},
        "expected_groups": ["default", "io"],
        "visibility_timeout": 3600,
        "task_time_limit": 300,
        "expect_beat": True,
        "database_url": "sqlite:///x.db",
    }
    values.update(changes)
    return HealthConfig(**values)


def beat(hostname: str, **fields: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "hostname": hostname,
        "group": "default",
        "succeeded": 7,
        "failed": 2,
        "retried": 1,
        "active": 1,
        "reserved": 3,
        "rss_kib": 2048,
        "record_write_errors": 0,
        "started_at": 1700000000.5,
    }
    data.update(fields)
    return data


def healthy_checks() -> list[Check]:
    return [
        measured("redis_latency", 1.5, "ms", (50, 500), "Redis PING"),
        Check("eviction_policy", OK, "maxmemory-policy noeviction"),
        measured("memory", 40.0, "%", (80, 90), "Redis memory used"),
        Check("persistence", OK, "AOF on, last write ok"),
        measured("queue_default_depth", 12, "", (10, 100), "queue default: depth"),
        measured("queue_default_age", 42.5, "s", (300, 1800), "queue default: oldest"),
        measured("queue_high-prio_depth", 0, "", (10, 100), "queue high-prio: depth"),
        measured("queue_high-prio_age", 0.0, "s", (300, 1800), "queue high-prio: oldest"),
        Check("unacked", OK, "2 unacked", 2),
        measured("unacked_age", 9.25, "s", (1800, 3240), "oldest unacked"),
        Check("workers_default", OK, "group default: 2 worker(s)", 2),
        Check("workers_io", CRITICAL, "group io: no live worker", 0),
        measured("failure_ratio", 20.0, "%", (5, 25), "recent failures"),
        measured("beat_age", 3.0, "s", (60, 120), "beat last tick"),
        measured("pidbox_orphans", 4, "", (10, 100), "pidbox reply keys"),
    ]


INFO = {"used_memory": "1048576", "maxmemory": "268435456", "aof_enabled": "1"}


def healthy_run(**changes: Any) -> HealthRun:
    values: dict[str, Any] = {
        "checks": healthy_checks(),
        "reached_redis": True,
        "started_at": 1700000100.0,
        "duration": 0.004,
        "heartbeats": [beat("w1@host"), beat("w2@host", succeeded=0, failed=0, retried=0)],
        "redis_info": dict(INFO),
    }
    values.update(changes)
    return HealthRun(**values)


def render(registry: Any) -> str:
    return str(generate_latest(registry).decode())


def parse(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(families: dict[str, Any], family: str, sample: str | None = None) -> dict[Any, float]:
    """{label values (in label-name order): value} of one family's samples named *sample*."""
    wanted = sample or family
    return {
        tuple(value for _, value in sorted(s.labels.items())): s.value
        for s in families[family].samples
        if s.name == wanted
    }


def test_names_are_in_base_units_with_one_label_per_dimension() -> None:
    run = healthy_run()
    families = parse(render(output.prometheus(config(), run)))
    assert samples(families, "appliance_up") == {(): 1}
    assert samples(families, "appliance_health_status") == {(): CRITICAL}
    assert samples(families, "appliance_redis_latency_seconds") == {(): pytest.approx(0.0015)}
    assert samples(families, "appliance_redis_memory_used_bytes") == {(): 1048576}
    assert samples(families, "appliance_redis_memory_max_bytes") == {(): 268435456}
    assert samples(families, "appliance_redis_aof_enabled") == {(): 1}
    assert samples(families, "appliance_queue_depth") == {("default",): 12, ("high-prio",): 0}
    assert samples(families, "appliance_queue_oldest_age_seconds") == {
        ("default",): 42.5,
        ("high-prio",): 0,
    }
    assert samples(families, "appliance_unacked") == {(): 2}
    assert samples(families, "appliance_unacked_oldest_age_seconds") == {(): 9.25}
    assert samples(families, "appliance_visibility_timeout_seconds") == {(): 3600}
    assert samples(families, "appliance_workers") == {("default",): 2, ("io",): 0}
    assert samples(families, "appliance_task_failure_ratio") == {(): pytest.approx(0.2)}
    assert samples(families, "appliance_beat_last_tick_age_seconds") == {(): 3}
    assert samples(families, "appliance_pidbox_reply_keys") == {(): 4}
    assert samples(families, "appliance_record_journal_waiting") == {(): 0}
    assert samples(families, "appliance_health_duration_seconds") == {(): 0.004}
    assert samples(families, "appliance_health_last_run_timestamp_seconds") == {(): 1700000100}
    statuses = samples(families, "appliance_check_status")
    assert statuses[("workers_io",)] == CRITICAL and statuses[("failure_ratio",)] == WARNING
    assert statuses[("queue_high_prio_depth",)] == OK  # the label of today, sanitised
    assert families["appliance_queue_depth"].samples[0].labels == {"queue": "default"}


def test_heartbeat_counts_are_counters_by_state_and_hostname() -> None:
    families = parse(render(output.prometheus(config(), healthy_run())))
    assert families["appliance_tasks"].type == "counter"
    assert samples(families, "appliance_tasks", "appliance_tasks_total") == {  # sorted labels
        ("w1@host", "succeeded"): 7,
        ("w1@host", "failed"): 2,
        ("w1@host", "retried"): 1,
        ("w2@host", "succeeded"): 0,
        ("w2@host", "failed"): 0,
        ("w2@host", "retried"): 0,
    }
    assert families["appliance_tasks"].samples[0].labels == {
        "state": "succeeded",
        "hostname": "w1@host",
    }
    assert samples(families, "appliance_record_write_errors", "appliance_record_write_errors_total")
    assert samples(families, "appliance_worker_resident_memory_bytes")[("w1@host",)] == 2048 * 1024
    assert samples(families, "appliance_worker_tasks_reserved")[("w1@host",)] == 3
    assert samples(families, "appliance_worker_start_time_seconds")[("w1@host",)] == 1700000000.5


def test_celery_exporter_names_for_what_the_two_share() -> None:
    families = parse(render(output.prometheus(config(), healthy_run())))
    assert samples(families, "celery_queue_length") == {("default",): 12, ("high-prio",): 0}
    assert families["celery_queue_length"].samples[0].labels == {"queue_name": "default"}
    assert samples(families, "celery_worker_up") == {("w1@host",): 1, ("w2@host",): 1}
    assert families["celery_worker_up"].samples[0].labels == {"hostname": "w1@host"}
    assert samples(families, "celery_worker_tasks_active")[("w1@host",)] == 1
    for state, count in (("succeeded", 7), ("failed", 2), ("retried", 1)):
        family = families[f"celery_task_{state}"]
        assert family.type == "counter"
        first = family.samples[0]
        assert (first.name, first.labels, first.value) == (
            f"celery_task_{state}_total",
            {"hostname": "w1@host"},
            count,
        )


def test_every_family_has_help_and_type_and_no_created_series() -> None:
    text = render(output.prometheus(config(), healthy_run()))
    names = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    helps = {line.split()[2] for line in text.splitlines() if line.startswith("# HELP")}
    assert names == helps and len(names) > 20
    assert "_created" not in text
    for line in text.splitlines():
        if not line.startswith("#"):
            name = line.split("{")[0].split()[0]
            assert name in names or name.removesuffix("_total") in names, line


def test_the_deprecated_check_value_family_stays() -> None:
    families = parse(render(output.prometheus(config(), healthy_run())))
    legacy = samples(families, "appliance_check_value")
    assert legacy[("redis_latency", "ms")] == 1.5
    assert legacy[("queue_default_depth", "count")] == 12


def test_garbage_heartbeats_are_skipped_not_fatal() -> None:
    beats: list[Any] = [
        42,
        "x",
        {"no": "hostname"},
        {"hostname": 7},
        beat("ok@host", succeeded="many", failed=float("nan"), retried=True, rss_kib=None),
        beat("ok@host", succeeded=99),  # a duplicate hostname: the first one counts
    ]
    families = parse(render(output.prometheus(config(), healthy_run(heartbeats=beats))))
    assert samples(families, "celery_worker_up") == {("ok@host",): 1}
    assert "appliance_tasks" not in families
    assert "appliance_worker_resident_memory_bytes" not in families


def test_without_the_heartbeat_read_the_check_figures_remain() -> None:
    families = parse(
        render(output.prometheus(config(), healthy_run(heartbeats=None, redis_info=None)))
    )
    assert (
        "celery_worker_up" not in families and "appliance_redis_memory_used_bytes" not in families
    )
    assert samples(families, "appliance_workers")[("default",)] == 2


def test_redis_not_read_marks_the_checks_it_could_not_do_unknown() -> None:
    run = HealthRun([Check("redis", CRITICAL, "Redis unreachable")], False, 1700000200.0, 0.1)
    previous = ["redis_latency", "queue_default_depth", "workers_default", "redis"]
    families = parse(render(output.prometheus(config(), run, previous)))
    assert samples(families, "appliance_up") == {(): 0}
    assert samples(families, "appliance_health_status") == {(): CRITICAL}
    assert samples(families, "appliance_check_status") == {
        ("redis",): CRITICAL,
        ("redis_latency",): 3,
        ("queue_default_depth",): 3,
        ("workers_default",): 3,
    }
    measured_families = {"appliance_queue_depth", "celery_queue_length", "appliance_check_value"}
    assert not measured_families & set(families)


def test_a_healthy_run_drops_checks_that_are_gone_instead_of_carrying_them() -> None:
    families = parse(render(output.prometheus(config(), healthy_run(), ["queue_gone_depth"])))
    assert ("queue_gone_depth",) not in samples(families, "appliance_check_status")


def test_unknown_has_status_3_for_the_checker_and_every_earlier_check() -> None:
    families = parse(render(metrics.unknown(["workers_default", "memory"], 1700000300.0)))
    assert samples(families, "appliance_up") == {(): 0}
    assert samples(families, "appliance_health_status") == {(): 3}
    assert samples(families, "appliance_check_status") == {
        ("health",): 3,
        ("workers_default",): 3,
        ("memory",): 3,
    }
    assert set(families) == {
        "appliance_up",
        "appliance_health_status",
        "appliance_check_status",
        "appliance_health_last_run_timestamp_seconds",
    }


def test_previous_checks_of_a_textfile(tmp_path: Path) -> None:
    textfile = tmp_path / "appliance.prom"
    assert metrics.previous_checks(textfile) == []
    textfile.write_text(render(output.prometheus(config(), healthy_run())))
    names = metrics.previous_checks(textfile)
    assert names[:2] == ["redis_latency", "eviction_policy"] and "workers_io" in names
    textfile.write_bytes(b"\xff\x00 garbage {{{\n")
    assert metrics.previous_checks(textfile) == []
    textfile.unlink()
    textfile.mkdir()
    assert metrics.previous_checks(textfile) == []


def test_two_checks_with_one_label_show_the_worse_status() -> None:
    checks = [Check("queue_a-b_depth", OK, "x", 1), Check("queue_a_b_depth", WARNING, "y", 2)]
    run = healthy_run(checks=checks, heartbeats=[])
    families = parse(render(output.prometheus(config(queues=[]), run)))
    assert samples(families, "appliance_check_status") == {("queue_a_b_depth",): WARNING}
    assert samples(families, "appliance_check_value") == {("queue_a_b_depth", "count"): 1}


def test_promtool_finds_nothing_to_complain_about(promtool: Promtool) -> None:
    odd = 'q"uote\\back\nline-ü'
    run = healthy_run(
        heartbeats=[beat("w1@host"), beat(odd)],
        checks=[*healthy_checks(), measured(f"queue_{odd}_depth", 1, "", (0, 0), "q")],
    )
    promtool(render(output.prometheus(config(queues=["default", odd]), run)))
    promtool(render(output.prometheus(config(), healthy_run(heartbeats=[], redis_info=None))))
    down = HealthRun([Check("redis", CRITICAL, "down")], False)
    promtool(render(output.prometheus(config(), down, ["workers_default"])))
    promtool(render(metrics.unknown(["workers_default"])))


def test_the_nagios_path_never_imports_prometheus_client() -> None:
    probe = (
        "import sys\n"
        "import appliance.cli.health, appliance.health.output, appliance.health.run\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('prometheus_client', 'celery', 'kombu', 'pydantic', 'sqlalchemy', 'redis')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_the_metrics_module_imports_nothing_heavy() -> None:
    probe = (
        "import sys, appliance.health.metrics\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('celery', 'kombu', 'pydantic', 'sqlalchemy', 'redis')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_journal_and_database_figures_when_their_checks_report() -> None:
    checks = [
        *healthy_checks(),
        Check("record_journal", WARNING, "3 task record write(s) wait", 3),
        Check("database", OK, "reachable"),
        Check("stuck_tasks", WARNING, "1 task(s) on workers with no heartbeat", 1),
    ]
    families = parse(render(output.prometheus(config(), healthy_run(checks=checks))))
    assert samples(families, "appliance_record_journal_waiting") == {(): 3}
    assert samples(families, "appliance_stuck_tasks") == {(): 1}
    assert samples(families, "appliance_check_status")[("database",)] == OK
    assert "appliance_stuck_tasks" not in parse(render(output.prometheus(config(), healthy_run())))
