"""Run the health checks and render their verdict."""

from __future__ import annotations

from dataclasses import replace

from appliance.core.text import mask_url
from appliance.health.checks import read_heartbeats, run_redis_checks
from appliance.health.config import HealthConfig
from appliance.health.resp import Resp, RespConnectionError, RespError, master_url
from appliance.health.verdict import CRITICAL, OK, Check


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


def run_checks(cfg: HealthConfig, *, with_database: bool = False) -> list[Check]:
    """Redis-only checks, plus the task-record checks when asked for."""
    cfg, sentinel = resolve_master(cfg)
    if sentinel is not None and sentinel.status != OK:
        return [sentinel]
    checks = ([sentinel] if sentinel else []) + run_redis_checks(cfg)
    if with_database:
        from appliance.health.database import run_database_checks

        checks += run_database_checks(cfg, live_worker_names(cfg))
    return checks
