"""Run the health checks and render their verdict."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

from appliance.core.text import mask_url
from appliance.health.checks import read_heartbeats, run_redis_checks
from appliance.health.config import HealthConfig
from appliance.health.resp import Resp, RespConnectionError, RespError, master_url, parse_info
from appliance.health.verdict import CRITICAL, OK, Check


@dataclass
class HealthRun:
    """One run of the checks, with what the Prometheus metrics need besides the verdicts."""

    checks: list[Check]
    #: False when Redis could not be read (unreachable, refused, no sentinel master): then
    #: only the `redis`/`sentinel` verdict is known and every other check is unknown.
    reached_redis: bool
    started_at: float = field(default_factory=time.time)
    duration: float = 0.0
    #: The worker heartbeats and INFO memory/persistence, read only for the metrics
    #: (None when not asked for, or when that read failed).
    heartbeats: list[dict[str, Any]] | None = None
    redis_info: dict[str, str] | None = None


def live_worker_names(cfg: HealthConfig) -> set[str]:
    try:
        with Resp(cfg.broker_url, timeout=2.0) as conn:
            return {str(b.get("hostname")) for b in read_heartbeats(conn)}
    except (RespConnectionError, RespError):
        return set()


def resolve_master(cfg: HealthConfig) -> tuple[HealthConfig, Check | None]:
    """For a sentinel:// broker: the config pointed at the master the sentinels name, and
    a check saying which one that is (CRITICAL when no sentinel answers)."""
    if not cfg.broker_url.startswith("sentinel://"):
        return cfg, None
    try:
        url, (host, port, via) = master_url(cfg.broker_url, cfg.sentinel_master, timeout=2.0)
    except RespConnectionError as exc:
        return cfg, Check(
            "sentinel",
            CRITICAL,
            f"no master {cfg.sentinel_master!r} from the sentinels at {mask_url(cfg.broker_url)} "
            f"({exc}); fix: start redis-sentinel or correct APPLIANCE_BROKER_URL and "
            "APPLIANCE_REDIS_SENTINEL_MASTER",
        )
    return replace(cfg, broker_url=url), Check(
        "sentinel", OK, f"master {cfg.sentinel_master} at {host}:{port} (from sentinel {via})"
    )


def read_metric_facts(
    cfg: HealthConfig,
) -> tuple[list[dict[str, Any]] | None, dict[str, str] | None]:
    """The heartbeats (per-node counters) and Redis INFO figures the checks only aggregate."""
    try:
        with Resp(cfg.broker_url, timeout=2.0) as conn:
            beats = read_heartbeats(conn)
            try:
                memory, persistence = conn.pipeline([["INFO", "memory"], ["INFO", "persistence"]])
                info: dict[str, str] | None = {**parse_info(memory), **parse_info(persistence)}
            except RespError:  # an ACL user without +info: the redis_info check says so
                info = None
            return beats, info
    except (RespConnectionError, RespError):
        return None, None


def run_health(
    cfg: HealthConfig, *, with_database: bool = False, for_metrics: bool = False
) -> HealthRun:
    """Redis-only checks, plus the task-record checks when asked for; with *for_metrics*
    also the per-node figures the Prometheus metrics carry."""
    started, clock = time.time(), time.monotonic()
    cfg, sentinel = resolve_master(cfg)
    if sentinel is not None and sentinel.status != OK:
        return HealthRun([sentinel], False, started, time.monotonic() - clock)
    redis_checks = run_redis_checks(cfg)
    # run_redis_checks answers with the single `redis` check exactly when it read nothing.
    reached = not any(c.name == "redis" for c in redis_checks)
    run = HealthRun(([sentinel] if sentinel else []) + redis_checks, reached, started)
    if for_metrics and reached:
        run.heartbeats, run.redis_info = read_metric_facts(cfg)
    if with_database:
        from appliance.health.database import run_database_checks

        if run.heartbeats is not None:
            live = {str(b.get("hostname")) for b in run.heartbeats if isinstance(b, dict)}
        else:
            live = live_worker_names(cfg)
        run.checks += run_database_checks(cfg, live)
    run.duration = time.monotonic() - clock
    return run


def run_checks(cfg: HealthConfig, *, with_database: bool = False) -> list[Check]:
    """Redis-only checks, plus the task-record checks when asked for."""
    return run_health(cfg, with_database=with_database).checks
