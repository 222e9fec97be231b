"""Run the health checks and render their verdict."""

from __future__ import annotations

from appliance.health.checks import Check, read_heartbeats, run_redis_checks
from appliance.health.config import HealthConfig
from appliance.health.resp import Resp, RespConnectionError, RespError


def live_worker_names(cfg: HealthConfig) -> set[str]:
    try:
        with Resp(cfg.broker_url, timeout=2.0) as conn:
            return {str(b.get("hostname")) for b in read_heartbeats(conn)}
    except (RespConnectionError, RespError):
        return set()


def run_checks(cfg: HealthConfig, *, with_database: bool = False) -> list[Check]:
    """Redis-only checks, plus the task-record checks when asked for."""
    checks = run_redis_checks(cfg)
    if with_database:
        from appliance.health.database import run_database_checks

        checks += run_database_checks(cfg, live_worker_names(cfg))
    return checks
